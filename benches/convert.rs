//! Micro-benchmarks of the pure conversions on the request path: index parse and rewrite (on the
//! Bitnami-shaped 15,000-version index `scripts/gen-index.py` writes), manifest synthesis, route
//! parsing and tag resolution.
//! Run with `cargo bench --bench convert`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};

use chartbridge::convert::chart::ChartMetadata;
use chartbridge::convert::index::{parse_index, rewrite_index, IndexLimits};
use chartbridge::convert::manifest::{synthesize, BlobRef};
use chartbridge::convert::version::{resolve_tag, tag_list};
use chartbridge::ids::Digest;

/// The Bitnami-shaped 15,000-version index from `scripts/gen-index.py` (generated once into
/// `target/`).
fn bitnami_shaped_index() -> Vec<u8> {
    let root = env!("CARGO_MANIFEST_DIR");
    let path = format!("{root}/target/bench-index-15k.yaml");
    if !std::path::Path::new(&path).exists() {
        let ok = std::process::Command::new("python3")
            .args([&format!("{root}/scripts/gen-index.py"), "150", "100", &path])
            .status()
            .expect("python3 runs scripts/gen-index.py")
            .success();
        assert!(ok, "scripts/gen-index.py failed");
    }
    std::fs::read(&path).unwrap()
}

fn benches(c: &mut Criterion) {
    let big = bitnami_shaped_index();
    let idx = parse_index(&big, IndexLimits::default()).unwrap();
    let mut slow = c.benchmark_group("index_15k_versions");
    slow.sample_size(10);
    slow.bench_function("parse", |b| {
        b.iter(|| parse_index(black_box(&big), IndexLimits::default()).unwrap())
    });
    slow.bench_function("rewrite", |b| b.iter(|| rewrite_index(black_box(&idx))));
    slow.finish();

    let meta = ChartMetadata {
        name: "demo".into(),
        version: "1.2.3".into(),
        api_version: "v2".into(),
        description: "A chart".into(),
        ..Default::default()
    };
    let layer = BlobRef {
        digest: Digest::of(b"x"),
        size: 4918,
    };
    c.bench_function("manifest_synthesis", |b| {
        b.iter(|| synthesize(black_box(&meta), &layer, None, Some("2024-07-22T11:25:35Z")))
    });

    c.bench_function("route_parse_manifest", |b| {
        b.iter(|| {
            chartbridge::route::parse(
                "GET",
                black_box("/v2/metallb/metallb/manifests/0.14.8"),
                None,
            )
        })
    });

    let versions: Vec<String> = idx
        .versions("chart000")
        .unwrap()
        .iter()
        .map(|v| v.version.clone())
        .collect();
    let vs: Vec<&str> = versions.iter().map(String::as_str).collect();
    c.bench_function("tags_resolve_latest_50", |b| {
        b.iter(|| resolve_tag(black_box(&vs), "latest"))
    });
    c.bench_function("tags_list_50", |b| b.iter(|| tag_list(black_box(&vs))));
}

criterion_group!(convert, benches);
criterion_main!(convert);
