//! What operators rely on: Prometheus metrics that move with traffic, health endpoints that are
//! not counted as traffic, a separate metrics listener, and one access-log line per request (JSON
//! and text).

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

/// The text access log (the default format; written by hand when stdout is not a terminal):
/// one whole line per request in `tracing`'s text layout, also under concurrent requests, with
/// an error's message quoted and escaped.
#[test]
fn text_access_log_has_one_whole_line_per_request() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    repo.index(None);
    let web = nginx(repo.dir.path());
    let bridge = chartbridge_full(
        &helm_upstream("up", &web.url()),
        "",
        None,
        &[],
        "error,access=info",
    );
    let u = bridge.url();
    assert_eq!(
        get(&format!("{u}/v2/up/demo/manifests/0.1.0")).status(),
        200
    );
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..25 {
                    assert_eq!(
                        get(&format!("{u}/v2/up/demo/manifests/0.1.0")).status(),
                        200
                    );
                }
            });
        }
    });
    assert_eq!(get(&format!("{u}/v2/a%22b/tags/list")).status(), 400);
    assert_eq!(get(&format!("{u}/healthz")).status(), 200);

    let log = std::fs::read_to_string(bridge.dir.path().join("server.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 102, "{log}");
    let shape = |l: &str, path: &str, status: &str| {
        // 2026-11-29T05:31:08.884633Z  INFO access: method=GET path=... status=...
        let (stamp, rest) = l.split_at(27);
        assert!(
            stamp.len() == 27 && stamp.as_bytes()[10] == b'T' && stamp.ends_with('Z'),
            "{l}"
        );
        let want = format!("  INFO access: method=GET path={path} status={status} request_id=");
        assert!(rest.starts_with(&want), "{l}");
    };
    for l in &lines[..101] {
        shape(l, "/v2/up/demo/manifests/0.1.0", "200");
        assert!(l.contains(" upstream=\"up\""), "{l}");
    }
    let bad = lines[101];
    shape(bad, "/v2/a%22b/tags/list", "400");
    assert!(
        bad.ends_with(r#"upstream="-" error="invalid repository name \"a%22b\"""#),
        "{bad}"
    );
}

/// SIGHUP reloads the upstreams without dropping connections: a download in flight on a
/// removed upstream completes, an added upstream serves at once, the removed one is gone. A file
/// that does not parse, or a change only a restart can apply (`listen`), is refused and the
/// running configuration kept. The fault server is here only to hold a download open.
#[test]
fn sighup_reloads_upstreams_without_dropping_a_download() {
    use crate::support::fault::{Behavior, FaultServer};
    use std::time::{Duration, Instant};

    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    let d = chartbridge::ids::Digest::of(&blob);
    let other = b"another blob".to_vec();
    let od = chartbridge::ids::Digest::of(&other);
    let fake = FaultServer::start();
    fake.route(
        &format!("/v2/img/blobs/{d}"),
        vec![Behavior::Stall {
            body: blob.clone(),
            send: blob.len() / 2,
            pause: Duration::from_secs(3),
        }],
    );
    fake.route(
        &format!("/v2/img/blobs/{od}"),
        vec![Behavior::ok(&other, "application/octet-stream")],
    );
    let bridge = chartbridge_full(&oci_upstream("a", &fake.url(), ""), "", None, &[], "info");
    let u = bridge.url();
    let conf_path = bridge.dir.path().join("config.yaml");
    let conf = std::fs::read_to_string(&conf_path).unwrap();
    let head = conf.split("upstreams:\n").next().unwrap().to_string();
    let hup = || {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &bridge.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    let reloads = |outcome: &str| {
        let text = get(&format!("{u}/metrics")).text().unwrap();
        metric(
            &text,
            "chartbridge_config_reloads_total",
            &[&format!("outcome=\"{outcome}\"")],
        )
    };
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    let download = {
        let url = format!("{u}/v2/a/img/blobs/{d}");
        std::thread::spawn(move || get(&url).bytes().map(|b| b.to_vec()))
    };
    std::thread::sleep(Duration::from_millis(500)); // the upstream is now stalled mid-body
    std::fs::write(
        &conf_path,
        format!("{head}upstreams:\n{}", oci_upstream("b", &fake.url(), "")),
    )
    .unwrap();
    hup();
    wait_for("the reload", &|| reloads("ok") == 1.0);
    let r = get(&format!("{u}/v2/b/img/blobs/{od}"));
    assert_eq!(r.status(), 200, "the added upstream serves");
    assert_eq!(r.bytes().unwrap().to_vec(), other);
    assert_eq!(
        oci_code(get(&format!("{u}/v2/a/img/blobs/{od}"))),
        (404, "NAME_UNKNOWN".to_string()),
        "the removed upstream is gone"
    );
    let got = download
        .join()
        .unwrap()
        .expect("the download in flight completes");
    assert!(got == blob, "and its bytes are right");

    // a file that does not parse: refused, the running upstreams kept
    std::fs::write(&conf_path, format!("{head}upstreams: [oops\n")).unwrap();
    hup();
    wait_for("the refusal", &|| reloads("refused") == 1.0);
    assert_eq!(get(&format!("{u}/v2/b/img/blobs/{od}")).status(), 200);
    // a new listen address needs a restart: refused too
    let moved = head.replace(&format!("127.0.0.1:{}", bridge.port), "127.0.0.1:1");
    assert_ne!(moved, head);
    std::fs::write(
        &conf_path,
        format!("{moved}upstreams:\n{}", oci_upstream("c", &fake.url(), "")),
    )
    .unwrap();
    hup();
    wait_for("the second refusal", &|| reloads("refused") == 2.0);
    assert_eq!(get(&format!("{u}/v2/b/img/blobs/{od}")).status(), 200);
    let log = std::fs::read_to_string(bridge.dir.path().join("server.log")).unwrap();
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(
        log.contains("listen changed: that needs a restart"),
        "{log}"
    );
}
