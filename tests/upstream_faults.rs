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
    let bridge = chartbridge(&oci_upstream("fake", &web.url(), ""));
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

    // the blob: headers may already be on the way, but the body never completes
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(1100)); // past the negative cache
        let r = client()
            .get(format!("{u}/v2/fake/junk/blobs/{claimed}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "streamed from the upstream's 200");
        assert_eq!(r.content_length(), Some(big.len() as u64));
        assert!(
            r.bytes().is_err(),
            "the connection breaks before a wrong blob completes"
        );
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

/// The SSRF boundary: chart URLs in an index may name any host; chartbridge dials only the
/// upstream's own host and `allow_hosts`, and never a private address of another host unless
/// `allow_private` says so.
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
    assert!(r.text().unwrap().contains("not in its allow_hosts"));
    let r = archive(&strict, "meta", "1.0.0");
    assert_eq!(r.status(), 502, "a metadata-service URL is never dialled");

    let allowed_host = chartbridge(&format!("{base}    allow_hosts: [localhost]\n"));
    let r = archive(&allowed_host, "demo", "0.1.0");
    assert_eq!(r.status(), 502);
    let body = r.text().unwrap();
    assert!(
        body.contains("private"),
        "localhost resolves to loopback: {body}"
    );

    let open = chartbridge(&format!(
        "{base}    allow_hosts: [localhost]\n    allow_private: true\n"
    ));
    let r = archive(&open, "demo", "0.1.0");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().to_vec(), repo.bytes("demo-0.1.0.tgz"));
}
