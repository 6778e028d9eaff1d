//! `chartbridge sync` into real registries (CNCF distribution behind htpasswd and behind a
//! token realm): helm pulls from the target alone give the upstream's bytes, the config blob
//! and layers equal `helm push`'s, a second run pushes nothing (PUTs counted in the registry's
//! access log), a run killed midway completes on the next, `--dry-run` pushes nothing, floating
//! tags move, and an OCI upstream's multi-arch image and chart keep their digests.

use std::io::BufRead;
use std::process::{Command, Output, Stdio};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_chartbridge");
const ACCEPT: &str =
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";

fn config(dir: &std::path::Path, upstreams: &str) -> std::path::PathBuf {
    let path = dir.join("site.yaml");
    std::fs::write(
        &path,
        format!(
            "cache:\n  dir: {}\nupstreams:\n{upstreams}",
            dir.join("cache").display()
        ),
    )
    .unwrap();
    path
}

fn sync(cfg: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("sync").arg("--config").arg(cfg).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env("RUST_LOG", "warn").output().unwrap()
}

fn ok(out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "sync failed:\n{text}");
    text
}

/// `(status, digest)` of a manifest on a registry, with Basic credentials.
fn manifest(reg: &Proc, path: &str, auth: Option<(&str, &str)>) -> (u16, Option<String>, Vec<u8>) {
    let mut req = client()
        .get(format!("{}/v2/{path}", reg.url()))
        .header("Accept", ACCEPT);
    if let Some((u, p)) = auth {
        req = req.basic_auth(u, Some(p));
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    let d = r
        .headers()
        .get("docker-content-digest")
        .map(|v| v.to_str().unwrap().to_string());
    (status, d, r.bytes().unwrap().to_vec())
}

#[test]
fn a_legacy_repository_is_published_into_a_registry_with_helm_push_digests() {
    let repo = ChartRepo::new(&[("demo", "0.1.0"), ("demo", "0.2.0"), ("other", "1.0.0")]);
    repo.index(None);
    let web = nginx(repo.dir.path());
    let reg = registry_htpasswd_logged("alice", "s3cret-pw");
    let work = tempfile::tempdir().unwrap();
    let cfg = config(
        work.path(),
        &format!(
            "{}    float: [minor]\n",
            helm_upstream("legacy", &web.url())
        ),
    );
    let to = format!("oci://{}/mirror", reg.host());
    let env = [("SYNC_PW", "s3cret-pw")];
    let creds = [
        "--plain-http",
        "--username",
        "alice",
        "--password-env",
        "SYNC_PW",
    ];
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut a: Vec<String> = ["--from", "legacy", "--to", &to]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(creds.iter().map(|s| s.to_string()));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&'static str]| {
        let a = args(extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        sync(&cfg, &a, &env)
    };

    // without credentials the registry refuses, and sync says so with a failing status
    let a: Vec<String> = ["--from", "legacy", "--to", &to, "--plain-http"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let refused = sync(&cfg, &a, &[]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("Basic credentials"),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );

    let before = registry_puts(&reg);
    let first = ok(&run(&["--floating"]));
    eprintln!("first sync:\n{first}");
    assert!(first.contains("3 items, 3 pushed"), "{first}");
    assert!(
        !first.contains("s3cret-pw"),
        "the password is never printed"
    );
    assert!(registry_puts(&reg) > before);

    // helm pulls from the registry alone: the upstream's bytes
    for v in ["v3.17.3", "v4.1.4"] {
        let helm = Helm::new(v);
        // helm 3.17 has no --plain-http on login; --insecure lets it fall back to HTTP
        let plain = if v.starts_with("v3") {
            "--insecure"
        } else {
            "--plain-http"
        };
        helm.run(&[
            "registry",
            "login",
            &reg.host(),
            "--username",
            "alice",
            "--password",
            "s3cret-pw",
            plain,
        ]);
        for (chart, version) in [("demo", "0.1.0"), ("demo", "0.2.0"), ("other", "1.0.0")] {
            let out = tempfile::tempdir().unwrap();
            helm.run(&[
                "pull",
                &format!("oci://{}/mirror/{chart}", reg.host()),
                "--version",
                version,
                "--plain-http",
                "-d",
                out.path().to_str().unwrap(),
            ]);
            let file = format!("{chart}-{version}.tgz");
            assert_eq!(
                std::fs::read(out.path().join(&file)).unwrap(),
                repo.bytes(&file),
                "{v} pulls {file}"
            );
        }
        // `helm push` of the same archive: the same config blob and layers
        if v == "v4.1.4" {
            helm.push(&repo.path("demo-0.1.0.tgz"), &reg.host(), "pushed");
            let auth = Some(("alice", "s3cret-pw"));
            let json = |p: &str| -> serde_json::Value {
                serde_json::from_slice(&manifest(&reg, p, auth).2).unwrap()
            };
            let pushed = json("pushed/demo/manifests/0.1.0");
            let synced = json("mirror/demo/manifests/0.1.0");
            assert_eq!(synced["config"], pushed["config"]);
            assert_eq!(synced["layers"], pushed["layers"]);
            let strip = |v: &serde_json::Value| {
                let mut a = v["annotations"].clone();
                a.as_object_mut()
                    .unwrap()
                    .remove("org.opencontainers.image.created");
                a
            };
            assert_eq!(strip(&synced), strip(&pushed));
        }
    }
    // floating tags and latest went along
    let auth = Some(("alice", "s3cret-pw"));
    let digest = |p: &str| manifest(&reg, p, auth).1;
    assert_eq!(
        digest("mirror/demo/manifests/0.2"),
        digest("mirror/demo/manifests/0.2.0")
    );
    assert_eq!(
        digest("mirror/demo/manifests/latest"),
        digest("mirror/demo/manifests/0.2.0")
    );

    // a second run pushes nothing
    let puts = registry_puts(&reg);
    let again = ok(&run(&["--floating"]));
    assert!(
        again.contains("3 items, 0 pushed, 3 already there"),
        "{again}"
    );
    assert_eq!(registry_puts(&reg), puts, "no PUT on the second run");

    // a new upstream version: --dry-run names it and pushes nothing
    let newer = ChartRepo::new(&[("demo", "0.2.1")]);
    std::fs::copy(newer.path("demo-0.2.1.tgz"), repo.path("demo-0.2.1.tgz")).unwrap();
    repo.index(None);
    std::thread::sleep(std::time::Duration::from_millis(1100)); // index_ttl
    let dry = ok(&run(&["--floating", "--dry-run", "--chart", "demo"]));
    assert!(dry.contains("would push legacy/demo 0.2.1"), "{dry}");
    assert!(dry.contains("3 items, 1 would push"), "{dry}");
    assert_eq!(registry_puts(&reg), puts, "a dry run pushes nothing");
    assert_eq!(manifest(&reg, "mirror/demo/manifests/0.2.1", auth).0, 404);
    // the real run pushes it and moves the floating tag and latest
    ok(&run(&[
        "--floating",
        "--chart",
        "demo",
        "--versions",
        ">=0.2",
    ]));
    let new = digest("mirror/demo/manifests/0.2.1");
    assert!(new.is_some());
    assert_eq!(digest("mirror/demo/manifests/0.2"), new, "0.2 moved");
    assert_eq!(digest("mirror/demo/manifests/latest"), new, "latest moved");
}

#[test]
fn a_sync_killed_midway_completes_on_the_next_run_behind_a_token_realm() {
    let versions: Vec<String> = (0..24).map(|i| format!("1.{i}.0")).collect();
    let charts: Vec<(&str, &str)> = versions.iter().map(|v| ("big", v.as_str())).collect();
    let repo = ChartRepo::new(&charts);
    repo.index(None);
    let web = nginx(repo.dir.path());
    let (_realm, reg) = registry_token("bob", "t0ken-pw", false);
    let work = tempfile::tempdir().unwrap();
    let cfg = config(work.path(), &helm_upstream("legacy", &web.url()));
    let to = format!("oci://{}/team", reg.host());
    let args = [
        "--from",
        "legacy",
        "--to",
        &to,
        "--plain-http",
        "--username",
        "bob",
        "--password-env",
        "SYNC_TOKEN_PW",
        "--concurrency",
        "1",
    ];
    // killed right after its first pushed version
    let mut child = Command::new(BIN)
        .arg("sync")
        .arg("--config")
        .arg(&cfg)
        .args(args)
        .env("SYNC_TOKEN_PW", "t0ken-pw")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("pushed") => break,
            Some(_) => {}
            None => panic!("sync ended before it pushed anything"),
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let rerun = sync(&cfg, &args, &[("SYNC_TOKEN_PW", "t0ken-pw")]);
    let text = ok(&rerun);
    let line = text
        .lines()
        .find(|l| l.starts_with("sync: 24 items"))
        .unwrap();
    eprintln!("rerun after kill: {line}");
    assert!(
        !line.contains(" 0 already there"),
        "the first run's work was kept: {line}"
    );
    // every version is there, complete: helm pulls each from the registry
    let helm = Helm::new("v4.1.4");
    helm.run(&[
        "registry",
        "login",
        &reg.host(),
        "--username",
        "bob",
        "--password",
        "t0ken-pw",
        "--plain-http",
    ]);
    for v in &versions {
        let out = tempfile::tempdir().unwrap();
        helm.run(&[
            "pull",
            &format!("oci://{}/team/big", reg.host()),
            "--version",
            v,
            "--plain-http",
            "-d",
            out.path().to_str().unwrap(),
        ]);
        let file = format!("big-{v}.tgz");
        assert_eq!(
            std::fs::read(out.path().join(&file)).unwrap(),
            repo.bytes(&file)
        );
    }
}

#[test]
fn an_oci_upstreams_image_and_chart_are_copied_with_their_digests() {
    let src = registry();
    let layouts = tempfile::tempdir().unwrap();
    make_image_layout(&layouts.path().join("img"), "v1.2.0", 1 << 20, 11);
    push_layout(&layouts.path().join("img"), "v1.2.0", &src, "test/hello");
    // the same image in a second repository: its blobs are mounted, not uploaded again
    push_layout(&layouts.path().join("img"), "v1.2.0", &src, "test/again");
    let charts = ChartRepo::new(&[("demo", "0.1.0")]);
    Helm::new("v4.1.4").push(&charts.path("demo-0.1.0.tgz"), &src.host(), "charts");
    let dst = registry_logged();
    let work = tempfile::tempdir().unwrap();
    let cfg = config(work.path(), &oci_upstream("src", &src.url(), ""));
    let to = format!("oci://{}/copy", dst.host());
    let args = [
        "--from",
        "src",
        "--to",
        &to,
        "--plain-http",
        "--chart",
        "test/hello",
        "--chart",
        "charts/demo",
        "--chart",
        "test/again",
        "--concurrency",
        "1",
    ];
    let out = ok(&sync(&cfg, &args, &[]));
    eprintln!("oci sync:\n{out}");
    assert!(out.contains("3 items, 3 pushed"), "{out}");
    assert!(
        !out.contains(" 0 mounted"),
        "the second repository mounts: {out}"
    );
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
        raw(&format!("{}/copy/test/hello:v1.2.0", dst.host())),
        raw(&format!("{}/test/hello:v1.2.0", src.host())),
        "the index byte for byte"
    );
    let digest = |reg: &Proc, p: &str| manifest(reg, p, None).1;
    assert_eq!(
        digest(&dst, "copy/test/hello/manifests/v1.2.0"),
        digest(&src, "test/hello/manifests/v1.2.0")
    );
    assert_eq!(
        digest(&dst, "copy/charts/demo/manifests/0.1.0"),
        digest(&src, "charts/demo/manifests/0.1.0")
    );
    // every platform's image is complete on the target: skopeo copies it all out
    let copied = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{}/copy/test/hello:v1.2.0", dst.host()),
        &format!("oci:{}:x", copied.path().display()),
    ])
    .unwrap();
    let puts = registry_puts(&dst);
    let again = ok(&sync(&cfg, &args, &[]));
    assert!(again.contains("3 items, 0 pushed"), "{again}");
    assert_eq!(registry_puts(&dst), puts);
}

/// A registry with a certificate from a private CA: refused without `--ca-file`, trusted with
/// it; helm then pulls over TLS with the same CA.
#[test]
fn a_registry_signed_by_a_private_ca_is_trusted_with_ca_file() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    repo.index(None);
    let web = nginx(repo.dir.path());
    let pki = crate::tls::Pki::new();
    let (cert, key) = pki.leaf("registry", 7, false);
    let reg = registry_tls(&cert, &key);
    let work = tempfile::tempdir().unwrap();
    let cfg = config(work.path(), &helm_upstream("legacy", &web.url()));
    let to = format!("oci://{}/tls", reg.host());
    let refused = sync(&cfg, &["--from", "legacy", "--to", &to], &[]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stdout).to_lowercase();
    assert!(why.contains("certificate"), "{why}");
    let ca = pki.ca_file();
    let out = ok(&sync(
        &cfg,
        &[
            "--from",
            "legacy",
            "--to",
            &to,
            "--ca-file",
            ca.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(out.contains("1 items, 1 pushed"), "{out}");
    let dest = tempfile::tempdir().unwrap();
    Helm::new("v4.1.4").run(&[
        "pull",
        &format!("oci://{}/tls/demo", reg.host()),
        "--version",
        "0.1.0",
        "--ca-file",
        ca.to_str().unwrap(),
        "-d",
        dest.path().to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(dest.path().join("demo-0.1.0.tgz")).unwrap(),
        repo.bytes("demo-0.1.0.tgz")
    );
}
