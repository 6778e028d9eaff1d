//! Bundles: the cache written out as a standard OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`), as a directory or a tar, and read back in on the other side of an
//! air gap.
//!
//! `index.json` names every manifest a client can pull, each with
//! `org.opencontainers.image.ref.name` = `<upstream>/<repository>:<tag>` (so `skopeo` reads it
//! as any layout) and `io.chartbridge.*` annotations saying what it is to chartbridge. Besides
//! the charts and images, each helm upstream's index travels as an artifact of its own media
//! type (`application/vnd.chartbridge.helm.index.v1`), holding the last good upstream index
//! cut down to the versions the bundle carries. Tags to digests are the `index.json` entries;
//! a synthesised `latest` is an entry marked `io.chartbridge.synthesized`.
//!
//! An incremental bundle (`--since OLD`) leaves out every blob and manifest OLD holds and names
//! OLD (the sha256 of its `index.json`) as its base; it is imported on top of it.
//!
//! Import trusts nothing: only `oci-layout`, `index.json` and `blobs/sha256/<64 hex>` regular
//! files are accepted (no links, devices, other paths, or sizes over the limits); every blob is
//! hashed while it is staged under the cache's `tmp/`; every manifest's references must be in
//! the bundle or the cache, the base must have been imported, and the bytes must fit
//! `max_disk_bytes`. Only then do blobs move into the store and refs get written: a bundle that
//! fails any check leaves the cache as it was.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::app::App;
use crate::cache::{BlobData, RefName};
use crate::convert::manifest::chart_layers;
use crate::convert::version;
use crate::error::{Error, Kind, Result};
use crate::ids::Digest;
use crate::resolver::{ServedManifest, Source};

pub const HELM_INDEX_ARTIFACT: &str = "application/vnd.chartbridge.helm.index.v1";
pub const HELM_INDEX_LAYER: &str = "application/vnd.chartbridge.helm.index.v1.yaml";
pub const HELM_INDEX_CONFIG: &str = "application/vnd.chartbridge.helm.index.config.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const A_UPSTREAM: &str = "io.chartbridge.upstream";
const A_REPO: &str = "io.chartbridge.repository";
const A_TAG: &str = "io.chartbridge.tag";
const A_VERSION: &str = "io.chartbridge.version";
const A_KIND: &str = "io.chartbridge.kind";
const A_SYNTH: &str = "io.chartbridge.synthesized";
const A_BASE: &str = "io.chartbridge.bundle.base";

const KIND_OCI: &str = "oci";
const KIND_CHART: &str = "helm-chart";
const KIND_INDEX: &str = "helm-index";

/// Largest `index.json` or manifest read from a bundle.
const MAX_SMALL: u64 = 64 << 20;

/// An OCI content descriptor, as `index.json` and manifests write them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LayoutIndex {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// What `export` writes, and where.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// A `.tar` file, or a directory.
    pub out: PathBuf,
    /// An earlier bundle (tar or directory): what it holds is left out.
    pub since: Option<PathBuf>,
    /// Only these upstreams (all when empty).
    pub upstreams: Vec<String>,
    /// Only these charts (`chart`, or `upstream/chart`); with `images`, a union.
    pub charts: Vec<String>,
    /// Only these image repositories (`repo`, or `upstream/repo`).
    pub images: Vec<String>,
}

#[derive(Debug, Default)]
pub struct ExportReport {
    /// `index.json` entries.
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
    /// Blobs left out because the base bundle holds them.
    pub skipped: usize,
    /// sha256 of `index.json`: the bundle's identity.
    pub id: Digest,
}

impl Default for Digest {
    fn default() -> Digest {
        Digest::of(b"")
    }
}

/// One blob a bundle carries: from the cache, or built for the bundle (index artifacts).
enum Payload {
    Cached(Digest),
    Built(Bytes),
}

struct Plan {
    entries: Vec<Descriptor>,
    /// digest -> (size, where the bytes come from)
    blobs: BTreeMap<Digest, (u64, Payload)>,
}

impl Plan {
    fn add_cached(&mut self, d: &Digest, size: u64) {
        self.blobs
            .entry(d.clone())
            .or_insert((size, Payload::Cached(d.clone())));
    }

    fn add_built(&mut self, bytes: Bytes) -> (Digest, u64) {
        let d = Digest::of(&bytes);
        let n = bytes.len() as u64;
        self.blobs
            .entry(d.clone())
            .or_insert((n, Payload::Built(bytes)));
        (d, n)
    }
}

fn wanted(filter: &[String], upstream: &str, name: &str) -> bool {
    filter.is_empty()
        || filter
            .iter()
            .any(|f| f == name || *f == format!("{upstream}/{name}"))
}

/// Writes the cache (or the part the options select) as an OCI image layout.
pub async fn export(app: &App, opts: &ExportOptions) -> Result<ExportReport> {
    let cache = app.cache();
    let mut plan = Plan {
        entries: Vec::new(),
        blobs: BTreeMap::new(),
    };
    let filtered = !opts.charts.is_empty() || !opts.images.is_empty();
    for src in app.sources() {
        let up = src.config().name.as_str().to_string();
        if !opts.upstreams.is_empty() && !opts.upstreams.contains(&up) {
            continue;
        }
        match &src {
            Source::Oci(o) => {
                let mut by_repo: BTreeMap<String, Vec<(String, Digest)>> = BTreeMap::new();
                for (repo, tag, d) in o.resolved_tags().await? {
                    by_repo.entry(repo).or_default().push((tag, d));
                }
                for (repo, tags) in by_repo {
                    let mut exported: Vec<(String, Digest)> = Vec::new();
                    for (tag, d) in tags {
                        let Some((bytes, mt)) = cache.cached_manifest(&d).await? else {
                            continue;
                        };
                        let is_chart = chart_layers(&bytes).is_some();
                        let selected = !filtered
                            || (is_chart && wanted(&opts.charts, &up, &repo))
                            || (!is_chart && wanted(&opts.images, &up, &repo));
                        if !selected {
                            continue;
                        }
                        if !closure(cache, &d, &bytes, &mut plan).await? {
                            tracing::warn!(upstream = %up, repo, tag, "incomplete in the cache; left out");
                            continue;
                        }
                        let mut a = BTreeMap::new();
                        a.insert(REF_NAME.into(), format!("{up}/{repo}:{tag}"));
                        a.insert(A_UPSTREAM.into(), up.clone());
                        a.insert(A_REPO.into(), repo.clone());
                        a.insert(A_TAG.into(), tag.clone());
                        a.insert(A_KIND.into(), KIND_OCI.into());
                        plan.entries.push(Descriptor {
                            media_type: mt,
                            digest: d.to_string(),
                            size: bytes.len() as u64,
                            annotations: a,
                        });
                        exported.push((tag, d));
                    }
                    // the `latest` this upstream synthesises from what the bundle carries
                    let tags: Vec<String> = exported.iter().map(|(t, _)| t.clone()).collect();
                    if let Some(target) = o.synthesized_latest(&tags) {
                        let (_, d) = exported
                            .iter()
                            .find(|(t, _)| *t == target)
                            .expect("the target is one of the tags");
                        let first = plan
                            .entries
                            .iter()
                            .find(|e| e.digest == d.to_string())
                            .expect("exported above")
                            .clone();
                        let mut a = first.annotations.clone();
                        a.insert(REF_NAME.into(), format!("{up}/{repo}:latest"));
                        a.insert(A_TAG.into(), version::LATEST.into());
                        a.insert(A_SYNTH.into(), "true".into());
                        plan.entries.push(Descriptor {
                            annotations: a,
                            ..first
                        });
                    }
                }
            }
            Source::Helm(h) => {
                let mut keep = BTreeSet::new();
                for (chart, ver, d) in h.built_manifests().await? {
                    if filtered && !wanted(&opts.charts, &up, &chart) {
                        continue;
                    }
                    let Some(bytes) = cache.cached_bytes(&d).await? else {
                        continue;
                    };
                    if !closure(cache, &d, &bytes, &mut plan).await? {
                        tracing::warn!(upstream = %up, chart, version = ver, "incomplete in the cache; left out");
                        continue;
                    }
                    let tag = version::tag_for_version(&ver);
                    let mut a = BTreeMap::new();
                    a.insert(REF_NAME.into(), format!("{up}/{chart}:{tag}"));
                    a.insert(A_UPSTREAM.into(), up.clone());
                    a.insert(A_REPO.into(), chart.clone());
                    a.insert(A_TAG.into(), tag);
                    a.insert(A_VERSION.into(), ver.clone());
                    a.insert(A_KIND.into(), KIND_CHART.into());
                    plan.entries.push(Descriptor {
                        media_type: OCI_MANIFEST.into(),
                        digest: d.to_string(),
                        size: bytes.len() as u64,
                        annotations: a,
                    });
                    keep.insert((chart, ver));
                }
                if keep.is_empty() {
                    continue;
                }
                // the upstream's index, cut down to what the bundle carries
                let index = Bytes::from(h.index_for_export(&keep).await?);
                let config = Bytes::from(
                    serde_json::to_vec(&serde_json::json!({
                        "upstream": up,
                        "url": h.config.url.as_str(),
                    }))
                    .expect("JSON"),
                );
                let (cd, cn) = plan.add_built(config);
                let (ld, ln) = plan.add_built(index);
                let manifest = serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "artifactType": HELM_INDEX_ARTIFACT,
                    "config": {"mediaType": HELM_INDEX_CONFIG, "digest": cd.to_string(), "size": cn},
                    "layers": [{"mediaType": HELM_INDEX_LAYER, "digest": ld.to_string(), "size": ln}],
                });
                let (md, mn) = plan.add_built(Bytes::from(manifest.to_string()));
                let mut a = BTreeMap::new();
                a.insert(REF_NAME.into(), format!("chartbridge/index/{up}"));
                a.insert(A_UPSTREAM.into(), up.clone());
                a.insert(A_KIND.into(), KIND_INDEX.into());
                plan.entries.push(Descriptor {
                    media_type: OCI_MANIFEST.into(),
                    digest: md.to_string(),
                    size: mn,
                    annotations: a,
                });
            }
        }
    }
    plan.entries.sort_by(|a, b| {
        a.annotations
            .get(REF_NAME)
            .cmp(&b.annotations.get(REF_NAME))
    });
    let mut annotations = BTreeMap::new();
    let mut skip = BTreeSet::new();
    if let Some(old) = &opts.since {
        let base = Bundle::open(old)?;
        annotations.insert(A_BASE.into(), base.id.to_string());
        skip = base.blob_names;
    }
    let index = LayoutIndex {
        schema_version: 2,
        media_type: Some(OCI_INDEX.into()),
        manifests: plan.entries.clone(),
        annotations,
    };
    let index_json = serde_json::to_vec(&index).expect("JSON");
    let id = Digest::of(&index_json);
    let mut report = ExportReport {
        manifests: plan.entries.len(),
        id,
        ..Default::default()
    };
    let mut files: Vec<(Digest, u64, Payload)> = Vec::new();
    for (d, (n, p)) in plan.blobs {
        if skip.contains(&d) {
            report.skipped += 1;
        } else {
            report.blobs += 1;
            report.bytes += n;
            files.push((d, n, p));
        }
    }
    write_layout(cache, &opts.out, &index_json, files).await?;
    Ok(report)
}

/// Adds a manifest and everything it references to the plan; false when something an image
/// manifest needs is missing (an index keeps only its complete children: a mirror of some
/// platforms is a valid bundle).
async fn closure(
    cache: &Arc<crate::cache::Cache>,
    d: &Digest,
    bytes: &[u8],
    plan: &mut Plan,
) -> Result<bool> {
    #[derive(Deserialize)]
    struct Any {
        manifests: Option<Vec<Descriptor>>,
    }
    let parsed: Any = serde_json::from_slice(bytes)
        .map_err(|e| Error::internal(format!("a cached manifest is not JSON: {e}")))?;
    if let Some(children) = parsed.manifests {
        let mut any = false;
        for c in children {
            let Ok(cd) = c.digest.parse::<Digest>() else {
                continue;
            };
            let Some(child) = cache.cached_bytes(&cd).await? else {
                continue;
            };
            if Box::pin(closure(cache, &cd, &child, plan)).await? {
                any = true;
            }
        }
        if any {
            plan.add_cached(d, bytes.len() as u64);
        }
        return Ok(any);
    }
    let mut sizes = Vec::new();
    for r in crate::cache::referenced(bytes) {
        match cache.read_blob(&r).await? {
            Some(data) => sizes.push((r, data.len())),
            None => return Ok(false),
        }
    }
    for (r, n) in sizes {
        plan.add_cached(&r, n);
    }
    plan.add_cached(d, bytes.len() as u64);
    Ok(true)
}

/// Writes the layout: a tar (written to a temp file, then renamed) or a directory.
async fn write_layout(
    cache: &Arc<crate::cache::Cache>,
    out: &Path,
    index_json: &[u8],
    files: Vec<(Digest, u64, Payload)>,
) -> Result<()> {
    let total: u64 = files.iter().map(|(_, n, _)| n).sum();
    let progress = bytes_bar(total, "export");
    // Blobs are opened here, a few ahead of the writer (the cache reads are async), and copied
    // on a blocking thread: one open file and one buffer at a time, whatever the cache's size.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(Digest, u64, Source_)>>(4);
    let cache = cache.clone();
    tokio::spawn(async move {
        for (d, n, p) in files {
            let s = match p {
                Payload::Built(b) => Ok(Source_::Bytes(b)),
                Payload::Cached(d) => match cache.read_blob(&d).await {
                    Ok(Some(BlobData::File(f, _))) => Ok(Source_::File(f.into_std().await)),
                    Ok(Some(BlobData::Bytes(b))) => Ok(Source_::Bytes(b)),
                    Ok(None) => Err(Error::internal(format!(
                        "{d} left the cache while it was exported"
                    ))),
                    Err(e) => Err(e),
                },
            };
            if tx.send(s.map(|s| (d, n, s))).await.is_err() {
                return;
            }
        }
    });
    let mut sources = std::iter::from_fn(move || rx.blocking_recv());
    let (out, index_json) = (out.to_path_buf(), index_json.to_vec());
    tokio::task::spawn_blocking(move || -> Result<()> {
        let tar = out.extension().is_some_and(|e| e == "tar");
        if tar {
            let tmp = out.with_extension("tar.part");
            let result = (|| -> std::io::Result<()> {
                let f = std::fs::File::create(&tmp)?;
                let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, f));
                append(
                    &mut b,
                    "oci-layout",
                    br#"{"imageLayoutVersion":"1.0.0"}"#.as_slice(),
                    30,
                )?;
                append(
                    &mut b,
                    "index.json",
                    index_json.as_slice(),
                    index_json.len() as u64,
                )?;
                for item in sources.by_ref() {
                    let (d, n, s) = item.map_err(std::io::Error::other)?;
                    let path = format!("blobs/sha256/{}", d.hex());
                    let reader = Counting::new(s, &progress);
                    append(&mut b, &path, reader, n)?;
                }
                let w = b.into_inner()?;
                let f = w.into_inner().map_err(|e| e.into_error())?;
                f.sync_all()
            })();
            if let Err(e) = result {
                let _ = std::fs::remove_file(&tmp);
                return Err(
                    Error::internal(format!("writing {}: {e}", out.display())).with_source(e)
                );
            }
            std::fs::rename(&tmp, &out)?;
        } else {
            std::fs::create_dir_all(out.join("blobs/sha256"))?;
            for item in sources.by_ref() {
                let (d, _, s) = item?;
                let path = out.join("blobs/sha256").join(d.hex());
                let mut w = std::fs::File::create(&path)?;
                std::io::copy(&mut Counting::new(s, &progress), &mut w)?;
            }
            std::fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            std::fs::write(out.join("index.json"), &index_json)?;
        }
        if let Some(p) = progress {
            p.finish_and_clear();
        }
        Ok(())
    })
    .await
    .map_err(|e| Error::internal(format!("export task failed: {e}")))?
}

enum Source_ {
    File(std::fs::File),
    Bytes(Bytes),
}

/// A reader that moves the progress bar.
struct Counting<'a> {
    inner: Box<dyn Read + 'a>,
    bar: &'a Option<indicatif::ProgressBar>,
}

impl<'a> Counting<'a> {
    fn new(s: Source_, bar: &'a Option<indicatif::ProgressBar>) -> Counting<'a> {
        let inner: Box<dyn Read> = match s {
            Source_::File(f) => Box::new(std::io::BufReader::with_capacity(1 << 20, f)),
            Source_::Bytes(b) => Box::new(std::io::Cursor::new(b)),
        };
        Counting { inner, bar }
    }
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(b) = self.bar {
            b.inc(n as u64);
        }
        Ok(n)
    }
}

/// A tar entry with fixed metadata, so the same cache always gives the same bundle bytes.
fn append<W: Write>(
    b: &mut tar::Builder<W>,
    path: &str,
    data: impl Read,
    size: u64,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    b.append_data(&mut h, path, data)
}

fn bytes_bar(total: u64, what: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} [{{elapsed_precise}}] {{bytes}}/{{total_bytes}} {{bar:30}} {{bytes_per_sec}}"
        ))
        .expect("a valid template"),
    );
    Some(bar)
}

// ---------------------------------------------------------------------------- reading

/// What a bundle's `index.json` says, and which blobs it carries (without reading them).
pub struct Bundle {
    pub id: Digest,
    pub index: Vec<Descriptor>,
    pub base: Option<Digest>,
    pub blob_names: BTreeSet<Digest>,
}

impl Bundle {
    /// Reads a bundle's index and blob names (a tar is scanned, seeking past the contents).
    pub fn open(path: &Path) -> Result<Bundle> {
        let mut index_json = None;
        let mut blob_names = BTreeSet::new();
        if path.is_dir() {
            index_json = Some(std::fs::read(path.join("index.json"))?);
            for e in std::fs::read_dir(path.join("blobs/sha256"))? {
                if let Some(d) = e?
                    .file_name()
                    .to_str()
                    .and_then(|n| Digest::from_hex(n).ok())
                {
                    blob_names.insert(d);
                }
            }
        } else {
            let f = std::fs::File::open(path)?;
            let mut archive = tar::Archive::new(f);
            for entry in archive.entries_with_seek()? {
                let mut entry = entry?;
                let p = entry.path()?.to_string_lossy().into_owned();
                if p == "index.json" {
                    let mut v = Vec::new();
                    (&mut entry).take(MAX_SMALL).read_to_end(&mut v)?;
                    index_json = Some(v);
                } else if let Some(hex) = p.strip_prefix("blobs/sha256/") {
                    if let Ok(d) = Digest::from_hex(hex) {
                        blob_names.insert(d);
                    }
                }
            }
        }
        let index_json =
            index_json.ok_or_else(|| bad(format!("{} has no index.json", path.display())))?;
        let parsed = parse_layout_index(&index_json)?;
        Ok(Bundle {
            id: Digest::of(&index_json),
            base: parsed
                .annotations
                .get(A_BASE)
                .map(|b| b.parse())
                .transpose()?,
            index: parsed.manifests,
            blob_names,
        })
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::new(Kind::BadRequest, msg)
}

fn parse_layout_index(bytes: &[u8]) -> Result<LayoutIndex> {
    let i: LayoutIndex = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("index.json is not an OCI image index: {e}")))?;
    if i.schema_version != 2 {
        return Err(bad("index.json: schemaVersion must be 2"));
    }
    Ok(i)
}

#[derive(Debug, Default)]
pub struct ImportReport {
    pub manifests: usize,
    /// Blobs the cache did not have.
    pub blobs: usize,
    pub bytes: u64,
    /// Blobs the cache had already.
    pub present: usize,
    pub id: Digest,
    /// Entries of upstreams this configuration does not have (their refs were not written).
    pub skipped: Vec<String>,
}

/// Verifies a bundle whole, then loads it into the cache.
pub async fn import(app: &App, path: &Path) -> Result<ImportReport> {
    let cache = app.cache().clone();
    let staging = app
        .config()
        .cache
        .dir
        .join("tmp")
        .join(format!("import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let result = import_staged(app, &cache, path, &staging).await;
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// The blobs of a bundle once staged: digest -> (size, staged path or `None` when the cache
/// holds it already).
type Staged = HashMap<Digest, (u64, Option<PathBuf>)>;

/// What reading a bundle yields: its `oci-layout` and `index.json` bytes and its blobs.
struct BundleRead {
    layout: Option<Vec<u8>>,
    index: Option<Vec<u8>>,
    blobs: Staged,
}

async fn import_staged(
    app: &App,
    cache: &Arc<crate::cache::Cache>,
    path: &Path,
    staging: &Path,
) -> Result<ImportReport> {
    let max_blob = app.config().limits.max_blob_bytes;
    // 1. stage every blob, hashing it; accept only the layout's own files
    let present: BTreeSet<Digest> = cache
        .list_blobs()
        .await?
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    let (p, st) = (path.to_path_buf(), staging.to_path_buf());
    let total = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let BundleRead {
        layout,
        index: index_json,
        blobs: staged,
    } = tokio::task::spawn_blocking(move || {
        let bar = bytes_bar(total, "verify");
        let r = stage(&p, &st, &present, max_blob, &bar);
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        r
    })
    .await
    .map_err(|e| Error::internal(format!("import task failed: {e}")))??;
    let layout: serde_json::Value =
        serde_json::from_slice(&layout.ok_or_else(|| bad("the bundle has no oci-layout file"))?)
            .map_err(|e| bad(format!("oci-layout is not JSON: {e}")))?;
    if layout["imageLayoutVersion"] != "1.0.0" {
        return Err(bad("oci-layout: imageLayoutVersion is not 1.0.0"));
    }
    let index_json = index_json.ok_or_else(|| bad("the bundle has no index.json"))?;
    let index = parse_layout_index(&index_json)?;
    let id = Digest::of(&index_json);

    // 2. every reference present (in the bundle or the cache), the base imported
    let read = |d: &Digest| {
        let staged = staged.get(d).cloned();
        let cache = cache.clone();
        let d = d.clone();
        async move {
            match staged {
                Some((_, Some(p))) => Ok::<_, Error>(Some(Bytes::from(std::fs::read(p)?))),
                _ => cache.cached_bytes(&d).await,
            }
        }
    };
    if let Some(base) = index.annotations.get(A_BASE) {
        let known = cache
            .refs()
            .get(&RefName::new(["bundles", base.as_str()]))
            .await?
            .is_some();
        if !known {
            return Err(bad(format!(
                "this bundle extends {base}, which was not imported here: import that bundle first"
            )));
        }
    }
    let size = |d: &Digest| {
        let staged = staged.get(d).map(|(n, _)| *n);
        let cache = cache.clone();
        let d = d.clone();
        async move {
            match staged {
                Some(n) => Ok::<_, Error>(Some(n)),
                None => cache.blob_size(&d).await,
            }
        }
    };
    let mut manifests: HashMap<Digest, Bytes> = HashMap::new();
    for e in &index.manifests {
        let d: Digest = e
            .digest
            .parse()
            .map_err(|_| bad(format!("index.json names {:?}, not a digest", e.digest)))?;
        check_tree(&d, e.size, &e.media_type, &read, &size, &mut manifests, 0).await?;
    }

    // 3. the bytes fit
    let needed: u64 = staged
        .values()
        .filter(|(_, p)| p.is_some())
        .map(|(n, _)| n)
        .sum();
    let (used, max) = cache.blob_usage();
    let available = max.saturating_sub(used);
    if needed > available {
        return Err(bad(format!(
            "the bundle needs {needed} bytes in the cache and {available} are available \
             (cache.max_disk_bytes {max}, {used} used): refused rather than evict what it brings"
        )));
    }

    // 4. blobs into the store, then refs
    let mut report = ImportReport {
        manifests: index.manifests.len(),
        id: id.clone(),
        ..Default::default()
    };
    for (d, (n, p)) in &staged {
        match p {
            Some(p) => {
                cache.import_blob(d, p).await?;
                report.blobs += 1;
                report.bytes += n;
            }
            None => report.present += 1,
        }
    }
    install_refs(app, &index.manifests, &manifests, &mut report).await?;
    cache
        .refs()
        .put(&RefName::new(["bundles", &id.to_string()]), b"")
        .await?;
    Ok(report)
}

/// Checks a manifest and what it references, recursively: present, of the right size, and
/// (for image manifests) complete. An index may leave out some of its children.
async fn check_tree<F, Fut, S, SFut>(
    d: &Digest,
    size: u64,
    media_type: &str,
    read: &F,
    size_of: &S,
    manifests: &mut HashMap<Digest, Bytes>,
    depth: usize,
) -> Result<()>
where
    F: Fn(&Digest) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Bytes>>>,
    S: Fn(&Digest) -> SFut,
    SFut: std::future::Future<Output = Result<Option<u64>>>,
{
    if depth > 8 {
        return Err(bad(format!("{d}: manifests nested too deep")));
    }
    let bytes = read(d).await?.ok_or_else(|| {
        bad(format!(
            "{d} is named but neither in the bundle nor in the cache"
        ))
    })?;
    if bytes.len() as u64 != size {
        return Err(bad(format!(
            "{d} is {} bytes, its descriptor says {size}",
            bytes.len()
        )));
    }
    #[derive(Deserialize)]
    struct Any {
        manifests: Option<Vec<Descriptor>>,
        config: Option<Descriptor>,
        #[serde(default)]
        layers: Vec<Descriptor>,
        #[serde(default)]
        blobs: Vec<Descriptor>,
    }
    let m: Any = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("{d} ({media_type}) is not a manifest: {e}")))?;
    manifests.insert(d.clone(), bytes.clone());
    if let Some(children) = m.manifests {
        for c in children {
            let cd: Digest = c
                .digest
                .parse()
                .map_err(|_| bad(format!("{d} names {:?}, not a digest", c.digest)))?;
            if size_of(&cd).await?.is_some() {
                Box::pin(check_tree(
                    &cd,
                    c.size,
                    &c.media_type,
                    read,
                    size_of,
                    manifests,
                    depth + 1,
                ))
                .await?;
            }
        }
        return Ok(());
    }
    for r in m.config.into_iter().chain(m.layers).chain(m.blobs) {
        let rd: Digest = r
            .digest
            .parse()
            .map_err(|_| bad(format!("{d} names {:?}, not a digest", r.digest)))?;
        let n = size_of(&rd).await?.ok_or_else(|| {
            bad(format!(
                "{d} names {rd}, which is neither in the bundle nor in the cache"
            ))
        })?;
        if n != r.size {
            return Err(bad(format!("{rd} is {n} bytes, {d} says {}", r.size)));
        }
    }
    Ok(())
}

/// Writes the refs an imported bundle implies: helm indexes first, then charts (which need
/// their index), then tags, tag lists and links.
async fn install_refs(
    app: &App,
    entries: &[Descriptor],
    manifests: &HashMap<Digest, Bytes>,
    report: &mut ImportReport,
) -> Result<()> {
    let cache = app.cache();
    let kind = |e: &Descriptor| e.annotations.get(A_KIND).cloned().unwrap_or_default();
    let mut contents = HashMap::new();
    for e in entries.iter().filter(|e| kind(e) == KIND_INDEX) {
        let up = e.annotations.get(A_UPSTREAM).cloned().unwrap_or_default();
        let Some(Source::Helm(h)) = app.source(&up) else {
            report.skipped.push(format!("index of {up}"));
            continue;
        };
        let d: Digest = e.digest.parse()?;
        let m = &manifests[&d];
        let layer = serde_json::from_slice::<serde_json::Value>(m)
            .ok()
            .and_then(|v| v["layers"][0]["digest"].as_str().map(str::to_string))
            .ok_or_else(|| bad(format!("{d}: an index artifact without its layer")))?;
        let raw = cache
            .cached_bytes(&layer.parse()?)
            .await?
            .ok_or_else(|| bad(format!("{layer} is missing")))?;
        contents.insert(up, h.install_index(raw).await?);
    }
    let mut oci_tags: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for e in entries {
        let a = &e.annotations;
        let (up, repo) = (
            a.get(A_UPSTREAM).cloned().unwrap_or_default(),
            a.get(A_REPO).cloned().unwrap_or_default(),
        );
        let d: Digest = e.digest.parse()?;
        let bytes = manifests[&d].clone();
        match (kind(e).as_str(), app.source(&up)) {
            (KIND_INDEX, _) => {}
            (KIND_CHART, Some(Source::Helm(h))) => {
                let version = a.get(A_VERSION).cloned().unwrap_or_default();
                let Some(content) = contents.get(&up) else {
                    return Err(bad(format!(
                        "{up}/{repo} {version}: the bundle carries no index of {up}"
                    )));
                };
                h.install_chart(
                    content,
                    &repo,
                    &version,
                    &ServedManifest {
                        bytes,
                        digest: d,
                        media_type: e.media_type.clone(),
                    },
                )
                .await?;
            }
            (KIND_OCI, Some(Source::Oci(o))) => {
                let tag = a.get(A_TAG).cloned().unwrap_or_default();
                let synthesized = a.get(A_SYNTH).is_some_and(|v| v == "true");
                install_oci_tree(
                    &o,
                    &repo,
                    (!synthesized).then_some(tag.as_str()),
                    &d,
                    manifests,
                    &e.media_type,
                )
                .await?;
                if !synthesized {
                    oci_tags.entry((up, repo)).or_default().push(tag);
                }
            }
            _ => report
                .skipped
                .push(a.get(REF_NAME).cloned().unwrap_or_else(|| e.digest.clone())),
        }
    }
    for ((up, repo), mut tags) in oci_tags {
        if let Some(Source::Oci(o)) = app.source(&up) {
            tags.sort();
            tags.dedup();
            o.install_tags(&repo, &tags).await;
        }
    }
    Ok(())
}

/// A manifest (and its child manifests) of an OCI upstream: media types, tag, links.
async fn install_oci_tree(
    o: &Arc<crate::resolver::OciUpstream>,
    repo: &str,
    tag: Option<&str>,
    d: &Digest,
    manifests: &HashMap<Digest, Bytes>,
    media_type: &str,
) -> Result<()> {
    let bytes = manifests[d].clone();
    o.install_tag(repo, tag, d, bytes.clone(), media_type)
        .await?;
    #[derive(Deserialize)]
    struct Any {
        manifests: Option<Vec<Descriptor>>,
    }
    if let Ok(Any {
        manifests: Some(children),
    }) = serde_json::from_slice::<Any>(&bytes)
    {
        for c in children {
            let Ok(cd) = c.digest.parse::<Digest>() else {
                continue;
            };
            if manifests.contains_key(&cd) {
                Box::pin(install_oci_tree(
                    o,
                    repo,
                    None,
                    &cd,
                    manifests,
                    &c.media_type,
                ))
                .await?;
            }
        }
    }
    Ok(())
}

/// Reads a bundle (tar or directory), accepting only the layout's own files, hashing every
/// blob and staging those the cache lacks. Returns `oci-layout`, `index.json` and the blobs.
fn stage(
    path: &Path,
    staging: &Path,
    present: &BTreeSet<Digest>,
    max_blob: u64,
    bar: &Option<indicatif::ProgressBar>,
) -> Result<BundleRead> {
    let mut layout = None;
    let mut index = None;
    let mut staged: Staged = HashMap::new();
    let mut take = |name: &str, size: u64, reader: &mut dyn Read| -> Result<()> {
        match name {
            "oci-layout" | "index.json" => {
                if size > MAX_SMALL {
                    return Err(bad(format!("{name} is {size} bytes: too big")));
                }
                let mut v = Vec::new();
                reader.take(MAX_SMALL).read_to_end(&mut v)?;
                let slot = if name == "index.json" {
                    &mut index
                } else {
                    &mut layout
                };
                if slot.replace(v).is_some() {
                    return Err(bad(format!("{name} appears twice")));
                }
                Ok(())
            }
            _ => {
                let hex = name
                    .strip_prefix("blobs/sha256/")
                    .ok_or_else(|| bad(format!("unexpected path {name:?} in the bundle")))?;
                let d = Digest::from_hex(hex)
                    .map_err(|_| bad(format!("unexpected path {name:?} in the bundle")))?;
                if size > max_blob {
                    return Err(bad(format!(
                        "{name} is {size} bytes, over limits.max_blob_bytes"
                    )));
                }
                if staged.contains_key(&d) {
                    return Err(bad(format!("{name} appears twice")));
                }
                let keep = !present.contains(&d);
                let dest = staging.join(hex);
                let mut out = if keep {
                    Some(std::io::BufWriter::with_capacity(
                        1 << 20,
                        std::fs::File::create(&dest)?,
                    ))
                } else {
                    None
                };
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                let mut got = 0u64;
                loop {
                    let n = reader.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    got += n as u64;
                    if got > size {
                        return Err(bad(format!("{name} is longer than its header says")));
                    }
                    hasher.update(&buf[..n]);
                    if let Some(o) = &mut out {
                        o.write_all(&buf[..n])?;
                    }
                    if let Some(b) = bar {
                        b.inc(n as u64);
                    }
                }
                if got != size {
                    return Err(bad(format!("{name} is cut short: {got} of {size} bytes")));
                }
                let actual = Digest::from_hasher(hasher);
                if actual != d {
                    return Err(bad(format!(
                        "{name} does not hash to its name (it hashes to {actual}): the bundle is damaged"
                    )));
                }
                if let Some(mut o) = out {
                    o.flush()?;
                }
                staged.insert(d, (size, keep.then_some(dest)));
                Ok(())
            }
        }
    };
    if path.is_dir() {
        for entry in walk(path)? {
            let (rel, meta) = entry;
            let name = rel.to_string_lossy().replace('\\', "/");
            if meta.is_dir() {
                if !["blobs", "blobs/sha256"].contains(&name.as_str()) {
                    return Err(bad(format!("unexpected directory {name:?} in the bundle")));
                }
                continue;
            }
            if !meta.is_file() {
                return Err(bad(format!("{name:?} is not a regular file")));
            }
            let mut f = std::fs::File::open(path.join(&rel))?;
            take(&name, meta.len(), &mut f)?;
        }
    } else {
        let f = std::fs::File::open(path)
            .map_err(|e| bad(format!("cannot open {}: {e}", path.display())))?;
        ends_like_a_tar(&f, path)?;
        let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, f));
        let entries = archive
            .entries()
            .map_err(|e| bad(format!("{} is not a tar: {e}", path.display())))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(format!("the tar is damaged: {e}")))?;
            let kind = entry.header().entry_type();
            let raw = entry
                .path()
                .map_err(|e| bad(format!("a tar path is not valid: {e}")))?
                .into_owned();
            let name = safe_name(&raw)?;
            match kind {
                tar::EntryType::Directory => {
                    if !["blobs", "blobs/sha256"].contains(&name.as_str()) {
                        return Err(bad(format!("unexpected directory {name:?} in the bundle")));
                    }
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = entry.header().size()?;
                    take(&name, size, &mut entry).map_err(|e| match e.kind() {
                        Kind::Internal => bad(format!("the tar is damaged at {name}: {e}")),
                        _ => e,
                    })?;
                }
                other => {
                    return Err(bad(format!(
                        "{name:?} is a {other:?} entry: a bundle holds regular files only"
                    )))
                }
            }
        }
    }
    Ok(BundleRead {
        layout,
        index,
        blobs: staged,
    })
}

/// A tar ends with two zero blocks; one cut short (a copy that did not finish) does not, even
/// when it happens to end between entries, which the tar reader would take for the end.
fn ends_like_a_tar(f: &std::fs::File, path: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata()?.len();
    let mut tail = [0u8; 1024];
    if len < 1024 || len % 512 != 0 {
        return Err(bad(format!(
            "{} is not a whole tar ({len} bytes): truncated?",
            path.display()
        )));
    }
    f.read_exact_at(&mut tail, len - 1024)?;
    if tail.iter().any(|b| *b != 0) {
        return Err(bad(format!(
            "{} has no end-of-archive marker: the tar is truncated",
            path.display()
        )));
    }
    Ok(())
}

/// A tar path as the layout's relative name, refusing absolute paths and `..`.
fn safe_name(p: &Path) -> Result<String> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(s) => parts.push(
                s.to_str()
                    .ok_or_else(|| bad(format!("{p:?} is not UTF-8")))?
                    .to_string(),
            ),
            std::path::Component::CurDir => {}
            _ => return Err(bad(format!("{p:?} leaves the bundle"))),
        }
    }
    Ok(parts.join("/"))
}

/// Every file and directory under `root` (relative paths, symlinks not followed).
fn walk(root: &Path) -> Result<Vec<(PathBuf, std::fs::Metadata)>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel))? {
            let e = e?;
            let r = rel.join(e.file_name());
            let meta = std::fs::symlink_metadata(e.path())?;
            if meta.is_dir() {
                stack.push(r.clone());
            }
            out.push((r, meta));
        }
    }
    Ok(out)
}
