//! Helm repository index (`index.yaml`): a strict model of Helm's `repo.IndexFile`, parsing with
//! input budgets, and the mirror rewrite that points every chart URL back at chartbridge.
//! Pure functions; calls nothing outside `convert`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::chart::{chart_fields, Dependency, Maintainer};
use crate::error::{Error, Result};

mod fast_yaml;

fn is_false(b: &bool) -> bool {
    !*b
}

/// Helm's `repo.IndexFile`. Unknown keys are refused, as Helm's strict parser refuses them.
/// Fields are in the order Helm's Go struct declares them, which is the order its JSON has.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexFile {
    #[serde(
        default,
        rename = "serverInfo",
        skip_serializing_if = "Option::is_none"
    )]
    pub server_info: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, rename = "apiVersion")]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<String>,
    #[serde(default)]
    pub entries: BTreeMap<String, Vec<ChartVersion>>,
    #[serde(default, rename = "publicKeys", skip_serializing_if = "Vec::is_empty")]
    pub public_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

chart_fields! {
    /// One entry of an index: Chart.yaml fields plus where and when.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ChartVersion {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub urls: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub created: Option<String>,
        #[serde(default, skip_serializing_if = "is_false")]
        pub removed: bool,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        pub digest: String,
    }
}

/// Input limits for an upstream index. Indexes are big (Bitnami ~15k entries) but finite.
#[derive(Clone, Copy, Debug)]
pub struct IndexLimits {
    pub max_bytes: usize,
    pub max_depth: usize,
}

impl Default for IndexLimits {
    fn default() -> Self {
        IndexLimits {
            max_bytes: 128 << 20,
            max_depth: 24,
        }
    }
}

/// Parses an index. JSON is also YAML, so JSON indexes (Helm >= 3.13 writes them) go through the
/// same path; they take the fast serde_json route when they look like JSON.
pub fn parse_index(bytes: &[u8], limits: IndexLimits) -> Result<IndexFile> {
    if bytes.len() > limits.max_bytes {
        return Err(Error::upstream_invalid(format!(
            "index is {} bytes, over the {} byte cap",
            bytes.len(),
            limits.max_bytes
        )));
    }
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        if let Ok(idx) = serde_json::from_slice::<IndexFile>(bytes) {
            return check(idx);
        }
    }
    // The YAML Helm writes goes through the fast reader; anything it declines, serde-saphyr
    // reads (and gives the error for).
    if let Some(idx) = std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| fast_yaml::parse::<IndexFile>(text, limits.max_depth))
    {
        return check(idx);
    }
    saphyr_index(bytes, limits)
}

/// serde-saphyr's reading of an index: the reference the fast reader agrees with.
fn saphyr_index(bytes: &[u8], limits: IndexLimits) -> Result<IndexFile> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = limits.max_depth;
    // Events and nodes scale with the document; bytes are already capped above, so allow a
    // generous multiple of them but keep the budget finite. Aliases stay tightly bounded: a
    // real index has none, a billion-laughs one has many.
    budget.max_events = bytes.len().max(1_000_000);
    budget.max_nodes = bytes.len().max(250_000);
    budget.max_total_scalar_bytes = bytes.len().max(1 << 20);
    budget.max_aliases = 1_000;
    budget.max_reader_input_bytes = Some(limits.max_bytes);
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    // Comments are still validated as YAML, but their text is not kept: nothing reads it.
    options.emit_comments = false;
    let idx: IndexFile = serde_saphyr::from_slice_with_options(bytes, options)
        .map_err(|e| Error::upstream_invalid(format!("index is not a valid Helm index: {e}")))?;
    check(idx)
}

fn check(idx: IndexFile) -> Result<IndexFile> {
    if idx.api_version.is_empty() {
        return Err(Error::upstream_invalid("index has no apiVersion"));
    }
    Ok(idx)
}

impl IndexFile {
    /// The versions of one chart, in index order.
    pub fn versions(&self, chart: &str) -> Option<&[ChartVersion]> {
        self.entries.get(chart).map(Vec::as_slice)
    }

    /// One chart version, by the version string as the index spells it.
    pub fn find(&self, chart: &str, version: &str) -> Option<&ChartVersion> {
        self.versions(chart)?.iter().find(|v| v.version == version)
    }
}

/// The relative URL, inside a mirrored repository, where chartbridge serves a chart archive.
/// Relative so that the rewritten index is the same bytes whatever Host the client used: Helm
/// resolves it against the repository URL it was given.
pub fn archive_path(chart: &str, version: &str) -> String {
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
            .to_string()
            .replace("%2E", ".")
            .replace("%2D", "-")
            .replace("%5F", "_")
            .replace("%2B", "+")
    };
    let (c, v) = (enc(chart), enc(version));
    format!("-/{c}/{v}/{c}-{v}.tgz")
}

/// Splits `oci://host/repo/chart[:tag|@digest]` into host, repository and reference;
/// `default_tag` (a chart version) is used when the URL names neither.
pub fn parse_oci_url(s: &str, default_tag: &str) -> Result<(String, String, String)> {
    let bad = || Error::upstream_invalid(format!("bad oci:// chart URL {s:?}"));
    let rest = s.strip_prefix("oci://").ok_or_else(bad)?;
    let (host, path) = rest.split_once('/').ok_or_else(bad)?;
    let (repo, reference) = if let Some((repo, d)) = path.split_once('@') {
        (repo.to_string(), d.to_string())
    } else {
        let last = path.rsplit('/').next().unwrap_or(path);
        match last.split_once(':') {
            Some((_, tag)) => (
                path[..path.len() - tag.len() - 1].to_string(),
                tag.to_string(),
            ),
            None => (
                path.to_string(),
                super::version::tag_for_version(default_tag),
            ),
        }
    };
    if host.is_empty() || repo.is_empty() || reference.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), repo, reference))
}

/// How a mirrored index is written out. Helm (3.13 and later, and 4) reads a JSON index with
/// its JSON decoder, several times faster and in a fraction of the memory of its YAML path,
/// and JSON is YAML too, so YAML readers still parse it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IndexFormat {
    #[default]
    Json,
    Yaml,
}

impl IndexFormat {
    pub fn parse(s: &str) -> Option<IndexFormat> {
        match s {
            "json" => Some(IndexFormat::Json),
            "yaml" => Some(IndexFormat::Yaml),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IndexFormat::Json => "json",
            IndexFormat::Yaml => "yaml",
        }
    }
}

/// Writes an index: compact JSON (keys in Helm's order, UTF-8, no `\/` escapes) or YAML that
/// Helm's strict parser accepts.
pub fn render(index: &IndexFile, format: IndexFormat) -> Vec<u8> {
    match format {
        IndexFormat::Json => serde_json::to_vec(index).expect("serialising an index cannot fail"),
        IndexFormat::Yaml => serde_saphyr::to_string(index)
            .expect("serialising an index cannot fail")
            .into_bytes(),
    }
}

/// A string inside `CompactIndex::text`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

#[derive(Clone, Copy, Debug)]
struct ChartSpan {
    name: Span,
    first: u32,
    count: u32,
    /// The first entry's description and keywords (comma-joined), for people (the catalog
    /// page's lists and search).
    description: Span,
    keywords: Span,
}

#[derive(Clone, Copy, Debug)]
struct EntrySpans {
    version: Span,
    digest: Span,
    url: Option<Span>,
    created: Option<Span>,
    app_version: Span,
}

/// What the mirror keeps of an index once it is rewritten: per chart, each version with its
/// digest, first upstream URL and creation time; enough to resolve tags, fetch and verify
/// archives, and date manifests. All text lives in one buffer and the records in two arrays,
/// so a 15,000-version index costs a few MiB in three allocations (no per-string heap churn
/// that would keep the parse's memory from going back to the system).
#[derive(Clone, Debug, Default)]
pub struct CompactIndex {
    text: String,
    /// Sorted by name (the index's entries map is).
    charts: Vec<ChartSpan>,
    entries: Vec<EntrySpans>,
}

/// One index entry, borrowed from a `CompactIndex`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub version: &'a str,
    /// The entry's `digest` (hex sha256, no prefix), empty when the index gives none.
    pub digest: &'a str,
    /// The upstream's first URL for the archive, as written (relative, absolute or oci://).
    pub url: Option<&'a str>,
    pub created: Option<&'a str>,
    pub app_version: &'a str,
}

/// What the catalog page shows of a chart beside its versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChartInfo<'a> {
    pub name: &'a str,
    pub versions: usize,
    pub description: &'a str,
    /// Comma-joined.
    pub keywords: &'a str,
}

impl CompactIndex {
    /// Keeps what serving needs of `index` (URLs as the upstream wrote them).
    pub fn from_index(index: &IndexFile) -> CompactIndex {
        let text_len: usize = index
            .entries
            .iter()
            .map(|(name, vs)| {
                name.len()
                    + vs.iter()
                        .map(|v| {
                            v.version.len()
                                + v.digest.len()
                                + v.urls.first().map_or(0, String::len)
                                + v.created.as_ref().map_or(0, String::len)
                                + v.app_version.len()
                        })
                        .sum::<usize>()
                    + vs.first().map_or(0, |v| {
                        v.description.len() + v.keywords.iter().map(|k| k.len() + 1).sum::<usize>()
                    })
            })
            .sum();
        let mut c = CompactIndex {
            text: String::with_capacity(text_len),
            charts: Vec::with_capacity(index.entries.len()),
            entries: Vec::with_capacity(index.entries.values().map(Vec::len).sum()),
        };
        for (name, vs) in &index.entries {
            let name = c.push(name);
            let first = c.entries.len() as u32;
            for v in vs {
                let e = EntrySpans {
                    version: c.push(&v.version),
                    digest: c.push(&v.digest),
                    url: v.urls.first().map(|u| c.push(u)),
                    created: v.created.as_deref().map(|t| c.push(t)),
                    app_version: c.push(&v.app_version),
                };
                c.entries.push(e);
            }
            let (description, keywords) = match vs.first() {
                Some(v) => (c.push(&v.description), c.push(&v.keywords.join(","))),
                None => (Span::default(), Span::default()),
            };
            c.charts.push(ChartSpan {
                name,
                first,
                count: vs.len() as u32,
                description,
                keywords,
            });
        }
        c
    }

    fn push(&mut self, s: &str) -> Span {
        let start = self.text.len() as u32;
        self.text.push_str(s);
        Span {
            start,
            len: s.len() as u32,
        }
    }

    fn str(&self, s: Span) -> &str {
        &self.text[s.start as usize..(s.start + s.len) as usize]
    }

    fn entry(&self, e: &EntrySpans) -> Entry<'_> {
        Entry {
            version: self.str(e.version),
            digest: self.str(e.digest),
            url: e.url.map(|u| self.str(u)),
            created: e.created.map(|t| self.str(t)),
            app_version: self.str(e.app_version),
        }
    }

    /// Every chart with what people read about it, sorted by name.
    pub fn chart_infos(&self) -> impl Iterator<Item = ChartInfo<'_>> {
        self.charts.iter().map(|c| ChartInfo {
            name: self.str(c.name),
            versions: c.count as usize,
            description: self.str(c.description),
            keywords: self.str(c.keywords),
        })
    }

    /// Versions of every chart together.
    pub fn version_count(&self) -> usize {
        self.entries.len()
    }

    /// The versions of one chart, in index order.
    pub fn versions(
        &self,
        chart: &str,
    ) -> Option<impl ExactSizeIterator<Item = Entry<'_>> + Clone> {
        let i = self
            .charts
            .binary_search_by(|c| self.str(c.name).cmp(chart))
            .ok()?;
        let c = self.charts[i];
        let range = c.first as usize..(c.first + c.count) as usize;
        Some(self.entries[range].iter().map(|e| self.entry(e)))
    }

    /// One chart version, by the version string as the index spells it.
    pub fn find(&self, chart: &str, version: &str) -> Option<Entry<'_>> {
        self.versions(chart)?.find(|e| e.version == version)
    }

    /// Chart names, sorted.
    pub fn charts(&self) -> impl Iterator<Item = &str> {
        self.charts.iter().map(|c| self.str(c.name))
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.text.capacity()
            + self.charts.capacity() * std::mem::size_of::<ChartSpan>()
            + self.entries.capacity() * std::mem::size_of::<EntrySpans>()
    }
}

/// A mirrored index: the bytes to serve, and what serving needs of the entries.
pub struct Rewritten {
    pub bytes: Vec<u8>,
    pub compact: CompactIndex,
}

/// The mirror rewrite: the same index with every chart's URL list replaced by chartbridge's
/// archive route, written in `format`. Consumes the parsed index so that only one copy of it
/// is ever in memory; what serving needs afterwards is `Rewritten::compact`.
pub fn rewrite(mut index: IndexFile, format: IndexFormat) -> Rewritten {
    let compact = CompactIndex::from_index(&index);
    for (name, versions) in index.entries.iter_mut() {
        for v in versions.iter_mut() {
            // The entry's own name is what Helm uses; the map key is the same in valid indexes.
            let chart = if v.name.is_empty() {
                name.as_str()
            } else {
                v.name.as_str()
            };
            v.urls = vec![archive_path(chart, &v.version)];
        }
    }
    let bytes = render(&index, format);
    Rewritten { bytes, compact }
}

/// The rewrite as YAML, keeping the parsed index (tests and benchmarks).
pub fn rewrite_index(index: &IndexFile) -> Vec<u8> {
    rewrite(index.clone(), IndexFormat::Yaml).bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = r#"apiVersion: v1
entries:
  metallb:
  - apiVersion: v2
    appVersion: v0.14.8
    created: "2024-07-22T11:25:35.424530498Z"
    description: A network load-balancer implementation for Kubernetes using standard routing protocols
    digest: 6e56f1ba5ce8ef4d2ff3a4dbf2b3b2dba3b6b1d3a9d8c3f5c1d6e2a0b4c7f9e1
    home: https://metallb.universe.tf
    name: metallb
    sources:
    - https://github.com/metallb/metallb
    type: application
    urls:
    - https://github.com/metallb/metallb/releases/download/metallb-chart-0.14.8/metallb-0.14.8.tgz
    version: 0.14.8
    dependencies:
    - condition: crds.enabled
      name: crds
      repository: ""
      version: 0.14.8
  - name: metallb
    version: 1.0
    urls: [charts/metallb-1.0.tgz]
generated: "2024-07-22T11:25:35.405163826Z"
"#;

    #[test]
    fn parses_a_real_shaped_index() {
        let idx = parse_index(INDEX.as_bytes(), IndexLimits::default()).unwrap();
        let vs = idx.versions("metallb").unwrap();
        assert_eq!(vs.len(), 2);
        assert_eq!(vs[0].version, "0.14.8");
        assert_eq!(vs[1].version, "1.0");
        assert_eq!(vs[0].dependencies[0].condition, "crds.enabled");
        assert!(idx.find("metallb", "0.14.8").is_some());
    }

    #[test]
    fn refuses_unknown_keys_not_yaml_and_oversize() {
        let bad = INDEX.replace("    type: application\n", "    typo: application\n");
        let e = parse_index(bad.as_bytes(), IndexLimits::default()).unwrap_err();
        assert!(e.message().contains("typo"), "{e}");
        assert!(parse_index(b"<html>hello</html>", IndexLimits::default()).is_err());
        assert!(parse_index(b"", IndexLimits::default()).is_err());
        let small = IndexLimits {
            max_bytes: 100,
            ..Default::default()
        };
        assert!(parse_index(INDEX.as_bytes(), small).is_err());
    }

    #[test]
    fn refuses_a_billion_laughs() {
        let mut y = String::from("apiVersion: v1\nannotations:\n  a0: &a0 \"lol\"\n");
        for i in 1..12 {
            let refs = vec![format!("*a{}", i - 1); 10].join(",");
            y.push_str(&format!("  a{i}: &a{i} [{refs}]\n"));
        }
        assert!(parse_index(y.as_bytes(), IndexLimits::default()).is_err());
    }

    #[test]
    fn rewrite_points_urls_at_the_mirror_and_round_trips() {
        let idx = parse_index(INDEX.as_bytes(), IndexLimits::default()).unwrap();
        let out = rewrite_index(&idx);
        let back = parse_index(&out, IndexLimits::default()).unwrap();
        let vs = back.versions("metallb").unwrap();
        assert_eq!(vs[0].urls, vec!["-/metallb/0.14.8/metallb-0.14.8.tgz"]);
        assert_eq!(vs[1].urls, vec!["-/metallb/1.0/metallb-1.0.tgz"]);
        // everything but the URLs survives
        let mut expected = idx.clone();
        for v in expected.entries.get_mut("metallb").unwrap() {
            v.urls.clear();
        }
        let mut got = back.clone();
        for v in got.entries.get_mut("metallb").unwrap() {
            v.urls.clear();
        }
        assert_eq!(got, expected);
        // deterministic
        assert_eq!(rewrite_index(&idx), out);
    }

    /// The JSON form: compact, keys in Helm's order, no escaped slashes, and it parses back
    /// to the same index as the YAML form (through both our parsers).
    #[test]
    fn json_form_is_compact_ordered_and_equal_to_the_yaml_form() {
        let idx = parse_index(INDEX.as_bytes(), IndexLimits::default()).unwrap();
        let json = rewrite(idx.clone(), IndexFormat::Json);
        let yaml = rewrite(idx.clone(), IndexFormat::Yaml);
        let text = String::from_utf8(json.bytes.clone()).unwrap();
        assert!(
            text.starts_with(
                r#"{"apiVersion":"v1","generated":"2024-07-22T11:25:35.405163826Z","entries":{"metallb":[{"name":"metallb","home":"#
            ),
            "{text}"
        );
        assert!(!text.contains("\\/") && !text.contains('\n') && !text.contains(": "));
        assert!(text.contains(r#""urls":["-/metallb/0.14.8/metallb-0.14.8.tgz"],"created":"2024-07-22T11:25:35.424530498Z","digest":"6e56"#));
        let from_json = parse_index(&json.bytes, IndexLimits::default()).unwrap();
        let from_yaml = parse_index(&yaml.bytes, IndexLimits::default()).unwrap();
        assert_eq!(from_json, from_yaml);
        // the compact entries keep the upstream URL and what serving needs
        let c = &json.compact;
        let e = c.find("metallb", "0.14.8").unwrap();
        assert!(e.url.unwrap().starts_with("https://github.com/metallb"));
        assert!(e.digest.starts_with("6e56"));
        assert_eq!(e.created, Some("2024-07-22T11:25:35.424530498Z"));
        let second = c.find("metallb", "1.0").unwrap();
        assert_eq!(
            (second.url, second.digest, second.created),
            (Some("charts/metallb-1.0.tgz"), "", None)
        );
        assert_eq!(c.versions("metallb").unwrap().len(), 2);
        assert!(c.versions("nope").is_none());
        assert_eq!(c.charts().collect::<Vec<_>>(), vec!["metallb"]);
    }

    #[test]
    fn oci_urls() {
        let r =
            parse_oci_url("oci://registry-1.docker.io/bitnamicharts/redis:20.1.0", "x").unwrap();
        assert_eq!(
            r,
            (
                "registry-1.docker.io".into(),
                "bitnamicharts/redis".into(),
                "20.1.0".into()
            )
        );
        let r = parse_oci_url("oci://127.0.0.1:5000/charts/demo", "1.0.0+b").unwrap();
        assert_eq!(
            r,
            (
                "127.0.0.1:5000".into(),
                "charts/demo".into(),
                "1.0.0_b".into()
            )
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_oci_url(&format!("oci://h:1/a/b@{d}"), "x").unwrap();
        assert_eq!((r.1.as_str(), r.2.as_str()), ("a/b", d.as_str()));
        assert!(parse_oci_url("oci://nohost", "x").is_err());
        assert!(parse_oci_url("https://x/y", "x").is_err());
    }

    #[test]
    fn archive_paths_escape_what_a_url_path_cannot_hold() {
        assert_eq!(
            archive_path("a", "1.0.0+b.1"),
            "-/a/1.0.0+b.1/a-1.0.0+b.1.tgz"
        );
        assert_eq!(archive_path("a b", "1/2"), "-/a%20b/1%2F2/a%20b-1%2F2.tgz");
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Arbitrary bytes and arbitrary YAML-ish text parse or fail cleanly.
        #[test]
        fn index_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_index(&bytes, IndexLimits::default());
        }

        #[test]
        fn yamlish_text_never_panics(text in "(apiVersion: v1\n)?(entries:\n)?([ a-z:\n&*{}\\[\\],-]{0,200})") {
            if let Ok(idx) = parse_index(text.as_bytes(), IndexLimits::default()) {
                // whatever parsed also rewrites and re-parses
                let out = rewrite_index(&idx);
                prop_assert!(parse_index(&out, IndexLimits::default()).is_ok());
            }
        }
    }
}
