//! `rekey --noncurrent report|delete`: the noncurrent versions of a versioned bucket.
//!
//! After a migration the old versions of every migrated object still hold the legacy
//! ciphertext, its content key wrapped by the legacy key: the key cannot be retired while they
//! exist. This pass runs after the workers (on a versioned bucket only, GetBucketVersioning):
//!
//! 1. **List** (ListObjectVersions, this shard's objects): every noncurrent version (delete
//!    markers are no data) is classified by the census's own code
//!    ([`crate::audit::noncurrent_verdict`]) and recorded in the job table
//!    (`noncurrent_versions`), so `status`/`report` and `s3cse audit --versions` agree.
//! 2. **Delete** (`delete` only), per data object (its versions and its `.instruction`'s):
//!    - only versions whose verdict is `remaining` (encrypted, not under the target key alone);
//!      plaintext ones are no key-retirement problem and are kept (deleting data is not this
//!      tool's call), as are unreadable ones (what they are is not known);
//!    - only once the object's current version is under the target key and **verified**:
//!      read whole and decrypted by this pass (tag and commitment checked), whatever an
//!      earlier run (perhaps with `--no-verify`) recorded. No current version (deleted, a delete
//!      marker) means the old versions are the only copies: kept;
//!    - never a version that is current now (re-checked just before its delete), never one
//!      under Object Lock (retention in force or legal hold; an Object Lock refusal from S3 is
//!      recorded, not fatal), never one this run did not list: a version written after the
//!      listing is unknown here, so it survives;
//!    - by explicit VersionId only, each one recorded `deleting` before and `deleted` (with
//!      its time) after. A crash between the two is settled by the next run: the same delete
//!      again, and a version already gone is a success.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;

use crate::audit::{self, Class};
use crate::client::{AttributePolicy, ClientError, EnvelopeState, GetOptions};
use crate::consts::INSTRUCTION_SUFFIX;
use crate::logkey::log_key;
use crate::store::{ListedVersion, NoncurrentVersion, VersionState};

use super::{RekeyConfig, RekeyError, Shard, Shutdown};

/// What to do with noncurrent versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoncurrentMode {
    /// Count and list them (job table, `status`, `report --noncurrent`, the metric).
    #[default]
    Report,
    /// Also delete those under a legacy key once their object's current version is verified.
    Delete,
}

impl std::str::FromStr for NoncurrentMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "report" => Ok(NoncurrentMode::Report),
            "delete" => Ok(NoncurrentMode::Delete),
            other => Err(format!("expected report or delete, got {other:?}")),
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoncurrentSummary {
    /// Versioning was ever enabled on the bucket (otherwise nothing was listed).
    pub versioned: bool,
    /// Noncurrent versions listed (this shard).
    pub listed: u64,
    /// Of those, encrypted and not under the target key: they keep a legacy key alive.
    pub remaining: u64,
    /// Deleted by this pass (`delete`).
    pub deleted: u64,
    /// Remaining versions left in place by this pass (`delete`), each with its reason.
    pub kept: u64,
}

/// Objects taken from the table per page of the delete pass.
const OBJECT_PAGE: u32 = 100;

/// Lists, records and (with [`NoncurrentMode::Delete`]) deletes the noncurrent versions of
/// `config.bucket`/`config.prefix`. See the module doc.
pub async fn sweep(
    config: &RekeyConfig,
    mode: NoncurrentMode,
    shutdown: &Shutdown,
) -> Result<NoncurrentSummary, RekeyError> {
    let mut summary = NoncurrentSummary::default();
    if !is_versioned(config).await? {
        return Ok(summary);
    }
    summary.versioned = true;
    let since = unix_now();
    let complete = list(config, &mut summary, shutdown).await?;
    if complete && config.shard.is_none() {
        config
            .store
            .forget_unlisted_versions(&config.bucket, &config.prefix, since)
            .await?;
    }
    if mode == NoncurrentMode::Delete && complete && !shutdown.is_stopping() {
        let d = delete_recorded(config, shutdown).await?;
        (summary.deleted, summary.kept) = (d.deleted, d.kept);
    } else {
        config
            .metrics
            .set_noncurrent(&config.store.version_counts().await?);
    }
    tracing::info!(
        listed = summary.listed,
        remaining = summary.remaining,
        deleted = summary.deleted,
        kept = summary.kept,
        "noncurrent versions"
    );
    Ok(summary)
}

/// Versioning is or was enabled (a suspended bucket keeps its old versions).
async fn is_versioned(c: &RekeyConfig) -> Result<bool, RekeyError> {
    c.s3_limit.wait().await;
    let t = Instant::now();
    let r = c
        .client
        .s3()
        .get_bucket_versioning()
        .bucket(&c.bucket)
        .send()
        .await;
    let out = c
        .client
        .observe("GetBucketVersioning", &c.bucket, "", t, r)?;
    Ok(out.status().is_some())
}

/// ListObjectVersions into the table. `Ok(false)` when stopped before the end.
async fn list(
    c: &RekeyConfig,
    summary: &mut NoncurrentSummary,
    shutdown: &Shutdown,
) -> Result<bool, RekeyError> {
    let mut markers: (Option<String>, Option<String>) = (None, None);
    loop {
        if shutdown.is_stopping() {
            return Ok(false);
        }
        c.s3_limit.wait().await;
        let t = Instant::now();
        let r = c
            .client
            .s3()
            .list_object_versions()
            .bucket(&c.bucket)
            .set_prefix((!c.prefix.is_empty()).then(|| c.prefix.clone()))
            .set_key_marker(markers.0.take())
            .set_version_id_marker(markers.1.take())
            .send()
            .await;
        let page = c
            .client
            .observe("ListObjectVersions", &c.bucket, &c.prefix, t, r)?;
        let noncurrent: Vec<ListedVersion> = page
            .versions()
            .iter()
            .filter(|v| v.is_latest() == Some(false))
            .filter_map(|v| {
                let key = v.key()?;
                let object_key = key.strip_suffix(INSTRUCTION_SUFFIX).unwrap_or(key);
                if c.shard
                    .is_some_and(|s: Shard| !s.owns(&c.prefix, object_key))
                {
                    return None;
                }
                Some(ListedVersion {
                    key: key.to_owned(),
                    version_id: v.version_id()?.to_owned(),
                    object_key: object_key.to_owned(),
                    size: v.size().unwrap_or(0).max(0) as u64,
                    last_modified: v.last_modified().map(|d| d.to_string()),
                    class: String::new(),
                    detail: None,
                    wrapping_key: None,
                })
            })
            .collect();
        let classified = futures::stream::iter(noncurrent)
            .map(|mut l| async move {
                let v = audit::noncurrent_verdict(
                    &c.client,
                    &c.owner,
                    &c.goal,
                    &c.bucket,
                    &l.key,
                    &l.version_id,
                    l.size,
                    &c.s3_limit,
                )
                .await?;
                l.class = v.class.as_str().to_owned();
                // A remaining version's reason is `noncurrent-version`; its detail says why.
                l.detail = v.detail;
                l.wrapping_key = Some(v.key);
                Some(l)
            })
            .buffered(c.concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
        for l in classified.into_iter().flatten() {
            summary.listed += 1;
            if l.class == Class::Remaining.as_str() {
                summary.remaining += 1;
            }
            c.store.record_version(&c.bucket, &l).await?;
        }
        if page.is_truncated() != Some(true) {
            return Ok(true);
        }
        match page.next_key_marker() {
            Some(k) if !k.is_empty() => {
                markers = (
                    Some(k.to_owned()),
                    page.next_version_id_marker().map(str::to_owned),
                )
            }
            _ => {
                return Err(RekeyError::Listing(format!(
                    "s3://{}/{}: a truncated ListObjectVersions page without a next key marker",
                    c.bucket, c.prefix
                )));
            }
        }
    }
}

/// The delete pass alone, over the versions already recorded in the job table by a listing
/// (this run's, or an earlier one's): what [`sweep`] does after its listing. A version written
/// since that listing is not in the table, so it is never deleted. Sets `deleted` and `kept`.
pub async fn delete_recorded(
    config: &RekeyConfig,
    shutdown: &Shutdown,
) -> Result<NoncurrentSummary, RekeyError> {
    let mut summary = NoncurrentSummary {
        versioned: true,
        ..NoncurrentSummary::default()
    };
    delete_pass(config, &mut summary, shutdown).await?;
    config
        .metrics
        .set_noncurrent(&config.store.version_counts().await?);
    Ok(summary)
}

/// The delete pass over every object with versions not yet deleted.
async fn delete_pass(
    c: &RekeyConfig,
    summary: &mut NoncurrentSummary,
    shutdown: &Shutdown,
) -> Result<(), RekeyError> {
    let mut after: Option<String> = None;
    loop {
        let objects = c
            .store
            .objects_with_versions(&c.bucket, after.as_deref(), OBJECT_PAGE)
            .await?;
        let Some(last) = objects.last().cloned() else {
            return Ok(());
        };
        let settled = futures::stream::iter(objects)
            .map(|key| async move { settle_object(c, &key).await })
            .buffer_unordered(c.concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
        for r in settled {
            let (deleted, kept) = r?;
            summary.deleted += deleted;
            summary.kept += kept;
        }
        if shutdown.is_stopping() {
            return Ok(());
        }
        after = Some(last);
    }
}

/// Is this recorded version a candidate for deletion at all? `Err(why not)` otherwise.
fn candidate(v: &NoncurrentVersion) -> Result<(), &'static str> {
    // An old `<key>.instruction` version may be the only envelope of an old data version that
    // is kept (which instruction version belongs to which data version is not known): kept.
    if v.key.ends_with(crate::consts::INSTRUCTION_SUFFIX) {
        return Err("an old envelope: an old data version may need it");
    }
    match v.class.as_str() {
        "plaintext" => Err("plaintext: no key depends on it"),
        "current" => Err("under the target key"),
        _ if v
            .detail
            .as_deref()
            .is_some_and(|d| d.starts_with("unreadable")) =>
        {
            Err("unreadable: what it holds is not known")
        }
        _ => Ok(()),
    }
}

/// Deletes what may be deleted among the versions of one data object. Returns (deleted, kept)
/// counts of remaining versions.
async fn settle_object(c: &RekeyConfig, object_key: &str) -> Result<(u64, u64), RekeyError> {
    let versions = c.store.versions_of(&c.bucket, object_key).await?;
    let mut todo = Vec::new();
    for v in versions {
        match candidate(&v) {
            Ok(()) => todo.push(v),
            Err(why) => {
                if v.state != VersionState::Kept || v.note.as_deref() != Some(why) {
                    c.store
                        .set_version_state(v.id, VersionState::Kept, Some(why))
                        .await?;
                }
            }
        }
    }
    if todo.is_empty() {
        return Ok((0, 0));
    }
    if let Err(why) = verified_current(c, object_key).await {
        tracing::info!(key = %log_key(object_key), reason = %why,
            "noncurrent versions kept: the current version is not verified under the target");
        for v in &todo {
            c.store
                .set_version_state(v.id, VersionState::Kept, Some(&why))
                .await?;
        }
        return Ok((0, todo.len() as u64));
    }
    let (mut deleted, mut kept) = (0, 0);
    for v in &todo {
        match delete_version(c, v).await? {
            true => deleted += 1,
            false => kept += 1,
        }
    }
    Ok((deleted, kept))
}

/// `Ok(())` when the current version of `key` is under the target key alone and decrypts
/// (read whole, tag and commitment checked); `Err(why not)` otherwise.
async fn verified_current(c: &RekeyConfig, key: &str) -> Result<(), String> {
    c.s3_limit.wait().await;
    let head = match c.client.head(&c.bucket, key).await {
        Ok(h) => h,
        Err(ClientError::NotFound { .. }) => {
            return Err(
                "no current version (deleted, or a delete marker): the noncurrent \
                        versions are the only copies"
                    .into(),
            );
        }
        Err(e) => {
            return Err(format!(
                "HEAD of the current version: {}",
                audit::error_class(&e)
            ));
        }
    };
    let env = match c.client.envelope_of(&head).await {
        Ok(EnvelopeState::Encrypted(env)) => env,
        Ok(EnvelopeState::Plaintext) => return Err("the current version is plaintext".into()),
        Err(e) => {
            return Err(format!(
                "the current version's envelope: {}",
                audit::error_class(&e)
            ));
        }
    };
    let verdict = audit::verdict_of(&c.owner, &env, &c.goal).await;
    if verdict.class != Class::Current {
        return Err(format!(
            "the current version is not migrated ({})",
            verdict.reason.map_or("?", |r| r.as_str())
        ));
    }
    // Pinned to the version just classified: a write since then is not what gets verified.
    let opts = GetOptions {
        version_id: head.version_id.clone(),
        ..GetOptions::default()
    };
    c.s3_limit.wait().await;
    c.client
        .get_to(&c.bucket, key, &opts, &mut tokio::io::sink())
        .await
        .map(|_| ())
        .map_err(|e| {
            format!(
                "the current version does not verify: {}",
                audit::error_class(&e)
            )
        })
}

/// Deletes one noncurrent version unless it is current now or locked; records what happened.
/// `Ok(true)` when it is gone.
async fn delete_version(c: &RekeyConfig, v: &NoncurrentVersion) -> Result<bool, RekeyError> {
    let keep = |why: String| async move {
        tracing::info!(key = %log_key(&v.key), version_id = %v.version_id, reason = %why,
            "noncurrent version kept");
        c.store
            .set_version_state(v.id, VersionState::Kept, Some(&why))
            .await
            .map(|()| false)
    };
    // Never the version that is current now (a delete of the newer ones makes it current).
    c.s3_limit.wait().await;
    match c.client.head(&c.bucket, &v.key).await {
        Ok(h) if h.version_id.as_deref() == Some(v.version_id.as_str()) => {
            return Ok(keep("it is the current version now".into()).await?);
        }
        Ok(_) | Err(ClientError::NotFound { .. }) => {}
        Err(e) => {
            return Ok(keep(format!(
                "HEAD of the current version: {}",
                audit::error_class(&e)
            ))
            .await?);
        }
    }
    c.s3_limit.wait().await;
    let mut head = match c
        .client
        .head_version(&c.bucket, &v.key, Some(&v.version_id))
        .await
    {
        Ok(h) => h,
        Err(ClientError::NotFound { .. }) => {
            // Gone already: deleted by an earlier run that crashed before its record, or by
            // someone else. Either way it no longer exists.
            c.store
                .set_version_state(v.id, VersionState::Deleted, Some("already gone"))
                .await?;
            return Ok(true);
        }
        Err(e) => return Ok(keep(format!("HEAD: {}", audit::error_class(&e))).await?),
    };
    let lock_policy = AttributePolicy {
        read_acl: false,
        read_lock: c.attribute_policy.read_lock,
    };
    if let Err(e) = c
        .client
        .read_write_attributes(&mut head, &lock_policy)
        .await
    {
        return Ok(keep(format!("Object Lock settings unreadable: {e}")).await?);
    }
    let a = &head.attrs;
    if let (Some(mode), Some(until)) = a.retention_to_keep() {
        return Ok(keep(format!(
            "Object Lock: {} retention until {until}",
            mode.as_str()
        ))
        .await?);
    }
    if a.legal_hold_to_keep().is_some() {
        return Ok(keep("Object Lock: legal hold".into()).await?);
    }
    if a.event_hold_to_keep().0.is_some() {
        return Ok(keep("Object Lock: event hold".into()).await?);
    }
    c.store
        .set_version_state(v.id, VersionState::Deleting, None)
        .await?;
    c.s3_limit.wait().await;
    let t = Instant::now();
    let r = c
        .client
        .s3()
        .delete_object()
        .bucket(&c.bucket)
        .key(&v.key)
        .version_id(&v.version_id)
        .send()
        .await;
    match c.client.observe("DeleteObject", &c.bucket, &v.key, t, r) {
        Ok(_) | Err(ClientError::NotFound { .. }) => {}
        Err(e) => {
            // An Object Lock refusal (or any other) is recorded; the version stays.
            return Ok(keep(format!("DeleteObject: {}", audit::error_class(&e))).await?);
        }
    }
    crate::failpoint!("version-before-record");
    c.store
        .set_version_state(v.id, VersionState::Deleted, None)
        .await?;
    tracing::info!(key = %log_key(&v.key), version_id = %v.version_id, "noncurrent version deleted");
    Ok(true)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_instruction_versions_are_never_deleted() {
        // Which old `.instruction` version an old data version needs is not known.
        let mut v = version("remaining", Some("legacy-wrap"));
        assert!(candidate(&v).is_ok());
        v.key = "k.instruction".into();
        assert!(candidate(&v).is_err());
    }

    fn version(class: &str, detail: Option<&str>) -> NoncurrentVersion {
        NoncurrentVersion {
            id: 1,
            bucket: "b".into(),
            key: "k".into(),
            version_id: "v".into(),
            object_key: "k".into(),
            size: 1,
            last_modified: None,
            class: class.into(),
            detail: detail.map(Into::into),
            wrapping_key: None,
            state: VersionState::Listed,
            note: None,
            deleted_at: None,
        }
    }

    #[test]
    fn only_remaining_readable_versions_are_candidates() {
        assert!(candidate(&version("remaining", Some("legacy-wrap"))).is_ok());
        assert!(candidate(&version("remaining", Some("other-kms-key"))).is_ok());
        assert!(candidate(&version("plaintext", None)).is_err());
        assert!(candidate(&version("current", None)).is_err());
        assert!(candidate(&version("remaining", Some("unreadable: AccessDenied"))).is_err());
    }

    #[test]
    fn modes_parse() {
        assert_eq!("report".parse(), Ok(NoncurrentMode::Report));
        assert_eq!("delete".parse(), Ok(NoncurrentMode::Delete));
        assert!("purge".parse::<NoncurrentMode>().is_err());
    }
}
