//! The distribution-spec pull API over a helm upstream, checked with a plain HTTP client.

use crate::support::*;

fn setup(charts: &[(&str, &str)]) -> (ChartRepo, Proc, Proc) {
    let repo = ChartRepo::new(charts);
    repo.index(None);
    let web = nginx(repo.dir.path());
    let bridge = chartbridge(&helm_upstream("up", &web.url()));
    (repo, web, bridge)
}

#[test]
fn tags_list_paginates_and_synthesises_latest() {
    let (_repo, _web, bridge) = setup(&[
        ("demo", "0.1.0"),
        ("demo", "0.2.0"),
        ("demo", "0.3.0+build.1"),
        ("demo", "1.0.0-rc.1"),
    ]);
    let all: serde_json::Value = get(&format!("{}/v2/up/demo/tags/list", bridge.url()))
        .json()
        .unwrap();
    assert_eq!(all["name"], "up/demo");
    assert_eq!(
        all["tags"],
        serde_json::json!(["0.1.0", "0.2.0", "0.3.0_build.1", "1.0.0-rc.1", "latest"])
    );
    let first = get(&format!("{}/v2/up/demo/tags/list?n=2", bridge.url()));
    let link = first.headers()["link"].to_str().unwrap().to_string();
    assert_eq!(link, "</v2/up/demo/tags/list?n=2&last=0.2.0>; rel=\"next\"");
    let first: serde_json::Value = first.json().unwrap();
    assert_eq!(first["tags"], serde_json::json!(["0.1.0", "0.2.0"]));
    let next_path = link.trim_start_matches('<').split('>').next().unwrap();
    let second: serde_json::Value = get(&format!("{}{next_path}", bridge.url())).json().unwrap();
    assert_eq!(
        second["tags"],
        serde_json::json!(["0.3.0_build.1", "1.0.0-rc.1"])
    );

    // latest = highest stable (prerelease excluded), and the build-metadata tag finds its version
    let latest = get(&format!("{}/v2/up/demo/manifests/latest", bridge.url()));
    let by_tag = get(&format!(
        "{}/v2/up/demo/manifests/0.3.0_build.1",
        bridge.url()
    ));
    assert_eq!(latest.status(), 200);
    assert_eq!(
        latest.headers()["docker-content-digest"],
        by_tag.headers()["docker-content-digest"]
    );
    let m: serde_json::Value = latest.json().unwrap();
    assert_eq!(
        m["annotations"]["org.opencontainers.image.version"],
        "0.3.0+build.1"
    );
}

#[test]
fn manifests_and_blobs_carry_the_right_headers_on_get_and_head() {
    let (repo, _web, bridge) = setup(&[("demo", "0.2.0")]);
    let url = format!("{}/v2/up/demo/manifests/0.2.0", bridge.url());
    let get_resp = get(&url);
    let head = client().head(&url).send().unwrap();
    for r in [&get_resp, &head] {
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-type"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(
            r.headers()["docker-distribution-api-version"],
            "registry/2.0"
        );
    }
    assert_eq!(
        head.headers()["content-length"],
        get_resp.headers()["content-length"]
    );
    let digest = get_resp.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        head.headers()["docker-content-digest"].to_str().unwrap(),
        digest
    );
    let body = get_resp.bytes().unwrap();
    assert_eq!(chartbridge::ids::Digest::of(&body).to_string(), digest);

    // by digest, and with a v prefix
    let by_digest = get(&format!("{}/v2/up/demo/manifests/{digest}", bridge.url()));
    assert_eq!(by_digest.bytes().unwrap(), body);
    let v = get(&format!("{}/v2/up/demo/manifests/v0.2.0", bridge.url()));
    assert_eq!(
        v.headers()["docker-content-digest"].to_str().unwrap(),
        digest
    );

    // blobs: config and layer, HEAD, Range
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    let blob_url = format!("{}/v2/up/demo/blobs/{layer}", bridge.url());
    let original = repo.bytes("demo-0.2.0.tgz");
    let b = get(&blob_url);
    assert_eq!(
        b.headers()["docker-content-digest"].to_str().unwrap(),
        layer
    );
    assert_eq!(b.bytes().unwrap().to_vec(), original);
    let h = client().head(&blob_url).send().unwrap();
    assert_eq!(
        h.headers()["content-length"].to_str().unwrap(),
        original.len().to_string()
    );
    assert_eq!(
        get_range(&blob_url, "10-19", original.len()),
        original[10..20]
    );
    let config = m["config"]["digest"].as_str().unwrap();
    let c = get(&format!("{}/v2/up/demo/blobs/{config}", bridge.url()));
    let c: serde_json::Value = c.json().unwrap();
    assert_eq!(c["name"], "demo");
}

#[test]
fn bad_requests_get_clear_oci_errors() {
    let (_repo, _web, bridge) = setup(&[("demo", "0.1.0")]);
    let u = bridge.url();
    let zero = format!("sha256:{}", "0".repeat(64));
    for (path, status, code) in [
        (
            "/v2/up/demo/manifests/sha256:totallywrong",
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "/v2/up/demo/blobs/sha256:totallywrong",
            400,
            "DIGEST_INVALID",
        ),
        ("/v2/nope/demo/manifests/0.1.0", 404, "NAME_UNKNOWN"),
        ("/v2/up/nochart/manifests/0.1.0", 404, "NAME_UNKNOWN"),
        ("/v2/up/demo/manifests/9.9.9", 404, "MANIFEST_UNKNOWN"),
        (
            &format!("/v2/up/demo/manifests/{zero}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (&format!("/v2/up/demo/blobs/{zero}"), 404, "BLOB_UNKNOWN"),
        ("/v2/up/Demo/manifests/0.1.0", 400, "NAME_INVALID"),
        ("/v2/up%2fdemo/x/manifests/0.1.0", 400, "NAME_INVALID"),
        ("/v2/demo/manifests/0.1.0", 404, "NAME_UNKNOWN"),
    ] {
        assert_eq!(
            oci_code(get(&format!("{u}{path}"))),
            (status, code.to_string()),
            "{path}"
        );
    }
    // traversal, sent raw (clients would normalise it away)
    for path in [
        "/v2/up/../demo/manifests/0.1.0",
        "/v2/up/%2e%2e/demo/manifests/0.1.0",
        "/v2/up/demo%2f..%2fx/manifests/0.1.0",
    ] {
        let (status, body) = raw_get(bridge.port, path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("NAME_INVALID"), "{path}: {body}");
    }
    for path in [
        "/up/-/../../etc/passwd",
        "/up/%2e%2e/index.yaml",
        "/up/-/demo/..%2f..%2f/demo-..%2f..%2f.tgz",
    ] {
        let (status, body) = raw_get(bridge.port, path);
        assert!(matches!(status, 400 | 404), "{path}: {status} {body}");
    }
    let push = client()
        .post(format!("{u}/v2/up/demo/blobs/uploads/"))
        .send()
        .unwrap();
    assert_eq!(oci_code(push), (405, "UNSUPPORTED".to_string()));
    let put = client()
        .put(format!("{u}/v2/up/demo/manifests/0.1.0"))
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(oci_code(put), (405, "UNSUPPORTED".to_string()));
    // a chart of a helm upstream is one name component
    assert_eq!(
        oci_code(get(&format!("{u}/v2/up/x/demo/manifests/0.1.0"))),
        (404, "NAME_UNKNOWN".to_string())
    );
    // the mirror answers plain-text errors, and refuses traversal
    for path in [
        "/up/-/../demo/0.1.0/demo-0.1.0.tgz",
        "/up/-/demo/0.1.0/..%2F..%2Fetc%2Fpasswd",
        "/up/-/demo%2F..%2F/0.1.0/x.tgz",
    ] {
        let r = get(&format!("{u}{path}"));
        assert!(
            matches!(r.status().as_u16(), 400 | 404),
            "{path}: {}",
            r.status()
        );
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
    }
    assert_eq!(get(&format!("{u}/nope/index.yaml")).status(), 404);
    // an overlong path, an oversized header, too many header fields, a malformed header
    let long = format!("/v2/up/{}/manifests/0.1.0", "a".repeat(3000));
    let (status, body) = raw_get(bridge.port, &long);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("too long"), "{body}");
    let fields: String = (0..300).map(|i| format!("X-{i}: y\r\n")).collect();
    for head in [
        format!("X-Big: {}\r\n", "a".repeat(2 << 20)),
        fields,
        "Broken header\r\n".to_string(),
    ] {
        let raw = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{head}\r\n");
        let answer = raw_exchange(bridge.port, raw.as_bytes());
        assert!(
            answer.starts_with("HTTP/1.1 400") && answer.contains("bad request header"),
            "{}",
            &answer[..answer.len().min(200)]
        );
    }
    // the process is still healthy after all of that
    assert_eq!(get(&format!("{u}/healthz")).status(), 200);
}

/// The manifest is a pure function of the upstream chart: two separately started proxies with
/// their own caches, asked under different Host names, serve the same bytes.
#[test]
fn two_separately_started_proxies_serve_identical_manifests() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    repo.index(None);
    let web = nginx(repo.dir.path());
    let a = chartbridge(&helm_upstream("up", &web.url()));
    let b = chartbridge(&helm_upstream("up", &web.url()));
    let ma = get(&format!("{}/v2/up/demo/manifests/0.1.0", a.url()))
        .bytes()
        .unwrap();
    let mb = get(&format!(
        "http://localhost:{}/v2/up/demo/manifests/0.1.0",
        b.port
    ))
    .bytes()
    .unwrap();
    assert_eq!(ma, mb);
    // and after a restart of one of them on a fresh cache
    drop(a);
    let c = chartbridge(&helm_upstream("up", &web.url()));
    let mc = get(&format!("{}/v2/up/demo/manifests/latest", c.url()))
        .bytes()
        .unwrap();
    assert_eq!(ma, mc);
}

/// A `.prov` file next to the chart becomes the provenance layer, and the mirror serves it.
#[test]
fn provenance_file_becomes_a_layer() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    repo.index(None);
    let prov = b"-----BEGIN PGP SIGNED MESSAGE-----\nnot really signed\n".to_vec();
    std::fs::write(repo.path("demo-0.1.0.tgz.prov"), &prov).unwrap();
    let web = nginx(repo.dir.path());
    let bridge = chartbridge(&helm_upstream("up", &web.url()));
    let m: serde_json::Value = get(&format!("{}/v2/up/demo/manifests/0.1.0", bridge.url()))
        .json()
        .unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    let p = layers
        .iter()
        .find(|l| l["mediaType"] == "application/vnd.cncf.helm.chart.provenance.v1.prov")
        .expect("provenance layer");
    let d = p["digest"].as_str().unwrap();
    assert_eq!(d, chartbridge::ids::Digest::of(&prov).to_string());
    let blob = get(&format!("{}/v2/up/demo/blobs/{d}", bridge.url()))
        .bytes()
        .unwrap();
    assert_eq!(blob.to_vec(), prov);
    let via_mirror = get(&format!(
        "{}/up/-/demo/0.1.0/demo-0.1.0.tgz.prov",
        bridge.url()
    ));
    assert_eq!(via_mirror.bytes().unwrap().to_vec(), prov);
    // helm v3.17 and v4 pull the chart with its provenance file
    for v in ["v3.17.3", "v4.1.4"] {
        let out = tempfile::tempdir().unwrap();
        Helm::new(v).run(&[
            "pull",
            &format!("oci://{}/up/demo", bridge.host()),
            "--version",
            "0.1.0",
            "--plain-http",
            "--prov",
            "-d",
            out.path().to_str().unwrap(),
        ]);
        assert_eq!(
            std::fs::read(out.path().join("demo-0.1.0.tgz")).unwrap(),
            repo.bytes("demo-0.1.0.tgz")
        );
        assert_eq!(
            std::fs::read(out.path().join("demo-0.1.0.tgz.prov")).unwrap(),
            prov,
            "helm {v}"
        );
    }
    // Helm v3.18.0 refuses any provenance layer ("media type ... is not allowed"), also when it
    // pulls what its own `helm push` wrote to a real registry: the artifact is the same, the
    // limitation is that client's.
    let reg = registry();
    let h318 = Helm::new("v3.18.0");
    h318.push(&repo.path("demo-0.1.0.tgz"), &reg.host(), "p");
    let pushed: serde_json::Value = client()
        .get(format!("{}/v2/p/demo/manifests/0.1.0", reg.url()))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        pushed["layers"], m["layers"],
        "helm push writes the same layers"
    );
    let out = tempfile::tempdir().unwrap();
    for host in [reg.host(), format!("{}/up", bridge.host())] {
        let from = if host.ends_with("/up") {
            format!("{host}/demo")
        } else {
            format!("{host}/p/demo")
        };
        let e = h318.try_pull_oci(&from, "0.1.0", out.path()).unwrap_err();
        assert!(e.contains("is not allowed"), "{e}");
    }
}
