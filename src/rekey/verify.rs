//! The last step of a write: read the object back and check it. Rewrites and raw-key rewraps
//! are decrypted with the content key in hand (no KMS call, tag checked) and the plaintext
//! SHA-256 compared with the source's; `ReEncrypt` rewraps hold no content key, so they are
//! checked by HEAD + envelope equality. The read is pinned to the ETag the write returned: a
//! 412 means someone else wrote after us (a conflict, never overwritten).

use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::client::{ClientError, ObjectHead, normalize_metadata};
use crate::codec::{self, ObjectDecryptor};
use crate::envelope::{self, Envelope, Metadata};
use crate::secret::SecretBytes;

use super::RekeyConfig;
use super::read::buffer_len;
use super::task::{ObjError, Written};

/// Verifies a write (`--no-verify` skips it): the envelope read back is the one written and,
/// with the content key, the body decrypts (tag checked) to the source's plaintext.
pub(super) async fn verify(
    c: &RekeyConfig,
    head: &ObjectHead,
    written: &Written,
) -> Result<(), ObjError> {
    if !c.verify {
        return Ok(());
    }
    let key = if written.same_bytes {
        None
    } else {
        written.cek.as_ref()
    };
    let got = verify_read(c, head, written.etag.as_deref(), &written.envelope, key).await?;
    match (got, &written.source_sha256) {
        (Some(got), Some(want)) if &got != want => Err(ObjError::failed(
            "VerifyFailed",
            "the written object's plaintext SHA-256 differs from the source's",
        )),
        _ => Ok(()),
    }
}

/// Reads the written object back (pinned to the ETag we got) and checks its envelope is the one
/// written; with the content key, also decrypts it (tag checked) and returns the plaintext
/// SHA-256. Without it (ReEncrypt rewraps), HEAD + envelope equality only.
async fn verify_read(
    c: &RekeyConfig,
    head: &ObjectHead,
    etag: Option<&str>,
    written: &Envelope,
    cek: Option<&SecretBytes>,
) -> Result<Option<String>, ObjError> {
    let (bucket, key) = (&head.bucket, &head.key);
    c.s3_limit.wait().await;
    let t = Instant::now();
    let Some(cek) = cek else {
        let r = c
            .client
            .s3()
            .head_object()
            .bucket(bucket)
            .key(key)
            .set_if_match(etag.map(str::to_owned))
            .send()
            .await;
        let out = c.client.observe("HeadObject", bucket, key, t, r)?;
        check_envelope(&normalize_metadata(out.metadata()), written)?;
        return Ok(None);
    };
    let r = c
        .client
        .s3()
        .get_object()
        .bucket(bucket)
        .key(key)
        .set_if_match(etag.map(str::to_owned))
        .send()
        .await;
    let out = c.client.observe("GetObject", bucket, key, t, r)?;
    check_envelope(&normalize_metadata(out.metadata()), written)?;
    let mut dec = ObjectDecryptor::new(written, cek)?;
    let cap = buffer_len(out.content_length().unwrap_or(0).max(0) as u64).min(codec::CHUNK);
    let mut body = out.body.into_async_read();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; cap];
    let mut plain = Vec::with_capacity(cap + 32);
    loop {
        let n = body.read(&mut buf).await.map_err(ClientError::Io)?;
        plain.clear();
        if n == 0 {
            dec.finish(&mut plain).map_err(|_| {
                ObjError::failed("VerifyFailed", "the written object does not decrypt")
            })?;
            hasher.update(&plain);
            break;
        }
        dec.update(&buf[..n], &mut plain)?;
        hasher.update(&plain);
    }
    Ok(Some(hex::encode(hasher.finalize())))
}

fn check_envelope(meta: &Metadata, written: &Envelope) -> Result<(), ObjError> {
    match envelope::decode(meta) {
        Ok(env) if &env == written => Ok(()),
        Ok(_) => Err(ObjError::failed(
            "VerifyFailed",
            "the written object's envelope differs from the one written",
        )),
        Err(e) => Err(ObjError::failed(
            "VerifyFailed",
            format!("the written object's envelope does not decode: {e}"),
        )),
    }
}
