//! Warm answers to a manifest by tag, remembered until the tag itself would be asked about
//! again. Resolving a tag the long way costs five cache lookups (the tag, the manifest's media
//! type, its bytes, two links), each under a name built of several strings; the Helm view
//! answers the same request with one lookup in its per-index memo. This is the registry view's
//! equivalent: one lookup, no allocation on a miss, keyed by a hash of repository and tag and
//! checked against all three parts of the key.
//!
//! An entry is only ever the answer the long way gave, and only while that answer is fresh: it
//! expires when the tag's `tag_ttl` (or, for a synthesised `latest` or a floating tag, the tag
//! list's) runs out, on the same clock, so the long way then revalidates exactly as before. A
//! stale answer (upstream failing) is never remembered. One memo serves every registry
//! upstream within one budget of manifest bytes, however many are configured; each
//! `OciUpstream` files its entries under an owner number of its own, so after a configuration
//! reload the rebuilt upstreams start afresh and the old entries age out.

use std::hash::BuildHasher;
use std::sync::Arc;

use tokio::time::Instant;

use crate::cache::Served;
use crate::resolver::ServedManifest;

/// Bytes of manifests remembered, for all registry upstreams together (a typical image
/// manifest is 0.5-2 KB, an index of many platforms some tens of KB).
const BUDGET: u64 = 16 << 20;

/// A new owner number for one `OciUpstream`'s entries.
pub fn owner() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub struct TagMemo {
    entries: moka::sync::Cache<u64, Arc<Entry>>,
    hasher: std::collections::hash_map::RandomState,
}

struct Entry {
    owner: u64,
    repo: Box<str>,
    tag: Box<str>,
    manifest: ServedManifest,
    /// When the answer stops being fresh; `None`: it never does.
    until: Option<Instant>,
    /// The tag was a synthesised `latest` (counted on every answer).
    synthesized_latest: bool,
}

/// A remembered answer.
pub struct Hit {
    pub served: Served<ServedManifest>,
    pub synthesized_latest: bool,
}

impl Default for TagMemo {
    fn default() -> TagMemo {
        TagMemo {
            entries: moka::sync::Cache::builder()
                .max_capacity(BUDGET)
                .weigher(|_, e: &Arc<Entry>| {
                    let n = e.manifest.bytes.len() + e.repo.len() + e.tag.len() + 128;
                    u32::try_from(n).unwrap_or(u32::MAX)
                })
                .build(),
            hasher: Default::default(),
        }
    }
}

impl TagMemo {
    fn key(&self, owner: u64, repo: &str, tag: &str) -> u64 {
        self.hasher.hash_one((owner, repo, tag))
    }

    /// `owner`'s answer for `repo`:`tag`, while it is fresh.
    pub fn get(&self, owner: u64, repo: &str, tag: &str) -> Option<Hit> {
        let e = self.entries.get(&self.key(owner, repo, tag))?;
        if e.owner != owner || &*e.repo != repo || &*e.tag != tag {
            return None;
        }
        let left = match e.until {
            // as the tag's own check: fresh while strictly younger than its ttl
            Some(until) => Some(
                until
                    .checked_duration_since(Instant::now())
                    .filter(|d| !d.is_zero())?,
            ),
            None => None,
        };
        Some(Hit {
            served: Served::fresh_for(e.manifest.clone(), left),
            synthesized_latest: e.synthesized_latest,
        })
    }

    /// Remembers a fresh answer until it goes stale; a stale one, or one already out of date,
    /// is not remembered.
    pub fn put(
        &self,
        owner: u64,
        repo: &str,
        tag: &str,
        served: &Served<ServedManifest>,
        synthesized_latest: bool,
    ) {
        if served.stale || served.fresh_for.is_some_and(|d| d.is_zero()) {
            return;
        }
        let entry = Entry {
            owner,
            repo: repo.into(),
            tag: tag.into(),
            manifest: served.value.clone(),
            until: served.fresh_for.map(|d| Instant::now() + d),
            synthesized_latest,
        };
        self.entries
            .insert(self.key(owner, repo, tag), Arc::new(entry));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Digest;
    use bytes::Bytes;
    use std::time::Duration;

    fn manifest(body: &'static [u8]) -> ServedManifest {
        ServedManifest {
            bytes: Bytes::from_static(body),
            digest: Digest::of(body),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn remembers_a_fresh_answer_until_the_tag_would_be_revalidated() {
        let memo = TagMemo::default();
        let m = manifest(b"{}");
        memo.put(
            1,
            "lib/app",
            "v1",
            &Served::fresh_for(m.clone(), Some(Duration::from_secs(60))),
            false,
        );
        let hit = memo.get(1, "lib/app", "v1").expect("fresh");
        assert_eq!(hit.served.value.digest, m.digest);
        assert_eq!(hit.served.fresh_for, Some(Duration::from_secs(60)));
        assert!(!hit.served.stale);
        // other tags and repositories are not answered, nor another upstream (or this one
        // rebuilt by a reload) asking for the same repository and tag
        assert!(memo.get(1, "lib/app", "v2").is_none());
        assert!(memo.get(1, "lib/other", "v1").is_none());
        assert!(memo.get(2, "lib/app", "v1").is_none());
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(
            memo.get(1, "lib/app", "v1").unwrap().served.fresh_for,
            Some(Duration::from_secs(1))
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            memo.get(1, "lib/app", "v1").is_none(),
            "expired with the tag"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn never_remembers_a_stale_answer() {
        let memo = TagMemo::default();
        memo.put(1, "r", "t", &Served::stale(manifest(b"{}")), false);
        assert!(memo.get(1, "r", "t").is_none());
        memo.put(
            1,
            "r",
            "t",
            &Served::fresh_for(manifest(b"{}"), Some(Duration::ZERO)),
            false,
        );
        assert!(memo.get(1, "r", "t").is_none());
        // an answer with no expiry (an immutable one) stays
        memo.put(1, "r", "t", &Served::fresh(manifest(b"{}")), true);
        let hit = memo.get(1, "r", "t").unwrap();
        assert_eq!(hit.served.fresh_for, None);
        assert!(hit.synthesized_latest);
    }

    #[test]
    fn a_key_collision_is_a_miss_not_a_wrong_answer() {
        let memo = TagMemo::default();
        let m = manifest(b"{}");
        // plant entries of another repository/tag, and of another owner, under this key
        let key = memo.key(1, "a", "b");
        let planted = |owner: u64, repo: &str, tag: &str| {
            Arc::new(Entry {
                owner,
                repo: repo.into(),
                tag: tag.into(),
                manifest: m.clone(),
                until: None,
                synthesized_latest: false,
            })
        };
        memo.entries.insert(key, planted(1, "x", "y"));
        assert!(memo.get(1, "a", "b").is_none());
        memo.entries.insert(key, planted(2, "a", "b"));
        assert!(memo.get(1, "a", "b").is_none());
        memo.entries.insert(key, planted(1, "a", "b"));
        assert!(memo.get(1, "a", "b").is_some());
    }
}
