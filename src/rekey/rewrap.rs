//! Rewrap (GCM sources, V2 or V3): only the envelope changes. The content key is wrapped under
//! the target key (one `ReEncrypt` for KMS sources, one `Encrypt` for raw-key sources, whose
//! body is authenticated first) and the metadata replaced by a server-side CopyObject onto
//! itself with `x-amz-copy-source-if-match`; above `copy_part_threshold` (5 GiB, CopyObject's
//! limit) by a multipart copy onto itself ([`super::copy`]). A V3 object stays V3: its message
//! id and key commitment belong to the content key, which does not change.

use std::time::Instant;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{MetadataDirective, TaggingDirective};

use crate::client::ObjectHead;
use crate::codec::CodecError;
use crate::envelope::{self, Envelope, Location, Metadata, Version, WrapAlg};
use crate::keyring;
use crate::secret::SecretBytes;

use super::RekeyConfig;
use super::copy::copy_source;
use super::inspect::discard;
use super::read::authenticate;
use super::tags::read_tags;
use super::task::{Ctx, IntentLog, ObjError, Written, target_context, user_metadata};

pub(super) async fn rewrap(
    ctx: &Ctx,
    head: &ObjectHead,
    env: &Envelope,
    body: Option<ByteStream>,
    log: &IntentLog<'_>,
) -> Result<Written, ObjError> {
    let c = &ctx.config;
    let multipart = head.content_length > c.copy_part_threshold;
    // CopyObject copies the tags itself (TaggingDirective::Copy); a multipart upload takes
    // them as a header, so read them first.
    let tags = if multipart {
        read_tags(ctx, head).await?
    } else {
        None
    };
    let (blob, cek, source_sha) = wrap_under_target(ctx, head, env, body).await?;
    let ec = target_context(c, env.content_alg);
    let new_env = Envelope {
        // V3 stays V3 (same content key, message id and commitment); V2 stays V2.
        version: if env.version == Version::V3 {
            Version::V3
        } else {
            Version::V2
        },
        content_alg: env.content_alg,
        wrap: WrapAlg::KmsContext,
        encrypted_key: blob,
        iv: env.iv.clone(),
        matdesc: envelope::Context::new(),
        encryption_context: ec,
        message_id: env.message_id.clone(),
        commitment: env.commitment.clone(),
        plaintext_length: env.plaintext_len_for(head.content_length),
        location: Location::ObjectMetadata,
    };
    let mut metadata = user_metadata(head);
    metadata.extend(new_env.to_metadata());
    log.before_write(&new_env).await?;
    crate::failpoint!("rewrap-before-copy");
    let (etag, version_id) = if multipart {
        let copied =
            super::copy::copy_onto_itself(c, head, metadata, tags, Some(&log.uploads)).await?;
        tracing::debug!(key = %crate::logkey::log_key(&head.key), parts = copied.parts, "multipart copy done");
        (copied.etag, copied.version_id)
    } else {
        copy_object(c, head, metadata).await?
    };
    crate::failpoint!("rewrap-after-copy");
    // A single CopyObject keeps a plain (MD5) ETag: the same ETag means the same bytes,
    // already authenticated above, so the envelope is all left to check.
    let same_bytes = !multipart
        && source_sha.is_some()
        && etag.is_some()
        && etag == head.etag
        && !etag.as_deref().unwrap_or_default().contains('-');
    Ok(Written {
        etag,
        version_id,
        envelope: new_env,
        cek,
        source_sha256: source_sha,
        same_bytes,
    })
}

/// The source's content key wrapped `kms+context` under the target key: one `ReEncrypt` for
/// KMS sources (the body is not read), or, for raw-key and legacy wraps, the key unwrapped, the
/// body authenticated with it (a tampered object fails here, before any KMS call) and one KMS
/// `Encrypt`. Returns the new blob, the content key when it was in hand, and the source's
/// plaintext SHA-256 when the body was read. Shared with the instruction-file rotation.
pub(super) async fn wrap_under_target(
    ctx: &Ctx,
    head: &ObjectHead,
    env: &Envelope,
    body: Option<ByteStream>,
) -> Result<(Vec<u8>, Option<SecretBytes>, Option<String>), ObjError> {
    let c = &ctx.config;
    let ec = target_context(c, env.content_alg);
    Ok(if env.wrap.is_kms() {
        // The stored context must name the content cipher (`aws:x-amz-cek-alg`), as the
        // Decrypt path checks: a blob moved here from a CBC object's envelope is refused.
        let source_context =
            keyring::kms_source_context(env).map_err(|e| ObjError::from(CodecError::Keyring(e)))?;
        // One ReEncrypt: the content key never leaves KMS, so the body cannot be checked
        // here; its tag is still checked by every reader (`--reencrypt` checks it now).
        discard(body, head.content_length).await;
        (
            c.kms
                .re_encrypt(&env.encrypted_key, &source_context, &c.target.key_id, &ec)
                .await?,
            None,
            None,
        )
    } else {
        // The key is in hand: authenticate the body before vouching for it under the new
        // key, so a tampered object fails (untouched) instead of being rewrapped.
        let (cek, sha) = authenticate(ctx, head, env, body).await?;
        (
            c.kms.encrypt(&c.target.key_id, &cek, &ec).await?,
            Some(cek),
            Some(sha),
        )
    })
}

/// One CopyObject onto itself with the new `metadata`, conditional on the ETag HEAD saw: the
/// rewrap of objects up to 5 GiB. Returns the new ETag and version id.
async fn copy_object(
    c: &RekeyConfig,
    head: &ObjectHead,
    metadata: Metadata,
) -> Result<(Option<String>, Option<String>), ObjError> {
    let a = &head.attrs;
    let source = copy_source(head);
    c.s3_limit.wait().await;
    let t = Instant::now();
    let r = crate::client::with_attributes!(
        c.client
            .s3()
            .copy_object()
            .bucket(&head.bucket)
            .key(&head.key)
            .copy_source(source)
            .set_copy_source_if_match(head.etag.clone())
            // The source condition is checked when the copy reads; this one when it commits, so a
            // write that lands during the copy is not overwritten either.
            .set_if_match(head.etag.clone())
            .metadata_directive(MetadataDirective::Replace)
            .tagging_directive(TaggingDirective::Copy)
            .set_metadata(Some(metadata.into_iter().collect())),
        a
    )
    .send()
    .await;
    let out = c
        .client
        .observe("CopyObject", &head.bucket, &head.key, t, r)?;
    let etag = out
        .copy_object_result()
        .and_then(|r| r.e_tag())
        .map(str::to_owned);
    let version_id = out.version_id().map(str::to_owned);
    Ok((etag, version_id))
}
