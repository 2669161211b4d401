//! The worker pool: claims jobs with a lease, runs up to `--concurrency` of them as tokio tasks,
//! and records each outcome. Per object (HEAD first, then decide from the envelope):
//!
//! - **rewrite** (CBC sources, `--reencrypt`): GET -> decrypt -> SHA-256 -> AES-GCM under a fresh
//!   data key (exactly one `GenerateDataKey`) -> PUT / multipart upload with `If-Match` the ETag
//!   HEAD saw. The body is decrypted *while* it is uploaded ([`DecryptReader`]); a source that
//!   fails authentication makes the reader fail at EOF, before PutObject /
//!   CompleteMultipartUpload, so nothing unauthenticated is ever committed.
//! - **rewrap** (GCM sources): the content key is wrapped under the target key (one `ReEncrypt`
//!   for KMS sources, one `Encrypt` for raw-key sources) and the metadata replaced by a
//!   server-side CopyObject onto itself with `x-amz-copy-source-if-match`; above
//!   `copy_part_threshold` (5 GiB, CopyObject's limit) by a multipart copy onto itself
//!   ([`super::copy`]: UploadPartCopy with the same condition, Complete with `If-Match`).
//! - **verify** (default): read the new object back. Rewrites and raw-key rewraps are decrypted
//!   with the content key in hand (no KMS call) and, for rewrites, the plaintext SHA-256 is
//!   compared with the source's; `ReEncrypt` rewraps hold no content key, so they are verified by
//!   HEAD + envelope equality only.
//! - A 412/409 (the object changed) requeues the job with the new ETag; the third conflict marks
//!   it `conflict`. A newer object is never overwritten.
//!
//! Graceful stop: claiming stops, in-flight objects finish, claimed-but-unstarted jobs are
//! released. A killed worker's leases lapse (or, on the same host, are released at the next start
//! once its pid is gone).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{MetadataDirective, TaggingDirective};
use futures::{StreamExt, TryStreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::task::JoinSet;

use crate::client::{
    ClientError, EnvelopeState, ObjectHead, PutRequest, UploadNote, normalize_metadata,
};
use crate::codec::{self, CodecError, DecryptPolicy, NewEncryption, ObjectDecryptor, WriteFormat};
use crate::consts::{
    CEK_GCM, EC_CEK_ALG, GCM_IV_LEN, GCM_TAG_LEN, INSTRUCTION_MARKER, INSTRUCTION_SUFFIX,
};
use crate::content;
use crate::envelope::{self, ContentAlg, Envelope, Location, Metadata, Version, WrapAlg};
use crate::keyring::KmsError;
use crate::metrics::{ObjectResult, RetryReason, Service};
use crate::secret::{SecretBytes, fill_random};
use crate::store::{self, Job, JobState, JobStore, Outcome};

use super::kms::backoff;
use super::plan::{self, Action, SkipReason};
use super::{RekeyConfig, RekeyError, Shutdown};

/// Attempts per object on transient S3/KMS failures (first try included).
const MAX_ATTEMPTS: u32 = 5;
/// Conflicts (the object changed under us) before a job is left in state `conflict`.
const MAX_CONFLICTS: u32 = 3;
/// Largest object CopyObject takes in one request; larger rewraps need UploadPartCopy. Also
/// S3's largest part.
pub const MAX_COPY_SIZE: u64 = 5 << 30;
/// Part size of a multipart copy: 512 MiB makes a 6 GiB object 12 requests; the server copies
/// the bytes, so no memory is at stake. 10,000 such parts reach 5,000 GiB; for larger objects
/// (S3 allows 5 TiB) [`super::copy::part_ranges`] grows the part.
pub const COPY_PART_SIZE: u64 = 512 << 20;
/// How often the queue gauges are refreshed from the store.
const GAUGE_INTERVAL: Duration = Duration::from_secs(3);

/// Object-key characters CopySource keeps as they are (RFC 3986 unreserved, plus `/`).
const COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// Characters a tag key or value keeps as they are in the `x-amz-tagging` query string.
const TAG: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What the workers did in this run.
#[derive(Debug, Clone, Default)]
pub struct WorkSummary {
    pub migrated: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Jobs left in state `conflict` (changed under us [`MAX_CONFLICTS`] times).
    pub conflicts: u64,
    /// Conflicts that were requeued (classified again later in the run).
    pub requeued: u64,
    pub bytes_migrated: u64,
    /// `--dry-run`: objects and bytes by planned action (`rewrite`, `rewrap`, `skip:plaintext`, …).
    pub planned: BTreeMap<String, (u64, u64)>,
}

/// One object's failure.
#[derive(Debug)]
enum ObjError {
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
    /// The stop came while the object waited for a large-object slot: nothing of it was read
    /// or written, so its job goes back to the queue (as claimed jobs not yet started do).
    Stopped,
}

impl ObjError {
    fn failed(code: &str, message: impl Into<String>) -> Self {
        ObjError::Failed {
            code: code.to_owned(),
            http: None,
            message: message.into(),
            transient: false,
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

/// What was written.
struct Written {
    etag: Option<String>,
    version_id: Option<String>,
    sha256: Option<String>,
}

/// A finished object.
struct Done {
    outcome: Outcome,
    /// Metrics result label.
    result: ObjectResult,
    action: store::Action,
}

/// Shared by the tasks of one run.
struct Ctx {
    config: RekeyConfig,
    owner: String,
    summary: Mutex<WorkSummary>,
    inflight: Mutex<BTreeSet<i64>>,
    /// A GetObjectTagging succeeded in this run (see [`read_tags`]).
    tags_readable: AtomicBool,
    /// A tag read found tags the head did not count (see [`read_tags`]).
    counts_unreliable: AtomicBool,
    /// Bodies larger than one part streamed through this process (rewrites, and the
    /// authentication of raw-key rewraps and recovered writes), at most as many at once as the
    /// buffer budget holds parts (see [`large_slots`]).
    large: tokio::sync::Semaphore,
    /// The run's stop signal: a rewrite still waiting for a slot when it comes does not start.
    shutdown: Shutdown,
}

/// How many objects larger than one part are rewritten at once: as many as the buffer budget
/// has part buffers for (at least one; each may still wait for more of the budget mid-upload,
/// holding one). More would wait for the budget while holding what a rewrite holds outside it:
/// the source GET's connection and its HTTP read buffer (up to ~400 KiB), the decrypt buffers,
/// then the verify read. Measured
/// with 64 x 16 MiB objects at `--concurrency 64`: those added up to ~2 MiB per object, 220 MiB
/// in all; waiting before the GET, a queued rewrite holds none of it.
fn large_slots(client: &crate::client::S3Cse) -> usize {
    let part = (client.part_size() + crate::client::PART_SLACK) as u64;
    usize::try_from(client.buffer_budget().bytes() / part)
        .unwrap_or(usize::MAX)
        .max(1)
}

impl Ctx {
    fn summary(&self, f: impl FnOnce(&mut WorkSummary)) {
        if let Ok(mut s) = self.summary.lock() {
            f(&mut s);
        }
    }

    /// A slot for streaming the body of `head` through this process, if it is larger than one
    /// part (see [`large_slots`]); `None` for smaller objects, which take none.
    async fn large_slot(
        &self,
        head: &ObjectHead,
    ) -> Result<Option<tokio::sync::SemaphorePermit<'_>>, ObjError> {
        // The new object is the plaintext (at most the stored size) plus the GCM tag.
        if head.content_length.saturating_add(GCM_TAG_LEN as u64)
            > self.config.client.part_size() as u64
        {
            tokio::select! {
                // A stop already requested wins over a free slot.
                biased;
                () = self.shutdown.stopped() => Err(ObjError::Stopped),
                // Never closed, so the permit is always granted.
                p = self.large.acquire() => Ok(p.ok()),
            }
        } else {
            Ok(None)
        }
    }
}

/// `host:pid:start`: unique per process; the host and pid let a restarted worker on the same
/// host release the rows of a dead predecessor without waiting for the lease to lapse, and an
/// abandoned stop release this process's rows ([`super::process_owner_prefix`]).
fn owner_id() -> String {
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}{start}", super::process_owner_prefix())
}

/// Aborts a background task when dropped: the lease-renewal and gauge tasks end with
/// [`work`], also when its future is dropped (an abandoned stop).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Releases `running` rows leased by a dead process of this host (killed with SIGKILL, OOM).
async fn release_dead_leases(store: &JobStore, me: &str) -> Result<u64, RekeyError> {
    let host = super::hostname();
    let my_pid = std::process::id().to_string();
    let running: Vec<_> = store.report(Some(JobState::Running)).try_collect().await?;
    let mut by_owner: HashMap<String, Vec<i64>> = HashMap::new();
    for row in running {
        let Some(job) = store.job(row.id).await? else {
            continue;
        };
        let Some(owner) = job.lease_owner else {
            continue;
        };
        let mut parts = owner.split(':');
        let (Some(h), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        if h != host || owner == me {
            continue;
        }
        let dead = if pid == my_pid {
            true // Our pid, another start: that process is gone (a restarted container's pid 1).
        } else {
            !std::path::Path::new("/proc").join(pid).exists()
        };
        if dead {
            by_owner.entry(owner).or_default().push(job.id);
        }
    }
    let mut released = 0;
    for (owner, ids) in by_owner {
        released += store.release(&ids, &owner).await?;
    }
    if released > 0 {
        tracing::info!(released, "released the jobs of a dead worker on this host");
    }
    Ok(released)
}

/// Drains the queue.
pub async fn work(config: &RekeyConfig, shutdown: &Shutdown) -> Result<WorkSummary, RekeyError> {
    let owner = owner_id();
    release_dead_leases(&config.store, &owner).await?;
    let ctx = Arc::new(Ctx {
        config: config.clone(),
        owner: owner.clone(),
        summary: Mutex::new(WorkSummary::default()),
        inflight: Mutex::new(BTreeSet::new()),
        tags_readable: AtomicBool::new(false),
        counts_unreliable: AtomicBool::new(false),
        large: tokio::sync::Semaphore::new(large_slots(&config.client)),
        shutdown: shutdown.clone(),
    });
    let lease = config.lease.max(Duration::from_secs(3));
    // Renews the leases of running jobs: only a dead worker's lease lapses.
    let renew = {
        let ctx = ctx.clone();
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                let ids: Vec<i64> = ctx
                    .inflight
                    .lock()
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                if let Err(e) = ctx.config.store.renew_lease(&ids, &ctx.owner, lease).await {
                    tracing::warn!(error = %e, "lease renewal failed");
                }
            }
        }))
    };
    let gauges = {
        let ctx = ctx.clone();
        AbortOnDrop(tokio::spawn(async move {
            loop {
                if let Ok(c) = ctx.config.store.state_counts().await {
                    ctx.config.metrics.set_queue(&c);
                }
                tokio::time::sleep(GAUGE_INTERVAL).await;
            }
        }))
    };
    let result = claim_loop(&ctx, shutdown, lease).await;
    drop((renew, gauges));
    if let Ok(c) = config.store.state_counts().await {
        config.metrics.set_queue(&c);
    }
    result?;
    let summary = ctx.summary.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(summary)
}

async fn claim_loop(
    ctx: &Arc<Ctx>,
    shutdown: &Shutdown,
    lease: Duration,
) -> Result<(), RekeyError> {
    let store = &ctx.config.store;
    let concurrency = ctx.config.concurrency.max(1);
    let mut tasks: JoinSet<Result<(), RekeyError>> = JoinSet::new();
    let mut first_error = None;
    loop {
        if shutdown.is_stopping() {
            break;
        }
        let free = concurrency.saturating_sub(tasks.len());
        let jobs = if free > 0 {
            store.claim(&ctx.owner, free as u32, lease).await?
        } else {
            Vec::new()
        };
        if jobs.is_empty() {
            if tasks.is_empty() {
                break;
            }
            tokio::select! {
                r = tasks.join_next() => note_task(r, &mut first_error),
                _ = shutdown.stopped() => {}
            }
            continue;
        }
        let mut unstarted = Vec::new();
        for job in jobs {
            if shutdown.is_stopping() {
                unstarted.push(job.id);
                continue;
            }
            // A row of ours whose lease lapsed (renewals failed for a whole lease) can come back
            // from the claim while its task still runs: the claim renewed the lease, and a
            // second task would race the first on the same object.
            if let Ok(mut s) = ctx.inflight.lock()
                && !s.insert(job.id)
            {
                continue;
            }
            let ctx = ctx.clone();
            tasks.spawn(async move {
                let id = job.id;
                let r = handle_job(&ctx, job).await;
                if let Ok(mut s) = ctx.inflight.lock() {
                    s.remove(&id);
                }
                r
            });
        }
        if !unstarted.is_empty() {
            store.release(&unstarted, &ctx.owner).await?;
        }
    }
    while let Some(r) = tasks.join_next().await {
        note_task(Some(r), &mut first_error);
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn note_task(
    r: Option<Result<Result<(), RekeyError>, tokio::task::JoinError>>,
    first: &mut Option<RekeyError>,
) {
    match r {
        Some(Ok(Err(e))) => {
            tracing::error!(error = %e, "recording a job outcome failed");
            first.get_or_insert(e);
        }
        Some(Err(e)) => tracing::error!(error = %e, "worker task panicked"),
        _ => {}
    }
}

/// Processes one job (retrying transient failures) and records its outcome.
async fn handle_job(ctx: &Ctx, mut job: Job) -> Result<(), RekeyError> {
    let started = Instant::now();
    let c = &ctx.config;
    let mut attempt = 0;
    // The action classification chose, once known: the `action` label of a failure's duration.
    let mut action = None;
    let result = loop {
        attempt += 1;
        match process(ctx, &job, &mut action).await {
            Err(ObjError::Failed {
                transient: true,
                ref code,
                http,
                ref message,
            }) if attempt < MAX_ATTEMPTS => {
                let (service, reason) = retry_labels(code, http);
                c.metrics.retry(service, reason);
                tracing::debug!(key = %job.key, attempt, error = %message, "retrying object");
                tokio::time::sleep(backoff(attempt)).await;
                // The failed attempt may have recorded an upload to abort: the next one reads
                // the intent as it is now, not as it was at the claim.
                if let Ok(Some(fresh)) = c.store.job(job.id).await {
                    job.intent = fresh.intent;
                }
            }
            r => break r,
        }
    };
    let size = job.size;
    match result {
        Ok(done) => {
            c.metrics
                .object_done(done.result, done.action, size, started.elapsed());
            ctx.summary(|s| match done.result {
                ObjectResult::Rewritten | ObjectResult::Rewrapped => {
                    s.migrated += 1;
                    s.bytes_migrated += size;
                }
                _ => s.skipped += 1,
            });
            tracing::info!(key = %job.key, action = done.action.as_str(), result = done.result.as_str(),
                format = done.outcome.source_format.as_deref().unwrap_or(""), "object done");
            c.store.complete(job.id, &ctx.owner, &done.outcome).await?;
        }
        Err(ObjError::Conflict {
            message,
            mut etag,
            mut size,
        }) => {
            if etag.is_none() {
                c.s3_limit.wait().await;
                if let Ok(h) = c.client.head(&job.bucket, &job.key).await {
                    etag = h.etag;
                    size = Some(h.content_length);
                }
            }
            if job.conflicts + 1 >= MAX_CONFLICTS {
                finished_unsuccessfully(c, ObjectResult::Conflict, action, job.size, started);
                ctx.summary(|s| s.conflicts += 1);
                tracing::warn!(key = %job.key, error = %message, "object keeps changing: left as conflict");
                let outcome = Outcome {
                    error_code: Some("PreconditionFailed".into()),
                    http_status: Some(412),
                    last_error: Some(message),
                    ..Outcome::new(JobState::Conflict)
                };
                c.store.complete(job.id, &ctx.owner, &outcome).await?;
            } else {
                ctx.summary(|s| s.requeued += 1);
                c.metrics.retry(Service::S3, RetryReason::Conflict);
                tracing::info!(key = %job.key, error = %message, "object changed: requeued");
                c.store
                    .requeue(job.id, &ctx.owner, etag.as_deref(), size, &message)
                    .await?;
            }
        }
        Err(ObjError::Failed {
            code,
            http,
            message,
            ..
        }) => {
            finished_unsuccessfully(c, ObjectResult::Failed, action, job.size, started);
            ctx.summary(|s| s.failed += 1);
            tracing::warn!(key = %job.key, code = %code, error = %message, "object failed");
            let outcome = Outcome {
                error_code: Some(code),
                http_status: http,
                last_error: Some(message),
                ..Outcome::new(JobState::Failed)
            };
            c.store.complete(job.id, &ctx.owner, &outcome).await?;
        }
        Err(ObjError::Stopped) => {
            tracing::info!(key = %job.key, "stopping: released before it started");
            c.store.release(&[job.id], &ctx.owner).await?;
        }
    }
    Ok(())
}

/// Records a failed or conflicting object: under its action if classification got that far.
fn finished_unsuccessfully(
    c: &RekeyConfig,
    result: ObjectResult,
    action: Option<store::Action>,
    size: u64,
    started: Instant,
) {
    match action {
        Some(a) => c.metrics.object_done(result, a, size, started.elapsed()),
        None => c.metrics.object_unclassified(result, size),
    }
}

/// The `service` and `reason` labels of an object retried after a transient failure. KMS
/// failures reach here only after [`super::kms::RekeyKms`] has used up its own retries.
/// Network failures (`IoError`) count as `server_error`: the SDK rarely tells them apart.
fn retry_labels(code: &str, http: Option<u16>) -> (Service, RetryReason) {
    if code == codec::ErrorClass::KmsUnavailable.code() {
        return (Service::Kms, RetryReason::ServerError);
    }
    let reason = match (code, http) {
        ("SlowDown" | "Throttling", _) | (_, Some(503 | 429)) => RetryReason::Throttled,
        ("RequestTimeout", _) | (_, Some(408)) => RetryReason::Timeout,
        _ => RetryReason::ServerError,
    };
    (Service::S3, reason)
}

/// Objects the listing says are at most this large are fetched with one GET (head and body)
/// instead of HEAD, then GET: for small objects the request, not the bytes, is the cost. A
/// skipped one costs its body's transfer instead of a HEAD, so the bound stays small.
const GET_FIRST_MAX: u64 = 256 << 10;

/// What classification saw.
struct Inspected {
    head: ObjectHead,
    /// The body, when one GET fetched it with the head ([`GET_FIRST_MAX`]); not yet read.
    body: Option<ByteStream>,
    state: EnvelopeState,
    action: Action,
    instruction_etag: Option<String>,
}

/// HEAD (or, with `get_if_match`, a GET pinned to that ETag) + envelope + classification,
/// shared by the worker and `--dry-run`. `None`: the object is gone.
async fn inspect(
    ctx: &RekeyConfig,
    bucket: &str,
    key: &str,
    get_if_match: Option<&str>,
) -> Result<Option<Inspected>, ObjError> {
    ctx.s3_limit.wait().await;
    let mut fetched = match get_if_match {
        Some(etag) => ctx
            .client
            .get_with_head(bucket, key, Some(etag))
            .await
            .map(|(h, b)| (h, Some(b))),
        None => ctx.client.head(bucket, key).await.map(|h| (h, None)),
    };
    if let Err(ClientError::S3 {
        code: Some(code), ..
    }) = &fetched
        && code == "InvalidObjectState"
    {
        // Archived (an archive tier the listing did not show): HEAD still answers, and a
        // plaintext or current object is skipped without being restored.
        ctx.s3_limit.wait().await;
        fetched = ctx.client.head(bucket, key).await.map(|h| (h, None));
    }
    let (head, body) = match fetched {
        Ok(x) => x,
        Err(ClientError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    ctx.s3_limit.wait().await;
    let (state, instruction_etag) = ctx.client.envelope_and_instruction_etag(&head).await?;
    let action = plan::classify(&head, &state, &ctx.target, ctx.reencrypt);
    Ok(Some(Inspected {
        head,
        body,
        state,
        action,
        instruction_etag,
    }))
}

/// Storage classes whose objects a GET returns at once. GLACIER and DEEP_ARCHIVE objects
/// answer a GET with InvalidObjectState until restored, and INTELLIGENT_TIERING ones may sit in
/// an archive tier: those start with HEAD.
fn readable_at_once(storage_class: Option<&str>) -> bool {
    matches!(
        storage_class,
        None | Some(
            "STANDARD"
                | "STANDARD_IA"
                | "ONEZONE_IA"
                | "REDUCED_REDUNDANCY"
                | "GLACIER_IR"
                | "EXPRESS_ONEZONE"
        )
    )
}

/// Reads a small body that is not needed to its end, so the connection can be reused (an
/// unread response makes the HTTP client close it). Larger bodies are just dropped.
async fn discard(body: Option<ByteStream>, len: u64) {
    if let Some(body) = body
        && len <= GET_FIRST_MAX
    {
        let _ = body.collect().await;
    }
}

/// Aborts the multipart upload that an interrupted attempt at `job` started (its id is in the
/// job's intent), so that its parts are not left behind. One that was completed or aborted is
/// gone already (404 `NoSuchUpload`): nothing to do. Any other failure ends this attempt before
/// it writes (a transient failure, retried later), so the id stays in the intent until the
/// abort is confirmed.
async fn abort_orphan(c: &RekeyConfig, job: &Job, upload_id: &str) -> Result<(), ObjError> {
    match super::copy::abort_upload(c, &job.bucket, &job.key, upload_id).await {
        Ok(()) => {
            tracing::info!(key = %job.key, upload_id,
                "aborted the multipart upload of an interrupted attempt");
            Ok(())
        }
        Err(ClientError::NotFound { .. }) => {
            tracing::debug!(key = %job.key, upload_id, "no upload left from the last attempt");
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

/// One attempt at one object; `classified` is set as soon as the action is known.
async fn process(
    ctx: &Ctx,
    job: &Job,
    classified: &mut Option<store::Action>,
) -> Result<Done, ObjError> {
    let c = &ctx.config;
    if let Some(upload_id) = job.intent.as_ref().and_then(|i| i.upload_id.as_deref()) {
        abort_orphan(c, job, upload_id).await?;
    }
    // Small objects: one GET pinned to the listed ETag gives the head and the body.
    let get_first = (job.size <= GET_FIRST_MAX
        && !job.etag.is_empty()
        && readable_at_once(job.storage_class.as_deref()))
    .then_some(job.etag.as_str());
    let Some(Inspected {
        head,
        body,
        state,
        action,
        instruction_etag,
    }) = inspect(c, &job.bucket, &job.key, get_first).await?
    else {
        // Deleted since it was listed: nothing left to migrate.
        return Ok(Done {
            outcome: Outcome {
                action: Some(store::Action::Skip),
                skip_reason: Some("deleted".into()),
                ..Outcome::new(JobState::Done)
            },
            result: ObjectResult::Skipped,
            action: store::Action::Skip,
        });
    };
    if !job.etag.is_empty() && head.etag.as_deref() != Some(job.etag.as_str()) {
        // Changed since it was listed: classify again later from what is there now.
        return Err(ObjError::Conflict {
            message: format!(
                "changed since listed (ETag {} -> {})",
                job.etag,
                head.etag.as_deref().unwrap_or("?")
            ),
            etag: head.etag.clone(),
            size: Some(head.content_length),
        });
    }
    let format = match &state {
        EnvelopeState::Plaintext => "plaintext".to_owned(),
        EnvelopeState::Encrypted(env) => env.format_name(),
    };
    if let Action::Skip(SkipReason::Current) = action
        && let Some(mut done) = recovered(job, &head)
    {
        match (&state, c.verify) {
            (EnvelopeState::Encrypted(env), true) => {
                // The interrupted attempt never verified its write: decrypt it now (one KMS
                // Decrypt, tag checked) and record its plaintext SHA-256.
                let (_, sha) = authenticate(ctx, &head, env, body).await?;
                done.outcome.plaintext_sha256 = Some(sha);
            }
            _ => discard(body, head.content_length).await,
        }
        return Ok(done);
    }
    let env = match (action, state) {
        (Action::Skip(_), _) | (_, EnvelopeState::Plaintext) => {
            discard(body, head.content_length).await;
            return Ok(Done {
                outcome: Outcome {
                    source_format: Some(format),
                    action: Some(store::Action::Skip),
                    skip_reason: action.skip_reason().map(str::to_owned),
                    ..Outcome::new(JobState::Done)
                },
                result: ObjectResult::Skipped,
                action: store::Action::Skip,
            });
        }
        (_, EnvelopeState::Encrypted(env)) => env,
    };
    *classified = Some(action.store_action());
    // Before writing: what we are about to replace, so a crash between the write and the
    // outcome update does not lose the way back (see `recovered`).
    let intent = store::Intent {
        action: action.store_action(),
        source_format: format.clone(),
        source_etag: head.etag.clone(),
        source_version_id: head.version_id.clone(),
        upload_id: None,
    };
    match c.store.record_intent(job.id, &ctx.owner, &intent).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(ObjError::failed(
                "LeaseLost",
                "another worker holds this job now: not writing",
            ));
        }
        Err(e) => {
            return Err(ObjError::Failed {
                code: "StateError".into(),
                http: None,
                message: e.to_string(),
                transient: true,
            });
        }
    }
    // A multipart upload the write starts goes into the intent as soon as it exists, so that
    // a crash before it completes leaves its id for the next attempt to abort.
    let (note, mut started) = tokio::sync::mpsc::unbounded_channel();
    let write = {
        let (head, env) = (&head, &env);
        async move {
            let r = match action {
                Action::Rewrite => rewrite(ctx, head, env, body, &note).await,
                _ => rewrap(ctx, head, env, body, &note).await,
            };
            drop(note);
            r
        }
    };
    let record = async {
        while let Some(upload_id) = started.recv().await {
            let with = store::Intent {
                upload_id: Some(upload_id),
                ..intent.clone()
            };
            match c.store.record_intent(job.id, &ctx.owner, &with).await {
                Ok(true) => {}
                // The write is conditional on the source ETag, so it cannot clobber the next
                // holder's work; only the upload's id goes unrecorded.
                Ok(false) => tracing::warn!(key = %job.key, upload_id = with.upload_id.as_deref(),
                    "lease lost during the write: upload id not recorded"),
                Err(e) => {
                    tracing::warn!(key = %job.key, error = %e, "could not record the upload id")
                }
            }
        }
    };
    let (written, ()) = tokio::join!(write, record);
    let written = match written {
        Err(e @ ObjError::Conflict { .. }) => {
            // Our conditional write (or read) was refused: nothing of it landed, so a later
            // attempt must not take another writer's current object for ours. (An upload it
            // started was aborted by the client on the refusal.)
            if let Err(se) = c.store.clear_intent(job.id, &ctx.owner).await {
                tracing::warn!(key = %job.key, error = %se, "could not clear the intent");
            }
            return Err(e);
        }
        r => r?,
    };
    if env.location == Location::InstructionFile {
        let ikey = format!("{}{INSTRUCTION_SUFFIX}", head.key);
        c.s3_limit.wait().await;
        let t = Instant::now();
        let r = c
            .client
            .s3()
            .delete_object()
            .bucket(&head.bucket)
            .key(&ikey)
            // Only the file we read: a fresh one from another writer stays.
            .set_if_match(instruction_etag.clone())
            .send()
            .await;
        if let Err(e) = c.client.observe("DeleteObject", &head.bucket, &ikey, t, r) {
            // Harmless: the envelope in the metadata takes precedence over the stale file.
            tracing::warn!(key = %ikey, error = %e, "could not delete the stale instruction file");
        }
    }
    let store_action = action.store_action();
    Ok(Done {
        outcome: Outcome {
            source_format: Some(format),
            action: Some(store_action),
            result_etag: written.etag,
            result_version_id: written.version_id,
            previous_version_id: head.version_id.clone(),
            plaintext_sha256: written.sha256,
            ..Outcome::new(JobState::Done)
        },
        result: match store_action {
            store::Action::Rewrite => ObjectResult::Rewritten,
            _ => ObjectResult::Rewrapped,
        },
        action: store_action,
    })
}

/// A job whose earlier attempt wrote the object and died before recording it: the object is
/// current now, and the intent recorded before that write names a source ETag that is no
/// longer there. The write is recorded from the intent (action, format, replaced version),
/// so `report` keeps the way back; the caller verifies it as any write. `None` for any other
/// current object.
fn recovered(job: &Job, head: &ObjectHead) -> Option<Done> {
    let intent = job.intent.as_ref()?;
    if intent.source_etag.is_none() || intent.source_etag == head.etag {
        return None;
    }
    tracing::info!(key = %job.key, action = intent.action.as_str(),
        "recorded a write an interrupted run made");
    Some(Done {
        outcome: Outcome {
            source_format: Some(intent.source_format.clone()),
            action: Some(intent.action),
            result_etag: head.etag.clone(),
            result_version_id: head.version_id.clone(),
            previous_version_id: intent.source_version_id.clone(),
            ..Outcome::new(JobState::Done)
        },
        result: match intent.action {
            store::Action::Rewrite => ObjectResult::Rewritten,
            _ => ObjectResult::Rewrapped,
        },
        action: intent.action,
    })
}

/// User metadata to keep: everything but the envelope (and the instruction-file marker).
fn user_metadata(head: &ObjectHead) -> Metadata {
    let mut m = head.metadata.clone();
    for k in envelope::ENVELOPE_KEYS {
        m.remove(*k);
    }
    m.remove(INSTRUCTION_MARKER);
    m
}

/// The new envelope's KMS encryption context: `--context` + `aws:x-amz-cek-alg`.
fn target_context(c: &RekeyConfig) -> envelope::Context {
    let mut ec = c.context.clone();
    ec.insert(EC_CEK_ALG.into(), CEK_GCM.into());
    ec
}

/// The one source content key.
async fn source_key(c: &RekeyConfig, env: &Envelope) -> Result<SecretBytes, ObjError> {
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

/// The object's tags as an `x-amz-tagging` value, for a write that cannot copy them. The
/// GetObjectTagging request is skipped when the head said the object has none: S3 sends
/// `x-amz-tagging-count` on HEAD and GET when an object has tags *and* the caller may read
/// them, so an absent count means "no tags" only after a tag read in this run succeeded (the
/// first ones always read). A store that leaves the count out although the object has tags
/// is caught when a read finds tags the head did not count: from then on every write reads.
/// `--always-read-tags` reads them every time.
async fn read_tags(ctx: &Ctx, head: &ObjectHead) -> Result<Option<String>, ObjError> {
    let counted = head.tag_count.unwrap_or(0) > 0;
    if !must_read_tags(
        head.tag_count,
        ctx.tags_readable.load(Ordering::Relaxed),
        ctx.counts_unreliable.load(Ordering::Relaxed),
        ctx.config.always_read_tags,
    ) {
        return Ok(None);
    }
    let tags = tagging(&ctx.config, head).await?;
    ctx.tags_readable.store(true, Ordering::Relaxed);
    if tags.is_some() && !counted && !ctx.counts_unreliable.swap(true, Ordering::Relaxed) {
        tracing::warn!(key = %head.key, "the store does not report tag counts: reading the tags of every object");
    }
    Ok(tags)
}

/// Whether [`read_tags`] asks: always when the head counts tags, and for an object the head
/// says has none until a read proved tags readable (and the count trustworthy).
fn must_read_tags(count: Option<i32>, readable: bool, unreliable: bool, always: bool) -> bool {
    count.unwrap_or(0) > 0 || !readable || unreliable || always
}

async fn tagging(c: &RekeyConfig, head: &ObjectHead) -> Result<Option<String>, ObjError> {
    c.s3_limit.wait().await;
    let t = Instant::now();
    let r = c
        .client
        .s3()
        .get_object_tagging()
        .bucket(&head.bucket)
        .key(&head.key)
        .send()
        .await;
    let out = c
        .client
        .observe("GetObjectTagging", &head.bucket, &head.key, t, r)?;
    let tags: Vec<String> = out
        .tag_set()
        .iter()
        .map(|t| {
            format!(
                "{}={}",
                utf8_percent_encode(t.key(), TAG),
                utf8_percent_encode(t.value(), TAG)
            )
        })
        .collect();
    Ok((!tags.is_empty()).then(|| tags.join("&")))
}

async fn rewrite(
    ctx: &Ctx,
    head: &ObjectHead,
    env: &Envelope,
    body: Option<ByteStream>,
    upload_started: &UploadNote,
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
    let ec = target_context(c);
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
        body_of(c, head, body),
    )?;
    let mut iv = vec![0u8; GCM_IV_LEN];
    fill_random(&mut iv);
    let encryptor = content::gcm_encryptor(cek.expose(), &iv, &[]).map_err(CodecError::from)?;
    let new_env = Envelope {
        version: Version::V2,
        content_alg: ContentAlg::AesGcm,
        wrap: WrapAlg::KmsContext,
        encrypted_key: blob,
        iv,
        matdesc: envelope::Context::new(),
        encryption_context: ec.clone(),
        message_id: Vec::new(),
        commitment: Vec::new(),
        plaintext_length: plaintext_len,
        location: Location::ObjectMetadata,
    };
    let decryptor = ObjectDecryptor::new(env, &src_key)?;
    let mut reader = DecryptReader::new(body.into_async_read(), decryptor, head.content_length);
    let req = PutRequest {
        bucket: head.bucket.clone(),
        key: head.key.clone(),
        format: WriteFormat::V2,
        context: c.context.clone(),
        metadata: user_metadata(head),
        attrs: head.attrs.clone(),
        tagging,
        if_match: head.etag.clone(),
        if_none_match: false,
        plaintext_len,
        // Decrypting never yields more than the stored ciphertext.
        plaintext_len_max: Some(head.content_length),
        upload_started: Some(upload_started.clone()),
    };
    c.s3_limit.wait().await;
    let put = c
        .client
        .put_encrypted(
            &req,
            NewEncryption {
                envelope: new_env.clone(),
                encryptor,
            },
            &mut reader,
        )
        .await;
    if reader.auth_failed {
        return Err(CodecError::DecryptionFailed.into());
    }
    let put = put?;
    let sha = reader.sha256_hex();
    // Its buffers are not needed for the verify read.
    drop(reader);
    if c.verify {
        let got = verify_read(c, head, put.etag.as_deref(), &put.envelope, Some(&cek)).await?;
        if got.as_deref() != Some(sha.as_str()) {
            return Err(ObjError::failed(
                "VerifyFailed",
                "the rewritten object's plaintext SHA-256 differs from the source's",
            ));
        }
    }
    Ok(Written {
        etag: put.etag,
        version_id: put.version_id,
        sha256: Some(sha),
    })
}

/// The body: the one [`inspect`]'s GET fetched, or a GET pinned to the ETag HEAD saw.
async fn body_of(
    c: &RekeyConfig,
    head: &ObjectHead,
    body: Option<ByteStream>,
) -> Result<ByteStream, ObjError> {
    match body {
        Some(b) => Ok(b),
        None => {
            c.s3_limit.wait().await;
            Ok(c.client.get_body(head, None).await?)
        }
    }
}

/// Unwraps the object's content key and decrypts its whole body with it (tag checked; the
/// body fetched unless `body` has it), dropping the plaintext as it goes. Returns the key and
/// the plaintext SHA-256.
async fn authenticate(
    ctx: &Ctx,
    head: &ObjectHead,
    env: &Envelope,
    body: Option<ByteStream>,
) -> Result<(SecretBytes, String), ObjError> {
    let c = &ctx.config;
    let _slot = ctx.large_slot(head).await?;
    let cek = source_key(c, env).await?;
    let body = body_of(c, head, body).await?;
    let dec = ObjectDecryptor::new(env, &cek)?;
    let mut reader = DecryptReader::new(body.into_async_read(), dec, head.content_length);
    let r = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
    if reader.auth_failed {
        return Err(CodecError::DecryptionFailed.into());
    }
    r.map_err(ClientError::Io)?;
    Ok((cek, reader.sha256_hex()))
}

async fn rewrap(
    ctx: &Ctx,
    head: &ObjectHead,
    env: &Envelope,
    body: Option<ByteStream>,
    upload_started: &UploadNote,
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
    let ec = target_context(c);
    let (blob, cek, source_sha) = if env.wrap.is_kms() {
        // One ReEncrypt: the content key never leaves KMS, so the body cannot be checked
        // here; its tag is still checked by every reader (`--reencrypt` checks it now).
        discard(body, head.content_length).await;
        (
            c.kms
                .re_encrypt(
                    &env.encrypted_key,
                    &env.encryption_context,
                    &c.target.key_id,
                    &ec,
                )
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
    };
    let new_env = Envelope {
        version: Version::V2,
        content_alg: ContentAlg::AesGcm,
        wrap: WrapAlg::KmsContext,
        encrypted_key: blob,
        iv: env.iv.clone(),
        matdesc: envelope::Context::new(),
        encryption_context: ec,
        message_id: Vec::new(),
        commitment: Vec::new(),
        plaintext_length: env.plaintext_len_for(head.content_length),
        location: Location::ObjectMetadata,
    };
    let mut metadata = user_metadata(head);
    metadata.extend(new_env.to_metadata());
    let (etag, version_id) = if multipart {
        let copied =
            super::copy::copy_onto_itself(c, head, metadata, tags, Some(upload_started)).await?;
        tracing::debug!(key = %head.key, parts = copied.parts, "multipart copy done");
        (copied.etag, copied.version_id)
    } else {
        copy_object(c, head, metadata).await?
    };
    if c.verify {
        // A single CopyObject keeps a plain (MD5) ETag: the same ETag means the same bytes,
        // already authenticated above, so the envelope is all left to check.
        let same_bytes = !multipart
            && source_sha.is_some()
            && etag.is_some()
            && etag == head.etag
            && !etag.as_deref().unwrap_or_default().contains('-');
        let key = if same_bytes { None } else { cek.as_ref() };
        let got = verify_read(c, head, etag.as_deref(), &new_env, key).await?;
        if got.is_some() && got != source_sha {
            return Err(ObjError::failed(
                "VerifyFailed",
                "the rewrapped object's plaintext SHA-256 differs from the source's",
            ));
        }
    }
    Ok(Written {
        etag,
        version_id,
        sha256: source_sha,
    })
}

/// `bucket/key` as CopySource wants it (the key URL-encoded, slashes kept).
pub(super) fn copy_source(head: &ObjectHead) -> String {
    format!(
        "{}/{}",
        head.bucket,
        utf8_percent_encode(&head.key, COPY_SOURCE)
    )
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

/// A read buffer for a body of `len` bytes: its size plus slack, between 8 and 256 KiB.
fn buffer_len(len: u64) -> usize {
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

/// `--dry-run`: classifies every pending job (HEAD + envelope; no KMS, no writes), records the
/// plan in its row (state left `pending`: `status` and `report` show it) and tallies objects
/// and bytes by planned action.
pub async fn dry_run(config: &RekeyConfig, shutdown: &Shutdown) -> Result<WorkSummary, RekeyError> {
    let rows: Vec<_> = config
        .store
        .report(Some(JobState::Pending))
        .try_collect()
        .await?;
    let planned = futures::stream::iter(rows)
        .take_while(|_| std::future::ready(!shutdown.is_stopping()))
        .map(|row| async move {
            let mut plan = Outcome::new(JobState::Pending);
            let (label, bytes) = match inspect(config, &row.bucket, &row.key, None).await {
                Ok(Some(Inspected {
                    head,
                    state,
                    action,
                    ..
                })) => {
                    let format = match &state {
                        EnvelopeState::Plaintext => "plaintext".to_owned(),
                        EnvelopeState::Encrypted(e) => e.format_name(),
                    };
                    let label = match action {
                        Action::Skip(r) => format!("skip:{}", r.as_str()),
                        a => a.store_action().as_str().to_owned(),
                    };
                    tracing::info!(key = %row.key, format = %format, plan = %label, "planned");
                    plan.source_format = Some(format);
                    plan.action = Some(action.store_action());
                    plan.skip_reason = action.skip_reason().map(str::to_owned);
                    (label, head.content_length)
                }
                Ok(None) => ("skip:deleted".to_owned(), 0),
                Err(ObjError::Failed { code, message, .. }) => {
                    tracing::warn!(key = %row.key, code = %code, error = %message, "would fail");
                    let label = format!("fail:{code}");
                    plan.error_code = Some(code);
                    plan.last_error = Some(message);
                    (label, 0)
                }
                Err(ObjError::Conflict { .. }) => ("conflict".to_owned(), 0),
                // Only a rewrite waits for a slot; a dry run does not rewrite.
                Err(ObjError::Stopped) => ("stopped".to_owned(), 0),
            };
            // No object metric: nothing was processed. The HEADs show in the S3 requests.
            config.store.record_plan(row.id, &plan).await?;
            Ok::<_, RekeyError>((label, bytes))
        })
        .buffer_unordered(config.concurrency.max(1))
        .try_collect::<Vec<_>>()
        .await?;
    let mut summary = WorkSummary::default();
    for (label, bytes) in planned {
        let e = summary.planned.entry(label).or_default();
        e.0 += 1;
        e.1 += bytes;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_keeps_slashes_and_encodes_the_rest() {
        let k = "dir/naïve file+x?.txt";
        assert_eq!(
            utf8_percent_encode(k, COPY_SOURCE).to_string(),
            "dir/na%C3%AFve%20file%2Bx%3F.txt"
        );
    }

    #[test]
    fn archived_storage_classes_start_with_head() {
        for class in [
            None,
            Some("STANDARD"),
            Some("STANDARD_IA"),
            Some("GLACIER_IR"),
        ] {
            assert!(readable_at_once(class), "{class:?}");
        }
        for class in [
            "GLACIER",
            "DEEP_ARCHIVE",
            "INTELLIGENT_TIERING",
            "SOMETHING_NEW",
        ] {
            assert!(!readable_at_once(Some(class)), "{class}");
        }
    }

    #[test]
    fn tags_are_read_unless_the_count_is_known_to_be_trustworthy() {
        // Counted tags: always read.
        assert!(must_read_tags(Some(2), true, false, false));
        // No count: read until a read succeeded, then trust the count...
        assert!(must_read_tags(None, false, false, false));
        assert!(!must_read_tags(None, true, false, false));
        assert!(!must_read_tags(Some(0), true, false, false));
        // ...unless the store was caught leaving it out, or the user asked.
        assert!(must_read_tags(None, true, true, false));
        assert!(must_read_tags(None, true, false, true));
    }

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
