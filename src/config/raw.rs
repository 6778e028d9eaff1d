//! The configuration file as written: serde shapes with unknown keys refused. `super`
//! validates them into `Config`; nothing else reads these.

use serde::Deserialize;

use crate::airgap::list::WarmList;

/// The file as written. Every field is documented in `config/chartbridge.example.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Plain HTTP address to listen on. Default `127.0.0.1:5000`, unless `listen_tls` is given
    /// (then there is no plain listener unless this names one).
    #[serde(default)]
    pub listen: Option<String>,
    /// A TLS listener.
    pub listen_tls: Option<RawListenTls>,
    /// Optional second listener serving only `/metrics`, `/healthz` and `/readyz`.
    pub metrics_listen: Option<String>,
    /// How long SIGTERM lets in-flight requests finish. Default `10s`.
    pub shutdown_grace: Option<String>,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    /// Upstream that serves `/v2/<repository>` when the first segment names no upstream.
    pub default_upstream: Option<String>,
    /// Never contact any upstream (air gap): serve what is cached. Default false.
    #[serde(default)]
    pub offline: bool,
    /// How mirrored indexes are written: `json` (default: Helm reads it several times faster)
    /// or `yaml`. Per upstream too.
    pub index_format: Option<String>,
    /// A warm list (as in `chartbridge warm`), fetched in the background at start and after
    /// each reload.
    pub warm: Option<WarmList>,
    /// The catalog page for people (`/` in a browser, `/-/...`). Default true.
    pub catalog: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenTls {
    pub addr: String,
    /// PEM certificate chain, leaf first.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// PEM CA certificates; when set, clients must present a certificate chaining to one.
    pub client_ca_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `disk` (default) or `s3`.
    pub kind: String,
    pub bucket: Option<String>,
    /// `http(s)://host:port` of an S3-compatible server; omit for AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Key prefix inside the bucket (`prod/`).
    pub prefix: Option<String>,
    #[serde(default)]
    pub credentials: Option<RawStoreCredentials>,
    /// How long a replica's claim on a cold blob lasts without renewal. Default `30s`.
    pub lease_ttl: Option<String>,
    /// Longest wait for a small bucket request (HEAD, a ref, a small blob) before the bucket
    /// counts as degraded for that request. Default `5s`.
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStoreCredentials {
    pub access_key_id_env: Option<String>,
    pub access_key_id_file: Option<String>,
    pub secret_access_key_env: Option<String>,
    pub secret_access_key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Directory of the disk tier. Default `./chartbridge-data`.
    pub dir: Option<String>,
    /// Disk tier budget. Default `10GiB`.
    pub max_disk_bytes: Option<String>,
    /// Memory tier budget. Default `256MiB`.
    pub max_memory_bytes: Option<String>,
    /// Memory for parsed helm indexes, all upstreams together. Default `512MiB`.
    pub max_index_memory_bytes: Option<String>,
    /// How long a failed upstream fetch is answered from memory. Default `1s`.
    pub negative_ttl: Option<String>,
    /// After a refresh failed and the last good copy was served, how long that copy keeps
    /// being served before the upstream is asked again. Default `10s`.
    pub refresh_backoff: Option<String>,
    /// Re-hash disk blobs before serving them. Default false.
    #[serde(default)]
    pub verify_on_read: bool,
    /// Where blobs and refs live: the disk (default) or a shared S3-compatible bucket.
    pub store: Option<RawStore>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest upstream index.yaml accepted. Default `64MiB`.
    pub max_index_bytes: Option<String>,
    /// Largest chart archive (or `.prov`) accepted. Default `64MiB`.
    pub max_chart_bytes: Option<String>,
    /// Largest blob (image layer) accepted from an OCI upstream. Default `16GiB`.
    pub max_blob_bytes: Option<String>,
    /// Most chart versions (tags) of one OCI repository an index.yaml lists, newest first;
    /// each costs a manifest request. Default 1000.
    pub max_index_tags: Option<usize>,
    /// Most client connections open at once; more are answered 503 and closed. Default 10000
    /// (and never more than the open-file limit allows).
    pub max_connections: Option<usize>,
    /// Longest time a client may take to send a whole request head. Default `10s`.
    pub request_head_timeout: Option<String>,
    /// How long an idle keep-alive connection is kept open. Default `60s`.
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// First path segment of every route to this upstream.
    pub name: String,
    /// `helm`: a legacy HTTP repository with an index.yaml.
    pub kind: String,
    /// The repository URL (where `index.yaml` lives).
    pub url: String,
    /// How long a fetched index stays fresh. Default `5m`.
    pub index_ttl: Option<String>,
    /// `json` or `yaml`: how this upstream's index views are written. Default: the global
    /// `index_format`.
    pub index_format: Option<String>,
    /// oci: how long a tag -> digest resolution and a tag list stay fresh. Default `1m`.
    pub tag_ttl: Option<String>,
    /// oci: `synthesize-if-missing` (default), `always` or `never`.
    pub latest: Option<String>,
    /// Floating tags to synthesise: `major` (`X` -> highest `X.y.z`), `minor` (`X.Y`).
    #[serde(default)]
    pub float: Vec<String>,
    /// oci: credentials for the upstream registry.
    pub credentials: Option<RawCredentials>,
    /// oci: chart repositories listed in the upstream-level index.yaml.
    #[serde(default)]
    pub charts: Vec<String>,
    /// Timeouts talking to this upstream.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Extra attempts for idempotent requests after connection errors and 5xx. Default 2.
    pub retries: Option<u32>,
    /// Never contact this upstream: serve what is cached. Default false.
    #[serde(default)]
    pub offline: bool,
    /// Hosts besides the upstream's own that chart URLs may point at (`*.suffix` allowed).
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Allow chart URLs and redirects to private, loopback and link-local addresses.
    #[serde(default)]
    pub allow_private: bool,
    /// Who may read from this upstream through chartbridge. Default: anyone.
    pub access: Option<RawAccess>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccess {
    /// htpasswd file with bcrypt entries (`htpasswd -B`).
    pub htpasswd_file: Option<String>,
    /// File of static bearer tokens, one a line.
    pub tokens_file: Option<String>,
    /// Whether requests without credentials are still served. Default false.
    #[serde(default)]
    pub anonymous: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// Connecting (TCP and TLS). Default 10s.
    pub connect: Option<String>,
    /// Request sent to response headers. Default 30s.
    pub header: Option<String>,
    /// Longest silence while reading a body. Default 60s.
    pub idle: Option<String>,
}

/// Where a registry's credentials come from. Secrets are read from environment variables or
/// files; an inline `password` is refused unless `allow_inline_password: true` says the user
/// really means it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredentials {
    pub username: Option<String>,
    pub username_env: Option<String>,
    pub username_file: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
    pub password: Option<String>,
    #[serde(default)]
    pub allow_inline_password: bool,
}
