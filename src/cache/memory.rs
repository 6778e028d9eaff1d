//! The memory tier: moka, weighted by bytes, bounded by `cache.max_memory_bytes`, in front of
//! the blob store (`BlobCache`). Holds only small blobs (up to 1/16 of the budget each) so one
//! big blob cannot flush everything else. Only bytes already verified (read from a verifying
//! store, or checked by a write) go in.

use bytes::Bytes;
use moka::future::Cache;

use crate::ids::Digest;

pub struct MemoryStore {
    cache: Cache<Digest, Bytes>,
    max_item: u64,
}

impl MemoryStore {
    pub fn new(max_bytes: u64) -> MemoryStore {
        MemoryStore {
            cache: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_k: &Digest, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
                .build(),
            max_item: max_bytes / 16,
        }
    }

    /// Bytes held now and the most this tier holds.
    pub async fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks().await;
        (self.cache.weighted_size(), self.max_item * 16)
    }

    /// Largest blob this tier keeps.
    pub fn max_item(&self) -> u64 {
        self.max_item
    }

    pub async fn get(&self, d: &Digest) -> Option<Bytes> {
        self.cache.get(d).await
    }

    /// The blob's size, if held.
    pub async fn stat(&self, d: &Digest) -> Option<u64> {
        self.cache.get(d).await.map(|b| b.len() as u64)
    }

    /// Inserts bytes already known to match the digest (read from a verified tier).
    pub async fn insert_verified(&self, d: Digest, bytes: Bytes) {
        if (bytes.len() as u64) <= self.max_item {
            self.cache.insert(d, bytes).await;
        }
    }
}
