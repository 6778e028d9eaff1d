//! The memory tier: moka, weighted by bytes, bounded by `cache.max_memory_bytes`. Holds only
//! small blobs (up to 1/16 of the budget each) so one big blob cannot flush everything else.

use async_trait::async_trait;
use bytes::Bytes;
use moka::future::Cache;

use super::BlobData;
use super::{BlobStore, BlobWrite};
use crate::error::digest_mismatch;
use crate::error::Result;
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

    /// Largest blob this tier keeps.
    pub fn max_item(&self) -> u64 {
        self.max_item
    }

    /// Inserts bytes already known to match the digest (read from a verified tier).
    pub(super) async fn insert_verified(&self, d: Digest, bytes: Bytes) {
        if (bytes.len() as u64) <= self.max_item {
            self.cache.insert(d, bytes).await;
        }
    }
}

#[async_trait]
impl BlobStore for MemoryStore {
    async fn stat(&self, d: &Digest) -> Result<Option<u64>> {
        Ok(self.cache.get(d).await.map(|b| b.len() as u64))
    }

    async fn get(&self, d: &Digest) -> Result<Option<Bytes>> {
        Ok(self.cache.get(d).await)
    }

    async fn put(&self, d: &Digest, bytes: Bytes) -> Result<()> {
        let actual = Digest::of(&bytes);
        if &actual != d {
            return Err(digest_mismatch(d, &actual));
        }
        self.insert_verified(d.clone(), bytes).await;
        Ok(())
    }

    async fn read(&self, d: &Digest) -> Result<Option<BlobData>> {
        Ok(self.cache.get(d).await.map(BlobData::Bytes))
    }

    async fn begin(&self, d: &Digest) -> Result<Box<dyn BlobWrite>> {
        Ok(Box::new(MemoryWriter {
            cache: self.cache.clone(),
            max_item: self.max_item,
            digest: d.clone(),
            buf: Vec::new(),
        }))
    }
}

struct MemoryWriter {
    cache: Cache<Digest, Bytes>,
    max_item: u64,
    digest: Digest,
    buf: Vec<u8>,
}

#[async_trait]
impl BlobWrite for MemoryWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    fn verify(&mut self) -> Result<()> {
        let actual = Digest::of(&self.buf);
        if actual != self.digest {
            return Err(digest_mismatch(&self.digest, &actual));
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.verify()?;
        if (self.buf.len() as u64) <= self.max_item {
            self.cache.insert(self.digest, Bytes::from(self.buf)).await;
        }
        Ok(())
    }
}
