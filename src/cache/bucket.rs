//! A shared S3-compatible bucket (AWS S3, MinIO, Ceph RGW, Garage, R2, ...) behind each
//! replica's local disk tier, through the `object_store` crate: `BucketStore` (a `BlobStore`:
//! memory -> local disk -> bucket -> upstream) and `BucketRefs` (a `RefStore`).
//!
//! Layout under the configured prefix: `blobs/sha256/<hex>` (only ever written whole, after
//! the digest checked: one PUT, or a multipart upload completed after verification),
//! `refs/<encoded ref name>`, `leases/<hex>` (a replica fetching a cold blob) and
//! `uploads/<replica>/<hex>` (a multipart upload in progress, so that a crashed replica's
//! upload is aborted by the next start-up sweep).
//!
//! Cross-replica single-flight (`claim`): the replica about to fetch a cold blob creates its
//! lease with a conditional create (`If-None-Match: *`), renews it while it fetches and
//! deletes it when the blob is in the bucket. The others wait for the blob to appear (polling
//! with backoff) and read it from the bucket; a lease not renewed within `lease_ttl` (its
//! holder died) is taken over.
//!
//! A bucket that fails or is slow never fails a client: reads fall back to a miss (the
//! upstream is asked), writes keep the local copy, and `chartbridge_store_degraded` and the
//! log say so until a request succeeds again. Credentials never reach the log.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use tokio::io::AsyncReadExt;

use super::{Claim, RefName, RefStore};
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::ids::Digest;

mod blobs;
pub use blobs::BucketStore;

/// Blobs up to this size are read from the bucket whole and kept in memory on the way.
const SMALL: u64 = 1 << 20;
/// Files up to this size go up in one PUT; bigger ones in parts of this size.
const PART: usize = 16 << 20;
/// How long a new lease settles before it is read back (see `still_mine`).
const LEASE_SETTLE: Duration = Duration::from_millis(100);
/// A multipart upload older than this, found by a start-up sweep, belongs to a dead replica.
const ORPHANED_AFTER: Duration = Duration::from_secs(3600);

/// The bucket itself: keys under the prefix, timeouts, and the degraded state.
pub struct Bucket {
    s3: Arc<AmazonS3>,
    prefix: String,
    /// This process, as named in leases and upload records.
    replica: String,
    lease_ttl: Duration,
    timeout: Duration,
    degraded: AtomicBool,
    /// Bytes this process put in the bucket (the bucket's total is not known here).
    uploaded: AtomicU64,
}

fn os_err(e: object_store::Error) -> Error {
    Error::internal(format!("object store: {e}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Bucket {
    pub fn connect(cfg: &StoreConfig) -> Result<Arc<Bucket>> {
        let region = cfg
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&cfg.bucket)
            .with_region(region)
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(3))
                    .with_timeout_disabled()
                    .with_allow_http(true),
            )
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
            });
        if let Some(e) = &cfg.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        if let Some((id, secret)) = &cfg.keys {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
        }
        let s3 = b
            .build()
            .map_err(|e| Error::internal(format!("cache.store: {e}")))?;
        let replica = format!(
            "{}-{}-{:x}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "host".into()),
            std::process::id(),
            now_ms()
        );
        Ok(Arc::new(Bucket {
            s3: Arc::new(s3),
            prefix: cfg.prefix.clone(),
            replica,
            lease_ttl: cfg.lease_ttl,
            timeout: cfg.timeout,
            degraded: AtomicBool::new(false),
            uploaded: AtomicU64::new(0),
        }))
    }

    fn key(&self, rel: &str) -> Result<Path> {
        Path::parse(format!("{}{rel}", self.prefix))
            .map_err(|e| Error::internal(format!("object key {rel:?}: {e}")))
    }

    fn blob_key(&self, d: &Digest) -> Result<Path> {
        self.key(&format!("blobs/sha256/{}", d.hex()))
    }

    /// Notes a request that reached the bucket (or failed to), for the metric and the log.
    fn seen(&self, ok: bool, what: &str, e: Option<&str>) {
        let was = self.degraded.swap(!ok, Ordering::AcqRel);
        if was == ok {
            crate::metrics::store_degraded(!ok);
            if ok {
                tracing::info!("object store reachable again");
            } else {
                tracing::warn!(
                    op = what,
                    error = e.unwrap_or_default(),
                    "object store degraded: serving from memory and local disk, fetching through from upstreams without caching in the bucket"
                );
            }
        }
    }

    /// Runs a small request within `timeout`; `Ok(None)` for "not there".
    async fn small<T, F>(&self, what: &str, f: F) -> Result<Option<T>>
    where
        F: std::future::Future<Output = object_store::Result<T>>,
    {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => {
                self.seen(true, what, None);
                Ok(Some(v))
            }
            Ok(Err(object_store::Error::NotFound { .. })) => {
                self.seen(true, what, None);
                Ok(None)
            }
            Ok(Err(e)) => {
                let e = os_err(e);
                self.seen(false, what, Some(&e.to_string()));
                Err(e)
            }
            Err(_) => {
                let e = Error::internal(format!(
                    "object store: {what} took over {:?} (cache.store.timeout)",
                    self.timeout
                ));
                self.seen(false, what, Some(&e.to_string()));
                Err(e)
            }
        }
    }

    async fn head(&self, key: &Path) -> Result<Option<u64>> {
        Ok(self.small("head", self.s3.head(key)).await?.map(|m| m.size))
    }

    async fn get_small(&self, key: &Path) -> Result<Option<Bytes>> {
        let s3 = self.s3.clone();
        let k = key.clone();
        self.small("get", async move { s3.get(&k).await?.bytes().await })
            .await
    }

    async fn put(&self, key: &Path, bytes: Bytes, mode: PutMode) -> object_store::Result<()> {
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        self.s3
            .put_opts(key, PutPayload::from_bytes(bytes), opts)
            .await
            .map(|_| ())
    }

    /// Uploads a local file whose bytes hash to `d` as `blobs/sha256/<hex>`: one PUT when
    /// small, else a multipart upload (recorded, so a crash's leftover can be aborted)
    /// completed only once every part is up. Nothing is visible before it completes.
    async fn upload_file(&self, d: &Digest, path: &std::path::Path) -> Result<()> {
        let key = self.blob_key(d)?;
        let size = tokio::fs::metadata(path).await?.len();
        let result = if size <= PART as u64 {
            let bytes = Bytes::from(tokio::fs::read(path).await?);
            self.put(&key, bytes, PutMode::Overwrite)
                .await
                .map_err(os_err)
        } else {
            self.upload_parts(d, &key, path).await
        };
        self.seen(
            result.is_ok(),
            "upload",
            result.as_ref().err().map(|e| e.to_string()).as_deref(),
        );
        if result.is_ok() {
            self.uploaded.fetch_add(size, Ordering::Relaxed);
        }
        result
    }

    async fn upload_parts(&self, d: &Digest, key: &Path, path: &std::path::Path) -> Result<()> {
        let id = self.s3.create_multipart(key).await.map_err(os_err)?;
        let record = self.key(&format!("uploads/{}/{}", self.replica, d.hex()))?;
        // the record names the upload id, so a sweep can abort it if this process dies
        let _ = self
            .put(&record, Bytes::from(id.clone()), PutMode::Overwrite)
            .await;
        let sent = async {
            let mut f = tokio::fs::File::open(path).await?;
            let mut parts: Vec<PartId> = Vec::new();
            loop {
                let mut buf = Vec::with_capacity(PART);
                (&mut f).take(PART as u64).read_to_end(&mut buf).await?;
                if buf.is_empty() {
                    break;
                }
                let part = self
                    .s3
                    .put_part(key, &id, parts.len(), PutPayload::from(buf))
                    .await
                    .map_err(os_err)?;
                parts.push(part);
            }
            self.s3
                .complete_multipart(key, &id, parts)
                .await
                .map_err(os_err)?;
            Ok::<_, Error>(())
        }
        .await;
        if sent.is_err() {
            let _ = self.s3.abort_multipart(key, &id).await;
        }
        let _ = self.s3.delete(&record).await;
        sent
    }

    /// Aborts multipart uploads that replicas started over an hour ago and never finished
    /// (they died): their parts cost storage and nothing can complete them.
    pub async fn sweep(&self) {
        let Ok(prefix) = self.key("uploads") else {
            return;
        };
        let mut list = self.s3.list(Some(&prefix));
        let mut aborted = 0;
        while let Some(Ok(meta)) = list.next().await {
            let age = SystemTime::now()
                .duration_since(meta.last_modified.into())
                .unwrap_or_default();
            if age < ORPHANED_AFTER {
                continue;
            }
            let Some(hex) = meta.location.filename().map(str::to_string) else {
                continue;
            };
            let Ok(d) = Digest::from_hex(&hex) else {
                continue;
            };
            if let (Ok(Some(id)), Ok(key)) =
                (self.get_small(&meta.location).await, self.blob_key(&d))
            {
                let id = String::from_utf8_lossy(&id).into_owned();
                let _ = self.s3.abort_multipart(&key, &id).await;
                aborted += 1;
            }
            let _ = self.s3.delete(&meta.location).await;
        }
        if aborted > 0 {
            tracing::info!(
                aborted,
                "aborted multipart uploads left by replicas that died"
            );
        }
    }

    // ------------------------------------------------------------------ leases

    fn lease_body(&self) -> Bytes {
        let expires = now_ms() + self.lease_ttl.as_millis() as u64;
        Bytes::from(serde_json::json!({"holder": self.replica, "expires_ms": expires}).to_string())
    }

    /// After a conditional create succeeded: whether the lease still names this replica a
    /// moment later. S3 makes `If-None-Match: *` atomic, but some compatible servers check
    /// and then write (s3s-fs does), so two replicas can both "create"; the last write wins
    /// and the read-back tells the other one to wait instead.
    async fn still_mine(&self, lease: &Path) -> bool {
        tokio::time::sleep(LEASE_SETTLE).await;
        match self.get_small(lease).await {
            Ok(Some(body)) => serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .is_some_and(|v| v["holder"] == self.replica.as_str()),
            _ => true,
        }
    }

    /// Claims the fetch of a cold blob across replicas (see the module docs).
    async fn claim(self: &Arc<Self>, d: &Digest) -> Claim {
        let (Ok(lease), Ok(blob)) = (self.key(&format!("leases/{}", d.hex())), self.blob_key(d))
        else {
            return Claim::Mine(None);
        };
        loop {
            match self.put(&lease, self.lease_body(), PutMode::Create).await {
                Ok(()) if !self.still_mine(&lease).await => {}
                Ok(()) => {
                    let guard = LeaseGuard::start(self.clone(), lease);
                    // A holder uploads before it releases: with the lease ours, a blob that
                    // is not in the bucket now was not fetched by anyone.
                    if let Ok(Some(_)) = self.head(&blob).await {
                        crate::metrics::lease("waited");
                        return Claim::Present;
                    }
                    crate::metrics::lease("taken");
                    return Claim::Mine(Some(Box::new(guard)));
                }
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {}
                Err(e) => {
                    // No coordination possible: fetch without it rather than not at all.
                    self.seen(false, "lease", Some(&e.to_string()));
                    return Claim::Mine(None);
                }
            }
            crate::metrics::lease("waited");
            // Another replica fetches it: wait for the blob while its lease lives.
            let mut pause = Duration::from_millis(50);
            loop {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                if let Ok(Some(_)) = self.head(&blob).await {
                    return Claim::Present;
                }
                match self.get_small(&lease).await {
                    Ok(None) => break, // released without the blob (its fetch failed): try
                    Ok(Some(body)) => {
                        let expires = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v["expires_ms"].as_u64())
                            .unwrap_or(0);
                        if now_ms() > expires {
                            tracing::info!(digest = %d, "a replica's claim on a blob expired; taking it over");
                            crate::metrics::lease("taken_over");
                            let _ = self.s3.delete(&lease).await;
                            break;
                        }
                    }
                    Err(_) => return Claim::Mine(None),
                }
            }
        }
    }
}

/// Holds a lease: renews it every third of `lease_ttl` and deletes it when dropped.
struct LeaseGuard {
    bucket: Arc<Bucket>,
    key: Path,
    renew: tokio::task::JoinHandle<()>,
}

impl LeaseGuard {
    fn start(bucket: Arc<Bucket>, key: Path) -> LeaseGuard {
        let (b, k) = (bucket.clone(), key.clone());
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(b.lease_ttl / 3).await;
                let _ = b.put(&k, b.lease_body(), PutMode::Overwrite).await;
            }
        });
        LeaseGuard { bucket, key, renew }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.renew.abort();
        let (s3, key) = (self.bucket.s3.clone(), self.key.clone());
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                let _ = s3.delete(&key).await;
            });
        }
    }
}

/// Refs as objects under `refs/`.
pub struct BucketRefs {
    bucket: Arc<Bucket>,
}

impl BucketRefs {
    pub fn new(bucket: Arc<Bucket>) -> BucketRefs {
        BucketRefs { bucket }
    }

    fn key(&self, name: &RefName) -> Result<Path> {
        self.bucket.key(&format!("refs/{}", name.encoded()))
    }
}

#[async_trait]
impl RefStore for BucketRefs {
    async fn get(&self, name: &RefName) -> Result<Option<Bytes>> {
        self.bucket.get_small(&self.key(name)?).await
    }

    async fn put(&self, name: &RefName, value: Bytes) -> Result<()> {
        let r = self
            .bucket
            .put(&self.key(name)?, value, PutMode::Overwrite)
            .await;
        self.bucket.seen(
            r.is_ok(),
            "put ref",
            r.as_ref().err().map(|e| e.to_string()).as_deref(),
        );
        r.map_err(os_err)
    }

    async fn delete(&self, name: &RefName) -> Result<()> {
        match self.bucket.s3.delete(&self.key(name)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(os_err(e)),
        }
    }

    async fn list(&self, prefix: &RefName) -> Result<Vec<RefName>> {
        let refs = format!("{}refs/", self.bucket.prefix);
        let start = if prefix.parts().is_empty() {
            self.bucket.key("refs")?
        } else {
            self.key(prefix)?
        };
        let mut out = Vec::new();
        let mut list = self.bucket.s3.list(Some(&start));
        while let Some(meta) = list.next().await {
            let meta = meta.map_err(os_err)?;
            let loc = meta.location.to_string();
            if let Some(n) = loc.strip_prefix(&refs).and_then(RefName::from_encoded) {
                if n.starts_with(prefix) {
                    out.push(n);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests;
