//! The two faces every upstream shows, whatever its kind: the OCI distribution API (`oci`) and
//! the Helm HTTP repository (`mirror`). Views turn a typed route into a response using the
//! resolver (including `Warning` for a stale answer, via `Response::stale`); they return
//! domain errors and leave the mapping to `http::error_response`. Call `resolver` and `http`.

pub mod mirror;
pub mod oci;
pub mod page;
