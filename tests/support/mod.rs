//! Test peers, all real: the chartbridge binary, nginx serving a chart repository, CNCF
//! distribution (`docker-registry`), and the helm CLI in three versions. `scripts/test.sh`
//! installs them; a missing one fails the test with a message saying so, never a silent skip.

#![allow(dead_code)]

pub mod fault;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const HELM_VERSIONS: [&str; 3] = ["v3.17.3", "v3.18.0", "v4.1.4"];

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what} did not start listening on {port}");
}

/// A child process killed when dropped.
pub struct Proc {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The cache directory as the process sees it (through its mount namespace).
    pub fn cache_view(&self) -> PathBuf {
        let cache = self.dir.path().join("cache");
        PathBuf::from(format!("/proc/{}/root", self.pid())).join(cache.strip_prefix("/").unwrap())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit by itself, up to `limit`; true when it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// SIGKILL: no chance to clean up (`Child::kill` sends exactly that on Unix).
    pub fn kill9(&mut self) {
        self.stop();
    }
}

fn require(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is missing: run scripts/test.sh, which installs the test peers"
    );
    p
}

/// nginx serving `root` as a static site, with an access log for counting upstream requests.
pub fn nginx(root: &Path) -> Proc {
    let bin = require("/usr/sbin/nginx");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let p = dir.path().display();
    let conf = format!(
        "daemon off; master_process off; pid {p}/nginx.pid; error_log {p}/error.log;\n\
         events {{}}\n\
         http {{\n  access_log {p}/access.log; sendfile on;\n  \
         client_body_temp_path {p}/t1; proxy_temp_path {p}/t2; fastcgi_temp_path {p}/t3;\n  \
         uwsgi_temp_path {p}/t4; scgi_temp_path {p}/t5;\n  \
         types {{ application/gzip tgz; application/x-yaml yaml; }}\n  \
         server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
        root = root.display()
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .arg("-p")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "nginx");
    Proc { child, port, dir }
}

/// How many requests nginx has logged for paths containing `needle`.
pub fn nginx_hits(n: &Proc, needle: &str) -> usize {
    std::thread::sleep(Duration::from_millis(50));
    std::fs::read_to_string(n.dir.path().join("access.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// CNCF distribution (Debian's docker-registry), anonymous.
pub fn registry() -> Proc {
    registry_with(|_| String::new())
}

/// CNCF distribution with an `auth:` section made from its own temp dir.
pub fn registry_with(auth: impl FnOnce(&Path) -> String) -> Proc {
    let bin = require("/usr/bin/docker-registry");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let auth = auth(dir.path());
    let conf = format!(
        "version: 0.1\nlog: {{level: warn, accesslog: {{disabled: true}}}}\n\
         storage: {{filesystem: {{rootdirectory: {}/data}}, delete: {{enabled: true}}}}\n\
         http: {{addr: 127.0.0.1:{port}}}\n{auth}",
        dir.path().display()
    );
    std::fs::write(dir.path().join("config.yml"), conf).unwrap();
    let child = Command::new(bin)
        .arg("serve")
        .arg(dir.path().join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "docker-registry");
    Proc { child, port, dir }
}

/// The chartbridge binary with `upstreams_yaml` (the `upstreams:` list body) on a free port.
pub fn chartbridge(upstreams_yaml: &str) -> Proc {
    chartbridge_with(upstreams_yaml, "", None)
}

/// As `chartbridge`, with extra top-level YAML and optionally a given cache dir.
pub fn chartbridge_with(upstreams_yaml: &str, extra: &str, cache_dir: Option<&Path>) -> Proc {
    chartbridge_full(upstreams_yaml, extra, cache_dir, &[], "warn")
}

/// The most general start: extra command-line arguments and a `RUST_LOG` filter.
pub fn chartbridge_full(
    upstreams_yaml: &str,
    extra: &str,
    cache_dir: Option<&Path>,
    args: &[&str],
    log_filter: &str,
) -> Proc {
    start_chartbridge(upstreams_yaml, extra, cache_dir, args, log_filter, None)
}

/// As `chartbridge`, with its cache on a tmpfs of `size` (such as "1m") mounted in a mount
/// namespace of its own, so the disk really fills up (ENOSPC). Needs root, as tests here and
/// on CI run. The process sees the tmpfs; look at it through `Proc::cache_view`.
pub fn chartbridge_on_tmpfs(upstreams_yaml: &str, size: &str) -> Proc {
    start_chartbridge(upstreams_yaml, "", None, &[], "warn", Some(size))
}

fn start_chartbridge(
    upstreams_yaml: &str,
    extra: &str,
    cache_dir: Option<&Path>,
    args: &[&str],
    log_filter: &str,
    tmpfs: Option<&str>,
) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cache = cache_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.path().join("cache"));
    let conf = format!(
        "listen: 127.0.0.1:{port}\ncache:\n  dir: {}\n{extra}upstreams:\n{upstreams_yaml}",
        cache.display()
    );
    std::fs::write(dir.path().join("config.yaml"), conf).unwrap();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let bin = env!("CARGO_BIN_EXE_chartbridge");
    let mut cmd = match tmpfs {
        None => Command::new(bin),
        Some(size) => {
            std::fs::create_dir_all(&cache).unwrap();
            let mut c = Command::new("unshare");
            c.args(["-m", "sh", "-c"])
                .arg(r#"mount -t tmpfs -o "size=$1" chartbridge-test "$2" && shift 2 && exec "$@""#)
                .arg("sh")
                .arg(size)
                .arg(&cache)
                .arg(bin);
            c
        }
    };
    let child = cmd
        .args(args)
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("config.yaml"))
        .env("RUST_LOG", log_filter)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for_port(port, "chartbridge");
    Proc { child, port, dir }
}

pub fn helm_upstream(name: &str, url: &str) -> String {
    format!("  - name: {name}\n    kind: helm\n    url: {url}\n    index_ttl: 1s\n")
}

/// The helm CLI of one version, with its own HOME so tests never touch a user's config.
pub struct Helm {
    bin: PathBuf,
    pub home: tempfile::TempDir,
}

impl Helm {
    pub fn new(version: &str) -> Helm {
        let bin = require(&format!(
            "{}/target/test-tools/helm-{version}",
            env!("CARGO_MANIFEST_DIR")
        ));
        Helm {
            bin,
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs helm; returns stdout, panicking with stderr when it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        match out {
            Ok(s) => s,
            Err(e) => panic!("helm {args:?} failed: {e}"),
        }
    }

    /// `helm pull oci://<from> --version <v> --plain-http -d <dest>`, returning the bytes of
    /// the pulled archive named `file`.
    pub fn pull_oci(&self, from: &str, version: &str, dest: &Path, file: &str) -> Vec<u8> {
        if let Err(e) = self.try_pull_oci(from, version, dest) {
            panic!("helm pull oci://{from} --version {version} failed: {e}");
        }
        let path = dest.join(file);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(path).unwrap();
        bytes
    }

    /// `helm pull oci://<from> --version <v> --plain-http -d <dest>`, helm's stderr on failure.
    pub fn try_pull_oci(&self, from: &str, version: &str, dest: &Path) -> Result<String, String> {
        self.try_run(&[
            "pull",
            &format!("oci://{from}"),
            "--version",
            version,
            "--plain-http",
            "-d",
            dest.to_str().unwrap(),
        ])
    }

    pub fn try_run(&self, args: &[&str]) -> Result<String, String> {
        let h = self.home.path();
        stdout_or_stderr(
            Command::new(&self.bin)
                .args(args)
                .env("HOME", h)
                .env("HELM_CACHE_HOME", h.join("cache"))
                .env("HELM_CONFIG_HOME", h.join("config"))
                .env("HELM_DATA_HOME", h.join("data"))
                .output()
                .unwrap(),
        )
    }
}

/// A finished command's stdout when it succeeded, else its stderr.
fn stdout_or_stderr(out: std::process::Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A chart repository built by the real helm: `helm create`, `helm package`, `helm repo index`
/// (with `--url` when `base_url` is given, else relative URLs).
pub struct ChartRepo {
    pub dir: tempfile::TempDir,
}

impl ChartRepo {
    pub fn new(charts: &[(&str, &str)]) -> ChartRepo {
        let helm = Helm::new("v4.1.4");
        let dir = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        for (name, version) in charts {
            let src = work.path().join(name);
            if !src.exists() {
                helm.run(&["create", src.to_str().unwrap()]);
            }
            helm.run(&[
                "package",
                src.to_str().unwrap(),
                "--version",
                version,
                "-d",
                dir.path().to_str().unwrap(),
            ]);
        }
        ChartRepo { dir }
    }

    pub fn index(&self, base_url: Option<&str>) {
        let helm = Helm::new("v4.1.4");
        let mut args = vec!["repo", "index", self.dir.path().to_str().unwrap()];
        if let Some(u) = base_url {
            args.extend(["--url", u]);
        }
        helm.run(&args);
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn bytes(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap()
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn get(url: &str) -> reqwest::blocking::Response {
    client().get(url).send().unwrap()
}

/// The OCI error code of an error response.
pub fn oci_code(resp: reqwest::blocking::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().expect("OCI error JSON");
    (
        status,
        v["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Sends `path` exactly as given (HTTP clients normalise `..` away): returns status and body.
pub fn raw_get(port: u16, path: &str) -> (u16, String) {
    let out = raw_exchange(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Writes an htpasswd file with one bcrypt entry, made by Apache's `htpasswd`.
pub fn write_htpasswd(path: &Path, user: &str, password: &str) {
    let out = Command::new(require("/usr/bin/htpasswd"))
        .args(["-Bbn", user, password])
        .output()
        .unwrap();
    assert!(out.status.success(), "htpasswd failed: {out:?}");
    std::fs::write(path, out.stdout).unwrap();
}

/// Sends `raw` bytes as a request and returns whatever comes back before the connection ends
/// (write and read errors end the exchange: the server may close on a bad request).
pub fn raw_exchange(port: u16, raw: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `skopeo`, with TLS verification off (every peer here is plain HTTP on loopback).
pub fn skopeo(args: &[&str]) -> Result<String, String> {
    let bin = require("/usr/bin/skopeo");
    stdout_or_stderr(
        Command::new(bin)
            .args(args)
            .env("HOME", std::env::temp_dir())
            .output()
            .unwrap(),
    )
}

/// Pushes every platform of the image tagged `tag` in the OCI layout at `layout` to the
/// registry `reg` as `<repo>:<tag>`.
pub fn push_layout(layout: &Path, tag: &str, reg: &Proc, repo: &str) {
    skopeo(&[
        "copy",
        "--all",
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{}/{repo}:{tag}", reg.host()),
        "--dest-tls-verify=false",
    ])
    .unwrap();
}

/// Builds a multi-arch OCI image layout (amd64 + arm64, one layer each of `layer_bytes`
/// incompressible bytes) tagged `tag`, returning the index manifest's digest.
pub fn make_image_layout(dir: &Path, tag: &str, layer_bytes: usize, seed: u64) -> String {
    use sha2::{Digest as _, Sha256};
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| -> (String, usize) {
        let hex = hex::encode(Sha256::digest(data));
        std::fs::write(blobs.join(&hex), data).unwrap();
        (format!("sha256:{hex}"), data.len())
    };
    let mut manifests = Vec::new();
    for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
        let mut x = seed.wrapping_mul(31).wrapping_add(i as u64 + 1) | 1;
        let content: Vec<u8> = (0..layer_bytes)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, format!("hello-{arch}.bin"), content.as_slice())
            .unwrap();
        let raw = tar.into_inner().unwrap();
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&raw)));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        let (layer, layer_size) = put(&gz.finish().unwrap());
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"Cmd": ["/hello"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]}
        });
        let (cfg, cfg_size) = put(config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": cfg_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layer_size}]
        });
        let (m, m_size) = put(manifest.to_string().as_bytes());
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": m, "size": m_size,
            "platform": {"architecture": arch, "os": "linux"}
        }));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests
    });
    let (idx, idx_size) = put(index.to_string().as_bytes());
    let layout_index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": idx, "size": idx_size,
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }]
    });
    std::fs::write(dir.join("index.json"), layout_index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    idx
}

pub fn oci_upstream(name: &str, url: &str, extra: &str) -> String {
    format!("  - name: {name}\n    kind: oci\n    url: {url}\n    tag_ttl: 1s\n{extra}")
}

/// A registry that wants Basic credentials (htpasswd, bcrypt).
pub fn registry_htpasswd(user: &str, pass: &str) -> Proc {
    registry_with(|dir| {
        let out = Command::new(require("/usr/bin/htpasswd"))
            .args(["-Bbn", user, pass])
            .output()
            .unwrap();
        std::fs::write(dir.join("htpasswd"), out.stdout).unwrap();
        format!(
            "auth: {{htpasswd: {{realm: basic-realm, path: {}/htpasswd}}}}\n",
            dir.display()
        )
    })
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

/// The sum of a Prometheus metric's samples whose line contains every one of `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
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

/// Deterministic incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Waits (up to 20 s) for `cond`, polling; panics with `what` when it never holds.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}
