//! A helm upstream (legacy index.yaml repository), as the views need it: the index kept fresh
//! (revalidated with the upstream's validators after `index_ttl`, the last good copy served
//! while that fails, persisted so a restart or an air gap still has it), tag -> version
//! resolution, verified chart archives, and the chart's OCI artifact built by `convert`.
//!
//! What this module says is how to ask the upstream for one thing and what to build from it;
//! memory, refs, single-flight, negative answers and stale copies are the cache's. A request
//! resolves the index snapshot and its entry once (`index`, `locate`) and passes them down.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use url::Url;

use super::{ServedManifest, Stores};
use crate::cache::{BlobKey, Cache, Freshness, RefName, Served};
use crate::config::{Limits, Upstream};
use crate::convert::chart::{read_chart_metadata, ArchiveLimits};
use crate::convert::index::{
    parse_index, parse_oci_url, rewrite, CompactIndex, Entry, IndexLimits,
};
use crate::convert::manifest::{chart_layers, synthesize, BlobRef, ChartArtifact, OCI_MANIFEST};
use crate::convert::version::{self, Float};
use crate::error::{digest_mismatch, Error, Kind, Result};
use crate::ids::{Digest, Tag};
use crate::upstream::{redact, Fetch, Registry, UpstreamClient, Validators, MANIFEST_ACCEPT};
use memo::ManifestMemo;

/// One parsed index and what is derived from it. The full parsed index is not kept: only the
/// bytes the mirror serves and the compact entries serving needs.
pub struct IndexContent {
    /// What serving needs of each chart's entries, in index order.
    entries: CompactIndex,
    /// The mirror's index (URLs rewritten), in the upstream's `index_format`, and its strong
    /// ETag.
    pub served: Bytes,
    pub etag: String,
    /// Each chart's tag list, computed on first use (a busy tags/list would otherwise parse
    /// and sort every version on every request).
    tag_lists: Mutex<HashMap<String, Arc<Vec<String>>>>,
    /// Manifests already served by chart and tag from this content (and linked), so a warm
    /// manifest by tag is one lookup, without building a key; bounded by `MANIFEST_MEMO`.
    manifests: Mutex<ManifestMemo>,
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

/// See `HelmUpstream::peek_index`.
pub struct IndexPeek {
    pub content: Option<Arc<IndexContent>>,
    pub state: crate::cache::ValueState,
}

/// The index as last confirmed: which content, with the upstream's validators. This is the
/// named value the cache keeps fresh; the raw index it names is a ref of its own.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct IndexMeta {
    /// sha256 of the raw upstream index.
    digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_modified: Option<String>,
}

impl IndexMeta {
    fn decode(b: &[u8]) -> Result<IndexMeta> {
        serde_json::from_slice(b)
            .map_err(|e| Error::internal(format!("stored index metadata unreadable: {e}")))
    }

    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("index metadata serialises"))
    }

    fn validators(&self) -> Validators {
        Validators {
            etag: self.etag.clone(),
            last_modified: self.last_modified.clone(),
        }
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

/// A chart pulled from a registry, with its provenance file when it has one.
struct OciChart {
    chart: Bytes,
    prov: Option<Bytes>,
}

/// Manifests remembered per index content (each about a kilobyte).
const MANIFEST_MEMO: usize = 4096;

/// A manifest served for a tag, and whether the tag was a synthesised `latest`.
#[derive(Clone)]
pub struct TagManifest {
    pub manifest: ServedManifest,
    pub synthesized_latest: bool,
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
    cache: Arc<Cache>,
    limits: Limits,
    /// Where releases before the cache kept refs kept this upstream's last good index; read
    /// once, when nothing newer is known.
    legacy_index: PathBuf,
    /// The part of `content_key` that is the same for every index version, and the name of
    /// the index's metadata (both built once: they are asked for on every request).
    content_prefix: String,
    meta_name: RefName,
}

impl HelmUpstream {
    pub fn new(
        config: Upstream,
        client: Arc<UpstreamClient>,
        stores: &Stores,
        limits: Limits,
    ) -> Result<HelmUpstream> {
        let content_prefix = format!(
            "index\0{}\0{}\0{}\0{:?}\0",
            config.name,
            config.url,
            config.index_format.as_str(),
            // the tag lists and manifests memoised with the content depend on it
            config.float,
        );
        Ok(HelmUpstream {
            content_prefix,
            meta_name: RefName::new(["index", config.name.as_str()]),
            legacy_index: stores
                .dir
                .join("indexes")
                .join(format!("{}.yaml", config.name)),
            cache: stores.cache.clone(),
            config,
            client,
            limits,
        })
    }

    fn name(&self) -> &str {
        self.config.name.as_str()
    }

    /// The shared cache this upstream reads through.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    fn manifest_name(&self, at: &Located) -> RefName {
        RefName::new([
            "manifest",
            self.name(),
            &at.chart,
            &at.version,
            &at.index_digest,
        ])
    }

    /// Whether the manifest of this chart version was built before and is still stored.
    pub async fn manifest_known(&self, at: &Located) -> bool {
        let Some(v) = self.cache.known_value(&self.manifest_name(at)).await else {
            return false;
        };
        let d = std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse::<Digest>().ok());
        match d {
            Some(d) => self.cache.has_blob(&d).await.unwrap_or(false),
            None => false,
        }
    }

    /// The chart's entries, or NAME_UNKNOWN.
    fn entries<'a>(
        state: &'a IndexContent,
        chart: &str,
    ) -> Result<impl ExactSizeIterator<Item = Entry<'a>> + Clone> {
        state
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

    /// The chart's OCI tags (valid tags only), with `latest` where it is synthesised and the
    /// floating tags `float` asks for.
    pub fn tags(state: &IndexContent, chart: &str, float: Float) -> Result<Arc<Vec<String>>> {
        let cached = state
            .tag_lists
            .lock()
            .expect("tag lists")
            .get(chart)
            .cloned();
        if let Some(tags) = cached {
            return Ok(tags);
        }
        let versions: Vec<&str> = Self::entries(state, chart)?.map(|v| v.version).collect();
        let mut tags: Vec<String> = version::tag_list(&versions)
            .into_iter()
            .filter(|t| t.parse::<Tag>().is_ok())
            .collect();
        if float.any() {
            let plain: Vec<&str> = tags.iter().map(String::as_str).collect();
            let floating: Vec<String> = version::floating_tags(&plain, float).into_keys().collect();
            tags.extend(floating);
            tags.sort();
        }
        let tags = Arc::new(tags);
        state
            .tag_lists
            .lock()
            .expect("tag lists")
            .insert(chart.to_string(), tags.clone());
        Ok(tags)
    }

    /// Resolves a tag to a version of the chart, in one index snapshot.
    pub fn resolve(state: &IndexContent, chart: &str, tag: &Tag, float: Float) -> Result<Resolved> {
        let versions: Vec<&str> = Self::entries(state, chart)?.map(|v| v.version).collect();
        let floated = (float.any() && version::may_float(tag.as_str()))
            .then(|| {
                let tags = version::tag_list(&versions);
                let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
                version::floating_tags(&tags, float).remove(tag.as_str())
            })
            .flatten();
        let wanted = floated.as_deref().unwrap_or(tag.as_str());
        let found = version::resolve_tag(&versions, wanted).ok_or_else(|| {
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
    pub fn locate(&self, state: &IndexContent, chart: &str, version: &str) -> Result<Located> {
        let e = state.entries.find(chart, version).ok_or_else(|| {
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

    /// The chart archive bytes, verified against the index digest when the index has one (and
    /// checked to be a chart when it has none). Served from cache without touching the
    /// upstream once fetched.
    pub async fn archive(self: &Arc<Self>, at: &Located) -> Result<(Bytes, Digest)> {
        let d = match &at.digest {
            Some(d) => d.clone(),
            None => {
                // What the archive hashes to is learnt by fetching it once, and remembered.
                let (this, at2) = (self.clone(), at.clone());
                let v = self
                    .cache
                    .value(
                        &RefName::new(["archive-digest", self.name(), &at.url]),
                        Freshness::immutable("archive"),
                        move |_| async move {
                            let bytes = this.fetch_checked_chart(&at2).await?;
                            let d = Digest::of(&bytes);
                            this.cache.put_blob(&d, bytes).await?;
                            this.cache.links().add(this.name(), &at2.chart, &d).await;
                            Ok(Bytes::from(d.to_string()))
                        },
                    )
                    .await?;
                std::str::from_utf8(&v.value)
                    .map_err(|_| Error::internal("a stored archive digest is not text"))?
                    .parse()?
            }
        };
        let (this, at2) = (self.clone(), at.clone());
        let bytes = self
            .cache
            .blob_bytes(
                &BlobKey::new(self.name(), &at.chart, &d),
                move || async move { this.fetch_checked_chart(&at2).await },
            )
            .await
            .map_err(|e| match e.kind() {
                Kind::UpstreamInvalid if e.message().starts_with("digest mismatch") => {
                    Error::upstream_invalid(format!(
                        "{} does not match its index digest: {}",
                        redact_str(&at.url),
                        e.message()
                    ))
                }
                _ => e,
            })?;
        Ok((bytes, d))
    }

    /// The archive from the upstream; when its index entry has no digest, accepted only if it
    /// is a chart (a gzip tar holding a Chart.yaml), never whatever the URL answered.
    async fn fetch_checked_chart(&self, at: &Located) -> Result<Bytes> {
        let max = self.limits.max_chart_bytes;
        let bytes = if at.url.starts_with("oci://") {
            self.pull_oci(&at.url, &at.version, max).await?.chart
        } else {
            let u = Url::parse(&at.url)
                .map_err(|e| Error::upstream_invalid(format!("bad URL: {e}")))?;
            self.client
                .get_body(
                    self.name(),
                    &u,
                    "application/gzip, application/octet-stream",
                    max,
                )
                .await?
        };
        if at.digest.is_none() {
            let b = bytes.clone();
            tokio::task::spawn_blocking(move || read_chart_metadata(&b, ArchiveLimits::default()))
                .await
                .map_err(|e| Error::internal(format!("chart check failed: {e}")))?
                .map_err(|e| {
                    Error::upstream_invalid(format!(
                        "{} is not a chart archive: {}",
                        redact_str(&at.url),
                        e.message()
                    ))
                })?;
        }
        Ok(bytes)
    }

    /// A chart (and its provenance file) behind an `oci://` index URL (Bitnami's form), pulled
    /// anonymously and verified.
    async fn pull_oci(&self, url: &str, version: &str, max: u64) -> Result<OciChart> {
        let (host, repo, reference) = parse_oci_url(url, version)?;
        let registry = Registry::for_host(self.client.clone(), &host)?;
        let manifest = registry
            .get_bytes(
                &repo,
                &format!("manifests/{reference}"),
                MANIFEST_ACCEPT,
                4 << 20,
            )
            .await?;
        if let Some(hex) = reference.strip_prefix("sha256:") {
            let (want, got) = (Digest::from_hex(hex)?, Digest::of(&manifest));
            if want != got {
                return Err(digest_mismatch(&want, &got));
            }
        }
        let layers = chart_layers(&manifest).ok_or_else(|| {
            Error::upstream_invalid(format!("{repo}:{reference} is not a Helm chart"))
        })?;
        let chart = registry
            .verified_blob(&repo, &layers.chart.to_string(), max)
            .await?;
        let prov = match layers.prov {
            Some(d) => Some(registry.verified_blob(&repo, &d.to_string(), max).await?),
            None => None,
        };
        Ok(OciChart { chart, prov })
    }

    /// The chart's `.prov` file, when the upstream has one.
    pub async fn provenance(self: &Arc<Self>, at: &Located) -> Result<Option<(Bytes, Digest)>> {
        let (this, at2) = (self.clone(), at.clone());
        let found =
            self.cache
                .value(
                    &RefName::new(["prov", self.name(), &at.chart, &at.version]),
                    Freshness::immutable("prov"),
                    move |_| async move {
                        let b = this.fetch_prov(&at2).await?.ok_or_else(|| {
                            Error::new(Kind::NotFound, "no provenance file upstream")
                        })?;
                        let d = Digest::of(&b);
                        this.cache.put_blob(&d, b).await?;
                        this.cache.links().add(this.name(), &at2.chart, &d).await;
                        Ok(Bytes::from(d.to_string()))
                    },
                )
                .await;
        let d: Digest = match found {
            Ok(v) => std::str::from_utf8(&v.value)
                .map_err(|_| Error::internal("a stored provenance digest is not text"))?
                .parse()?,
            Err(e) if e.kind() == Kind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let (this, at2) = (self.clone(), at.clone());
        let bytes = self
            .cache
            .blob_bytes(
                &BlobKey::new(self.name(), &at.chart, &d),
                move || async move {
                    this.fetch_prov(&at2)
                        .await?
                        .ok_or_else(|| Error::new(Kind::NotFound, "no provenance file upstream"))
                },
            )
            .await?;
        Ok(Some((bytes, d)))
    }

    /// The `.prov` file from the upstream (`None` only on a definite 404).
    async fn fetch_prov(&self, at: &Located) -> Result<Option<Bytes>> {
        if at.url.starts_with("oci://") {
            return Ok(self
                .pull_oci(&at.url, &at.version, self.limits.max_chart_bytes)
                .await?
                .prov);
        }
        let u = Url::parse(&format!("{}.prov", at.url))
            .map_err(|e| Error::upstream_invalid(format!("bad URL: {e}")))?;
        match self
            .client
            .get(
                self.name(),
                &u,
                "*/*",
                &Validators::default(),
                self.limits.max_chart_bytes,
            )
            .await?
        {
            Fetch::Body { bytes, .. } => Ok(Some(bytes)),
            _ => Ok(None),
        }
    }

    /// The OCI manifest for one chart version: built once (a pure function of the archive, its
    /// provenance and the index entry) and remembered by name, so a restarted or disconnected
    /// mirror serves the same bytes; rebuilt, to the same bytes, if the store let it go.
    pub async fn manifest(self: &Arc<Self>, at: &Located) -> Result<ServedManifest> {
        // Keyed by the index digest too: a republished archive gets its own manifest.
        let name = self.manifest_name(at);
        let (this, at2) = (self.clone(), at.clone());
        let d = self
            .cache
            .value_as(
                &name,
                Freshness::immutable("manifest"),
                |b| {
                    std::str::from_utf8(b)
                        .map_err(|_| Error::internal("a stored manifest digest is not text"))?
                        .parse::<Digest>()
                },
                move |_| async move {
                    let art = this.build_manifest(&at2).await?;
                    Ok(Bytes::from(art.manifest_digest.to_string()))
                },
            )
            .await?
            .value;
        let (this, at2) = (self.clone(), at.clone());
        let bytes = self
            .cache
            .blob_bytes(
                &BlobKey::new(self.name(), &at.chart, &d),
                move || async move { Ok(this.build_manifest(&at2).await?.manifest) },
            )
            .await?;
        let m = ServedManifest {
            bytes,
            digest: (*d).clone(),
            media_type: OCI_MANIFEST.to_string(),
        };
        self.link_manifest(&at.chart, &m).await;
        Ok(m)
    }

    /// The manifest a tag names in one index snapshot: resolved, located and built (or
    /// remembered) once; later requests for the same tag of the same content are one lookup.
    pub async fn manifest_for_tag(
        self: &Arc<Self>,
        state: &IndexContent,
        chart: &str,
        tag: &Tag,
    ) -> Result<TagManifest> {
        if let Some(m) = state
            .manifests
            .lock()
            .expect("manifest memo")
            .get(chart, tag)
        {
            return Ok(m);
        }
        let resolved = Self::resolve(state, chart, tag, self.config.float)?;
        let at = self.locate(state, chart, &resolved.version)?;
        let m = TagManifest {
            manifest: self.manifest(&at).await?,
            synthesized_latest: resolved.synthesized_latest,
        };
        let mut memo = state.manifests.lock().expect("manifest memo");
        memo.insert(chart, tag, m.clone());
        Ok(m)
    }

    /// Builds the chart's OCI artifact and stores its config blob and manifest.
    async fn build_manifest(self: &Arc<Self>, at: &Located) -> Result<ChartArtifact> {
        let (tgz, chart_digest) = self.archive(at).await?;
        let prov = self.provenance(at).await?;
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
        self.cache
            .put_blob(&art.config_digest, art.config.clone())
            .await?;
        self.cache
            .put_blob(&art.manifest_digest, art.manifest.clone())
            .await?;
        Ok(art)
    }

    /// Links the chart's repository to a manifest built for it and to everything it names
    /// (config blob, archive, provenance): what this upstream may serve by digest.
    async fn link_manifest(&self, chart: &str, m: &ServedManifest) {
        self.cache
            .links()
            .add_manifest(self.name(), chart, &m.digest, &m.bytes)
            .await;
    }

    /// A manifest built for `chart` before, by digest. A digest this chart's manifests never
    /// had is unknown here, even when another upstream's content has it.
    pub async fn manifest_by_digest(
        &self,
        chart: &str,
        d: &Digest,
    ) -> Result<Option<ServedManifest>> {
        if !self.cache.links().has(self.name(), chart, d).await {
            return Ok(None);
        }
        let Some(bytes) = self.cache.cached_bytes(d).await? else {
            return Ok(None);
        };
        // Only OCI image manifests live under this upstream; refuse to serve other blobs as one.
        let is_manifest = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .is_some_and(|v| {
                v["schemaVersion"] == 2 && v["config"].is_object() && v["layers"].is_array()
            });
        Ok(is_manifest.then(|| ServedManifest {
            bytes,
            digest: d.clone(),
            media_type: OCI_MANIFEST.to_string(),
        }))
    }

    /// A blob of a chart: what this chart's manifests name, from cache, or (for the chart
    /// layer) fetched through the index entry whose digest it is.
    pub async fn blob(self: &Arc<Self>, chart: &str, d: &Digest) -> Result<Bytes> {
        // Only what this chart's index entries and manifests name: the store is shared.
        if self.cache.links().has(self.name(), chart, d).await {
            if let Some(b) = self.cache.cached_bytes(d).await? {
                return Ok(b);
            }
        }
        // Boxed, as every cold step: the warm path's future stays small.
        let state = Box::pin(self.index()).await?.value;
        let version = Self::entries(&state, chart)?
            .find(|e| e.digest == d.hex())
            .map(|e| e.version.to_string());
        match version {
            Some(version) => {
                let at = self.locate(&state, chart, &version)?;
                Ok(Box::pin(self.archive(&at)).await?.0)
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

mod airgap;
mod index;
mod memo;
#[cfg(test)]
mod tests;
