//! CNCF distribution (Debian's `docker-registry`): anonymous, behind htpasswd, behind a token
//! realm (`tests/peers/token_server.py`), and the push API.

use std::path::Path;
use std::process::{Command, Stdio};

use super::*;

/// CNCF distribution (Debian's docker-registry), anonymous.
pub fn registry() -> Proc {
    registry_with(|_| String::new())
}

/// CNCF distribution with an `auth:` section made from its own temp dir.
pub fn registry_with(auth: impl FnOnce(&Path) -> String) -> Proc {
    start_registry(auth, false)
}

/// CNCF distribution, anonymous, with its access log in `access.log` (see `registry_gets`).
pub fn registry_logged() -> Proc {
    start_registry(|_| String::new(), true)
}

/// How many GETs of paths containing `needle` a `registry_logged` registry has answered.
pub fn registry_gets(reg: &Proc, needle: &str) -> usize {
    std::thread::sleep(std::time::Duration::from_millis(100));
    std::fs::read_to_string(reg.dir.path().join("access.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"GET /v2/") && l.contains(needle))
        .count()
}

/// CNCF distribution serving TLS with this certificate chain and key, anonymous.
pub fn registry_tls(cert: &Path, key: &Path) -> Proc {
    let tls = format!(
        ", tls: {{certificate: {}, key: {}}}",
        cert.display(),
        key.display()
    );
    start_registry_on(|_| String::new(), false, &tls)
}

fn start_registry(auth: impl FnOnce(&Path) -> String, logged: bool) -> Proc {
    start_registry_on(auth, logged, "")
}

fn start_registry_on(auth: impl FnOnce(&Path) -> String, logged: bool, http_extra: &str) -> Proc {
    let bin = require("/usr/bin/docker-registry");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let auth = auth(dir.path());
    let log = if logged {
        "{level: warn, accesslog: {disabled: false}}"
    } else {
        "{level: warn, accesslog: {disabled: true}}"
    };
    let conf = format!(
        "version: 0.1\nlog: {log}\n\
         storage: {{filesystem: {{rootdirectory: {}/data}}, delete: {{enabled: true}}}}\n\
         http: {{addr: 127.0.0.1:{port}{http_extra}}}\n{auth}",
        dir.path().display()
    );
    std::fs::write(dir.path().join("config.yml"), conf).unwrap();
    let (out, err) = if logged {
        let f = std::fs::File::create(dir.path().join("access.log")).unwrap();
        (Stdio::from(f.try_clone().unwrap()), Stdio::from(f))
    } else {
        (Stdio::null(), Stdio::null())
    };
    let child = Command::new(bin)
        .arg("serve")
        .arg(dir.path().join("config.yml"))
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    wait_for_port(port, "docker-registry");
    Proc { child, port, dir }
}

pub fn oci_upstream(name: &str, url: &str, extra: &str) -> String {
    format!("  - name: {name}\n    kind: oci\n    url: {url}\n    tag_ttl: 1s\n{extra}")
}

/// How many PUTs (blob uploads, manifests, tags) a logged registry has answered.
pub fn registry_puts(reg: &Proc) -> usize {
    std::thread::sleep(std::time::Duration::from_millis(100));
    std::fs::read_to_string(reg.dir.path().join("access.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"PUT /v2/"))
        .count()
}

/// A registry that wants Basic credentials (htpasswd, bcrypt).
pub fn registry_htpasswd(user: &str, pass: &str) -> Proc {
    start_registry(htpasswd_auth(user, pass), false)
}

/// `registry_htpasswd` with its access log (see `registry_puts`).
pub fn registry_htpasswd_logged(user: &str, pass: &str) -> Proc {
    start_registry(htpasswd_auth(user, pass), true)
}

fn htpasswd_auth<'a>(user: &'a str, pass: &'a str) -> impl FnOnce(&Path) -> String + 'a {
    move |dir| {
        let out = Command::new(require("/usr/bin/htpasswd"))
            .args(["-Bbn", user, pass])
            .output()
            .unwrap();
        std::fs::write(dir.join("htpasswd"), out.stdout).unwrap();
        format!(
            "auth: {{htpasswd: {{realm: basic-realm, path: {}/htpasswd}}}}\n",
            dir.display()
        )
    }
}

/// The test token realm (`tests/peers/token_server.py`) and a registry trusting it.
pub fn registry_token(user: &str, pass: &str, anonymous: bool) -> (Proc, Proc) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cert = dir.path().join("root.crt");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/token_server.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(port.to_string())
        .arg(&cert)
        .arg(user)
        .arg(pass);
    if anonymous {
        cmd.arg("--anonymous");
    }
    let log = std::fs::File::create(dir.path().join("requests.log")).unwrap();
    let child = cmd.stdout(log).stderr(Stdio::null()).spawn().unwrap();
    wait_for_port(port, "token server");
    let realm = Proc { child, port, dir };
    let cert_path = cert.display().to_string();
    let reg = registry_with(move |_| {
        format!(
            "auth: {{token: {{realm: http://127.0.0.1:{port}/token, service: test-registry, \
             issuer: test-issuer, rootcertbundle: {cert_path}}}}}\n"
        )
    });
    (realm, reg)
}

/// How many token requests the realm has answered.
pub fn token_requests(realm: &Proc) -> usize {
    std::fs::read_to_string(realm.dir.path().join("requests.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("/token"))
        .count()
}

/// Uploads `bytes` as a blob of `repo` to a registry with the distribution push API (a
/// monolithic upload), returning its digest.
pub fn push_blob(reg: &Proc, repo: &str, bytes: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    let d = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    let c = client();
    let r = c
        .post(format!("{}/v2/{repo}/blobs/uploads/", reg.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202, "upload session");
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("{}{loc}", reg.url())
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{loc}{sep}digest={d}"))
        .header("Content-Type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "blob upload");
    d
}

/// Points `repo:to` at what `repo:from` names, in the registry itself (skopeo, every platform).
pub fn retag(reg: &Proc, repo: &str, from: &str, to: &str) {
    skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{}/{repo}:{from}", reg.host()),
        &format!("docker://{}/{repo}:{to}", reg.host()),
    ])
    .unwrap();
}
