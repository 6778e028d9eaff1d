//! What operators rely on: Prometheus metrics that move with traffic, health endpoints that are
//! not counted as traffic, a separate metrics listener, and one JSON access-log line per request.

use crate::support::*;

#[test]
fn metrics_move_with_a_pull_and_health_is_not_traffic() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    repo.index(None);
    let web = nginx(repo.dir.path());
    let mport = free_port();
    let bridge = chartbridge_full(
        &helm_upstream("up", &web.url()),
        &format!("metrics_listen: 127.0.0.1:{mport}\n"),
        None,
        &["--log-format", "json"],
        "info",
    );
    let u = bridge.url();
    let scrape = || get(&format!("{u}/metrics")).text().unwrap();
    let before = scrape();

    for path in ["/healthz", "/readyz"] {
        assert_eq!(get(&format!("{u}{path}")).status(), 200, "{path}");
    }
    let out = tempfile::tempdir().unwrap();
    let pulled = Helm::new("v4.1.4").pull_oci(
        &format!("{}/up/demo", bridge.host()),
        "0.1.0",
        out.path(),
        "demo-0.1.0.tgz",
    );
    assert_eq!(pulled, repo.bytes("demo-0.1.0.tgz"));
    assert_eq!(
        get(&format!("{u}/v2/up/demo/manifests/latest")).status(),
        200
    );
    let after = scrape();
    let moved =
        |name: &str, labels: &[&str]| metric(&after, name, labels) - metric(&before, name, labels);

    assert!(
        moved(
            "chartbridge_http_requests_total",
            &["route=\"manifest\"", "method=\"GET\"", "status=\"200\""]
        ) >= 2.0
    );
    assert!(
        moved(
            "chartbridge_http_requests_total",
            &["route=\"blob\"", "status=\"200\""]
        ) >= 2.0
    );
    assert_eq!(
        moved("chartbridge_http_requests_total", &["route=\"health\""]),
        0.0,
        "health is not traffic"
    );
    assert!(
        moved("chartbridge_http_response_bytes_total", &["route=\"blob\""])
            >= repo.bytes("demo-0.1.0.tgz").len() as f64
    );
    assert!(
        moved(
            "chartbridge_http_request_duration_seconds_count",
            &["route=\"manifest\""]
        ) >= 2.0
    );
    assert!(
        moved(
            "chartbridge_upstream_requests_total",
            &["upstream=\"up\"", "outcome=\"ok\""]
        ) >= 2.0,
        "index + archive"
    );
    assert!(
        moved(
            "chartbridge_upstream_request_duration_seconds_count",
            &["upstream=\"up\""]
        ) >= 2.0
    );
    assert_eq!(
        moved(
            "chartbridge_index_refreshes_total",
            &["upstream=\"up\"", "outcome=\"updated\""]
        ),
        1.0
    );
    assert!(
        moved(
            "chartbridge_cache_lookups_total",
            &["tier=\"memory\"", "outcome=\"hit\""]
        ) >= 1.0
    );
    assert_eq!(moved("chartbridge_latest_synthesized_total", &[]), 1.0);
    assert!(
        metric(&after, "chartbridge_disk_blobs", &[]) >= 3.0,
        "archive, config, manifest"
    );
    assert!(metric(&after, "chartbridge_disk_bytes", &[]) > 0.0);

    // the separate metrics listener serves metrics and health only
    let m = get(&format!("http://127.0.0.1:{mport}/metrics"));
    assert_eq!(m.status(), 200);
    assert!(m
        .text()
        .unwrap()
        .contains("chartbridge_http_requests_total"));
    assert_eq!(
        get(&format!("http://127.0.0.1:{mport}/healthz")).status(),
        200
    );
    assert_eq!(get(&format!("http://127.0.0.1:{mport}/v2/")).status(), 404);

    // one JSON access-log line per request, with the cache outcome and upstream
    let log = std::fs::read_to_string(bridge.dir.path().join("server.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect();
    let manifest_lines: Vec<_> = lines
        .iter()
        .filter(|v| {
            v["path"]
                .as_str()
                .is_some_and(|p| p.contains("/manifests/"))
        })
        .collect();
    assert!(manifest_lines.len() >= 2, "{log}");
    for l in &manifest_lines {
        assert_eq!(l["upstream"], "up");
        assert_eq!(l["status"], 200);
        assert!(
            l["ms"].is_u64() && l["bytes"].is_u64() && l["cache"].is_string(),
            "{l}"
        );
    }
    assert!(
        lines.iter().any(
            |v| v["path"].as_str().is_some_and(|p| p.contains("/blobs/")) && v["cache"] == "memory"
        ),
        "a blob served from the memory tier says so: {log}"
    );
    assert!(
        !lines.iter().any(|v| v["path"] == "/healthz"),
        "health is not logged as traffic"
    );
}
