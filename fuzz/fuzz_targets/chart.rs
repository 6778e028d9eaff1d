//! Reading Chart.yaml out of an arbitrary "chart archive": never a panic, bounded expansion.
#![no_main]
use chartbridge::convert::chart::{config_blob, read_chart_metadata, ArchiveLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = ArchiveLimits {
        max_expanded_bytes: 8 << 20,
        max_metadata_bytes: 1 << 20,
    };
    if let Ok(meta) = read_chart_metadata(data, limits) {
        let _ = config_blob(&meta);
    }
});
