//! `s3cse rekey --stop-timeout`: SIGTERM lets the objects in flight finish for at most that long,
//! then abandons them: the process flushes its metrics and exits with every lease handed back,
//! and the next run migrates what is left. Against the local test bed (`scripts/testbed.sh up`),
//! through the real binary; without `S3CSE_TESTBED` each test says "skipped" and passes.
//!
//! Objects are slowed down with `--s3-rps`: each takes several S3 requests (HEAD, GET, PUT, the
//! verifying GET), so at 2 requests per second four objects in flight need far longer than the
//! stop timeout.

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

const OBJECTS: u8 = 12;

fn object(i: u8) -> (String, Vec<u8>) {
    (format!("obj/{i:02}"), data(2000 + usize::from(i) * 37, i))
}

/// A [`Bed`] whose bucket holds [`OBJECTS`] legacy V1 objects (its key is the target key), or
/// `None` without the test bed.
async fn seeded(tag: &str) -> Option<Bed> {
    let b = bed(tag).await?;
    for i in 0..OBJECTS {
        let (key, body) = object(i);
        put_v1(&b.s3, &b.bucket, &key, &body).await;
    }
    Some(b)
}

/// `status --json` of the state file, by state (`running`, `pending`, `done`, ...).
fn counts(state: &str) -> Option<serde_json::Value> {
    let o = run(bin().args(["status", "--state", state, "--json"]));
    o.status.success().then_some(())?;
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    Some(st["by_state"].clone())
}

fn objects_in(by_state: &serde_json::Value, state: &str) -> u64 {
    by_state[state]["objects"].as_u64().unwrap_or(0)
}

/// Waits until the run has claimed objects, so that a signal finds work in flight.
fn wait_until_running(child: &mut Child, state: &str) {
    let t = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("rekey ended before any object was in flight: {status}");
        }
        if counts(state).is_some_and(|c| objects_in(&c, "running") > 0) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no object claimed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `rekey` on the bed's bucket with `extra` options, its stderr (info logs) in `log`.
fn spawn_rekey(b: &Bed, state: &str, extra: &[&str], log: &Path) -> Child {
    b.rekey_command(state)
        .args(extra)
        .env("S3CSE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("spawn rekey")
}

fn signal(child: &Child, name: &str) {
    let pid = child.id().to_string();
    let o = run(Command::new("kill").args(["-s", name, &pid]));
    assert_ok("kill", &o);
}

/// Waits for `child` to exit, at most `limit`; returns its status and how long it took.
fn wait_exit(child: &mut Child, limit: Duration) -> (ExitStatus, Duration) {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (status, t.elapsed());
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rekey still running {limit:?} after the stop signal");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// N of the exit message "stopped: N object(s) in flight abandoned ...".
fn abandoned_count(stderr: &str) -> u64 {
    let (_, rest) = stderr
        .split_once("stopped: ")
        .unwrap_or_else(|| panic!("no abandon message:\n{stderr}"));
    rest.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"))
}

/// After an abandoned stop: nothing leased, nothing failed, and the objects not finished are
/// pending again.
fn assert_released(state: &str) -> u64 {
    let c = counts(state).expect("status");
    assert_eq!(objects_in(&c, "running"), 0, "every lease released: {c}");
    assert_eq!(
        objects_in(&c, "failed") + objects_in(&c, "conflict"),
        0,
        "{c}"
    );
    let pending = objects_in(&c, "pending");
    assert!(pending > 0, "some objects were left for the next run: {c}");
    assert_eq!(pending + objects_in(&c, "done"), u64::from(OBJECTS), "{c}");
    pending
}

/// A second, unhurried run migrates everything; each object reads back strictly.
async fn finish_and_check(b: &Bed, state: &str) {
    let o = b.rekey(state, &[]);
    assert_ok("second rekey", &o);
    let c = counts(state).expect("status");
    assert_eq!(objects_in(&c, "done"), u64::from(OBJECTS), "{c}");
    for i in 0..OBJECTS {
        let (key, body) = object(i);
        assert!(b.get_strict(&key).await == body, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_abandons_objects_in_flight_at_the_stop_timeout() {
    let Some(b) = seeded("stop-deadline").await else {
        return;
    };
    let state = b.path("state.db").display().to_string();
    let textfile = b.path("rekey.prom").display().to_string();
    let log = b.path("stderr.log");
    const STOP_TIMEOUT: Duration = Duration::from_secs(2);
    let slow = ["--concurrency", "4", "--s3-rps", "2", "--stop-timeout", "2"];
    let extra = [&slow[..], &["--metrics-textfile", &textfile]].concat();
    let mut child = spawn_rekey(&b, &state, &extra, &log);
    wait_until_running(&mut child, &state);

    signal(&child, "TERM");
    let (status, took) = wait_exit(&mut child, STOP_TIMEOUT + Duration::from_secs(10));
    let stderr = stderr_of(&log);
    assert_eq!(status.code(), Some(1), "interrupted runs exit 1:\n{stderr}");
    // It waited for the objects in flight, up to the timeout, and not much longer.
    assert!(
        took >= STOP_TIMEOUT - Duration::from_millis(100),
        "{took:?}:\n{stderr}"
    );
    assert!(took < STOP_TIMEOUT + Duration::from_secs(5), "{took:?}");
    assert!(stderr.contains("stop timeout: abandoning"), "{stderr}");
    assert!(
        abandoned_count(&stderr) >= 1,
        "objects were in flight:\n{stderr}"
    );
    assert_released(&state);
    // The metrics were flushed on the way out.
    let prom = std::fs::read_to_string(&textfile).expect("metrics textfile written");
    assert!(prom.contains("s3cse_s3_requests_total"), "{prom}");

    finish_and_check(&b, &state).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_abandons_at_once() {
    let Some(b) = seeded("stop-twice").await else {
        return;
    };
    let state = b.path("state.db").display().to_string();
    let log = b.path("stderr.log");
    // A stop timeout far beyond the test's patience: only the second signal can end it.
    let slow = [
        "--concurrency",
        "4",
        "--s3-rps",
        "1",
        "--stop-timeout",
        "600",
    ];
    let mut child = spawn_rekey(&b, &state, &slow, &log);
    wait_until_running(&mut child, &state);

    signal(&child, "TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the first signal waits for the objects in flight"
    );
    signal(&child, "INT");
    let (status, took) = wait_exit(&mut child, Duration::from_secs(10));
    let stderr = stderr_of(&log);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(5), "{took:?}:\n{stderr}");
    assert!(stderr.contains("second stop signal"), "{stderr}");
    assert!(
        abandoned_count(&stderr) >= 1,
        "objects were in flight:\n{stderr}"
    );
    assert_released(&state);

    finish_and_check(&b, &state).await;
}

/// Objects larger than one part take a large-object slot before they are read; one still waiting
/// for a slot when SIGTERM comes does not start: its job goes back to the queue at once, while
/// the object in progress finishes.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_releases_large_objects_still_waiting_for_a_slot() {
    let Some(b) = bed("stop-slots").await else {
        return;
    };
    let big = |i: u8| (format!("big/{i}"), data(12 << 20, 40 + i));
    for i in 0..2 {
        let (key, body) = big(i);
        put_v1(&b.s3, &b.bucket, &key, &body).await;
    }
    let state = b.path("state.db").display().to_string();
    let log = b.path("stderr.log");
    // An 8 MiB budget holds one 8 MiB part buffer at most: one slot. At 2 S3 requests a second
    // the object that has it takes seconds; the stop timeout lets it finish.
    let extra = [
        "--concurrency",
        "2",
        "--max-buffer-mib",
        "8",
        "--s3-rps",
        "2",
        "--stop-timeout",
        "60",
    ];
    let mut child = spawn_rekey(&b, &state, &extra, &log);
    // Signal once one object is uploading (its multipart upload is in its intent): the other is
    // then waiting for the slot, or not that far yet.
    let t = Instant::now();
    loop {
        assert!(t.elapsed() < Duration::from_secs(60), "no upload started");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "rekey ended early"
        );
        std::thread::sleep(Duration::from_millis(50));
        let Ok(db) = sqlx::SqlitePool::connect(&format!("sqlite://{state}")).await else {
            continue;
        };
        let uploading: Option<(i64,)> = sqlx::query_as(
            "SELECT count(*) FROM jobs WHERE json_extract(intent, '$.upload_id') IS NOT NULL",
        )
        .fetch_optional(&db)
        .await
        .unwrap_or(None);
        db.close().await;
        if uploading.is_some_and(|(n,)| n > 0) {
            break;
        }
    }
    signal(&child, "TERM");
    wait_exit(&mut child, Duration::from_secs(60));
    let stderr = stderr_of(&log);
    let c = counts(&state).expect("status");
    assert_eq!(
        (objects_in(&c, "done"), objects_in(&c, "pending")),
        (1, 1),
        "the object in progress finished, the waiting one was handed back: {c}\n{stderr}"
    );
    assert!(stderr.contains("released before it started"), "{stderr}");

    let o = b.rekey(&state, &[]);
    assert_ok("second rekey", &o);
    for i in 0..2 {
        let (key, body) = big(i);
        assert!(b.get_strict(&key).await == body, "{key}");
    }
}
