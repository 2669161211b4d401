//! `s3cse status` and `report` on state files made here through the library: no S3 needed.
//! Issue 10, item 9: the state file is only read (never migrated), CSV cells cannot start a
//! spreadsheet formula, and a closed stdout (`| head`) ends the command quietly.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use s3cse::store::{JobStore, ListedObject, ScanKey};

mod common;

use common::show;

const BIN: &str = env!("CARGO_BIN_EXE_s3cse");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run s3cse")
}

/// A closed state file at `path` holding one pending job per key (bucket `bkt`).
async fn state_file(path: &Path, keys: &[String]) {
    let store = JobStore::open(path).await.expect("open");
    let scan = ScanKey {
        bucket: "bkt".into(),
        prefix: String::new(),
        shard: None,
    };
    for chunk in keys.chunks(1000) {
        let page: Vec<ListedObject> = chunk
            .iter()
            .map(|k| ListedObject {
                key: k.clone(),
                etag: "\"e\"".into(),
                size: 10,
                last_modified: None,
                storage_class: None,
            })
            .collect();
        let last = chunk.last().cloned().unwrap_or_default();
        store
            .enqueue_page(&scan, &page, &last)
            .await
            .expect("enqueue");
    }
    store.close().await;
}

/// The files of `dir`: name, size, modification time.
fn listing(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            let e = e.expect("entry");
            let m = e.metadata().expect("metadata");
            (
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().expect("mtime"),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn report_csv_cells_cannot_start_a_formula() {
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("state.db");
    let keys: Vec<String> = ["=HYPERLINK(\"x\")", "+1", "-2", "@SUM(A1)", "plain.bin"]
        .iter()
        .map(|k| (*k).to_owned())
        .collect();
    state_file(&state, &keys).await;
    let s = state.display().to_string();
    let o = run(&["report", "--state", &s, "--format", "csv"]);
    assert!(o.status.success(), "{}", show(&o));
    let csv = String::from_utf8_lossy(&o.stdout);
    for cell in [
        "bkt,\"'=HYPERLINK(\"\"x\"\")\",",
        "bkt,\"'+1\",",
        "bkt,\"'-2\",",
        "bkt,\"'@SUM(A1)\",",
        "bkt,plain.bin,",
    ] {
        assert!(csv.lines().any(|l| l.starts_with(cell)), "{cell} in\n{csv}");
    }
    // JSON lines keep the exact key.
    let o = run(&["report", "--state", &s, "--format", "jsonl"]);
    assert!(o.status.success(), "{}", show(&o));
    let got: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .map(|v| v["Key"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut want = keys.clone();
    want.sort();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    assert_eq!(got_sorted, want);
}

#[tokio::test]
async fn a_closed_stdout_ends_report_and_status_quietly() {
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("state.db");
    // Far more than a pipe buffer (64 KiB) of report.
    let keys: Vec<String> = (0..5000)
        .map(|i| format!("some/longish/prefix/object-{i:06}.bin"))
        .collect();
    state_file(&state, &keys).await;
    let s = state.display().to_string();
    // `s3cse report | head -1`.
    let mut child = Command::new(BIN)
        .args(["report", "--state", &s])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first = String::new();
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    reader.read_line(&mut first).expect("read");
    assert!(first.starts_with("Bucket,Key,"), "{first}");
    drop(reader);
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(o.stderr.is_empty(), "{}", show(&o));
    // A reader gone before the first byte (`s3cse status | true`), in both formats.
    for json in [false, true] {
        let mut args = vec!["status", "--state", &s];
        if json {
            args.push("--json");
        }
        let mut child = Command::new(BIN)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stdout.take());
        let o = child.wait_with_output().expect("wait");
        assert_eq!(o.status.code(), Some(0), "json {json}: {}", show(&o));
        assert!(o.stderr.is_empty(), "json {json}: {}", show(&o));
    }
}

#[cfg(unix)]
#[tokio::test]
async fn status_and_report_only_read_the_state_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    let sub = dir.path().join("ro");
    std::fs::create_dir(&sub).expect("mkdir");
    let state = sub.join("state.db");
    let keys: Vec<String> = (0..3).map(|i| format!("k{i}")).collect();
    state_file(&state, &keys).await;
    let s = state.display().to_string();
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    mode(&state, 0o444);
    mode(&sub, 0o555);
    let before = listing(&sub);
    let status = run(&["status", "--state", &s, "--json"]);
    let report = run(&["report", "--state", &s, "--format", "jsonl"]);
    let after = listing(&sub);
    mode(&sub, 0o755);
    mode(&state, 0o644);
    assert!(status.status.success(), "{}", show(&status));
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(v["total"]["objects"], 3, "{v}");
    assert!(report.status.success(), "{}", show(&report));
    assert_eq!(String::from_utf8_lossy(&report.stdout).lines().count(), 3);
    assert_eq!(
        after, before,
        "status/report changed the state file's directory"
    );

    // A state file of a newer s3cse: refused, with a clear message, and left as it is.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{s}"))
        .await
        .expect("sqlite");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', 1, x'00', 0)",
    )
    .execute(&pool)
    .await
    .expect("insert");
    pool.close().await;
    let bytes = std::fs::read(&state).expect("read");
    for args in [["status", "--state", &s], ["report", "--state", &s]] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("schema version 9999, newer than this s3cse"),
            "{}",
            show(&o)
        );
    }
    assert_eq!(std::fs::read(&state).expect("read"), bytes);
}

/// `--noncurrent delete` needs a run that lists the bucket: `work` and `--manifest` runs are
/// refused before any request (exit 2), and `report --noncurrent` does not go to S3 with `--to`.
#[test]
fn noncurrent_delete_and_report_refuse_what_they_cannot_do() {
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("s.db").display().to_string();
    let manifest = dir.path().join("m.csv").display().to_string();
    std::fs::write(&manifest, "b,k\n").expect("manifest");
    let kms = ["--kms-key-id", "alias/none"];
    let cases: [Vec<&str>; 3] = [
        vec!["work", "--state", &state, "--noncurrent", "delete"],
        vec![
            "rekey",
            "s3://b",
            "--state",
            &state,
            "--manifest",
            &manifest,
            "--noncurrent",
            "delete",
        ],
        vec![
            "report",
            "--state",
            &state,
            "--noncurrent",
            "--to",
            "s3://b/r/",
        ],
    ];
    for mut args in cases {
        if args[0] != "report" {
            args.extend_from_slice(&kms);
        }
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("--noncurrent") || err.contains("--to"),
            "{args:?} says why: {err}"
        );
    }
    assert!(!Path::new(&state).exists(), "no state file was made");
}
