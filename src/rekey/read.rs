//! Reading a source body through its decryptor: [`DecryptReader`] decrypts while the uploader
//! reads (a rewrite streams the plaintext into the new object), and [`authenticate`] decrypts a
//! whole body to check its tag before its key is vouched for under the target key (raw-key
//! rewraps, recovered writes).

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use aws_sdk_s3::primitives::ByteStream;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

use crate::client::parallel::{ParallelGet, PartReader};
use crate::client::{ClientError, ObjectHead};
use crate::codec::{CodecError, ObjectDecryptor};
use crate::envelope::Envelope;
use crate::secret::SecretBytes;

use super::inspect::body_of;
use super::task::{Ctx, ObjError, source_key};

/// Unwraps the object's content key and decrypts its whole body with it (tag checked; the
/// body fetched unless `body` has it), dropping the plaintext as it goes. Returns the key and
/// the plaintext SHA-256.
pub(super) async fn authenticate(
    ctx: &Ctx,
    head: &ObjectHead,
    env: &Envelope,
    body: Option<ByteStream>,
) -> Result<(SecretBytes, String), ObjError> {
    let c = &ctx.config;
    let _slot = ctx.large_slot(head).await?;
    let cek = source_key(c, env).await?;
    let body = source_reader(c, head, body).await?;
    let dec = ObjectDecryptor::new(env, &cek)?;
    let mut reader = DecryptReader::new(body, dec, head.content_length);
    let r = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
    if reader.auth_failed {
        return Err(CodecError::DecryptionFailed.into());
    }
    r.map_err(|e| crate::client::unwrap_io_error(ClientError::Io(e)))?;
    Ok((cek, reader.sha256_hex()))
}

/// How a large source is read: parallel ranged GETs ([`PartReader`]) of 2 MiB, 4 in flight,
/// hiding the per-request latency of a large body the way a transfer manager does. Small on
/// purpose: these buffers sit outside the client's part-buffer budget (a read-ahead that waited
/// for the budget could deadlock with the uploads it feeds), so each large rewrite in flight
/// (at most [`super::task::large_slots`]) holds up to 8 MiB more than with one GET.
pub(super) const READ_AHEAD: ParallelGet = ParallelGet {
    part_size: 2 << 20,
    concurrency: 4,
};

/// The source body as a stream: the one [`body_of`] would return for bodies of one part or
/// less (or already fetched), parallel ranged GETs pinned to the same ETag otherwise. Either
/// way the caller's decryptor checks tag / padding / length at EOF, so what the rewrite
/// guarantees does not change: the new object is not completed unless the source checked out.
pub(super) async fn source_reader(
    c: &super::RekeyConfig,
    head: &ObjectHead,
    body: Option<ByteStream>,
) -> Result<Box<dyn AsyncRead + Send + Unpin>, ObjError> {
    if body.is_none() && READ_AHEAD.applies_to(head) {
        let limit = c.s3_limit.clone();
        let reader = PartReader::new(&c.client, head, READ_AHEAD).before_each_request(
            std::sync::Arc::new(move || {
                let limit = limit.clone();
                Box::pin(async move { limit.wait().await })
            }),
        );
        return Ok(Box::new(reader));
    }
    Ok(Box::new(body_of(c, head, body).await?.into_async_read()))
}

/// A read buffer for a body of `len` bytes: its size plus slack, between 8 and 256 KiB.
pub(super) fn buffer_len(len: u64) -> usize {
    usize::try_from(len.saturating_add(64))
        .unwrap_or(usize::MAX)
        .clamp(8 << 10, 256 << 10)
}

/// Decrypts the source body as the uploader reads it, hashing the plaintext. At EOF the
/// decryptor's `finish` (padding / tag / length check) runs; if it fails the read fails, so the
/// upload never completes (PutObject is not sent; a multipart upload is not completed).
pub struct DecryptReader<R> {
    inner: R,
    dec: Option<ObjectDecryptor>,
    hasher: Sha256,
    /// Allocated at the first read (`cap` bytes): a reader whose upload waits for the buffer
    /// budget holds no buffers yet.
    cap: usize,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    pos: usize,
    eof: bool,
    /// The source failed authentication (checked by the caller after the upload returns).
    pub auth_failed: bool,
}

impl<R: AsyncRead + Unpin> DecryptReader<R> {
    /// `len_hint`: the source's stored size. Buffers are sized for it (up to 256 KiB), so a
    /// small object does not pay for zeroing and mapping a large buffer.
    pub fn new(inner: R, dec: ObjectDecryptor, len_hint: u64) -> Self {
        Self {
            inner,
            dec: Some(dec),
            hasher: Sha256::new(),
            cap: buffer_len(len_hint),
            inbuf: Vec::new(),
            out: Vec::new(),
            pos: 0,
            eof: false,
            auth_failed: false,
        }
    }

    /// SHA-256 of the plaintext produced (complete once EOF was read without error).
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for DecryptReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.out.len() {
                let n = (this.out.len() - this.pos).min(buf.remaining());
                buf.put_slice(&this.out[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            this.out.clear();
            this.pos = 0;
            if this.inbuf.is_empty() {
                this.inbuf = vec![0u8; this.cap];
                this.out.reserve(this.cap + 32);
            }
            let mut rb = ReadBuf::new(&mut this.inbuf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            let r = if n == 0 {
                this.eof = true;
                match this.dec.take() {
                    Some(d) => d.finish(&mut this.out).map(|_| ()),
                    None => Err(CodecError::DecryptionFailed),
                }
            } else {
                match this.dec.as_mut() {
                    Some(d) => d.update(&this.inbuf[..n], &mut this.out),
                    None => Err(CodecError::DecryptionFailed),
                }
            };
            if r.is_err() {
                this.auth_failed = true;
                this.out.clear();
                return Poll::Ready(Err(std::io::Error::other(
                    "the source object failed authentication",
                )));
            }
            this.hasher.update(&this.out);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::content;
    use crate::envelope::{self, ContentAlg, Location, Version, WrapAlg};

    #[tokio::test]
    async fn decrypt_reader_fails_at_eof_on_tamper() {
        let key = SecretBytes::random(32);
        let iv = [7u8; 12];
        let mut enc = content::gcm_encryptor(key.expose(), &iv, &[]).expect("enc");
        let mut ct = Vec::new();
        enc.update(b"hello world, this is a test", &mut ct)
            .expect("update");
        enc.finish(&mut ct).expect("finish");
        let env = Envelope {
            version: Version::V2,
            content_alg: ContentAlg::AesGcm,
            wrap: WrapAlg::KmsContext,
            encrypted_key: vec![1],
            iv: iv.to_vec(),
            matdesc: envelope::Context::new(),
            encryption_context: envelope::Context::new(),
            message_id: Vec::new(),
            commitment: Vec::new(),
            plaintext_length: None,
            location: Location::ObjectMetadata,
        };
        let dec = ObjectDecryptor::new(&env, &key).expect("dec");
        let mut good = DecryptReader::new(&ct[..], dec, ct.len() as u64);
        let mut out = Vec::new();
        good.read_to_end(&mut out).await.expect("read");
        assert_eq!(out, b"hello world, this is a test");
        assert_eq!(
            good.sha256_hex(),
            hex::encode(Sha256::digest(b"hello world, this is a test"))
        );
        let mut bad_ct = ct.clone();
        bad_ct[3] ^= 1;
        let mut bad = DecryptReader::new(
            &bad_ct[..],
            ObjectDecryptor::new(&env, &key).expect("dec"),
            1,
        );
        assert!(bad.read_to_end(&mut Vec::new()).await.is_err());
        assert!(bad.auth_failed);
    }
}
