use super::*;

#[tokio::test]
async fn evicts_least_recently_used_to_fit_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path(), 25).await.unwrap();
    let blobs: Vec<Bytes> = (0..3u8).map(|i| Bytes::from(vec![i; 10])).collect();
    let ds: Vec<Digest> = blobs.iter().map(|b| Digest::of(b)).collect();
    store.put(&ds[0], blobs[0].clone()).await.unwrap();
    store.put(&ds[1], blobs[1].clone()).await.unwrap();
    store.get(&ds[0]).await.unwrap(); // 0 is now more recent than 1
    store.put(&ds[2], blobs[2].clone()).await.unwrap();
    assert!(store.stat(&ds[0]).await.unwrap().is_some());
    assert!(store.stat(&ds[1]).await.unwrap().is_none());
    assert!(!dir.path().join("sha256").join(ds[1].hex()).exists());
    assert_eq!(store.used_bytes(), 20);
}

/// Once over its budget, the store evicts down to a 64th below it (so a full cache does not
/// sort its index on every blob it admits), oldest first.
#[tokio::test]
async fn a_full_store_evicts_a_64th_below_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path(), 640).await.unwrap();
    let blobs: Vec<Bytes> = (0..65u32)
        .map(|i| Bytes::from(i.to_be_bytes().repeat(3)[..10].to_vec()))
        .collect();
    let ds: Vec<Digest> = blobs.iter().map(|b| Digest::of(b)).collect();
    for (d, b) in ds.iter().zip(&blobs).take(64) {
        store.put(d, b.clone()).await.unwrap();
    }
    assert_eq!(
        store.used_bytes(),
        640,
        "exactly at the budget: nothing evicted"
    );
    store.put(&ds[64], blobs[64].clone()).await.unwrap();
    assert_eq!(store.used_bytes(), 630);
    for (i, d) in ds.iter().enumerate() {
        let held = store.stat(d).await.unwrap().is_some();
        assert_eq!(held, i >= 2, "blob {i}");
    }
}

/// A full disk (here /dev/full, which answers ENOSPC) does not fail the stream: the writer
/// keeps hashing, verification still works, and only the commit reports "not cached".
#[tokio::test]
async fn a_full_disk_degrades_to_stream_through() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path(), 1 << 30).await.unwrap();
    let data = vec![5u8; 3 << 20];
    let d = Digest::of(&data);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut w = DiskWriter {
        root: store.root.clone(),
        max_bytes: store.max_bytes,
        state: store.state.clone(),
        digest: d.clone(),
        tmp: dir.path().join("tmp").join("full.part"),
        file: Some(Arc::new(TempFile {
            file: full,
            written: AtomicU64::new(0),
        })),
        pending: Vec::new(),
        hasher: Sha256::new(),
        size: 0,
        verified: false,
        failed: None,
    };
    for chunk in data.chunks(64 << 10) {
        w.write(chunk).await.expect("writes keep succeeding");
    }
    assert!(w.failed.is_some());
    w.verify().expect("the digest still checks");
    let e = Box::new(w).commit().await.unwrap_err();
    assert!(e.message().contains("not cached"), "{e}");
    assert_eq!(store.stat(&d).await.unwrap(), None);
}

/// A disk where no temp file can be created still lets the blob stream and verify.
#[tokio::test]
async fn no_temp_file_degrades_to_stream_through() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path(), 1 << 30).await.unwrap();
    // a file where the temp directory should be: it cannot be recreated either
    std::fs::remove_dir(dir.path().join("tmp")).unwrap();
    std::fs::write(dir.path().join("tmp"), b"").unwrap();
    let d = Digest::of(b"blob");
    let mut w = store.begin(&d).await.expect("begin does not fail");
    assert!(w.partial().is_none());
    w.write(b"blob").await.unwrap();
    w.verify().unwrap();
    assert!(w
        .commit()
        .await
        .unwrap_err()
        .message()
        .contains("not cached"));
}

#[tokio::test]
async fn verify_on_read_removes_a_corrupted_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path(), 1 << 20)
        .await
        .unwrap()
        .with_verify_on_read(true);
    let b = Bytes::from_static(b"the real bytes");
    let d = Digest::of(&b);
    store.put(&d, b.clone()).await.unwrap();
    assert_eq!(store.get(&d).await.unwrap(), Some(b));
    std::fs::write(dir.path().join("sha256").join(d.hex()), b"bit rot!").unwrap();
    assert_eq!(
        store.get(&d).await.unwrap(),
        None,
        "treated as a miss, so it is refetched"
    );
    assert!(!dir.path().join("sha256").join(d.hex()).exists());
    assert_eq!(store.used_bytes(), 0);
}

/// Reads refresh the file mtime, so the LRU order survives a restart.
#[tokio::test]
async fn recency_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<Bytes> = (0..3u8).map(|i| Bytes::from(vec![i; 10])).collect();
    let ds: Vec<Digest> = blobs.iter().map(|b| Digest::of(b)).collect();
    {
        let store = DiskStore::open(dir.path(), 1 << 20).await.unwrap();
        store.put(&ds[0], blobs[0].clone()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        store.put(&ds[1], blobs[1].clone()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        store.get(&ds[0]).await.unwrap(); // 0 is now the most recently used
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let store = DiskStore::open(dir.path(), 25).await.unwrap();
    store.put(&ds[2], blobs[2].clone()).await.unwrap();
    assert!(
        store.stat(&ds[0]).await.unwrap().is_some(),
        "read before the restart: kept"
    );
    assert!(
        store.stat(&ds[1]).await.unwrap().is_none(),
        "least recently used: evicted"
    );
}

#[tokio::test]
async fn reopening_finds_blobs_and_cleans_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bytes::from_static(b"persisted");
    let d = Digest::of(&b);
    {
        let store = DiskStore::open(dir.path(), 1 << 20).await.unwrap();
        store.put(&d, b.clone()).await.unwrap();
    }
    std::fs::write(dir.path().join("tmp").join("crashed.part"), b"half").unwrap();
    let store = DiskStore::open(dir.path(), 1 << 20).await.unwrap();
    assert_eq!(store.get(&d).await.unwrap(), Some(b));
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

/// A cache bigger than one stat thread's share (so several threads scan it) is indexed whole,
/// in the order of the files' modification times, whatever thread read which file.
#[test]
fn a_big_scan_over_several_threads_keeps_every_blob_and_the_age_order() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let base = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let n = 10_000u32;
    let mut by_age = Vec::new();
    for i in 0..n {
        let bytes = i.to_be_bytes();
        let d = Digest::of(&bytes);
        let f = std::fs::File::create(blobs.join(d.hex())).unwrap();
        std::io::Write::write_all(&mut &f, &bytes).unwrap();
        // Ages run against the names' order, so the readdir order cannot give the answer.
        f.set_modified(base + std::time::Duration::from_secs(u64::from(n - i)))
            .unwrap();
        by_age.push(d);
    }
    by_age.reverse(); // oldest first
    std::fs::write(blobs.join("not-a-digest"), b"x").unwrap();
    let st = scan(dir.path()).unwrap();
    assert_eq!(st.entries.len(), n as usize);
    assert_eq!(st.used, 4 * u64::from(n));
    let mut order: Vec<_> = st.entries.iter().collect();
    order.sort_by_key(|(_, e)| e.last_use);
    let order: Vec<Digest> = order
        .into_iter()
        .map(|(k, _)| Digest::from_raw(*k))
        .collect();
    assert_eq!(order, by_age);
}
