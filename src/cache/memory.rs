//! The memory tier: moka, weighted by bytes, bounded by `cache.max_memory_bytes`, in front of
//! the blob store (`BlobCache`). Holds only small blobs (up to 1/16 of the budget each) so one
//! big blob cannot flush everything else. Only bytes already verified (read from a verifying
//! store, or checked by a write) go in. A blob of `memfd::MIN_BYTES` and more goes in on the
//! heap and moves into a sealed memfd (`Held::Mapped`) when it is served from here a second
//! time, so the plain HTTP/1 writer can send it with `sendfile`: making a memfd costs tens of
//! microseconds, which a blob read once (a tier churned by more blobs than it holds) should
//! not pay.

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

    /// As `get`, for serving: a heap blob of `memfd::MIN_BYTES` and more, served from here
    /// again, moves into a memfd (when one is to be had) and is handed out as such.
    pub async fn get_for_sending(&self, d: &Digest) -> Option<Held> {
        match self.cache.get(d).await? {
            Held::Heap(b) => match Mapped::copy_of(&b) {
                Some(m) => {
                    let held = Held::Mapped(m);
                    self.cache.insert(d.clone(), held.clone()).await;
                    Some(held)
                }
                None => Some(Held::Heap(b)),
            },
            mapped => Some(mapped),
        }
    }

    /// The blob's size, if held.
    pub async fn stat(&self, d: &Digest) -> Option<u64> {
        self.cache.get(d).await.map(|b| b.bytes().len() as u64)
    }

    /// Inserts bytes already known to match the digest (read from a verified tier), on the
    /// heap; a blob held already (kept while a cold fetch is stored, then stored) stays as it
    /// is.
    pub async fn insert_verified(&self, d: Digest, bytes: Bytes) {
        if (bytes.len() as u64) > self.max_item || self.cache.contains_key(&d) {
            return;
        }
        self.cache.insert(d, Held::Heap(bytes)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_big_blob_moves_into_a_memfd_when_served_again_and_a_small_one_stays() {
        let m = MemoryStore::new(64 << 20);
        let (big, small) = (
            Bytes::from(vec![7u8; 50 << 10]),
            Bytes::from(vec![1u8; 5 << 10]),
        );
        let (db, ds) = (Digest::of(&big), Digest::of(&small));
        m.insert_verified(db.clone(), big.clone()).await;
        assert!(
            matches!(m.get(&db).await, Some(Held::Heap(_))),
            "read once: on the heap"
        );
        let Some(Held::Mapped(first)) = m.get_for_sending(&db).await else {
            panic!("served from memory: moved into a memfd");
        };
        assert_eq!(first.bytes, big);
        // inserted again (a cold fetch kept, then stored), and served again: the same copy
        m.insert_verified(db.clone(), big.clone()).await;
        let Some(Held::Mapped(again)) = m.get_for_sending(&db).await else {
            panic!("still in a memfd");
        };
        assert!(std::sync::Arc::ptr_eq(&first.fd, &again.fd));
        m.insert_verified(ds.clone(), small.clone()).await;
        assert!(matches!(m.get_for_sending(&ds).await, Some(Held::Heap(b)) if b == small));
        assert_eq!(m.stat(&db).await, Some(big.len() as u64));
    }
}
