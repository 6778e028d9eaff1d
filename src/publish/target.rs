//! The registry `sync` pushes into, through the distribution push API: HEAD to see what is
//! there, blobs by cross-repository mount or a monolithic upload (POST, then PUT with the
//! digest), manifests by digest, then tags. Auth as a client of the target: a `Basic`
//! challenge is answered with the credentials, a `Bearer` one with a token from the realm for
//! `repository:<repo>:pull,push` (plus `pull` on the mount source), cached per scope.
//! Credentials are never logged. Its own HTTP client: the target is named by the operator on
//! the command line, so the upstreams' SSRF boundary does not apply; `--ca-file` adds a
//! private CA, `--plain-http` speaks HTTP.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use url::Url;

use crate::error::{Error, Result};
use crate::ids::Digest;
use crate::policy::Credentials;
use crate::upstream::registry::{parse_token, BearerChallenge};
use crate::upstream::{read_capped, redact, unreachable_err, MANIFEST_ACCEPT};

/// How a blob got there.
#[derive(Debug, PartialEq, Eq)]
pub enum BlobPush {
    /// It was there already.
    Present,
    /// Mounted from another repository of the target.
    Mounted,
    /// Uploaded.
    Uploaded,
}

pub struct Target {
    http: reqwest::Client,
    /// `scheme://host[:port]/`
    base: Url,
    /// Repository prefix under which everything lands (`charts` of `oci://host/charts`).
    prefix: String,
    credentials: Option<Credentials>,
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    basic: AtomicBool,
}

/// `oci://host[:port][/prefix]` -> (host, prefix).
pub fn parse_target(to: &str) -> Result<(String, String)> {
    let bad = |why: &str| {
        Error::new(
            crate::error::Kind::BadRequest,
            format!("--to {to:?}: {why}"),
        )
    };
    let rest = to
        .strip_prefix("oci://")
        .ok_or_else(|| bad("give it as oci://host[:port]/prefix"))?;
    let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() || host.contains('@') {
        return Err(bad(
            "no registry host (and no user@ in it: use the credential options)",
        ));
    }
    let prefix = prefix.trim_end_matches('/');
    if !prefix.is_empty() {
        prefix
            .parse::<crate::ids::RepoName>()
            .map_err(|e| bad(&format!("the prefix is not a repository path: {e}")))?;
    }
    Ok((host.to_string(), prefix.to_string()))
}

impl Target {
    pub fn new(
        to: &str,
        plain_http: bool,
        ca_file: Option<&std::path::Path>,
        credentials: Option<Credentials>,
    ) -> Result<Target> {
        let (host, prefix) = parse_target(to)?;
        let scheme = if plain_http { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{host}/"))
            .map_err(|e| Error::new(crate::error::Kind::BadRequest, format!("--to {to:?}: {e}")))?;
        let mut http = reqwest::Client::builder()
            .user_agent(concat!("chartbridge/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            // a redirect of an upload to another host must not carry the credentials
            .redirect(reqwest::redirect::Policy::limited(5));
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                Error::new(
                    crate::error::Kind::BadRequest,
                    format!("--ca-file {}: {e}", path.display()),
                )
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    Error::new(
                        crate::error::Kind::BadRequest,
                        format!("--ca-file {}: no PEM certificate in it", path.display()),
                    )
                })?;
            for c in certs {
                http = http.add_root_certificate(c);
            }
        }
        let http = http
            .build()
            .map_err(|e| Error::internal(format!("cannot build HTTP client: {e}")))?;
        Ok(Target {
            http,
            base,
            prefix,
            credentials,
            tokens: Mutex::new(HashMap::new()),
            basic: AtomicBool::new(false),
        })
    }

    /// The target repository for a source repository or chart name.
    pub fn repo(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    /// `host[:port]/repo`, for messages.
    pub fn display(&self, repo: &str) -> String {
        format!(
            "{}{repo}",
            self.base.as_str().split_once("//").map_or("", |x| x.1)
        )
    }

    fn url(&self, repo: &str, tail: &str) -> Result<Url> {
        self.base
            .join(&format!("v2/{repo}/{tail}"))
            .map_err(|e| Error::internal(format!("bad target URL: {e}")))
    }

    /// Sends a request built by `build` (again after answering one auth challenge), with the
    /// credentials or token for `scopes`.
    async fn send(
        &self,
        scopes: &[String],
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let key = scopes.join(" ");
        let mut challenged = false;
        loop {
            let mut req = build(&self.http);
            if let Some(t) = self.token(&key) {
                req = req.bearer_auth(t);
            } else if let (true, Some(c)) = (self.basic.load(Ordering::Relaxed), &self.credentials)
            {
                req = req.basic_auth(&c.username, Some(&c.password));
            }
            let resp = req
                .send()
                .await
                .map_err(|e| unreachable_err(&self.base, e))?;
            if resp.status().as_u16() != 401 || challenged {
                if resp.status().as_u16() == 401 || resp.status().as_u16() == 403 {
                    return Err(Error::upstream_unavailable(format!(
                        "target {} refused access (HTTP {}){}",
                        redact(resp.url()),
                        resp.status().as_u16(),
                        if self.credentials.is_some() {
                            ""
                        } else {
                            "; no credentials were given"
                        }
                    )));
                }
                return Ok(resp);
            }
            challenged = true;
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            self.answer(&challenge, scopes, &key).await?;
        }
    }

    fn token(&self, key: &str) -> Option<String> {
        let tokens = self.tokens.lock().expect("token cache poisoned");
        tokens
            .get(key)
            .filter(|(_, exp)| Instant::now() < *exp)
            .map(|(t, _)| t.clone())
    }

    async fn answer(&self, challenge: &str, scopes: &[String], key: &str) -> Result<()> {
        if challenge
            .trim_start()
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("basic"))
        {
            if self.credentials.is_none() {
                return Err(Error::upstream_unavailable(format!(
                    "target {} wants Basic credentials and none were given",
                    self.base
                )));
            }
            self.basic.store(true, Ordering::Relaxed);
            return Ok(());
        }
        let bearer = BearerChallenge::parse(challenge).ok_or_else(|| {
            Error::upstream_unavailable(format!(
                "target {} answered 401 without a usable challenge",
                self.base
            ))
        })?;
        let url = bearer.token_url(scopes)?;
        let mut req = self.http.get(url.clone());
        if let Some(c) = &self.credentials {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req.send().await.map_err(|e| unreachable_err(&url, e))?;
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
            .insert(key.to_string(), (token, Instant::now() + life));
        Ok(())
    }

    fn push_scope(repo: &str) -> String {
        format!("repository:{repo}:pull,push")
    }

    fn unexpected(&self, what: &str, resp: &reqwest::Response) -> Error {
        Error::upstream_invalid(format!(
            "target {} answered HTTP {} to {what}",
            redact(resp.url()),
            resp.status().as_u16()
        ))
    }

    /// Whether `repo` holds blob `d`.
    pub async fn has_blob(&self, repo: &str, d: &Digest) -> Result<bool> {
        let url = self.url(repo, &format!("blobs/{d}"))?;
        let resp = self
            .send(&[Self::push_scope(repo)], |c| c.head(url.clone()))
            .await?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.unexpected("a blob HEAD", &resp)),
        }
    }

    /// The digest `repo` has under `reference` (a tag or digest), if any.
    pub async fn manifest_digest(&self, repo: &str, reference: &str) -> Result<Option<Digest>> {
        let url = self.url(repo, &format!("manifests/{reference}"))?;
        let resp = self
            .send(&[Self::push_scope(repo)], |c| {
                c.head(url.clone()).header("Accept", MANIFEST_ACCEPT)
            })
            .await?;
        match resp.status().as_u16() {
            200 => Ok(resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            404 => Ok(None),
            _ => Err(self.unexpected("a manifest HEAD", &resp)),
        }
    }

    /// Puts blob `d` (`len` bytes, `body` built once when an upload is needed) into `repo`:
    /// skipped when present, mounted from `mount_from` where the target allows it, else
    /// uploaded in one PUT.
    pub async fn push_blob<B>(
        &self,
        repo: &str,
        d: &Digest,
        len: u64,
        mount_from: Option<&str>,
        body: B,
    ) -> Result<BlobPush>
    where
        B: std::future::Future<Output = Result<reqwest::Body>>,
    {
        if self.has_blob(repo, d).await? {
            return Ok(BlobPush::Present);
        }
        let mut scopes = vec![Self::push_scope(repo)];
        let start = match mount_from.filter(|f| *f != repo) {
            Some(from) => {
                scopes.push(format!("repository:{from}:pull"));
                let mut u = self.url(repo, "blobs/uploads/")?;
                u.query_pairs_mut()
                    .append_pair("mount", &d.to_string())
                    .append_pair("from", from);
                u
            }
            None => self.url(repo, "blobs/uploads/")?,
        };
        let resp = self
            .send(&scopes, |c| {
                c.post(start.clone()).header("Content-Length", "0")
            })
            .await?;
        match resp.status().as_u16() {
            201 => return Ok(BlobPush::Mounted),
            202 => {}
            _ => return Err(self.unexpected("an upload start", &resp)),
        }
        let mut put = self.location(&resp)?;
        put.query_pairs_mut().append_pair("digest", &d.to_string());
        let body = body.await?;
        // The body streams once: the session's token is already cached from the POST.
        let mut req = self
            .http
            .put(put.clone())
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", len.to_string())
            .body(body);
        if let Some(t) = self.token(&scopes.join(" ")) {
            req = req.bearer_auth(t);
        } else if let (true, Some(c)) = (self.basic.load(Ordering::Relaxed), &self.credentials) {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req.send().await.map_err(|e| unreachable_err(&put, e))?;
        match resp.status().as_u16() {
            201 | 204 => Ok(BlobPush::Uploaded),
            _ => Err(self.unexpected(&format!("the upload of {d}"), &resp)),
        }
    }

    /// The upload session URL a 202 names (absolute, or relative to the registry).
    fn location(&self, resp: &reqwest::Response) -> Result<Url> {
        let loc = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.unexpected("an upload start (no Location)", resp))?;
        let url = resp
            .url()
            .join(loc)
            .map_err(|e| Error::upstream_invalid(format!("target upload location {loc:?}: {e}")))?;
        Ok(url)
    }

    /// Puts a manifest under `reference` (its digest, or a tag).
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &Bytes,
    ) -> Result<()> {
        let url = self.url(repo, &format!("manifests/{reference}"))?;
        let resp = self
            .send(&[Self::push_scope(repo)], |c| {
                c.put(url.clone())
                    .header("Content-Type", media_type)
                    .body(bytes.clone())
            })
            .await?;
        match resp.status().as_u16() {
            201 | 200 | 204 => Ok(()),
            _ => {
                let status = resp.status().as_u16();
                let url = redact(resp.url());
                let text = resp.text().await.unwrap_or_default();
                Err(Error::upstream_invalid(format!(
                    "target {url} answered HTTP {status} to a manifest PUT: {}",
                    text.chars().take(300).collect::<String>()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_oci_references_with_an_optional_prefix() {
        assert_eq!(
            parse_target("oci://harbor.example.com/charts").unwrap(),
            ("harbor.example.com".into(), "charts".into())
        );
        assert_eq!(
            parse_target("oci://127.0.0.1:5000/a/b/").unwrap(),
            ("127.0.0.1:5000".into(), "a/b".into())
        );
        assert_eq!(
            parse_target("oci://r.io").unwrap(),
            ("r.io".into(), "".into())
        );
        for bad in [
            "https://r.io/x",
            "oci:///x",
            "oci://u:p@r.io/x",
            "oci://r.io/UP/../x",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }
}
