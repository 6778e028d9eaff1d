//! A helm upstream (legacy index.yaml repository), as the views need it: the parsed index kept
//! fresh (conditional refresh after `index_ttl`, the last good copy served while a refresh fails,
//! persisted so a restart or an air gap still has it), tag -> version resolution, verified chart
//! archives, and the chart's OCI artifact built by `convert`.
//! Calls `convert`, `cache` and `upstream`; knows nothing of HTTP statuses or routes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use url::Url;

use super::{ServedManifest, Stores};
use crate::cache::{BlobCache, Flight, Links, RefName, RefStore};
use crate::config::{Limits, Upstream};
use crate::convert::chart::{read_chart_metadata, ArchiveLimits};
use crate::convert::index::{parse_index, rewrite, CompactIndex, Entry, IndexLimits};
use crate::convert::manifest::{synthesize, BlobRef, OCI_MANIFEST};
use crate::convert::version;
use crate::error::{Error, Kind, Result};
use crate::ids::{Digest, Tag};
use crate::upstream::registry::parse_oci_url;
use crate::upstream::{redact, Fetch, OciChart, Registry, UpstreamClient, Validators};

/// How long to wait before retrying a failed index refresh while serving the stale copy.
const REFRESH_RETRY: Duration = Duration::from_secs(10);

/// One parsed index and what is derived from it. A refresh that finds the upstream unchanged
/// shares it rather than copying it. The full parsed index is not kept: only the bytes the
/// mirror serves and the compact entries serving needs.
pub struct IndexContent {
    /// What serving needs of each chart's entries, in index order.
    entries: CompactIndex,
    /// The mirror's index (URLs rewritten), in the upstream's `index_format`, and its strong
    /// ETag.
    pub served: Bytes,
    pub etag: String,
    validators: Validators,
    /// Each chart's tag list, computed on first use (a busy tags/list would otherwise parse
    /// and sort every version on every request).
    tag_lists: Mutex<HashMap<String, Arc<Vec<String>>>>,
    /// Heap bytes held, counted against `cache.max_index_memory_bytes`.
    heap: u64,
}

impl IndexContent {
    /// The index's entries (chart -> versions).
    pub fn entries(&self) -> &CompactIndex {
        &self.entries
    }

    /// Heap bytes this index holds in memory.
    pub fn heap_bytes(&self) -> u64 {
        self.heap
    }
}

/// The index as last seen, and how fresh that is.
pub struct IndexState {
    pub content: Arc<IndexContent>,
    fetched_at: Instant,
    /// True when this copy came from disk and was never confirmed by the upstream.
    from_disk: bool,
}

impl IndexState {
    fn new(content: Arc<IndexContent>, from_disk: bool) -> Arc<IndexState> {
        Arc::new(IndexState {
            content,
            fetched_at: Instant::now(),
            from_disk,
        })
    }
}

/// The parsed indexes of every helm upstream, within `cache.max_index_memory_bytes`. When a
/// new one does not fit, the least recently used others leave memory; they are read back
/// from their persisted copy (and revalidated) when next asked for. One index bigger than the
/// whole budget is refused with a message naming the setting.
pub struct IndexMemory {
    cache: moka::sync::Cache<String, Arc<IndexState>>,
    budget: u64,
}

impl IndexMemory {
    pub fn new(budget: u64) -> IndexMemory {
        IndexMemory {
            cache: moka::sync::Cache::builder()
                .max_capacity(budget)
                .weigher(|_, s: &Arc<IndexState>| {
                    u32::try_from(s.content.heap).unwrap_or(u32::MAX)
                })
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .eviction_listener(|key: Arc<String>, _, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        let upstream = key.split('\0').next().unwrap_or_default().to_string();
                        tracing::warn!(%upstream, "parsed index dropped from memory to stay within cache.max_index_memory_bytes; it is re-read from disk when asked for");
                    }
                })
                .build(),
            budget,
        }
    }

    /// Bytes of parsed indexes held now.
    pub fn used(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }
}

/// One chart version as an index snapshot names it (see `HelmUpstream::locate`).
#[derive(Clone, Debug)]
pub struct Located {
    pub chart: String,
    pub version: String,
    /// The archive's URL, absolute (or `oci://`).
    pub url: String,
    /// The index's digest of the archive, when it gives one.
    pub digest: Option<Digest>,
    /// The index's `digest` field as written (part of the manifest's ref name).
    index_digest: String,
    pub created: Option<String>,
}

/// What the index says a tag resolves to.
pub struct Resolved {
    pub version: String,
    /// True when `latest` was synthesised (no version literally named so).
    pub synthesized_latest: bool,
}

pub struct HelmUpstream {
    pub config: Upstream,
    client: Arc<UpstreamClient>,
    blobs: Arc<BlobCache>,
    refs: Arc<dyn RefStore>,
    links: Arc<Links>,
    limits: Limits,
    index_file: PathBuf,
    /// Where this upstream's parsed index lives (shared with the other helm upstreams).
    memory: Arc<IndexMemory>,
    memory_key: String,
    last_failure: Mutex<Option<Instant>>,
    index_flight: Flight<(), Arc<IndexState>>,
    archive_flight: Flight<String, (Bytes, Digest)>,
    manifest_flight: Flight<(String, String), ServedManifest>,
    /// URL -> digest for archives whose index entry had no digest.
    url_digests: Mutex<HashMap<String, Digest>>,
    manifests: moka::future::Cache<Digest, ServedManifest>,
}

impl HelmUpstream {
    pub fn new(
        config: Upstream,
        client: Arc<UpstreamClient>,
        stores: &Stores,
        limits: Limits,
    ) -> Result<HelmUpstream> {
        let (blobs, refs, links) = (
            stores.blobs.clone(),
            stores.refs.clone(),
            stores.links.clone(),
        );
        let (cache_dir, memory) = (&stores.dir, stores.indexes.clone());
        let dir = cache_dir.join("indexes");
        std::fs::create_dir_all(&dir)?;
        Ok(HelmUpstream {
            index_file: dir.join(format!("{}.yaml", config.name)),
            memory_key: format!(
                "{}\0{}\0{}",
                config.name,
                config.url,
                config.index_format.as_str()
            ),
            memory,
            config,
            client,
            blobs,
            refs,
            links,
            limits,
            last_failure: Mutex::new(None),
            index_flight: Flight::default(),
            archive_flight: Flight::default(),
            manifest_flight: Flight::default(),
            url_digests: Mutex::new(HashMap::new()),
            manifests: moka::future::Cache::builder().max_capacity(10_000).build(),
        })
    }

    fn current(&self) -> Option<Arc<IndexState>> {
        self.memory.cache.get(&self.memory_key)
    }

    fn install(&self, state: Arc<IndexState>) {
        self.memory.cache.insert(self.memory_key.clone(), state);
        // Evict now, not at some later maintenance: the point is to give the memory back.
        crate::metrics::index_memory(self.memory.used());
    }

    /// The index, refreshed if it is older than `index_ttl`. While the upstream fails, the last
    /// good index (from memory, else from disk) keeps being served.
    pub async fn index(self: &Arc<Self>) -> Result<Arc<IndexState>> {
        let current = self.current();
        if let Some(s) = &current {
            let fresh = !s.from_disk && s.fetched_at.elapsed() < self.config.index_ttl;
            let backing_off = self
                .last_failure
                .lock()
                .expect("poisoned")
                .is_some_and(|t| t.elapsed() < REFRESH_RETRY);
            if fresh || backing_off {
                return Ok(s.clone());
            }
        }
        let this = self.clone();
        match self
            .index_flight
            .run((), async move { this.refresh().await })
            .await
        {
            Ok(s) => Ok(s),
            Err(e) => {
                *self.last_failure.lock().expect("poisoned") = Some(Instant::now());
                match self.current() {
                    Some(stale) => {
                        crate::metrics::stale_served("index");
                        tracing::warn!(upstream = %self.config.name, error = %e, "index refresh failed; serving the last good index");
                        Ok(stale)
                    }
                    None => Err(e),
                }
            }
        }
    }

    fn index_url(&self) -> Result<Url> {
        self.config
            .url
            .join("index.yaml")
            .map_err(|e| Error::internal(format!("bad upstream URL: {e}")))
    }

    async fn refresh(self: Arc<Self>) -> Result<Arc<IndexState>> {
        if self.current().is_none() {
            if let Some(s) = self.load_persisted().await {
                self.install(s);
            }
        }
        let previous = self.current();
        let validators = previous
            .as_ref()
            .map(|s| s.content.validators.clone())
            .unwrap_or_default();
        let url = self.index_url()?;
        let name = self.config.name.as_str();
        let fetched = self
            .client
            .get(
                name,
                &url,
                "application/x-yaml, application/yaml, application/json, */*",
                &validators,
                self.limits.max_index_bytes,
            )
            .await;
        let state = match fetched {
            Ok(Fetch::NotModified) if previous.is_some() => {
                crate::metrics::index_refresh(name, "not_modified");
                IndexState::new(previous.expect("checked").content.clone(), false)
            }
            Ok(Fetch::Body { bytes, validators }) => {
                let content = self
                    .build_content(bytes.clone(), validators.clone())
                    .await
                    .inspect_err(|_| crate::metrics::index_refresh(name, "invalid"))?;
                crate::metrics::index_refresh(name, "updated");
                self.persist(&bytes, &validators).await;
                drop(bytes);
                // The parse's garbage and the raw body are freed now; hand them back to the
                // system rather than keep the peak as resident memory.
                let _ = tokio::task::spawn_blocking(trim_heap).await;
                IndexState::new(content, false)
            }
            Ok(Fetch::NotModified) => {
                return Err(Error::upstream_invalid(format!(
                    "{} answered 304 to an unconditional request",
                    redact(&url)
                )))
            }
            Ok(Fetch::Missing) => {
                crate::metrics::index_refresh(name, "missing");
                return Err(Error::upstream_invalid(format!(
                    "{} not found upstream",
                    redact(&url)
                )));
            }
            Err(e) => {
                crate::metrics::index_refresh(name, "error");
                return Err(e);
            }
        };
        self.install(state.clone());
        *self.last_failure.lock().expect("poisoned") = None;
        Ok(state)
    }

    /// Parses and rewrites an index off the async threads (a big index takes a second),
    /// keeping only what serving needs, and refuses one that alone would not fit the index
    /// memory budget.
    async fn build_content(
        &self,
        bytes: Bytes,
        validators: Validators,
    ) -> Result<Arc<IndexContent>> {
        let max_bytes = usize::try_from(self.limits.max_index_bytes).unwrap_or(usize::MAX);
        let (format, budget) = (self.config.index_format, self.memory.budget);
        let content = tokio::task::spawn_blocking(move || {
            let index = parse_index(
                &bytes,
                IndexLimits {
                    max_bytes,
                    ..IndexLimits::default()
                },
            )?;
            drop(bytes);
            let out = rewrite(index, format);
            let served = Bytes::from(out.bytes);
            let heap = (served.len() + out.compact.heap_bytes()) as u64;
            Ok::<_, Error>(Arc::new(IndexContent {
                entries: out.compact,
                etag: format!("\"{}\"", Digest::of(&served).hex()),
                served,
                validators,
                tag_lists: Mutex::default(),
                heap,
            }))
        })
        .await
        .map_err(|e| Error::internal(format!("index parse task failed: {e}")))??;
        if content.heap > budget {
            return Err(Error::upstream_invalid(format!(
                "the index needs {} MiB in memory once parsed, over cache.max_index_memory_bytes ({} MiB)",
                content.heap >> 20,
                budget >> 20
            )));
        }
        Ok(content)
    }

    /// Keeps the raw upstream index (and its validators) on disk for restarts and air gaps.
    async fn persist(&self, raw: &Bytes, v: &Validators) {
        let meta = serde_json::json!({"etag": v.etag, "last_modified": v.last_modified});
        let tmp = self.index_file.with_extension("yaml.part");
        let result = async {
            tokio::fs::write(&tmp, raw).await?;
            tokio::fs::write(self.index_file.with_extension("json"), meta.to_string()).await?;
            tokio::fs::rename(&tmp, &self.index_file).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(upstream = %self.config.name, error = %e, "could not persist index");
        }
    }

    async fn load_persisted(&self) -> Option<Arc<IndexState>> {
        let raw = tokio::fs::read(&self.index_file).await.ok()?;
        let meta: serde_json::Value = tokio::fs::read(self.index_file.with_extension("json"))
            .await
            .ok()
            .and_then(|m| serde_json::from_slice(&m).ok())
            .unwrap_or_default();
        let validators = Validators {
            etag: meta["etag"].as_str().map(str::to_string),
            last_modified: meta["last_modified"].as_str().map(str::to_string),
        };
        let content = self
            .build_content(Bytes::from(raw), validators)
            .await
            .map_err(|e| {
                tracing::warn!(upstream = %self.config.name, error = %e, "persisted index unusable")
            })
            .ok()?;
        let _ = tokio::task::spawn_blocking(trim_heap).await;
        Some(IndexState::new(content, true))
    }

    /// The chart's entries, or NAME_UNKNOWN.
    fn entries<'a>(
        state: &'a IndexState,
        chart: &str,
    ) -> Result<impl ExactSizeIterator<Item = Entry<'a>> + Clone> {
        state
            .content
            .entries
            .versions(chart)
            .filter(|v| v.len() > 0)
            .ok_or_else(|| {
                Error::new(
                    Kind::NameUnknown,
                    format!("no chart named {chart:?} upstream"),
                )
            })
    }

    /// The chart's OCI tags (valid tags only), with `latest` where it is synthesised.
    pub fn tags(state: &IndexState, chart: &str) -> Result<Arc<Vec<String>>> {
        let cached = state
            .content
            .tag_lists
            .lock()
            .expect("tag lists")
            .get(chart)
            .cloned();
        if let Some(tags) = cached {
            return Ok(tags);
        }
        let versions: Vec<&str> = Self::entries(state, chart)?.map(|v| v.version).collect();
        let tags: Arc<Vec<String>> = Arc::new(
            version::tag_list(&versions)
                .into_iter()
                .filter(|t| t.parse::<Tag>().is_ok())
                .collect(),
        );
        state
            .content
            .tag_lists
            .lock()
            .expect("tag lists")
            .insert(chart.to_string(), tags.clone());
        Ok(tags)
    }

    /// Resolves a tag to a version of the chart, in one index snapshot.
    pub fn resolve(state: &IndexState, chart: &str, tag: &Tag) -> Result<Resolved> {
        let versions: Vec<&str> = Self::entries(state, chart)?.map(|v| v.version).collect();
        let found = version::resolve_tag(&versions, tag.as_str()).ok_or_else(|| {
            Error::new(
                Kind::ManifestUnknown,
                format!("chart {chart:?} has no version for tag {tag:?}"),
            )
        })?;
        Ok(Resolved {
            synthesized_latest: tag.as_str() == version::LATEST && found != version::LATEST,
            version: found.to_string(),
        })
    }

    /// One chart version of an index snapshot, with everything fetching and building it needs:
    /// resolved once per request and passed down, so a request never mixes two index versions.
    pub fn locate(&self, state: &IndexState, chart: &str, version: &str) -> Result<Located> {
        let e = state.content.entries.find(chart, version).ok_or_else(|| {
            Error::new(
                Kind::NotFound,
                format!("no chart {chart} {version} upstream"),
            )
        })?;
        let digest = match e.digest {
            "" => None,
            hex => Some(Digest::from_hex(hex).map_err(|_| {
                Error::upstream_invalid(format!("index digest for {chart} {version} is malformed"))
            })?),
        };
        Ok(Located {
            chart: chart.to_string(),
            version: e.version.to_string(),
            url: self.chart_url(chart, &e)?,
            digest,
            index_digest: e.digest.to_string(),
            created: e.created.map(str::to_string),
        })
    }

    fn chart_url(&self, chart: &str, entry: &Entry<'_>) -> Result<String> {
        let first = entry.url.ok_or_else(|| {
            Error::upstream_invalid(format!("index entry {chart} {} has no URL", entry.version))
        })?;
        if first.starts_with("oci://") {
            return Ok(first.to_string());
        }
        self.config
            .url
            .join(first)
            .map(|u| u.to_string())
            .map_err(|e| Error::upstream_invalid(format!("index URL {first:?} is invalid: {e}")))
    }

    /// The chart archive bytes, verified against the index digest when the index has one.
    /// Served from cache without touching the upstream once fetched.
    pub async fn archive(self: &Arc<Self>, at: &Located) -> Result<(Bytes, Digest)> {
        let known = at.digest.clone().or_else(|| {
            self.url_digests
                .lock()
                .expect("poisoned")
                .get(&at.url)
                .cloned()
        });
        if let Some(d) = &known {
            if let Some(b) = self.blobs.get(d).await? {
                return Ok((b, d.clone()));
            }
        }
        let this = self.clone();
        let at = at.clone();
        self.archive_flight
            .run(at.url.clone(), async move {
                let (url, expected) = (&at.url, &at.digest);
                let bytes = this.fetch_chart(url, &at.version).await?;
                let actual = Digest::of(&bytes);
                match expected {
                    Some(e) if e != &actual => {
                        return Err(Error::upstream_invalid(format!(
                            "{} does not match its index digest: index says {e}, upstream sent {actual}",
                            redact_str(url)
                        )));
                    }
                    Some(_) => {}
                    // Nothing vouches for these bytes: cache and serve them only if they are a
                    // chart (a gzip tar holding a Chart.yaml), never whatever the URL answered.
                    None => {
                        let b = bytes.clone();
                        tokio::task::spawn_blocking(move || {
                            read_chart_metadata(&b, ArchiveLimits::default())
                        })
                        .await
                        .map_err(|e| Error::internal(format!("chart check failed: {e}")))?
                        .map_err(|e| {
                            Error::upstream_invalid(format!(
                                "{} is not a chart archive: {}",
                                redact_str(url),
                                e.message()
                            ))
                        })?;
                    }
                }
                this.blobs.put(&actual, bytes.clone()).await?;
                this.url_digests
                    .lock()
                    .expect("poisoned")
                    .insert(url.clone(), actual.clone());
                Ok((bytes, actual))
            })
            .await
    }

    async fn fetch_chart(&self, url: &str, version: &str) -> Result<Bytes> {
        let max = self.limits.max_chart_bytes;
        if url.starts_with("oci://") {
            self.pull_oci(url, version, max).await.map(|c| c.chart)
        } else {
            let u =
                Url::parse(url).map_err(|e| Error::upstream_invalid(format!("bad URL: {e}")))?;
            let name = self.config.name.as_str();
            self.client
                .get_body(name, &u, "application/gzip, application/octet-stream", max)
                .await
        }
    }

    /// A chart behind an `oci://` index URL (Bitnami's form), pulled anonymously.
    async fn pull_oci(&self, url: &str, version: &str, max: u64) -> Result<OciChart> {
        let (host, repo, reference) = parse_oci_url(url, version)?;
        Registry::for_host(self.client.clone(), &host)?
            .pull_chart(&repo, &reference, max)
            .await
    }

    /// The chart's `.prov` file, when the upstream has one (`None` only on a definite 404).
    pub async fn provenance(self: &Arc<Self>, at: &Located) -> Result<Option<(Bytes, Digest)>> {
        let ref_name = RefName::new(["prov", self.config.name.as_str(), &at.chart, &at.version]);
        if let Some(d) = self.refs.get_digest(&ref_name).await {
            if let Some(b) = self.blobs.get(&d).await? {
                return Ok(Some((b, d)));
            }
        }
        let prov = if at.url.starts_with("oci://") {
            self.pull_oci(&at.url, &at.version, self.limits.max_chart_bytes)
                .await?
                .prov
        } else {
            let u = Url::parse(&format!("{}.prov", at.url))
                .map_err(|e| Error::upstream_invalid(format!("bad URL: {e}")))?;
            match self
                .client
                .get(
                    self.config.name.as_str(),
                    &u,
                    "*/*",
                    &Validators::default(),
                    self.limits.max_chart_bytes,
                )
                .await?
            {
                Fetch::Body { bytes, .. } => Some(bytes),
                _ => None,
            }
        };
        match prov {
            Some(b) => {
                let d = Digest::of(&b);
                self.blobs.put(&d, b.clone()).await?;
                self.persist_ref(&ref_name, &d).await;
                Ok(Some((b, d)))
            }
            None => Ok(None),
        }
    }

    /// The OCI manifest for one chart version, built once and remembered (memory, then a ref on
    /// disk), so a restarted or disconnected mirror serves the same bytes.
    pub async fn manifest(self: &Arc<Self>, at: &Located) -> Result<ServedManifest> {
        // Keyed by the index digest too: a republished archive gets its own manifest.
        let ref_name = RefName::new([
            "manifest",
            self.config.name.as_str(),
            &at.chart,
            &at.version,
            &at.index_digest,
        ]);
        if let Some(d) = self.refs.get_digest(&ref_name).await {
            if let Some(m) = self.built_manifest(&d).await? {
                self.link_manifest(&at.chart, &m).await;
                return Ok(m);
            }
        }
        let this = self.clone();
        let at = at.clone();
        self.manifest_flight
            .run((at.chart.clone(), at.version.clone()), async move {
                let (tgz, chart_digest) = this.archive(&at).await?;
                let prov = this.provenance(&at).await?;
                let created = at.created.clone();
                let limits = ArchiveLimits::default();
                let art = tokio::task::spawn_blocking(move || -> Result<_> {
                    let meta = read_chart_metadata(&tgz, limits)?;
                    let chart_ref = BlobRef {
                        digest: chart_digest,
                        size: tgz.len() as u64,
                    };
                    let prov_ref = prov.map(|(b, d)| BlobRef {
                        digest: d,
                        size: b.len() as u64,
                    });
                    Ok(synthesize(
                        &meta,
                        &chart_ref,
                        prov_ref.as_ref(),
                        created.as_deref(),
                    ))
                })
                .await
                .map_err(|e| Error::internal(format!("manifest task failed: {e}")))??;
                this.blobs
                    .put(&art.config_digest, art.config.clone())
                    .await?;
                this.blobs
                    .put(&art.manifest_digest, art.manifest.clone())
                    .await?;
                this.persist_ref(&ref_name, &art.manifest_digest).await;
                let served = ServedManifest {
                    bytes: art.manifest,
                    digest: art.manifest_digest,
                    media_type: OCI_MANIFEST.to_string(),
                };
                this.link_manifest(&at.chart, &served).await;
                this.manifests
                    .insert(served.digest.clone(), served.clone())
                    .await;
                Ok(served)
            })
            .await
    }

    /// Stores a ref; a disk that refuses it costs a rebuild after a restart, not this answer.
    async fn persist_ref(&self, name: &RefName, d: &Digest) {
        if let Err(e) = self.refs.put(name, d.to_string().as_bytes()).await {
            tracing::warn!(r#ref = %name, error = %e, "cache write failed; serving without caching");
            crate::metrics::cache_write_failure();
        }
    }

    /// Links the chart's repository to a manifest built for it and to everything it names
    /// (config blob, archive, provenance): what this upstream may serve by digest.
    async fn link_manifest(&self, chart: &str, m: &ServedManifest) {
        self.links
            .add_manifest(self.config.name.as_str(), chart, &m.digest, &m.bytes)
            .await;
    }

    /// A manifest built for `chart` before, by digest. A digest this chart's manifests never
    /// had is unknown here, even when another upstream's content has it.
    pub async fn manifest_by_digest(
        &self,
        chart: &str,
        d: &Digest,
    ) -> Result<Option<ServedManifest>> {
        if !self.links.has(self.config.name.as_str(), chart, d).await {
            return Ok(None);
        }
        self.built_manifest(d).await
    }

    /// A manifest this upstream built before, by digest.
    async fn built_manifest(&self, d: &Digest) -> Result<Option<ServedManifest>> {
        if let Some(m) = self.manifests.get(d).await {
            return Ok(Some(m));
        }
        let Some(bytes) = self.blobs.get(d).await? else {
            return Ok(None);
        };
        // Only OCI image manifests live under this upstream; refuse to serve other blobs as one.
        let is_manifest = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .is_some_and(|v| {
                v["schemaVersion"] == 2 && v["config"].is_object() && v["layers"].is_array()
            });
        if !is_manifest {
            return Ok(None);
        }
        let m = ServedManifest {
            bytes,
            digest: d.clone(),
            media_type: OCI_MANIFEST.to_string(),
        };
        self.manifests.insert(d.clone(), m.clone()).await;
        Ok(Some(m))
    }

    /// A blob of a chart: from cache, or (for the chart layer) fetched through the index entry
    /// whose digest it is.
    pub async fn blob(self: &Arc<Self>, chart: &str, d: &Digest) -> Result<Bytes> {
        // Only what this chart's index entries and manifests name: the store is shared.
        if self.links.has(self.config.name.as_str(), chart, d).await {
            if let Some(b) = self.blobs.get(d).await? {
                return Ok(b);
            }
        }
        let state = self.index().await?;
        let version = Self::entries(&state, chart)?
            .find(|e| e.digest == d.hex())
            .map(|e| e.version.to_string());
        match version {
            Some(version) => {
                let at = self.locate(&state, chart, &version)?;
                let (b, _) = self.archive(&at).await?;
                self.links.add(self.config.name.as_str(), chart, d).await;
                Ok(b)
            }
            None => Err(Error::new(Kind::BlobUnknown, format!("blob {d} unknown"))),
        }
    }
}

fn redact_str(url: &str) -> String {
    Url::parse(url)
        .map(|u| redact(&u))
        .unwrap_or_else(|_| url.to_string())
}

/// Returns freed heap memory to the system (glibc keeps it otherwise, so a parse's peak would
/// stay resident).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}
