//! `s3cse rekey` / `scan` / `work` / `status` / `report`: raw clap arguments -> a validated
//! [`RekeyConfig`] -> [`s3cse::rekey::run`].
//!
//! Exit codes: 0 every object of this run migrated or rightly skipped; 1 some objects failed or
//! stayed in conflict (`report --only failed` says which and why); 2 usage, configuration or
//! access error before any work (bad key file, DescribeKey refused, bucket missing, state file),
//! or a listing that cannot be followed (a truncated page without a continuation token).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::{Args, ValueEnum};
use futures::TryStreamExt;
use s3cse::client::AttributePolicy;
use s3cse::client::{DEFAULT_BUFFER_BUDGET, S3Cse};
use s3cse::codec::DecryptPolicy;
use s3cse::keyring::{AwsKms, KmsClient, KmsKeyring, SourceKeyPolicy};
use s3cse::metrics::attempts::{count_kms_attempts, count_s3_attempts};
use s3cse::metrics::{self, Metrics};
use s3cse::rekey::copy::{COPY_PART_SIZE, MAX_COPY_SIZE};
use s3cse::rekey::ingest::ManifestJob;
use s3cse::rekey::kms::{RekeyKms, describe_key, without_sdk_retries};
use s3cse::rekey::limit::{RateLimit, SHARE_REFRESH};
use s3cse::rekey::noncurrent::{self, NoncurrentMode, NoncurrentSummary};
use s3cse::rekey::owner::KeyOwner;
use s3cse::rekey::report::{DEFAULT_MAX_FILE_BYTES, batch_ops_fields, csv_field};
use s3cse::rekey::scan::MAX_LIST_PAGE_SIZE;
use s3cse::rekey::{RekeyConfig, RunSummary, Shard, Shutdown};
use s3cse::store::{
    Action, JobState, JobStore, LiveProcesses, ScanKey, StateLocation, StateLock, Tally,
    VersionCount, VersionState,
};

use super::aws::{AwsArgs, parse_s3_url, sdk_config};
use super::keys::{KeyArgs, context_of, kms_client};
use super::term::{Term, bytes, bytes_per_sec, count, duration, objects_per_sec};
use super::{CliResult, Failure, parse_kv, print_out};

/// `--shard I/N`, or `--shards N` with the index from `JOB_COMPLETION_INDEX` (Indexed Jobs).
#[derive(Args, Debug, Clone, Default)]
pub struct ShardArgs {
    /// Only the keys of shard I of N, e.g. --shard 3/16: a listing lists only the top-level
    /// prefixes whose stable hash is I (and keeps the loose keys whose own hash is I); a
    /// manifest keeps the rows whose key hashes to I.
    #[arg(long, value_name = "I/N", conflicts_with = "shards")]
    shard: Option<Shard>,
    /// N shards, this process's index from JOB_COMPLETION_INDEX (a Kubernetes Indexed Job).
    #[arg(long, value_name = "N")]
    shards: Option<u32>,
}

impl ShardArgs {
    fn resolve(&self) -> CliResult<Option<Shard>> {
        if let Some(s) = self.shard {
            return Ok(Some(s));
        }
        let Some(count) = self.shards else {
            return Ok(None);
        };
        let index = std::env::var("JOB_COMPLETION_INDEX").map_err(|_| {
            Failure::usage(anyhow!(
                "--shards needs JOB_COMPLETION_INDEX in the environment"
            ))
        })?;
        format!("{}/{count}", index.trim())
            .parse::<Shard>()
            .map(Some)
            .map_err(|e| Failure::usage(anyhow!(e)))
    }
}

/// Options shared by `rekey` and `work`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The job table: a SQLite file (created if missing; keep it on a local disk), or
    /// postgres://USER@HOST[:PORT]/DB shared by any number of processes (password from the
    /// URL or PGPASSWORD; TLS per ?sslmode=). With PostgreSQL, --kms-rps and --s3-rps are for
    /// all processes together.
    #[arg(
        long,
        value_name = "FILE|URL",
        env = "S3CSE_STATE",
        hide_env_values = true
    )]
    state: StateLocation,
    #[command(flatten)]
    keys: KeyArgs,
    /// Encryption context of the new envelopes, k=v, repeatable (aws:x-amz-cek-alg is added).
    #[arg(long = "context", value_parser = parse_kv, value_name = "K=V")]
    context: Vec<(String, String)>,
    /// Accept source data keys only under this KMS key (key id, key ARN or alias, resolved at
    /// start; repeatable), plus the target key. By default any key of the target key's account
    /// is accepted. Objects under another key fail with SourceKeyNotAllowed, untouched.
    #[arg(long = "source-kms-key", value_name = "ID")]
    source_kms_keys: Vec<String>,
    /// Also accept source data keys under any key of this AWS account (12 digits; repeatable).
    #[arg(long = "source-kms-account", value_name = "ACCOUNT")]
    source_kms_accounts: Vec<String>,
    /// KMS requests in flight at once. Up to 4 objects per KMS request are in flight (within
    /// --max-buffer-mib at 256 KiB per object beyond N), so their S3 requests (GET, conditional
    /// PUT, read-back GET) run while other objects wait on KMS: throughput is about N / (one
    /// KMS round trip) where S3 keeps up. Bound the KMS request rate with --kms-rps. With
    /// --dry-run (no KMS call): objects classified at once.
    #[arg(long, default_value_t = 64, value_name = "N")]
    concurrency: usize,
    /// Classify only (HEAD + envelope): no KMS call, nothing written to S3; prints the plan and
    /// records it in the state file (jobs stay pending; `status` shows it as "planned",
    /// `report` per object).
    #[arg(long)]
    dry_run: bool,
    /// Rewrite GCM objects too under a fresh data key, instead of rewrapping their content key
    /// (a new wrapping key does not revoke a leaked content key).
    #[arg(long)]
    reencrypt: bool,
    // Issue 13: target format, instruction files, commitment policy of the sources.
    #[command(flatten)]
    goal: super::goal::GoalArgs,
    /// `require`: refuse sources that are not V3 key-committing (recorded failed,
    /// CommitmentRequired, untouched); `allow` (default) reads every format.
    #[arg(long, value_enum, default_value = "allow", value_name = "POLICY")]
    commitment: super::goal::CommitmentArg,
    /// Skip reading each written object back.
    #[arg(long)]
    no_verify: bool,
    /// Memory for the part buffers of all the objects being written at once, in MiB. Large
    /// objects are written in 8 MiB parts, up to 5 buffers each; with many in flight, each
    /// waits for room here before filling its next part. A small object takes only its size.
    #[arg(long, default_value_t = DEFAULT_BUFFER_BUDGET >> 20, value_name = "MIB")]
    max_buffer_mib: u64,
    /// Read every object's tags before rewriting it (GetObjectTagging), even when the head
    /// says it has none: for S3-compatible stores that do not send `x-amz-tagging-count`.
    #[arg(long)]
    always_read_tags: bool,
    /// Put objects that failed or stayed in conflict in an earlier run back in the queue first
    /// (after fixing a key file, or once KMS is reachable again). Without it they stay failed
    /// until their ETag changes, and `status`/`report` keep showing them.
    #[arg(long)]
    retry_failed: bool,
    /// Claims of one object without an outcome (each time the process died or hung on it)
    /// before it is recorded failed (`TooManyAttempts`) instead of coming back every run;
    /// `--retry-failed` gives it another round.
    #[arg(long, default_value_t = 10, value_name = "N")]
    max_attempts: u32,
    /// Deadline of one attempt at one object in seconds, plus one second per 4 MiB of the
    /// object: a request that hangs is dropped and the object retried, instead of holding its
    /// lease forever.
    #[arg(long, default_value_t = 900, value_name = "SECS")]
    object_timeout: u64,
    /// Limit S3 requests per second (all workers together).
    #[arg(long, value_name = "N")]
    s3_rps: Option<u32>,
    /// Limit KMS requests per second (all workers together).
    #[arg(long, value_name = "N")]
    kms_rps: Option<u32>,
    #[command(flatten)]
    shard: ShardArgs,
    /// Serve Prometheus metrics on this address while running, e.g. 0.0.0.0:9464.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Push-add the metrics to this Pushgateway at the end (http://host:9091).
    #[arg(long, value_name = "URL")]
    pushgateway: Option<String>,
    /// At the end, write the final metrics (Prometheus text format) to this file, atomically
    /// (temporary file + rename): node_exporter's textfile collector picks up `*.prom` files.
    #[arg(long, value_name = "PATH")]
    metrics_textfile: Option<PathBuf>,
    /// On SIGTERM/SIGINT, give the objects in flight this many seconds to finish; then (or on a
    /// second signal) abandon them: their jobs go back to the queue for the next run, metrics are
    /// flushed and the process exits. Keep it below Kubernetes' terminationGracePeriodSeconds.
    #[arg(long, default_value_t = 25, value_name = "SECS")]
    stop_timeout: u64,
    /// Lease of a claimed job in seconds (renewed while it runs; a dead worker's lapses).
    #[arg(long, default_value_t = 60, hide = true)]
    lease_secs: u64,
    /// Rewrap objects larger than this (bytes) with a multipart copy; S3's CopyObject limit
    /// (5 GiB) by default. Lower only to test the multipart path.
    #[arg(long, default_value_t = MAX_COPY_SIZE, hide = true, value_name = "BYTES")]
    copy_part_threshold: u64,
    /// Part size of multipart copies (bytes, 5 MiB .. 5 GiB).
    #[arg(long, default_value_t = COPY_PART_SIZE, hide = true, value_name = "BYTES")]
    copy_part_size: u64,
    /// Noncurrent versions of a versioned bucket, looked at after the objects (`rekey` only):
    /// `report` records them in the state file (`status`, `report --noncurrent`, a metric),
    /// those under a legacy key called out; `delete` also deletes those, by version id, once
    /// their object's current version is under the target key and decrypts (never a version
    /// under Object Lock, never the current one, never a plaintext one).
    #[arg(long, value_enum, default_value = "report", value_name = "MODE")]
    noncurrent: NoncurrentArg,
    #[command(flatten)]
    aws: AwsArgs,
}

/// `--noncurrent`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum NoncurrentArg {
    Report,
    Delete,
}

impl From<NoncurrentArg> for NoncurrentMode {
    fn from(a: NoncurrentArg) -> Self {
        match a {
            NoncurrentArg::Report => NoncurrentMode::Report,
            NoncurrentArg::Delete => NoncurrentMode::Delete,
        }
    }
}

/// `--list-page-size`, shared by `rekey` and `scan`.
#[derive(Args, Debug, Clone, Copy)]
pub struct ListArgs {
    /// Keys per listing page (ListObjectsV2 MaxKeys, 1 to 1000). The scan commits its
    /// checkpoint once a page, so smaller pages lose less on a crash, at more requests.
    #[arg(long, default_value_t = MAX_LIST_PAGE_SIZE, value_name = "N",
          value_parser = clap::value_parser!(i32).range(1..=i64::from(MAX_LIST_PAGE_SIZE)))]
    list_page_size: i32,
    /// Key ranges listed at once by this process (or manifest data files read at once): an
    /// idle lister splits the widest range another lister (here or in another process sharing
    /// the state) holds, so the bucket is still listed about once. 1 keeps the single-lister
    /// cost exactly: one request per page.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    listers: u16,
}

#[derive(Args, Debug)]
pub struct RekeyArgs {
    /// What to re-key: s3://BUCKET[/PREFIX].
    url: String,
    #[command(flatten)]
    list: ListArgs,
    /// Take the keys from this manifest instead of listing the bucket: an S3 Inventory
    /// manifest.json (CSV inventory) or an S3 Batch Operations CSV manifest (Bucket,Key[,VersionId],
    /// keys URL-encoded), at s3://BUCKET/KEY or a local path. Rows outside BUCKET/PREFIX and rows
    /// that do not parse are reported (file and line) and left alone.
    #[arg(long, value_name = "URL")]
    manifest: Option<String>,
    /// Manifest rows per transaction and checkpoint.
    #[arg(long, default_value_t = s3cse::rekey::ingest::DEFAULT_BATCH, hide = true, value_name = "N")]
    manifest_batch: usize,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug)]
pub struct WorkArgs {
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug)]
pub struct ScanArgs {
    /// What to list: s3://BUCKET[/PREFIX].
    url: String,
    /// The job table: a SQLite file (created if missing) or a postgres:// URL.
    #[arg(
        long,
        value_name = "FILE|URL",
        env = "S3CSE_STATE",
        hide_env_values = true
    )]
    state: StateLocation,
    #[command(flatten)]
    shard: ShardArgs,
    #[command(flatten)]
    list: ListArgs,
    /// Limit S3 requests per second.
    #[arg(long, value_name = "N")]
    s3_rps: Option<u32>,
    #[command(flatten)]
    aws: AwsArgs,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The job table: a SQLite file or a postgres:// URL.
    #[arg(
        long,
        value_name = "FILE|URL",
        env = "S3CSE_STATE",
        hide_env_values = true
    )]
    state: StateLocation,
    /// Print JSON (exact numbers: bytes, objects/s, seconds).
    #[arg(long)]
    json: bool,
    /// Refresh every SECS seconds (default 2) until nothing is pending or running, or Ctrl-C:
    /// in place at a terminal, appended otherwise.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    watch: Option<u64>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ReportFormat {
    Csv,
    Jsonl,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The job table: a SQLite file or a postgres:// URL.
    #[arg(
        long,
        value_name = "FILE|URL",
        env = "S3CSE_STATE",
        hide_env_values = true
    )]
    state: StateLocation,
    #[arg(long, value_enum, default_value = "csv")]
    format: ReportFormat,
    /// Only jobs in this state: pending, running, done, failed, conflict.
    #[arg(long, value_name = "STATE", conflicts_with = "to")]
    only: Option<JobState>,
    /// List the noncurrent versions recorded by `rekey --noncurrent` instead of the jobs: one
    /// line per version with its class (remaining: under a legacy key), state (listed, kept,
    /// deleting, deleted), why it was kept, and when it was deleted.
    #[arg(long, conflicts_with_all = ["only", "to"])]
    noncurrent: bool,
    /// Write an S3 Batch Operations completion report under s3://BUCKET/PREFIX/ instead of
    /// printing: job-ID/results/*.csv (succeeded and failed tasks apart) and job-ID/manifest.json
    /// naming them with their MD5. Pending and running jobs are left out (counted).
    #[arg(long, value_name = "URL")]
    to: Option<String>,
    /// The report's job id (a fresh UUID by default).
    #[arg(long, value_name = "ID", requires = "to")]
    job_id: Option<String>,
    /// Bytes per result file of `--to` (rows are never split).
    #[arg(long, default_value_t = DEFAULT_MAX_FILE_BYTES, hide = true, value_name = "BYTES")]
    max_file_bytes: usize,
    #[command(flatten)]
    aws: AwsArgs,
}

/// The state file for `status` and `report`: read only, never migrated (a file of another
/// schema version is refused, see [`JobStore::open_read_only`]).
async fn open_store_read_only(location: &StateLocation) -> CliResult<JobStore> {
    if let Some(path) = location.path()
        && !path.exists()
    {
        return Err(Failure::usage(anyhow!(
            "no state file at {}",
            path.display()
        )));
    }
    JobStore::open_location_read_only(location)
        .await
        .with_context(|| format!("reading the state {location}"))
        .map_err(Failure::usage)
}

/// The state for `scan`, `work` and `rekey`. A file comes with its writer lock: keep the lock
/// for as long as the store is used (one writer process per state file, see [`StateLock`]).
/// PostgreSQL has none (any number of processes share it). An unreachable database fails
/// here, exit 2, before any S3 write.
async fn open_store(location: &StateLocation) -> CliResult<(JobStore, Option<StateLock>)> {
    let lock = match location.path() {
        Some(path) => Some(
            StateLock::acquire(path)
                .with_context(|| format!("opening the state file {}", path.display()))
                .map_err(Failure::usage)?,
        ),
        None => None,
    };
    let store = JobStore::open_location(location)
        .await
        .with_context(|| format!("opening the state {location}"))
        .map_err(Failure::usage)?;
    Ok((store, lock))
}

/// With a PostgreSQL state, `limits` are for all the processes of the run together: this
/// process joins the run's live processes and, every [`SHARE_REFRESH`], takes `1/N` of each
/// limit. Dropping the returned guard stops that (and leaves the run: the connection closes).
async fn share_limits(
    store: &JobStore,
    location: &StateLocation,
    limits: &[RateLimit],
) -> CliResult<Option<AbortOnDrop>> {
    let Some(mut live) = LiveProcesses::join(store, location)
        .await
        .with_context(|| format!("joining the run at {location}"))
        .map_err(Failure::usage)?
    else {
        return Ok(None);
    };
    // The first share before any request.
    let n = live
        .count()
        .await
        .context("counting the processes of the run")
        .map_err(Failure::usage)?;
    for l in limits {
        l.join_share(n);
    }
    tracing::info!(
        processes = n,
        "rate limits shared by the processes of the run"
    );
    let limits = limits.to_vec();
    let task = tokio::spawn(async move {
        let mut last = n;
        loop {
            tokio::time::sleep(SHARE_REFRESH).await;
            match live.count().await {
                Ok(n) => {
                    for l in &limits {
                        l.set_share(n);
                    }
                    if n != last {
                        tracing::info!(
                            processes = n,
                            "rate limits shared by the processes of the run"
                        );
                        last = n;
                    }
                }
                // Keep the last share: the database is back by the next refresh, or the
                // workers fail on it anyway.
                Err(e) => tracing::warn!(error = %e, "cannot count the processes of the run"),
            }
        }
    });
    Ok(Some(AbortOnDrop(task)))
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Fails with exit 2 if the bucket is missing or not accessible.
pub(super) async fn check_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> CliResult {
    s3.head_bucket()
        .bucket(bucket)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| {
            Failure::usage(anyhow!(
                "bucket {bucket}: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            ))
        })
}

pub async fn rekey(a: RekeyArgs, term: &Term) -> CliResult {
    let (bucket, prefix) = parse_s3_url(&a.url, false)?;
    let target = ScanTarget {
        bucket,
        prefix,
        list_page_size: a.list.list_page_size,
        listers: usize::from(a.list.listers),
        manifest: a.manifest.map(|url| ManifestJob {
            url,
            batch: a.manifest_batch.max(1),
        }),
    };
    run(a.run, Some(target), term).await
}

pub async fn work(a: WorkArgs, term: &Term) -> CliResult {
    run(a.run, None, term).await
}

/// What `rekey` lists before it works (`work` lists nothing).
struct ScanTarget {
    bucket: String,
    prefix: String,
    list_page_size: i32,
    /// `--listers`.
    listers: usize,
    /// `--manifest`: ingest it instead of listing.
    manifest: Option<ManifestJob>,
}

pub async fn scan(a: ScanArgs, term: &Term) -> CliResult {
    let (bucket, prefix) = parse_s3_url(&a.url, false)?;
    let shard = a.shard.resolve()?;
    let conf = sdk_config().await;
    let metrics = new_metrics();
    let s3 = count_s3_attempts(&a.aws.s3_client(&conf).await, metrics.clone());
    check_bucket(&s3, &bucket).await?;
    let (store, _lock) = open_store(&a.state).await?;
    let client = S3Cse::new(s3, s3cse::keyring::Keyring::new());
    let s3_limit = RateLimit::per_second(a.s3_rps);
    let _share = share_limits(&store, &a.state, std::slice::from_ref(&s3_limit)).await?;
    let key = ScanKey {
        bucket,
        prefix,
        shard: shard.map(|s| (s.index, s.count)),
    };
    let (trigger, shutdown) = Shutdown::new();
    // A scan stops between two pages; a second signal drops the page in flight (a page and its
    // checkpoint are committed together, so nothing is lost).
    let signals = tokio::spawn(wait_for_signal(trigger, SCAN_STOP_TIMEOUT));
    let list = s3cse::rekey::scan::ListConfig {
        listers: usize::from(a.list.listers),
        ..s3cse::rekey::scan::ListConfig::new(a.list.list_page_size)
    };
    let listing = s3cse::rekey::scan::scan(&client, &store, &key, &list, &s3_limit, &shutdown);
    let scanned = s3cse::rekey::unless_abandoned(&shutdown, listing).await;
    signals.abort();
    let Some(s) = scanned else {
        store.close().await;
        return Err(Failure::failed(anyhow!(
            "scan stopped: run it again to resume from its checkpoint"
        )));
    };
    let s = s.context("scan").map_err(rekey_failure)?;
    store.close().await;
    if term.quiet {
        return Ok(());
    }
    print_out(&format!(
        "listed {} keys: {} new, {} changed, {} unchanged ({} ListObjectsV2 requests, {} \
         range splits)\n",
        count(s.listed),
        count(s.enqueued.inserted),
        count(s.enqueued.reset),
        count(s.enqueued.unchanged),
        count(s.requests),
        count(s.splits)
    ))
}

pub(super) fn new_metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new(env!("CARGO_PKG_VERSION")))
}

/// `--copy-part-threshold` / `--copy-part-size` within S3's limits.
fn check_copy_parts(threshold: u64, part_size: u64) -> CliResult {
    use s3cse::client::MIN_PART_SIZE;
    if threshold > MAX_COPY_SIZE {
        return Err(Failure::usage(anyhow!(
            "--copy-part-threshold {threshold}: CopyObject takes at most {MAX_COPY_SIZE} bytes"
        )));
    }
    if !(MIN_PART_SIZE as u64..=MAX_COPY_SIZE).contains(&part_size) {
        return Err(Failure::usage(anyhow!(
            "--copy-part-size {part_size}: S3 parts are {MIN_PART_SIZE} to {MAX_COPY_SIZE} bytes"
        )));
    }
    Ok(())
}

/// The textfile's directory must exist: fail before any work, not after hours of it.
pub(super) fn check_textfile(path: Option<&Path>) -> CliResult {
    let Some(path) = path else {
        return Ok(());
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if dir.is_dir() {
        Ok(())
    } else {
        Err(Failure::usage(anyhow!(
            "--metrics-textfile {}: no directory {}",
            path.display(),
            dir.display()
        )))
    }
}

/// How long the Pushgateway push may take after a stop signal (instead of its usual 30 s), so
/// the whole exit after the stop timeout stays within a few seconds: releasing the leases
/// (0.2 s), this push, the textfile, a last scrape (at most 5 s). The chart keeps
/// terminationGracePeriodSeconds at least 15 s above the stop timeout for it.
const STOP_PUSH_TIMEOUT: Duration = Duration::from_secs(8);

/// How long `s3cse scan` lets a page in flight finish after SIGTERM/SIGINT.
const SCAN_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// SIGTERM and SIGINT, as one stream.
struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn new() -> Self {
        Self {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            let term = async {
                match self.term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = term => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// First SIGTERM/SIGINT: stop claiming, let the objects in flight finish. `stop_timeout` later,
/// or at a second signal: abandon them (their jobs are released, metrics flushed). A third
/// signal exits at once (exit 1), should the flush itself hang; leases then lapse.
async fn wait_for_signal(trigger: s3cse::rekey::ShutdownTrigger, stop_timeout: Duration) {
    let mut signals = StopSignals::new();
    signals.next().await;
    tracing::warn!(
        stop_timeout_secs = stop_timeout.as_secs(),
        "stop requested: finishing the objects in flight, releasing the rest"
    );
    trigger.trigger();
    tokio::select! {
        _ = signals.next() => tracing::warn!("second stop signal: abandoning the objects in flight"),
        _ = tokio::time::sleep(stop_timeout) => {
            tracing::warn!("stop timeout: abandoning the objects in flight")
        }
    }
    trigger.abandon();
    signals.next().await;
    tracing::error!("third stop signal: exiting now");
    std::process::exit(1);
}

/// The exit code of a run that stopped on an error: a listing that cannot be followed is a
/// broken bucket-level contract (exit 2, like an access error), anything else exit 1.
fn rekey_failure(e: anyhow::Error) -> Failure {
    match e.downcast_ref::<s3cse::rekey::RekeyError>() {
        Some(s3cse::rekey::RekeyError::Listing(_) | s3cse::rekey::RekeyError::Manifest(_)) => {
            Failure::usage(e)
        }
        _ => Failure::failed(e),
    }
}

async fn run(a: RunArgs, scan_target: Option<ScanTarget>, term: &Term) -> CliResult {
    let do_scan = scan_target.is_some();
    let started = std::time::Instant::now();
    let shard = a.shard.resolve()?;
    let Some(kms_key_id) = a.keys.kms_key_id.clone() else {
        return Err(Failure::usage(anyhow!(
            "--kms-key-id (or S3CSE_KMS_KEY_ID) is required: the key to re-key to"
        )));
    };
    check_copy_parts(a.copy_part_threshold, a.copy_part_size)?;
    if a.dry_run && matches!(a.noncurrent, NoncurrentArg::Delete) {
        return Err(Failure::usage(anyhow!(
            "--dry-run writes nothing: it cannot be combined with --noncurrent delete"
        )));
    }
    // The versions pass lists the bucket (ListObjectVersions): `work` names no bucket, and a
    // manifest run is there not to list it.
    let manifest_run = scan_target.as_ref().is_some_and(|t| t.manifest.is_some());
    if matches!(a.noncurrent, NoncurrentArg::Delete) && (!do_scan || manifest_run) {
        return Err(Failure::usage(anyhow!(
            "--noncurrent delete needs `rekey` listing the bucket (not `work`, not --manifest)"
        )));
    }
    check_textfile(a.metrics_textfile.as_deref())?;
    let metrics = new_metrics();
    // Raw legacy keys from the files (exit 2 on a bad file); KMS is added below, decorated.
    let raw = KeyArgs {
        kms_key_id: None,
        ..a.keys.clone()
    };
    let keyring = raw.keyring(false).await?;
    // Counts the SDK's own retries (DescribeKey); RekeyKms counts its attempts itself.
    let kms_sdk = count_kms_attempts(&kms_client().await, metrics.clone());
    let target = describe_key(&kms_sdk, &kms_key_id, &metrics)
        .await
        .with_context(|| format!("KMS key {kms_key_id}"))
        .map_err(Failure::usage)?;
    tracing::info!(key_id = %target.key_id, arn = %target.arn, "target KMS key");
    let policy = source_policy(&a, &kms_sdk, &target.arn, &metrics).await?;
    tracing::info!(%policy, "source KMS keys");
    let kms_limit = RateLimit::per_second(a.kms_rps);
    let s3_limit = RateLimit::per_second(a.s3_rps);
    // RekeyKms retries KMS itself; the SDK's retries would multiply with its own.
    // `--concurrency` is the KMS requests in flight; the workers keep more objects than that
    // in flight around them (`worker::in_flight`).
    let kms: Arc<dyn KmsClient> = Arc::new(
        RekeyKms::new(
            Arc::new(AwsKms::new(without_sdk_retries(&kms_sdk)).with_source_policy(policy)),
            kms_limit.clone(),
            metrics.clone(),
        )
        .with_concurrency(a.concurrency),
    );
    let keyring = keyring.with_kms(KmsKeyring::any_key(
        kms.clone(),
        Some(target.key_id.clone()),
    ));
    let conf = sdk_config().await;
    // Every S3 attempt counted where it happens, the SDK's own retries included.
    let s3 = count_s3_attempts(&a.aws.s3_client(&conf).await, metrics.clone());
    let (bucket, prefix, list_page_size, listers, manifest) = match scan_target {
        Some(t) => (t.bucket, t.prefix, t.list_page_size, t.listers, t.manifest),
        None => (String::new(), String::new(), MAX_LIST_PAGE_SIZE, 1, None),
    };
    if do_scan {
        check_bucket(&s3, &bucket).await?;
    }
    let (store, _lock) = open_store(&a.state).await?;
    let _share = share_limits(&store, &a.state, &[kms_limit, s3_limit.clone()]).await?;
    if a.retry_failed && !a.dry_run {
        let n = store
            .retry_failed(true)
            .await
            .context("re-queueing failed objects")
            .map_err(Failure::usage)?;
        tracing::info!(objects = n, "re-queued failed and conflicting objects");
    }
    let client = S3Cse::new(s3, keyring)
        .with_policy(DecryptPolicy::legacy())
        .with_buffer_budget(a.max_buffer_mib << 20);
    // Once per bucket: whether ACL grants and Object Lock settings need a read per object.
    // `work` alone does not name the bucket: every attribute is then read per object.
    let attribute_policy = if bucket.is_empty() {
        AttributePolicy::READ_ALL
    } else {
        AttributePolicy::discover(&client, &bucket)
            .await
            .with_context(|| format!("reading the settings of bucket {bucket}"))
            .map_err(Failure::usage)?
    };
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_server = match a.metrics_addr {
        Some(addr) => {
            let (bound, task) = metrics::serve(metrics.clone(), addr, async {
                let _ = metrics_stopped.await;
            })
            .await
            .map_err(|e| Failure::usage(anyhow!(e)))?;
            tracing::info!(addr = %bound, "serving metrics at /metrics");
            Some(task)
        }
        None => None,
    };
    let config = RekeyConfig {
        bucket,
        prefix,
        shard,
        manifest,
        list_page_size,
        listers,
        context: context_of(&a.context),
        concurrency: a.concurrency.max(1),
        dry_run: a.dry_run,
        reencrypt: a.reencrypt,
        goal: a.goal.goal(),
        require_commitment: a.commitment.required(),
        verify: !a.no_verify,
        max_claims: a.max_attempts.max(1),
        object_timeout: Duration::from_secs(a.object_timeout.max(1)),
        always_read_tags: a.always_read_tags,
        lease: Duration::from_secs(a.lease_secs.max(3)),
        scan: do_scan,
        work: true,
        client,
        attribute_policy,
        owner: Arc::new(KeyOwner::new(target.clone(), kms.clone())),
        kms,
        target,
        store: store.clone(),
        metrics: metrics.clone(),
        s3_limit: s3_limit.clone(),
        copy_part_threshold: a.copy_part_threshold,
        copy_part_size: a.copy_part_size,
    };
    let (trigger, shutdown) = Shutdown::new();
    let signals = tokio::spawn(wait_for_signal(
        trigger,
        Duration::from_secs(a.stop_timeout),
    ));
    let live = super::live::start(term, store.clone(), metrics.clone());
    // The noncurrent versions are looked at once the objects are done (`rekey` listing the
    // bucket only: `work` names no bucket, a manifest run does not list it).
    let sweep = (do_scan && !manifest_run).then(|| (config.clone(), shutdown.clone()));
    let mut result = s3cse::rekey::run(config, shutdown).await;
    let mut versions: Option<NoncurrentSummary> = None;
    if let (Ok(s), Some((config, shutdown))) = (&result, sweep)
        && !s.interrupted
    {
        match noncurrent::sweep(&config, a.noncurrent.into(), &shutdown).await {
            Ok(v) => versions = Some(v),
            // `report` only informs: the objects' migration stands, the versions are looked at
            // again next run. A `delete` that cannot finish fails the run.
            Err(e) if matches!(a.noncurrent, NoncurrentArg::Report) => {
                tracing::warn!(error = %e, "noncurrent versions not recorded");
            }
            Err(e) => result = Err(e),
        }
    }
    signals.abort();
    if let Some(live) = live {
        live.finish(term);
    }
    let code = match &result {
        Ok(s) if s.work.failed + s.work.conflicts == 0 && !s.interrupted => 0,
        Ok(_) => 1,
        Err(_) => 1,
    };
    if code == 0 {
        metrics.mark_success();
    }
    if let Ok(c) = store.state_counts().await {
        metrics.set_queue(&c);
    }
    if let Some(url) = &a.pushgateway {
        // The group the chart's alerts select on: job, plus the shard of an Indexed Job.
        let shard_label = shard.map(|s| s.index.to_string());
        let grouping: Vec<(&str, &str)> = shard_label
            .as_deref()
            .map(|i| ("shard", i))
            .into_iter()
            .collect();
        let push = metrics::push_add(&metrics, url, "s3cse-rekey", &grouping);
        let pushed = match &result {
            // After a stop signal the pod's grace period is running out: a shorter wait.
            Ok(s) if s.interrupted => tokio::time::timeout(STOP_PUSH_TIMEOUT, push)
                .await
                .unwrap_or(Err(metrics::MetricsError::Timeout(STOP_PUSH_TIMEOUT))),
            _ => push.await,
        };
        if let Err(e) = pushed {
            tracing::warn!(error = %e, "pushing metrics to the Pushgateway failed");
        }
    }
    if let Some(path) = &a.metrics_textfile {
        let m = metrics.clone();
        let p = path.clone();
        let written = tokio::task::spawn_blocking(move || m.write_textfile(&p))
            .await
            .map_err(|e| anyhow!(e))
            .and_then(|r| r.map_err(|e| anyhow!(e)));
        if let Err(e) = written {
            tracing::warn!(error = %e, "writing the metrics textfile failed");
        }
    }
    // A last scrape may still be running: let it finish (bounded by the server's grace).
    let _ = stop_metrics.send(());
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    store.close().await;
    let summary = result.context("rekey").map_err(rekey_failure)?;
    if !term.quiet {
        print_summary(&summary, a.dry_run, started.elapsed());
        if let Some(v) = versions.filter(|v| v.versioned) {
            println!(
                "noncurrent versions: {} listed, {} under a legacy key (they keep it alive), {} deleted, {} kept",
                v.listed, v.remaining, v.deleted, v.kept
            );
        }
    }
    if let Some(released) = summary.abandoned {
        return Err(Failure::failed(anyhow!(
            "stopped: {released} object(s) in flight abandoned and queued again for the next \
             run; see `s3cse status --state {}`",
            a.state
        )));
    }
    if code != 0 {
        return Err(Failure::failed(anyhow!(
            "{} object(s) failed, {} left in conflict{}: see `s3cse report --state {} --only failed`",
            summary.work.failed,
            summary.work.conflicts,
            if summary.interrupted {
                " (interrupted)"
            } else {
                ""
            },
            a.state
        )));
    }
    Ok(())
}

/// `--source-kms-key` (each resolved to its ARN with DescribeKey) and `--source-kms-account`
/// around the target key: the KMS keys a source data key may be under.
async fn source_policy(
    a: &RunArgs,
    kms: &aws_sdk_kms::Client,
    target_arn: &str,
    metrics: &Metrics,
) -> CliResult<SourceKeyPolicy> {
    let mut keys = Vec::with_capacity(a.source_kms_keys.len());
    for id in &a.source_kms_keys {
        let k = describe_key(kms, id, metrics)
            .await
            .with_context(|| format!("--source-kms-key {id}"))
            .map_err(Failure::usage)?;
        keys.push(k.arn);
    }
    SourceKeyPolicy::new(target_arn, &keys, &a.source_kms_accounts)
        .context("source KMS keys")
        .map_err(Failure::usage)
}

fn print_summary(s: &RunSummary, dry_run: bool, took: Duration) {
    let mut out = std::io::stdout().lock();
    if let Some(scan) = &s.scan {
        let _ = writeln!(
            out,
            "scan: listed {} keys ({} new, {} changed, {} unchanged)",
            count(scan.listed),
            count(scan.enqueued.inserted),
            count(scan.enqueued.reset),
            count(scan.enqueued.unchanged)
        );
    }
    if let Some(m) = &s.manifest {
        let _ = writeln!(
            out,
            "manifest: read {} rows ({} new, {} changed, {} unchanged; left alone: {} outside \
             the bucket/prefix, {} malformed, {} delete markers or noncurrent, {} other shards)",
            m.rows,
            m.enqueued.inserted,
            m.enqueued.reset,
            m.enqueued.unchanged,
            m.outside,
            m.malformed,
            m.skipped,
            m.other_shards
        );
    }
    if s.abandoned.is_some() {
        // The workers' tallies went with them; the job table has every outcome.
        let _ = writeln!(out, "work: stopped, the objects in flight abandoned");
        return;
    }
    if dry_run {
        let _ = writeln!(out, "dry run: nothing was written. Plan (objects, bytes):");
        let width = s
            .work
            .planned
            .keys()
            .map(|a| a.len())
            .max()
            .unwrap_or(0)
            .max(24);
        for (action, (n, b)) in &s.work.planned {
            let _ = writeln!(
                out,
                "  {action:<width$} {:>10} {:>12}",
                count(*n),
                bytes(*b)
            );
        }
        return;
    }
    let w = &s.work;
    let secs = took.as_secs_f64().max(0.001);
    let _ = writeln!(
        out,
        "work: {} migrated ({}), {} skipped, {} failed, {} conflict, {} requeued in {} ({}, {})",
        count(w.migrated),
        bytes(w.bytes_migrated),
        count(w.skipped),
        count(w.failed),
        count(w.conflicts),
        count(w.requeued),
        duration(took.as_secs()),
        objects_per_sec((w.migrated + w.skipped + w.failed) as f64 / secs),
        bytes_per_sec(w.bytes_migrated as f64 / secs),
    );
}

pub async fn status(a: StatusArgs) -> CliResult {
    let Some(every) = a.watch else {
        return print_out(&status_text(&a).await?);
    };
    // Redrawn in place at a terminal (cursor home, clear screen); appended otherwise, so a log
    // of it reads in order. Ends at Ctrl-C, or once nothing is pending or running.
    let every = Duration::from_secs(every.max(1));
    let in_place = std::io::stdout().is_terminal();
    loop {
        let text = status_text(&a).await?;
        let stamp = chrono_free_now();
        let screen = if in_place {
            format!(
                "\x1b[H\x1b[2J{text}\nrefreshed {stamp} every {}; Ctrl-C to stop\n",
                duration(every.as_secs())
            )
        } else {
            format!("--- {stamp}\n{text}")
        };
        print_out(&screen)?;
        if finished(&a).await {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Some objects finished and nothing is pending or running in the state file.
async fn finished(a: &StatusArgs) -> bool {
    let Ok(store) = open_store_read_only(&a.state).await else {
        return false;
    };
    let counts = store.state_counts().await;
    store.close().await;
    counts.is_ok_and(|c| c.finished().objects > 0 && c.remaining().objects == 0)
}

/// `HH:MM:SS` UTC, for the `--watch` refresh line.
fn chrono_free_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

/// `status` once: JSON (exact numbers) or the text a person reads.
async fn status_text(a: &StatusArgs) -> CliResult<String> {
    let store = open_store_read_only(&a.state).await?;
    let c = store
        .counts()
        .await
        .context("reading the state file")
        .map_err(Failure::failed)?;
    let versions = store
        .version_counts()
        .await
        .context("reading the state file")
        .map_err(Failure::failed)?;
    let work = store
        .work_progress()
        .await
        .context("reading the state file")
        .map_err(Failure::failed)?;
    store.close().await;
    let done = c.by_state.finished();
    let left = c.by_state.remaining();
    // Rate from the finished_at timestamps of this state file's jobs.
    let rate = match (c.first_finished_at, c.last_finished_at) {
        // A run that finished within one second still has a rate.
        (Some(a), Some(b)) => Some(done.objects as f64 / (b - a).max(1) as f64),
        _ => None,
    };
    let eta = rate
        .filter(|r| *r > 0.0)
        .map(|r| (left.objects as f64 / r).ceil() as u64);
    if a.json {
        let by_state: serde_json::Map<String, serde_json::Value> = c
            .by_state
            .iter()
            .map(|(s, t)| {
                (
                    s.as_str().to_owned(),
                    serde_json::json!({"objects": t.objects, "bytes": t.bytes}),
                )
            })
            .collect();
        let by_format: serde_json::Map<String, serde_json::Value> = c
            .by_source_format
            .iter()
            .map(|(f, t)| {
                (
                    f.clone(),
                    serde_json::json!({"objects": t.objects, "bytes": t.bytes}),
                )
            })
            .collect();
        let actions = |m: &BTreeMap<(Action, Option<String>), Tally>| {
            m.iter()
                .map(|((a, r), t)| {
                    (
                        action_label(*a, r.as_deref()),
                        serde_json::json!({"objects": t.objects, "bytes": t.bytes}),
                    )
                })
                .collect::<serde_json::Map<String, serde_json::Value>>()
        };
        let v = serde_json::json!({
            "total": {"objects": c.total.objects, "bytes": c.total.bytes},
            "by_state": by_state,
            "by_source_format": by_format,
            "by_action": actions(&c.by_action),
            "planned": actions(&c.planned),
            "bytes_done": done.bytes,
            "bytes_left": left.bytes,
            "objects_per_second": rate,
            "eta_seconds": eta,
            "noncurrent_versions": versions_json(&versions),
            "listing": {
                "ranges": {"pending": work.ranges[0], "running": work.ranges[1], "done": work.ranges[2]},
                "keys_listed": work.keys_listed,
            },
            "manifest": {
                "files": {"pending": work.files[0], "running": work.files[1], "done": work.files[2]},
                "rows": work.manifest_rows,
            },
        });
        return Ok(format!("{v}\n"));
    }
    // Built whole, then written once: a closed stdout ends the command quietly.
    let labelled = |m: &BTreeMap<(Action, Option<String>), Tally>| {
        m.iter()
            .map(|((a, r), t)| (action_label(*a, r.as_deref()), *t))
            .collect::<Vec<_>>()
    };
    let mut rows: Vec<(String, Vec<(String, Tally)>)> = vec![
        (
            "by state:".into(),
            c.by_state
                .iter()
                .map(|(s, t)| (s.as_str().to_owned(), t))
                .collect(),
        ),
        (
            "by source format:".into(),
            c.by_source_format
                .iter()
                .map(|(f, t)| (f.clone(), *t))
                .collect(),
        ),
        ("by action:".into(), labelled(&c.by_action)),
    ];
    if !c.planned.is_empty() {
        rows.push((
            "planned (pending, from --dry-run):".into(),
            labelled(&c.planned),
        ));
    }
    // Wide enough for the longest name (a V3 format name is longer than 24 characters).
    let width = rows
        .iter()
        .flat_map(|(_, r)| r.iter().map(|(k, _)| k.chars().count()))
        .max()
        .unwrap_or(0)
        .max(12);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "total: {} objects, {}",
        count(c.total.objects),
        bytes(c.total.bytes)
    );
    if work.ranges.iter().any(|n| *n > 0) {
        let [pending, running, done] = work.ranges;
        let _ = writeln!(
            out,
            "listing: {} keys listed; key ranges: {} done, {} listing, {} waiting",
            count(work.keys_listed),
            count(done),
            count(running),
            count(pending)
        );
    }
    if work.files.iter().any(|n| *n > 0) {
        let [pending, running, done] = work.files;
        let _ = writeln!(
            out,
            "manifest: {} rows read; data files: {} done, {} reading, {} waiting",
            count(work.manifest_rows),
            count(done),
            count(running),
            count(pending)
        );
    }
    for (title, lines) in &rows {
        let _ = writeln!(out, "{title}");
        for (k, t) in lines {
            let _ = writeln!(
                out,
                "  {k:<width$}  {:>10} objects  {:>12}",
                count(t.objects),
                bytes(t.bytes)
            );
        }
    }
    let _ = writeln!(
        out,
        "done: {} objects, {}; left: {} objects, {}",
        count(done.objects),
        bytes(done.bytes),
        count(left.objects),
        bytes(left.bytes)
    );
    let span = match (c.first_finished_at, c.last_finished_at) {
        (Some(a), Some(b)) => Some((b - a).max(1) as u64),
        _ => None,
    };
    let _ = match (span, left.objects) {
        (None, _) => writeln!(out, "rate: none yet (no object finished)"),
        (Some(secs), 0) => writeln!(
            out,
            "finished: {} objects in {} ({}, {})",
            count(done.objects),
            duration(secs),
            objects_per_sec(done.objects as f64 / secs as f64),
            bytes_per_sec(done.bytes as f64 / secs as f64)
        ),
        (Some(secs), _) => writeln!(
            out,
            "rate: {}, {} (average since the first object finished); ETA {}",
            objects_per_sec(done.objects as f64 / secs as f64),
            bytes_per_sec(done.bytes as f64 / secs as f64),
            eta.map_or_else(|| "unknown".to_owned(), duration)
        ),
    };
    versions_text(&mut out, &versions);
    Ok(out)
}

/// Noncurrent versions by class, state and (remaining ones) reason, for `status --json`.
fn versions_json(counts: &[VersionCount]) -> serde_json::Value {
    let mut by_class = serde_json::Map::new();
    let mut by_state = serde_json::Map::new();
    let mut legacy = serde_json::Map::new();
    let (mut total, mut bytes, mut alive) = (0u64, 0u64, 0u64);
    let add = |m: &mut serde_json::Map<String, serde_json::Value>, k: &str, n: u64| {
        let e = m.entry(k.to_owned()).or_insert(serde_json::json!(0));
        *e = serde_json::json!(e.as_u64().unwrap_or(0) + n);
    };
    for c in counts {
        total += c.versions;
        bytes += c.bytes;
        add(&mut by_class, &c.class, c.versions);
        add(&mut by_state, c.state.as_str(), c.versions);
        if c.class == "remaining" && c.state != VersionState::Deleted {
            alive += c.versions;
            add(&mut legacy, c.detail.as_deref().unwrap_or("-"), c.versions);
        }
    }
    serde_json::json!({
        "total": total,
        "bytes": bytes,
        "by_class": by_class,
        "by_state": by_state,
        "remaining_not_deleted": alive,
        "remaining_by_reason": legacy,
    })
}

/// The `status` section on noncurrent versions (nothing when none were recorded).
fn versions_text(out: &mut String, counts: &[VersionCount]) {
    if counts.is_empty() {
        return;
    }
    let _ = writeln!(out, "noncurrent versions (class, reason, state):");
    for c in counts {
        let k = format!(
            "{} {} {}",
            c.class,
            c.detail.as_deref().unwrap_or("-"),
            c.state.as_str()
        );
        let _ = writeln!(out, "  {k:<40} {:>10} {:>16}", c.versions, c.bytes);
    }
    let alive: u64 = counts
        .iter()
        .filter(|c| c.class == "remaining" && c.state != VersionState::Deleted)
        .map(|c| c.versions)
        .sum();
    if alive > 0 {
        let _ = writeln!(
            out,
            "  {alive} noncurrent version(s) under a legacy key keep it alive: \
             `s3cse report --noncurrent` lists them, `rekey --noncurrent delete` removes them"
        );
    }
}

pub async fn report(a: ReportArgs) -> CliResult {
    let store = open_store_read_only(&a.state).await?;
    if let Some(to) = &a.to {
        return report_to_s3(&a, &store, to).await;
    }
    if a.noncurrent {
        let r = report_versions(&store, a.format).await;
        store.close().await;
        return r;
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let io = Failure::stdout;
    if matches!(a.format, ReportFormat::Csv) {
        writeln!(out, "Bucket,Key,VersionId,TaskStatus,ErrorCode,HTTPStatusCode,ResultMessage,SourceFormat,Action")
            .map_err(io)?;
    }
    let mut rows = store.report(a.only);
    while let Some(r) = rows
        .try_next()
        .await
        .context("reading the state file")
        .map_err(Failure::failed)?
    {
        match a.format {
            ReportFormat::Jsonl => {
                let line = serde_json::to_string(&r).map_err(|e| Failure::failed(anyhow!(e)))?;
                writeln!(out, "{line}").map_err(io)?;
            }
            ReportFormat::Csv => {
                let ours = [
                    csv_field(r.source_format.as_deref().unwrap_or("")),
                    r.action.map(|a| a.as_str().to_owned()).unwrap_or_default(),
                ];
                let fields = batch_ops_fields(&r);
                writeln!(out, "{},{}", fields.join(","), ours.join(",")).map_err(io)?;
            }
        }
    }
    drop(rows);
    out.flush().map_err(io)?;
    store.close().await;
    Ok(())
}

/// `report --noncurrent`: every recorded noncurrent version, in id (listing) order.
async fn report_versions(store: &JobStore, format: ReportFormat) -> CliResult {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let io = Failure::stdout;
    if matches!(format, ReportFormat::Csv) {
        writeln!(
            out,
            "Bucket,Key,VersionId,Size,Class,Reason,WrappingKey,State,Note,DeletedAt"
        )
        .map_err(io)?;
    }
    let mut after = 0;
    loop {
        let page = store
            .versions_page(after, 1000)
            .await
            .context("reading the state file")
            .map_err(Failure::failed)?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.id;
        for v in &page {
            match format {
                ReportFormat::Jsonl => {
                    let line = serde_json::to_string(v).map_err(|e| Failure::failed(anyhow!(e)))?;
                    writeln!(out, "{line}").map_err(io)?;
                }
                ReportFormat::Csv => {
                    let opt = |s: &Option<String>| csv_field(s.as_deref().unwrap_or(""));
                    let fields = [
                        csv_field(&v.bucket),
                        csv_field(&v.key),
                        csv_field(&v.version_id),
                        v.size.to_string(),
                        csv_field(&v.class),
                        opt(&v.detail),
                        opt(&v.wrapping_key),
                        v.state.as_str().to_owned(),
                        opt(&v.note),
                        v.deleted_at.map(|t| t.to_string()).unwrap_or_default(),
                    ];
                    writeln!(out, "{}", fields.join(",")).map_err(io)?;
                }
            }
        }
    }
    out.flush().map_err(io)?;
    Ok(())
}

/// `rewrite`, `rewrap`, `skip:plaintext`, …: an action and its skip reason.
fn action_label(action: Action, skip_reason: Option<&str>) -> String {
    match skip_reason {
        Some(r) => format!("{}:{r}", action.as_str()),
        None => action.as_str().to_owned(),
    }
}

/// `report --to s3://BUCKET/PREFIX/`: the Batch Operations layout in S3.
async fn report_to_s3(a: &ReportArgs, store: &JobStore, to: &str) -> CliResult {
    let (bucket, mut prefix) = parse_s3_url(to, false)?;
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    let conf = sdk_config().await;
    let s3 = a.aws.s3_client(&conf).await;
    check_bucket(&s3, &bucket).await?;
    let client = S3Cse::new(s3, s3cse::keyring::Keyring::new());
    let job_id = a
        .job_id
        .clone()
        .unwrap_or_else(s3cse::rekey::report::new_job_id);
    let s = s3cse::rekey::report::write_to_s3(
        &client,
        store,
        &bucket,
        &prefix,
        &job_id,
        a.max_file_bytes,
    )
    .await
    .context("writing the report")
    .map_err(Failure::failed)?;
    store.close().await;
    print_out(&format!(
        "s3://{bucket}/{}: {} succeeded, {} failed in {} file(s); {} unfinished job(s) left out\n",
        s.manifest_key,
        s.succeeded,
        s.failed,
        s.files.len(),
        s.unfinished
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads one RFC 4180 field that spans the whole of `cell`; `None` if it is not one.
    fn parse_cell(cell: &str) -> Option<String> {
        let Some(inner) = cell.strip_prefix('"') else {
            return (!cell.contains([',', '"', '\n', '\r'])).then(|| cell.to_owned());
        };
        let inner = inner.strip_suffix('"')?;
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '"' && chars.next() != Some('"') {
                return None;
            }
            out.push(c);
        }
        Some(out)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Fuzz target "report/CSV escaping": every key is one field that reads back as itself
        /// (behind a `'` where a spreadsheet would see a formula), and no field starts a
        /// formula outside quotes.
        #[test]
        fn csv_cells_read_back_and_never_start_a_formula(
            s in "[=+@\\-\t\r\n,\" a-zé☃]{0,12}|\\PC{0,24}"
        ) {
            let cell = csv_field(&s);
            let back = parse_cell(&cell);
            let formula = s.starts_with(['=', '+', '-', '@', '\t', '\r']);
            let want = if formula { format!("'{s}") } else { s.clone() };
            proptest::prop_assert_eq!(back, Some(want), "{:?} -> {:?}", s, cell);
            proptest::prop_assert!(!cell.starts_with(['=', '+', '-', '@', '\t', '\r']));
        }
    }
}
