//! `s3cse rekey`: bring a bucket of legacy client-side-encrypted objects to V2 `kms+context`
//! AES-GCM under one KMS key, resumably.
//!
//! # Layout
//! - [`plan`]: pure classification, HEAD + envelope -> skip / rewrite / rewrap.
//! - [`scan`]: ListObjectsV2 -> the job table, with a checkpoint and `--shard I/N`.
//! - [`worker`]: the claim loop (leases, `--concurrency` tasks, graceful stop) and the per-object
//!   rewrite / rewrap / verify.
//! - [`copy`]: the multipart copy onto itself that rewraps objects above CopyObject's 5 GiB.
//! - [`kms`]: the KMS decorator (rate limit, retries, metrics) and DescribeKey.
//! - [`limit`]: the shared token buckets of `--s3-rps` / `--kms-rps`.
//!
//! Metrics are the crate's [`crate::metrics::Metrics`] (one per process, shared as
//! `Arc<Metrics>`); the CLI serves, pushes and writes them.
//!
//! [`run`] takes every dependency as an argument (client, store, KMS, metrics), so tests drive
//! it directly; the CLI builds them.

pub mod copy;
pub mod kms;
pub mod limit;
pub mod plan;
pub mod scan;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::client::{ClientError, S3Cse};
use crate::envelope::Context;
use crate::keyring::{KmsClient, KmsError};
use crate::metrics::Metrics;
use crate::store::{JobStore, ScanKey, StoreError};

pub use self::plan::{Action, SkipReason, TargetKey};
pub use self::scan::{ScanSummary, Shard};
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
    /// KMS refused the target key (DescribeKey).
    #[error("KMS: {0}")]
    Kms(#[from] KmsError),
    /// Invalid configuration.
    #[error("{0}")]
    Config(String),
}

/// Everything one run needs. Built by the CLI, or by tests.
#[derive(Clone)]
pub struct RekeyConfig {
    pub bucket: String,
    /// Key prefix to list (`""`: the whole bucket).
    pub prefix: String,
    pub shard: Option<Shard>,
    /// User encryption context of the new envelopes (`aws:x-amz-cek-alg` is added).
    pub context: Context,
    /// Objects processed at once.
    pub concurrency: usize,
    /// Classify only: HEAD + envelope, no KMS, no writes.
    pub dry_run: bool,
    /// Rewrite GCM objects too (a fresh data key), instead of rewrapping their key.
    pub reencrypt: bool,
    /// Read every written object back and compare.
    pub verify: bool,
    /// Read tags with GetObjectTagging before every rewrite, not only when the head counts
    /// some (for stores that do not send `x-amz-tagging-count`).
    pub always_read_tags: bool,
    /// Lease of a claimed job; renewed while the job runs, so only a dead worker's lease lapses.
    pub lease: Duration,
    /// Run the scan (`rekey`, `scan`).
    pub scan: bool,
    /// Drain the queue (`rekey`, `work`).
    pub work: bool,
    /// S3 client with the source keyring: the legacy raw keys plus KMS decrypting under any key.
    pub client: S3Cse,
    /// The decorated KMS client (rate limit, retries, metrics).
    pub kms: Arc<dyn KmsClient>,
    pub target: TargetKey,
    pub store: JobStore,
    /// The process's metrics: S3 requests are recorded by `client`'s observer, KMS requests by
    /// `kms`, objects, retries and queue depth by the workers.
    pub metrics: Arc<Metrics>,
    pub s3_limit: limit::RateLimit,
    /// Rewraps of objects larger than this use a multipart copy (UploadPartCopy) instead of one
    /// CopyObject. S3 caps CopyObject at 5 GiB ([`worker::MAX_COPY_SIZE`], the default); a
    /// lower value exercises the multipart path in tests.
    pub copy_part_threshold: u64,
    /// Part size of those multipart copies ([`worker::COPY_PART_SIZE`] by default; S3 wants
    /// at least 5 MiB except for the last part, at most 5 GiB, and at most 10,000 parts).
    pub copy_part_size: u64,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub scan: Option<ScanSummary>,
    pub work: WorkSummary,
    /// The run stopped early on SIGTERM/SIGINT.
    pub interrupted: bool,
}

/// A stop signal shared by the scanner and the workers: stop claiming, finish in-flight work.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The sending side of [`Shutdown`].
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger { tx }, Shutdown { rx })
    }

    /// A shutdown that never fires.
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        // Dropping the sender leaves the value false forever.
        drop(tx);
        Shutdown { rx }
    }

    pub fn is_stopping(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when the stop is requested (never, if the trigger is dropped unfired).
    pub async fn stopped(&self) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
}

/// Scans, then works, as configured. Resumes from the state file.
pub async fn run(config: RekeyConfig, shutdown: Shutdown) -> Result<RunSummary, RekeyError> {
    let mut summary = RunSummary::default();
    if config.scan {
        let key = ScanKey {
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            shard: config.shard.map(|s| (s.index, s.count)),
        };
        let s = scan::scan(
            &config.client,
            &config.store,
            &key,
            &config.s3_limit,
            &shutdown,
        )
        .await?;
        tracing::info!(
            listed = s.listed,
            new = s.enqueued.inserted,
            changed = s.enqueued.reset,
            "scan done"
        );
        summary.scan = Some(s);
    }
    if config.work && !shutdown.is_stopping() {
        summary.work = if config.dry_run {
            worker::dry_run(&config, &shutdown).await?
        } else {
            worker::work(&config, &shutdown).await?
        };
    }
    summary.interrupted = shutdown.is_stopping();
    Ok(summary)
}
