//! Small named values ("refs"): tag -> digest, a media type, a tag list, a link saying a
//! repository holds a digest. A ref's name is a short path of parts (`RefName`), so a prefix
//! can be listed (export walks them, links are listed per repository). `RefStore` is the trait
//! every backend implements; `DiskRefs` keeps each ref in a file under `<dir>/refs/`, written
//! atomically (temp file, fsync, rename). One conformance test (`check`) runs against every
//! implementation.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::disk::{ensure_dir, write_atomic};
use crate::error::{Error, Result};
use crate::ids::Digest;

/// The name of a ref: a few parts, each any string (`/` and other bytes are encoded where the
/// backend needs it). Compared and listed part by part.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RefName(Vec<String>);

impl RefName {
    pub fn new<I, S>(parts: I) -> RefName
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RefName(parts.into_iter().map(Into::into).collect())
    }

    pub fn parts(&self) -> &[String] {
        &self.0
    }

    /// This name with one more part.
    pub fn child(&self, part: impl Into<String>) -> RefName {
        let mut p = self.0.clone();
        p.push(part.into());
        RefName(p)
    }

    /// Whether `prefix`'s parts begin this name's.
    pub fn starts_with(&self, prefix: &RefName) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// The name as a relative path (or object key): each part percent-encoded so that it is one
    /// path segment and never `.`, `..` or empty.
    pub fn encoded(&self) -> String {
        self.0
            .iter()
            .map(|p| encode_part(p))
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The inverse of `encoded`; `None` for a path no `RefName` encodes to.
    pub fn from_encoded(path: &str) -> Option<RefName> {
        path.split('/')
            .map(decode_part)
            .collect::<Option<Vec<_>>>()
            .map(RefName)
    }

    /// Where releases before refs had paths kept this ref: a file named by the sha256 of the
    /// parts joined by NUL. Read once and moved (see `DiskRefs::get`).
    fn legacy_hex(&self) -> String {
        Digest::of(self.0.join("\0").as_bytes()).hex().to_string()
    }
}

impl std::fmt::Display for RefName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encoded())
    }
}

fn encode_part(p: &str) -> String {
    if p.is_empty() {
        return "%".to_string();
    }
    let mut out = String::with_capacity(p.len());
    for (i, b) in p.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode_part(s: &str) -> Option<String> {
    if s == "%" {
        return Some(String::new());
    }
    if s.is_empty() {
        return None;
    }
    let decoded = percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()?
        .into_owned();
    (encode_part(&decoded) == s).then_some(decoded)
}

/// Small named values. Values are a few bytes to a few hundred KiB (a tag list).
#[async_trait]
pub trait RefStore: Send + Sync {
    async fn get(&self, name: &RefName) -> Result<Option<Bytes>>;
    /// Stores atomically: a reader sees the old value or the new one, never a mix.
    async fn put(&self, name: &RefName, value: Bytes) -> Result<()>;
    /// Removing an absent ref is not an error.
    async fn delete(&self, name: &RefName) -> Result<()>;
    /// Every ref whose name begins with `prefix`, in lexical order of their parts.
    async fn list(&self, prefix: &RefName) -> Result<Vec<RefName>>;
}

/// Convenience on top of any `RefStore`.
impl dyn RefStore {
    pub async fn get_digest(&self, name: &RefName) -> Option<Digest> {
        let v = self.get(name).await.ok()??;
        std::str::from_utf8(&v).ok()?.trim().parse().ok()
    }

    pub async fn get_text(&self, name: &RefName) -> Option<String> {
        let v = self.get(name).await.ok()??;
        String::from_utf8(v.to_vec()).ok()
    }
}

/// Refs as files: `<dir>/refs/<encoded name>`.
pub struct DiskRefs {
    root: PathBuf,
    tmp: PathBuf,
}

/// The kinds of ref that releases before `RefName` stored under hashed names.
const LEGACY_KINDS: [&str; 5] = ["manifest", "prov", "tags", "tag", "mediatype"];

impl DiskRefs {
    pub fn open(cache_dir: &Path) -> Result<DiskRefs> {
        let root = cache_dir.join("refs");
        let tmp = cache_dir.join("tmp");
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&tmp)?;
        Ok(DiskRefs { root, tmp })
    }

    fn path(&self, name: &RefName) -> PathBuf {
        self.root.join(name.encoded())
    }
}

#[async_trait]
impl RefStore for DiskRefs {
    async fn get(&self, name: &RefName) -> Result<Option<Bytes>> {
        match tokio::fs::read(self.path(name)).await {
            Ok(v) => return Ok(Some(Bytes::from(v))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let legacy = name
            .parts()
            .first()
            .is_some_and(|k| LEGACY_KINDS.contains(&k.as_str()));
        if !legacy {
            return Ok(None);
        }
        let old = self.root.join(name.legacy_hex());
        match tokio::fs::read(&old).await {
            Ok(v) => {
                let v = Bytes::from(v);
                // Move it to its new name, so `list` (export) finds it from now on.
                if self.put(name, v.clone()).await.is_ok() {
                    let _ = tokio::fs::remove_file(&old).await;
                }
                Ok(Some(v))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn put(&self, name: &RefName, value: Bytes) -> Result<()> {
        let (dest, tmp, root) = (self.path(name), self.tmp.clone(), self.root.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let parent = dest.parent().unwrap_or(&root);
            // A deleted cache directory is recreated rather than failing every write after.
            ensure_dir(parent)?;
            ensure_dir(&tmp)?;
            write_atomic(&tmp, &dest, &value)
        })
        .await
        .map_err(|e| Error::internal(format!("ref write failed: {e}")))??;
        Ok(())
    }

    async fn delete(&self, name: &RefName) -> Result<()> {
        match tokio::fs::remove_file(self.path(name)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self, prefix: &RefName) -> Result<Vec<RefName>> {
        let (root, start) = (self.root.clone(), self.path(prefix));
        tokio::task::spawn_blocking(move || -> std::io::Result<Vec<RefName>> {
            let mut out = Vec::new();
            let mut stack = vec![start];
            while let Some(p) = stack.pop() {
                let meta = match std::fs::symlink_metadata(&p) {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                if meta.is_dir() {
                    for e in std::fs::read_dir(&p)? {
                        stack.push(e?.path());
                    }
                } else if meta.is_file() {
                    let rel = p.strip_prefix(&root).unwrap_or(&p);
                    if let Some(n) = rel.to_str().and_then(RefName::from_encoded) {
                        out.push(n);
                    }
                }
            }
            out.sort();
            Ok(out)
        })
        .await
        .map_err(|e| Error::internal(format!("ref listing failed: {e}")))?
        .map_err(Into::into)
    }
}

/// The conformance test every `RefStore` passes.
#[cfg(test)]
pub(crate) async fn check(store: &dyn RefStore) {
    let tag = RefName::new(["tag", "ghcr", "helm/chartmuseum", "v0.16.2"]);
    assert_eq!(store.get(&tag).await.unwrap(), None);
    store.put(&tag, Bytes::from_static(b"one")).await.unwrap();
    assert_eq!(store.get(&tag).await.unwrap().unwrap(), &b"one"[..]);
    store.put(&tag, Bytes::from_static(b"two")).await.unwrap();
    assert_eq!(store.get(&tag).await.unwrap().unwrap(), &b"two"[..]);
    // awkward parts: empty, dots, slashes, spaces, NUL, non-ASCII
    let odd = RefName::new(["manifest", "up", "..", "", "1.0.0+b/c d\0é"]);
    store.put(&odd, Bytes::from_static(b"x")).await.unwrap();
    assert_eq!(store.get(&odd).await.unwrap().unwrap(), &b"x"[..]);
    let other = RefName::new(["tag", "ghcr", "helm/chartmuseum2", "v1"]);
    store.put(&other, Bytes::from_static(b"y")).await.unwrap();
    let listed = store.list(&RefName::new(["tag", "ghcr"])).await.unwrap();
    assert_eq!(listed, vec![tag.clone(), other.clone()]);
    let listed = store
        .list(&RefName::new(["tag", "ghcr", "helm/chartmuseum"]))
        .await
        .unwrap();
    assert_eq!(
        listed,
        vec![tag.clone()],
        "a prefix is matched by whole parts"
    );
    assert_eq!(
        store.list(&RefName::new(["nothing"])).await.unwrap(),
        vec![]
    );
    store.delete(&tag).await.unwrap();
    store.delete(&tag).await.unwrap();
    assert_eq!(store.get(&tag).await.unwrap(), None);
    assert_eq!(
        store.list(&RefName::new(["tag"])).await.unwrap(),
        vec![other]
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn disk_refs_conform() {
        let dir = tempfile::tempdir().unwrap();
        check(&DiskRefs::open(dir.path()).unwrap()).await;
    }

    #[test]
    fn names_encode_to_safe_segments_and_back() {
        for parts in [
            vec!["tag", "up", "a/b", "v1.0"],
            vec!["x", "", ".", "..", ".hidden", "%", "a%2Fb"],
        ] {
            let n = RefName::new(parts.clone());
            let enc = n.encoded();
            for seg in enc.split('/') {
                assert!(!seg.is_empty() && seg != "." && seg != ".." && !seg.starts_with('.'));
            }
            assert_eq!(RefName::from_encoded(&enc), Some(n), "{enc}");
        }
        assert_eq!(RefName::from_encoded("a//b"), None);
        assert_eq!(RefName::from_encoded("%2e"), None, "not canonical");
    }

    #[tokio::test]
    async fn refs_survive_reopen_and_legacy_names_are_moved() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"x");
        let name = RefName::new(["tag", "up", "a/b", "v1"]);
        let refs: Box<dyn RefStore> = Box::new(DiskRefs::open(dir.path()).unwrap());
        refs.put(&name, Bytes::from(d.to_string())).await.unwrap();
        let refs: Box<dyn RefStore> = Box::new(DiskRefs::open(dir.path()).unwrap());
        assert_eq!(refs.get_digest(&name).await, Some(d.clone()));
        // an earlier release's hashed file is read, then moved to its new name
        let old = RefName::new(["mediatype", "sha256:abc"]);
        std::fs::write(
            dir.path().join("refs").join(old.legacy_hex()),
            "application/x",
        )
        .unwrap();
        assert_eq!(refs.get_text(&old).await.as_deref(), Some("application/x"));
        assert!(!dir.path().join("refs").join(old.legacy_hex()).exists());
        assert_eq!(
            refs.list(&RefName::new(["mediatype"])).await.unwrap(),
            vec![old]
        );
    }
}
