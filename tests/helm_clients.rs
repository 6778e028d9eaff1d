//! The real helm CLI, every supported version, through both views of chartbridge.

use crate::support::*;

fn pulls_through_both_views(absolute_urls: bool) {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    let web = nginx(repo.dir.path());
    repo.index(absolute_urls.then(|| web.url()).as_deref());
    let bridge = chartbridge(&helm_upstream("charts", &web.url()));
    let original = repo.bytes("demo-0.1.0.tgz");
    for v in HELM_VERSIONS {
        let helm = Helm::new(v);
        let out = tempfile::tempdir().unwrap();
        let out_s = out.path().to_str().unwrap();

        // OCI view
        let chart_ref = format!("{}/charts/demo", bridge.host());
        assert_eq!(
            helm.pull_oci(&chart_ref, "0.1.0", out.path(), "demo-0.1.0.tgz"),
            original,
            "helm {v} OCI pull: bytes differ from upstream"
        );
        let oci = format!("oci://{chart_ref}");
        let shown = helm.run(&["show", "chart", &oci, "--version", "0.1.0", "--plain-http"]);
        assert!(shown.contains("name: demo"), "helm {v} show chart: {shown}");
        let rendered = helm.run(&["template", "t", &oci, "--version", "0.1.0", "--plain-http"]);
        assert!(
            rendered.contains("kind: Deployment"),
            "helm {v} template: {rendered}"
        );

        // HTTP mirror view
        helm.run(&["repo", "add", "mirror", &format!("{}/charts", bridge.url())]);
        helm.run(&["repo", "update"]);
        helm.run(&["pull", "mirror/demo", "--version", "0.1.0", "-d", out_s]);
        assert_eq!(
            std::fs::read(out.path().join("demo-0.1.0.tgz")).unwrap(),
            original,
            "helm {v} mirror pull: bytes differ from upstream"
        );
        let shown = helm.run(&["show", "chart", "mirror/demo"]);
        assert!(
            shown.contains("version: 0.1.0"),
            "helm {v} show chart (mirror): {shown}"
        );
        let rendered = helm.run(&["template", "t", "mirror/demo"]);
        assert!(
            rendered.contains("kind: Service"),
            "helm {v} template (mirror): {rendered}"
        );
    }
}

#[test]
fn every_helm_version_pulls_shows_templates_with_relative_index_urls() {
    pulls_through_both_views(false);
}

#[test]
fn every_helm_version_pulls_shows_templates_with_absolute_index_urls() {
    pulls_through_both_views(true);
}

/// The synthesised config blob and layer are exactly what `helm push` of the same archive
/// writes to a real registry: a chart pulled through chartbridge is indistinguishable.
#[test]
fn config_blob_and_layers_match_helm_push() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    repo.index(None);
    let web = nginx(repo.dir.path());
    let reg = registry();
    let helm = Helm::new("v4.1.4");
    helm.push(&repo.path("demo-0.1.0.tgz"), &reg.host(), "charts");
    let bridge = chartbridge(&helm_upstream("charts", &web.url()));
    let accept = "application/vnd.oci.image.manifest.v1+json";
    let pushed: serde_json::Value = client()
        .get(format!("{}/v2/charts/demo/manifests/0.1.0", reg.url()))
        .header("Accept", accept)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let ours: serde_json::Value = get(&format!("{}/v2/charts/demo/manifests/0.1.0", bridge.url()))
        .json()
        .unwrap();
    assert_eq!(ours["config"], pushed["config"]);
    assert_eq!(ours["layers"], pushed["layers"]);
    let strip = |v: &serde_json::Value| {
        let mut a = v["annotations"].clone();
        a.as_object_mut()
            .unwrap()
            .remove("org.opencontainers.image.created");
        a
    };
    assert_eq!(strip(&ours), strip(&pushed));
}

/// Bitnami-style indexes point at `oci://` URLs; chartbridge follows them to a real registry.
#[test]
fn oci_urls_in_an_index_are_followed() {
    let charts = ChartRepo::new(&[("demo", "0.1.0")]);
    let reg = registry();
    let helm = Helm::new("v4.1.4");
    helm.push(&charts.path("demo-0.1.0.tgz"), &reg.host(), "charts");
    let original = charts.bytes("demo-0.1.0.tgz");
    let digest = chartbridge::ids::Digest::of(&original);
    let site = tempfile::tempdir().unwrap();
    std::fs::write(
        site.path().join("index.yaml"),
        format!(
            "apiVersion: v1\nentries:\n  demo:\n  - apiVersion: v2\n    name: demo\n    version: 0.1.0\n    \
             digest: {}\n    created: \"2024-01-01T00:00:00Z\"\n    urls:\n    - oci://{}/charts/demo:0.1.0\n",
            digest.hex(),
            reg.host()
        ),
    )
    .unwrap();
    let web = nginx(site.path());
    // The registry is on another port of the same loopback host: it has to be named.
    let bridge = chartbridge(&format!(
        "{}    allow_hosts: [\"{}\"]\n",
        helm_upstream("bitnamiish", &web.url()),
        reg.host()
    ));
    let out = tempfile::tempdir().unwrap();
    let from = format!("{}/bitnamiish/demo", bridge.host());
    assert_eq!(
        helm.pull_oci(&from, "0.1.0", out.path(), "demo-0.1.0.tgz"),
        original
    );
    let archive = get(&format!(
        "{}/bitnamiish/-/demo/0.1.0/demo-0.1.0.tgz",
        bridge.url()
    ));
    assert_eq!(archive.status(), 200);
    assert_eq!(archive.bytes().unwrap().to_vec(), original);
}
