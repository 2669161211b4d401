//! `s3cse audit`: the census an operator runs before retiring a key. Independent of any state
//! file: it lists the bucket (ListObjectsV2, or ListObjectVersions with `versions`), HEADs every
//! object with bounded concurrency and reads `.instruction` objects, and says of each whether it
//! is plaintext, current (depends on the target KMS key only) or remaining, and why. No body is
//! read. Whether a `kms`/`kms+context` data key is under the target is read off the blob when it
//! names the key, matched against the target's signature (learned once, with a few KMS calls),
//! or asked of KMS about once per backing key in the bucket ([`KeyOwner`]).
//!
//! # Layout
//! - [`classify`]: pure, one envelope -> [`Verdict`]; its table defines "current".
//! - [`tally`]: the running totals and the JSON summary, bounded in memory.
//! - this file: listing, the per-object HEAD, and `.instruction` objects.
//!
//! # `.instruction` objects
//! A `<key>.instruction` object whose data object `<key>` exists and keeps no envelope of its
//! own in its metadata is that object's live envelope: it is counted with the data object (as
//! `instruction-file`), not on its own. Any other `.instruction` object (no data object, or one
//! with its envelope in its metadata) is an `orphan-instruction`: it still holds a content key
//! under whatever key wrapped it.

pub mod classify;
pub mod tally;

use std::time::Instant;

use futures::StreamExt as _;
use tokio::sync::mpsc;

use crate::client::{ClientError, EnvelopeState, S3Cse};
use crate::codec::CodecError;
use crate::consts::INSTRUCTION_SUFFIX;
use crate::envelope::{self, Detected, Metadata};
use crate::rekey::limit::RateLimit;
use crate::rekey::owner::KeyOwner;
use crate::rekey::plan::Goal;

pub use self::classify::{
    Class, InstructionRole, Reason, Verdict, classify_envelope, instruction_role,
};
pub use self::tally::{Scope, Summary, Tally};

/// Errors that stop a census (a single object's failure is an `unreadable` verdict instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// A listing request failed.
    #[error("listing s3://{bucket}/{prefix}: {source}")]
    Listing {
        bucket: String,
        prefix: String,
        #[source]
        source: ClientError,
    },
    /// A truncated listing page came without the token (or markers) of the next one: going on
    /// would start over or stop early, and a census that silently stops early proves nothing.
    #[error("listing s3://{bucket}/{prefix}: a truncated page came without a continuation token")]
    TruncatedWithoutToken { bucket: String, prefix: String },
}

/// What to audit.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub bucket: String,
    /// Key prefix (`""`: the whole bucket).
    pub prefix: String,
    /// Every version (ListObjectVersions; delete markers ignored), not only the current ones.
    pub versions: bool,
    /// HEADs in flight at once.
    pub concurrency: usize,
    /// How many remaining objects the summary names.
    pub max_listed: usize,
    /// What counts as current besides the target key (`--target-format`,
    /// `--keep-instruction-files`): the same [`Goal`] as rekey's, so both agree.
    pub goal: Goal,
}

/// One object (or version) with its verdict: what `--list` prints, what the tally counts.
#[derive(Debug, Clone)]
pub struct Audited {
    pub key: String,
    /// Set with `versions` (S3's `null` for objects written before versioning).
    pub version_id: Option<String>,
    /// Stored size in bytes (as listed).
    pub size: u64,
    pub verdict: Verdict,
}

impl Audited {
    /// One JSON line of `--list`.
    pub fn to_json(&self) -> serde_json::Value {
        let v = &self.verdict;
        serde_json::json!({
            "key": self.key,
            "version_id": self.version_id,
            "size": self.size,
            "class": v.class,
            "reason": v.reason,
            "detail": v.detail,
            "format": v.format,
            "wrap": v.wrap,
            "content": v.content,
            "wrapping_key": v.key,
        })
    }
}

/// One listed entry, before its HEAD.
#[derive(Debug, Clone)]
struct Listed {
    key: String,
    version_id: Option<String>,
    /// False for noncurrent versions.
    is_latest: bool,
    size: u64,
}

/// Listed entries waiting for a HEAD: the listing runs at most this far ahead (two pages), so
/// memory stays bounded whatever the bucket size.
const LISTING_AHEAD: usize = 2000;

/// Largest `.instruction` object read (they are a few hundred bytes of JSON).
const MAX_INSTRUCTION_FILE: i64 = 1 << 20;

/// Runs the census: every object of `config.bucket`/`config.prefix` is classified against
/// `owner`'s target key, handed to `each` (in completion order) and counted in the returned [`Tally`].
pub async fn run(
    client: &S3Cse,
    owner: &KeyOwner,
    config: &AuditConfig,
    s3_limit: &RateLimit,
    mut each: impl FnMut(&Audited),
) -> Result<Tally, AuditError> {
    let (tx, rx) = mpsc::channel::<Listed>(LISTING_AHEAD);
    let listing = async {
        // The sender is dropped when the listing ends, which ends the stream below.
        let tx = tx;
        if config.versions {
            list_versions(client, config, s3_limit, &tx).await
        } else {
            list_objects(client, config, s3_limit, &tx).await
        }
    };
    let entries =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|l| (l, rx)) });
    let mut tally = Tally::new(config.max_listed);
    let audits = async {
        let results = entries
            .map(|l| audit_one(client, owner, &config.goal, &config.bucket, l, s3_limit))
            .buffer_unordered(config.concurrency.max(1));
        let mut results = std::pin::pin!(results);
        while let Some(r) = results.next().await {
            match r {
                Outcome::Counted(a) => {
                    each(&a);
                    tally.add(&a);
                }
                Outcome::Vanished => tally.add_vanished(),
                Outcome::CountedWithItsObject => {}
            }
        }
    };
    let (listed, ()) = tokio::join!(listing, audits);
    listed?;
    Ok(tally)
}

/// The census verdict on one noncurrent version of `key`, exactly as `audit --versions` gives
/// it (`None`: gone since it was listed). `rekey --noncurrent` records this verdict, so its
/// record and the census agree.
#[allow(clippy::too_many_arguments)] // the census's inputs, one version's coordinates
pub async fn noncurrent_verdict(
    client: &S3Cse,
    owner: &KeyOwner,
    goal: &Goal,
    bucket: &str,
    key: &str,
    version_id: &str,
    size: u64,
    s3_limit: &RateLimit,
) -> Option<Verdict> {
    let l = Listed {
        key: key.to_owned(),
        version_id: Some(version_id.to_owned()),
        is_latest: false,
        size,
    };
    match audit_one(client, owner, goal, bucket, l, s3_limit).await {
        Outcome::Counted(a) => Some(a.verdict),
        // (A noncurrent `.instruction` version is never its object's live envelope.)
        Outcome::Vanished | Outcome::CountedWithItsObject => None,
    }
}

/// ListObjectsV2, page by page, into `tx`.
async fn list_objects(
    client: &S3Cse,
    config: &AuditConfig,
    s3_limit: &RateLimit,
    tx: &mpsc::Sender<Listed>,
) -> Result<(), AuditError> {
    let mut token: Option<String> = None;
    loop {
        s3_limit.wait().await;
        let t = Instant::now();
        let r = client
            .s3()
            .list_objects_v2()
            .bucket(&config.bucket)
            .set_prefix(nonempty(&config.prefix))
            .set_continuation_token(token.take())
            .send()
            .await;
        let page = client
            .observe("ListObjectsV2", &config.bucket, &config.prefix, t, r)
            .map_err(|source| listing_error(config, source))?;
        for o in page.contents() {
            let Some(key) = o.key() else { continue };
            let listed = Listed {
                key: key.to_owned(),
                version_id: None,
                is_latest: true,
                size: o.size().unwrap_or(0).max(0) as u64,
            };
            if tx.send(listed).await.is_err() {
                return Ok(());
            }
        }
        // An empty page that says "truncated" is not the end (S3 may return short pages).
        if page.is_truncated() != Some(true) {
            return Ok(());
        }
        match page.next_continuation_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => return Err(truncated(config)),
        }
    }
}

/// ListObjectVersions, page by page, into `tx`; delete markers are not objects.
async fn list_versions(
    client: &S3Cse,
    config: &AuditConfig,
    s3_limit: &RateLimit,
    tx: &mpsc::Sender<Listed>,
) -> Result<(), AuditError> {
    let mut markers: (Option<String>, Option<String>) = (None, None);
    loop {
        s3_limit.wait().await;
        let t = Instant::now();
        let r = client
            .s3()
            .list_object_versions()
            .bucket(&config.bucket)
            .set_prefix(nonempty(&config.prefix))
            .set_key_marker(markers.0.take())
            .set_version_id_marker(markers.1.take())
            .send()
            .await;
        let page = client
            .observe("ListObjectVersions", &config.bucket, &config.prefix, t, r)
            .map_err(|source| listing_error(config, source))?;
        for v in page.versions() {
            let Some(key) = v.key() else { continue };
            let listed = Listed {
                key: key.to_owned(),
                version_id: v.version_id().map(str::to_owned),
                is_latest: v.is_latest() != Some(false),
                size: v.size().unwrap_or(0).max(0) as u64,
            };
            if tx.send(listed).await.is_err() {
                return Ok(());
            }
        }
        if page.is_truncated() != Some(true) {
            return Ok(());
        }
        match page.next_key_marker() {
            Some(k) if !k.is_empty() => {
                markers = (
                    Some(k.to_owned()),
                    page.next_version_id_marker().map(str::to_owned),
                )
            }
            _ => return Err(truncated(config)),
        }
    }
}

fn nonempty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn listing_error(config: &AuditConfig, source: ClientError) -> AuditError {
    AuditError::Listing {
        bucket: config.bucket.clone(),
        prefix: config.prefix.clone(),
        source,
    }
}

fn truncated(config: &AuditConfig) -> AuditError {
    AuditError::TruncatedWithoutToken {
        bucket: config.bucket.clone(),
        prefix: config.prefix.clone(),
    }
}

/// What became of one listed entry.
enum Outcome {
    Counted(Audited),
    /// Deleted between the listing and its HEAD.
    Vanished,
    /// A `.instruction` object that is its data object's live envelope.
    CountedWithItsObject,
}

async fn audit_one(
    client: &S3Cse,
    owner: &KeyOwner,
    goal: &Goal,
    bucket: &str,
    l: Listed,
    s3_limit: &RateLimit,
) -> Outcome {
    let verdict = if let Some(data_key) = l.key.strip_suffix(INSTRUCTION_SUFFIX) {
        match instruction_verdict(client, owner, bucket, data_key, &l, s3_limit).await {
            Some(v) => v,
            None => return Outcome::CountedWithItsObject,
        }
    } else {
        s3_limit.wait().await;
        let head = match client
            .head_version(bucket, &l.key, l.version_id.as_deref())
            .await
        {
            Ok(h) => h,
            Err(ClientError::NotFound { .. }) => return Outcome::Vanished,
            Err(e) => return counted(l, Verdict::unreadable(error_class(&e))),
        };
        if !matches!(envelope::detect(&head.metadata), Ok(Detected::Complete(_))) {
            // envelope_of reads `<key>.instruction` next.
            s3_limit.wait().await;
        }
        let v = match client.envelope_of(&head).await {
            Ok(EnvelopeState::Plaintext) => Verdict::plaintext(),
            Ok(EnvelopeState::Encrypted(env)) => verdict_of(owner, &env, goal).await,
            Err(ClientError::NotFound { .. }) => Verdict::unreadable("instruction file missing"),
            Err(e) => Verdict::unreadable(error_class(&e)),
        };
        if l.is_latest { v } else { v.noncurrent() }
    };
    counted(l, verdict)
}

/// The verdict on an encrypted object: KMS may be asked whether its data key is under the target
/// ([`KeyOwner`]); if KMS cannot answer (after its retries) the object is unreadable, never
/// current.
pub async fn verdict_of(owner: &KeyOwner, env: &envelope::Envelope, goal: &Goal) -> Verdict {
    // Only a `kms+context` key's owner changes the verdict (a legacy `kms` wrap remains
    // whoever wraps it): no KMS question for the others.
    if env.wrap != envelope::WrapAlg::KmsContext {
        return classify_envelope(env, false, goal);
    }
    match owner.owns(env).await {
        Ok(owned) => classify_envelope(env, owned, goal),
        Err(e) => {
            tracing::warn!(error = %e, "KMS could not say which key wraps a data key");
            Verdict::unreadable(format!("kms-{:?}", e.kind).to_lowercase())
        }
    }
}

fn counted(l: Listed, verdict: Verdict) -> Outcome {
    Outcome::Counted(Audited {
        key: l.key,
        version_id: l.version_id,
        size: l.size,
        verdict,
    })
}

/// The verdict on `<data_key>.instruction`, or `None` when it is the live envelope of
/// `<data_key>` (then it is counted with that object).
async fn instruction_verdict(
    client: &S3Cse,
    owner: &KeyOwner,
    bucket: &str,
    data_key: &str,
    l: &Listed,
    s3_limit: &RateLimit,
) -> Option<Verdict> {
    if !l.is_latest {
        // An old version of an envelope: it still holds a content key.
        let v = file_verdict(client, owner, bucket, l, s3_limit).await;
        return Some(v.noncurrent());
    }
    s3_limit.wait().await;
    let data_head = match client.head(bucket, data_key).await {
        Ok(head) => Some(head),
        Err(ClientError::NotFound { .. }) => None,
        Err(e) => return Some(Verdict::unreadable(error_class(&e))),
    };
    let why = match instruction_role(data_head.as_ref().map(|h| &h.metadata)) {
        InstructionRole::Live => return None,
        InstructionRole::Orphan(why) => why,
    };
    let mut v = file_verdict(client, owner, bucket, l, s3_limit).await;
    v.detail = Some(match v.detail.take() {
        Some(d) => format!("{why} ({d})"),
        None => why.to_owned(),
    });
    Some(v)
}

/// An `orphan-instruction` verdict with the wrap and key the file names, when it can be read.
async fn file_verdict(
    client: &S3Cse,
    owner: &KeyOwner,
    bucket: &str,
    l: &Listed,
    s3_limit: &RateLimit,
) -> Verdict {
    let mut v = Verdict::orphan_instruction();
    s3_limit.wait().await;
    match read_small(client, bucket, &l.key, l.version_id.as_deref()).await {
        Ok(json) => {
            // V1/V2 files hold the whole envelope; a V3 file needs its object's header, so its
            // wrap is not known here (it is an orphan all the same).
            if let Ok(env) = Detected::NoEnvelopeInMetadata
                .complete_with_instruction_file(&Metadata::new(), &json)
            {
                let e = verdict_of(owner, &env, &Goal::default()).await;
                (v.wrap, v.content, v.key) = (e.wrap, e.content, e.key);
            }
        }
        Err(e) => v.detail = Some(format!("unreadable: {}", error_class(&e))),
    }
    v
}

async fn read_small(
    client: &S3Cse,
    bucket: &str,
    key: &str,
    version_id: Option<&str>,
) -> Result<Vec<u8>, ClientError> {
    let t = Instant::now();
    let r = client
        .s3()
        .get_object()
        .bucket(bucket)
        .key(key)
        .set_version_id(version_id.map(str::to_owned))
        .send()
        .await;
    let out = client.observe("GetObject", bucket, key, t, r)?;
    if out.content_length().unwrap_or(0) > MAX_INSTRUCTION_FILE {
        return Err(
            CodecError::Envelope(envelope::EnvelopeError::InstructionFileJson(
                "larger than 1 MiB".into(),
            ))
            .into(),
        );
    }
    let body = out
        .body
        .collect()
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(body.into_bytes().to_vec())
}

/// A short, stable name for why an object could not be read (for the `detail` field).
pub fn error_class(e: &ClientError) -> String {
    match e {
        ClientError::NotFound { .. } => "not found".into(),
        ClientError::PreconditionFailed => "changed while read".into(),
        ClientError::S3 { code, status, .. } => match (code, status) {
            (Some(c), _) => c.clone(),
            (None, Some(s)) => format!("HTTP {s}"),
            (None, None) => "network error".into(),
        },
        ClientError::Codec(CodecError::Envelope(err)) => format!("malformed envelope: {err}"),
        ClientError::Io(_) => "I/O error".into(),
        other => other.to_string(),
    }
}
