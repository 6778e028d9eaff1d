//! The bucket as a `BlobStore`: each replica's local disk tier in front of the shared bucket,
//! with the cross-replica claim on cold blobs and verified writes (`BucketWrite`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use object_store::{ObjectStore, PutMode};

use crate::cache::{BlobData, BlobStore, BlobWrite, Claim, DiskStore, PartialBlob};
use crate::error::{digest_mismatch, Error, Result};
use crate::ids::Digest;

use super::{os_err, Bucket, SMALL};

/// Blobs: memory is above this; here the local disk tier, then the bucket.
pub struct BucketStore {
    bucket: Arc<Bucket>,
    local: Arc<DiskStore>,
}

impl BucketStore {
    pub fn new(bucket: Arc<Bucket>, local: Arc<DiskStore>) -> BucketStore {
        BucketStore { bucket, local }
    }

    /// Copies a bucket blob into the local tier, verified on the way (a wrong object is
    /// never served, and removed). `false` when it could not be.
    async fn fetch_to_local(&self, d: &Digest) -> Result<bool> {
        let key = self.bucket.blob_key(d)?;
        let got = match tokio::time::timeout(self.bucket.timeout, self.bucket.s3.get(&key)).await {
            Ok(Ok(g)) => g,
            Ok(Err(object_store::Error::NotFound { .. })) => return Ok(false),
            Ok(Err(e)) => {
                self.bucket.seen(false, "get", Some(&e.to_string()));
                return Ok(false);
            }
            Err(_) => {
                self.bucket.seen(false, "get", Some("timed out"));
                return Ok(false);
            }
        };
        let mut w = self.local.begin(d).await?;
        let mut body = got.into_stream();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => w.write(&c).await?,
                Err(e) => {
                    self.bucket.seen(false, "get", Some(&e.to_string()));
                    return Ok(false);
                }
            }
        }
        if let Err(e) = w.verify() {
            tracing::error!(digest = %d, error = %e, "bucket object does not match its digest; removed, will refetch");
            let _ = self.bucket.s3.delete(&key).await;
            return Ok(false);
        }
        w.commit().await?;
        crate::metrics::cache_lookup("bucket", true);
        Ok(true)
    }
}

#[async_trait]
impl BlobStore for BucketStore {
    async fn stat(&self, d: &Digest) -> Result<Option<u64>> {
        if let Some(n) = self.local.stat(d).await? {
            return Ok(Some(n));
        }
        Ok(self
            .bucket
            .head(&self.bucket.blob_key(d)?)
            .await
            .unwrap_or(None))
    }

    async fn get(&self, d: &Digest) -> Result<Option<Bytes>> {
        if let Some(b) = self.local.get(d).await? {
            return Ok(Some(b));
        }
        let Ok(Some(bytes)) = self.bucket.get_small(&self.bucket.blob_key(d)?).await else {
            crate::metrics::cache_lookup("bucket", false);
            return Ok(None);
        };
        let actual = Digest::of(&bytes);
        if &actual != d {
            tracing::error!(digest = %d, "bucket object does not match its digest; removed, will refetch");
            let _ = self.bucket.s3.delete(&self.bucket.blob_key(d)?).await;
            return Ok(None);
        }
        crate::metrics::cache_lookup("bucket", true);
        let _ = self.local.put(d, bytes.clone()).await;
        Ok(Some(bytes))
    }

    async fn put(&self, d: &Digest, bytes: Bytes) -> Result<()> {
        let actual = Digest::of(&bytes);
        if &actual != d {
            return Err(digest_mismatch(d, &actual));
        }
        let local = self.local.put(d, bytes.clone()).await;
        let key = self.bucket.blob_key(d)?;
        let n = bytes.len() as u64;
        match self.bucket.put(&key, bytes, PutMode::Overwrite).await {
            Ok(()) => {
                self.bucket.seen(true, "put", None);
                self.bucket.uploaded.fetch_add(n, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.bucket.seen(false, "put", Some(&e.to_string()));
                // the local copy serves this replica; the bucket misses out
                local
            }
        }
    }

    async fn read(&self, d: &Digest) -> Result<Option<BlobData>> {
        if let Some(data) = self.local.read(d).await? {
            return Ok(Some(data));
        }
        let Some(size) = self
            .bucket
            .head(&self.bucket.blob_key(d)?)
            .await
            .unwrap_or(None)
        else {
            crate::metrics::cache_lookup("bucket", false);
            return Ok(None);
        };
        if size <= SMALL {
            return Ok(self.get(d).await?.map(BlobData::Bytes));
        }
        if self.fetch_to_local(d).await? {
            return self.local.read(d).await;
        }
        Ok(None)
    }

    async fn read_near(&self, d: &Digest) -> Result<Option<BlobData>> {
        if let Some(data) = self.local.read(d).await? {
            return Ok(Some(data));
        }
        match self
            .bucket
            .head(&self.bucket.blob_key(d)?)
            .await
            .unwrap_or(None)
        {
            Some(size) if size <= SMALL => Ok(self.get(d).await?.map(BlobData::Bytes)),
            _ => Ok(None),
        }
    }

    async fn stream(&self, d: &Digest) -> Result<Option<(u64, crate::cache::BodyStream)>> {
        let key = self.bucket.blob_key(d)?;
        let got = match tokio::time::timeout(self.bucket.timeout, self.bucket.s3.get(&key)).await {
            Ok(Ok(g)) => g,
            Ok(Err(object_store::Error::NotFound { .. })) => return Ok(None),
            Ok(Err(e)) => {
                self.bucket.seen(false, "get", Some(&e.to_string()));
                return Ok(None);
            }
            Err(_) => {
                self.bucket.seen(false, "get", Some("timed out"));
                return Ok(None);
            }
        };
        crate::metrics::cache_lookup("bucket", true);
        let len = got.meta.size;
        let body = got
            .into_stream()
            .map(|c| c.map_err(|e| Error::internal(format!("object store: {e}"))))
            .boxed();
        Ok(Some((len, body)))
    }

    async fn read_range(&self, d: &Digest, start: u64, end: u64) -> Result<Option<Bytes>> {
        if let Some(b) = self.local.read_range(d, start, end).await? {
            return Ok(Some(b));
        }
        let key = self.bucket.blob_key(d)?;
        let Some(size) = self.bucket.head(&key).await.unwrap_or(None) else {
            return Ok(None);
        };
        let end = end.min(size);
        if start >= end {
            return Ok(Some(Bytes::new()));
        }
        let s3 = self.bucket.s3.clone();
        Ok(self
            .bucket
            .small(
                "get_range",
                async move { s3.get_range(&key, start..end).await },
            )
            .await
            .unwrap_or(None))
    }

    async fn begin(&self, d: &Digest) -> Result<Box<dyn BlobWrite>> {
        Ok(Box::new(BucketWrite {
            inner: Some(self.local.begin(d).await?),
            digest: d.clone(),
            local: self.local.clone(),
            bucket: self.bucket.clone(),
        }))
    }

    async fn delete(&self, d: &Digest) -> Result<()> {
        self.local.delete(d).await?;
        let key = self.bucket.blob_key(d)?;
        match self.bucket.s3.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(os_err(e)),
        }
    }

    async fn list(&self) -> Result<Vec<(Digest, u64)>> {
        let prefix = self.bucket.key("blobs/sha256")?;
        let mut out = Vec::new();
        let mut list = self.bucket.s3.list(Some(&prefix));
        while let Some(meta) = list.next().await {
            let meta = meta.map_err(os_err)?;
            if let Some(d) = meta
                .location
                .filename()
                .and_then(|h| Digest::from_hex(h).ok())
            {
                out.push((d, meta.size));
            }
        }
        out.sort();
        Ok(out)
    }

    async fn put_file(&self, d: &Digest, path: &std::path::Path) -> Result<()> {
        self.bucket.upload_file(d, path).await?;
        self.local.put_file(d, path).await
    }

    /// The bucket's size is bounded by its lifecycle rule, not here: only the local tier
    /// counts, and what this process uploaded.
    fn usage(&self) -> (u64, u64) {
        (self.bucket.uploaded.load(Ordering::Relaxed), u64::MAX)
    }

    async fn claim(&self, d: &Digest) -> Claim {
        let Ok(key) = self.bucket.blob_key(d) else {
            return Claim::Mine(None);
        };
        if let Ok(Some(_)) = self.bucket.head(&key).await {
            return Claim::Present;
        }
        self.bucket.claim(d).await
    }
}

/// A streamed write: to the local tier (whose temp file followers read), and once verified
/// and committed there, up to the bucket.
struct BucketWrite {
    inner: Option<Box<dyn BlobWrite>>,
    digest: Digest,
    local: Arc<DiskStore>,
    bucket: Arc<Bucket>,
}

#[async_trait]
impl BlobWrite for BucketWrite {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        match &mut self.inner {
            Some(w) => w.write(chunk).await,
            None => Err(Error::internal("write after commit")),
        }
    }

    fn verify(&mut self) -> Result<()> {
        match &mut self.inner {
            Some(w) => w.verify(),
            None => Ok(()),
        }
    }

    fn partial(&self) -> Option<Arc<dyn PartialBlob>> {
        self.inner.as_ref().and_then(|w| w.partial())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let inner = self
            .inner
            .take()
            .ok_or_else(|| Error::internal("double commit"))?;
        inner.commit().await?;
        // A blob streamed from the bucket itself is there already.
        if let Ok(Some(_)) = self.bucket.head(&self.bucket.blob_key(&self.digest)?).await {
            return Ok(());
        }
        // Up to the bucket from the committed local file (verified; read while it is there).
        match self.local.path_of(&self.digest) {
            Some(path) => self.bucket.upload_file(&self.digest, &path).await,
            None => Ok(()),
        }
    }
}
