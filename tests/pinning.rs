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

/// Real KMS blobs do not carry their key id (moto's do): with the key id ignored, ownership
/// comes from the target's signature (learned with four GenerateDataKey calls and one Decrypt)
/// or from a Decrypt pinned to the target, about once per backing key, and every answer is true.
#[tokio::test(flavor = "multi_thread")]
async fn which_key_wraps_a_blob_is_known_without_the_key_id_in_it() {
    use std::sync::Arc;

    use s3cse::envelope::{ContentAlg, Context, Envelope, Location, Version, WrapAlg};
    use s3cse::keyring::{AwsKms, KmsClient};
    use s3cse::metrics::Metrics;
    use s3cse::rekey::kms::{RekeyKms, describe_key};
    use s3cse::rekey::limit::RateLimit;
    use s3cse::rekey::owner::{Basis, KeyOwner};
    use s3cse::secret::SecretBytes;

    let Some(b) = bed("owner").await else {
        return;
    };
    let other = kms_key(&b.kms).await;
    let metrics = Arc::new(Metrics::new("test"));
    let target = describe_key(&b.kms, &b.key_id, &metrics)
        .await
        .expect("describe key");
    let kms: Arc<dyn KmsClient> = Arc::new(RekeyKms::new(
        Arc::new(AwsKms::new(b.kms.clone())),
        RateLimit::default(),
        metrics.clone(),
    ));
    let owner = KeyOwner::new(target.clone(), kms.clone()).ignoring_key_id_in_blobs();
    let ctx: Context = [("aws:x-amz-cek-alg", "AES/GCM/NoPadding")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let env = |blob: Vec<u8>| Envelope {
        version: Version::V2,
        content_alg: ContentAlg::AesGcm,
        wrap: WrapAlg::KmsContext,
        encrypted_key: blob,
        iv: vec![0; 12],
        matdesc: Context::new(),
        encryption_context: ctx.clone(),
        message_id: Vec::new(),
        commitment: Vec::new(),
        plaintext_length: None,
        location: Location::ObjectMetadata,
    };
    let blob_under = |key: String| {
        let (kms, ctx) = (kms.clone(), ctx.clone());
        async move { kms.generate_data_key(&key, &ctx).await.expect("gdk").1 }
    };
    let decrypts = || metrics.kms_requests("Decrypt");
    let ask = |e: Envelope| {
        let owner = &owner;
        async move { owner.owns_with_basis(&e).await.expect("an answer") }
    };

    // The first question learns the signature: four GenerateDataKey calls and one Decrypt.
    let mine = blob_under(b.key_id.clone()).await;
    assert_eq!(ask(env(mine.clone())).await, (true, Basis::Signature));
    assert_eq!(metrics.kms_requests("GenerateDataKey"), 1 + 4);
    assert_eq!(decrypts(), 1);
    let mine2 = blob_under(target.arn.clone()).await;
    assert_eq!(ask(env(mine2)).await, (true, Basis::Signature));
    assert_eq!(
        decrypts(),
        1,
        "a blob with the target's signature costs no KMS call"
    );

    // Another key: KMS says no. moto refuses with AccessDeniedException, which teaches nothing
    // (a key-policy condition could refuse a target blob too), so each such blob is asked; real
    // KMS's IncorrectKeyException is learned (unit tests in src/rekey/owner.rs).
    let theirs = blob_under(other.clone()).await;
    assert_eq!(ask(env(theirs)).await, (false, Basis::Kms));
    assert_eq!(decrypts(), 2);
    let theirs2 = blob_under(other.clone()).await;
    assert_eq!(ask(env(theirs2)).await, (false, Basis::Kms));
    assert_eq!(decrypts(), 3);

    // A blob of the target of another shape (a 16-byte key): KMS says yes.
    let short = kms
        .encrypt(&b.key_id, &SecretBytes::new(vec![7; 16]), &ctx)
        .await
        .expect("encrypt");
    assert_ne!(short.len(), mine.len());
    assert_eq!(ask(env(short)).await, (true, Basis::Kms));
    assert_eq!(decrypts(), 4);

    // Garbage of the right length: no (KMS cannot decrypt it), and nothing learned.
    let garbage = vec![0x5a; mine.len()];
    assert_eq!(ask(env(garbage.clone())).await, (false, Basis::Kms));
    assert_eq!(ask(env(garbage)).await, (false, Basis::Kms));
    assert_eq!(decrypts(), 6);
    let asked = decrypts();

    // Not a KMS wrap: no question at all.
    let mut raw = env(mine.clone());
    raw.wrap = WrapAlg::AesGcm;
    assert_eq!(ask(raw).await, (false, Basis::NotKms));
    // Offline, only the key id in the blob counts (moto's blobs carry it).
    let offline = KeyOwner::offline(target.clone());
    assert!(offline.owns(&env(mine.clone())).await.expect("offline"));
    let offline = KeyOwner::offline(target).ignoring_key_id_in_blobs();
    assert!(!offline.owns(&env(mine)).await.expect("offline"));
    assert_eq!(decrypts(), asked);
}
