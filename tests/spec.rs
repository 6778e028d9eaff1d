//! The last distribution-spec answers (issue 12): invalid references, writes to a read-only
//! mirror, `_catalog` with pagination and access, `Docker-Distribution-API-Version` on every
//! `/v2/` answer; cache headers for what sits in front (immutable by digest, `max-age` from
//! freshness, `304` on `If-None-Match`, `private` under access); and `X-Request-Id`.

use crate::support::*;

fn header(r: &reqwest::blocking::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

fn max_age(cache_control: &str) -> u64 {
    cache_control
        .split(',')
        .find_map(|p| p.trim().strip_prefix("max-age="))
        .unwrap_or_else(|| panic!("no max-age in {cache_control:?}"))
        .parse()
        .unwrap()
}

struct Site {
    _repo: ChartRepo,
    _web: Proc,
    bridge: Proc,
    _secrets: tempfile::TempDir,
}

/// A public helm upstream `up` (charts demo and other, index_ttl 1h) and a protected one `priv`.
fn site() -> Site {
    let repo = ChartRepo::new(&[("demo", "0.1.0"), ("demo", "0.2.0"), ("other", "1.0.0")]);
    repo.index(None);
    let web = nginx(repo.dir.path());
    let secrets = tempfile::tempdir().unwrap();
    write_htpasswd(&secrets.path().join("htpasswd"), "alice", "wonder-pw");
    let ups = format!(
        "  - {{name: up, kind: helm, url: '{w}', index_ttl: 1h}}\n  - {{name: priv, kind: helm, url: '{w}', index_ttl: 1h, access: {{htpasswd_file: {h}}}}}\n",
        w = web.url(),
        h = secrets.path().join("htpasswd").display()
    );
    let bridge = chartbridge_full(&ups, "", None, &[], "info");
    Site {
        _repo: repo,
        _web: web,
        bridge,
        _secrets: secrets,
    }
}

#[test]
fn invalid_references_and_writes_get_the_answers_registries_give() {
    let s = site();
    let u = s.bridge.url();
    let c = client();
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        for reference in [".INVALID_MANIFEST_NAME", "sha256:totallywrong", "a%20b"] {
            let r = c
                .request(
                    method.clone(),
                    format!("{u}/v2/up/demo/manifests/{reference}"),
                )
                .send()
                .unwrap();
            assert_eq!(r.status(), 404, "{method} {reference}");
            assert_eq!(
                header(&r, "docker-distribution-api-version"),
                "registry/2.0"
            );
            if method == reqwest::Method::GET {
                assert_eq!(oci_code(r).1, "MANIFEST_UNKNOWN", "{reference}");
            }
        }
    }
    // a blob digest that cannot exist: 400 DIGEST_INVALID (the spec allows it, or 404)
    assert_eq!(
        oci_code(get(&format!("{u}/v2/up/demo/blobs/sha256:totallywrong"))),
        (400, "DIGEST_INVALID".into())
    );
    // writes: an invalid digest is named as such, anything else is 405
    let zero = format!("sha256:{}", "0".repeat(64));
    for (method, path, status, code) in [
        (
            "PUT",
            "/v2/up/demo/manifests/sha256:totallywrong".to_string(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "DELETE",
            "/v2/up/demo/manifests/sha256:nothex".to_string(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "DELETE",
            "/v2/up/demo/blobs/nodigest".to_string(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "POST",
            "/v2/up/demo/blobs/uploads/?digest=sha256:bad".to_string(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "PUT",
            "/v2/up/demo/manifests/0.3.0".to_string(),
            405,
            "UNSUPPORTED",
        ),
        (
            "PUT",
            format!("/v2/up/demo/manifests/{zero}"),
            405,
            "UNSUPPORTED",
        ),
        (
            "DELETE",
            format!("/v2/up/demo/blobs/{zero}"),
            405,
            "UNSUPPORTED",
        ),
        (
            "PATCH",
            "/v2/up/demo/blobs/uploads/some-id".to_string(),
            405,
            "UNSUPPORTED",
        ),
        (
            "POST",
            "/v2/up/demo/blobs/uploads/".to_string(),
            405,
            "UNSUPPORTED",
        ),
    ] {
        let r = c
            .request(method.parse().unwrap(), format!("{u}{path}"))
            .body("{}")
            .send()
            .unwrap();
        assert_eq!(
            header(&r, "docker-distribution-api-version"),
            "registry/2.0"
        );
        assert_eq!(oci_code(r), (status, code.to_string()), "{method} {path}");
    }
    // every /v2/ answer says its API version: success, 404, 401
    for path in [
        "/v2/",
        "/v2/up/demo/tags/list",
        "/v2/nope/x/tags/list",
        "/v2/priv/demo/tags/list",
    ] {
        let r = get(&format!("{u}{path}"));
        assert_eq!(
            header(&r, "docker-distribution-api-version"),
            "registry/2.0",
            "{path} ({})",
            r.status()
        );
    }
}

#[test]
fn the_catalog_lists_what_the_client_may_read_in_pages() {
    let s = site();
    let u = s.bridge.url();
    let all: serde_json::Value = get(&format!("{u}/v2/_catalog")).json().unwrap();
    assert_eq!(
        all["repositories"],
        serde_json::json!(["up/demo", "up/other"]),
        "anonymous: the protected upstream is left out"
    );
    let authed: serde_json::Value = client()
        .get(format!("{u}/v2/_catalog"))
        .basic_auth("alice", Some("wonder-pw"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        authed["repositories"],
        serde_json::json!(["priv/demo", "priv/other", "up/demo", "up/other"])
    );
    let first = client()
        .get(format!("{u}/v2/_catalog?n=3"))
        .basic_auth("alice", Some("wonder-pw"))
        .send()
        .unwrap();
    assert_eq!(
        header(&first, "link"),
        "</v2/_catalog?n=3&last=up%2Fdemo>; rel=\"next\""
    );
    assert_eq!(
        header(&first, "cache-control").split(',').next(),
        Some("private")
    );
    let first: serde_json::Value = first.json().unwrap();
    assert_eq!(
        first["repositories"],
        serde_json::json!(["priv/demo", "priv/other", "up/demo"])
    );
    let rest = client()
        .get(format!("{u}/v2/_catalog?n=3&last=up%2Fdemo"))
        .basic_auth("alice", Some("wonder-pw"))
        .send()
        .unwrap();
    assert!(rest.headers().get("link").is_none(), "the last page");
    let rest: serde_json::Value = rest.json().unwrap();
    assert_eq!(rest["repositories"], serde_json::json!(["up/other"]));
}

/// An OCI upstream's catalog: its `charts:` when configured, else the registry's own.
#[test]
fn the_catalog_of_an_oci_upstream_comes_from_the_registry() {
    let reg = registry();
    let l = tempfile::tempdir().unwrap();
    make_image_layout(l.path(), "v1", 1000, 1);
    push_layout(l.path(), "v1", &reg, "team/app");
    push_layout(l.path(), "v1", &reg, "team/tool");
    let bridge = chartbridge(&format!(
        "{}{}",
        oci_upstream("reg", &reg.url(), ""),
        oci_upstream("pinned", &reg.url(), "    charts: [team/tool]\n")
    ));
    let all: serde_json::Value = get(&format!("{}/v2/_catalog", bridge.url()))
        .json()
        .unwrap();
    assert_eq!(
        all["repositories"],
        serde_json::json!(["pinned/team/tool", "reg/team/app", "reg/team/tool"])
    );
}

#[test]
fn caches_in_front_learn_what_they_may_keep_and_for_how_long() {
    let s = site();
    let u = s.bridge.url();
    let c = client();
    let accept = "application/vnd.oci.image.manifest.v1+json";
    // by tag: fresh for what is left of the index's hour
    let by_tag = c
        .get(format!("{u}/v2/up/demo/manifests/0.1.0"))
        .header("Accept", accept)
        .send()
        .unwrap();
    let cc = header(&by_tag, "cache-control");
    assert!(cc.starts_with("public, max-age="), "{cc}");
    assert!(!cc.contains("immutable"), "{cc}");
    assert!((3000..=3600).contains(&max_age(&cc)), "{cc}");
    let digest = header(&by_tag, "docker-content-digest");
    let manifest: serde_json::Value = by_tag.json().unwrap();
    // by digest: immutable, with its digest as ETag, and 304 when the client has it
    let by_digest = get(&format!("{u}/v2/up/demo/manifests/{digest}"));
    assert_eq!(
        header(&by_digest, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(header(&by_digest, "etag"), format!("\"{digest}\""));
    let again = c
        .get(format!("{u}/v2/up/demo/manifests/{digest}"))
        .header("If-None-Match", format!("\"{digest}\""))
        .send()
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(header(&again, "etag"), format!("\"{digest}\""));
    assert!(again.bytes().unwrap().is_empty());
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let blob = get(&format!("{u}/v2/up/demo/blobs/{layer}"));
    assert_eq!(
        header(&blob, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(header(&blob, "etag"), format!("\"{layer}\""));
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let r = c
            .request(method.clone(), format!("{u}/v2/up/demo/blobs/{layer}"))
            .header("If-None-Match", format!("\"{layer}\""))
            .send()
            .unwrap();
        assert_eq!(r.status(), 304, "{method}");
    }
    let other = c
        .get(format!("{u}/v2/up/demo/blobs/{layer}"))
        .header("If-None-Match", "\"sha256:something-else\"")
        .send()
        .unwrap();
    assert_eq!(other.status(), 200, "another ETag gets the body");
    // tags/list and index.yaml: max-age, never immutable
    for path in [
        "/v2/up/demo/tags/list",
        "/up/index.yaml",
        "/up/-/demo/0.1.0/demo-0.1.0.tgz",
    ] {
        let r = get(&format!("{u}{path}"));
        let cc = header(&r, "cache-control");
        assert!(
            cc.starts_with("public, max-age=") && !cc.contains("immutable"),
            "{path}: {cc}"
        );
        assert!(max_age(&cc) <= 3600, "{path}: {cc}");
    }
    // an index the client has: 304 with its ETag
    let index = get(&format!("{u}/up/index.yaml"));
    let etag = header(&index, "etag");
    let again = c
        .get(format!("{u}/up/index.yaml"))
        .header("If-None-Match", &etag)
        .send()
        .unwrap();
    assert_eq!(again.status(), 304);
    // a protected upstream's answers are private, by tag and by digest
    let private = c
        .get(format!("{u}/v2/priv/demo/manifests/0.1.0"))
        .basic_auth("alice", Some("wonder-pw"))
        .send()
        .unwrap();
    assert!(header(&private, "cache-control").starts_with("private, max-age="));
    let private = c
        .get(format!("{u}/v2/priv/demo/manifests/{digest}"))
        .basic_auth("alice", Some("wonder-pw"))
        .send()
        .unwrap();
    assert_eq!(private.status(), 200);
    assert_eq!(
        header(&private, "cache-control"),
        "private, max-age=31536000, immutable"
    );
    let private_index = c
        .get(format!("{u}/priv/index.yaml"))
        .basic_auth("alice", Some("wonder-pw"))
        .send()
        .unwrap();
    assert!(header(&private_index, "cache-control").starts_with("private, max-age="));
    // errors say nothing about caching
    let missing = get(&format!("{u}/v2/up/demo/manifests/9.9.9"));
    assert_eq!(missing.status(), 404);
    assert!(missing.headers().get("cache-control").is_none());
}

#[test]
fn each_answer_carries_a_request_id_that_the_access_log_names() {
    let s = site();
    let u = s.bridge.url();
    let mine = client()
        .get(format!("{u}/v2/up/demo/tags/list"))
        .header("X-Request-Id", "front-proxy-1234")
        .send()
        .unwrap();
    assert_eq!(header(&mine, "x-request-id"), "front-proxy-1234");
    let made = get(&format!("{u}/v2/up/demo/tags/list"));
    let id = header(&made, "x-request-id");
    assert_eq!(id.len(), 24, "{id}");
    let next = header(&get(&format!("{u}/up/index.yaml")), "x-request-id");
    assert_ne!(id, next, "each request its own");
    // an id that could break a log line or a header is replaced
    let hostile = client()
        .get(format!("{u}/v2/up/demo/tags/list"))
        .header("X-Request-Id", "a b\"c")
        .send()
        .unwrap();
    assert_ne!(header(&hostile, "x-request-id"), "a b\"c");
    // errors too
    assert!(!header(&get(&format!("{u}/v2/nope/x/tags/list")), "x-request-id").is_empty());
    wait_until("the access log names both ids", || {
        let log = std::fs::read_to_string(s.bridge.dir.path().join("server.log")).unwrap();
        log.contains("front-proxy-1234") && log.contains(&id)
    });
}
