//! `s3cse audit` against the local test bed (SeaweedFS S3 + moto KMS), through the real binary:
//! a bucket of every kind of object, what audit says of each (and that it agrees with what the
//! object really is, before and after `s3cse rekey`), exit codes, `--list`, `--versions`, a
//! prefix, the metrics textfile. Without `S3CSE_TESTBED` every test says "skipped" and passes.

use std::collections::BTreeMap;
use std::process::Output;
use std::sync::Arc;

use s3cse::client::S3Cse;
use s3cse::codec::WriteFormat;
use s3cse::keyring::{AwsKms, Keyring, KmsKeyring};

mod common;

use common::{Bed, aes_key_file, bed, data, kms_key, put_v1, run_s3cse as run, show};

/// `s3cse audit URL --kms-key-id TARGET EXTRA...`.
fn audit(url: &str, target: &str, extra: &[&str]) -> Output {
    let mut args = vec!["audit", url, "--kms-key-id", target];
    args.extend_from_slice(extra);
    run(&args)
}

/// `audit --json`, with the exit code it must have.
fn audit_json(url: &str, target: &str, extra: &[&str], code: i32) -> serde_json::Value {
    let o = audit(url, target, &[&["--json"], extra].concat());
    assert_eq!(o.status.code(), Some(code), "{}", show(&o));
    serde_json::from_slice(&o.stdout).expect("audit json")
}

/// `audit --list all`: key (and version) -> its JSON line.
fn audit_lines(url: &str, target: &str, extra: &[&str]) -> BTreeMap<String, serde_json::Value> {
    let o = audit(url, target, &[&["--list", "all"], extra].concat());
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", show(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            let key = v["key"].as_str().expect("key").to_owned();
            let id = match v["version_id"].as_str() {
                Some(version) => format!("{key}@{version}"),
                None => key,
            };
            (id, v)
        })
        .collect()
}

/// `s3cse put FILE s3://BUCKET/KEY EXTRA...`.
fn put(b: &Bed, key: &str, body: &[u8], extra: &[&str]) {
    let name: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let f = b.write(&format!("in-{name}"), body);
    let f = f.display().to_string();
    let url = b.url(key);
    let o = run(&[&["put", f.as_str(), url.as_str()], extra].concat());
    assert!(o.status.success(), "put {key}: {}", show(&o));
}

/// An object whose envelope (V2 kms+context under the bed's key) lives in `<key>.instruction`.
async fn put_with_instruction_file(b: &Bed, key: &str, body: &[u8]) -> Vec<u8> {
    let kms = Arc::new(AwsKms::new(b.kms.clone()));
    let ring = Keyring::kms(KmsKeyring::new(kms, &b.key_id));
    b.put_with_instruction_file(&ring, WriteFormat::V2, key, body)
        .await
}

fn reason(lines: &BTreeMap<String, serde_json::Value>, key: &str) -> String {
    let l = lines.get(key).unwrap_or_else(|| panic!("{key} not listed"));
    match l["class"].as_str() {
        Some("remaining") => l["reason"].as_str().expect("reason").to_owned(),
        other => other.expect("class").to_owned(),
    }
}

/// What audit says of an object must be what the object is: a "current" one decrypts under the
/// target key alone with its envelope in its own metadata; a remaining one says so by inspection.
async fn assert_audit_tells_the_truth(b: &Bed, lines: &BTreeMap<String, serde_json::Value>) {
    let client = S3Cse::new(b.s3.clone(), Keyring::new());
    for (key, l) in lines {
        if key.ends_with(".instruction") {
            // Only orphans are listed on their own (their data object is gone or self-contained).
            assert_eq!(reason(lines, key), "orphan-instruction", "{key}");
            let data_key = key.trim_end_matches(".instruction");
            if let Ok(i) = client.inspect(&b.bucket, data_key).await {
                assert_ne!(
                    i.envelope_location.as_deref(),
                    Some("InstructionFile"),
                    "{key}"
                );
            }
            continue;
        }
        let i = client.inspect(&b.bucket, key).await.expect("inspect");
        let why = reason(lines, key);
        match why.as_str() {
            "plaintext" => assert!(!i.encrypted, "{key}"),
            "current" => {
                assert_eq!(
                    i.envelope_location.as_deref(),
                    Some("ObjectMetadata"),
                    "{key}"
                );
                assert_eq!(i.key_wrap.as_deref(), Some("kms+context"), "{key}");
                // The target key alone decrypts it.
                b.get_strict(key).await;
            }
            "legacy-wrap" => assert!(i.legacy, "{key}"),
            "raw-key" => assert!(
                matches!(i.key_wrap.as_deref(), Some("AES/GCM" | "RSA-OAEP-SHA1")),
                "{key}: {:?}",
                i.key_wrap
            ),
            "other-kms-key" => {
                assert_eq!(i.key_wrap.as_deref(), Some("kms+context"), "{key}");
                assert_ne!(l["wrapping_key"], "target", "{key}");
            }
            "instruction-file" => {
                assert_eq!(
                    i.envelope_location.as_deref(),
                    Some("InstructionFile"),
                    "{key}"
                )
            }
            other => panic!("{key}: unexpected {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_names_what_remains_and_why_before_and_after_rekey() {
    let Some(b) = bed("audit-mixed").await else {
        return;
    };
    let (target, url) = (b.key_id.clone(), b.bucket_url());
    let old = kms_key(&b.kms).await;
    let aes = aes_key_file().display().to_string();
    let uni_current = "dïr/ünïcødé ☃ current.bin";
    let uni_legacy = "dïr/lëgacy ☃+x.bin";
    b.raw_put("plain.txt", data(300, 1), &[]).await;
    put(
        &b,
        "current.bin",
        &data(1000, 2),
        &["--kms-key-id", &target],
    );
    put(&b, uni_current, &data(10, 3), &["--kms-key-id", &target]);
    put(
        &b,
        "v3-current.bin",
        &data(20, 4),
        &["--kms-key-id", &target, "--format", "v3"],
    );
    put(&b, "other-kms.bin", &data(2000, 5), &["--kms-key-id", &old]);
    put(
        &b,
        "v3-raw-aes.bin",
        &data(500, 6),
        &["--format", "v3", "--aes-key-file", &aes],
    );
    put_v1(&b.s3, &b.bucket, "legacy-v1.bin", &data(4000, 7)).await;
    put_v1(&b.s3, &b.bucket, uni_legacy, &data(40, 8)).await;
    let file = put_with_instruction_file(&b, "in-file.bin", &data(700, 9)).await;
    // Orphans: one whose object is gone, one next to an object with its own envelope.
    b.put_instruction("gone.bin.instruction", file.clone())
        .await;
    b.put_instruction("current.bin.instruction", file).await;

    let s = audit_json(&url, &target, &[], 1);
    assert_eq!(s["total"], 11, "{s:#}");
    assert_eq!(
        (s["plaintext"].as_u64(), s["current"].as_u64()),
        (Some(1), Some(3)),
        "{s:#}"
    );
    assert_eq!(s["remaining"], 7, "{s:#}");
    assert_eq!(s["bytes"]["plaintext"], 300);
    let by_reason = &s["remaining_by_reason"];
    for (r, n) in [
        ("legacy-wrap", 2),
        ("raw-key", 1),
        ("other-kms-key", 1),
        ("instruction-file", 1),
        ("orphan-instruction", 2),
        ("unreadable", 0),
        ("cbc-content", 0),
        ("noncurrent-version", 0),
    ] {
        assert_eq!(by_reason[r], n, "{r}: {s:#}");
    }
    assert_eq!(s["remaining_objects"].as_array().map(Vec::len), Some(7));
    assert_eq!(s["remaining_objects_truncated"], false);
    // The table's rows add up, and name the other key.
    let rows = s["by_class"].as_array().expect("rows");
    let sum: u64 = rows
        .iter()
        .map(|r| r["objects"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(sum, 11);
    assert!(
        rows.iter()
            .any(|r| r["reason"] == "other-kms-key" && r["key"] == format!("kms:{old}")),
        "{rows:#?}"
    );
    assert!(rows.iter().any(|r| r["format"] == "v1"
        && r["wrap"] == "aes-ecb"
        && r["content"] == "cbc"
        && r["objects"] == 2));

    let lines = audit_lines(&url, &target, &[]);
    let want = [
        ("plain.txt", "plaintext"),
        ("current.bin", "current"),
        (uni_current, "current"),
        ("v3-current.bin", "current"),
        ("other-kms.bin", "other-kms-key"),
        ("v3-raw-aes.bin", "raw-key"),
        ("legacy-v1.bin", "legacy-wrap"),
        (uni_legacy, "legacy-wrap"),
        ("in-file.bin", "instruction-file"),
        ("gone.bin.instruction", "orphan-instruction"),
        ("current.bin.instruction", "orphan-instruction"),
    ];
    for (key, r) in want {
        assert_eq!(reason(&lines, key), r, "{key}");
    }
    // The live instruction file is counted with its object, not on its own.
    assert!(!lines.contains_key("in-file.bin.instruction"));
    assert_eq!(lines.len(), 11);
    assert_audit_tells_the_truth(&b, &lines).await;

    // --list remaining: only the remaining ones; the verdict on stderr; exit 1.
    let o = audit(&url, &target, &["--list", "remaining"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let listed: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("line"))
        .collect();
    assert_eq!(listed.len(), 7);
    assert!(listed.iter().all(|l| l["class"] == "remaining"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("verdict: 7 object(s)"));
    // The cap on named objects is said.
    let capped = audit_json(&url, &target, &["--max-listed", "3"], 1);
    assert_eq!(
        capped["remaining_objects"].as_array().map(Vec::len),
        Some(3)
    );
    assert_eq!(capped["remaining_objects_truncated"], true);
    assert_eq!(capped["max_listed"], 3);
    // The text table names the key classes and ends with the verdict.
    let o = audit(&url, &target, &[]);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("other-kms-key") && text.contains("KiB"),
        "{text}"
    );
    assert!(
        text.trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("verdict: 7")),
        "{text}"
    );

    // After a rekey, audit must still say what each object is (some reasons only go once rekey
    // handles them: V3 under a raw key, envelopes in instruction files, orphans).
    let state = b.path("state.db").display().to_string();
    let _ = b.rekey(&state, &[]);
    let after = audit_lines(&url, &target, &[]);
    for key in [
        "plain.txt",
        "current.bin",
        "legacy-v1.bin",
        uni_legacy,
        "other-kms.bin",
    ] {
        let want = if key == "plain.txt" {
            "plaintext"
        } else {
            "current"
        };
        assert_eq!(reason(&after, key), want, "{key} after rekey");
    }
    assert_audit_tells_the_truth(&b, &after).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_exits_0_when_only_plaintext_and_current_remain_in_scope() {
    let Some(b) = bed("audit-ok").await else {
        return;
    };
    let target = b.key_id.clone();
    b.raw_put("ok/plain.txt", data(100, 1), &[]).await;
    put(
        &b,
        "ok/current.bin",
        &data(2048, 2),
        &["--kms-key-id", &target],
    );
    put(
        &b,
        "ok/v3.bin",
        &data(64, 3),
        &["--kms-key-id", &target, "--format", "v3"],
    );
    // Outside the prefix: a legacy object the prefix must leave out.
    put_v1(&b.s3, &b.bucket, "legacy/old.bin", &data(100, 4)).await;
    let textfile = b.path("audit.prom");
    let tf = textfile.display().to_string();
    let s = audit_json(&b.url("ok/"), &target, &["--metrics-textfile", &tf], 0);
    assert_eq!(
        (s["total"].as_u64(), s["remaining"].as_u64()),
        (Some(3), Some(0)),
        "{s:#}"
    );
    assert_eq!(
        (s["current"].as_u64(), s["plaintext"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(s["prefix"], "ok/");
    let prom = std::fs::read_to_string(&textfile).expect("textfile");
    for line in [
        "s3cse_audit_objects{class=\"current\"} 2",
        "s3cse_audit_objects{class=\"remaining\"} 0",
        "s3cse_audit_remaining_objects{reason=\"legacy-wrap\"} 0",
    ] {
        assert!(prom.contains(line), "{line}\n{prom}");
    }
    assert!(
        prom.contains("s3cse_audit_last_run_timestamp_seconds "),
        "{prom}"
    );
    let o = audit(&b.url("ok/"), &target, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("verdict: OK"));
    // The whole bucket has the legacy object.
    let s = audit_json(&b.bucket_url(), &target, &[], 1);
    assert_eq!(s["remaining_objects"][0]["key"], "legacy/old.bin", "{s:#}");
    // Errors are exit 2: a missing bucket, a key KMS does not know, no key at all.
    let o = audit("s3://no-such-bucket-s3cse-audit", &target, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let o = audit(&b.bucket_url(), "alias/no-such-key", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let o = run(&["audit", &b.bucket_url()]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_show_noncurrent_legacy_versions_as_remaining() {
    let Some(b) = bed("audit-versions").await else {
        return;
    };
    b.enable_versioning().await;
    let target = b.key_id.clone();
    // A legacy object overwritten by a current one: its old version still needs the old key.
    put_v1(&b.s3, &b.bucket, "doc.bin", &data(600, 1)).await;
    put(&b, "doc.bin", &data(600, 2), &["--kms-key-id", &target]);
    // A plaintext object overwritten by a current one: the old version is plaintext.
    b.raw_put("notes.txt", data(50, 3), &[]).await;
    put(&b, "notes.txt", &data(50, 4), &["--kms-key-id", &target]);
    // A deleted current object: a delete marker (ignored) over a current version.
    put(&b, "deleted.bin", &data(70, 5), &["--kms-key-id", &target]);
    b.s3.delete_object()
        .bucket(&b.bucket)
        .key("deleted.bin")
        .send()
        .await
        .expect("delete");

    // The current versions alone are all current.
    let s = audit_json(&b.bucket_url(), &target, &[], 0);
    assert_eq!(
        (s["total"].as_u64(), s["current"].as_u64()),
        (Some(2), Some(2)),
        "{s:#}"
    );

    let s = audit_json(&b.bucket_url(), &target, &["--versions"], 1);
    assert_eq!(s["versions"], true);
    assert_eq!(s["total"], 5, "{s:#}");
    assert_eq!(
        (s["current"].as_u64(), s["plaintext"].as_u64()),
        (Some(3), Some(1)),
        "{s:#}"
    );
    assert_eq!(s["remaining_by_reason"]["noncurrent-version"], 1, "{s:#}");
    let r = &s["remaining_objects"][0];
    assert_eq!(r["key"], "doc.bin");
    assert_eq!(r["reason"], "noncurrent-version");
    assert_eq!(r["detail"], "legacy-wrap");
    assert!(
        r["version_id"].as_str().is_some_and(|v| !v.is_empty()),
        "{r}"
    );
}
