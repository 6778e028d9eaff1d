//! The only outbound HTTP: one reqwest client (rustls, follows redirects, and drops
//! `Authorization` when a redirect leaves the host). Plain GETs with conditional headers and a
//! byte cap here; registries (Docker token flow, Basic, credentials) in `registry`.
//! Knows nothing of caches, routes or views.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use url::Url;

use crate::error::{Error, Result};

pub mod registry;
pub use registry::{OciChart, Registry, RegistryResponse, MANIFEST_ACCEPT};

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
    /// `label` names the upstream in metrics.
    pub async fn get(
        &self,
        label: &str,
        url: &Url,
        accept: &str,
        validators: &Validators,
        max_bytes: u64,
    ) -> Result<Fetch> {
        let start = std::time::Instant::now();
        let result = self.get_inner(url, accept, validators, max_bytes).await;
        crate::metrics::upstream_latency(label, start.elapsed());
        let outcome = match &result {
            Ok(Fetch::Body { .. }) => "ok",
            Ok(Fetch::NotModified) => "not_modified",
            Ok(Fetch::Missing) => "missing",
            Err(_) => "error",
        };
        crate::metrics::upstream_request(label, outcome);
        result
    }

    async fn get_inner(
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
    Error::upstream_unavailable(format!("{} unreachable: {e}", redact(url)))
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
