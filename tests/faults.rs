//! Upstream faults a real server cannot produce on demand, from the in-process fault server
//! (`support::fault`): what the client receives, that nothing corrupt is cached, and that the
//! next request after the fault clears succeeds. The table in tests/README.md mirrors these.

use std::time::{Duration, Instant};

use crate::support::fault::{Behavior, FaultServer};
use crate::support::*;

const OCTET: &str = "application/octet-stream";

fn blob() -> (Vec<u8>, chartbridge::ids::Digest) {
    let b: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let d = chartbridge::ids::Digest::of(&b);
    (b, d)
}

/// chartbridge in front of the fault server, with a short negative cache (0.3 s) so that
/// recovery is awaited by condition, not by a fixed second.
fn bridge_for(fake: &FaultServer, extra: &str) -> Proc {
    chartbridge_with(
        &oci_upstream("f", &fake.url(), extra),
        "  negative_ttl: 300ms\n",
        None,
    )
}

fn cached(bridge: &Proc, d: &chartbridge::ids::Digest) -> bool {
    bridge
        .dir
        .path()
        .join("cache")
        .join("sha256")
        .join(d.hex())
        .exists()
}

/// Each body fault: the client never gets a complete 200 with wrong bytes, nothing is cached,
/// and once the upstream behaves the same request succeeds.
#[test]
fn body_faults_fail_visibly_cache_nothing_and_recover() {
    let (good, d) = blob();
    let mut wrong = good.clone();
    wrong[good.len() / 2] ^= 0xff;
    let cases = [
        (
            "truncated body",
            Behavior::Truncate {
                body: good.clone(),
                send: good.len() / 2,
            },
        ),
        ("wrong bytes, right length", Behavior::ok(&wrong, OCTET)),
        (
            "reset mid-stream",
            Behavior::Reset {
                body: good.clone(),
                send: good.len() / 3,
            },
        ),
    ];
    for (what, fault) in cases {
        let fake = FaultServer::start();
        let path = format!("/v2/img/blobs/{d}");
        fake.route(&path, vec![fault]);
        let bridge = bridge_for(&fake, "    retries: 0\n");
        let url = format!("{}/v2/f/img/blobs/{d}", bridge.url());
        // A failed connection is a visible failure too; only a complete 200 would be wrong.
        if let Ok(r) = client().get(&url).send() {
            let status = r.status().as_u16();
            let body = r.bytes();
            let complete_200 = status == 200 && body.is_ok_and(|b| b.len() == good.len());
            assert!(
                !complete_200,
                "{what}: a complete 200 must never carry wrong bytes"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        assert!(!cached(&bridge, &d), "{what}: nothing may be cached");
        fake.route(&path, vec![Behavior::ok(&good, OCTET)]);
        // the failure is remembered briefly: an immediate retry does not reach the upstream
        let hits = fake.hits(&path);
        assert_ne!(get(&url).status(), 200, "{what}: negatively cached");
        assert_eq!(
            fake.hits(&path),
            hits,
            "{what}: no upstream request while negatively cached"
        );
        wait_until(&format!("{what}: recovers past the negative cache"), || {
            get(&url).status() == 200
        });
        let ok = get(&url);
        assert_eq!(ok.status(), 200, "{what}: recovers");
        assert_eq!(
            ok.bytes().unwrap().to_vec(),
            good,
            "{what}: right bytes after recovery"
        );
        wait_until(&format!("{what}: cached after a good fetch"), || {
            cached(&bridge, &d)
        });
    }
}

#[test]
fn a_slow_first_byte_hits_the_header_timeout_and_5xx_bursts_are_retried() {
    let (good, d) = blob();
    let fake = FaultServer::start();
    let path = format!("/v2/img/blobs/{d}");
    fake.route(
        &path,
        vec![Behavior::Slow(
            Duration::from_secs(3),
            Box::new(Behavior::ok(&good, OCTET)),
        )],
    );
    let bridge = bridge_for(&fake, "    retries: 0\n    timeouts: {header: 500ms}\n");
    let t = Instant::now();
    let r = get(&format!("{}/v2/f/img/blobs/{d}", bridge.url()));
    assert_eq!(r.status(), 502);
    assert!(r.text().unwrap().contains("no response headers"));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "the timeout, not the upstream, ended it"
    );
    assert!(!cached(&bridge, &d));
    // once the upstream answers in time, past the negative cache, the blob is served
    fake.route(&path, vec![Behavior::ok(&good, OCTET)]);
    let url = format!("{}/v2/f/img/blobs/{d}", bridge.url());
    wait_until("served past the negative cache", || {
        get(&url).status() == 200
    });
    let r = get(&url);
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().to_vec(), good);

    // two 503s then success: retried (retries: 2) and served, three upstream requests
    let fake = FaultServer::start();
    fake.route(
        &path,
        vec![
            Behavior::status(503, &[]),
            Behavior::status(503, &[]),
            Behavior::ok(&good, OCTET),
        ],
    );
    let bridge = bridge_for(&fake, "    retries: 2\n");
    let r = get(&format!("{}/v2/f/img/blobs/{d}", bridge.url()));
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().to_vec(), good);
    assert_eq!(fake.hits(&path), 3);

    // a longer burst than the retries: a clear 502, then the next request succeeds
    let fake = FaultServer::start();
    fake.route(
        &path,
        vec![
            Behavior::status(500, &[]),
            Behavior::status(502, &[]),
            Behavior::ok(&good, OCTET),
        ],
    );
    let bridge = bridge_for(&fake, "    retries: 1\n");
    let r = get(&format!("{}/v2/f/img/blobs/{d}", bridge.url()));
    assert_eq!(r.status(), 502);
    assert!(!cached(&bridge, &d));
    let url = format!("{}/v2/f/img/blobs/{d}", bridge.url());
    wait_until("served past the negative cache", || {
        get(&url).status() == 200
    });
}

#[test]
fn rate_limits_pass_on_or_serve_from_cache_and_redirect_loops_end() {
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[]}"#;
    let md = chartbridge::ids::Digest::of(manifest);
    let mt = "application/vnd.oci.image.manifest.v1+json";
    let fake = FaultServer::start();
    let tag_path = "/v2/img/manifests/v1";
    let ok = Behavior::ok(manifest, mt).with_header("Docker-Content-Digest", &md.to_string());
    fake.route(tag_path, vec![ok]);
    let bridge = bridge_for(&fake, "    retries: 0\n");
    let u = bridge.url();
    let first = get(&format!("{u}/v2/f/img/manifests/v1"));
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("warning").is_none());

    // the upstream starts rate-limiting: past tag_ttl the last known digest is served, marked stale
    fake.route(
        tag_path,
        vec![Behavior::status(429, &[("Retry-After", "120")])],
    );
    wait_until("past tag_ttl, the answer is marked stale", || {
        get(&format!("{u}/v2/f/img/manifests/v1"))
            .headers()
            .contains_key("warning")
    });
    let stale = get(&format!("{u}/v2/f/img/manifests/v1"));
    assert_eq!(stale.status(), 200);
    assert!(stale.headers()["warning"]
        .to_str()
        .unwrap()
        .contains("Stale"));
    assert_eq!(
        stale.headers()["cache-control"],
        "public, max-age=0",
        "a stale answer is not to be kept by caches in front"
    );
    assert_eq!(stale.bytes().unwrap().to_vec(), manifest.to_vec());

    // nothing cached for another tag: the 429 and its Retry-After reach the client
    fake.route(
        "/v2/img/manifests/v2",
        vec![Behavior::status(429, &[("Retry-After", "120")])],
    );
    let limited = get(&format!("{u}/v2/f/img/manifests/v2"));
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "120");
    assert_eq!(oci_code(limited).1, "TOOMANYREQUESTS");
    // when the rate limit lifts (past the negative cache) the tag resolves
    fake.route(
        "/v2/img/manifests/v2",
        vec![Behavior::ok(manifest, mt).with_header("Docker-Content-Digest", &md.to_string())],
    );
    wait_until("the tag resolves once the limit lifts", || {
        get(&format!("{u}/v2/f/img/manifests/v2")).status() == 200
    });
    let lifted = get(&format!("{u}/v2/f/img/manifests/v2"));
    assert_eq!(lifted.status(), 200);
    assert_eq!(lifted.bytes().unwrap().to_vec(), manifest.to_vec());

    // a redirect loop ends with a clear error
    fake.route("/v2/img/manifests/loop", vec![Behavior::RedirectLoop]);
    let t = Instant::now();
    let looped = get(&format!("{u}/v2/f/img/manifests/loop"));
    assert_eq!(looped.status(), 502);
    assert!(t.elapsed() < Duration::from_secs(5));
    fake.route(
        "/v2/img/manifests/loop",
        vec![Behavior::ok(manifest, mt).with_header("Docker-Content-Digest", &md.to_string())],
    );
    wait_until("the loop is gone", || {
        get(&format!("{u}/v2/f/img/manifests/loop")).status() == 200
    });
}

/// A stale answer reaches every client of a shared refresh, not only the one whose request
/// started it: each of the concurrent requests gets the last known manifest with `Warning: 110`,
/// after one upstream request.
#[test]
fn a_stale_answer_reaches_every_follower_of_a_shared_refresh() {
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[]}"#;
    let md = chartbridge::ids::Digest::of(manifest);
    let mt = "application/vnd.oci.image.manifest.v1+json";
    let fake = FaultServer::start();
    let tag_path = "/v2/img/manifests/v1";
    let ok = Behavior::ok(manifest, mt).with_header("Docker-Content-Digest", &md.to_string());
    fake.route(tag_path, vec![ok]);
    let bridge = bridge_for(
        &fake,
        "    retries: 0
",
    );
    let u = bridge.url();
    assert_eq!(get(&format!("{u}/v2/f/img/manifests/v1")).status(), 200);
    // the upstream now answers slowly, then with a 503
    fake.route(
        tag_path,
        vec![Behavior::Slow(
            Duration::from_millis(600),
            Box::new(Behavior::status(503, &[])),
        )],
    );
    let before = fake.hits(tag_path);
    std::thread::sleep(Duration::from_millis(1200)); // past tag_ttl
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(10));
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let (url, b) = (format!("{u}/v2/f/img/manifests/v1"), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                let r = get(&url);
                let warning = r
                    .headers()
                    .get("warning")
                    .map(|v| v.to_str().unwrap().to_string());
                (r.status().as_u16(), warning, r.bytes().unwrap().to_vec())
            })
        })
        .collect();
    for h in handles {
        let (status, warning, body) = h.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, manifest.to_vec());
        assert!(
            warning.as_deref().is_some_and(|w| w.contains("Stale")),
            "every client is told: {warning:?}"
        );
    }
    assert_eq!(fake.hits(tag_path) - before, 1, "one shared refresh");
}

/// A registry whose tag list never ends (every page links to a next one) is read for at most
/// 100 pages, and the client gets the tags seen.
#[test]
fn an_endless_tag_list_is_cut_at_a_hundred_pages() {
    let fake = FaultServer::start();
    let page = Behavior::ok(br#"{"name":"img","tags":["1.0.0"]}"#, "application/json").with_header(
        "Link",
        "</v2/img/tags/list?n=1000&last=1.0.0>; rel=\"next\"",
    );
    fake.route("/v2/img/tags/list", vec![page]);
    let bridge = bridge_for(&fake, "");
    let r = get(&format!("{}/v2/f/img/tags/list", bridge.url()));
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["tags"], serde_json::json!(["1.0.0", "latest"]));
    assert_eq!(fake.hits("/v2/img/tags/list"), 100);
}

/// 100 concurrent cold pulls of one blob and of one manifest through the real binary: exactly
/// one upstream request each, every client gets identical, correct bytes.
#[test]
fn a_hundred_concurrent_cold_pulls_make_one_upstream_request_each() {
    let (good, d) = blob();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":{}}},"layers":[]}}"#,
        good.len()
    )
    .into_bytes();
    let md = chartbridge::ids::Digest::of(&manifest);
    let fake = FaultServer::start();
    let slow = |b: Behavior| Behavior::Slow(Duration::from_millis(400), Box::new(b));
    fake.route(
        &format!("/v2/img/blobs/{d}"),
        vec![slow(Behavior::ok(&good, OCTET))],
    );
    fake.route(
        &format!("/v2/img/manifests/{md}"),
        vec![slow(Behavior::ok(
            &manifest,
            "application/vnd.oci.image.manifest.v1+json",
        ))],
    );
    let bridge = bridge_for(&fake, "");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(200));
    let handles: Vec<_> = (0..200)
        .map(|i| {
            let url = if i % 2 == 0 {
                format!("{}/v2/f/img/blobs/{d}", bridge.url())
            } else {
                format!("{}/v2/f/img/manifests/{md}", bridge.url())
            };
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                let r = client().get(&url).send().unwrap();
                (r.status().as_u16(), r.bytes().unwrap().to_vec())
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (status, body) = h.join().unwrap();
        assert_eq!(status, 200);
        if i % 2 == 0 {
            assert_eq!(body, good);
        } else {
            assert_eq!(body, manifest);
        }
    }
    assert_eq!(
        fake.hits(&format!("/v2/img/blobs/{d}")),
        1,
        "one blob fetch upstream"
    );
    assert_eq!(
        fake.hits(&format!("/v2/img/manifests/{md}")),
        1,
        "one manifest fetch upstream"
    );
}

/// offline: true never contacts the upstream: cached content is served, the rest is a clear 503.
#[test]
fn offline_serves_the_cache_and_refuses_the_rest_without_dialling() {
    let (good, d) = blob();
    let fake = FaultServer::start();
    fake.route(
        &format!("/v2/img/blobs/{d}"),
        vec![Behavior::ok(&good, OCTET)],
    );
    let cache = tempfile::tempdir().unwrap();
    let online = chartbridge_with(&oci_upstream("f", &fake.url(), ""), "", Some(cache.path()));
    assert_eq!(
        get(&format!("{}/v2/f/img/blobs/{d}", online.url())).status(),
        200
    );
    // the durable commit follows the client's last byte
    std::thread::sleep(Duration::from_millis(300));
    drop(online);
    let before = fake.hits(&format!("/v2/img/blobs/{d}"));
    let offline = chartbridge_with(
        &oci_upstream("f", &fake.url(), ""),
        "offline: true\n",
        Some(cache.path()),
    );
    let r = get(&format!("{}/v2/f/img/blobs/{d}", offline.url()));
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().to_vec(), good);
    let other = chartbridge::ids::Digest::of(b"not cached");
    let (status, code) = oci_code(get(&format!("{}/v2/f/img/blobs/{other}", offline.url())));
    assert_eq!((status, code.as_str()), (503, "UNAVAILABLE"));
    assert_eq!(
        fake.hits(&format!("/v2/img/blobs/{d}")),
        before,
        "never dialled"
    );
    assert_eq!(
        fake.hits(&format!("/v2/img/blobs/{other}")),
        0,
        "never dialled"
    );
    drop(offline);
    // the same per upstream: the offline one is never dialled, its neighbour still is
    let ups = format!(
        "{}    offline: true\n{}",
        oci_upstream("f", &fake.url(), ""),
        oci_upstream("g", &fake.url(), "")
    );
    let mixed = chartbridge_with(&ups, "", Some(cache.path()));
    let r = get(&format!("{}/v2/f/img/blobs/{d}", mixed.url()));
    assert_eq!(r.bytes().unwrap().to_vec(), good, "cached, served offline");
    let (status, _) = oci_code(get(&format!("{}/v2/f/img/blobs/{other}", mixed.url())));
    assert_eq!(status, 503);
    assert_eq!(fake.hits(&format!("/v2/img/blobs/{other}")), 0);
    assert_eq!(
        get(&format!("{}/v2/g/img/blobs/{other}", mixed.url())).status(),
        404,
        "the online upstream is asked"
    );
    assert_eq!(fake.hits(&format!("/v2/img/blobs/{other}")), 1);
}

/// A fetch that fails fails every request waiting on it with the same error, after one
/// upstream request: for a blob (an error status after a slow start) and a manifest.
#[test]
fn a_failed_fetch_fails_every_waiter_with_the_same_error() {
    let (_, d) = blob();
    let fake = FaultServer::start();
    let slow_503 = || {
        Behavior::Slow(
            Duration::from_millis(400),
            Box::new(Behavior::status(503, &[])),
        )
    };
    let blob_path = format!("/v2/img/blobs/{d}");
    fake.route(&blob_path, vec![slow_503()]);
    fake.route("/v2/img/manifests/v1", vec![slow_503()]);
    let bridge = bridge_for(&fake, "    retries: 0\n");
    for target in [
        format!("/v2/f/img/blobs/{d}"),
        "/v2/f/img/manifests/v1".to_string(),
    ] {
        let answers: Vec<(u16, String)> = (0..20)
            .map(|_| {
                let url = format!("{}{target}", bridge.url());
                std::thread::spawn(move || {
                    let r = get(&url);
                    (r.status().as_u16(), r.text().unwrap())
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        assert!(answers[0].0 == 502, "{target}: {:?}", answers[0]);
        assert!(
            answers.iter().all(|a| *a == answers[0]),
            "{target}: every waiter gets the same error: {answers:?}"
        );
    }
    assert_eq!(fake.hits(&blob_path), 1, "one blob request");
    assert_eq!(fake.hits("/v2/img/manifests/v1"), 1, "one manifest request");
}

/// kill -9 in the middle of a download: no partial blob is ever visible under its digest, the
/// leftover temp file is removed at the next start, and the blob is fetched whole afterwards.
#[test]
fn kill_9_mid_download_leaves_nothing_visible_and_the_restart_recovers() {
    let (good, d) = blob();
    let fake = FaultServer::start();
    let path = format!("/v2/img/blobs/{d}");
    fake.route(
        &path,
        vec![Behavior::Stall {
            body: good.clone(),
            send: good.len() / 2,
            pause: Duration::from_secs(30),
        }],
    );
    let cache = tempfile::tempdir().unwrap();
    let ups = oci_upstream("f", &fake.url(), "    timeouts: {idle: 60s}\n");
    let mut first = chartbridge_with(&ups, "", Some(cache.path()));
    let url = format!("{}/v2/f/img/blobs/{d}", first.url());
    let reader = std::thread::spawn(move || {
        let r = client().get(&url).send();
        r.map(|r| r.bytes().map(|b| b.len()).unwrap_or(0))
            .unwrap_or(0)
    });
    // wait until half the blob is in the temp file
    let tmp = cache.path().join("tmp");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let partial = std::fs::read_dir(&tmp)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().ends_with(".part"))
            })
            .unwrap_or(false);
        if partial {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill9();
    assert!(
        reader.join().unwrap() < good.len(),
        "the client saw the download fail"
    );
    assert!(
        !cache.path().join("sha256").join(d.hex()).exists(),
        "no partial blob is visible"
    );

    fake.route(&path, vec![Behavior::ok(&good, OCTET)]);
    let second = chartbridge_with(&ups, "", Some(cache.path()));
    let leftovers: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temp files from the crash are cleaned at start"
    );
    let r = get(&format!("{}/v2/f/img/blobs/{d}", second.url()));
    assert_eq!(r.bytes().unwrap().to_vec(), good);
}

/// SIGTERM: in-flight downloads finish within `shutdown_grace`, then the process exits.
#[test]
fn sigterm_drains_in_flight_downloads_then_exits() {
    let (good, d) = blob();
    let fake = FaultServer::start();
    fake.route(
        &format!("/v2/img/blobs/{d}"),
        vec![Behavior::Stall {
            body: good.clone(),
            send: good.len() / 2,
            pause: Duration::from_millis(1500),
        }],
    );
    let mut bridge = chartbridge_with(
        &oci_upstream("f", &fake.url(), ""),
        "shutdown_grace: 4s\n",
        None,
    );
    let url = format!("{}/v2/f/img/blobs/{d}", bridge.url());
    let reader = std::thread::spawn(move || get(&url).bytes().map(|b| b.to_vec()));
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &bridge.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let body = reader
        .join()
        .unwrap()
        .expect("the in-flight download completes");
    assert_eq!(body, good, "drained, not cut");
    assert!(
        bridge.wait_exit(Duration::from_secs(12)),
        "exits after the grace period"
    );
    assert!(
        t.elapsed() >= Duration::from_secs(3),
        "waited for the grace period"
    );
}

/// Concurrent cold requests for one blob make one upstream request, and the followers stream
/// the bytes as they arrive instead of waiting for the whole blob: while the upstream stalls
/// halfway, every client already holds a good part of the body.
#[test]
fn followers_stream_a_shared_cold_fetch_as_it_arrives() {
    let (good, _) = blob();
    followers_stream_while_the_upstream_stalls(good);
}

/// The same for a blob bigger than the 64 MiB an in-flight fetch may keep in memory: followers
/// read it back from the temp file as it is written.
#[test]
fn followers_stream_a_blob_bigger_than_the_memory_budget() {
    let big: Vec<u8> = (0..(80u32 << 20) / 4)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    followers_stream_while_the_upstream_stalls(big);
}

fn followers_stream_while_the_upstream_stalls(good: Vec<u8>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let d = chartbridge::ids::Digest::of(&good);
    let fake = FaultServer::start();
    let path = format!("/v2/img/blobs/{d}");
    fake.route(
        &path,
        vec![Behavior::Stall {
            body: good.clone(),
            send: good.len() / 2,
            pause: Duration::from_secs(6),
        }],
    );
    let bridge = bridge_for(&fake, "");
    let clients = 4;
    let progress: Arc<Vec<AtomicUsize>> =
        Arc::new((0..clients).map(|_| AtomicUsize::new(0)).collect());
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let (port, progress, target) = (
                bridge.port,
                progress.clone(),
                format!("/v2/f/img/blobs/{d}"),
            );
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                write!(
                    s,
                    "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut all = Vec::new();
                let mut body_at = None;
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = s.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    all.extend_from_slice(&buf[..n]);
                    if body_at.is_none() {
                        body_at = all.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
                    }
                    if let Some(b) = body_at {
                        progress[i].store(all.len() - b, Ordering::SeqCst);
                    }
                }
                all.split_off(body_at.expect("a response head"))
            })
        })
        .collect();
    // while the upstream is stalled (6 s), every client gets at least a quarter of the blob
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && progress
            .iter()
            .any(|p| p.load(Ordering::SeqCst) < good.len() / 4)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen: Vec<usize> = progress.iter().map(|p| p.load(Ordering::SeqCst)).collect();
    assert!(
        seen.iter().all(|&n| n >= good.len() / 4 && n < good.len()),
        "bytes before the stall ended: {seen:?}"
    );
    for h in handles {
        assert!(
            h.join().unwrap() == good,
            "every client gets the whole, correct blob"
        );
    }
    assert_eq!(fake.hits(&path), 1, "one upstream request");
    // the durable commit (fsync, rename) follows the clients' last byte
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cached(&bridge, &d) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(cached(&bridge, &d), "and the blob is cached");
}
