//! An OCI registry upstream, mirrored byte for byte: manifests of every media type keep the
//! upstream's bytes, media type and digest; blobs stream to the first client while they are
//! verified and written (the cache's `stream_blob`). By-digest content is immutable and served
//! from cache forever, but only to a repository that holds it (links); tag resolutions and tag
//! lists are fresh for `tag_ttl`, re-checked with HEAD (which does not count against Docker
//! Hub's pull limit), and the last known answer is served (stale) when the upstream fails.
//! `latest` follows the upstream's `latest` policy.
//!
//! What this module says is how to ask the registry for one thing; memory, refs, single-flight,
//! negative answers and stale copies are the cache's (`cache::Cache`).

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

mod blobs;
mod chart_index;
mod tag_memo;

pub use chart_index::BuiltIndex;
pub use tag_memo::TagMemo;

use super::{ServedManifest, Stores};
use crate::cache::{BlobData, BlobKey, Cache, Freshness, RefName, Served};
use crate::config::{LatestPolicy, Limits, Upstream};
use crate::convert::version;
use crate::error::{Error, Kind, Result};
use crate::ids::{Digest, Reference, RepoName};
use crate::upstream::{Registry, MANIFEST_ACCEPT};

/// Largest manifest or tag-list page we accept.
const MAX_MANIFEST: u64 = 4 << 20;
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
    cache: Arc<Cache>,
    limits: Limits,
    /// Warm answers to a manifest by tag, until the tag is due to be asked about again (shared
    /// by every registry upstream; this one's entries are under `tags_owner`).
    tags: Arc<TagMemo>,
    tags_owner: u64,
}

impl OciUpstream {
    pub fn new(
        config: Upstream,
        client: Arc<crate::upstream::UpstreamClient>,
        stores: &Stores,
        limits: Limits,
    ) -> OciUpstream {
        let registry = Arc::new(Registry::new(
            client,
            &config.url,
            config.credentials.clone(),
            config.name.as_str(),
        ));
        OciUpstream {
            registry,
            cache: stores.cache.clone(),
            limits,
            config,
            tags: stores.tag_memo.clone(),
            tags_owner: tag_memo::owner(),
        }
    }

    fn name(&self) -> &str {
        self.config.name.as_str()
    }

    /// The shared cache this upstream reads through.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
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
        RefName::new([what, self.name()].into_iter().chain(parts.iter().copied()))
    }

    /// The upstream's tag list of `repo` as known here (however old), without asking, with
    /// how fresh it is: for the catalog page.
    pub async fn peek_tags(
        &self,
        repo: &RepoName,
    ) -> (Option<Vec<String>>, crate::cache::ValueState) {
        let name = self.ref_name("tags", &[&self.upstream_repo(repo)]);
        let state = self.cache.value_state(&name).await;
        let mut tags: Option<Vec<String>> = self
            .cache
            .known_value(&name)
            .await
            .and_then(|b| serde_json::from_slice(&b).ok());
        if tags.is_none() {
            // never listed here: the tags resolved here before (a pull by tag)
            let prefix = self.ref_name("tag", &[&self.upstream_repo(repo)]);
            let known: Vec<String> = self
                .cache
                .refs()
                .list(&prefix)
                .await
                .unwrap_or_default()
                .iter()
                .filter_map(|n| n.parts().last().cloned())
                .collect();
            tags = (!known.is_empty()).then_some(known);
        }
        (tags, state)
    }

    /// The digest `repo:tag` resolved to when last asked, without asking.
    pub async fn peek_tag(&self, repo: &RepoName, tag: &str) -> Option<Digest> {
        let name = self.ref_name("tag", &[&self.upstream_repo(repo), tag]);
        let b = self.cache.known_value(&name).await?;
        std::str::from_utf8(&b).ok()?.trim().parse().ok()
    }

    /// The repositories `charts:` names, else the registry's catalog as known here, without
    /// asking.
    pub async fn peek_repositories(&self) -> Vec<RepoName> {
        if !self.config.charts.is_empty() {
            return self.config.charts.clone();
        }
        let Some(b) = self
            .cache
            .known_value(&RefName::new(["catalog", self.name()]))
            .await
        else {
            return Vec::new();
        };
        serde_json::from_slice::<Vec<String>>(&b)
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.parse().ok())
            .collect()
    }

    /// The upstream's tags, all pages; fresh for `tag_ttl`, the last good list on failure.
    async fn upstream_tags(self: &Arc<Self>, repo: &str) -> Result<Served<Arc<Vec<String>>>> {
        let (this, r) = (self.clone(), repo.to_string());
        self.cache
            .value_as(
                &self.ref_name("tags", &[repo]),
                Freshness::for_(self.config.tag_ttl, "tags"),
                |b| {
                    serde_json::from_slice(b)
                        .map_err(|e| Error::internal(format!("a stored tag list is not JSON: {e}")))
                },
                move |_| async move {
                    let tags = this.fetch_tags(&r).await?;
                    Ok(Bytes::from(serde_json::to_vec(&tags).unwrap_or_default()))
                },
            )
            .await
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

    /// The floating tags (`float:`) the upstream's tags imply, each with its target.
    fn floating(&self, tags: &[String]) -> std::collections::BTreeMap<String, String> {
        if !self.config.float.any() {
            return Default::default();
        }
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        version::floating_tags(&tags, self.config.float)
    }

    /// The upstream's tags of a repository (no synthesised `latest`).
    pub async fn tags_upstream_only(
        self: &Arc<Self>,
        repo: &RepoName,
    ) -> Result<Served<Arc<Vec<String>>>> {
        let up = self.upstream_repo(repo);
        self.upstream_tags(&up).await
    }

    /// The tag list as served: the upstream's, plus `latest` where it is synthesised.
    pub async fn tags(self: &Arc<Self>, repo: &RepoName) -> Result<Served<Vec<String>>> {
        let up = self.upstream_repo(repo);
        let upstream = self.upstream_tags(&up).await?;
        Ok(upstream.map(|list| {
            let mut tags: Vec<String> = list.as_ref().clone();
            if self.latest_target(&tags).is_some() {
                tags.push(version::LATEST.to_string());
            }
            tags.extend(self.floating(list.as_ref()).into_keys());
            tags.sort();
            tags.dedup();
            tags
        }))
    }

    pub async fn manifest(
        self: &Arc<Self>,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Served<ServedManifest>> {
        let up = self.upstream_repo(repo);
        match reference {
            Reference::Digest(d) => {
                Ok(Served::fresh(self.manifest_by_digest(&up, d, false).await?))
            }
            Reference::Tag(t) => {
                if let Some(hit) = self.tags.get(self.tags_owner, &up, t.as_str()) {
                    crate::metrics::cache_lookup("memory", true);
                    if hit.synthesized_latest {
                        crate::metrics::latest_synthesized();
                    }
                    return Ok(hit.served);
                }
                let mut tag = t.as_str().to_string();
                // what the answer was built from: the tag list too, when `latest` is ours
                let mut from = Served::fresh(());
                let mut synthesized_latest = false;
                if tag == version::LATEST && self.config.latest != LatestPolicy::Never {
                    let tags = self.upstream_tags(&up).await?;
                    if let Some(target) = self.latest_target(&tags.value) {
                        crate::metrics::latest_synthesized();
                        synthesized_latest = true;
                        tag = target;
                    }
                    from = tags.map(|_| ());
                } else if self.config.float.any() && version::may_float(&tag) {
                    // a floating tag follows the tag list (re-read every `tag_ttl`)
                    let tags = self.upstream_tags(&up).await?;
                    if let Some(target) = self.floating(&tags.value).remove(&tag) {
                        tag = target;
                    }
                    from = tags.map(|_| ());
                }
                let d = self.resolve_tag(&up, &tag).await?;
                // This repository's own tag names the manifest: it holds it.
                let m = self.manifest_by_digest(&up, &d.value, true).await?;
                let served = from.then(d.map(|_| m));
                self.tags.put(
                    self.tags_owner,
                    &up,
                    t.as_str(),
                    &served,
                    synthesized_latest,
                );
                Ok(served)
            }
        }
    }

    /// Tag -> digest: fresh for `tag_ttl`, then re-checked with HEAD; the last known answer when
    /// the upstream fails.
    async fn resolve_tag(self: &Arc<Self>, repo: &str, tag: &str) -> Result<Served<Digest>> {
        let (this, r, t) = (self.clone(), repo.to_string(), tag.to_string());
        let served = self
            .cache
            .value_as(
                &self.ref_name("tag", &[repo, tag]),
                Freshness::for_(self.config.tag_ttl, "tag"),
                |b| {
                    std::str::from_utf8(b)
                        .map_err(|_| Error::internal("a stored tag is not text"))?
                        .trim()
                        .parse::<Digest>()
                },
                move |known| async move {
                    // A tag seen before is re-checked with a HEAD (free on Docker Hub); a new
                    // one needs its manifest anyway, so one GET resolves and fetches it.
                    let d = if known.is_some() {
                        this.head_tag(&r, &t).await?
                    } else {
                        this.get_tag(&r, &t).await?
                    };
                    Ok(Bytes::from(d.to_string()))
                },
            )
            .await?;
        Ok(served.map(|d| (*d).clone()))
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
        let content_type = r.header("content-type").map(str::to_string);
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
        let mt = media_type(&d, content_type, &bytes)?;
        self.cache.put_manifest(&d, bytes.clone(), &mt).await?;
        self.cache
            .links()
            .add_manifest(self.name(), repo, &d, &bytes)
            .await;
        Ok(d)
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
        let links = self.cache.links();
        let (bytes, media_type) = match self.cache.cached_manifest(d).await? {
            Some(m) => {
                if !named_here && !links.has(self.name(), repo, d).await {
                    Box::pin(self.head_manifest(repo, d)).await?;
                }
                m
            }
            None => {
                let (this, r, dd) = (self.clone(), repo.to_string(), d.clone());
                Box::pin(
                    self.cache
                        .manifest(&BlobKey::new(self.name(), repo, d), move || async move {
                            this.get_manifest(&r, &dd).await
                        }),
                )
                .await?
            }
        };
        links.add_manifest(self.name(), repo, d, &bytes).await;
        Ok(ServedManifest {
            bytes,
            digest: d.clone(),
            media_type,
        })
    }

    /// GETs a manifest by digest, verified, with its media type.
    async fn get_manifest(&self, repo: &str, d: &Digest) -> Result<(Bytes, String)> {
        let resp = self
            .registry
            .request(
                reqwest::Method::GET,
                repo,
                &format!("manifests/{d}"),
                MANIFEST_ACCEPT,
            )
            .await?;
        resp.require_ok(|| {
            Error::new(
                Kind::ManifestUnknown,
                format!("manifest {d} unknown upstream"),
            )
        })?;
        let ct = resp.header("content-type").map(str::to_string);
        let bytes = resp.bytes(MAX_MANIFEST).await?;
        // Wrong bytes are named as such before anything else is said about them (the cache
        // checks again before storing).
        let actual = Digest::of(&bytes);
        if &actual != d {
            return Err(Error::upstream_invalid(format!(
                "manifest {d} from upstream hashes to {actual}: refused"
            )));
        }
        let mt = media_type(d, ct, &bytes)?;
        Ok((bytes, mt))
    }

    /// Asks the upstream whether `repo` holds the manifest `d` (a HEAD, which Docker Hub does
    /// not count as a pull): `MANIFEST_UNKNOWN` (remembered briefly) when it does not.
    async fn head_manifest(&self, repo: &str, d: &Digest) -> Result<()> {
        let key = format!("head-manifest\0{}\0{repo}\0{d}", self.name());
        if let Some(e) = self.cache.remembered_failure(&key) {
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
            self.cache.remember_failure(key, e);
        }
        answer
    }

    // ------------------------------------------------------------- air gap (export, import)

    /// The tags resolved here before: (repository upstream, tag, digest), for export.
    pub async fn resolved_tags(&self) -> Result<Vec<(String, String, Digest)>> {
        let mut out = Vec::new();
        for name in self
            .cache
            .refs()
            .list(&RefName::new(["tag", self.name()]))
            .await?
        {
            let Some(v) = self.cache.known_value(&name).await else {
                continue;
            };
            let d = std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.trim().parse::<Digest>().ok());
            if let (Some(d), [_, _, repo, tag]) = (d, name.parts()) {
                out.push((repo.clone(), tag.clone(), d));
            }
        }
        Ok(out)
    }

    /// What `latest` resolves to among `tags` under this upstream's policy (`None`: passed
    /// through, or nothing stable).
    pub fn synthesized_latest(&self, tags: &[String]) -> Option<String> {
        self.latest_target(tags)
    }

    /// Installs a bundle's manifest for a tag (upstream repository name): the tag, the
    /// manifest's media type, and links from the repository to it and what it references.
    pub async fn install_tag(
        &self,
        repo: &str,
        tag: Option<&str>,
        d: &Digest,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<()> {
        self.cache
            .put_manifest(d, bytes.clone(), media_type)
            .await?;
        if let Some(t) = tag {
            self.cache
                .put_value(
                    &self.ref_name("tag", &[repo, t]),
                    Bytes::from(d.to_string()),
                )
                .await;
        }
        self.cache
            .links()
            .add_manifest(self.name(), repo, d, &bytes)
            .await;
        Ok(())
    }

    /// Installs a repository's tag list from a bundle (the tags it carries).
    pub async fn install_tags(&self, repo: &str, tags: &[String]) {
        let json = serde_json::to_vec(tags).unwrap_or_default();
        self.cache
            .put_value(&self.ref_name("tags", &[repo]), Bytes::from(json))
            .await;
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

/// A manifest's media type: the registry's `Content-Type` unless it is missing or generic, else
/// the manifest's own `mediaType` field.
fn media_type(d: &Digest, content_type: Option<String>, bytes: &[u8]) -> Result<String> {
    content_type
        .filter(|c| !c.is_empty() && !c.starts_with("text/") && c != "application/octet-stream")
        .or_else(|| {
            serde_json::from_slice::<serde_json::Value>(bytes)
                .ok()
                .and_then(|v| v["mediaType"].as_str().map(str::to_string))
        })
        .ok_or_else(|| {
            Error::upstream_invalid(format!(
                "manifest {d} has no media type and is not a manifest"
            ))
        })
}

/// The `last` parameter of a tag list's `Link: <...?n=..&last=..>; rel="next"`.
fn next_last(link: &str) -> Option<String> {
    let inner = link.split('>').next()?.trim_start().trim_start_matches('<');
    let query = inner.split_once('?')?.1;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "last")
        .map(|(_, v)| v.into_owned())
}

/// An upstream blob body as the cache reads it.
fn body(r: crate::upstream::RegistryResponse, d: &Digest) -> crate::cache::BodyStream {
    let d = d.clone();
    r.into_stream()
        .map(move |c| {
            c.map_err(|e| {
                Error::upstream_unavailable(format!("blob {d}: upstream body failed: {e}"))
                    .with_source(e)
            })
        })
        .boxed()
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
