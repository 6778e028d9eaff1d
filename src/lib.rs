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
//!   limit), SIGTERM grace, SIGHUP reload (configuration and TLS pair together). Plain and TLS
//!   listeners (ALPN h2/http1.1) share one service. On plain HTTP/1 connections
//!   `server::plain` reads bodiless GET/HEAD heads itself with `httparse` (one buffer per
//!   connection, pipelining, the head deadline and idle wait) and hands anything else to
//!   pingora with the bytes read put back (`rewind`); `server::h1` writes responses itself on
//!   the socket (head and bytes body in one `sendmsg`, disk-tier files and memory-tier memfds
//!   with `sendfile`, readiness from tokio). TLS and HTTP/2 go through pingora, with heads
//!   built from `http` parts (`response_head`).
//! - `tls`: the listener's certificate pair and optional client CA, read from PEM files and
//!   checked when the configuration loads; `Certificates` hands the current pair to each
//!   handshake, so a reload swaps it without touching open connections.
//! - `app`: builds the cache and the upstreams from the `Config` (the upstreams again, swapped
//!   in whole, on reload); turns a request into a typed `route::Route` (parsed once, at the
//!   edge), picks the upstream (`?ns=`, path prefix, `default_upstream`), checks `access`,
//!   dispatches to a view; access log, request metrics, `Warning` on stale answers. Every cold
//!   step below (fetches, flights, index builds) is boxed where it is awaited, so the warm
//!   path's futures stay a few KB (`app::future_sizes` checks it): a request's future is
//!   copied at each level it passes.
//! - `route`: method + path + query -> `Route`. Handlers never split strings.
//! - `access`: downstream access control per upstream (htpasswd bcrypt on the blocking pool,
//!   bearer tokens), and the `Throttle` that bounds bcrypt and backs off failing addresses.
//! - `access_log`: the access-log line `app` hands over; in text format to a file or pipe it is
//!   formatted by hand and written with one `write(2)`, the same bytes `tracing`'s formatter
//!   writes (tested against it); JSON and a terminal go through `tracing`.
//! - `http`: the request and response types with their own body types, Range handling, and
//!   `error_response`, the one place that maps a domain `error::Error` to an HTTP status and
//!   OCI error JSON or plain text.
//! - `views::oci`: the distribution-spec pull API (`/v2/...`) over either kind of upstream.
//! - `views::mirror`: the Helm HTTP repository view (`index.yaml`, archives) over either kind.
//! - `views::page`: the catalog page for people (`/-/...`, and `/` in a browser): maud
//!   templates over what the resolvers' `peek_*` and the cache hold, without upstream requests
//!   (but for the same-origin "fetch into cache" POST); READMEs through `convert::markdown`.
//! - `resolver`: per upstream, how to fetch and verify one thing and how long it is fresh;
//!   `Stores` hands them the shared cache (and the registry upstreams' shared tag memo).
//!   `resolver::helm`: a legacy index.yaml upstream (the index revalidated after `index_ttl`,
//!   tag -> version and the index entry resolved once per request as `Located`, verified
//!   archives, synthesised manifests; a warm manifest by tag answered from the index
//!   content's `resolver::helm::memo`). `resolver::oci`: a
//!   registry upstream (byte-exact manifests, tag -> digest, blobs and manifests by digest for
//!   the repositories that hold them, `latest`; a warm manifest by tag answered from
//!   `resolver::oci::tag_memo` until the tag is due for revalidation), and
//!   `resolver::oci::chart_index`, the index.yaml view of OCI charts.
//! - `convert`: pure conversions (Chart.yaml -> config blob, README Markdown -> sanitised
//!   HTML, chart -> OCI manifest, the chart
//!   layers of a manifest, index parse and rewrite to JSON or YAML with its compact entry
//!   table, `oci://` URLs, versions and tags). Golden- and property-tested; no I/O. An index
//!   in the YAML Helm writes is read by `convert::index::fast_yaml`, which declines anything
//!   else to serde-saphyr and is tested to agree with it.
//! - `cache`: `Cache`, the read-through cache every resolver uses (named values with
//!   freshness, stale-on-error, backoff and negative answers; whole and streamed blobs with
//!   single-flight and the `Tee`; derived values within a memory budget; `Links`, which
//!   repository may name which digest), over the storage traits: `BlobStore` (`DiskStore`,
//!   content-addressed, LRU, verify-on-read, a small blob read from the page cache without a
//!   hop to the blocking pool (`disk::read`); the memory tier in front, which moves blobs of
//!   16 KiB and more served from it again into sealed memfds (`cache::memfd`) for
//!   `sendfile`) and `RefStore` (`DiskRefs`, small named values listed by prefix), each with
//!   a conformance test; and
//!   `bucket`, the same two traits on a shared S3-compatible bucket (`BucketStore` with the
//!   disk as its local tier, `BucketRefs`), with the cross-replica claim on cold blobs
//!   (`BlobStore::claim`) that the read-through cache asks before any upstream fetch.
//! - `upstream`: the only outbound HTTP to upstreams (the bucket is reached by `object_store`
//!   in `cache::bucket`): one client per upstream with timeouts, retries and
//!   offline mode (`mod`), the SSRF `guard` (public hosts on 80/443 or `allow_hosts`, the
//!   upstream's own host on its own port, no private addresses; checked on URLs, redirects and
//!   DNS), and `registry` (Bearer/Basic auth, token cache).
//! - `airgap`: beside the request path, driven by `main`'s subcommands and by `server` (the
//!   config's `warm:` list at start and after a reload): `list` (the warm list and its pure
//!   selections), `warm` (fetches through the resolvers, so it verifies and caches exactly as
//!   `serve` does), `bundle` (export the cache as an OCI image layout, tar or directory,
//!   streaming `BlobStore::list`/`RefStore::list`; import it back, staged and verified whole
//!   before anything becomes visible).
//! - `publish`: `chartbridge sync`, beside the request path like `airgap`: reads an upstream
//!   through the same resolvers (so what it pushes is exactly what `serve` answers) and pushes
//!   it into a registry with its own push client (`publish::target`: HEAD, mount, upload,
//!   manifests by digest, then tags; Basic and token auth, CA file, plain HTTP).
//! - `progress`: the terminal bars and plain lines of `warm` and `sync`.
//! - `config`: YAML config in two stages (`raw`, the file as written -> validated `Config`),
//!   embedded default.
//! - `policy`: how an upstream is reached (timeouts, retries, offline, SSRF allowances,
//!   credentials): data shared by `config` and `upstream`, which do not import each other.
//! - `ids`: typed identifiers (`Digest`, `RepoName`, `Tag`, `UpstreamName`, `Reference`,
//!   `ByteRange`).
//! - `metrics`: every Prometheus metric, declared in one place, and the per-request context the
//!   access log reads.
//! - `error`: the domain error (kind, message, source; no HTTP status).
//!
//! Every derived
//! artifact (manifests, config blobs, rewritten indexes) is a pure function of upstream bytes,
//! so replicas and bundles agree without coordination.

pub mod access;
pub mod access_log;
pub mod airgap;
pub mod app;
pub mod cache;
pub mod config;
pub mod convert;
pub mod error;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod policy;
pub mod progress;
pub mod publish;
pub mod resolver;
pub mod route;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod views;
