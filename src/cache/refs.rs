//! Small named pointers to digests on disk (`<dir>/refs/<sha256 of the name>`), e.g. "chart
//! metallb 0.14.8 of upstream metallb has manifest sha256:...". They let a restarted process
//! serve what it built before without asking the upstream. Writes are atomic.

use std::path::PathBuf;

use super::disk::write_file_atomic;
use crate::error::Result;
use crate::ids::Digest;

pub struct RefStore {
    root: PathBuf,
}

impl RefStore {
    pub fn open(cache_dir: &std::path::Path) -> Result<RefStore> {
        let root = cache_dir.join("refs");
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(cache_dir.join("tmp"))?;
        Ok(RefStore { root })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(Digest::of(name.as_bytes()).hex())
    }

    pub async fn get(&self, name: &str) -> Option<Digest> {
        self.get_text(name).await?.trim().parse().ok()
    }

    pub async fn put(&self, name: &str, digest: &Digest) -> Result<()> {
        self.put_text(name, &digest.to_string()).await
    }

    /// A small text value (a media type, a JSON tag list).
    pub async fn get_text(&self, name: &str) -> Option<String> {
        tokio::fs::read_to_string(self.path(name)).await.ok()
    }

    pub async fn put_text(&self, name: &str, text: &str) -> Result<()> {
        let (dest, tmp) = (self.path(name), self.root.parent().map(|p| p.join("tmp")));
        let tmp = tmp.unwrap_or_else(|| self.root.clone());
        let text = text.to_string();
        tokio::task::spawn_blocking(move || write_file_atomic(&tmp, &dest, text.as_bytes()))
            .await
            .map_err(|e| crate::error::Error::internal(format!("ref write failed: {e}")))??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refs_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"x");
        RefStore::open(dir.path())
            .unwrap()
            .put("a b", &d)
            .await
            .unwrap();
        let r = RefStore::open(dir.path()).unwrap();
        assert_eq!(r.get("a b").await, Some(d));
        assert_eq!(r.get("other").await, None);
    }
}
