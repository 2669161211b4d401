//! What a crash, a stop or a lost answer leaves behind, and how the next attempt settles it.
//!
//! Before every write the job's intent is recorded ([`super::task::IntentLog`]): the action, the
//! source format, ETag and version id, the `.instruction` object the envelope came from, the
//! fingerprint of the envelope about to be written ([`super::task::fingerprint`]) and, as soon
//! as it exists, the id of a multipart upload. The next attempt at the job then:
//!
//! - aborts the recorded multipart upload ([`abort_orphan`]), so no parts are left;
//! - finds out whether the write landed: the object's envelope carries the recorded
//!   fingerprint ([`is_ours`]). Only our own write matches: an application's write that
//!   happens to be current does not, so a stale intent never claims it;
//! - if it landed, [`settle`]s it: authenticates it (one KMS Decrypt, tag checked), deletes the
//!   source's `.instruction` object if it is still the one read, and records the write from
//!   the intent (action, source format, replaced version id).
//!
//! The same check runs at once when a write fails in a way that may hide its success (a 500
//! after S3 took the PUT, then 412 on the SDK's retry; a cut connection), so a lost answer
//! is recorded as the write it was.
//!
//! A rotation of `<key>.instruction` (`--keep-instruction-files`, [`super::rotate`]) is found the
//! same way, by the fingerprint of the envelope in the file; the file is ours then, and kept.
//!
//! A `.instruction` object whose data object now has its own envelope in the metadata (a crash
//! between a rewrite and the delete, or another tool) is stale: it still holds the content
//! key under the legacy key, so it is deleted, conditionally on the ETag listed
//! ([`instruction_object`]).

use aws_sdk_s3::primitives::ByteStream;

use crate::client::{ClientError, ObjectHead};
use crate::consts::{INSTRUCTION_MARKER, INSTRUCTION_SUFFIX};
use crate::envelope::{self, Detected, Envelope, Location};
use crate::store::{Intent, Job, JobState, Outcome};

use super::RekeyConfig;
use super::inspect::discard;
use super::read::authenticate;
use super::task::{Ctx, Done, ObjError, fingerprint};

/// Aborts the multipart upload that an interrupted attempt at `job` started (its id is in the
/// job's intent), so that its parts are not left behind. One that was completed or aborted is
/// gone already (404 `NoSuchUpload`): nothing to do. Any other failure ends this attempt before
/// it writes (a transient failure, retried later), so the id stays in the intent until the
/// abort is confirmed.
pub(super) async fn abort_orphan(
    c: &RekeyConfig,
    job: &Job,
    upload_id: &str,
) -> Result<(), ObjError> {
    let key = crate::logkey::log_key(&job.key);
    match super::copy::abort_upload(c, &job.bucket, &job.key, upload_id).await {
        Ok(()) => {
            tracing::info!(%key, upload_id,
                "aborted the multipart upload of an interrupted attempt");
            Ok(())
        }
        Err(ClientError::NotFound { .. }) => {
            tracing::debug!(%key, upload_id, "no upload left from the last attempt");
            Ok(())
        }
        Err(e) => Err(ObjError::Failed {
            code: "AbortFailed".into(),
            http: e.http_status(),
            message: format!(
                "could not abort the multipart upload {upload_id} of an interrupted attempt: {e}"
            ),
            transient: true,
        }),
    }
}

/// True if `env` is the envelope `intent` was about to write: that write landed. Any
/// attempt's: the latest, or an earlier one whose write landed late. In the metadata, or in
/// `<key>.instruction` (`--keep-instruction-files` rotations): the fingerprint is of a fresh
/// encrypted data key, which nothing but our write carries, wherever it is stored.
pub(super) fn is_ours(intent: &Intent, env: &Envelope) -> bool {
    let got = fingerprint(env);
    intent.fingerprint.as_deref() == Some(got.as_str())
        || intent.earlier_fingerprints.contains(&got)
}

/// After a failed write: HEADs the object and returns its head and envelope if the write
/// landed after all (its envelope carries `intent`'s fingerprint). `None` when it did not, or
/// when that cannot be told now (the failure stands, the intent stays for the next attempt).
pub(super) async fn landed(
    c: &RekeyConfig,
    bucket: &str,
    key: &str,
    intent: &Intent,
) -> Option<(ObjectHead, Envelope)> {
    if intent.fingerprint.is_none() && intent.earlier_fingerprints.is_empty() {
        return None;
    }
    c.s3_limit.wait().await;
    let head = c.client.head(bucket, key).await.ok()?;
    let env = match envelope::detect(&head.metadata) {
        Ok(Detected::Complete(env)) => env,
        // An instruction-file rotation lands in `<key>.instruction`.
        Ok(_) if intent.instruction_etag.is_some() => {
            c.s3_limit.wait().await;
            match c.client.envelope_of(&head).await {
                Ok(crate::client::EnvelopeState::Encrypted(env)) => env,
                _ => return None,
            }
        }
        _ => return None,
    };
    is_ours(intent, &env).then_some((head, env))
}

/// Settles a write of ours that landed but was not recorded: authenticates it (with `--verify`,
/// the default), deletes the source's `.instruction` object if the intent names one, and
/// returns the outcome recorded from the intent.
///
/// `expected_sha256`: the source's plaintext SHA-256, when an earlier attempt recorded it (a
/// failure after the write): the write must decrypt to it, or it stays failed.
pub(super) async fn settle(
    ctx: &Ctx,
    intent: &Intent,
    head: &ObjectHead,
    env: &Envelope,
    body: Option<ByteStream>,
    expected_sha256: Option<&str>,
) -> Result<Done, ObjError> {
    let c = &ctx.config;
    tracing::info!(key = %crate::logkey::log_key(&head.key), action = intent.action.as_str(),
        "settling a write an earlier attempt made");
    let mut outcome = Outcome {
        source_format: Some(intent.source_format.clone()),
        action: Some(intent.action),
        result_etag: head.etag.clone(),
        result_version_id: head.version_id.clone(),
        previous_version_id: intent.source_version_id.clone(),
        ..Outcome::new(JobState::Done)
    };
    if env.location == Location::InstructionFile {
        // A rotation of `<key>.instruction` (`--keep-instruction-files`): the file is ours and
        // stays; the data object must still be the one whose envelope was rotated.
        if head.etag != intent.source_etag {
            return Err(ObjError::Conflict {
                message: "the data object changed after its instruction file was rotated".into(),
                etag: head.etag.clone(),
                size: Some(head.content_length),
            });
        }
        discard(body, head.content_length).await;
        return Ok(Done::written(outcome));
    }
    let rest = async {
        if c.verify {
            // The interrupted attempt never verified its write: decrypt it now (one KMS
            // Decrypt, tag checked) and record its plaintext SHA-256.
            let (_, sha) = authenticate(ctx, head, env, body).await?;
            Ok::<_, ObjError>(Some(sha))
        } else {
            discard(body, head.content_length).await;
            Ok(None)
        }
    };
    let sha = rest.await.map_err(|e| e.after_write(&outcome))?;
    if let (Some(got), Some(want)) = (&sha, expected_sha256)
        && got != want
    {
        outcome.plaintext_sha256 = Some(want.to_owned());
        return Err(ObjError::failed(
            "VerifyFailed",
            "the written object's plaintext SHA-256 differs from the source's",
        )
        .after_write(&outcome));
    }
    outcome.plaintext_sha256 = sha;
    if let Some(etag) = &intent.instruction_etag {
        delete_instruction(c, head, etag)
            .await
            .map_err(|e| e.after_write(&outcome))?;
    }
    Ok(Done::written(outcome))
}

/// Deletes `<key>.instruction` if it is still the one read (`If-Match` its ETag). Gone already
/// (404) or replaced by another writer (412): nothing of ours is left, fine either way.
pub(super) async fn delete_instruction(
    c: &RekeyConfig,
    head: &ObjectHead,
    etag: &str,
) -> Result<(), ObjError> {
    let ikey = format!("{}{INSTRUCTION_SUFFIX}", head.key);
    crate::failpoint!("before-instruction-delete");
    match delete_if_match(c, &head.bucket, &ikey, Some(etag)).await {
        Ok(()) | Err(ClientError::NotFound { .. } | ClientError::PreconditionFailed) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Largest body an instruction file is taken to have when it lacks the marker (some stores drop
/// its empty value): an envelope is a few hundred bytes.
const INSTRUCTION_MAX: u64 = 64 << 10;

/// Whether the `.instruction` object of `job` is an instruction file: it carries the marker,
/// or (small) its body is an instruction file's JSON with envelope fields. Anything else is a
/// data object that happens to be named so. A gone object is neither.
async fn is_instruction_file(c: &RekeyConfig, job: &Job) -> Result<bool, ObjError> {
    c.s3_limit.wait().await;
    let head = match c.client.head(&job.bucket, &job.key).await {
        Ok(h) => h,
        Err(ClientError::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if head.metadata.contains_key(INSTRUCTION_MARKER) {
        return Ok(true);
    }
    if head.content_length > INSTRUCTION_MAX {
        return Ok(false);
    }
    c.s3_limit.wait().await;
    let body = match c.client.get_body(&head, None).await {
        Ok(b) => b,
        Err(ClientError::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let bytes = body
        .collect()
        .await
        .map_err(|e| ObjError::from(ClientError::Io(std::io::Error::other(e))))?
        .into_bytes();
    Ok(envelope::parse_instruction_file(&bytes)
        .is_ok_and(|fields| envelope::has_envelope_fields(&fields)))
}

/// DeleteObject, conditional on `etag` when given.
async fn delete_if_match(
    c: &RekeyConfig,
    bucket: &str,
    key: &str,
    etag: Option<&str>,
) -> Result<(), ClientError> {
    c.s3_limit.wait().await;
    let t = std::time::Instant::now();
    let r = c
        .client
        .s3()
        .delete_object()
        .bucket(bucket)
        .key(key)
        .set_if_match(etag.map(str::to_owned))
        .send()
        .await;
    c.client
        .observe("DeleteObject", bucket, key, t, r)
        .map(|_| ())
}

/// A job for a `<key>.instruction` object. Only one that carries the instruction-file marker
/// (`x-amz-crypto-instr-file`, which every SDK writes on them) is one: any other object whose
/// name happens to end so is data (`None`: the caller processes it as such). In use (its data
/// object has no envelope of its own): skipped, the data object's job moves it. Stale (the
/// data object has its envelope in its metadata, which readers take first): deleted if
/// unchanged since listed. Orphan (no data object): left alone and recorded as such, for the
/// operator (`audit` lists it).
pub(super) async fn instruction_object(ctx: &Ctx, job: &Job) -> Result<Option<Done>, ObjError> {
    let c = &ctx.config;
    if !is_instruction_file(c, job).await? {
        return Ok(None);
    }
    let data_key = job.key.strip_suffix(INSTRUCTION_SUFFIX).unwrap_or(&job.key);
    c.s3_limit.wait().await;
    let data = match c.client.head(&job.bucket, data_key).await {
        Ok(h) => h,
        Err(ClientError::NotFound { .. }) => {
            return Ok(Some(Done::skip(
                Some("instruction-file".into()),
                "orphan-instruction",
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if !matches!(envelope::detect(&data.metadata), Ok(Detected::Complete(_))) {
        return Ok(Some(Done::skip(
            Some("instruction-file".into()),
            "instruction-file",
        )));
    }
    // Stale: delete it, but only as listed (a writer that just put a fresh one keeps it).
    let listed = (!job.etag.is_empty()).then_some(job.etag.as_str());
    match delete_if_match(c, &job.bucket, &job.key, listed).await {
        Ok(()) | Err(ClientError::NotFound { .. }) => {
            tracing::info!(key = %crate::logkey::log_key(&job.key),
                "deleted a stale instruction file (its object has its own envelope)");
            Ok(Some(Done::skip(
                Some("instruction-file".into()),
                "stale-instruction-deleted",
            )))
        }
        Err(e) => Err(e.into()),
    }
}
