//! Progress of a batch command (`warm`, `sync`): an overall bar and one spinner per item on a
//! terminal, plain lines on stderr otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Progress {
    multi: Option<indicatif::MultiProgress>,
    overall: Option<indicatif::ProgressBar>,
    bytes: AtomicU64,
    /// The command, in plain lines (`warm: ...`).
    command: &'static str,
    /// What happens to the bytes counted (`fetched`, `pushed`).
    verb: &'static str,
}

impl Progress {
    pub fn new(command: &'static str, verb: &'static str) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let multi = tty.then(indicatif::MultiProgress::new);
        let overall = multi.as_ref().map(|m| {
            let bar = m.add(indicatif::ProgressBar::new(0));
            bar.set_style(
                indicatif::ProgressStyle::with_template(&format!(
                    "{{spinner}} {command} [{{elapsed_precise}}] {{pos}}/{{len}} items, {{msg}}"
                ))
                .expect("a valid template"),
            );
            bar
        });
        Progress {
            multi,
            overall,
            bytes: AtomicU64::new(0),
            command,
            verb,
        }
    }

    pub fn add_items(&self, n: usize) {
        if let Some(b) = &self.overall {
            b.inc_length(n as u64);
        }
    }

    /// A spinner for one item (on a terminal).
    pub fn item(&self, name: &str) -> Option<indicatif::ProgressBar> {
        let m = self.multi.as_ref()?;
        let bar = m.add(indicatif::ProgressBar::new_spinner());
        bar.set_style(
            indicatif::ProgressStyle::with_template("  {spinner} {msg} {bytes}")
                .expect("a valid template"),
        );
        bar.set_message(name.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Some(bar)
    }

    /// Counts `n` bytes moved for an item.
    pub fn bytes(&self, bar: Option<&indicatif::ProgressBar>, n: u64) {
        let total = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(b) = bar {
            b.inc(n);
        }
        if let Some(o) = &self.overall {
            o.set_message(format!("{} {}", human_bytes(total), self.verb));
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// An item ended: its spinner goes, `line` stays.
    pub fn done(&self, bar: Option<indicatif::ProgressBar>, line: &str) {
        match (&self.multi, bar) {
            (Some(m), Some(b)) => {
                b.finish_and_clear();
                m.remove(&b);
                let _ = m.println(line);
            }
            _ => eprintln!("{}: {line}", self.command),
        }
        if let Some(o) = &self.overall {
            o.inc(1);
        }
    }

    pub fn finish(&self) {
        if let Some(o) = &self.overall {
            o.finish_and_clear();
        }
    }
}

pub fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}
