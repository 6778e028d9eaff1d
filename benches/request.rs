//! Micro-benchmarks of the steps every warm request pays, as the load run's profile found them
//! (`benches/RESULTS.md`): the whole request path without sockets (`App::handle` for a warm
//! blob, a warm manifest by tag of a registry upstream and of a helm upstream, and a request
//! that fails at the route), a plain HTTP/1 request head as `server::plain` reads it, the
//! response head as pingora gets it, the per-repository link check, digest text, and the
//! access-log line (by hand and through tracing). A regression here shows in `cargo bench`
//! before it shows in a load run. Run with `cargo bench --bench request`.
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
    // The registry upstream is never asked: the blob is stored and linked before the first
    // request. The helm upstream answers the first manifest request (index and archive),
    // then is not asked again within its `index_ttl`.
    let helm_port = serve_chart_repository();
    let cfg = Config::from_yaml(
        &format!(
            "listen: 127.0.0.1:0\ncache:\n  dir: {}\nupstreams:\n  - name: reg\n    kind: oci\n    url: http://127.0.0.1:9\n  - name: h\n    kind: helm\n    url: http://127.0.0.1:{helm_port}\n    index_ttl: 1h\n",
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
    let helm_by_tag = get("/v2/h/demo/manifests/0.1.0".into());
    let resp = rt.block_on(app.handle(&helm_by_tag));
    assert_eq!(resp.status, 200, "the helm upstream's chart, as OCI");
    c.bench_function("handle_warm_helm_manifest_by_tag", |b| {
        b.iter(|| rt.block_on(app.handle(black_box(&helm_by_tag))))
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
    // A plain HTTP/1 head as `server::plain` reads it (parse, and the `Request` the views see).
    let raw = format!(
        "GET /v2/reg/bench/blobs/blobs/{d} HTTP/1.1\r\nHost: 127.0.0.1:5000\r\n\
         User-Agent: containerd/2.0.2\r\nAccept: application/vnd.oci.image.layer.v1.tar+gzip, */*\r\n\
         Accept-Encoding: gzip\r\nConnection: keep-alive\r\n\r\n"
    );
    c.bench_function("plain_request_head", |b| {
        b.iter(|| chartbridge::server::request_of(black_box(raw.as_bytes())).map(|r| r.1))
    });
    c.bench_function("link_check_known", |b| {
        b.iter(|| rt.block_on(app.cache().links().has("reg", "bench/blobs", black_box(&d))))
    });
    c.bench_function("digest_etag", |b| b.iter(|| black_box(&d).etag()));

    // The access-log line: by hand (what a text log to a file costs per request) against the
    // same event through tracing's text formatter; both write to nothing.
    let line = chartbridge::access_log::Line {
        method: "GET",
        path: "/v2/reg/bench/blobs/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        status: 200,
        request_id: "0123456789abcdef01234567",
        bytes: 5120,
        ms: 0,
        cache: "memory",
        upstream: "reg",
        error: None,
    };
    let mut render = chartbridge::access_log::Render::default();
    c.bench_function("access_log_line_by_hand", |b| {
        b.iter(|| {
            black_box(
                render
                    .render(black_box(&line), std::time::SystemTime::now())
                    .len(),
            )
        })
    });
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("error,access=info"))
        .with_ansi(false)
        .with_writer(std::io::sink)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    c.bench_function("access_log_line_through_tracing", |b| {
        b.iter(|| chartbridge::access_log::through_tracing(black_box(&line)))
    });
}

/// A chart repository with one chart, `demo` 0.1.0, on a thread of its own: a static server
/// only the first manifest request asks (a benchmark's fixture, not a test of upstreams).
fn serve_chart_repository() -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let tgz = {
        let chart = b"apiVersion: v2\nname: demo\nversion: 0.1.0\n";
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(chart.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "demo/Chart.yaml", &chart[..])
            .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    };
    let index = format!(
        "apiVersion: v1\nentries:\n  demo:\n  - apiVersion: v2\n    name: demo\n    version: 0.1.0\n    digest: {}\n    created: \"2024-01-01T00:00:00Z\"\n    urls:\n    - demo-0.1.0.tgz\ngenerated: \"2024-01-01T00:00:00Z\"\n",
        Digest::of(&tgz).hex()
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut first = String::new();
            let mut reader = BufReader::new(&conn);
            let _ = reader.read_line(&mut first);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let body: &[u8] = if first.contains("/index.yaml") {
                index.as_bytes()
            } else if first.contains("/demo-0.1.0.tgz") {
                &tgz
            } else {
                b""
            };
            let status = if body.is_empty() {
                "404 Not Found"
            } else {
                "200 OK"
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(body);
        }
    });
    port
}

criterion_group!(request, benches);
criterion_main!(request);
