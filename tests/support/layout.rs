//! OCI image layouts built by the tests, and skopeo, a real image client.

use std::path::Path;
use std::process::Command;

use super::*;

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

/// The first platform's first layer of a layout `make_image_layout` built, whose index is
/// `index` (the digest it returned): the layer's digest and bytes.
pub fn first_layer(dir: &Path, index: &str) -> (String, Vec<u8>) {
    all_layers(dir, index).swap_remove(0)
}

/// Every layer of every platform of the image whose index is `index`, with its bytes.
pub fn all_layers(dir: &Path, index: &str) -> Vec<(String, Vec<u8>)> {
    let blob = |d: &str| {
        std::fs::read(
            dir.join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let json = |d: &str| serde_json::from_slice::<serde_json::Value>(&blob(d)).unwrap();
    let mut out = Vec::new();
    for m in json(index)["manifests"].as_array().unwrap() {
        let platform = json(m["digest"].as_str().unwrap());
        for l in platform["layers"].as_array().unwrap() {
            let d = l["digest"].as_str().unwrap().to_string();
            let bytes = blob(&d);
            out.push((d, bytes));
        }
    }
    out
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
