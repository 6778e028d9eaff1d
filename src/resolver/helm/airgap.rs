//! What export and import need of a helm upstream.

use super::*;

impl HelmUpstream {
    /// The chart manifests built here before: (chart, version, manifest digest), for export.
    pub async fn built_manifests(&self) -> Result<Vec<(String, String, Digest)>> {
        let mut out = Vec::new();
        for name in self
            .cache
            .refs()
            .list(&RefName::new(["manifest", self.name()]))
            .await?
        {
            let p = name.parts();
            let Some(v) = self.cache.known_value(&name).await else {
                continue;
            };
            if let (Some(d), [_, _, chart, version, _]) = (
                std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse::<Digest>().ok()),
                p,
            ) {
                out.push((chart.clone(), version.clone(), d));
            }
        }
        Ok(out)
    }

    /// The last good index with only the given chart versions left in it (the index a bundle
    /// carries: an air-gapped mirror lists exactly what it can serve), as YAML.
    pub async fn index_for_export(
        &self,
        keep: &std::collections::BTreeSet<(String, String)>,
    ) -> Result<Vec<u8>> {
        let raw = self
            .cache
            .refs()
            .get(&self.raw_name())
            .await?
            .ok_or_else(|| Error::internal(format!("no index of {} is cached", self.name())))?;
        let mut index = parse_index(
            &raw,
            IndexLimits {
                max_bytes: usize::MAX,
                ..IndexLimits::default()
            },
        )?;
        for (chart, versions) in index.entries.iter_mut() {
            versions.retain(|v| keep.contains(&(chart.clone(), v.version.clone())));
        }
        index.entries.retain(|_, v| !v.is_empty());
        Ok(crate::convert::index::render(
            &index,
            crate::convert::index::IndexFormat::Yaml,
        ))
    }

    /// Installs an index from a bundle as this upstream's last good copy (without validators,
    /// so the first refresh once online fetches the whole index again).
    pub async fn install_index(&self, raw: bytes::Bytes) -> Result<Arc<IndexContent>> {
        let content = self.build_content(raw.clone()).await?;
        let meta = IndexMeta {
            digest: Digest::of(&raw).hex().to_string(),
            etag: None,
            last_modified: None,
        };
        self.cache.refs().put(&self.raw_name(), raw.clone()).await?;
        self.cache.put_value(self.meta_name(), meta.encode()).await;
        let heap = content.heap;
        self.cache
            .put_derived(self.content_key(&meta), content.clone(), heap);
        Ok(content)
    }

    /// Installs a chart manifest from a bundle: the refs that let this upstream serve it
    /// (manifest by version, provenance, the archive's digest) and the links.
    pub async fn install_chart(
        &self,
        content: &IndexContent,
        chart: &str,
        version: &str,
        manifest: &ServedManifest,
    ) -> Result<()> {
        let at = self.locate(content, chart, version)?;
        let layers = chart_layers(&manifest.bytes).ok_or_else(|| {
            Error::upstream_invalid(format!("{chart} {version}: not a chart manifest"))
        })?;
        if at.digest.as_ref().is_some_and(|d| d != &layers.chart) {
            return Err(Error::upstream_invalid(format!(
                "{chart} {version}: the manifest's chart layer does not match the index digest"
            )));
        }
        self.cache
            .put_value(
                &self.manifest_name(&at),
                bytes::Bytes::from(manifest.digest.to_string()),
            )
            .await;
        if let Some(p) = &layers.prov {
            self.cache
                .put_value(
                    &RefName::new(["prov", self.name(), chart, version]),
                    bytes::Bytes::from(p.to_string()),
                )
                .await;
        }
        if at.digest.is_none() {
            self.cache
                .put_value(
                    &RefName::new(["archive-digest", self.name(), &at.url]),
                    bytes::Bytes::from(layers.chart.to_string()),
                )
                .await;
        }
        self.link_manifest(chart, manifest).await;
        Ok(())
    }
}
