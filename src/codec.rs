//! Whole-object encryption and decryption: envelope + keyring + content cipher, with the policy
//! that keeps legacy formats opt-in and the rule that unauthenticated plaintext is not released.
//!
//! The low-level pieces ([`unwrap_content_key`], [`ObjectDecryptor`], [`new_encryption`]) are what
//! the S3 client and `rekey` build on; [`decrypt_stream`] and [`encrypt_stream`] are the
//! whole-object helpers over tokio streams used by the offline CLI.

use std::io::SeekFrom;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use crate::consts::{AES_BLOCK, GCM_IV_LEN, GCM_MAX_PLAINTEXT};
use crate::content::{self, ContentDecryptor, ContentEncryptor, ContentError};
use crate::envelope::{ContentAlg, Context, Envelope, EnvelopeError, Location, Version};
use crate::keyring::{Keyring, KeyringError, KmsErrorKind, UnwrapOptions};
use crate::secret::{SecretBytes, fill_random};

/// Chunk size of the streaming helpers: large enough for AES-NI/PCLMUL to run at full speed,
/// small enough that memory stays flat.
pub const CHUNK: usize = 1 << 20;
/// Verified-mode plaintext is held in memory up to this size, then spilled to a temporary file.
pub const SPOOL_IN_MEMORY: usize = 8 << 20;

/// What the caller allows when decrypting.
#[derive(Debug, Clone, Default)]
pub struct DecryptPolicy {
    /// Read legacy wraps and unauthenticated content (CBC, ranged reads). Off by default, as in
    /// AWS's clients (`enableLegacyWrappingAlgorithms` + `enableLegacyUnauthenticatedModes`).
    pub allow_legacy: bool,
    /// Release plaintext before the GCM tag is checked (the failure then comes at the end, and the
    /// caller must discard what it got). Off by default.
    pub delayed_authentication: bool,
    /// `kms+context`: the encryption context the caller expects (see [`UnwrapOptions`]).
    pub expected_context: Option<Context>,
    /// Refuse every object that is not V3 key-committing ([`CodecError::CommitmentRequired`]),
    /// before its key is unwrapped: AWS's `REQUIRE_ENCRYPT_REQUIRE_DECRYPT` on the read side.
    /// Off by default (`--commitment allow`).
    pub require_commitment: bool,
}

impl DecryptPolicy {
    pub fn legacy() -> Self {
        Self {
            allow_legacy: true,
            ..Self::default()
        }
    }
}

/// Errors of whole-object encryption/decryption.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// Tag, padding, commitment or length mismatch: one opaque error (no padding oracle).
    #[error("authentication failed: the object is corrupt, tampered with, or the key is wrong")]
    DecryptionFailed,
    /// Unauthenticated content without the caller's opt-in.
    #[error(
        "legacy content cipher {0} refused: it is unauthenticated and needs the legacy opt-in (--allow-legacy)"
    )]
    LegacyContentRefused(&'static str),
    /// Ranged reads skip authentication, so they need the legacy opt-in too.
    #[error("ranged reads are unauthenticated and need the legacy opt-in (--allow-legacy)")]
    RangeRefused,
    /// The object is not encrypted and the caller did not allow plaintext.
    #[error("the object is not client-side encrypted")]
    NotEncrypted,
    /// `--commitment require` and the object is not V3 key-committing (its format named).
    #[error(
        "{0} has no key commitment and the commitment policy requires it (--commitment require)"
    )]
    CommitmentRequired(String),
    #[error("content: {0}")]
    Content(ContentError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl From<ContentError> for CodecError {
    fn from(e: ContentError) -> Self {
        match e {
            ContentError::DecryptionFailed => CodecError::DecryptionFailed,
            other => CodecError::Content(other),
        }
    }
}

/// The reason classes the CLI and the rekey report name (and map to exit codes / error codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Unknown algorithm or envelope version.
    UnknownFormat,
    /// Metadata present but malformed or conflicting.
    MalformedEnvelope,
    /// No configured key can unwrap the data key.
    NoMatchingKey,
    /// Tag, padding or commitment failure.
    AuthenticationFailed,
    /// Legacy format without the opt-in.
    LegacyRefused,
    /// Encryption context mismatch.
    ContextMismatch,
    /// KMS refused access or the key is unusable.
    KmsAccess,
    /// KMS throttled or failed transiently.
    KmsUnavailable,
    /// The data key is under a KMS key the source-key policy does not allow
    /// ([`crate::keyring::SourceKeyPolicy`]).
    SourceKeyNotAllowed,
    /// Not V3 key-committing, and the commitment policy requires it.
    CommitmentRequired,
    NotEncrypted,
    Io,
}

impl ErrorClass {
    /// A stable code for reports (the `ErrorCode` column).
    pub fn code(self) -> &'static str {
        match self {
            ErrorClass::UnknownFormat => "UnknownFormat",
            ErrorClass::MalformedEnvelope => "MalformedEnvelope",
            ErrorClass::NoMatchingKey => "NoMatchingKey",
            ErrorClass::AuthenticationFailed => "AuthenticationFailed",
            ErrorClass::LegacyRefused => "LegacyRefused",
            ErrorClass::ContextMismatch => "ContextMismatch",
            ErrorClass::KmsAccess => "KmsAccessDenied",
            ErrorClass::KmsUnavailable => "KmsUnavailable",
            ErrorClass::SourceKeyNotAllowed => "SourceKeyNotAllowed",
            ErrorClass::CommitmentRequired => "CommitmentRequired",
            ErrorClass::NotEncrypted => "NotEncrypted",
            ErrorClass::Io => "IoError",
        }
    }
}

impl CodecError {
    pub fn class(&self) -> ErrorClass {
        match self {
            CodecError::Envelope(EnvelopeError::Unknown { .. }) => ErrorClass::UnknownFormat,
            CodecError::Envelope(_) => ErrorClass::MalformedEnvelope,
            CodecError::Keyring(k) => match k {
                KeyringError::NoMatchingKey { .. } | KeyringError::UnwrapFailed => {
                    ErrorClass::NoMatchingKey
                }
                KeyringError::LegacyRefused(_) => ErrorClass::LegacyRefused,
                KeyringError::ContextMismatch
                | KeyringError::ReservedContextKey
                | KeyringError::CekAlgMismatch { .. } => ErrorClass::ContextMismatch,
                KeyringError::Kms(e) => match e.kind {
                    // A blob KMS cannot decrypt under this context is a wrong key/context.
                    KmsErrorKind::InvalidCiphertext | KmsErrorKind::IncorrectKey => {
                        ErrorClass::NoMatchingKey
                    }
                    KmsErrorKind::Throttled | KmsErrorKind::Transient => ErrorClass::KmsUnavailable,
                    KmsErrorKind::SourceKeyNotAllowed => ErrorClass::SourceKeyNotAllowed,
                    _ => ErrorClass::KmsAccess,
                },
                KeyringError::NoWrappingKey | KeyringError::BadKey(_) => ErrorClass::NoMatchingKey,
            },
            CodecError::DecryptionFailed => ErrorClass::AuthenticationFailed,
            CodecError::LegacyContentRefused(_) | CodecError::RangeRefused => {
                ErrorClass::LegacyRefused
            }
            CodecError::NotEncrypted => ErrorClass::NotEncrypted,
            CodecError::CommitmentRequired(_) => ErrorClass::CommitmentRequired,
            CodecError::Content(_) => ErrorClass::MalformedEnvelope,
            CodecError::Io(_) => ErrorClass::Io,
        }
    }
}

/// The commitment policy: with `require`, only V3 key-committing content passes. Checked before
/// any key is unwrapped (no KMS call) and so before any decryptor exists.
pub fn check_commitment(env: &Envelope, policy: &DecryptPolicy) -> Result<(), CodecError> {
    if policy.require_commitment && env.content_alg != ContentAlg::AesGcmCommitting {
        return Err(CodecError::CommitmentRequired(env.format_name()));
    }
    Ok(())
}

/// Policy checks, then the keyring: the candidate content keys of `env`.
pub async fn unwrap_content_key(
    env: &Envelope,
    keyring: &Keyring,
    policy: &DecryptPolicy,
) -> Result<Vec<SecretBytes>, CodecError> {
    check_commitment(env, policy)?;
    if env.content_alg.is_legacy() && !policy.allow_legacy {
        return Err(CodecError::LegacyContentRefused(
            env.content_alg.wire_name(),
        ));
    }
    let opts = UnwrapOptions {
        allow_legacy_wrapping: policy.allow_legacy,
        expected_context: policy.expected_context.clone(),
    };
    match keyring.unwrap_key(env, &opts).await {
        // A key that does not unwrap (GCM tag, ECB/PKCS#1 padding, OAEP) is the same failure,
        // with the same message, as a content tag or padding failure: no padding oracle.
        Err(KeyringError::UnwrapFailed) => Err(CodecError::DecryptionFailed),
        other => Ok(other?),
    }
}

/// Decrypts one object body with a known content key. For committing objects the commitment is
/// checked when this is built, before any ciphertext is read. `finish` also checks the recorded
/// plaintext length (`x-amz-unencrypted-content-length`), whatever the cipher: for CBC it is the
/// only integrity there is, and for GCM a length that contradicts an authenticated body means
/// the metadata was changed apart from it (a reader that sized its buffer, or a rekey that
/// announced its upload, by that length would be misled).
pub struct ObjectDecryptor {
    inner: Box<dyn ContentDecryptor>,
    produced: u64,
    check_length: Option<u64>,
}

impl ObjectDecryptor {
    pub fn new(env: &Envelope, cek: &SecretBytes) -> Result<Self, CodecError> {
        let key = cek.expose();
        let inner: Box<dyn ContentDecryptor> = match env.content_alg {
            ContentAlg::AesCbc => content::cbc_decryptor(key, &env.iv)?,
            ContentAlg::AesGcm => content::gcm_decryptor(key, &env.iv, &[])?,
            ContentAlg::AesGcmCommitting => Box::new(content::commit::committing_decryptor(
                key,
                &env.message_id,
                &env.commitment,
            )?),
        };
        Ok(Self {
            inner,
            produced: 0,
            check_length: env.plaintext_length,
        })
    }

    /// Appends the plaintext of `ciphertext` to `out`. UNVERIFIED until [`Self::finish`] is Ok.
    pub fn update(&mut self, ciphertext: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        let before = out.len();
        self.inner.update(ciphertext, out)?;
        self.produced += (out.len() - before) as u64;
        Ok(())
    }

    /// Verifies tag / padding / length and appends the last plaintext bytes. Returns the total
    /// plaintext length.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<u64, CodecError> {
        let before = out.len();
        self.inner.finish(out)?;
        self.produced += (out.len() - before) as u64;
        if self.check_length.is_some_and(|n| n != self.produced) {
            return Err(CodecError::DecryptionFailed);
        }
        Ok(self.produced)
    }
}

/// Where verified-mode plaintext waits for the tag: memory first, a temporary file past
/// [`SPOOL_IN_MEMORY`], so memory stays bounded whatever the object size. What goes to disk is
/// encrypted with a one-off AES-256-CTR key that lives only in this value: unverified plaintext
/// never lands on disk in the clear, and the file is unreadable once the process is gone.
pub struct Spool {
    mem: Vec<u8>,
    file: Option<SpillFile>,
}

struct SpillFile {
    file: tokio::fs::File,
    key: SecretBytes,
    nonce: [u8; 16],
    cipher: ctr::Ctr128BE<aes::Aes256>,
}

impl SpillFile {
    fn cipher(key: &SecretBytes, nonce: &[u8; 16]) -> std::io::Result<ctr::Ctr128BE<aes::Aes256>> {
        use ctr::cipher::KeyIvInit;
        ctr::Ctr128BE::<aes::Aes256>::new_from_slices(key.expose(), nonce)
            .map_err(|_| std::io::Error::other("spool cipher setup"))
    }
}

impl Default for Spool {
    fn default() -> Self {
        Self::new()
    }
}

impl Spool {
    pub fn new() -> Self {
        Self {
            mem: Vec::new(),
            file: None,
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use ctr::cipher::StreamCipher;
        if self.file.is_none() && self.mem.len() + bytes.len() <= SPOOL_IN_MEMORY {
            self.mem.extend_from_slice(bytes);
            return Ok(());
        }
        if self.file.is_none() {
            // An unnamed temporary file: gone when dropped, even on a crash.
            let key = SecretBytes::random(32);
            let mut nonce = [0u8; 16];
            fill_random(&mut nonce);
            let cipher = SpillFile::cipher(&key, &nonce)?;
            let file = tokio::fs::File::from_std(tempfile::tempfile()?);
            self.file = Some(SpillFile {
                file,
                key,
                nonce,
                cipher,
            });
            let mut held = std::mem::take(&mut self.mem);
            let r = Box::pin(self.write(&held)).await;
            zeroize::Zeroize::zeroize(&mut held);
            r?;
        }
        if let Some(spill) = self.file.as_mut() {
            let mut buf = zeroize::Zeroizing::new(bytes.to_vec());
            spill.cipher.apply_keystream(&mut buf);
            spill.file.write_all(&buf).await?;
        }
        Ok(())
    }

    /// Copies everything spooled to `dst`.
    pub async fn release<W: AsyncWrite + Unpin>(self, dst: &mut W) -> std::io::Result<()> {
        use ctr::cipher::StreamCipher;
        match self.file {
            None => dst.write_all(&self.mem).await,
            Some(mut spill) => {
                spill.file.flush().await?;
                spill.file.seek(SeekFrom::Start(0)).await?;
                let mut cipher = SpillFile::cipher(&spill.key, &spill.nonce)?;
                let mut buf = zeroize::Zeroizing::new(vec![0u8; CHUNK]);
                loop {
                    let n = read_full(&mut spill.file, &mut buf).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    cipher.apply_keystream(&mut buf[..n]);
                    dst.write_all(&buf[..n]).await?;
                }
            }
        }
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
pub async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = r.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

/// Decrypts a whole object body from `src` to `dst`.
///
/// Without delayed authentication nothing reaches `dst` before the tag (GCM), commitment (V3) or
/// padding and length (CBC) check out: the plaintext waits in a [`Spool`]. When the keyring
/// returns several candidate keys (V1 PKCS#1 with several RSA keys), each is tried on the stream at
/// once and the one whose content checks out wins. Returns the plaintext length.
pub async fn decrypt_stream<R, W>(
    env: &Envelope,
    keyring: &Keyring,
    policy: &DecryptPolicy,
    src: &mut R,
    dst: &mut W,
) -> Result<u64, CodecError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let keys = unwrap_content_key(env, keyring, policy).await?;
    decrypt_stream_with_keys(env, &keys, policy, src, dst).await
}

/// [`decrypt_stream`] with the content key(s) already unwrapped.
pub async fn decrypt_stream_with_keys<R, W>(
    env: &Envelope,
    keys: &[SecretBytes],
    policy: &DecryptPolicy,
    src: &mut R,
    dst: &mut W,
) -> Result<u64, CodecError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let direct = policy.delayed_authentication && keys.len() == 1;
    let mut lanes = Vec::with_capacity(keys.len());
    for k in keys {
        // A key that cannot even build a decryptor (wrong length, commitment mismatch) drops out.
        match ObjectDecryptor::new(env, k) {
            Ok(d) => lanes.push(Some((d, Spool::new()))),
            Err(
                CodecError::DecryptionFailed
                | CodecError::Content(ContentError::InvalidLength { .. }),
            ) if keys.len() > 1 => {
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    if lanes.is_empty() {
        return Err(CodecError::DecryptionFailed);
    }
    let mut buf = vec![0u8; CHUNK];
    let mut out = Vec::with_capacity(CHUNK + 32);
    loop {
        let n = read_full(src, &mut buf).await?;
        if n == 0 {
            break;
        }
        for lane in lanes.iter_mut() {
            let Some((d, spool)) = lane.as_mut() else {
                continue;
            };
            out.clear();
            if d.update(&buf[..n], &mut out).is_err() {
                *lane = None;
                continue;
            }
            if direct {
                dst.write_all(&out).await?;
            } else {
                spool.write(&out).await?;
            }
        }
    }
    let mut winner = None;
    for (d, mut spool) in lanes.into_iter().flatten() {
        out.clear();
        let Ok(n) = d.finish(&mut out) else { continue };
        if winner.is_some() {
            // Two keys whose content checks out: refuse rather than guess.
            return Err(CodecError::DecryptionFailed);
        }
        if direct {
            dst.write_all(&out).await?;
        } else {
            spool.write(&out).await?;
        }
        winner = Some((n, spool));
    }
    let (n, spool) = winner.ok_or(CodecError::DecryptionFailed)?;
    if !direct {
        spool.release(dst).await?;
    }
    dst.flush().await?;
    Ok(n)
}

/// The format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteFormat {
    /// V2, AES-GCM, wrapped `kms+context` (or `AES/GCM` / `RSA-OAEP-SHA1` with raw keys).
    #[default]
    V2,
    /// V3 key-committing (suite 0x0073).
    V3,
}

/// A new object's envelope and the encryptor for its body.
pub struct NewEncryption {
    pub envelope: Envelope,
    pub encryptor: Box<dyn ContentEncryptor>,
}

/// Generates and wraps a fresh content key and sets up the content cipher. `plaintext_len`, when
/// known, is recorded as `x-amz-unencrypted-content-length`.
pub async fn new_encryption(
    keyring: &Keyring,
    format: WriteFormat,
    context: &Context,
    plaintext_len: Option<u64>,
) -> Result<NewEncryption, CodecError> {
    if plaintext_len.is_some_and(|n| n > GCM_MAX_PLAINTEXT) {
        return Err(CodecError::Content(ContentError::TooLarge));
    }
    let alg = match format {
        WriteFormat::V2 => ContentAlg::AesGcm,
        WriteFormat::V3 => ContentAlg::AesGcmCommitting,
    };
    let key = keyring.new_key(alg, context).await?;
    let (version, iv, message_id, commitment, encryptor): (_, _, _, _, Box<dyn ContentEncryptor>) =
        match format {
            WriteFormat::V2 => {
                let mut iv = vec![0u8; GCM_IV_LEN];
                fill_random(&mut iv);
                let enc = content::gcm_encryptor(key.cek.expose(), &iv, &[])?;
                (Version::V2, iv, Vec::new(), Vec::new(), enc)
            }
            WriteFormat::V3 => {
                let mid = content::commit::new_message_id().to_vec();
                let (enc, commitment) =
                    content::commit::committing_encryptor(key.cek.expose(), &mid)?;
                (
                    Version::V3,
                    Vec::new(),
                    mid,
                    commitment.to_vec(),
                    Box::new(enc),
                )
            }
        };
    let envelope = Envelope {
        version,
        content_alg: alg,
        wrap: key.wrap,
        encrypted_key: key.encrypted_key,
        iv,
        matdesc: key.matdesc,
        encryption_context: key.encryption_context,
        message_id,
        commitment,
        plaintext_length: plaintext_len,
        location: Location::ObjectMetadata,
    };
    Ok(NewEncryption {
        envelope,
        encryptor,
    })
}

/// Legacy V1 writer: AES/CBC content, key wrapped with AES/ECB or RSA PKCS#1 v1.5, as 2014-era
/// SDKs and aioboto3's raw-key contexts write. Unauthenticated: for tests and parity only.
pub fn new_legacy_v1_encryption(
    keyring: &Keyring,
    plaintext_len: Option<u64>,
) -> Result<NewEncryption, CodecError> {
    let key = keyring.legacy_v1_new_key()?;
    let mut iv = vec![0u8; AES_BLOCK];
    fill_random(&mut iv);
    let encryptor = content::cbc_encryptor(key.cek.expose(), &iv)?;
    let envelope = Envelope {
        version: Version::V1,
        content_alg: ContentAlg::AesCbc,
        wrap: key.wrap,
        encrypted_key: key.encrypted_key,
        iv,
        matdesc: key.matdesc,
        encryption_context: Context::new(),
        message_id: Vec::new(),
        commitment: Vec::new(),
        plaintext_length: plaintext_len,
        location: Location::ObjectMetadata,
    };
    Ok(NewEncryption {
        envelope,
        encryptor,
    })
}

/// Encrypts all of `src` into `dst`. Returns the envelope to store with the object.
pub async fn encrypt_stream<R, W>(
    enc: NewEncryption,
    src: &mut R,
    dst: &mut W,
) -> Result<(Envelope, u64), CodecError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let NewEncryption {
        envelope,
        mut encryptor,
    } = enc;
    let mut buf = vec![0u8; CHUNK];
    let mut out = Vec::with_capacity(CHUNK + 32);
    let mut total = 0u64;
    loop {
        let n = read_full(src, &mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > GCM_MAX_PLAINTEXT {
            return Err(CodecError::Content(ContentError::TooLarge));
        }
        out.clear();
        encryptor.update(&buf[..n], &mut out)?;
        dst.write_all(&out).await?;
    }
    out.clear();
    encryptor.finish(&mut out)?;
    dst.write_all(&out).await?;
    dst.flush().await?;
    if envelope.plaintext_length.is_some_and(|n| n != total) {
        return Err(CodecError::Io(std::io::Error::other(format!(
            "input was {total} bytes, {} were announced",
            envelope.plaintext_length.unwrap_or_default()
        ))));
    }
    Ok((envelope, total))
}

#[cfg(test)]
mod tests;
