//! The disk tier: content-addressed files at `<dir>/sha256/<hex>`. A write goes to a temp file
//! under `<dir>/tmp/`, is fsynced and renamed into place, so a final path never holds a partial
//! or unverified blob; temp files left by a crash are removed at start. Size is bounded by
//! `cache.max_disk_bytes`: least recently used blobs are evicted first (recency starts from
//! file modification times, so it survives a restart approximately).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use sha2::{Digest as _, Sha256};

use super::BlobData;
use super::{BlobStore, BlobWrite, PartialBlob};
use crate::error::digest_mismatch;
use crate::error::{Error, Result};
use crate::ids::Digest;
use read::Opened;

struct Entry {
    size: u64,
    last_use: u64,
    /// When this process last wrote the access time to the file's mtime (recency that
    /// survives a restart), throttled to once per `MTIME_EVERY`.
    mtime_written: Option<std::time::Instant>,
}

/// How often a read refreshes a blob's file mtime.
const MTIME_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Default)]
struct State {
    used: u64,
    clock: u64,
    /// Keyed by the digest's 32 bytes, not its 64 hex ones: a third less memory per blob,
    /// which is most of what a big cache holds (1M blobs: 2^21 buckets).
    entries: HashMap<[u8; 32], Entry>,
}

pub struct DiskStore {
    root: PathBuf,
    max_bytes: u64,
    state: Arc<Mutex<State>>,
    verify_on_read: bool,
}

impl DiskStore {
    /// Opens (creating) the store under `root`, cleaning temp files and indexing what is there.
    pub async fn open(root: &Path, max_bytes: u64) -> Result<DiskStore> {
        let root = root.to_path_buf();
        let scan_root = root.clone();
        let state = tokio::task::spawn_blocking(move || {
            let state = scan(&scan_root);
            // The scan's directory entries (a file name each) are freed by now, but glibc
            // would keep them resident: 80 MB on a cache of 1M blobs.
            super::trim_heap();
            state
        })
        .await
        .map_err(|e| Error::internal(format!("cache scan failed: {e}")))??;
        crate::metrics::disk_usage(state.used, state.entries.len());
        Ok(DiskStore {
            root,
            max_bytes,
            state: Arc::new(Mutex::new(state)),
            verify_on_read: false,
        })
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("sha256").join(d.hex())
    }

    /// The file of a stored blob, if this store holds it.
    pub fn path_of(&self, d: &Digest) -> Option<PathBuf> {
        let held = self
            .state
            .lock()
            .expect("disk state poisoned")
            .entries
            .contains_key(&d.raw());
        held.then(|| self.blob_path(d))
    }

    /// Bytes currently stored.
    pub fn used_bytes(&self) -> u64 {
        self.state.lock().expect("disk state poisoned").used
    }

    /// Marks a blob used: its size, and whether its file mtime should be refreshed now;
    /// `None` if this store does not hold it.
    fn touch(&self, d: &Digest) -> Option<(u64, bool)> {
        let mut st = self.state.lock().expect("disk state poisoned");
        st.clock += 1;
        let now = st.clock;
        let e = st.entries.get_mut(&d.raw())?;
        e.last_use = now;
        let due = e.mtime_written.is_none_or(|t| t.elapsed() >= MTIME_EVERY);
        if due {
            e.mtime_written = Some(std::time::Instant::now());
        }
        Some((e.size, due))
    }

    /// Re-hash blobs read from disk before serving them (`cache.verify_on_read`).
    pub fn with_verify_on_read(mut self, on: bool) -> DiskStore {
        self.verify_on_read = on;
        self
    }

    /// Drops a blob from the index (its file is gone or about to be).
    fn forget(&self, d: &Digest) {
        let mut st = self.state.lock().expect("disk state poisoned");
        if let Some(e) = st.entries.remove(&d.raw()) {
            st.used -= e.size;
        }
        crate::metrics::disk_usage(st.used, st.entries.len());
    }

    /// Forgets a blob whose file no longer matches its digest.
    async fn quarantine(&self, d: &Digest) {
        self.forget(d);
        let _ = tokio::fs::remove_file(self.blob_path(d)).await;
        tracing::error!(digest = %d, "cached blob does not match its digest; removed, will refetch");
    }
}

#[async_trait]
impl BlobStore for DiskStore {
    async fn stat(&self, d: &Digest) -> Result<Option<u64>> {
        let st = self.state.lock().expect("disk state poisoned");
        Ok(st.entries.get(&d.raw()).map(|e| e.size))
    }

    async fn get(&self, d: &Digest) -> Result<Option<Bytes>> {
        match self.read(d).await? {
            Some(data) => Ok(Some(data.into_bytes().await?)),
            None => Ok(None),
        }
    }

    async fn put(&self, d: &Digest, bytes: Bytes) -> Result<()> {
        if self.stat(d).await?.is_some() && tokio::fs::try_exists(self.blob_path(d)).await? {
            return Ok(());
        }
        let (dest, tmp_dir, expected) = (self.blob_path(d), self.root.join("tmp"), d.clone());
        let data = bytes.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let actual = Digest::of(&data);
            if actual != expected {
                return Err(digest_mismatch(&expected, &actual));
            }
            write_atomic(&tmp_dir, &dest, &data)?;
            Ok(())
        })
        .await
        .map_err(|e| Error::internal(format!("cache write task failed: {e}")))??;
        admit(
            &self.root,
            &self.state,
            self.max_bytes,
            d,
            bytes.len() as u64,
        )
        .await;
        Ok(())
    }

    async fn read(&self, d: &Digest) -> Result<Option<BlobData>> {
        let Some((size, mtime_due)) = self.touch(d) else {
            return Ok(None);
        };
        let path = self.blob_path(d);
        let verify = self.verify_on_read.then(|| d.clone());
        let opened = match read::cached(&path, size, verify.as_ref()) {
            Some(opened) => opened,
            None => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read::open(&path, size, verify.as_ref()))
                    .await
                    .map_err(|e| Error::internal(format!("cache read task failed: {e}")))?
            }
        };
        let data = match opened {
            Ok(Opened::Whole(b)) => BlobData::Bytes(Bytes::from(b)),
            Ok(Opened::File(f)) => BlobData::File(tokio::fs::File::from_std(f), size),
            Ok(Opened::Corrupt) => {
                self.quarantine(d).await;
                return Ok(None);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Removed behind our back (an operator cleaned the directory): forget it.
                self.forget(d);
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        if mtime_due {
            // Persist recency in the mtime, so LRU order survives a restart.
            tokio::task::spawn_blocking(move || {
                let now = std::time::SystemTime::now();
                let _ = std::fs::File::open(path).and_then(|f| f.set_modified(now));
            });
        }
        Ok(Some(data))
    }

    async fn read_range(&self, d: &Digest, start: u64, end: u64) -> Result<Option<Bytes>> {
        let Some(size) = self.stat(d).await? else {
            return Ok(None);
        };
        let end = end.min(size);
        if start > end {
            return Ok(Some(Bytes::new()));
        }
        let path = self.blob_path(d);
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::open(path)?;
            let mut buf = vec![0u8; (end - start) as usize];
            f.read_exact_at(&mut buf, start)?;
            Ok(buf)
        })
        .await
        .map_err(|e| Error::internal(format!("range read task failed: {e}")))?;
        match read {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget(d);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self, d: &Digest) -> Result<()> {
        self.forget(d);
        match tokio::fs::remove_file(self.blob_path(d)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self) -> Result<Vec<(Digest, u64)>> {
        let st = self.state.lock().expect("disk state poisoned");
        let mut all: Vec<(Digest, u64)> = st
            .entries
            .iter()
            .map(|(k, e)| (Digest::from_raw(*k), e.size))
            .collect();
        all.sort();
        Ok(all)
    }

    async fn put_file(&self, d: &Digest, path: &Path) -> Result<()> {
        if self.stat(d).await?.is_some() && tokio::fs::try_exists(self.blob_path(d)).await? {
            let _ = tokio::fs::remove_file(path).await;
            return Ok(());
        }
        let (src, dest) = (path.to_path_buf(), self.blob_path(d));
        let size = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            let f = std::fs::File::open(&src)?;
            f.sync_all()?;
            let size = f.metadata()?.len();
            drop(f);
            rename_into(&src, &dest)?;
            if let Some(parent) = dest.parent() {
                if let Ok(dir) = std::fs::File::open(parent) {
                    let _ = dir.sync_all();
                }
            }
            Ok(size)
        })
        .await
        .map_err(|e| Error::internal(format!("import task failed: {e}")))??;
        admit(&self.root, &self.state, self.max_bytes, d, size).await;
        Ok(())
    }

    fn usage(&self) -> (u64, u64) {
        (self.used_bytes(), self.max_bytes)
    }

    /// Never fails for the disk's sake: a temp file that cannot be created (full or read-only
    /// disk) gives a writer that only hashes, so the blob streams through uncached.
    async fn begin(&self, d: &Digest) -> Result<Box<dyn BlobWrite>> {
        let mut w = DiskWriter {
            root: self.root.clone(),
            max_bytes: self.max_bytes,
            state: self.state.clone(),
            digest: d.clone(),
            tmp: PathBuf::new(),
            file: None,
            pending: Vec::with_capacity(WRITE_BATCH),
            hasher: Sha256::new(),
            size: 0,
            verified: false,
            failed: None,
        };
        match tempfile_in(&self.root.join("tmp")) {
            Ok((tmp, file)) => {
                w.tmp = tmp;
                w.file = Some(Arc::new(TempFile {
                    file,
                    written: AtomicU64::new(0),
                }));
            }
            Err(e) => w.fail(&format!("cannot create a temp file: {e}")),
        }
        Ok(Box::new(w))
    }
}

/// Records a new blob, evicts least recently used others to fit the budget, and removes their
/// files.
async fn admit(root: &Path, state: &Mutex<State>, max_bytes: u64, d: &Digest, size: u64) {
    let victims = {
        let mut st = state.lock().expect("disk state poisoned");
        st.clock += 1;
        let now = st.clock;
        if st
            .entries
            .insert(
                d.raw(),
                Entry {
                    size,
                    last_use: now,
                    mtime_written: None,
                },
            )
            .is_none()
        {
            st.used += size;
        }
        let mut victims = Vec::new();
        if st.used > max_bytes {
            // Down to a 64th below the budget: a full cache then sorts its index once per
            // 64th of its size admitted, not on every blob (1M blobs: a sort of 1M entries
            // under the lock that every read takes).
            let target = max_bytes - max_bytes / 64;
            let keep = d.raw();
            let mut by_age: Vec<(u64, [u8; 32], u64)> = st
                .entries
                .iter()
                .filter(|(k, _)| **k != keep)
                .map(|(k, e)| (e.last_use, *k, e.size))
                .collect();
            by_age.sort();
            for (_, k, size) in by_age {
                if st.used <= target {
                    break;
                }
                st.entries.remove(&k);
                st.used -= size;
                victims.push(Digest::from_raw(k));
            }
        }
        crate::metrics::disk_usage(st.used, st.entries.len());
        victims
    };
    for victim in victims {
        let _ = tokio::fs::remove_file(root.join("sha256").join(victim.hex())).await;
        crate::metrics::evicted();
    }
}

/// Bytes gathered before one write to the temp file: each write is a hop to the blocking pool.
const WRITE_BATCH: usize = 1 << 20;

/// The temp file of a write in progress, shared with readers that follow it (`partial`).
/// Positional reads keep working after the file is renamed into place or removed.
struct TempFile {
    file: std::fs::File,
    written: AtomicU64,
}

impl PartialBlob for TempFile {
    fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        self.file.read_at(buf, offset)
    }
}

/// A blob being written: bytes go to a temp file and through a hasher; `commit` checks the
/// digest, fsyncs and renames into place. Dropped without commit, the temp file is removed.
pub struct DiskWriter {
    root: PathBuf,
    max_bytes: u64,
    state: Arc<Mutex<State>>,
    digest: Digest,
    tmp: PathBuf,
    file: Option<Arc<TempFile>>,
    /// Bytes not yet written to `file` (up to `WRITE_BATCH`).
    pending: Vec<u8>,
    hasher: Sha256,
    size: u64,
    verified: bool,
    /// Set when the disk refused a write (full, read-only): the blob keeps streaming and
    /// hashing, but will not be cached.
    failed: Option<String>,
}

impl Drop for DiskWriter {
    fn drop(&mut self) {
        if self.file.is_some() || self.failed.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl DiskWriter {
    /// Writes the pending bytes to the temp file. A full or failing disk must not fail the
    /// client: the writer then only hashes, and the blob streams through uncached.
    async fn flush(&mut self) {
        let Some(file) = self.file.clone() else {
            self.pending.clear();
            return;
        };
        if self.pending.is_empty() {
            return;
        }
        let buf = std::mem::take(&mut self.pending);
        let done = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            (&file.file).write_all(&buf)?;
            file.written.fetch_add(buf.len() as u64, Ordering::AcqRel);
            Ok::<_, std::io::Error>(buf)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match done {
            Ok(mut buf) => {
                buf.clear();
                self.pending = buf;
            }
            Err(e) => self.fail(&e.to_string()),
        }
    }

    fn fail(&mut self, why: &str) {
        tracing::warn!(digest = %self.digest, error = %why, "cache write failed; serving without caching");
        crate::metrics::cache_write_failure();
        self.failed = Some(why.to_string());
        self.file = None;
        self.pending = Vec::new();
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[async_trait]
impl BlobWrite for DiskWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        if self.verified {
            return Err(Error::internal("write after verify"));
        }
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        if self.failed.is_some() {
            return Ok(());
        }
        if self.file.is_none() {
            return Err(Error::internal("write after commit"));
        }
        self.pending.extend_from_slice(chunk);
        if self.pending.len() >= WRITE_BATCH {
            self.flush().await;
        }
        Ok(())
    }

    fn verify(&mut self) -> Result<()> {
        if !self.verified {
            let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
            if actual != self.digest {
                return Err(digest_mismatch(&self.digest, &actual));
            }
            self.verified = true;
        }
        Ok(())
    }

    fn partial(&self) -> Option<Arc<dyn PartialBlob>> {
        self.file.clone().map(|f| f as Arc<dyn PartialBlob>)
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.verify()?;
        self.flush().await;
        if let Some(why) = &self.failed {
            return Err(Error::internal(format!(
                "blob {} not cached: {why}",
                self.digest
            )));
        }
        let file = self
            .file
            .take()
            .ok_or_else(|| Error::internal("double commit"))?;
        let (tmp, dest) = (
            self.tmp.clone(),
            self.root.join("sha256").join(self.digest.hex()),
        );
        let done = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            file.file.sync_all()?;
            drop(file);
            rename_into(&tmp, &dest).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
            if let Some(parent) = dest.parent() {
                if let Ok(dir) = std::fs::File::open(parent) {
                    let _ = dir.sync_all();
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::internal(format!("cache commit task failed: {e}")))?;
        done?;
        admit(
            &self.root,
            &self.state,
            self.max_bytes,
            &self.digest,
            self.size,
        )
        .await;
        Ok(())
    }
}

fn scan(root: &Path) -> Result<State> {
    let tmp = root.join("tmp");
    let blobs = root.join("sha256");
    std::fs::create_dir_all(&tmp)?;
    std::fs::create_dir_all(&blobs)?;
    for e in std::fs::read_dir(&tmp)? {
        let _ = std::fs::remove_file(e?.path());
    }
    let mut named = Vec::new();
    for e in std::fs::read_dir(&blobs)? {
        let e = e?;
        let name = e.file_name();
        if let Some(d) = name.to_str().and_then(|n| Digest::from_hex(n).ok()) {
            named.push((e, d));
        }
    }
    // The stat of each blob is most of a big cache's start-up (the kernel's name lookup in one
    // large directory): spread it over the cores. The order is restored by the sort below.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let chunk = named.len().div_ceil(threads).max(4096);
    let mut found: Vec<(SystemTime, [u8; 32], u64)> = Vec::with_capacity(named.len());
    std::thread::scope(|s| -> Result<()> {
        let parts: Vec<_> = named
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(e, d)| {
                            let meta = e.metadata()?;
                            Ok((
                                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                                d.raw(),
                                meta.len(),
                            ))
                        })
                        .collect::<std::io::Result<Vec<_>>>()
                })
            })
            .collect();
        for part in parts {
            let part = part
                .join()
                .map_err(|_| Error::internal("cache scan thread panicked"))??;
            found.extend(part);
        }
        Ok(())
    })?;
    drop(named);
    found.sort();
    let mut st = State {
        entries: HashMap::with_capacity(found.len()),
        ..State::default()
    };
    for (_, d, size) in found {
        st.clock += 1;
        st.used += size;
        st.entries.insert(
            d,
            Entry {
                size,
                last_use: st.clock,
                mtime_written: None,
            },
        );
    }
    Ok(st)
}

/// Creates `dir` (and its parents) when it is missing: an operator who deletes the cache
/// directory under a running process gets it back on the next write, not a failing cache.
pub(super) fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        _ => std::fs::create_dir_all(dir),
    }
}

/// Writes `bytes` to `dest` through a fsynced temp file and an atomic rename.
pub(super) fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = tempfile_in(tmp_dir)?;
    tmp.1.write_all(bytes)?;
    tmp.1.sync_all()?;
    drop(tmp.1);
    rename_into(&tmp.0, dest).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp.0);
    })?;
    if let Some(parent) = dest.parent() {
        if let Ok(dir) = std::fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// A new temp file in `dir` (recreated when it was deleted).
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "{}-{}.part",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let path = dir.join(name);
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
    };
    let f = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            ensure_dir(dir)?;
            open()?
        }
        other => other?,
    };
    Ok((path, f))
}

/// Renames a finished temp file into place, recreating the destination directory when it was
/// deleted.
fn rename_into(tmp: &Path, dest: &Path) -> std::io::Result<()> {
    match std::fs::rename(tmp, dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && tmp.exists() => {
            if let Some(parent) = dest.parent() {
                ensure_dir(parent)?;
            }
            std::fs::rename(tmp, dest)
        }
        other => other,
    }
}

mod read;
#[cfg(test)]
mod tests;
