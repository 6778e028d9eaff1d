//! Route parsing: any method, path and query give a route or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (path, query) = text.split_once('?').unwrap_or((&text, ""));
    for method in ["GET", "HEAD", "POST"] {
        let _ = chartbridge::route::parse(method, path, Some(query));
        let _ = chartbridge::route::parse(method, &format!("/v2/{path}"), None);
    }
});
