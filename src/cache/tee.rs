//! `Tee`: the bytes of one blob while it is fetched and written, readable from the start by any
//! number of followers as they arrive. The writer releases only bytes it may hand on (verified
//! so far); the tee keeps them in memory until the store's temp file (`PartialBlob`) holds them,
//! and followers read older bytes back from that file. So a follower never waits for the whole
//! blob, and memory per fetch stays about one write batch, whatever the blob's size. Without a
//! temp file (a memory store, or a disk that refused the write) the tee keeps released bytes in
//! memory up to `memory_max`; past that its followers fail, and later requests wait instead.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use super::PartialBlob;
use crate::error::{Error, Result};

/// Largest read from the temp file handed to a follower at once.
const FILE_READ: u64 = 256 << 10;

pub struct Tee {
    len: u64,
    memory_max: u64,
    file: Option<Arc<dyn PartialBlob>>,
    state: Mutex<State>,
    notify: Notify,
}

#[derive(Default)]
struct State {
    /// Offset of `chunks[0]`; every released byte before it is in the file.
    base: u64,
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`.
    held: u64,
    finished: Option<Result<()>>,
}

/// What a follower does next.
enum Step {
    File(u64, u64),
    Memory(Vec<Bytes>),
    Wait,
    Done,
    Fail(Error),
}

impl Tee {
    /// A tee for a blob of `len` bytes, reading back from `file` when the store offers it.
    pub fn new(len: u64, file: Option<Arc<dyn PartialBlob>>, memory_max: u64) -> Tee {
        Tee {
            len,
            memory_max,
            file,
            state: Default::default(),
            notify: Notify::new(),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a new follower can still join (the fetch has neither failed nor overflowed).
    pub fn is_open(&self) -> bool {
        !matches!(self.lock().finished, Some(Err(_)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands on the next bytes of the blob (in order, already verified as far as the caller
    /// cares), then drops from memory what the temp file already holds.
    pub fn release(&self, chunk: Bytes) {
        {
            let mut st = self.lock();
            if st.finished.is_some() || chunk.is_empty() {
                return;
            }
            st.held += chunk.len() as u64;
            st.chunks.push_back(chunk);
            let written = self.file.as_ref().map_or(0, |f| f.written());
            let st = &mut *st;
            while let Some(n) = st.chunks.front().map(|c| c.len() as u64) {
                if st.base + n > written {
                    break;
                }
                st.base += n;
                st.held -= n;
                st.chunks.pop_front();
            }
            if st.held > self.memory_max {
                st.finished = Some(Err(Error::internal(
                    "a shared download outgrew its memory budget; retry the request",
                )));
                st.chunks.clear();
            }
        }
        self.notify.notify_waiters();
    }

    /// Ends the fetch: followers finish reading, or get the error.
    pub fn finish(&self, result: Result<()>) {
        {
            let mut st = self.lock();
            if st.finished.is_none() {
                st.finished = Some(result);
            }
        }
        self.notify.notify_waiters();
    }

    /// What a follower at offset `pos` (reading up to `end`) does next.
    fn next_step(&self, pos: u64, end: u64) -> Step {
        let st = self.lock();
        if let Some(Err(e)) = &st.finished {
            return Step::Fail(e.clone());
        }
        if pos >= end {
            return Step::Done;
        }
        if pos < st.base {
            return Step::File(pos, (st.base - pos).min(FILE_READ).min(end - pos));
        }
        // The released chunks from the one holding `pos`, cut at `end`.
        let mut out = Vec::new();
        let mut at = st.base;
        for c in &st.chunks {
            let (from, to) = (at, at + c.len() as u64);
            at = to;
            if to <= pos {
                continue;
            }
            if from >= end {
                break;
            }
            let lo = pos.max(from) - from;
            let hi = end.min(to) - from;
            out.push(c.slice(lo as usize..hi as usize));
        }
        if !out.is_empty() {
            return Step::Memory(out);
        }
        match st.finished {
            Some(Ok(())) => Step::Fail(Error::internal(format!(
                "a shared download ended after {at} of {} bytes",
                self.len
            ))),
            _ => Step::Wait,
        }
    }

    /// A channel of the blob's bytes from the first, ending with the fetch (an error aborts
    /// it). The reader task ends when the receiver is dropped.
    pub fn reader(self: Arc<Self>) -> mpsc::Receiver<Result<Bytes>> {
        let len = self.len;
        self.reader_range(0, len)
    }

    /// As `reader`, for the bytes `start..end` only (a `Range` request): they are handed on as
    /// soon as they arrive, so a client asking for the end of a big blob waits for the fetch
    /// to get there, and one asking for the start does not wait at all.
    pub fn reader_range(self: Arc<Self>, start: u64, end: u64) -> mpsc::Receiver<Result<Bytes>> {
        let (tx, rx) = mpsc::channel(16);
        let end = end.min(self.len);
        tokio::spawn(async move {
            let mut pos = start;
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let out = match self.next_step(pos, end) {
                    Step::Wait => {
                        notified.await;
                        continue;
                    }
                    Step::Done => return,
                    Step::Fail(e) => vec![Err(e)],
                    Step::File(at, n) => vec![self.read_file(at, n).await],
                    Step::Memory(chunks) => chunks.into_iter().map(Ok).collect(),
                };
                for item in out {
                    match &item {
                        Ok(c) => pos += c.len() as u64,
                        Err(_) => {
                            let _ = tx.send(item).await;
                            return;
                        }
                    }
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }

    async fn read_file(&self, at: u64, n: u64) -> Result<Bytes> {
        let file = self
            .file
            .clone()
            .ok_or_else(|| Error::internal("tee without a file trimmed its memory"))?;
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; n as usize];
            let mut got = 0;
            while got < buf.len() {
                match file.read_at(at + got as u64, &mut buf[got..])? {
                    0 => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "temp file shorter than written",
                        ))
                    }
                    k => got += k,
                }
            }
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(|e| Error::internal(format!("tee read task failed: {e}")))?
        .map_err(|e| Error::internal(format!("reading a shared download back: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{BlobStore, DiskStore};
    use crate::ids::Digest;

    async fn drain(mut rx: mpsc::Receiver<Result<Bytes>>) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(c) = rx.recv().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect()
    }

    #[tokio::test]
    async fn followers_joining_early_and_late_get_every_byte_from_memory() {
        let bytes = data(300_000);
        let tee = Arc::new(Tee::new(bytes.len() as u64, None, 1 << 20));
        let early = tee.clone().reader();
        let mut chunks = bytes.chunks(7_000);
        for c in chunks.by_ref().take(20) {
            tee.release(Bytes::copy_from_slice(c));
        }
        let late = tee.clone().reader();
        for c in chunks {
            tee.release(Bytes::copy_from_slice(c));
        }
        tee.finish(Ok(()));
        assert_eq!(drain(early).await.unwrap(), bytes);
        assert_eq!(drain(late).await.unwrap(), bytes);
    }

    /// With a disk writer behind it the tee keeps only what the temp file lacks, and a follower
    /// that joins late reads the start back from the file.
    #[tokio::test]
    async fn with_a_temp_file_memory_stays_one_batch_and_late_followers_read_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 1 << 30).await.unwrap();
        let bytes = data(5 << 20);
        let d = Digest::of(&bytes);
        let mut w = store.begin(&d).await.unwrap();
        let tee = Arc::new(Tee::new(bytes.len() as u64, w.partial(), 2 << 20));
        let early = tee.clone().reader();
        let mut late = None;
        let mut most_held = 0;
        for (i, c) in bytes.chunks(16 << 10).enumerate() {
            w.write(c).await.unwrap();
            tee.release(Bytes::copy_from_slice(c));
            most_held = most_held.max(tee.lock().held);
            if i == 200 {
                late = Some(tee.clone().reader());
            }
        }
        w.verify().unwrap();
        tee.finish(Ok(()));
        assert!(most_held <= (1 << 20) + (16 << 10), "{most_held}");
        assert!(tee.lock().base > 0, "nothing was trimmed");
        assert_eq!(drain(early).await.unwrap(), bytes);
        assert_eq!(drain(late.unwrap()).await.unwrap(), bytes);
        w.commit().await.unwrap();
    }

    /// Range readers get exactly their bytes, from memory or back from the file, whether they
    /// join before the bytes arrive or after.
    #[tokio::test]
    async fn range_readers_get_their_slice_as_it_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 1 << 30).await.unwrap();
        let bytes = data(3 << 20);
        let d = Digest::of(&bytes);
        let mut w = store.begin(&d).await.unwrap();
        let tee = Arc::new(Tee::new(bytes.len() as u64, w.partial(), 2 << 20));
        let len = bytes.len() as u64;
        let spans = [(0, 1), (0, 100_000), (1_500_000, 1_500_001), (len - 7, len)];
        let early: Vec<_> = spans
            .iter()
            .map(|&(a, b)| tee.clone().reader_range(a, b))
            .collect();
        let mut late = Vec::new();
        for (i, c) in bytes.chunks(10_000).enumerate() {
            w.write(c).await.unwrap();
            tee.release(Bytes::copy_from_slice(c));
            if i == 250 {
                late = spans
                    .iter()
                    .map(|&(a, b)| tee.clone().reader_range(a, b))
                    .collect();
            }
        }
        tee.finish(Ok(()));
        for (rx, (a, b)) in early.into_iter().chain(late).zip(spans.iter().cycle()) {
            assert_eq!(
                drain(rx).await.unwrap(),
                &bytes[*a as usize..*b as usize],
                "{a}..{b}"
            );
        }
        drop(w);
    }

    /// A failed fetch fails its followers; a tee whose file stops growing (a disk that refused
    /// the write) fails them once it outgrows its memory budget, and refuses new ones.
    #[tokio::test]
    async fn failures_and_an_overflow_reach_the_followers() {
        let tee = Arc::new(Tee::new(10, None, 100));
        let rx = tee.clone().reader();
        tee.release(Bytes::from_static(b"12345"));
        tee.finish(Err(Error::upstream_unavailable("went away")));
        assert!(drain(rx).await.unwrap_err().message().contains("went away"));

        let tee = Arc::new(Tee::new(1000, None, 100));
        let rx = tee.clone().reader();
        for _ in 0..30 {
            tee.release(Bytes::from_static(b"0123456789"));
        }
        assert!(!tee.is_open());
        assert!(drain(rx)
            .await
            .unwrap_err()
            .message()
            .contains("memory budget"));
    }
}
