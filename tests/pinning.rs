//! Source-key pinning of `s3cse rekey` (issue 10, item 6) against the local test bed: a data key
//! under a KMS key the policy does not allow is never unwrapped into the target key. moto has
//! one account, so "foreign" is made by pinning `--source-kms-key` to one key and planting
//! objects under another.

use std::collections::BTreeMap;

mod common;

use common::{bed, data, kms_key, peer_put, run_s3cse as run, show};

/// Report rows by key (JSON lines).
fn report(state: &str) -> BTreeMap<String, serde_json::Value> {
    let o = run(&["report", "--state", state, "--format", "jsonl"]);
    assert!(o.status.success(), "report: {}", show(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("jsonl"))
        .map(|v| (v["Key"].as_str().unwrap_or_default().to_owned(), v))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_key_under_a_key_not_allowed_is_refused_and_the_object_left_untouched() {
    let Some(b) = bed("rekey-pin").await else {
        return;
    };
    let (a, foreign) = (kms_key(&b.kms).await, kms_key(&b.kms).await);
    // (key, KMS key, --cbc): CBC objects are rewritten (Decrypt), GCM ones under the `kms` wrap
    // rewrapped (ReEncrypt); one CBC object is under the target key itself.
    let objects = [
        ("a-cbc", &a, true),
        ("a-gcm", &a, false),
        ("foreign-cbc", &foreign, true),
        ("foreign-gcm", &foreign, false),
        ("target-cbc", &b.key_id, true),
    ];
    let mut inputs = BTreeMap::new();
    for (i, (key, kms, cbc)) in objects.iter().enumerate() {
        let d = data(3000 + i, i as u8 + 1);
        let f = b.write(key, &d);
        let mut extra = vec!["--kind", "kms", "--kms-key-id", kms.as_str()];
        if *cbc {
            extra.push("--cbc");
        }
        let o = peer_put("aioboto3", &b.bucket, key, &f, &extra);
        assert!(o.status.success(), "{key}: {}", show(&o));
        inputs.insert(*key, d);
    }
    let before = b.etags().await;
    let mut meta_before = BTreeMap::new();
    for (key, ..) in &objects {
        meta_before.insert(*key, b.raw_get(key).await.1);
    }
    let state = b.path("state.db").display().to_string();
    let url = b.bucket_url();
    let rekey = |extra: &[&str]| {
        let mut args = vec!["rekey", &url, "--state", &state, "--kms-key-id", &b.key_id];
        args.extend_from_slice(extra);
        run(&args)
    };

    // Pinned to A: A's objects and the target's migrate, the foreign ones fail untouched.
    let o = rekey(&["--source-kms-key", &a]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let after = b.etags().await;
    let rows = report(&state);
    for key in ["foreign-cbc", "foreign-gcm"] {
        assert_eq!(after[key], before[key], "{key} was rewritten");
        assert_eq!(
            b.raw_get(key).await.1,
            meta_before[key],
            "{key} was rewrapped"
        );
        let r = &rows[key];
        assert_eq!(r["state"], "failed", "{key}: {r}");
        assert_eq!(r["ErrorCode"], "SourceKeyNotAllowed", "{key}: {r}");
        assert!(
            r["ResultMessage"]
                .as_str()
                .is_some_and(|m| m.contains("--source-kms-key")),
            "{key}: {r}"
        );
    }
    // A ReEncrypt names the key it decrypted under: the message says which.
    let foreign_arn = format!("arn:aws:kms:us-east-1:123456789012:key/{foreign}");
    assert!(
        rows["foreign-gcm"]["ResultMessage"]
            .as_str()
            .is_some_and(|m| m.contains(&foreign_arn)),
        "{}",
        rows["foreign-gcm"]
    );
    for key in ["a-cbc", "a-gcm", "target-cbc"] {
        // (A rewrap by CopyObject keeps the ETag: same bytes, new metadata.)
        assert_ne!(
            b.raw_get(key).await.1,
            meta_before[key],
            "{key} was not migrated"
        );
        assert_eq!(rows[key]["state"], "done", "{key}: {}", rows[key]);
        assert_eq!(b.get_strict(key).await, inputs[key], "{key}");
    }

    // A second account widens the policy; the target's account stays allowed (moto's one
    // account holds every key), so the foreign objects now migrate.
    let o = rekey(&["--source-kms-account", "999999999999", "--retry-failed"]);
    assert!(o.status.success(), "{}", show(&o));
    let rows = report(&state);
    for key in ["foreign-cbc", "foreign-gcm"] {
        assert_eq!(rows[key]["state"], "done", "{key}: {}", rows[key]);
        assert_eq!(b.get_strict(key).await, inputs[key], "{key}");
    }

    // Bad flags are usage errors, before any work.
    let o = rekey(&["--source-kms-account", "12345"]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let o = rekey(&["--source-kms-key", "alias/no-such-key"]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
}
