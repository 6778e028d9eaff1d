//! The only outbound HTTP: one reqwest client per upstream (rustls, follows redirects, drops
//! `Authorization` when a redirect leaves the host) acting on that upstream's `policy::Policy`
//! (timeouts, retries, offline). Plain GETs with conditional headers and a byte cap here; the
//! SSRF boundary in `guard`; registries (Docker token flow, Basic, credentials) in `registry`.
//! Calls only `policy`, `ids` and `error`: knows nothing of caches, conversions, routes or
//! views.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use url::Url;

use crate::error::{Error, Result};
pub use crate::policy::Policy;

pub mod guard;
pub mod registry;
pub use registry::{Registry, RegistryResponse, MANIFEST_ACCEPT};

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

/// Longest `Retry-After` we wait out inside one request; longer ones go back to the client.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The HTTP client of one upstream.
pub struct UpstreamClient {
    http: reqwest::Client,
    policy: Policy,
    guard: std::sync::Arc<guard::Guard>,
}

impl UpstreamClient {
    /// The client of the upstream at `base`, inside the SSRF boundary of `guard`.
    pub fn new(policy: Policy, base: &Url) -> Result<UpstreamClient> {
        let guard = std::sync::Arc::new(guard::Guard::new(
            base,
            &policy.allow_hosts,
            policy.allow_private,
        ));
        let http = reqwest::Client::builder()
            .user_agent(concat!("chartbridge/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(policy.connect)
            .read_timeout(policy.idle)
            .redirect(guard.redirect_policy())
            .dns_resolver(std::sync::Arc::new(guard::GuardedResolver(guard.clone())))
            .build()
            .map_err(|e| Error::internal(format!("cannot build HTTP client: {e}")))?;
        Ok(UpstreamClient {
            http,
            policy,
            guard,
        })
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Sends a bodiless request: refused when offline, bounded by the header timeout, retried
    /// with backoff after connection errors, timeouts and 5xx (and after a short `Retry-After`
    /// on 429). Every attempt is counted in the upstream metrics under `label`.
    pub(crate) async fn send(
        &self,
        label: &str,
        req: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<reqwest::Response> {
        self.guard.check_url(url)?;
        self.send_checked(label, req, url).await
    }

    /// `send` to a registry's token realm (see `Guard::check_realm`).
    pub(crate) async fn send_to_realm(
        &self,
        label: &str,
        req: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<reqwest::Response> {
        self.guard.check_realm(url)?;
        self.send_checked(label, req, url).await
    }

    async fn send_checked(
        &self,
        label: &str,
        req: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<reqwest::Response> {
        if self.policy.offline {
            return Err(Error::new(
                crate::error::Kind::UpstreamOffline,
                format!(
                    "upstream {label} is offline by configuration: {} was not contacted",
                    redact(url)
                ),
            ));
        }
        let mut attempt = 0u32;
        loop {
            let this_try = req
                .try_clone()
                .ok_or_else(|| Error::internal("request cannot be retried"))?;
            let start = std::time::Instant::now();
            let sent = tokio::time::timeout(self.policy.header, this_try.send()).await;
            crate::metrics::upstream_latency(label, start.elapsed());
            let retryable = attempt < self.policy.retries;
            let backoff = Duration::from_millis(100u64 << attempt.min(6));
            attempt += 1;
            let resp = match sent {
                Err(_) => {
                    crate::metrics::upstream_request(label, "timeout");
                    if retryable {
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                    return Err(Error::upstream_unavailable(format!(
                        "{} sent no response headers within {:?}",
                        redact(url),
                        self.policy.header
                    )));
                }
                Ok(Err(e)) => {
                    crate::metrics::upstream_request(label, "error");
                    // A redirect loop, a bad URL or a guard refusal does not get better by retrying.
                    if retryable
                        && !e.is_redirect()
                        && !e.is_builder()
                        && guard_refusal(&e).is_none()
                    {
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                    return Err(unreachable_err(url, e));
                }
                Ok(Ok(r)) => r,
            };
            let status = resp.status().as_u16();
            crate::metrics::upstream_request(
                label,
                match status {
                    200..=299 => "ok",
                    304 => "not_modified",
                    401 | 403 => "denied",
                    404 | 410 => "missing",
                    429 => "rate_limited",
                    500.. => "error",
                    _ => "other",
                },
            );
            if retryable && status >= 500 {
                tokio::time::sleep(backoff).await;
                continue;
            }
            if retryable && status == 429 {
                let wait = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                if let Some(w) = wait.filter(|w| *w <= MAX_RETRY_AFTER) {
                    tokio::time::sleep(w).await;
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    /// GETs `url`, reading at most `max_bytes` of body.
    /// `label` names the upstream in metrics.
    pub async fn get(
        &self,
        label: &str,
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
        let resp = self.send(label, req, url).await?;
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
    pub async fn get_body(
        &self,
        label: &str,
        url: &Url,
        accept: &str,
        max_bytes: u64,
    ) -> Result<Bytes> {
        match self
            .get(label, url, accept, &Validators::default(), max_bytes)
            .await?
        {
            Fetch::Body { bytes, .. } => Ok(bytes),
            _ => Err(Error::upstream_invalid(format!(
                "upstream has no {}",
                redact(url)
            ))),
        }
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

pub(crate) async fn read_capped(resp: reqwest::Response, url: &Url, max: u64) -> Result<Bytes> {
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(too_big(url, max));
    }
    let mut buf = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Error::upstream_unavailable(format!("{}: body failed mid-way: {e}", redact(url)))
                .with_source(e)
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

pub(crate) fn unreachable_err(url: &Url, e: reqwest::Error) -> Error {
    // A refusal by our own guard (DNS to a private address) is the real reason: say it.
    if let Some(refused) = guard_refusal(&e) {
        return refused;
    }
    let mut msg = format!("{} unreachable: {e}", redact(url));
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    Error::upstream_unavailable(msg).with_source(e)
}

/// The guard's own error inside a reqwest error chain, if that is why the request failed.
fn guard_refusal(e: &reqwest::Error) -> Option<Error> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(ours) = s.downcast_ref::<Error>() {
            return Some(ours.clone());
        }
        source = s.source();
    }
    None
}

pub(crate) fn status_err(url: &Url, status: u16) -> Error {
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
    fn redaction_drops_credentials_and_query() {
        let u = Url::parse("https://user:pw@h.io/x?token=abc").unwrap();
        assert_eq!(redact(&u), "https://h.io/x");
    }
}
