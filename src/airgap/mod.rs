//! Air-gapped sites: `warm` fetches what a warm list names through the resolvers, `bundle`
//! writes the cache out as an OCI image layout (a directory or a tar) and reads one back in,
//! verified whole before anything becomes visible. Calls `app`, `resolver`, `cache` and
//! `convert`; the server never calls it.

pub mod bundle;
pub mod list;
pub mod warm;
