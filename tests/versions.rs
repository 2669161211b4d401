//! Object versions (issue 13, item 4) against the test bed: `get`/`inspect --version-id`, and
//! `rekey --noncurrent report|delete` on a versioned bucket, checked against the bucket's own
//! version listing and against `s3cse audit --versions`.

use std::path::Path;
use std::sync::Arc;

use s3cse::client::S3Cse;
use s3cse::codec;
use s3cse::keyring::{AwsKms, Keyring};
use s3cse::rekey::noncurrent::{self, NoncurrentMode};

mod common;

use common::{Bed, aes_key, aes_key_file, bed, data, put_v1, run_s3cse as run, show};

fn ok(o: std::process::Output, what: &str) -> std::process::Output {
    assert!(o.status.success(), "{what}: {}", show(&o));
    o
}

/// `s3cse put FILE s3://BUCKET/KEY --kms-key-id KEY`: a current V2 object under the bed's key.
fn put(b: &Bed, key: &str, body: &[u8]) {
    put_under(b, key, body, &b.key_id);
}

/// [`put`] under the KMS key `kms_key`.
fn put_under(b: &Bed, key: &str, body: &[u8], kms_key: &str) {
    let f = b.write(&format!("in-{}", key.replace('/', "_")), body);
    let url = b.url(key);
    ok(
        run(&[
            "put",
            &f.display().to_string(),
            &url,
            "--kms-key-id",
            kms_key,
        ]),
        "put",
    );
}

/// [`Bed::rekey`], with only the target as a KMS source: seed()'s stuck.bin, under another key,
/// fails.
fn rekey(b: &Bed, state: &str, extra: &[&str]) -> std::process::Output {
    b.rekey_command(state)
        .args(["--source-kms-key", &b.key_id])
        .args(extra)
        .output()
        .expect("run s3cse rekey")
}

/// Every version of `key`, newest first: (version id, is latest).
async fn versions(b: &Bed, key: &str) -> Vec<(String, bool)> {
    let out =
        b.s3.list_object_versions()
            .bucket(&b.bucket)
            .prefix(key)
            .send()
            .await
            .expect("list versions");
    out.versions()
        .iter()
        .filter(|v| v.key() == Some(key))
        .map(|v| {
            (
                v.version_id().unwrap_or_default().to_owned(),
                v.is_latest() == Some(true),
            )
        })
        .collect()
}

/// `report --noncurrent --format jsonl`, keyed by version id.
fn noncurrent_report(state: &str) -> Vec<serde_json::Value> {
    let o = ok(
        run(&[
            "report",
            "--state",
            state,
            "--noncurrent",
            "--format",
            "jsonl",
        ]),
        "report --noncurrent",
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

fn status(state: &str) -> serde_json::Value {
    let o = ok(run(&["status", "--state", state, "--json"]), "status");
    serde_json::from_slice(&o.stdout).expect("status json")
}

fn audit_versions(b: &Bed) -> serde_json::Value {
    let o = run(&[
        "audit",
        &b.bucket_url(),
        "--kms-key-id",
        &b.key_id,
        "--versions",
        "--json",
    ]);
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", show(&o));
    serde_json::from_slice(&o.stdout).expect("audit json")
}

#[tokio::test(flavor = "multi_thread")]
async fn get_and_inspect_read_an_old_version() {
    let Some(b) = bed("versions-get").await else {
        return;
    };
    b.enable_versioning().await;
    let (old, new) = (data(5000, 1), data(7000, 2));
    put(&b, "doc.bin", &old);
    let old_id = b.version_of("doc.bin").await;
    put(&b, "doc.bin", &new);
    assert_ne!(b.version_of("doc.bin").await, old_id);
    let url = b.url("doc.bin");
    let key_id = b.key_id.clone();
    let out = b.path("out.bin");
    let out_s = out.display().to_string();
    let get = |extra: &[&str]| {
        let args = [
            &[
                "get",
                url.as_str(),
                "-o",
                out_s.as_str(),
                "--kms-key-id",
                key_id.as_str(),
            ][..],
            extra,
        ]
        .concat();
        ok(run(&args), "get");
        std::fs::read(&out).expect("output")
    };
    assert_eq!(get(&[]), new, "the current version by default");
    assert_eq!(
        get(&["--version-id", &old_id]),
        old,
        "the old version's bytes"
    );
    // To stdout too (the other release path).
    let o = ok(
        run(&[
            "get",
            &url,
            "--kms-key-id",
            &key_id,
            "--version-id",
            &old_id,
        ]),
        "get to stdout",
    );
    assert_eq!(o.stdout, old);
    // A legacy old version (V1 under the AES key) under a current one.
    let legacy = data(3000, 3);
    put_v1(&b.s3, &b.bucket, "legacy.bin", &legacy).await;
    let legacy_id = b.version_of("legacy.bin").await;
    put(&b, "legacy.bin", &data(10, 4));
    let aes = aes_key_file().display().to_string();
    let o = ok(
        run(&[
            "get",
            &b.url("legacy.bin"),
            "--aes-key-file",
            &aes,
            "--allow-legacy",
            "--version-id",
            &legacy_id,
        ]),
        "get legacy version",
    );
    assert_eq!(o.stdout, legacy);

    let inspect = |key: &str, version: Option<&str>| {
        let u = b.url(key);
        let mut args = vec!["inspect", u.as_str(), "--json"];
        if let Some(v) = version {
            args.extend(["--version-id", v]);
        }
        let o = ok(run(&args), "inspect");
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("inspect json")
    };
    let i = inspect("legacy.bin", Some(&legacy_id));
    assert_eq!(i["version_id"], legacy_id.as_str(), "{i:#}");
    assert_eq!(i["legacy"], true, "{i:#}");
    let i = inspect("legacy.bin", None);
    assert_eq!(i["legacy"], false, "{i:#}");
    assert_ne!(i["version_id"], legacy_id.as_str(), "{i:#}");
    // An unknown version is an error, not the current version.
    let o = run(&[
        "get",
        &url,
        "--kms-key-id",
        &key_id,
        "--version-id",
        "no-such-version",
    ]);
    assert!(!o.status.success(), "{}", show(&o));
    assert!(o.stdout.is_empty());
}

/// A bucket before a migration: `legacy.bin` (V1 overwritten by V1: two legacy noncurrent
/// versions once migrated), `notes.txt` (plaintext under a current version), `stuck.bin`
/// (a legacy old version under a current version that cannot be migrated: under another KMS
/// key, which [`rekey`]'s `--source-kms-key` does not allow). Returns the version ids of
/// legacy.bin's two versions and of stuck.bin's legacy one.
async fn seed(b: &Bed) -> (Vec<String>, String) {
    b.enable_versioning().await;
    put_v1(&b.s3, &b.bucket, "legacy.bin", &data(4000, 1)).await;
    let first = b.version_of("legacy.bin").await;
    put_v1(&b.s3, &b.bucket, "legacy.bin", &data(4100, 2)).await;
    let second = b.version_of("legacy.bin").await;
    b.raw_put("notes.txt", data(50, 3), &[]).await;
    put(b, "notes.txt", &data(60, 4));
    put_v1(&b.s3, &b.bucket, "stuck.bin", &data(300, 5)).await;
    let stuck = b.version_of("stuck.bin").await;
    let other = common::kms_key(&b.kms).await;
    put_under(b, "stuck.bin", &data(20, 6), &other);
    (vec![first, second], stuck)
}

#[tokio::test(flavor = "multi_thread")]
async fn noncurrent_versions_are_reported_after_a_migration() {
    let Some(b) = bed("versions-report").await else {
        return;
    };
    let (legacy, stuck) = seed(&b).await;
    let state = b.path("jobs.db").display().to_string();
    let o = rekey(&b, &state, &[]);
    // stuck.bin fails (its key is not given): exit 1, the rest migrated.
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("noncurrent versions: 4 listed, 3 under a legacy key"),
        "{text}"
    );
    let s = status(&state);
    let n = &s["noncurrent_versions"];
    assert_eq!(n["total"], 4, "{s:#}");
    assert_eq!(n["remaining_not_deleted"], 3, "{s:#}");
    assert_eq!(n["remaining_by_reason"]["legacy-wrap"], 3, "{s:#}");
    assert_eq!(n["by_class"]["plaintext"], 1, "{s:#}");
    assert_eq!(n["by_state"]["listed"], 4, "{s:#}");
    let rows = noncurrent_report(&state);
    let remaining: Vec<&str> = rows
        .iter()
        .filter(|r| r["class"] == "remaining")
        .map(|r| r["version_id"].as_str().expect("version id"))
        .collect();
    for v in legacy.iter().chain([&stuck]) {
        assert!(remaining.contains(&v.as_str()), "{v} in {rows:#?}");
    }
    // Nothing deleted in report mode.
    assert_eq!(versions(&b, "legacy.bin").await.len(), 3);
    // The text status calls them out.
    let o = ok(run(&["status", "--state", &state]), "status");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("keep it alive"),
        "{}",
        show(&o)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_removes_legacy_versions_only_behind_a_verified_current_version() {
    let Some(b) = bed("versions-delete").await else {
        return;
    };
    let (legacy, stuck) = seed(&b).await;
    let state = b.path("jobs.db").display().to_string();
    let o = rekey(&b, &state, &["--noncurrent", "delete"]);
    assert_eq!(o.status.code(), Some(1), "stuck.bin fails: {}", show(&o));
    // legacy.bin: its current version is the migrated one; both legacy versions are gone,
    // the migrated source (now noncurrent, V1) too: that is legacy[1], the version rekey read.
    let now = versions(&b, "legacy.bin").await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(now[0].1);
    assert!(!legacy.contains(&now[0].0));
    // notes.txt: a plaintext old version is no key-retirement problem: kept.
    assert_eq!(versions(&b, "notes.txt").await.len(), 2);
    // stuck.bin: the current version is not migrated, so its legacy old version stays.
    let stuck_now = versions(&b, "stuck.bin").await;
    assert_eq!(stuck_now.len(), 2);
    assert!(stuck_now.iter().any(|(v, latest)| v == &stuck && !latest));

    let rows = noncurrent_report(&state);
    let row = |v: &str| {
        rows.iter()
            .find(|r| r["version_id"] == v)
            .unwrap_or_else(|| panic!("{v} not in {rows:#?}"))
    };
    for v in &legacy {
        let r = row(v);
        assert_eq!(r["state"], "deleted", "{r}");
        assert_eq!(r["key"], "legacy.bin", "{r}");
        assert!(r["deleted_at"].as_i64().is_some(), "{r}");
    }
    let r = row(&stuck);
    assert_eq!(r["state"], "kept", "{r}");
    assert!(
        r["note"]
            .as_str()
            .is_some_and(|n| n.contains("not migrated")),
        "{r}"
    );
    let plain: Vec<_> = rows.iter().filter(|r| r["class"] == "plaintext").collect();
    assert_eq!(plain.len(), 1);
    assert_eq!(plain[0]["state"], "kept");

    // The census agrees: the only legacy noncurrent version left is stuck.bin's.
    let s = audit_versions(&b);
    let left: Vec<_> = s["remaining_objects"]
        .as_array()
        .expect("remaining")
        .iter()
        .filter(|r| r["reason"] == "noncurrent-version")
        .collect();
    assert_eq!(left.len(), 1, "{s:#}");
    assert_eq!(left[0]["key"], "stuck.bin");
    assert_eq!(left[0]["version_id"], stuck.as_str());

    // Idempotent: a second run deletes nothing more and keeps the record (stuck.bin stays
    // failed from the first run, not retried without --retry-failed: exit 0).
    let o = rekey(&b, &state, &["--noncurrent", "delete"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("0 deleted"),
        "{}",
        show(&o)
    );
    for v in &legacy {
        assert_eq!(row(v)["state"], "deleted");
    }
    let rows = noncurrent_report(&state);
    assert_eq!(
        rows.iter().filter(|r| r["state"] == "deleted").count(),
        2,
        "{rows:#?}"
    );
}

/// The in-process pieces the CLI wires together: the bed's bucket, legacy objects read with
/// the vectors' AES key and KMS (any key).
async fn config(b: &Bed, state: &str) -> s3cse::rekey::RekeyConfig {
    use s3cse::keyring::KmsKeyring;
    use s3cse::metrics::Metrics;

    let conf = common::sdk_config().await;
    let s3conf = aws_sdk_s3::config::Builder::from(&conf).force_path_style(true);
    let s3 = aws_sdk_s3::Client::from_conf(s3conf.build());
    let metrics = Arc::new(Metrics::new("test"));
    let target = s3cse::rekey::kms::describe_key(&b.kms, &b.key_id, &metrics)
        .await
        .expect("describe key");
    let kms: Arc<dyn s3cse::keyring::KmsClient> = Arc::new(AwsKms::new(b.kms.clone()));
    let ring = Keyring::aes(aes_key()).with_kms(KmsKeyring::any_key(kms.clone(), None));
    let client = S3Cse::new(s3, ring).with_policy(codec::DecryptPolicy::legacy());
    let store = s3cse::store::JobStore::open(Path::new(state))
        .await
        .expect("store");
    s3cse::rekey::RekeyConfig {
        concurrency: 2,
        ..common::rekey_config(b, client, kms, target, store, metrics).await
    }
}

/// Versions written between the listing and the deletes: never deleted (they were not listed),
/// and an unmigrated new current version stops the deletes of its object altogether.
#[tokio::test(flavor = "multi_thread")]
async fn a_version_written_after_the_listing_survives() {
    let Some(b) = bed("versions-race").await else {
        return;
    };
    b.enable_versioning().await;
    for key in ["a.bin", "b.bin"] {
        put_v1(&b.s3, &b.bucket, key, &data(2000, 1)).await;
        put_v1(&b.s3, &b.bucket, key, &data(2100, 2)).await;
    }
    let state = b.path("jobs.db").display().to_string();
    let c = config(&b, &state).await;
    let never = s3cse::rekey::Shutdown::never();
    let run = s3cse::rekey::run(c.clone(), never.clone())
        .await
        .expect("run");
    assert_eq!(run.work.migrated, 2);
    // The listing: each key has two legacy noncurrent versions.
    let listed = noncurrent::sweep(&c, NoncurrentMode::Report, &never)
        .await
        .expect("sweep");
    assert_eq!((listed.listed, listed.remaining), (4, 4));
    let migrated_a = b.version_of("a.bin").await;
    let migrated_b = b.version_of("b.bin").await;
    // Concurrent writers: a current-format version of a.bin, a legacy one of b.bin.
    put(&b, "a.bin", &data(10, 3));
    put_v1(&b.s3, &b.bucket, "b.bin", &data(20, 4)).await;
    let new_a = b.version_of("a.bin").await;
    let new_b = b.version_of("b.bin").await;
    let done = noncurrent::delete_recorded(&c, &never)
        .await
        .expect("delete pass");
    assert_eq!((done.deleted, done.kept), (2, 2), "{done:?}");
    // a.bin: its new current version verifies, so the two listed legacy versions went; the
    // version that was current at the listing (the migrated one) was never listed: it stays.
    let mut a: Vec<String> = versions(&b, "a.bin")
        .await
        .into_iter()
        .map(|v| v.0)
        .collect();
    let mut want = vec![new_a, migrated_a];
    a.sort();
    want.sort();
    assert_eq!(a, want);
    // b.bin: its current version is legacy now (not migrated): nothing of it is deleted.
    let bv: Vec<String> = versions(&b, "b.bin")
        .await
        .into_iter()
        .map(|v| v.0)
        .collect();
    assert_eq!(bv.len(), 4, "{bv:?}");
    assert!(bv.contains(&new_b) && bv.contains(&migrated_b));
    c.store.close().await;
}

/// Versions under Object Lock (a legal hold, a retention in force) are never deleted: recorded
/// kept with the reason; the unlocked legacy version of the same object goes.
#[tokio::test(flavor = "multi_thread")]
async fn versions_under_object_lock_are_kept() {
    use aws_sdk_s3::types::{
        ObjectLockLegalHold, ObjectLockLegalHoldStatus, ObjectLockRetention,
        ObjectLockRetentionMode,
    };
    let Some(b) = bed("versions-lock").await else {
        return;
    };
    // Object Lock needs a bucket created with it (versioning comes with it).
    let name = format!("{}-lock", b.bucket);
    b.s3.create_bucket()
        .bucket(&name)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .expect("create lock bucket");
    let b = Bed { bucket: name, ..b };
    put_v1(&b.s3, &b.bucket, "held.bin", &data(900, 1)).await;
    let held = b.version_of("held.bin").await;
    b.s3.put_object_legal_hold()
        .bucket(&b.bucket)
        .key("held.bin")
        .version_id(&held)
        .legal_hold(
            ObjectLockLegalHold::builder()
                .status(ObjectLockLegalHoldStatus::On)
                .build(),
        )
        .send()
        .await
        .expect("legal hold");
    put_v1(&b.s3, &b.bucket, "held.bin", &data(950, 2)).await;
    let source = b.version_of("held.bin").await;
    put_v1(&b.s3, &b.bucket, "kept.bin", &data(800, 3)).await;
    let retained = b.version_of("kept.bin").await;
    let until = aws_smithy_types::DateTime::from_secs(
        aws_smithy_types::DateTime::from(std::time::SystemTime::now()).secs() + 86_400,
    );
    b.s3.put_object_retention()
        .bucket(&b.bucket)
        .key("kept.bin")
        .version_id(&retained)
        .retention(
            ObjectLockRetention::builder()
                .mode(ObjectLockRetentionMode::Governance)
                .retain_until_date(until)
                .build(),
        )
        .send()
        .await
        .expect("retention");
    put_v1(&b.s3, &b.bucket, "kept.bin", &data(850, 4)).await;

    let state = b.path("jobs.db").display().to_string();
    ok(rekey(&b, &state, &["--noncurrent", "delete"]), "rekey");
    let rows = noncurrent_report(&state);
    let row = |v: &str| {
        rows.iter()
            .find(|r| r["version_id"] == v)
            .unwrap_or_else(|| panic!("{v} not in {rows:#?}"))
    };
    assert_eq!(row(&held)["state"], "kept");
    assert_eq!(row(&held)["note"], "Object Lock: legal hold");
    assert_eq!(row(&retained)["state"], "kept");
    assert!(
        row(&retained)["note"]
            .as_str()
            .is_some_and(|n| n.starts_with("Object Lock: GOVERNANCE retention")),
        "{rows:#?}"
    );
    assert_eq!(row(&source)["state"], "deleted");
    let left: Vec<String> = versions(&b, "held.bin")
        .await
        .into_iter()
        .map(|v| v.0)
        .collect();
    assert_eq!(
        left.len(),
        2,
        "the migrated current version and the held one: {left:?}"
    );
    assert!(left.contains(&held) && !left.contains(&source));
    assert_eq!(versions(&b, "kept.bin").await.len(), 2);
}
