//! The index.yaml view of OCI charts: every semver tag of a chart repository becomes an index
//! entry built from the chart's config blob (its Chart.yaml), with `digest` = the chart layer's
//! sha256, `created` from the manifest's `org.opencontainers.image.created` annotation (fixed
//! fallback), and a relative URL to chartbridge's archive route. Built incrementally (entries are
//! remembered by manifest digest, so a refresh fetches only what it has not seen) with bounded
//! concurrency, and deterministic: the same upstream bytes give the same index bytes.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::OciUpstream;
use crate::cache::{BlobKey, Freshness, RefName, Served};
use crate::convert::chart::ChartMetadata;
use crate::convert::index::ChartVersion;
use crate::convert::index::{archive_path, render, IndexFile};
use crate::convert::manifest::{chart_layers, ChartLayers, FALLBACK_CREATED};
use crate::convert::version;
use crate::error::{Error, Kind, Result};
use crate::ids::{Digest, Reference, RepoName, Tag};

/// Concurrent config fetches while building an index.
const CONCURRENCY: usize = 8;
/// Most repositories an upstream-level index takes from `_catalog`.
const MAX_CATALOG: usize = 500;

/// A built index: bytes and strong ETag, and whether a tag list behind it was a stale copy.
#[derive(Clone)]
pub struct BuiltIndex {
    pub bytes: Bytes,
    pub etag: String,
    pub stale: bool,
    /// How much longer this build stays fresh (set when it is served).
    pub fresh_for: Option<std::time::Duration>,
}

/// What building an index view found: the index, or that the repository holds no chart (an
/// answer remembered as long as an index would be: asking again costs a manifest per tag).
type IndexView = std::result::Result<BuiltIndex, Error>;

impl OciUpstream {
    /// The repositories of the upstream-level index: `charts:` from the config, else the
    /// registry's `_catalog`.
    async fn chart_repos(&self) -> Result<Vec<RepoName>> {
        Ok(self.repositories().await?.value)
    }

    /// The repositories this upstream serves, as `GET /v2/_catalog` lists them: `charts:`
    /// from the config, else the registry's own `_catalog` (first page, at most 500), fresh
    /// for `tag_ttl` and served stale while the registry fails.
    pub async fn repositories(&self) -> Result<Served<Vec<RepoName>>> {
        if !self.config.charts.is_empty() {
            return Ok(Served::fresh(self.config.charts.clone()));
        }
        let (registry, name) = (self.registry.clone(), self.config.name.clone());
        let list = self
            .cache
            .value(
                &RefName::new(["catalog", self.name()]),
                Freshness::for_(self.config.tag_ttl, "catalog"),
                move |_| async move {
                    #[derive(serde::Deserialize)]
                    struct Catalog {
                        repositories: Option<Vec<String>>,
                    }
                    let r = registry
                        .request_path(
                            &format!("v2/_catalog?n={MAX_CATALOG}"),
                            "registry:catalog:*",
                            "application/json",
                        )
                        .await?;
                    if r.status != 200 {
                        return Err(Error::new(
                            Kind::NotFound,
                            format!(
                                "upstream {name} has no catalog: list its chart repositories under `charts:`"
                            ),
                        ));
                    }
                    let c: Catalog = serde_json::from_slice(&r.bytes(4 << 20).await?)
                        .map_err(|e| Error::upstream_invalid(format!("catalog is not JSON: {e}")))?;
                    let names: Vec<String> = c
                        .repositories
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|r| r.parse::<RepoName>().is_ok())
                        .take(MAX_CATALOG)
                        .collect();
                    Ok(Bytes::from(serde_json::to_vec(&names).unwrap_or_default()))
                },
            )
            .await?;
        let names: Vec<String> = serde_json::from_slice(&list.value)
            .map_err(|e| Error::internal(format!("cached catalog: {e}")))?;
        Ok(list.map(|_| names.iter().filter_map(|r| r.parse().ok()).collect()))
    }

    /// The chart layers of a manifest, or `None` when it is not a Helm chart.
    pub(super) async fn chart_layers(
        self: &Arc<Self>,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<ChartLayers>> {
        let m = self.manifest(repo, reference).await?;
        Ok(chart_layers(&m.value.bytes))
    }

    /// A small blob of a repository, from cache (when the repository holds it) or fetched,
    /// verified, cached and linked.
    pub(super) async fn small_blob(self: &Arc<Self>, repo: &RepoName, d: &Digest) -> Result<Bytes> {
        let up = self.upstream_repo(repo);
        if self.cache.has_blob(d).await? {
            self.require_blob_link(&up, d).await?;
        }
        let (this, r, dd) = (self.clone(), up.clone(), d.clone());
        self.cache
            .blob_bytes(&BlobKey::new(self.name(), &up, d), move || async move {
                this.registry
                    .verified_blob(&r, &dd.to_string(), this.limits.max_chart_bytes)
                    .await
            })
            .await
    }

    /// One index entry for a tag, remembered by manifest digest.
    async fn entry(
        self: &Arc<Self>,
        repo: &RepoName,
        tag: &str,
        url_prefix: &str,
    ) -> Result<Option<ChartVersion>> {
        let t: Tag = tag.parse()?;
        let layers = match self.chart_layers(repo, &Reference::Tag(t)).await? {
            Some(l) => l,
            None => return Ok(None),
        };
        let key = format!("oci-entry\0{}\0{}\0{url_prefix}", self.name(), layers.chart);
        let (this, repo, tag, url_prefix) = (
            self.clone(),
            repo.clone(),
            tag.to_string(),
            url_prefix.to_string(),
        );
        let entry = self
            .cache
            .derived(
                key,
                None,
                |_| 2048,
                move || async move { this.build_entry(&repo, &tag, &url_prefix, layers).await },
            )
            .await?;
        Ok(Some((*entry).clone()))
    }

    /// An index entry from a chart's config blob (its Chart.yaml).
    async fn build_entry(
        self: &Arc<Self>,
        repo: &RepoName,
        tag: &str,
        url_prefix: &str,
        layers: ChartLayers,
    ) -> Result<Arc<ChartVersion>> {
        let config = self.small_blob(repo, &layers.config).await?;
        let meta: ChartMetadata = serde_json::from_slice(&config).map_err(|e| {
            Error::upstream_invalid(format!("{repo}:{tag}: chart config is not JSON: {e}"))
        })?;
        // The index entry has Chart.yaml's fields under the same names.
        let mut entry: ChartVersion = serde_json::from_value(
            serde_json::to_value(&meta)
                .map_err(|e| Error::internal(format!("chart metadata: {e}")))?,
        )
        .map_err(|e| Error::internal(format!("chart metadata: {e}")))?;
        entry.urls = vec![format!(
            "{url_prefix}{}",
            archive_path(&meta.name, &meta.version)
        )];
        entry.digest = layers.chart.hex().to_string();
        entry.created = Some(
            layers
                .created
                .unwrap_or_else(|| FALLBACK_CREATED.to_string()),
        );
        Ok(Arc::new(entry))
    }

    /// The index.yaml of one chart repository (`repo` given) or of the upstream's charts,
    /// built once per `tag_ttl`.
    pub async fn chart_index(self: &Arc<Self>, repo: Option<&RepoName>) -> Result<BuiltIndex> {
        let key = format!(
            "oci-index\0{}\0{}",
            self.name(),
            repo.map(RepoName::as_str).unwrap_or_default()
        );
        let (this, r) = (self.clone(), repo.cloned());
        let view = self
            .cache
            .derived(
                key.clone(),
                Some(self.config.tag_ttl),
                |v: &IndexView| v.as_ref().map_or(256, |b| b.bytes.len() as u64),
                move || async move { Ok(Arc::new(this.build_index(r.as_ref()).await?)) },
            )
            .await?;
        let age = self.cache.derived_age(&key).unwrap_or_default();
        let mut built = (*view).clone()?;
        built.fresh_for = Some(self.config.tag_ttl.saturating_sub(age));
        Ok(built)
    }

    async fn build_index(self: &Arc<Self>, repo: Option<&RepoName>) -> Result<IndexView> {
        let cache_key = repo.map(|r| r.to_string()).unwrap_or_default();
        let mut stale = false;
        let repos: Vec<(RepoName, String)> = match repo {
            Some(r) => vec![(r.clone(), String::new())],
            None => self
                .chart_repos()
                .await?
                .into_iter()
                .map(|r| {
                    let prefix = format!("{r}/");
                    (r, prefix)
                })
                .collect(),
        };
        let mut jobs = Vec::new();
        for (r, prefix) in &repos {
            let tags = match self.tags_upstream_only(r).await {
                Ok(t) => {
                    stale |= t.stale;
                    t.value
                }
                Err(e) if repo.is_none() => {
                    tracing::warn!(upstream = %self.config.name, repo = %r, error = %e, "skipping repository in the upstream index");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let max = self.limits.max_index_tags;
            let mut newest = version::newest_version_tags(&tags, max.saturating_add(1));
            if newest.len() > max {
                newest.truncate(max);
                tracing::warn!(upstream = %self.config.name, repo = %r, max, "index lists only the newest chart versions (limits.max_index_tags)");
            }
            jobs.extend(
                newest
                    .into_iter()
                    .map(|t| (r.clone(), t.to_string(), prefix.clone())),
            );
        }
        let this = self.clone();
        let results: Vec<Result<Option<ChartVersion>>> = futures::stream::iter(jobs)
            .map(|(r, t, p)| {
                let this = this.clone();
                async move { this.entry(&r, &t, &p).await }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut index = IndexFile {
            api_version: "v1".to_string(),
            ..Default::default()
        };
        for r in results {
            match r {
                Ok(Some(e)) => index.entries.entry(e.name.clone()).or_default().push(e),
                Ok(None) => {}
                Err(e) => return Err(e),
            }
        }
        for versions in index.entries.values_mut() {
            // Newest first, as Helm sorts; ties broken by the version string, so the bytes are
            // deterministic whatever order the fetches finished in.
            versions.sort_by(|a, b| {
                let (pa, pb) = (
                    version::parse_lenient(&a.version),
                    version::parse_lenient(&b.version),
                );
                pb.cmp(&pa).then_with(|| b.version.cmp(&a.version))
            });
            versions.dedup_by(|a, b| a.version == b.version);
        }
        if repo.is_some() && index.entries.is_empty() {
            return Ok(Err(Error::new(
                Kind::NotFound,
                format!("{cache_key} has no Helm chart tags"),
            )));
        }
        let bytes = Bytes::from(render(&index, self.config.index_format));
        Ok(Ok(BuiltIndex {
            etag: format!("\"{}\"", Digest::of(&bytes).hex()),
            bytes,
            stale,
            fresh_for: None,
        }))
    }

    /// A chart archive (or its provenance file) of an OCI chart repository, by version.
    pub async fn chart_archive(
        self: &Arc<Self>,
        repo: &RepoName,
        version_s: &str,
        prov: bool,
    ) -> Result<(Bytes, Digest)> {
        let tag: Tag = version::tag_for_version(version_s).parse()?;
        let layers = self
            .chart_layers(repo, &Reference::Tag(tag))
            .await?
            .ok_or_else(|| {
                Error::new(
                    Kind::NotFound,
                    format!("{repo}:{version_s} is not a Helm chart"),
                )
            })?;
        let d = if prov {
            layers.prov.ok_or_else(|| {
                Error::new(
                    Kind::NotFound,
                    format!("{repo}:{version_s} has no provenance file"),
                )
            })?
        } else {
            layers.chart
        };
        let b = self.small_blob(repo, &d).await?;
        Ok((b, d))
    }
}
