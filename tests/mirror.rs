//! The Helm HTTP repository mirror: rewritten index, conditional requests, and serving from
//! cache when the upstream is gone.

use chartbridge::convert::index::{parse_index, IndexLimits};

use crate::support::*;

#[test]
fn mirror_index_points_every_url_at_chartbridge_and_honours_etags() {
    let repo = ChartRepo::new(&[("demo", "0.1.0"), ("other", "1.2.3")]);
    let web = nginx(repo.dir.path());
    repo.index(Some(&web.url())); // absolute upstream URLs must not leak through
    let bridge = chartbridge(&helm_upstream("up", &web.url()));
    let resp = get(&format!("{}/up/index.yaml", bridge.url()));
    assert_eq!(resp.status(), 200);
    let etag = resp.headers()["etag"].to_str().unwrap().to_string();
    let body = resp.bytes().unwrap();
    let idx = parse_index(&body, IndexLimits::default()).unwrap();
    for (name, versions) in &idx.entries {
        for v in versions {
            assert_eq!(
                v.urls,
                vec![format!("-/{name}/{0}/{name}-{0}.tgz", v.version)]
            );
            assert!(!v.digest.is_empty());
        }
    }
    let again = client()
        .get(format!("{}/up/index.yaml", bridge.url()))
        .header("If-None-Match", &etag)
        .send()
        .unwrap();
    assert_eq!(again.status(), 304);
    // the same bytes whatever Host the client used
    let other = get(&format!("http://localhost:{}/up/index.yaml", bridge.port))
        .bytes()
        .unwrap();
    assert_eq!(other, body);
}

#[test]
fn index_refresh_is_conditional_and_the_last_good_copy_survives_an_outage() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    repo.index(None);
    let mut web = nginx(repo.dir.path());
    let bridge = chartbridge(&helm_upstream("up", &web.url())); // index_ttl: 1s
    let u = bridge.url();
    assert_eq!(get(&format!("{u}/up/index.yaml")).status(), 200);
    assert_eq!(
        get(&format!("{u}/up/-/demo/0.1.0/demo-0.1.0.tgz")).status(),
        200
    );
    assert_eq!(
        get(&format!("{u}/v2/up/demo/manifests/0.1.0")).status(),
        200
    );
    // past index_ttl, a request revalidates: a conditional GET the upstream answers 304
    wait_until("a conditional refresh answered 304", || {
        assert_eq!(get(&format!("{u}/up/index.yaml")).status(), 200);
        std::fs::read_to_string(web.dir.path().join("access.log"))
            .unwrap()
            .lines()
            .any(|l| l.contains("GET /index.yaml") && l.contains("\" 304 "))
    });

    web.stop();
    wait_until(
        "past index_ttl, the last good index is served stale",
        || {
            get(&format!("{u}/up/index.yaml"))
                .headers()
                .contains_key("warning")
        },
    );
    let stale = get(&format!("{u}/up/index.yaml"));
    assert_eq!(
        stale.status(),
        200,
        "last good index is served while the upstream is down"
    );
    assert_eq!(
        get(&format!("{u}/up/-/demo/0.1.0/demo-0.1.0.tgz"))
            .bytes()
            .unwrap()
            .to_vec(),
        repo.bytes("demo-0.1.0.tgz")
    );
    assert_eq!(
        get(&format!("{u}/v2/up/demo/manifests/0.1.0")).status(),
        200
    );
    let helm = Helm::new("v4.1.4");
    let out = tempfile::tempdir().unwrap();
    let pulled = helm.pull_oci(
        &format!("{}/up/demo", bridge.host()),
        "0.1.0",
        out.path(),
        "demo-0.1.0.tgz",
    );
    assert_eq!(pulled, repo.bytes("demo-0.1.0.tgz"));
}

/// Air gap: a restarted chartbridge with the upstream unreachable serves what it cached before,
/// through both views, with the same manifest digest.
#[test]
fn a_restart_with_the_upstream_down_serves_from_disk() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    repo.index(None);
    let mut web = nginx(repo.dir.path());
    let cache = tempfile::tempdir().unwrap();
    let ups = helm_upstream("up", &web.url());
    let first = chartbridge_with(&ups, "", Some(cache.path()));
    let m1 = get(&format!("{}/v2/up/demo/manifests/0.1.0", first.url()))
        .bytes()
        .unwrap();
    assert_eq!(get(&format!("{}/up/index.yaml", first.url())).status(), 200);
    drop(first);
    web.stop();

    let second = chartbridge_with(&ups, "", Some(cache.path()));
    let u = second.url();
    assert_eq!(
        get(&format!("{u}/v2/up/demo/manifests/0.1.0"))
            .bytes()
            .unwrap(),
        m1
    );
    assert_eq!(get(&format!("{u}/up/index.yaml")).status(), 200);
    for v in HELM_VERSIONS {
        let helm = Helm::new(v);
        let out = tempfile::tempdir().unwrap();
        let out_s = out.path().to_str().unwrap();
        helm.pull_oci(
            &format!("{}/up/demo", second.host()),
            "0.1.0",
            out.path(),
            "demo-0.1.0.tgz",
        );
        helm.run(&["repo", "add", "m", &format!("{u}/up")]);
        helm.run(&["pull", "m/demo", "-d", out_s]);
        assert_eq!(
            std::fs::read(out.path().join("demo-0.1.0.tgz")).unwrap(),
            repo.bytes("demo-0.1.0.tgz")
        );
    }
}
