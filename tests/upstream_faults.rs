//! Upstreams that misbehave in ways a real static server produces on demand: wrong bytes, an
//! index that is not YAML or not Helm's, an oversized index; and many clients missing at once.

use crate::support::*;

/// The archive's bytes no longer match the index digest: refused with 502, never cached, and
/// served correctly once the upstream is fixed.
#[test]
fn a_tarball_that_does_not_match_its_index_digest_is_refused_and_not_cached() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    repo.index(None);
    let good = repo.bytes("demo-0.1.0.tgz");
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 20] ^= 0xff;
    std::fs::write(repo.path("demo-0.1.0.tgz"), &bad).unwrap();
    let web = nginx(repo.dir.path());
    let bridge = chartbridge(&helm_upstream("up", &web.url()));
    let u = bridge.url();

    let (status, code) = oci_code(get(&format!("{u}/v2/up/demo/manifests/0.1.0")));
    assert_eq!((status, code.as_str()), (502, "UPSTREAM_INVALID"));
    let mirror = get(&format!("{u}/up/-/demo/0.1.0/demo-0.1.0.tgz"));
    assert_eq!(mirror.status(), 502);
    assert!(mirror
        .text()
        .unwrap()
        .contains("does not match its index digest"));
    let helm = Helm::new("v4.1.4");
    let out = tempfile::tempdir().unwrap();
    let pulled = helm.try_pull_oci(&format!("{}/up/demo", bridge.host()), "0.1.0", out.path());
    assert!(pulled.is_err(), "helm must not get a corrupt chart");
    let bad_digest = chartbridge::ids::Digest::of(&bad);
    let cache = bridge.dir.path().join("cache").join("sha256");
    assert!(
        !cache.join(bad_digest.hex()).exists(),
        "corrupt bytes were cached"
    );

    std::fs::write(repo.path("demo-0.1.0.tgz"), &good).unwrap();
    let fixed = get(&format!("{u}/up/-/demo/0.1.0/demo-0.1.0.tgz"));
    assert_eq!(fixed.status(), 200);
    assert_eq!(fixed.bytes().unwrap().to_vec(), good);
}

#[test]
fn a_bad_upstream_index_is_a_clear_error_for_both_views() {
    let site = tempfile::tempdir().unwrap();
    let web = nginx(site.path());
    let bridge = chartbridge_with(
        &helm_upstream("up", &web.url()),
        "limits:\n  max_index_bytes: 4KiB\n",
        None,
    );
    let u = bridge.url();
    let cases: [(&str, String, &str); 4] = [
        (
            "html",
            "<html><body>Not a repo</body></html>".into(),
            "not a valid Helm index",
        ),
        (
            "unknown key",
            "apiVersion: v1\nentries: {}\nbogus: 1\n".into(),
            "bogus",
        ),
        (
            "oversized",
            format!("apiVersion: v1\nentries: {{}}\n#{}\n", "x".repeat(5000)),
            "limit",
        ),
        ("missing", String::new(), "not found upstream"),
    ];
    for (what, body, needle) in cases {
        let file = site.path().join("index.yaml");
        if what == "missing" {
            let _ = std::fs::remove_file(&file);
        } else {
            std::fs::write(&file, body).unwrap();
        }
        let resp = get(&format!("{u}/v2/up/demo/tags/list"));
        assert_eq!(resp.status(), 502, "{what}");
        let v: serde_json::Value = resp.json().unwrap();
        let msg = v["errors"][0]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{what}: {msg}");
        let plain = get(&format!("{u}/up/index.yaml"));
        assert_eq!(plain.status(), 502, "{what}");
        assert!(plain.text().unwrap().contains(needle), "{what}");
    }
    assert_eq!(get(&format!("{u}/healthz")).status(), 200);
}

/// Many clients missing the same chart at once make exactly one upstream request.
#[test]
fn concurrent_cold_misses_make_one_upstream_request() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    repo.index(None);
    let web = nginx(repo.dir.path());
    // a long index_ttl: a refresh during the test would be a second (legitimate) index request
    let ups = helm_upstream("up", &web.url()).replace("index_ttl: 1s", "index_ttl: 5m");
    let bridge = chartbridge(&ups);
    let digest = chartbridge::ids::Digest::of(&repo.bytes("demo-0.1.0.tgz"));
    let urls = [
        format!("{}/v2/up/demo/blobs/{digest}", bridge.url()),
        format!("{}/v2/up/demo/manifests/0.1.0", bridge.url()),
        format!("{}/up/-/demo/0.1.0/demo-0.1.0.tgz", bridge.url()),
    ];
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(30));
    let handles: Vec<_> = (0..30)
        .map(|i| {
            let url = urls[i % 3].clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                let r = get(&url);
                (r.status().as_u16(), r.bytes().unwrap().len())
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().0, 200);
    }
    assert_eq!(
        nginx_hits(&web, "GET /demo-0.1.0.tgz "),
        1,
        "one archive fetch upstream"
    );
    assert_eq!(
        nginx_hits(&web, "GET /index.yaml "),
        1,
        "one index fetch upstream"
    );
}

/// A "registry" that is really a static site (nginx) serving wrong things at registry paths:
/// HTML instead of JSON, a manifest and a blob whose bytes do not match the digest in their
/// path. Each is a clear error, and nothing is cached.
#[test]
fn a_registry_answering_html_or_wrong_bytes_is_refused_and_nothing_is_cached() {
    let site = tempfile::tempdir().unwrap();
    let v2 = site.path().join("v2").join("junk");
    std::fs::create_dir_all(v2.join("tags")).unwrap();
    std::fs::create_dir_all(v2.join("manifests")).unwrap();
    std::fs::create_dir_all(v2.join("blobs")).unwrap();
    let html = b"<html><body>Sign in to continue</body></html>".to_vec();
    std::fs::write(v2.join("tags").join("list"), &html).unwrap();
    std::fs::write(v2.join("manifests").join("1.0"), &html).unwrap();
    let claimed = chartbridge::ids::Digest::of(b"the real bytes");
    std::fs::write(
        v2.join("manifests").join(claimed.to_string()),
        b"{\"schemaVersion\":2}",
    )
    .unwrap();
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(v2.join("blobs").join(claimed.to_string()), &big).unwrap();
    let web = nginx(site.path());
    let bridge = chartbridge_with(
        &oci_upstream("fake", &web.url(), ""),
        "  negative_ttl: 300ms\n",
        None,
    );
    let u = bridge.url();

    let tags = get(&format!("{u}/v2/fake/junk/tags/list"));
    assert_eq!(tags.status(), 502);
    assert!(tags.text().unwrap().contains("not JSON"));
    let m = get(&format!("{u}/v2/fake/junk/manifests/1.0"));
    assert_eq!(m.status(), 502, "an HTML page is not a manifest");
    let m = get(&format!("{u}/v2/fake/junk/manifests/{claimed}"));
    assert_eq!(m.status(), 502);
    assert!(
        m.text().unwrap().contains("refused"),
        "digest mismatch is named"
    );

    // the blob: headers may already be on the way, but the body never completes; twice, the
    // second time past the negative cache
    for _ in 0..2 {
        wait_until("the blob is fetched from the upstream", || {
            let r = client()
                .get(format!("{u}/v2/fake/junk/blobs/{claimed}"))
                .send()
                .unwrap();
            if r.status() != 200 {
                return false; // the failure is still remembered
            }
            assert_eq!(r.content_length(), Some(big.len() as u64));
            assert!(
                r.bytes().is_err(),
                "the connection breaks before a wrong blob completes"
            );
            true
        });
    }
    let cache = bridge.dir.path().join("cache").join("sha256");
    assert!(
        !cache.join(claimed.hex()).exists(),
        "nothing wrong was cached"
    );
    let wrong = chartbridge::ids::Digest::of(&big);
    assert!(!cache.join(wrong.hex()).exists());
    assert_eq!(get(&format!("{u}/healthz")).status(), 200);
}

/// The SSRF boundary: chart URLs in an index may name any host; chartbridge dials the
/// upstream's own host and port, other hosts on 80/443 (or only `allow_hosts`, with ports when
/// named), and never a private address of another host unless `allow_private` says so.
#[test]
fn chart_urls_to_other_hosts_and_private_addresses_are_refused_unless_allowed() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    let web = nginx(repo.dir.path());
    // absolute URLs naming "localhost" (a different host than the configured 127.0.0.1)
    repo.index(Some(&format!("http://localhost:{}", web.port)));
    let mut idx = std::fs::read_to_string(repo.path("index.yaml")).unwrap();
    idx = idx.replace("entries:\n", "entries:\n  meta:\n  - name: meta\n    version: 1.0.0\n    urls:\n    - http://169.254.169.254/latest/meta-data.tgz\n");
    std::fs::write(repo.path("index.yaml"), idx).unwrap();
    let base = helm_upstream("up", &web.url());
    let archive = |b: &Proc, chart: &str, v: &str| {
        get(&format!("{}/up/-/{chart}/{v}/{chart}-{v}.tgz", b.url()))
    };

    let strict = chartbridge(&base);
    let r = archive(&strict, "demo", "0.1.0");
    assert_eq!(r.status(), 502);
    let body = r.text().unwrap();
    assert!(
        body.contains("ports 80 and 443") && body.contains("allow_hosts"),
        "{body}"
    );
    let r = archive(&strict, "meta", "1.0.0");
    assert_eq!(r.status(), 502, "a metadata-service URL is never dialled");
    assert!(r.text().unwrap().contains("allow_private"));

    let local = format!("localhost:{}", web.port);
    let allowed_host = chartbridge(&format!("{base}    allow_hosts: [\"{local}\"]\n"));
    let r = archive(&allowed_host, "demo", "0.1.0");
    assert_eq!(r.status(), 502);
    let body = r.text().unwrap();
    assert!(
        body.contains("private"),
        "localhost resolves to loopback: {body}"
    );

    let open = chartbridge(&format!(
        "{base}    allow_hosts: [\"{local}\"]\n    allow_private: true\n"
    ));
    let r = archive(&open, "demo", "0.1.0");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().to_vec(), repo.bytes("demo-0.1.0.tgz"));
    assert_eq!(nginx_hits(&web, "meta-data"), 0);
}

/// Regression (issue 15, finding 6): an index entry, a redirect or an `oci://` URL pointing
/// at another port of the upstream's own (loopback) host was dialled and its answer served and
/// cached as a chart; a URL with `user:pass@` was fetched; an entry without a digest could
/// make anything a "chart". Now: the other port is refused unless named, credentials in URLs
/// are refused, and a digest-less archive must be a gzip tar holding a Chart.yaml.
#[test]
fn ssrf_scope_pins_ports_refuses_userinfo_and_non_chart_bytes() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    // another service on another port of the same host, which must stay unreachable
    let secret_site = tempfile::tempdir().unwrap();
    std::fs::write(secret_site.path().join("admin.tgz"), b"internal admin page").unwrap();
    let secret = nginx(secret_site.path());
    let index = format!(
        "apiVersion: v1\nentries:\n  \
         other-port:\n  - name: other-port\n    version: 1.0.0\n    urls:\n    - http://127.0.0.1:{p}/admin.tgz\n  \
         creds:\n  - name: creds\n    version: 1.0.0\n    urls:\n    - http://user:secret@127.0.0.1:{own}/demo-0.1.0.tgz\n  \
         notachart:\n  - name: notachart\n    version: 1.0.0\n    urls:\n    - junk.tgz\n  \
         nodigest:\n  - name: nodigest\n    version: 0.1.0\n    urls:\n    - demo-0.1.0.tgz\n",
        p = secret.port,
        own = 0, // replaced below once nginx's port is known
    );
    std::fs::write(repo.path("junk.tgz"), b"<html>not a chart</html>").unwrap();
    let web = nginx(repo.dir.path());
    std::fs::write(
        repo.path("index.yaml"),
        index.replace(":0/demo", &format!(":{}/demo", web.port)),
    )
    .unwrap();
    let bridge = chartbridge(&helm_upstream("up", &web.url()));
    let archive = |chart: &str, v: &str| {
        get(&format!(
            "{}/up/-/{chart}/{v}/{chart}-{v}.tgz",
            bridge.url()
        ))
    };
    let r = archive("other-port", "1.0.0");
    assert_eq!(r.status(), 502);
    let body = r.text().unwrap();
    assert!(body.contains("allow_hosts"), "{body}");
    assert_eq!(
        nginx_hits(&secret, "admin"),
        0,
        "the other port is never dialled"
    );
    let r = archive("creds", "1.0.0");
    assert_eq!(r.status(), 502);
    assert!(r.text().unwrap().contains("credentials"));
    let r = archive("notachart", "1.0.0");
    assert_eq!(r.status(), 502);
    assert!(r.text().unwrap().contains("not a chart archive"));
    // ... and it was not cached: nothing under the junk's digest
    let junk = chartbridge::ids::Digest::of(b"<html>not a chart</html>");
    assert!(!bridge
        .dir
        .path()
        .join("cache/sha256")
        .join(junk.hex())
        .exists());
    // a real chart without a digest in its index entry is still served
    let r = archive("nodigest", "0.1.0");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().to_vec(), repo.bytes("demo-0.1.0.tgz"));
    // naming the other port allows it (and it is still no chart)
    let named = chartbridge(&format!(
        "{}    allow_hosts: [\"127.0.0.1:{}\"]\n",
        helm_upstream("up", &web.url()),
        secret.port
    ));
    let r = get(&format!(
        "{}/up/-/other-port/1.0.0/other-port-1.0.0.tgz",
        named.url()
    ));
    assert_eq!(r.status(), 502);
    assert!(r.text().unwrap().contains("not a chart archive"));
    assert_eq!(nginx_hits(&secret, "admin"), 1);
}
