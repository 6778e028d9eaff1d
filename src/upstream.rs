//! The only outbound HTTP: one reqwest client (rustls, follows redirects). Plain GETs with
//! conditional headers and a byte cap, and the pull of a chart from an `oci://` URL (the form
//! Bitnami's index uses) with the anonymous Docker token flow.
//! Knows nothing of caches, routes or views.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use url::Url;

use crate::convert::manifest::{
    HELM_CHART_LAYER, HELM_PROV_LAYER, LEGACY_CHART_LAYER, OCI_MANIFEST,
};
use crate::error::{Error, Result};
use crate::ids::Digest;

/// Validators from a previous fetch, sent back so an unchanged resource costs a 304.
#[derive(Clone, Debug, Default)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

pub enum Fetch {
    NotModified,
    /// 404 or 410: the upstream says it does not have it.
    Missing,
    Body {
        bytes: Bytes,
        validators: Validators,
    },
}

pub struct UpstreamClient {
    http: reqwest::Client,
}

impl UpstreamClient {
    pub fn new() -> Result<UpstreamClient> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("chartbridge/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::limited(10))
            .build()
            .map_err(|e| Error::internal(format!("cannot build HTTP client: {e}")))?;
        Ok(UpstreamClient { http })
    }

    /// GETs `url`, reading at most `max_bytes` of body.
    pub async fn get(
        &self,
        url: &Url,
        accept: &str,
        validators: &Validators,
        max_bytes: u64,
    ) -> Result<Fetch> {
        let mut req = self.http.get(url.clone()).header("Accept", accept);
        if let Some(e) = &validators.etag {
            req = req.header("If-None-Match", e);
        }
        if let Some(lm) = &validators.last_modified {
            req = req.header("If-Modified-Since", lm);
        }
        let resp = req.send().await.map_err(|e| unreachable_err(url, e))?;
        match resp.status().as_u16() {
            304 => Ok(Fetch::NotModified),
            404 | 410 => Ok(Fetch::Missing),
            200 => {
                let header = |name: &str| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let validators = Validators {
                    etag: header("etag"),
                    last_modified: header("last-modified"),
                };
                let bytes = read_capped(resp, url, max_bytes).await?;
                Ok(Fetch::Body { bytes, validators })
            }
            s => Err(status_err(url, s)),
        }
    }

    /// GETs `url` and requires a body: `Missing` becomes an upstream error.
    pub async fn get_body(&self, url: &Url, accept: &str, max_bytes: u64) -> Result<Bytes> {
        match self
            .get(url, accept, &Validators::default(), max_bytes)
            .await?
        {
            Fetch::Body { bytes, .. } => Ok(bytes),
            _ => Err(Error::upstream_invalid(format!(
                "upstream has no {}",
                redact(url)
            ))),
        }
    }

    /// Pulls a Helm chart (and its provenance file, when the artifact has one) from an
    /// `oci://host/repo/chart[:tag|@digest]` reference; `default_tag` is used when the reference
    /// names neither.
    pub async fn pull_oci_chart(
        &self,
        reference: &str,
        default_tag: &str,
        max_bytes: u64,
    ) -> Result<OciChart> {
        let r = OciRef::parse(reference, default_tag)?;
        let manifest_url = r.url(&format!("manifests/{}", r.reference))?;
        let mut token: Option<String> = None;
        let manifest = self
            .oci_get(&manifest_url, OCI_MANIFEST, &r, &mut token, 4 << 20)
            .await?;
        if let Some(d) = r.reference.strip_prefix("sha256:") {
            let want = Digest::from_hex(d)?;
            let got = Digest::of(&manifest);
            if want != got {
                return Err(crate::cache::digest_mismatch(&want, &got));
            }
        }
        #[derive(serde::Deserialize)]
        struct Layer {
            #[serde(rename = "mediaType")]
            media_type: String,
            digest: String,
        }
        #[derive(serde::Deserialize)]
        struct Manifest {
            layers: Vec<Layer>,
        }
        let m: Manifest = serde_json::from_slice(&manifest).map_err(|e| {
            Error::upstream_invalid(format!("{reference}: manifest is not an OCI manifest: {e}"))
        })?;
        let layer = |types: &[&str]| {
            m.layers
                .iter()
                .find(|l| types.contains(&l.media_type.as_str()))
        };
        let chart = layer(&[HELM_CHART_LAYER, LEGACY_CHART_LAYER]).ok_or_else(|| {
            Error::upstream_invalid(format!("{reference} has no Helm chart layer"))
        })?;
        let chart = self
            .oci_blob(&r, &chart.digest, &mut token, max_bytes)
            .await?;
        let prov = match layer(&[HELM_PROV_LAYER]) {
            Some(p) => Some(self.oci_blob(&r, &p.digest, &mut token, max_bytes).await?),
            None => None,
        };
        Ok(OciChart { chart, prov })
    }

    async fn oci_blob(
        &self,
        r: &OciRef,
        digest: &str,
        token: &mut Option<String>,
        max_bytes: u64,
    ) -> Result<Bytes> {
        let want: Digest = digest.parse()?;
        let url = r.url(&format!("blobs/{want}"))?;
        let bytes = self
            .oci_get(&url, "application/octet-stream", r, token, max_bytes)
            .await?;
        let got = Digest::of(&bytes);
        if got != want {
            return Err(crate::cache::digest_mismatch(&want, &got));
        }
        Ok(bytes)
    }

    /// A registry GET that answers one Bearer challenge with an anonymous token.
    async fn oci_get(
        &self,
        url: &Url,
        accept: &str,
        r: &OciRef,
        token: &mut Option<String>,
        max_bytes: u64,
    ) -> Result<Bytes> {
        for _ in 0..2 {
            let mut req = self.http.get(url.clone()).header("Accept", accept);
            if let Some(t) = token.as_deref() {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.map_err(|e| unreachable_err(url, e))?;
            match resp.status().as_u16() {
                200 => return read_capped(resp, url, max_bytes).await,
                401 if token.is_none() => {
                    let challenge = resp
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    *token = Some(self.anonymous_token(&challenge, r).await?);
                }
                s => return Err(status_err(url, s)),
            }
        }
        Err(Error::upstream_unavailable(format!(
            "{} refused the token it issued",
            redact(url)
        )))
    }

    async fn anonymous_token(&self, challenge: &str, r: &OciRef) -> Result<String> {
        let params = parse_bearer_challenge(challenge).ok_or_else(|| {
            Error::upstream_unavailable(format!(
                "registry {} asked for authentication we cannot give ({challenge:?})",
                r.host
            ))
        })?;
        let realm = params
            .iter()
            .find(|(k, _)| k == "realm")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let mut url = Url::parse(&realm)
            .map_err(|_| Error::upstream_invalid(format!("bad token realm {realm:?}")))?;
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in &params {
                if k == "service" || k == "scope" {
                    q.append_pair(k, v);
                }
            }
            if !params.iter().any(|(k, _)| k == "scope") {
                q.append_pair("scope", &format!("repository:{}:pull", r.repo));
            }
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = self.get_body(&url, "application/json", 1 << 20).await?;
        let t: Token = serde_json::from_slice(&body)
            .map_err(|e| Error::upstream_invalid(format!("token endpoint answered badly: {e}")))?;
        t.token
            .or(t.access_token)
            .ok_or_else(|| Error::upstream_invalid("token endpoint gave no token"))
    }
}

pub struct OciChart {
    pub chart: Bytes,
    pub prov: Option<Bytes>,
}

/// A parsed `oci://` chart reference.
struct OciRef {
    scheme: &'static str,
    host: String,
    repo: String,
    reference: String,
}

impl OciRef {
    fn parse(s: &str, default_tag: &str) -> Result<OciRef> {
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
                    crate::convert::version::tag_for_version(default_tag),
                ),
            }
        };
        if host.is_empty() || repo.is_empty() || reference.is_empty() {
            return Err(bad());
        }
        // Registries on loopback speak plain HTTP, as Helm assumes for them.
        let hostname = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
        let scheme =
            if hostname == "localhost" || hostname.starts_with("127.") || hostname == "[::1]" {
                "http"
            } else {
                "https"
            };
        Ok(OciRef {
            scheme,
            host: host.to_string(),
            repo,
            reference,
        })
    }

    fn url(&self, tail: &str) -> Result<Url> {
        Url::parse(&format!(
            "{}://{}/v2/{}/{}",
            self.scheme, self.host, self.repo, tail
        ))
        .map_err(|e| Error::upstream_invalid(format!("bad registry URL: {e}")))
    }
}

/// `Bearer realm="..",service="..",scope=".."` -> key/value pairs.
fn parse_bearer_challenge(h: &str) -> Option<Vec<(String, String)>> {
    let rest = h
        .trim()
        .strip_prefix("Bearer ")
        .or_else(|| h.trim().strip_prefix("bearer "))?;
    let mut out = Vec::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, v) = s.split_once('=')?;
        let k = k.trim().trim_start_matches(',').trim().to_string();
        let v = v.trim_start();
        let (val, tail) = if let Some(q) = v.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = v.find(',').unwrap_or(v.len());
            (v[..end].to_string(), &v[end..])
        };
        out.push((k, val));
        s = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(out)
}

async fn read_capped(resp: reqwest::Response, url: &Url, max: u64) -> Result<Bytes> {
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(too_big(url, max));
    }
    let mut buf = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Error::upstream_unavailable(format!("{}: body failed mid-way: {e}", redact(url)))
        })?;
        if (buf.len() + chunk.len()) as u64 > max {
            return Err(too_big(url, max));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn too_big(url: &Url, max: u64) -> Error {
    Error::upstream_invalid(format!(
        "{} is larger than the {max} byte limit",
        redact(url)
    ))
}

fn unreachable_err(url: &Url, e: reqwest::Error) -> Error {
    Error::upstream_unavailable(format!("{} unreachable: {e}", redact(url)))
}

fn status_err(url: &Url, status: u16) -> Error {
    Error::upstream_unavailable(format!("{} answered HTTP {status}", redact(url)))
}

/// A URL fit for logs and error bodies: no userinfo, no query (which may carry tokens).
pub fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_references() {
        let r =
            OciRef::parse("oci://registry-1.docker.io/bitnamicharts/redis:20.1.0", "x").unwrap();
        assert_eq!(
            (
                r.scheme,
                r.host.as_str(),
                r.repo.as_str(),
                r.reference.as_str()
            ),
            (
                "https",
                "registry-1.docker.io",
                "bitnamicharts/redis",
                "20.1.0"
            )
        );
        let r = OciRef::parse("oci://127.0.0.1:5000/charts/demo", "1.0.0+b").unwrap();
        assert_eq!(
            (r.scheme, r.repo.as_str(), r.reference.as_str()),
            ("http", "charts/demo", "1.0.0_b")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = OciRef::parse(&format!("oci://h:1/a/b@{d}"), "x").unwrap();
        assert_eq!((r.repo.as_str(), r.reference.as_str()), ("a/b", d.as_str()));
        assert!(OciRef::parse("oci://nohost", "x").is_err());
        assert!(OciRef::parse("https://x/y", "x").is_err());
    }

    #[test]
    fn bearer_challenges() {
        let p = parse_bearer_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(
            p[0],
            ("realm".into(), "https://auth.docker.io/token".into())
        );
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull".into()));
        assert!(parse_bearer_challenge("Basic realm=x").is_none());
    }

    #[test]
    fn redaction_drops_credentials_and_query() {
        let u = Url::parse("https://user:pw@h.io/x?token=abc").unwrap();
        assert_eq!(redact(&u), "https://h.io/x");
    }
}
