//! Rewrite (CBC sources, V2 sources for `--target-format v3`, `--reencrypt`): GET -> decrypt ->
//! SHA-256 -> AES-GCM (V2) or key-committing AES-GCM (V3) under a fresh data key (exactly one
//! `GenerateDataKey`) -> PUT / multipart upload with `If-Match` the ETag
//! HEAD saw. The body (parallel ranged GETs for a large one, [`source_reader`]) is decrypted
//! *while* it is uploaded ([`DecryptReader`]); a source that
//! fails authentication makes the reader fail at EOF, before PutObject /
//! CompleteMultipartUpload, so nothing unauthenticated is ever committed. The intent (with the
//! new envelope's fingerprint) is recorded after the new key exists and before the first byte
//! is written.

use aws_sdk_s3::primitives::ByteStream;

use crate::client::{ObjectHead, PutRequest};
use crate::codec::{CodecError, NewEncryption, ObjectDecryptor, WriteFormat};
use crate::consts::GCM_IV_LEN;
use crate::content;
use crate::content::ContentEncryptor;
use crate::envelope::{self, ContentAlg, Envelope, Location, Version, WrapAlg};
use crate::secret::fill_random;

use super::plan::TargetFormat;
use super::read::{DecryptReader, source_reader};
use super::tags::read_tags;
use super::task::{Ctx, IntentLog, ObjError, Written, source_key, target_context, user_metadata};

pub(super) async fn rewrite(
    ctx: &Ctx,
    head: &ObjectHead,
    env: &Envelope,
    body: Option<ByteStream>,
    log: &IntentLog<'_>,
) -> Result<Written, ObjError> {
    let c = &ctx.config;
    let _slot = ctx.large_slot(head).await?;
    // A raw-key unwrap is local: fail on a wrong key before any KMS call.
    let local_key = if env.wrap.is_kms() {
        None
    } else {
        Some(source_key(c, env).await?)
    };
    let plaintext_len = env.plaintext_len_for(head.content_length);
    let format = new_format(c, env);
    let content_alg = match format {
        WriteFormat::V2 => ContentAlg::AesGcm,
        WriteFormat::V3 => ContentAlg::AesGcmCommitting,
    };
    let ec = target_context(c, content_alg);
    // The requests that don't depend on each other go out together: the source key (KMS
    // Decrypt for `kms` wraps), the new data key, the tags, the body.
    let (src_key, (cek, blob), tagging, body) = tokio::try_join!(
        async {
            match local_key {
                Some(k) => Ok(k),
                None => source_key(c, env).await,
            }
        },
        async {
            c.kms
                .generate_data_key(&c.target.key_id, &ec)
                .await
                .map_err(ObjError::from)
        },
        read_tags(ctx, head),
        source_reader(c, head, body),
    )?;
    let (version, iv, message_id, commitment, encryptor): (_, _, _, _, Box<dyn ContentEncryptor>) =
        match format {
            WriteFormat::V2 => {
                let mut iv = vec![0u8; GCM_IV_LEN];
                fill_random(&mut iv);
                let enc =
                    content::gcm_encryptor(cek.expose(), &iv, &[]).map_err(CodecError::from)?;
                (Version::V2, iv, Vec::new(), Vec::new(), enc)
            }
            WriteFormat::V3 => {
                // A fresh message id; the commitment binds it to the fresh data key.
                let mid = content::commit::new_message_id().to_vec();
                let (enc, commitment) = content::commit::committing_encryptor(cek.expose(), &mid)
                    .map_err(CodecError::from)?;
                (
                    Version::V3,
                    Vec::new(),
                    mid,
                    commitment.to_vec(),
                    Box::new(enc),
                )
            }
        };
    let new_env = Envelope {
        version,
        content_alg,
        wrap: WrapAlg::KmsContext,
        encrypted_key: blob,
        iv,
        matdesc: envelope::Context::new(),
        encryption_context: ec.clone(),
        message_id,
        commitment,
        plaintext_length: plaintext_len,
        location: Location::ObjectMetadata,
    };
    let decryptor = ObjectDecryptor::new(env, &src_key)?;
    let mut reader = DecryptReader::new(body, decryptor, head.content_length);
    let req = PutRequest {
        bucket: head.bucket.clone(),
        key: head.key.clone(),
        format,
        context: c.context.clone(),
        metadata: user_metadata(head),
        attrs: head.attrs.clone(),
        tagging,
        if_match: head.etag.clone(),
        if_none_match: false,
        plaintext_len,
        // Decrypting never yields more than the stored ciphertext.
        plaintext_len_max: Some(head.content_length),
        upload_started: Some(log.uploads.clone()),
        instruction_file: false,
    };
    log.before_write(&new_env).await?;
    crate::failpoint!("rewrite-before-put");
    c.s3_limit.wait().await;
    let put = c
        .client
        .put_encrypted(
            &req,
            NewEncryption {
                envelope: new_env,
                encryptor,
            },
            &mut reader,
        )
        .await;
    if reader.auth_failed {
        return Err(CodecError::DecryptionFailed.into());
    }
    let put = put.map_err(crate::client::unwrap_io_error)?;
    crate::failpoint!("rewrite-after-put");
    Ok(Written {
        etag: put.etag,
        version_id: put.version_id,
        envelope: put.envelope,
        cek: Some(cek),
        source_sha256: Some(reader.sha256_hex()),
        same_bytes: false,
    })
}

/// The format a rewrite writes: V3 for `--target-format v3`, and for a V3 source whatever the
/// target (a rewrite never drops a key commitment the object had); V2 otherwise.
fn new_format(c: &super::RekeyConfig, source: &Envelope) -> WriteFormat {
    if c.goal.format == TargetFormat::V3 || source.version == Version::V3 {
        WriteFormat::V3
    } else {
        WriteFormat::V2
    }
}
