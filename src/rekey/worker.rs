//! The worker pool: claims jobs with a lease, runs up to [`in_flight`] of them as tokio tasks
//! (a few per `--concurrency`, which bounds the KMS requests in flight), and records each
//! outcome. One attempt at one object is [`super::object::process`]; this file
//! owns the job around it: retries of transient failures, the per-object deadline, the cap on
//! claims, and the one store write that records the outcome.
//!
//! - A 412/409 (the object changed) requeues the job with the new ETag; the third conflict marks
//!   it `conflict`. A newer object is never overwritten.
//! - A task that panics is recorded `failed` (code `Panic`), the others go on, and the run ends
//!   with an error.
//! - A store error in the claim loop stops claiming; the objects in flight finish and are
//!   recorded before the error is returned (none is dropped at an arbitrary step).
//!
//! Graceful stop: claiming stops, in-flight objects finish, claimed-but-unstarted jobs are
//! released. A killed worker's leases lapse (or, on the same host, are released at the next start
//! once its pid is gone).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, TryStreamExt};
use tokio::task::JoinSet;

use crate::codec;
use crate::metrics::{ObjectResult, RetryReason, Service};
use crate::store::{self, Job, JobState, JobStore, Outcome};

use super::inspect::GET_FIRST_MAX;
use super::kms::backoff;
use super::object::process;
use super::task::{Ctx, ObjError, large_slots, within_deadline};
use super::{RekeyConfig, RekeyError, Shutdown};

/// Attempts per object on transient S3/KMS failures within one claim (first try included).
const MAX_ATTEMPTS: u32 = 5;
/// Conflicts (the object changed under us) before a job is left in state `conflict`.
const MAX_CONFLICTS: u32 = 3;
/// How often the queue gauges are refreshed from the store.
const GAUGE_INTERVAL: Duration = Duration::from_secs(3);
/// The per-object deadline grows with the object: this many bytes per second at the least
/// (a 5 GiB rewrite gets ~21 minutes on top of `--object-timeout`).
const DEADLINE_MIN_RATE: u64 = 4 << 20;

/// Objects in flight per `--concurrency` (which bounds the KMS requests in flight,
/// [`super::kms::RekeyKms::with_concurrency`]). A small object is a chain of round trips of
/// which one holds a KMS request: GET (with GenerateDataKey beside it), conditional PUT,
/// read-back GET, and the intent and outcome writes. With one object per KMS permit the
/// permits idle while the S3 requests run (measured: 0.43-0.57x of a bare GenerateDataKey loop
/// at equal concurrency); with four, other objects' S3 requests run around every KMS call.
/// S3 requests are cheap and plentiful, KMS requests are the quota: this spends the former to
/// keep the latter busy.
pub const PIPELINE_DEPTH: usize = 4;

/// Objects in flight at once: [`PIPELINE_DEPTH`] per `--concurrency`, and no more beyond
/// `--concurrency` than the buffer budget holds small objects (`GET_FIRST_MAX`, 256 KiB, each: the
/// largest body a GET fetches with its head): the pipeline's extra objects cost memory within
/// `--max-buffer-mib`, whatever their size (larger ones wait for a slot before they read
/// anything: `--concurrency` medium slots up to one part, [`large_slots`] above).
///
/// A claim counts an attempt on every row it takes, so a process killed with its pool full
/// charges an attempt to up to this many rows (4x as many as before the pipeline): with
/// `--max-attempts` at its default, a pod that crash-loops on one object fails its batch
/// neighbours as `TooManyAttempts` after the same number of crashes (`--retry-failed` takes
/// them back).
pub fn in_flight(concurrency: usize, budget_bytes: u64) -> usize {
    let concurrency = concurrency.max(1);
    let by_budget = usize::try_from(budget_bytes / GET_FIRST_MAX).unwrap_or(usize::MAX);
    concurrency
        .saturating_mul(PIPELINE_DEPTH)
        .min(concurrency.saturating_add(by_budget))
}

/// Claims per refill of the pool: the pool waits until this many of its `in_flight` slots are
/// free and claims a multiple of it in one statement, instead of one claim (one SQLite write
/// transaction, one prepared statement per distinct size) per finished object.
fn claim_batch(in_flight: usize) -> usize {
    (in_flight / 8).max(1)
}

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

/// `host:pid:nonce:start`: unique per process; the host and pid let a restarted worker on the same
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
///
/// Only on SQLite, where the file lock makes this the one live process: on a shared queue a
/// peer with the same host and pid may be alive in another container (host networking, each
/// its own pid 1), so there leases only lapse.
async fn release_dead_leases(store: &JobStore, me: &str) -> Result<u64, RekeyError> {
    if store.is_shared() {
        return Ok(0);
    }
    let running: Vec<_> = store.report(Some(JobState::Running)).try_collect().await?;
    let mut by_owner: HashMap<String, Vec<i64>> = HashMap::new();
    for row in running {
        let Some(job) = store.job(row.id).await? else {
            continue;
        };
        let Some(owner) = job.lease_owner else {
            continue;
        };
        if super::dead_owner_on_this_host(&owner, me) {
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
        medium: tokio::sync::Semaphore::new(config.concurrency.max(1)),
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

/// How often a process with nothing left to claim looks again while other processes sharing
/// the queue still hold rows (their leases may lapse).
const SHARED_POLL: Duration = Duration::from_secs(1);

/// What a task hands back: its job id and how recording its outcome went (`Err` of the outer
/// result: the task panicked).
type TaskResult = (i64, Result<Result<(), RekeyError>, String>);

async fn claim_loop(
    ctx: &Arc<Ctx>,
    shutdown: &Shutdown,
    lease: Duration,
) -> Result<(), RekeyError> {
    let store = &ctx.config.store;
    let slots = in_flight(
        ctx.config.concurrency,
        ctx.config.client.buffer_budget().bytes(),
    );
    let batch = claim_batch(slots);
    let mut tasks: JoinSet<TaskResult> = JoinSet::new();
    // A store error: claiming stops, the objects in flight finish.
    let mut first_error = None;
    // A panicked task: its job is recorded failed and the batch goes on; the run fails at the end.
    let mut panicked = None;
    loop {
        if shutdown.is_stopping() || first_error.is_some() {
            break;
        }
        let free = slots.saturating_sub(tasks.len());
        // A whole number of batches (an empty pool takes what it can): few claims, and few
        // distinct claim statements to prepare.
        let want = if tasks.is_empty() {
            free
        } else {
            free - free % batch
        };
        let jobs = if want > 0 {
            match store.claim(&ctx.owner, want as u32, lease).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    // Stop claiming; the objects in flight finish and are recorded below.
                    tracing::error!(error = %e, "claiming jobs failed: finishing the objects in flight");
                    first_error = Some(e.into());
                    break;
                }
            }
        } else {
            Vec::new()
        };
        if jobs.is_empty() {
            if tasks.is_empty() {
                // A shared queue (PostgreSQL): other processes may still hold rows, and one of
                // them may die; its rows come back when their leases lapse. Stay until no row
                // is left unfinished, so the run ends with its last object, not with the
                // first process to run dry.
                if store.is_shared() {
                    match store.has_unfinished().await {
                        Ok(true) => {
                            tokio::select! {
                                _ = tokio::time::sleep((lease / 3).min(SHARED_POLL)) => {}
                                _ = shutdown.stopped() => {}
                            }
                            continue;
                        }
                        Ok(false) => {}
                        Err(e) => first_error = Some(e.into()),
                    }
                }
                break;
            }
            tokio::select! {
                r = tasks.join_next() => note_task(ctx, r, &mut first_error, &mut panicked).await,
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
                let r = AssertUnwindSafe(handle_job(&ctx, job))
                    .catch_unwind()
                    .await
                    .map_err(|p| panic_message(p.as_ref()));
                if let Ok(mut s) = ctx.inflight.lock() {
                    s.remove(&id);
                }
                (id, r)
            });
        }
        if !unstarted.is_empty()
            && let Err(e) = store.release(&unstarted, &ctx.owner).await
        {
            first_error.get_or_insert(e.into());
        }
    }
    while let Some(r) = tasks.join_next().await {
        note_task(ctx, Some(r), &mut first_error, &mut panicked).await;
    }
    match first_error.or(panicked) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The text of a panic's payload.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}

/// Takes a finished task's result: a failed outcome record (`first`: claiming stops) or a panic
/// (`panicked`: the batch goes on) becomes the run's error, so the run exits non-zero; a
/// panicked job is recorded `failed` so it does not hold its lease until the process exits,
/// nor come back as if nothing happened.
async fn note_task(
    ctx: &Ctx,
    r: Option<Result<TaskResult, tokio::task::JoinError>>,
    first: &mut Option<RekeyError>,
    panicked: &mut Option<RekeyError>,
) {
    match r {
        Some(Ok((_, Ok(Err(e))))) => {
            tracing::error!(error = %e, "recording a job outcome failed");
            first.get_or_insert(e);
        }
        Some(Ok((id, Err(panic)))) => {
            tracing::error!(job = id, panic = %panic, "worker task panicked: job recorded failed");
            let outcome = Outcome {
                error_code: Some("Panic".into()),
                last_error: Some(format!("the worker panicked: {panic}")),
                keep_intent: true,
                ..Outcome::new(JobState::Failed)
            };
            ctx.summary(|s| s.failed += 1);
            if let Err(e) = ctx.config.store.complete(id, &ctx.owner, &outcome).await {
                tracing::error!(error = %e, job = id, "could not record the panicked job");
            }
            panicked.get_or_insert(RekeyError::Internal(format!(
                "a worker task panicked: {panic}"
            )));
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "worker task ended abnormally");
            panicked.get_or_insert(RekeyError::Internal(format!("a worker task ended: {e}")));
        }
        _ => {}
    }
}

/// The deadline of one attempt at an object of `size` bytes: `--object-timeout`, plus the time
/// to move its bytes at [`DEADLINE_MIN_RATE`]; time spent waiting for a large-object slot is
/// not counted ([`within_deadline`]).
fn deadline(c: &RekeyConfig, size: u64) -> Duration {
    c.object_timeout + Duration::from_secs(size / DEADLINE_MIN_RATE)
}

/// Processes one job (retrying transient failures) and records its outcome.
async fn handle_job(ctx: &Ctx, mut job: Job) -> Result<(), RekeyError> {
    let started = Instant::now();
    let c = &ctx.config;
    let key = crate::logkey::log_key(&job.key);
    let size = job.size;
    // The action classification chose, once known: the `action` label of a failure's duration.
    let mut action = None;
    let result = if job.attempts > c.max_claims {
        // Claimed again and again without an outcome: each time the process died or hung on
        // it. Left failed (intent kept) for `--retry-failed`, instead of coming back every run.
        Err(ObjError::Failed {
            code: "TooManyAttempts".into(),
            http: None,
            message: format!(
                "claimed {} times without an outcome (the process died or hung on it each time); \
                 left for --retry-failed",
                job.attempts - 1
            ),
            transient: false,
        })
    } else {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = match within_deadline(deadline(c, job.size), process(ctx, &job, &mut action))
                .await
            {
                Some(r) => r,
                // Dropping the attempt cancels its requests; its intent says what the next
                // attempt must settle.
                None => Err(ObjError::Failed {
                    code: "ObjectTimeout".into(),
                    http: None,
                    message: format!(
                        "no outcome within {:?} (--object-timeout)",
                        deadline(c, job.size)
                    ),
                    transient: true,
                }),
            };
            match r {
                Err(e) if attempt < MAX_ATTEMPTS && e.transient().is_some() => {
                    if let Some((code, http, message)) = e.transient() {
                        let (service, reason) = retry_labels(code, http);
                        c.metrics.retry(service, reason);
                        tracing::debug!(%key, attempt, error = %message, "retrying object");
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                    // The failed attempt may have recorded an intent (a write to settle, an
                    // upload to abort): the next one reads it as it is now.
                    if let Ok(Some(fresh)) = c.store.job(job.id).await {
                        job.intent = fresh.intent;
                    }
                }
                r => break r,
            }
        }
    };
    let (error, written) = match result {
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
            tracing::info!(%key, action = done.action.as_str(), result = done.result.as_str(),
                format = done.outcome.source_format.as_deref().unwrap_or(""), "object done");
            crate::failpoint!("before-record");
            record_outcome(c, &job, &ctx.owner, &done.outcome).await?;
            return Ok(());
        }
        Err(ObjError::AfterWrite { error, written }) => (*error, Some(written)),
        Err(e) => (e, None),
    };
    match error {
        ObjError::Conflict { message, .. } if written.is_some() => {
            // Our write landed, then another writer replaced it (the verify read got 412): the
            // record keeps both, our write (the replaced version: the way back) and the
            // conflict. The newer object is never overwritten; --retry-failed looks again.
            finished_unsuccessfully(c, ObjectResult::Conflict, action, job.size, started);
            ctx.summary(|s| s.conflicts += 1);
            tracing::warn!(%key, error = %message, "object replaced right after our write: left as conflict");
            let base = written
                .map(|w| *w)
                .unwrap_or_else(|| Outcome::new(JobState::Conflict));
            let outcome = Outcome {
                state: JobState::Conflict,
                error_code: Some("PreconditionFailed".into()),
                http_status: Some(412),
                last_error: Some(format!(
                    "our write landed, then the object changed: {message}"
                )),
                keep_intent: true,
                ..base
            };
            record_outcome(c, &job, &ctx.owner, &outcome).await?;
        }
        ObjError::Conflict {
            message,
            mut etag,
            mut size,
        } => {
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
                tracing::warn!(%key, error = %message, "object keeps changing: left as conflict");
                let outcome = Outcome {
                    error_code: Some("PreconditionFailed".into()),
                    http_status: Some(412),
                    last_error: Some(message),
                    keep_intent: true,
                    ..Outcome::new(JobState::Conflict)
                };
                record_outcome(c, &job, &ctx.owner, &outcome).await?;
            } else {
                ctx.summary(|s| s.requeued += 1);
                c.metrics.retry(Service::S3, RetryReason::Conflict);
                tracing::info!(%key, error = %message, "object changed: requeued");
                c.store
                    .requeue(job.id, &ctx.owner, etag.as_deref(), size, &message)
                    .await?;
            }
        }
        ObjError::Failed {
            code,
            http,
            message,
            ..
        } => {
            finished_unsuccessfully(c, ObjectResult::Failed, action, job.size, started);
            ctx.summary(|s| s.failed += 1);
            tracing::warn!(%key, code = %code, error = %message, "object failed");
            // A failure after our write landed keeps what was written (the report shows the
            // written ETag and the replaced version; the scanner leaves the row alone) and the
            // intent, so the next attempt recognises the write and settles it.
            let base = written.map(|w| *w).unwrap_or_else(|| Outcome {
                keep_intent: true,
                ..Outcome::new(JobState::Failed)
            });
            let outcome = Outcome {
                state: JobState::Failed,
                error_code: Some(code),
                http_status: http,
                last_error: Some(message),
                keep_intent: true,
                ..base
            };
            record_outcome(c, &job, &ctx.owner, &outcome).await?;
        }
        ObjError::Stopped => {
            tracing::info!(%key, "stopping: released before it started");
            c.store.release(&[job.id], &ctx.owner).await?;
        }
        ObjError::AfterWrite { .. } => {
            // `after_write` never nests; record it as the failure it wraps would be.
            return Err(RekeyError::Internal("nested after-write failure".into()));
        }
    }
    Ok(())
}

/// Records a job's outcome. Refused when another worker holds the job now (this one's lease
/// lapsed): said in the log, as that worker's record is the one that counts.
async fn record_outcome(
    c: &RekeyConfig,
    job: &Job,
    owner: &str,
    outcome: &Outcome,
) -> Result<(), RekeyError> {
    if !c.store.complete(job.id, owner, outcome).await? {
        tracing::warn!(key = %crate::logkey::log_key(&job.key),
            "lease lost before the outcome was recorded: another worker holds this object now");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_timeouts_are_told_apart() {
        assert_eq!(
            retry_labels("SlowDown", Some(503)),
            (Service::S3, RetryReason::Throttled)
        );
        assert_eq!(
            retry_labels("RequestTimeout", Some(400)),
            (Service::S3, RetryReason::Timeout)
        );
        assert_eq!(
            retry_labels("IoError", None),
            (Service::S3, RetryReason::ServerError)
        );
        assert_eq!(
            retry_labels(codec::ErrorClass::KmsUnavailable.code(), None),
            (Service::Kms, RetryReason::ServerError)
        );
    }

    #[test]
    fn objects_in_flight_are_a_few_per_kms_slot_within_the_budget() {
        let mib = 1u64 << 20;
        // The defaults: 64 KMS slots, 64 MiB: 4 objects per slot.
        assert_eq!(in_flight(64, 64 * mib), 256);
        assert_eq!(in_flight(16, 64 * mib), 64);
        // The budget caps the pipeline's extra objects at 256 KiB each.
        assert_eq!(in_flight(256, 64 * mib), 256 + 256);
        assert_eq!(in_flight(4, mib / 2), 4 + 2);
        // Never fewer than --concurrency, nor than one.
        assert_eq!(in_flight(8, 0), 8);
        assert_eq!(in_flight(0, 0), 1);
        // Claims come in batches of an eighth of the pool.
        assert_eq!(claim_batch(256), 32);
        assert_eq!(claim_batch(4), 1);
    }

    #[test]
    fn panic_payloads_are_read() {
        let p: Box<dyn std::any::Any + Send> = Box::new("boom");
        assert_eq!(panic_message(p.as_ref()), "boom");
        let p: Box<dyn std::any::Any + Send> = Box::new(String::from("bang"));
        assert_eq!(panic_message(p.as_ref()), "bang");
    }
}
