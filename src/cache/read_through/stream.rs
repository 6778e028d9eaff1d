//! Streamed blobs of the read-through cache: a cold fetch streams to its first client while it
//! is verified and written; concurrent requests (whole or a `Range`) read it through its `Tee`.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::*;

impl Cache {
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
    // Verified bytes go to the client before the link and the durable commit (each an
    // fsync): the client's last byte does not wait on the disk.
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
    // The upstream served it for this repository: it may be named there from now on
    // (linked before the commit, so whoever finds the bytes in the store finds the link).
    links.add_durable(&key.upstream, &key.repo, d).await;
    if let Err(e) = writer.commit().await {
        // The client got verified bytes; only the cache missed out (e.g. a full disk).
        tracing::warn!(digest = %d, error = %e, "blob served but not cached");
    }
    Ok(())
}
