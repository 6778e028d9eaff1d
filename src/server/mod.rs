//! pingora glue, and the only module that names pingora types: one listening service whose
//! `HttpServerApp` reads a request, hands method, path, query and the few headers the views use
//! to `App::handle`, and writes the response back. Plain HTTP/1 connections are read by
//! `plain` first, which hands pingora whatever it does not take.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::http::ResponseHeader;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_READ_BUFFER_SIZE};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::listening::Service;

mod h1;
mod plain;

pub use plain::request_of;

use crate::app::App;
use bytes::Bytes;

use crate::http::{parse_range_header, Body, Request, Response};

struct Http {
    app: Arc<App>,
    /// The optional metrics listener answers only these paths.
    only: Option<&'static [&'static str]>,
}

fn header(session: &ServerSession, name: &http::HeaderName) -> Option<String> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
const SEC_FETCH_SITE: http::HeaderName = http::HeaderName::from_static("sec-fetch-site");

/// The request the views see, from a head read by either path: `header` answers a field by
/// name (the first of repeated fields; visible ASCII only, else `None`).
fn request_from(
    method: &str,
    path: &str,
    query: Option<&str>,
    header: impl Fn(&http::HeaderName) -> Option<String>,
    secure: bool,
    client: Option<std::net::IpAddr>,
) -> Request {
    use http::header as h;
    Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.map(str::to_string),
        range: header(&h::RANGE).and_then(|r| parse_range_header(&r)),
        if_range: header(&h::IF_RANGE),
        if_none_match: header(&h::IF_NONE_MATCH),
        authorization: header(&h::AUTHORIZATION),
        request_id: header(&X_REQUEST_ID),
        page: (path == "/" || path == "/-" || path.starts_with("/-/")).then(|| {
            Box::new(crate::http::PageHeaders {
                accept: header(&h::ACCEPT),
                host: header(&h::HOST),
                origin: header(&h::ORIGIN),
                sec_fetch_site: header(&SEC_FETCH_SITE),
                secure,
            })
        }),
        client,
    }
}

/// What became of one request on a connection.
enum Next {
    /// Answered; the connection may carry another request.
    Reuse(Box<ServerSession>),
    Close,
}

impl Http {
    /// The answer to a request read by either path (the metrics listener answers only its
    /// own paths).
    async fn answer(&self, req: &Request) -> Response {
        match self.only {
            Some(paths) if !paths.contains(&req.path.as_str()) => {
                Response::new(404).with_body("text/plain", Bytes::from_static(b"not here\n"), false)
            }
            _ => self.app.handle(req).await,
        }
    }

    /// Reads one request head within `request_head_timeout`, answers it, and hands the session
    /// back when the connection can carry another.
    async fn one(&self, mut session: ServerSession, shutdown: &ShutdownWatch) -> Next {
        let limits = self.app.limits();
        match tokio::time::timeout(limits.request_head_timeout, session.read_request()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Next::Close,
            Err(_) => {
                // A client trickling its headers holds a connection and a descriptor: cut it.
                tracing::debug!("request head not complete within the timeout; closing");
                crate::metrics::connection_closed("head_timeout");
                session.shutdown().await;
                return Next::Close;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "could not read request");
                // A header over pingora's caps (1 MiB, 256 fields) or malformed gets a clear
                // 400 before the connection closes, as pingora's own proxy does.
                if matches!(e.etype, pingora::ErrorType::InvalidHTTPHeader) {
                    let body = Bytes::from_static(
                        b"bad request header: malformed, or over 1 MiB or 256 fields\n",
                    );
                    let _ = session.respond_error_with_body(400, body).await;
                }
                session.shutdown().await;
                return Next::Close;
            }
        }
        // pingora has read the client's wish (HTTP/1.1 unless `Connection: close`, HTTP/1.0
        // only with `Connection: keep-alive`); the idle wait is ours.
        let wanted = session.get_keepalive().is_some();
        session.set_keepalive(if *shutdown.borrow() || !wanted {
            None
        } else {
            Some(limits.idle_timeout.as_secs().max(1))
        });
        let h = session.req_header();
        // RFC 9112 3.2: a server must answer 400 to an HTTP/1.1 request without Host.
        let missing_host =
            h.version == http::Version::HTTP_11 && h.headers.get(http::header::HOST).is_none();
        let mut req = request_from(
            h.method.as_str(),
            h.uri.path(),
            h.uri.query(),
            |name| header(&session, name),
            session.digest().is_some_and(|d| d.ssl_digest.is_some()),
            session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
        );
        if let Some(page) = req.page.as_mut().filter(|p| p.host.is_none()) {
            page.host = h.uri.authority().map(|a| a.to_string());
        }
        let resp = if missing_host {
            session.set_keepalive(None);
            Response::new(400).with_body(
                "text/plain",
                Bytes::from_static(b"an HTTP/1.1 request needs a Host header\n"),
                false,
            )
        } else {
            self.answer(&req).await
        };
        if let Err(e) = write(&mut session, resp).await {
            tracing::debug!(error = %e, "could not write response");
            return Next::Close;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        let Ok(Some(reusable)) = session.finish().await else {
            return Next::Close;
        };
        let (mut stream, pipelined) = reusable.into_parts();
        match pipelined.filter(|p| !p.is_empty()) {
            // The client sent its next request already (pipelining): answer it in order.
            Some(prefix) => {
                let mut next = ServerSession::new_http1(stream);
                settings.apply_to_session(&mut next);
                next.set_pipelined_prefix(prefix);
                Next::Reuse(Box::new(next))
            }
            None => {
                // Wait for the next request's first byte for up to `idle_timeout`; its head
                // then has `request_head_timeout` to arrive whole. A stream that cannot be
                // peeked (TLS) lets the head timeout run from now, after the idle wait.
                let mut first = [0u8; 1];
                let peeked =
                    tokio::time::timeout(limits.idle_timeout, stream.try_peek(&mut first)).await;
                match peeked {
                    Ok(Ok(_)) => {}
                    Err(_) => {
                        crate::metrics::connection_closed("idle_timeout");
                        return Next::Close;
                    }
                    Ok(Err(_)) => return Next::Close,
                }
                let mut next = ServerSession::new_http1(stream);
                settings.apply_to_session(&mut next);
                Next::Reuse(Box::new(next))
            }
        }
    }
}

#[async_trait]
impl HttpServerApp for Http {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // HTTP/1 keep-alive is looped here rather than by pingora, so the wait for a next
        // request and the time to read its head are bounded separately.
        let mut session = session;
        loop {
            session.set_pipelining_enabled(true);
            match self.one(session, shutdown).await {
                Next::Reuse(next) => session = *next,
                Next::Close => return None,
            }
        }
    }
}

/// Counts open connections and refuses those over `limits.max_connections` with a 503, so a
/// flood of idle or slow clients cannot take every descriptor the process has.
struct Connections {
    http: Arc<Http>,
    open: AtomicUsize,
    /// The most the open-file limit leaves room for.
    ceiling: usize,
    last_warned: Mutex<Option<Instant>>,
}

/// Decrements the open-connection count when a connection ends, however it ends.
struct Open<'a>(&'a AtomicUsize);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        let n = self.0.fetch_sub(1, Ordering::AcqRel) - 1;
        crate::metrics::open_connections(n);
    }
}

#[async_trait]
impl ServerApp for Connections {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let n = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let _open = Open(&self.open);
        crate::metrics::open_connections(n);
        let max = self.http.app.limits().max_connections.min(self.ceiling);
        if n > max {
            self.refuse(stream, max).await;
            return None;
        }
        // A plain connection is read by `plain`, which hands anything else (TLS, HTTP/2, the
        // requests it does not take) to pingora's HTTP handling.
        plain::serve(&self.http, stream, shutdown).await;
        None
    }
}

impl Connections {
    async fn refuse(&self, mut stream: Stream, max: usize) {
        use tokio::io::AsyncWriteExt;
        crate::metrics::connection_closed("over_limit");
        let warn = {
            let mut last = self.last_warned.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if warn {
            tracing::warn!(
                max_connections = max,
                "connection limit reached: refusing new connections with 503 \
                 (limits.max_connections; chartbridge_connections_closed_total{{reason=\"over_limit\"}} counts them)"
            );
        }
        let body = "too many connections; try again shortly\n";
        let resp = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }
}

/// Raises the soft open-file limit to the hard limit (systemd and containers often start
/// processes at 1024) and returns it.
fn raise_open_files() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// The response head as pingora writes it, built from `http` parts: names from constants (no
/// parsing), values without copying, and no case map (names go out in their canonical case).
pub fn response_head(
    status: u16,
    headers: Vec<(&'static str, std::borrow::Cow<'static, str>)>,
) -> pingora::Result<ResponseHeader> {
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = http::StatusCode::from_u16(status)
        .map_err(|_| abort(format!("invalid status {status}")))?;
    parts.headers.reserve(headers.len() + 2);
    for (k, v) in headers {
        let value = match v {
            std::borrow::Cow::Borrowed(s) => {
                http::HeaderValue::from_maybe_shared(Bytes::from_static(s.as_bytes()))
            }
            std::borrow::Cow::Owned(s) => {
                http::HeaderValue::from_maybe_shared(Bytes::from(s.into_bytes()))
            }
        }
        .map_err(|_| abort(format!("invalid value for header {k}")))?;
        parts.headers.append(header_name(k)?, value);
    }
    Ok(ResponseHeader::from(parts))
}

/// The names the views use, as constants; any other is parsed.
fn header_name(name: &'static str) -> pingora::Result<http::HeaderName> {
    use http::header as h;
    const DOCKER_CONTENT_DIGEST: http::HeaderName =
        http::HeaderName::from_static("docker-content-digest");
    const DOCKER_DISTRIBUTION_API_VERSION: http::HeaderName =
        http::HeaderName::from_static("docker-distribution-api-version");
    Ok(match name {
        "Content-Type" => h::CONTENT_TYPE,
        "Content-Length" => h::CONTENT_LENGTH,
        "Accept-Ranges" => h::ACCEPT_RANGES,
        "ETag" => h::ETAG,
        "Cache-Control" => h::CACHE_CONTROL,
        "Docker-Content-Digest" => DOCKER_CONTENT_DIGEST,
        "Docker-Distribution-API-Version" => DOCKER_DISTRIBUTION_API_VERSION,
        "X-Request-Id" => X_REQUEST_ID,
        other => http::HeaderName::from_bytes(other.as_bytes())
            .map_err(|_| abort(format!("invalid header name {other}")))?,
    })
}

async fn write(session: &mut ServerSession, resp: Response) -> pingora::Result<()> {
    if let Some(conn) = h1::plain(session) {
        if let Some(sent) = write_direct(conn, &resp).await {
            return sent;
        }
    }
    let declared = resp.content_length();
    let mut resp = resp;
    let head = response_head(resp.status, std::mem::take(&mut resp.headers))?;
    session.write_response_header(Box::new(head)).await?;
    match resp.body {
        Body::Full(b) | Body::Mapped { bytes: b, .. } if b.is_empty() => {}
        Body::Full(b) | Body::Mapped { bytes: b, .. } => {
            session.write_response_body(b, true).await?
        }
        Body::File {
            mut file,
            offset,
            len,
        } => {
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(|e| abort(format!("seek: {e}")))?;
            let mut left = len;
            while left > 0 {
                let mut buf = vec![0u8; CHUNK.min(left as usize)];
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(|e| abort(format!("read: {e}")))?;
                if n == 0 {
                    return Err(abort("cached blob shorter than its length".into()));
                }
                buf.truncate(n);
                left -= n as u64;
                session
                    .write_response_body(Bytes::from(buf), left == 0)
                    .await?;
            }
        }
        Body::Stream(mut rx) => {
            let mut sent = 0u64;
            while let Some(chunk) = rx.recv().await {
                let chunk = chunk.map_err(|e| abort(e.to_string()))?;
                sent += chunk.len() as u64;
                session.write_response_body(chunk, false).await?;
            }
            if sent != declared {
                return Err(abort(format!(
                    "stream ended after {sent} of {declared} bytes"
                )));
            }
        }
    }
    session.finish_body().await
}

/// A whole response on a plain HTTP/1 connection, written on its descriptor (see `h1`); `None`
/// for a streamed body, which takes pingora's path.
async fn write_direct(conn: h1::Plain, resp: &Response) -> Option<pingora::Result<()>> {
    let (bytes, file): (&[u8], _) = match &resp.body {
        Body::Full(b) => (b, None),
        Body::Mapped { bytes, fd, offset } => {
            (&[], Some((fd.as_raw_fd(), *offset, bytes.len() as u64)))
        }
        Body::File { file, offset, len } => (&[], Some((file.as_raw_fd(), *offset, *len))),
        Body::Stream(_) => return None,
    };
    let mut head = Vec::with_capacity(256);
    if let Err(e) = h1::head(resp.status, &resp.headers, conn.keepalive, &mut head) {
        return Some(Err(abort(e)));
    }
    let mut socket = h1::Socket::new(conn.fd);
    let sent = async {
        // A file's bytes follow the head in the same segments (`MSG_MORE`).
        let more = file.is_some_and(|(_, _, len)| len > 0);
        socket.send_all(&[&head, bytes], more).await?;
        if let Some((fd, offset, len)) = file {
            socket.send_file(fd, offset, len).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    Some(sent.await.map_err(|e| abort(format!("write: {e}"))))
}

/// Per-connection write buffer of pingora's path (TLS, HTTP/2, streamed bodies): header plus
/// body up to this size go out in one send.
const WRITE_BUFFER: usize = 64 << 10;

/// Reading from a file, a blob this big at a time.
const CHUNK: usize = 256 << 10;

/// An error that makes the server drop the connection mid-body.
fn abort(why: String) -> Box<pingora::Error> {
    pingora::Error::explain(pingora::ErrorType::WriteError, why)
}

/// Reads the configuration again for a reload (the `--config` file, with the command line's
/// overrides), or says why it cannot.
pub type Reloader = Box<dyn Fn() -> std::result::Result<crate::config::Config, String> + Send>;

/// Runs after the configuration was loaded (at start, and after each accepted reload): the
/// command line uses it to warm the cache from the configuration's `warm:` list.
pub type AfterLoad = Box<dyn Fn(&Arc<App>) + Send>;

/// On SIGHUP, reloads the upstreams through `reload` (see `App::reload`), logging and counting
/// the outcome; a refused reload keeps the running configuration. The handler is installed
/// before this returns, so a SIGHUP never falls to the default action (exit).
fn reload_on_sighup(
    app: Arc<App>,
    reload: Option<Reloader>,
    after: Option<AfterLoad>,
    certs: Option<Arc<crate::tls::Certificates>>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let mut hup = {
        let _ctx = rt.enter();
        signal(SignalKind::hangup())?
    };
    std::thread::Builder::new()
        .name("chartbridge-sighup".into())
        .spawn(move || {
            rt.block_on(async move {
                while hup.recv().await.is_some() {
                    // Reading the file checks the TLS pair too: one that does not parse or
                    // match refuses the whole reload, and the running pair stays.
                    let outcome = match &reload {
                        None => Err("no --config file to read: the embedded default configuration cannot change".to_string()),
                        Some(read) => read().and_then(|c| {
                            let material = c.listen_tls.as_ref().map(|t| t.material.clone());
                            let summary = app.reload(c).map_err(|e| e.to_string())?;
                            match (&certs, material) {
                                (Some(certs), Some(m)) => {
                                    let serial = m.serial.clone();
                                    certs.install(m)?;
                                    Ok(format!("{summary}; TLS certificate serial {serial}"))
                                }
                                _ => Ok(summary),
                            }
                        }),
                    };
                    crate::metrics::config_reload(outcome.is_ok());
                    match outcome {
                        Ok(summary) => {
                            tracing::info!(%summary, "configuration reloaded");
                            if let Some(after) = &after {
                                after(&app);
                            }
                        }
                        Err(error) => tracing::error!(%error, "configuration not reloaded"),
                    }
                }
            })
        })?;
    Ok(())
}

/// Runs the server until a signal stops it (SIGHUP reloads through `reload`, then calls
/// `after`, which also runs once at start). Never returns.
pub fn run(app: App, reload: Option<Reloader>, after: Option<AfterLoad>) -> ! {
    let conf = ServerConf {
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        // SIGTERM: stop accepting, let in-flight requests run for the grace period (pingora's
        // default is 300 s), then give the runtimes a few seconds to wind down.
        grace_period_seconds: Some(app.config().shutdown_grace.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(5),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let metrics_listen = app.config().metrics_listen;
    let listen = app.config().listen;
    let listen_tls = app.config().listen_tls.clone();
    let certs = listen_tls
        .as_ref()
        .map(|t| crate::tls::Certificates::new(t.material.clone()));
    let app = Arc::new(app);
    if let Some(after) = &after {
        after(&app);
    }
    if let Err(e) = reload_on_sighup(app.clone(), reload, after, certs.clone()) {
        tracing::error!(error = %e, "cannot watch SIGHUP; configuration reload is off");
    }
    // Descriptors beyond connections: cache files, upstream connections, the listeners, and
    // the memory tier's memfds.
    let open_files = raise_open_files();
    let memfds = crate::cache::memfd_limit() as u64;
    let ceiling =
        usize::try_from(open_files.saturating_sub(256 + memfds).max(64)).unwrap_or(usize::MAX);
    let max = app.limits().max_connections;
    if max > ceiling {
        tracing::warn!(
            max_connections = max,
            open_files,
            ceiling,
            "limits.max_connections is over what the open-file limit allows; using {ceiling}"
        );
    }
    let mut service = Service::new(
        "chartbridge".to_string(),
        Connections {
            http: Arc::new(Http {
                app: app.clone(),
                only: None,
            }),
            open: AtomicUsize::new(0),
            ceiling,
            last_warned: Mutex::new(None),
        },
    );
    // Where pingora writes (TLS, streamed bodies, its own 400s), a write buffer big enough for
    // the header and a small blob or manifest lets them leave in one send; pingora's default
    // (one MSS) sends the header on its own.
    let buffers = L4BufferSettings::new(DEFAULT_L4_READ_BUFFER_SIZE, WRITE_BUFFER);
    if let Some(addr) = listen {
        service.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers));
        tracing::info!(%addr, "chartbridge listening (HTTP)");
    }
    if let (Some(t), Some(certs)) = (&listen_tls, &certs) {
        // The pair comes from `certs` at each handshake (a reload swaps it); TLS 1.2 and 1.3;
        // ALPN offers h2 and http/1.1.
        let mut settings =
            TlsSettings::intermediate("", "").unwrap_or_else(|e| panic!("TLS settings: {e}"));
        settings.set_cert_resolver(certs.resolver());
        if let Some(v) = certs.client_verifier() {
            settings.set_client_cert_verifier(v);
        }
        settings.enable_h2();
        service.add_listener(
            ListenerConfig::tcp(t.addr.to_string())
                .tls(settings)
                .l4_buffer(buffers),
        );
        tracing::info!(
            addr = %t.addr,
            serial = %certs.serial(),
            client_certificates = t.client_ca_file.is_some(),
            "chartbridge listening (HTTPS)"
        );
    }
    server.add_service(service);
    if let Some(addr) = metrics_listen {
        let mut m = Service::new(
            "chartbridge-metrics".to_string(),
            Connections {
                http: Arc::new(Http {
                    app,
                    only: Some(&["/metrics", "/healthz", "/readyz"]),
                }),
                open: AtomicUsize::new(0),
                ceiling,
                last_warned: Mutex::new(None),
            },
        );
        m.add_tcp(&addr.to_string());
        server.add_service(m);
        tracing::info!(%addr, "metrics listening");
    }
    server.run_forever()
}
