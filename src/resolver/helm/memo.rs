//! The manifests a helm index's content has served, by chart and tag.

use super::*;

/// `IndexContent::manifests`: chart -> tag -> manifest, emptied when it reaches
/// `MANIFEST_MEMO` entries.
#[derive(Default)]
pub struct ManifestMemo {
    by_chart: HashMap<String, HashMap<String, TagManifest>>,
    pub(super) len: usize,
}

impl ManifestMemo {
    pub(super) fn get(&self, chart: &str, tag: &Tag) -> Option<TagManifest> {
        self.by_chart.get(chart)?.get(tag.as_str()).cloned()
    }

    pub(super) fn insert(&mut self, chart: &str, tag: &Tag, m: TagManifest) {
        if self.len >= MANIFEST_MEMO {
            *self = ManifestMemo::default();
        }
        let tags = self.by_chart.entry(chart.to_string()).or_default();
        if tags.insert(tag.as_str().to_string(), m).is_none() {
            self.len += 1;
        }
    }
}
