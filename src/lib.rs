//! chartbridge: one endpoint that serves legacy Helm chart repositories as OCI registries and
//! mirrors them, on a verified two-tier cache.
//!
//! # Layout
//!
//! Data flows one way, top to bottom; nothing below calls back up.
//!
//! - `server`: pingora glue, the only module that names pingora types. Reads a request, hands
//!   method, path, query and headers to `app`, writes the `http::Response` back (streaming bodies).
//! - `app`: turns a request into a typed `route::Route` (parsed once, at the edge) and dispatches
//!   to a view; times and logs the request.
//! - `route`: method + path + query -> `Route`. Handlers never split strings.
//! - `http`: the response type, Range handling, and `error_response`, the one place that maps a
//!   domain `error::Error` to an HTTP status and OCI error JSON.
//! - `views::oci`: the distribution-spec pull API (`/v2/...`) over a helm upstream.
//! - `views::mirror`: the Helm HTTP repository view (`/<upstream>/index.yaml`, archives).
//! - `resolver`: per helm upstream, which index, which entry, which bytes: keeps the parsed index
//!   fresh, resolves tags, fetches verified archives, builds chart artifacts via `convert`.
//! - `convert`: pure conversions (Chart.yaml -> config blob, chart -> OCI manifest, index parse
//!   and rewrite, versions and tags). Golden-tested; no I/O.
//! - `cache`: the blob store trait with its memory (moka) and disk (content-addressed) tiers,
//!   the two-tier `BlobCache`, and single-flight (`flight`) for upstream misses.
//! - `upstream`: the only outbound HTTP (reqwest, rustls): plain GETs with conditional headers
//!   and size caps, and the OCI pull of `oci://` chart URLs with the anonymous token flow.
//! - `config`: YAML config in two stages (`RawConfig` -> validated `Config`), embedded default.
//! - `ids`: typed identifiers (`Digest`, `RepoName`, `Tag`, `UpstreamName`).
//! - `metrics`: every Prometheus metric, declared in one place.
//! - `access`: downstream access control per upstream (htpasswd bcrypt, bearer tokens).
//! - `error`: the domain error (kind + message, no HTTP status).

pub mod access;
pub mod app;
pub mod cache;
pub mod config;
pub mod convert;
pub mod error;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod resolver;
pub mod route;
pub mod server;
pub mod upstream;
pub mod views;
