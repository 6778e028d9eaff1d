//! Caching below the resolvers. `Cache` (read_through) is the one API they use: named values,
//! whole and streamed blobs, and derived values, read through memory and the stores to the
//! upstream fetch a resolver supplies, once for all concurrent callers, with negative answers
//! and stale copies. Beneath it:
//! - `BlobStore`, the trait every blob backend implements (stat / get / read / read_range /
//!   put / begin a verified streaming write / delete / list), with `DiskStore` (content-
//!   addressed files, LRU within `max_disk_bytes`, verify-on-read) and one conformance test;
//! - `RefStore`, the trait for small named values listed by prefix (`DiskRefs`), with its own
//!   conformance test;
//! - `MemoryStore`, the memory tier: a layer in front of the blob store (`BlobCache`), not a
//!   store of its own;
//! - `Links` (which repository may name which digest), `Flight` (single-flight) and `Tee`
//!   (readers following a blob while it is written).
//!
//! Calls nothing above it; knows nothing of HTTP or upstreams.

mod background;
mod bucket;
mod disk;
mod flight;
mod links;
mod memfd;
mod memory;
mod read_through;
mod refs;
mod tee;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use background::Background;
pub use bucket::{Bucket, BucketRefs, BucketStore};
pub use disk::DiskStore;
pub use disk::DiskWriter;
pub use flight::Flight;
pub use links::{link_name, referenced, repo_links, Links};
pub use memory::MemoryStore;
pub use read_through::{
    BlobKey, BodyStream, Cache, Freshness, Served, Settings as CacheSettings, Streamed, ValueState,
};
pub use refs::{DiskRefs, RefName, RefStore};
pub use tee::Tee;

use crate::error::Result;
use crate::ids::Digest;

pub use memfd::{limit as memfd_limit, Mapped};

/// Blob bytes as a store hands them out: in memory (on the heap, or mapped from a sealed
/// memfd that can be sent with `sendfile`), or an open file of a known length.
#[derive(Debug)]
pub enum BlobData {
    Bytes(Bytes),
    Mapped(Mapped),
    File(tokio::fs::File, u64),
}

impl BlobData {
    pub fn len(&self) -> u64 {
        match self {
            BlobData::Bytes(b) => b.len() as u64,
            BlobData::Mapped(m) => m.bytes.len() as u64,
            BlobData::File(_, n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, read from the file if that is what this is.
    pub async fn into_bytes(self) -> std::io::Result<Bytes> {
        match self {
            BlobData::Bytes(b) => Ok(b),
            BlobData::Mapped(m) => Ok(m.bytes),
            BlobData::File(mut f, n) => {
                use tokio::io::AsyncReadExt;
                let mut buf = Vec::with_capacity(n as usize);
                f.read_to_end(&mut buf).await?;
                Ok(Bytes::from(buf))
            }
        }
    }
}

/// Returns freed heap memory to the system: glibc keeps it otherwise, so the peak of a big
/// transient build (an index parse, the start-up scan of a big cache) would stay resident.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Content-addressed blob storage. `put` and `begin` verify that the bytes hash to the digest
/// and refuse them otherwise, so no store ever holds a blob under the wrong name.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// The blob's size, if present.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>>;
    /// The blob's bytes, if present.
    async fn get(&self, digest: &Digest) -> Result<Option<Bytes>>;
    /// Stores a blob after checking its digest. Storing a present blob is a no-op.
    async fn put(&self, digest: &Digest, bytes: Bytes) -> Result<()>;
    /// The blob for serving: bytes, or an open file for big blobs on disk.
    async fn read(&self, digest: &Digest) -> Result<Option<BlobData>>;
    /// Bytes `start..end` of the blob (cut at its end), if present.
    async fn read_range(&self, digest: &Digest, start: u64, end: u64) -> Result<Option<Bytes>>;
    /// Starts a streaming write of a blob expected to hash to `digest`.
    async fn begin(&self, digest: &Digest) -> Result<Box<dyn BlobWrite>>;
    /// Removes a blob; removing an absent one is not an error.
    async fn delete(&self, digest: &Digest) -> Result<()>;
    /// Every blob held, with its size, in digest order (eviction and export walk it).
    async fn list(&self) -> Result<Vec<(Digest, u64)>>;
    /// Stores a local file whose bytes were already checked to hash to `digest` (an import's
    /// staged copy), moving it into place where the store can; the file is gone afterwards.
    async fn put_file(&self, digest: &Digest, path: &std::path::Path) -> Result<()>;
    /// Bytes held and the most this store may hold.
    fn usage(&self) -> (u64, u64);
    /// What this process can serve at once: as `read`, except that a blob only a shared
    /// store holds, too big to fetch whole first, is `None` (`stream` it instead).
    async fn read_near(&self, digest: &Digest) -> Result<Option<BlobData>> {
        self.read(digest).await
    }
    /// A blob another process put in a shared store, as its length and chunks, for a caller
    /// that verifies it as it would an upstream's. `None` when there is no such store or blob.
    async fn stream(&self, _digest: &Digest) -> Result<Option<(u64, BodyStream)>> {
        Ok(None)
    }
    /// Called before fetching a blob the store lacks from an upstream: whether this process
    /// should fetch it (holding the returned guard until the blob is stored), or another
    /// process sharing the store fetched it meanwhile. A store of one process: always fetch.
    async fn claim(&self, _digest: &Digest) -> Claim {
        Claim::Mine(None)
    }
}

/// The answer to `BlobStore::claim`.
pub enum Claim {
    /// Fetch it; the guard (if any) keeps other processes waiting until it is dropped.
    Mine(Option<Box<dyn Send + Sync>>),
    /// Another process stored it: read it from the store.
    Present,
}

/// A blob being written in chunks. Nothing is visible under the digest until `commit`, which
/// verifies the digest; dropping the writer abandons the write.
#[async_trait]
pub trait BlobWrite: Send {
    async fn write(&mut self, chunk: &[u8]) -> Result<()>;
    /// Checks the digest of everything written; after it only `commit` may follow. Lets a
    /// caller release verified bytes to a client before the (slower) durable commit.
    fn verify(&mut self) -> Result<()>;
    /// The bytes written so far, readable while the write goes on (a disk store's temp file),
    /// so that concurrent readers of the same blob need not hold it in memory.
    fn partial(&self) -> Option<Arc<dyn PartialBlob>> {
        None
    }
    /// Makes the blob durable and visible (verifying first if `verify` was not called).
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// The unfinished bytes of a `BlobWrite`. They are neither verified nor durable: a reader
/// must know by other means (see `Tee`) which prefix it may hand on.
pub trait PartialBlob: Send + Sync {
    /// How many bytes from the start `read_at` can return; it only grows.
    fn written(&self) -> u64;
    /// Reads at `offset` without moving any cursor (a positional read).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize>;
}

/// Memory in front of disk: reads promote small blobs into memory, writes go to both.
pub struct BlobCache {
    memory: MemoryStore,
    disk: Arc<dyn BlobStore>,
}

impl BlobCache {
    pub fn new(memory: MemoryStore, disk: Arc<dyn BlobStore>) -> BlobCache {
        BlobCache { memory, disk }
    }

    /// Bytes the memory tier holds and may hold.
    pub async fn memory_usage(&self) -> (u64, u64) {
        self.memory.usage().await
    }

    /// The store behind the memory tier.
    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.disk
    }

    pub async fn stat(&self, d: &Digest) -> Result<Option<u64>> {
        if let Some(n) = self.memory.stat(d).await {
            return Ok(Some(n));
        }
        self.disk.stat(d).await
    }

    pub async fn get(&self, d: &Digest) -> Result<Option<Bytes>> {
        if let Some(held) = self.memory.get(d).await {
            crate::metrics::cache_lookup("memory", true);
            return Ok(Some(held.bytes().clone()));
        }
        crate::metrics::cache_lookup("memory", false);
        let hit = self.disk.get(d).await?;
        crate::metrics::cache_lookup("disk", hit.is_some());
        if let Some(b) = &hit {
            self.memory.insert_verified(d.clone(), b.clone()).await;
        }
        Ok(hit)
    }

    /// The blob if the memory tier holds it (counted as a memory hit); a miss is not
    /// counted, since the caller goes on to `read_near`, which counts it.
    pub async fn memory_hit(&self, d: &Digest) -> Option<BlobData> {
        let held = self.memory.get_for_sending(d).await?;
        crate::metrics::cache_lookup("memory", true);
        Some(held.into())
    }

    /// The blob for serving: small blobs as bytes (promoted to memory), big ones as a file.
    pub async fn read(&self, d: &Digest) -> Result<Option<BlobData>> {
        self.read_from(d, false).await
    }

    /// As `read`, but a big blob only a shared store holds is `None` (see
    /// `BlobStore::read_near`): the caller streams it.
    pub async fn read_near(&self, d: &Digest) -> Result<Option<BlobData>> {
        self.read_from(d, true).await
    }

    async fn read_from(&self, d: &Digest, near: bool) -> Result<Option<BlobData>> {
        if let Some(held) = self.memory.get_for_sending(d).await {
            crate::metrics::cache_lookup("memory", true);
            return Ok(Some(held.into()));
        }
        crate::metrics::cache_lookup("memory", false);
        let hit = if near {
            self.disk.read_near(d).await?
        } else {
            self.disk.read(d).await?
        };
        crate::metrics::cache_lookup("disk", hit.is_some());
        // Small blobs, whichever way the store handed them out, are promoted to memory.
        let b = match hit {
            Some(data) if data.len() <= self.memory.max_item() => data.into_bytes().await?,
            other => return Ok(other),
        };
        self.memory.insert_verified(d.clone(), b.clone()).await;
        Ok(Some(BlobData::Bytes(b)))
    }

    /// Starts a streaming write to the disk tier.
    pub async fn begin(&self, d: &Digest) -> Result<Box<dyn BlobWrite>> {
        self.disk.begin(d).await
    }

    /// Keeps bytes already checked against `d` in the memory tier (if they fit), for the
    /// moments before `put` stores them.
    pub async fn hold(&self, d: &Digest, bytes: Bytes) {
        self.memory.insert_verified(d.clone(), bytes).await;
    }

    /// Stores a blob after checking its digest. Wrong bytes are an error; a disk that refuses
    /// the write (full, read-only, gone) is not: the verified bytes are kept in memory and the
    /// caller serves them, uncached on disk, as a streamed blob would be.
    pub async fn put(&self, d: &Digest, bytes: Bytes) -> Result<()> {
        match self.disk.put(d, bytes.clone()).await {
            Ok(()) => {}
            Err(e) if e.kind() == crate::error::Kind::UpstreamInvalid => return Err(e),
            Err(e) => {
                tracing::warn!(digest = %d, error = %e, "cache write failed; serving without caching");
                crate::metrics::cache_write_failure();
            }
        }
        self.memory.insert_verified(d.clone(), bytes).await;
        Ok(())
    }
}

/// The conformance test every `BlobStore` passes.
#[cfg(test)]
pub(crate) async fn conformance(store: &dyn BlobStore) {
    let data = Bytes::from_static(b"hello chart");
    let d = Digest::of(&data);
    assert_eq!(store.stat(&d).await.unwrap(), None);
    assert_eq!(store.get(&d).await.unwrap(), None);
    assert_eq!(store.read_range(&d, 0, 1).await.unwrap(), None);
    store.put(&d, data.clone()).await.unwrap();
    assert_eq!(store.stat(&d).await.unwrap(), Some(data.len() as u64));
    assert_eq!(store.get(&d).await.unwrap(), Some(data.clone()));
    assert_eq!(
        store.read_range(&d, 6, 100).await.unwrap().unwrap(),
        &b"chart"[..]
    );
    // idempotent
    store.put(&d, data.clone()).await.unwrap();
    // wrong bytes under a digest are refused and never stored
    let other = Digest::of(b"other");
    assert!(store.put(&other, data.clone()).await.is_err());
    assert_eq!(store.get(&other).await.unwrap(), None);
    // streaming writes: verified at commit, invisible before, abandoned when dropped
    let big = Bytes::from(vec![7u8; 100_000]);
    let bd = Digest::of(&big);
    let mut w = store.begin(&bd).await.unwrap();
    w.write(&big[..50_000]).await.unwrap();
    assert_eq!(store.stat(&bd).await.unwrap(), None);
    w.write(&big[50_000..]).await.unwrap();
    w.commit().await.unwrap();
    let read = store.read(&bd).await.unwrap().unwrap();
    assert_eq!(read.len(), 100_000);
    let mut w = store.begin(&other).await.unwrap();
    w.write(b"not other").await.unwrap();
    assert!(w.commit().await.is_err());
    assert_eq!(store.stat(&other).await.unwrap(), None);
    let mut w = store.begin(&other).await.unwrap();
    w.write(b"other").await.unwrap();
    drop(w);
    assert_eq!(store.stat(&other).await.unwrap(), None);
    // a staged file moves in
    let staged = std::env::temp_dir().join(format!("cb-conformance-{}", std::process::id()));
    std::fs::write(&staged, b"staged bytes").unwrap();
    let sd = Digest::of(b"staged bytes");
    store.put_file(&sd, &staged).await.unwrap();
    assert!(!staged.exists());
    assert_eq!(store.get(&sd).await.unwrap().unwrap(), &b"staged bytes"[..]);
    store.delete(&sd).await.unwrap();
    assert!(store.usage().0 >= data.len() as u64 + 100_000);
    // listing and deleting
    let mut expected = vec![(d.clone(), data.len() as u64), (bd.clone(), 100_000)];
    expected.sort();
    assert_eq!(store.list().await.unwrap(), expected);
    store.delete(&d).await.unwrap();
    store.delete(&d).await.unwrap();
    assert_eq!(store.stat(&d).await.unwrap(), None);
    assert_eq!(store.list().await.unwrap(), vec![(bd, 100_000)]);
}

#[cfg(test)]
mod conformance_tests {
    use super::*;

    #[tokio::test]
    async fn disk_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        conformance(&DiskStore::open(dir.path(), 1 << 20).await.unwrap()).await;
        // nothing left behind in tmp/ by the abandoned and refused writes
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn memory_tier_keeps_small_blobs_only() {
        let m = MemoryStore::new(16 << 10);
        let small = Bytes::from(vec![1u8; 100]);
        let big = Bytes::from(vec![2u8; 2 << 10]);
        m.insert_verified(Digest::of(&small), small.clone()).await;
        m.insert_verified(Digest::of(&big), big.clone()).await;
        assert_eq!(
            m.get(&Digest::of(&small)).await.map(|h| h.bytes().clone()),
            Some(small)
        );
        assert!(
            m.get(&Digest::of(&big)).await.is_none(),
            "over 1/16 of the budget"
        );
    }
}
