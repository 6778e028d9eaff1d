//! Regressions from the adversarial review (issue 15), one test per finding, each against the
//! real binary with real peers (nginx, CNCF distribution, skopeo).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::*;

fn status_and_code(r: reqwest::blocking::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body = r.text().unwrap_or_default();
    let code = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_string))
        .unwrap_or(body);
    (status, code)
}

fn auth_get(url: &str) -> reqwest::blocking::Response {
    client()
        .get(url)
        .basic_auth("alice", Some("wonder-pw"))
        .header(
            "Accept",
            "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
        )
        .send()
        .unwrap()
}

/// Finding 1 (HIGH): after an authorised pull from a protected upstream, its layers,
/// manifests, chart archive, config blob and synthesised manifest were readable anonymously
/// by digest through any other upstream or repository (path prefix, `default_upstream`,
/// `?ns=`), on GET and HEAD. Now a by-digest read is served from the shared store only to a
/// repository linked to the digest, or when that repository's own upstream confirms it.
#[test]
fn protected_content_is_not_readable_by_digest_through_other_repositories() {
    let secrets = tempfile::tempdir().unwrap();
    write_htpasswd(&secrets.path().join("htpasswd"), "alice", "wonder-pw");
    let access = format!(
        "    access: {{htpasswd_file: {}}}\n",
        secrets.path().join("htpasswd").display()
    );
    // protected content: an image in one registry, a chart in one repository
    let mut private_reg = registry();
    let layouts = tempfile::tempdir().unwrap();
    make_image_layout(&layouts.path().join("l"), "v1", 200_000, 41);
    push_layout(&layouts.path().join("l"), "v1", &private_reg, "team/app");
    let private_charts = ChartRepo::new(&[("demo", "0.1.0")]);
    private_charts.index(None);
    let private_web = nginx(private_charts.dir.path());
    // public neighbours that do not hold it
    let public_reg = registry();
    let public_charts = ChartRepo::new(&[("other", "0.2.0")]);
    public_charts.index(None);
    let public_web = nginx(public_charts.dir.path());
    let ups = format!(
        "{}{access}{}{}{access}{}",
        oci_upstream("priv-oci", &private_reg.url(), ""),
        oci_upstream("pub-oci", &public_reg.url(), ""),
        helm_upstream("priv-helm", &private_web.url()),
        helm_upstream("pub-helm", &public_web.url()),
    );
    let cache = tempfile::tempdir().unwrap();
    let extra = "default_upstream: pub-oci\n";
    let bridge = chartbridge_with(&ups, extra, Some(cache.path()));
    let u = bridge.url();

    // every digest of the protected image, read from the layout
    let digests: Vec<String> = std::fs::read_dir(layouts.path().join("l/blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    assert!(
        digests.len() >= 7,
        "index, 2 manifests, 2 configs, 2 layers"
    );
    let archive = chartbridge::ids::Digest::of(&private_charts.bytes("demo-0.1.0.tgz"));

    let probes = |synthesised: &[String]| -> Vec<String> {
        let mut urls = Vec::new();
        for d in &digests {
            for path in [
                format!("/v2/pub-oci/team/app/blobs/{d}"),
                format!("/v2/pub-oci/any/repo/manifests/{d}"),
                format!("/v2/team/app/blobs/{d}"),
                format!("/v2/team/app/manifests/{d}"),
                format!("/v2/team/app/blobs/{d}?ns={}", public_reg.host()),
                format!("/v2/pub-helm/other/blobs/{d}"),
            ] {
                urls.push(format!("{u}{path}"));
            }
        }
        for d in synthesised.iter().chain([&archive.to_string()]) {
            for path in [
                format!("/v2/pub-helm/other/blobs/{d}"),
                format!("/v2/pub-helm/other/manifests/{d}"),
                format!("/v2/pub-oci/team/app/blobs/{d}"),
                format!("/v2/any/thing/manifests/{d}"),
            ] {
                urls.push(format!("{u}{path}"));
            }
        }
        urls
    };
    let refused = |urls: &[String]| {
        for url in urls {
            let (status, code) = status_and_code(get(url));
            assert_eq!(status, 404, "{url}: {code}");
            assert!(
                ["BLOB_UNKNOWN", "MANIFEST_UNKNOWN", "NAME_UNKNOWN"].contains(&code.as_str()),
                "{url}: {code}"
            );
            let head = client().head(url).send().unwrap();
            assert_eq!(head.status(), 404, "HEAD {url}");
        }
    };
    refused(&probes(&[]));

    // the authorised pulls: the whole image with skopeo, the chart with its manifest
    let out = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        "--src-creds",
        "alice:wonder-pw",
        &format!("docker://{}/priv-oci/team/app:v1", bridge.host()),
        &format!("oci:{}:v1", out.path().display()),
    ])
    .expect("authorised pull");
    let m = auth_get(&format!("{u}/v2/priv-helm/demo/manifests/0.1.0"));
    assert_eq!(m.status(), 200);
    let manifest_digest = m.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    let manifest: serde_json::Value = m.json().unwrap();
    let config = manifest["config"]["digest"].as_str().unwrap().to_string();
    for d in [&config, &archive.to_string()] {
        let r = auth_get(&format!("{u}/v2/priv-helm/demo/blobs/{d}"));
        assert_eq!(r.status(), 200, "{d}");
    }
    for d in &digests {
        assert!(
            bridge.dir.path().join("x").exists()
                || cache
                    .path()
                    .join("sha256")
                    .join(d.trim_start_matches("sha256:"))
                    .exists(),
            "{d} is in the shared store"
        );
    }

    // still refused anonymously, GET and HEAD, every route that reaches the shared store
    let synthesised = [manifest_digest.clone(), config.clone()];
    refused(&probes(&synthesised));
    // the protected upstream with credentials, but a repository its registry does not have
    for d in &digests {
        let r = auth_get(&format!("{u}/v2/priv-oci/not/there/blobs/{d}"));
        assert_eq!(r.status(), 404, "{d}");
    }

    // links survive a restart: with the registry gone, the repository that holds the content
    // still serves it by digest, and nobody else does
    drop(bridge);
    private_reg.stop();
    let bridge = chartbridge_with(&ups, extra, Some(cache.path()));
    let u2 = bridge.url();
    for d in &digests {
        let kind = if auth_get(&format!("{u2}/v2/priv-oci/team/app/blobs/{d}")).status() == 200 {
            "blob"
        } else {
            "manifest"
        };
        if kind == "manifest" {
            let r = auth_get(&format!("{u2}/v2/priv-oci/team/app/manifests/{d}"));
            assert_eq!(r.status(), 200, "{d} by digest after a restart");
        }
    }
    let r = auth_get(&format!(
        "{u2}/v2/priv-helm/demo/manifests/{manifest_digest}"
    ));
    assert_eq!(r.status(), 200);
    let urls: Vec<String> = probes(&synthesised)
        .into_iter()
        .map(|p| p.replace(&u, &u2))
        .filter(|p| !p.contains("/v2/pub-oci/") && !p.contains("ns=") && !p.contains("/v2/team/"))
        .collect();
    refused(&urls);
}

/// Finding 2 (HIGH): `Range: bytes=0-0` on a cold 8 MB blob hung its client, and every later
/// request for that digest stalled: the leader kept a channel it never read. A cold range now
/// answers 206 from the bytes as they arrive, alone or beside full GETs, and the fetch
/// completes and is cached.
#[test]
fn a_cold_range_get_never_freezes_the_blob_download() {
    let reg = registry();
    const LEN: usize = 8 << 20;
    let blobs: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            let b = noise(LEN, 100 + i);
            (push_blob(&reg, "big/blob", &b), b)
        })
        .collect();
    let bridge = chartbridge(&oci_upstream("reg", &reg.url(), ""));
    let url = |d: &str| format!("{}/v2/reg/big/blob/blobs/{d}", bridge.url());
    let ranged = |d: &str, range: &str| {
        let r = client()
            .get(url(d))
            .header("Range", range)
            .send()
            .expect("answers promptly");
        let status = r.status().as_u16();
        let cr = r
            .headers()
            .get("content-range")
            .map(|v| v.to_str().unwrap().to_string());
        (status, cr, r.bytes().unwrap().to_vec())
    };
    let cached = |d: &str| {
        bridge
            .dir
            .path()
            .join("cache/sha256")
            .join(d.trim_start_matches("sha256:"))
            .exists()
    };
    let mid = LEN / 2;
    let cases = [
        ("bytes=0-0".to_string(), 0, 1),
        (format!("bytes={mid}-{}", mid + 99), mid, mid + 100),
        ("bytes=-10".to_string(), LEN - 10, LEN),
    ];
    // each range alone, on its own cold blob
    for (i, (range, start, end)) in cases.iter().enumerate() {
        let (d, b) = &blobs[i];
        let (status, cr, body) = ranged(d, range);
        assert_eq!(status, 206, "{range}");
        assert_eq!(cr, Some(format!("bytes {start}-{}/{LEN}", end - 1)));
        assert!(body == b[*start..*end], "{range}: the right bytes");
        wait_until("the ranged fetch completes and is cached", || cached(d));
        let full = get(&url(d));
        assert_eq!(full.status(), 200);
        assert!(
            full.bytes().unwrap().to_vec() == *b,
            "then whole, from cache"
        );
    }
    // all three ranges and three full GETs at once, on the last cold blob
    let (d, b) = blobs[3].clone();
    let handles: Vec<_> = cases
        .iter()
        .map(|(range, start, end)| Some((range.clone(), *start, *end)))
        .chain([None, None, None])
        .map(|case| {
            let (u, b) = (url(&d), b.clone());
            std::thread::spawn(move || {
                let req = client().get(&u);
                match case {
                    Some((range, start, end)) => {
                        let r = req.header("Range", &range).send().unwrap();
                        assert_eq!(r.status(), 206, "{range}");
                        assert!(r.bytes().unwrap().to_vec() == b[start..end], "{range}");
                    }
                    None => {
                        let r = req.send().unwrap();
                        assert_eq!(r.status(), 200);
                        assert!(r.bytes().unwrap().to_vec() == b, "full GET beside ranges");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    wait_until("cached", || cached(&d));
    let (status, _, body) = ranged(&d, "bytes=100-199");
    assert_eq!((status, body.as_slice()), (206, &b[100..200]));
    wait_until("no temp files left", || {
        std::fs::read_dir(bridge.dir.path().join("cache/tmp"))
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".part"))
    });
}

/// Finding 3 (MEDIUM): a helm upstream answered 500 for a cold chart archive and a
/// synthesised manifest when the cache disk refused writes (`BlobCache::put` failed the
/// request); OCI content streamed through. Both kinds now serve verified bytes uncached on a
/// read-only or full disk, with the same warning and metric, and a deleted cache directory is
/// recreated.
#[test]
fn a_helm_upstream_serves_uncached_when_the_cache_disk_refuses_writes() {
    let charts = ChartRepo::new(&[("demo", "0.1.0")]);
    charts.index(None);
    let web = nginx(charts.dir.path());
    let reg = registry();
    let layer = noise(300_000, 7);
    let layer_digest = push_blob(&reg, "img/x", &layer);
    let ups = format!(
        "{}{}",
        helm_upstream("up", &web.url()),
        oci_upstream("reg", &reg.url(), "")
    );
    let check = |bridge: &Proc, what: &str| {
        let u = bridge.url();
        let r = get(&format!("{u}/up/-/demo/0.1.0/demo-0.1.0.tgz"));
        assert_eq!(r.status(), 200, "{what}: archive");
        assert_eq!(r.bytes().unwrap().to_vec(), charts.bytes("demo-0.1.0.tgz"));
        let r = get(&format!("{u}/v2/up/demo/manifests/0.1.0"));
        assert_eq!(r.status(), 200, "{what}: synthesised manifest");
        let m: serde_json::Value = r.json().unwrap();
        let config = m["config"]["digest"].as_str().unwrap();
        let r = get(&format!("{u}/v2/up/demo/blobs/{config}"));
        assert_eq!(r.status(), 200, "{what}: config blob");
        let r = get(&format!("{u}/v2/reg/img/x/blobs/{layer_digest}"));
        assert_eq!(r.status(), 200, "{what}: layer");
        assert!(r.bytes().unwrap().to_vec() == layer);
        // and again, with nothing cached on disk
        let r = get(&format!("{u}/up/-/demo/0.1.0/demo-0.1.0.tgz"));
        assert_eq!(r.status(), 200, "{what}: archive again");
    };
    let said_so = |bridge: &Proc, what: &str| {
        let metrics = get(&format!("{}/metrics", bridge.url())).text().unwrap();
        assert!(
            metric(&metrics, "chartbridge_cache_write_failures_total", &[]) >= 1.0,
            "{what}: metric"
        );
        let log = std::fs::read_to_string(bridge.dir.path().join("server.log")).unwrap();
        assert!(log.contains("cache write failed"), "{what}: {log}");
    };

    // read-only: the cache's own tmpfs remounted read-only under the running process
    let ro = chartbridge_on_tmpfs(&ups, "16m");
    let cache = ro.dir.path().join("cache");
    let out = std::process::Command::new("nsenter")
        .args([
            "-t",
            &ro.pid().to_string(),
            "-m",
            "mount",
            "-o",
            "remount,ro",
        ])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(out.status.success(), "remount: {out:?}");
    check(&ro, "read-only");
    said_so(&ro, "read-only");

    // full: a 1 MiB tmpfs filled up before the first request
    let full = chartbridge_on_tmpfs(&ups, "1m");
    let filler = full.cache_view().join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    while f.write_all(&[0u8; 65536]).is_ok() {}
    let _ = f.sync_all();
    check(&full, "full");
    said_so(&full, "full");

    // deleted: the directory is recreated and caching resumes
    let gone = chartbridge(&ups);
    let dir = gone.dir.path().join("cache");
    std::fs::remove_dir_all(&dir).unwrap();
    check(&gone, "deleted");
    let archive = chartbridge::ids::Digest::of(&charts.bytes("demo-0.1.0.tgz"));
    assert!(
        dir.join("sha256").join(archive.hex()).exists(),
        "the cache directory was recreated and the archive cached"
    );
    assert_eq!(get(&format!("{}/readyz", gone.url())).status(), 200);
}

/// Finding 4 (MEDIUM): connections that send one header line every few seconds were never
/// cut, and enough of them exhausted the descriptor limit. A whole request head now has
/// `limits.request_head_timeout`, connections over `limits.max_connections` get a 503 (and a
/// log line), the open-file limit is raised to the hard limit, and idle keep-alive
/// connections still wait `idle_timeout` for their next request.
#[test]
fn slow_header_connections_are_cut_and_the_connection_count_is_capped() {
    let extra = "limits:\n  request_head_timeout: 1s\n  max_connections: 40\n";
    let ups = helm_upstream("up", "http://127.0.0.1:9/");
    let bridge = chartbridge_full(&ups, extra, None, &[], "info");
    let port = bridge.port;
    let slow: Vec<_> = (0..60)
        .map(|_| {
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
                let mut got = Vec::new();
                while start.elapsed() < Duration::from_secs(8) {
                    let mut buf = [0u8; 512];
                    match s.read(&mut buf) {
                        Ok(0) => return (start.elapsed(), got),
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => return (start.elapsed(), got),
                    }
                    // one more header line, never the end of the head
                    if s.write_all(b"X-Slow: 1\r\n").is_err() {
                        return (start.elapsed(), got);
                    }
                }
                (start.elapsed(), got)
            })
        })
        .collect();
    let results: Vec<_> = slow.into_iter().map(|h| h.join().unwrap()).collect();
    let refused = results
        .iter()
        .filter(|(_, got)| String::from_utf8_lossy(got).starts_with("HTTP/1.1 503"))
        .count();
    assert!(
        refused >= 15,
        "connections over the limit get a 503 ({refused})"
    );
    for (took, _) in &results {
        assert!(
            *took < Duration::from_secs(6),
            "every slow connection was closed by the server (one took {took:?})"
        );
    }
    // the server still answers, and says what it did
    assert_eq!(get(&format!("{}/healthz", bridge.url())).status(), 200);
    let metrics = get(&format!("{}/metrics", bridge.url())).text().unwrap();
    assert!(
        metric(
            &metrics,
            "chartbridge_connections_closed_total",
            &["head_timeout"]
        ) >= 30.0
    );
    assert!(
        metric(
            &metrics,
            "chartbridge_connections_closed_total",
            &["over_limit"]
        ) >= 15.0
    );
    let log = std::fs::read_to_string(bridge.dir.path().join("server.log")).unwrap();
    assert!(log.contains("connection limit reached"), "{log}");
    // the soft open-file limit was raised to the hard one
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", bridge.pid())).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums[0], nums[1], "{files}");
    // an idle keep-alive connection outlives the head timeout and serves its next request
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(req).unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    std::thread::sleep(Duration::from_millis(1600));
    s.write_all(req).unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "keep-alive survives an idle wait longer than the head timeout"
    );
}

/// Finding 7 (LOW): pipelined requests were answered once and the rest dropped; an HTTP/1.1
/// request without Host was served; `bytes=-0` was not 416 and `bytes=+1-3` was taken as a
/// range; an `If-Range` that no longer matched still got a part; an index view of an OCI
/// repository holding no chart asked the upstream for every tag's manifest on each request.
#[test]
fn http_details_pipelining_host_ranges_and_the_index_negative_cache() {
    let charts = ChartRepo::new(&[("demo", "0.1.0")]);
    charts.index(None);
    let web = nginx(charts.dir.path());
    let reg = registry();
    let layouts = tempfile::tempdir().unwrap();
    make_image_layout(&layouts.path().join("l"), "v1.0.0", 10_000, 3);
    push_layout(&layouts.path().join("l"), "v1.0.0", &reg, "just/images");
    let ups = format!(
        "{}{}",
        helm_upstream("up", &web.url()),
        oci_upstream("reg", &reg.url(), "").replace("tag_ttl: 1s", "tag_ttl: 1m")
    );
    let bridge = chartbridge(&ups);
    let u = bridge.url();

    // three pipelined requests in one write: three answers, in order
    let out = raw_exchange(
        bridge.port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /v2/up/demo/tags/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "{out}");
    let (a, b, c) = (
        out.find("ok\n").unwrap(),
        out.find("{}").unwrap(),
        out.find("\"tags\"").unwrap(),
    );
    assert!(a < b && b < c, "in order: {out}");
    // Host is required of HTTP/1.1 (not of 1.0)
    let out = raw_exchange(bridge.port, b"GET /healthz HTTP/1.1\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let out = raw_exchange(bridge.port, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert!(out.contains(" 200 "), "{out}");

    // ranges on a cached blob
    let archive = charts.bytes("demo-0.1.0.tgz");
    let d = chartbridge::ids::Digest::of(&archive);
    let blob = format!("{u}/v2/up/demo/blobs/{d}");
    assert_eq!(get(&blob).status(), 200);
    let ranged = |range: &str, if_range: Option<&str>| {
        let mut req = client().get(&blob).header("Range", range);
        if let Some(v) = if_range {
            req = req.header("If-Range", v);
        }
        let r = req.send().unwrap();
        let cr = r
            .headers()
            .get("content-range")
            .map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), cr, r.bytes().unwrap().len())
    };
    let len = archive.len();
    assert_eq!(
        ranged("bytes=-0", None),
        (
            416,
            Some(format!("bytes */{len}")),
            ranged("bytes=-0", None).2
        )
    );
    assert_eq!(ranged("bytes=+1-3", None), (200, None, len));
    assert_eq!(
        ranged("bytes=1-3", Some(&format!("\"{d}\""))),
        (206, Some(format!("bytes 1-3/{len}")), 3)
    );
    assert_eq!(
        ranged("bytes=1-3", Some("\"sha256:someotherversion\"")),
        (200, None, len)
    );

    // an OCI repository without charts: its index view is remembered as "no charts"
    let index = format!("{u}/reg/just/images/index.yaml");
    let upstream_requests = || {
        let m = get(&format!("{u}/metrics")).text().unwrap();
        metric(
            &m,
            "chartbridge_upstream_requests_total",
            &["upstream=\"reg\""],
        )
    };
    assert_eq!(get(&index).status(), 404);
    let before = upstream_requests();
    assert!(before >= 2.0, "tags and a manifest were fetched");
    for _ in 0..3 {
        assert_eq!(get(&index).status(), 404);
    }
    assert_eq!(upstream_requests(), before, "answered from memory");
}

/// Finding 8 (INFO): a big index took RSS far past `max_memory_bytes` and kept it. Parsed
/// indexes are now compact and counted against `cache.max_index_memory_bytes`: when two do not
/// fit, the least recently used leaves memory (and is read back from disk when asked for), and
/// one that alone is over the budget is refused naming the setting.
#[test]
fn parsed_indexes_stay_within_the_index_memory_budget() {
    let site = tempfile::tempdir().unwrap();
    for dir in ["a", "b"] {
        std::fs::create_dir_all(site.path().join(dir)).unwrap();
        let ok = std::process::Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gen-index.py"))
            .args(["30", "100"])
            .arg(site.path().join(dir).join("index.yaml"))
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    let web = nginx(site.path());
    let ups = format!(
        "{}{}",
        helm_upstream("a", &format!("{}/a", web.url())),
        helm_upstream("b", &format!("{}/b", web.url()))
    )
    .replace("index_ttl: 1s", "index_ttl: 1h");
    // one parsed 3,000-version index holds about 3 MiB: two do not fit in 5 MiB
    let bridge = chartbridge_with(&ups, "  max_index_memory_bytes: 5MiB\n", None);
    let tags = |up: &str| get(&format!("{}/v2/{up}/chart001/tags/list", bridge.url()));
    assert_eq!(tags("a").status(), 200);
    assert_eq!(tags("b").status(), 200);
    wait_until("the older index leaves memory", || {
        std::fs::read_to_string(bridge.dir.path().join("server.log"))
            .unwrap()
            .contains("parsed index dropped from memory")
    });
    assert_eq!(tags("a").status(), 200, "read back from its persisted copy");
    let index = get(&format!("{}/a/index.yaml", bridge.url()));
    assert_eq!(index.status(), 200);
    // an index that alone is over the budget is refused, naming the setting
    let tight = chartbridge_with(&ups, "  max_index_memory_bytes: 1MiB\n", None);
    let r = get(&format!("{}/v2/a/chart001/tags/list", tight.url()));
    assert_eq!(r.status(), 502);
    let body = r.text().unwrap();
    assert!(body.contains("cache.max_index_memory_bytes"), "{body}");
}

/// On a plain connection chartbridge writes responses itself (head and body in one send,
/// disk-tier blobs with `sendfile`, waiting on the reactor when the socket is full). A reader
/// that pipelines a range, a HEAD and a whole GET of a 3 MiB disk-tier blob and only starts
/// reading once the server's socket is full gets every byte, in order, framed as HTTP/1.1.
#[test]
fn direct_writes_reach_a_slow_pipelining_reader_whole() {
    let reg = registry();
    let layouts = tempfile::tempdir().unwrap();
    let l = layouts.path().join("l");
    make_image_layout(&l, "v1", 3 << 20, 7);
    push_layout(&l, "v1", &reg, "big/image");
    // the biggest blob of the layout is a layer
    let (hex, layer) = std::fs::read_dir(l.join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read(e.path()).unwrap())
        })
        .max_by_key(|(_, b)| b.len())
        .unwrap();
    // a 1 MiB memory tier keeps blobs over 64 KiB on disk only: they are served from a file
    let ups = oci_upstream("reg", &reg.url(), "");
    let bridge = chartbridge_with(&ups, "  max_memory_bytes: 1MiB\n", None);
    let path = format!("/v2/reg/big/image/blobs/sha256:{hex}");
    let cold = get(&format!("{}{path}", bridge.url())).bytes().unwrap();
    assert!(cold[..] == layer[..], "the cold pull fills the cache");
    let disk_hits = || {
        let m = get(&format!("{}/metrics", bridge.url())).text().unwrap();
        let labels = ["tier=\"disk\"", "outcome=\"hit\""];
        metric(&m, "chartbridge_cache_lookups_total", &labels)
    };
    let hits_before = disk_hits();

    let mut s = TcpStream::connect(("127.0.0.1", bridge.port)).unwrap();
    let ask = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=1000-2000999\r\n\r\n\
         HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n\
         GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    s.write_all(ask.as_bytes()).unwrap();
    // the server fills the socket and has to wait for the reader
    std::thread::sleep(Duration::from_millis(500));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    // one response off the front: its head (lower-cased) and `body_len` bytes of body
    let take = |rest: &mut &[u8], body: bool| -> (String, Vec<u8>) {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head")
            + 4;
        let head = String::from_utf8(rest[..end].to_vec())
            .unwrap()
            .to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("content-length")
            .trim()
            .parse()
            .unwrap();
        let n = if body { len } else { 0 };
        let b = rest[end..end + n].to_vec();
        *rest = &rest[end + n..];
        (head, b)
    };
    let mut rest = &out[..];
    let (h, b) = take(&mut rest, true);
    assert!(h.starts_with("http/1.1 206 partial content\r\n"), "{h}");
    let total = layer.len();
    assert!(
        h.contains(&format!("content-range: bytes 1000-2000999/{total}\r\n")),
        "{h}"
    );
    assert!(
        h.contains("connection: keep-alive\r\n") && h.contains("\r\ndate: "),
        "{h}"
    );
    assert!(b[..] == layer[1000..2_001_000], "the range's bytes");
    let (h, b) = take(&mut rest, false);
    assert!(h.starts_with("http/1.1 200 ok\r\n"), "{h}");
    assert!(
        h.contains(&format!("content-length: {total}\r\n")) && b.is_empty(),
        "{h}"
    );
    let (h, b) = take(&mut rest, true);
    assert!(
        h.starts_with("http/1.1 200 ok\r\n") && h.contains("connection: close\r\n"),
        "{h}"
    );
    assert!(b[..] == layer[..], "the whole blob");
    assert!(
        rest.is_empty(),
        "nothing after the last answer, then the close"
    );
    assert!(
        disk_hits() >= hits_before + 3.0,
        "all three came from the disk tier"
    );
}
