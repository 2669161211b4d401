//! What the per-object steps share: the run's context ([`Ctx`]), one object's failure
//! ([`ObjError`]) and success ([`Done`]), the intent log a write goes through ([`IntentLog`]),
//! and the small helpers every write path needs (source key, target context, kept metadata).
//!
//! Imports go one way: [`super::worker`] (the pool) -> [`super::object`] (one attempt) -> the
//! steps ([`super::inspect`], [`super::rewrite`], [`super::rewrap`], [`super::verify`],
//! [`super::recover`]) -> this module.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use std::sync::atomic::AtomicBool;
use tokio::time::Instant;

use sha2::{Digest, Sha256};

use crate::client::{ClientError, ObjectHead, UploadNote};
use crate::codec::{self, CodecError, DecryptPolicy};
use crate::consts::{EC_CEK_ALG, GCM_TAG_LEN, INSTRUCTION_MARKER};
use crate::envelope::{self, Envelope, Metadata};
use crate::keyring::KmsError;
use crate::metrics::ObjectResult;
use crate::secret::SecretBytes;
use crate::store::{self, Intent, Job, Outcome};

use super::worker::WorkSummary;
use super::{RekeyConfig, Shutdown};

/// One object's failure.
#[derive(Debug)]
pub(super) enum ObjError {
    /// The object changed since it was listed / read: requeue with what we know of it now.
    Conflict {
        message: String,
        etag: Option<String>,
        size: Option<u64>,
    },
    Failed {
        code: String,
        http: Option<u16>,
        message: String,
        transient: bool,
    },
    /// Our write landed, then a later step (verify, the instruction file's delete) failed:
    /// the record keeps what was written (`written`: action, source format, result and
    /// replaced versions), so a failed verify is never forgotten, and the intent stays for the
    /// next attempt to recognise the write as ours.
    AfterWrite {
        error: Box<ObjError>,
        written: Box<Outcome>,
    },
    /// The stop came while the object waited for a large-object slot: nothing of it was read
    /// or written, so its job goes back to the queue (as claimed jobs not yet started do).
    Stopped,
}

impl ObjError {
    pub(super) fn failed(code: &str, message: impl Into<String>) -> Self {
        ObjError::Failed {
            code: code.to_owned(),
            http: None,
            message: message.into(),
            transient: false,
        }
    }

    /// A transient failure (worth another attempt): its code, HTTP status and message.
    pub(super) fn transient(&self) -> Option<(&str, Option<u16>, &str)> {
        match self {
            ObjError::Failed {
                transient: true,
                code,
                http,
                message,
            } => Some((code, *http, message)),
            ObjError::AfterWrite { error, .. } => error.transient(),
            _ => None,
        }
    }

    /// Attaches what was written to a failure that came after the write.
    pub(super) fn after_write(self, written: &Outcome) -> Self {
        match self {
            e @ (ObjError::AfterWrite { .. } | ObjError::Stopped) => e,
            e => ObjError::AfterWrite {
                error: Box::new(e),
                written: Box::new(written.clone()),
            },
        }
    }
}

impl From<ClientError> for ObjError {
    fn from(e: ClientError) -> Self {
        let http = e.http_status();
        let transient = e.is_transient();
        match e {
            ClientError::PreconditionFailed => ObjError::Conflict {
                message: e.to_string(),
                etag: None,
                size: None,
            },
            ClientError::Codec(c) => c.into(),
            ClientError::AttributesUnreadable { .. } => ObjError::Failed {
                code: "AttributesUnreadable".into(),
                http,
                message: e.to_string(),
                transient: false,
            },
            ClientError::S3 { ref code, .. } => ObjError::Failed {
                code: code.clone().unwrap_or_else(|| "S3Error".into()),
                http,
                message: e.to_string(),
                transient,
            },
            ClientError::NotFound { .. } => ObjError::Failed {
                code: "NoSuchKey".into(),
                http,
                message: e.to_string(),
                transient: false,
            },
            other => ObjError::Failed {
                code: "IoError".into(),
                http,
                message: other.to_string(),
                transient,
            },
        }
    }
}

impl From<CodecError> for ObjError {
    fn from(e: CodecError) -> Self {
        let class = e.class();
        ObjError::Failed {
            code: class.code().to_owned(),
            http: None,
            message: e.to_string(),
            transient: matches!(
                class,
                codec::ErrorClass::KmsUnavailable | codec::ErrorClass::Io
            ),
        }
    }
}

impl From<KmsError> for ObjError {
    fn from(e: KmsError) -> Self {
        CodecError::Keyring(e.into()).into()
    }
}

/// What a write step wrote.
pub(super) struct Written {
    pub etag: Option<String>,
    pub version_id: Option<String>,
    /// The envelope now on the object (the verify step checks it).
    pub envelope: Envelope,
    /// The content key, when it is in hand (rewrites, raw-key rewraps): verify decrypts with
    /// it. `None` after a `ReEncrypt`.
    pub cek: Option<SecretBytes>,
    /// The source's plaintext SHA-256, when the source body was read.
    pub source_sha256: Option<String>,
    /// The body bytes are the source's, already authenticated (a single CopyObject that kept
    /// a plain ETag): verify checks the envelope only.
    pub same_bytes: bool,
}

/// A finished object.
pub(super) struct Done {
    pub outcome: Outcome,
    /// Metrics result label.
    pub result: ObjectResult,
    pub action: store::Action,
}

impl Done {
    /// A skipped object.
    pub(super) fn skip(source_format: Option<String>, reason: &str) -> Self {
        Done {
            outcome: Outcome {
                source_format,
                action: Some(store::Action::Skip),
                skip_reason: Some(reason.to_owned()),
                ..Outcome::new(store::JobState::Done)
            },
            result: ObjectResult::Skipped,
            action: store::Action::Skip,
        }
    }

    /// A write that landed (now or in an interrupted attempt) and was verified.
    pub(super) fn written(outcome: Outcome) -> Self {
        let action = outcome.action.unwrap_or(store::Action::Rewrite);
        Done {
            outcome,
            result: match action {
                store::Action::Rewrite => ObjectResult::Rewritten,
                _ => ObjectResult::Rewrapped,
            },
            action,
        }
    }
}

/// Shared by the tasks of one run.
pub(super) struct Ctx {
    pub config: RekeyConfig,
    pub owner: String,
    pub summary: Mutex<WorkSummary>,
    pub inflight: Mutex<BTreeSet<i64>>,
    /// A GetObjectTagging succeeded in this run (see [`super::tags::read_tags`]).
    pub tags_readable: AtomicBool,
    /// A tag read found tags the head did not count (see [`super::tags::read_tags`]).
    pub counts_unreliable: AtomicBool,
    /// Bodies larger than one part streamed through this process (rewrites, and the
    /// authentication of raw-key rewraps and recovered writes), at most as many at once as the
    /// buffer budget holds parts (see [`large_slots`]).
    pub large: tokio::sync::Semaphore,
    /// Bodies above what a GET fetches with its head (`GET_FIRST_MAX`) and within one part, at
    /// most `--concurrency` at once: the pipeline keeps several objects per KMS slot in flight
    /// (`worker::in_flight`) counting 256 KiB each, so larger ones must not open their source
    /// GETs (an HTTP buffer and a connection each, outside the budget) by the same count.
    pub medium: tokio::sync::Semaphore,
    /// The run's stop signal: a rewrite still waiting for a slot when it comes does not start.
    pub shutdown: Shutdown,
}

/// How many objects larger than one part are rewritten at once: as many as the buffer budget
/// has part buffers for (at least one; each may still wait for more of the budget mid-upload,
/// holding one). More would wait for the budget while holding what a rewrite holds outside it:
/// the source GET's connection and its HTTP read buffer (up to ~400 KiB), the decrypt buffers,
/// then the verify read. Measured with 64 x 16 MiB objects at `--concurrency 64`: those added
/// up to ~2 MiB per object, 220 MiB in all; waiting before the GET, a queued rewrite holds
/// none of it.
pub(super) fn large_slots(client: &crate::client::S3Cse) -> usize {
    let part = (client.part_size() + crate::client::PART_SLACK) as u64;
    usize::try_from(client.buffer_budget().bytes() / part)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// The time one attempt spent waiting for a large-object slot, which its deadline does not
/// count ([`within_deadline`]): behind a few huge rewrites an object may wait longer than its
/// deadline before it starts, and that is no hang.
#[derive(Debug, Default)]
pub(super) struct SlotClock {
    /// Waits finished so far, and the start of the one under way.
    waited: Mutex<(Duration, Option<Instant>)>,
}

impl SlotClock {
    fn start_wait(&self) {
        if let Ok(mut w) = self.waited.lock() {
            w.1 = Some(Instant::now());
        }
    }

    fn end_wait(&self) {
        if let Ok(mut w) = self.waited.lock()
            && let Some(since) = w.1.take()
        {
            w.0 += since.elapsed();
        }
    }

    /// Time spent waiting up to `now`, the wait under way included.
    fn waited(&self, now: Instant) -> Duration {
        match self.waited.lock() {
            Ok(w) => {
                w.0 + w
                    .1
                    .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
            }
            Err(_) => Duration::ZERO,
        }
    }
}

tokio::task_local! {
    /// The [`SlotClock`] of the attempt running in this task, if it runs under a deadline.
    static SLOT_CLOCK: std::sync::Arc<SlotClock>;
}

/// Runs `fut` with a deadline of `limit` of its own time: time spent waiting for a large-object
/// slot ([`Ctx::large_slot`]) does not count. `None` when the deadline passed (`fut` dropped).
pub(super) async fn within_deadline<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    let clock = std::sync::Arc::new(SlotClock::default());
    let fut = SLOT_CLOCK.scope(clock.clone(), fut);
    tokio::pin!(fut);
    let start = Instant::now();
    loop {
        let now = Instant::now();
        let active = now
            .saturating_duration_since(start)
            .saturating_sub(clock.waited(now));
        if active >= limit {
            return None;
        }
        tokio::select! {
            r = &mut fut => return Some(r),
            () = tokio::time::sleep(limit - active) => {}
        }
    }
}

impl Ctx {
    pub(super) fn summary(&self, f: impl FnOnce(&mut WorkSummary)) {
        if let Ok(mut s) = self.summary.lock() {
            f(&mut s);
        }
    }

    /// A slot for streaming the body of `head` through this process: a large one if it is
    /// larger than one part (see [`large_slots`]), a medium one if a GET does not fetch it with
    /// its head; `None` for smaller objects, which take none.
    pub(super) async fn large_slot(
        &self,
        head: &ObjectHead,
    ) -> Result<Option<tokio::sync::SemaphorePermit<'_>>, ObjError> {
        // The new object is the plaintext (at most the stored size) plus the GCM tag.
        let slots = if head.content_length.saturating_add(GCM_TAG_LEN as u64)
            > self.config.client.part_size() as u64
        {
            Some(&self.large)
        } else if head.content_length > super::inspect::GET_FIRST_MAX {
            Some(&self.medium)
        } else {
            None
        };
        if let Some(slots) = slots {
            let clock = SLOT_CLOCK.try_with(std::sync::Arc::clone).ok();
            if let Some(c) = &clock {
                c.start_wait();
            }
            let slot = tokio::select! {
                // A stop already requested wins over a free slot.
                biased;
                () = self.shutdown.stopped() => Err(ObjError::Stopped),
                // Never closed, so the permit is always granted.
                p = slots.acquire() => Ok(p.ok()),
            };
            if let Some(c) = &clock {
                c.end_wait();
            }
            slot
        } else {
            Ok(None)
        }
    }
}

/// The fingerprint of an envelope we write: SHA-256 over its encrypted data key and IV (hex,
/// 128 bits). Every envelope rekey writes has a fresh encrypted data key (GenerateDataKey,
/// Encrypt and ReEncrypt blobs are randomised), so an object carrying it was written by the
/// attempt that recorded it, and by nothing else: recovery recognises *our* write, not just
/// any current object.
pub fn fingerprint(env: &Envelope) -> String {
    let mut h = Sha256::new();
    h.update((env.encrypted_key.len() as u64).to_be_bytes());
    h.update(&env.encrypted_key);
    h.update(&env.iv);
    hex::encode(&h.finalize()[..16])
}

/// The intent of one attempt at one job: recorded in the job table before the write (with the
/// fingerprint of the envelope about to be written) and again as soon as a multipart upload
/// exists (its id), so that whatever a crash interrupts, the next attempt finds out what
/// landed and settles it ([`super::recover`]).
pub(super) struct IntentLog<'a> {
    ctx: &'a Ctx,
    job: &'a Job,
    intent: Mutex<Intent>,
    /// Upload ids of multipart writes, sent by the client as soon as S3 creates them.
    pub uploads: UploadNote,
}

impl<'a> IntentLog<'a> {
    /// The log and the receiving end of its upload-id channel (each id goes to
    /// [`Self::record_upload`]).
    pub(super) fn new(
        ctx: &'a Ctx,
        job: &'a Job,
        intent: Intent,
    ) -> (Self, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let (uploads, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            IntentLog {
                ctx,
                job,
                intent: Mutex::new(intent),
                uploads,
            },
            rx,
        )
    }

    fn snapshot(&self, f: impl FnOnce(&mut Intent)) -> Intent {
        match self.intent.lock() {
            Ok(mut i) => {
                f(&mut i);
                i.clone()
            }
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Records the intent to write `new_env`, just before the write. Refused (no write) when
    /// the job is no longer ours or the state file cannot be written.
    pub(super) async fn before_write(&self, new_env: &Envelope) -> Result<(), ObjError> {
        let intent = self.snapshot(|i| i.fingerprint = Some(fingerprint(new_env)));
        self.record(&intent).await
    }

    async fn record(&self, intent: &Intent) -> Result<(), ObjError> {
        let c = &self.ctx.config;
        match c
            .store
            .record_intent(self.job.id, &self.ctx.owner, intent)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(ObjError::failed(
                "LeaseLost",
                "another worker holds this job now: not writing",
            )),
            Err(e) => Err(ObjError::Failed {
                code: "StateError".into(),
                http: None,
                message: e.to_string(),
                transient: true,
            }),
        }
    }

    /// Records the id of a multipart upload the write just started.
    pub(super) async fn record_upload(&self, upload_id: String) {
        let with = self.snapshot(|i| i.upload_id = Some(upload_id.clone()));
        if let Err(e) = self.record(&with).await {
            // The write is conditional on the source ETag, so it cannot clobber the next
            // holder's work; only the upload's id goes unrecorded (lifecycle backstop).
            tracing::warn!(key = %crate::logkey::log_key(&self.job.key), upload_id, error = ?e,
                "could not record the upload id");
        }
    }

    /// The intent as last recorded.
    pub(super) fn intent(&self) -> Intent {
        self.snapshot(|_| {})
    }
}

/// User metadata to keep: everything but the envelope (and the instruction-file marker).
pub(super) fn user_metadata(head: &ObjectHead) -> Metadata {
    let mut m = head.metadata.clone();
    for k in envelope::ENVELOPE_KEYS {
        m.remove(*k);
    }
    m.remove(INSTRUCTION_MARKER);
    m
}

/// The new envelope's KMS encryption context: `--context` + `aws:x-amz-cek-alg` naming the
/// content cipher (`AES/GCM/NoPadding` for V2, `115` for V3).
pub(super) fn target_context(c: &RekeyConfig, content: envelope::ContentAlg) -> envelope::Context {
    let mut ec = c.context.clone();
    ec.insert(EC_CEK_ALG.into(), content.wire_name().into());
    ec
}

/// The one source content key.
pub(super) async fn source_key(c: &RekeyConfig, env: &Envelope) -> Result<SecretBytes, ObjError> {
    let mut keys =
        codec::unwrap_content_key(env, c.client.keyring(), &DecryptPolicy::legacy()).await?;
    match keys.len() {
        1 => Ok(keys.remove(0)),
        _ => Err(ObjError::failed(
            codec::ErrorClass::NoMatchingKey.code(),
            "several configured RSA keys unwrap this object's data key; give only the right one",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn wait_for_slot(d: Duration) {
        let clock = SLOT_CLOCK.try_with(std::sync::Arc::clone).ok();
        if let Some(c) = &clock {
            c.start_wait();
        }
        tokio::time::sleep(d).await;
        if let Some(c) = &clock {
            c.end_wait();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_does_not_count_the_wait_for_a_slot() {
        let limit = Duration::from_secs(5);
        // 10 s waiting for a slot, then 2 s of work: within a 5 s deadline.
        let r = within_deadline(limit, async {
            wait_for_slot(Duration::from_secs(10)).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            42
        })
        .await;
        assert_eq!(r, Some(42));
        // 6 s of work: over it, slot wait or not.
        let r = within_deadline(limit, async {
            wait_for_slot(Duration::from_secs(10)).await;
            tokio::time::sleep(Duration::from_secs(6)).await;
            42
        })
        .await;
        assert_eq!(r, None);
        let r = within_deadline(limit, tokio::time::sleep(Duration::from_secs(6))).await;
        assert_eq!(r, None);
    }
}
