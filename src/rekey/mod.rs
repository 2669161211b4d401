//! `s3cse rekey`: bring a bucket of legacy client-side-encrypted objects to V2 `kms+context`
//! AES-GCM under one KMS key, resumably.
//!
//! # Layout
//! - [`plan`]: pure classification, HEAD + envelope -> skip / rewrite / rewrap.
//! - [`scan`]: ListObjectsV2 -> the job table, as claimable key ranges (`--listers`, split
//!   among listers and processes), each with a checkpoint; `--shard I/N`.
//! - [`ingest`]: `--manifest`, an S3 Inventory or Batch Operations manifest -> the job table,
//!   its data files claimable with a line checkpoint each (instead of [`scan`]).
//! - [`report`]: the job table -> an S3 Batch Operations completion report in S3.
//! - [`worker`]: the pool: the claim loop (leases, 4 tasks per `--concurrency` KMS slot, graceful
//!   stop), retries,
//!   deadlines, and the one store write that records each outcome.
//! - `object`: one attempt at one object, the steps in order; the steps each have a file:
//!   `inspect` (HEAD + envelope + classification), `rewrite`, `rewrap`, `rotate`
//!   (`--keep-instruction-files`: only `<key>.instruction` rewritten), `verify`, `recover`
//!   (what a crash or a lost answer left: settled from the job's intent), with `read`
//!   (decrypting a source body), `tags`, and `task` (what the steps share). Imports go one way:
//!   worker -> object -> steps -> task.
//! - `dryrun`: `--dry-run`, inspection only.
//! - [`copy`]: the multipart copy onto itself that rewraps objects above CopyObject's 5 GiB.
//! - [`kms`]: the KMS decorator (rate limit, retries, metrics) and DescribeKey.
//! - [`limit`]: the shared token buckets of `--s3-rps` / `--kms-rps`.
//! - [`noncurrent`]: `--noncurrent report|delete`, the old versions of a versioned bucket,
//!   after the workers ([`noncurrent::sweep`]).
//!
//! Metrics are the crate's [`crate::metrics::Metrics`] (one per process, shared as
//! `Arc<Metrics>`); the CLI serves, pushes and writes them.
//!
//! [`run`] takes every dependency as an argument (client, store, KMS, metrics), so tests drive
//! it directly; the CLI builds them.

pub mod copy;
mod dryrun;
pub mod ingest;
mod inspect;
pub mod kms;
pub mod limit;
pub mod noncurrent;
mod object;
pub mod owner;
pub mod plan;
mod read;
mod recover;
pub mod report;
mod rewrap;
mod rewrite;
mod rotate;
pub mod scan;
mod tags;
mod task;
mod verify;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::client::{ClientError, S3Cse};
use crate::envelope::Context;
use crate::keyring::{KmsClient, KmsError};
use crate::metrics::Metrics;
use crate::store::{JobStore, ScanKey, StoreError};

pub use self::plan::{Action, Goal, SkipReason, TargetFormat, TargetKey};
pub use self::scan::{ScanSummary, Shard};
pub use self::task::fingerprint;
pub use self::worker::WorkSummary;

/// Errors that stop a run (per-object failures are job outcomes, not errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RekeyError {
    /// The job table could not be read or written.
    #[error("state file: {0}")]
    Store(#[from] StoreError),
    /// A bucket-level S3 request failed (listing).
    #[error(transparent)]
    S3(#[from] ClientError),
    /// The listing cannot be followed to its end (a truncated page without a continuation
    /// token, or one that makes no progress): the scan stops unfinished, never taken as done.
    #[error("listing {0}")]
    Listing(String),
    /// The manifest (`--manifest`) cannot be read: missing, not the format it claims, a data
    /// file whose MD5 does not match. (A bad row is reported and skipped, not this.)
    #[error("manifest {0}")]
    Manifest(String),
    /// KMS refused the target key (DescribeKey).
    #[error("KMS: {0}")]
    Kms(#[from] KmsError),
    /// Invalid configuration.
    #[error("{0}")]
    Config(String),
    /// A bug: a worker task panicked (its job is recorded failed) or ended abnormally.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Everything one run needs. Built by the CLI, or by tests.
#[derive(Clone)]
pub struct RekeyConfig {
    pub bucket: String,
    /// Key prefix to list (`""`: the whole bucket).
    pub prefix: String,
    pub shard: Option<Shard>,
    /// Take the keys from this manifest instead of listing (`--manifest`).
    pub manifest: Option<ingest::ManifestJob>,
    /// Keys per ListObjectsV2 page ([`scan::MAX_LIST_PAGE_SIZE`], S3's maximum, by default).
    pub list_page_size: i32,
    /// Listers (and manifest ingesters) in this process (`--listers`): ranges listed, or
    /// manifest data files read, at once.
    pub listers: usize,
    /// User encryption context of the new envelopes (`aws:x-amz-cek-alg` is added).
    pub context: Context,
    /// KMS requests in flight at once (`--concurrency`); the workers keep up to
    /// [`worker::PIPELINE_DEPTH`] objects per KMS slot in flight ([`worker::in_flight`]), and
    /// `--dry-run` classifies this many objects at once.
    pub concurrency: usize,
    /// Classify only: HEAD + envelope, no writes (KMS only to learn which blobs are under the
    /// target key, [`owner`]).
    pub dry_run: bool,
    /// Rewrite GCM objects too (a fresh data key), instead of rewrapping their key.
    pub reencrypt: bool,
    /// The target format and where envelopes may stay (`--target-format`,
    /// `--keep-instruction-files`): what counts as current ([`plan::Goal`]).
    pub goal: plan::Goal,
    /// `--commitment require`: a source that is not V3 (key-committing) is refused, recorded
    /// failed with `CommitmentRequired` and left untouched, before its key is unwrapped.
    pub require_commitment: bool,
    /// Read every written object back and compare.
    pub verify: bool,
    /// Claims of one job without an outcome (each a process that died or hung on it) before it
    /// is recorded failed (`TooManyAttempts`) instead of coming back every run.
    pub max_claims: u32,
    /// Deadline of one attempt at one object, plus a second per 4 MiB of it: a hung request
    /// does not hold its lease forever. The attempt is dropped and retried.
    pub object_timeout: Duration,
    /// Read tags with GetObjectTagging before every rewrite, not only when the head counts
    /// some (for stores that do not send `x-amz-tagging-count`).
    pub always_read_tags: bool,
    /// Lease of a claimed job; renewed while the job runs, so only a dead worker's lease lapses.
    pub lease: Duration,
    /// Run the scan (`rekey`, `scan`).
    pub scan: bool,
    /// Drain the queue (`rekey`, `work`).
    pub work: bool,
    /// S3 client with the source keyring: the legacy raw keys plus KMS, decrypting only under
    /// the source keys `--source-kms-key` / `--source-kms-account` allow (the target's account by
    /// default; checked on every Decrypt and ReEncrypt answer).
    pub client: S3Cse,
    /// Which attributes need a read beyond the HEAD (ACL grants, Object Lock), found once per
    /// bucket at start ([`crate::client::AttributePolicy::discover`]).
    pub attribute_policy: crate::client::AttributePolicy,
    /// The decorated KMS client (rate limit, retries, metrics).
    pub kms: Arc<dyn KmsClient>,
    pub target: TargetKey,
    /// Whether a blob is under `target` ([`owner::KeyOwner`]: the key id, a learned signature,
    /// or KMS asked through `kms`).
    pub owner: Arc<owner::KeyOwner>,
    pub store: JobStore,
    /// The process's metrics: S3 requests are recorded by `client`'s observer, KMS requests by
    /// `kms`, objects, retries and queue depth by the workers.
    pub metrics: Arc<Metrics>,
    pub s3_limit: limit::RateLimit,
    /// Rewraps of objects larger than this use a multipart copy (UploadPartCopy) instead of one
    /// CopyObject. S3 caps CopyObject at 5 GiB ([`copy::MAX_COPY_SIZE`], the default); a
    /// lower value exercises the multipart path in tests.
    pub copy_part_threshold: u64,
    /// Part size of those multipart copies ([`copy::COPY_PART_SIZE`] by default; S3 wants
    /// at least 5 MiB except for the last part, at most 5 GiB, and at most 10,000 parts).
    pub copy_part_size: u64,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub scan: Option<ScanSummary>,
    /// What `--manifest` ingested (then `scan` is `None`).
    pub manifest: Option<ingest::IngestSummary>,
    /// What the workers did; empty when the run was abandoned (the job table has the outcomes).
    pub work: WorkSummary,
    /// The run stopped early on SIGTERM/SIGINT.
    pub interrupted: bool,
    /// The stop was abandoned ([`ShutdownTrigger::abandon`]: the stop deadline, or a second
    /// signal): the objects in flight were dropped unfinished and their jobs handed back to the
    /// queue, this many of them.
    pub abandoned: Option<u64>,
}

/// A stop signal shared by the scanner and the workers, in two steps. [`ShutdownTrigger::trigger`]:
/// stop claiming, finish the objects in flight, release claimed-but-unstarted jobs.
/// [`ShutdownTrigger::abandon`] (at a deadline, or on a second signal): [`run`] drops the work
/// in flight and hands its jobs back to the queue, so a process that must be gone by a deadline
/// (Kubernetes' `terminationGracePeriodSeconds`) leaves nothing leased behind.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<Stop>,
}

/// The stop steps, in order: a later one implies the earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stop {
    Running,
    Draining,
    Abandoned,
}

/// The sending side of [`Shutdown`].
pub struct ShutdownTrigger {
    tx: watch::Sender<Stop>,
}

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(Stop::Running);
        (ShutdownTrigger { tx }, Shutdown { rx })
    }

    /// A shutdown that never fires.
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(Stop::Running);
        // Dropping the sender leaves the value `Running` forever.
        drop(tx);
        Shutdown { rx }
    }

    /// A stop was requested (graceful or abandoned).
    pub fn is_stopping(&self) -> bool {
        *self.rx.borrow() >= Stop::Draining
    }

    /// The work in flight is to be dropped, not finished.
    pub fn is_abandoned(&self) -> bool {
        *self.rx.borrow() == Stop::Abandoned
    }

    /// Resolves when the stop is requested (never, if the trigger is dropped unfired).
    pub async fn stopped(&self) {
        self.reached(Stop::Draining).await
    }

    /// Resolves when the stop is abandoned (never, if the trigger is dropped before that).
    pub async fn abandoned(&self) {
        self.reached(Stop::Abandoned).await
    }

    async fn reached(&self, step: Stop) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|v| *v >= step).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl ShutdownTrigger {
    /// Graceful stop: no new objects, the ones in flight finish.
    pub fn trigger(&self) {
        self.advance(Stop::Draining);
    }

    /// Stop now: the objects in flight are dropped unfinished and their jobs released.
    pub fn abandon(&self) {
        self.advance(Stop::Abandoned);
    }

    fn advance(&self, step: Stop) {
        self.tx.send_if_modified(|v| {
            let later = step > *v;
            if later {
                *v = step;
            }
            later
        });
    }
}

/// Runs `work` unless the stop is abandoned first; then `None`, and `work` is dropped, which
/// cancels it at its next `.await` (tasks it spawned into a `JoinSet` are aborted with it).
pub async fn unless_abandoned<T>(
    shutdown: &Shutdown,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        () = shutdown.abandoned() => None,
        r = work => Some(r),
    }
}

/// Scans, then works, as configured. Resumes from the state file.
///
/// On an abandoned stop the scan or work in flight is dropped: a scan page is committed with its
/// checkpoint in one transaction, so no key is lost; every job this process holds goes back to
/// `pending` ([`release_own_leases`]) for the next run. A write S3 had already received may
/// still land: the next run then finds the object changed (a conflict, re-examined, never
/// overwritten) and, being current, skips it. A multipart upload or copy in flight is not
/// aborted (its abort path never runs): the bucket's AbortIncompleteMultipartUpload lifecycle
/// rule removes its parts.
pub async fn run(config: RekeyConfig, shutdown: Shutdown) -> Result<RunSummary, RekeyError> {
    let mut summary = RunSummary::default();
    if config.scan
        && let Some(job) = &config.manifest
    {
        let key = ScanKey {
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            shard: config.shard.map(|s| (s.index, s.count)),
        };
        let ingested = unless_abandoned(
            &shutdown,
            with_work_gauges(
                &config,
                ingest::ingest(
                    &config.client,
                    &config.store,
                    &key,
                    job,
                    &ingest::Ingesters {
                        count: config.listers,
                        lease: config.lease,
                    },
                    &config.s3_limit,
                    &shutdown,
                ),
            ),
        )
        .await;
        let Some(s) = ingested else {
            return abandon(&config.store, summary).await;
        };
        let s = s?;
        tracing::info!(
            rows = s.rows,
            new = s.enqueued.inserted,
            changed = s.enqueued.reset,
            outside = s.outside,
            malformed = s.malformed,
            skipped = s.skipped,
            "manifest ingested"
        );
        summary.manifest = Some(s);
    } else if config.scan {
        let key = ScanKey {
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            shard: config.shard.map(|s| (s.index, s.count)),
        };
        let scanned = unless_abandoned(
            &shutdown,
            with_work_gauges(
                &config,
                scan::scan(
                    &config.client,
                    &config.store,
                    &key,
                    &scan::ListConfig {
                        page_size: config.list_page_size,
                        listers: config.listers,
                        lease: config.lease,
                    },
                    &config.s3_limit,
                    &shutdown,
                ),
            ),
        )
        .await;
        let Some(s) = scanned else {
            return abandon(&config.store, summary).await;
        };
        let s = s?;
        tracing::info!(
            listed = s.listed,
            new = s.enqueued.inserted,
            changed = s.enqueued.reset,
            requests = s.requests,
            splits = s.splits,
            "scan done"
        );
        summary.scan = Some(s);
    }
    if config.work && !shutdown.is_stopping() {
        let work = async {
            if config.dry_run {
                dryrun::dry_run(&config, &shutdown).await
            } else {
                worker::work(&config, &shutdown).await
            }
        };
        let Some(w) = unless_abandoned(&shutdown, work).await else {
            return abandon(&config.store, summary).await;
        };
        summary.work = w?;
    }
    summary.interrupted = shutdown.is_stopping();
    Ok(summary)
}

/// Runs a listing or ingest, refreshing the listing and manifest gauges from the state file
/// every few seconds meanwhile (all listers' and processes' progress) and once at the end.
async fn with_work_gauges<T>(
    config: &RekeyConfig,
    work: impl std::future::Future<Output = T>,
) -> T {
    let refresh = async {
        loop {
            if let Ok(p) = config.store.work_progress().await {
                config.metrics.set_work(&p);
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    };
    let r = tokio::select! {
        r = work => r,
        () = refresh => unreachable!("the gauge refresh loops forever"),
    };
    if let Ok(p) = config.store.work_progress().await {
        config.metrics.set_work(&p);
    }
    r
}

/// The end of an abandoned run: this process's jobs back to the queue.
async fn abandon(store: &JobStore, mut summary: RunSummary) -> Result<RunSummary, RekeyError> {
    let released = release_own_leases(store).await?;
    tracing::warn!(
        released,
        "stop abandoned: the objects in flight were dropped, their jobs are back in the queue"
    );
    summary.interrupted = true;
    summary.abandoned = Some(released);
    Ok(summary)
}

/// Hands every job leased by this process back to `pending`, whatever its worker was doing.
///
/// The worker's lease owners are `host:pid:nonce:start` ([`worker`]), so `host:pid:nonce:`
/// names this process's. Done twice: a claim that was already on its way to SQLite when the work was
/// dropped may land just after the first pass. (Should one land later still, its lease lapses
/// like a dead worker's.)
pub async fn release_own_leases(store: &JobStore) -> Result<u64, RekeyError> {
    let prefix = process_owner_prefix();
    let mut released = store.release_owner_prefix(&prefix).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    released += store.release_owner_prefix(&prefix).await?;
    // The listing ranges and manifest files this process held (not counted: not objects).
    store.release_work(&prefix).await?;
    Ok(released)
}

/// `host:pid:nonce:`, the start of the lease owner ids of this process. The host is read as the
/// worker reads it: `HOSTNAME`, else /etc/hostname, else `localhost`.
pub(crate) fn process_owner_prefix() -> String {
    // The nonce: two containers on one node can share the hostname (host networking) and the
    // pid (1, each in its own pid namespace); on a shared queue one must never release the
    // other's rows as its own.
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX
        .get_or_init(|| {
            format!(
                "{}:{}:{:08x}:",
                hostname(),
                std::process::id(),
                rand::random::<u32>()
            )
        })
        .clone()
}

/// `host:pid:nonce:`, the process part of a lease owner id (a worker's `host:pid:nonce:start`, a
/// lister's or ingester's `host:pid:nonce:start:tag`); `None` for an id of another shape (an
/// older version's `host:pid:start`, a hand-edited row).
pub(crate) fn owner_process(owner: &str) -> Option<&str> {
    let mut colons = owner.match_indices(':').map(|(i, _)| i);
    let third = colons.nth(2)?;
    Some(&owner[..=third])
}

/// Whether lease owner `owner` is a dead process of this host, so its rows can be handed back
/// at once instead of at lease expiry; `me` is any owner id of this process (or its
/// [`process_owner_prefix`]). Keyed on the whole `host:pid:nonce:`: our own process is alive;
/// our pid with another nonce is a predecessor (a restarted container's pid 1), dead; another
/// pid of this host is dead when /proc has no such process. Owners of other hosts, or of
/// another shape, are never dead here: their leases lapse.
///
/// Only for SQLite, where the file lock makes this the one live process on the file: on a
/// shared queue a peer with our host and pid may be alive in another container.
pub(crate) fn dead_owner_on_this_host(owner: &str, me: &str) -> bool {
    dead_owner(owner, me, &hostname(), |pid| {
        std::path::Path::new("/proc").join(pid).exists()
    })
}

/// [`dead_owner_on_this_host`] with the host and the liveness test passed in (unit tests).
fn dead_owner(owner: &str, me: &str, host: &str, alive: impl Fn(&str) -> bool) -> bool {
    let (Some(theirs), Some(mine)) = (owner_process(owner), owner_process(me)) else {
        return false;
    };
    if theirs == mine {
        return false;
    }
    let mut parts = theirs.split(':');
    let (Some(h), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    if h != host || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let my_pid = mine.split(':').nth(1);
    my_pid == Some(pid) || !alive(pid)
}

/// This host's name (`HOSTNAME`, else /etc/hostname): the first part of a lease owner.
pub(crate) fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_part_of_an_owner_ends_after_the_nonce() {
        assert_eq!(owner_process("h:12:0a0b0c0d:1700"), Some("h:12:0a0b0c0d:"));
        assert_eq!(
            owner_process("h:12:0a0b0c0d:1700:l3"),
            Some("h:12:0a0b0c0d:")
        );
        assert_eq!(owner_process("h:12:1700"), None);
        assert_eq!(owner_process("gone-host:1:1"), None);
    }

    #[test]
    fn dead_owners_are_told_by_host_pid_and_nonce() {
        let me = "h:10:aaaaaaaa:500";
        let alive = |pid: &str| pid == "20";
        // Our own process (another call of it, a lister's tag): alive.
        assert!(!dead_owner("h:10:aaaaaaaa:400", me, "h", alive));
        assert!(!dead_owner("h:10:aaaaaaaa:400:l0", me, "h", alive));
        // Our pid under another nonce: a predecessor (a restarted container's pid 1).
        assert!(dead_owner("h:10:bbbbbbbb:400", me, "h", alive));
        assert!(dead_owner("h:10:bbbbbbbb:400:l1", me, "h", alive));
        // Another pid of this host: dead unless it runs.
        assert!(dead_owner("h:30:cccccccc:1", me, "h", alive));
        assert!(!dead_owner("h:20:cccccccc:1", me, "h", alive));
        // Another host, another shape, a pid that is not a number: left to lapse.
        assert!(!dead_owner("other:30:cccccccc:1", me, "h", alive));
        assert!(!dead_owner("h:30:1", me, "h", alive));
        assert!(!dead_owner("h:..:cccccccc:1", me, "h", |_| false));
        assert!(!dead_owner("h:30:cccccccc:1", "h:10:1", "h", alive));
    }

    #[test]
    fn this_process_is_alive_and_a_missing_pid_is_dead() {
        let me = format!("{}1", process_owner_prefix());
        let host = hostname();
        // Our pid's /proc entry exists; u32::MAX is above any pid_max.
        let other = format!("{host}:{}:00000000:1", u32::MAX);
        assert!(dead_owner_on_this_host(&other, &me));
        let sibling = format!("{host}:1:00000000:1");
        assert!(!dead_owner_on_this_host(&sibling, &me) || std::process::id() == 1);
        assert!(!dead_owner_on_this_host(&me, &me));
    }

    #[tokio::test(start_paused = true)]
    async fn stop_steps_only_move_forward() {
        let (trigger, shutdown) = Shutdown::new();
        assert!(!shutdown.is_stopping() && !shutdown.is_abandoned());
        trigger.trigger();
        assert!(shutdown.is_stopping() && !shutdown.is_abandoned());
        shutdown.stopped().await;
        trigger.abandon();
        assert!(shutdown.is_stopping() && shutdown.is_abandoned());
        // A late graceful request does not take the abandon back.
        trigger.trigger();
        assert!(shutdown.is_abandoned());
        shutdown.abandoned().await;
        // Abandoning without a graceful step first stops too.
        let (trigger, shutdown) = Shutdown::new();
        trigger.abandon();
        assert!(shutdown.is_stopping());
        shutdown.stopped().await;
    }

    #[tokio::test(start_paused = true)]
    async fn unless_abandoned_drops_the_work_at_the_abandon() {
        let (trigger, shutdown) = Shutdown::new();
        assert_eq!(unless_abandoned(&shutdown, async { 7 }).await, Some(7));
        trigger.trigger();
        // A graceful stop lets the work finish.
        let slow = tokio::time::sleep(Duration::from_secs(3600));
        let abandon = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            trigger.abandon();
        };
        let t = tokio::time::Instant::now();
        let (r, ()) = tokio::join!(unless_abandoned(&shutdown, slow), abandon);
        assert_eq!(r, None);
        assert_eq!(t.elapsed(), Duration::from_secs(5));
        // Once abandoned, even ready work is not started.
        assert_eq!(unless_abandoned(&shutdown, async { 7 }).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn never_never_fires() {
        let shutdown = Shutdown::never();
        let r = tokio::time::timeout(Duration::from_secs(3600), shutdown.abandoned()).await;
        assert!(r.is_err() && !shutdown.is_stopping());
    }

    #[test]
    fn the_owner_prefix_is_host_pid_and_a_nonce() {
        let p = process_owner_prefix();
        let parts: Vec<&str> = p.split(':').collect();
        assert_eq!(parts.len(), 4, "{p}");
        assert_eq!(parts[1], std::process::id().to_string(), "{p}");
        assert_eq!(parts[2].len(), 8, "{p}");
        assert!(p.ends_with(':') && parts[0] == hostname(), "{p}");
        assert_eq!(process_owner_prefix(), p, "one prefix per process");
    }
}
