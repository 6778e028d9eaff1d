//! Plain HTTP/1 connections, read without pingora's session on the common path.
//!
//! The warm path's profile put pingora's request read (`HttpSession::read_request`: the
//! `RequestHeader` with its header map and case map, the URI parse, a new session per request)
//! at about a tenth of chartbridge's CPU. On a plain TCP connection this module reads request
//! heads itself with `httparse`, into one buffer kept for the connection, and answers through
//! `h1` as before. It takes only what it can answer exactly as pingora's path would: `GET` and
//! `HEAD` in origin form, HTTP/1.0 or 1.1, no body (no `Content-Length`, `Transfer-Encoding`,
//! `Expect` or `Upgrade`), a `Host` on 1.1, a head under 64 KiB with at most 64 fields, a
//! target of RFC 3986 characters. Anything else (and any head it cannot parse) is handed to
//! pingora with the bytes read so far put back in front of the stream (`rewind`), so pingora's
//! parser, caps, 400s and body handling still decide every other case, for the rest of that
//! connection. The request-head deadline, the keep-alive idle wait and pipelining behave as on
//! pingora's path.

use std::ops::Range;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::{h1, request_from, write_direct, Http};
use crate::http::{Body, Request, Response};

/// Largest head read here; a bigger one goes to pingora (which allows 1 MiB).
const MAX_HEAD: usize = 64 << 10;
/// Most header fields read here; more go to pingora (which allows 256).
const MAX_FIELDS: usize = 64;

/// Serves a plain HTTP/1 connection until it closes, handing it to pingora at the first
/// request this module does not take; any other connection (TLS) goes to pingora at once.
pub(super) async fn serve(http: &Arc<Http>, stream: Stream, shutdown: &ShutdownWatch) {
    let fd = match (*stream).as_any().downcast_ref::<L4>() {
        Some(l4) => std::os::fd::AsRawFd::as_raw_fd(l4),
        None => return hand_over(http, stream, &[], shutdown).await,
    };
    let client = stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
    // Limits are read where they apply, so a reload reaches open connections.
    let limits = || http.app.limits();
    let mut stream = stream;
    let mut buf = BytesMut::with_capacity(4096);
    // The first head has `request_head_timeout` from the accept, as on pingora's path.
    let mut deadline = Instant::now() + limits().request_head_timeout;
    loop {
        let head = match read_head(&mut stream, &mut buf, deadline).await {
            Read::Head(h) => h,
            Read::Closed => return,
            Read::TimedOut => {
                tracing::debug!("request head not complete within the timeout; closing");
                crate::metrics::connection_closed("head_timeout");
                return;
            }
            Read::NotMine => return hand_over(http, stream, &buf, shutdown).await,
        };
        let keepalive = head.keepalive && !*shutdown.borrow();
        let req = head.request(&buf, client);
        let is_head = req.is_head();
        let resp = http.answer(&req).await;
        buf.advance(head.len);
        let conn = h1::Plain { fd, keepalive };
        let sent = match resp.body {
            Body::Stream(_) => write_stream(conn, resp, is_head).await,
            _ => match write_direct(conn, &resp).await {
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("unexpected body".into()),
            },
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "could not write response");
            return;
        }
        if !keepalive {
            return;
        }
        if buf.is_empty() {
            // Wait for the next request's first byte for up to `idle_timeout`; its head then
            // has `request_head_timeout` to arrive whole.
            match tokio::time::timeout(limits().idle_timeout, stream.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return,
                Err(_) => {
                    crate::metrics::connection_closed("idle_timeout");
                    return;
                }
            }
        }
        // A pipelined request already read has its head deadline from now.
        deadline = Instant::now() + limits().request_head_timeout;
    }
}

/// Gives the connection to pingora's path with `read` (bytes taken from it and not answered)
/// put back in front.
async fn hand_over(http: &Arc<Http>, stream: Stream, read: &[u8], shutdown: &ShutdownWatch) {
    let stream: Stream = if read.is_empty() {
        stream
    } else {
        match stream.into_any().downcast::<L4>() {
            Ok(mut l4) => {
                l4.rewind(read);
                l4
            }
            // Only a plain stream reads bytes here, so this cannot happen; closing is safe.
            Err(_) => return,
        }
    };
    ServerApp::process_new(http, stream, shutdown).await;
}

enum Read {
    Head(Head),
    Closed,
    TimedOut,
    /// Not a request this module takes: pingora's path answers it.
    NotMine,
}

/// A request head this module takes; header values are ranges of the connection's buffer.
struct Head {
    /// Length of the head in the buffer, its blank line included.
    len: usize,
    method: &'static str,
    /// The target's path and query (without its `?`), as ranges of the buffer; ASCII.
    path: Range<usize>,
    query: Option<Range<usize>>,
    keepalive: bool,
    /// (name, value) of every field but `Connection`, as ranges of the buffer.
    fields: Vec<(Range<usize>, Range<usize>)>,
}

impl Head {
    /// The request the views see, from this head in `buf`.
    fn request(&self, buf: &[u8], client: Option<std::net::IpAddr>) -> Request {
        // The target was checked to be ASCII.
        let text = |r: &Range<usize>| std::str::from_utf8(&buf[r.clone()]).unwrap_or_default();
        request_from(
            self.method,
            text(&self.path),
            self.query.as_ref().map(text),
            |name| self.header(buf, name),
            false,
            client,
        )
    }

    /// The first field named `name`, as `HeaderMap::get` answers.
    fn header(&self, buf: &[u8], name: &http::HeaderName) -> Option<String> {
        let wanted = name.as_str().as_bytes();
        let (_, range) = self
            .fields
            .iter()
            .find(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(wanted))?;
        // What `HeaderValue::to_str` accepts: visible ASCII, space and tab.
        let v = &buf[range.clone()];
        v.iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
            .then(|| String::from_utf8_lossy(v).into_owned())
    }
}

/// The request `serve` hands the views for the head at the start of `buf`, and whether the
/// connection stays open after it; `None` where `serve` would hand the connection to pingora
/// (or read on, for an incomplete head). For benches and tests.
pub fn request_of(buf: &[u8]) -> Option<(Request, bool)> {
    match parse(buf) {
        Parsed::Head(h) => Some((h.request(buf, None), h.keepalive)),
        _ => None,
    }
}

/// Reads until `buf` holds a whole head, or the deadline passes, or the peer closes.
async fn read_head(stream: &mut Stream, buf: &mut BytesMut, deadline: Instant) -> Read {
    loop {
        if !buf.is_empty() {
            match parse(buf) {
                Parsed::Head(h) => return Read::Head(h),
                Parsed::NotMine => return Read::NotMine,
                Parsed::Partial if buf.len() >= MAX_HEAD => return Read::NotMine,
                Parsed::Partial => {}
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                // A peer that closes mid-head gets pingora's answer to what it sent, if any.
                return if buf.is_empty() {
                    Read::Closed
                } else {
                    Read::NotMine
                };
            }
            Ok(Ok(_)) => {}
            Err(_) => return Read::TimedOut,
        }
    }
}

enum Parsed {
    Head(Head),
    Partial,
    NotMine,
}

fn parse(buf: &[u8]) -> Parsed {
    let mut parsed = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut parsed);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::NotMine,
    };
    let method = match req.method {
        Some("GET") => "GET",
        Some("HEAD") => "HEAD",
        _ => return Parsed::NotMine,
    };
    let (Some(target), Some(version)) = (req.path, req.version) else {
        return Parsed::NotMine;
    };
    if !target.starts_with('/') || !target.bytes().all(is_target_byte) {
        return Parsed::NotMine;
    }
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let (path, query) = match target.split_once('?') {
        Some((_, "")) => return Parsed::NotMine,
        Some((p, q)) => (at(p.as_bytes()), Some(at(q.as_bytes()))),
        None => (at(target.as_bytes()), None),
    };
    let mut close = false;
    let mut keep = false;
    let mut host = false;
    let mut fields = Vec::with_capacity(req.headers.len());
    for f in req.headers.iter() {
        let name = f.name;
        let eq = |n: &str| name.eq_ignore_ascii_case(n);
        if eq("content-length") || eq("transfer-encoding") || eq("expect") || eq("upgrade") {
            return Parsed::NotMine;
        }
        if eq("connection") {
            for token in f.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keep = true;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::NotMine;
                }
            }
            continue;
        }
        host |= eq("host");
        fields.push((at(name.as_bytes()), at(f.value)));
    }
    let keepalive = match version {
        1 => !close,
        0 => keep && !close,
        _ => return Parsed::NotMine,
    };
    // RFC 9112 3.2: pingora's path answers an HTTP/1.1 request without Host with a 400.
    if version == 1 && !host {
        return Parsed::NotMine;
    }
    Parsed::Head(Head {
        len,
        method,
        path,
        query,
        keepalive,
        fields,
    })
}

/// RFC 3986 characters a request target may carry unescaped (unreserved, sub-delims, `:`, `@`,
/// `/`, `?`, `%`): a subset of what `http::Uri` accepts, so both paths read such a target alike.
fn is_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// A streamed body (a cold blob on its way in): the head, then each chunk as it comes; a
/// stream that ends short of its `Content-Length` closes the connection.
async fn write_stream(conn: h1::Plain, resp: Response, is_head: bool) -> Result<(), String> {
    let declared = resp.content_length();
    let mut head = Vec::with_capacity(256);
    h1::head(resp.status, &resp.headers, conn.keepalive, &mut head)?;
    let mut socket = h1::Socket::new(conn.fd);
    let Body::Stream(mut rx) = resp.body else {
        return Err("not a stream".into());
    };
    let more = !is_head && declared > 0;
    socket
        .send_all(&[&head], more)
        .await
        .map_err(|e| format!("write: {e}"))?;
    if !more {
        return Ok(());
    }
    let mut sent = 0u64;
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        sent += chunk.len() as u64;
        socket
            .send_all(&[&chunk], false)
            .await
            .map_err(|e| format!("write: {e}"))?;
    }
    if sent != declared {
        return Err(format!("stream ended after {sent} of {declared} bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::request_of;

    #[test]
    fn takes_bodiless_gets_and_heads_and_leaves_the_rest() {
        let (r, keep) =
            request_of(b"GET /v2/a/b/blobs/x?ns=docker.io HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\nauthorization: Basic eA==\r\n\r\n").unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("GET", "/v2/a/b/blobs/x")
        );
        assert_eq!(r.query.as_deref(), Some("ns=docker.io"));
        assert_eq!(r.authorization.as_deref(), Some("Basic eA=="));
        assert!(r.range.is_some() && keep);
        assert!(
            request_of(b"HEAD / HTTP/1.1\r\nHost: h\r\nAccept: text/html\r\n\r\n").is_some_and(
                |(r, _)| r
                    .page
                    .is_some_and(|p| p.accept.as_deref() == Some("text/html"))
            )
        );
        for other in [
            &b"POST /v2/ HTTP/1.1\r\nHost: h\r\n\r\n"[..],
            b"GET /v2/ HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
            b"GET /v2/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /v2/ HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
            b"GET /v2/ HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            b"GET /v2/ HTTP/1.1\r\n\r\n",
            b"GET http://h/v2/ HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /v2/a\"b HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /v2/? HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /v2/ HTTP/1.1\r\nHost: h\r\n",
            b"GET /v2/ HTTP/1.1\r\nHost : h\r\n\r\n",
        ] {
            assert!(
                request_of(other).is_none(),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let keep = |raw: &[u8]| request_of(raw).unwrap().1;
        assert!(keep(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(!keep(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n"
        ));
        assert!(!keep(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(keep(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!keep(
            b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
        ));
    }
}
