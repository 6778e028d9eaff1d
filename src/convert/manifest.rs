//! Helm chart -> OCI manifest synthesis, byte for byte what `helm push` writes (except that
//! `created` comes from the upstream index, so the digest is stable). Pure and deterministic:
//! the same inputs give the same bytes on every machine and after every restart.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::chart::{config_blob, go_json, ChartMetadata};
use crate::ids::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
pub const HELM_CHART_LAYER: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
pub const HELM_PROV_LAYER: &str = "application/vnd.cncf.helm.chart.provenance.v1.prov";
/// Older pushers used this for the chart layer; accepted on reading, never written.
pub const LEGACY_CHART_LAYER: &str = "application/tar+gzip";

/// `created` when the index entry has none (or an unparsable one): a fixed instant, so that the
/// manifest stays deterministic. The Unix epoch is what reproducible builds use.
pub const FALLBACK_CREATED: &str = "1970-01-01T00:00:00Z";

/// What a Helm chart's OCI manifest points at.
#[derive(Clone, Debug, PartialEq)]
pub struct ChartLayers {
    pub config: Digest,
    pub chart: Digest,
    pub prov: Option<Digest>,
    /// The `org.opencontainers.image.created` annotation, when set.
    pub created: Option<String>,
}

/// Reads the chart layers of a manifest: its Helm config, chart layer (current or legacy media
/// type) and provenance layer. `None` when the manifest is not a Helm chart (an image, an
/// index, another artifact, or not JSON at all). The one reader of chart manifests, for the
/// OCI pull behind an index's `oci://` URL and for the index view of OCI charts alike.
pub fn chart_layers(manifest: &[u8]) -> Option<ChartLayers> {
    #[derive(serde::Deserialize)]
    struct Desc {
        #[serde(rename = "mediaType", default)]
        media_type: String,
        digest: String,
    }
    #[derive(serde::Deserialize)]
    struct M {
        config: Option<Desc>,
        #[serde(default)]
        layers: Vec<Desc>,
        #[serde(default)]
        annotations: BTreeMap<String, String>,
    }
    let m: M = serde_json::from_slice(manifest).ok()?;
    let config = m.config.filter(|c| c.media_type == HELM_CONFIG)?;
    let find = |types: &[&str]| {
        m.layers
            .iter()
            .find(|l| types.contains(&l.media_type.as_str()))
            .and_then(|l| l.digest.parse::<Digest>().ok())
    };
    Some(ChartLayers {
        config: config.digest.parse().ok()?,
        chart: find(&[HELM_CHART_LAYER, LEGACY_CHART_LAYER])?,
        prov: find(&[HELM_PROV_LAYER]),
        created: m
            .annotations
            .get("org.opencontainers.image.created")
            .cloned(),
    })
}

/// A content descriptor in the OCI Go struct's field order.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: &'static str,
    pub digest: String,
    pub size: u64,
}

#[derive(Serialize)]
struct Manifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    config: &'a Descriptor,
    layers: &'a [Descriptor],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'a str, &'a str>,
}

/// A blob by digest and size.
#[derive(Clone, Debug, PartialEq)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
}

/// What the OCI view serves for one chart version.
#[derive(Clone, Debug)]
pub struct ChartArtifact {
    pub manifest: Bytes,
    pub manifest_digest: Digest,
    pub config: Bytes,
    pub config_digest: Digest,
    pub layers: Vec<Descriptor>,
}

/// Normalises an index `created` timestamp to what Helm writes: UTC, whole seconds, RFC 3339.
pub fn normalize_created(created: Option<&str>) -> String {
    created
        .and_then(|c| OffsetDateTime::parse(c.trim(), &Rfc3339).ok())
        .and_then(|t| t.to_offset(time::UtcOffset::UTC).replace_nanosecond(0).ok())
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| FALLBACK_CREATED.to_string())
}

fn non_blank(s: &str) -> bool {
    !s.trim().is_empty()
}

/// The manifest annotations `helm push` sets (Helm's `generateOCIAnnotations`): the standard
/// OCI keys from Chart.yaml, then the chart's own annotations, which may override all but
/// title and version. Blank values are left out.
fn annotations<'a>(
    meta: &'a ChartMetadata,
    created: &'a str,
    authors: &'a str,
) -> BTreeMap<&'a str, &'a str> {
    let mut out = BTreeMap::new();
    let mut add = |k: &'a str, v: &'a str| {
        if non_blank(v) {
            out.insert(k, v);
        }
    };
    add("org.opencontainers.image.description", &meta.description);
    add("org.opencontainers.image.title", &meta.name);
    add("org.opencontainers.image.version", &meta.version);
    add("org.opencontainers.image.url", &meta.home);
    add("org.opencontainers.image.created", created);
    if let Some(src) = meta.sources.first() {
        add("org.opencontainers.image.source", src);
    }
    add("org.opencontainers.image.authors", authors);
    for (k, v) in &meta.annotations {
        if k != "org.opencontainers.image.title" && k != "org.opencontainers.image.version" {
            add(k, v);
        }
    }
    out
}

/// "Name (email), Name2 (email2)", as Helm joins maintainers.
fn authors(meta: &ChartMetadata) -> String {
    meta.maintainers
        .iter()
        .map(|m| {
            let mut s = m.name.clone();
            if !m.email.is_empty() {
                s.push_str(&format!(" ({})", m.email));
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds the OCI artifact for a chart archive (and its provenance file, when there is one).
pub fn synthesize(
    meta: &ChartMetadata,
    chart: &BlobRef,
    prov: Option<&BlobRef>,
    created: Option<&str>,
) -> ChartArtifact {
    let config = Bytes::from(config_blob(meta));
    let config_digest = Digest::of(&config);
    let config_desc = Descriptor {
        media_type: HELM_CONFIG,
        digest: config_digest.to_string(),
        size: config.len() as u64,
    };
    let mut layers = vec![Descriptor {
        media_type: HELM_CHART_LAYER,
        digest: chart.digest.to_string(),
        size: chart.size,
    }];
    if let Some(p) = prov {
        layers.push(Descriptor {
            media_type: HELM_PROV_LAYER,
            digest: p.digest.to_string(),
            size: p.size,
        });
    }
    layers.sort_by(|a, b| a.digest.cmp(&b.digest));
    let created = normalize_created(created);
    let authors = authors(meta);
    let manifest = Bytes::from(go_json(&Manifest {
        schema_version: 2,
        config: &config_desc,
        layers: &layers,
        annotations: annotations(meta, &created, &authors),
    }));
    ChartArtifact {
        manifest_digest: Digest::of(&manifest),
        manifest,
        config,
        config_digest,
        layers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::chart::Maintainer;

    fn meta() -> ChartMetadata {
        ChartMetadata {
            name: "demo".into(),
            version: "0.1.0".into(),
            description: "A Helm chart for Kubernetes".into(),
            api_version: "v2".into(),
            app_version: "1.16.0".into(),
            chart_type: "application".into(),
            home: "https://example.com".into(),
            sources: vec!["https://src.example.com".into()],
            maintainers: vec![
                Maintainer {
                    name: "A".into(),
                    email: "a@x.io".into(),
                    ..Default::default()
                },
                Maintainer {
                    name: "B".into(),
                    ..Default::default()
                },
            ],
            annotations: [
                (
                    "org.opencontainers.image.title".to_string(),
                    "ignored".to_string(),
                ),
                ("category".to_string(), "Infra".to_string()),
            ]
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn created_is_normalised_to_utc_seconds() {
        assert_eq!(
            normalize_created(Some("2024-07-22T13:25:35.424530498+02:00")),
            "2024-07-22T11:25:35Z"
        );
        assert_eq!(normalize_created(None), FALLBACK_CREATED);
        assert_eq!(normalize_created(Some("yesterday")), FALLBACK_CREATED);
    }

    /// Golden test: these bytes are what every replica must produce for this chart.
    #[test]
    fn manifest_bytes_are_pinned() {
        let chart = BlobRef {
            digest: Digest::of(b"chart"),
            size: 5,
        };
        let prov = BlobRef {
            digest: Digest::of(b"prov"),
            size: 4,
        };
        let a = synthesize(&meta(), &chart, Some(&prov), Some("2024-01-02T03:04:05.6Z"));
        assert_eq!(
            String::from_utf8(a.config.to_vec()).unwrap(),
            r#"{"name":"demo","home":"https://example.com","sources":["https://src.example.com"],"version":"0.1.0","description":"A Helm chart for Kubernetes","maintainers":[{"name":"A","email":"a@x.io"},{"name":"B"}],"apiVersion":"v2","appVersion":"1.16.0","annotations":{"category":"Infra","org.opencontainers.image.title":"ignored"},"type":"application"}"#
        );
        let expected = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.cncf.helm.chart.content.v1.tar+gzip","digest":"{}","size":5}},{{"mediaType":"application/vnd.cncf.helm.chart.provenance.v1.prov","digest":"{}","size":4}}],"annotations":{{"category":"Infra","org.opencontainers.image.authors":"A (a@x.io), B","org.opencontainers.image.created":"2024-01-02T03:04:05Z","org.opencontainers.image.description":"A Helm chart for Kubernetes","org.opencontainers.image.source":"https://src.example.com","org.opencontainers.image.title":"demo","org.opencontainers.image.url":"https://example.com","org.opencontainers.image.version":"0.1.0"}}}}"#,
            a.config_digest,
            a.config.len(),
            chart.digest,
            prov.digest
        );
        assert!(chart.digest < prov.digest);
        assert_eq!(String::from_utf8(a.manifest.to_vec()).unwrap(), expected);
        assert_eq!(a.manifest_digest, Digest::of(expected.as_bytes()));
        // and the whole thing is pinned, so an accidental change to any byte shows up here
        assert_eq!(
            a.manifest_digest.to_string(),
            "sha256:18f2ad38203bfa612836f3621051b2817d86bd0f394f844fb87cdd72a95dd02b"
        );
    }

    /// What we synthesise reads back as a chart; images, indexes and junk are not charts; the
    /// legacy chart layer type is accepted.
    #[test]
    fn chart_layers_are_read_back_and_non_charts_refused() {
        let chart = BlobRef {
            digest: Digest::of(b"chart"),
            size: 5,
        };
        let prov = BlobRef {
            digest: Digest::of(b"prov"),
            size: 4,
        };
        let a = synthesize(&meta(), &chart, Some(&prov), Some("2024-01-02T03:04:05Z"));
        let l = chart_layers(&a.manifest).unwrap();
        assert_eq!(
            l,
            ChartLayers {
                config: a.config_digest.clone(),
                chart: chart.digest.clone(),
                prov: Some(prov.digest.clone()),
                created: Some("2024-01-02T03:04:05Z".into()),
            }
        );
        let legacy = String::from_utf8(a.manifest.to_vec())
            .unwrap()
            .replace(HELM_CHART_LAYER, LEGACY_CHART_LAYER);
        assert_eq!(chart_layers(legacy.as_bytes()).unwrap().chart, chart.digest);
        let image = r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"},"layers":[]}"#;
        assert_eq!(chart_layers(image.as_bytes()), None);
        assert_eq!(chart_layers(br#"{"manifests":[]}"#), None);
        assert_eq!(chart_layers(b"<html>"), None);
    }

    #[test]
    fn manifest_parses_as_an_oci_image_manifest() {
        let chart = BlobRef {
            digest: Digest::of(b"chart"),
            size: 5,
        };
        let a = synthesize(&meta(), &chart, None, None);
        let m: oci_spec::image::ImageManifest = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(m.layers().len(), 1);
        assert_eq!(m.config().size(), a.config.len() as u64);
    }
}
