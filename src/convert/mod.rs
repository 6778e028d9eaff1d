//! Pure, deterministic conversions between Helm's and OCI's models. Nothing here does I/O or
//! knows about HTTP, caches or upstreams: every function is a function of its input bytes, and
//! golden tests pin the output bytes.

pub mod chart;
pub mod index;
pub mod manifest;
pub mod markdown;
pub mod version;
