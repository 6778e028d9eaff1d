//! Per upstream, what to serve and where it comes from: `helm` for legacy index.yaml
//! repositories (index freshness, tag -> version, verified archives, synthesised manifests) and
//! `oci` for registries (byte-exact pass-through, tag resolution with a TTL, streamed blobs,
//! `latest`). Calls `convert`, `cache` and `upstream`; knows nothing of HTTP statuses or routes.

pub mod helm;
pub mod oci;

use bytes::Bytes;

use crate::ids::Digest;

pub use helm::HelmUpstream;
pub use oci::OciUpstream;

/// The cache every upstream shares: blob tiers, refs, per-repository links, and the budget
/// of parsed helm indexes. Built once by the app and kept across reloads.
#[derive(Clone)]
pub struct Stores {
    pub blobs: std::sync::Arc<crate::cache::BlobCache>,
    pub refs: std::sync::Arc<dyn crate::cache::RefStore>,
    pub links: std::sync::Arc<crate::cache::Links>,
    pub indexes: std::sync::Arc<helm::IndexMemory>,
    /// The cache directory (helm upstreams persist their last good index under `indexes/`).
    pub dir: std::path::PathBuf,
}

/// A manifest as served: bytes, digest, media type.
#[derive(Clone, Debug)]
pub struct ServedManifest {
    pub bytes: Bytes,
    pub digest: Digest,
    pub media_type: String,
}

/// A configured upstream, whichever kind it is.
#[derive(Clone)]
pub enum Source {
    Helm(std::sync::Arc<HelmUpstream>),
    Oci(std::sync::Arc<OciUpstream>),
}

impl Source {
    /// The upstream's configuration.
    pub fn config(&self) -> &crate::config::Upstream {
        match self {
            Source::Helm(h) => &h.config,
            Source::Oci(o) => &o.config,
        }
    }
}
