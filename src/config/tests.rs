use super::*;

#[test]
fn listen_tls_alone_means_no_plain_listener() {
    let d = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (d.path().join("c.pem"), d.path().join("k.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let tls = format!(
        "listen_tls:\n  addr: 127.0.0.1:5443\n  cert_file: {}\n  key_file: {}\n",
        c.display(),
        k.display()
    );
    let only = Config::from_yaml(&tls, "t").unwrap();
    assert_eq!(only.listen, None);
    assert_eq!(only.listen_tls.unwrap().addr.port(), 5443);
    let both = Config::from_yaml(&format!("listen: 127.0.0.1:5000\n{tls}"), "t").unwrap();
    assert_eq!(both.listen.unwrap().port(), 5000);
    let e = Config::from_yaml(&format!("listen: 127.0.0.1:5443\n{tls}"), "t").unwrap_err();
    assert!(e.to_string().contains("both"), "{e}");
    let e = Config::from_yaml(&format!("{tls}  keyfile: x\n"), "t").unwrap_err();
    assert!(e.to_string().contains("keyfile"), "{e}");
    let e = Config::from_yaml(&tls.replace("c.pem", "missing.pem"), "t").unwrap_err();
    assert!(e.to_string().contains("listen_tls.cert_file"), "{e}");
}

#[test]
fn embedded_default_and_example_are_valid() {
    let c = Config::embedded_default();
    assert_eq!(c.listen.unwrap().to_string(), "127.0.0.1:5000");
    assert!(c.upstreams.iter().any(|u| u.name.as_str() == "metallb"));
    assert!(c
        .upstreams
        .iter()
        .any(|u| u.name.as_str() == "ingress-nginx"));
    let example = include_str!("../../config/chartbridge.example.yaml");
    std::env::set_var("DH_USER", "someone");
    std::env::set_var("DH_TOKEN", "secret");
    let c = Config::from_yaml(example, "example").unwrap();
    let dh = c
        .upstreams
        .iter()
        .find(|u| u.name.as_str() == "dockerhub")
        .unwrap();
    assert!(dh.is_docker_hub());
    assert_eq!(
        format!("{:?}", dh.credentials),
        "Some(Credentials(someone, <redacted>))"
    );
    assert_eq!(c.default_upstream, None);
    assert_eq!(c.cache.max_disk_bytes, 10 << 30);
    assert_eq!(
        c.upstreams[0].url.as_str(),
        "https://metallb.github.io/metallb/"
    );
    assert_eq!(c.upstreams[0].index_ttl, Duration::from_secs(300));
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    let e = Config::from_yaml("listen: 127.0.0.1:1\ncache:\n  dirr: /x\n", "f.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("dirr"), "{e}");
    assert!(e.contains('3'), "line number missing: {e}");
}

#[test]
fn bad_values_are_explained() {
    let up = |extra: &str| {
        format!("upstreams:\n  - name: a\n    kind: helm\n    url: https://x.io\n{extra}")
    };
    for (yaml, needle) in [
        (up("    index_ttl: 5 minutes\n"), "index_ttl"),
        (up("").replace("helm", "svn"), "unknown kind"),
        (up("").replace("https://x.io", "ftp://x.io"), "http(s)"),
        (up("").replace("name: a", "name: A"), "name"),
        (
            "cache:\n  max_disk_bytes: 10 GB please\n".into(),
            "max_disk_bytes",
        ),
        ("listen: nowhere\n".into(), "listen"),
        (
            up("    credentials: {username: u, password: p}\n").replace("helm", "oci"),
            "inline password",
        ),
        (
            up("    credentials: {username: u, password_env: CB_UNSET_VAR_X}\n")
                .replace("helm", "oci"),
            "CB_UNSET_VAR_X",
        ),
        (
            up("    latest: sometimes\n").replace("helm", "oci"),
            "latest",
        ),
        (up("    latest: always\n"), "kind oci only"),
        (
            up("    float: [patch]\n"),
            "float: \"patch\" is not major or minor",
        ),
        (
            format!("default_upstream: nope\n{}", up("")),
            "default_upstream",
        ),
        (
            format!(
                "{}  - name: a\n    kind: helm\n    url: https://y.io\n",
                up("")
            ),
            "twice",
        ),
    ] {
        let e = Config::from_yaml(&yaml, "t").unwrap_err().to_string();
        assert!(e.contains(needle), "{yaml} -> {e}");
    }
}

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
    assert_eq!(parse_size("1MB").unwrap(), 1_000_000);
    assert_eq!(parse_size("512").unwrap(), 512);
    assert!(parse_size("99999999999TiB").is_err());
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert!(parse_duration("5").is_err());
}
