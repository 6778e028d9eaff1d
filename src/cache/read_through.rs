//! The read-through cache: the one place that knows how an answer is found. A resolver says
//! only how to fetch (and verify) one thing from its upstream and how long it stays fresh;
//! this module owns the rest, the same way for every kind of upstream:
//!
//! - named values (`value`): memory while fresh, else one fetch for all concurrent callers
//!   (single-flight), remembered in memory and persisted as a ref; a failure is remembered
//!   briefly (negative cache), and while the upstream fails the last known value is served,
//!   marked stale (`Served::stale`), without asking again for `refresh_backoff`;
//! - whole blobs by digest (`blob_bytes`, `manifest`): memory, then the store, else fetched
//!   once, verified against the digest, and answered from memory at once while a background
//!   task links it to the repository that fetched it and then stores it (`flush` waits);
//! - streamed blobs (`stream_blob`): a cold fetch streams to its first client while it is
//!   verified and written; concurrent requests (whole or a `Range`) read the same fetch
//!   through its `Tee`; the last chunk waits for the digest check, not for the link and the
//!   durable commit that follow it;
//! - derived values (`derived`): objects built from cached bytes (a parsed index, an index
//!   view), kept in memory within a byte budget, least recently used first out, rebuilt when
//!   asked for again.
//!
//! Calls only the stores below it; knows nothing of HTTP, routes or upstreams.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::{BlobCache, BlobData, BlobWrite, Claim, Flight, Links, RefName, RefStore, Tee};
use crate::error::{digest_mismatch, Error, Kind, Result};
use crate::ids::{ByteRange, Digest};

/// An answer, whether it is a last-known copy served because the upstream failed, and how
/// much longer it stays fresh. Travels back with the value, so a follower of a shared fetch
/// learns it too.
#[derive(Clone, Debug)]
pub struct Served<T> {
    pub value: T,
    pub stale: bool,
    /// How long the answer stays fresh from now (`Some(0)` when stale); `None` when it never
    /// changes or nobody said.
    pub fresh_for: Option<Duration>,
}

/// The sooner of two freshness limits.
fn sooner(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

impl<T> Served<T> {
    pub fn fresh(value: T) -> Served<T> {
        Served {
            value,
            stale: false,
            fresh_for: None,
        }
    }

    /// A value fresh for `ttl` from now.
    pub fn fresh_for(value: T, ttl: Option<Duration>) -> Served<T> {
        Served {
            value,
            stale: false,
            fresh_for: ttl,
        }
    }

    /// A last-known copy: stale, and fresh for no time at all.
    pub fn stale(value: T) -> Served<T> {
        Served {
            value,
            stale: true,
            fresh_for: Some(Duration::ZERO),
        }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Served<U> {
        Served {
            value: f(self.value),
            stale: self.stale,
            fresh_for: self.fresh_for,
        }
    }

    /// `next`, stale if either was, fresh until the sooner of the two stops being.
    pub fn then<U>(self, next: Served<U>) -> Served<U> {
        Served {
            value: next.value,
            stale: self.stale || next.stale,
            fresh_for: sooner(self.fresh_for, next.fresh_for),
        }
    }
}

/// How long a named value is fresh, what to call it in metrics and logs, and whether a
/// failure with nothing to fall back on is remembered for `negative_ttl`.
#[derive(Clone, Copy, Debug)]
pub struct Freshness {
    /// `None`: immutable, fetched once and kept.
    pub ttl: Option<Duration>,
    pub kind: &'static str,
    pub remember_failures: bool,
}

impl Freshness {
    /// How long a value stamped at `at` stays fresh from now (`None`: immutable).
    fn left(&self, at: Instant) -> Option<Duration> {
        self.ttl.map(|ttl| ttl.saturating_sub(at.elapsed()))
    }

    pub fn for_(ttl: Duration, kind: &'static str) -> Freshness {
        Freshness {
            ttl: Some(ttl),
            kind,
            remember_failures: false,
        }
    }

    pub fn immutable(kind: &'static str) -> Freshness {
        Freshness {
            ttl: None,
            kind,
            remember_failures: false,
        }
    }

    /// Remember a failure for `negative_ttl` when there is nothing known to serve instead.
    pub fn remembering_failures(mut self) -> Freshness {
        self.remember_failures = true;
        self
    }
}

/// The cache's own settings (`cache:` in the configuration).
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long a failed fetch is answered from memory instead of asking again.
    pub negative_ttl: Duration,
    /// After a refresh failed and a stale copy was served, how long that copy keeps being
    /// served before the upstream is asked again.
    pub refresh_backoff: Duration,
    /// Memory for derived values (parsed indexes and index views).
    pub derived_budget: u64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            negative_ttl: Duration::from_secs(1),
            refresh_backoff: Duration::from_secs(10),
            derived_budget: 512 << 20,
        }
    }
}

/// One blob as fetched for one repository: the scope is `upstream` and `repo`, which the fetch
/// links to the digest when it succeeds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlobKey {
    pub upstream: String,
    pub repo: String,
    pub digest: Digest,
}

impl BlobKey {
    pub fn new(upstream: &str, repo: &str, digest: &Digest) -> BlobKey {
        BlobKey {
            upstream: upstream.to_string(),
            repo: repo.to_string(),
            digest: digest.clone(),
        }
    }

    fn failure(&self, what: &str) -> String {
        format!("{what}\0{}\0{}\0{}", self.upstream, self.repo, self.digest)
    }
}

/// A blob body as the upstream sends it: its length, and its bytes as they arrive.
pub type BodyStream = BoxStream<'static, Result<Bytes>>;

/// How a blob request is answered by the cache.
pub enum Streamed {
    /// From the stores.
    Data(BlobData),
    /// A cold fetch: the blob's `len` bytes as they arrive.
    Stream(u64, mpsc::Receiver<Result<Bytes>>),
    /// A cold fetch with a `Range`: bytes `start..end` of a blob of `len`, as they arrive.
    Partial {
        len: u64,
        start: u64,
        end: u64,
        rx: mpsc::Receiver<Result<Bytes>>,
    },
}

/// Most bytes of one in-flight fetch its `Tee` keeps in memory for followers. With a disk
/// store it holds only what the temp file does not yet (about one write batch); without one
/// (or once the disk refuses the write) bigger blobs make followers wait for the fetch.
const TEE_MEMORY_MAX: u64 = 64 << 20;
/// Largest range of a blob only a shared store holds that is read with one ranged read.
const RANGED_READ_MAX: u64 = 16 << 20;
/// Named values remembered in memory (each small: a digest, a tag list, validators).
const MEMORY_VALUES: u64 = 100_000;

/// See `Cache::value_state`.
#[derive(Clone, Debug, Default)]
pub struct ValueState {
    pub age: Option<Duration>,
    pub failing: Option<(Duration, String)>,
}

#[derive(Clone)]
struct Stamped {
    value: Bytes,
    at: Instant,
    /// The value decoded by `value_as`, kept so a warm answer decodes nothing.
    decoded: Option<Arc<dyn Any + Send + Sync>>,
    /// Known from the ref store while the upstream failed: never fresh.
    unconfirmed: bool,
}

impl Stamped {
    fn new(value: Bytes) -> Stamped {
        Stamped {
            value,
            at: Instant::now(),
            decoded: None,
            unconfirmed: false,
        }
    }
}

#[derive(Clone)]
struct DerivedEntry {
    value: Arc<dyn Any + Send + Sync>,
    at: Instant,
    weight: u32,
}

pub struct Cache {
    blobs: BlobCache,
    /// Ref writes off the answer's path (`flush` waits for them).
    background: super::Background,
    refs: Arc<dyn RefStore>,
    links: Links,
    settings: Settings,
    values: moka::future::Cache<RefName, Stamped>,
    /// When a value's refresh last failed (a stale copy is served until `refresh_backoff`).
    backoff: moka::sync::Cache<RefName, Instant>,
    /// Values whose refreshes fail: since when, and the last error (for people, on the
    /// catalog page); cleared by the next good refresh.
    failing: moka::sync::Cache<RefName, (Instant, String)>,
    /// Recent failures, answered again until `negative_ttl` (checked against the tokio clock,
    /// so tests can pause it).
    failures: moka::sync::Cache<String, (Error, Instant)>,
    value_flight: Flight<RefName, Served<Bytes>>,
    blob_flight: Flight<BlobKey, Bytes>,
    stream_flight: Flight<BlobKey, ()>,
    /// In-flight streamed fetches whose bytes followers can read.
    tees: Mutex<HashMap<BlobKey, Arc<Tee>>>,
    /// Woken when a tee joins `tees`, so followers waiting for one need not poll.
    tee_added: Notify,
    derived: moka::sync::Cache<String, DerivedEntry>,
    derived_flight: Flight<String, Arc<dyn Any + Send + Sync>>,
}

impl Cache {
    pub fn new(blobs: BlobCache, refs: Arc<dyn RefStore>, settings: Settings) -> Cache {
        let background = super::Background::default();
        Cache {
            blobs,
            links: Links::new(refs.clone(), background.clone()),
            background,
            refs,
            values: moka::future::Cache::builder()
                .max_capacity(MEMORY_VALUES)
                .build(),
            backoff: moka::sync::Cache::builder()
                .max_capacity(MEMORY_VALUES)
                .build(),
            failing: moka::sync::Cache::builder()
                .max_capacity(MEMORY_VALUES)
                .build(),
            failures: moka::sync::Cache::builder().max_capacity(10_000).build(),
            value_flight: Flight::default(),
            blob_flight: Flight::default(),
            stream_flight: Flight::default(),
            tees: Mutex::default(),
            tee_added: Notify::new(),
            derived: moka::sync::Cache::builder()
                .max_capacity(settings.derived_budget)
                .weigher(|_, e: &DerivedEntry| e.weight)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .eviction_listener(|key: Arc<String>, _, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        let mut parts = key.split('\0');
                        let kind = match parts.next().unwrap_or_default() {
                            "index" => "parsed index",
                            "oci-index" => "index view",
                            _ => "index entry",
                        };
                        let upstream = parts.next().unwrap_or_default().to_string();
                        tracing::warn!(%upstream, "{kind} dropped from memory to stay within cache.max_index_memory_bytes; rebuilt from disk when asked for");
                    }
                })
                .build(),
            derived_flight: Flight::default(),
            settings,
        }
    }

    pub fn links(&self) -> &Links {
        &self.links
    }

    /// Waits for every write made off an answer's path so far (refs, links, media types):
    /// what a command that is about to exit calls.
    pub async fn flush(&self) {
        self.background.flush().await
    }

    pub fn refs(&self) -> &Arc<dyn RefStore> {
        &self.refs
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    // ------------------------------------------------------------------ whole blobs

    /// Whether the stores hold a blob (no link check: the caller decides who may read it).
    pub async fn has_blob(&self, d: &Digest) -> Result<bool> {
        Ok(self.blobs.stat(d).await?.is_some())
    }

    /// A blob's bytes if the memory tier holds them: the warm path's one lookup.
    pub async fn memory_blob(&self, d: &Digest) -> Option<BlobData> {
        self.blobs.memory_hit(d).await
    }

    /// A blob's size, if the stores hold it.
    pub async fn blob_size(&self, d: &Digest) -> Result<Option<u64>> {
        self.blobs.stat(d).await
    }

    /// A blob's bytes from the stores.
    pub async fn cached_bytes(&self, d: &Digest) -> Result<Option<Bytes>> {
        self.blobs.get(d).await
    }

    /// Every blob the store holds, with its size.
    pub async fn list_blobs(&self) -> Result<Vec<(Digest, u64)>> {
        self.blobs.store().list().await
    }

    /// A blob for reading out (export): bytes, or an open file.
    pub async fn read_blob(&self, d: &Digest) -> Result<Option<BlobData>> {
        self.blobs.store().read(d).await
    }

    /// Stores a staged file already verified to hash to `d` (import).
    pub async fn import_blob(&self, d: &Digest, path: &std::path::Path) -> Result<()> {
        self.blobs.store().put_file(d, path).await
    }

    /// Bytes the blob store holds, and the most it may hold.
    pub async fn memory_usage(&self) -> (u64, u64) {
        self.blobs.memory_usage().await
    }

    pub fn blob_usage(&self) -> (u64, u64) {
        self.blobs.store().usage()
    }

    /// Stores bytes known to hash to `d` (built here, such as a synthesised manifest).
    pub async fn put_blob(&self, d: &Digest, bytes: Bytes) -> Result<()> {
        self.blobs.put(d, bytes).await
    }

    /// A whole blob: from the stores, else fetched once for every concurrent caller, verified
    /// against its digest, stored (a disk that refuses it costs only the caching) and linked to
    /// the key's repository.
    pub async fn blob_bytes<F, Fut>(self: &Arc<Self>, key: &BlobKey, fetch: F) -> Result<Bytes>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes>> + Send + 'static,
    {
        if let Some(b) = self.blobs.get(&key.digest).await? {
            return Ok(b);
        }
        // Boxed: the fetch's state stays off the cached path's future.
        Box::pin(self.fetch_blob_once(None, key, fetch)).await
    }

    /// Fetches a blob once for every concurrent caller, verifies, stores and links it. With
    /// `remember` (a name for its negative answers), a failure is answered again for
    /// `negative_ttl`.
    async fn fetch_blob_once<F, Fut>(
        self: &Arc<Self>,
        remember: Option<&str>,
        key: &BlobKey,
        fetch: F,
    ) -> Result<Bytes>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes>> + Send + 'static,
    {
        let failure_key = remember.map(|what| key.failure(what));
        if let Some(e) = failure_key.as_deref().and_then(|k| self.failed(k)) {
            return Err(e);
        }
        let (this, k) = (self.clone(), key.clone());
        let result = self
            .blob_flight
            .run(key.clone(), async move {
                // A fetch for this repository that ended between the caller's look at the
                // stores and this flight starting has linked and stored it.
                if this.links.has(&k.upstream, &k.repo, &k.digest).await {
                    if let Some(bytes) = this.blobs.get(&k.digest).await? {
                        return Ok(bytes);
                    }
                }
                // Another replica sharing the store may be fetching it already. What it
                // fetched for another repository is not this one's to name: the upstream
                // decides then.
                let claim = match this.blobs.store().claim(&k.digest).await {
                    Claim::Present => {
                        if this.links.has(&k.upstream, &k.repo, &k.digest).await {
                            if let Some(bytes) = this.blobs.get(&k.digest).await? {
                                return Ok(bytes);
                            }
                        }
                        None
                    }
                    Claim::Mine(guard) => guard,
                };
                let bytes = fetch().await?;
                let actual = Digest::of(&bytes);
                if actual != k.digest {
                    return Err(digest_mismatch(&k.digest, &actual));
                }
                // Served from memory from now on; made durable off the answer's path, where
                // its fsyncs cost a cold pull more than the fetch did. The link goes first (a
                // request finding the bytes in the store must find the link), and another
                // replica waiting on the claim goes on only once both are stored.
                this.links.remember(&k.upstream, &k.repo, &k.digest);
                this.blobs.hold(&k.digest, bytes.clone()).await;
                let (cache, key, stored) = (this.clone(), k.clone(), bytes.clone());
                this.background.spawn(async move {
                    cache
                        .links
                        .add_durable(&key.upstream, &key.repo, &key.digest)
                        .await;
                    if let Err(e) = cache.blobs.put(&key.digest, stored).await {
                        tracing::warn!(digest = %key.digest, error = %e, "blob not cached");
                    }
                    drop(claim);
                });
                Ok(bytes)
            })
            .await;
        if let (Err(e), Some(k)) = (&result, failure_key) {
            self.remember_failure(k, e);
        }
        result
    }

    /// A failure remembered for `key` and still fresh.
    fn failed(&self, key: &str) -> Option<Error> {
        let (e, at) = self.failures.get(key)?;
        (at.elapsed() < self.settings.negative_ttl).then_some(e)
    }

    /// Remembers a failure for `negative_ttl` when it is the kind worth remembering.
    pub fn remember_failure(&self, key: String, e: &Error) {
        if negative(e) {
            self.failures.insert(key, (e.clone(), Instant::now()));
        }
    }

    /// A remembered failure for a caller's own key (a HEAD the resolver asked), if fresh.
    pub fn remembered_failure(&self, key: &str) -> Option<Error> {
        self.failed(key)
    }

    /// A manifest stored before (bytes and media type), by digest, whoever fetched it.
    pub async fn cached_manifest(&self, d: &Digest) -> Result<Option<(Bytes, String)>> {
        let name = media_type_name(d);
        let Some(mt) = self.known_value(&name).await else {
            return Ok(None);
        };
        let Some(bytes) = self.blobs.get(d).await? else {
            return Ok(None);
        };
        let mt = String::from_utf8_lossy(&mt).into_owned();
        Ok(Some((bytes, mt)))
    }

    /// Stores a manifest fetched and verified elsewhere (a GET by tag), with its media type:
    /// in memory now, on disk off the answer's path (a failed write costs a refetch).
    pub async fn put_manifest(
        self: &Arc<Self>,
        d: &Digest,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<()> {
        let actual = Digest::of(&bytes);
        if &actual != d {
            return Err(digest_mismatch(d, &actual));
        }
        self.blobs.hold(d, bytes.clone()).await;
        self.note_media_type(d, media_type).await;
        let (this, d) = (self.clone(), d.clone());
        self.background.spawn(async move {
            if let Err(e) = this.blobs.put(&d, bytes).await {
                tracing::warn!(digest = %d, error = %e, "manifest not cached");
            }
        });
        Ok(())
    }

    /// A manifest's media type: in memory now, its ref written off the answer's path.
    async fn note_media_type(self: &Arc<Self>, d: &Digest, media_type: &str) {
        // One name and one buffer for the memory value and the persisted ref.
        let (this, d) = (self.clone(), d.clone());
        let (name, mt) = (
            media_type_name(&d),
            Bytes::copy_from_slice(media_type.as_bytes()),
        );
        this.values
            .insert(name.clone(), Stamped::new(mt.clone()))
            .await;
        self.background.spawn(async move {
            if let Err(e) = this.refs.put(&name, mt).await {
                tracing::warn!(digest = %d, error = %e, "media type not persisted");
            }
        });
    }

    /// A manifest by digest: from the stores, else fetched once (bytes and media type) for
    /// every concurrent caller, verified, stored and linked to the key's repository.
    pub async fn manifest<F, Fut>(
        self: &Arc<Self>,
        key: &BlobKey,
        fetch: F,
    ) -> Result<(Bytes, String)>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(Bytes, String)>> + Send + 'static,
    {
        if let Some(m) = self.cached_manifest(&key.digest).await? {
            return Ok(m);
        }
        // Not `blob_bytes`: a blob stored under this digest without a media type (a layer
        // asked for as a manifest) must not pass for a manifest; the upstream decides.
        let (this, k) = (self.clone(), key.clone());
        let bytes = Box::pin(
            self.fetch_blob_once(Some("manifest"), key, move || async move {
                let (bytes, mt) = fetch().await?;
                // The media type is kept only for the right bytes, and before any waiter of
                // this fetch reads it.
                let d = &k.digest;
                let actual = Digest::of(&bytes);
                if &actual != d {
                    return Err(Error::upstream_invalid(format!(
                        "manifest {d} from upstream hashes to {actual}: refused"
                    )));
                }
                // The repository's link and the bytes are stored by `fetch_blob_once` (link
                // first; known in memory from now, so `add_manifest` does not write it a
                // second time); the references and the media type here.
                this.links.remember(&k.upstream, &k.repo, d);
                this.links
                    .add_manifest(&k.upstream, &k.repo, d, &bytes)
                    .await;
                this.note_media_type(d, &mt).await;
                Ok(bytes)
            }),
        )
        .await?;
        match self.known_value(&media_type_name(&key.digest)).await {
            Some(v) => Ok((bytes, String::from_utf8_lossy(&v).into_owned())),
            None => Err(Error::internal(
                "a manifest was fetched without its media type",
            )),
        }
    }

    // ------------------------------------------------------------------ derived values

    /// A value built from cached bytes (a parsed index, an index view): from memory while
    /// fresh (`ttl` `None`: until evicted), else built once for every concurrent caller and
    /// kept within the derived memory budget (`weigh` says its size).
    pub async fn derived<T, F, Fut>(
        &self,
        key: String,
        ttl: Option<Duration>,
        weigh: fn(&T) -> u64,
        build: F,
    ) -> Result<Arc<T>>
    where
        T: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Arc<T>>> + Send + 'static,
    {
        if let Some(v) = self.derived_fresh::<T>(&key, ttl) {
            return Ok(v);
        }
        // Boxed: the build's state stays off the fresh path's future.
        let built = Box::pin(self.derived_flight.run(key.clone(), async move {
            let v = build().await?;
            Ok(v as Arc<dyn Any + Send + Sync>)
        }))
        .await?;
        let v = built
            .downcast::<T>()
            .map_err(|_| Error::internal(format!("derived value {key:?} has another type")))?;
        self.put_derived(key, v.clone(), weigh(&v));
        Ok(v)
    }

    /// How long ago the derived value held under `key` was built.
    pub fn derived_age(&self, key: &str) -> Option<Duration> {
        self.derived.get(key).map(|e| e.at.elapsed())
    }

    /// A derived value held now, whatever its age.
    pub fn derived_any_age<T: Send + Sync + 'static>(&self, key: &str) -> Option<Arc<T>> {
        self.derived_fresh(key, None)
    }

    fn derived_fresh<T: Send + Sync + 'static>(
        &self,
        key: &str,
        ttl: Option<Duration>,
    ) -> Option<Arc<T>> {
        let e = self.derived.get(key)?;
        if ttl.is_some_and(|ttl| e.at.elapsed() >= ttl) {
            return None;
        }
        e.value.downcast::<T>().ok()
    }

    /// Puts a derived value in memory (for a fetch that built it on the way).
    pub fn put_derived<T: Send + Sync + 'static>(&self, key: String, value: Arc<T>, weight: u64) {
        self.derived.insert(
            key,
            DerivedEntry {
                value,
                at: Instant::now(),
                weight: u32::try_from(weight).unwrap_or(u32::MAX),
            },
        );
        // Evict now, not at some later maintenance: the point is to give the memory back.
        self.derived.run_pending_tasks();
        crate::metrics::index_memory(self.derived.weighted_size());
    }

    /// Bytes held by derived values.
    pub fn derived_bytes(&self) -> u64 {
        self.derived.run_pending_tasks();
        self.derived.weighted_size()
    }
}

/// The name under which a manifest's media type is kept.
fn media_type_name(d: &Digest) -> RefName {
    RefName::new(["mediatype".to_string(), d.text()])
}

/// Whether a failure is remembered for `negative_ttl`: upstream failures (but not an offline
/// refusal, which costs nothing to repeat) and "no such thing" answers.
fn negative(e: &Error) -> bool {
    (e.is_upstream() && e.kind() != Kind::UpstreamOffline)
        || matches!(
            e.kind(),
            Kind::BlobUnknown | Kind::ManifestUnknown | Kind::NameUnknown
        )
}

mod stream;
mod values;

#[cfg(test)]
mod tests;
