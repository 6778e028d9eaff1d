//! Blobs of an OCI upstream: who may read one (a repository linked to it, or confirmed by the
//! upstream with a HEAD), and how to fetch one. Streaming, verification, the tee for
//! concurrent and ranged readers, and the negative cache are the cache's.

use std::sync::Arc;

use super::{body, BlobAnswer, OciUpstream};
use crate::cache::{BlobKey, Streamed};
use crate::error::{Error, Kind, Result};
use crate::ids::{ByteRange, Digest, RepoName};
use crate::upstream::redact;

impl OciUpstream {
    /// A blob: from cache when this repository holds it; HEAD of a cold blob asks the upstream
    /// for its length; a cold GET streams while it is fetched (a `Range` from its offset).
    pub async fn blob(
        self: &Arc<Self>,
        repo: &RepoName,
        d: &Digest,
        head: bool,
        range: Option<ByteRange>,
    ) -> Result<BlobAnswer> {
        let up = self.upstream_repo(repo);
        // The warm path: one memory lookup, then the link check.
        if let Some(data) = self.cache.memory_blob(d).await {
            self.require_blob_link(&up, d).await?;
            return Ok(BlobAnswer::Data(data));
        }
        let cached = self.cache.has_blob(d).await?;
        if cached {
            // Cached, but another repository (or upstream) may have put it there: serve it
            // here only when this repository holds it, which its upstream decides.
            self.require_blob_link(&up, d).await?;
        } else if head {
            return Ok(BlobAnswer::Head(Box::pin(self.head_blob(&up, d)).await?));
        }
        let key = BlobKey::new(self.name(), &up, d);
        let (this, r, dd) = (self.clone(), up.clone(), d.clone());
        let fetch = move || {
            let (this, r, dd) = (this.clone(), r.clone(), dd.clone());
            async move {
                let resp = this
                    .registry
                    .request(reqwest::Method::GET, &r, &format!("blobs/{dd}"), "*/*")
                    .await?;
                resp.require_ok(|| {
                    Error::new(Kind::BlobUnknown, format!("blob {dd} unknown upstream"))
                })?;
                let len = resp.content_length().ok_or_else(|| {
                    Error::upstream_invalid(format!(
                        "{} sent no Content-Length",
                        redact(resp.url())
                    ))
                })?;
                Ok((len, body(resp, &dd)))
            }
        };
        // Boxed, as every cold step: the warm path's future stays small.
        let streamed =
            Box::pin(
                self.cache
                    .stream_blob(&key, range, self.limits.max_blob_bytes, fetch),
            )
            .await?;
        Ok(match streamed {
            Streamed::Data(data) => BlobAnswer::Data(data),
            Streamed::Stream(len, rx) => BlobAnswer::Stream(len, rx),
            Streamed::Partial {
                len,
                start,
                end,
                rx,
            } => BlobAnswer::Partial {
                len,
                start,
                end,
                rx,
            },
        })
    }

    /// Waits until a cold fetch of `d` for `repo` (if one runs) is stored.
    pub async fn settled(&self, repo: &RepoName, d: &Digest) -> Result<()> {
        let up = self.upstream_repo(repo);
        self.cache.settled(&BlobKey::new(self.name(), &up, d)).await
    }

    /// Requires `repo` to hold the cached blob `d`: linked before, or confirmed now by the
    /// upstream (a HEAD), which then links it. Anything else is `BLOB_UNKNOWN` (or the
    /// upstream's error), exactly as if the blob were not cached here.
    pub(super) async fn require_blob_link(&self, repo: &str, d: &Digest) -> Result<()> {
        let links = self.cache.links();
        if links.has(self.name(), repo, d).await {
            return Ok(());
        }
        Box::pin(self.head_blob(repo, d)).await?;
        links.add(self.name(), repo, d).await;
        Ok(())
    }

    /// The upstream's HEAD of a blob: its length, or `BLOB_UNKNOWN` (remembered briefly).
    async fn head_blob(&self, repo: &str, d: &Digest) -> Result<u64> {
        let key = format!("head-blob\0{}\0{repo}\0{d}", self.name());
        if let Some(e) = self.cache.remembered_failure(&key) {
            return Err(e);
        }
        let answer = async {
            let r = self
                .registry
                .request(reqwest::Method::HEAD, repo, &format!("blobs/{d}"), "*/*")
                .await?;
            match (r.status, r.content_length()) {
                (200, Some(n)) => Ok(n),
                (404, _) => Err(Error::new(
                    Kind::BlobUnknown,
                    format!("blob {d} unknown upstream"),
                )),
                (s, _) => Err(Error::upstream_invalid(format!(
                    "{} answered HTTP {s} without a length",
                    redact(r.url())
                ))),
            }
        }
        .await;
        if let Err(e) = &answer {
            self.cache.remember_failure(key, e);
        }
        answer
    }
}
