//! A registry upstream: requests under `/v2/<repo>/...` with the Docker auth dance. A 401 with a
//! `Bearer` challenge fetches a token from the realm (with Basic credentials when configured,
//! anonymously otherwise) and caches it per scope until `expires_in`; a `Basic` challenge is
//! answered with the credentials. Credentials are never logged and never leave for another host:
//! the HTTP client drops `Authorization` on cross-host redirects (registries send blob GETs to
//! CDNs). A 429 becomes `UpstreamRateLimited` with its `Retry-After`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use url::Url;

use super::{read_capped, redact, status_err};
use crate::error::{Error, Kind, Result};
use crate::ids::Digest;
use crate::policy::Credentials;

/// Every manifest type we pass through, so the registry never converts what it stores.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.artifact.manifest.v1+json";

pub struct Registry {
    client: std::sync::Arc<super::UpstreamClient>,
    /// `scheme://host[:port]`
    base: Url,
    credentials: Option<Credentials>,
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    /// Set once the registry asked for Basic: send it up front from then on.
    basic: AtomicBool,
    label: String,
}

/// A registry answer that is not an auth challenge, 429 or 5xx.
pub struct RegistryResponse {
    pub status: u16,
    resp: reqwest::Response,
    url: Url,
}

impl RegistryResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.resp.headers().get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }

    pub async fn bytes(self, max: u64) -> Result<Bytes> {
        read_capped(self.resp, &self.url, max).await
    }

    pub fn into_stream(self) -> impl futures::Stream<Item = reqwest::Result<Bytes>> {
        self.resp.bytes_stream()
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Requires a 200: a 404 becomes `unknown()`, anything else an upstream error.
    pub fn require_ok(&self, unknown: impl FnOnce() -> Error) -> Result<()> {
        match self.status {
            200 => Ok(()),
            404 => Err(unknown()),
            s => Err(Error::upstream_invalid(format!(
                "{} answered HTTP {s}",
                redact(&self.url)
            ))),
        }
    }
}

impl Registry {
    /// `label` names the upstream in metrics.
    pub fn new(
        client: std::sync::Arc<super::UpstreamClient>,
        base: &Url,
        credentials: Option<Credentials>,
        label: &str,
    ) -> Registry {
        let mut base = base.clone();
        base.set_path("/");
        base.set_query(None);
        Registry {
            client,
            base,
            label: label.to_string(),
            credentials,
            tokens: Mutex::new(HashMap::new()),
            basic: AtomicBool::new(false),
        }
    }

    /// A registry for an `oci://host` reference: plain HTTP on loopback, as Helm assumes.
    pub fn for_host(client: std::sync::Arc<super::UpstreamClient>, host: &str) -> Result<Registry> {
        let hostname = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
        let loopback =
            hostname == "localhost" || hostname.starts_with("127.") || hostname == "[::1]";
        let scheme = if loopback { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{host}/"))
            .map_err(|e| Error::upstream_invalid(format!("bad registry host {host:?}: {e}")))?;
        Ok(Registry::new(client, &base, None, host))
    }

    pub fn url(&self, repo: &str, tail: &str) -> Result<Url> {
        self.base
            .join(&format!("v2/{repo}/{tail}"))
            .map_err(|e| Error::internal(format!("bad registry URL: {e}")))
    }

    /// Sends a request, answering auth challenges. Returns 2xx, 3xx-final and 4xx answers
    /// (callers decide what a 404 means); 401 after auth, 429 and 5xx are errors.
    pub async fn request(
        &self,
        method: reqwest::Method,
        repo: &str,
        tail: &str,
        accept: &str,
    ) -> Result<RegistryResponse> {
        let url = self.url(repo, tail)?;
        self.request_at(method, url, &format!("repository:{repo}:pull"), accept)
            .await
    }

    /// A GET of a path outside any repository (`v2/_catalog`), with its token scope.
    pub async fn request_path(
        &self,
        path: &str,
        scope: &str,
        accept: &str,
    ) -> Result<RegistryResponse> {
        let url = self
            .base
            .join(path)
            .map_err(|e| Error::internal(format!("bad registry URL: {e}")))?;
        self.request_at(reqwest::Method::GET, url, scope, accept)
            .await
    }

    async fn request_at(
        &self,
        method: reqwest::Method,
        url: Url,
        scope: &str,
        accept: &str,
    ) -> Result<RegistryResponse> {
        let scope = scope.to_string();
        let mut challenged = false;
        loop {
            let mut req = self
                .client
                .http()
                .request(method.clone(), url.clone())
                .header("Accept", accept);
            if let Some(t) = self.cached_token(&scope) {
                req = req.bearer_auth(t);
            } else if let (true, Some(c)) = (self.basic.load(Ordering::Relaxed), &self.credentials)
            {
                req = req.basic_auth(&c.username, Some(&c.password));
            }
            let resp = self.client.send(&self.label, req, &url).await?;
            let status = resp.status().as_u16();
            match status {
                401 if !challenged => {
                    challenged = true;
                    let challenge = resp
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    self.answer_challenge(&challenge, &scope).await?;
                }
                401 | 403 => {
                    return Err(Error::upstream_unavailable(format!(
                        "{} refused access (HTTP {status}){}",
                        redact(&url),
                        if self.credentials.is_some() {
                            ""
                        } else {
                            "; no credentials are configured"
                        }
                    )))
                }
                429 => {
                    let retry = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse().ok());
                    return Err(Error::new(
                        Kind::UpstreamRateLimited,
                        format!("{} is rate-limiting (HTTP 429)", redact(&url)),
                    )
                    .with_retry_after(retry));
                }
                s if s >= 500 => return Err(status_err(&url, s)),
                _ => return Ok(RegistryResponse { status, resp, url }),
            }
        }
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().expect("token cache poisoned");
        tokens
            .get(scope)
            .filter(|(_, exp)| Instant::now() < *exp)
            .map(|(t, _)| t.clone())
    }

    async fn answer_challenge(&self, challenge: &str, scope: &str) -> Result<()> {
        let lower = challenge.trim_start().to_ascii_lowercase();
        if lower.starts_with("basic") {
            if self.credentials.is_none() {
                return Err(Error::upstream_unavailable(format!(
                    "registry {} wants Basic credentials and none are configured",
                    self.base
                )));
            }
            self.basic.store(true, Ordering::Relaxed);
            return Ok(());
        }
        let bearer = BearerChallenge::parse(challenge).ok_or_else(|| {
            Error::upstream_unavailable(format!(
                "registry {} answered 401 without a usable challenge",
                self.base
            ))
        })?;
        let url = bearer.token_url(&[bearer.scope.clone().unwrap_or_else(|| scope.to_string())])?;
        let mut req = self.client.http().get(url.clone());
        if let Some(c) = &self.credentials {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = self.client.send_to_realm(&self.label, req, &url).await?;
        if !resp.status().is_success() {
            return Err(Error::upstream_unavailable(format!(
                "token endpoint {} answered HTTP {}",
                redact(&url),
                resp.status().as_u16()
            )));
        }
        let body = read_capped(resp, &url, 1 << 20).await?;
        let (token, life) = parse_token(&body, &url)?;
        self.tokens
            .lock()
            .expect("token cache poisoned")
            .insert(scope.to_string(), (token, Instant::now() + life));
        Ok(())
    }

    /// GETs a whole body, requiring 200.
    pub async fn get_bytes(&self, repo: &str, tail: &str, accept: &str, max: u64) -> Result<Bytes> {
        let r = self
            .request(reqwest::Method::GET, repo, tail, accept)
            .await?;
        if r.status != 200 {
            return Err(Error::upstream_invalid(format!(
                "{} answered HTTP {}",
                redact(r.url()),
                r.status
            )));
        }
        r.bytes(max).await
    }

    /// A whole blob, checked against its digest.
    pub async fn verified_blob(&self, repo: &str, digest: &str, max: u64) -> Result<Bytes> {
        let want: Digest = digest.parse()?;
        let bytes = self
            .get_bytes(
                repo,
                &format!("blobs/{want}"),
                "application/octet-stream",
                max,
            )
            .await?;
        let got = Digest::of(&bytes);
        if got != want {
            return Err(crate::error::digest_mismatch(&want, &got));
        }
        Ok(bytes)
    }
}

/// A `Bearer` challenge: where to ask for a token, and for what.
pub(crate) struct BearerChallenge {
    pub realm: String,
    pub service: Option<String>,
    pub scope: Option<String>,
}

impl BearerChallenge {
    pub fn parse(header: &str) -> Option<BearerChallenge> {
        let params = parse_bearer_challenge(header)?;
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Some(BearerChallenge {
            realm: get("realm").unwrap_or_default(),
            service: get("service"),
            scope: get("scope"),
        })
    }

    /// The realm's URL asking for `scopes`.
    pub fn token_url(&self, scopes: &[String]) -> Result<Url> {
        let mut url = Url::parse(&self.realm)
            .map_err(|_| Error::upstream_invalid(format!("bad token realm {:?}", self.realm)))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = &self.service {
                q.append_pair("service", s);
            }
            for s in scopes {
                q.append_pair("scope", s);
            }
        }
        Ok(url)
    }
}

/// A token endpoint's answer (`token` or `access_token`): the token and how long to use it
/// (a little less than `expires_in`, whose default is 60 s).
pub(crate) fn parse_token(body: &[u8], url: &Url) -> Result<(String, Duration)> {
    #[derive(serde::Deserialize)]
    struct Token {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let t: Token = serde_json::from_slice(body).map_err(|e| {
        Error::upstream_invalid(format!(
            "token endpoint {} answered badly: {e}",
            redact(url)
        ))
    })?;
    let token = t
        .token
        .or(t.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::upstream_invalid("token endpoint gave no token"))?;
    let life = Duration::from_secs(t.expires_in.unwrap_or(60).saturating_sub(10).max(1));
    Ok((token, life))
}

/// `Bearer realm="..",service="..",scope=".."` -> key/value pairs.
fn parse_bearer_challenge(h: &str) -> Option<Vec<(String, String)>> {
    let t = h.trim();
    let rest = t.get(..7).filter(|p| p.eq_ignore_ascii_case("bearer "))?;
    let mut s = t[rest.len()..].trim();
    let mut out = Vec::new();
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
