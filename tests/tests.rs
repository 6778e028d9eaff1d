//! End-to-end tests: the real chartbridge binary between real clients (helm v3 and v4, an HTTP
//! client) and real upstreams (nginx serving a helm-built repository, CNCF distribution).
//! One test binary, so it builds once.

mod support;

mod access;
mod airgap;
mod catalog;
mod cli;
mod containerd;
mod deploy;
mod disk_faults;
mod faults;
mod floating;
mod hardening;
mod helm_clients;
mod http1;
mod json_index;
mod mirror;
mod oci_api;
mod oci_upstream;
mod operate;
mod registry_auth;
mod shared_store;
mod spec;
mod sync;
mod tls;
mod upstream_faults;
