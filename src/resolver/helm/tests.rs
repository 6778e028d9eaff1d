//! Freshness, revalidation, backoff and stale serving of a helm index, through the
//! resolver and the real cache, against a small in-process upstream: the one place a fake
//! is right here, since what is tested is how the resolver reacts to an upstream switched
//! between answers (200 with an ETag, 304, 503, HTML) on demand, request by request.
use super::*;
use crate::cache::{BlobCache, CacheSettings, DiskRefs, DiskStore, MemoryStore, RefStore};
use crate::config::Config;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the fake upstream answers for `/index.yaml`, and what it has seen.
#[derive(Default)]
struct Upstream {
    /// (status, ETag, body); a 200 with the request's If-None-Match equal to the ETag
    /// becomes a 304.
    answer: Mutex<(u16, String, String)>,
    requests: AtomicUsize,
    conditional: AtomicUsize,
}

async fn serve(up: Arc<Upstream>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let up = up.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_lowercase();
                up.requests.fetch_add(1, Ordering::SeqCst);
                let (status, etag, body) = up.answer.lock().unwrap().clone();
                let inm = head
                    .lines()
                    .find_map(|l| l.strip_prefix("if-none-match: "))
                    .map(str::trim);
                if inm.is_some() {
                    up.conditional.fetch_add(1, Ordering::SeqCst);
                }
                let resp = if status == 200 && inm == Some(etag.to_lowercase().as_str()) {
                    format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                } else {
                    format!(
                        "HTTP/1.1 {status} X\r\nETag: {etag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

fn index(version: &str) -> String {
    format!("apiVersion: v1\nentries:\n  demo:\n  - name: demo\n    version: {version}\n    urls: [demo-{version}.tgz]\n")
}

async fn resolver(dir: &std::path::Path, port: u16) -> Arc<HelmUpstream> {
    let yaml = format!(
        "cache: {{dir: {}}}\nupstreams:\n  - {{name: up, kind: helm, url: 'http://127.0.0.1:{port}/', index_ttl: 200ms, retries: 0}}\n",
        dir.display()
    );
    let config = Config::from_yaml(&yaml, "test").unwrap();
    let disk = DiskStore::open(dir, 1 << 30).await.unwrap();
    let refs: Arc<dyn RefStore> = Arc::new(DiskRefs::open(dir).unwrap());
    let settings = CacheSettings {
        negative_ttl: Duration::from_millis(100),
        refresh_backoff: Duration::from_millis(400),
        derived_budget: 64 << 20,
    };
    let cache = Arc::new(Cache::new(
        BlobCache::new(MemoryStore::new(1 << 20), Arc::new(disk)),
        refs,
        settings,
    ));
    let u = config.upstreams[0].clone();
    let client = Arc::new(UpstreamClient::new(u.policy.clone(), &u.url).unwrap());
    let stores = Stores::new(cache, dir.to_path_buf());
    Arc::new(HelmUpstream::new(u, client, &stores, config.limits).unwrap())
}

fn versions(s: &Served<Arc<IndexContent>>) -> Vec<String> {
    s.value
        .entries()
        .versions("demo")
        .unwrap()
        .map(|e| e.version.to_string())
        .collect()
}

#[tokio::test]
async fn the_index_is_fresh_for_its_ttl_revalidated_then_served_stale_with_a_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let up = Arc::new(Upstream::default());
    *up.answer.lock().unwrap() = (200, "\"v1\"".into(), index("1.0.0"));
    let port = serve(up.clone()).await;
    let h = resolver(dir.path(), port).await;
    let requests = || up.requests.load(Ordering::SeqCst);

    let first = h.index().await.unwrap();
    assert_eq!(
        (versions(&first), first.stale),
        (vec!["1.0.0".into()], false)
    );
    h.index().await.unwrap();
    assert_eq!(requests(), 1, "fresh for index_ttl: from memory");

    // past the ttl: revalidated with the upstream's validators, 304, same content
    tokio::time::sleep(Duration::from_millis(250)).await;
    let again = h.index().await.unwrap();
    assert!(!again.stale);
    assert!(
        Arc::ptr_eq(&first.value, &again.value),
        "the parsed index is shared"
    );
    assert_eq!((requests(), up.conditional.load(Ordering::SeqCst)), (2, 1));

    // a new index upstream replaces it
    *up.answer.lock().unwrap() = (200, "\"v2\"".into(), index("2.0.0"));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(versions(&h.index().await.unwrap()), vec!["2.0.0"]);

    // the upstream fails: the last good index, marked stale, and a rest for the upstream
    *up.answer.lock().unwrap() = (503, "\"x\"".into(), "down".into());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let before = requests();
    let stale = h.index().await.unwrap();
    assert_eq!(
        (versions(&stale), stale.stale),
        (vec!["2.0.0".into()], true)
    );
    assert_eq!(requests(), before + 1);
    assert!(h.index().await.unwrap().stale);
    assert_eq!(requests(), before + 1, "no request while backing off");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(h.index().await.unwrap().stale);
    assert_eq!(requests(), before + 2, "asked again after the backoff");

    // an index that does not parse never replaces the good one
    *up.answer.lock().unwrap() = (200, "\"html\"".into(), "<html>login</html>".into());
    tokio::time::sleep(Duration::from_millis(450)).await;
    let kept = h.index().await.unwrap();
    assert_eq!((versions(&kept), kept.stale), (vec!["2.0.0".into()], true));

    // a restart with the upstream down serves the persisted copy, marked stale
    *up.answer.lock().unwrap() = (503, "\"x\"".into(), "down".into());
    tokio::time::sleep(Duration::from_millis(200)).await; // the refs are written behind
    let restarted = resolver(dir.path(), port).await;
    let s = restarted.index().await.unwrap();
    assert_eq!((versions(&s), s.stale), (vec!["2.0.0".into()], true));
}

#[tokio::test]
async fn an_index_without_a_last_good_copy_fails_clearly_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let up = Arc::new(Upstream::default());
    *up.answer.lock().unwrap() = (503, "\"x\"".into(), "down".into());
    let port = serve(up.clone()).await;
    let h = resolver(dir.path(), port).await;
    let Err(e) = h.index().await else {
        panic!("no index can be served")
    };
    assert_eq!(e.kind(), Kind::UpstreamUnavailable);
    *up.answer.lock().unwrap() = (200, "\"v1\"".into(), index("1.0.0"));
    let ok = h.index().await.unwrap();
    assert_eq!((versions(&ok), ok.stale), (vec!["1.0.0".into()], false));
}

/// The manifest memo finds a manifest by chart and tag without building a key, counts a
/// replaced entry once, and empties itself at its bound.
#[test]
fn the_manifest_memo_finds_by_chart_and_tag_and_empties_at_its_bound() {
    let m = |n: u8| TagManifest {
        manifest: ServedManifest {
            bytes: Bytes::from(vec![n]),
            digest: Digest::of(&[n]),
            media_type: OCI_MANIFEST.into(),
        },
        synthesized_latest: false,
    };
    let tag = |s: &str| s.parse::<Tag>().unwrap();
    let mut memo = ManifestMemo::default();
    memo.insert("a", &tag("1.0.0"), m(1));
    memo.insert("b", &tag("1.0.0"), m(2));
    memo.insert("a", &tag("1.0.0"), m(3));
    assert_eq!(memo.len, 2, "a replaced entry counts once");
    let got = memo
        .get("a", &tag("1.0.0"))
        .expect("found by chart and tag");
    assert_eq!(got.manifest.bytes, Bytes::from(vec![3]));
    assert!(memo.get("a", &tag("2.0.0")).is_none());
    assert!(memo.get("c", &tag("1.0.0")).is_none());
    for i in 0..MANIFEST_MEMO {
        memo.insert("c", &tag(&format!("{i}.0.0")), m(4));
    }
    assert!(memo.len <= MANIFEST_MEMO, "{}", memo.len);
    assert!(
        memo.get("a", &tag("1.0.0")).is_none(),
        "emptied at its bound"
    );
}
