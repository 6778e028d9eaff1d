//! pingora glue, and the only module that names pingora types: one listening service whose
//! `HttpServerApp` reads a request, hands method, path, query and the few headers the views use
//! to `App::handle`, and writes the response back.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_READ_BUFFER_SIZE};
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::listening::Service;

use crate::app::App;
use bytes::Bytes;

use crate::http::{Body, Request, Response};

struct Http {
    app: Arc<App>,
    /// The optional metrics listener answers only these paths.
    only: Option<&'static [&'static str]>,
}

fn header(session: &ServerSession, name: &str) -> Option<String> {
    session
        .get_header(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[async_trait]
impl HttpServerApp for Http {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "could not read request");
                // A header over pingora's caps (1 MiB, 256 fields) or malformed gets a clear
                // 400 before the connection closes, as pingora's own proxy does.
                if matches!(e.etype, pingora::ErrorType::InvalidHTTPHeader) {
                    let body = Bytes::from_static(
                        b"bad request header: malformed, or over 1 MiB or 256 fields\n",
                    );
                    let _ = session.respond_error_with_body(400, body).await;
                }
                let _ = session.shutdown().await;
                return None;
            }
        }
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let req = {
            let h = session.req_header();
            Request {
                method: h.method.as_str().to_string(),
                path: h.uri.path().to_string(),
                query: h.uri.query().map(str::to_string),
                range: header(&session, "range"),
                if_none_match: header(&session, "if-none-match"),
                authorization: header(&session, "authorization"),
            }
        };
        let resp = match self.only {
            Some(paths) if !paths.contains(&req.path.as_str()) => {
                Response::new(404).with_body("text/plain", Bytes::from_static(b"not here\n"), false)
            }
            _ => self.app.handle(&req).await,
        };
        if let Err(e) = write(&mut session, resp).await {
            tracing::debug!(error = %e, "could not write response");
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(s) => s.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(_) => None,
        }
    }
}

async fn write(session: &mut ServerSession, resp: Response) -> pingora::Result<()> {
    let declared = resp.content_length();
    let mut head = ResponseHeader::build(resp.status, Some(resp.headers.len() + 2))?;
    for (k, v) in &resp.headers {
        head.insert_header(*k, v.as_str())?;
    }
    session.write_response_header(Box::new(head)).await?;
    match resp.body {
        Body::Full(b) if b.is_empty() => {}
        Body::Full(b) => session.write_response_body(b, true).await?,
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

/// Per-connection write buffer: header plus body up to this size go out in one send.
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

/// On SIGHUP, reloads the upstreams through `reload` (see `App::reload`), logging and counting
/// the outcome; a refused reload keeps the running configuration. The handler is installed
/// before this returns, so a SIGHUP never falls to the default action (exit).
fn reload_on_sighup(app: Arc<App>, reload: Option<Reloader>) -> std::io::Result<()> {
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
                    let outcome = match &reload {
                        None => Err("no --config file to read: the embedded default configuration cannot change".to_string()),
                        Some(read) => read().and_then(|c| app.reload(c).map_err(|e| e.to_string())),
                    };
                    crate::metrics::config_reload(outcome.is_ok());
                    match outcome {
                        Ok(summary) => tracing::info!(%summary, "configuration reloaded"),
                        Err(error) => tracing::error!(%error, "configuration not reloaded"),
                    }
                }
            })
        })?;
    Ok(())
}

/// Runs the server until a signal stops it (SIGHUP reloads through `reload`). Never returns.
pub fn run(app: App, reload: Option<Reloader>) -> ! {
    let listen = app.config().listen.to_string();
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
    let app = Arc::new(app);
    if let Err(e) = reload_on_sighup(app.clone(), reload) {
        tracing::error!(error = %e, "cannot watch SIGHUP; configuration reload is off");
    }
    let mut service = Service::new(
        "chartbridge".to_string(),
        Http {
            app: app.clone(),
            only: None,
        },
    );
    // A write buffer big enough for the header and a small blob or manifest lets them leave in
    // one send; pingora's default (one MSS) sends the header on its own.
    service.add_listener(
        ListenerConfig::tcp(listen.as_str()).l4_buffer(L4BufferSettings::new(
            DEFAULT_L4_READ_BUFFER_SIZE,
            WRITE_BUFFER,
        )),
    );
    server.add_service(service);
    if let Some(addr) = metrics_listen {
        let mut m = Service::new(
            "chartbridge-metrics".to_string(),
            Http {
                app,
                only: Some(&["/metrics", "/healthz", "/readyz"]),
            },
        );
        m.add_tcp(&addr.to_string());
        server.add_service(m);
        tracing::info!(%addr, "metrics listening");
    }
    tracing::info!(%listen, "chartbridge listening");
    server.run_forever()
}
