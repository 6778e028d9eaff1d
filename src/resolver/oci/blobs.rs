//! Blobs of an OCI upstream: served from cache to a repository linked to them; a cold GET
//! streams to its first client while it is verified and written to disk (the last chunk waits
//! for the digest check, so a wrong blob never completes), concurrent cold requests share that
//! one fetch (streaming it as it arrives, through a `Tee`, from any offset a `Range` asks for),
//! and failures are remembered briefly (negative cache). A disk that refuses the write does not
//! fail the client.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use crate::cache::Tee;

use super::{BlobAnswer, OciUpstream};
use crate::error::{Error, Kind, Result};
use crate::http::RangeSpec;
use crate::ids::{Digest, RepoName};
use crate::upstream::redact;

/// Most bytes of one in-flight fetch its `Tee` keeps in memory for followers. With a disk
/// cache it holds only what the temp file does not yet (about one write batch); without one
/// (or once the disk refuses the write) bigger blobs make followers wait for the fetch.
const TEE_MEMORY_MAX: u64 = 64 << 20;

/// A cold fetch in flight: one per repository and digest.
pub(super) type FetchKey = (String, Digest);

impl OciUpstream {
    /// A blob: from cache when this repository is linked to it; HEAD of a cold blob asks the
    /// upstream for its length; a cold GET is streamed to the first client while it is
    /// verified and written to disk. Concurrent cold requests share that one fetch and stream
    /// it through its `Tee` as it arrives; a `Range` gets its bytes from the same fetch.
    pub async fn blob(
        self: &Arc<Self>,
        repo: &RepoName,
        d: &Digest,
        head: bool,
        range: Option<RangeSpec>,
    ) -> Result<BlobAnswer> {
        let up = self.upstream_repo(repo);
        if self.blobs.stat(d).await?.is_some() {
            // Cached, but another repository (or upstream) may have put it there: serve it
            // here only when this repository holds it, which its upstream decides.
            self.require_blob_link(&up, d).await?;
            if let Some(data) = self.blobs.read(d).await? {
                return Ok(BlobAnswer::Data(data));
            }
        }
        if head {
            let n = self.head_blob(&up, d).await?;
            return Ok(BlobAnswer::Head(n));
        }
        let key: FetchKey = (up.clone(), d.clone());
        let failure_key = format!("blob\0{up}\0{d}");
        // A follower whose leader could not cache (full disk) tries once more as a leader.
        for _ in 0..2 {
            if let Some(e) = self.failures.get(&failure_key).await {
                return Err(e);
            }
            let (len_tx, len_rx) = oneshot::channel();
            let (tx, rx) = mpsc::channel(16);
            let this = self.clone();
            let (k, fk) = (key.clone(), failure_key.clone());
            let (leader, done) = self.blob_flight.start(key.clone(), async move {
                let result = this.fetch_blob(&k, len_tx, tx).await;
                if let Err(e) = &result {
                    this.remember_failure(fk, e).await;
                }
                result
            });
            if leader {
                match len_rx.await {
                    Ok(Ok(len)) => match range {
                        None => return Ok(BlobAnswer::Stream(len, rx)),
                        // A range reads the shared fetch like any follower (dropping the
                        // leader's own channel, which must not hold the fetch up); without a
                        // tee (a big blob the disk refused) the whole blob goes, as RFC 9110
                        // allows.
                        Some(spec) => {
                            return match self.tee_reader(&key, Some(spec))? {
                                Some(a) => Ok(a),
                                None => Ok(BlobAnswer::Stream(len, rx)),
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
            // without one it waits for the fetch and reads the cache.
            let mut done = done;
            loop {
                let added = self.tee_added.notified();
                tokio::pin!(added);
                added.as_mut().enable();
                if let Some(a) = self.tee_reader(&key, range)? {
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
            if let Some(data) = self.blobs.read(d).await? {
                return Ok(BlobAnswer::Data(data));
            }
        }
        Err(Error::internal(format!(
            "blob {d} was fetched but could not be cached"
        )))
    }

    /// A reader of the fetch in flight for `key`, for the whole blob or a range of it.
    fn tee_reader(&self, key: &FetchKey, range: Option<RangeSpec>) -> Result<Option<BlobAnswer>> {
        let tee = self.tees.lock().expect("tees poisoned").get(key).cloned();
        let Some(tee) = tee.filter(|t| t.is_open()) else {
            return Ok(None);
        };
        let len = tee.len();
        let (start, end) = match range {
            None => (0, len),
            Some(spec) => spec
                .resolve(len)
                .ok_or_else(|| Error::range_not_satisfiable(len))?,
        };
        let rx = tee.reader_range(start, end);
        Ok(Some(match range {
            Some(_) => BlobAnswer::Partial {
                len,
                start,
                end,
                rx,
            },
            None => BlobAnswer::Stream(len, rx),
        }))
    }

    /// Requires `repo` to hold the cached blob `d`: linked before, or confirmed now by the
    /// upstream (a HEAD), which then links it. Anything else is `BLOB_UNKNOWN` (or the
    /// upstream's error), exactly as if the blob were not cached here.
    pub(super) async fn require_blob_link(&self, repo: &str, d: &Digest) -> Result<()> {
        if self.links.has(self.config.name.as_str(), repo, d).await {
            return Ok(());
        }
        self.head_blob(repo, d).await?;
        self.links.add(self.config.name.as_str(), repo, d).await;
        Ok(())
    }

    /// The upstream's HEAD of a blob: its length, or `BLOB_UNKNOWN` (remembered briefly).
    async fn head_blob(&self, repo: &str, d: &Digest) -> Result<u64> {
        let failure_key = format!("blob\0{repo}\0{d}");
        if let Some(e) = self.failures.get(&failure_key).await {
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
            self.remember_failure(failure_key, e).await;
        }
        answer
    }

    /// Remembers a failed upstream fetch for `NEGATIVE_TTL`, so a failing upstream is not asked
    /// again by every client at once. Offline refusals and internal errors are not remembered.
    pub(super) async fn remember_failure(&self, key: String, e: &Error) {
        if e.is_upstream() && e.kind() != Kind::UpstreamOffline
            || matches!(e.kind(), Kind::BlobUnknown | Kind::ManifestUnknown)
        {
            self.failures.insert(key, e.clone()).await;
        }
    }

    async fn fetch_blob(
        &self,
        key: &FetchKey,
        len_tx: oneshot::Sender<Result<u64>>,
        tx: mpsc::Sender<Result<Bytes>>,
    ) -> Result<()> {
        let (repo, d) = (key.0.as_str(), &key.1);
        let start = async {
            let r = self
                .registry
                .request(reqwest::Method::GET, repo, &format!("blobs/{d}"), "*/*")
                .await?;
            r.require_ok(|| Error::new(Kind::BlobUnknown, format!("blob {d} unknown upstream")))?;
            let len = r.content_length().ok_or_else(|| {
                Error::upstream_invalid(format!("{} sent no Content-Length", redact(r.url())))
            })?;
            if len > self.limits.max_blob_bytes {
                return Err(Error::upstream_invalid(format!(
                    "blob {d} is {len} bytes, over the {} byte limit",
                    self.limits.max_blob_bytes
                )));
            }
            Ok((r, len))
        }
        .await;
        let (resp, len) = match start {
            Ok(x) => x,
            Err(e) => {
                let _ = len_tx.send(Err(e.clone()));
                return Err(e);
            }
        };
        let writer = match self.blobs.begin(d).await {
            Ok(w) => w,
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
                .expect("tees poisoned")
                .insert(key.clone(), t.clone());
            self.tee_added.notify_waiters();
            t
        });
        let _ = len_tx.send(Ok(len));
        let result = self
            .stream_blob(resp, writer, d, len, tx, tee.as_deref())
            .await;
        if let Some(t) = &tee {
            t.finish(result.as_ref().map(|_| ()).map_err(Clone::clone));
            self.tees.lock().expect("tees poisoned").remove(key);
        }
        if result.is_ok() {
            // The upstream served it for this repository: it may be named here from now on.
            self.links.add(self.config.name.as_str(), repo, d).await;
        }
        result
    }

    async fn stream_blob(
        &self,
        resp: crate::upstream::RegistryResponse,
        mut writer: Box<dyn crate::cache::BlobWrite>,
        d: &Digest,
        len: u64,
        tx: mpsc::Sender<Result<Bytes>>,
        tee: Option<&Tee>,
    ) -> Result<()> {
        let mut stream = resp.into_stream();
        let mut held: Option<Bytes> = None;
        let mut got = 0u64;
        // Whether the leader's client still reads `tx`. A client that went away (or a leader
        // that reads through the tee instead) must never hold the fetch up.
        let mut client = !tx.is_closed();
        let fail = |e: Error, tx: &mpsc::Sender<Result<Bytes>>| {
            let _ = tx.try_send(Err(e.clone()));
            Err(e)
        };
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    return fail(
                        Error::upstream_unavailable(format!("blob {d}: upstream body failed: {e}")),
                        &tx,
                    )
                }
            };
            got += chunk.len() as u64;
            if got > len {
                return fail(
                    Error::upstream_invalid(format!(
                        "blob {d}: upstream sent more than its length"
                    )),
                    &tx,
                );
            }
            if let Err(e) = writer.write(&chunk).await {
                return fail(e, &tx);
            }
            // Hold the newest chunk back: the client gets it only after the digest checks.
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
}
