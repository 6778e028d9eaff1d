//! pingora glue, and the only module that names pingora types: one listening service whose
//! `HttpServerApp` reads a request, hands method, path, query and the few headers the views use
//! to `App::handle`, and writes the response back.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::listening::Service;

use crate::app::App;
use crate::http::{Request, Response};

/// Seconds a SIGTERM waits for in-flight requests (pingora's default is 300).
const GRACE_SECONDS: u64 = 10;

struct Http {
    app: Arc<App>,
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
            }
        };
        let resp = self.app.handle(&req).await;
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
    let mut head = ResponseHeader::build(resp.status, Some(resp.headers.len() + 2))?;
    for (k, v) in &resp.headers {
        head.insert_header(*k, v.as_str())?;
    }
    let empty = resp.body.is_empty();
    session.write_response_header(Box::new(head)).await?;
    if !empty {
        session.write_response_body(resp.body, true).await?;
    }
    session.finish_body().await
}

/// Runs the server until a signal stops it. Never returns.
pub fn run(app: App) -> ! {
    let listen = app.config().listen.to_string();
    let conf = ServerConf {
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        grace_period_seconds: Some(GRACE_SECONDS),
        graceful_shutdown_timeout_seconds: Some(GRACE_SECONDS),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = Service::new("chartbridge".to_string(), Http { app: Arc::new(app) });
    service.add_tcp(&listen);
    server.add_service(service);
    tracing::info!(%listen, "chartbridge listening");
    server.run_forever()
}
