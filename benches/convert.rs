//! Micro-benchmarks of the pure conversions on the request path: index parse and rewrite (on a
//! generated Bitnami-shaped index), manifest synthesis, route parsing and tag resolution.
//! Run with `cargo bench --bench convert`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};

use chartbridge::convert::chart::ChartMetadata;
use chartbridge::convert::index::{parse_index, rewrite_index, IndexLimits};
use chartbridge::convert::manifest::{synthesize, BlobRef};
use chartbridge::convert::version::{resolve_tag, tag_list};
use chartbridge::ids::Digest;

/// An index shaped like Bitnami's: `charts` charts with `versions` versions each.
fn generated_index(charts: usize, versions: usize) -> String {
    let mut y = String::from("apiVersion: v1\nentries:\n");
    for c in 0..charts {
        y.push_str(&format!("  chart{c}:\n"));
        for v in 0..versions {
            let ver = format!("{}.{}.{}", v / 100, (v / 10) % 10, v % 10);
            y.push_str(&format!(
                "  - annotations:\n      category: Database\n      licenses: Apache-2.0\n    \
                 apiVersion: v2\n    appVersion: 1.2.{v}\n    created: \"2024-07-22T11:25:35.424530498Z\"\n    \
                 dependencies:\n    - name: common\n      repository: oci://registry-1.docker.io/bitnamicharts\n      \
                 tags:\n      - bitnami-common\n      version: 2.x.x\n    \
                 description: Chart number {c} of a generated index, version {ver}.\n    \
                 digest: {}\n    home: https://bitnami.com\n    icon: https://bitnami.com/assets/stacks/x/img/x-stack-220x234.png\n    \
                 keywords:\n    - database\n    - sql\n    maintainers:\n    - name: Broadcom, Inc. All Rights Reserved.\n      url: https://github.com/bitnami/charts\n    \
                 name: chart{c}\n    sources:\n    - https://github.com/bitnami/charts/tree/main/bitnami/chart{c}\n    \
                 urls:\n    - https://charts.bitnami.com/bitnami/chart{c}-{ver}.tgz\n    version: {ver}\n",
                Digest::of(format!("{c}-{v}").as_bytes()).hex()
            ));
        }
    }
    y.push_str("generated: \"2024-07-22T11:25:35.405163826Z\"\n");
    y
}

fn benches(c: &mut Criterion) {
    let small = generated_index(20, 50); // 1,000 versions
    let idx = parse_index(small.as_bytes(), IndexLimits::default()).unwrap();
    c.bench_function("index_parse_1k_versions", |b| {
        b.iter(|| parse_index(black_box(small.as_bytes()), IndexLimits::default()).unwrap())
    });
    c.bench_function("index_rewrite_1k_versions", |b| {
        b.iter(|| rewrite_index(black_box(&idx)))
    });

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
        .versions("chart0")
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
