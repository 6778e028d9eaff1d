//! OCI upstreams: a real registry (CNCF distribution) behind chartbridge, with the real helm CLI
//! and skopeo as clients. Bytes and digests must be the upstream's, exactly.

use crate::support::*;

const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

fn manifest_raw(url: &str) -> (String, Vec<u8>) {
    let r = client()
        .get(url)
        .header(
            "Accept",
            format!("{INDEX_TYPE}, application/vnd.oci.image.manifest.v1+json"),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{url}");
    let d = r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    (d, r.bytes().unwrap().to_vec())
}

/// Pushes three tagged multi-arch images (v1.2.0, v1.10.0, v1.9.0-rc.1; no `latest`).
fn push_images(reg: &Proc) -> tempfile::TempDir {
    let layouts = tempfile::tempdir().unwrap();
    for (i, tag) in ["v1.2.0", "v1.10.0", "v1.11.0-rc.1"].iter().enumerate() {
        let dir = layouts.path().join(tag);
        make_image_layout(&dir, tag, 3 << 20, i as u64 + 7);
        push_layout(&dir, tag, reg, "test/hello");
    }
    layouts
}

/// Each helm version pushes to the registry; every version pulls each push through chartbridge.
#[test]
fn helm_charts_in_a_registry_pull_through_byte_identical() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    let reg = registry();
    let bridge = chartbridge(&oci_upstream("reg", &reg.url(), ""));
    for pusher in HELM_VERSIONS {
        let ns = format!("charts-{}", pusher.replace('.', "-").to_lowercase());
        Helm::new(pusher).push(&repo.path("demo-0.1.0.tgz"), &reg.host(), &ns);
        let (ud, ub) = manifest_raw(&format!("{}/v2/{ns}/demo/manifests/0.1.0", reg.url()));
        let (bd, bb) = manifest_raw(&format!(
            "{}/v2/reg/{ns}/demo/manifests/0.1.0",
            bridge.url()
        ));
        assert_eq!(
            (bd, bb),
            (ud, ub),
            "pushed by {pusher}: manifest passes through unchanged"
        );
        for v in HELM_VERSIONS {
            let out = tempfile::tempdir().unwrap();
            let from = format!("{}/reg/{ns}/demo", bridge.host());
            assert_eq!(
                Helm::new(v).pull_oci(&from, "0.1.0", out.path(), "demo-0.1.0.tgz"),
                repo.bytes("demo-0.1.0.tgz"),
                "pushed by {pusher}, pulled by {v}"
            );
        }
    }
}

#[test]
fn skopeo_copies_multi_arch_images_through_with_digests_preserved_and_latest() {
    let reg = registry();
    let _layouts = push_images(&reg);
    let mut bridge_ups = oci_upstream("reg", &reg.url(), "");
    bridge_ups.push_str(&oci_upstream("strict", &reg.url(), "    latest: never\n"));
    let bridge = chartbridge(&bridge_ups);
    let b = bridge.host();

    // the index, byte for byte, through skopeo
    let up_raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/test/hello:v1.2.0", reg.host()),
    ])
    .unwrap();
    let br_raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{b}/reg/test/hello:v1.2.0"),
    ])
    .unwrap();
    assert_eq!(up_raw, br_raw);

    // a full multi-arch copy out of chartbridge: every blob arrives and verifies (skopeo checks)
    let out = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{b}/reg/test/hello:v1.2.0"),
        &format!("oci:{}:copy", out.path().display()),
    ])
    .unwrap();
    let (up_digest, _) = manifest_raw(&format!("{}/v2/test/hello/manifests/v1.2.0", reg.url()));
    let copied: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(
        copied["manifests"][0]["digest"],
        up_digest.as_str(),
        "digest preserved end to end"
    );

    // latest: the upstream has none; it resolves to the highest stable semver tag (v1.10.0,
    // not the prerelease, not lexically-highest v1.2.0)
    let tags = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{b}/reg/test/hello"),
    ])
    .unwrap();
    assert!(tags.contains("\"latest\""), "{tags}");
    let latest = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{b}/reg/test/hello:latest"),
    ])
    .unwrap();
    let v110 = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/test/hello:v1.10.0", reg.host()),
    ])
    .unwrap();
    assert_eq!(latest, v110);
    // latest: never leaves it missing
    let (status, code) = oci_code(get(&format!(
        "{}/v2/strict/test/hello/manifests/latest",
        bridge.url()
    )));
    assert_eq!((status, code.as_str()), (404, "MANIFEST_UNKNOWN"));
    let strict: serde_json::Value =
        get(&format!("{}/v2/strict/test/hello/tags/list", bridge.url()))
            .json()
            .unwrap();
    assert!(!strict["tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "latest"));
}

#[test]
fn an_upstream_latest_passes_through_unless_the_policy_is_always() {
    let reg = registry();
    let _layouts = push_images(&reg);
    retag(&reg, "test/hello", "v1.2.0", "latest");
    let mut ups = oci_upstream("reg", &reg.url(), "");
    ups.push_str(&oci_upstream("always", &reg.url(), "    latest: always\n"));
    let bridge = chartbridge(&ups);
    let (v12, _) = manifest_raw(&format!("{}/v2/test/hello/manifests/v1.2.0", reg.url()));
    let (v110, _) = manifest_raw(&format!("{}/v2/test/hello/manifests/v1.10.0", reg.url()));
    let (passed, _) = manifest_raw(&format!(
        "{}/v2/reg/test/hello/manifests/latest",
        bridge.url()
    ));
    assert_eq!(passed, v12, "upstream latest passed through");
    let (forced, _) = manifest_raw(&format!(
        "{}/v2/always/test/hello/manifests/latest",
        bridge.url()
    ));
    assert_eq!(forced, v110, "latest: always overrides it");
}

/// A warm tag is answered from memory only while it is fresh: once `tag_ttl` has passed, a tag
/// moved upstream is followed, and so is a synthesised `latest` whose tag list grew.
#[test]
fn a_moved_tag_and_a_new_latest_are_followed_once_tag_ttl_has_passed() {
    let reg = registry();
    let _layouts = push_images(&reg);
    let retag = |from: &str, to: &str| retag(&reg, "test/hello", from, to);
    retag("v1.2.0", "stable");
    let bridge = chartbridge(&oci_upstream("reg", &reg.url(), ""));
    let (v12, _) = manifest_raw(&format!("{}/v2/test/hello/manifests/v1.2.0", reg.url()));
    let (v110, _) = manifest_raw(&format!("{}/v2/test/hello/manifests/v1.10.0", reg.url()));
    let at = |tag: &str| {
        manifest_raw(&format!(
            "{}/v2/reg/test/hello/manifests/{tag}",
            bridge.url()
        ))
        .0
    };
    // the first answer goes the long way, the next ones are warm
    for _ in 0..3 {
        assert_eq!(at("stable"), v12);
        assert_eq!(at("latest"), v110, "latest: the highest stable version");
    }
    retag("v1.10.0", "stable");
    retag("v1.2.0", "v1.20.0");
    wait_until("the moved tag is followed", || at("stable") == v110);
    wait_until("latest follows the grown tag list", || at("latest") == v12);
}

#[test]
fn containerd_ns_routing_and_default_upstream() {
    let reg = registry();
    let _layouts = push_images(&reg);
    let bridge = chartbridge_with(
        &oci_upstream("reg", &reg.url(), ""),
        "default_upstream: reg\n",
        None,
    );
    let (up, _) = manifest_raw(&format!("{}/v2/test/hello/manifests/v1.2.0", reg.url()));
    let via_ns = format!(
        "{}/v2/test/hello/manifests/v1.2.0?ns={}",
        bridge.url(),
        reg.host()
    );
    assert_eq!(manifest_raw(&via_ns).0, up);
    let via_default = format!("{}/v2/test/hello/manifests/v1.2.0", bridge.url());
    assert_eq!(manifest_raw(&via_default).0, up);
    // a registry no upstream is configured for is refused, never dialled
    let (status, code) = oci_code(get(&format!(
        "{}/v2/test/hello/manifests/v1.2.0?ns=registry.example.com",
        bridge.url()
    )));
    assert_eq!((status, code.as_str()), (404, "NAME_UNKNOWN"));
}

/// Pulled once, served again with the registry stopped: manifests by tag (last known digest),
/// by digest, blobs, and tag lists, through skopeo and helm.
#[test]
fn a_second_pull_succeeds_from_cache_with_the_upstream_stopped() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    let mut reg = registry();
    let _layouts = push_images(&reg);
    Helm::new("v4.1.4").push(&repo.path("demo-0.1.0.tgz"), &reg.host(), "charts");
    let bridge = chartbridge(&oci_upstream("reg", &reg.url(), ""));
    let b = bridge.host();
    let copy = |dest: &str| {
        skopeo(&[
            "copy",
            "--all",
            "--src-tls-verify=false",
            &format!("docker://{b}/reg/test/hello:v1.2.0"),
            &format!("oci:{dest}:x"),
        ])
    };
    let first = tempfile::tempdir().unwrap();
    copy(first.path().to_str().unwrap()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let pull =
        |v: &str| Helm::new(v).try_pull_oci(&format!("{b}/reg/charts/demo"), "0.1.0", out.path());
    pull("v4.1.4").unwrap();
    skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{b}/reg/test/hello"),
    ])
    .unwrap();

    reg.stop();
    wait_until(
        "past tag_ttl, tags are answered from the last known copy",
        || {
            get(&format!(
                "{}/v2/reg/test/hello/manifests/v1.2.0",
                bridge.url()
            ))
            .headers()
            .contains_key("warning")
        },
    );
    let second = tempfile::tempdir().unwrap();
    copy(second.path().to_str().unwrap()).expect("copy from cache with the upstream down");
    std::fs::remove_file(out.path().join("demo-0.1.0.tgz")).unwrap();
    for v in HELM_VERSIONS {
        pull(v).unwrap_or_else(|e| panic!("helm {v} from cache: {e}"));
    }
    assert_eq!(
        std::fs::read(out.path().join("demo-0.1.0.tgz")).unwrap(),
        repo.bytes("demo-0.1.0.tgz")
    );
    let tags = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{b}/reg/test/hello"),
    ])
    .unwrap();
    assert!(tags.contains("v1.2.0"));
}

/// A warm layer big enough to be held in a memfd goes out with `sendfile` on plain HTTP/1:
/// whole, by range, and by HEAD, the registry's bytes every time.
#[test]
fn a_warm_layer_from_memory_is_served_whole_by_range_and_by_head() {
    let reg = registry();
    let layouts = tempfile::tempdir().unwrap();
    let dir = layouts.path().join("l");
    let index = make_image_layout(&dir, "v1.0.0", 60_000, 3);
    push_layout(&dir, "v1.0.0", &reg, "test/mid");
    let bridge = chartbridge(&oci_upstream("reg", &reg.url(), ""));
    let b = bridge.url();
    let (layer, expected) = first_layer(&dir, &index);
    assert!(expected.len() > 16 << 10, "big enough for a memfd");
    let url = format!("{b}/v2/reg/test/mid/blobs/{layer}");
    // cold, then warm (from memory) three times
    for i in 0..4 {
        let r = get(&url);
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().unwrap().to_vec(), expected, "GET {i}");
    }
    let n = expected.len();
    assert_eq!(get_range(&url, "1000-20999", n), expected[1000..21000]);
    assert_eq!(get_range(&url, "-100", n), expected[n - 100..]);
    let r = client().head(&url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"].to_str().unwrap(),
        expected.len().to_string()
    );
    assert!(r.bytes().unwrap().is_empty());
    // and the connection still frames the next answer right (keep-alive after sendfile)
    let c = client();
    for _ in 0..3 {
        assert_eq!(
            c.get(&url).send().unwrap().bytes().unwrap().to_vec(),
            expected
        );
    }
}

/// Past its bound (an eighth of the open-file limit: 16 with 128 descriptors), the memory
/// tier keeps blobs on the heap: 20 warm layers are all served right, whole and by range,
/// while the process never holds more memfds than the bound.
#[test]
fn past_the_memfd_bound_warm_layers_stay_on_the_heap_and_are_served() {
    let reg = registry();
    let layouts = tempfile::tempdir().unwrap();
    let mut layers = Vec::new();
    for seed in 0..10u64 {
        let dir = layouts.path().join(format!("l{seed}"));
        let index = make_image_layout(&dir, "v1.0.0", 20_000 + seed as usize, 100 + seed);
        push_layout(&dir, "v1.0.0", &reg, &format!("test/many{seed}"));
        for (d, bytes) in all_layers(&dir, &index) {
            layers.push((format!("test/many{seed}"), d, bytes));
        }
    }
    assert_eq!(layers.len(), 20);
    let bridge = chartbridge_with_open_files(&oci_upstream("reg", &reg.url(), ""), 128);
    let b = bridge.url();
    let memfds = || {
        std::fs::read_dir(format!("/proc/{}/fd", bridge.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|l| l.to_string_lossy().contains("memfd:chartbridge-blob"))
            .count()
    };
    // cold, then from memory: the second hit moves a blob into a memfd while the bound allows
    for round in 0..3 {
        for (repo, d, expected) in &layers {
            let r = get(&format!("{b}/v2/reg/{repo}/blobs/{d}"));
            assert_eq!(r.status(), 200);
            assert_eq!(&r.bytes().unwrap().to_vec(), expected, "{d}, round {round}");
        }
    }
    assert_eq!(memfds(), 16, "as many memfds as the bound, no more");
    for (repo, d, expected) in &layers {
        let url = format!("{b}/v2/reg/{repo}/blobs/{d}");
        let n = expected.len();
        assert_eq!(get_range(&url, "100-17099", n), expected[100..17100]);
    }
    assert_eq!(memfds(), 16);
}

/// OCI-hosted charts as a classic Helm repository: per chart repository and for the whole
/// upstream (from the registry's catalog), with real `helm repo add`, `search repo`, `pull` and
/// `dependency update`.
#[test]
fn oci_charts_served_as_an_index_yaml_repository() {
    let repo = ChartRepo::new(&[("demo", "0.1.0"), ("demo", "0.2.0")]);
    let reg = registry();
    let _images = push_images(&reg); // an image repository the catalog index must skip
    let h4 = Helm::new("v4.1.4");
    for v in ["0.1.0", "0.2.0"] {
        h4.push(&repo.path(&format!("demo-{v}.tgz")), &reg.host(), "charts");
    }
    let bridge = chartbridge(&oci_upstream("reg", &reg.url(), ""));
    let u = bridge.url();

    let idx = get(&format!("{u}/reg/charts/demo/index.yaml"));
    assert_eq!(idx.status(), 200);
    let etag = idx.headers()["etag"].to_str().unwrap().to_string();
    let body = idx.bytes().unwrap();
    let parsed = chartbridge::convert::index::parse_index(&body, Default::default()).unwrap();
    let versions = parsed.versions("demo").unwrap();
    assert_eq!(
        versions
            .iter()
            .map(|v| v.version.as_str())
            .collect::<Vec<_>>(),
        ["0.2.0", "0.1.0"]
    );
    let digest = chartbridge::ids::Digest::of(&repo.bytes("demo-0.1.0.tgz"));
    assert_eq!(versions[1].digest, digest.hex());
    assert_eq!(versions[1].urls, ["-/demo/0.1.0/demo-0.1.0.tgz"]);
    // deterministic, and conditional requests work
    assert_eq!(
        get(&format!("{u}/reg/charts/demo/index.yaml"))
            .bytes()
            .unwrap(),
        body
    );
    let again = client()
        .get(format!("{u}/reg/charts/demo/index.yaml"))
        .header("If-None-Match", &etag)
        .send()
        .unwrap();
    assert_eq!(again.status(), 304);

    for v in ["v3.17.3", "v4.1.4"] {
        let helm = Helm::new(v);
        helm.run(&["repo", "add", "podinfoish", &format!("{u}/reg/charts/demo")]);
        let found = helm.run(&["search", "repo", "podinfoish/demo", "--versions"]);
        assert!(
            found.contains("0.2.0") && found.contains("0.1.0"),
            "helm {v}: {found}"
        );
        let out = tempfile::tempdir().unwrap();
        helm.run(&[
            "pull",
            "podinfoish/demo",
            "--version",
            "0.1.0",
            "-d",
            out.path().to_str().unwrap(),
        ]);
        assert_eq!(
            std::fs::read(out.path().join("demo-0.1.0.tgz")).unwrap(),
            repo.bytes("demo-0.1.0.tgz"),
            "helm {v}"
        );
    }

    // the upstream-level index, from the registry catalog
    let all = get(&format!("{u}/reg/index.yaml")).bytes().unwrap();
    let all = chartbridge::convert::index::parse_index(&all, Default::default()).unwrap();
    assert_eq!(
        all.entries.len(),
        1,
        "only chart repositories are listed: {:?}",
        all.entries.keys()
    );
    assert_eq!(
        all.versions("demo").unwrap()[0].urls,
        ["charts/demo/-/demo/0.2.0/demo-0.2.0.tgz"]
    );
    let h3 = Helm::new("v3.18.0");
    h3.run(&["repo", "add", "whole", &format!("{u}/reg")]);
    let out = tempfile::tempdir().unwrap();
    h3.run(&["pull", "whole/demo", "-d", out.path().to_str().unwrap()]);
    assert_eq!(
        std::fs::read(out.path().join("demo-0.2.0.tgz")).unwrap(),
        repo.bytes("demo-0.2.0.tgz")
    );

    // helm dependency update against it
    let parent = tempfile::tempdir().unwrap();
    let chart_dir = parent.path().join("app");
    h3.run(&["create", chart_dir.to_str().unwrap()]);
    let mut chart_yaml = std::fs::read_to_string(chart_dir.join("Chart.yaml")).unwrap();
    chart_yaml.push_str(&format!(
        "dependencies:\n  - name: demo\n    version: \"~0.1.0\"\n    repository: {u}/reg/charts/demo\n"
    ));
    std::fs::write(chart_dir.join("Chart.yaml"), chart_yaml).unwrap();
    h3.run(&["dependency", "update", chart_dir.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(chart_dir.join("charts").join("demo-0.1.0.tgz")).unwrap(),
        repo.bytes("demo-0.1.0.tgz")
    );

    // `limits.max_index_tags` bounds the manifests one index build fetches: newest first
    let capped = chartbridge_with(
        &oci_upstream("reg", &reg.url(), ""),
        "limits:\n  max_index_tags: 1\n",
        None,
    );
    let idx = get(&format!("{}/reg/charts/demo/index.yaml", capped.url()));
    assert_eq!(idx.status(), 200);
    let idx = chartbridge::convert::index::parse_index(&idx.bytes().unwrap(), Default::default())
        .unwrap();
    let listed: Vec<_> = idx
        .versions("demo")
        .unwrap()
        .iter()
        .map(|v| v.version.clone())
        .collect();
    assert_eq!(listed, ["0.2.0"]);
}
