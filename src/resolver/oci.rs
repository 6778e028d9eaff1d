//! An OCI registry upstream, mirrored byte for byte: manifests of every media type keep the
//! upstream's bytes, media type and digest; blobs stream to the first client while they are
//! written to disk, and only a verified blob is committed (the last chunk is held back until the
//! digest checks, so a client never completes a wrong body). By-digest content is immutable and
//! served from cache forever; tag resolutions and tag lists are fresh for `tag_ttl`, re-checked
//! with HEAD (which does not count against Docker Hub's pull limit), and the last known answer is
//! served when the upstream fails. `latest` follows the upstream's `latest` policy.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

mod blobs;
mod chart_index;

pub use chart_index::BuiltIndex;

use super::{ServedManifest, Stores};
use crate::cache::BlobData;
use crate::cache::{BlobCache, Flight, Links, RefName, RefStore};
use crate::config::{LatestPolicy, Limits, Upstream};
use crate::convert::index::ChartVersion;
use crate::convert::version;
use crate::error::{Error, Kind, Result};
use crate::ids::{Digest, Reference, RepoName};
use crate::upstream::{Registry, MANIFEST_ACCEPT};

/// Largest manifest or tag-list page we accept.
const MAX_MANIFEST: u64 = 4 << 20;
/// How long a failed fetch is answered from memory instead of asking the upstream again.
const NEGATIVE_TTL: std::time::Duration = std::time::Duration::from_secs(1);
/// Most tag-list pages followed for one repository.
const MAX_TAG_PAGES: usize = 100;

/// How a blob request is answered.
pub enum BlobAnswer {
    /// From cache.
    Data(BlobData),
    /// HEAD of a blob not cached: its length, from the upstream.
    Head(u64),
    /// A cold GET: the blob's `len` bytes arriving as they are fetched (and cached).
    Stream(u64, mpsc::Receiver<Result<Bytes>>),
    /// A cold GET with a `Range`: bytes `start..end` of a blob of `len`, as they arrive.
    Partial {
        len: u64,
        start: u64,
        end: u64,
        rx: mpsc::Receiver<Result<Bytes>>,
    },
}

pub struct OciUpstream {
    pub config: Upstream,
    registry: Arc<Registry>,
    blobs: Arc<BlobCache>,
    refs: Arc<dyn RefStore>,
    links: Arc<Links>,
    limits: Limits,
    tag_lists: moka::future::Cache<String, Arc<Vec<String>>>,
    resolutions: moka::future::Cache<(String, String), Digest>,
    manifests: moka::future::Cache<Digest, ServedManifest>,
    tags_flight: Flight<String, Arc<Vec<String>>>,
    resolve_flight: Flight<(String, String), Digest>,
    manifest_flight: Flight<(String, Digest), ServedManifest>,
    blob_flight: Flight<blobs::FetchKey, ()>,
    /// Index entries by (chart layer digest, URL prefix): a refresh only fetches new configs.
    index_entries: moka::future::Cache<(Digest, String), ChartVersion>,
    /// Built index.yaml views, fresh for `tag_ttl`.
    built_indexes: moka::future::Cache<String, Result<BuiltIndex>>,
    /// Recent upstream failures, answered again without asking for `NEGATIVE_TTL`.
    failures: moka::future::Cache<String, Error>,
    /// In-flight blob fetches whose bytes followers can stream.
    tees: std::sync::Mutex<std::collections::HashMap<blobs::FetchKey, Arc<crate::cache::Tee>>>,
    /// Woken when a tee joins `tees`, so followers waiting for one need not poll.
    tee_added: tokio::sync::Notify,
}

impl OciUpstream {
    pub fn new(
        config: Upstream,
        client: Arc<crate::upstream::UpstreamClient>,
        stores: &Stores,
        limits: Limits,
    ) -> OciUpstream {
        let (blobs, refs, links) = (
            stores.blobs.clone(),
            stores.refs.clone(),
            stores.links.clone(),
        );
        let registry = Arc::new(Registry::new(
            client,
            &config.url,
            config.credentials.clone(),
            config.name.as_str(),
        ));
        let ttl = config.tag_ttl;
        OciUpstream {
            registry,
            blobs,
            refs,
            links,
            limits,
            tag_lists: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl)
                .build(),
            resolutions: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            manifests: moka::future::Cache::builder().max_capacity(10_000).build(),
            tags_flight: Flight::default(),
            resolve_flight: Flight::default(),
            manifest_flight: Flight::default(),
            blob_flight: Flight::default(),
            index_entries: moka::future::Cache::builder().max_capacity(100_000).build(),
            tees: Default::default(),
            tee_added: tokio::sync::Notify::new(),
            failures: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(NEGATIVE_TTL)
                .build(),
            built_indexes: moka::future::Cache::builder()
                .max_capacity(1_000)
                .time_to_live(ttl)
                .build(),
            config,
        }
    }

    /// The repository name upstream: Docker Hub keeps official images under `library/`.
    pub fn upstream_repo(&self, repo: &RepoName) -> String {
        if self.config.is_docker_hub() && !repo.as_str().contains('/') {
            format!("library/{repo}")
        } else {
            repo.as_str().to_string()
        }
    }

    fn ref_name(&self, what: &str, parts: &[&str]) -> RefName {
        RefName::new(
            [what, self.config.name.as_str()]
                .into_iter()
                .chain(parts.iter().copied()),
        )
    }

    /// The upstream's tags, all pages; fresh for `tag_ttl`, the last good list on failure.
    async fn upstream_tags(self: &Arc<Self>, repo: &str) -> Result<Arc<Vec<String>>> {
        if let Some(t) = self.tag_lists.get(repo).await {
            return Ok(t);
        }
        let this = self.clone();
        let r = repo.to_string();
        let fetched = self
            .tags_flight
            .run(r.clone(), async move {
                let tags = Arc::new(this.fetch_tags(&r).await?);
                this.tag_lists.insert(r.clone(), tags.clone()).await;
                let json = serde_json::to_string(&*tags).unwrap_or_default();
                let (refs, name) = (this.refs.clone(), this.ref_name("tags", &[&r]));
                persist(format!("tag list {r}"), async move {
                    refs.put(&name, json.as_bytes()).await
                });
                Ok(tags)
            })
            .await;
        match fetched {
            Err(e) if e.kind() != Kind::NameUnknown => {
                let stale = self.refs.get_text(&self.ref_name("tags", &[repo])).await;
                match stale.and_then(|s| serde_json::from_str::<Vec<String>>(&s).ok()) {
                    Some(tags) => {
                        crate::metrics::stale_served("tags");
                        tracing::warn!(upstream = %self.config.name, repo, error = %e, "tag list refresh failed; serving the last good list");
                        Ok(Arc::new(tags))
                    }
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    async fn fetch_tags(&self, repo: &str) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Page {
            tags: Option<Vec<String>>,
        }
        let mut all = Vec::new();
        let mut tail = "tags/list?n=1000".to_string();
        for _ in 0..MAX_TAG_PAGES {
            let r = self
                .registry
                .request(reqwest::Method::GET, repo, &tail, "application/json")
                .await?;
            r.require_ok(|| {
                Error::new(
                    Kind::NameUnknown,
                    format!("repository {repo:?} unknown upstream"),
                )
            })?;
            let next = r.header("link").and_then(next_last);
            let body = r.bytes(MAX_MANIFEST).await?;
            let page: Page = serde_json::from_slice(&body).map_err(|e| {
                Error::upstream_invalid(format!("tag list of {repo} is not JSON: {e}"))
            })?;
            all.extend(page.tags.unwrap_or_default());
            match next {
                Some(last) => {
                    let q: String = url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("n", "1000")
                        .append_pair("last", &last)
                        .finish();
                    tail = format!("tags/list?{q}");
                }
                None => return Ok(all),
            }
        }
        tracing::warn!(
            repo,
            pages = MAX_TAG_PAGES,
            "tag list cut: the upstream kept linking to more pages"
        );
        Ok(all)
    }

    /// What `latest` means here, given the upstream's tags: `None` to pass it through.
    fn latest_target(&self, tags: &[String]) -> Option<String> {
        let has_latest = tags.iter().any(|t| t == version::LATEST);
        let synth = match self.config.latest {
            LatestPolicy::Never => false,
            LatestPolicy::Always => true,
            LatestPolicy::SynthesizeIfMissing => !has_latest,
        };
        if !synth {
            return None;
        }
        version::highest_stable(tags.iter().map(String::as_str)).map(str::to_string)
    }

    /// The upstream's tags of a repository (no synthesised `latest`).
    pub async fn tags_upstream_only(self: &Arc<Self>, repo: &RepoName) -> Result<Arc<Vec<String>>> {
        let up = self.upstream_repo(repo);
        self.upstream_tags(&up).await
    }

    /// The tag list as served: the upstream's, plus `latest` where it is synthesised.
    pub async fn tags(self: &Arc<Self>, repo: &RepoName) -> Result<Vec<String>> {
        let up = self.upstream_repo(repo);
        let upstream = self.upstream_tags(&up).await?;
        let mut tags: Vec<String> = upstream.as_ref().clone();
        if self.latest_target(&tags).is_some() {
            tags.push(version::LATEST.to_string());
        }
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    pub async fn manifest(
        self: &Arc<Self>,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ServedManifest> {
        let up = self.upstream_repo(repo);
        let (digest, named_here) = match reference {
            Reference::Digest(d) => (d.clone(), false),
            Reference::Tag(t) => {
                let mut tag = t.as_str().to_string();
                if tag == version::LATEST && self.config.latest != LatestPolicy::Never {
                    let tags = self.upstream_tags(&up).await?;
                    if let Some(target) = self.latest_target(&tags) {
                        crate::metrics::latest_synthesized();
                        tag = target;
                    }
                }
                (self.resolve_tag(&up, &tag).await?, true)
            }
        };
        self.manifest_by_digest(&up, &digest, named_here).await
    }

    /// Tag -> digest: fresh for `tag_ttl`, then re-checked with HEAD; the last known answer when
    /// the upstream fails.
    async fn resolve_tag(self: &Arc<Self>, repo: &str, tag: &str) -> Result<Digest> {
        let key = (repo.to_string(), tag.to_string());
        if let Some(d) = self.resolutions.get(&key).await {
            return Ok(d);
        }
        let ref_name = self.ref_name("tag", &[repo, tag]);
        let this = self.clone();
        let (r, t, rn) = (repo.to_string(), tag.to_string(), ref_name.clone());
        let result = self
            .resolve_flight
            .run(key.clone(), async move {
                // A tag seen before is re-checked with a HEAD (free on Docker Hub); a new one
                // needs its manifest anyway, so one GET resolves and fetches it.
                let d = if this.refs.get_digest(&rn).await.is_some() {
                    this.head_tag(&r, &t).await?
                } else {
                    this.get_tag(&r, &t).await?
                };
                let (refs, dd) = (this.refs.clone(), d.clone());
                persist(format!("tag {r}:{t}"), async move {
                    refs.put(&rn, dd.to_string().as_bytes()).await
                });
                this.resolutions.insert((r, t), d.clone()).await;
                Ok(d)
            })
            .await;
        match result {
            Err(e) if e.kind() != Kind::ManifestUnknown && e.kind() != Kind::NameUnknown => {
                match self.refs.get_digest(&ref_name).await {
                    Some(d) => {
                        crate::metrics::stale_served("tag");
                        tracing::warn!(upstream = %self.config.name, repo, tag, error = %e, "tag check failed; serving the last known digest");
                        Ok(d)
                    }
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    /// A HEAD or GET of `manifests/<tag>` that must answer 200.
    async fn tag_request(
        &self,
        method: reqwest::Method,
        repo: &str,
        tag: &str,
    ) -> Result<crate::upstream::RegistryResponse> {
        let r = self
            .registry
            .request(method, repo, &format!("manifests/{tag}"), MANIFEST_ACCEPT)
            .await?;
        r.require_ok(|| {
            Error::new(
                Kind::ManifestUnknown,
                format!("{repo}:{tag} unknown upstream"),
            )
        })?;
        Ok(r)
    }

    async fn head_tag(self: &Arc<Self>, repo: &str, tag: &str) -> Result<Digest> {
        let r = self.tag_request(reqwest::Method::HEAD, repo, tag).await?;
        if let Some(d) = r
            .header("docker-content-digest")
            .and_then(|h| h.parse().ok())
        {
            return Ok(d);
        }
        // No digest header: fetch by tag and name it by its bytes.
        self.get_tag(repo, tag).await
    }

    /// GETs a manifest by tag, stores it by the digest of its bytes (checked against the
    /// registry's `Docker-Content-Digest` when it sends one) and returns that digest.
    async fn get_tag(self: &Arc<Self>, repo: &str, tag: &str) -> Result<Digest> {
        let r = self.tag_request(reqwest::Method::GET, repo, tag).await?;
        let media_type = r.header("content-type").map(str::to_string);
        let claimed: Option<Digest> = r
            .header("docker-content-digest")
            .and_then(|h| h.parse().ok());
        let bytes = r.bytes(MAX_MANIFEST).await?;
        let d = Digest::of(&bytes);
        if let Some(c) = claimed {
            if c != d {
                return Err(Error::upstream_invalid(format!(
                    "manifest {repo}:{tag} hashes to {d}, the registry says {c}: refused"
                )));
            }
        }
        self.store_manifest(&d, bytes, media_type).await?;
        Ok(d)
    }

    async fn store_manifest(
        &self,
        d: &Digest,
        bytes: Bytes,
        content_type: Option<String>,
    ) -> Result<ServedManifest> {
        let media_type = content_type
            .filter(|c| !c.is_empty() && !c.starts_with("text/") && c != "application/octet-stream")
            .or_else(|| {
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["mediaType"].as_str().map(str::to_string))
            })
            .ok_or_else(|| {
                Error::upstream_invalid(format!(
                    "manifest {d} has no media type and is not a manifest"
                ))
            })?;
        let m = ServedManifest {
            bytes,
            digest: d.clone(),
            media_type,
        };
        self.manifests.insert(d.clone(), m.clone()).await;
        let (blobs, refs, mm) = (self.blobs.clone(), self.refs.clone(), m.clone());
        persist(format!("manifest {d}"), async move {
            blobs.put(&mm.digest, mm.bytes).await?;
            refs.put(
                &RefName::new(["mediatype", &mm.digest.to_string()]),
                mm.media_type.as_bytes(),
            )
            .await
        });
        Ok(m)
    }

    /// A manifest this process or an earlier one stored, whichever repository it came from.
    async fn cached_manifest(&self, d: &Digest) -> Result<Option<ServedManifest>> {
        if let Some(m) = self.manifests.get(d).await {
            return Ok(Some(m));
        }
        let Some(media_type) = self
            .refs
            .get_text(&RefName::new(["mediatype", &d.to_string()]))
            .await
        else {
            return Ok(None);
        };
        let Some(bytes) = self.blobs.get(d).await? else {
            return Ok(None);
        };
        let m = ServedManifest {
            bytes,
            digest: d.clone(),
            media_type,
        };
        self.manifests.insert(d.clone(), m.clone()).await;
        Ok(Some(m))
    }

    /// A manifest by digest: immutable, so from cache forever once fetched and verified, but
    /// only to a repository that holds it: `named_here` when this repository's own tag
    /// resolved to it, else a link (or the upstream confirming it with a HEAD). Whatever is
    /// served here links the repository to the manifest and everything it references.
    async fn manifest_by_digest(
        self: &Arc<Self>,
        repo: &str,
        d: &Digest,
        named_here: bool,
    ) -> Result<ServedManifest> {
        let upstream = self.config.name.as_str();
        if let Some(m) = self.cached_manifest(d).await? {
            if !named_here && !self.links.has(upstream, repo, d).await {
                self.head_manifest(repo, d).await?;
            }
            self.links.add_manifest(upstream, repo, d, &m.bytes).await;
            return Ok(m);
        }
        let failure_key = format!("manifest\0{repo}\0{d}");
        if let Some(e) = self.failures.get(&failure_key).await {
            return Err(e);
        }
        let this = self.clone();
        let (r, dd) = (repo.to_string(), d.clone());
        let result = self
            .manifest_flight
            .run((r.clone(), d.clone()), async move {
                let resp = this
                    .registry
                    .request(
                        reqwest::Method::GET,
                        &r,
                        &format!("manifests/{dd}"),
                        MANIFEST_ACCEPT,
                    )
                    .await?;
                resp.require_ok(|| {
                    Error::new(
                        Kind::ManifestUnknown,
                        format!("manifest {dd} unknown upstream"),
                    )
                })?;
                let ct = resp.header("content-type").map(str::to_string);
                let bytes = resp.bytes(MAX_MANIFEST).await?;
                let actual = Digest::of(&bytes);
                if actual != dd {
                    return Err(Error::upstream_invalid(format!(
                        "manifest {dd} from upstream hashes to {actual}: refused"
                    )));
                }
                this.store_manifest(&dd, bytes, ct).await
            })
            .await;
        match &result {
            Ok(m) => self.links.add_manifest(upstream, repo, d, &m.bytes).await,
            Err(e) => self.remember_failure(failure_key, e).await,
        }
        result
    }

    /// Asks the upstream whether `repo` holds the manifest `d` (a HEAD, which Docker Hub does
    /// not count as a pull): `MANIFEST_UNKNOWN` (remembered briefly) when it does not.
    async fn head_manifest(&self, repo: &str, d: &Digest) -> Result<()> {
        let failure_key = format!("manifest\0{repo}\0{d}");
        if let Some(e) = self.failures.get(&failure_key).await {
            return Err(e);
        }
        let answer = async {
            let r = self
                .registry
                .request(
                    reqwest::Method::HEAD,
                    repo,
                    &format!("manifests/{d}"),
                    MANIFEST_ACCEPT,
                )
                .await?;
            r.require_ok(|| {
                Error::new(
                    Kind::ManifestUnknown,
                    format!("manifest {d} unknown upstream"),
                )
            })
        }
        .await;
        if let Err(e) = &answer {
            self.remember_failure(failure_key, e).await;
        }
        answer
    }

    /// `GET /v2/<name>/referrers/<digest>`: passed through (not cached: it changes as artifacts
    /// are attached).
    pub async fn referrers(
        &self,
        repo: &RepoName,
        d: &Digest,
        query: Option<&str>,
    ) -> Result<(u16, String, Bytes)> {
        let up = self.upstream_repo(repo);
        let tail = match query {
            Some(q) if !q.is_empty() => format!("referrers/{d}?{q}"),
            _ => format!("referrers/{d}"),
        };
        let r = self
            .registry
            .request(
                reqwest::Method::GET,
                &up,
                &tail,
                "application/vnd.oci.image.index.v1+json",
            )
            .await?;
        let status = r.status;
        let ct = r
            .header("content-type")
            .unwrap_or("application/json")
            .to_string();
        Ok((status, ct, r.bytes(MAX_MANIFEST).await?))
    }
}

/// Writes to disk off the response path. The answer is already in memory for this process;
/// the write (temp file, fsync, rename: atomic and durable) is for a restart, so a client
/// need not wait for the fsync. A failed write only costs a restart one upstream request.
fn persist(what: String, write: impl std::future::Future<Output = Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = write.await {
            tracing::warn!(%what, error = %e, "not persisted; a restart will ask the upstream again");
        }
    });
}

/// The `last` parameter of a tag list's `Link: <...?n=..&last=..>; rel="next"`.
fn next_last(link: &str) -> Option<String> {
    let inner = link.split('>').next()?.trim_start().trim_start_matches('<');
    let query = inner.split_once('?')?.1;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "last")
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers() {
        assert_eq!(
            next_last("</v2/a/tags/list?n=2&last=v1.0>; rel=\"next\""),
            Some("v1.0".to_string())
        );
        assert_eq!(
            next_last("<https://r/v2/a/tags/list?last=x%2By&n=1>; rel=next"),
            Some("x+y".into())
        );
        assert_eq!(next_last("garbage"), None);
    }
}
