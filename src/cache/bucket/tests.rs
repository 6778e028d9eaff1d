use super::*;
use crate::cache::{BlobData, BlobStore, DiskStore};

/// A real S3 server (s3s-fs, installed by scripts/test-deps.sh) on a free port, killed
/// when dropped, with the bucket `chartbridge` created.
pub struct S3 {
    child: std::process::Child,
    pub port: u16,
    /// Kept so the served files live as long as the server.
    _dir: tempfile::TempDir,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn s3() -> S3 {
    let bin = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/test-tools/s3s/bin/s3s-fs"
    );
    assert!(
        std::path::Path::new(bin).exists(),
        "{bin} is missing: run scripts/test.sh, which installs it"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("chartbridge")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", "AK", "--secret-key", "SK"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "s3s-fs did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    S3 {
        child,
        port,
        _dir: dir,
    }
}

pub fn config(port: u16, prefix: &str) -> StoreConfig {
    StoreConfig {
        bucket: "chartbridge".into(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("us-east-1".into()),
        prefix: prefix.into(),
        keys: Some(("AK".into(), "SK".into())),
        lease_ttl: Duration::from_secs(2),
        timeout: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn bucket_store_and_refs_conform() {
    let server = s3();
    let bucket = Bucket::connect(&config(server.port, "t1/")).unwrap();
    let local = tempfile::tempdir().unwrap();
    let disk = Arc::new(DiskStore::open(local.path(), 1 << 30).await.unwrap());
    let store = BucketStore::new(bucket.clone(), disk);
    crate::cache::conformance(&store).await;
    crate::cache::refs::check(&BucketRefs::new(bucket)).await;
}

#[tokio::test]
async fn a_second_local_tier_reads_what_the_first_put_in_the_bucket() {
    let server = s3();
    let bucket = Bucket::connect(&config(server.port, "")).unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store_a = BucketStore::new(
        bucket.clone(),
        Arc::new(DiskStore::open(a.path(), 1 << 30).await.unwrap()),
    );
    let store_b = BucketStore::new(
        bucket.clone(),
        Arc::new(DiskStore::open(b.path(), 1 << 30).await.unwrap()),
    );
    // a big blob, streamed: up in parts, visible only once whole
    let big = Bytes::from(
        (0..(PART as u32 * 2 + 1000))
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let d = Digest::of(&big);
    let mut w = store_a.begin(&d).await.unwrap();
    for c in big.chunks(1 << 20) {
        w.write(c).await.unwrap();
    }
    assert_eq!(
        store_b.stat(&d).await.unwrap(),
        None,
        "invisible until committed"
    );
    w.commit().await.unwrap();
    assert_eq!(store_b.stat(&d).await.unwrap(), Some(big.len() as u64));
    assert_eq!(
        store_b.read_range(&d, 10, 20).await.unwrap().unwrap(),
        big.slice(10..20),
        "a ranged GET"
    );
    match store_b.read(&d).await.unwrap().unwrap() {
        BlobData::File(_, n) => assert_eq!(n, big.len() as u64),
        BlobData::Bytes(_) | BlobData::Mapped(_) => {
            panic!("a big blob is served from the local tier's file")
        }
    }
    assert!(
        b.path().join("sha256").join(d.hex()).exists(),
        "now in B's local tier"
    );
    // a tampered object in the bucket is refused and removed, never served
    let small = Bytes::from_static(b"small blob");
    let sd = Digest::of(&small);
    bucket
        .put(
            &bucket.blob_key(&sd).unwrap(),
            Bytes::from_static(b"other bytes"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    assert_eq!(store_b.get(&sd).await.unwrap(), None);
    assert_eq!(
        bucket.head(&bucket.blob_key(&sd).unwrap()).await.unwrap(),
        None
    );
    // leases: one replica gets the claim, the other waits and sees the blob appear
    let cold = Digest::of(b"cold");
    let first = store_a.claim(&cold).await;
    assert!(matches!(first, Claim::Mine(Some(_))));
    let waiter = {
        let store_b = BucketStore::new(
            bucket.clone(),
            Arc::new(DiskStore::open(b.path(), 1 << 30).await.unwrap()),
        );
        tokio::spawn(async move { matches!(store_b.claim(&cold).await, Claim::Present) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    store_a
        .put(&Digest::of(b"cold"), Bytes::from_static(b"cold"))
        .await
        .unwrap();
    drop(first);
    assert!(waiter.await.unwrap(), "the waiter reads it from the bucket");
    // a claim nobody renews (its holder died) is taken over after lease_ttl
    let orphan = Digest::of(b"orphan");
    let key = bucket.key(&format!("leases/{}", orphan.hex())).unwrap();
    let stale = serde_json::json!({"holder": "dead", "expires_ms": now_ms() + 500});
    bucket
        .put(&key, Bytes::from(stale.to_string()), PutMode::Create)
        .await
        .unwrap();
    let t = std::time::Instant::now();
    assert!(matches!(store_b.claim(&orphan).await, Claim::Mine(Some(_))));
    assert!(t.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn an_unreachable_bucket_is_a_miss_and_the_local_tier_still_serves() {
    let server = s3();
    let port = server.port;
    let bucket = Bucket::connect(&config(port, "")).unwrap();
    let local = tempfile::tempdir().unwrap();
    let store = BucketStore::new(
        bucket.clone(),
        Arc::new(DiskStore::open(local.path(), 1 << 30).await.unwrap()),
    );
    let kept = Bytes::from_static(b"kept locally");
    store.put(&Digest::of(&kept), kept.clone()).await.unwrap();
    drop(server);
    assert_eq!(store.get(&Digest::of(&kept)).await.unwrap(), Some(kept));
    let other = Digest::of(b"never stored");
    assert_eq!(store.stat(&other).await.unwrap(), None);
    assert_eq!(store.get(&other).await.unwrap(), None);
    assert!(bucket.degraded.load(Ordering::Acquire));
    // a put keeps the local copy and says so only in the log
    let late = Bytes::from_static(b"late");
    store.put(&Digest::of(&late), late.clone()).await.unwrap();
    assert_eq!(store.get(&Digest::of(&late)).await.unwrap(), Some(late));
    // no coordination possible: fetch without it
    assert!(matches!(store.claim(&other).await, Claim::Mine(None)));
}
