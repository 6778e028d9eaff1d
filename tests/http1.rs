//! The plain HTTP/1 reader (`server::plain`) and its hand-over to pingora: requests it takes
//! are answered as pingora's path answers them; everything else (bodies, big or many-field
//! heads, targets outside RFC 3986, absolute form) goes to pingora with the bytes already read
//! put back, on the same connection, and nothing hidden in a body is taken for a request.

use crate::support::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Writes `parts` with `gap` between them and reads until the server closes; also says whether
/// it closed (rather than the read timing out).
fn exchange(port: u16, parts: &[&[u8]], gap: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(gap);
        }
        s.write_all(p).unwrap();
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn statuses(out: &str) -> Vec<&str> {
    out.match_indices("HTTP/1.")
        .map(|(i, _)| &out[i + 9..i + 12])
        .collect()
}

#[test]
fn plain_reader_answers_its_requests_and_hands_the_rest_to_pingora() {
    let charts = ChartRepo::new(&[("demo", "0.1.0")]);
    charts.index(None);
    let web = nginx(charts.dir.path());
    let bridge = chartbridge(&helm_upstream("up", &web.url()));
    let port = bridge.port;
    let one = |raw: &[u8]| exchange(port, &[raw], Duration::ZERO);

    // A request hidden in a POST body is not answered: the POST goes to pingora, which reads
    // its body; the request after it is answered on the same connection.
    let hidden = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    raw.extend_from_slice(
        format!(
            "POST /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            hidden.len()
        )
        .as_bytes(),
    );
    raw.extend_from_slice(hidden);
    raw.extend_from_slice(
        b"GET /v2/up/demo/tags/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let (out, closed) = one(&raw);
    assert!(closed, "{out}");
    let st = statuses(&out);
    assert_eq!(
        st.len(),
        3,
        "three answers, none for the hidden request: {out}"
    );
    assert_eq!((st[0], st[2]), ("200", "200"), "{out}");
    assert!(
        out.find("ok\n").unwrap() < out.find("\"tags\"").unwrap(),
        "{out}"
    );

    // The same with a chunked body.
    let (out, closed) = one(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          1e\r\nGET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n\
          GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(closed, "{out}");
    assert!(!out.contains("{}"), "the chunk is not a request: {out}");

    // A head over 64 KiB and one of 100 fields: pingora's caps (1 MiB, 256) decide.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(70_000)
    );
    let (out, _) = one(big.as_bytes());
    assert_eq!(statuses(&out), ["200"], "{}", &out[..out.len().min(200)]);
    let many: String = (0..100).map(|i| format!("X-F{i}: {i}\r\n")).collect();
    let (out, _) = one(format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n"
    )
    .as_bytes());
    assert_eq!(statuses(&out), ["200"], "{out}");

    // HTTP/1.0: kept alive only when asked; the second answer closes.
    let (out, closed) = one(
        b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n",
    );
    assert!(closed, "{out}");
    assert_eq!(statuses(&out), ["200", "200"], "{out}");
    let lower = out.to_ascii_lowercase();
    let second = lower.rfind("http/1.1 200").unwrap();
    assert!(lower[..second].contains("connection: keep-alive"), "{out}");
    assert!(lower[second..].contains("connection: close"), "{out}");

    // A head in three pieces, and a pipelined second request split across writes.
    let (out, _) = exchange(
        port,
        &[
            b"GET /heal",
            b"thz HTTP/1.1\r\nHo",
            b"st: x\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: x\r\nConn",
            b"ection: close\r\n\r\n",
        ],
        Duration::from_millis(100),
    );
    assert_eq!(statuses(&out), ["200", "200"], "{out}");
    assert!(out.find("ok\n").unwrap() < out.find("{}").unwrap(), "{out}");

    // Targets the reader leaves to pingora: outside RFC 3986, and absolute form.
    let (out, _) = one(b"GET /v2/a\"b/tags/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(statuses(&out), ["400"], "{out}");
    assert!(out.contains("NAME_INVALID"), "{out}");
    let (out, _) = one(b"GET http://x/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(statuses(&out), ["200"], "{out}");

    // Field names in any case; of a repeated field the first counts (as `HeaderMap::get`).
    let (out, _) = one(
        b"GET /v2/ HTTP/1.1\r\nhost: x\r\nx-request-id: first\r\nX-Request-Id: second\r\n\
          connection: close\r\n\r\n",
    );
    assert_eq!(statuses(&out), ["200"], "{out}");
    assert!(out.contains("X-Request-Id: first\r\n"), "{out}");
    // A value that is not visible ASCII is ignored, as `HeaderValue::to_str` would.
    let (out, _) = one(
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Request-Id: caf\u{e9}\r\nConnection: close\r\n\r\n"
            .as_bytes(),
    );
    assert!(!out.contains("caf"), "{out}");

    // A blob, whole and by range, through the reader.
    let archive = charts.bytes("demo-0.1.0.tgz");
    let d = chartbridge::ids::Digest::of(&archive);
    let (out, _) = one(
        format!("GET /v2/up/demo/blobs/{d} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(statuses(&out), ["206"], "{out}");
    assert!(
        out.contains(&format!("Content-Range: bytes 0-9/{}", archive.len())),
        "{out}"
    );
}
