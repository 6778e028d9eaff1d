//! The response type every view returns, Range handling, and `error_response`: the one place
//! that maps a domain error to an HTTP status and body (OCI error JSON on `/v2/`, plain text
//! elsewhere). Knows nothing of pingora.

use bytes::Bytes;

pub use crate::cache::BlobData;
use crate::error::{Error, Kind};
use crate::ids::Digest;

/// The request as the views see it: already split by the server, never re-parsed below `route`.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub method: String,
    /// The raw (still percent-encoded) path.
    pub path: String,
    pub query: Option<String>,
    pub range: Option<String>,
    pub if_none_match: Option<String>,
    /// The `Authorization` header, for protected upstreams. Never logged.
    pub authorization: Option<String>,
}

impl Request {
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// A response body. Small things are whole; blobs on disk and blobs arriving from an upstream
/// are streamed so that neither memory nor the client's first byte waits for the whole blob.
#[derive(Debug)]
pub enum Body {
    Full(Bytes),
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
        matches!(self, Body::Full(b) if b.is_empty())
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Includes `Content-Length`, which is the full body length even for HEAD.
    pub headers: Vec<(&'static str, String)>,
    /// Empty for HEAD and bodiless statuses.
    pub body: Body,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Full(Bytes::new()),
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn get_header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A complete body with its `Content-Type` and `Content-Length`; for HEAD the body is
    /// dropped and the length kept.
    pub fn with_body(mut self, content_type: &str, body: Bytes, head: bool) -> Response {
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
        content_type: &str,
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
        Kind::RangeNotSatisfiable => (416, "RANGE_INVALID"),
        Kind::UpstreamInvalid => (502, "UPSTREAM_INVALID"),
        Kind::UpstreamUnavailable => (502, "UNAVAILABLE"),
        Kind::UpstreamRateLimited => (429, "TOOMANYREQUESTS"),
        Kind::UpstreamOffline => (503, "UNAVAILABLE"),
        Kind::Internal => (500, "UNKNOWN"),
    };
    let mut resp = Response::new(status);
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

/// A byte range requested with `Range: bytes=...`, resolved against a length.
#[derive(Debug, PartialEq, Eq)]
enum RangeReq {
    /// No (usable) Range header: serve everything.
    Full,
    Part(u64, u64),
    Unsatisfiable,
}

/// Parses a single `bytes=` range. Malformed or multi-range headers are ignored (RFC 9110
/// allows serving the full body), an out-of-bounds range is unsatisfiable.
fn parse_range(h: Option<&str>, len: u64) -> RangeReq {
    let Some(spec) = h.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(s), Ok(e)) if s <= e => (s, e.min(len.saturating_sub(1))),
        (Ok(s), Err(_)) if b.is_empty() => (s, len.saturating_sub(1)),
        (Err(_), Ok(n)) if a.is_empty() && n > 0 => (len.saturating_sub(n), len.saturating_sub(1)),
        _ => return RangeReq::Full,
    };
    if len == 0 || start >= len {
        RangeReq::Unsatisfiable
    } else {
        RangeReq::Part(start, end)
    }
}

/// A blob response: `Docker-Content-Digest`, `Accept-Ranges`, and Range support.
pub fn blob_response(
    req: &Request,
    content_type: &str,
    bytes: Bytes,
    digest: Option<&Digest>,
) -> Response {
    data_response(req, content_type, BlobData::Bytes(bytes), digest)
}

/// As `blob_response`, for bytes in memory or in an open file.
pub fn data_response(
    req: &Request,
    content_type: &str,
    data: BlobData,
    digest: Option<&Digest>,
) -> Response {
    let len = data.len();
    let mut resp = Response::new(200).header("Accept-Ranges", "bytes");
    if let Some(d) = digest {
        resp = resp
            .header("Docker-Content-Digest", d.to_string())
            .header("ETag", format!("\"{d}\""));
    }
    let (start, end) = match parse_range(req.range.as_deref(), len) {
        RangeReq::Full => (0, len),
        RangeReq::Part(s, e) => {
            resp.status = 206;
            resp = resp.header("Content-Range", format!("bytes {s}-{e}/{len}"));
            (s, e + 1)
        }
        RangeReq::Unsatisfiable => {
            let mut r = error_response(
                &Error::new(Kind::RangeNotSatisfiable, format!("range outside 0-{len}")),
                Api::Plain,
            );
            r.headers.push(("Content-Range", format!("bytes */{len}")));
            return r;
        }
    };
    match data {
        BlobData::Bytes(b) => resp.with_body(
            content_type,
            b.slice(start as usize..end as usize),
            req.is_head(),
        ),
        BlobData::File(file, _) => {
            resp = resp
                .header("Content-Type", content_type)
                .header("Content-Length", (end - start).to_string());
            if !req.is_head() {
                resp.body = Body::File {
                    file,
                    offset: start,
                    len: end - start,
                };
            }
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeReq::Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), RangeReq::Part(0, 4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), RangeReq::Part(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), RangeReq::Part(7, 9));
        assert_eq!(parse_range(Some("bytes=5-100"), 10), RangeReq::Part(5, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), RangeReq::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), RangeReq::Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), RangeReq::Full);
        assert_eq!(parse_range(Some("bytes=4-2"), 10), RangeReq::Full);
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
