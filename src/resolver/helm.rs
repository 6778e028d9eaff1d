//! A helm upstream (legacy index.yaml repository), as the views need it: the parsed index kept
//! fresh (conditional refresh after `index_ttl`, the last good copy served while a refresh fails,
//! persisted so a restart or an air gap still has it), tag -> version resolution, verified chart
//! archives, and the chart's OCI artifact built by `convert`.
//! Calls `convert`, `cache` and `upstream`; knows nothing of HTTP statuses or routes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use url::Url;

use super::ServedManifest;
use crate::cache::{BlobCache, Flight, RefStore};
use crate::config::{Limits, Upstream};
use crate::convert::chart::{read_chart_metadata, ArchiveLimits};
use crate::convert::index::{parse_index, rewrite_index, ChartVersion, IndexFile, IndexLimits};
use crate::convert::manifest::{synthesize, BlobRef, OCI_MANIFEST};
use crate::convert::version;
use crate::error::{Error, Kind, Result};
use crate::ids::{Digest, Tag};
use crate::upstream::registry::parse_oci_url;
use crate::upstream::{redact, Fetch, OciChart, Registry, UpstreamClient, Validators};

/// How long to wait before retrying a failed index refresh while serving the stale copy.
const REFRESH_RETRY: Duration = Duration::from_secs(10);

/// One parsed index and what is derived from it. A refresh that finds the upstream unchanged
/// shares it rather than copying it.
pub struct IndexContent {
    pub index: IndexFile,
    /// The mirror's index.yaml bytes (URLs rewritten) and their strong ETag.
    pub rewritten: Bytes,
    pub etag: String,
    validators: Validators,
    /// Each chart's tag list, computed on first use (a busy tags/list would otherwise parse
    /// and sort every version on every request).
    tag_lists: Mutex<HashMap<String, Arc<Vec<String>>>>,
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
    refs: Arc<RefStore>,
    limits: Limits,
    index_file: PathBuf,
    state: RwLock<Option<Arc<IndexState>>>,
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
        blobs: Arc<BlobCache>,
        refs: Arc<RefStore>,
        limits: Limits,
        cache_dir: &std::path::Path,
    ) -> Result<HelmUpstream> {
        let dir = cache_dir.join("indexes");
        std::fs::create_dir_all(&dir)?;
        Ok(HelmUpstream {
            index_file: dir.join(format!("{}.yaml", config.name)),
            config,
            client,
            blobs,
            refs,
            limits,
            state: RwLock::new(None),
            last_failure: Mutex::new(None),
            index_flight: Flight::default(),
            archive_flight: Flight::default(),
            manifest_flight: Flight::default(),
            url_digests: Mutex::new(HashMap::new()),
            manifests: moka::future::Cache::builder().max_capacity(10_000).build(),
        })
    }

    fn current(&self) -> Option<Arc<IndexState>> {
        self.state.read().expect("index state poisoned").clone()
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
                *self.state.write().expect("poisoned") = Some(s);
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
                let content = Self::build_content(bytes.clone(), validators.clone(), self.limits)
                    .await
                    .inspect_err(|_| crate::metrics::index_refresh(name, "invalid"))?;
                crate::metrics::index_refresh(name, "updated");
                self.persist(&bytes, &validators).await;
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
        *self.state.write().expect("poisoned") = Some(state.clone());
        *self.last_failure.lock().expect("poisoned") = None;
        Ok(state)
    }

    /// Parses and rewrites an index off the async threads (a big index takes a second).
    async fn build_content(
        bytes: Bytes,
        validators: Validators,
        limits: Limits,
    ) -> Result<Arc<IndexContent>> {
        let max_bytes = usize::try_from(limits.max_index_bytes).unwrap_or(usize::MAX);
        tokio::task::spawn_blocking(move || {
            let index = parse_index(
                &bytes,
                IndexLimits {
                    max_bytes,
                    ..IndexLimits::default()
                },
            )?;
            let rewritten = Bytes::from(rewrite_index(&index));
            let etag = format!("\"{}\"", Digest::of(&rewritten).hex());
            Ok(Arc::new(IndexContent {
                index,
                rewritten,
                etag,
                validators,
                tag_lists: Mutex::default(),
            }))
        })
        .await
        .map_err(|e| Error::internal(format!("index parse task failed: {e}")))?
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
        let content = Self::build_content(Bytes::from(raw), validators, self.limits)
            .await
            .ok()?;
        Some(IndexState::new(content, true))
    }

    /// The chart's entries, or NAME_UNKNOWN.
    fn entries<'a>(state: &'a IndexState, chart: &str) -> Result<&'a [ChartVersion]> {
        state
            .content
            .index
            .versions(chart)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                Error::new(
                    Kind::NameUnknown,
                    format!("no chart named {chart:?} upstream"),
                )
            })
    }

    /// The chart's OCI tags (valid tags only), with `latest` where it is synthesised.
    pub async fn tags(self: &Arc<Self>, chart: &str) -> Result<Arc<Vec<String>>> {
        let state = self.index().await?;
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
        let versions: Vec<&str> = Self::entries(&state, chart)?
            .iter()
            .map(|v| v.version.as_str())
            .collect();
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

    /// Resolves a tag to a version of the chart.
    pub async fn resolve(self: &Arc<Self>, chart: &str, tag: &Tag) -> Result<Resolved> {
        let state = self.index().await?;
        let versions: Vec<&str> = Self::entries(&state, chart)?
            .iter()
            .map(|v| v.version.as_str())
            .collect();
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

    fn chart_url(&self, entry: &ChartVersion) -> Result<String> {
        let first = entry.urls.first().ok_or_else(|| {
            Error::upstream_invalid(format!(
                "index entry {} {} has no URL",
                entry.name, entry.version
            ))
        })?;
        if first.starts_with("oci://") {
            return Ok(first.clone());
        }
        self.config
            .url
            .join(first)
            .map(|u| u.to_string())
            .map_err(|e| Error::upstream_invalid(format!("index URL {first:?} is invalid: {e}")))
    }

    /// One index entry, or NotFound.
    async fn entry(self: &Arc<Self>, chart: &str, version: &str) -> Result<ChartVersion> {
        let state = self.index().await?;
        state
            .content
            .index
            .find(chart, version)
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    Kind::NotFound,
                    format!("no chart {chart} {version} upstream"),
                )
            })
    }

    /// The chart archive bytes, verified against the index digest when the index has one.
    /// Served from cache without touching the upstream once fetched.
    pub async fn archive(self: &Arc<Self>, chart: &str, version: &str) -> Result<(Bytes, Digest)> {
        let entry = self.entry(chart, version).await?;
        let url = self.chart_url(&entry)?;
        let expected = match entry.digest.as_str() {
            "" => None,
            hex => Some(Digest::from_hex(hex).map_err(|_| {
                Error::upstream_invalid(format!("index digest for {chart} {version} is malformed"))
            })?),
        };
        let known = expected.clone().or_else(|| {
            self.url_digests
                .lock()
                .expect("poisoned")
                .get(&url)
                .cloned()
        });
        if let Some(d) = &known {
            if let Some(b) = self.blobs.get(d).await? {
                return Ok((b, d.clone()));
            }
        }
        let this = self.clone();
        let key = url.clone();
        self.archive_flight
            .run(key, async move {
                let bytes = this.fetch_chart(&url, &entry).await?;
                let actual = Digest::of(&bytes);
                if let Some(e) = &expected {
                    if e != &actual {
                        return Err(Error::upstream_invalid(format!(
                            "{} does not match its index digest: index says {e}, upstream sent {actual}",
                            redact_str(&url)
                        )));
                    }
                }
                this.blobs.put(&actual, bytes.clone()).await?;
                this.url_digests.lock().expect("poisoned").insert(url, actual.clone());
                Ok((bytes, actual))
            })
            .await
    }

    async fn fetch_chart(&self, url: &str, entry: &ChartVersion) -> Result<Bytes> {
        let max = self.limits.max_chart_bytes;
        if url.starts_with("oci://") {
            self.pull_oci(url, &entry.version, max)
                .await
                .map(|c| c.chart)
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
    pub async fn provenance(
        self: &Arc<Self>,
        chart: &str,
        version: &str,
    ) -> Result<Option<(Bytes, Digest)>> {
        let ref_name = format!("prov\0{}\0{chart}\0{version}", self.config.name);
        if let Some(d) = self.refs.get(&ref_name).await {
            if let Some(b) = self.blobs.get(&d).await? {
                return Ok(Some((b, d)));
            }
        }
        let entry = self.entry(chart, version).await?;
        let url = self.chart_url(&entry)?;
        let prov = if url.starts_with("oci://") {
            self.pull_oci(&url, &entry.version, self.limits.max_chart_bytes)
                .await?
                .prov
        } else {
            let u = Url::parse(&format!("{url}.prov"))
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
                self.refs.put(&ref_name, &d).await?;
                Ok(Some((b, d)))
            }
            None => Ok(None),
        }
    }

    /// The OCI manifest for one chart version, built once and remembered (memory, then a ref on
    /// disk), so a restarted or disconnected mirror serves the same bytes.
    pub async fn manifest(self: &Arc<Self>, chart: &str, version: &str) -> Result<ServedManifest> {
        // Keyed by the index digest too: a republished archive gets its own manifest.
        let state = self.index().await?;
        let entry_digest = state
            .content
            .index
            .find(chart, version)
            .map(|e| e.digest.clone())
            .unwrap_or_default();
        let ref_name = format!(
            "manifest\0{}\0{chart}\0{version}\0{entry_digest}",
            self.config.name
        );
        if let Some(d) = self.refs.get(&ref_name).await {
            if let Some(m) = self.manifest_by_digest(&d).await? {
                return Ok(m);
            }
        }
        let this = self.clone();
        let (c, v) = (chart.to_string(), version.to_string());
        self.manifest_flight
            .run((c.clone(), v.clone()), async move {
                let (tgz, chart_digest) = this.archive(&c, &v).await?;
                let prov = this.provenance(&c, &v).await?;
                let created = this
                    .index()
                    .await?
                    .content
                    .index
                    .find(&c, &v)
                    .and_then(|e| e.created.clone());
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
                this.refs.put(&ref_name, &art.manifest_digest).await?;
                let served = ServedManifest {
                    bytes: art.manifest,
                    digest: art.manifest_digest,
                    media_type: OCI_MANIFEST.to_string(),
                };
                this.manifests
                    .insert(served.digest.clone(), served.clone())
                    .await;
                Ok(served)
            })
            .await
    }

    /// A manifest this upstream built before, by digest.
    pub async fn manifest_by_digest(&self, d: &Digest) -> Result<Option<ServedManifest>> {
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
        if let Some(b) = self.blobs.get(d).await? {
            return Ok(b);
        }
        let state = self.index().await?;
        let entry = Self::entries(&state, chart)?
            .iter()
            .find(|e| e.digest == d.hex())
            .map(|e| e.version.clone());
        match entry {
            Some(version) => Ok(self.archive(chart, &version).await?.0),
            None => Err(Error::new(Kind::BlobUnknown, format!("blob {d} unknown"))),
        }
    }
}

fn redact_str(url: &str) -> String {
    Url::parse(url)
        .map(|u| redact(&u))
        .unwrap_or_else(|_| url.to_string())
}
