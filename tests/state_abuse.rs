//! Abused state files (issue 11, item 3): two processes on one file, a newer schema, a damaged
//! file, a full disk, `SQLITE_BUSY` past the busy timeout, leases that lapse while their object
//! is being written (what a forward clock jump does to every lease at once). Each run ends with
//! every object migrated exactly once and every record right.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Bed, aes_key_file, bed, data, put_v1, show};

fn s3cse() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_s3cse"));
    c.env("S3CSE_LOG", "warn");
    c
}

/// `s3cse CMD [s3://BUCKET] --state STATE --kms-key-id KEY --aes-key-file AES EXTRA...`.
fn cmd(b: &Bed, what: &str, state: &Path, extra: &[&str]) -> Command {
    let mut c = s3cse();
    c.arg(what);
    if what != "work" {
        c.arg(b.bucket_url());
    }
    c.args(["--state", &state.display().to_string()]);
    if what != "scan" {
        c.args(["--kms-key-id", &b.key_id])
            .args(["--aes-key-file", &aes_key_file().display().to_string()]);
    }
    c.args(extra);
    c
}

fn output(mut c: Command) -> Output {
    c.output().expect("run s3cse")
}

/// `n` V1 objects `obj-i` of 700 bytes; returns their plaintexts.
async fn fill(b: &Bed, n: usize) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for i in 0..n {
        let key = format!("obj-{i:03}");
        let d = data(700, i as u8);
        put_v1(&b.s3, &b.bucket, &key, &d).await;
        out.insert(key, d);
    }
    out
}

/// Every object reads back under the target key as its plaintext.
async fn all_migrated(b: &Bed, objects: &BTreeMap<String, Vec<u8>>) {
    for (k, d) in objects {
        assert_eq!(&b.get_strict(k).await, d, "{k}");
    }
}

/// Versions of each key (versioned bucket): the original and one per write.
async fn versions(b: &Bed) -> BTreeMap<String, usize> {
    let out =
        b.s3.list_object_versions()
            .bucket(&b.bucket)
            .send()
            .await
            .expect("list versions");
    let mut n = BTreeMap::new();
    for v in out.versions() {
        *n.entry(v.key().unwrap_or_default().to_owned()).or_default() += 1;
    }
    n
}

/// `(state, count)` of the job table.
fn states(state: &Path) -> BTreeMap<String, i64> {
    let o = Command::new("sqlite3")
        .arg(state)
        .arg("SELECT state, count(*) FROM jobs GROUP BY state")
        .output()
        .expect("sqlite3");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(s, n)| (s.to_owned(), n.parse().unwrap_or(-1)))
        .collect()
}

/// A Python helper that works on the state file beside a running s3cse (the sqlite3 module).
fn python(script: &str, args: &[&str]) -> Child {
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_on_a_state_file_is_refused_and_says_why() {
    let Some(b) = bed("abuse-two").await else {
        return;
    };
    let objects = fill(&b, 30).await;
    let state = b.path("state.db");
    // The first run is slowed down (5 S3 requests a second) so that it is still running.
    let mut first = cmd(
        &b,
        "rekey",
        &state,
        &["--s3-rps", "5", "--concurrency", "1"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn");
    let t = Instant::now();
    while states(&state).values().sum::<i64>() < 30 && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for what in ["rekey", "work", "scan"] {
        let second = output(cmd(&b, what, &state, &[]));
        assert!(
            first.try_wait().expect("wait").is_none(),
            "the first run ended too early for this test"
        );
        assert_eq!(second.status.code(), Some(2), "{what}: {}", show(&second));
        let err = String::from_utf8_lossy(&second.stderr);
        assert!(
            err.contains("in use by another s3cse process"),
            "{what}: {}",
            show(&second)
        );
    }
    // Read-only commands still work beside it.
    let st = output({
        let mut c = s3cse();
        c.args(["status", "--state", &state.display().to_string()]);
        c
    });
    assert!(st.status.success(), "{}", show(&st));
    let o = first.wait_with_output().expect("first");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    all_migrated(&b, &objects).await;
    // The lock went with the process: a later run takes the file.
    let again = output(cmd(&b, "rekey", &state, &[]));
    assert_eq!(again.status.code(), Some(0), "{}", show(&again));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_file_of_a_newer_schema_is_refused_unchanged() {
    let Some(b) = bed("abuse-schema").await else {
        return;
    };
    fill(&b, 3).await;
    let state = b.path("state.db");
    let o = output(cmd(&b, "scan", &state, &[]));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let bump = Command::new("sqlite3")
        .arg(&state)
        .arg(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             SELECT max(version) + 1, 'from the future', 1, x'00', 0 FROM _sqlx_migrations",
        )
        .output()
        .expect("sqlite3");
    assert!(bump.status.success(), "{bump:?}");
    let before = std::fs::read(&state).expect("state");
    let etags = b.etags().await;
    for what in ["rekey", "work", "scan"] {
        let o = output(cmd(&b, what, &state, &[]));
        assert_eq!(o.status.code(), Some(2), "{what}: {}", show(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("newer than this s3cse"),
            "{what}: {}",
            show(&o)
        );
    }
    for what in ["status", "report"] {
        let mut c = s3cse();
        c.args([what, "--state", &state.display().to_string()]);
        let o = output(c);
        assert_eq!(o.status.code(), Some(2), "{what}: {}", show(&o));
    }
    assert_eq!(
        std::fs::read(&state).expect("state"),
        before,
        "file changed"
    );
    assert_eq!(b.etags().await, etags, "the bucket changed");
}

/// Overwrites the b-tree page type of the last leaf page of the `jobs` table (the rows of the
/// last keys listed) with an invalid one: SQLite notices only when it reads that page.
fn damage_last_leaf(state: &Path) {
    let o = Command::new("sqlite3")
        .arg(state)
        .arg(
            "SELECT pageno FROM dbstat WHERE name = 'jobs' AND pagetype = 'leaf' \
             ORDER BY path DESC LIMIT 1; PRAGMA page_size;",
        )
        .output()
        .expect("sqlite3");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut lines = text.lines();
    let page: u64 = lines.next().and_then(|l| l.parse().ok()).expect("page");
    let size: u64 = lines.next().and_then(|l| l.parse().ok()).expect("size");
    let mut bytes = std::fs::read(state).expect("state");
    let at = ((page - 1) * size) as usize;
    bytes[at] = 0x42;
    std::fs::write(state, bytes).expect("write state");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_state_file_is_refused_before_any_s3_write() {
    let Some(b) = bed("abuse-damaged").await else {
        return;
    };
    // Long keys: the job table spans many pages, and the damaged one holds the last rows only.
    let mut objects = BTreeMap::new();
    for i in 0..120 {
        let key = format!("{}-{i:03}", "k".repeat(200));
        let d = data(100, i as u8);
        put_v1(&b.s3, &b.bucket, &key, &d).await;
        objects.insert(key, d);
    }
    let state = b.path("state.db");
    let o = output(cmd(&b, "scan", &state, &[]));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    damage_last_leaf(&state);
    let etags = b.etags().await;
    let o = output(cmd(&b, "work", &state, &["--concurrency", "1"]));
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is damaged"),
        "{}",
        show(&o)
    );
    assert_eq!(b.etags().await, etags, "an object was written");
    // A new state file starts over and migrates everything.
    let fresh = b.path("fresh.db");
    let o = output(cmd(&b, "rekey", &fresh, &[]));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    all_migrated(&b, &objects).await;
}

/// A small tmpfs mounted for one test; unmounted on drop. `None` when this process may not
/// mount (not root).
struct Tmpfs(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tmp");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(Tmpfs(dir.path().to_owned(), dir))
    }

    /// Fills the file system but for about `leave` bytes.
    fn fill_but(&self, leave: u64) {
        let o = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.0)
            .output()
            .expect("df");
        let avail: u64 = String::from_utf8_lossy(&o.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("avail");
        let filler = vec![0u8; avail.saturating_sub(leave) as usize];
        // A short write at ENOSPC is fine: the point is a full disk.
        let _ = std::fs::write(self.0.join("filler"), filler);
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).expect("rm filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_the_run_and_it_resumes_with_nothing_lost() {
    let Some(b) = bed("abuse-full").await else {
        return;
    };
    let Some(fs) = Tmpfs::mount("4m") else {
        return;
    };
    b.enable_versioning().await;
    let objects = fill(&b, 60).await;
    let state = fs.0.join("state.db");
    let o = output(cmd(&b, "scan", &state, &[]));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    // Room for a few objects' claims, intents and outcomes in the WAL, not for 60.
    fs.fill_but(48 << 10);
    let o = output(cmd(&b, "work", &state, &["--concurrency", "2"]));
    eprintln!("full disk run: {}", show(&o));
    assert_ne!(o.status.code(), Some(0), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("full") || err.contains("No space"),
        "{}",
        show(&o)
    );
    let during = states(&state);
    eprintln!("after the full disk: {during:?}");
    fs.free();
    let o = output(cmd(&b, "work", &state, &[]));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(states(&state), BTreeMap::from([("done".into(), 60)]));
    all_migrated(&b, &objects).await;
    // Written once each: the original version and one more.
    let v = versions(&b).await;
    assert!(v.values().all(|&n| n == 2), "{v:?}");
}

/// Holds the state file's write lock (`BEGIN IMMEDIATE`) for `secs` seconds.
const HOLD_LOCK: &str = "
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
db.execute('BEGIN IMMEDIATE')
time.sleep(float(sys.argv[2]))
db.execute('ROLLBACK')
";

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_busy_past_the_timeout_stops_the_run_and_it_resumes() {
    let Some(b) = bed("abuse-busy").await else {
        return;
    };
    b.enable_versioning().await;
    let objects = fill(&b, 40).await;
    let state = b.path("state.db");
    let o = output(cmd(&b, "scan", &state, &[]));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let run = cmd(
        &b,
        "work",
        &state,
        &["--s3-rps", "20", "--concurrency", "2"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn");
    std::thread::sleep(Duration::from_millis(1500));
    // 14 s: longer than the 10 s busy timeout.
    let mut holder = python(HOLD_LOCK, &[&state.display().to_string(), "14"]);
    let o = run.wait_with_output().expect("run");
    // The statements that waited past the busy timeout failed their object's attempt (it is
    // tried again) or stopped the claims (the run ends, the objects in flight settled): either
    // way the run ends by itself, and the next one finds nothing lost and nothing doubled.
    eprintln!("busy run: exit {:?}", o.status.code());
    let busy = String::from_utf8_lossy(&o.stderr)
        .matches("elapsed_secs")
        .count();
    eprintln!("statements that waited over 1 s: {busy}");
    assert!(busy > 0, "the lock was never in the way: {}", show(&o));
    assert!(holder.wait().expect("holder").success());
    let o = output(cmd(&b, "work", &state, &["--retry-failed"]));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(states(&state), BTreeMap::from([("done".into(), 40)]));
    all_migrated(&b, &objects).await;
    let v = versions(&b).await;
    assert!(v.values().all(|&n| n == 2), "{v:?}");
}

/// Expires every running lease, again and again (what a forward clock jump does to them).
const EXPIRE_LEASES: &str = "
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
end = time.time() + float(sys.argv[2])
n = 0
while time.time() < end:
    n += db.execute(\"UPDATE jobs SET lease_until = 0 WHERE state = 'running'\").rowcount
    time.sleep(0.02)
print(n, file=sys.stderr)
";

#[tokio::test(flavor = "multi_thread")]
async fn leases_lapsing_mid_write_never_write_an_object_twice() {
    let Some(b) = bed("abuse-lease").await else {
        return;
    };
    b.enable_versioning().await;
    let objects = fill(&b, 40).await;
    let state = b.path("state.db");
    let o = output(cmd(&b, "scan", &state, &[]));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let expirer = python(EXPIRE_LEASES, &[&state.display().to_string(), "12"]);
    let o = output(cmd(
        &b,
        "work",
        &state,
        &["--s3-rps", "30", "--concurrency", "4", "--lease-secs", "3"],
    ));
    let e = expirer.wait_with_output().expect("expirer");
    let expired = String::from_utf8_lossy(&e.stderr).trim().to_owned();
    eprintln!("leases expired under the run: {expired}");
    assert!(expired.parse::<u64>().is_ok_and(|n| n > 0), "{expired}");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(states(&state), BTreeMap::from([("done".into(), 40)]));
    all_migrated(&b, &objects).await;
    let v = versions(&b).await;
    assert!(v.values().all(|&n| n == 2), "{v:?}");
}
