//! Direct HTTP/1 responses on plain TCP connections.
//!
//! On a plain connection chartbridge writes a complete response itself (after `plain` or
//! pingora read the request), on the connection's descriptor: the head and a bytes body leave
//! in one `sendmsg` without first being copied into pingora's write buffer, and a blob from the
//! disk tier goes out with `sendfile` from the page cache after its head (`MSG_MORE` keeps them
//! in the same segments). When the socket is full, the wait for it to drain comes from tokio's
//! reactor (a duplicate of the descriptor registered for writability), never a busy loop. TLS and HTTP/2 connections keep pingora's buffered
//! path, and so do streamed bodies of requests pingora read.

use std::borrow::Cow;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use pingora::protocols::http::ServerSession;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A plain (not TLS) HTTP/1 connection, which this module may write on.
pub struct Plain {
    pub fd: RawFd,
    /// The connection stays open after this response.
    pub keepalive: bool,
}

pub fn plain(session: &ServerSession) -> Option<Plain> {
    let ServerSession::H1(s) = session else {
        return None;
    };
    // `as_any` on the boxed trait object itself, so the downcast sees the concrete stream.
    let l4 = (**s.stream())
        .as_any()
        .downcast_ref::<pingora::protocols::l4::stream::Stream>()?;
    let fd = l4.as_raw_fd();
    (fd >= 0).then(|| Plain {
        fd,
        keepalive: s.will_keepalive(),
    })
}

/// Appends an HTTP/1.1 response head: the status line, the response's headers, `Date` and
/// `Connection`. A name or value that would break the framing (CR, LF, other controls) is an
/// error, not written.
pub fn head(
    status: u16,
    headers: &[(&'static str, Cow<'static, str>)],
    keepalive: bool,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let code =
        http::StatusCode::from_u16(status).map_err(|_| format!("invalid status {status}"))?;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(code.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name.is_empty() || !name.bytes().all(is_token) {
            return Err(format!("invalid header name {name:?}"));
        }
        if !value.bytes().all(is_field_byte) {
            return Err(format!("invalid value for header {name}"));
        }
        line(out, name.as_bytes(), value.as_bytes());
    }
    let date = pingora::protocols::http::date::get_cached_date();
    line(out, b"Date", date.as_bytes());
    let connection: &[u8] = if keepalive { b"keep-alive" } else { b"close" };
    line(out, b"Connection", connection);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// RFC 9110 `tchar`.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What `http::HeaderValue` accepts: visible bytes, space and tab, obs-text; no CR, LF or NUL.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// A socket descriptor owned by pingora's stream, written to directly. The registration for
/// readiness (on a duplicate) is made only the first time the socket is full.
pub struct Socket {
    fd: RawFd,
    ready: Option<AsyncFd<OwnedFd>>,
}

impl Socket {
    pub fn new(fd: RawFd) -> Self {
        Socket { fd, ready: None }
    }

    /// Sends all of `parts` in order; `more` when more bytes of this response follow.
    pub async fn send_all(&mut self, parts: &[&[u8]], more: bool) -> io::Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut sent = 0;
        while sent < total {
            match send_from(self.fd, parts, sent, more) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends `len` bytes of `file` from `offset` with `sendfile`.
    pub async fn send_file(&mut self, file: RawFd, offset: u64, len: u64) -> io::Result<()> {
        let mut off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        let mut left = len;
        while left > 0 {
            // At most this much per call: a call that reads from the disk holds the worker.
            let want = left.min(SENDFILE_STEP) as usize;
            // SAFETY: both descriptors are open for the call; `off` is a valid pointer.
            let n = unsafe { libc::sendfile(self.fd, file, &mut off, want) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => self.writable().await?,
                    io::ErrorKind::Interrupted => {}
                    _ => return Err(e),
                }
            } else if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "cached blob shorter than its length",
                ));
            } else {
                left -= n as u64;
            }
        }
        Ok(())
    }

    /// Waits until the socket can take more bytes.
    async fn writable(&mut self) -> io::Result<()> {
        let ready = match &mut self.ready {
            Some(r) => r,
            slot => {
                // The original descriptor is registered with the reactor by its tokio stream,
                // and one epoll set takes a descriptor once: register a duplicate of it.
                // SAFETY: F_DUPFD_CLOEXEC on an open descriptor returns a new one we own.
                let dup = unsafe { libc::fcntl(self.fd, libc::F_DUPFD_CLOEXEC, 0) };
                if dup < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: `dup` was just created and nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(dup) };
                // SAFETY: an `OwnedFd` stays open, and the same descriptor, until dropped.
                let registered =
                    unsafe { AsyncFd::register_with_interest(owned, Interest::WRITABLE) };
                slot.insert(registered.map_err(|e| io::Error::other(e.to_string()))?)
            }
        };
        let mut guard = ready.writable().await?;
        // The caller tries again at once and comes back here only on a new EAGAIN, so clearing
        // the readiness now cannot lose a wake-up.
        guard.clear_ready();
        Ok(())
    }
}

/// Largest `sendfile` per call.
const SENDFILE_STEP: u64 = 1 << 20;

/// One `sendmsg` of what is left of `parts` after the first `skip` bytes.
fn send_from(fd: RawFd, parts: &[&[u8]], skip: usize, more: bool) -> io::Result<usize> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; 4];
    let mut n = 0;
    let mut skip = skip;
    for p in parts {
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        if n == iov.len() {
            break;
        }
        let rest = &p[skip..];
        skip = 0;
        iov[n] = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        n += 1;
    }
    // SAFETY: a zeroed msghdr is valid; it points at `iov`, which outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = n as _;
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    // SAFETY: `fd` is open; `msg` points at buffers valid for the call.
    let r = unsafe { libc::sendmsg(fd, &msg, flags) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_is_framed_and_refuses_injection() {
        let mut out = Vec::new();
        head(
            200,
            &[
                ("Content-Type", Cow::Borrowed("text/plain")),
                ("Content-Length", Cow::Owned("5".into())),
            ],
            true,
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nDate: "
        ));
        assert!(text.ends_with("\r\nConnection: keep-alive\r\n\r\n"));

        let mut out = Vec::new();
        let bad = head(
            200,
            &[("X-A", Cow::Borrowed("a\r\nSet-Cookie: x"))],
            false,
            &mut out,
        );
        assert!(bad.is_err());
        assert!(head(200, &[("X A", Cow::Borrowed("a"))], false, &mut Vec::new()).is_err());
        assert!(head(99, &[], false, &mut Vec::new()).is_err());
        let mut out = Vec::new();
        head(404, &[], false, &mut out).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("404 Not Found\r\n"));
    }

    #[tokio::test]
    async fn sends_parts_and_files_through_a_full_socket() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            // Let the sender fill the socket before reading.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.unwrap();
            all
        });
        let (server, _) = listener.accept().await.unwrap();
        let big: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, &big).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut sock = Socket::new(server.as_raw_fd());
        sock.send_all(&[b"head;", &big[..3 << 20]], true)
            .await
            .unwrap();
        sock.send_file(file.as_raw_fd(), 3 << 20, 5 << 20)
            .await
            .unwrap();
        let short = sock.send_file(file.as_raw_fd(), 8 << 20, 1).await;
        assert_eq!(short.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        drop(sock);
        drop(server);
        let got = client.await.unwrap();
        assert_eq!(&got[..5], b"head;");
        assert!(got[5..] == big[..], "bytes arrive whole and in order");
    }
}
