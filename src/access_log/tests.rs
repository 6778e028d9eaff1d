use super::*;
use proptest::prelude::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What `tracing_subscriber`'s text formatter (as `main` sets it up for a file) writes for
/// `line`, and the second just before and just after it wrote it.
fn through_formatter(line: &Line) -> (String, u64, u64) {
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let out = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("error,access=info"))
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let secs = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let before = secs();
    tracing::subscriber::with_default(subscriber, || through_tracing(line));
    let after = secs();
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    (text, before, after)
}

fn by_hand(line: &Line, now: SystemTime) -> String {
    Render::default().render(line, now).to_string()
}

fn line<'a>(upstream: &'a str, error: Option<&'a str>) -> Line<'a> {
    Line {
        method: "GET",
        path: "/v2/reg/bench/blobs/blobs/sha256:0123abcd?ns=docker.io",
        status: 200,
        request_id: "7a2a888ef9b79f4300000002",
        bytes: 5120,
        ms: 0,
        cache: "memory",
        upstream,
        error,
    }
}

#[test]
fn the_line_is_the_formatters_line_byte_for_byte() {
    let cases = [
        line("reg", None),
        line("-", Some("invalid repository name \"a%20\\\"b\"")),
        line(
            "up-1",
            Some("upstream said 502\nand then\tthis: \u{7f} é \u{200b}"),
        ),
        Line {
            method: "HEAD",
            path: "/v2/",
            status: 401,
            request_id: "x",
            bytes: u64::MAX,
            ms: 1234567,
            cache: "-",
            upstream: "ünïcode",
            error: Some(""),
        },
    ];
    for l in &cases {
        // Retried when the formatter's clock crossed a second, so both stamp the same second.
        let (theirs, before, after) = (0..10)
            .map(|_| through_formatter(l))
            .find(|(_, b, a)| b == a)
            .unwrap();
        assert_eq!(before, after);
        let micros: u32 = theirs[20..26].parse().unwrap();
        let now = UNIX_EPOCH + Duration::new(before, micros * 1000);
        assert_eq!(by_hand(l, now), theirs);
    }
}

#[test]
fn known_timestamps() {
    let at = |secs: u64, micros: u32| {
        let mut buf = String::new();
        Clock::default().write(&mut buf, UNIX_EPOCH + Duration::new(secs, micros * 1000));
        buf
    };
    assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
    assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
    assert_eq!(at(1_795_930_268, 884_633), "2026-11-29T05:31:08.884633Z");
    assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
    // one clock across seconds: the cached prefix follows the second
    let mut clock = Clock::default();
    let mut buf = String::new();
    clock.write(&mut buf, UNIX_EPOCH + Duration::new(59, 5));
    buf.push(' ');
    clock.write(&mut buf, UNIX_EPOCH + Duration::new(60, 5));
    assert_eq!(
        buf,
        "1970-01-01T00:00:59.000000Z 1970-01-01T00:01:00.000000Z"
    );
}

proptest! {
    #[test]
    fn the_date_agrees_with_the_time_crate(secs in 0u64..253_402_300_800, micros in 0u32..1_000_000) {
        let mut buf = String::new();
        Clock::default().write(&mut buf, UNIX_EPOCH + Duration::new(secs, micros * 1000));
        let t = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap();
        let want = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second()
        );
        prop_assert_eq!(buf, want);
    }

    #[test]
    fn quoting_agrees_with_debug(s in any::<String>()) {
        let mut buf = String::new();
        push_quoted(&mut buf, &s);
        prop_assert_eq!(buf, format!("{s:?}"));
    }

    #[test]
    fn numbers_agree_with_display(n in any::<u64>()) {
        let mut buf = String::new();
        push_u64(&mut buf, n);
        prop_assert_eq!(buf, n.to_string());
    }
}
