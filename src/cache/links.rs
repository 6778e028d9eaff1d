//! Which repository may name which content. The blob store is shared and content-addressed
//! (one copy of each blob), but the permission to read a blob or manifest by digest is per
//! repository, as distribution keeps it with its per-repository link files: a by-digest read
//! through upstream U and repository R is answered from the cache only when U/R is linked to
//! that digest (a manifest of U/R references it, or U/R's upstream answered for it). Without
//! that, anyone who learnt a digest could read content of a protected upstream through any other.
//!
//! Links are refs (`links/<upstream>/<repo>/<hex>`), so they survive restarts and travel with
//! export and a shared store; the ones in use are also remembered in memory, bounded.

use std::sync::Arc;

use super::refs::{RefName, RefStore};
use crate::ids::Digest;

/// Links remembered in memory (32-byte keys): beyond this, a check reads the ref store.
const MEMORY_LINKS: u64 = 500_000;

pub struct Links {
    refs: Arc<dyn RefStore>,
    background: super::Background,
    /// sha256 of the link's name: a fixed-size key, and no collision can grant access.
    known: moka::sync::Cache<[u8; 32], ()>,
    /// Manifests whose references this process has linked (a manifest may be linked first as
    /// the child of an index, before its own references are known).
    expanded: moka::sync::Cache<[u8; 32], ()>,
}

/// The ref name of one link.
pub fn link_name(upstream: &str, repo: &str, d: &Digest) -> RefName {
    RefName::new(["links", upstream, repo, d.hex()])
}

/// The prefix of every link of one repository.
pub fn repo_links(upstream: &str, repo: &str) -> RefName {
    RefName::new(["links", upstream, repo])
}

/// The memory key of one link: sha256 over its length-prefixed parts (no name built, no
/// allocation: this runs on every by-digest read).
fn key(upstream: &str, repo: &str, d: &Digest) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for part in [upstream, repo, d.hex()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

impl Links {
    pub fn new(refs: Arc<dyn RefStore>, background: super::Background) -> Links {
        Links {
            refs,
            background,
            known: moka::sync::Cache::builder()
                .max_capacity(MEMORY_LINKS)
                .build(),
            expanded: moka::sync::Cache::builder()
                .max_capacity(MEMORY_LINKS)
                .build(),
        }
    }

    /// Whether `upstream`/`repo` is known to hold `d`.
    pub async fn has(&self, upstream: &str, repo: &str, d: &Digest) -> bool {
        let k = key(upstream, repo, d);
        if self.known.contains_key(&k) {
            return true;
        }
        let name = link_name(upstream, repo, d);
        match self.refs.get(&name).await {
            Ok(Some(_)) => {
                self.known.insert(k, ());
                true
            }
            _ => false,
        }
    }

    /// Records that `upstream`/`repo` holds `d`. Returns whether this is news to this process
    /// (the caller then links what a manifest references). The ref is written in the
    /// background: a link lost to a crash costs one question to the upstream, never a wrong
    /// answer.
    pub async fn add(&self, upstream: &str, repo: &str, d: &Digest) -> bool {
        self.add_keyed(key(upstream, repo, d), upstream, repo, d)
    }

    /// `add` with the key already computed (a warm manifest's path hashes it once).
    fn add_keyed(&self, k: [u8; 32], upstream: &str, repo: &str, d: &Digest) -> bool {
        if self.known.contains_key(&k) {
            return false;
        }
        let name = link_name(upstream, repo, d);
        self.known.insert(k, ());
        let refs = self.refs.clone();
        self.background.spawn(async move {
            if matches!(refs.get(&name).await, Ok(Some(_))) {
                return;
            }
            if let Err(e) = refs.put(&name, bytes::Bytes::new()).await {
                tracing::warn!(link = %name, error = %e, "link not persisted; a restart will ask the upstream again");
            }
        });
        true
    }

    /// Records in memory only that `upstream`/`repo` holds `d` (`add_durable` writes it).
    pub fn remember(&self, upstream: &str, repo: &str, d: &Digest) {
        self.known.insert(key(upstream, repo, d), ());
    }

    /// Records that `upstream`/`repo` holds `d` and waits until the ref is written: a fetch
    /// links before it stores, so whoever finds the bytes (another replica on a shared
    /// store, which requires the link) finds the link too.
    pub async fn add_durable(&self, upstream: &str, repo: &str, d: &Digest) {
        self.known.insert(key(upstream, repo, d), ());
        let name = link_name(upstream, repo, d);
        if matches!(self.refs.get(&name).await, Ok(Some(_))) {
            return;
        }
        if let Err(e) = self.refs.put(&name, bytes::Bytes::new()).await {
            tracing::warn!(link = %name, error = %e, "link not persisted; a restart will ask the upstream again");
        }
    }

    /// Links `upstream`/`repo` to `d` and to every descriptor the manifest `bytes` references
    /// (config, layers, child manifests of an index, artifact blobs); the references once per
    /// manifest and process.
    pub async fn add_manifest(&self, upstream: &str, repo: &str, d: &Digest, bytes: &[u8]) {
        let k = key(upstream, repo, d);
        self.add_keyed(k, upstream, repo, d);
        if self.expanded.contains_key(&k) {
            return;
        }
        for child in referenced(bytes) {
            self.add(upstream, repo, &child).await;
        }
        self.expanded.insert(k, ());
    }
}

/// The digests a manifest (OCI or Docker, image or index, or artifact) references.
pub fn referenced(bytes: &[u8]) -> Vec<Digest> {
    #[derive(serde::Deserialize)]
    struct Desc {
        digest: String,
    }
    #[derive(serde::Deserialize)]
    struct Any {
        config: Option<Desc>,
        #[serde(default)]
        layers: Vec<Desc>,
        #[serde(default)]
        manifests: Vec<Desc>,
        #[serde(default)]
        blobs: Vec<Desc>,
    }
    let Ok(m) = serde_json::from_slice::<Any>(bytes) else {
        return Vec::new();
    };
    m.config
        .into_iter()
        .chain(m.layers)
        .chain(m.manifests)
        .chain(m.blobs)
        .filter_map(|d| d.digest.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::DiskRefs;

    #[tokio::test]
    async fn links_are_per_repository_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let refs: Arc<dyn RefStore> = Arc::new(DiskRefs::open(dir.path()).unwrap());
        let links = Links::new(refs.clone(), crate::cache::Background::default());
        let (layer, config) = (Digest::of(b"layer"), Digest::of(b"config"));
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{config}"}},"layers":[{{"digest":"{layer}"}}]}}"#
        );
        let md = Digest::of(manifest.as_bytes());
        links
            .add_manifest("up", "a/b", &md, manifest.as_bytes())
            .await;
        for d in [&md, &layer, &config] {
            assert!(links.has("up", "a/b", d).await);
            assert!(!links.has("up", "a/c", d).await, "another repository");
            assert!(!links.has("other", "a/b", d).await, "another upstream");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let again = Links::new(refs.clone(), crate::cache::Background::default());
        assert!(again.has("up", "a/b", &layer).await, "persisted");
        let listed = refs.list(&repo_links("up", "a/b")).await.unwrap();
        assert_eq!(listed.len(), 3);
    }
}
