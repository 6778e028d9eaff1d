//! A real S3-compatible server: s3s-fs (installed under target/test-tools/s3s by
//! scripts/test-deps.sh), serving plain files, path-style, with signatures checked.

use std::process::{Command, Stdio};

use super::*;

/// s3s-fs on a free port with the bucket `chartbridge`, keys AK/SK.
pub fn s3_server() -> Proc {
    let bin = require(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/test-tools/s3s/bin/s3s-fs"
    ));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("chartbridge")).unwrap();
    let port = free_port();
    let child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", "AK", "--secret-key", "SK"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "s3s-fs");
    Proc { child, port, dir }
}

/// The `cache:` lines (after `dir:`) that put chartbridge's store in `s3`'s bucket.
pub fn s3_store(s3: &Proc, lease_ttl: &str) -> String {
    format!(
        "  store:\n    kind: s3\n    bucket: chartbridge\n    endpoint: http://127.0.0.1:{}\n    region: us-east-1\n    prefix: shared/\n    lease_ttl: {lease_ttl}\n    timeout: 2s\n    credentials: {{access_key_id_env: CB_TEST_S3_KEY, secret_access_key_env: CB_TEST_S3_SECRET}}\n",
        s3.port
    )
}

/// Every blob object in the bucket: (hex, size).
pub fn s3_blobs(s3: &Proc) -> Vec<(String, u64)> {
    let dir = s3.dir.path().join("chartbridge/shared/blobs/sha256");
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().unwrap().len(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
