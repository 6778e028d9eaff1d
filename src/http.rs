//! The request and response types every view uses (with their own body types), Range
//! handling, and `error_response`: the one place that maps a domain error to an HTTP status and
//! body (OCI error JSON on `/v2/`, plain text elsewhere). Knows nothing of pingora or the cache.

use std::borrow::Cow;

use bytes::Bytes;

use crate::error::{Error, Kind};
use crate::ids::Digest;
pub use crate::ids::{parse_range_header, ByteRange};

/// The request as the views see it: already split by the server, never re-parsed below `route`.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub method: String,
    /// The raw (still percent-encoded) path.
    pub path: String,
    pub query: Option<String>,
    /// A usable `Range: bytes=` header (a malformed or multi-range one is `None`: the whole
    /// body is served, as RFC 9110 allows).
    pub range: Option<ByteRange>,
    /// `If-Range`: the range applies only while this still names the representation.
    pub if_range: Option<String>,
    pub if_none_match: Option<String>,
    /// The `Authorization` header, for protected upstreams. Never logged.
    pub authorization: Option<String>,
    /// The peer's address (for backing off repeated failed logins).
    pub client: Option<std::net::IpAddr>,
    /// `X-Request-Id` as the client (or a proxy in front) sent it.
    pub request_id: Option<String>,
    /// What only the catalog page reads (filled for `/` and `/-/...` alone, so the pull path
    /// pays nothing for it).
    pub page: Option<Box<PageHeaders>>,
}

/// The headers the catalog page reads.
#[derive(Clone, Debug, Default)]
pub struct PageHeaders {
    pub accept: Option<String>,
    /// `Host` (or the HTTP/2 authority) as the browser sent it.
    pub host: Option<String>,
    pub origin: Option<String>,
    pub sec_fetch_site: Option<String>,
    /// Reached over TLS.
    pub secure: bool,
}

impl Request {
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// The range to serve of a representation whose strong ETag is `etag`: none when
    /// `If-Range` names something else (a date, or another ETag), so the client gets the
    /// whole, current body.
    pub fn range_for(&self, etag: Option<&str>) -> Option<ByteRange> {
        match (&self.if_range, etag) {
            (None, _) => self.range,
            (Some(v), Some(e)) if v.trim() == e => self.range,
            _ => None,
        }
    }
}

/// What a data response sends: bytes in memory (on the heap, or mapped from a memfd), or an
/// open file of a known length.
#[derive(Debug)]
pub enum Content {
    Bytes(Bytes),
    Mapped(crate::cache::Mapped),
    File(tokio::fs::File, u64),
}

impl Content {
    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Mapped(m) => m.bytes.len() as u64,
            Content::File(_, n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A response body. Small things are whole; blobs on disk and blobs arriving from an upstream
/// are streamed so that neither memory nor the client's first byte waits for the whole blob.
#[derive(Debug)]
pub enum Body {
    Full(Bytes),
    /// `bytes`, which are also the file `fd` from `offset` (a memory-tier blob in a sealed
    /// memfd): a plain HTTP/1 connection sends them with `sendfile`, any other as bytes.
    Mapped {
        bytes: Bytes,
        fd: std::sync::Arc<std::os::fd::OwnedFd>,
        offset: u64,
    },
    /// `len` bytes of an open file from `offset` (the file stays readable even if evicted).
    File {
        file: tokio::fs::File,
        offset: u64,
        len: u64,
    },
    /// Chunks as they arrive. An `Err` (or the channel closing before `Content-Length` bytes)
    /// aborts the response: the client sees a broken connection, never a complete wrong body.
    Stream(tokio::sync::mpsc::Receiver<Result<Bytes, Error>>),
}

impl Body {
    pub fn is_empty(&self) -> bool {
        match self {
            Body::Full(b) | Body::Mapped { bytes: b, .. } => b.is_empty(),
            _ => false,
        }
    }
}

/// How long caches in front of chartbridge (a CDN, an nginx cache, a node-local cache) may
/// keep an answer; `finish` writes it as `Cache-Control`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Caching {
    /// Nothing said (errors, health, metrics).
    #[default]
    Unsaid,
    /// Content named by its digest: it never changes.
    Immutable,
    /// Built from upstream answers that stay fresh this much longer.
    For(std::time::Duration),
    /// Fresh for an unknown time: revalidate every time.
    Revalidate,
}

/// A year: what "immutable" content carries as `max-age`.
#[cfg(test)]
const IMMUTABLE_SECS: u64 = 31_536_000;
const IMMUTABLE_PUBLIC: &str = "public, max-age=31536000, immutable";
const IMMUTABLE_PRIVATE: &str = "private, max-age=31536000, immutable";

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Includes `Content-Length`, which is the full body length even for HEAD. Values are
    /// borrowed where they never change, so a constant header costs no allocation.
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    /// Empty for HEAD and bodiless statuses.
    pub body: Body,
    /// Served from a last-known copy because the upstream failed (the app adds `Warning`).
    pub stale: bool,
    pub caching: Caching,
    /// From an upstream protected by `access`: shared caches must not keep it.
    pub private: bool,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Full(Bytes::new()),
            stale: false,
            caching: Caching::Unsaid,
            private: false,
        }
    }

    pub fn caching(mut self, caching: Caching) -> Response {
        self.caching = caching;
        self
    }

    /// Fresh for `fresh_for` (`None`: unknown, so revalidated every time).
    pub fn fresh_for(self, fresh_for: Option<std::time::Duration>) -> Response {
        self.caching(fresh_for.map_or(Caching::Revalidate, Caching::For))
    }

    pub fn private(mut self, private: bool) -> Response {
        self.private = private;
        self
    }

    fn set_header(&mut self, name: &'static str, value: impl Into<Cow<'static, str>>) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name, value.into()));
    }

    /// Marks the answer as served from a last-known copy (or not).
    pub fn stale(mut self, stale: bool) -> Response {
        self.stale = stale;
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<Cow<'static, str>>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn get_header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }

    /// A complete body with its `Content-Type` and `Content-Length`; for HEAD the body is
    /// dropped and the length kept.
    pub fn with_body(
        mut self,
        content_type: impl Into<Cow<'static, str>>,
        body: Bytes,
        head: bool,
    ) -> Response {
        self = self
            .header("Content-Type", content_type)
            .header("Content-Length", body.len().to_string());
        if !head {
            self.body = Body::Full(body);
        }
        self
    }

    /// A body of `len` bytes that will arrive on `rx`.
    pub fn with_stream(
        mut self,
        content_type: impl Into<Cow<'static, str>>,
        len: u64,
        rx: tokio::sync::mpsc::Receiver<Result<Bytes, Error>>,
    ) -> Response {
        self = self
            .header("Content-Type", content_type)
            .header("Content-Length", len.to_string());
        self.body = Body::Stream(rx);
        self
    }

    /// The Content-Length this response declares (for logs and metrics).
    pub fn content_length(&self) -> u64 {
        self.get_header("Content-Length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// The last touches every answer gets, in one place: `Cache-Control` from its `Caching` (a
/// stale answer `max-age=0`; an answer of a protected upstream `private`), and `304 Not
/// Modified` when the client's `If-None-Match` names the answer's `ETag`.
pub fn finish(mut resp: Response, req: &Request) -> Response {
    if matches!(resp.status, 200 | 206) {
        let scope = if resp.private { "private" } else { "public" };
        let value: Option<Cow<'static, str>> = match (resp.caching, resp.stale) {
            (Caching::Unsaid, _) if resp.private => Some("private".into()),
            (Caching::Unsaid, _) => None,
            (_, true) => Some(format!("{scope}, max-age=0").into()),
            // the constant answers are constants: no formatting on the warm path
            (Caching::Immutable, _) if resp.private => Some(IMMUTABLE_PRIVATE.into()),
            (Caching::Immutable, _) => Some(IMMUTABLE_PUBLIC.into()),
            (Caching::For(d), _) => Some(format!("{scope}, max-age={}", d.as_secs()).into()),
            (Caching::Revalidate, _) if resp.private => Some("private, no-cache".into()),
            (Caching::Revalidate, _) => Some("public, no-cache".into()),
        };
        if let Some(v) = value {
            resp.set_header("Cache-Control", v);
        }
    }
    let not_modified = resp.status == 200
        && match (req.if_none_match.as_deref(), resp.get_header("ETag")) {
            (Some(wanted), Some(etag)) => wanted.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t == etag || t.strip_prefix("W/") == Some(etag)
            }),
            _ => false,
        };
    if not_modified {
        resp.status = 304;
        resp.body = Body::Full(Bytes::new());
        resp.headers.retain(|(k, _)| {
            !["Content-Type", "Content-Length", "Accept-Ranges"]
                .iter()
                .any(|h| k.eq_ignore_ascii_case(h))
        });
    }
    resp
}

/// Which API a request belongs to, which decides the error body format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Oci,
    Plain,
}

/// Maps a domain error to a response. The only place that knows statuses for error kinds.
pub fn error_response(err: &Error, api: Api) -> Response {
    let (status, code) = match err.kind() {
        Kind::NameInvalid => (400, "NAME_INVALID"),
        Kind::NameUnknown => (404, "NAME_UNKNOWN"),
        Kind::TagInvalid => (400, "TAG_INVALID"),
        Kind::DigestInvalid => (400, "DIGEST_INVALID"),
        Kind::ManifestUnknown => (404, "MANIFEST_UNKNOWN"),
        Kind::BlobUnknown => (404, "BLOB_UNKNOWN"),
        Kind::NotFound => (404, "NOT_FOUND"),
        Kind::Unsupported => (405, "UNSUPPORTED"),
        Kind::BadRequest => (400, "UNSUPPORTED"),
        Kind::Unauthorized => (401, "UNAUTHORIZED"),
        Kind::Forbidden => (403, "DENIED"),
        Kind::TooManyAttempts => (429, "TOOMANYREQUESTS"),
        Kind::RangeNotSatisfiable => (416, "RANGE_INVALID"),
        Kind::UpstreamInvalid => (502, "UPSTREAM_INVALID"),
        Kind::UpstreamUnavailable => (502, "UNAVAILABLE"),
        Kind::UpstreamRateLimited => (429, "TOOMANYREQUESTS"),
        Kind::UpstreamOffline => (503, "UNAVAILABLE"),
        Kind::Internal => (500, "UNKNOWN"),
    };
    let mut resp = Response::new(status);
    if let Some(len) = err.full_length() {
        resp = resp.header("Content-Range", format!("bytes */{len}"));
    }
    if let Some(secs) = err.retry_after() {
        resp = resp.header("Retry-After", secs.to_string());
    }
    if err.kind() == Kind::Unauthorized {
        resp = resp.header("WWW-Authenticate", "Basic realm=\"chartbridge\"");
    }
    match api {
        Api::Oci => {
            let body = serde_json::json!({
                "errors": [{"code": code, "message": err.message(), "detail": null}]
            });
            resp.header("Docker-Distribution-API-Version", "registry/2.0")
                .with_body("application/json", Bytes::from(body.to_string()), false)
        }
        Api::Plain => resp.with_body(
            "text/plain; charset=utf-8",
            Bytes::from(format!("{}\n", err.message())),
            false,
        ),
    }
}

/// A blob response: `Docker-Content-Digest`, `Accept-Ranges`, and Range support.
pub fn blob_response(
    req: &Request,
    content_type: impl Into<Cow<'static, str>>,
    bytes: Bytes,
    digest: Option<&Digest>,
) -> Response {
    data_response(req, content_type, Content::Bytes(bytes), digest)
}

/// As `blob_response`, for bytes in memory or in an open file.
pub fn data_response(
    req: &Request,
    content_type: impl Into<Cow<'static, str>>,
    data: Content,
    digest: Option<&Digest>,
) -> Response {
    let len = data.len();
    let mut resp = Response::new(200).header("Accept-Ranges", "bytes");
    let etag = digest.map(Digest::etag);
    if let (Some(d), Some(e)) = (digest, &etag) {
        resp = resp
            .header("Docker-Content-Digest", d.text())
            .header("ETag", e.clone());
    }
    let (start, end) = match req.range_for(etag.as_deref()) {
        None => (0, len),
        Some(spec) => match spec.resolve(len) {
            Some((s, e)) => {
                resp.status = 206;
                resp = resp.header("Content-Range", format!("bytes {s}-{}/{len}", e - 1));
                (s, e)
            }
            None => return error_response(&Error::range_not_satisfiable(len), Api::Plain),
        },
    };
    // the part sent: all of it, or the range
    let part = end - start;
    let body = match data {
        Content::Bytes(b) => Body::Full(b.slice(start as usize..end as usize)),
        Content::Mapped(m) => Body::Mapped {
            bytes: m.bytes.slice(start as usize..end as usize),
            fd: m.fd,
            offset: start,
        },
        Content::File(file, _) => Body::File {
            file,
            offset: start,
            len: part,
        },
    };
    resp = resp
        .header("Content-Type", content_type)
        .header("Content-Length", part.to_string());
    if !req.is_head() {
        resp.body = body;
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_constant_cache_controls_say_a_year() {
        assert_eq!(
            IMMUTABLE_PUBLIC,
            format!("public, max-age={IMMUTABLE_SECS}, immutable")
        );
        assert_eq!(
            IMMUTABLE_PRIVATE,
            format!("private, max-age={IMMUTABLE_SECS}, immutable")
        );
    }

    fn range(h: &str, len: u64) -> Option<Option<(u64, u64)>> {
        parse_range_header(h).map(|r| r.resolve(len))
    }

    fn req(inm: Option<&str>) -> Request {
        Request {
            method: "GET".into(),
            if_none_match: inm.map(str::to_string),
            ..Default::default()
        }
    }

    fn ok() -> Response {
        Response::new(200)
            .header("ETag", "\"sha256:ab\"")
            .with_body("application/json", Bytes::from_static(b"{}"), false)
    }

    #[test]
    fn finish_writes_cache_control_and_answers_304() {
        let cc = |r: Response| r.get_header("Cache-Control").map(str::to_string);
        let f = |r: Response| finish(r, &req(None));
        assert_eq!(cc(f(ok())), None, "nothing said, nothing written");
        assert_eq!(
            cc(f(ok().caching(Caching::Immutable))).as_deref(),
            Some("public, max-age=31536000, immutable")
        );
        assert_eq!(
            cc(f(
                ok().fresh_for(Some(std::time::Duration::from_millis(90_500)))
            ))
            .as_deref(),
            Some("public, max-age=90")
        );
        assert_eq!(
            cc(f(ok().fresh_for(None))).as_deref(),
            Some("public, no-cache")
        );
        assert_eq!(
            cc(f(ok().caching(Caching::Immutable).stale(true))).as_deref(),
            Some("public, max-age=0")
        );
        assert_eq!(
            cc(f(ok().caching(Caching::Immutable).private(true))).as_deref(),
            Some("private, max-age=31536000, immutable")
        );
        assert_eq!(cc(f(ok().private(true))).as_deref(), Some("private"));
        assert_eq!(
            cc(f(Response::new(404).caching(Caching::Immutable))),
            None,
            "errors are not cached"
        );
        for inm in [
            "\"sha256:ab\"",
            "W/\"sha256:ab\"",
            "*",
            "\"x\", \"sha256:ab\"",
        ] {
            let r = finish(ok().caching(Caching::Immutable), &req(Some(inm)));
            assert_eq!(r.status, 304, "{inm}");
            assert!(r.body.is_empty() && r.get_header("Content-Length").is_none());
            assert_eq!(r.get_header("ETag"), Some("\"sha256:ab\""));
            assert!(r.get_header("Cache-Control").is_some());
        }
        assert_eq!(finish(ok(), &req(Some("\"other\""))).status, 200);
        assert_eq!(finish(Response::new(404), &req(Some("*"))).status, 404);
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-4", 10), Some(Some((0, 5))));
        assert_eq!(range("bytes=5-", 10), Some(Some((5, 10))));
        assert_eq!(range("bytes=-3", 10), Some(Some((7, 10))));
        assert_eq!(range("bytes=5-100", 10), Some(Some((5, 10))));
        assert_eq!(range("bytes=-100", 10), Some(Some((0, 10))));
        assert_eq!(range("bytes=10-", 10), Some(None), "starts past the end");
        assert_eq!(range("bytes=0-0", 0), Some(None), "an empty body");
        // ignored: the whole body is served
        assert_eq!(range("bytes=0-1,3-4", 10), None);
        assert_eq!(range("items=0-1", 10), None);
        assert_eq!(range("bytes=4-2", 10), None);
        assert_eq!(range("bytes=-", 10), None);
    }

    /// Regression (issue 15, finding 7): `bytes=-0` asks for nothing and is unsatisfiable;
    /// `bytes=+1-3` is not a range; an `If-Range` that no longer matches gets the whole body.
    #[test]
    fn range_edge_cases_follow_rfc_9110() {
        assert_eq!(range("bytes=-0", 10), Some(None));
        assert_eq!(range("bytes=+1-3", 10), None);
        assert_eq!(range("bytes=1-+3", 10), None);
        assert_eq!(range("bytes= 1 - 3 ", 10), Some(Some((1, 4))));
        let d = Digest::of(b"0123456789");
        let mut req = Request {
            method: "GET".into(),
            range: parse_range_header("bytes=2-3"),
            ..Default::default()
        };
        let body = || Bytes::from_static(b"0123456789");
        assert_eq!(blob_response(&req, "x", body(), Some(&d)).status, 206);
        req.if_range = Some(format!("\"{d}\""));
        assert_eq!(blob_response(&req, "x", body(), Some(&d)).status, 206);
        req.if_range = Some("\"sha256:other\"".into());
        let r = blob_response(&req, "x", body(), Some(&d));
        assert_eq!((r.status, r.content_length()), (200, 10));
        req.if_range = Some("Sat, 28 Nov 2026 07:00:00 GMT".into());
        assert_eq!(blob_response(&req, "x", body(), Some(&d)).status, 200);
        req.if_range = None;
        req.range = parse_range_header("bytes=-0");
        let r = blob_response(&req, "x", body(), Some(&d));
        assert_eq!(r.status, 416);
        assert_eq!(r.get_header("content-range"), Some("bytes */10"));
    }

    #[test]
    fn head_keeps_length_but_no_body() {
        let req = Request {
            method: "HEAD".into(),
            ..Default::default()
        };
        let r = blob_response(
            &req,
            "application/octet-stream",
            Bytes::from_static(b"abc"),
            None,
        );
        assert_eq!(r.get_header("content-length"), Some("3"));
        assert!(r.body.is_empty());
    }

    #[test]
    fn oci_errors_are_json_with_codes() {
        let r = error_response(&Error::new(Kind::DigestInvalid, "bad"), Api::Oci);
        assert_eq!(r.status, 400);
        let Body::Full(body) = &r.body else {
            panic!("whole body expected")
        };
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["errors"][0]["code"], "DIGEST_INVALID");
    }
}
