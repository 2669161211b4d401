//! One attempt at one object: the steps in order, each returning what it did. This is the one
//! place that decides what happens next; the pool ([`super::worker`]) records the result.
//!
//! 1. settle what an earlier attempt left ([`super::recover`]): abort its multipart upload;
//!    if its write landed (the envelope carries the intent's fingerprint), settle and record it;
//! 2. [`super::inspect`]: HEAD (or GET) + envelope + classification;
//! 3. skip, or read the attributes the write must keep (ACL grants, Object Lock) and write:
//!    [`super::rewrite`] / [`super::rewrap`], each recording the intent just before its write;
//! 4. if the write failed, look whether it landed after all (lost answer);
//! 5. [`super::verify`] the write, then delete the source's `.instruction` object.

use crate::client::EnvelopeState;
use crate::codec::{self, DecryptPolicy};
use crate::consts::INSTRUCTION_SUFFIX;
use crate::envelope::Location;
use crate::store::{self, Intent, Job, JobState, Outcome};

use super::inspect::{GET_FIRST_MAX, Inspected, discard, inspect, readable_at_once};
use super::plan::Action;
use super::recover;
use super::rewrap::rewrap;
use super::rewrite::rewrite;
use super::rotate::{rotate_instruction, verify_rotation};
use super::task::{Ctx, Done, IntentLog, ObjError};
use super::verify::verify;

/// One attempt at one object; `classified` is set as soon as the action is known.
pub(super) async fn process(
    ctx: &Ctx,
    job: &Job,
    classified: &mut Option<store::Action>,
) -> Result<Done, ObjError> {
    let c = &ctx.config;
    if let Some(upload_id) = job.intent.as_ref().and_then(|i| i.upload_id.as_deref()) {
        recover::abort_orphan(c, job, upload_id).await?;
    }
    if job.key.ends_with(INSTRUCTION_SUFFIX)
        && let Some(done) = recover::instruction_object(ctx, job).await?
    {
        return Ok(done);
    }
    // Small objects: one GET pinned to the listed ETag gives the head and the body. Not when
    // an earlier attempt may have written (the ETag may have moved on to ours).
    let get_first = (job.size <= GET_FIRST_MAX
        && !job.etag.is_empty()
        && job.intent.is_none()
        && readable_at_once(job.storage_class.as_deref()))
    .then_some(job.etag.as_str());
    let Some(ins) = inspect(c, &job.bucket, &job.key, get_first).await? else {
        // Deleted since it was listed: nothing left to migrate.
        return Ok(Done::skip(None, "deleted"));
    };
    if let Some(intent) = &job.intent
        && let EnvelopeState::Encrypted(env) = &ins.state
        && recover::is_ours(intent, env)
    {
        // An earlier attempt's write landed and was not recorded (a crash, a lost answer).
        *classified = Some(intent.action);
        let expected = job.plaintext_sha256.as_deref();
        return recover::settle(ctx, intent, &ins.head, env, ins.body, expected).await;
    }
    if !job.etag.is_empty() && ins.head.etag.as_deref() != Some(job.etag.as_str()) {
        // Changed since it was listed: classify again later from what is there now.
        return Err(ObjError::Conflict {
            message: format!(
                "changed since listed (ETag {} -> {})",
                job.etag,
                ins.head.etag.as_deref().unwrap_or("?")
            ),
            etag: ins.head.etag.clone(),
            size: Some(ins.head.content_length),
        });
    }
    let format = ins.format();
    let Inspected {
        mut head,
        body,
        state,
        action,
        instruction_etag,
    } = ins;
    let env = match (action, state) {
        (Action::Skip(reason), _) => {
            discard(body, head.content_length).await;
            return Ok(Done::skip(Some(format), reason.as_str()));
        }
        (_, EnvelopeState::Plaintext) => {
            discard(body, head.content_length).await;
            return Ok(Done::skip(Some(format), "plaintext"));
        }
        (_, EnvelopeState::Encrypted(env)) => env,
    };
    if c.require_commitment {
        // `--commitment require`: a source without key commitment is refused before its key
        // is unwrapped; untouched, recorded failed with its class.
        let policy = DecryptPolicy {
            require_commitment: true,
            ..DecryptPolicy::default()
        };
        if let Err(e) = codec::check_commitment(&env, &policy) {
            discard(body, head.content_length).await;
            return Err(e.into());
        }
    }
    let store_action = action.store_action();
    *classified = Some(store_action);
    // What the write must carry beyond the HEAD (ACL grants, Object Lock retention and legal
    // hold): unreadable, the object fails untouched.
    // A rotation writes only `<key>.instruction`: the data object's attributes stay as they are.
    let rotation = action == Action::RotateInstruction;
    if !rotation && (c.attribute_policy.read_acl || c.attribute_policy.read_lock) {
        c.s3_limit.wait().await;
    }
    if !rotation
        && let Err(e) = c
            .client
            .read_write_attributes(&mut head, &c.attribute_policy)
            .await
    {
        discard(body, head.content_length).await;
        return Err(e.into());
    }
    let intent = Intent {
        action: store_action,
        source_format: format.clone(),
        source_etag: head.etag.clone(),
        source_version_id: head.version_id.clone(),
        upload_id: None,
        fingerprint: None,
        // Earlier attempts' writes may still land (one dropped at its deadline, a worker
        // whose lease lapsed): they stay recognisable as ours.
        earlier_fingerprints: job
            .intent
            .as_ref()
            .map(Intent::all_fingerprints)
            .unwrap_or_default(),
        instruction_etag: instruction_etag.clone(),
    };
    let (log, mut uploads) = IntentLog::new(ctx, job, intent);
    let write = async {
        match action {
            Action::Rewrite => rewrite(ctx, &head, &env, body, &log).await,
            Action::RotateInstruction => {
                let etag = instruction_etag.as_deref();
                rotate_instruction(ctx, &head, &env, body, etag, &log).await
            }
            _ => rewrap(ctx, &head, &env, body, &log).await,
        }
    };
    tokio::pin!(write);
    // A multipart upload the write starts goes into the intent as soon as it exists, so that
    // a crash before it completes leaves its id for the next attempt to abort.
    let written = loop {
        tokio::select! {
            r = &mut write => break r,
            Some(upload_id) = uploads.recv() => log.record_upload(upload_id).await,
        }
    };
    while let Ok(upload_id) = uploads.try_recv() {
        log.record_upload(upload_id).await;
    }
    let written = match written {
        Ok(w) => w,
        Err(e @ ObjError::Stopped) => return Err(e),
        Err(e) => {
            // The answer may have been lost after S3 took the write (a 500 and then 412 on the
            // SDK's retry, a cut connection): if the object carries our envelope, it landed.
            let intent = log.intent();
            if let Some((now, env)) = recover::landed(c, &job.bucket, &job.key, &intent).await {
                // The failed write's source hash is not known here (the reader went with the
                // error): the tag check authenticates what landed.
                return recover::settle(ctx, &intent, &now, &env, None, None).await;
            }
            return Err(e);
        }
    };
    let outcome = Outcome {
        source_format: Some(format),
        action: Some(store_action),
        result_etag: written.etag.clone(),
        result_version_id: written.version_id.clone(),
        previous_version_id: head.version_id.clone(),
        plaintext_sha256: written.source_sha256.clone(),
        ..Outcome::new(JobState::Done)
    };
    let after = async {
        if rotation {
            // The rotated instruction file is the envelope now: kept, never deleted.
            verify_rotation(c, &head, &written).await?;
            crate::failpoint!("after-verify");
            return Ok(());
        }
        verify(c, &head, &written).await?;
        crate::failpoint!("after-verify");
        if env.location == Location::InstructionFile
            && let Some(etag) = &instruction_etag
        {
            recover::delete_instruction(c, &head, etag).await?;
        }
        Ok::<_, ObjError>(())
    };
    after.await.map_err(|e| e.after_write(&outcome))?;
    Ok(Done::written(outcome))
}
