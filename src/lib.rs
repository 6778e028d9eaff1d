//! chartbridge: one endpoint that serves legacy Helm chart repositories as OCI registries, OCI
//! charts as Helm repositories, and mirrors both (charts and images), on a verified two-tier cache.
//!
//! # Layout
//!
//! Data flows one way, top to bottom; nothing below calls back up.
//!
//! - `server`: pingora glue, the only module that names pingora types. Reads a request, hands
//!   method, path, query and the few headers the views use to `app`, writes the response back
//!   (whole, from a file, or streamed from a channel). Listeners, write buffer, SIGTERM grace,
//!   SIGHUP reload.
//! - `app`: builds caches and upstreams from the `Config` (the upstreams again, swapped in
//!   whole, on reload); turns a request into a typed
//!   `route::Route` (parsed once, at the edge), picks the upstream (`?ns=`, path prefix,
//!   `default_upstream`), checks `access`, dispatches to a view; access log and request metrics.
//! - `route`: method + path + query -> `Route`. Handlers never split strings.
//! - `access`: downstream access control per upstream (htpasswd bcrypt, bearer tokens).
//! - `http`: the response and body types, Range handling, and `error_response`, the one place
//!   that maps a domain `error::Error` to an HTTP status and OCI error JSON or plain text.
//! - `views::oci`: the distribution-spec pull API (`/v2/...`) over either kind of upstream.
//! - `views::mirror`: the Helm HTTP repository view (`index.yaml`, archives) over either kind.
//! - `resolver::helm`: a legacy index.yaml upstream: index freshness (conditional refresh,
//!   last good copy, persisted), tag -> version, verified archives, synthesised manifests.
//! - `resolver::oci`: a registry upstream: byte-exact manifests, tag -> digest with a TTL and
//!   stale fallback, streamed and verified blobs, `latest` policy, negative cache; and
//!   `resolver::oci::chart_index`, the index.yaml view of OCI charts.
//! - `convert`: pure conversions (Chart.yaml -> config blob, chart -> OCI manifest, index parse
//!   and rewrite, versions and tags). Golden- and property-tested; no I/O.
//! - `cache`: the `BlobStore` trait (stat / get / read / put / begin) with memory (moka) and disk
//!   (content-addressed, LRU, verify-on-read) stores, the two-tier `BlobCache`, `RefStore`
//!   (small named pointers, e.g. tag -> digest, for restarts and air gaps), `Flight`
//!   (single-flight: one upstream fetch per key), and `Tee` (followers read a blob while it is
//!   fetched: recent bytes from memory, older ones back from the store's temp file).
//! - `upstream`: the only outbound HTTP: one client per upstream with timeouts, retries and
//!   offline mode (`mod`), the SSRF `guard` (allowed hosts, no private addresses, checked on
//!   URLs, redirects and DNS), and `registry` (Bearer/Basic auth, token cache, oci:// pulls).
//! - `config`: YAML config in two stages (`RawConfig` -> validated `Config`), embedded default.
//! - `ids`: typed identifiers (`Digest`, `RepoName`, `Tag`, `UpstreamName`, `Reference`).
//! - `metrics`: every Prometheus metric, declared in one place, and the per-request context the
//!   access log reads.
//! - `error`: the domain error (kind + message, no HTTP status).
//!
//! Room left for what comes next: a shared S3-compatible store is another `BlobStore` (and
//! `RefStore`) implementation; cache warming and OCI-layout export/import walk `RefStore` and
//! the disk tier; every derived artifact (manifests, config blobs, rewritten indexes) is a pure
//! function of upstream bytes, so replicas agree without coordination.

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
