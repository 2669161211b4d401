//! Instruction-file rotation (`--keep-instruction-files`): an object whose envelope lives in
//! `<key>.instruction` and whose content is already current (AES-GCM, or V3) keeps its data
//! object, byte for byte and ETag for ETag. Its content key is wrapped under the target key
//! ([`super::rewrap::wrap_under_target`]: one `ReEncrypt` for KMS sources; unwrap, body
//! authenticated, one `Encrypt` for raw-key and legacy wraps) and only the small instruction
//! file is rewritten, with `If-Match` on the ETag it had when read: a 5 TiB object is rotated
//! with a GET and a PUT of a few hundred bytes (plus the KMS call).
//!
//! V1/V2: the whole envelope is in the file, the IV kept. V3: the file holds `x-amz-3`,
//! `x-amz-w`, `x-amz-t`; the commitment and message id stay on the object (FORMATS.md §4), and
//! stay valid, as the content key does not change.
//!
//! Crash safety is the other write paths': the intent (with the new envelope's fingerprint) is
//! recorded before the PUT; an instruction file that carries it is recognised as ours by the
//! next attempt ([`super::recover::is_ours`]) and never deleted as stale (its data object has
//! no envelope of its own).

use aws_sdk_s3::primitives::ByteStream;

use crate::client::{ClientError, ObjectHead};
use crate::envelope::{self, Envelope, Location, WrapAlg};

use super::RekeyConfig;
use super::rewrap::wrap_under_target;
use super::task::{Ctx, IntentLog, ObjError, Written, target_context};

pub(super) async fn rotate_instruction(
    ctx: &Ctx,
    head: &ObjectHead,
    env: &Envelope,
    body: Option<ByteStream>,
    instruction_etag: Option<&str>,
    log: &IntentLog<'_>,
) -> Result<Written, ObjError> {
    let c = &ctx.config;
    // Without the ETag read, the write could not be conditional: never write blind.
    let Some(etag) = instruction_etag else {
        super::inspect::discard(body, head.content_length).await;
        return Err(ObjError::failed(
            "InstructionFileUnconditional",
            "the instruction file's ETag is unknown: it cannot be rewritten conditionally",
        ));
    };
    let (blob, cek, source_sha) = wrap_under_target(ctx, head, env, body).await?;
    let new_env = Envelope {
        version: env.version,
        content_alg: env.content_alg,
        wrap: WrapAlg::KmsContext,
        encrypted_key: blob,
        iv: env.iv.clone(),
        matdesc: envelope::Context::new(),
        encryption_context: target_context(c, env.content_alg),
        message_id: env.message_id.clone(),
        commitment: env.commitment.clone(),
        // As read; it stays on the object (V3, and V1/V2 as `to_instruction_file` writes them).
        plaintext_length: env.plaintext_length,
        location: Location::InstructionFile,
    };
    let (_, json) = new_env.to_instruction_file();
    log.before_write(&new_env).await?;
    crate::failpoint!("rotate-before-instruction-put");
    c.s3_limit.wait().await;
    c.client
        .put_instruction_file(&head.bucket, &head.key, json, Some(etag.to_owned()))
        .await?;
    crate::failpoint!("rotate-after-instruction-put");
    Ok(Written {
        // The data object is untouched: its ETag and version are the result.
        etag: head.etag.clone(),
        version_id: head.version_id.clone(),
        envelope: new_env,
        cek,
        source_sha256: source_sha,
        same_bytes: true,
    })
}

/// Verifies a rotation (`--no-verify` skips it): the data object still has the ETag read (its
/// bytes, authenticated before a raw-key rewrap, are the ones the envelope belongs to), and the
/// envelope read back through its instruction file is the one written.
pub(super) async fn verify_rotation(
    c: &RekeyConfig,
    head: &ObjectHead,
    written: &Written,
) -> Result<(), ObjError> {
    if !c.verify {
        return Ok(());
    }
    c.s3_limit.wait().await;
    let now = match c.client.head(&head.bucket, &head.key).await {
        Ok(h) => h,
        Err(ClientError::NotFound { .. }) => {
            return Err(ObjError::Conflict {
                message: "deleted after its instruction file was rotated".into(),
                etag: None,
                size: None,
            });
        }
        Err(e) => return Err(e.into()),
    };
    if now.etag != head.etag {
        return Err(ObjError::Conflict {
            message: "the data object changed while its instruction file was rotated".into(),
            etag: now.etag.clone(),
            size: Some(now.content_length),
        });
    }
    c.s3_limit.wait().await;
    match c.client.envelope_of(&now).await {
        // The plaintext length is not compared: the new file leaves it to the object's
        // metadata, where an older file may have carried it.
        Ok(crate::client::EnvelopeState::Encrypted(got))
            if Envelope {
                plaintext_length: None,
                ..got.clone()
            } == Envelope {
                plaintext_length: None,
                ..written.envelope.clone()
            } =>
        {
            Ok(())
        }
        Ok(_) => Err(ObjError::failed(
            "VerifyFailed",
            "the instruction file read back differs from the one written",
        )),
        Err(e) => Err(ObjError::failed(
            "VerifyFailed",
            format!("the instruction file read back does not decode: {e}"),
        )),
    }
}
