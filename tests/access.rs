//! Downstream access control with real clients: `helm registry login` + OCI pull, `helm repo add
//! --username/--password` on the HTTP mirror, static bearer tokens, anonymous upstreams beside
//! protected ones, and no credential in the logs.

use crate::support::*;

#[test]
fn protected_upstreams_need_credentials_that_helm_and_tokens_provide() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    repo.index(None);
    let web = nginx(repo.dir.path());
    let secrets = tempfile::tempdir().unwrap();
    write_htpasswd(&secrets.path().join("htpasswd"), "alice", "wonder-pw");
    std::fs::write(secrets.path().join("tokens"), "ci-token-42\n").unwrap();
    let ups = format!(
        "{}    access: {{htpasswd_file: {}, tokens_file: {}}}\n{}",
        helm_upstream("priv", &web.url()),
        secrets.path().join("htpasswd").display(),
        secrets.path().join("tokens").display(),
        helm_upstream("pub", &web.url()),
    );
    let bridge = chartbridge_full(&ups, "", None, &[], "info");
    let u = bridge.url();

    // anonymous: refused with a Basic challenge, on both views; the public upstream still serves
    let r = get(&format!("{u}/v2/priv/demo/tags/list"));
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    assert_eq!(oci_code(r).1, "UNAUTHORIZED");
    assert_eq!(get(&format!("{u}/priv/index.yaml")).status(), 401);
    assert_eq!(
        get(&format!("{u}/v2/")).status(),
        401,
        "login is challenged"
    );
    assert_eq!(get(&format!("{u}/v2/pub/demo/tags/list")).status(), 200);

    // static bearer token
    for (token, status) in [("ci-token-42", 200), ("nope", 401)] {
        let r = client()
            .get(format!("{u}/v2/priv/demo/tags/list"))
            .bearer_auth(token)
            .send()
            .unwrap();
        assert_eq!(r.status(), status, "token {token:?}");
    }

    let out = tempfile::tempdir().unwrap();
    let out_s = out.path().to_str().unwrap();
    for v in HELM_VERSIONS {
        let helm = Helm::new(v);
        // helm 3.17 (oras-go v1) has no --plain-http on login and uses HTTP for 127.x itself
        let plain = if v == "v3.17.3" {
            "--insecure"
        } else {
            "--plain-http"
        };
        // wrong password: login fails
        let e = helm
            .try_run(&[
                "registry",
                "login",
                &bridge.host(),
                "--username",
                "alice",
                "--password",
                "bad",
                plain,
            ])
            .unwrap_err();
        assert!(
            e.to_lowercase().contains("401") || e.to_lowercase().contains("unauthorized"),
            "helm {v}: {e}"
        );
        helm.run(&[
            "registry",
            "login",
            &bridge.host(),
            "--username",
            "alice",
            "--password",
            "wonder-pw",
            plain,
        ]);
        assert_eq!(
            helm.pull_oci(
                &format!("{}/priv/demo", bridge.host()),
                "0.1.0",
                out.path(),
                "demo-0.1.0.tgz"
            ),
            repo.bytes("demo-0.1.0.tgz"),
            "helm {v}"
        );
        // the HTTP mirror with repo credentials
        assert!(helm
            .try_run(&["repo", "add", "nocreds", &format!("{u}/priv")])
            .is_err());
        helm.run(&[
            "repo",
            "add",
            "p",
            &format!("{u}/priv"),
            "--username",
            "alice",
            "--password",
            "wonder-pw",
        ]);
        helm.run(&["pull", "p/demo", "-d", out_s]);
        assert_eq!(
            std::fs::read(out.path().join("demo-0.1.0.tgz")).unwrap(),
            repo.bytes("demo-0.1.0.tgz")
        );
        std::fs::remove_file(out.path().join("demo-0.1.0.tgz")).unwrap();
    }
    let log = std::fs::read_to_string(bridge.dir.path().join("server.log")).unwrap();
    assert!(log.contains("/v2/priv/demo"), "access log is on");
    for secret in ["wonder-pw", "ci-token-42", "YWxpY2"] {
        assert!(!log.contains(secret), "{secret} leaked into the log");
    }
}
