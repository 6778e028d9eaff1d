//! containerd as a cluster runtime pulling through chartbridge as a registry mirror: `ctr` with
//! `--hosts-dir` sends `?ns=<registry>` with unprefixed repository paths. The hosts.toml's
//! fallback server is a dead port, so the pull can only succeed through chartbridge. A protected
//! upstream refuses an anonymous pull (401) and lets containerd's host credentials through.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

pub struct Containerd {
    child: std::process::Child,
    pub dir: tempfile::TempDir,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn containerd() -> Containerd {
    let bin = "/usr/bin/containerd";
    assert!(
        std::path::Path::new(bin).exists(),
        "containerd is missing: run scripts/test.sh"
    );
    let dir = tempfile::Builder::new()
        .prefix("ctd")
        .tempdir_in("/tmp")
        .unwrap();
    let p = dir.path().display();
    let conf = format!(
        "version = 2\nroot = \"{p}/root\"\nstate = \"{p}/state\"\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         [grpc]\n  address = \"{p}/c.sock\"\n[ttrpc]\n  address = \"{p}/t.sock\"\n"
    );
    std::fs::write(dir.path().join("config.toml"), conf).unwrap();
    let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
    let child = Command::new(bin)
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let sock = dir.path().join("c.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sock.exists(), "containerd did not start");
    Containerd { child, dir }
}

#[test]
fn ctr_pulls_an_image_through_chartbridge_with_ns_routing() {
    let reg = registry();
    let layouts = tempfile::tempdir().unwrap();
    make_image_layout(&layouts.path().join("l"), "v1.2.0", 1 << 20, 3);
    push_layout(&layouts.path().join("l"), "v1.2.0", &reg, "test/hello");
    let bridge = chartbridge(&oci_upstream("reg", &reg.url(), ""));
    let ctd = containerd();
    let image = format!("{}/test/hello:v1.2.0", reg.host());
    let out = ctr_pull(&ctd, &reg, &bridge, "test", &image, None);
    assert!(
        out.status.success(),
        "ctr pull failed: {}\n{}\ncontainerd log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(ctd.dir.path().join("containerd.log")).unwrap_or_default()
    );
    let metrics = get(&format!("{}/metrics", bridge.url())).text().unwrap();
    let served = |route: &str| {
        metrics.lines().any(|l| {
            l.starts_with("chartbridge_http_requests_total")
                && l.contains(&format!("route=\"{route}\""))
                && l.contains("status=\"200\"")
        })
    };
    assert!(
        served("manifest") && served("blob"),
        "pull did not go through chartbridge:\n{metrics}"
    );

    // a protected upstream: containerd's host credentials (`--user`) answer the Basic challenge
    let secrets = tempfile::tempdir().unwrap();
    write_htpasswd(&secrets.path().join("htpasswd"), "alice", "wonder-pw");
    let protected = chartbridge_full(
        &format!(
            "{}    access: {{htpasswd_file: {}}}\n",
            oci_upstream("reg", &reg.url(), ""),
            secrets.path().join("htpasswd").display()
        ),
        "",
        None,
        &[],
        "info",
    );
    let refused = ctr_pull(&ctd, &reg, &protected, "anon", &image, None);
    let why = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(
        !refused.status.success() && (why.contains("401") || why.contains("unauthorized")),
        "anonymous pull must be refused with 401: {why}"
    );
    let out = ctr_pull(
        &ctd,
        &reg,
        &protected,
        "authed",
        &image,
        Some("alice:wonder-pw"),
    );
    assert!(
        out.status.success(),
        "ctr pull with credentials failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::read_to_string(protected.dir.path().join("server.log")).unwrap();
    assert!(
        !log.contains("wonder-pw"),
        "the password stays out of the log"
    );
}

/// `ctr image pull` of `image` in containerd namespace `ns`, with a hosts.toml that sends
/// the registry's traffic to `bridge` (and its fallback to a dead port).
fn ctr_pull(
    ctd: &Containerd,
    reg: &Proc,
    bridge: &Proc,
    ns: &str,
    image: &str,
    user: Option<&str>,
) -> std::process::Output {
    ctr_pull_via(ctd, &reg.host(), &bridge.url(), "", ns, image, user)
}

/// `ctr image pull` of `image` (whose registry is `registry_host`) through the mirror at
/// `mirror_url`, with `host_toml` added to the mirror's `[host]` table (such as `ca = "..."`).
pub fn ctr_pull_via(
    ctd: &Containerd,
    registry_host: &str,
    mirror_url: &str,
    host_toml: &str,
    ns: &str,
    image: &str,
    user: Option<&str>,
) -> std::process::Output {
    let certs = ctd.dir.path().join("certs.d");
    let host_dir = certs.join(registry_host);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:1\"\n\n[host.\"{mirror_url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n{host_toml}"
        ),
    )
    .unwrap();
    let mut cmd = Command::new("/usr/bin/ctr");
    cmd.arg("--address")
        .arg(ctd.dir.path().join("c.sock"))
        .args([
            "--namespace",
            ns,
            "image",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
        ])
        .arg(&certs)
        .args(["--platform", "linux/amd64"]);
    if let Some(u) = user {
        cmd.args(["--user", u]);
    }
    cmd.arg(image).stdin(Stdio::null()).output().unwrap()
}
