//! A disk that fills up, for real: the binary's cache on a 1 MiB tmpfs (a mount namespace of
//! its own, see `chartbridge_on_tmpfs`) in front of a real registry. Blobs stream through
//! uncached, correct and complete; the log and a metric say so; nothing partial is left.

use crate::support::*;

#[test]
fn a_full_disk_streams_through_uncached_and_says_so() {
    let reg = registry();
    let layouts = tempfile::tempdir().unwrap();
    let layout = layouts.path().join("l");
    make_image_layout(&layout, "v1", 3 << 20, 11);
    push_layout(&layout, "v1", &reg, "test/full");
    let mut layers: Vec<(String, Vec<u8>)> = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .filter(|(_, b)| b.len() > 2 << 20)
        .collect();
    layers.sort();
    assert_eq!(layers.len(), 2, "one layer per architecture");

    let bridge = chartbridge_on_tmpfs(&oci_upstream("reg", &reg.url(), ""), "1m");
    let blob_url = |hex: &str| format!("{}/v2/reg/test/full/blobs/sha256:{hex}", bridge.url());

    // concurrent cold requests for a 3 MB layer on a 1 MiB disk, then the same again
    let (hex, bytes) = &layers[0];
    for round in 0..2 {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let url = blob_url(hex);
                std::thread::spawn(move || {
                    let r = get(&url);
                    (r.status().as_u16(), r.bytes().unwrap().to_vec())
                })
            })
            .collect();
        for h in handles {
            let (status, body) = h.join().unwrap();
            assert_eq!(status, 200, "round {round}");
            assert!(body == *bytes, "round {round}: complete and correct bytes");
        }
    }

    // a whole multi-arch image pulls through with every digest checked by skopeo
    let out = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{}/reg/test/full:v1", bridge.host()),
        &format!("oci:{}:v1", out.path().display()),
    ])
    .expect("pull through a full disk");
    for (hex, bytes) in &layers {
        let got = std::fs::read(out.path().join("blobs/sha256").join(hex)).unwrap();
        assert!(got == *bytes, "layer {hex} pulled intact");
    }

    // it says so, and leaves nothing behind
    let metrics = get(&format!("{}/metrics", bridge.url())).text().unwrap();
    assert!(
        metric(&metrics, "chartbridge_cache_write_failures_total", &[]) >= 1.0,
        "the write-failure metric counts"
    );
    let log = std::fs::read_to_string(bridge.dir.path().join("server.log")).unwrap();
    assert!(log.contains("cache write failed"), "the log says so: {log}");
    let cache = bridge.cache_view();
    for (hex, _) in &layers {
        assert!(!cache.join("sha256").join(hex).exists(), "{hex} not cached");
    }
    let left: Vec<_> = std::fs::read_dir(cache.join("tmp")).unwrap().collect();
    assert!(left.is_empty(), "no temp files left: {left:?}");
    assert_eq!(get(&format!("{}/healthz", bridge.url())).status(), 200);
}
