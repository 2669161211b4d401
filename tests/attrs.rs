//! What a rewrite keeps besides metadata and tags (issue 10, item 7): ACL grants, Object Lock
//! retention and legal hold, against the local test bed (SeaweedFS S3 + moto KMS).
//!
//! What SeaweedFS 4.48 (the test bed's, scripts/testbed.sh) does with these, probed with boto3:
//! - Object Lock: all of it (`ObjectLockEnabledForBucket`, retention and legal hold on PutObject,
//!   CreateMultipartUpload and CopyObject, GetObjectRetention, GetObjectLegalHold). Tested here.
//! - ACLs: GetBucketOwnershipControls answers (a new bucket is `BucketOwnerEnforced`, settable
//!   to `ObjectWriter`); PutObjectAcl with a policy body or a canned ACL and GetObjectAcl work;
//!   but `x-amz-grant-*` headers (and canned ACLs) on PutObject / CopyObject /
//!   CreateMultipartUpload are accepted and ignored: the object keeps the owner-only ACL. So the
//!   read side is tested here, and the headers of the write side by a unit test of the built
//!   requests (`client::attrs::tests`).
//! - `x-amz-website-redirect-location`: accepted on PutObject, never returned by HEAD or GET:
//!   request building only (same unit test).
//! - Bucket policies are enforced even for the admin identity, which gives real AccessDenied
//!   answers for GetObjectAcl / GetObjectRetention.
//!
//! The `rekey_*` tests need the worker to call `S3Cse::read_write_attributes` before each write
//! (see `AttributePolicy`): until it does, they fail (the rewrite drops the lock, and rewrites
//! an object whose ACL could not be read).

use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::types::{
    AccessControlPolicy, Grant, Grantee, ObjectLockLegalHoldStatus, ObjectLockMode,
    ObjectOwnership, Owner, OwnershipControls, OwnershipControlsRule, Permission, Type,
};
use aws_smithy_types::DateTime;
use s3cse::client::{AttributePolicy, ClientError, Grants, ObjectAttributes, PutRequest, S3Cse};
use s3cse::codec::{self, WriteFormat};
use s3cse::keyring::{AwsKms, Keyring, KmsKeyring};

mod common;

use common::{Bed, aes_key, bed, data, put_v1_with, run_s3cse as run, show};

const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";
const AUTHENTICATED_USERS: &str = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers";

/// A [`Bed`] whose bucket has Object Lock enabled (and so versioning).
async fn lock_bed(tag: &str) -> Option<Bed> {
    let b = bed(tag).await?;
    let name = format!("{}-lock", b.bucket);
    b.s3.create_bucket()
        .bucket(&name)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .expect("create lock bucket");
    Some(Bed { bucket: name, ..b })
}

/// Sets the bucket's ownership controls to `ObjectWriter`: ACLs in force, as in old buckets.
async fn enable_acls(b: &Bed) {
    b.s3.put_bucket_ownership_controls()
        .bucket(&b.bucket)
        .ownership_controls(
            OwnershipControls::builder()
                .rules(
                    OwnershipControlsRule::builder()
                        .object_ownership(ObjectOwnership::ObjectWriter)
                        .build()
                        .expect("rule"),
                )
                .build()
                .expect("controls"),
        )
        .send()
        .await
        .expect("ownership controls");
}

/// A bucket policy that refuses `actions` on the objects under `prefix` to everyone.
async fn deny(b: &Bed, actions: &[&str], prefix: &str) {
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Deny",
            "Principal": "*",
            "Action": actions,
            "Resource": [format!("arn:aws:s3:::{}/{prefix}*", b.bucket)],
        }]
    });
    b.s3.put_bucket_policy()
        .bucket(&b.bucket)
        .policy(policy.to_string())
        .send()
        .await
        .expect("bucket policy");
}

fn group_grant(uri: &str, p: Permission) -> Grant {
    Grant::builder()
        .grantee(
            Grantee::builder()
                .r#type(Type::Group)
                .uri(uri)
                .build()
                .expect("grantee"),
        )
        .permission(p)
        .build()
}

/// One day from now, to the second (S3 keeps retain-until dates in whole seconds).
fn tomorrow() -> DateTime {
    let t = SystemTime::now() + Duration::from_secs(86_400);
    DateTime::from_secs(DateTime::from(t).secs())
}

fn locked(until: DateTime) -> ObjectAttributes {
    ObjectAttributes {
        content_type: Some("application/x-locked".into()),
        object_lock_mode: Some("GOVERNANCE".into()),
        object_lock_retain_until: Some(until),
        object_lock_legal_hold: Some("ON".into()),
        ..Default::default()
    }
}

/// Retention mode, retain-until date and legal hold of the current version of `key`.
async fn lock_of(b: &Bed, key: &str) -> (Option<ObjectLockMode>, Option<DateTime>, bool) {
    let r =
        b.s3.get_object_retention()
            .bucket(&b.bucket)
            .key(key)
            .send()
            .await;
    let (mode, until) = match r {
        Ok(o) => (
            o.retention()
                .and_then(|r| r.mode())
                .map(|m| m.as_str().into()),
            o.retention().and_then(|r| r.retain_until_date()).copied(),
        ),
        Err(_) => (None, None),
    };
    let hold =
        b.s3.get_object_legal_hold()
            .bucket(&b.bucket)
            .key(key)
            .send()
            .await
            .ok()
            .and_then(|o| o.legal_hold().and_then(|h| h.status()).cloned());
    (mode, until, hold == Some(ObjectLockLegalHoldStatus::On))
}

fn kms_client(b: &Bed) -> S3Cse {
    let ring = Keyring::kms(KmsKeyring::new(
        Arc::new(AwsKms::new(b.kms.clone())),
        &b.key_id,
    ));
    S3Cse::new(b.s3.clone(), ring).with_part_size(5 << 20)
}

#[tokio::test]
async fn discover_tells_acl_and_lock_buckets_apart() {
    let Some(b) = bed("attrs-discover").await else {
        return;
    };
    let c = kms_client(&b);
    // A new bucket: ACLs disabled (BucketOwnerEnforced), no Object Lock.
    let p = AttributePolicy::discover(&c, &b.bucket)
        .await
        .expect("discover");
    assert_eq!(p, AttributePolicy::HEAD_ONLY);
    enable_acls(&b).await;
    let p = AttributePolicy::discover(&c, &b.bucket)
        .await
        .expect("discover");
    assert_eq!(
        p,
        AttributePolicy {
            read_acl: true,
            read_lock: false
        }
    );
    // Settings that cannot be read are read per object.
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Deny", "Principal": "*",
            "Action": ["s3:GetBucketOwnershipControls", "s3:GetBucketObjectLockConfiguration"],
            "Resource": [format!("arn:aws:s3:::{}", b.bucket)],
        }]
    });
    b.s3.put_bucket_policy()
        .bucket(&b.bucket)
        .policy(policy.to_string())
        .send()
        .await
        .expect("policy");
    let p = AttributePolicy::discover(&c, &b.bucket)
        .await
        .expect("discover");
    assert_eq!(p, AttributePolicy::READ_ALL);

    let Some(l) = lock_bed("attrs-discover").await else {
        return;
    };
    let p = AttributePolicy::discover(&c, &l.bucket)
        .await
        .expect("discover");
    assert_eq!(
        p,
        AttributePolicy {
            read_acl: false,
            read_lock: true
        }
    );
}

/// Retention and legal hold go from the source version to the rewritten one, by single PUT and
/// by multipart upload, also when the HEAD did not show them (a caller without
/// s3:GetObjectRetention: the explicit reads fill them in).
#[tokio::test(flavor = "multi_thread")]
async fn object_lock_survives_a_rewrite() {
    let Some(b) = lock_bed("attrs-lock").await else {
        return;
    };
    let c = kms_client(&b);
    let until = tomorrow();
    let policy = AttributePolicy::discover(&c, &b.bucket)
        .await
        .expect("discover");
    for (key, len) in [("small.bin", 1000), ("large.bin", (5 << 20) + 1)] {
        let plain = data(len, 7);
        put_v1_with(
            &b.s3,
            &b.bucket,
            key,
            &plain,
            PutRequest {
                attrs: locked(until),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            lock_of(&b, key).await,
            (Some(ObjectLockMode::Governance), Some(until), true),
            "{key}: seeded"
        );
        let mut head = c.head(&b.bucket, key).await.expect("head");
        assert_eq!(head.attrs.object_lock_retain_until, Some(until), "{key}");
        // As a HEAD without the permission to see them would be.
        head.attrs.object_lock_mode = None;
        head.attrs.object_lock_retain_until = None;
        head.attrs.object_lock_legal_hold = None;
        c.read_write_attributes(&mut head, &policy)
            .await
            .expect("read attributes");
        let a = &head.attrs;
        assert_eq!(
            (
                a.object_lock_mode.as_deref(),
                a.object_lock_retain_until,
                a.object_lock_legal_hold.as_deref()
            ),
            (Some("GOVERNANCE"), Some(until), Some("ON")),
            "{key}: read back"
        );
        let req = PutRequest {
            bucket: b.bucket.clone(),
            key: key.into(),
            format: WriteFormat::V2,
            attrs: head.attrs.clone(),
            if_match: head.etag.clone(),
            plaintext_len: Some(len as u64),
            ..Default::default()
        };
        let put = c.put_from(&req, &mut &plain[..]).await.expect("rewrite");
        assert_ne!(put.version_id, head.version_id, "{key}: a new version");
        assert_eq!(put.parts > 1, len > 5 << 20, "{key}: path taken");
        assert_eq!(
            lock_of(&b, key).await,
            (Some(ObjectLockMode::Governance), Some(until), true),
            "{key}: kept on the new version"
        );
        assert_eq!(b.get_strict(key).await, plain, "{key}");
    }
}

/// On a bucket with ACLs in force, the grants beyond the owner's come back as write headers.
#[tokio::test]
async fn acl_grants_are_read_for_the_write() {
    let Some(b) = bed("attrs-acl").await else {
        return;
    };
    enable_acls(&b).await;
    let c = kms_client(&b);
    b.raw_put("plain.txt", b"x".to_vec(), &[]).await;
    b.raw_put("shared.txt", b"x".to_vec(), &[]).await;
    let acl =
        b.s3.get_object_acl()
            .bucket(&b.bucket)
            .key("shared.txt")
            .send()
            .await
            .expect("acl");
    let owner = acl.owner().and_then(|o| o.id()).expect("owner").to_owned();
    let owner_grant = Grant::builder()
        .grantee(
            Grantee::builder()
                .r#type(Type::CanonicalUser)
                .id(&owner)
                .build()
                .expect("grantee"),
        )
        .permission(Permission::FullControl)
        .build();
    b.s3.put_object_acl()
        .bucket(&b.bucket)
        .key("shared.txt")
        .access_control_policy(
            AccessControlPolicy::builder()
                .owner(Owner::builder().id(&owner).build())
                .grants(owner_grant)
                .grants(group_grant(ALL_USERS, Permission::Read))
                .grants(group_grant(AUTHENTICATED_USERS, Permission::ReadAcp))
                .build(),
        )
        .send()
        .await
        .expect("put acl");
    let policy = AttributePolicy::discover(&c, &b.bucket)
        .await
        .expect("discover");
    assert!(policy.read_acl);

    let mut head = c.head(&b.bucket, "plain.txt").await.expect("head");
    c.read_write_attributes(&mut head, &policy)
        .await
        .expect("attributes");
    assert_eq!(
        head.attrs.grants,
        Grants::default(),
        "owner-only ACL: no headers"
    );

    let mut head = c.head(&b.bucket, "shared.txt").await.expect("head");
    assert_eq!(head.attrs.grants, Grants::default(), "HEAD has no ACL");
    c.read_write_attributes(&mut head, &policy)
        .await
        .expect("attributes");
    assert_eq!(
        head.attrs.grants,
        Grants {
            read: Some(format!("uri=\"{ALL_USERS}\"")),
            read_acp: Some(format!("uri=\"{AUTHENTICATED_USERS}\"")),
            write_acp: None,
            full_control: Some(format!("id=\"{owner}\"")),
        }
    );
}

/// A refused ACL or retention read is `AttributesUnreadable` (403), not an empty attribute.
#[tokio::test]
async fn refused_attribute_reads_fail_the_object() {
    let Some(b) = bed("attrs-denied").await else {
        return;
    };
    enable_acls(&b).await;
    let c = kms_client(&b);
    b.raw_put("denied/a.txt", b"x".to_vec(), &[]).await;
    deny(&b, &["s3:GetObjectAcl"], "denied/").await;
    let mut head = c.head(&b.bucket, "denied/a.txt").await.expect("head");
    let policy = AttributePolicy::discover(&c, &b.bucket)
        .await
        .expect("discover");
    let e = c
        .read_write_attributes(&mut head, &policy)
        .await
        .expect_err("refused");
    assert!(
        matches!(e, ClientError::AttributesUnreadable { what: "ACL", .. }),
        "{e:?}"
    );
    assert_eq!(e.http_status(), Some(403));
    assert!(!e.is_transient());

    let Some(l) = lock_bed("attrs-denied").await else {
        return;
    };
    l.raw_put("denied/b.txt", b"x".to_vec(), &[]).await;
    deny(&l, &["s3:GetObjectRetention"], "denied/").await;
    let mut head = c.head(&l.bucket, "denied/b.txt").await.expect("head");
    let policy = AttributePolicy::discover(&c, &l.bucket)
        .await
        .expect("discover");
    let e = c
        .read_write_attributes(&mut head, &policy)
        .await
        .expect_err("refused");
    assert!(
        matches!(
            e,
            ClientError::AttributesUnreadable {
                what: "Object Lock retention",
                ..
            }
        ),
        "{e:?}"
    );
    // Without retention or legal hold (and allowed to read them): nothing to keep.
    l.raw_put("open.txt", b"x".to_vec(), &[]).await;
    let mut head = c.head(&l.bucket, "open.txt").await.expect("head");
    c.read_write_attributes(&mut head, &policy)
        .await
        .expect("no lock is no error");
    assert_eq!(head.attrs.retention_to_keep(), (None, None));
    assert_eq!(head.attrs.legal_hold_to_keep(), None);
}

/// `s3cse rekey s3://BUCKET` to the bed's key, legacy objects read with the vectors' AES key;
/// then the report's rows, by key.
fn rekey(
    b: &Bed,
) -> (
    Output,
    std::collections::BTreeMap<String, serde_json::Value>,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.db").display().to_string();
    let o = b.rekey(&state, &[]);
    let r = run(&["report", "--state", &state, "--format", "jsonl"]);
    assert!(r.status.success(), "report: {}", show(&r));
    let rows = String::from_utf8_lossy(&r.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("jsonl"))
        .map(|v| (v["Key"].as_str().unwrap_or_default().to_owned(), v))
        .collect();
    (o, rows)
}

/// `s3cse rekey` keeps retention and legal hold on a rewrite (V1 object, PutObject) and on a
/// rewrap (raw AES-GCM V2 object, CopyObject onto itself with `MetadataDirective: REPLACE`).
/// Failed before `with_attributes!` carried the lock fields (both writes dropped them). Passes
/// without `read_write_attributes` wired in, because SeaweedFS's HEAD always shows the lock; the
/// explicit reads are for callers whose HEAD hides it (`object_lock_survives_a_rewrite`).
#[tokio::test(flavor = "multi_thread")]
async fn rekey_keeps_object_lock() {
    let Some(b) = lock_bed("attrs-rekey-lock").await else {
        return;
    };
    let until = tomorrow();
    let v1 = data(3000, 11);
    put_v1_with(
        &b.s3,
        &b.bucket,
        "v1.bin",
        &v1,
        PutRequest {
            attrs: locked(until),
            ..Default::default()
        },
    )
    .await;
    let gcm = data(2000, 12);
    let raw = S3Cse::new(b.s3.clone(), Keyring::aes(aes_key()));
    let req = PutRequest {
        bucket: b.bucket.clone(),
        key: "raw-gcm.bin".into(),
        format: WriteFormat::V2,
        attrs: locked(until),
        ..Default::default()
    };
    raw.put_from(&req, &mut &gcm[..])
        .await
        .expect("put raw gcm");

    let (o, rows) = rekey(&b);
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(rows["v1.bin"]["action"], "rewrite", "{rows:?}");
    assert_eq!(rows["raw-gcm.bin"]["action"], "rewrap", "{rows:?}");
    for (key, plain) in [("v1.bin", &v1), ("raw-gcm.bin", &gcm)] {
        assert_eq!(rows[key]["TaskStatus"], "succeeded", "{key}: {rows:?}");
        assert_eq!(&b.get_strict(key).await, plain, "{key}");
        assert_eq!(
            lock_of(&b, key).await,
            (Some(ObjectLockMode::Governance), Some(until), true),
            "{key}: lock kept"
        );
    }
}

/// An object whose ACL cannot be read (AccessDenied) on a bucket with ACLs in force fails with
/// `AttributesUnreadable` and stays as it was; the others are migrated. Fails until the worker
/// calls `read_write_attributes` (today the object is rewritten, its grants dropped).
#[tokio::test(flavor = "multi_thread")]
async fn rekey_fails_an_object_whose_acl_cannot_be_read() {
    let Some(b) = bed("attrs-rekey-acl").await else {
        return;
    };
    enable_acls(&b).await;
    let (a, d) = (data(1000, 21), data(1000, 22));
    put_v1_with(&b.s3, &b.bucket, "ok/a.bin", &a, PutRequest::default()).await;
    put_v1_with(&b.s3, &b.bucket, "denied/d.bin", &d, PutRequest::default()).await;
    deny(&b, &["s3:GetObjectAcl"], "denied/").await;
    let before =
        b.s3.head_object()
            .bucket(&b.bucket)
            .key("denied/d.bin")
            .send()
            .await
            .expect("head");

    let (_, rows) = rekey(&b);
    assert_eq!(rows["ok/a.bin"]["TaskStatus"], "succeeded", "{rows:?}");
    assert_eq!(b.get_strict("ok/a.bin").await, a);
    let denied = &rows["denied/d.bin"];
    assert_eq!(denied["TaskStatus"], "failed", "{rows:?}");
    assert_eq!(denied["ErrorCode"], "AttributesUnreadable", "{rows:?}");
    assert_eq!(denied["HTTPStatusCode"], 403, "{rows:?}");
    let after =
        b.s3.head_object()
            .bucket(&b.bucket)
            .key("denied/d.bin")
            .send()
            .await
            .expect("head");
    assert_eq!(after.e_tag(), before.e_tag(), "untouched");
    // Still the legacy object, readable with the old key only.
    let legacy = S3Cse::new(b.s3.clone(), Keyring::aes(aes_key()))
        .with_policy(codec::DecryptPolicy::legacy());
    let mut out = Vec::new();
    legacy
        .get_to(
            &b.bucket,
            "denied/d.bin",
            &s3cse::client::GetOptions::default(),
            &mut out,
        )
        .await
        .expect("legacy get");
    assert_eq!(out, d);
}
