//! The command line: `check-config` and the embedded default.

use std::process::Command;

#[test]
fn check_config_accepts_the_example_and_names_unknown_keys_with_their_line() {
    let bin = env!("CARGO_BIN_EXE_chartbridge");
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/chartbridge.example.yaml"
    );
    let ok = Command::new(bin)
        .args(["check-config", example])
        .env("DH_USER", "u")
        .env("DH_TOKEN", "t")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "listen: 127.0.0.1:5000\nupstreams:\n  - name: a\n    kind: helm\n    url: https://x.io\n    ttl: 5m\n").unwrap();
    let out = Command::new(bin)
        .args(["check-config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ttl") && err.contains('6'), "{err}");
}
