//! chartbridge as an authenticated client of real registries: htpasswd Basic auth, and the full
//! Docker Bearer flow against distribution's `auth: token` with a test-issued signing key.
//! Credentials come from environment variables and never reach chartbridge's clients.

use crate::support::*;

fn push_chart(reg_host: &str, helm: &Helm, repo: &ChartRepo, login: Option<(&str, &str)>) {
    if let Some((u, p)) = login {
        helm.run(&[
            "registry",
            "login",
            reg_host,
            "--username",
            u,
            "--password",
            p,
            "--plain-http",
        ]);
    }
    helm.push(&repo.path("demo-0.1.0.tgz"), reg_host, "charts");
}

fn creds_yaml(dir: &std::path::Path, user: &str, pass: &str) -> String {
    let pw = dir.join("password");
    std::fs::write(&pw, format!("{pass}\n")).unwrap();
    format!(
        "    credentials: {{username: {user}, password_file: {}}}\n",
        pw.display()
    )
}

fn pull(bridge: &Proc, up: &str) -> Result<Vec<u8>, String> {
    let out = tempfile::tempdir().unwrap();
    Helm::new("v4.1.4").try_pull_oci(
        &format!("{}/{up}/charts/demo", bridge.host()),
        "0.1.0",
        out.path(),
    )?;
    Ok(std::fs::read(out.path().join("demo-0.1.0.tgz")).unwrap())
}

#[test]
fn basic_auth_registry_with_credentials_from_a_file() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    let reg = registry_htpasswd("alice", "s3cret-pw");
    push_chart(
        &reg.host(),
        &Helm::new("v4.1.4"),
        &repo,
        Some(("alice", "s3cret-pw")),
    );
    let secrets = tempfile::tempdir().unwrap();
    let mut ups = oci_upstream(
        "auth",
        &reg.url(),
        &creds_yaml(secrets.path(), "alice", "s3cret-pw"),
    );
    ups.push_str(&oci_upstream("anon", &reg.url(), ""));
    let bridge = chartbridge(&ups);
    assert_eq!(pull(&bridge, "auth").unwrap(), repo.bytes("demo-0.1.0.tgz"));
    // without credentials: a clear upstream error, not a hang or a leak
    let (status, code) = oci_code(get(&format!(
        "{}/v2/anon/charts/demo/manifests/0.1.0",
        bridge.url()
    )));
    assert_eq!((status, code.as_str()), (502, "UNAVAILABLE"));
    let body = get(&format!(
        "{}/v2/anon/charts/demo/manifests/0.1.0",
        bridge.url()
    ))
    .text()
    .unwrap();
    assert!(
        body.contains("Basic credentials") || body.contains("refused access"),
        "{body}"
    );
    let log = std::fs::read_to_string(bridge.dir.path().join("server.log")).unwrap();
    assert!(
        !log.contains("s3cret-pw"),
        "the password must never be logged"
    );
}

#[test]
fn bearer_token_flow_against_a_token_realm() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    let (realm, reg) = registry_token("bob", "t0ken-pw", false);
    push_chart(
        &reg.host(),
        &Helm::new("v4.1.4"),
        &repo,
        Some(("bob", "t0ken-pw")),
    );
    let before = token_requests(&realm);
    std::env::set_var("CB_TEST_TOKEN_PW", "t0ken-pw");
    let creds = "    credentials: {username: bob, password_env: CB_TEST_TOKEN_PW}\n";
    let bridge = chartbridge(&oci_upstream("tok", &reg.url(), creds));
    for _ in 0..3 {
        assert_eq!(pull(&bridge, "tok").unwrap(), repo.bytes("demo-0.1.0.tgz"));
    }
    let fetched = token_requests(&realm) - before;
    assert!(fetched >= 1, "the Bearer flow went through the realm");
    assert!(
        fetched <= 2,
        "tokens are cached per scope, not fetched per request ({fetched})"
    );
    // wrong password: the realm refuses, chartbridge says so
    std::env::set_var("CB_TEST_TOKEN_PW_BAD", "nope");
    let bad = chartbridge(&oci_upstream(
        "tok",
        &reg.url(),
        "    credentials: {username: bob, password_env: CB_TEST_TOKEN_PW_BAD}\n",
    ));
    let resp = get(&format!("{}/v2/tok/charts/demo/manifests/0.1.0", bad.url()));
    assert_eq!(resp.status(), 502);
    assert!(resp.text().unwrap().contains("token endpoint"));
}

#[test]
fn anonymous_bearer_tokens_like_ghcr() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    let (_realm, reg) = registry_token("x", "y", true);
    push_chart(&reg.host(), &Helm::new("v4.1.4"), &repo, None);
    let bridge = chartbridge(&oci_upstream("ghcrish", &reg.url(), ""));
    assert_eq!(
        pull(&bridge, "ghcrish").unwrap(),
        repo.bytes("demo-0.1.0.tgz")
    );
}
