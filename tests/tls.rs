//! TLS on the listener, with real clients: helm v3.17.3/v3.18.0/v4.1.4 without
//! `--plain-http` (the CA given with `--ca-file`), skopeo with `--cert-dir`, containerd through a
//! hosts.toml naming the CA, curl negotiating HTTP/2, a certificate rotated on disk and
//! reloaded with SIGHUP (checked on the served certificate, with an open connection kept), a
//! broken or mismatched new pair that keeps the old one, an RSA key over TLS 1.2 and 1.3,
//! and mTLS. Every certificate is generated here (rcgen, or openssl for the RSA key).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::containerd::{containerd, ctr_pull_via};
use crate::support::*;

/// A test CA and the leaf certificates it signs for 127.0.0.1.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "chartbridge test CA");
        let ca = p.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    pub(crate) fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A folder holding only `ca.crt` (skopeo's `--cert-dir`).
    fn cert_dir(&self) -> PathBuf {
        let d = self.dir.path().join("certdir");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(self.ca_file(), d.join("ca.crt")).unwrap();
        d
    }

    /// A server (or, with `client`, client) certificate with this serial, signed by the CA;
    /// writes `<name>.crt` (leaf + CA) and `<name>.key`.
    pub(crate) fn leaf(&self, name: &str, serial: u64, client: bool) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "10.213.0.1".into()]).unwrap();
        p.serial_number = Some(rcgen::SerialNumber::from(serial));
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (c, k) = (
            self.dir.path().join(format!("{name}.crt")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&c, format!("{}{}", cert.pem(), self.ca.pem())).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

fn tls_block(port: u16, cert: &Path, key: &Path, client_ca: Option<&Path>) -> String {
    tls_block_on("127.0.0.1", port, cert, key, client_ca)
}

fn tls_block_on(ip: &str, port: u16, cert: &Path, key: &Path, client_ca: Option<&Path>) -> String {
    let mut s = format!(
        "listen_tls:\n  addr: {ip}:{port}\n  cert_file: {}\n  key_file: {}\n",
        cert.display(),
        key.display()
    );
    if let Some(ca) = client_ca {
        s.push_str(&format!("  client_ca_file: {}\n", ca.display()));
    }
    s
}

fn wait_port(port: u16) {
    wait_on("127.0.0.1", port)
}

fn wait_on(ip: &str, port: u16) {
    wait_until("the TLS listener", || {
        TcpStream::connect((ip, port)).is_ok()
    });
}

/// A rustls client trusting only `ca`, optionally presenting a client certificate.
fn rustls_config(ca: &Path, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match client {
        None => b.with_no_client_auth(),
        Some((c, k)) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(c)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
    })
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(port: u16, config: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let sock = TcpStream::connect(("127.0.0.1", port))?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// The DER of the leaf the server presented on this connection.
fn served_leaf(s: &Tls) -> Vec<u8> {
    s.conn.peer_certificates().unwrap()[0].as_ref().to_vec()
}

fn leaf_der(file: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(file)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .as_ref()
        .to_vec()
}

/// `GET /healthz` on a kept-alive connection; the response's status line.
fn healthz(s: &mut Tls) -> String {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.ends_with(b"\r\n\r\nok\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap()
        .to_string()
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("curl is installed by scripts/test-deps.sh")
}

#[test]
fn helm_skopeo_containerd_and_curl_over_tls() {
    // helm 3.17 and containerd use plain HTTP for 127.x by themselves: serve TLS on an
    // address they treat as remote
    let ip = private_network();
    let pki = Pki::new();
    let (cert, key) = pki.leaf("server", 7, false);
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    repo.index(None);
    let web = nginx(repo.dir.path());
    let reg = registry();
    let layouts = tempfile::tempdir().unwrap();
    let index = make_image_layout(&layouts.path().join("l"), "v1.0.0", 100_000, 5);
    push_layout(&layouts.path().join("l"), "v1.0.0", &reg, "test/app");
    let port = free_port();
    let bridge = chartbridge_with(
        &format!(
            "{}{}",
            helm_upstream("charts", &web.url()),
            oci_upstream("reg", &reg.url(), "")
        ),
        &tls_block_on(ip, port, &cert, &key, None),
        None,
    );
    wait_on(ip, port);
    let host = format!("{ip}:{port}");
    let ca = pki.ca_file();
    let ca_s = ca.to_str().unwrap();
    let expected = repo.bytes("demo-0.1.0.tgz");

    for v in HELM_VERSIONS {
        let helm = Helm::new(v);
        let dest = tempfile::tempdir().unwrap();
        let d = dest.path().to_str().unwrap();
        let log = || std::fs::read_to_string(bridge.dir.path().join("server.log")).unwrap();
        let pulled = helm.try_run(&[
            "pull",
            &format!("oci://{host}/charts/demo"),
            "--version",
            "0.1.0",
            "--ca-file",
            ca_s,
            "-d",
            d,
        ]);
        assert!(pulled.is_ok(), "{v}: {pulled:?}\n{}", log());
        assert_eq!(
            std::fs::read(dest.path().join("demo-0.1.0.tgz")).unwrap(),
            expected,
            "{v}: OCI pull over TLS"
        );
        let shown = helm.run(&[
            "show",
            "chart",
            &format!("oci://{host}/charts/demo"),
            "--version",
            "0.1.0",
            "--ca-file",
            ca_s,
        ]);
        assert!(shown.contains("name: demo"), "{v}: {shown}");
        let login = helm.try_run(&[
            "registry",
            "login",
            &host,
            "--username",
            "anyone",
            "--password",
            "x",
            "--ca-file",
            ca_s,
        ]);
        assert!(login.is_ok(), "{v}: registry login over TLS: {login:?}");
        helm.run(&[
            "repo",
            "add",
            "mirror",
            &format!("https://{host}/charts"),
            "--ca-file",
            ca_s,
        ]);
        let dest2 = tempfile::tempdir().unwrap();
        helm.run(&[
            "pull",
            "mirror/demo",
            "--version",
            "0.1.0",
            "-d",
            dest2.path().to_str().unwrap(),
        ]);
        assert_eq!(
            std::fs::read(dest2.path().join("demo-0.1.0.tgz")).unwrap(),
            expected,
            "{v}: the mirror view over TLS"
        );
        // and without the CA, helm refuses the certificate rather than falling back
        let refused = helm.try_run(&[
            "pull",
            &format!("oci://{host}/charts/demo"),
            "--version",
            "0.1.0",
            "-d",
            d,
        ]);
        assert!(
            refused.is_err(),
            "{v}: an unknown CA must be refused: {refused:?}"
        );
    }

    // skopeo: inspect and copy with --cert-dir
    let cert_dir = pki.cert_dir();
    let cd = cert_dir.to_str().unwrap();
    let direct = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/test/app:v1.0.0", reg.host()),
    ])
    .unwrap();
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--cert-dir",
        cd,
        &format!("docker://{host}/reg/test/app:v1.0.0"),
    ])
    .expect("skopeo inspect over TLS");
    assert_eq!(raw, direct, "the same manifest bytes over TLS");
    let out = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        "--src-cert-dir",
        cd,
        &format!("docker://{host}/reg/test/app:v1.0.0"),
        &format!("oci:{}:app", out.path().display()),
    ])
    .expect("skopeo copy over TLS");

    // containerd through a hosts.toml that names the CA
    let ctd = containerd();
    let pulled = ctr_pull_via(
        &ctd,
        &reg.host(),
        &format!("https://{host}"),
        &format!("  ca = \"{}\"\n", ca.display()),
        "tls",
        &format!("{}/test/app:v1.0.0", reg.host()),
        None,
    );
    assert!(
        pulled.status.success(),
        "ctr pull over TLS: {}",
        String::from_utf8_lossy(&pulled.stderr)
    );

    // HTTP/2 by ALPN; HTTP/1.1 still there for clients that ask for it
    for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let o = curl(&[
            flag,
            "--cacert",
            ca_s,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            &format!("https://{host}/v2/charts/demo/tags/list"),
        ]);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            format!("{want} 200"),
            "{flag}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // a whole blob over h2 arrives intact
    let o = curl(&[
        "--http2",
        "--cacert",
        ca_s,
        &format!("https://{host}/charts/-/demo/0.1.0/demo-0.1.0.tgz"),
    ]);
    assert_eq!(o.stdout, expected, "an archive over HTTP/2");
    // a warm layer from the memory tier (held in a memfd; sent as bytes over TLS), whole and
    // by range, over HTTP/2 and HTTP/1.1
    let (layer, layer_bytes) = first_layer(&layouts.path().join("l"), &index);
    for flag in ["--http2", "--http1.1"] {
        let url = format!("https://{host}/v2/reg/test/app/blobs/{layer}");
        let o = curl(&[flag, "--cacert", ca_s, &url]);
        assert_eq!(o.stdout, layer_bytes, "{flag}: a warm layer over TLS");
        let o = curl(&[flag, "--cacert", ca_s, "-r", "100-20099", &url]);
        assert_eq!(
            o.stdout,
            layer_bytes[100..20100].to_vec(),
            "{flag}: a range over TLS"
        );
    }
    // the plain listener is still there beside it
    assert_eq!(
        get(&format!("{}/v2/charts/demo/tags/list", bridge.url())).status(),
        200
    );
}

#[test]
fn a_rotated_certificate_is_served_after_sighup_and_a_broken_one_is_refused() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("server", 100, false);
    let port = free_port();
    let bridge = chartbridge_with(
        &helm_upstream("none", "http://127.0.0.1:9/"),
        &tls_block(port, &cert, &key, None),
        None,
    );
    wait_port(port);
    let trust = rustls_config(&pki.ca_file(), None);
    let first = leaf_der(&cert);
    let mut kept = connect(port, trust.clone()).unwrap();
    assert_eq!(served_leaf(&kept), first);
    assert!(healthz(&mut kept).contains("200"));
    let serial = |c: &Tls| {
        chartbridge::tls::serial_of(&rustls::pki_types::CertificateDer::from(served_leaf(c)))
            .unwrap()
    };
    assert_eq!(serial(&kept), "64", "serial 100");
    let reloads = |outcome: &str| {
        metric(
            &get(&format!("{}/metrics", bridge.url())).text().unwrap(),
            "chartbridge_config_reloads_total",
            &[&format!("outcome=\"{outcome}\"")],
        )
    };
    let hup = || {
        Command::new("kill")
            .args(["-HUP", &bridge.pid().to_string()])
            .status()
            .unwrap();
    };

    // cert-manager renews the Secret: new files in place, then SIGHUP
    let (c2, k2) = pki.leaf("renewed", 200, false);
    std::fs::copy(&c2, &cert).unwrap();
    std::fs::copy(&k2, &key).unwrap();
    let second = leaf_der(&cert);
    hup();
    wait_until("a new connection sees the renewed certificate", || {
        served_leaf(&connect(port, trust.clone()).unwrap()) == second
    });
    assert_eq!(serial(&connect(port, trust.clone()).unwrap()), "c8");
    // the connection opened before the rotation is still served, on its old certificate
    assert!(healthz(&mut kept).contains("200"), "no connection dropped");
    assert_eq!(served_leaf(&kept), first);

    // a certificate that does not parse: refused, the running pair stays
    let ok_before = reloads("ok");
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    hup();
    wait_until("the broken reload is counted", || reloads("refused") >= 1.0);
    assert_eq!(
        served_leaf(&connect(port, trust.clone()).unwrap()),
        second,
        "a broken certificate keeps the old one"
    );
    // a certificate that does not match its key: refused too
    let (c3, _) = pki.leaf("mismatched", 300, false);
    std::fs::copy(&c3, &cert).unwrap();
    hup();
    wait_until("the mismatched reload is counted", || {
        reloads("refused") >= 2.0
    });
    assert_eq!(served_leaf(&connect(port, trust.clone()).unwrap()), second);
    assert_eq!(reloads("ok"), ok_before);
    let log = std::fs::read_to_string(bridge.dir.path().join("server.log")).unwrap();
    assert!(
        log.contains("do not make a pair"),
        "the log says why: {log}"
    );
    assert!(healthz(&mut kept).contains("200"));
}

#[test]
fn mutual_tls_refuses_clients_without_a_certificate_from_its_ca() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("server", 1, false);
    let (ccert, ckey) = pki.leaf("node", 2, true);
    let other = Pki::new();
    let (xcert, xkey) = other.leaf("stranger", 3, true);
    let port = free_port();
    let _bridge = chartbridge_with(
        &helm_upstream("none", "http://127.0.0.1:9/"),
        &tls_block(port, &cert, &key, Some(&pki.ca_file())),
        None,
    );
    wait_port(port);
    let ca = pki.ca_file();
    let url = format!("https://127.0.0.1:{port}/healthz");
    let code = |extra: &[&str]| {
        let mut a = vec![
            "--cacert",
            ca.to_str().unwrap(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ];
        a.extend_from_slice(extra);
        a.push(&url);
        let o = curl(&a);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(
        code(&[
            "--cert",
            ccert.to_str().unwrap(),
            "--key",
            ckey.to_str().unwrap()
        ]),
        "200"
    );
    assert_eq!(code(&[]), "000", "no client certificate: no connection");
    assert_eq!(
        code(&[
            "--cert",
            xcert.to_str().unwrap(),
            "--key",
            xkey.to_str().unwrap()
        ]),
        "000",
        "a certificate from another CA: no connection"
    );
    // and with rustls directly: the handshake or the first read fails without a certificate
    let bare = connect(port, rustls_config(&ca, None)).and_then(|mut s| {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut b = [0u8; 64];
        s.read(&mut b).and_then(|n| {
            if n == 0 {
                Err(std::io::Error::other("closed"))
            } else {
                Ok(n)
            }
        })
    });
    assert!(bare.is_err(), "a client without a certificate is refused");
    let mut good = connect(port, rustls_config(&ca, Some((&ccert, &ckey)))).unwrap();
    assert!(healthz(&mut good).contains("200"));
}

#[test]
fn an_rsa_key_serves_tls_1_2_and_1_3_alone_without_a_plain_listener() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("rsa.crt"), dir.path().join("rsa.key"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed by scripts/test-deps.sh");
    assert!(made.success());
    let port = free_port();
    let conf = dir.path().join("c.yaml");
    std::fs::write(
        &conf,
        format!(
            "{}cache:\n  dir: {}\nupstreams: []\n",
            tls_block(port, &cert, &key, None),
            dir.path().join("cache").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chartbridge"))
        .args(["serve", "--config"])
        .arg(&conf)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    for version in [
        ["--tlsv1.2", "--tls-max", "1.2"],
        ["--tlsv1.3", "--tls-max", "1.3"],
    ] {
        let o = curl(&[
            version[0],
            version[1],
            version[2],
            "--cacert",
            cert.to_str().unwrap(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://127.0.0.1:{port}/v2/"),
        ]);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "200",
            "{version:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // TLS 1.1 is not offered
    let o = curl(&[
        "--tlsv1.1",
        "--tls-max",
        "1.1",
        "-k",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("https://127.0.0.1:{port}/v2/"),
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "000");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_configuration_with_a_bad_certificate_is_refused_at_start() {
    let pki = Pki::new();
    let (cert, _) = pki.leaf("server", 1, false);
    let (_, other_key) = pki.leaf("other", 2, false);
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("c.yaml");
    std::fs::write(
        &conf,
        format!(
            "{}cache:\n  dir: {}\nupstreams: []\n",
            tls_block(free_port(), &cert, &other_key, None),
            dir.path().join("cache").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chartbridge"))
        .args(["check-config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listen_tls.cert_file") && err.contains("do not make a pair"),
        "{err}"
    );
}
