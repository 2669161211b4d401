//! What a person sees: the global `-q` / `-v` / `--log-format` flags, the log setup, the live
//! display of `rekey` / `work` on a terminal, and human-readable numbers.
//!
//! # Who reads stderr
//! - **A person at a terminal** (stderr is a TTY, text logs): a live display of progress, rates
//!   and ETA ([`Live`]); warnings and failures are printed above it, one line each; the
//!   per-object INFO lines (`object done`, `requeued`, ...) are left out unless `-v`.
//! - **A log collector** (not a TTY, or `--log-format json`): every structured line, as before,
//!   and no live display.
//! - `-q`: errors only, no live display and no summary. `S3CSE_LOG` (an `EnvFilter`) overrides
//!   the level choice in every case.
//!
//! Colour only on a TTY and never with `NO_COLOR` set (<https://no-color.org>).

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Output flags, global: they go before or after the subcommand.
#[derive(Args, Debug, Clone, Default)]
pub struct OutputArgs {
    /// Errors only: no progress display, no summary.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More log lines: -v adds the per-object lines at a terminal, -vv debug lines.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log line format on stderr: text, or json (one object per line, for log collectors; no
    /// live display).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// The modules whose INFO lines are one per object: at a terminal they scroll the live display
/// away, so they show only with `-v` (a log collector gets them always).
const PER_OBJECT_TARGETS: [&str; 4] = [
    "s3cse::rekey::worker",
    "s3cse::rekey::recover",
    "s3cse::rekey::dryrun",
    "s3cse::rekey::task",
];

/// The resolved output settings, shared by every command. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Term {
    pub quiet: bool,
    pub verbose: u8,
    pub log_format: LogFormat,
    /// stderr is a terminal and the logs are text: a person is watching.
    pub interactive: bool,
    /// ANSI colour allowed (a terminal, no `NO_COLOR`).
    pub color: bool,
    /// The live display while one runs: log lines are printed above it.
    live: LiveSlot,
}

type LiveSlot = Arc<Mutex<Option<indicatif::ProgressBar>>>;

impl Term {
    pub fn new(a: &OutputArgs) -> Self {
        let tty = std::io::stderr().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            quiet: a.quiet,
            verbose: a.verbose,
            log_format: a.log_format,
            interactive: tty && a.log_format == LogFormat::Text,
            color: tty && !no_color,
            live: Arc::default(),
        }
    }

    /// The default log filter (`S3CSE_LOG` overrides it).
    fn filter(&self) -> String {
        if self.quiet {
            return "error".into();
        }
        match self.verbose {
            0 if self.interactive => {
                let mut f = String::from("info");
                for t in PER_OBJECT_TARGETS {
                    f.push_str(&format!(",{t}=warn"));
                }
                f
            }
            0 | 1 => "info".into(),
            _ => "debug,aws=info,hyper=info,h2=info,rustls=info".into(),
        }
    }

    /// Installs the tracing subscriber on stderr. Called once, by `main`.
    pub fn init_logs(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_env("S3CSE_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(self.filter()));
        let writer = LiveWriter(self.live.clone());
        let b = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(self.color)
            .with_writer(writer);
        let _ = match self.log_format {
            LogFormat::Json => b.json().try_init(),
            LogFormat::Text => b.try_init(),
        };
    }

    /// Whether to show a live display: a person is watching and did not ask for silence.
    pub fn live_display(&self) -> bool {
        self.interactive && !self.quiet
    }

    /// Registers `bar` as the live display: log lines go above it until [`Term::clear_live`].
    pub fn set_live(&self, bar: indicatif::ProgressBar) {
        if let Ok(mut slot) = self.live.lock() {
            *slot = Some(bar);
        }
    }

    /// Removes the live display (log lines go straight to stderr again).
    pub fn clear_live(&self) {
        if let Ok(mut slot) = self.live.lock()
            && let Some(bar) = slot.take()
        {
            bar.finish_and_clear();
        }
    }
}

/// stderr, or above the live display while one is shown (indicatif's `suspend` clears the
/// display, prints, and draws it again, so a line never lands in the middle of it).
#[derive(Clone)]
struct LiveWriter(LiveSlot);

/// One log line, buffered, written whole when dropped.
struct LiveLine {
    slot: LiveSlot,
    buf: Vec<u8>,
}

impl Write for LiveLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LiveLine {
    fn drop(&mut self) {
        let write = |buf: &[u8]| {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(buf);
            let _ = err.flush();
        };
        let bar = self.slot.lock().ok().and_then(|s| s.clone());
        match bar {
            Some(bar) => bar.suspend(|| write(&self.buf)),
            None => write(&self.buf),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LiveWriter {
    type Writer = LiveLine;

    fn make_writer(&'a self) -> Self::Writer {
        LiveLine {
            slot: self.0.clone(),
            buf: Vec::with_capacity(256),
        }
    }
}

/// `1.5 MiB`, `812 B`: sizes a person reads (binary units, as `ls -h` and S3's console).
pub fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// `1,500`: counts a person reads.
pub fn count(n: u64) -> String {
    indicatif::HumanCount(n).to_string()
}

/// `12.3/s` with one decimal below 100, none above (`47.9495/s` says nothing more).
pub fn per_sec(rate: f64) -> String {
    if !rate.is_finite() {
        return "-".into();
    }
    if rate >= 100.0 {
        format!("{}/s", count(rate.round() as u64))
    } else {
        format!("{rate:.1}/s")
    }
}

/// `48.1 objects/s`.
pub fn objects_per_sec(rate: f64) -> String {
    match per_sec(rate).strip_suffix("/s") {
        Some(n) => format!("{n} objects/s"),
        None => "-".into(),
    }
}

/// `3.4 MiB/s`.
pub fn bytes_per_sec(rate: f64) -> String {
    if !rate.is_finite() || rate < 0.0 {
        return "-".into();
    }
    format!("{}/s", bytes(rate.round() as u64))
}

/// `2h 05m`, `4m 10s`, `12s`: a duration a person reads.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s:02}s"),
        (0, _, _) => format!("{h}h {m:02}m"),
        _ => format!("{d}d {h:02}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_a_person_reads() {
        assert_eq!(bytes(800_064), "781.31 KiB");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(count(1_500), "1,500");
        assert_eq!(per_sec(47.9495), "47.9/s");
        assert_eq!(per_sec(1234.4), "1,234/s");
        assert_eq!(objects_per_sec(5.06), "5.1 objects/s");
        assert_eq!(bytes_per_sec(3.0 * 1048576.0), "3.00 MiB/s");
        assert_eq!(duration(12), "12s");
        assert_eq!(duration(250), "4m 10s");
        assert_eq!(duration(7500), "2h 05m");
        assert_eq!(duration(90_000), "1d 01h");
    }

    #[test]
    fn a_terminal_hides_per_object_lines_unless_verbose() {
        let mut t = Term::new(&OutputArgs::default());
        t.interactive = true;
        assert!(t.filter().contains("s3cse::rekey::worker=warn"));
        t.verbose = 1;
        assert_eq!(t.filter(), "info");
        t.interactive = false;
        t.verbose = 0;
        assert_eq!(t.filter(), "info");
        t.quiet = true;
        assert_eq!(t.filter(), "error");
    }
}
