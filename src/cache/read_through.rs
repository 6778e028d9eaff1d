//! The read-through cache: the one place that knows how an answer is found. A resolver says
//! only how to fetch (and verify) one thing from its upstream and how long it stays fresh;
//! this module owns the rest, the same way for every kind of upstream:
//!
//! - named values (`value`): memory while fresh, else one fetch for all concurrent callers
//!   (single-flight), remembered in memory and persisted as a ref; a failure is remembered
//!   briefly (negative cache), and while the upstream fails the last known value is served,
//!   marked stale (`Served::stale`), without asking again for `refresh_backoff`;
//! - whole blobs by digest (`blob_bytes`, `manifest`): memory, then the store, else fetched
//!   once, verified against the digest, stored, and linked to the repository that fetched it;
//! - streamed blobs (`stream_blob`): a cold fetch streams to its first client while it is
//!   verified and written; concurrent requests (whole or a `Range`) read the same fetch
//!   through its `Tee`; the last chunk waits for the digest check;
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
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, Notify};
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

    // ------------------------------------------------------------------ named values

    /// A named value: from memory while fresh; else fetched once for every concurrent caller
    /// (`fetch` gets the last known value, to revalidate against), remembered and persisted.
    /// While the upstream fails, the last known value is served stale and the upstream is left
    /// alone for `refresh_backoff`; with nothing to fall back on, the failure is the answer,
    /// remembered for `negative_ttl`. Answers that say "no such thing" are never replaced by a
    /// stale copy.
    pub async fn value<F, Fut>(
        &self,
        name: &RefName,
        freshness: Freshness,
        fetch: F,
    ) -> Result<Served<Bytes>>
    where
        F: FnOnce(Option<Bytes>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes>> + Send + 'static,
    {
        if let Some(s) = self.values.get(name).await {
            let fresh = !s.unconfirmed && freshness.ttl.is_none_or(|ttl| s.at.elapsed() < ttl);
            if fresh {
                return Ok(Served::fresh_for(s.value, freshness.left(s.at)));
            }
            let backing_off = self
                .backoff
                .get(name)
                .is_some_and(|t| t.elapsed() < self.settings.refresh_backoff);
            if backing_off {
                crate::metrics::stale_served(freshness.kind);
                return Ok(Served::stale(s.value));
            }
        }
        let failure_key = format!("value\0{name}");
        if let Some(e) = self.failed(&failure_key) {
            return Err(e);
        }
        let (refs, values, backoff, failing, failures, background) = (
            self.refs.clone(),
            self.values.clone(),
            self.backoff.clone(),
            self.failing.clone(),
            self.failures.clone(),
            self.background.clone(),
        );
        let n = name.clone();
        let served = self
            .value_flight
            .run(name.clone(), async move {
                let known = match values.get(&n).await {
                    Some(s) => Some(s.value),
                    None => refs.get(&n).await.ok().flatten(),
                };
                if let (None, Some(v)) = (freshness.ttl, &known) {
                    values
                        .insert(
                            n.clone(),
                            Stamped::new(v.clone()),
                        )
                        .await;
                    return Ok(Served::fresh(v.clone()));
                }
                match fetch(known.clone()).await {
                    Ok(v) => {
                        let changed = known.as_ref() != Some(&v);
                        values.insert(n.clone(), Stamped::new(v.clone())).await;
                        backoff.invalidate(&n);
                        failing.invalidate(&n);
                        if changed {
                            // Persisted off the answer's path: this process has it in memory;
                            // a failed write costs a restart one upstream request.
                            let (refs, n, v) = (refs.clone(), n.clone(), v.clone());
                            background.spawn(async move {
                                if let Err(e) = refs.put(&n, &v).await {
                                    tracing::warn!(r#ref = %n, error = %e, "not persisted; a restart will ask the upstream again");
                                }
                            });
                        }
                        Ok(Served::fresh_for(v, freshness.ttl))
                    }
                    Err(e) if e.is_upstream() && known.is_some() => {
                        tracing::warn!(r#ref = %n, kind = freshness.kind, error = %e, "refresh failed; serving the last known copy");
                        let known = known.expect("checked");
                        if values.get(&n).await.is_none() {
                            // Known from the ref store only: keep it in memory, unconfirmed,
                            // so the backoff below answers from memory.
                            let mut s = Stamped::new(known.clone());
                            s.unconfirmed = true;
                            values.insert(n.clone(), s).await;
                        }
                        let since = failing.get(&n).map_or_else(Instant::now, |(t, _)| t);
                        failing.insert(n.clone(), (since, e.message().to_string()));
                        backoff.insert(n, Instant::now());
                        Ok(Served::stale(known))
                    }
                    Err(e) => {
                        if freshness.remember_failures && negative(&e) {
                            failures.insert(failure_key, (e.clone(), Instant::now()));
                        }
                        Err(e)
                    }
                }
            })
            .await?;
        if served.stale {
            crate::metrics::stale_served(freshness.kind);
        }
        Ok(served)
    }

    /// As `value`, decoded with `decode`; the decoded form is kept in memory beside the bytes,
    /// so a fresh answer costs no decoding.
    pub async fn value_as<T, F, Fut>(
        &self,
        name: &RefName,
        freshness: Freshness,
        decode: fn(&[u8]) -> Result<T>,
        fetch: F,
    ) -> Result<Served<Arc<T>>>
    where
        T: Send + Sync + 'static,
        F: FnOnce(Option<Bytes>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes>> + Send + 'static,
    {
        if let Some(s) = self.values.get(name).await {
            if !s.unconfirmed && freshness.ttl.is_none_or(|ttl| s.at.elapsed() < ttl) {
                let left = freshness.left(s.at);
                if let Some(t) = s.decoded.and_then(|d| d.downcast::<T>().ok()) {
                    return Ok(Served::fresh_for(t, left));
                }
            }
        }
        let served = self.value(name, freshness, fetch).await?;
        let t = Arc::new(decode(&served.value)?);
        if let Some(mut s) = self.values.get(name).await {
            if s.value == served.value {
                s.decoded = Some(t.clone());
                self.values.insert(name.clone(), s).await;
            }
        }
        Ok(served.map(|_| t))
    }

    /// Stores a named value now (for a fetch that learnt it on the side, such as a tag
    /// resolved by the GET that fetched its manifest).
    pub async fn put_value(&self, name: &RefName, value: Bytes) {
        self.values
            .insert(name.clone(), Stamped::new(value.clone()))
            .await;
        if let Err(e) = self.refs.put(name, &value).await {
            tracing::warn!(r#ref = %name, error = %e, "not persisted; a restart will ask the upstream again");
        }
    }

    /// What is known of a named value without asking anyone: how long ago it was last
    /// confirmed (`None`: never by this process), and since when its refreshes fail, with the
    /// last error.
    pub async fn value_state(&self, name: &RefName) -> ValueState {
        let age = self
            .values
            .get(name)
            .await
            .filter(|s| !s.unconfirmed)
            .map(|s| s.at.elapsed());
        let failing = self
            .failing
            .get(name)
            .map(|(since, e)| (since.elapsed(), e));
        ValueState { age, failing }
    }

    /// A named value known to this process or an earlier one, however old, without fetching.
    pub async fn known_value(&self, name: &RefName) -> Option<Bytes> {
        if let Some(s) = self.values.get(name).await {
            return Some(s.value);
        }
        self.refs.get(name).await.ok().flatten()
    }

    // ------------------------------------------------------------------ whole blobs

    /// Whether the stores hold a blob (no link check: the caller decides who may read it).
    pub async fn has_blob(&self, d: &Digest) -> Result<bool> {
        Ok(self.blobs.stat(d).await?.is_some())
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
        self.fetch_blob_once(None, key, fetch).await
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
                let _claim = match this.blobs.store().claim(&k.digest).await {
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
                // linked first: see `manifest`
                this.links
                    .add_durable(&k.upstream, &k.repo, &k.digest)
                    .await;
                this.blobs.put(&k.digest, bytes.clone()).await?;
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

    /// Stores a manifest fetched and verified elsewhere (a GET by tag), with its media type.
    pub async fn put_manifest(
        self: &Arc<Self>,
        d: &Digest,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<()> {
        self.blobs.put(d, bytes).await?;
        let (this, d, mt) = (self.clone(), d.clone(), media_type.to_string());
        // The media type ref is written off the answer's path; the value is in memory now.
        this.values
            .insert(media_type_name(&d), Stamped::new(Bytes::from(mt.clone())))
            .await;
        self.background.spawn(async move {
            if let Err(e) = this.refs.put(&media_type_name(&d), mt.as_bytes()).await {
                tracing::warn!(digest = %d, error = %e, "media type not persisted");
            }
        });
        Ok(())
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
        let bytes = self
            .fetch_blob_once(Some("manifest"), key, move || async move {
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
                // Linked before it is stored: a request arriving between the two must find
                // the repository's link with the bytes, or it asks the upstream again. A link
                // without bytes only means a fetch.
                this.links.add_durable(&k.upstream, &k.repo, d).await;
                this.links
                    .add_manifest(&k.upstream, &k.repo, d, &bytes)
                    .await;
                this.put_manifest(d, bytes.clone(), &mt).await?;
                Ok(bytes)
            })
            .await?;
        match self.known_value(&media_type_name(&key.digest)).await {
            Some(v) => Ok((bytes, String::from_utf8_lossy(&v).into_owned())),
            None => Err(Error::internal(
                "a manifest was fetched without its media type",
            )),
        }
    }

    // ------------------------------------------------------------------ streamed blobs

    /// A blob for serving: from the stores, else streamed from a fetch shared by every
    /// concurrent request for `key` (and linked to its repository when it completes). A
    /// `Range` reads the shared fetch from its offset as the bytes arrive.
    pub async fn stream_blob<F, Fut>(
        self: &Arc<Self>,
        key: &BlobKey,
        range: Option<ByteRange>,
        max_len: u64,
        fetch: F,
    ) -> Result<Streamed>
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(u64, BodyStream)>> + Send + 'static,
    {
        if let Some(data) = self.blobs.read_near(&key.digest).await? {
            return Ok(Streamed::Data(data));
        }
        // A range of a blob only a shared store holds: a ranged read of that store, not the
        // whole blob streamed from its start (ranges past `RANGED_READ_MAX` still stream).
        if let Some(r) = range {
            if let Some(len) = self.blobs.store().stat(&key.digest).await? {
                if let Some((start, end)) = r.resolve(len) {
                    if end - start <= RANGED_READ_MAX {
                        if let Some(bytes) = self
                            .blobs
                            .store()
                            .read_range(&key.digest, start, end)
                            .await?
                        {
                            if bytes.len() as u64 == end - start {
                                let (tx, rx) = mpsc::channel(1);
                                let _ = tx.try_send(Ok(bytes));
                                return Ok(Streamed::Partial {
                                    len,
                                    start,
                                    end,
                                    rx,
                                });
                            }
                        }
                    }
                }
            }
        }
        let failure_key = key.failure("blob");
        // A follower whose leader could not cache (full disk) tries once more as a leader.
        for _ in 0..2 {
            if let Some(e) = self.failed(&failure_key) {
                return Err(e);
            }
            let (len_tx, len_rx) = oneshot::channel();
            let (tx, rx) = mpsc::channel(16);
            let (this, k, fk, f) = (
                self.clone(),
                key.clone(),
                failure_key.clone(),
                fetch.clone(),
            );
            let (leader, done) = self.stream_flight.start(key.clone(), async move {
                let result = this.fetch_stream(&k, max_len, f, len_tx, tx).await;
                if let Err(e) = &result {
                    this.remember_failure(fk, e);
                }
                result
            });
            if leader {
                match len_rx.await {
                    Ok(Ok(len)) => match range {
                        None => return Ok(Streamed::Stream(len, rx)),
                        // A range reads the shared fetch like any follower (dropping the
                        // leader's own channel, which must not hold the fetch up); without a
                        // tee (a big blob the disk refused) the whole blob goes, as RFC 9110
                        // allows.
                        Some(r) => {
                            return match self.tee_reader(key, Some(r))? {
                                Some(a) => Ok(a),
                                None => Ok(Streamed::Stream(len, rx)),
                            };
                        }
                    },
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {} // the fetch ended before it had a length; its result says why
                }
            } else {
                drop(rx);
            }
            // A follower streams the leader's bytes as they arrive through the fetch's tee;
            // without one it waits for the fetch and reads the stores.
            let mut done = done;
            loop {
                let added = self.tee_added.notified();
                tokio::pin!(added);
                added.as_mut().enable();
                if let Some(a) = self.tee_reader(key, range)? {
                    return Ok(a);
                }
                tokio::select! {
                    r = &mut done => {
                        r?;
                        break;
                    }
                    _ = added => {}
                }
            }
            if let Some(data) = self.blobs.read(&key.digest).await? {
                return Ok(Streamed::Data(data));
            }
        }
        Err(Error::internal(format!(
            "blob {} was fetched but could not be cached",
            key.digest
        )))
    }

    /// Waits for the streamed fetch of `key` (if one runs) to end, durable commit included:
    /// its readers are answered before the commit, a command about to exit must not be.
    pub async fn settled(&self, key: &BlobKey) -> Result<()> {
        match self.stream_flight.running(key) {
            Some(run) => run.await,
            None => Ok(()),
        }
    }

    /// A reader of the fetch in flight for `key`, for the whole blob or a range of it.
    fn tee_reader(&self, key: &BlobKey, range: Option<ByteRange>) -> Result<Option<Streamed>> {
        let tee = self
            .tees
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        let Some(tee) = tee.filter(|t| t.is_open()) else {
            return Ok(None);
        };
        let len = tee.len();
        Ok(Some(match range {
            None => Streamed::Stream(len, tee.reader()),
            Some(r) => {
                let (start, end) = r
                    .resolve(len)
                    .ok_or_else(|| Error::range_not_satisfiable(len))?;
                Streamed::Partial {
                    len,
                    start,
                    end,
                    rx: tee.reader_range(start, end),
                }
            }
        }))
    }

    async fn fetch_stream<F, Fut>(
        &self,
        key: &BlobKey,
        max_len: u64,
        fetch: F,
        len_tx: oneshot::Sender<Result<u64>>,
        tx: mpsc::Sender<Result<Bytes>>,
    ) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(u64, BodyStream)>>,
    {
        let d = &key.digest;
        // Another replica sharing the store may have fetched it (or be fetching it: the
        // claim waits): then it streams from the shared store, verified like an upstream's
        // bytes, through the same tee.
        // What it fetched for another repository is not this one's to name: then the
        // upstream decides, as if the store did not hold it.
        let (_claim, shared) = match self.blobs.store().claim(d).await {
            Claim::Present if self.links.has(&key.upstream, &key.repo, d).await => {
                match self.blobs.store().stream(d).await? {
                    Some(s) => (None, Some(s)),
                    // it is there but cannot be streamed: end without a length, so every
                    // request here reads it from the store whole
                    None => return Ok(()),
                }
            }
            Claim::Present => (None, None),
            Claim::Mine(guard) => (guard, None),
        };
        let started = async {
            let (len, body) = match shared {
                Some(s) => s,
                None => fetch().await?,
            };
            if len > max_len {
                return Err(Error::upstream_invalid(format!(
                    "blob {d} is {len} bytes, over the {max_len} byte limit"
                )));
            }
            let writer = self.blobs.begin(d).await?;
            Ok((len, body, writer))
        }
        .await;
        let (len, body, writer) = match started {
            Ok(x) => x,
            Err(e) => {
                let _ = len_tx.send(Err(e.clone()));
                return Err(e);
            }
        };
        // Concurrent requests for this blob read the same bytes as they arrive. The tee is in
        // place before the leader hears the length, so a leader with a range finds it.
        let file = writer.partial();
        let tee = (file.is_some() || len <= TEE_MEMORY_MAX).then(|| {
            let t = Arc::new(Tee::new(len, file, TEE_MEMORY_MAX));
            self.tees
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone(), t.clone());
            self.tee_added.notify_waiters();
            t
        });
        let _ = len_tx.send(Ok(len));
        let result = copy_verified(body, writer, key, &self.links, len, tx, tee.as_deref()).await;
        if let Some(t) = &tee {
            t.finish(result.as_ref().map(|_| ()).map_err(Clone::clone));
            self.tees
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
        }
        result
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
        let built = self
            .derived_flight
            .run(key.clone(), async move {
                let v = build().await?;
                Ok(v as Arc<dyn Any + Send + Sync>)
            })
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
    RefName::new(["mediatype", &d.to_string()])
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

/// Copies a blob body to the store and to its first client (and the tee's followers),
/// checking its length and digest (and linking it to the key's repository once it checks): the newest chunk is held back until the digest checks, so
/// a wrong blob never reaches anyone complete. The client may go away: the copy goes on to
/// fill the cache. A store that refuses the write does not stop the stream.
async fn copy_verified(
    mut body: BodyStream,
    mut writer: Box<dyn BlobWrite>,
    key: &BlobKey,
    links: &Links,
    len: u64,
    tx: mpsc::Sender<Result<Bytes>>,
    tee: Option<&Tee>,
) -> Result<()> {
    let d = &key.digest;
    let mut held: Option<Bytes> = None;
    let mut got = 0u64;
    // Whether the leader's client still reads `tx`. A client that went away (or a leader that
    // reads through the tee instead) must never hold the fetch up.
    let mut client = !tx.is_closed();
    let fail = |e: Error, tx: &mpsc::Sender<Result<Bytes>>| {
        let _ = tx.try_send(Err(e.clone()));
        Err(e)
    };
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return fail(e, &tx),
        };
        got += chunk.len() as u64;
        if got > len {
            return fail(
                Error::upstream_invalid(format!("blob {d}: upstream sent more than its length")),
                &tx,
            );
        }
        if let Err(e) = writer.write(&chunk).await {
            return fail(e, &tx);
        }
        if let Some(prev) = held.replace(chunk) {
            if let Some(t) = tee {
                t.release(prev.clone());
            }
            if client && tx.send(Ok(prev)).await.is_err() {
                client = false; // keep filling the cache for the next client
            }
        }
    }
    if got != len {
        return fail(
            Error::upstream_unavailable(format!(
                "blob {d}: upstream body ended after {got} of {len} bytes"
            )),
            &tx,
        );
    }
    // Verified bytes may go to the client before the durable commit (fsync, rename).
    if let Err(e) = writer.verify() {
        return fail(e, &tx);
    }
    // The upstream served it for this repository: it may be named there from now on
    // (linked before the commit, so whoever finds the bytes finds the link).
    links.add_durable(&key.upstream, &key.repo, d).await;
    if let Some(t) = tee {
        if let Some(last) = &held {
            t.release(last.clone());
        }
        // Followers end with the verified bytes too, not after the durable commit.
        t.finish(Ok(()));
    }
    if let (true, Some(last)) = (client, held) {
        let _ = tx.send(Ok(last)).await;
    }
    drop(tx);
    if let Err(e) = writer.commit().await {
        // The client got verified bytes; only the cache missed out (e.g. a full disk).
        tracing::warn!(digest = %d, error = %e, "blob served but not cached");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{BlobStore, DiskRefs, DiskStore, MemoryStore};
    use std::sync::atomic::{AtomicUsize, Ordering};

    async fn cache(dir: &std::path::Path) -> Arc<Cache> {
        let disk = DiskStore::open(dir, 1 << 30).await.unwrap();
        let blobs = BlobCache::new(MemoryStore::new(16 << 20), Arc::new(disk));
        let refs: Arc<dyn RefStore> = Arc::new(DiskRefs::open(dir).unwrap());
        let settings = Settings {
            negative_ttl: Duration::from_secs(1),
            refresh_backoff: Duration::from_secs(10),
            derived_budget: 1 << 20,
        };
        Arc::new(Cache::new(blobs, refs, settings))
    }

    fn name() -> RefName {
        RefName::new(["tag", "up", "a/b", "v1"])
    }

    /// A fetch that counts its runs and answers what `answer` says for that run.
    fn counting(
        runs: &Arc<AtomicUsize>,
        answer: impl Fn(usize, Option<Bytes>) -> Result<Bytes> + Send + Sync + 'static,
    ) -> impl FnOnce(Option<Bytes>) -> futures::future::BoxFuture<'static, Result<Bytes>> {
        let runs = runs.clone();
        move |known| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let n = runs.fetch_add(1, Ordering::SeqCst);
                answer(n, known)
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_value_is_fetched_once_for_all_callers_and_stays_fresh_for_its_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path()).await;
        let runs = Arc::new(AtomicUsize::new(0));
        let fresh = Freshness::for_(Duration::from_secs(60), "tag");
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let (c, runs) = (c.clone(), runs.clone());
                tokio::spawn(async move {
                    c.value(
                        &name(),
                        fresh,
                        counting(&runs, |_, _| Ok(Bytes::from("d1"))),
                    )
                    .await
                })
            })
            .collect();
        for h in calls {
            let s = h.await.unwrap().unwrap();
            assert_eq!((s.value.as_ref(), s.stale), (&b"d1"[..], false));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "single flight");
        tokio::time::advance(Duration::from_secs(59)).await;
        c.value(&name(), fresh, counting(&runs, |_, _| Ok(Bytes::from("x"))))
            .await
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1, "fresh for the ttl");
        tokio::time::advance(Duration::from_secs(2)).await;
        let s = c
            .value(
                &name(),
                fresh,
                counting(&runs, |_, known| {
                    assert_eq!(known.as_deref(), Some(&b"d1"[..]), "revalidates against it");
                    Ok(Bytes::from("d2"))
                }),
            )
            .await
            .unwrap();
        assert_eq!(s.value.as_ref(), b"d2");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_upstream_gets_the_last_known_value_marked_stale_then_a_rest() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path()).await;
        let runs = Arc::new(AtomicUsize::new(0));
        let fresh = Freshness::for_(Duration::from_secs(1), "tag");
        c.value(
            &name(),
            fresh,
            counting(&runs, |_, _| Ok(Bytes::from("d1"))),
        )
        .await
        .unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        let down = |_, _| Err(Error::upstream_unavailable("down"));
        // a leader and its followers all learn the answer is stale
        let calls: Vec<_> = (0..10)
            .map(|_| {
                let (c, runs) = (c.clone(), runs.clone());
                tokio::spawn(async move { c.value(&name(), fresh, counting(&runs, down)).await })
            })
            .collect();
        for h in calls {
            let s = h.await.unwrap().unwrap();
            assert_eq!((s.value.as_ref(), s.stale), (&b"d1"[..], true));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        // the upstream is left alone for refresh_backoff
        tokio::time::advance(Duration::from_secs(9)).await;
        let s = c
            .value(&name(), fresh, counting(&runs, down))
            .await
            .unwrap();
        assert!(s.stale);
        assert_eq!(runs.load(Ordering::SeqCst), 2, "no fetch while backing off");
        tokio::time::advance(Duration::from_secs(2)).await;
        let s = c
            .value(
                &name(),
                fresh,
                counting(&runs, |_, _| Ok(Bytes::from("d2"))),
            )
            .await
            .unwrap();
        assert_eq!((s.value.as_ref(), s.stale), (&b"d2"[..], false));
        // "no such thing" is an answer, not a failure: never replaced by the stale copy
        tokio::time::advance(Duration::from_secs(2)).await;
        let e = c
            .value(
                &name(),
                fresh,
                counting(&runs, |_, _| {
                    Err(Error::new(Kind::ManifestUnknown, "tag deleted upstream"))
                }),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind(), Kind::ManifestUnknown);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_with_nothing_known_is_remembered_for_the_negative_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path()).await;
        let runs = Arc::new(AtomicUsize::new(0));
        let fresh = Freshness::for_(Duration::from_secs(60), "tag").remembering_failures();
        for _ in 0..3 {
            let e = c
                .value(
                    &name(),
                    fresh,
                    counting(&runs, |_, _| Err(Error::upstream_unavailable("down"))),
                )
                .await
                .unwrap_err();
            assert_eq!(e.message(), "down");
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "answered from the negative cache"
        );
        tokio::time::advance(Duration::from_millis(1100)).await;
        c.value(&name(), fresh, counting(&runs, |_, _| Ok(Bytes::from("d"))))
            .await
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_immutable_value_is_fetched_once_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let once = Freshness::immutable("manifest");
        {
            let c = cache(dir.path()).await;
            c.value(&name(), once, counting(&runs, |_, _| Ok(Bytes::from("m"))))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await; // the ref is written behind
        }
        let c = cache(dir.path()).await;
        let s = c
            .value(
                &name(),
                once,
                counting(&runs, |_, _| Ok(Bytes::from("other"))),
            )
            .await
            .unwrap();
        assert_eq!(s.value.as_ref(), b"m");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_blob_is_fetched_once_verified_stored_and_linked() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path()).await;
        let good = Bytes::from_static(b"chart bytes");
        let key = BlobKey::new("up", "demo", &Digest::of(&good));
        let runs = Arc::new(AtomicUsize::new(0));
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let (c, key, runs, good) = (c.clone(), key.clone(), runs.clone(), good.clone());
                tokio::spawn(async move {
                    c.blob_bytes(&key, move || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        Ok(good)
                    })
                    .await
                })
            })
            .collect();
        for h in calls {
            assert_eq!(h.await.unwrap().unwrap(), good);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(c.links().has("up", "demo", &key.digest).await);
        assert!(!c.links().has("up", "other", &key.digest).await);
        // wrong bytes under a digest: refused and nothing stored
        let other = BlobKey::new("up", "demo", &Digest::of(b"expected"));
        let e = c
            .blob_bytes(&other, || async { Ok(Bytes::from_static(b"wrong")) })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), Kind::UpstreamInvalid);
        assert!(!c.has_blob(&other.digest).await.unwrap());
        let again = c
            .blob_bytes(&other, || async { Ok(Bytes::from_static(b"expected")) })
            .await;
        assert!(again.is_ok(), "whole blobs are asked for again at once");
    }

    /// A shared store where another replica stored a blob while this one was looking:
    /// hidden from the first look, `Present` to the claim.
    struct StoredMeanwhile {
        inner: DiskStore,
        hidden: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl BlobStore for StoredMeanwhile {
        async fn stat(&self, d: &Digest) -> Result<Option<u64>> {
            if self.hidden.load(Ordering::SeqCst) {
                return Ok(None);
            }
            self.inner.stat(d).await
        }
        async fn get(&self, d: &Digest) -> Result<Option<Bytes>> {
            if self.hidden.load(Ordering::SeqCst) {
                return Ok(None);
            }
            self.inner.get(d).await
        }
        async fn put(&self, d: &Digest, b: Bytes) -> Result<()> {
            self.inner.put(d, b).await
        }
        async fn read(&self, d: &Digest) -> Result<Option<BlobData>> {
            if self.hidden.load(Ordering::SeqCst) {
                return Ok(None);
            }
            self.inner.read(d).await
        }
        async fn read_range(&self, d: &Digest, s: u64, e: u64) -> Result<Option<Bytes>> {
            self.inner.read_range(d, s, e).await
        }
        async fn begin(&self, d: &Digest) -> Result<Box<dyn BlobWrite>> {
            self.inner.begin(d).await
        }
        async fn delete(&self, d: &Digest) -> Result<()> {
            self.inner.delete(d).await
        }
        async fn list(&self) -> Result<Vec<(Digest, u64)>> {
            self.inner.list().await
        }
        async fn put_file(&self, d: &Digest, p: &std::path::Path) -> Result<()> {
            self.inner.put_file(d, p).await
        }
        fn usage(&self) -> (u64, u64) {
            self.inner.usage()
        }
        async fn claim(&self, _d: &Digest) -> Claim {
            self.hidden.store(false, Ordering::SeqCst);
            Claim::Present
        }
    }

    /// What another replica fetched for one repository is not served to another repository
    /// that asked while it was being stored: that repository's upstream decides.
    #[tokio::test]
    async fn a_blob_another_replica_stored_for_another_repository_is_not_named_here() {
        let dir = tempfile::tempdir().unwrap();
        let secret = Bytes::from_static(b"protected layer");
        let d = Digest::of(&secret);
        let inner = DiskStore::open(dir.path(), 1 << 30).await.unwrap();
        inner.put(&d, secret.clone()).await.unwrap();
        let store = Arc::new(StoredMeanwhile {
            inner,
            hidden: std::sync::atomic::AtomicBool::new(true),
        });
        let blobs = BlobCache::new(MemoryStore::new(16 << 20), store.clone());
        let refs: Arc<dyn RefStore> = Arc::new(DiskRefs::open(dir.path()).unwrap());
        let settings = Settings {
            negative_ttl: Duration::from_secs(1),
            refresh_backoff: Duration::from_secs(10),
            derived_budget: 1 << 20,
        };
        let c = Arc::new(Cache::new(blobs, refs, settings));
        let key = BlobKey::new("public", "other", &d);
        let e = c
            .blob_bytes(&key, || async {
                Err(Error::new(Kind::BlobUnknown, "not in this repository"))
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), Kind::BlobUnknown, "the upstream decided");
        assert!(!c.links().has("public", "other", &d).await);
        // linked (the upstream served it here), the stored copy is what it gets
        c.links().add_durable("public", "mine", &d).await;
        store.hidden.store(true, Ordering::SeqCst);
        let key = BlobKey::new("public", "mine", &d);
        let got = c
            .blob_bytes(&key, || async { Err(Error::upstream_unavailable("down")) })
            .await
            .unwrap();
        assert_eq!(got, secret);
    }

    #[tokio::test]
    async fn a_streamed_blob_is_shared_and_ranges_read_the_same_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path()).await;
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let key = BlobKey::new("up", "img", &Digest::of(&data));
        let runs = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(data.clone());
        let fetch = {
            let (runs, body) = (runs.clone(), body.clone());
            move || {
                let (runs, body) = (runs.clone(), body.clone());
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let chunks: Vec<Result<Bytes>> = body
                        .chunks(10_000)
                        .map(|c| Ok(Bytes::copy_from_slice(c)))
                        .collect();
                    let stream = futures::stream::iter(chunks)
                        .then(|c| async move {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            c
                        })
                        .boxed();
                    Ok((body.len() as u64, stream as BodyStream))
                }
            }
        };
        async fn drain(mut rx: mpsc::Receiver<Result<Bytes>>) -> Vec<u8> {
            let mut out = Vec::new();
            while let Some(c) = rx.recv().await {
                out.extend_from_slice(&c.unwrap());
            }
            out
        }
        let calls: Vec<_> = (0..6)
            .map(|i| {
                let (c, key, fetch) = (c.clone(), key.clone(), fetch.clone());
                tokio::spawn(async move {
                    let range = (i % 2 == 1).then_some(ByteRange::FromTo(300_000, 300_099));
                    match c.stream_blob(&key, range, u64::MAX, fetch).await.unwrap() {
                        Streamed::Stream(_, rx) => (false, drain(rx).await),
                        Streamed::Partial { start, end, rx, .. } => {
                            assert_eq!((start, end), (300_000, 300_100));
                            (true, drain(rx).await)
                        }
                        Streamed::Data(_) => panic!("cold: nothing cached yet"),
                    }
                })
            })
            .collect();
        for h in calls {
            let (partial, got) = h.await.unwrap();
            if partial {
                assert_eq!(got, &data[300_000..300_100]);
            } else {
                assert_eq!(got, data);
            }
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "one fetch for every request"
        );
        assert!(c.links().has("up", "img", &key.digest).await);
        // then from the store
        let mut cached = false;
        for _ in 0..50 {
            if let Streamed::Data(_) = c
                .stream_blob(&key, None, u64::MAX, fetch.clone())
                .await
                .unwrap()
            {
                cached = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(cached);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn derived_values_are_built_once_expire_and_stay_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path()).await;
        let builds = Arc::new(AtomicUsize::new(0));
        let build = |n: usize| {
            let builds = builds.clone();
            move || async move {
                builds.fetch_add(1, Ordering::SeqCst);
                Ok(Arc::new(vec![0u8; n]))
            }
        };
        let weigh: fn(&Vec<u8>) -> u64 = |v| v.len() as u64;
        let ttl = Some(Duration::from_secs(60));
        let a = c
            .derived("view\0a".into(), ttl, weigh, build(1000))
            .await
            .unwrap();
        let b = c
            .derived("view\0a".into(), ttl, weigh, build(1000))
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(61)).await;
        c.derived("view\0a".into(), ttl, weigh, build(1000))
            .await
            .unwrap();
        assert_eq!(builds.load(Ordering::SeqCst), 2, "rebuilt after its ttl");
        // two values of 600 KiB in a 1 MiB budget: the older leaves memory
        c.derived("index\0x".into(), None, weigh, build(600 << 10))
            .await
            .unwrap();
        c.derived("index\0y".into(), None, weigh, build(600 << 10))
            .await
            .unwrap();
        assert!(c.derived_bytes() <= 1 << 20);
        assert!(c.derived_any_age::<Vec<u8>>("index\0x").is_none());
        assert!(c.derived_any_age::<Vec<u8>>("index\0y").is_some());
    }
}
