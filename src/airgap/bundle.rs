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

mod export;
mod import;

pub use export::export;
pub use import::{import, ImportReport};
