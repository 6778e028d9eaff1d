//! The memory tier: moka, weighted by bytes, bounded by `cache.max_memory_bytes`, in front of
//! the blob store (`BlobCache`). Holds only small blobs (up to 1/16 of the budget each) so one
//! big blob cannot flush everything else. Only bytes already verified (read from a verifying
//! store, or checked by a write) go in. Blobs of `memfd::MIN_BYTES` and more are held in a
//! sealed memfd when one is to be had (`Held::Mapped`), so the plain HTTP/1 writer can send
//! them with `sendfile`.

use bytes::Bytes;
use moka::future::Cache;

use super::memfd::Mapped;
use crate::ids::Digest;

/// A blob as the memory tier holds it.
#[derive(Clone)]
pub enum Held {
    Heap(Bytes),
    Mapped(Mapped),
}

impl Held {
    pub fn bytes(&self) -> &Bytes {
        match self {
            Held::Heap(b) => b,
            Held::Mapped(m) => &m.bytes,
        }
    }
}

impl From<Held> for super::BlobData {
    fn from(held: Held) -> Self {
        match held {
            Held::Heap(b) => super::BlobData::Bytes(b),
            Held::Mapped(m) => super::BlobData::Mapped(m),
        }
    }
}

pub struct MemoryStore {
    cache: Cache<Digest, Held>,
    max_item: u64,
}

impl MemoryStore {
    pub fn new(max_bytes: u64) -> MemoryStore {
        MemoryStore {
            cache: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_k: &Digest, v: &Held| u32::try_from(v.bytes().len()).unwrap_or(u32::MAX))
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

    pub async fn get(&self, d: &Digest) -> Option<Held> {
        self.cache.get(d).await
    }

    /// The blob's size, if held.
    pub async fn stat(&self, d: &Digest) -> Option<u64> {
        self.cache.get(d).await.map(|b| b.bytes().len() as u64)
    }

    /// Inserts bytes already known to match the digest (read from a verified tier); returns
    /// them as they are now held (mapped from a memfd, or the same heap bytes).
    pub async fn insert_verified(&self, d: Digest, bytes: Bytes) -> Bytes {
        if (bytes.len() as u64) > self.max_item {
            return bytes;
        }
        // Held already (kept while a cold fetch is stored, then stored): one copy is enough.
        if let Some(held) = self.cache.get(&d).await {
            return held.bytes().clone();
        }
        let held = match Mapped::copy_of(&bytes) {
            Some(m) => Held::Mapped(m),
            None => Held::Heap(bytes),
        };
        let out = held.bytes().clone();
        self.cache.insert(d, held).await;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn big_blobs_are_held_in_a_memfd_once_and_small_ones_on_the_heap() {
        let m = MemoryStore::new(64 << 20);
        let (big, small) = (
            Bytes::from(vec![7u8; 50 << 10]),
            Bytes::from(vec![1u8; 5 << 10]),
        );
        let (db, ds) = (Digest::of(&big), Digest::of(&small));
        let held = m.insert_verified(db.clone(), big.clone()).await;
        assert_eq!(held, big);
        let Some(Held::Mapped(first)) = m.get(&db).await else {
            panic!("a 50 KB blob is held in a memfd");
        };
        assert_eq!(first.bytes, big);
        // inserted again (a cold fetch kept, then stored): the same copy stays
        m.insert_verified(db.clone(), big.clone()).await;
        let Some(Held::Mapped(again)) = m.get(&db).await else {
            panic!("still in a memfd");
        };
        assert!(std::sync::Arc::ptr_eq(&first.fd, &again.fd));
        m.insert_verified(ds.clone(), small.clone()).await;
        assert!(matches!(m.get(&ds).await, Some(Held::Heap(b)) if b == small));
        assert_eq!(m.stat(&db).await, Some(big.len() as u64));
    }
}
