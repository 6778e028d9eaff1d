//! The two faces of a helm upstream: the OCI distribution API (`oci`) and the Helm HTTP
//! repository mirror (`mirror`). Views turn a typed route into a response using the resolver;
//! they return domain errors and leave the mapping to `http::error_response`.

pub mod mirror;
pub mod oci;
