//! Index parsing (YAML and JSON) and the mirror rewrite: never a panic, and whatever parses
//! rewrites to an index that parses again.
#![no_main]
use chartbridge::convert::index::{parse_index, rewrite_index, IndexLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(idx) = parse_index(data, IndexLimits::default()) {
        let out = rewrite_index(&idx);
        assert!(parse_index(&out, IndexLimits::default()).is_ok());
    }
});
