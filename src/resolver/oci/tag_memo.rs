//! Warm answers to a manifest by tag, remembered until the tag itself would be asked about
//! again. Resolving a tag the long way costs five cache lookups (the tag, the manifest's media
//! type, its bytes, two links), each under a name built of several strings; the Helm view
//! answers the same request with one lookup in its per-index memo. This is the registry view's
//! equivalent: one lookup, no allocation on a miss, keyed by a hash of repository and tag and
//! checked against both.
//!
//! An entry is only ever the answer the long way gave, and only while that answer is fresh: it
//! expires when the tag's `tag_ttl` (or, for a synthesised `latest` or a floating tag, the tag
//! list's) runs out, on the same clock, so the long way then revalidates exactly as before. A
//! stale answer (upstream failing) is never remembered. The memo is bounded by the bytes it
//! holds, and it belongs to one `OciUpstream`, so a configuration reload starts it afresh.

use std::hash::BuildHasher;
use std::sync::Arc;

use tokio::time::Instant;

use crate::cache::Served;
use crate::resolver::ServedManifest;

/// Bytes of manifests remembered per upstream (a typical image manifest is 0.5-2 KB, an index
/// of many platforms some tens of KB).
const BUDGET: u64 = 8 << 20;

pub struct TagMemo {
    entries: moka::sync::Cache<u64, Arc<Entry>>,
    hasher: std::collections::hash_map::RandomState,
}

struct Entry {
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

impl TagMemo {
    pub fn new() -> TagMemo {
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

    fn key(&self, repo: &str, tag: &str) -> u64 {
        self.hasher.hash_one((repo, tag))
    }

    /// The answer for `repo`:`tag`, while it is fresh.
    pub fn get(&self, repo: &str, tag: &str) -> Option<Hit> {
        let e = self.entries.get(&self.key(repo, tag))?;
        if &*e.repo != repo || &*e.tag != tag {
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
        repo: &str,
        tag: &str,
        served: &Served<ServedManifest>,
        synthesized_latest: bool,
    ) {
        if served.stale || served.fresh_for.is_some_and(|d| d.is_zero()) {
            return;
        }
        let entry = Entry {
            repo: repo.into(),
            tag: tag.into(),
            manifest: served.value.clone(),
            until: served.fresh_for.map(|d| Instant::now() + d),
            synthesized_latest,
        };
        self.entries.insert(self.key(repo, tag), Arc::new(entry));
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
        let memo = TagMemo::new();
        let m = manifest(b"{}");
        memo.put(
            "lib/app",
            "v1",
            &Served::fresh_for(m.clone(), Some(Duration::from_secs(60))),
            false,
        );
        let hit = memo.get("lib/app", "v1").expect("fresh");
        assert_eq!(hit.served.value.digest, m.digest);
        assert_eq!(hit.served.fresh_for, Some(Duration::from_secs(60)));
        assert!(!hit.served.stale);
        // other tags and repositories are not answered
        assert!(memo.get("lib/app", "v2").is_none());
        assert!(memo.get("lib/other", "v1").is_none());
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(
            memo.get("lib/app", "v1").unwrap().served.fresh_for,
            Some(Duration::from_secs(1))
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(memo.get("lib/app", "v1").is_none(), "expired with the tag");
    }

    #[tokio::test(start_paused = true)]
    async fn never_remembers_a_stale_answer() {
        let memo = TagMemo::new();
        memo.put("r", "t", &Served::stale(manifest(b"{}")), false);
        assert!(memo.get("r", "t").is_none());
        memo.put(
            "r",
            "t",
            &Served::fresh_for(manifest(b"{}"), Some(Duration::ZERO)),
            false,
        );
        assert!(memo.get("r", "t").is_none());
        // an answer with no expiry (an immutable one) stays
        memo.put("r", "t", &Served::fresh(manifest(b"{}")), true);
        let hit = memo.get("r", "t").unwrap();
        assert_eq!(hit.served.fresh_for, None);
        assert!(hit.synthesized_latest);
    }

    #[test]
    fn a_key_collision_is_a_miss_not_a_wrong_answer() {
        let memo = TagMemo::new();
        let m = manifest(b"{}");
        // plant an entry for another repository/tag under this pair's key
        let key = memo.key("a", "b");
        memo.entries.insert(
            key,
            Arc::new(Entry {
                repo: "x".into(),
                tag: "y".into(),
                manifest: m,
                until: None,
                synthesized_latest: false,
            }),
        );
        assert!(memo.get("a", "b").is_none());
    }
}
