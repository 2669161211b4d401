//! The attributes of an object that HEAD does not always show but a rewrite must keep: ACL
//! grants and Object Lock retention / legal hold.
//!
//! A PutObject, CreateMultipartUpload or CopyObject (with `MetadataDirective: REPLACE`) that
//! does not repeat them gives the new object (version) the bucket's defaults: a private ACL, no
//! retention, no legal hold. [`ObjectAttributes`] carries them from the object read to the
//! write (`with_attributes!`); this module reads the ones HEAD cannot be trusted with:
//!
//! - **ACL grants** are never in a HEAD. When a bucket's ACLs are in force
//!   ([`AttributePolicy::discover`]), [`S3Cse::read_write_attributes`] reads each object's ACL
//!   (GetObjectAcl) and turns it into `x-amz-grant-*` headers ([`Grants::from_acl`]).
//! - **Object Lock** fields are in a HEAD only for callers allowed s3:GetObjectRetention /
//!   s3:GetObjectLegalHold, so on a lock-enabled bucket a HEAD without them proves nothing: they
//!   are read explicitly (GetObjectRetention, GetObjectLegalHold) unless the HEAD showed them.
//!
//! A read refused (AccessDenied, or any other non-transient error) fails the object with
//! [`ClientError::AttributesUnreadable`] before anything is written: an object is rewritten with
//! all of its attributes or not at all.
//!
//! S3 references: [GetBucketOwnershipControls], [GetObjectAcl], [PutObject's grant headers],
//! [GetObjectRetention], [GetObjectLegalHold].
//!
//! [GetBucketOwnershipControls]: https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetBucketOwnershipControls.html
//! [GetObjectAcl]: https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObjectAcl.html
//! [PutObject's grant headers]: https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html#API_PutObject_RequestSyntax
//! [GetObjectRetention]: https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObjectRetention.html
//! [GetObjectLegalHold]: https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObjectLegalHold.html

use std::time::Instant;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{Grant, ObjectLockEnabled, ObjectOwnership, Permission, Type};

use super::{ClientError, ObjectAttributes, ObjectHead, S3Cse, aws_smithy_runtime_api_response};

// S3 error codes this module tells apart (the S3 API reference's "Error codes" list, plus the
// spellings SeaweedFS uses for the same cases).
/// GetBucketOwnershipControls on a bucket that never had ownership controls: ACLs are in force.
const OWNERSHIP_CONTROLS_NOT_FOUND: &str = "OwnershipControlsNotFoundError";
/// GetObjectLockConfiguration on a bucket without Object Lock (also SeaweedFS's answer to
/// GetObjectRetention on an object without retention).
const LOCK_CONFIGURATION_NOT_FOUND: &str = "ObjectLockConfigurationNotFoundError";
/// GetObjectRetention / GetObjectLegalHold on an object without retention / legal hold (AWS).
const NO_OBJECT_LOCK_CONFIGURATION: &str = "NoSuchObjectLockConfiguration";
/// GetObjectLegalHold on an object without a legal hold (SeaweedFS).
const NO_LEGAL_HOLD: &str = "NoSuchObjectLegalHold";
/// GetObjectRetention / GetObjectLegalHold on a bucket without Object Lock (AWS: "Bucket is
/// missing Object Lock Configuration").
const INVALID_REQUEST: &str = "InvalidRequest";

/// Grantee syntax of the `x-amz-grant-*` headers: `id="…"`, `uri="…"`, `emailAddress="…"`.
const GRANTEE_ID: &str = "id";
const GRANTEE_URI: &str = "uri";
const GRANTEE_EMAIL: &str = "emailAddress";

/// Which attributes of a bucket's objects need a request of their own before a rewrite. Found
/// once per bucket ([`AttributePolicy::discover`]); when in doubt, a field is `true`: an extra
/// read per object costs a request, a skipped one could drop an ACL or a lock unseen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttributePolicy {
    /// ACLs may be in force (ownership controls other than `BucketOwnerEnforced`, none at all,
    /// or unreadable): read each object's ACL and repeat its grants on the write.
    pub read_acl: bool,
    /// Object Lock may be enabled (or its configuration is unreadable): read each object's
    /// retention and legal hold unless its HEAD showed them.
    pub read_lock: bool,
}

impl AttributePolicy {
    /// Nothing beyond the HEAD: buckets known to have ACLs disabled and no Object Lock.
    pub const HEAD_ONLY: Self = Self {
        read_acl: false,
        read_lock: false,
    };

    /// Every attribute read explicitly, for a bucket whose settings cannot be read.
    pub const READ_ALL: Self = Self {
        read_acl: true,
        read_lock: true,
    };

    /// Reads the bucket's ownership controls and Object Lock configuration (one request each).
    /// A transient failure is an error (try again later); a refused read (AccessDenied) or one
    /// the store does not implement leaves that attribute to be read per object.
    pub async fn discover(client: &S3Cse, bucket: &str) -> Result<Self, ClientError> {
        let s3 = client.s3();
        let t = Instant::now();
        let r = s3
            .get_bucket_ownership_controls()
            .bucket(bucket)
            .send()
            .await;
        let code = error_code(&r);
        let read_acl = match client.observe("GetBucketOwnershipControls", bucket, "", t, r) {
            // ACLs are off only where every rule enforces bucket ownership.
            Ok(out) => !out.ownership_controls().is_some_and(|c| {
                !c.rules().is_empty()
                    && c.rules()
                        .iter()
                        .all(|r| *r.object_ownership() == ObjectOwnership::BucketOwnerEnforced)
            }),
            Err(_) if code.as_deref() == Some(OWNERSHIP_CONTROLS_NOT_FOUND) => true,
            Err(e) if e.is_transient() || is_no_such_bucket(&code) => return Err(e),
            Err(e) => {
                tracing::warn!(%bucket, error = %e,
                    "cannot read the bucket's ownership controls: reading every object's ACL");
                true
            }
        };
        let t = Instant::now();
        let r = s3
            .get_object_lock_configuration()
            .bucket(bucket)
            .send()
            .await;
        let code = error_code(&r);
        let read_lock = match client.observe("GetObjectLockConfiguration", bucket, "", t, r) {
            Ok(out) => out
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
                .is_some_and(|e| *e == ObjectLockEnabled::Enabled),
            Err(_) if code.as_deref() == Some(LOCK_CONFIGURATION_NOT_FOUND) => false,
            // A store without Object Lock at all.
            Err(_) if code.as_deref() == Some("NotImplemented") => false,
            Err(e) if e.is_transient() || is_no_such_bucket(&code) => return Err(e),
            Err(e) => {
                tracing::warn!(%bucket, error = %e,
                    "cannot read the bucket's Object Lock configuration: reading every object's retention and legal hold");
                true
            }
        };
        Ok(Self {
            read_acl,
            read_lock,
        })
    }
}

fn is_no_such_bucket(code: &Option<String>) -> bool {
    code.as_deref() == Some("NoSuchBucket")
}

/// The S3 error code of a failed request, before [`S3Cse::observe`] folds 404s into
/// `NotFound` (several "not configured" answers are 404s).
fn error_code<T, E: ProvideErrorMetadata>(
    r: &Result<T, SdkError<E, aws_smithy_runtime_api_response::HttpResponse>>,
) -> Option<String> {
    r.as_ref()
        .err()
        .and_then(|e| ProvideErrorMetadata::code(e).map(str::to_owned))
}

/// An object's ACL as the `x-amz-grant-*` headers of a write (`None`: the header is left out).
/// All `None` means "the default ACL": the owner's FULL_CONTROL and nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub read: Option<String>,
    pub read_acp: Option<String>,
    pub write_acp: Option<String>,
    pub full_control: Option<String>,
}

impl Grants {
    /// The grant headers that recreate `grants` (a GetObjectAcl answer) on a write.
    ///
    /// An ACL of just the owner's FULL_CONTROL is what a write without grant headers gives,
    /// so it needs none (and none needs s3:PutObjectAcl). Any other ACL is repeated whole, the
    /// owner's FULL_CONTROL included: with grant headers the new ACL is exactly the grants
    /// listed, and leaving the owner's out would take the owner's read access away.
    ///
    /// A grant no write header can express (WRITE, which has no meaning on an object, or a
    /// permission or grantee type this client does not know) is an error: the object would
    /// lose it.
    pub fn from_acl(owner_id: Option<&str>, grants: &[Grant]) -> Result<Self, String> {
        let owner_only = |g: &Grant| {
            g.permission() == Some(&Permission::FullControl)
                && g.grantee().is_some_and(|e| {
                    *e.r#type() == Type::CanonicalUser && e.id().is_some() && e.id() == owner_id
                })
        };
        if grants.iter().all(owner_only) {
            return Ok(Self::default());
        }
        let mut out = Self::default();
        for g in grants {
            let grantee = g.grantee().ok_or("a grant without a grantee")?;
            let (name, value) = match grantee.r#type() {
                Type::CanonicalUser => (GRANTEE_ID, grantee.id()),
                Type::Group => (GRANTEE_URI, grantee.uri()),
                Type::AmazonCustomerByEmail => (GRANTEE_EMAIL, grantee.email_address()),
                other => return Err(format!("grantee type {other} cannot be set on a write")),
            };
            let value = value
                .ok_or_else(|| format!("a {} grantee without its {name}", grantee.r#type()))?;
            if value.contains('"') {
                return Err(format!(
                    "grantee {name} {value:?} cannot be quoted in a header"
                ));
            }
            let slot = match g.permission() {
                Some(Permission::Read) => &mut out.read,
                Some(Permission::ReadAcp) => &mut out.read_acp,
                Some(Permission::WriteAcp) => &mut out.write_acp,
                Some(Permission::FullControl) => &mut out.full_control,
                Some(p) => {
                    return Err(format!(
                        "permission {p} (to {name}={value}) cannot be set on an object write"
                    ));
                }
                None => return Err("a grant without a permission".into()),
            };
            let item = format!("{name}=\"{value}\"");
            *slot = Some(match slot.take() {
                Some(list) => format!("{list}, {item}"),
                None => item,
            });
        }
        Ok(out)
    }
}

/// What an attribute read found: the value, none at all, or a refusal (the object must not be
/// written).
fn absent_or_unreadable(
    head: &ObjectHead,
    what: &'static str,
    code: Option<&str>,
    absent: &[&str],
    e: ClientError,
) -> Result<(), ClientError> {
    if code.is_some_and(|c| absent.contains(&c)) {
        return Ok(());
    }
    match e {
        // Gone (or transient): the caller's usual handling.
        ClientError::NotFound { .. } => Err(e),
        e if e.is_transient() => Err(e),
        e => Err(ClientError::AttributesUnreadable {
            bucket: head.bucket.clone(),
            key: head.key.clone(),
            what,
            status: e.http_status(),
            reason: e.to_string(),
        }),
    }
}

impl S3Cse {
    /// Fills in `head.attrs` what a rewrite must keep but a HEAD may not show, as `policy`
    /// says: the ACL's grants, the Object Lock retention and legal hold (of `head.version_id`,
    /// the version being replaced). Call it after the HEAD (or GET) and before the write; a
    /// failure leaves the object untouched ([`ClientError::AttributesUnreadable`] when a read
    /// was refused or a grant cannot be repeated).
    pub async fn read_write_attributes(
        &self,
        head: &mut ObjectHead,
        policy: &AttributePolicy,
    ) -> Result<(), ClientError> {
        let (bucket, key) = (head.bucket.as_str(), head.key.as_str());
        if policy.read_acl {
            let t = Instant::now();
            let r = self
                .s3
                .get_object_acl()
                .bucket(bucket)
                .key(key)
                .set_version_id(head.version_id.clone())
                .send()
                .await;
            let code = error_code(&r);
            match self.observe("GetObjectAcl", bucket, key, t, r) {
                Ok(acl) => {
                    let owner = acl.owner().and_then(|o| o.id());
                    head.attrs.grants =
                        Grants::from_acl(owner, acl.grants()).map_err(|reason| {
                            ClientError::AttributesUnreadable {
                                bucket: bucket.to_owned(),
                                key: key.to_owned(),
                                what: "ACL",
                                status: None,
                                reason,
                            }
                        })?;
                }
                Err(e) => absent_or_unreadable(head, "ACL", code.as_deref(), &[], e)?,
            }
        }
        if !policy.read_lock {
            return Ok(());
        }
        let a = &head.attrs;
        if a.object_lock_mode.is_none() && a.object_lock_event_hold.is_none() {
            let t = Instant::now();
            let r = self
                .s3
                .get_object_retention()
                .bucket(bucket)
                .key(key)
                .set_version_id(head.version_id.clone())
                .send()
                .await;
            let code = error_code(&r);
            match self.observe("GetObjectRetention", bucket, key, t, r) {
                Ok(out) => {
                    if let Some(ret) = out.retention() {
                        let a = &mut head.attrs;
                        a.object_lock_mode = ret.mode().map(|m| m.as_str().to_owned());
                        a.object_lock_retain_until = ret.retain_until_date().copied();
                        a.object_lock_event_hold = ret.event_hold().map(|h| h.as_str().to_owned());
                        a.object_lock_event_hold_days =
                            ret.event_hold_duration().and_then(|d| d.days());
                        a.object_lock_event_hold_years =
                            ret.event_hold_duration().and_then(|d| d.years());
                    }
                }
                Err(e) => absent_or_unreadable(
                    head,
                    "Object Lock retention",
                    code.as_deref(),
                    &[
                        NO_OBJECT_LOCK_CONFIGURATION,
                        LOCK_CONFIGURATION_NOT_FOUND,
                        INVALID_REQUEST,
                    ],
                    e,
                )?,
            }
        }
        if head.attrs.object_lock_legal_hold.is_none() {
            let t = Instant::now();
            let r = self
                .s3
                .get_object_legal_hold()
                .bucket(&head.bucket)
                .key(&head.key)
                .set_version_id(head.version_id.clone())
                .send()
                .await;
            let code = error_code(&r);
            match self.observe("GetObjectLegalHold", &head.bucket, &head.key, t, r) {
                Ok(out) => {
                    head.attrs.object_lock_legal_hold = out
                        .legal_hold()
                        .and_then(|h| h.status())
                        .map(|s| s.as_str().to_owned());
                }
                Err(e) => absent_or_unreadable(
                    head,
                    "Object Lock legal hold",
                    code.as_deref(),
                    &[
                        NO_LEGAL_HOLD,
                        NO_OBJECT_LOCK_CONFIGURATION,
                        LOCK_CONFIGURATION_NOT_FOUND,
                        INVALID_REQUEST,
                    ],
                    e,
                )?,
            }
        }
        Ok(())
    }
}

impl ObjectAttributes {
    /// The retention to set on the write: the source's, unless its retain-until date has passed
    /// (it protects nothing any more, and S3 refuses a date in the past).
    pub fn retention_to_keep(
        &self,
    ) -> (
        Option<aws_sdk_s3::types::ObjectLockMode>,
        Option<aws_smithy_types::DateTime>,
    ) {
        let now = aws_smithy_types::DateTime::from(std::time::SystemTime::now());
        match (&self.object_lock_mode, self.object_lock_retain_until) {
            (Some(mode), Some(until)) if until > now => (Some(mode.as_str().into()), Some(until)),
            _ => (None, None),
        }
    }

    /// The legal hold to set on the write: only an `ON` one (`OFF` is what a write without the
    /// header gives).
    pub fn legal_hold_to_keep(&self) -> Option<aws_sdk_s3::types::ObjectLockLegalHoldStatus> {
        self.object_lock_legal_hold
            .as_deref()
            .filter(|s| *s == "ON")
            .map(Into::into)
    }

    /// The event hold to set on the write, with its duration: only an `ON` one.
    pub fn event_hold_to_keep(
        &self,
    ) -> (
        Option<aws_sdk_s3::types::ObjectLockEventHold>,
        Option<i32>,
        Option<i32>,
    ) {
        match self.object_lock_event_hold.as_deref() {
            Some("ON") => (
                Some("ON".into()),
                self.object_lock_event_hold_days,
                self.object_lock_event_hold_years,
            ),
            _ => (None, None, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::types::{Grantee, ObjectLockLegalHoldStatus, ObjectLockMode};
    use aws_smithy_types::DateTime;

    use super::*;

    const OWNER: &str = "79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be";
    const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";

    fn grant(kind: Type, who: &str, p: Permission) -> Grant {
        let g = Grantee::builder().r#type(kind.clone());
        let g = match kind {
            Type::Group => g.uri(who),
            Type::AmazonCustomerByEmail => g.email_address(who),
            _ => g.id(who),
        };
        Grant::builder()
            .grantee(g.build().expect("grantee"))
            .permission(p)
            .build()
    }

    #[test]
    fn the_default_acl_needs_no_grant_headers() {
        let acl = [grant(Type::CanonicalUser, OWNER, Permission::FullControl)];
        assert_eq!(Grants::from_acl(Some(OWNER), &acl), Ok(Grants::default()));
        assert_eq!(Grants::from_acl(Some(OWNER), &[]), Ok(Grants::default()));
    }

    #[test]
    fn every_grant_is_repeated_with_the_owners_full_control() {
        let acl = [
            grant(Type::CanonicalUser, OWNER, Permission::FullControl),
            grant(Type::Group, ALL_USERS, Permission::Read),
            grant(Type::CanonicalUser, "other", Permission::Read),
            grant(Type::CanonicalUser, "auditor", Permission::ReadAcp),
            grant(
                Type::AmazonCustomerByEmail,
                "ops@example.com",
                Permission::WriteAcp,
            ),
        ];
        let g = Grants::from_acl(Some(OWNER), &acl).expect("expressible");
        assert_eq!(
            g,
            Grants {
                read: Some(format!("uri=\"{ALL_USERS}\", id=\"other\"")),
                read_acp: Some("id=\"auditor\"".into()),
                write_acp: Some("emailAddress=\"ops@example.com\"".into()),
                full_control: Some(format!("id=\"{OWNER}\"")),
            }
        );
    }

    #[test]
    fn another_owners_full_control_is_kept() {
        // An object written by another account (ObjectWriter bucket): a rewrite by us makes us
        // the owner, so the original owner keeps access only through an explicit grant.
        let acl = [grant(
            Type::CanonicalUser,
            "writer",
            Permission::FullControl,
        )];
        let g = Grants::from_acl(Some(OWNER), &acl).expect("expressible");
        assert_eq!(g.full_control.as_deref(), Some("id=\"writer\""));
    }

    #[test]
    fn grants_no_write_can_carry_are_errors() {
        let write = [grant(Type::Group, ALL_USERS, Permission::Write)];
        assert!(Grants::from_acl(Some(OWNER), &write).is_err());
        let quoted = [grant(Type::CanonicalUser, "a\"b", Permission::Read)];
        assert!(Grants::from_acl(Some(OWNER), &quoted).is_err());
    }

    /// The headers every write path sets, read back from the built PutObject,
    /// CreateMultipartUpload and CopyObject requests (`with_attributes!`): the test bed's
    /// SeaweedFS ignores grant headers and website redirects, so this is where they are checked.
    #[tokio::test]
    async fn every_write_request_carries_the_kept_attributes() {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .build();
        let s3 = aws_sdk_s3::Client::from_conf(conf);
        let until = DateTime::from_secs(4_102_444_800); // 2100-01-01
        let a = ObjectAttributes {
            website_redirect_location: Some("/elsewhere.html".into()),
            object_lock_mode: Some("COMPLIANCE".into()),
            object_lock_retain_until: Some(until),
            object_lock_legal_hold: Some("ON".into()),
            grants: Grants {
                read: Some(format!("uri=\"{ALL_USERS}\"")),
                read_acp: Some("id=\"auditor\"".into()),
                write_acp: Some("id=\"admin\"".into()),
                full_control: Some(format!("id=\"{OWNER}\"")),
            },
            ..Default::default()
        };
        macro_rules! check {
            ($b:expr) => {{
                let b = crate::client::with_attributes!($b, &a);
                let i = b.as_input();
                assert_eq!(
                    i.get_website_redirect_location().as_deref(),
                    Some("/elsewhere.html")
                );
                assert_eq!(i.get_object_lock_mode(), &Some(ObjectLockMode::Compliance));
                assert_eq!(i.get_object_lock_retain_until_date(), &Some(until));
                assert_eq!(
                    i.get_object_lock_legal_hold_status(),
                    &Some(ObjectLockLegalHoldStatus::On)
                );
                assert_eq!(i.get_grant_read(), &a.grants.read);
                assert_eq!(i.get_grant_read_acp(), &a.grants.read_acp);
                assert_eq!(i.get_grant_write_acp(), &a.grants.write_acp);
                assert_eq!(i.get_grant_full_control(), &a.grants.full_control);
            }};
        }
        check!(s3.put_object());
        check!(s3.create_multipart_upload());
        check!(s3.copy_object());
    }

    #[test]
    fn expired_retention_and_released_holds_are_not_set() {
        let past = DateTime::from_secs(946_684_800); // 2000-01-01
        let a = ObjectAttributes {
            object_lock_mode: Some("GOVERNANCE".into()),
            object_lock_retain_until: Some(past),
            object_lock_legal_hold: Some("OFF".into()),
            object_lock_event_hold: Some("OFF".into()),
            ..Default::default()
        };
        assert_eq!(a.retention_to_keep(), (None, None));
        assert_eq!(a.legal_hold_to_keep(), None);
        assert_eq!(a.event_hold_to_keep(), (None, None, None));
        let b = ObjectAttributes {
            object_lock_mode: Some("GOVERNANCE".into()),
            object_lock_retain_until: Some(DateTime::from_secs(4_102_444_800)),
            ..a
        };
        assert_eq!(b.retention_to_keep().0, Some(ObjectLockMode::Governance));
    }
}
