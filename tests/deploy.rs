//! deploy/: the Helm chart for chartbridge passes the real `helm lint` and `helm template`, its
//! rendered configuration passes `chartbridge check-config`, and chartbridge serves its own
//! chart: packaged, put in an HTTP repository (nginx), pulled through chartbridge over OCI.

use std::process::Command;

use crate::support::*;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/chart/chartbridge");

#[test]
fn the_chart_lints_renders_and_its_config_is_valid() {
    for v in ["v3.18.0", "v4.1.4"] {
        let helm = Helm::new(v);
        helm.run(&["lint", "--strict", CHART]);
        let full = [
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "pdb.enabled=true",
            "--set",
            "metrics.enabled=true",
        ];
        let mut args = vec!["lint", "--strict", CHART];
        args.extend(full);
        helm.run(&args);
        let mut args = vec!["template", "cb", CHART];
        args.extend(full);
        let out = helm.run(&args);
        for kind in [
            "StatefulSet",
            "Service",
            "ConfigMap",
            "ServiceMonitor",
            "PodDisruptionBudget",
        ] {
            assert!(
                out.contains(&format!("kind: {kind}")),
                "helm {v}: no {kind}"
            );
        }
        assert!(out.contains("readOnlyRootFilesystem: true") && out.contains("runAsNonRoot: true"));
        assert!(out.contains("/healthz") && out.contains("/readyz"));
        assert!(out.contains("volumeClaimTemplates"));
    }
    // the ConfigMap's chartbridge.yaml is a configuration chartbridge accepts
    let cm = Helm::new("v4.1.4").run(&[
        "template",
        "cb",
        CHART,
        "--show-only",
        "templates/configmap.yaml",
    ]);
    let doc: serde_json::Value = serde_json::to_value(
        serde_saphyr::from_str::<serde_json::Value>(&cm).expect("rendered ConfigMap is YAML"),
    )
    .unwrap();
    let config = doc["data"]["chartbridge.yaml"]
        .as_str()
        .expect("chartbridge.yaml key");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chartbridge.yaml");
    std::fs::write(&path, config).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_chartbridge"))
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}\n{config}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn chartbridge_serves_its_own_chart_over_oci() {
    let site = tempfile::tempdir().unwrap();
    let helm = Helm::new("v4.1.4");
    helm.run(&["package", CHART, "-d", site.path().to_str().unwrap()]);
    helm.run(&["repo", "index", site.path().to_str().unwrap()]);
    let web = nginx(site.path());
    let bridge = chartbridge(&helm_upstream("self", &web.url()));
    let out = tempfile::tempdir().unwrap();
    for v in HELM_VERSIONS {
        let from = format!("{}/self/chartbridge", bridge.host());
        assert_eq!(
            Helm::new(v).pull_oci(&from, "0.1.0", out.path(), "chartbridge-0.1.0.tgz"),
            std::fs::read(site.path().join("chartbridge-0.1.0.tgz")).unwrap(),
            "helm {v}"
        );
    }
    let rendered = helm.run(&[
        "template",
        "cb",
        &format!("oci://{}/self/chartbridge", bridge.host()),
        "--version",
        "0.1.0",
        "--plain-http",
    ]);
    assert!(rendered.contains("kind: StatefulSet"));
}

/// With `tls.enabled` (a Secret, or cert-manager), mTLS and no plain listener, the chart renders
/// a Certificate, mounts the Secret, and its configuration is one chartbridge accepts once the
/// mounted files exist (here: generated ones at the same names).
#[test]
fn the_chart_renders_tls_and_its_config_is_valid() {
    let helm = Helm::new("v4.1.4");
    let values = [
        "--set",
        "tls.enabled=true",
        "--set",
        "tls.certManager.enabled=true",
        "--set",
        "tls.certManager.issuerRef.name=ca-issuer",
        "--set",
        "tls.clientCA.enabled=true",
        "--set",
        "tls.disablePlain=true",
        "--set",
        "metrics.enabled=true",
    ];
    let mut args = vec!["lint", "--strict", CHART];
    args.extend(values);
    helm.run(&args);
    let mut args = vec!["template", "cb", CHART];
    args.extend(values);
    let out = helm.run(&args);
    assert!(out.contains("kind: Certificate"), "{out}");
    assert!(out.contains("/etc/chartbridge/tls") && out.contains("name: https"));
    let mut args = vec![
        "template",
        "cb",
        CHART,
        "--show-only",
        "templates/configmap.yaml",
    ];
    args.extend(values);
    let cm = helm.run(&args);
    let doc: serde_json::Value = serde_saphyr::from_str(&cm).expect("rendered ConfigMap is YAML");
    let config = doc["data"]["chartbridge.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(config.contains("listen_tls:") && config.contains("client_ca_file:"));
    assert!(
        !config.lines().any(|l| l.starts_with("listen:")),
        "no plain listener: {config}"
    );
    // the mounted Secret's files, generated, at a path of our own
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["cb".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("ca.crt"), cert.pem()).unwrap();
    let config = config.replace("/etc/chartbridge/tls", dir.path().to_str().unwrap());
    let path = dir.path().join("chartbridge.yaml");
    std::fs::write(&path, &config).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_chartbridge"))
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}\n{config}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// `store.kind: s3` renders a Deployment (an emptyDir local tier) with an autoscaler instead of
/// the StatefulSet, and its configuration is one chartbridge accepts; a missing bucket is
/// refused at render time.
#[test]
fn the_chart_renders_the_shared_store_mode_and_its_config_is_valid() {
    let helm = Helm::new("v4.1.4");
    let values = [
        "--set",
        "store.kind=s3",
        "--set",
        "store.s3.bucket=chartbridge",
        "--set",
        "store.s3.endpoint=http://garage.infra.svc:3900",
        "--set",
        "store.s3.region=garage",
        "--set",
        "store.s3.prefix=prod/",
        "--set",
        "store.s3.existingSecret=chartbridge-s3",
        "--set",
        "store.s3.leaseTtl=30s",
        "--set",
        "store.s3.timeout=5s",
        "--set",
        "autoscaling.enabled=true",
        "--set",
        "pdb.enabled=true",
        "--set",
        "metrics.enabled=true",
        "--set",
        "serviceMonitor.enabled=true",
    ];
    let mut args = vec!["lint", "--strict", CHART];
    args.extend(values);
    helm.run(&args);
    let mut args = vec!["template", "cb", CHART];
    args.extend(values);
    let out = helm.run(&args);
    for kind in [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ] {
        assert!(out.contains(&format!("kind: {kind}")), "no {kind}");
    }
    assert!(!out.contains("kind: StatefulSet") && !out.contains("volumeClaimTemplates"));
    assert!(out.contains("S3_ACCESS_KEY_ID") && out.contains("emptyDir"));
    let mut args = vec![
        "template",
        "cb",
        CHART,
        "--show-only",
        "templates/configmap.yaml",
    ];
    args.extend(values);
    let cm = helm.run(&args);
    let doc: serde_json::Value = serde_saphyr::from_str(&cm).unwrap();
    let config = doc["data"]["chartbridge.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chartbridge.yaml");
    std::fs::write(&path, &config).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_chartbridge"))
        .args(["check-config", path.to_str().unwrap()])
        .env("S3_ACCESS_KEY_ID", "x")
        .env("S3_SECRET_ACCESS_KEY", "y")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}\n{config}",
        String::from_utf8_lossy(&check.stderr)
    );
    let missing = helm.try_run(&["template", "cb", CHART, "--set", "store.kind=s3"]);
    assert!(
        missing
            .as_ref()
            .is_err_and(|e| e.contains("store.s3.bucket")),
        "{missing:?}"
    );
}
