//! The live display of `rekey` / `work` at a terminal: two lines, redrawn in place twice a
//! second, with log lines (warnings, failures) printed above them ([`super::term`]).
//!
//! ```text
//! ██████████████░░░░░░░░░░░░  812/1,500 objects  391.20 MiB/730.00 MiB  48.1/s  23.40 MiB/s  ETA 14s
//!   migrated 800 · skipped 12 · failed 0 · conflict 0 · retries 3
//! ```
//!
//! Totals and "done" come from the job table (all runs of this state file); the per-result
//! counts, rates and retries from this run's [`Metrics`]. Rates are over the last
//! [`RATE_WINDOW`], so a stall shows within seconds instead of being averaged away.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use s3cse::metrics::{Metrics, ObjectResult};
use s3cse::store::JobStore;

use super::term::{self, Term};

/// Rates are measured over this much recent time.
const RATE_WINDOW: Duration = Duration::from_secs(20);
/// Redraw period (the job table read is one indexed query).
const REFRESH: Duration = Duration::from_millis(500);

/// A running live display; [`Live::finish`] removes it.
pub struct Live {
    task: tokio::task::JoinHandle<()>,
}

/// Starts the live display if a person is watching (see [`Term::live_display`]).
pub fn start(term: &Term, store: JobStore, metrics: Arc<Metrics>) -> Option<Live> {
    if !term.live_display() {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(0),
        indicatif::ProgressDrawTarget::stderr_with_hz(4),
    );
    let template = if term.color {
        "{bar:30.green/white} {prefix}\n  {msg}"
    } else {
        "{bar:30} {prefix}\n  {msg}"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("█▉▊▋▌▍▎▏░"));
    }
    bar.set_prefix("listing the bucket...");
    term.set_live(bar.clone());
    let task = tokio::spawn(async move {
        let mut samples: VecDeque<(Instant, u64, u64)> = VecDeque::new();
        loop {
            draw(&bar, &store, &metrics, &mut samples).await;
            tokio::time::sleep(REFRESH).await;
        }
    });
    Some(Live { task })
}

impl Live {
    /// Stops and clears the display (the summary follows on stdout).
    pub fn finish(self, term: &Term) {
        self.task.abort();
        term.clear_live();
    }
}

/// This run's objects and bytes, by result.
struct RunCounts {
    migrated: u64,
    skipped: u64,
    failed: u64,
    conflict: u64,
    objects: u64,
    bytes: u64,
}

fn run_counts(m: &Metrics) -> RunCounts {
    let [rewritten, rewrapped, skipped, failed, conflict] =
        ObjectResult::ALL.map(|r| m.objects_done(r));
    let all = [rewritten, rewrapped, skipped, failed, conflict];
    RunCounts {
        migrated: rewritten.0 + rewrapped.0,
        skipped: skipped.0,
        failed: failed.0,
        conflict: conflict.0,
        objects: all.iter().map(|c| c.0).sum(),
        bytes: all.iter().map(|c| c.1).sum(),
    }
}

async fn draw(
    bar: &indicatif::ProgressBar,
    store: &JobStore,
    metrics: &Metrics,
    samples: &mut VecDeque<(Instant, u64, u64)>,
) {
    let run = run_counts(metrics);
    let now = Instant::now();
    samples.push_back((now, run.objects, run.bytes));
    while samples
        .front()
        .is_some_and(|(t, ..)| now.duration_since(*t) > RATE_WINDOW)
    {
        samples.pop_front();
    }
    let (rate, byte_rate) = match samples.front() {
        Some((t0, o0, b0)) if now.duration_since(*t0) >= Duration::from_secs(1) => {
            let dt = now.duration_since(*t0).as_secs_f64();
            ((run.objects - o0) as f64 / dt, (run.bytes - b0) as f64 / dt)
        }
        _ => (f64::NAN, f64::NAN),
    };
    let Ok(c) = store.state_counts().await else {
        return;
    };
    let (fin, left) = (c.finished(), c.remaining());
    let total_objects = fin.objects + left.objects;
    bar.set_length(total_objects);
    bar.set_position(fin.objects);
    let eta = if left.objects == 0 {
        "-".to_owned()
    } else if rate > 0.0 {
        term::duration((left.objects as f64 / rate).ceil() as u64)
    } else {
        "?".to_owned()
    };
    bar.set_prefix(format!(
        "{}/{} objects  {}/{}  {}  {}  ETA {eta}",
        term::count(fin.objects),
        term::count(total_objects),
        term::bytes(fin.bytes),
        term::bytes(fin.bytes + left.bytes),
        term::per_sec(rate),
        term::bytes_per_sec(byte_rate),
    ));
    bar.set_message(format!(
        "migrated {} · skipped {} · failed {} · conflict {} · retries {}",
        term::count(run.migrated),
        term::count(run.skipped),
        term::count(run.failed),
        term::count(run.conflict),
        term::count(metrics.retries_total()),
    ));
}
