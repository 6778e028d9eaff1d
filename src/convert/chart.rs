//! Chart metadata: the Chart.yaml model in Helm's Go field order, read out of a chart archive
//! with bounded decompression, and written as Helm's OCI config blob (Go `encoding/json` bytes).
//! Pure functions; calls nothing outside `convert`.

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

fn is_false(b: &bool) -> bool {
    !*b
}

/// Declares a struct holding every Chart.yaml field in Helm's `chart.Metadata` order (which is the
/// JSON order of the OCI config blob), followed by any extra fields. Chart.yaml itself and an
/// index.yaml entry share these fields; declaring them once keeps the two from drifting.
macro_rules! chart_fields {
    ($(#[$attr:meta])* pub struct $name:ident { $($extra:tt)* }) => {
        $(#[$attr])*
        pub struct $name {
            #[serde(default, skip_serializing_if = "String::is_empty")]
            pub name: String,
            #[serde(default, skip_serializing_if = "String::is_empty")]
            pub home: String,
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub sources: Vec<String>,
            #[serde(default, skip_serializing_if = "String::is_empty")]
            pub version: String,
            #[serde(default, skip_serializing_if = "String::is_empty")]
            pub description: String,
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub keywords: Vec<String>,
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub maintainers: Vec<Maintainer>,
            #[serde(default, skip_serializing_if = "String::is_empty")]
            pub icon: String,
            #[serde(default, rename = "apiVersion", skip_serializing_if = "String::is_empty")]
            pub api_version: String,
            #[serde(default, skip_serializing_if = "String::is_empty")]
            pub condition: String,
            #[serde(default, skip_serializing_if = "String::is_empty")]
            pub tags: String,
            #[serde(default, rename = "appVersion", skip_serializing_if = "String::is_empty")]
            pub app_version: String,
            #[serde(default, skip_serializing_if = "is_false")]
            pub deprecated: bool,
            #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
            pub annotations: BTreeMap<String, String>,
            #[serde(default, rename = "kubeVersion", skip_serializing_if = "String::is_empty")]
            pub kube_version: String,
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub dependencies: Vec<Dependency>,
            #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
            pub chart_type: String,
            $($extra)*
        }
    };
}
pub(crate) use chart_fields;

chart_fields! {
    /// Chart.yaml (Helm's `chart.Metadata`). Parsed leniently, as Helm's loader does: old charts
    /// carry keys such as `engine` that Helm ignores.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub struct ChartMetadata {}
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Maintainer {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub email: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
}

/// Helm's `chart.Dependency`: `name` and `repository` are always written, the rest when set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dependency {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default)]
    pub repository: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub condition: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub enabled: bool,
    #[serde(
        default,
        rename = "import-values",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub import_values: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub alias: String,
}

/// Limits for reading a chart archive. A chart is small; these stop a gzip or tar bomb.
#[derive(Clone, Copy, Debug)]
pub struct ArchiveLimits {
    /// Most bytes the gzip stream may expand to before we give up.
    pub max_expanded_bytes: u64,
    /// Largest Chart.yaml / requirements.yaml we read.
    pub max_metadata_bytes: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_expanded_bytes: 256 << 20,
            max_metadata_bytes: 1 << 20,
        }
    }
}

#[derive(Deserialize)]
struct Requirements {
    #[serde(default)]
    dependencies: Vec<Dependency>,
}

/// Reads the top-level Chart.yaml out of a chart archive (`.tgz`), as Helm's loader sees it:
/// `apiVersion` defaults to `v1`, and a v1 chart's `requirements.yaml` supplies its dependencies.
pub fn read_chart_metadata(tgz: &[u8], limits: ArchiveLimits) -> Result<ChartMetadata> {
    let gz = flate2::read::GzDecoder::new(tgz);
    let mut archive = tar::Archive::new(gz.take(limits.max_expanded_bytes));
    let mut chart_yaml: Option<Vec<u8>> = None;
    let mut requirements: Option<Vec<u8>> = None;
    let bad = |e: std::io::Error| Error::upstream_invalid(format!("chart archive unreadable: {e}"));
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let Some(file) = top_level_file(&entry).map_err(bad)? else {
            continue;
        };
        let slot = match file.as_str() {
            "Chart.yaml" => &mut chart_yaml,
            "requirements.yaml" => &mut requirements,
            _ => continue,
        };
        if entry.size() > limits.max_metadata_bytes {
            return Err(Error::upstream_invalid(format!(
                "chart archive: {} is larger than {} bytes",
                file, limits.max_metadata_bytes
            )));
        }
        let mut buf = Vec::new();
        entry
            .by_ref()
            .take(limits.max_metadata_bytes)
            .read_to_end(&mut buf)
            .map_err(bad)?;
        *slot = Some(buf);
        if let Some(c) = &chart_yaml {
            // Only a v1 chart needs requirements.yaml; stop reading as soon as we can.
            if requirements.is_some() || !is_v1(c) {
                break;
            }
        }
    }
    let chart_yaml =
        chart_yaml.ok_or_else(|| Error::upstream_invalid("chart archive has no Chart.yaml"))?;
    let mut meta: ChartMetadata = parse_yaml(&chart_yaml, "Chart.yaml")?;
    if meta.api_version.is_empty() {
        meta.api_version = "v1".to_string();
    }
    if meta.api_version == "v1" {
        if let Some(req) = requirements {
            let req: Requirements = parse_yaml(&req, "requirements.yaml")?;
            if !req.dependencies.is_empty() {
                meta.dependencies = req.dependencies;
            }
        }
    }
    if meta.name.is_empty() || meta.version.is_empty() {
        return Err(Error::upstream_invalid(
            "chart archive: Chart.yaml has no name or version",
        ));
    }
    Ok(meta)
}

/// The name of a file at the top of the chart (`<chart>/<file>`), or `None` for anything
/// deeper or shallower.
fn top_level_file<R: Read>(entry: &tar::Entry<'_, R>) -> std::io::Result<Option<String>> {
    let path = entry.path()?;
    let parts: Vec<String> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    Ok(match <[String; 2]>::try_from(parts) {
        Ok([_, file]) => Some(file),
        Err(_) => None,
    })
}

/// The files of a chart people read: its top-level `README.md` and `values.yaml`, each cut to
/// `max_file` bytes (the flag says whether it was), as text (invalid UTF-8 replaced).
#[derive(Debug, Default)]
pub struct ChartDocs {
    pub readme: Option<(String, bool)>,
    pub values: Option<(String, bool)>,
}

/// Reads `README.md` (any case) and `values.yaml` from the top of a chart archive, within
/// `limits` (a gzip or tar bomb stops at `max_expanded_bytes`).
pub fn read_chart_docs(tgz: &[u8], limits: ArchiveLimits, max_file: u64) -> Result<ChartDocs> {
    let gz = flate2::read::GzDecoder::new(tgz);
    let mut archive = tar::Archive::new(gz.take(limits.max_expanded_bytes));
    let mut docs = ChartDocs::default();
    let bad = |e: std::io::Error| Error::upstream_invalid(format!("chart archive unreadable: {e}"));
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let Some(file) = top_level_file(&entry).map_err(bad)? else {
            continue;
        };
        let slot = if file.eq_ignore_ascii_case("README.md") {
            &mut docs.readme
        } else if file == "values.yaml" {
            &mut docs.values
        } else {
            continue;
        };
        let mut buf = Vec::new();
        entry
            .by_ref()
            .take(max_file)
            .read_to_end(&mut buf)
            .map_err(bad)?;
        let cut = entry.size() > max_file;
        *slot = Some((String::from_utf8_lossy(&buf).into_owned(), cut));
        if docs.readme.is_some() && docs.values.is_some() {
            break;
        }
    }
    Ok(docs)
}

fn is_v1(chart_yaml: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Api {
        #[serde(default, rename = "apiVersion")]
        api_version: String,
    }
    parse_yaml::<Api>(chart_yaml, "Chart.yaml")
        .map(|a| a.api_version.is_empty() || a.api_version == "v1")
        .unwrap_or(true)
}

/// Budgets for small YAML documents (Chart.yaml): no alias games, shallow nesting.
fn parse_yaml<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = 32;
    budget.max_aliases = 100;
    budget.max_nodes = 100_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    serde_saphyr::from_slice_with_options(bytes, options)
        .map_err(|e| Error::upstream_invalid(format!("chart archive: {what} is not valid: {e}")))
}

/// Serialises like Go's `json.Marshal`: compact, and with `<`, `>`, `&`, U+2028 and U+2029
/// escaped. Those characters can only occur inside JSON strings, so escaping them in the
/// finished text is exact.
pub fn go_json<T: Serialize>(value: &T) -> Vec<u8> {
    let plain = serde_json::to_string(value).expect("serialising plain data cannot fail");
    if !plain.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return plain.into_bytes();
    }
    let mut out = String::with_capacity(plain.len() + 16);
    for c in plain.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.into_bytes()
}

/// Helm's OCI config blob for a chart: Chart.yaml metadata as Go JSON.
pub fn config_blob(meta: &ChartMetadata) -> Vec<u8> {
    go_json(meta)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a chart archive in memory, as `helm package` lays it out.
    pub fn make_tgz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_cksum();
            tar.append_data(&mut h, path, *data).unwrap();
        }
        let raw = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn reads_the_readme_and_values_people_read_cut_to_size() {
        let tgz = make_tgz(&[
            (
                "demo/Chart.yaml",
                b"apiVersion: v2\nname: demo\nversion: 0.1.0\n",
            ),
            ("demo/charts/sub/README.md", b"not this one"),
            ("demo/readme.MD", b"# Demo\n"),
            ("demo/values.yaml", &[b'x'; 100]),
        ]);
        let d = read_chart_docs(&tgz, ArchiveLimits::default(), 64).unwrap();
        assert_eq!(d.readme, Some(("# Demo\n".to_string(), false)));
        let (values, cut) = d.values.unwrap();
        assert_eq!((values.len(), cut), (64, true));
        let none = read_chart_docs(
            &make_tgz(&[("demo/Chart.yaml", b"x")]),
            ArchiveLimits::default(),
            64,
        )
        .unwrap();
        assert!(none.readme.is_none() && none.values.is_none());
    }

    #[test]
    fn reads_top_level_chart_yaml_only() {
        let tgz = make_tgz(&[
            (
                "demo/charts/sub/Chart.yaml",
                b"apiVersion: v2\nname: sub\nversion: 9.9.9\n",
            ),
            (
                "demo/Chart.yaml",
                b"apiVersion: v2\nname: demo\nversion: 0.1.0\nappVersion: 1.0\nengine: gotpl\n",
            ),
        ]);
        let m = read_chart_metadata(&tgz, ArchiveLimits::default()).unwrap();
        assert_eq!(m.name, "demo");
        assert_eq!(m.version, "0.1.0");
        // an unquoted YAML number stays the string Helm would see
        assert_eq!(m.app_version, "1.0");
    }

    #[test]
    fn v1_chart_takes_dependencies_from_requirements() {
        let tgz = make_tgz(&[
            ("old/Chart.yaml", b"name: old\nversion: 1.0.0\n"),
            (
                "old/requirements.yaml",
                b"dependencies:\n- name: redis\n  version: 1.x\n  repository: https://x\n",
            ),
        ]);
        let m = read_chart_metadata(&tgz, ArchiveLimits::default()).unwrap();
        assert_eq!(m.api_version, "v1");
        assert_eq!(m.dependencies.len(), 1);
        assert_eq!(m.dependencies[0].name, "redis");
    }

    #[test]
    fn refuses_archives_without_chart_yaml_and_gzip_bombs() {
        let tgz = make_tgz(&[("demo/values.yaml", b"a: 1\n")]);
        assert!(read_chart_metadata(&tgz, ArchiveLimits::default()).is_err());
        let zeros = vec![0u8; 4 << 20];
        let tgz = make_tgz(&[
            ("demo/big", &zeros),
            ("demo/Chart.yaml", b"name: a\nversion: 1.0.0\n"),
        ]);
        let limits = ArchiveLimits {
            max_expanded_bytes: 1 << 20,
            max_metadata_bytes: 1 << 20,
        };
        assert!(read_chart_metadata(&tgz, limits).is_err());
        assert!(read_chart_metadata(b"not gzip", ArchiveLimits::default()).is_err());
    }

    #[test]
    fn config_blob_is_go_json() {
        let meta = ChartMetadata {
            name: "demo".into(),
            version: "0.1.0".into(),
            api_version: "v2".into(),
            kube_version: ">=1.19.0-0 & <2".into(),
            annotations: [
                ("b".to_string(), "2".to_string()),
                ("a".to_string(), "1".to_string()),
            ]
            .into(),
            dependencies: vec![Dependency {
                name: "x".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            String::from_utf8(config_blob(&meta)).unwrap(),
            r#"{"name":"demo","version":"0.1.0","apiVersion":"v2","annotations":{"a":"1","b":"2"},"kubeVersion":"\u003e=1.19.0-0 \u0026 \u003c2","dependencies":[{"name":"x","repository":""}]}"#
        );
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Arbitrary bytes, gzip or not, never panic the chart reader.
        #[test]
        fn chart_reading_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = read_chart_metadata(&bytes, ArchiveLimits::default());
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, &bytes).unwrap();
            let _ = read_chart_metadata(&gz.finish().unwrap(), ArchiveLimits::default());
        }

        /// Any Chart.yaml text that parses gives Go-compatible JSON that parses back.
        #[test]
        fn config_blob_round_trips(name in "[a-z<>&]{1,10}", version in "[0-9.]{1,8}", desc in "\\PC{0,40}") {
            let meta = ChartMetadata { name, version, description: desc, ..Default::default() };
            let json = config_blob(&meta);
            let back: ChartMetadata = serde_json::from_slice(&json).unwrap();
            prop_assert_eq!(back, meta);
            prop_assert!(!json.contains(&b'<') && !json.contains(&b'>') && !json.contains(&b'&'));
        }
    }
}
