//! Every Prometheus metric chartbridge exports, declared in this one module and recorded through
//! the small functions below (one hook per layer). Label sets are bounded: route kinds, methods,
//! status codes, tiers, outcomes and configured upstream names. Also the per-request context the
//! access log reads (which cache tier answered), kept in a task-local so lower layers record
//! into it without knowing about requests. Uses the official `prometheus-client` crate.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    tier: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamOnly {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~105 s
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    response_bytes: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    cache: Family<CacheLabels, Counter>,
    upstream: Family<UpstreamLabels, Counter>,
    upstream_latency: Family<UpstreamOnly, Histogram, fn() -> Histogram>,
    index_refreshes: Family<UpstreamLabels, Counter>,
    stale: Family<KindLabels, Counter>,
    flight_joins: Counter,
    evictions: Counter,
    latest: Counter,
    disk_bytes: Gauge,
    disk_blobs: Gauge,
    write_failures: Counter,
    reloads: Family<OutcomeLabels, Counter>,
    open_connections: Gauge,
    index_memory: Gauge,
    connections_closed: Family<OutcomeLabels, Counter>,
    auth_failures: Family<OutcomeLabels, Counter>,
    store_degraded: Gauge,
    leases: Family<OutcomeLabels, Counter>,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut r = Registry::with_prefix("chartbridge");
        let m = Metrics {
            requests: Family::default(),
            response_bytes: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            cache: Family::default(),
            upstream: Family::default(),
            upstream_latency: Family::new_with_constructor(latency_histogram),
            index_refreshes: Family::default(),
            stale: Family::default(),
            flight_joins: Counter::default(),
            evictions: Counter::default(),
            latest: Counter::default(),
            disk_bytes: Gauge::default(),
            disk_blobs: Gauge::default(),
            store_degraded: Gauge::default(),
            leases: Family::default(),
            write_failures: Counter::default(),
            reloads: Family::default(),
            open_connections: Gauge::default(),
            index_memory: Gauge::default(),
            connections_closed: Family::default(),
            auth_failures: Family::default(),
            registry: Registry::default(),
        };
        r.register(
            "http_requests",
            "HTTP requests served, by route kind, method and status",
            m.requests.clone(),
        );
        r.register(
            "http_response_bytes",
            "Response body bytes sent",
            m.response_bytes.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Time to answer a request (headers and body)",
            m.latency.clone(),
        );
        r.register(
            "cache_lookups",
            "Cache lookups by tier and outcome",
            m.cache.clone(),
        );
        r.register(
            "upstream_requests",
            "Requests sent to upstreams, by upstream and outcome",
            m.upstream.clone(),
        );
        r.register(
            "upstream_request_duration_seconds",
            "Time for an upstream request to answer",
            m.upstream_latency.clone(),
        );
        r.register(
            "index_refreshes",
            "Upstream index refreshes, by upstream and outcome",
            m.index_refreshes.clone(),
        );
        r.register(
            "stale_served",
            "Answers served from a last-known copy because the upstream failed",
            m.stale.clone(),
        );
        r.register(
            "singleflight_joins",
            "Requests that joined an in-flight upstream fetch",
            m.flight_joins.clone(),
        );
        r.register(
            "cache_evictions",
            "Blobs evicted from the disk tier",
            m.evictions.clone(),
        );
        r.register(
            "latest_synthesized",
            "Resolutions of a synthesised latest tag",
            m.latest.clone(),
        );
        r.register(
            "disk_bytes",
            "Bytes stored in the disk tier",
            m.disk_bytes.clone(),
        );
        r.register(
            "disk_blobs",
            "Blobs stored in the disk tier",
            m.disk_blobs.clone(),
        );
        r.register(
            "cache_write_failures",
            "Blobs served without caching because the disk refused the write",
            m.write_failures.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads on SIGHUP, by outcome (ok, refused)",
            m.reloads.clone(),
        );
        r.register(
            "store_degraded",
            "1 while the shared object store (cache.store) fails or times out, else 0",
            m.store_degraded.clone(),
        );
        r.register(
            "store_leases",
            "Cross-replica claims on cold blobs, by outcome (taken, waited, taken_over)",
            m.leases.clone(),
        );
        r.register(
            "open_connections",
            "Client connections open now",
            m.open_connections.clone(),
        );
        r.register(
            "index_memory_bytes",
            "Memory held by parsed helm indexes (within cache.max_index_memory_bytes)",
            m.index_memory.clone(),
        );
        r.register(
            "connections_closed",
            "Client connections closed by chartbridge, by reason (over_limit, head_timeout, idle_timeout)",
            m.connections_closed.clone(),
        );
        r.register(
            "auth_failures",
            "Refused credentials, by outcome (invalid, backoff)",
            m.auth_failures.clone(),
        );
        Metrics { registry: r, ..m }
    })
}

/// Bounded method label: anything unusual is "other".
fn method_label(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        _ => "other",
    }
}

pub fn request(route: &'static str, method: &str, status: u16, bytes: u64, took: Duration) {
    let l = RequestLabels {
        route,
        method: method_label(method),
        status,
    };
    let m = metrics();
    m.requests.get_or_create(&l).inc();
    m.response_bytes.get_or_create(&l).inc_by(bytes);
    m.latency
        .get_or_create(&RouteLabels { route })
        .observe(took.as_secs_f64());
}

/// What the access log says about one request beyond method, path and status.
#[derive(Default)]
struct RequestContext {
    cache: Cell<&'static str>,
    upstream: Cell<Option<&'static str>>,
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// What a request's handling recorded: the cache outcome and the upstream it went to.
pub struct RequestNotes {
    pub cache: &'static str,
    pub upstream: &'static str,
}

/// Runs the future `f` makes with a fresh per-request context; returns its output and what
/// was recorded. `f` makes the future inside the scope, so its (large) state is stored once,
/// not once as an argument and again as the awaited future.
pub fn with_request_context<F, Fut>(
    f: F,
) -> impl std::future::Future<Output = (Fut::Output, RequestNotes)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future,
{
    REQUEST.scope(RequestContext::default(), async move {
        let out = f().await;
        let notes = REQUEST.with(|c| RequestNotes {
            cache: if c.cache.get().is_empty() {
                "-"
            } else {
                c.cache.get()
            },
            upstream: c.upstream.get().unwrap_or("-"),
        });
        (out, notes)
    })
}

/// Records which upstream serves the current request. Upstream names are configured once and
/// live for the process, so they are leaked to `'static` once each.
pub fn note_upstream(name: &str) {
    static NAMES: OnceLock<std::sync::Mutex<Vec<&'static str>>> = OnceLock::new();
    let names = NAMES.get_or_init(Default::default);
    let name: &'static str = {
        let mut v = names.lock().expect("names poisoned");
        match v.iter().find(|n| **n == name) {
            Some(n) => n,
            None => {
                let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
                v.push(leaked);
                leaked
            }
        }
    };
    let _ = REQUEST.try_with(|c| c.upstream.set(Some(name)));
}

fn note_outcome(outcome: &'static str) {
    let _ = REQUEST.try_with(|c| {
        // The first hit wins; a miss is only recorded when nothing answered yet.
        let cur = c.cache.get();
        if cur.is_empty() || cur == "miss" {
            c.cache.set(outcome);
        }
    });
}

pub fn cache_lookup(tier: &'static str, hit: bool) {
    let outcome = if hit { "hit" } else { "miss" };
    metrics()
        .cache
        .get_or_create(&CacheLabels { tier, outcome })
        .inc();
    note_outcome(if hit { tier } else { "miss" });
}

pub fn upstream_request(upstream: &str, outcome: &'static str) {
    metrics()
        .upstream
        .get_or_create(&UpstreamLabels {
            upstream: upstream.to_string(),
            outcome,
        })
        .inc();
}

pub fn upstream_latency(upstream: &str, took: Duration) {
    metrics()
        .upstream_latency
        .get_or_create(&UpstreamOnly {
            upstream: upstream.to_string(),
        })
        .observe(took.as_secs_f64());
}

pub fn index_refresh(upstream: &str, outcome: &'static str) {
    metrics()
        .index_refreshes
        .get_or_create(&UpstreamLabels {
            upstream: upstream.to_string(),
            outcome,
        })
        .inc();
}

/// An answer served from a last-known copy (`index`, `tags`, `tag`).
pub fn stale_served(kind: &'static str) {
    metrics().stale.get_or_create(&KindLabels { kind }).inc();
    note_outcome("stale");
}

pub fn flight_join() {
    metrics().flight_joins.inc();
}

pub fn cache_write_failure() {
    metrics().write_failures.inc();
}

pub fn config_reload(ok: bool) {
    let outcome = if ok { "ok" } else { "refused" };
    metrics()
        .reloads
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
}

pub fn open_connections(n: usize) {
    metrics().open_connections.set(n as i64);
}

pub fn index_memory(bytes: u64) {
    metrics().index_memory.set(bytes as i64);
}

pub fn connection_closed(reason: &'static str) {
    metrics()
        .connections_closed
        .get_or_create(&OutcomeLabels { outcome: reason })
        .inc();
}

pub fn auth_failure(outcome: &'static str) {
    metrics()
        .auth_failures
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
}

pub fn evicted() {
    metrics().evictions.inc();
}

pub fn latest_synthesized() {
    metrics().latest.inc();
}

pub fn store_degraded(degraded: bool) {
    metrics().store_degraded.set(i64::from(degraded));
}

/// A cross-replica claim: `taken`, `waited` (another replica fetched) or `taken_over`.
pub fn lease(outcome: &'static str) {
    metrics()
        .leases
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
}

pub fn disk_usage(bytes: u64, blobs: usize) {
    metrics().disk_bytes.set(bytes as i64);
    metrics().disk_blobs.set(blobs as i64);
}

/// The text exposition of every metric.
pub fn render() -> String {
    let mut out = String::new();
    encode(&mut out, &metrics().registry).expect("writing to a String cannot fail");
    out
}

/// Pulls per chart (archive downloads and manifests by tag) since start, for the catalog
/// page's "most pulled": upstream -> chart -> pulls, at most `MAX_PULL_KEYS` charts. A pull of
/// a chart counted before allocates nothing.
type Pulls = std::collections::HashMap<String, std::collections::HashMap<String, u64>>;
static PULLS: std::sync::OnceLock<std::sync::Mutex<(Pulls, usize)>> = std::sync::OnceLock::new();
const MAX_PULL_KEYS: usize = 10_000;

pub fn chart_pulled(upstream: &str, chart: &str) {
    let mut guard = PULLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let (m, keys) = &mut *guard;
    if let Some(n) = m.get_mut(upstream).and_then(|c| c.get_mut(chart)) {
        *n += 1;
    } else if *keys < MAX_PULL_KEYS {
        *keys += 1;
        m.entry(upstream.to_string())
            .or_default()
            .insert(chart.to_string(), 1);
    }
}

/// The `n` most pulled charts: (upstream, chart, pulls), most first.
pub fn most_pulled(n: usize) -> Vec<(String, String, u64)> {
    let guard = PULLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let mut all: Vec<_> = guard
        .0
        .iter()
        .flat_map(|(u, cs)| cs.iter().map(move |(c, n)| (u.clone(), c.clone(), *n)))
        .collect();
    all.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
    all.truncate(n);
    all
}

/// What the catalog page shows of the cache from the metrics.
pub struct CacheOverview {
    /// Blobs on disk.
    pub blobs: i64,
    /// Lookups answered from memory or disk, of all lookups, since start.
    pub hit_ratio: Option<f64>,
}

pub fn cache_overview() -> CacheOverview {
    let m = metrics();
    let get = |tier: &'static str, outcome: &'static str| {
        m.cache.get_or_create(&CacheLabels { tier, outcome }).get()
    };
    let lookups = get("memory", "hit") + get("memory", "miss");
    let hits = get("memory", "hit") + get("disk", "hit");
    CacheOverview {
        blobs: m.disk_blobs.get(),
        hit_ratio: (lookups > 0).then(|| hits as f64 / lookups as f64),
    }
}
