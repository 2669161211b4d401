//! `S3Cse`: client-side-encrypted get / put / inspect over aws-sdk-s3 (aioboto3's `S3CSE`, in Rust).
//!
//! - [`S3Cse::get_to`] streams the decrypted body into any `AsyncWrite`. Envelopes in instruction
//!   files are fetched when the metadata says so (or has no envelope at all); plaintext objects
//!   pass only when allowed. Without delayed authentication, plaintext waits in a [`Spool`]
//!   (memory, then an unnamed temporary file) until the tag checks out.
//! - [`S3Cse::put_from`] encrypts a stream: one PutObject up to the part size, a multipart upload
//!   above it (the GCM tag ends the last part), parts held as `Bytes` so the SDK can retry them.
//! - [`S3Cse::inspect`]: HEAD only (plus the instruction file if needed); no key material.
//!
//! # Memory
//! Whatever the object size, one upload holds at most `upload_concurrency + 1` part buffers (one
//! being filled, the others uploading), each allocated once with its final size (a whole small
//! object's ciphertext, or `part_size` + a few bytes): `part_size * (upload_concurrency + 1)`.
//! All uploads of one client (and its clones) also share one [`BufferBudget`]
//! ([`DEFAULT_BUFFER_BUDGET`], 64 MiB, unless [`S3Cse::with_buffer_budget`]): the part buffers
//! of every upload in flight add up to at most the budget, so `rekey --concurrency N` with N
//! large objects does not take N times as much. Outside the budget, each upload in progress
//! has one read buffer of at most [`PUT_READ_CHUNK`] (less for small objects of known size), and a
//! GET its spool's in-memory part.

mod attrs;
mod budget;
pub mod parallel;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::codec::{self, CodecError, DecryptPolicy, NewEncryption, WriteFormat};
use crate::consts::{GCM_TAG_LEN, INSTRUCTION_MARKER, INSTRUCTION_SUFFIX, USER_META_PREFIX};
use crate::content::{self, ContentError};
use crate::envelope::{self, ContentAlg, Context, Detected, Envelope, Location, Metadata};
use crate::keyring::Keyring;
use crate::logkey::log_key;

pub use attrs::{AttributePolicy, Grants};
pub use budget::{BufferBudget, DEFAULT_BUFFER_BUDGET};
use budget::{HeldBudget, PartBuffer};

/// Smallest S3 part (except the last).
pub const MIN_PART_SIZE: usize = 5 << 20;
/// S3's limit on parts per upload.
pub const MAX_PARTS: u64 = 10_000;
/// Default part size: 8 MiB, as the AWS CLI and boto3's transfer manager use.
pub const DEFAULT_PART_SIZE: usize = 8 << 20;

/// How one S3 request ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    Ok,
    Error,
    Throttled,
    PreconditionFailed,
    NotFound,
}

/// Called after every S3 request (operation name as in the S3 API).
pub type RequestObserver = Arc<dyn Fn(&'static str, RequestOutcome, Duration) + Send + Sync>;

/// Errors of the S3 client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("s3://{bucket}/{}: no such object", log_key(key))]
    NotFound { bucket: String, key: String },
    /// A conditional request's precondition failed (412) or raced (409): the object changed.
    #[error("precondition failed: the object changed since it was read")]
    PreconditionFailed,
    #[error("S3 {operation}: {message}")]
    S3 {
        operation: &'static str,
        code: Option<String>,
        status: Option<u16>,
        message: String,
    },
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("invalid range {0:?}: expected bytes=START-END, bytes=START- or bytes=-SUFFIX")]
    InvalidRange(String),
    #[error("range not satisfiable for an object of {0} bytes")]
    RangeNotSatisfiable(u64),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// An attribute a rewrite must keep (`what`: the ACL, the Object Lock retention or legal
    /// hold) could not be read, or cannot be repeated on a write: the object is left untouched
    /// rather than rewritten without it.
    #[error("s3://{bucket}/{key}: {what} cannot be kept: {reason}")]
    AttributesUnreadable {
        bucket: String,
        key: String,
        what: &'static str,
        status: Option<u16>,
        reason: String,
    },
}

impl From<ContentError> for ClientError {
    fn from(e: ContentError) -> Self {
        ClientError::Codec(e.into())
    }
}

impl ClientError {
    /// HTTP status of an S3 failure, for reports.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            ClientError::NotFound { .. } => Some(404),
            ClientError::PreconditionFailed => Some(412),
            ClientError::S3 { status, .. } | ClientError::AttributesUnreadable { status, .. } => {
                *status
            }
            _ => None,
        }
    }

    /// True for failures worth retrying later (throttling, 5xx, network).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::S3 { status, code, .. } => {
                status.is_none_or(|s| s >= 500 || s == 429)
                    || matches!(
                        code.as_deref(),
                        Some("SlowDown" | "RequestTimeout" | "InternalError")
                    )
            }
            ClientError::Io(_) => true,
            _ => false,
        }
    }
}

fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    operation: &'static str,
    bucket: &str,
    key: &str,
    err: &SdkError<E, aws_smithy_runtime_api_response::HttpResponse>,
) -> (ClientError, RequestOutcome) {
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_owned);
    match (status, code.as_deref()) {
        (Some(404), _) | (_, Some("NoSuchKey" | "NotFound")) => (
            ClientError::NotFound {
                bucket: bucket.into(),
                key: key.into(),
            },
            RequestOutcome::NotFound,
        ),
        (Some(412), _)
        | (Some(409), Some("ConditionalRequestConflict"))
        | (_, Some("PreconditionFailed")) => (
            ClientError::PreconditionFailed,
            RequestOutcome::PreconditionFailed,
        ),
        _ => {
            let throttled =
                status == Some(503) || matches!(code.as_deref(), Some("SlowDown" | "Throttling"));
            let message = match (err.code(), err.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_owned(),
                _ => aws_smithy_types::error::display::DisplayErrorContext(err).to_string(),
            };
            let outcome = if throttled {
                RequestOutcome::Throttled
            } else {
                RequestOutcome::Error
            };
            (
                ClientError::S3 {
                    operation,
                    code,
                    status,
                    message,
                },
                outcome,
            )
        }
    }
}

/// The aws-smithy response type, named once.
mod aws_smithy_runtime_api_response {
    pub type HttpResponse = aws_sdk_s3::config::http::HttpResponse;
}

/// What HEAD says about an object: the envelope's metadata and everything a rewrite must keep.
#[derive(Debug, Clone, Default)]
pub struct ObjectHead {
    pub bucket: String,
    pub key: String,
    pub etag: Option<String>,
    pub version_id: Option<String>,
    pub content_length: u64,
    pub last_modified: Option<String>,
    pub metadata: Metadata,
    pub attrs: ObjectAttributes,
    /// `x-amz-tagging-count`: S3 sends it when the object has tags and the caller may read
    /// them, so `None` means "no tags" only once tags are known to be readable.
    pub tag_count: Option<i32>,
    /// The version this head was asked for ([`S3Cse::head_version`] with an id): the GETs of
    /// its body ([`S3Cse::get_body`]) ask for that version too, so an old version's body is
    /// read, never the current one's. `None` for a head of the current version.
    pub pinned_version: Option<String>,
}

/// An [`ObjectHead`] from a HeadObject or GetObject output (same accessors on both).
macro_rules! object_head {
    ($out:expr, $bucket:expr, $key:expr) => {{
        let h = &$out;
        ObjectHead {
            bucket: $bucket.into(),
            key: $key.into(),
            etag: h.e_tag().map(str::to_owned),
            version_id: h.version_id().map(str::to_owned),
            content_length: h.content_length().unwrap_or(0).max(0) as u64,
            last_modified: h.last_modified().map(|d| d.to_string()),
            metadata: normalize_metadata(h.metadata()),
            attrs: ObjectAttributes {
                content_type: h.content_type().map(str::to_owned),
                content_encoding: h.content_encoding().map(str::to_owned),
                content_disposition: h.content_disposition().map(str::to_owned),
                content_language: h.content_language().map(str::to_owned),
                cache_control: h.cache_control().map(str::to_owned),
                expires: h.expires_string().map(str::to_owned),
                storage_class: h.storage_class().map(|s| s.as_str().to_owned()),
                server_side_encryption: h.server_side_encryption().map(|s| s.as_str().to_owned()),
                sse_kms_key_id: h.ssekms_key_id().map(str::to_owned),
                bucket_key_enabled: h.bucket_key_enabled(),
                website_redirect_location: h.website_redirect_location().map(str::to_owned),
                object_lock_mode: h.object_lock_mode().map(|m| m.as_str().to_owned()),
                object_lock_retain_until: h.object_lock_retain_until_date().copied(),
                object_lock_legal_hold: h
                    .object_lock_legal_hold_status()
                    .map(|s| s.as_str().to_owned()),
                object_lock_event_hold: h.object_lock_event_hold().map(|s| s.as_str().to_owned()),
                object_lock_event_hold_days: h.object_lock_event_hold_duration_days(),
                object_lock_event_hold_years: h.object_lock_event_hold_duration_years(),
                // Never in a HEAD: read by `S3Cse::read_write_attributes`.
                grants: Grants::default(),
            },
            tag_count: h.tag_count(),
            pinned_version: None,
        }
    }};
}

/// The non-envelope attributes of an object, preserved across a rewrite. HEAD fills all but
/// the grants; the grants, and the Object Lock fields a HEAD may hide, come from
/// [`S3Cse::read_write_attributes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectAttributes {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub content_language: Option<String>,
    pub cache_control: Option<String>,
    /// The raw `Expires` header.
    pub expires: Option<String>,
    pub storage_class: Option<String>,
    pub server_side_encryption: Option<String>,
    pub sse_kms_key_id: Option<String>,
    pub bucket_key_enabled: Option<bool>,
    /// `x-amz-website-redirect-location` (static website hosting).
    pub website_redirect_location: Option<String>,
    /// Object Lock retention mode (`GOVERNANCE` or `COMPLIANCE`) and its retain-until date.
    pub object_lock_mode: Option<String>,
    pub object_lock_retain_until: Option<aws_smithy_types::DateTime>,
    /// Object Lock legal hold status (`ON` or `OFF`).
    pub object_lock_legal_hold: Option<String>,
    /// Object Lock event hold status (`ON` or `OFF`) and its duration, in days or in years.
    pub object_lock_event_hold: Option<String>,
    pub object_lock_event_hold_days: Option<i32>,
    pub object_lock_event_hold_years: Option<i32>,
    /// The ACL as `x-amz-grant-*` headers (all `None`: the default private ACL).
    pub grants: Grants,
}

/// Where an object's envelope came from.
#[derive(Debug, Clone)]
pub enum EnvelopeState {
    /// No envelope in the metadata and no instruction file: a plaintext object.
    Plaintext,
    Encrypted(Envelope),
}

/// What `inspect` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    pub bucket: String,
    pub key: String,
    pub etag: Option<String>,
    pub version_id: Option<String>,
    pub encrypted: bool,
    pub format: Option<String>,
    pub version: Option<String>,
    pub envelope_location: Option<String>,
    /// The wire name (`AES/GCM/NoPadding`, V3's suite id `115`).
    pub content_cipher: Option<String>,
    /// What a person reads: `AES-GCM, key-committing (V3 suite 115)`.
    pub content_cipher_name: Option<String>,
    pub key_wrap: Option<String>,
    pub legacy: bool,
    pub kms_key_id: Option<String>,
    pub material_description: Context,
    pub encryption_context: Context,
    pub stored_length: u64,
    pub plaintext_length: Option<u64>,
    pub content_type: Option<String>,
}

/// A byte range of the plaintext, as in an HTTP `Range: bytes=...` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=START-END` (inclusive) or `bytes=START-` (`end` None).
    From { start: u64, end: Option<u64> },
    /// `bytes=-N`: the last N bytes.
    Suffix(u64),
}

impl std::str::FromStr for ByteRange {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ClientError::InvalidRange(s.to_owned());
        let spec = s.trim().strip_prefix("bytes=").ok_or_else(bad)?;
        let (a, b) = spec.split_once('-').ok_or_else(bad)?;
        if a.is_empty() {
            return b.parse().map(ByteRange::Suffix).map_err(|_| bad());
        }
        let start = a.parse().map_err(|_| bad())?;
        let end = if b.is_empty() {
            None
        } else {
            Some(b.parse().map_err(|_| bad())?)
        };
        if end.is_some_and(|e| e < start) {
            return Err(bad());
        }
        Ok(ByteRange::From { start, end })
    }
}

impl ByteRange {
    /// Inclusive plaintext bounds for an object of `len` bytes; `None` if unsatisfiable.
    pub fn resolve(self, len: u64) -> Option<(u64, u64)> {
        if len == 0 {
            return None;
        }
        match self {
            ByteRange::From { start, .. } if start >= len => None,
            ByteRange::From { start, end } => {
                Some((start, end.map_or(len - 1, |e| e.min(len - 1))))
            }
            ByteRange::Suffix(0) => None,
            ByteRange::Suffix(n) => Some((len.saturating_sub(n), len - 1)),
        }
    }
}

/// Options of one GET.
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    pub range: Option<ByteRange>,
    /// Read plaintext (non-CSE) objects as they are, instead of failing.
    pub allow_plaintext: bool,
    /// Read this version of the object (`None`: the current one).
    pub version_id: Option<String>,
    /// Read an envelope kept in an instruction file from this version of `<key>.instruction`
    /// (`None`: the current one; see [`S3Cse::envelope_of`] for why that is the default).
    pub instruction_version_id: Option<String>,
}

/// What a GET did.
#[derive(Debug, Clone)]
pub struct GetSummary {
    pub head: ObjectHead,
    pub envelope: Option<Envelope>,
    /// Plaintext bytes written.
    pub bytes: u64,
}

/// One object to write.
#[derive(Debug, Clone, Default)]
pub struct PutRequest {
    pub bucket: String,
    pub key: String,
    pub format: WriteFormat,
    /// Encryption context (kms+context) or material description (raw keys).
    pub context: Context,
    /// User metadata to store besides the envelope (keys without `x-amz-meta-`).
    pub metadata: Metadata,
    pub attrs: ObjectAttributes,
    /// URL-encoded tag set (`k1=v1&k2=v2`).
    pub tagging: Option<String>,
    /// Write only if the current object has this ETag (compare-and-swap).
    pub if_match: Option<String>,
    /// Write only if no object exists.
    pub if_none_match: bool,
    /// Plaintext length when known up front (recorded as `x-amz-unencrypted-content-length`).
    pub plaintext_len: Option<u64>,
    /// When the exact length is not known, an upper bound of it (e.g. a CBC source's stored
    /// size): the first buffer is sized by it and taken from the buffer budget before the
    /// source is read, so an upload queued behind the budget holds no buffers. Reading more
    /// than this fails the upload.
    pub plaintext_len_max: Option<u64>,
    /// Told the upload id as soon as a multipart upload is created (before any part is sent),
    /// so that the caller can keep it where a crash does not lose it and abort the upload
    /// later; `rekey` records it in the job's intent.
    pub upload_started: Option<UploadNote>,
    /// Put the envelope's key fields in `<key>.instruction` (with the marker
    /// `x-amz-crypto-instr-file`) instead of the object's metadata, as Java, Ruby and .NET can:
    /// V1/V2 keep nothing on the object but the plaintext length, V3 keeps `x-amz-c`/`d`/`i`.
    /// The instruction file is written first (unconditionally), then the object.
    pub instruction_file: bool,
}

impl PutRequest {
    /// The plaintext length, or its bound when only that is known, at most S3's 5 TiB (a larger
    /// one says nothing more, and keeps the size arithmetic far from overflow).
    fn length_bound(&self) -> Option<u64> {
        self.plaintext_len
            .or(self.plaintext_len_max)
            .map(|n| n.min(MAX_OBJECT_SIZE))
    }
}

/// Where [`PutRequest::upload_started`] sends the id of a multipart upload it creates.
pub type UploadNote = tokio::sync::mpsc::UnboundedSender<String>;

/// What a PUT did.
#[derive(Debug, Clone)]
pub struct PutSummary {
    pub etag: Option<String>,
    pub version_id: Option<String>,
    pub envelope: Envelope,
    pub plaintext_len: u64,
    pub parts: usize,
}

/// [`content::parts::GcmParts`] for a GCM or V3 body of `stored` bytes (`ciphertext || tag`);
/// `None` for CBC. A body shorter than a tag fails like a bad tag.
fn gcm_parts(
    env: &Envelope,
    cek: &crate::secret::SecretBytes,
    stored: u64,
) -> Result<Option<content::parts::GcmParts>, ClientError> {
    let ct_len = stored
        .checked_sub(GCM_TAG_LEN as u64)
        .ok_or(CodecError::DecryptionFailed);
    Ok(match env.content_alg {
        ContentAlg::AesCbc => None,
        ContentAlg::AesGcm => Some(
            content::parts::GcmParts::new(cek.expose(), &env.iv, &[], ct_len?)
                .map_err(CodecError::from)?,
        ),
        ContentAlg::AesGcmCommitting => Some(
            content::commit::committing_parts(
                cek.expose(),
                &env.message_id,
                &env.commitment,
                ct_len?,
            )
            .map_err(CodecError::from)?,
        ),
    })
}

/// The same for an error of a read that went through [`parallel::PartReader`] into a
/// `ClientError::Io` (rekey's rewrites and source checks): a 412 on a later part is a
/// conflict, a 403 a permission error, not a transient I/O failure to retry.
pub(crate) fn unwrap_io_error(e: ClientError) -> ClientError {
    match e {
        ClientError::Io(io) if io.get_ref().is_some_and(|r| r.is::<ClientError>()) => {
            match io.into_inner().map(|b| b.downcast::<ClientError>()) {
                Some(Ok(c)) => *c,
                Some(Err(other)) => ClientError::Io(std::io::Error::other(other)),
                None => ClientError::Io(std::io::Error::other("download failed")),
            }
        }
        ClientError::Codec(c @ CodecError::Io(_)) => unwrap_part_error(c),
        other => other,
    }
}

/// A [`ClientError`] that [`parallel::PartReader`] passed through `io::Error` comes out as
/// itself (a 412 stays a 412).
fn unwrap_part_error(e: CodecError) -> ClientError {
    match e {
        CodecError::Io(io) if io.get_ref().is_some_and(|r| r.is::<ClientError>()) => {
            match io.into_inner().map(|b| b.downcast::<ClientError>()) {
                Some(Ok(c)) => *c,
                Some(Err(other)) => ClientError::Io(std::io::Error::other(other)),
                None => ClientError::Io(std::io::Error::other("download failed")),
            }
        }
        other => other.into(),
    }
}

/// Sets every preserved object attribute on an S3 request builder. PutObject,
/// CreateMultipartUpload and CopyObject builders share these setter names but no type, so this
/// is a macro: one list of what a rewrite keeps, used by every write path.
macro_rules! with_attributes {
    ($builder:expr, $a:expr) => {{
        let a: &$crate::client::ObjectAttributes = $a;
        let (lock_mode, lock_until) = a.retention_to_keep();
        let (event_hold, event_days, event_years) = a.event_hold_to_keep();
        $builder
            .set_content_type(a.content_type.clone())
            .set_content_encoding(a.content_encoding.clone())
            .set_content_disposition(a.content_disposition.clone())
            .set_content_language(a.content_language.clone())
            .set_cache_control(a.cache_control.clone())
            .set_expires($crate::client::parse_expires(a.expires.as_deref()))
            .set_storage_class(a.storage_class.as_deref().map(Into::into))
            .set_server_side_encryption(a.server_side_encryption.as_deref().map(Into::into))
            .set_ssekms_key_id(a.sse_kms_key_id.clone())
            .set_bucket_key_enabled(a.bucket_key_enabled)
            .set_website_redirect_location(a.website_redirect_location.clone())
            .set_object_lock_mode(lock_mode)
            .set_object_lock_retain_until_date(lock_until)
            .set_object_lock_legal_hold_status(a.legal_hold_to_keep())
            .set_object_lock_event_hold(event_hold)
            .set_object_lock_event_hold_duration_days(event_days)
            .set_object_lock_event_hold_duration_years(event_years)
            .set_grant_read(a.grants.read.clone())
            .set_grant_read_acp(a.grants.read_acp.clone())
            .set_grant_write_acp(a.grants.write_acp.clone())
            .set_grant_full_control(a.grants.full_control.clone())
    }};
}
pub(crate) use with_attributes;

/// The client. Cheap to clone.
#[derive(Clone)]
pub struct S3Cse {
    s3: aws_sdk_s3::Client,
    keyring: Keyring,
    policy: DecryptPolicy,
    part_size: usize,
    upload_concurrency: usize,
    /// Shared by every upload of this client and its clones: bounds the part buffers of all
    /// uploads in flight together, not just of one.
    budget: BufferBudget,
    observer: Option<RequestObserver>,
    /// How large GETs are split into parallel ranged GETs ([`parallel`]).
    download: parallel::ParallelGet,
}

impl S3Cse {
    pub fn new(s3: aws_sdk_s3::Client, keyring: Keyring) -> Self {
        Self {
            s3,
            keyring,
            policy: DecryptPolicy::default(),
            part_size: DEFAULT_PART_SIZE,
            upload_concurrency: 4,
            budget: BufferBudget::new(DEFAULT_BUFFER_BUDGET),
            observer: None,
            // Off unless asked for (`s3cse get` asks): a library caller or a `rekey` worker
            // reading many objects at once should not get 10 x 8 MiB of buffers per GET.
            download: parallel::ParallelGet {
                concurrency: 1,
                ..parallel::ParallelGet::default()
            },
        }
    }

    /// Part size and parts in flight of large GETs (see [`parallel`]). The default is one GET
    /// (concurrency 1); [`parallel::ParallelGet::default`] is boto3's transfer manager's 8 MiB x 10.
    pub fn with_download(mut self, download: parallel::ParallelGet) -> Self {
        self.download = download;
        self
    }

    /// How large GETs are read.
    pub fn download(&self) -> parallel::ParallelGet {
        self.download
    }

    /// The decryption policy (legacy opt-in, delayed authentication, expected context).
    pub fn with_policy(mut self, policy: DecryptPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Part size of multipart uploads (at least 5 MiB); objects up to this size go in one PUT.
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(MIN_PART_SIZE);
        self
    }

    /// Parts of one upload in flight at once: one upload's buffers take at most
    /// `part_size * (n + 1)`, within the client's [`BufferBudget`].
    pub fn with_upload_concurrency(mut self, n: usize) -> Self {
        self.upload_concurrency = n.max(1);
        self
    }

    /// A budget of `bytes` for the part buffers of all uploads of this client together (a new
    /// one, shared by the clones made from here on). Uploads wait for room in it before filling
    /// a buffer; a budget under `part_size` still lets one part through at a time.
    pub fn with_buffer_budget(mut self, bytes: u64) -> Self {
        self.budget = BufferBudget::new(bytes);
        self
    }

    /// The budget of this client's part buffers.
    pub fn buffer_budget(&self) -> &BufferBudget {
        &self.budget
    }

    /// The most part-buffer memory one upload of at most 10,000 parts of `part_size` can hold:
    /// `upload_concurrency + 1` buffers of `part_size` plus [`PART_SLACK`] (as the budget counts
    /// them, in whole KiB). A budget of at least this never holds a single upload back.
    pub fn upload_buffer_bytes(&self) -> u64 {
        let buffer = ((self.part_size + PART_SLACK) as u64).next_multiple_of(1 << 10);
        buffer * (self.upload_concurrency as u64 + 1)
    }

    pub fn with_observer(mut self, observer: RequestObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn s3(&self) -> &aws_sdk_s3::Client {
        &self.s3
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn policy(&self) -> &DecryptPolicy {
        &self.policy
    }

    pub fn part_size(&self) -> usize {
        self.part_size
    }

    /// Records one request's outcome and maps its error.
    pub fn observe<T, E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        operation: &'static str,
        bucket: &str,
        key: &str,
        started: Instant,
        r: Result<T, SdkError<E, aws_smithy_runtime_api_response::HttpResponse>>,
    ) -> Result<T, ClientError> {
        let (r, outcome) = match r {
            Ok(v) => (Ok(v), RequestOutcome::Ok),
            Err(e) => {
                let (err, outcome) = classify(operation, bucket, key, &e);
                (Err(err), outcome)
            }
        };
        if let Some(obs) = &self.observer {
            obs(operation, outcome, started.elapsed());
        }
        r
    }

    /// HEAD: metadata and attributes.
    pub async fn head(&self, bucket: &str, key: &str) -> Result<ObjectHead, ClientError> {
        self.head_version(bucket, key, None).await
    }

    /// HEAD of one version of an object (`None`: the current one).
    pub async fn head_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<ObjectHead, ClientError> {
        let t = Instant::now();
        let r = self
            .s3
            .head_object()
            .bucket(bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_owned))
            .send()
            .await;
        let h = self.observe("HeadObject", bucket, key, t, r)?;
        let mut head = object_head!(h, bucket, key);
        head.pinned_version = version_id.map(str::to_owned);
        Ok(head)
    }

    /// One GET for what HEAD + [`Self::get_body`] would fetch: the head and the (unread) body
    /// of the whole object, pinned to `if_match` when given. For small objects, where one
    /// request less is most of the cost.
    pub async fn get_with_head(
        &self,
        bucket: &str,
        key: &str,
        if_match: Option<&str>,
    ) -> Result<(ObjectHead, ByteStream), ClientError> {
        let t = Instant::now();
        let r = self
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_if_match(if_match.map(str::to_owned))
            .send()
            .await;
        let mut out = self.observe("GetObject", bucket, key, t, r)?;
        let body = std::mem::take(&mut out.body);
        Ok((object_head!(out, bucket, key), body))
    }

    /// The envelope of an object, fetching `<key>.instruction` when the metadata needs it or has
    /// no envelope at all (a 404 there means plaintext).
    ///
    /// # Old versions
    /// For a head of an old version ([`ObjectHead::pinned_version`]) the instruction file read
    /// is still the **current** `<key>.instruction`. S3 links no version of one key to a version
    /// of another, and matching by `LastModified` is guesswork: writers put the data object and
    /// its instruction file in either order, a second apart or more, and a rotation that rewrites
    /// only the instruction file (`rekey --keep-instruction-files`) leaves the data version as it
    /// was with a newer instruction version beside it. The current file is right whenever the
    /// envelope did not change since that version was written; when it did, GCM and V3 content
    /// fails its tag or commitment check (an opaque `DecryptionFailed`, no plaintext released),
    /// and a CBC object (legacy, opt-in) may decrypt to garbage or a padding failure.
    /// [`GetOptions::instruction_version_id`] names the instruction version to use instead.
    pub async fn envelope_of(&self, head: &ObjectHead) -> Result<EnvelopeState, ClientError> {
        Ok(self.envelope_and_instruction_etag(head).await?.0)
    }

    /// [`Self::envelope_of`], plus the ETag of the `<key>.instruction` object it read, if any: a
    /// later delete of that file is made conditional on it, so a fresh instruction file written
    /// by another writer meanwhile is never deleted.
    pub async fn envelope_and_instruction_etag(
        &self,
        head: &ObjectHead,
    ) -> Result<(EnvelopeState, Option<String>), ClientError> {
        let found = self.find_envelope(head).await?;
        // A recorded plaintext length the stored body cannot have: malformed, before any key.
        if let (EnvelopeState::Encrypted(env), _) = &found {
            env.check_stored_length(head.content_length)
                .map_err(CodecError::from)?;
        }
        Ok(found)
    }

    async fn find_envelope(
        &self,
        head: &ObjectHead,
    ) -> Result<(EnvelopeState, Option<String>), ClientError> {
        let detected = envelope::detect(&head.metadata).map_err(CodecError::from)?;
        if let Detected::Complete(env) = detected {
            return Ok((EnvelopeState::Encrypted(env), None));
        }
        // `.instruction` objects are never data: don't look for an instruction file of one.
        if head.key.ends_with(INSTRUCTION_SUFFIX)
            && matches!(detected, Detected::NoEnvelopeInMetadata)
        {
            return Ok((EnvelopeState::Plaintext, None));
        }
        self.envelope_with_instruction(head, detected, None).await
    }

    /// [`Self::envelope_and_instruction_etag`] with the instruction file read at
    /// `instruction_version` (`None`: the current one).
    async fn envelope_with_instruction(
        &self,
        head: &ObjectHead,
        detected: Detected,
        instruction_version: Option<&str>,
    ) -> Result<(EnvelopeState, Option<String>), ClientError> {
        let ikey = format!("{}{INSTRUCTION_SUFFIX}", head.key);
        match self
            .get_small(&head.bucket, &ikey, instruction_version)
            .await
        {
            Ok((json, etag)) => {
                let env = detected
                    .complete_with_instruction_file(&head.metadata, &json)
                    .map_err(CodecError::from)?;
                Ok((EnvelopeState::Encrypted(env), etag))
            }
            Err(ClientError::NotFound { .. })
                if matches!(detected, Detected::NoEnvelopeInMetadata) =>
            {
                Ok((EnvelopeState::Plaintext, None))
            }
            Err(e) => Err(e),
        }
    }

    /// A whole small object (instruction files) into memory; refuses anything over 1 MiB.
    async fn get_small(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<(Vec<u8>, Option<String>), ClientError> {
        let t = Instant::now();
        let r = self
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_owned))
            .send()
            .await;
        let out = self.observe("GetObject", bucket, key, t, r)?;
        let etag = out.e_tag().map(str::to_owned);
        if out.content_length().unwrap_or(0) > 1 << 20 {
            return Err(
                CodecError::Envelope(envelope::EnvelopeError::InstructionFileJson(
                    "instruction file larger than 1 MiB".into(),
                ))
                .into(),
            );
        }
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok((bytes.into_bytes().to_vec(), etag))
    }

    /// What an object is, from HEAD (and its instruction file): no key material needed.
    pub async fn inspect(&self, bucket: &str, key: &str) -> Result<Inspection, ClientError> {
        self.inspect_version(bucket, key, None).await
    }

    /// [`Self::inspect`] of one version (`None`: the current one). An envelope kept in an
    /// instruction file is read from the current `<key>.instruction` (see
    /// [`Self::envelope_of`]).
    pub async fn inspect_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<Inspection, ClientError> {
        let head = self.head_version(bucket, key, version_id).await?;
        let state = self.envelope_of(&head).await?;
        let mut i = Inspection {
            bucket: bucket.into(),
            key: key.into(),
            etag: head.etag.clone(),
            version_id: head.version_id.clone(),
            encrypted: false,
            format: None,
            version: None,
            envelope_location: None,
            content_cipher: None,
            content_cipher_name: None,
            key_wrap: None,
            legacy: false,
            kms_key_id: None,
            material_description: Context::new(),
            encryption_context: Context::new(),
            stored_length: head.content_length,
            plaintext_length: Some(head.content_length),
            content_type: head.attrs.content_type.clone(),
        };
        if let EnvelopeState::Encrypted(env) = state {
            i.encrypted = true;
            i.format = Some(env.format_name());
            i.version = Some(format!("{:?}", env.version));
            i.envelope_location = Some(format!("{:?}", env.location));
            i.content_cipher = Some(env.content_alg.wire_name().into());
            i.content_cipher_name = Some(env.content_alg.display_name());
            i.key_wrap = Some(env.wrap.to_string());
            i.legacy = env.wrap.is_legacy() || env.content_alg.is_legacy();
            i.kms_key_id = kms_key_id_of(&env);
            i.plaintext_length = env.plaintext_len_for(head.content_length);
            i.material_description = env.matdesc.clone();
            i.encryption_context = env.encryption_context.clone();
        }
        Ok(i)
    }

    /// GETs, decrypts and writes the plaintext to `dst`. See the module doc for when plaintext
    /// is released.
    pub async fn get_to<W: AsyncWrite + Unpin>(
        &self,
        bucket: &str,
        key: &str,
        opts: &GetOptions,
        dst: &mut W,
    ) -> Result<GetSummary, ClientError> {
        let head = self
            .head_version(bucket, key, opts.version_id.as_deref())
            .await?;
        let state = match &opts.instruction_version_id {
            None => self.envelope_of(&head).await?,
            Some(v) => {
                let detected = envelope::detect(&head.metadata).map_err(CodecError::from)?;
                match detected {
                    Detected::Complete(env) => EnvelopeState::Encrypted(env),
                    d => self.envelope_with_instruction(&head, d, Some(v)).await?.0,
                }
            }
        };
        let env = match state {
            EnvelopeState::Plaintext if opts.allow_plaintext => {
                let bytes = self.copy_plain(&head, opts.range, dst).await?;
                return Ok(GetSummary {
                    head,
                    envelope: None,
                    bytes,
                });
            }
            EnvelopeState::Plaintext => return Err(CodecError::NotEncrypted.into()),
            EnvelopeState::Encrypted(env) => env,
        };
        // The commitment policy first: a refused object costs no KMS call and no body read.
        codec::check_commitment(&env, &self.policy)?;
        // Refuse an unauthenticated range before spending a KMS call on it.
        if opts.range.is_some() && !self.policy.allow_legacy {
            return Err(CodecError::RangeRefused.into());
        }
        let keys = codec::unwrap_content_key(&env, &self.keyring, &self.policy).await?;
        let bytes = match opts.range {
            None => self.get_whole(&head, &env, &keys, dst).await?,
            Some(range) => self.get_range(&head, &env, &keys, range, dst).await?,
        };
        Ok(GetSummary {
            head,
            envelope: Some(env),
            bytes,
        })
    }

    /// The GET of the body, pinned to the ETag HEAD saw so metadata and body belong together,
    /// and to the version the head was asked for ([`ObjectHead::pinned_version`]).
    pub async fn get_body(
        &self,
        head: &ObjectHead,
        range: Option<(u64, u64)>,
    ) -> Result<ByteStream, ClientError> {
        let t = Instant::now();
        let r = self
            .s3
            .get_object()
            .bucket(&head.bucket)
            .key(&head.key)
            .set_version_id(head.pinned_version.clone())
            .set_if_match(head.etag.clone())
            .set_range(range.map(|(a, b)| format!("bytes={a}-{b}")))
            .send()
            .await;
        Ok(self
            .observe("GetObject", &head.bucket, &head.key, t, r)?
            .body)
    }

    async fn get_whole<W: AsyncWrite + Unpin>(
        &self,
        head: &ObjectHead,
        env: &Envelope,
        keys: &[crate::secret::SecretBytes],
        dst: &mut W,
    ) -> Result<u64, ClientError> {
        if self.download.applies_to(head) {
            if let ([cek], true) = (keys, self.policy.delayed_authentication)
                && let Some(parts) = gcm_parts(env, cek, head.content_length)?
            {
                return self.get_parts(head, env, parts, dst).await;
            }
            // CBC (no tag: nothing is authenticated, as with one GET), several candidate keys,
            // or plaintext held back until the tag: parallel GETs, sequential decryption.
            let mut reader = parallel::PartReader::new(self, head, self.download);
            return codec::decrypt_stream_with_keys(env, keys, &self.policy, &mut reader, dst)
                .await
                .map_err(unwrap_part_error);
        }
        let body = self.get_body(head, None).await?;
        let mut reader = body.into_async_read();
        Ok(codec::decrypt_stream_with_keys(env, keys, &self.policy, &mut reader, dst).await?)
    }

    /// A GCM body read as parallel ranged GETs, each range CTR-decrypted in its own task and
    /// written to `dst` in order, UNVERIFIED until the end: the per-part GHASH values combine
    /// into the body's tag ([`content::parts`]), checked (with the recorded plaintext length)
    /// before this returns `Ok`. Only for a `dst` nobody reads before then (delayed
    /// authentication: `get -o FILE` writes a temporary file and renames it after).
    async fn get_parts<W: AsyncWrite + Unpin>(
        &self,
        head: &ObjectHead,
        env: &Envelope,
        parts: content::parts::GcmParts,
        dst: &mut W,
    ) -> Result<u64, ClientError> {
        let parts = Arc::new(parts);
        let mut reader = parallel::PartReader::decrypting(self, head, self.download, parts.clone());
        let mut sums = Vec::new();
        let mut tag = None;
        while let Some(part) = reader.next_part().await {
            let part = part?;
            dst.write_all(&part.data).await?;
            sums.extend(part.sum);
            tag = tag.or(part.tag);
            reader.recycle(part.data);
        }
        let tag = tag.ok_or(CodecError::DecryptionFailed)?;
        parts.verify(&sums, &tag).map_err(CodecError::from)?;
        if env.plaintext_length.is_some_and(|n| n != parts.ct_len()) {
            return Err(CodecError::DecryptionFailed.into());
        }
        dst.flush().await?;
        Ok(parts.ct_len())
    }

    async fn get_range<W: AsyncWrite + Unpin>(
        &self,
        head: &ObjectHead,
        env: &Envelope,
        keys: &[crate::secret::SecretBytes],
        range: ByteRange,
        dst: &mut W,
    ) -> Result<u64, ClientError> {
        let [cek] = keys else {
            // Several V1 candidate keys: a range cannot tell them apart.
            return Err(CodecError::DecryptionFailed.into());
        };
        let stored = head.content_length;
        let plain_len = match env.plaintext_len_for(stored) {
            Some(n) => n,
            None => self.cbc_plaintext_len(head, env, cek).await?,
        };
        let (start, end) = range
            .resolve(plain_len)
            .ok_or(ClientError::RangeNotSatisfiable(plain_len))?;
        let plan = match env.content_alg {
            ContentAlg::AesCbc => content::range::plan_cbc(start, end, stored),
            _ => content::range::plan_gcm(start, end, stored),
        }
        .ok_or(ClientError::RangeNotSatisfiable(plain_len))?;
        let mut decrypt: RangeDecrypt = match env.content_alg {
            ContentAlg::AesGcm => {
                let mut ctr = content::range::CtrRangeDecryptor::new(
                    cek.expose(),
                    &env.iv,
                    plan.fetch_start,
                )?;
                Box::new(move |buf: &mut Vec<u8>| {
                    ctr.apply(buf);
                    Ok(())
                })
            }
            ContentAlg::AesGcmCommitting => {
                // The commitment is still checked before anything is decrypted.
                let mut ctr = content::commit::committing_range_decryptor(
                    cek.expose(),
                    &env.message_id,
                    &env.commitment,
                    plan.fetch_start,
                )
                .map_err(CodecError::from)?;
                Box::new(move |buf: &mut Vec<u8>| {
                    ctr.apply(buf);
                    Ok(())
                })
            }
            ContentAlg::AesCbc => {
                let mut cbc = content::range::CbcRangeDecryptor::new(
                    cek.expose(),
                    &env.iv,
                    plan.fetch_start,
                    stored,
                )?;
                Box::new(move |buf: &mut Vec<u8>| cbc.apply(buf))
            }
        };
        // Stream the fetched bytes: memory stays at one chunk whatever the range size.
        let body = self
            .get_body(head, Some((plan.fetch_start, plan.fetch_end_inclusive)))
            .await?;
        let mut reader = body.into_async_read();
        let mut chunk = vec![0u8; codec::CHUNK];
        let (mut skip, mut left) = (plan.skip, plan.take);
        loop {
            let n = codec::read_full(&mut reader, &mut chunk).await?;
            if n == 0 || left == 0 {
                break;
            }
            let mut buf = chunk[..n].to_vec();
            decrypt(&mut buf).map_err(CodecError::from)?;
            let drop = skip.min(buf.len() as u64) as usize;
            skip -= drop as u64;
            let keep = ((buf.len() - drop) as u64).min(left) as usize;
            dst.write_all(&buf[drop..drop + keep]).await?;
            left -= keep as u64;
        }
        dst.flush().await?;
        Ok(plan.take - left)
    }

    /// The exact plaintext length of a CBC object that did not record it: decrypt its last block
    /// (with the one before it, or the IV, as IV) and read the padding. One small ranged GET.
    async fn cbc_plaintext_len(
        &self,
        head: &ObjectHead,
        env: &Envelope,
        cek: &crate::secret::SecretBytes,
    ) -> Result<u64, ClientError> {
        let stored = head.content_length;
        if stored == 0 || !stored.is_multiple_of(16) {
            return Err(CodecError::DecryptionFailed.into());
        }
        let from = stored.saturating_sub(32);
        let body = self.get_body(head, Some((from, stored - 1))).await?;
        let tail = body
            .collect()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .into_bytes();
        let mut buf = tail.to_vec();
        let mut cbc = content::range::CbcRangeDecryptor::new(cek.expose(), &env.iv, from, stored)?;
        cbc.apply(&mut buf)?;
        cbc.finish()?;
        Ok(stored - 16 + buf.len() as u64)
    }

    async fn copy_plain<W: AsyncWrite + Unpin>(
        &self,
        head: &ObjectHead,
        range: Option<ByteRange>,
        dst: &mut W,
    ) -> Result<u64, ClientError> {
        let bounds = match range {
            None => None,
            Some(r) => Some(
                r.resolve(head.content_length)
                    .ok_or(ClientError::RangeNotSatisfiable(head.content_length))?,
            ),
        };
        let body = self.get_body(head, bounds).await?;
        let mut reader = body.into_async_read();
        let n = tokio::io::copy(&mut reader, dst).await?;
        dst.flush().await?;
        Ok(n)
    }

    /// Encrypts `src` (a fresh data key, V2 or V3 per the request) and uploads it.
    pub async fn put_from<R: AsyncRead + Unpin>(
        &self,
        req: &PutRequest,
        src: &mut R,
    ) -> Result<PutSummary, ClientError> {
        let enc = codec::new_encryption(&self.keyring, req.format, &req.context, req.plaintext_len)
            .await?;
        self.put_encrypted(req, enc, src).await
    }

    /// Uploads `src` through an already set-up encryption (rekey supplies its own, to control
    /// the KMS call). Single PUT when the ciphertext fits in one part, multipart otherwise; every
    /// write carries the request's conditions.
    pub async fn put_encrypted<R: AsyncRead + Unpin>(
        &self,
        req: &PutRequest,
        enc: NewEncryption,
        src: &mut R,
    ) -> Result<PutSummary, ClientError> {
        let NewEncryption {
            envelope,
            encryptor,
        } = enc;
        let mut metadata = req.metadata.clone();
        for k in envelope::ENVELOPE_KEYS {
            metadata.remove(*k);
        }
        metadata.remove(INSTRUCTION_MARKER);
        let envelope = if req.instruction_file {
            // The file first: until the object lands, readers of an older object still find
            // its own envelope (metadata comes first), and a V1/V2 object is never seen without
            // its envelope (which would read as plaintext).
            let (object_fields, json) = envelope.to_instruction_file();
            metadata.extend(object_fields);
            self.put_instruction_file(&req.bucket, &req.key, json, None)
                .await?;
            Envelope {
                location: Location::InstructionFile,
                ..envelope
            }
        } else {
            metadata.extend(envelope.to_metadata());
            envelope
        };
        // Parts grow for huge objects so the upload fits in 10,000 of them (sized by the bound
        // when the exact length is unknown, e.g. a CBC source).
        let part_size = match req.length_bound() {
            Some(n) => self
                .part_size
                .max(((n + GCM_TAG_LEN as u64).div_ceil(MAX_PARTS)) as usize),
            None => self.part_size,
        };
        let mut upload: Option<Multipart> = None;
        let streamed = self
            .encrypt_into_parts(req, &metadata, part_size, encryptor, src, &mut upload)
            .await;
        // Whatever failed (the source, the cipher, a part, the length check), an upload that
        // was started is aborted: nothing is committed and no parts are left behind.
        let (single, total) = match streamed {
            Ok(v) => v,
            Err(e) => {
                if let Some(mp) = upload.take() {
                    mp.abort(self).await;
                }
                return Err(e);
            }
        };
        let (etag, version_id, parts) = match (upload, single) {
            (Some(mp), _) => mp.complete(self, req).await?,
            (None, Some(buf)) => {
                // The budget's share is held until the PUT is done with the bytes.
                let (body, held) = buf.freeze();
                let r = self.put_single(req, &metadata, body).await;
                drop(held);
                let (etag, version) = r?;
                (etag, version, 1)
            }
            (None, None) => unreachable!("no upload was started, so the whole body is left"),
        };
        Ok(PutSummary {
            etag,
            version_id,
            envelope,
            plaintext_len: total,
            parts,
        })
    }

    /// Reads and encrypts `src` into part buffers taken from the budget, uploading each full one
    /// (starting the multipart upload at the first). Returns the buffer to send in a single PUT
    /// when no upload was started, and the plaintext length.
    ///
    /// Every buffer is allocated once, with the capacity it will need (see [`PART_SLACK`]), and
    /// the encryptor writes straight into it: no growing, copying or splitting of one shared
    /// allocation, which left parts in buffers of up to twice the part size and let glibc's
    /// arenas fragment (BENCHMARKS.md, "S3 client memory").
    async fn encrypt_into_parts<R: AsyncRead + Unpin>(
        &self,
        req: &PutRequest,
        metadata: &Metadata,
        part_size: usize,
        mut encryptor: Box<dyn content::ContentEncryptor>,
        src: &mut R,
        upload: &mut Option<Multipart>,
    ) -> Result<(Option<PartBuffer>, u64), ClientError> {
        let announced = req.plaintext_len;
        let mismatch = |total: u64, want: u64| {
            ClientError::Io(std::io::Error::other(format!(
                "read {total} bytes, {want} were announced"
            )))
        };
        // The first buffer holds the whole ciphertext when it is known to fit in one part (the
        // announced length, or a first chunk that already reached the end): a small object
        // takes only its own size from the budget, so small uploads do not queue behind large
        // ones. Otherwise it is a whole part.
        let first_len = |whole: Option<u64>| match whole {
            Some(ct) if ct <= part_size as u64 => ct as usize,
            _ => part_size + PART_SLACK,
        };
        // With the length (or a bound of it) known, the budget's share comes first: an upload
        // waiting for room has neither a read buffer nor read from its source yet (for rekey: a
        // GET whose body stays in the socket), so uploads queued behind the budget cost next to
        // nothing.
        let bound = req.length_bound();
        let early = match bound {
            Some(len) => {
                let whole = encryptor.ciphertext_len(len);
                Some(self.budget.buffer(first_len(Some(whole))).await)
            }
            None => None,
        };
        // Plaintext comes in chunks of at most PUT_READ_CHUNK: a small object of known length
        // needs a read buffer of its own size only (one byte more, to see the end).
        let chunk = bound.map_or(PUT_READ_CHUNK, |n| {
            n.saturating_add(1).min(PUT_READ_CHUNK as u64) as usize
        });
        let mut inbuf = vec![0u8; chunk];
        let mut n = codec::read_full(src, &mut inbuf).await?;
        let mut eof = n < inbuf.len();
        let mut buf = match early {
            Some(buf) => buf,
            None => {
                let whole = eof.then(|| encryptor.ciphertext_len(n as u64));
                self.budget.buffer(first_len(whole)).await
            }
        };
        let mut total = 0u64;
        loop {
            total += n as u64;
            if let Some(want) = announced.filter(|&want| total > want) {
                return Err(mismatch(total, want));
            }
            if let Some(max) = req.plaintext_len_max.filter(|&max| total > max) {
                return Err(ClientError::Io(std::io::Error::other(format!(
                    "read {total} bytes, more than the {max} the source can hold"
                ))));
            }
            let mut rest = &inbuf[..n];
            while !rest.is_empty() {
                if buf.len() >= part_size {
                    // A full part, and more follows: send it.
                    let next = part_size + PART_SLACK;
                    buf = self
                        .send_part(req, metadata, part_size, buf, next, upload)
                        .await?;
                }
                let take = rest.len().min(part_size - buf.len());
                encryptor
                    .update(&rest[..take], &mut buf.data)
                    .map_err(CodecError::from)?;
                rest = &rest[take..];
            }
            if eof {
                break;
            }
            n = codec::read_full(src, &mut inbuf).await?;
            eof = n < inbuf.len();
        }
        encryptor.finish(&mut buf.data).map_err(CodecError::from)?;
        if let Some(want) = announced.filter(|&want| want != total) {
            return Err(mismatch(total, want));
        }
        if upload.is_none() && buf.len() <= part_size {
            return Ok((Some(buf), total));
        }
        if buf.len() > part_size {
            // A full last part, then the few bytes of the tag that did not fit in it.
            let next = buf.len() - part_size;
            buf = self
                .send_part(req, metadata, part_size, buf, next, upload)
                .await?;
        }
        if let Some(mp) = upload.as_mut()
            && !buf.data.is_empty()
        {
            mp.push(self, buf);
        }
        Ok((None, total))
    }

    /// Sends the first `part_size` bytes of `buf` as the next part (starting the multipart
    /// upload at the first) and returns the next buffer, of `next_capacity`, holding any bytes
    /// past `part_size`. Waits first for one of the upload's parts in flight to finish if
    /// `upload_concurrency` are, then for room in the budget: never while holding a buffer not
    /// yet sent, so uploads sharing the budget cannot deadlock.
    async fn send_part(
        &self,
        req: &PutRequest,
        metadata: &Metadata,
        part_size: usize,
        mut buf: PartBuffer,
        next_capacity: usize,
        upload: &mut Option<Multipart>,
    ) -> Result<PartBuffer, ClientError> {
        let tail = (buf.len() > part_size).then(|| buf.data.split_off(part_size));
        let mp = match upload {
            Some(mp) => mp,
            None => upload.insert(self.create_multipart(req, metadata).await?),
        };
        mp.push(self, buf);
        mp.wait_for_slot(self.upload_concurrency).await?;
        let mut next = self.budget.buffer(next_capacity).await;
        if let Some(tail) = tail {
            next.data.extend_from_slice(&tail);
        }
        Ok(next)
    }

    /// Writes `json` as `<key>.instruction` of the object `key`, with the instruction-file
    /// marker; with `if_match`, only if the file still has that ETag (a 412 is
    /// [`ClientError::PreconditionFailed`]). Returns its new ETag.
    pub async fn put_instruction_file(
        &self,
        bucket: &str,
        key: &str,
        json: Vec<u8>,
        if_match: Option<String>,
    ) -> Result<Option<String>, ClientError> {
        let ikey = format!("{key}{INSTRUCTION_SUFFIX}");
        let t = Instant::now();
        let r = self
            .s3
            .put_object()
            .bucket(bucket)
            .key(&ikey)
            .content_length(json.len() as i64)
            .body(ByteStream::from(json))
            .metadata(INSTRUCTION_MARKER, "")
            .set_if_match(if_match)
            .send()
            .await;
        let out = self.observe("PutObject", bucket, &ikey, t, r)?;
        Ok(out.e_tag().map(str::to_owned))
    }

    async fn put_single(
        &self,
        req: &PutRequest,
        metadata: &Metadata,
        body: Bytes,
    ) -> Result<(Option<String>, Option<String>), ClientError> {
        let t = Instant::now();
        let a = &req.attrs;
        let r = crate::client::with_attributes!(
            self.s3
                .put_object()
                .bucket(&req.bucket)
                .key(&req.key)
                .content_length(body.len() as i64)
                .body(ByteStream::from(body))
                .set_metadata(Some(metadata.clone().into_iter().collect())),
            a
        )
        .set_tagging(req.tagging.clone())
        .set_if_match(req.if_match.clone())
        .set_if_none_match(req.if_none_match.then(|| "*".to_owned()))
        .send()
        .await;
        let out = self.observe("PutObject", &req.bucket, &req.key, t, r)?;
        Ok((
            out.e_tag().map(str::to_owned),
            out.version_id().map(str::to_owned),
        ))
    }

    async fn create_multipart(
        &self,
        req: &PutRequest,
        metadata: &Metadata,
    ) -> Result<Multipart, ClientError> {
        let t = Instant::now();
        let a = &req.attrs;
        let r = crate::client::with_attributes!(
            self.s3
                .create_multipart_upload()
                .bucket(&req.bucket)
                .key(&req.key)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .set_metadata(Some(metadata.clone().into_iter().collect())),
            a
        )
        .set_tagging(req.tagging.clone())
        .send()
        .await;
        let out = self.observe("CreateMultipartUpload", &req.bucket, &req.key, t, r)?;
        let upload_id = out.upload_id().ok_or_else(|| ClientError::S3 {
            operation: "CreateMultipartUpload",
            code: None,
            status: None,
            message: "no upload id in the response".into(),
        })?;
        if let Some(note) = &req.upload_started {
            // The receiver may be gone (the caller stopped listening): nothing to tell then.
            let _ = note.send(upload_id.to_owned());
        }
        Ok(Multipart {
            bucket: req.bucket.clone(),
            key: req.key.clone(),
            upload_id: upload_id.to_owned(),
            next_part: 1,
            done: Vec::new(),
            inflight: JoinSet::new(),
        })
    }
}

/// Decrypts one fetched chunk of a ranged read in place.
type RangeDecrypt = Box<dyn FnMut(&mut Vec<u8>) -> Result<(), ContentError> + Send>;

/// Plaintext read buffer of one upload, outside the budget: with `rekey --concurrency 64`
/// there are 64 of them. The ciphers work in 8 KiB slices, and a decrypting source hands out
/// at most 256 KiB a read, so a larger buffer buys nothing.
pub const PUT_READ_CHUNK: usize = 256 << 10;

/// The largest object S3 stores: 5 TiB.
pub const MAX_OBJECT_SIZE: u64 = 5 << 40;

/// Room left in a part buffer past `part_size`, so that the encryptor never has to grow it: a
/// block cipher holds back less than a block, and `finish` adds at most a padded block plus the
/// held bytes (CBC) or the 16-byte tag (GCM).
pub const PART_SLACK: usize = 64;

/// An upload in progress: parts in flight (bounded) and parts done.
struct Multipart {
    bucket: String,
    key: String,
    upload_id: String,
    next_part: i32,
    done: Vec<CompletedPart>,
    /// Each part uploads in a task of its own, so it finishes, and gives its buffer's share of
    /// the budget back, while this upload waits for its source or for the budget. Dropping the
    /// set cancels them.
    inflight: JoinSet<Result<CompletedPart, ClientError>>,
}

impl Multipart {
    /// Starts uploading `part` as the next part number.
    fn push(&mut self, client: &S3Cse, part: PartBuffer) {
        let n = self.next_part;
        self.next_part += 1;
        let c = client.clone();
        let (bucket, key, upload_id) = (
            self.bucket.clone(),
            self.key.clone(),
            self.upload_id.clone(),
        );
        let (body, held): (Bytes, HeldBudget) = part.freeze();
        let sent = body.clone();
        self.inflight.spawn(async move {
            let t = Instant::now();
            let r =
                c.s3.upload_part()
                    .bucket(&bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .part_number(n)
                    .content_length(body.len() as i64)
                    .checksum_algorithm(ChecksumAlgorithm::Crc32)
                    .body(ByteStream::from(body))
                    .send()
                    .await;
            // The request and its body are gone, whatever the outcome: the buffer goes back
            // to the budget now (for the next part), not when this upload ends.
            held.give_back(sent);
            let out = c.observe("UploadPart", &bucket, &key, t, r)?;
            Ok(CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .set_checksum_crc32(out.checksum_crc32().map(str::to_owned))
                .build())
        });
    }

    /// Collects the parts that have finished, then waits while `limit` are still in flight.
    /// The first failed part fails the upload.
    async fn wait_for_slot(&mut self, limit: usize) -> Result<(), ClientError> {
        while let Some(r) = self.inflight.try_join_next() {
            self.done.push(joined(r)?);
        }
        while self.inflight.len() >= limit {
            match self.inflight.join_next().await {
                Some(r) => self.done.push(joined(r)?),
                None => break,
            }
        }
        Ok(())
    }

    async fn complete(
        mut self,
        client: &S3Cse,
        req: &PutRequest,
    ) -> Result<(Option<String>, Option<String>, usize), ClientError> {
        while let Some(r) = self.inflight.join_next().await {
            match joined(r) {
                Ok(p) => self.done.push(p),
                Err(e) => {
                    self.abort(client).await;
                    return Err(e);
                }
            }
        }
        self.done.sort_by_key(|p| p.part_number());
        let parts = self.done.len();
        crate::failpoint!("upload-before-complete");
        let t = Instant::now();
        let r = client
            .s3
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(self.done.clone()))
                    .build(),
            )
            .set_if_match(req.if_match.clone())
            .set_if_none_match(req.if_none_match.then(|| "*".to_owned()))
            .send()
            .await;
        match client.observe("CompleteMultipartUpload", &self.bucket, &self.key, t, r) {
            Ok(out) => Ok((
                out.e_tag().map(str::to_owned),
                out.version_id().map(str::to_owned),
                parts,
            )),
            Err(e) => {
                self.abort(client).await;
                Err(e)
            }
        }
    }

    /// Best effort: a failed abort leaves parts for the bucket's lifecycle rule.
    async fn abort(mut self, client: &S3Cse) {
        // Cancel the parts in flight and wait until they are gone, so that none lands after
        // the abort.
        self.inflight.abort_all();
        while self.inflight.join_next().await.is_some() {}
        let t = Instant::now();
        let r = client
            .s3
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
        if let Err(e) = client.observe("AbortMultipartUpload", &self.bucket, &self.key, t, r) {
            tracing::warn!(bucket = %self.bucket, key = %log_key(&self.key), error = %e, "abort of multipart upload failed");
        }
    }
}

/// A part upload task's result; a panic in the task is resumed here.
fn joined(
    r: Result<Result<CompletedPart, ClientError>, tokio::task::JoinError>,
) -> Result<CompletedPart, ClientError> {
    match r {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(ClientError::Io(std::io::Error::other(
            "a part upload was cancelled",
        ))),
    }
}

/// S3 metadata as the SDK returns it, keys lowercased (S3 does; other stores may not) and any
/// stray `x-amz-meta-` prefix removed.
pub fn normalize_metadata(m: Option<&std::collections::HashMap<String, String>>) -> Metadata {
    m.into_iter()
        .flatten()
        .map(|(k, v)| {
            let k = k.to_ascii_lowercase();
            let k = k
                .strip_prefix(USER_META_PREFIX)
                .map(str::to_owned)
                .unwrap_or(k);
            (k, v.clone())
        })
        .collect()
}

/// The `Expires` header as S3 returns it (an HTTP date); `None` if it is not one.
pub fn parse_expires(s: Option<&str>) -> Option<aws_smithy_types::DateTime> {
    s.and_then(|s| {
        aws_smithy_types::DateTime::from_str(s, aws_smithy_types::date_time::Format::HttpDate).ok()
    })
}

/// The KMS key an envelope names, if it says (legacy `kms` matdesc, or the EDK of moto/KMS does not).
pub fn kms_key_id_of(env: &Envelope) -> Option<String> {
    env.encryption_context
        .get(crate::consts::EC_KMS_CMK_ID)
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A part's 412 that went through `io::Error` (rekey's large-source reads) is a 412 again,
    /// a conflict to requeue, not a transient I/O error to retry with a new data key.
    #[test]
    fn a_part_error_through_io_comes_out_as_itself() {
        let through = ClientError::Io(std::io::Error::other(ClientError::PreconditionFailed));
        assert!(matches!(
            unwrap_io_error(through),
            ClientError::PreconditionFailed
        ));
        let codec = ClientError::Codec(CodecError::Io(std::io::Error::other(
            ClientError::PreconditionFailed,
        )));
        assert!(matches!(
            unwrap_io_error(codec),
            ClientError::PreconditionFailed
        ));
        let plain = ClientError::Io(std::io::Error::other("reset"));
        assert!(matches!(unwrap_io_error(plain), ClientError::Io(_)));
    }

    #[test]
    fn ranges_parse_and_resolve() {
        let r: ByteRange = "bytes=0-15".parse().expect("range");
        assert_eq!(r.resolve(100), Some((0, 15)));
        let r: ByteRange = "bytes=90-".parse().expect("range");
        assert_eq!(r.resolve(100), Some((90, 99)));
        let r: ByteRange = "bytes=-10".parse().expect("range");
        assert_eq!(r.resolve(100), Some((90, 99)));
        let r: ByteRange = "bytes=95-200".parse().expect("range");
        assert_eq!(r.resolve(100), Some((95, 99)));
        assert_eq!(
            "bytes=100-"
                .parse::<ByteRange>()
                .expect("range")
                .resolve(100),
            None
        );
        assert!("bytes=5-1".parse::<ByteRange>().is_err());
        assert!("5-1".parse::<ByteRange>().is_err());
    }

    #[test]
    fn metadata_is_normalized() {
        let mut m = std::collections::HashMap::new();
        m.insert("X-Amz-Key-V2".to_owned(), "a".to_owned());
        m.insert("x-amz-meta-x-amz-iv".to_owned(), "b".to_owned());
        let n = normalize_metadata(Some(&m));
        assert_eq!(n.get("x-amz-key-v2").map(String::as_str), Some("a"));
        assert_eq!(n.get("x-amz-iv").map(String::as_str), Some("b"));
    }
}
