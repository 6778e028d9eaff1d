//! Every Prometheus metric chartbridge exports, declared in this one module and recorded through
//! the small functions below (one hook per layer). Label sets are bounded: route kinds, methods,
//! status codes, tiers, configured upstream names. Uses the official `prometheus-client` crate.

use std::sync::OnceLock;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: String,
    status: u16,
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

struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    response_bytes: Family<RequestLabels, Counter>,
    cache: Family<CacheLabels, Counter>,
    upstream: Family<UpstreamLabels, Counter>,
    flight_joins: Counter,
    evictions: Counter,
    latest: Counter,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut registry = Registry::with_prefix("chartbridge");
        let m = Metrics {
            requests: Family::default(),
            response_bytes: Family::default(),
            cache: Family::default(),
            upstream: Family::default(),
            flight_joins: Counter::default(),
            evictions: Counter::default(),
            latest: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("http_requests", "HTTP requests served", m.requests.clone());
        registry.register(
            "http_response_bytes",
            "Response body bytes sent",
            m.response_bytes.clone(),
        );
        registry.register(
            "cache_lookups",
            "Cache lookups by tier and outcome",
            m.cache.clone(),
        );
        registry.register(
            "upstream_requests",
            "Requests sent to upstreams",
            m.upstream.clone(),
        );
        registry.register(
            "singleflight_joins",
            "Requests that joined an in-flight fetch",
            m.flight_joins.clone(),
        );
        registry.register(
            "cache_evictions",
            "Blobs evicted from the disk tier",
            m.evictions.clone(),
        );
        registry.register(
            "latest_synthesized",
            "Resolutions of a synthesised latest tag",
            m.latest.clone(),
        );
        Metrics { registry, ..m }
    })
}

pub fn request(route: &'static str, method: &str, status: u16, bytes: u64) {
    let l = RequestLabels {
        route,
        method: method.to_string(),
        status,
    };
    metrics().requests.get_or_create(&l).inc();
    metrics().response_bytes.get_or_create(&l).inc_by(bytes);
}

pub fn cache_lookup(tier: &'static str, hit: bool) {
    let outcome = if hit { "hit" } else { "miss" };
    metrics()
        .cache
        .get_or_create(&CacheLabels { tier, outcome })
        .inc();
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

pub fn flight_join() {
    metrics().flight_joins.inc();
}

pub fn evicted() {
    metrics().evictions.inc();
}

pub fn latest_synthesized() {
    metrics().latest.inc();
}

/// The text exposition of every metric.
pub fn render() -> String {
    let mut out = String::new();
    encode(&mut out, &metrics().registry).expect("writing to a String cannot fail");
    out
}
