//! The crash matrix (issue 10): `s3cse rekey` is killed at every step boundary of every write
//! path (a failpoint aborts the process, as an OOM kill would), run again, and then every
//! invariant is checked: each object decrypts to its original plaintext under the target key
//! (read back by AWS's Python client), the job table records it as rewritten / rewrapped from
//! its source format with the replaced version id (versioned bucket), no multipart upload is
//! left open, no `.instruction` object is left behind, and `s3cse audit` exits 0.
//!
//! Every case runs twice: with a SQLite state file (the next start releases the dead process's
//! leases at once: same host, pid gone) and with a PostgreSQL queue (the test bed's; there the
//! leases lapse after `--lease-secs`, since a pid on a shared queue may be another host's).
//!
//! Needs the binary built with the `failpoints` feature:
//! `cargo test --features failpoints --test crash` (scripts/test.sh runs it). Without the
//! feature this file compiles to nothing.
#![cfg(feature = "failpoints")]

use std::path::Path;
use std::process::{Command, Output};

use s3cse::codec::WriteFormat;
use s3cse::keyring::Keyring;

mod common;

use common::{Bed, aes_key, bed, data, pg_database, put_raw_gcm, put_v1, record, show};

/// The job store a case runs against.
#[derive(Debug, Clone, Copy)]
enum Store {
    Sqlite,
    Postgres,
}

const STORES: [Store; 2] = [Store::Sqlite, Store::Postgres];

impl Store {
    /// The bucket tag of a case on this store.
    fn tag(self, tag: &str) -> String {
        match self {
            Store::Sqlite => tag.to_owned(),
            Store::Postgres => format!("{tag}-pg"),
        }
    }

    /// The `--state` of a case: a file in `dir`, or a fresh database on the test bed's
    /// PostgreSQL (None when the bed runs none, outside CI).
    async fn state(self, tag: &str, dir: &Path) -> Option<String> {
        match self {
            Store::Sqlite => Some(dir.join("crash.db").display().to_string()),
            Store::Postgres => pg_database(tag).await,
        }
    }
}

const BIN: &str = env!("CARGO_BIN_EXE_s3cse");

/// The objects one case seeds: each write path has its own.
#[derive(Debug, Clone, Copy)]
enum Seed {
    /// A small V1 object: a single-PUT rewrite.
    SmallCbc,
    /// A V1 object above the 8 MiB part size: a multipart rewrite.
    BigCbc,
    /// A raw-key GCM object: a CopyObject rewrap (KMS Encrypt).
    Gcm,
    /// A raw-key GCM object above the (lowered) copy threshold: a multipart copy rewrap.
    BigGcm,
    /// A raw-key GCM object with its envelope in `<key>.instruction`: a rewrap that moves
    /// the envelope into the metadata, then deletes the instruction file.
    Instruction,
}

impl Seed {
    fn key(self) -> &'static str {
        match self {
            Seed::SmallCbc => "small é.bin",
            Seed::BigCbc => "big.bin",
            Seed::Gcm => "gcm+x.bin",
            Seed::BigGcm => "big-gcm.bin",
            Seed::Instruction => "dir/instr.bin",
        }
    }

    /// (plaintext, expected action, expected source format).
    async fn write(self, b: &Bed) -> (Vec<u8>, &'static str, &'static str) {
        let key = self.key();
        match self {
            Seed::SmallCbc => {
                let d = data(3000, 1);
                put_v1(&b.s3, &b.bucket, key, &d).await;
                (d, "rewrite", "v1-aes-ecb-cbc")
            }
            Seed::BigCbc => {
                let d = data((9 << 20) + 5, 2);
                put_v1(&b.s3, &b.bucket, key, &d).await;
                (d, "rewrite", "v1-aes-ecb-cbc")
            }
            Seed::Gcm | Seed::BigGcm => {
                let d = match self {
                    Seed::Gcm => data(2500, 3),
                    _ => data((11 << 20) + 3, 4),
                };
                put_raw_gcm(&b.s3, &b.bucket, key, &d).await;
                (d, "rewrap", "v2-aes-gcm-gcm")
            }
            Seed::Instruction => {
                let d = data(4100, 5);
                b.put_with_instruction_file(&Keyring::aes(aes_key()), WriteFormat::V2, key, &d)
                    .await;
                (d, "rewrap", "v2-aes-gcm-gcm")
            }
        }
    }
}

/// `s3cse rekey` over the bed's bucket with the vectors' AES key; the copy threshold lowered
/// to 5 MiB so the 11 MiB GCM object takes the multipart copy. `failpoint`: abort there.
fn rekey(b: &Bed, state: &str, failpoint: Option<&str>) -> Output {
    rekey_with(b, state, failpoint, &[])
}

/// [`rekey`] with `extra` arguments.
fn rekey_with(b: &Bed, state: &str, failpoint: Option<&str>, extra: &[&str]) -> Output {
    let mut cmd = b.rekey_command(state);
    cmd.args([
        "--copy-part-threshold",
        "5242880",
        "--copy-part-size",
        "5242880",
        "--lease-secs",
        "3",
    ]);
    cmd.args(extra);
    match failpoint {
        Some(f) => cmd.env("S3CSE_FAILPOINT", f),
        None => cmd.env_remove("S3CSE_FAILPOINT"),
    };
    cmd.output().expect("run s3cse")
}

/// [`crash_once`] on each store.
async fn crash_at(tag: &str, failpoint: &str, seeds: &[Seed]) {
    for store in STORES {
        crash_once(&store.tag(tag), store, failpoint, seeds).await;
    }
}

/// Seeds `seeds`, crashes a rekey at `failpoint`, runs it again to the end, and checks every
/// invariant.
async fn crash_once(tag: &str, store: Store, failpoint: &str, seeds: &[Seed]) {
    let Some(b) = bed(tag).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let Some(state) = store.state(tag, dir.path()).await else {
        return;
    };
    let failpoint_ = failpoint;
    let failpoint = &format!("{failpoint} ({store:?})");
    b.enable_versioning().await;
    let mut want = Vec::new();
    for s in seeds {
        let (plain, action, format) = s.write(&b).await;
        let version = b.version_of(s.key()).await;
        want.push((s.key(), plain, action, format, version));
    }

    let o = rekey(&b, &state, Some(failpoint_));
    assert_eq!(
        o.status.code(),
        None,
        "the process was killed at {failpoint}: {}",
        show(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("failpoint {failpoint_}")),
        "{}",
        show(&o)
    );
    // The dead process's leases are released at the next start (SQLite: same host, pid gone)
    // or lapse while it waits (PostgreSQL).
    let o = rekey(&b, &state, None);
    assert_eq!(o.status.code(), Some(0), "{failpoint}: {}", show(&o));

    for (key, plain, action, format, version) in &want {
        assert!(
            b.aws_reads(key) == *plain,
            "{failpoint}: {key} decrypts to its plaintext under the target key"
        );
        let (state_, action_, format_, prev, code, _) = record(&state, key).await;
        assert_eq!(
            (
                state_.as_str(),
                action_.as_deref(),
                format_.as_deref(),
                prev.as_deref(),
                code
            ),
            (
                "done",
                Some(*action),
                Some(*format),
                Some(version.as_str()),
                None
            ),
            "{failpoint}: {key} recorded as the write it was, with the replaced version"
        );
    }
    assert_eq!(
        b.open_uploads().await,
        Vec::<String>::new(),
        "{failpoint}: no open upload"
    );
    let keys = b.keys().await;
    assert!(
        !keys.iter().any(|k| k.ends_with(".instruction")),
        "{failpoint}: no stray .instruction: {keys:?}"
    );
    // The independent census agrees: nothing depends on anything but the target key.
    let o = Command::new(BIN)
        .args([
            "audit",
            &b.bucket_url(),
            "--kms-key-id",
            &b.key_id,
            "--json",
        ])
        .output()
        .expect("run s3cse audit");
    assert_eq!(o.status.code(), Some(0), "{failpoint}: audit: {}", show(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_before_a_put() {
    crash_at("crash-before-put", "rewrite-before-put", &[Seed::SmallCbc]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_a_put() {
    crash_at("crash-after-put", "rewrite-after-put", &[Seed::SmallCbc]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_with_a_multipart_upload_open() {
    crash_at("crash-mpu-open", "upload-before-complete", &[Seed::BigCbc]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_a_multipart_upload() {
    crash_at("crash-mpu-done", "rewrite-after-put", &[Seed::BigCbc]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_before_a_copy() {
    crash_at("crash-before-copy", "rewrap-before-copy", &[Seed::Gcm]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_a_copy() {
    crash_at("crash-after-copy", "rewrap-after-copy", &[Seed::Gcm]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_with_a_multipart_copy_open() {
    crash_at("crash-mpc-open", "copy-before-complete", &[Seed::BigGcm]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_a_multipart_copy() {
    crash_at("crash-mpc-done", "rewrap-after-copy", &[Seed::BigGcm]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_the_verify() {
    crash_at("crash-verify", "after-verify", &[Seed::SmallCbc, Seed::Gcm]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_before_the_instruction_file_is_deleted() {
    crash_at(
        "crash-instr",
        "before-instruction-delete",
        &[Seed::Instruction],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_before_the_outcome_is_recorded() {
    crash_at(
        "crash-record",
        "before-record",
        &[Seed::SmallCbc, Seed::Instruction],
    )
    .await;
}

/// `report --noncurrent` as JSON lines.
fn version_rows(state: &str) -> Vec<serde_json::Value> {
    let o = Command::new(BIN)
        .args([
            "report",
            "--state",
            state,
            "--noncurrent",
            "--format",
            "jsonl",
        ])
        .output()
        .expect("run s3cse");
    assert!(o.status.success(), "{}", show(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// Killed between a noncurrent version's DeleteObject and its record (`--noncurrent delete`):
/// the row says `deleting`; the next run deletes by the same version id again, finds it gone,
/// and records it deleted.
#[tokio::test(flavor = "multi_thread")]
async fn crash_between_a_version_delete_and_its_record() {
    for store in STORES {
        crash_between_a_version_delete_and_its_record_on(store).await;
    }
}

async fn crash_between_a_version_delete_and_its_record_on(store: Store) {
    let tag = store.tag("crash-version");
    let Some(b) = bed(&tag).await else {
        return;
    };
    let Some(state) = store.state(&tag, &b.path("")).await else {
        return;
    };
    b.enable_versioning().await;
    put_v1(&b.s3, &b.bucket, "v.bin", &data(1000, 1)).await;
    put_v1(&b.s3, &b.bucket, "v.bin", &data(1100, 2)).await;
    let delete = ["--noncurrent", "delete"];
    let o = rekey_with(&b, &state, Some("version-before-record"), &delete);
    assert!(!o.status.success(), "the failpoint aborts: {}", show(&o));
    let rows = version_rows(&state);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert_eq!(
        rows.iter().filter(|r| r["state"] == "deleting").count(),
        1,
        "{rows:#?}"
    );
    let o = rekey_with(&b, &state, None, &delete);
    assert!(o.status.success(), "{}", show(&o));
    let rows = version_rows(&state);
    assert!(rows.iter().all(|r| r["state"] == "deleted"), "{rows:#?}");
    let listed =
        b.s3.list_object_versions()
            .bucket(&b.bucket)
            .send()
            .await
            .expect("list versions");
    assert_eq!(
        listed.versions().len(),
        1,
        "only the migrated current version is left"
    );
    assert!(listed.versions()[0].is_latest() == Some(true));
}

/// `rekey --keep-instruction-files` killed around the write of a rotated instruction file
/// (issue 13), then run again: each object reads back under the target key, its data object
/// keeps its ETag, its `.instruction` object is kept (never deleted as stale) and carries the
/// new envelope, the record names a rewrap from the source format, and `audit
/// --keep-instruction-files` exits 0.
async fn crash_rotation_at(tag: &str, failpoint: &str) {
    for store in STORES {
        crash_rotation_once(&store.tag(tag), store, failpoint).await;
    }
}

async fn crash_rotation_once(tag: &str, store: Store, failpoint_: &str) {
    let Some(b) = bed(tag).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let Some(state) = store.state(tag, dir.path()).await else {
        return;
    };
    let failpoint = &format!("{failpoint_} ({store:?})");
    b.enable_versioning().await;
    let ring = Keyring::aes(aes_key());
    let mut want = Vec::new();
    for (key, format, fmt_name, seed) in [
        ("rot/v2.bin", WriteFormat::V2, "v2-aes-gcm-gcm", 21),
        ("rot/v3 é.bin", WriteFormat::V3, "v3-aes-gcm-committing", 22),
    ] {
        let plain = data(3100, seed);
        b.put_with_instruction_file(&ring, format, key, &plain)
            .await;
        let etags = b.etags().await;
        want.push((
            key,
            plain,
            fmt_name,
            etags[key].clone(),
            etags[&format!("{key}.instruction")].clone(),
            b.version_of(key).await,
        ));
    }
    let run = |failpoint: Option<&str>| {
        let mut cmd = b.rekey_command(&state);
        cmd.args(["--keep-instruction-files", "--lease-secs", "3"]);
        match failpoint {
            Some(f) => cmd.env("S3CSE_FAILPOINT", f),
            None => cmd.env_remove("S3CSE_FAILPOINT"),
        };
        cmd.output().expect("run s3cse")
    };
    let o = run(Some(failpoint_));
    assert_eq!(o.status.code(), None, "killed at {failpoint}: {}", show(&o));
    let o = run(None);
    assert_eq!(o.status.code(), Some(0), "{failpoint}: {}", show(&o));
    let etags = b.etags().await;
    for (key, plain, format, data_etag, instr_etag, version) in &want {
        assert!(
            b.aws_reads(key) == *plain,
            "{failpoint}: {key} decrypts under the target key"
        );
        assert_eq!(&etags[*key], data_etag, "{failpoint}: {key} untouched");
        let instr = format!("{key}.instruction");
        assert!(
            etags.get(&instr).is_some_and(|e| e != instr_etag),
            "{failpoint}: {instr} kept and rewritten: {etags:?}"
        );
        let (state_, action, format_, prev, code, _) = record(&state, key).await;
        assert_eq!(
            (
                state_.as_str(),
                action.as_deref(),
                format_.as_deref(),
                prev.as_deref(),
                code
            ),
            (
                "done",
                Some("rewrap"),
                Some(*format),
                Some(version.as_str()),
                None
            ),
            "{failpoint}: {key}"
        );
    }
    let o = Command::new(BIN)
        .args([
            "audit",
            &b.bucket_url(),
            "--kms-key-id",
            &b.key_id,
            "--keep-instruction-files",
            "--json",
        ])
        .output()
        .expect("run s3cse audit");
    assert_eq!(o.status.code(), Some(0), "{failpoint}: audit: {}", show(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_before_an_instruction_file_is_rotated() {
    crash_rotation_at("crash-rot-before", "rotate-before-instruction-put").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_an_instruction_file_is_rotated() {
    crash_rotation_at("crash-rot-after", "rotate-after-instruction-put").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_before_a_rotation_is_recorded() {
    crash_rotation_at("crash-rot-record", "before-record").await;
}
