//! Configuration in two stages: `RawConfig` is the YAML as written (unknown keys refused, with
//! their name and line), `Config` is the validated, typed form the rest of the program uses.
//! Owns parsing of sizes (`10GiB`) and durations (`5m`). Builds `policy` values and loads the
//! `access` files; names `ids` and `convert`'s `IndexFormat`; never calls `upstream`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::airgap::list::WarmList;
use crate::convert::index::IndexFormat;
use crate::ids::UpstreamName;
pub use crate::policy::Credentials;
use crate::policy::Policy;

mod raw;
pub use raw::*;

/// The configuration used when no file is given: see `config/chartbridge.yaml`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/chartbridge.yaml");

/// What kind of upstream this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamKind {
    /// A legacy Helm HTTP repository (`index.yaml` + archives).
    Helm,
    /// An OCI registry (charts and images), mirrored byte for byte.
    Oci,
}

/// When `latest` is synthesised for an OCI upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatestPolicy {
    /// Pass the upstream's `latest` through; synthesise only when it has none.
    SynthesizeIfMissing,
    /// Always the highest stable semver tag, even over an upstream `latest`.
    Always,
    /// Never synthesise.
    Never,
}

#[derive(Clone, Debug)]
pub struct Upstream {
    pub name: UpstreamName,
    pub kind: UpstreamKind,
    /// The repository URL, always with a trailing `/` so relative chart URLs resolve as Helm
    /// resolves them.
    pub url: Url,
    pub index_ttl: Duration,
    /// How the mirror and index views of this upstream are written.
    pub index_format: IndexFormat,
    pub tag_ttl: Duration,
    pub latest: LatestPolicy,
    /// Floating tags (`float: [major, minor]`), both kinds of upstream.
    pub float: crate::convert::version::Float,
    pub credentials: Option<Credentials>,
    pub charts: Vec<crate::ids::RepoName>,
    /// Timeouts, retries and offline mode.
    pub policy: Policy,
    /// Downstream access control; `None` means anonymous read.
    pub access: Option<std::sync::Arc<crate::access::Access>>,
}

impl Upstream {
    /// `host[:port]` as containerd's `ns` parameter names this upstream's registry.
    pub fn host_port(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        match self.url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        }
    }

    /// Whether this upstream is Docker Hub (names get `library/` where Docker adds it).
    pub fn is_docker_hub(&self) -> bool {
        matches!(
            self.url.host_str(),
            Some("registry-1.docker.io" | "docker.io" | "index.docker.io")
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct CacheConfig {
    pub verify_on_read: bool,
    /// The disk tier (with `store`, the local tier in front of the bucket).
    pub dir: PathBuf,
    pub store: Option<StoreConfig>,
    pub max_disk_bytes: u64,
    pub max_memory_bytes: u64,
    pub max_index_memory_bytes: u64,
    pub negative_ttl: Duration,
    pub refresh_backoff: Duration,
}

/// A shared S3-compatible bucket behind the disk tier.
#[derive(Clone, PartialEq)]
pub struct StoreConfig {
    pub bucket: String,
    pub endpoint: Option<String>,
    /// `None`: `AWS_REGION` / `AWS_DEFAULT_REGION` from the environment, else `us-east-1`.
    pub region: Option<String>,
    /// Empty, or ending in `/`.
    pub prefix: String,
    /// Access key id and secret; `None`: the AWS environment and IRSA chain.
    pub keys: Option<(String, String)>,
    pub lease_ttl: Duration,
    pub timeout: Duration,
}

/// Never prints the secret.
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("keys", &self.keys.as_ref().map(|(id, _)| (id, "<secret>")))
            .finish()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_index_bytes: u64,
    pub max_chart_bytes: u64,
    pub max_blob_bytes: u64,
    pub max_index_tags: usize,
    pub max_connections: usize,
    pub request_head_timeout: Duration,
    pub idle_timeout: Duration,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub shutdown_grace: Duration,
    /// The plain HTTP listener, if any (there is always this or `listen_tls`).
    pub listen: Option<SocketAddr>,
    pub listen_tls: Option<ListenTls>,
    pub metrics_listen: Option<SocketAddr>,
    pub cache: CacheConfig,
    pub limits: Limits,
    pub upstreams: Vec<Upstream>,
    pub default_upstream: Option<UpstreamName>,
    pub warm: Option<WarmList>,
    /// The catalog page is served (`catalog: false` turns it off).
    pub catalog: bool,
}

/// The TLS listener: where, and the certificate material read and checked from its files.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenTls {
    pub addr: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    pub material: std::sync::Arc<crate::tls::Material>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

impl Config {
    /// Parses and validates a YAML configuration. `origin` names it in error messages.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            serde_saphyr::from_str(text).map_err(|e| err(format!("{origin}: {e}")))?;
        Config::validate(raw).map_err(|e| err(format!("{origin}: {e}")))
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Config {
        Config::from_yaml(EMBEDDED_DEFAULT, "embedded default")
            .expect("the embedded default configuration is valid (tested)")
    }

    fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let listen_tls = raw.listen_tls.as_ref().map(validate_tls).transpose()?;
        let listen = match (raw.listen.as_deref(), &listen_tls) {
            (Some(l), _) => Some(l),
            (None, None) => Some("127.0.0.1:5000"),
            (None, Some(_)) => None,
        };
        let listen: Option<SocketAddr> = listen
            .map(|l| {
                l.parse().map_err(|_| {
                    err(format!(
                        "listen: {l:?} is not an address like 127.0.0.1:5000"
                    ))
                })
            })
            .transpose()?;
        if let (Some(l), Some(t)) = (listen, &listen_tls) {
            if l == t.addr {
                return Err(err(format!("listen and listen_tls.addr are both {l}")));
            }
        }
        let metrics_listen = match raw.metrics_listen.as_deref() {
            Some(m) => Some(m.parse().map_err(|_| {
                err(format!(
                    "metrics_listen: {m:?} is not an address like 127.0.0.1:9090"
                ))
            })?),
            None => None,
        };
        let shutdown_grace = duration(&raw.shutdown_grace, "shutdown_grace", 10)?;
        let index_format = index_format(&raw.index_format, "index_format", IndexFormat::Json)?;
        let mut upstreams: Vec<Upstream> = Vec::new();
        for (i, u) in raw.upstreams.into_iter().enumerate() {
            let up = validate_upstream(u, &format!("upstreams[{i}]"), index_format, raw.offline)?;
            if upstreams.iter().any(|x| x.name == up.name) {
                return Err(err(format!(
                    "upstreams[{i}].name: {:?} is configured twice",
                    up.name
                )));
            }
            upstreams.push(up);
        }
        let default_upstream = match raw.default_upstream {
            Some(d) => {
                let n: UpstreamName = d
                    .parse()
                    .map_err(|e: crate::error::Error| err(format!("default_upstream: {e}")))?;
                if !upstreams.iter().any(|u| u.name == n) {
                    return Err(err(format!("default_upstream: no upstream named {d:?}")));
                }
                Some(n)
            }
            None => None,
        };
        if let Some(w) = &raw.warm {
            w.check().map_err(|e| err(format!("warm.{e}")))?;
            for u in &w.upstreams {
                if !upstreams.iter().any(|x| x.name.as_str() == u.name) {
                    return Err(err(format!("warm: no upstream named {:?}", u.name)));
                }
            }
        }
        Ok(Config {
            warm: raw.warm,
            catalog: raw.catalog.unwrap_or(true),
            shutdown_grace,
            listen,
            listen_tls,
            metrics_listen,
            cache: validate_cache(&raw.cache)?,
            limits: validate_limits(&raw.limits)?,
            upstreams,
            default_upstream,
        })
    }

    pub fn upstream(&self, name: &UpstreamName) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| &u.name == name)
    }
}

fn size(v: &Option<String>, key: &str, default: u64) -> Result<u64, ConfigError> {
    match v {
        Some(s) => parse_size(s).map_err(|e| err(format!("{key}: {e}"))),
        None => Ok(default),
    }
}

fn duration(v: &Option<String>, key: &str, default_secs: u64) -> Result<Duration, ConfigError> {
    match v {
        Some(s) => parse_duration(s).map_err(|e| err(format!("{key}: {e}"))),
        None => Ok(Duration::from_secs(default_secs)),
    }
}

fn index_format(
    v: &Option<String>,
    key: &str,
    default: IndexFormat,
) -> Result<IndexFormat, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => {
            IndexFormat::parse(s).ok_or_else(|| err(format!("{key}: {s:?} is not json or yaml")))
        }
    }
}

fn validate_tls(t: &RawListenTls) -> Result<ListenTls, ConfigError> {
    let addr: SocketAddr = t.addr.parse().map_err(|_| {
        err(format!(
            "listen_tls.addr: {:?} is not an address like 0.0.0.0:5443",
            t.addr
        ))
    })?;
    let (cert_file, key_file) = (PathBuf::from(&t.cert_file), PathBuf::from(&t.key_file));
    let client_ca_file = t.client_ca_file.as_ref().map(PathBuf::from);
    let material = crate::tls::load(&cert_file, &key_file, client_ca_file.as_deref())
        .map_err(|e| err(format!("listen_tls.{e}")))?;
    Ok(ListenTls {
        addr,
        cert_file,
        key_file,
        client_ca_file,
        material: std::sync::Arc::new(material),
    })
}

fn validate_store(s: &RawStore) -> Result<Option<StoreConfig>, ConfigError> {
    match s.kind.as_str() {
        "disk" => return Ok(None),
        "s3" => {}
        k => return Err(err(format!("cache.store.kind: {k:?} is not disk or s3"))),
    }
    let bucket = s
        .bucket
        .clone()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| err("cache.store.bucket: name the bucket"))?;
    if let Some(e) = &s.endpoint {
        let u = url::Url::parse(e)
            .map_err(|_| err(format!("cache.store.endpoint: {e:?} is not a URL")))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(err("cache.store.endpoint: use http:// or https://"));
        }
    }
    let prefix = match s.prefix.as_deref().map(|p| p.trim_matches('/')) {
        None | Some("") => String::new(),
        Some(p) => format!("{p}/"),
    };
    let keys = match &s.credentials {
        None => None,
        Some(c) => {
            fn one(
                env: &Option<String>,
                file: &Option<String>,
                what: &str,
            ) -> Result<String, ConfigError> {
                match (env, file) {
                    (Some(var), None) => std::env::var(var).map_err(|_| {
                        err(format!(
                            "cache.store.credentials.{what}_env: environment variable {var} is not set"
                        ))
                    }),
                    (None, Some(path)) => std::fs::read_to_string(path)
                        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                        .map_err(|e| {
                            err(format!(
                                "cache.store.credentials.{what}_file: cannot read {path}: {e}"
                            ))
                        }),
                    _ => Err(err(format!(
                        "cache.store.credentials: give one of {what}_env or {what}_file"
                    ))),
                }
            }
            Some((
                one(&c.access_key_id_env, &c.access_key_id_file, "access_key_id")?,
                one(
                    &c.secret_access_key_env,
                    &c.secret_access_key_file,
                    "secret_access_key",
                )?,
            ))
        }
    };
    Ok(Some(StoreConfig {
        bucket,
        endpoint: s.endpoint.clone(),
        region: s.region.clone(),
        prefix,
        keys,
        lease_ttl: duration(&s.lease_ttl, "cache.store.lease_ttl", 30)?,
        timeout: duration(&s.timeout, "cache.store.timeout", 5)?,
    }))
}

fn validate_cache(c: &RawCache) -> Result<CacheConfig, ConfigError> {
    Ok(CacheConfig {
        store: match &c.store {
            Some(s) => validate_store(s)?,
            None => None,
        },
        verify_on_read: c.verify_on_read,
        dir: PathBuf::from(c.dir.as_deref().unwrap_or("./chartbridge-data")),
        max_disk_bytes: size(&c.max_disk_bytes, "cache.max_disk_bytes", 10 << 30)?,
        max_memory_bytes: size(&c.max_memory_bytes, "cache.max_memory_bytes", 256 << 20)?,
        max_index_memory_bytes: size(
            &c.max_index_memory_bytes,
            "cache.max_index_memory_bytes",
            512 << 20,
        )?,
        negative_ttl: duration(&c.negative_ttl, "cache.negative_ttl", 1)?,
        refresh_backoff: duration(&c.refresh_backoff, "cache.refresh_backoff", 10)?,
    })
}

fn validate_limits(l: &RawLimits) -> Result<Limits, ConfigError> {
    Ok(Limits {
        max_index_bytes: size(&l.max_index_bytes, "limits.max_index_bytes", 64 << 20)?,
        max_chart_bytes: size(&l.max_chart_bytes, "limits.max_chart_bytes", 64 << 20)?,
        max_blob_bytes: size(&l.max_blob_bytes, "limits.max_blob_bytes", 16 << 30)?,
        max_index_tags: l.max_index_tags.unwrap_or(1000),
        max_connections: l.max_connections.unwrap_or(10_000).max(1),
        request_head_timeout: duration(&l.request_head_timeout, "limits.request_head_timeout", 10)?,
        idle_timeout: duration(&l.idle_timeout, "limits.idle_timeout", 60)?,
    })
}

/// One `upstreams[i]` entry (`at` names it in errors); `offline` is the global setting.
fn validate_upstream(
    u: RawUpstream,
    at: &str,
    default_format: IndexFormat,
    offline: bool,
) -> Result<Upstream, ConfigError> {
    let name: UpstreamName = u
        .name
        .parse()
        .map_err(|e: crate::error::Error| err(format!("{at}.name: {e}")))?;
    if name.as_str() == "v2" || name.as_str() == "metrics" || name.as_str().starts_with('_') {
        return Err(err(format!("{at}.name: {name:?} is reserved")));
    }
    let kind = match u.kind.as_str() {
        "helm" => UpstreamKind::Helm,
        "oci" => UpstreamKind::Oci,
        other => {
            return Err(err(format!(
                "{at}.kind: unknown kind {other:?} (supported: helm, oci)"
            )))
        }
    };
    let mut url =
        Url::parse(&u.url).map_err(|e| err(format!("{at}.url: {:?} is not a URL: {e}", u.url)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(err(format!("{at}.url: {:?} must be an http(s) URL", u.url)));
    }
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    let latest = match u.latest.as_deref() {
        None | Some("synthesize-if-missing") => LatestPolicy::SynthesizeIfMissing,
        Some("always") => LatestPolicy::Always,
        Some("never") => LatestPolicy::Never,
        Some(other) => {
            return Err(err(format!(
                "{at}.latest: {other:?} is not synthesize-if-missing, always or never"
            )))
        }
    };
    let mut float = crate::convert::version::Float::default();
    for f in &u.float {
        match f.as_str() {
            "major" => float.major = true,
            "minor" => float.minor = true,
            other => return Err(err(format!("{at}.float: {other:?} is not major or minor"))),
        }
    }
    let policy = validate_policy(&u, at, offline)?;
    let credentials = match u.credentials {
        Some(c) => Some(resolve_credentials(c).map_err(|e| err(format!("{at}.credentials: {e}")))?),
        None => None,
    };
    let charts = u
        .charts
        .iter()
        .map(|c| {
            c.parse()
                .map_err(|e: crate::error::Error| err(format!("{at}.charts: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if kind == UpstreamKind::Helm
        && (credentials.is_some() || !charts.is_empty() || u.latest.is_some())
    {
        return Err(err(format!(
            "{at}: credentials, charts and latest apply to kind oci only"
        )));
    }
    Ok(Upstream {
        index_format: index_format(
            &u.index_format,
            &format!("{at}.index_format"),
            default_format,
        )?,
        index_ttl: duration(&u.index_ttl, &format!("{at}.index_ttl"), 300)?,
        tag_ttl: duration(&u.tag_ttl, &format!("{at}.tag_ttl"), 60)?,
        policy,
        access: validate_access(&u.access, at)?,
        name,
        kind,
        url,
        latest,
        float,
        credentials,
        charts,
    })
}

/// How an upstream is reached: timeouts, retries, offline, the SSRF allowances.
fn validate_policy(u: &RawUpstream, at: &str, offline: bool) -> Result<Policy, ConfigError> {
    for h in &u.allow_hosts {
        let port_ok = match h.rsplit_once(':') {
            Some((host, p)) if !host.contains(':') || host.ends_with(']') => {
                p.parse::<u16>().is_ok()
            }
            _ => true,
        };
        if h.trim().is_empty() || h.contains('/') || !port_ok {
            return Err(err(format!(
                "{at}.allow_hosts: {h:?} is not a host, *.suffix or host:port"
            )));
        }
    }
    let t = &u.timeouts;
    Ok(Policy {
        connect: duration(&t.connect, &format!("{at}.timeouts.connect"), 10)?,
        header: duration(&t.header, &format!("{at}.timeouts.header"), 30)?,
        idle: duration(&t.idle, &format!("{at}.timeouts.idle"), 60)?,
        retries: u.retries.unwrap_or(2).min(10),
        offline: u.offline || offline,
        allow_hosts: u.allow_hosts.clone(),
        allow_private: u.allow_private,
    })
}

fn validate_access(
    a: &Option<RawAccess>,
    at: &str,
) -> Result<Option<std::sync::Arc<crate::access::Access>>, ConfigError> {
    let Some(a) = a else {
        return Ok(None);
    };
    if a.htpasswd_file.is_none() && a.tokens_file.is_none() {
        return Err(err(format!(
            "{at}.access: give htpasswd_file and/or tokens_file"
        )));
    }
    let loaded = crate::access::Access::load(
        a.htpasswd_file.as_deref().map(std::path::Path::new),
        a.tokens_file.as_deref().map(std::path::Path::new),
        a.anonymous,
    )
    .map_err(|e| err(format!("{at}.access: {e}")))?;
    Ok(Some(std::sync::Arc::new(loaded)))
}

pub fn resolve_credentials(c: RawCredentials) -> Result<Credentials, String> {
    fn one(
        inline: Option<String>,
        env: Option<String>,
        file: Option<String>,
        what: &str,
    ) -> Result<String, String> {
        match (inline, env, file) {
            (Some(v), None, None) => Ok(v),
            (None, Some(var), None) => std::env::var(&var)
                .map_err(|_| format!("{what}_env: environment variable {var} is not set")),
            (None, None, Some(path)) => std::fs::read_to_string(&path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| format!("{what}_file: cannot read {path}: {e}")),
            (None, None, None) => Err(format!("no {what} given")),
            _ => Err(format!("give exactly one source for the {what}")),
        }
    }
    if c.password.is_some() && !c.allow_inline_password {
        return Err(
            "an inline password is refused: use password_env or password_file \
                    (or set allow_inline_password: true)"
                .into(),
        );
    }
    Ok(Credentials {
        username: one(c.username, c.username_env, c.username_file, "username")?,
        password: one(c.password, c.password_env, c.password_file, "password")?,
    })
}

/// Parses `10GiB`, `256MiB`, `64KiB`, `1GB`, `512` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 10GiB or 256MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses `300ms`, `30s`, `5m`, `1h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s or 5m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => return Err(format!("{s:?}: unknown unit (use ms, s, m, h, d)")),
    };
    Ok(d)
}

#[cfg(test)]
mod tests;
