//! Test peers, all real: the chartbridge binary (here), nginx (`web`), CNCF distribution and a
//! token realm (`registry`), the helm CLI in three versions (`helm`), skopeo and OCI layouts
//! (`layout`), and the in-process fault server for what no real server does (`fault`).
//! `scripts/test.sh` installs them; a missing one fails the test with a message saying so,
//! never a silent skip. Also the shared HTTP helpers, `metric`, and `wait_until`.

#![allow(dead_code)]

pub mod fault;
mod helm;
mod layout;
mod registry;
mod s3;
mod web;

pub use helm::*;
pub use layout::*;
pub use registry::*;
pub use s3::*;
pub use web::*;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

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

pub fn require(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is missing: run scripts/test.sh, which installs the test peers"
    );
    p
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
    start_chartbridge(
        upstreams_yaml,
        extra,
        cache_dir,
        args,
        log_filter,
        Wrap::None,
    )
}

/// As `chartbridge`, with its cache on a tmpfs of `size` (such as "1m") mounted in a mount
/// namespace of its own, so the disk really fills up (ENOSPC). Needs root, as tests here and
/// on CI run. The process sees the tmpfs; look at it through `Proc::cache_view`.
pub fn chartbridge_on_tmpfs(upstreams_yaml: &str, size: &str) -> Proc {
    start_chartbridge(upstreams_yaml, "", None, &[], "warn", Wrap::Tmpfs(size))
}

/// As `chartbridge`, with the open-file limit (soft and hard) set to `n` by `prlimit`, so the
/// limits derived from it (connections, memfds) are small enough to reach in a test.
pub fn chartbridge_with_open_files(upstreams_yaml: &str, n: u32) -> Proc {
    start_chartbridge(upstreams_yaml, "", None, &[], "warn", Wrap::OpenFiles(n))
}

/// What the chartbridge under test runs inside.
enum Wrap<'a> {
    None,
    /// its cache on a tmpfs of this size, in a mount namespace of its own
    Tmpfs(&'a str),
    /// this open-file limit
    OpenFiles(u32),
}

fn start_chartbridge(
    upstreams_yaml: &str,
    extra: &str,
    cache_dir: Option<&Path>,
    args: &[&str],
    log_filter: &str,
    wrap: Wrap,
) -> Proc {
    // `free_port` gives a port up before chartbridge binds it, so a server of a test running
    // beside this one can take it first: then chartbridge exits and something else answers.
    // Only a `/healthz` that answers 200 from our own, still running process counts.
    for _ in 0..3 {
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
        let mut cmd = match wrap {
            Wrap::None => Command::new(bin),
            Wrap::OpenFiles(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(bin);
                c
            }
            Wrap::Tmpfs(size) => {
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
            .env("CB_TEST_S3_KEY", "AK")
            .env("CB_TEST_S3_SECRET", "SK")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_port(port, "chartbridge");
        let mut p = Proc { child, port, dir };
        let ours = client()
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .is_ok_and(|r| r.status() == 200);
        if ours && p.child.try_wait().unwrap().is_none() {
            return p;
        }
        let _ = p.child.kill();
    }
    panic!("chartbridge did not start on a port of its own in three tries");
}

/// A finished command's stdout when it succeeded, else its stderr.
fn stdout_or_stderr(out: std::process::Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
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

/// A GET of `url` with `Range: bytes=<spec>` (`first-last` or `-suffix`) of a blob of `total`
/// bytes: asserts `206` and the `Content-Range` the spec means; returns the body.
pub fn get_range(url: &str, spec: &str, total: usize) -> Vec<u8> {
    let (first, last) = match spec.split_once('-') {
        Some(("", n)) => (total - n.parse::<usize>().unwrap(), total - 1),
        Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
        None => panic!("range spec {spec}"),
    };
    let r = client()
        .get(url)
        .header("Range", format!("bytes={spec}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 206, "Range: bytes={spec}");
    assert_eq!(
        r.headers()["content-range"].to_str().unwrap(),
        format!("bytes {first}-{last}/{total}")
    );
    r.bytes().unwrap().to_vec()
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

/// The sum of a Prometheus metric's samples whose line contains every one of `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
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

/// Moves the calling test thread (and every process and thread it starts from now on) into a
/// network namespace of its own, with loopback up and `10.213.0.1` added to it: an address
/// that is not loopback to clients, so helm 3.8-3.17 and containerd, which use plain HTTP for
/// `localhost` and `127.x` by themselves, speak TLS to it. Other tests' threads are not
/// affected. Needs root, as tests here and on CI run. Returns the address.
pub fn private_network() -> &'static str {
    const ADDR: &str = "10.213.0.1";
    // SAFETY: unshare(2) with CLONE_NEWNET changes only the calling thread's namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {} (the tests run as root)",
        std::io::Error::last_os_error()
    );
    for args in [
        vec!["link", "set", "lo", "up"],
        vec!["addr", "add", &format!("{ADDR}/32"), "dev", "lo"],
    ] {
        let ok = Command::new("ip")
            .args(&args)
            .status()
            .expect("ip (iproute2) is installed by scripts/test-deps.sh");
        assert!(ok.success(), "ip {args:?}");
    }
    ADDR
}
