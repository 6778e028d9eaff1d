//! Floating tags (`float: [major, minor]`): `v1.2` follows the highest stable `v1.2.z` of a real
//! registry, `v2` the highest stable `v2.y.z`, a tag the registry really has is never shadowed,
//! and a new patch release is followed within the tag TTL. Clients: an HTTP client, skopeo and
//! containerd's `ctr`; the helm upstream's OCI view floats the same way.

use crate::containerd::{containerd, ctr_pull_via};
use crate::support::*;

const ACCEPT: &str =
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";

fn digest_of(url: &str) -> Option<String> {
    let r = client().get(url).header("Accept", ACCEPT).send().unwrap();
    (r.status() == 200).then(|| {
        r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_string()
    })
}

fn tags(url: &str) -> Vec<String> {
    let v: serde_json::Value = get(url).json().unwrap();
    v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn floating_tags_follow_the_highest_stable_release_of_their_line() {
    let reg = registry();
    let layouts = tempfile::tempdir().unwrap();
    let push = |tag: &str, seed: u64| {
        let dir = layouts.path().join(tag);
        make_image_layout(&dir, tag, 64 << 10, seed);
        push_layout(&dir, tag, &reg, "test/app");
    };
    for (i, tag) in ["v1.0.0", "v1.2.0", "v1.2.3", "v2.0.0-rc.1", "v2.0.0"]
        .iter()
        .enumerate()
    {
        push(tag, 40 + i as u64);
    }
    // the registry's own `v1` (pointing at v1.0.0) is not shadowed by the floating one
    retag(&reg, "test/app", "v1.0.0", "v1");
    let up = |tag: &str| digest_of(&format!("{}/v2/test/app/manifests/{tag}", reg.url())).unwrap();
    let mut ups = oci_upstream("reg", &reg.url(), "    float: [major, minor]\n");
    ups.push_str(&oci_upstream("plain", &reg.url(), ""));
    let bridge = chartbridge(&ups);
    let at = |tag: &str| digest_of(&format!("{}/v2/reg/test/app/manifests/{tag}", bridge.url()));

    let listed = tags(&format!("{}/v2/reg/test/app/tags/list", bridge.url()));
    for t in ["v1", "v1.0", "v1.2", "v2", "v2.0", "latest", "v1.2.3"] {
        assert!(listed.contains(&t.to_string()), "{t} listed: {listed:?}");
    }
    assert_eq!(
        listed.iter().filter(|t| *t == "v1").count(),
        1,
        "v1 once: {listed:?}"
    );
    assert_eq!(at("v1.2"), Some(up("v1.2.3")));
    assert_eq!(at("v1.0"), Some(up("v1.0.0")));
    assert_eq!(at("v2"), Some(up("v2.0.0")), "a prerelease never floats");
    assert_eq!(at("v1"), Some(up("v1")), "the registry's own v1 stays");
    assert_ne!(up("v1"), up("v1.2.3"));
    // an upstream without `float` has no such tags
    let plain = tags(&format!("{}/v2/plain/test/app/tags/list", bridge.url()));
    assert!(!plain.contains(&"v1.2".to_string()), "{plain:?}");
    let (status, code) = oci_code(get(&format!(
        "{}/v2/plain/test/app/manifests/v1.2",
        bridge.url()
    )));
    assert_eq!((status, code.as_str()), (404, "MANIFEST_UNKNOWN"));

    // skopeo by floating tag: the same index, byte for byte
    let raw = |r: &str| {
        skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{r}"),
        ])
        .unwrap()
    };
    assert_eq!(
        raw(&format!("{}/reg/test/app:v1.2", bridge.host())),
        raw(&format!("{}/test/app:v1.2.3", reg.host()))
    );
    // containerd pulls by floating tag through `?ns=` routing
    let ctd = containerd();
    let image = format!("{}/test/app:v2", reg.host());
    let out = ctr_pull_via(&ctd, &reg.host(), &bridge.url(), "", "float", &image, None);
    assert!(
        out.status.success(),
        "ctr pull by floating tag: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // a new patch release is followed within the tag TTL (1 s here)
    push("v1.2.4", 60);
    let want = up("v1.2.4");
    wait_until("v1.2 follows v1.2.4", || {
        at("v1.2").as_deref() == Some(want.as_str())
    });
    assert_eq!(at("v1"), Some(up("v1")), "still the registry's own");
}

#[test]
fn a_helm_upstreams_oci_view_floats_too() {
    let repo = ChartRepo::new(&[
        ("demo", "1.0.0"),
        ("demo", "1.2.0"),
        ("demo", "1.2.3"),
        ("demo", "2.0.0-rc.1"),
    ]);
    repo.index(None);
    let web = nginx(repo.dir.path());
    let bridge = chartbridge(&format!(
        "{}    float: [minor]\n",
        helm_upstream("up", &web.url())
    ));
    let listed = tags(&format!("{}/v2/up/demo/tags/list", bridge.url()));
    assert_eq!(
        listed,
        [
            "1.0",
            "1.0.0",
            "1.2",
            "1.2.0",
            "1.2.3",
            "2.0.0-rc.1",
            "latest"
        ],
        "minor lines only; no line for a prerelease"
    );
    let at = |tag: &str| digest_of(&format!("{}/v2/up/demo/manifests/{tag}", bridge.url()));
    assert_eq!(at("1.2"), at("1.2.3"));
    assert_eq!(at("1.0"), at("1.0.0"));
    assert!(at("1.2").is_some());
    assert_eq!(at("1"), None, "major lines were not asked for");
    assert_eq!(at("2.0"), None);
}
