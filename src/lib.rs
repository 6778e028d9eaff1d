//! chartbridge: one endpoint that serves legacy Helm chart repositories as OCI registries, OCI
//! charts as Helm repositories, and mirrors both (charts and images), on a verified two-tier cache.
//!
//! # Layout
//!
//! Data flows one way, top to bottom; nothing below calls back up.
//!
//! - `server`: pingora glue, the only module that names pingora types. Reads a request, hands
//!   method, path, query and the few headers the views use to `app`, writes the response back
//!   (whole, from a file, or streamed from a channel). Listeners, write buffer, connection
//!   limits (open connections, request-head deadline, keep-alive, pipelining, open-file
//!   limit), SIGTERM grace, SIGHUP reload.
//! - `app`: builds caches and upstreams from the `Config` (the upstreams again, swapped in
//!   whole, on reload); turns a request into a typed
//!   `route::Route` (parsed once, at the edge), picks the upstream (`?ns=`, path prefix,
//!   `default_upstream`), checks `access`, dispatches to a view; access log and request metrics.
//! - `route`: method + path + query -> `Route`. Handlers never split strings.
//! - `access`: downstream access control per upstream (htpasswd bcrypt on the blocking pool,
//!   bearer tokens), and the `Throttle` that bounds bcrypt and backs off failing addresses.
//! - `http`: the response and body types, Range handling, and `error_response`, the one place
//!   that maps a domain `error::Error` to an HTTP status and OCI error JSON or plain text.
//! - `views::oci`: the distribution-spec pull API (`/v2/...`) over either kind of upstream.
//! - `views::mirror`: the Helm HTTP repository view (`index.yaml`, archives) over either kind.
//! - `resolver`: `Stores`, the cache handles every upstream shares. `resolver::helm`: a legacy
//!   index.yaml upstream: index freshness (conditional refresh, last good copy, persisted),
//!   parsed indexes kept compact within a shared memory budget (`IndexMemory`), tag -> version
//!   and the index entry resolved once per request (`Located`), verified archives, synthesised
//!   manifests.
//! - `resolver::oci`: a registry upstream: byte-exact manifests, tag -> digest with a TTL and
//!   stale fallback, streamed and verified blobs, `latest` policy, negative cache; and
//!   `resolver::oci::chart_index`, the index.yaml view of OCI charts.
//! - `convert`: pure conversions (Chart.yaml -> config blob, chart -> OCI manifest, index parse
//!   and rewrite to JSON or YAML with its compact entry table, versions and tags). Golden- and
//!   property-tested; no I/O.
//! - `cache`: the `BlobStore` trait (stat / get / read / put / begin) with memory (moka) and disk
//!   (content-addressed, LRU, verify-on-read) stores, the two-tier `BlobCache`, the `RefStore`
//!   trait (small named values under path-like `RefName`s: get / put / delete / list by prefix;
//!   `DiskRefs` on disk) for tag -> digest, media types and the like, `Links` (which
//!   repository may name which digest: per-repository read permission over the shared store),
//!   `Flight` (single-flight: one upstream fetch per key), and `Tee` (followers read a blob,
//!   or a range of it, while it is fetched: recent bytes from memory, older ones back from the
//!   store's temp file).
//! - `upstream`: the only outbound HTTP: one client per upstream with timeouts, retries and
//!   offline mode (`mod`), the SSRF `guard` (allowed hosts, no private addresses, checked on
//!   URLs, redirects and DNS), and `registry` (Bearer/Basic auth, token cache, oci:// pulls).
//! - `config`: YAML config in two stages (`RawConfig` -> validated `Config`), embedded default.
//! - `policy`: how an upstream is reached (timeouts, retries, offline, SSRF allowances,
//!   credentials): data shared by `config` and `upstream`, which do not import each other.
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
pub mod policy;
pub mod resolver;
pub mod route;
pub mod server;
pub mod upstream;
pub mod views;
