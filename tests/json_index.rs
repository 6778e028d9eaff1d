//! The mirror's index served as JSON (issue 16): every helm version reads it (`repo add`,
//! `repo update`, `search repo --versions`, `pull`) with the same results as the YAML form, a
//! YAML reader (PyYAML) reads the same structure, and our strict parser accepts it.

use std::process::Command;

use chartbridge::convert::index::{parse_index, IndexLimits};

use crate::support::*;

/// `helm search repo <repo>/ --versions` with the repository prefix taken out, so two
/// repositories of the same charts compare line for line.
fn search(helm: &Helm, repo: &str) -> Vec<String> {
    let out = helm.run(&["search", "repo", &format!("{repo}/"), "--versions"]);
    out.lines()
        .skip(1)
        .map(|l| l.replacen(&format!("{repo}/"), "", 1))
        .collect()
}

#[test]
fn every_helm_reads_the_json_index_as_it_reads_the_yaml_one() {
    let repo = ChartRepo::new(&[
        ("demo", "0.1.0"),
        ("demo", "0.2.0"),
        ("demo", "1.0.0-rc.1"),
        ("other", "1.2.3"),
    ]);
    let web = nginx(repo.dir.path());
    repo.index(Some(&web.url()));
    let ups = format!(
        "{}{}    index_format: yaml\n",
        helm_upstream("j", &web.url()),
        helm_upstream("y", &web.url())
    );
    let bridge = chartbridge(&ups);
    let u = bridge.url();

    let json = get(&format!("{u}/j/index.yaml"));
    assert_eq!(json.status(), 200);
    assert_eq!(json.headers()["content-type"], "application/x-yaml");
    let json_etag = json.headers()["etag"].to_str().unwrap().to_string();
    let json_bytes = json.bytes().unwrap().to_vec();
    let yaml = get(&format!("{u}/y/index.yaml"));
    let yaml_etag = yaml.headers()["etag"].to_str().unwrap().to_string();
    let yaml_bytes = yaml.bytes().unwrap().to_vec();
    assert_ne!(
        json_etag, yaml_etag,
        "the two forms have their own strong ETags"
    );
    assert!(json_etag.starts_with('"') && !json_etag.starts_with("W/"));
    // compact JSON, UTF-8, no escaped slashes; the YAML form is not JSON
    let text = String::from_utf8(json_bytes.clone()).unwrap();
    assert!(text.starts_with("{\"apiVersion\":\"v1\""), "{text}");
    assert!(!text.contains('\n') && !text.contains("\\/"));
    serde_json::from_slice::<serde_json::Value>(&json_bytes).expect("valid JSON");
    assert!(serde_json::from_slice::<serde_json::Value>(&yaml_bytes).is_err());
    // our strict parser (unknown or duplicate keys refused, as Helm's YAML path does) reads
    // both to the same index
    let (a, b) = (
        parse_index(&json_bytes, IndexLimits::default()).unwrap(),
        parse_index(&yaml_bytes, IndexLimits::default()).unwrap(),
    );
    assert_eq!(a, b);
    // a YAML reader reads the JSON as the same structure as the YAML form
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), &json_bytes).unwrap();
    std::fs::write(dir.path().join("b"), &yaml_bytes).unwrap();
    let script = "import sys, yaml, datetime\n\
        norm = lambda v: {k: norm(x) for k, x in v.items()} if isinstance(v, dict) else \
        [norm(x) for x in v] if isinstance(v, list) else \
        v.isoformat() if isinstance(v, (datetime.datetime, datetime.date)) else v\n\
        a = norm(yaml.safe_load(open(sys.argv[1])))\n\
        b = norm(yaml.safe_load(open(sys.argv[2])))\n\
        assert a == b, (a, b)\n\
        assert len(a['entries']['demo']) == 3\n\
        print('same')\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(dir.path().join("a"))
        .arg(dir.path().join("b"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("same"),
        "PyYAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // If-None-Match still works on the JSON form
    let again = client()
        .get(format!("{u}/j/index.yaml"))
        .header("If-None-Match", &json_etag)
        .send()
        .unwrap();
    assert_eq!(again.status(), 304);

    let out = tempfile::tempdir().unwrap();
    let out_s = out.path().to_str().unwrap();
    for v in HELM_VERSIONS {
        let helm = Helm::new(v);
        helm.run(&["repo", "add", "j", &format!("{u}/j")]);
        helm.run(&["repo", "add", "y", &format!("{u}/y")]);
        helm.run(&["repo", "update"]);
        let (sj, sy) = (search(&helm, "j"), search(&helm, "y"));
        assert_eq!(sj, sy, "helm {v}: the same search results");
        assert_eq!(
            sj.len(),
            3,
            "helm {v}: {sj:?} (the prerelease is hidden without --devel)"
        );
        helm.run(&["pull", "j/demo", "--version", "0.2.0", "-d", out_s]);
        assert_eq!(
            std::fs::read(out.path().join("demo-0.2.0.tgz")).unwrap(),
            repo.bytes("demo-0.2.0.tgz"),
            "helm {v}"
        );
        std::fs::remove_file(out.path().join("demo-0.2.0.tgz")).unwrap();
        // helm keeps what it downloaded: it is the JSON
        let cached = std::fs::read(helm.home.path().join("cache/repository/j-index.yaml")).unwrap();
        assert_eq!(cached, json_bytes, "helm {v} stored the JSON form");
    }
}

/// The index view of OCI charts is JSON too, and `yaml` keeps its YAML.
#[test]
fn the_index_view_of_oci_charts_is_json_by_default() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    let reg = registry();
    Helm::new("v4.1.4").push(&repo.path("demo-0.1.0.tgz"), &reg.host(), "charts");
    let ups = format!(
        "{}{}    index_format: yaml\n",
        oci_upstream("j", &reg.url(), ""),
        oci_upstream("y", &reg.url(), "")
    );
    let bridge = chartbridge(&ups);
    let j = get(&format!("{}/j/charts/demo/index.yaml", bridge.url()))
        .bytes()
        .unwrap();
    let y = get(&format!("{}/y/charts/demo/index.yaml", bridge.url()))
        .bytes()
        .unwrap();
    assert!(j.starts_with(b"{\"apiVersion\":\"v1\""));
    assert!(y.starts_with(b"apiVersion: v1"));
    assert_eq!(
        parse_index(&j, IndexLimits::default()).unwrap(),
        parse_index(&y, IndexLimits::default()).unwrap()
    );
    let helm = Helm::new("v3.17.3");
    helm.run(&[
        "repo",
        "add",
        "j",
        &format!("{}/j/charts/demo", bridge.url()),
    ]);
    let out = tempfile::tempdir().unwrap();
    helm.run(&["pull", "j/demo", "-d", out.path().to_str().unwrap()]);
    assert_eq!(
        std::fs::read(out.path().join("demo-0.1.0.tgz")).unwrap(),
        repo.bytes("demo-0.1.0.tgz")
    );
}
