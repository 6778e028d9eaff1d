//! The access log: one line per request, on the `access` target at INFO (so `RUST_LOG` turns it
//! off or on like any other target).
//!
//! With `--log-format text` (the default) and stdout not a terminal, `main` switches on the
//! hand-written line: it is formatted here into a per-thread buffer and written to stdout with
//! one `write(2)`, the same bytes `tracing_subscriber`'s text formatter writes for the same
//! event (the tests compare the two). The formatter walks every field through its visitor and
//! `core::fmt` on every request; on the warm 5 KB path that was about 5% of chartbridge's CPU
//! with the log on. JSON logs, and a terminal (which gets colour), still go through `tracing`.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static BY_HAND: AtomicBool = AtomicBool::new(false);

/// Writes the text line by hand from now on (see the module's documentation).
pub fn write_by_hand() {
    BY_HAND.store(true, Ordering::Relaxed);
}

/// One request's access-log line.
pub struct Line<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub request_id: &'a str,
    pub bytes: u64,
    pub ms: u64,
    pub cache: &'a str,
    pub upstream: &'a str,
    pub error: Option<&'a str>,
}

/// Logs `line`, if the `access` target is enabled at INFO.
pub fn log(line: &Line) {
    if !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return;
    }
    if !BY_HAND.load(Ordering::Relaxed) {
        return through_tracing(line);
    }
    thread_local! {
        static LINE: RefCell<Render> = RefCell::new(Render::default());
    }
    LINE.with(|r| {
        let Ok(mut r) = r.try_borrow_mut() else {
            return through_tracing(line);
        };
        let text = r.render(line, SystemTime::now());
        // Errors are dropped, as `tracing_subscriber` drops them: a full disk must not fail
        // requests. The lock keeps the line whole beside `tracing`'s own lines.
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
    });
}

/// A reusable buffer that renders lines by hand (one per thread in `log`).
#[derive(Default)]
pub struct Render {
    buf: String,
    clock: Clock,
}

impl Render {
    /// `line` at `now`, newline included, as `tracing_subscriber`'s text formatter writes it.
    pub fn render(&mut self, line: &Line, now: SystemTime) -> &str {
        self.buf.clear();
        self.clock.write(&mut self.buf, now);
        text(&mut self.buf, line);
        &self.buf
    }
}

/// The same event through `tracing` (JSON, a terminal, or before `write_by_hand`).
pub fn through_tracing(line: &Line) {
    tracing::info!(
        target: "access",
        method = %line.method,
        path = %line.path,
        status = line.status,
        request_id = %line.request_id,
        bytes = line.bytes,
        ms = line.ms,
        cache = line.cache,
        upstream = line.upstream,
        error = line.error,
    );
}

/// Everything after the timestamp, as `tracing_subscriber`'s `Full` text format writes it:
/// `%`-fields as they are, strings quoted and escaped as `Debug` does, a `None` left out.
fn text(buf: &mut String, l: &Line) {
    buf.push_str("  INFO access: method=");
    buf.push_str(l.method);
    buf.push_str(" path=");
    buf.push_str(l.path);
    buf.push_str(" status=");
    push_u64(buf, l.status.into());
    buf.push_str(" request_id=");
    buf.push_str(l.request_id);
    buf.push_str(" bytes=");
    push_u64(buf, l.bytes);
    buf.push_str(" ms=");
    push_u64(buf, l.ms);
    buf.push_str(" cache=");
    push_quoted(buf, l.cache);
    buf.push_str(" upstream=");
    push_quoted(buf, l.upstream);
    if let Some(e) = l.error {
        buf.push_str(" error=");
        push_quoted(buf, e);
    }
    buf.push('\n');
}

fn push_u64(buf: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    buf.push_str(std::str::from_utf8(&digits[i..]).unwrap_or("0"));
}

/// `s` as `{:?}` writes it; the common case (printable ASCII without `"` or `\`) without
/// `core::fmt`.
fn push_quoted(buf: &mut String, s: &str) {
    if s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        buf.push('"');
        buf.push_str(s);
        buf.push('"');
    } else {
        let _ = write!(buf, "{s:?}");
    }
}

/// The RFC 3339 timestamp with microseconds in UTC, as `tracing_subscriber`'s default timer
/// writes it; the date and time of day are formatted once per second per thread.
#[derive(Default)]
struct Clock {
    second: Option<u64>,
    prefix: String,
}

impl Clock {
    fn write(&mut self, buf: &mut String, now: SystemTime) {
        // Before 1970 only with a broken clock; written as the epoch rather than failing.
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        if self.second != Some(secs) {
            self.prefix.clear();
            let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
            let t = secs % 86_400;
            let _ = write!(
                self.prefix,
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.",
                t / 3600,
                t / 60 % 60,
                t % 60
            );
            self.second = Some(secs);
        }
        buf.push_str(&self.prefix);
        let micros = since.subsec_micros();
        let mut six = [b'0'; 6];
        let mut m = micros;
        for slot in six.iter_mut().rev() {
            *slot = b'0' + (m % 10) as u8;
            m /= 10;
        }
        buf.push_str(std::str::from_utf8(&six).unwrap_or("000000"));
        buf.push('Z');
    }
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests;
