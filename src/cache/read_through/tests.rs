use super::*;
use crate::cache::{BlobStore, DiskRefs, DiskStore, MemoryStore};
use futures::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};

async fn cache(dir: &std::path::Path) -> Arc<Cache> {
    let disk = DiskStore::open(dir, 1 << 30).await.unwrap();
    let blobs = BlobCache::new(MemoryStore::new(16 << 20), Arc::new(disk));
    let refs: Arc<dyn RefStore> = Arc::new(DiskRefs::open(dir).unwrap());
    let settings = Settings {
        negative_ttl: Duration::from_secs(1),
        refresh_backoff: Duration::from_secs(10),
        derived_budget: 1 << 20,
    };
    Arc::new(Cache::new(blobs, refs, settings))
}

fn name() -> RefName {
    RefName::new(["tag", "up", "a/b", "v1"])
}

/// A fetch that counts its runs and answers what `answer` says for that run.
fn counting(
    runs: &Arc<AtomicUsize>,
    answer: impl Fn(usize, Option<Bytes>) -> Result<Bytes> + Send + Sync + 'static,
) -> impl FnOnce(Option<Bytes>) -> futures::future::BoxFuture<'static, Result<Bytes>> {
    let runs = runs.clone();
    move |known| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let n = runs.fetch_add(1, Ordering::SeqCst);
            answer(n, known)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_value_is_fetched_once_for_all_callers_and_stays_fresh_for_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path()).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let fresh = Freshness::for_(Duration::from_secs(60), "tag");
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let (c, runs) = (c.clone(), runs.clone());
            tokio::spawn(async move {
                c.value(
                    &name(),
                    fresh,
                    counting(&runs, |_, _| Ok(Bytes::from("d1"))),
                )
                .await
            })
        })
        .collect();
    for h in calls {
        let s = h.await.unwrap().unwrap();
        assert_eq!((s.value.as_ref(), s.stale), (&b"d1"[..], false));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "single flight");
    tokio::time::advance(Duration::from_secs(59)).await;
    c.value(&name(), fresh, counting(&runs, |_, _| Ok(Bytes::from("x"))))
        .await
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "fresh for the ttl");
    tokio::time::advance(Duration::from_secs(2)).await;
    let s = c
        .value(
            &name(),
            fresh,
            counting(&runs, |_, known| {
                assert_eq!(known.as_deref(), Some(&b"d1"[..]), "revalidates against it");
                Ok(Bytes::from("d2"))
            }),
        )
        .await
        .unwrap();
    assert_eq!(s.value.as_ref(), b"d2");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failing_upstream_gets_the_last_known_value_marked_stale_then_a_rest() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path()).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let fresh = Freshness::for_(Duration::from_secs(1), "tag");
    c.value(
        &name(),
        fresh,
        counting(&runs, |_, _| Ok(Bytes::from("d1"))),
    )
    .await
    .unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    let down = |_, _| Err(Error::upstream_unavailable("down"));
    // a leader and its followers all learn the answer is stale
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let (c, runs) = (c.clone(), runs.clone());
            tokio::spawn(async move { c.value(&name(), fresh, counting(&runs, down)).await })
        })
        .collect();
    for h in calls {
        let s = h.await.unwrap().unwrap();
        assert_eq!((s.value.as_ref(), s.stale), (&b"d1"[..], true));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // the upstream is left alone for refresh_backoff
    tokio::time::advance(Duration::from_secs(9)).await;
    let s = c
        .value(&name(), fresh, counting(&runs, down))
        .await
        .unwrap();
    assert!(s.stale);
    assert_eq!(runs.load(Ordering::SeqCst), 2, "no fetch while backing off");
    tokio::time::advance(Duration::from_secs(2)).await;
    let s = c
        .value(
            &name(),
            fresh,
            counting(&runs, |_, _| Ok(Bytes::from("d2"))),
        )
        .await
        .unwrap();
    assert_eq!((s.value.as_ref(), s.stale), (&b"d2"[..], false));
    // "no such thing" is an answer, not a failure: never replaced by the stale copy
    tokio::time::advance(Duration::from_secs(2)).await;
    let e = c
        .value(
            &name(),
            fresh,
            counting(&runs, |_, _| {
                Err(Error::new(Kind::ManifestUnknown, "tag deleted upstream"))
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), Kind::ManifestUnknown);
}

#[tokio::test(start_paused = true)]
async fn a_failure_with_nothing_known_is_remembered_for_the_negative_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path()).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let fresh = Freshness::for_(Duration::from_secs(60), "tag").remembering_failures();
    for _ in 0..3 {
        let e = c
            .value(
                &name(),
                fresh,
                counting(&runs, |_, _| Err(Error::upstream_unavailable("down"))),
            )
            .await
            .unwrap_err();
        assert_eq!(e.message(), "down");
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "answered from the negative cache"
    );
    tokio::time::advance(Duration::from_millis(1100)).await;
    c.value(&name(), fresh, counting(&runs, |_, _| Ok(Bytes::from("d"))))
        .await
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_immutable_value_is_fetched_once_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let once = Freshness::immutable("manifest");
    {
        let c = cache(dir.path()).await;
        c.value(&name(), once, counting(&runs, |_, _| Ok(Bytes::from("m"))))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await; // the ref is written behind
    }
    let c = cache(dir.path()).await;
    let s = c
        .value(
            &name(),
            once,
            counting(&runs, |_, _| Ok(Bytes::from("other"))),
        )
        .await
        .unwrap();
    assert_eq!(s.value.as_ref(), b"m");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_blob_is_fetched_once_verified_stored_and_linked() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path()).await;
    let good = Bytes::from_static(b"chart bytes");
    let key = BlobKey::new("up", "demo", &Digest::of(&good));
    let runs = Arc::new(AtomicUsize::new(0));
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let (c, key, runs, good) = (c.clone(), key.clone(), runs.clone(), good.clone());
            tokio::spawn(async move {
                c.blob_bytes(&key, move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Ok(good)
                })
                .await
            })
        })
        .collect();
    for h in calls {
        assert_eq!(h.await.unwrap().unwrap(), good);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(c.links().has("up", "demo", &key.digest).await);
    assert!(!c.links().has("up", "other", &key.digest).await);
    // wrong bytes under a digest: refused and nothing stored
    let other = BlobKey::new("up", "demo", &Digest::of(b"expected"));
    let e = c
        .blob_bytes(&other, || async { Ok(Bytes::from_static(b"wrong")) })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), Kind::UpstreamInvalid);
    assert!(!c.has_blob(&other.digest).await.unwrap());
    let again = c
        .blob_bytes(&other, || async { Ok(Bytes::from_static(b"expected")) })
        .await;
    assert!(again.is_ok(), "whole blobs are asked for again at once");
}

/// A fetched whole blob and manifest are answered from memory at once and made durable behind
/// the answer: after `flush` the store holds both, with the link and the media type, so a new
/// process on the same directory serves them without fetching.
#[tokio::test]
async fn whole_blobs_and_manifests_are_stored_behind_the_answer_and_flush_waits() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path()).await;
    let blob = Bytes::from_static(b"chart bytes");
    let key = BlobKey::new("up", "demo", &Digest::of(&blob));
    let got = c.blob_bytes(&key, {
        let blob = blob.clone();
        move || async move { Ok(blob) }
    });
    assert_eq!(got.await.unwrap(), blob);
    let manifest = Bytes::from_static(br#"{"schemaVersion":2,"layers":[]}"#);
    let mkey = BlobKey::new("up", "demo", &Digest::of(&manifest));
    let mt = "application/vnd.oci.image.manifest.v1+json";
    let m = c.manifest(&mkey, {
        let manifest = manifest.clone();
        move || async move { Ok((manifest, mt.to_string())) }
    });
    assert_eq!(m.await.unwrap(), (manifest.clone(), mt.to_string()));
    // from memory at once: asked again, nothing is fetched
    let again = c.blob_bytes(&key, || async { Err(Error::upstream_unavailable("down")) });
    assert_eq!(again.await.unwrap(), blob);
    c.flush().await;
    assert!(c.has_blob(&key.digest).await.unwrap());
    assert!(c.has_blob(&mkey.digest).await.unwrap());
    // a new process on the same directory: links, bytes and media type all there
    let later = cache(dir.path()).await;
    assert!(later.links().has("up", "demo", &key.digest).await);
    assert!(later.links().has("up", "demo", &mkey.digest).await);
    let down = || async { Err(Error::upstream_unavailable("down")) };
    assert_eq!(later.blob_bytes(&key, down).await.unwrap(), blob);
    assert_eq!(
        later.cached_manifest(&mkey.digest).await.unwrap(),
        Some((manifest, mt.to_string()))
    );
}

/// A shared store where another replica stored a blob while this one was looking:
/// hidden from the first look, `Present` to the claim.
struct StoredMeanwhile {
    inner: DiskStore,
    hidden: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl BlobStore for StoredMeanwhile {
    async fn stat(&self, d: &Digest) -> Result<Option<u64>> {
        if self.hidden.load(Ordering::SeqCst) {
            return Ok(None);
        }
        self.inner.stat(d).await
    }
    async fn get(&self, d: &Digest) -> Result<Option<Bytes>> {
        if self.hidden.load(Ordering::SeqCst) {
            return Ok(None);
        }
        self.inner.get(d).await
    }
    async fn put(&self, d: &Digest, b: Bytes) -> Result<()> {
        self.inner.put(d, b).await
    }
    async fn read(&self, d: &Digest) -> Result<Option<BlobData>> {
        if self.hidden.load(Ordering::SeqCst) {
            return Ok(None);
        }
        self.inner.read(d).await
    }
    async fn read_range(&self, d: &Digest, s: u64, e: u64) -> Result<Option<Bytes>> {
        self.inner.read_range(d, s, e).await
    }
    async fn begin(&self, d: &Digest) -> Result<Box<dyn BlobWrite>> {
        self.inner.begin(d).await
    }
    async fn delete(&self, d: &Digest) -> Result<()> {
        self.inner.delete(d).await
    }
    async fn list(&self) -> Result<Vec<(Digest, u64)>> {
        self.inner.list().await
    }
    async fn put_file(&self, d: &Digest, p: &std::path::Path) -> Result<()> {
        self.inner.put_file(d, p).await
    }
    fn usage(&self) -> (u64, u64) {
        self.inner.usage()
    }
    async fn claim(&self, _d: &Digest) -> Claim {
        self.hidden.store(false, Ordering::SeqCst);
        Claim::Present
    }
}

/// What another replica fetched for one repository is not served to another repository
/// that asked while it was being stored: that repository's upstream decides.
#[tokio::test]
async fn a_blob_another_replica_stored_for_another_repository_is_not_named_here() {
    let dir = tempfile::tempdir().unwrap();
    let secret = Bytes::from_static(b"protected layer");
    let d = Digest::of(&secret);
    let inner = DiskStore::open(dir.path(), 1 << 30).await.unwrap();
    inner.put(&d, secret.clone()).await.unwrap();
    let store = Arc::new(StoredMeanwhile {
        inner,
        hidden: std::sync::atomic::AtomicBool::new(true),
    });
    let blobs = BlobCache::new(MemoryStore::new(16 << 20), store.clone());
    let refs: Arc<dyn RefStore> = Arc::new(DiskRefs::open(dir.path()).unwrap());
    let settings = Settings {
        negative_ttl: Duration::from_secs(1),
        refresh_backoff: Duration::from_secs(10),
        derived_budget: 1 << 20,
    };
    let c = Arc::new(Cache::new(blobs, refs, settings));
    let key = BlobKey::new("public", "other", &d);
    let e = c
        .blob_bytes(&key, || async {
            Err(Error::new(Kind::BlobUnknown, "not in this repository"))
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), Kind::BlobUnknown, "the upstream decided");
    assert!(!c.links().has("public", "other", &d).await);
    // linked (the upstream served it here), the stored copy is what it gets
    c.links().add_durable("public", "mine", &d).await;
    store.hidden.store(true, Ordering::SeqCst);
    let key = BlobKey::new("public", "mine", &d);
    let got = c
        .blob_bytes(&key, || async { Err(Error::upstream_unavailable("down")) })
        .await
        .unwrap();
    assert_eq!(got, secret);
}

#[tokio::test]
async fn a_streamed_blob_is_shared_and_ranges_read_the_same_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path()).await;
    let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let key = BlobKey::new("up", "img", &Digest::of(&data));
    let runs = Arc::new(AtomicUsize::new(0));
    let body = Arc::new(data.clone());
    let fetch = {
        let (runs, body) = (runs.clone(), body.clone());
        move || {
            let (runs, body) = (runs.clone(), body.clone());
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let chunks: Vec<Result<Bytes>> = body
                    .chunks(10_000)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                let stream = futures::stream::iter(chunks)
                    .then(|c| async move {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        c
                    })
                    .boxed();
                Ok((body.len() as u64, stream as BodyStream))
            }
        }
    };
    async fn drain(mut rx: mpsc::Receiver<Result<Bytes>>) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(c) = rx.recv().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let (c, key, fetch) = (c.clone(), key.clone(), fetch.clone());
            tokio::spawn(async move {
                let range = (i % 2 == 1).then_some(ByteRange::FromTo(300_000, 300_099));
                match c.stream_blob(&key, range, u64::MAX, fetch).await.unwrap() {
                    Streamed::Stream(_, rx) => (false, drain(rx).await),
                    Streamed::Partial { start, end, rx, .. } => {
                        assert_eq!((start, end), (300_000, 300_100));
                        (true, drain(rx).await)
                    }
                    Streamed::Data(_) => panic!("cold: nothing cached yet"),
                }
            })
        })
        .collect();
    for h in calls {
        let (partial, got) = h.await.unwrap();
        if partial {
            assert_eq!(got, &data[300_000..300_100]);
        } else {
            assert_eq!(got, data);
        }
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "one fetch for every request"
    );
    assert!(c.links().has("up", "img", &key.digest).await);
    // then from the store
    let mut cached = false;
    for _ in 0..50 {
        if let Streamed::Data(_) = c
            .stream_blob(&key, None, u64::MAX, fetch.clone())
            .await
            .unwrap()
        {
            cached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cached);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn derived_values_are_built_once_expire_and_stay_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path()).await;
    let builds = Arc::new(AtomicUsize::new(0));
    let build = |n: usize| {
        let builds = builds.clone();
        move || async move {
            builds.fetch_add(1, Ordering::SeqCst);
            Ok(Arc::new(vec![0u8; n]))
        }
    };
    let weigh: fn(&Vec<u8>) -> u64 = |v| v.len() as u64;
    let ttl = Some(Duration::from_secs(60));
    let a = c
        .derived("view\0a".into(), ttl, weigh, build(1000))
        .await
        .unwrap();
    let b = c
        .derived("view\0a".into(), ttl, weigh, build(1000))
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(builds.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(61)).await;
    c.derived("view\0a".into(), ttl, weigh, build(1000))
        .await
        .unwrap();
    assert_eq!(builds.load(Ordering::SeqCst), 2, "rebuilt after its ttl");
    // two values of 600 KiB in a 1 MiB budget: the older leaves memory
    c.derived("index\0x".into(), None, weigh, build(600 << 10))
        .await
        .unwrap();
    c.derived("index\0y".into(), None, weigh, build(600 << 10))
        .await
        .unwrap();
    assert!(c.derived_bytes() <= 1 << 20);
    assert!(c.derived_any_age::<Vec<u8>>("index\0x").is_none());
    assert!(c.derived_any_age::<Vec<u8>>("index\0y").is_some());
}
