//! The job table of `s3cse rekey` through sqlx: SQLite (one process, a local file) or
//! PostgreSQL (any number of processes on any number of machines sharing one queue). Schemas
//! in `../../migrations/{sqlite,postgres}`, same tables, same versions.
//!
//! # Two backends
//! [`JobStore`] holds a [`Backend`]: `Sqlite(SqlitePool)` or `Postgres(PgPool)`. Each method
//! either runs one statement on both, through [`on_pool!`] (the body is compiled once per
//! pool type), or matches on the backend where the SQL differs, the two statements kept side
//! by side as `..._SQLITE` / `..._PG` consts. What makes most SQL portable:
//! * placeholders are `$1`, `$2`, ... (SQLite reads `$N` as parameter N, as PostgreSQL does);
//! * PostgreSQL's migration defines `unixepoch()` (on the database clock), so time reads the
//!   same on both; integers are BIGINT there and every integer is decoded as `i64`;
//! * `sum()` is wrapped in `CAST(... AS BIGINT)` (PostgreSQL's `sum(bigint)` is numeric);
//!   `max(a, b)` becomes `CASE` (PostgreSQL has `greatest`, SQLite does not).
//!
//! What differs: id lists (`json_each(?)` vs `= ANY($1)`), the claim (SQLite's `INDEXED BY`
//! vs PostgreSQL's `FOR UPDATE SKIP LOCKED`), the enqueue (SQLite counts inserts under its
//! write lock, PostgreSQL binds arrays and reads `xmax = 0`), and opening (quick_check, WAL, the file lock).
//! The `status` counters (`job_counts`, migration 0005) are kept by triggers on both: a row
//! trigger on SQLite, statement triggers with transition tables on PostgreSQL, adding into
//! one of 16 slots per group so concurrent workers do not queue on one counter row.
//!
//! Porting a SQLite-only method: write its SQL with `$N` placeholders and `unixepoch()`, decode
//! integers as `i64`, wrap the body in `on_pool!(self, pool => ...)` (both arms must have one
//! type: map an `execute` result to `rows_affected()` inside the macro; rows decode through
//! the `FromRow` impls generated for both row types by `impl_from_rows!`), and add the
//! table to both migration directories with the same version number. Only where that does
//! not work, `match &self.backend` with two statements side by side.
//!
//! # Life of a job
//! ```text
//!  scanner: enqueue_page ──► pending ──claim──► running ──complete──► done | failed | conflict
//!                              ▲                  │ │
//!                              └──── requeue ─────┘ │  (412: the object changed under us)
//!                              └──── release ───────┘  (graceful stop: the attempt is given back)
//!                              └──── lease expiry ──►  (a dead worker's rows are claimed again)
//! ```
//! A later scan puts a finished row back to `pending` only when the listed ETag is neither the
//! one we listed before nor the one we wrote ourselves (`result_etag`): i.e. someone else
//! rewrote the object since, the nightly-CronJob case.
//!
//! # Concurrency
//! SQLite has one writer at a time (WAL lets readers run beside it). Every write here is either
//! one auto-committed statement (the claim, the outcome writes) or one short `BEGIN IMMEDIATE`
//! transaction (`enqueue_page`): taking the write lock up front makes writers queue on the busy
//! timeout instead of failing with `SQLITE_BUSY` when a read lock cannot be upgraded.
//! Every outcome write is guarded by `WHERE id = ? AND lease_owner = ?`, so a worker whose lease
//! expired and whose row was claimed by another worker cannot overwrite the newer result; the
//! methods return whether the write applied.
//!
//! ETags are compared as opaque strings: callers must pass them in one spelling (S3 returns them
//! quoted in both ListObjectsV2 and PutObject, so passing them through unchanged works).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use futures::Stream;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, FromRow, Row};

mod noncurrent;
mod postgres;
#[cfg(test)]
mod tests;
mod work;

pub use self::noncurrent::{ListedVersion, NoncurrentVersion, VersionCount, VersionState};
pub use self::postgres::{LiveProcesses, StateLocation};
pub use self::work::{
    ListRange, ManifestFile, RangeSeed, Remaining, SplitPage, WorkProgress, WorkState,
};

/// Connections in the pool. SQLite serializes writers anyway, so more connections only add
/// lock contention; a few let `status`/report reads run beside the writers (WAL).
const POOL_SIZE: u32 = 4;

/// How long a writer waits for the write lock before giving up with `SQLITE_BUSY`. Long enough
/// to ride out a big `enqueue_page` transaction or a WAL checkpoint.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLite's default bound-parameter limit per statement (`SQLITE_MAX_VARIABLE_NUMBER`).
const MAX_PARAMS: usize = 32_766;

/// Bound parameters per row of the enqueue upsert (bucket, key, etag, size, last_modified,
/// storage_class). The bucket is bound on every row rather than once as `?1`: numbered
/// parameters made sqlx's binding about 6x slower here (measured).
const ENQUEUE_PARAMS_PER_ROW: usize = 6;

/// Rows per upsert statement: a ListObjectsV2 page (at most 1000 keys) fits in one statement.
const ENQUEUE_CHUNK: usize = {
    let by_limit = MAX_PARAMS / ENQUEUE_PARAMS_PER_ROW;
    if by_limit < 1000 { by_limit } else { 1000 }
};

/// Rows fetched per query by [`JobStore::report`].
const REPORT_PAGE: u32 = 1000;

/// Errors of the job store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error("cannot open job database {path}: {source}")]
    Open {
        /// The file we tried to open.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: sqlx::Error,
    },
    /// The PostgreSQL database could not be reached or refused us.
    #[error("cannot connect to the job database {target}: {source}")]
    Connect {
        /// The database, its password left out.
        target: String,
        /// What sqlx said.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the embedded migrations failed (e.g. the file was written by a newer s3cse).
    #[error("job database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other database error (I/O, busy timeout exceeded, constraint violation).
    #[error("job database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A column held a value this version does not know (the file was edited by hand or
    /// written by another version).
    #[error("job database holds unexpected value {value:?} in column {column}")]
    Corrupt {
        /// Column name.
        column: &'static str,
        /// The value found.
        value: String,
    },
    /// Caller bug: an [`Outcome`] must be final (`done`, `failed` or `conflict`).
    #[error("an outcome must be done, failed or conflict, not {0}")]
    NotFinal(JobState),
    /// A value could not be encoded for the database.
    #[error("cannot encode a value for the job database: {0}")]
    Encode(String),
    /// Another process holds the state file's writer lock ([`StateLock`]).
    #[error(
        "the state file {} is in use by another s3cse process (scan, work or rekey): one \
         process at a time works on a state file; wait for it to end, or give this run its own \
         --state",
        path.display()
    )]
    Locked {
        /// The state file.
        path: PathBuf,
    },
    /// SQLite's integrity check found the file damaged: nothing is done with it.
    #[error(
        "the state file {} is damaged ({detail}): nothing was done; restore it from a copy, or \
         start from a new state file (a new scan; finished objects are then skipped as current)",
        path.display()
    )]
    Damaged {
        /// The state file.
        path: PathBuf,
        /// The first problem `PRAGMA quick_check` reported.
        detail: String,
    },
    /// The file's schema is not the one this version reads: written by a newer s3cse (never
    /// migrated back), or, for [`JobStore::open_read_only`], an older one not yet migrated.
    #[error("{}", schema_message(*found, *ours))]
    Schema {
        /// The newest migration applied to the file (`None`: not a state file).
        found: Option<i64>,
        /// The newest migration this version has.
        ours: i64,
    },
}

fn schema_message(found: Option<i64>, ours: i64) -> String {
    match found {
        None => "not an s3cse state file (no schema version)".into(),
        Some(f) if f > ours => format!(
            "the state file has schema version {f}, newer than this s3cse's ({ours}): it was \
             written by a newer s3cse; use that version (the file was not changed)"
        ),
        Some(f) => format!(
            "the state file has schema version {f}, older than this s3cse's ({ours}): any \
             `s3cse scan`, `work` or `rekey` upgrades it (read-only commands do not)"
        ),
    }
}

/// The newest migration of this version.
fn our_schema_version() -> i64 {
    sqlx::migrate!("migrations/sqlite")
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

/// What a database's schema must be to be opened by this version.
#[derive(Debug, Clone, Copy)]
enum SchemaNeed {
    /// Not newer than ours (the migrations bring an older one up to date).
    NotNewer,
    /// Exactly ours (read-only opens: nothing is migrated).
    Exactly,
}

/// State of a job row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker.
    Pending,
    /// Leased to a worker until `lease_until`.
    Running,
    /// Finished: rewritten, rewrapped or skipped.
    Done,
    /// Finished with an error that retrying will not fix (or out of attempts).
    Failed,
    /// Finished because the object kept changing under us.
    Conflict,
}

impl JobState {
    /// All states, in display order.
    pub const ALL: [JobState; 5] = [
        JobState::Pending,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
        JobState::Conflict,
    ];

    /// The spelling stored in the database and used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Conflict => "conflict",
        }
    }

    /// Whether no worker will touch the row again (until a rescan sees a changed object).
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Conflict)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of parsing a [`JobState`] or [`Action`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct ParseError {
    what: &'static str,
    value: String,
}

impl FromStr for JobState {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ParseError {
                what: "job state",
                value: s.to_owned(),
            })
    }
}

/// What a worker did (or decided to do) with an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Re-encrypt the content under a new data key (legacy content cipher).
    Rewrite,
    /// Keep the content, re-wrap only the data key (metadata-only rewrite).
    Rewrap,
    /// Leave the object as it is (see the skip reason).
    Skip,
}

impl Action {
    /// All actions.
    pub const ALL: [Action; 3] = [Action::Rewrite, Action::Rewrap, Action::Skip];

    /// The spelling stored in the database and used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Rewrite => "rewrite",
            Action::Rewrap => "rewrap",
            Action::Skip => "skip",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| ParseError {
                what: "action",
                value: s.to_owned(),
            })
    }
}

/// One object from a ListObjectsV2 page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    /// Object key.
    pub key: String,
    /// ETag as listed (keep S3's quotes; see the module doc).
    pub etag: String,
    /// Size in bytes.
    pub size: u64,
    /// `LastModified` as listed (RFC 3339), kept for reports.
    pub last_modified: Option<String>,
    /// Storage class as listed.
    pub storage_class: Option<String>,
}

/// Identifies one listing whose progress is checkpointed in the `scans` table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScanKey {
    /// Bucket listed.
    pub bucket: String,
    /// Prefix listed (`""` for the whole bucket).
    pub prefix: String,
    /// `Some((index, count))` when this process lists shard `index` of `count`.
    pub shard: Option<(u32, u32)>,
}

impl ScanKey {
    /// The `shard` column: `""` when unsharded, else `"index/count"`.
    fn shard_text(&self) -> String {
        match self.shard {
            None => String::new(),
            Some((i, n)) => format!("{i}/{n}"),
        }
    }
}

/// What one [`JobStore::enqueue_page`] call changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnqueueStats {
    /// Keys seen for the first time (now `pending`).
    pub inserted: u64,
    /// Known keys whose object changed since (back to `pending`, results cleared).
    pub reset: u64,
    /// Known keys left as they were (same ETag, our own result, or currently `running`).
    pub unchanged: u64,
}

/// A job row as handed to a worker by [`JobStore::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Row id; the claim hands rows out in id order (listing order).
    pub id: i64,
    /// Bucket.
    pub bucket: String,
    /// Key.
    pub key: String,
    /// Version the worker read, if recorded.
    pub version_id: Option<String>,
    /// ETag as listed: the worker's conditional write uses it (`If-Match`).
    pub etag: String,
    /// Size as listed.
    pub size: u64,
    /// Listed `LastModified`.
    pub last_modified: Option<String>,
    /// Listed storage class (to preserve it on rewrite).
    pub storage_class: Option<String>,
    /// Current state.
    pub state: JobState,
    /// Format found by the worker, e.g. `v1-aes`.
    pub source_format: Option<String>,
    /// Action taken.
    pub action: Option<Action>,
    /// Why it was skipped.
    pub skip_reason: Option<String>,
    /// Claims so far, this one included. A worker should fail the job once this exceeds its
    /// limit: a row that crashes its worker comes back through lease expiry every time.
    pub attempts: u32,
    /// Times the object changed under a worker.
    pub conflicts: u32,
    /// Last error message.
    pub last_error: Option<String>,
    /// Last error code (S3/KMS error code or our own).
    pub error_code: Option<String>,
    /// HTTP status of the last error.
    pub http_status: Option<u16>,
    /// Worker holding the lease.
    pub lease_owner: Option<String>,
    /// Lease expiry, unix seconds.
    pub lease_until: Option<i64>,
    /// ETag of the object we wrote.
    pub result_etag: Option<String>,
    /// Version id of the object we wrote.
    pub result_version_id: Option<String>,
    /// Version id we replaced.
    pub previous_version_id: Option<String>,
    /// Hex SHA-256 of the plaintext, verified after the write.
    pub plaintext_sha256: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Unix seconds, set when the job reached a final state.
    pub finished_at: Option<i64>,
    /// What a worker was about to write when it last held the job, if no outcome followed.
    pub intent: Option<Intent>,
}

/// A write about to happen, recorded by [`JobStore::record_intent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// `rewrite` or `rewrap`.
    pub action: Action,
    /// Format of the source, e.g. `v1-aes`.
    pub source_format: String,
    /// ETag of the source about to be replaced.
    pub source_etag: Option<String>,
    /// Version id of the source (the way back on a versioned bucket).
    pub source_version_id: Option<String>,
    /// The multipart upload (or copy) the write started, recorded as soon as it exists: if the
    /// process dies before completing or aborting it, the next attempt aborts it, so no parts
    /// are left behind (they would be billed until a lifecycle rule removes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    /// Fingerprint of the envelope about to be written (`rekey::task::fingerprint`), recorded
    /// once the new data key exists, before the first byte is written: an object carrying it
    /// was written by this attempt and nothing else, so recovery recognises our own write and
    /// never an application's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The fingerprints of earlier attempts at this job whose writes were never seen to land
    /// (a write dropped at a deadline, a worker whose lease lapsed): any of them may still land
    /// later, and is then recognised as ours too. Kept until an outcome is recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_fingerprints: Vec<String>,
    /// ETag of the `<key>.instruction` object the source's envelope came from: deleted
    /// (conditionally) once the envelope is in the metadata, also by a recovering attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction_etag: Option<String>,
}

impl Intent {
    /// How many fingerprints an intent remembers: a job that needs more attempts than this is
    /// capped by `--max-attempts` long before.
    pub const MAX_FINGERPRINTS: usize = 32;

    /// Every fingerprint of this job's writes, the latest last (at most [`Self::MAX_FINGERPRINTS`]).
    pub fn all_fingerprints(&self) -> Vec<String> {
        let mut all = self.earlier_fingerprints.clone();
        all.extend(self.fingerprint.iter().cloned());
        let excess = all.len().saturating_sub(Self::MAX_FINGERPRINTS);
        all.drain(..excess);
        all
    }
}

/// The final outcome of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `Done`, `Failed` or `Conflict` (anything else is refused with [`StoreError::NotFinal`]).
    pub state: JobState,
    /// Format found, e.g. `v1-aes`, `v2-kms-gcm`.
    pub source_format: Option<String>,
    /// Action taken.
    pub action: Option<Action>,
    /// Why it was skipped, e.g. `plaintext`, `current`, `instruction-file`.
    pub skip_reason: Option<String>,
    /// ETag of the object we wrote.
    pub result_etag: Option<String>,
    /// Version id of the object we wrote.
    pub result_version_id: Option<String>,
    /// Version id we replaced (and read); also stored as the row's `version_id`.
    pub previous_version_id: Option<String>,
    /// Hex SHA-256 of the plaintext.
    pub plaintext_sha256: Option<String>,
    /// Error code, e.g. `AccessDenied`, `DecryptionFailed`.
    pub error_code: Option<String>,
    /// HTTP status of the failed request.
    pub http_status: Option<u16>,
    /// Human-readable error.
    pub last_error: Option<String>,
    /// Keep the job's intent (a failure after our write landed, a panic, a conflict): the next
    /// attempt, after `--retry-failed`, must still recognise and settle that write.
    pub keep_intent: bool,
}

impl Outcome {
    /// An outcome in `state` with every other field empty; fill in the rest with struct update
    /// syntax: `Outcome { action: Some(Action::Skip), ..Outcome::new(JobState::Done) }`.
    pub fn new(state: JobState) -> Self {
        Outcome {
            state,
            source_format: None,
            action: None,
            skip_reason: None,
            result_etag: None,
            result_version_id: None,
            previous_version_id: None,
            plaintext_sha256: None,
            error_code: None,
            http_status: None,
            last_error: None,
            keep_intent: false,
        }
    }
}

/// Objects and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Number of objects.
    pub objects: u64,
    /// Sum of their listed sizes.
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.objects += other.objects;
        self.bytes += other.bytes;
    }
}

/// Objects and bytes in each state; every state is present (zero when empty).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// `pending`.
    pub pending: Tally,
    /// `running`.
    pub running: Tally,
    /// `done`.
    pub done: Tally,
    /// `failed`.
    pub failed: Tally,
    /// `conflict`.
    pub conflict: Tally,
}

impl StateCounts {
    /// The tally of one state.
    pub fn get(&self, state: JobState) -> Tally {
        match state {
            JobState::Pending => self.pending,
            JobState::Running => self.running,
            JobState::Done => self.done,
            JobState::Failed => self.failed,
            JobState::Conflict => self.conflict,
        }
    }

    fn get_mut(&mut self, state: JobState) -> &mut Tally {
        match state {
            JobState::Pending => &mut self.pending,
            JobState::Running => &mut self.running,
            JobState::Done => &mut self.done,
            JobState::Failed => &mut self.failed,
            JobState::Conflict => &mut self.conflict,
        }
    }

    /// `(state, tally)` for every state.
    pub fn iter(&self) -> impl Iterator<Item = (JobState, Tally)> + '_ {
        JobState::ALL.into_iter().map(|s| (s, self.get(s)))
    }

    /// Work left: `pending` + `running`.
    pub fn remaining(&self) -> Tally {
        let mut t = self.pending;
        t.add(self.running);
        t
    }

    /// Work finished: `done` + `failed` + `conflict`.
    pub fn finished(&self) -> Tally {
        let mut t = self.done;
        t.add(self.failed);
        t.add(self.conflict);
        t
    }
}

/// Everything `s3cse rekey status` shows ([`JobStore::counts`]: kept counters and two index
/// probes, not a pass over the table).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// By state.
    pub by_state: StateCounts,
    /// By source format, over the rows a worker has classified.
    pub by_source_format: BTreeMap<String, Tally>,
    /// By action and skip reason, over the rows a worker has finished.
    pub by_action: BTreeMap<(Action, Option<String>), Tally>,
    /// By planned action and skip reason, over the pending rows a `--dry-run` classified.
    pub planned: BTreeMap<(Action, Option<String>), Tally>,
    /// All rows.
    pub total: Tally,
    /// Earliest `finished_at` (unix seconds): with `last_finished_at` and the finished bytes,
    /// the caller computes a rate and an ETA.
    pub first_finished_at: Option<i64>,
    /// Latest `finished_at` (unix seconds).
    pub last_finished_at: Option<i64>,
}

impl Counts {
    /// Adds one group of jobs (state, source format, action, skip reason).
    fn add_group(
        &mut self,
        state: &str,
        format: Option<String>,
        action: Option<&str>,
        skip_reason: Option<String>,
        t: Tally,
    ) -> Result<(), StoreError> {
        let state = parse_state(state)?;
        self.by_state.get_mut(state).add(t);
        self.total.add(t);
        if let Some(format) = format {
            self.by_source_format.entry(format).or_default().add(t);
        }
        if let Some(action) = action {
            let action = parse_action(action)?;
            let map = if state == JobState::Pending {
                &mut self.planned
            } else {
                &mut self.by_action
            };
            map.entry((action, skip_reason)).or_default().add(t);
        }
        Ok(())
    }
}

/// One row of the kept counters: state, source format, action, skip reason (the last three
/// spelled as [`unspell`] reads them), objects, bytes.
type CountGroup = (String, String, String, String, i64, i64);

/// A key column of `job_counts` back to the `jobs` value: '' is NULL, '.' + v is v (see
/// migrations/sqlite/0005_counts.sql).
fn unspell(s: String) -> Option<String> {
    s.strip_prefix('.').map(str::to_owned)
}

/// One line of `s3cse rekey report`, in the columns of an S3 Batch Operations completion
/// report plus ours. Serializes with the Batch Operations column names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    /// Job row id.
    #[serde(skip)]
    pub id: i64,
    /// Bucket.
    #[serde(rename = "Bucket")]
    pub bucket: String,
    /// Key.
    #[serde(rename = "Key")]
    pub key: String,
    /// The source version processed (`version_id`, else `previous_version_id`).
    #[serde(rename = "VersionId")]
    pub version_id: Option<String>,
    /// `succeeded` (done), `failed` (failed, conflict), or `pending` (pending, running; not a
    /// Batch Operations value).
    #[serde(rename = "TaskStatus")]
    pub task_status: &'static str,
    /// Error code.
    #[serde(rename = "ErrorCode")]
    pub error_code: Option<String>,
    /// HTTP status of the error.
    #[serde(rename = "HTTPStatusCode")]
    pub http_status: Option<u16>,
    /// What happened, in words: `rewrite`, `skip: plaintext`, or the error message.
    #[serde(rename = "ResultMessage")]
    pub result_message: String,
    /// Source format.
    pub source_format: Option<String>,
    /// Action.
    pub action: Option<Action>,
    /// State.
    pub state: JobState,
}

/// The writer lock of a state file: an exclusive advisory lock (`flock`) on the file itself,
/// held for as long as this value lives, released by the kernel when the process dies (a
/// SIGKILLed worker leaves no stale lock). Two `rekey` processes on one state file would each
/// scan the bucket, compete for the same rows and each report the other's objects in its
/// summary, metrics and exit code: one writer process per file, and the second is told why.
/// SQLite's own locks are `fcntl` locks, independent of this one on Linux.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    /// Takes the lock of `path` (creating the file if missing), or fails at once with
    /// [`StoreError::Locked`] when another process holds it.
    pub fn acquire(path: &Path) -> Result<StateLock, StoreError> {
        let open_err = |e: std::io::Error| StoreError::Open {
            path: path.to_owned(),
            source: sqlx::Error::Io(e),
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(open_err)?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
                path: path.to_owned(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(open_err(e)),
        }
    }
}

/// The job store. Cheap to clone (the pool is reference counted); share one per process.
#[derive(Debug, Clone)]
pub struct JobStore {
    backend: Backend,
}

/// Where the jobs live; see "Two backends" in the module doc.
#[derive(Debug, Clone)]
enum Backend {
    /// One writer process per file ([`StateLock`]).
    Sqlite(SqlitePool),
    /// Any number of processes; rows are claimed with `FOR UPDATE SKIP LOCKED`.
    Postgres(PgPool),
}

/// `on_pool!(store, pool => body)`: runs `body` with `pool` bound to the store's pool, once
/// per backend (the body is type-checked against both): for SQL that reads the same on both.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite($pool) => $body,
            $crate::store::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Columns of a [`Job`], in `FromRow` order.
macro_rules! job_columns {
    () => {
        "id, bucket, key, version_id, etag, size, last_modified, storage_class, state, \
         source_format, action, skip_reason, attempts, conflicts, last_error, error_code, \
         http_status, lease_owner, lease_until, result_etag, result_version_id, \
         previous_version_id, plaintext_sha256, created_at, updated_at, finished_at, intent"
    };
}
pub(crate) use job_columns;

/// The claim (INFRA.md §5): one auto-committed statement, so two workers can never both take a
/// row. The candidates are the first `?3` pending rows (partial index `jobs_pending`, id order)
/// and the first `?3` running rows whose lease expired (`jobs_leases`, a range scan over
/// expired leases only); of those, the lowest `?3` ids are taken. Each arm is pinned with
/// `INDEXED BY`: left to itself the planner may pick `jobs_state` and sort every pending row.
/// The claim of up to `n` jobs. `n` is written into the statement, not bound: SQLite plans with
/// a bound LIMIT's value and re-prepares the statement every time it is bound again (measured:
/// one re-prepare per claim, a quarter of rekey's SQLite CPU), while each literal is prepared
/// once per connection (sqlx caches statements by their text; `n` ranges over 1..concurrency).
fn claim_sql(n: u32) -> String {
    format!(
        "UPDATE jobs SET state = 'running', lease_owner = ?1, lease_until = unixepoch() + ?2, \
         attempts = attempts + 1, updated_at = unixepoch() \
         WHERE id IN (\
           SELECT id FROM (SELECT id FROM jobs INDEXED BY jobs_pending \
                           WHERE state = 'pending' ORDER BY id LIMIT {n}) \
           UNION ALL \
           SELECT id FROM (SELECT id FROM jobs INDEXED BY jobs_leases \
                           WHERE state = 'running' AND lease_until < unixepoch() \
                           ORDER BY lease_until LIMIT {n}) \
           ORDER BY id LIMIT {n}) \
         RETURNING {}",
        job_columns!()
    )
}

/// New keys are inserted `pending`; a known key is reset only when its object changed: the
/// listed ETag is neither the one listed before nor our own result, and no worker holds it
/// (a running worker's conditional write will notice the change itself). An empty ETag (a
/// Batch Operations manifest row says none) is no change.
const ENQUEUE_HEAD: &str =
    "INSERT INTO jobs (bucket, key, etag, size, last_modified, storage_class) VALUES ";
const ENQUEUE_TAIL_COMMON: &str = " ON CONFLICT (bucket, key) DO UPDATE SET \
     etag = excluded.etag, size = excluded.size, last_modified = excluded.last_modified, \
     storage_class = excluded.storage_class, state = 'pending', version_id = NULL, \
     source_format = NULL, action = NULL, skip_reason = NULL, attempts = 0, last_error = NULL, \
     error_code = NULL, http_status = NULL, lease_owner = NULL, lease_until = NULL, \
     result_etag = NULL, result_version_id = NULL, previous_version_id = NULL, \
     plaintext_sha256 = NULL, updated_at = unixepoch(), finished_at = NULL \
     WHERE jobs.state <> 'running' AND jobs.etag <> excluded.etag AND excluded.etag <> '' \
     AND (jobs.result_etag IS NULL OR jobs.result_etag <> excluded.etag)";
/// SQLite's returns the ids (inserts are above the mark taken under the write lock).
const ENQUEUE_TAIL_SQLITE: &str = " RETURNING id";

/// Moves a scan's checkpoint (both backends). On PostgreSQL two scanners of one listing may
/// write it in turn: every value written is a point up to which that scanner enqueued every key
/// (it started from an earlier such point), so whichever is last is a safe place to resume.
const CHECKPOINT_SQL: &str = "INSERT INTO scans (bucket, prefix, shard, start_after, listed) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (bucket, prefix, shard) DO UPDATE SET \
     start_after = excluded.start_after, listed = scans.listed + excluded.listed, \
     updated_at = unixepoch()";

/// [`CHECKPOINT_SQL`] with its binds, for either backend's transaction: the scan `$scan` moved
/// to `$last_key` after `$listed` more keys.
macro_rules! checkpoint_query {
    ($scan:expr, $last_key:expr, $listed:expr) => {
        sqlx::query($crate::store::CHECKPOINT_SQL)
            .bind(&$scan.bucket)
            .bind(&$scan.prefix)
            .bind($scan.shard_text())
            .bind($last_key)
            .bind($listed as i64)
    };
}
pub(crate) use checkpoint_query;

/// [`JobStore::renew_lease`]: the ids as one JSON array on SQLite, an `int8[]` on PostgreSQL.
const RENEW_SQLITE: &str = "UPDATE jobs SET lease_until = unixepoch() + $1, \
     updated_at = unixepoch() WHERE id IN (SELECT value FROM json_each($2)) \
     AND lease_owner = $3 AND state = 'running' RETURNING id";
const RENEW_PG: &str = "UPDATE jobs SET lease_until = unixepoch() + $1, \
     updated_at = unixepoch() WHERE id = ANY($2) \
     AND lease_owner = $3 AND state = 'running' RETURNING id";

/// [`JobStore::release`], likewise.
const RELEASE_SQLITE: &str = "UPDATE jobs SET state = 'pending', \
     attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, \
     lease_owner = NULL, lease_until = NULL, updated_at = unixepoch() \
     WHERE id IN (SELECT value FROM json_each($1)) AND lease_owner = $2 AND state = 'running'";
const RELEASE_PG: &str = "UPDATE jobs SET state = 'pending', \
     attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, \
     lease_owner = NULL, lease_until = NULL, updated_at = unixepoch() \
     WHERE id = ANY($1) AND lease_owner = $2 AND state = 'running'";

/// Report rows in id order after `$1`, at most `$2` (keyset paging).
macro_rules! report_select {
    () => {
        "SELECT id, bucket, key, coalesce(version_id, previous_version_id), state, error_code, \
         http_status, last_error, source_format, action, skip_reason FROM jobs "
    };
}
const REPORT_SQL: &str = concat!(report_select!(), "WHERE id > $1 ORDER BY id LIMIT $2");
/// The same, only rows in state `$3`; walks the `jobs_state` index.
const REPORT_BY_STATE_SQL: &str = concat!(
    report_select!(),
    "WHERE state = $3 AND id > $1 ORDER BY id LIMIT $2"
);

impl JobStore {
    /// Opens (creating if missing) the job database at `path` and applies the migrations.
    ///
    /// WAL journal (readers don't block the writer), `synchronous = NORMAL` (durable across a
    /// process crash; the last transactions may roll back on power loss, which only repeats
    /// work), a 10 s busy timeout and foreign keys on. Keep the file on a local disk: WAL does
    /// not work over a network file system.
    pub async fn open(path: &Path) -> Result<JobStore, StoreError> {
        let opts = Self::options(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            // A local file has no connection to lose: skip the ping on every acquire (a
            // round trip to the connection's thread per statement).
            .test_before_acquire(false)
            .connect_with(opts)
            .await
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        // A damaged file is refused before anything reads a job from it (and so before any
        // S3 write): `quick_check` reads every page, O(file size), about a second per
        // million jobs; a file that is not a database at all fails here too.
        let damaged = |detail: String| StoreError::Damaged {
            path: path.to_owned(),
            detail,
        };
        let check: Vec<String> = match sqlx::query_scalar("PRAGMA quick_check(1)")
            .fetch_all(&pool)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                pool.close().await;
                return Err(damaged(e.to_string()));
            }
        };
        if check.first().map(String::as_str) != Some("ok") {
            pool.close().await;
            return Err(damaged(check.join("; ")));
        }
        let store = JobStore {
            backend: Backend::Sqlite(pool.clone()),
        }
        .with_schema(SchemaNeed::NotNewer)
        .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(store)
    }

    /// Opens an existing job database for reading only (`status`, `report`): nothing is
    /// written to it, no migration is run, every write fails. Its schema must be exactly this
    /// version's ([`StoreError::Schema`] otherwise).
    ///
    /// A WAL database without its `-wal` file has no connection open (the last one to close
    /// removes it): it is read as it is (SQLite's `immutable`), so no `-wal`/`-shm` is created
    /// beside it and a read-only file in a read-only directory works. With a `-wal` (a worker
    /// running, or killed) it is read through the WAL, beside the writer. (A writer that starts
    /// during an `immutable` read, and checkpoints under it, can make that read fail: run the
    /// command again.)
    pub async fn open_read_only(path: &Path) -> Result<JobStore, StoreError> {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let in_use = Path::new(&wal).exists();
        let opts = Self::options(path).read_only(true).immutable(!in_use);
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect_with(opts)
            .await
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        JobStore {
            backend: Backend::Sqlite(pool),
        }
        .with_schema(SchemaNeed::Exactly)
        .await
    }

    /// The newest migration applied to the database (`None` without a migrations table).
    async fn applied_schema_version(&self) -> Result<Option<i64>, sqlx::Error> {
        let has_table = match &self.backend {
            Backend::Sqlite(_) => {
                "SELECT count(*) > 0 FROM sqlite_master \
                 WHERE type = 'table' AND name = '_sqlx_migrations'"
            }
            Backend::Postgres(_) => "SELECT to_regclass('_sqlx_migrations') IS NOT NULL",
        };
        on_pool!(self, pool => {
            let has_table: bool = sqlx::query_scalar(has_table).fetch_one(pool).await?;
            if !has_table {
                return Ok(None);
            }
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(pool)
                .await
        })
    }

    /// `self` if its schema is what `need` asks of this version; closed, and
    /// [`StoreError::Schema`], otherwise. A database of a newer s3cse is refused with a clear
    /// message before the migrator sees it.
    async fn with_schema(self, need: SchemaNeed) -> Result<JobStore, StoreError> {
        let ours = our_schema_version();
        let found = self.applied_schema_version().await;
        let fits = match (&found, need) {
            (Ok(found), SchemaNeed::Exactly) => *found == Some(ours),
            (Ok(found), SchemaNeed::NotNewer) => found.is_none_or(|f| f <= ours),
            (Err(_), _) => false,
        };
        if fits {
            return Ok(self);
        }
        self.close().await;
        Err(StoreError::Schema {
            found: found?,
            ours,
        })
    }

    fn options(path: &Path) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
    }

    /// Closes the pool, waiting for connections in use to come back (checkpoints the WAL).
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }

    /// The SQLite pool, for tests that look under the hood.
    #[cfg(test)]
    fn sqlite(&self) -> &SqlitePool {
        match &self.backend {
            Backend::Sqlite(pool) => pool,
            Backend::Postgres(_) => panic!("a SQLite test on a PostgreSQL store"),
        }
    }

    /// The statement that starts a write transaction: SQLite takes the write lock up front
    /// (`BEGIN IMMEDIATE`, see "Concurrency"); PostgreSQL locks rows as they are touched.
    fn begin_write_sql(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "BEGIN IMMEDIATE",
            Backend::Postgres(_) => "BEGIN",
        }
    }

    /// Suffix of a `SELECT` whose row the transaction will update: `FOR UPDATE` on
    /// PostgreSQL; nothing on SQLite, whose `BEGIN IMMEDIATE` already excludes other writers.
    fn row_lock(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "",
            Backend::Postgres(_) => " FOR UPDATE",
        }
    }

    /// Suffix of a claim's candidate `SELECT`: `FOR UPDATE SKIP LOCKED` on PostgreSQL, so two
    /// claims never take one row (a plain subquery is not re-evaluated after a lock wait);
    /// nothing on SQLite (one writer at a time).
    fn skip_locked(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "",
            Backend::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// Whether many processes may share this store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Enqueues one listing page and moves the scan checkpoint to `last_key`, in one
    /// `BEGIN IMMEDIATE` transaction: after a crash either both happened or neither did, so a
    /// resumed scan (`StartAfter = checkpoint`) loses no key.
    pub async fn enqueue_page(
        &self,
        scan: &ScanKey,
        objects: &[ListedObject],
        last_key: &str,
    ) -> Result<EnqueueStats, StoreError> {
        match &self.backend {
            Backend::Sqlite(pool) => enqueue_page_sqlite(pool, scan, objects, last_key).await,
            Backend::Postgres(pool) => postgres::enqueue_page(pool, scan, objects, last_key).await,
        }
    }

    /// Marks the scan complete (the listing reached its end).
    pub async fn finish_scan(&self, scan: &ScanKey) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO scans (bucket, prefix, shard, finished_at) \
             VALUES ($1, $2, $3, unixepoch()) \
             ON CONFLICT (bucket, prefix, shard) DO UPDATE SET finished_at = unixepoch(), \
             updated_at = unixepoch()",
        )
        .bind(&scan.bucket)
        .bind(&scan.prefix)
        .bind(scan.shard_text())
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }
    /// `Some((start_after, finished))` for a scan seen before: resume listing after
    /// `start_after` (`None`: no page was enqueued yet), or, if `finished`, the last scan
    /// completed and a new one should [`reset_scan`](Self::reset_scan) first.
    pub async fn scan_checkpoint(
        &self,
        scan: &ScanKey,
    ) -> Result<Option<(Option<String>, bool)>, StoreError> {
        let row: Option<(Option<String>, Option<i64>)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT start_after, finished_at FROM scans \
             WHERE bucket = $1 AND prefix = $2 AND shard = $3",
        )
        .bind(&scan.bucket)
        .bind(&scan.prefix)
        .bind(scan.shard_text())
        .fetch_optional(pool)
        .await)?;
        Ok(row.map(|(start_after, finished_at)| (start_after, finished_at.is_some())))
    }

    /// Starts the scan over from the beginning of the listing (a new pass over a bucket that
    /// was scanned before, e.g. the nightly run). Job rows are kept: the next pass resets
    /// only the objects that changed.
    pub async fn reset_scan(&self, scan: &ScanKey) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO scans (bucket, prefix, shard) VALUES ($1, $2, $3) \
             ON CONFLICT (bucket, prefix, shard) DO UPDATE SET start_after = NULL, listed = 0, \
             started_at = unixepoch(), updated_at = unixepoch(), finished_at = NULL",
        )
        .bind(&scan.bucket)
        .bind(&scan.prefix)
        .bind(scan.shard_text())
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Leases up to `n` jobs to `owner` for `lease`: pending rows, and running rows whose
    /// lease has expired (their worker died), in id order. Increments `attempts`.
    pub async fn claim(
        &self,
        owner: &str,
        n: u32,
        lease: Duration,
    ) -> Result<Vec<Job>, StoreError> {
        let sql = match &self.backend {
            Backend::Sqlite(_) => claim_sql(n),
            Backend::Postgres(_) => postgres::claim_sql(n),
        };
        let mut jobs = on_pool!(self, pool => sqlx::query(AssertSqlSafe(sql))
            .bind(owner)
            .bind(lease_secs(lease))
            .fetch_all(pool)
            .await?
            .iter()
            .map(Job::from_row)
            .collect::<Result<Vec<_>, _>>()?);
        jobs.sort_unstable_by_key(|j| j.id);
        Ok(jobs)
    }

    /// Extends `owner`'s lease on `ids` to now + `lease`. Returns the ids still held: a
    /// missing id was lost (expired and claimed by another worker) and must be abandoned.
    pub async fn renew_lease(
        &self,
        ids: &[i64],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<i64>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut renewed: Vec<i64> = match &self.backend {
            Backend::Sqlite(pool) => {
                sqlx::query_scalar(RENEW_SQLITE)
                    .bind(lease_secs(lease))
                    .bind(id_list(ids))
                    .bind(owner)
                    .fetch_all(pool)
                    .await?
            }
            Backend::Postgres(pool) => {
                sqlx::query_scalar(RENEW_PG)
                    .bind(lease_secs(lease))
                    .bind(ids)
                    .bind(owner)
                    .fetch_all(pool)
                    .await?
            }
        };
        renewed.sort_unstable();
        Ok(renewed)
    }

    /// Records the final outcome of job `id` if `owner` still holds it. Returns `false` when
    /// the lease was lost (nothing written).
    pub async fn complete(
        &self,
        id: i64,
        owner: &str,
        outcome: &Outcome,
    ) -> Result<bool, StoreError> {
        if !outcome.state.is_final() {
            return Err(StoreError::NotFinal(outcome.state));
        }
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE jobs SET state = $1, source_format = $2, action = $3, skip_reason = $4, \
             result_etag = $5, result_version_id = $6, previous_version_id = $7, \
             version_id = coalesce($7, version_id), plaintext_sha256 = $8, error_code = $9, \
             http_status = $10, last_error = $11, lease_owner = NULL, lease_until = NULL, \
             intent = CASE WHEN $14 THEN intent END, updated_at = unixepoch(), \
             finished_at = unixepoch() \
             WHERE id = $12 AND lease_owner = $13 AND state = 'running'",
        )
        .bind(outcome.state.as_str())
        .bind(&outcome.source_format)
        .bind(outcome.action.map(Action::as_str))
        .bind(&outcome.skip_reason)
        .bind(&outcome.result_etag)
        .bind(&outcome.result_version_id)
        .bind(&outcome.previous_version_id)
        .bind(&outcome.plaintext_sha256)
        .bind(&outcome.error_code)
        .bind(outcome.http_status.map(i64::from))
        .bind(&outcome.last_error)
        .bind(id)
        .bind(owner)
        .bind(outcome.keep_intent)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(done == 1)
    }

    /// Records what `owner` is about to write over job `id`'s object ([`Intent`]), before the
    /// write: if the process dies after the write and before [`complete`](Self::complete),
    /// the next attempt can still record the replaced version. Returns `false` if `owner` no
    /// longer holds the job (then don't write).
    pub async fn record_intent(
        &self,
        id: i64,
        owner: &str,
        intent: &Intent,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(intent).map_err(|e| StoreError::Encode(e.to_string()))?;
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE jobs SET intent = $1, updated_at = unixepoch() \
             WHERE id = $2 AND lease_owner = $3 AND state = 'running'",
        )
        .bind(&json)
        .bind(id)
        .bind(owner)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(done == 1)
    }

    /// Forgets `owner`'s intent on job `id`: its write was refused (the object changed first),
    /// so nothing of it is to be recovered.
    pub async fn clear_intent(&self, id: i64, owner: &str) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query(
            "UPDATE jobs SET intent = NULL WHERE id = $1 AND lease_owner = $2 \
             AND state = 'running'",
        )
        .bind(id)
        .bind(owner)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// `--dry-run`: records what a run would do with pending job `id` (its source format and
    /// planned action, or the error it would hit) without changing its state, so `status`
    /// and `report` show the plan. A real run overwrites it. Returns `false` if the job is no
    /// longer pending.
    pub async fn record_plan(&self, id: i64, plan: &Outcome) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE jobs SET source_format = $1, action = $2, skip_reason = $3, error_code = $4, \
             last_error = $5, updated_at = unixepoch() WHERE id = $6 AND state = 'pending'",
        )
        .bind(&plan.source_format)
        .bind(plan.action.map(Action::as_str))
        .bind(&plan.skip_reason)
        .bind(&plan.error_code)
        .bind(&plan.last_error)
        .bind(id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(done == 1)
    }

    /// Puts job `id` back to `pending` after a conflict (the conditional write got 412: the
    /// object changed since it was listed), counting one more conflict. `new_etag`/`new_size`,
    /// if the worker learned them, replace the listed ones so the next attempt's `If-Match`
    /// uses the current ETag. Returns `false` if `owner` no longer holds the job.
    pub async fn requeue(
        &self,
        id: i64,
        owner: &str,
        new_etag: Option<&str>,
        new_size: Option<u64>,
        error: &str,
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE jobs SET state = 'pending', etag = coalesce($1, etag), \
             size = coalesce($2, size), conflicts = conflicts + 1, last_error = $3, \
             lease_owner = NULL, lease_until = NULL, updated_at = unixepoch() \
             WHERE id = $4 AND lease_owner = $5 AND state = 'running'",
        )
        .bind(new_etag)
        .bind(new_size.map(to_i64))
        .bind(error)
        .bind(id)
        .bind(owner)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(done == 1)
    }

    /// Graceful stop: hands `owner`'s running jobs among `ids` back as `pending` and gives
    /// their attempt back (a stop is not a failed try). Returns how many were released.
    pub async fn release(&self, ids: &[i64], owner: &str) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let done = match &self.backend {
            Backend::Sqlite(pool) => sqlx::query(RELEASE_SQLITE)
                .bind(id_list(ids))
                .bind(owner)
                .execute(pool)
                .await?
                .rows_affected(),
            Backend::Postgres(pool) => sqlx::query(RELEASE_PG)
                .bind(ids)
                .bind(owner)
                .execute(pool)
                .await?
                .rows_affected(),
        };
        Ok(done)
    }

    /// Abandoned stop: hands every running job whose lease owner starts with `owner_prefix` (a
    /// process's `host:pid:nonce:`, whatever ids its workers hold) back as `pending`, its attempt given
    /// back like [`release`](Self::release). Matched as a plain prefix (no `LIKE` wildcards: a
    /// host name may contain `_`). Returns how many.
    pub async fn release_owner_prefix(&self, owner_prefix: &str) -> Result<u64, StoreError> {
        if owner_prefix.is_empty() {
            return Ok(0);
        }
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE jobs SET state = 'pending', \
             attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, \
             lease_owner = NULL, lease_until = NULL, updated_at = unixepoch() \
             WHERE state = 'running' AND substr(lease_owner, 1, length($1)) = $1",
        )
        .bind(owner_prefix)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(done)
    }

    /// Puts every `failed` (and, if `conflicts` is set, `conflict`) job back to `pending` with
    /// its attempts reset, for `rekey --retry-failed`. Returns how many.
    pub async fn retry_failed(&self, conflicts: bool) -> Result<u64, StoreError> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE jobs SET state = 'pending', attempts = 0, lease_owner = NULL, \
             lease_until = NULL, updated_at = unixepoch(), finished_at = NULL \
             WHERE state = 'failed' OR ($1 AND state = 'conflict')",
        )
        .bind(conflicts)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(done)
    }

    /// One job by id.
    pub async fn job(&self, id: i64) -> Result<Option<Job>, StoreError> {
        const SQL: &str = concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1");
        Ok(on_pool!(self, pool => sqlx::query(SQL)
            .bind(id)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(Job::from_row)
            .transpose()?))
    }

    /// Whether any row is pending or running: two index probes (the claim's partial
    /// indexes), whatever the table's size.
    pub async fn has_unfinished(&self) -> Result<bool, StoreError> {
        Ok(on_pool!(self, pool => sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'pending') \
             OR EXISTS (SELECT 1 FROM jobs WHERE state = 'running')",
        )
        .fetch_one(pool)
        .await)?)
    }

    /// Objects and bytes per state only (for the queue gauges): the kept counters
    /// (`job_counts`, migration 0005), a few dozen rows whatever the table's size.
    pub async fn state_counts(&self) -> Result<StateCounts, StoreError> {
        let rows: Vec<(String, i64, i64)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT state, CAST(sum(objects) AS BIGINT), CAST(sum(bytes) AS BIGINT) \
             FROM job_counts GROUP BY state HAVING sum(objects) <> 0",
        )
        .fetch_all(pool)
        .await)?;
        let mut counts = StateCounts::default();
        for (state, objects, bytes) in rows {
            let state = parse_state(&state)?;
            counts.get_mut(state).add(tally(objects, bytes));
        }
        Ok(counts)
    }

    /// Everything `status` shows: the counters that triggers keep beside `jobs` (migration
    /// 0005: exact, updated in the same transaction as every row) and two probes of the
    /// `jobs_finished` index, so its cost does not grow with the row count.
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        let rows: Vec<CountGroup> = on_pool!(self, pool => sqlx::query_as(
            "SELECT state, source_format, action, skip_reason, \
             CAST(sum(objects) AS BIGINT), CAST(sum(bytes) AS BIGINT) \
             FROM job_counts GROUP BY 1, 2, 3, 4 HAVING sum(objects) <> 0",
        )
        .fetch_all(pool)
        .await)?;
        let (first, last): (Option<i64>, Option<i64>) = on_pool!(self, pool => sqlx::query_as(
            "SELECT (SELECT finished_at FROM jobs WHERE finished_at IS NOT NULL \
                     ORDER BY finished_at LIMIT 1), \
                    (SELECT finished_at FROM jobs WHERE finished_at IS NOT NULL \
                     ORDER BY finished_at DESC LIMIT 1)",
        )
        .fetch_one(pool)
        .await)?;
        let mut counts = Counts::default();
        for (state, format, action, skip_reason, objects, bytes) in rows {
            counts.add_group(
                &state,
                unspell(format),
                unspell(action).as_deref(),
                unspell(skip_reason),
                tally(objects, bytes),
            )?;
        }
        counts.first_finished_at = first;
        counts.last_finished_at = last;
        Ok(counts)
    }

    /// [`counts`](Self::counts) the slow way, one `GROUP BY` over every job: what the kept
    /// counters must always equal (tests compare the two).
    #[cfg(test)]
    async fn counts_by_scan(&self) -> Result<Counts, StoreError> {
        type Group = (
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            i64,
            i64,
            Option<i64>,
            Option<i64>,
        );
        let rows: Vec<Group> = on_pool!(self, pool => sqlx::query_as(
            "SELECT state, source_format, action, skip_reason, count(*), \
             CAST(sum(size) AS BIGINT), min(finished_at), max(finished_at) \
             FROM jobs GROUP BY 1, 2, 3, 4",
        )
        .fetch_all(pool)
        .await)?;
        let mut counts = Counts::default();
        for (state, format, action, skip_reason, objects, bytes, first, last) in rows {
            counts.add_group(
                &state,
                format,
                action.as_deref(),
                skip_reason,
                tally(objects, bytes),
            )?;
            counts.first_finished_at = min_opt(counts.first_finished_at, first);
            counts.last_finished_at = counts.last_finished_at.max(last);
        }
        Ok(counts)
    }

    /// Up to `limit` report rows with id > `after_id`, in id order, optionally only those in
    /// state `filter`. Keyset paging: each page is a short read, so no long read transaction
    /// holds back WAL checkpoints while a big report is written out.
    pub async fn report_page(
        &self,
        filter: Option<JobState>,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<ReportRow>, StoreError> {
        let (sql, state) = match filter {
            None => (REPORT_SQL, None),
            Some(state) => (REPORT_BY_STATE_SQL, Some(state.as_str())),
        };
        on_pool!(self, pool => {
            let mut q = sqlx::query(sql).bind(after_id).bind(i64::from(limit));
            if let Some(state) = state {
                q = q.bind(state);
            }
            Ok(q
                .fetch_all(pool)
                .await?
                .iter()
                .map(ReportRow::from_row)
                .collect::<Result<_, _>>()?)
        })
    }

    /// All report rows (optionally only state `filter`) as a stream, fetched
    /// [`REPORT_PAGE`] rows at a time so millions of rows never sit in memory.
    pub fn report(
        &self,
        filter: Option<JobState>,
    ) -> impl Stream<Item = Result<ReportRow, StoreError>> + Send + '_ {
        stream::try_unfold(Some(0i64), move |after| async move {
            let Some(after) = after else {
                return Ok::<_, StoreError>(None);
            };
            let page = self.report_page(filter, after, REPORT_PAGE).await?;
            let next = match page.last() {
                Some(last) if page.len() == REPORT_PAGE as usize => Some(last.id),
                _ => None,
            };
            if page.is_empty() {
                return Ok(None);
            }
            Ok(Some((stream::iter(page.into_iter().map(Ok)), next)))
        })
        .try_flatten()
        .boxed()
    }
}

/// The enqueue inside a caller's write transaction, on either backend's connection (the
/// scan checkpoint, and the listing ranges and manifest files of `work.rs`).
pub(crate) trait EnqueueInto {
    async fn enqueue_into(
        &mut self,
        bucket: &str,
        objects: &[ListedObject],
    ) -> Result<EnqueueStats, StoreError>;
}

impl EnqueueInto for sqlx::SqliteConnection {
    async fn enqueue_into(
        &mut self,
        bucket: &str,
        objects: &[ListedObject],
    ) -> Result<EnqueueStats, StoreError> {
        enqueue_rows(self, bucket, objects).await
    }
}

impl EnqueueInto for sqlx::PgConnection {
    async fn enqueue_into(
        &mut self,
        bucket: &str,
        objects: &[ListedObject],
    ) -> Result<EnqueueStats, StoreError> {
        postgres::enqueue_rows(self, bucket, objects).await
    }
}

/// SQLite's [`JobStore::enqueue_page`]: one `BEGIN IMMEDIATE` transaction, the page and the
/// scan checkpoint together.
async fn enqueue_page_sqlite(
    pool: &SqlitePool,
    scan: &ScanKey,
    objects: &[ListedObject],
    last_key: &str,
) -> Result<EnqueueStats, StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let stats = enqueue_rows(&mut tx, &scan.bucket, objects).await?;
    checkpoint_query!(scan, last_key, objects.len())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(stats)
}

/// Upserts listed `objects` of `bucket` into the job table inside the caller's write
/// transaction (which must hold the write lock: `BEGIN IMMEDIATE`), and says what changed. The
/// one enqueue path of the scan checkpoint ([`JobStore::enqueue_page`]) and of the claimable
/// listing ranges and manifest files (`work.rs`), so each page and its checkpoint commit
/// together.
async fn enqueue_rows(
    tx: &mut sqlx::SqliteConnection,
    bucket: &str,
    objects: &[ListedObject],
) -> Result<EnqueueStats, StoreError> {
    // Rows are appended with id = max(id) + 1 (no AUTOINCREMENT), and we hold the write
    // lock, so a returned id above this mark is an insert and one at or below is a reset.
    let mark: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM jobs")
        .fetch_one(&mut *tx)
        .await?;
    let mut stats = EnqueueStats::default();
    for chunk in objects.chunks(ENQUEUE_CHUNK) {
        let mut query = sqlx::query(AssertSqlSafe(enqueue_sql(chunk.len())));
        for o in chunk {
            query = query
                .bind(bucket)
                .bind(&o.key)
                .bind(&o.etag)
                .bind(to_i64(o.size))
                .bind(&o.last_modified)
                .bind(&o.storage_class);
        }
        let ids: Vec<i64> = query
            .map(|row: SqliteRow| row.get::<i64, _>(0))
            .fetch_all(&mut *tx)
            .await?;
        for id in ids {
            if id > mark {
                stats.inserted += 1;
            } else {
                stats.reset += 1;
            }
        }
    }
    stats.unchanged = (objects.len() as u64).saturating_sub(stats.inserted + stats.reset);
    Ok(stats)
}

/// The multi-row upsert for `rows` rows.
fn enqueue_sql(rows: usize) -> String {
    const ROW: &str = "(?, ?, ?, ?, ?, ?)";
    let mut sql = String::with_capacity(
        ENQUEUE_HEAD.len() + rows * (ROW.len() + 1) + ENQUEUE_TAIL_COMMON.len() + 16,
    );
    sql.push_str(ENQUEUE_HEAD);
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(ROW);
    }
    sql.push_str(ENQUEUE_TAIL_COMMON);
    sql.push_str(ENQUEUE_TAIL_SQLITE);
    sql
}

/// The `FromRow` impls of the rows the store reads, for both backends' row types (one body:
/// every column decodes the same way on both, integers as `i64`).
macro_rules! impl_from_rows {
    ($row:ty) => {
        impl<'r> FromRow<'r, $row> for Job {
            fn from_row(row: &'r $row) -> Result<Self, sqlx::Error> {
                let state: String = row.try_get("state")?;
                let action: Option<String> = row.try_get("action")?;
                Ok(Job {
                    id: row.try_get("id")?,
                    bucket: row.try_get("bucket")?,
                    key: row.try_get("key")?,
                    version_id: row.try_get("version_id")?,
                    etag: row.try_get("etag")?,
                    size: to_u64(row.try_get("size")?),
                    last_modified: row.try_get("last_modified")?,
                    storage_class: row.try_get("storage_class")?,
                    state: decode("state", &state)?,
                    source_format: row.try_get("source_format")?,
                    action: action.as_deref().map(|a| decode("action", a)).transpose()?,
                    skip_reason: row.try_get("skip_reason")?,
                    attempts: to_u32(row.try_get("attempts")?),
                    conflicts: to_u32(row.try_get("conflicts")?),
                    last_error: row.try_get("last_error")?,
                    error_code: row.try_get("error_code")?,
                    http_status: row.try_get::<Option<i64>, _>("http_status")?.map(to_u16),
                    lease_owner: row.try_get("lease_owner")?,
                    lease_until: row.try_get("lease_until")?,
                    result_etag: row.try_get("result_etag")?,
                    result_version_id: row.try_get("result_version_id")?,
                    previous_version_id: row.try_get("previous_version_id")?,
                    intent: {
                        let json: Option<String> = row.try_get("intent")?;
                        // An unreadable intent is as good as none: it only helps recovery.
                        json.and_then(|j| serde_json::from_str(&j).ok())
                    },
                    plaintext_sha256: row.try_get("plaintext_sha256")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                    finished_at: row.try_get("finished_at")?,
                })
            }
        }

        impl<'r> FromRow<'r, $row> for ReportRow {
            fn from_row(row: &'r $row) -> Result<Self, sqlx::Error> {
                let state: JobState = decode("state", &row.try_get::<String, _>(4)?)?;
                let action = row
                    .try_get::<Option<String>, _>(9)?
                    .map(|a| decode::<Action>("action", &a))
                    .transpose()?;
                let last_error: Option<String> = row.try_get(7)?;
                let skip_reason: Option<String> = row.try_get(10)?;
                let task_status = match state {
                    JobState::Done => "succeeded",
                    JobState::Failed | JobState::Conflict => "failed",
                    JobState::Pending | JobState::Running => "pending",
                };
                let result_message = match (state, action, skip_reason, last_error) {
                    (JobState::Done, Some(a), Some(reason), _) => format!("{a}: {reason}"),
                    (JobState::Done, Some(a), None, _) => a.to_string(),
                    (_, _, _, Some(err)) => err,
                    (state, ..) => state.to_string(),
                };
                Ok(ReportRow {
                    id: row.try_get(0)?,
                    bucket: row.try_get(1)?,
                    key: row.try_get(2)?,
                    version_id: row.try_get(3)?,
                    task_status,
                    error_code: row.try_get(5)?,
                    http_status: row.try_get::<Option<i64>, _>(6)?.map(to_u16),
                    result_message,
                    source_format: row.try_get(8)?,
                    action,
                    state,
                })
            }
        }
    };
}
impl_from_rows!(SqliteRow);
impl_from_rows!(PgRow);

/// Decodes an enum column inside `FromRow` (whose error type is `sqlx::Error`).
fn decode<T: FromStr<Err = ParseError>>(column: &str, value: &str) -> Result<T, sqlx::Error> {
    value
        .parse()
        .map_err(|e: ParseError| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: Box::new(e),
        })
}

fn parse_state(s: &str) -> Result<JobState, StoreError> {
    s.parse().map_err(|_| StoreError::Corrupt {
        column: "state",
        value: s.to_owned(),
    })
}

fn parse_action(s: &str) -> Result<Action, StoreError> {
    s.parse().map_err(|_| StoreError::Corrupt {
        column: "action",
        value: s.to_owned(),
    })
}

/// SQLite integers are i64; sizes and counts are never negative (CHECK constraints).
fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Counters are small and never negative (CHECK constraints); saturate on nonsense.
fn to_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

/// HTTP statuses as stored; an impossible one reads as 0.
fn to_u16(v: i64) -> u16 {
    u16::try_from(v).unwrap_or(0)
}

/// Object sizes fit in i64 (S3's limit is 5 TiB); saturate rather than fail on nonsense.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn tally(objects: i64, bytes: i64) -> Tally {
    Tally {
        objects: to_u64(objects),
        bytes: to_u64(bytes),
    }
}

#[cfg(test)]
fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whole seconds, at least one, so a sub-second lease is not already expired.
fn lease_secs(lease: Duration) -> i64 {
    i64::try_from(lease.as_secs().max(1)).unwrap_or(i64::MAX)
}

/// `ids` as a JSON array for `json_each(?)`: one bound parameter whatever the count, and a
/// `&'static str` statement that sqlx can cache.
fn id_list(ids: &[i64]) -> String {
    let mut s = String::with_capacity(ids.len() * 8 + 2);
    s.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&id.to_string());
    }
    s.push(']');
    s
}
