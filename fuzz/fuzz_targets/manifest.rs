//! Manifest handling: Chart.yaml fields from arbitrary YAML go through synthesis to bytes that
//! are valid JSON naming the layer they were given.
#![no_main]
use chartbridge::convert::chart::ChartMetadata;
use chartbridge::convert::manifest::{synthesize, BlobRef};
use chartbridge::ids::Digest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(meta) = serde_saphyr::from_str::<ChartMetadata>(text) else {
        return;
    };
    let layer = BlobRef {
        digest: Digest::of(data),
        size: data.len() as u64,
    };
    let art = synthesize(&meta, &layer, None, Some(text));
    let v: serde_json::Value = serde_json::from_slice(&art.manifest).expect("manifest is JSON");
    assert_eq!(v["layers"][0]["digest"], layer.digest.to_string());
});
