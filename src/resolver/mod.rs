//! Per upstream, what to serve and where it comes from: `helm` for legacy index.yaml
//! repositories (the index, tag -> version, verified archives, synthesised manifests) and `oci`
//! for registries (byte-exact pass-through, tag resolution, streamed blobs, `latest`). A
//! resolver says how to fetch and verify one thing and how long it is fresh; the read-through
//! `cache::Cache` owns memory, refs, single-flight, negative answers and stale copies.
//! Calls `convert`, `cache` and `upstream`; knows nothing of HTTP statuses or routes.

pub mod helm;
pub mod oci;

use bytes::Bytes;

use crate::ids::Digest;

pub use helm::HelmUpstream;
pub use oci::OciUpstream;

/// What every upstream shares: the read-through cache (kept across reloads), the cache
/// directory (where earlier releases kept indexes, read once on upgrade), and the memo of warm
/// manifest-by-tag answers of registry upstreams (one budget for all of them).
#[derive(Clone)]
pub struct Stores {
    pub cache: std::sync::Arc<crate::cache::Cache>,
    pub dir: std::path::PathBuf,
    pub tag_memo: std::sync::Arc<oci::TagMemo>,
}

impl Stores {
    pub fn new(cache: std::sync::Arc<crate::cache::Cache>, dir: std::path::PathBuf) -> Stores {
        Stores {
            cache,
            dir,
            tag_memo: Default::default(),
        }
    }
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
