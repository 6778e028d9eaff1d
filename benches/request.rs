//! Micro-benchmarks of the steps every warm request pays, as the load run's profile found them
//! (`benches/RESULTS.md`): the whole request path without sockets (`App::handle` for a warm
//! blob, a warm manifest by tag of a registry upstream, and a request that fails at the
//! route), the response head as pingora gets it, the
//! per-repository link check, and digest text. A regression here shows in `cargo bench` before
//! it shows in a load run. Run with `cargo bench --bench request`.

use std::borrow::Cow;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};

use chartbridge::app::App;
use chartbridge::config::Config;
use chartbridge::http::Request;
use chartbridge::ids::Digest;

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The upstream is never asked: the blob is stored and linked before the first request.
    let cfg = Config::from_yaml(
        &format!(
            "listen: 127.0.0.1:0\ncache:\n  dir: {}\nupstreams:\n  - name: reg\n    kind: oci\n    url: http://127.0.0.1:9\n",
            dir.path().display()
        ),
        "bench",
    )
    .unwrap();
    let blob = Bytes::from(vec![7u8; 5 * 1024]);
    let d = Digest::of(&blob);
    let app = rt.block_on(async {
        let app = App::new(cfg).await.unwrap();
        app.cache().put_blob(&d, blob.clone()).await.unwrap();
        app.cache().links().add("reg", "bench/blobs", &d).await;
        app
    });
    let get = |path: String| Request {
        method: "GET".into(),
        path,
        ..Request::default()
    };
    let warm = get(format!("/v2/reg/bench/blobs/blobs/{d}"));
    let resp = rt.block_on(app.handle(&warm));
    assert_eq!(resp.status, 200, "the warm blob is served from the cache");

    c.bench_function("handle_warm_blob_5k", |b| {
        b.iter(|| rt.block_on(app.handle(black_box(&warm))))
    });
    // A warm manifest by tag: the tag resolved within its `tag_ttl` and the manifest in memory,
    // seeded as a GET by tag leaves them.
    let manifest = Bytes::from_static(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#,
    );
    let md = Digest::of(&manifest);
    rt.block_on(async {
        let cache = app.cache();
        let mt = "application/vnd.oci.image.manifest.v1+json";
        cache.put_manifest(&md, manifest.clone(), mt).await.unwrap();
        let tag = chartbridge::cache::RefName::new(["tag", "reg", "bench/blobs", "v1"]);
        cache.put_value(&tag, Bytes::from(md.text())).await;
    });
    let by_tag = get("/v2/reg/bench/blobs/manifests/v1".into());
    let resp = rt.block_on(app.handle(&by_tag));
    assert_eq!(
        resp.status, 200,
        "the warm manifest is served from the cache"
    );
    assert_eq!(
        resp.get_header("Docker-Content-Digest"),
        Some(md.text().as_str())
    );
    c.bench_function("handle_warm_manifest_by_tag", |b| {
        b.iter(|| rt.block_on(app.handle(black_box(&by_tag))))
    });
    let bad = get("/v2/reg/bench/blobs/blobs/sha256:nothex".into());
    c.bench_function("handle_invalid_digest", |b| {
        b.iter(|| rt.block_on(app.handle(black_box(&bad))))
    });
    c.bench_function("response_head_8_headers", |b| {
        b.iter(|| {
            let headers: Vec<(&'static str, Cow<'static, str>)> = vec![
                ("Accept-Ranges", "bytes".into()),
                ("Docker-Content-Digest", d.text().into()),
                ("ETag", d.etag().into()),
                ("Content-Type", "application/octet-stream".into()),
                ("Content-Length", "5120".into()),
                (
                    "Cache-Control",
                    "public, max-age=31536000, immutable".into(),
                ),
                ("X-Request-Id", "0123456789abcdef01234567".into()),
                ("Docker-Distribution-API-Version", "registry/2.0".into()),
            ];
            chartbridge::server::response_head(200, black_box(headers)).unwrap()
        })
    });
    c.bench_function("link_check_known", |b| {
        b.iter(|| rt.block_on(app.cache().links().has("reg", "bench/blobs", black_box(&d))))
    });
    c.bench_function("digest_etag", |b| b.iter(|| black_box(&d).etag()));
}

criterion_group!(request, benches);
criterion_main!(request);
