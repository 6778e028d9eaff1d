//! A fault-injecting upstream, in process. This is the one place a fake is right: no real
//! server truncates a body, resets a connection mid-stream, sends wrong bytes with a correct
//! length, stalls before its first byte, or answers 5xx/429 bursts on demand. Each path gets a
//! behaviour (or a sequence of them, one per request); every request is counted.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone)]
pub enum Behavior {
    /// A complete answer.
    Serve {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Declares the full length, sends only `send` bytes, then closes.
    Truncate { body: Vec<u8>, send: usize },
    /// Sends `send` bytes, then resets the connection (RST).
    Reset { body: Vec<u8>, send: usize },
    /// Waits before answering.
    Slow(Duration, Box<Behavior>),
    /// Sends headers and `send` bytes, pauses, then sends the rest.
    Stall {
        body: Vec<u8>,
        send: usize,
        pause: Duration,
    },
    /// Redirects to itself.
    RedirectLoop,
}

impl Behavior {
    pub fn ok(body: &[u8], content_type: &str) -> Behavior {
        Behavior::Serve {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.to_vec(),
        }
    }

    pub fn status(status: u16, headers: &[(&str, &str)]) -> Behavior {
        Behavior::Serve {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: format!("{{\"errors\":[{{\"code\":\"X\",\"message\":\"status {status}\"}}]}}")
                .into_bytes(),
        }
    }

    pub fn with_header(mut self, k: &str, v: &str) -> Behavior {
        if let Behavior::Serve { headers, .. } = &mut self {
            headers.push((k.into(), v.into()));
        }
        self
    }
}

#[derive(Default)]
struct State {
    /// Per path: the behaviours for successive requests (the last one repeats).
    routes: HashMap<String, Vec<Behavior>>,
    hits: HashMap<String, usize>,
}

pub struct FaultServer {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl FaultServer {
    pub fn start() -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state: Arc<Mutex<State>> = Arc::default();
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || handle(conn, st, port));
            }
        });
        FaultServer { port, state }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sets what `path` answers: one behaviour per request, the last one repeating.
    pub fn route(&self, path: &str, behaviors: Vec<Behavior>) {
        let mut st = self.state.lock().unwrap();
        st.routes.insert(path.to_string(), behaviors);
    }

    /// Requests seen for `path` (any method).
    pub fn hits(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

fn handle(mut conn: TcpStream, state: Arc<Mutex<State>>, port: u16) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
            break;
        }
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    let behavior = {
        let mut st = state.lock().unwrap();
        let n = {
            let c = st.hits.entry(path.clone()).or_insert(0);
            *c += 1;
            *c
        };
        st.routes
            .get(&path)
            .and_then(|bs| bs.get(n - 1).or(bs.last()).cloned())
    };
    let behavior = behavior.unwrap_or(Behavior::status(404, &[]));
    respond(&mut conn, &method, &path, behavior, port);
}

fn respond(conn: &mut TcpStream, method: &str, path: &str, b: Behavior, port: u16) {
    let head = |status: u16, headers: &[(String, String)], len: usize| {
        let mut h =
            format!("HTTP/1.1 {status} X\r\nContent-Length: {len}\r\nConnection: close\r\n");
        for (k, v) in headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("\r\n");
        h
    };
    match b {
        Behavior::Serve {
            status,
            headers,
            body,
        } => {
            let _ = conn.write_all(head(status, &headers, body.len()).as_bytes());
            if method != "HEAD" {
                let _ = conn.write_all(&body);
            }
        }
        Behavior::Truncate { body, send } => {
            let _ = conn.write_all(head(200, &[], body.len()).as_bytes());
            let _ = conn.write_all(&body[..send.min(body.len())]);
            let _ = conn.flush();
        }
        Behavior::Reset { body, send } => {
            let _ = conn.write_all(head(200, &[], body.len()).as_bytes());
            let _ = conn.write_all(&body[..send.min(body.len())]);
            let _ = conn.flush();
            std::thread::sleep(Duration::from_millis(50));
            let _ = socket_linger_zero(conn);
        }
        Behavior::Stall { body, send, pause } => {
            let _ = conn.write_all(head(200, &[], body.len()).as_bytes());
            let _ = conn.write_all(&body[..send.min(body.len())]);
            let _ = conn.flush();
            std::thread::sleep(pause);
            let _ = conn.write_all(&body[send.min(body.len())..]);
        }
        Behavior::Slow(d, inner) => {
            std::thread::sleep(d);
            respond(conn, method, path, *inner, port);
        }
        Behavior::RedirectLoop => {
            let loc = vec![(
                "Location".to_string(),
                format!("http://127.0.0.1:{port}{path}"),
            )];
            let _ = conn.write_all(head(302, &loc, 0).as_bytes());
        }
    }
}

/// Closes with SO_LINGER 0, which sends a RST instead of a FIN.
fn socket_linger_zero(conn: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Linger {
        l_onoff: i32,
        l_linger: i32,
    }
    extern "C" {
        fn setsockopt(fd: i32, level: i32, name: i32, val: *const Linger, len: u32) -> i32;
    }
    const SOL_SOCKET: i32 = 1;
    const SO_LINGER: i32 = 13;
    let l = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid fd and a correctly sized, initialised struct.
    let r = unsafe {
        setsockopt(
            conn.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            &l,
            std::mem::size_of::<Linger>() as u32,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
