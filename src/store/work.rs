//! Listing ranges and manifest files as claimable work items (`migrations/0004_work.sql`).
//!
//! # Listing ranges
//! ```text
//!  begin_listing ──► pending ──claim_range──► running ──commit_range_page (last page)──► done
//!                      ▲                        │  │
//!                      └──── release_work ──────┘  └─ split_range: end_before = K, and a new
//!                      └──── lease expiry ──►         range [K, old end) inserted `running`
//! ```
//! A range is the keys k under its `prefix` with `start_at <= k < end_before`, listed from its
//! `cursor` (ListObjectsV2 StartAfter). Every page is enqueued together with the range's new
//! cursor in one transaction ([`super::enqueue_rows`], the scanner's own upsert), after keys
//! outside the range's bounds *as they are in that transaction* are dropped: so a split that
//! commits between the owner's request and its commit still wins, and no key is enqueued by
//! two ranges. The split itself is guarded by `cursor < K` (the owner has not passed K yet) and
//! by the end the splitter read (no other split moved it since), so its page (the first page of
//! the new range, listed from a midpoint below K) is enqueued exactly once too.
//!
//! # Manifest files
//! One row per data file of a manifest with `line`, the lines already enqueued: claimed like a
//! range, each batch enqueued with the new `line` in one transaction.
//!
//! # Clock
//! Times here (`lease_until`, `created_at`, `updated_at`) are unix **milliseconds** read from the
//! database's clock in the statement itself ([`NOW_MS_SQLITE`] / [`NOW_MS_PG`], spliced in as
//! `{now}`), never the listers' clocks: on PostgreSQL, pods whose clocks disagree by more than a
//! lease would otherwise take over each other's live ranges; the job leases work the same way
//! (`unixepoch()`). On SQLite the database is local, so its clock is this host's, and the SQL has
//! the same shape. Milliseconds: a pass finished by a peer during this run is told from one
//! finished before it by comparing with the run's start ([`JobStore::clock_millis`]), and runs
//! (tests, a quick re-run) can be less than a second apart. (The comment of
//! `migrations/*/0004_work.sql` still says the caller binds them: a released migration is not
//! edited, its checksum is recorded.)
//!
//! # Two backends
//! The SQL is written to port to PostgreSQL as it is: `$n` placeholders, the clock spliced in,
//! no SQLite-only syntax. For PostgreSQL: the claim subqueries take
//! `FOR UPDATE SKIP LOCKED`, the transactions `SELECT ... FOR UPDATE` the item row first (here
//! `BEGIN IMMEDIATE` serializes them), and key comparisons need `COLLATE "C"` (byte order, as
//! S3 lists keys and SQLite's BINARY collation compares).

use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, Row};

use super::{
    EnqueueInto, EnqueueStats, JobStore, ListedObject, ScanKey, StoreError, on_pool, to_i64,
};

/// State of a listing range or manifest file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkState {
    /// Waiting for a lister (or ingester).
    Pending,
    /// Leased until `lease_until`.
    Running,
    /// Listed (or read) to its end.
    Done,
}

impl WorkState {
    /// All states, in display order.
    pub const ALL: [WorkState; 3] = [WorkState::Pending, WorkState::Running, WorkState::Done];

    /// The spelling stored in the database and used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkState::Pending => "pending",
            WorkState::Running => "running",
            WorkState::Done => "done",
        }
    }

    fn decode(s: &str) -> Result<WorkState, sqlx::Error> {
        WorkState::parse(s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    }

    fn parse(s: &str) -> Result<WorkState, StoreError> {
        WorkState::ALL
            .into_iter()
            .find(|w| w.as_str() == s)
            .ok_or_else(|| StoreError::Corrupt {
                column: "state",
                value: s.to_owned(),
            })
    }
}

/// A range to start a listing pass with ([`JobStore::begin_listing`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeSeed {
    /// ListObjectsV2 Prefix.
    pub prefix: String,
    /// `Some("/")`: a Delimiter listing (the seeding range of a sharded scan).
    pub delimiter: Option<String>,
    /// Inclusive lower bound (`""`: none).
    pub start_at: String,
    /// Exclusive upper bound.
    pub end_before: Option<String>,
    /// Where to list from (StartAfter), e.g. an older state file's scan checkpoint.
    pub cursor: Option<String>,
}

/// One listing range as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRange {
    /// Row id.
    pub id: i64,
    /// ListObjectsV2 Prefix.
    pub prefix: String,
    /// `Some("/")` for a Delimiter listing.
    pub delimiter: Option<String>,
    /// Inclusive lower bound (`""`: none).
    pub start_at: String,
    /// Exclusive upper bound (`None`: the end of the prefix).
    pub end_before: Option<String>,
    /// The last key listed (StartAfter of the next page).
    pub cursor: Option<String>,
    /// Keys enqueued from this range.
    pub listed: u64,
    /// State.
    pub state: WorkState,
    /// Lister holding the lease.
    pub lease_owner: Option<String>,
    /// Lease expiry, unix seconds.
    pub lease_until: Option<i64>,
}

impl ListRange {
    /// Whether `key` belongs to this range (its bounds only; the prefix is the listing's).
    pub fn contains(&self, key: &str) -> bool {
        key >= self.start_at.as_str() && self.end_before.as_deref().is_none_or(|e| key < e)
    }
}

/// A split of a running range ([`JobStore::split_range`]): the new range starts at `split_at`,
/// the first key the splitter's sample page (listed from a midpoint below it) returned, and
/// that page is the new range's first.
#[derive(Debug, Clone, Copy)]
pub struct SplitPage<'a> {
    /// The first key of the page: the old range ends before it, the new one starts at it.
    pub split_at: &'a str,
    /// The page, in key order (keys at or above the range's end are dropped).
    pub objects: &'a [ListedObject],
    /// The page's last key: the new range's cursor.
    pub last_key: &'a str,
    /// The listing ended with this page (not truncated): the new range is done at once.
    pub complete: bool,
}

/// One data file of a manifest, claimed by [`JobStore::claim_manifest_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    /// Row id.
    pub id: i64,
    /// Its position in the manifest.
    pub file_index: usize,
    /// The data file's URL or path.
    pub name: String,
    /// Lines already enqueued (resume after them).
    pub line: u64,
    /// Data rows read so far.
    pub rows: u64,
}

/// Listing and ingest progress, for `status` and the metrics: over every scan in the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkProgress {
    /// Listing ranges by state (pending, running, done).
    pub ranges: [u64; 3],
    /// Keys enqueued by the listing ranges.
    pub keys_listed: u64,
    /// Manifest data files by state.
    pub files: [u64; 3],
    /// Manifest rows read.
    pub manifest_rows: u64,
}

/// What is left of a listing or ingest pass, for a process with nothing to claim.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Remaining {
    /// Items not done.
    pub open: u64,
    /// The earliest lease expiry among the running items (when one may be taken over).
    pub next_expiry: Option<i64>,
}

const RANGE_COLUMNS: &str = "id, prefix, delimiter, start_at, end_before, cursor, listed, state, \
                             lease_owner, lease_until";

const FILE_COLUMNS: &str = "id, file_index, name, line, rows";

/// `FromRow` for both backends' rows (the bodies of `on_pool!` are compiled once per pool).
macro_rules! work_rows {
    ($row:ty) => {
        impl<'r> FromRow<'r, $row> for ListRange {
            fn from_row(row: &'r $row) -> Result<Self, sqlx::Error> {
                let state: String = row.try_get("state")?;
                Ok(ListRange {
                    id: row.try_get("id")?,
                    prefix: row.try_get("prefix")?,
                    delimiter: row.try_get("delimiter")?,
                    start_at: row.try_get("start_at")?,
                    end_before: row.try_get("end_before")?,
                    cursor: row.try_get("cursor")?,
                    listed: super::to_u64(row.try_get("listed")?),
                    state: WorkState::decode(&state)?,
                    lease_owner: row.try_get("lease_owner")?,
                    lease_until: row.try_get("lease_until")?,
                })
            }
        }

        impl<'r> FromRow<'r, $row> for ManifestFile {
            fn from_row(row: &'r $row) -> Result<Self, sqlx::Error> {
                Ok(ManifestFile {
                    id: row.try_get("id")?,
                    file_index: usize::try_from(row.try_get::<i64, _>("file_index")?).unwrap_or(0),
                    name: row.try_get("name")?,
                    line: super::to_u64(row.try_get("line")?),
                    rows: super::to_u64(row.try_get("rows")?),
                })
            }
        }
    };
}
work_rows!(SqliteRow);
work_rows!(PgRow);

/// The database's clock in unix milliseconds, SQLite. `julianday('now')` has millisecond
/// resolution and is one value within a statement.
pub(crate) const NOW_MS_SQLITE: &str =
    "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// The database's clock in unix milliseconds, PostgreSQL: `statement_timestamp()`, one value
/// within a statement like SQLite's. Not `now()`, the transaction's start: a page commit that
/// waited on locks would write a lease already lapsed, and a range finished by a transaction
/// begun before a peer's `clock_millis` would look finished before that peer's pass began.
pub(crate) const NOW_MS_PG: &str =
    "CAST(floor(extract(epoch FROM statement_timestamp()) * 1000) AS BIGINT)";

/// A lease in milliseconds (at least a second), added to the database's clock.
fn lease_millis(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis().max(1000)).unwrap_or(i64::MAX / 2)
}

/// The objects of a page inside `[start_at, end_before)`.
fn within<'a>(
    objects: &'a [ListedObject],
    start_at: &str,
    end_before: Option<&str>,
) -> Vec<&'a ListedObject> {
    objects
        .iter()
        .filter(|o| o.key.as_str() >= start_at && end_before.is_none_or(|e| o.key.as_str() < e))
        .collect()
}

/// Runs a write transaction again when PostgreSQL ends it with a deadlock (`40P01`) or a
/// serialization failure (`40001`): the upserts of a page lock job rows in key order while
/// workers renew their leases in id order. Each attempt re-reads its item row, so a repeat is
/// safe. (SQLite's `BEGIN IMMEDIATE` never deadlocks.)
async fn retry_conflicts<T, F, Fut>(mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut tries = 0u64;
    loop {
        match attempt().await {
            Err(StoreError::Database(sqlx::Error::Database(e)))
                if matches!(e.code().as_deref(), Some("40P01" | "40001")) && tries < 5 =>
            {
                tries += 1;
                tracing::debug!(error = %e, tries, "work-item transaction retried");
                tokio::time::sleep(Duration::from_millis(20 * tries)).await;
            }
            other => return other,
        }
    }
}

impl JobStore {
    /// The SQL of the database's clock in unix milliseconds (see "Clock" above).
    /// The claim of one work item of `table` (ranges and manifest files alike): the first row
    /// by `order` of the scan bound as $3-$5 (plus `filter`), pending or running with a lapsed
    /// lease, leased to $1 for $2 ms; `columns` returned. One auto-committed statement.
    fn claim_sql(&self, table: &str, filter: &str, order: &str, columns: &str) -> String {
        let now = self.now_ms();
        let skip = self.skip_locked();
        format!(
            "UPDATE {table} SET state = 'running', lease_owner = $1, \
             lease_until = {now} + $2, updated_at = {now} \
             WHERE id = (SELECT id FROM {table} WHERE bucket = $3 AND scan_prefix = $4 \
                         AND shard = $5{filter} AND (state = 'pending' \
                         OR (state = 'running' AND lease_until < {now})) \
                         ORDER BY {order} LIMIT 1{skip}) \
             RETURNING {columns}"
        )
    }

    fn now_ms(&self) -> &'static str {
        if self.is_shared() {
            NOW_MS_PG
        } else {
            NOW_MS_SQLITE
        }
    }

    /// The database's clock, unix milliseconds: the start of a run, compared with the
    /// `updated_at` of work items ([`begin_listing`](Self::begin_listing)).
    pub async fn clock_millis(&self) -> Result<i64, StoreError> {
        let sql = format!("SELECT {}", self.now_ms());
        on_pool!(self, pool => {
            Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                .fetch_one(pool)
                .await?)
        })
    }

    /// Starts a listing pass of `scan` with `seeds`, unless one is under way: with no range
    /// yet, or every range done before `run_started` (the last pass finished in an earlier
    /// run: the nightly re-scan), the old ranges are deleted and `seeds` inserted `pending`,
    /// and `true` is returned; otherwise the pass under way (or one a peer finished during
    /// this run) is joined as it is, and `false`. `run_started`: [`clock_millis`](Self::clock_millis)
    /// when the run started.
    pub async fn begin_listing(
        &self,
        scan: &ScanKey,
        seeds: &[RangeSeed],
        run_started: i64,
    ) -> Result<bool, StoreError> {
        let now = self.now_ms();
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write_sql()).await?;
            if self.is_shared() {
                // Two processes starting a pass at once: the second waits, then joins it.
                sqlx::query("LOCK TABLE list_ranges IN SHARE ROW EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
            }
            let (open, last): (i64, Option<i64>) = sqlx::query_as(
                "SELECT count(CASE WHEN state <> 'done' THEN 1 END), max(updated_at) \
                 FROM list_ranges WHERE bucket = $1 AND scan_prefix = $2 AND shard = $3",
            )
            .bind(&scan.bucket)
            .bind(&scan.prefix)
            .bind(scan.shard_text())
            .fetch_one(&mut *tx)
            .await?;
            if open > 0 || last.is_some_and(|t| t > run_started) {
                tx.commit().await?;
                return Ok(false);
            }
            sqlx::query(
                "DELETE FROM list_ranges WHERE bucket = $1 AND scan_prefix = $2 AND shard = $3",
            )
            .bind(&scan.bucket)
            .bind(&scan.prefix)
            .bind(scan.shard_text())
            .execute(&mut *tx)
            .await?;
            for s in seeds {
                let sql = format!(
                    "INSERT INTO list_ranges (bucket, scan_prefix, shard, prefix, delimiter, start_at, \
                     end_before, cursor, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {now}, {now})"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&scan.bucket)
                .bind(&scan.prefix)
                .bind(scan.shard_text())
                .bind(&s.prefix)
                .bind(&s.delimiter)
                .bind(&s.start_at)
                .bind(&s.end_before)
                .bind(&s.cursor)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Leases one range of `scan` to `owner`: a pending one, or a running one whose lease
    /// expired (its lister died), lowest id first. One auto-committed statement.
    pub async fn claim_range(
        &self,
        scan: &ScanKey,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<ListRange>, StoreError> {
        let sql = self.claim_sql("list_ranges", "", "id", RANGE_COLUMNS);
        on_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(owner)
                .bind(lease_millis(lease))
                .bind(&scan.bucket)
                .bind(&scan.prefix)
                .bind(scan.shard_text())
                .fetch_optional(pool)
                .await?;
            Ok(row.as_ref().map(ListRange::from_row).transpose()?)
        })
    }

    /// The ranges of `scan` not done that a split may shorten (no Delimiter listing), at most
    /// `limit`, lowest id first.
    pub async fn open_ranges(
        &self,
        scan: &ScanKey,
        limit: u32,
    ) -> Result<Vec<ListRange>, StoreError> {
        on_pool!(self, pool => {
            let sql = format!(
                "SELECT {RANGE_COLUMNS} FROM list_ranges WHERE bucket = $1 AND scan_prefix = $2 \
                 AND shard = $3 AND state <> 'done' AND delimiter IS NULL ORDER BY id LIMIT $4"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&scan.bucket)
                .bind(&scan.prefix)
                .bind(scan.shard_text())
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            Ok(rows.iter().map(ListRange::from_row).collect::<Result<_, _>>()?)
        })
    }

    /// Every range of `scan`, in id order (tests, diagnostics).
    pub async fn ranges(&self, scan: &ScanKey) -> Result<Vec<ListRange>, StoreError> {
        on_pool!(self, pool => {
            let sql = format!(
                "SELECT {RANGE_COLUMNS} FROM list_ranges WHERE bucket = $1 AND scan_prefix = $2 \
                 AND shard = $3 ORDER BY id"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&scan.bucket)
                .bind(&scan.prefix)
                .bind(scan.shard_text())
                .fetch_all(pool)
                .await?;
            Ok(rows.iter().map(ListRange::from_row).collect::<Result<_, _>>()?)
        })
    }

    /// What is left of the listing pass of `scan`.
    pub async fn ranges_remaining(&self, scan: &ScanKey) -> Result<Remaining, StoreError> {
        on_pool!(self, pool => {
            let (open, next): (i64, Option<i64>) = sqlx::query_as(
                "SELECT count(*), min(CASE WHEN state = 'running' THEN lease_until END) \
                 FROM list_ranges WHERE bucket = $1 AND scan_prefix = $2 AND shard = $3 \
                 AND state <> 'done'",
            )
            .bind(&scan.bucket)
            .bind(&scan.prefix)
            .bind(scan.shard_text())
            .fetch_one(pool)
            .await?;
            Ok(Remaining {
                open: super::to_u64(open),
                next_expiry: next,
            })
        })
    }

    /// Enqueues one page of range `range_id` held by `owner` and moves its cursor to
    /// `last_key`, in one transaction; the lease is renewed. The page's keys outside the
    /// range's bounds as they are now (a split may have shortened it) are dropped. `prefixes`
    /// (a Delimiter listing's common prefixes, this shard's) become pending ranges of their own.
    /// The range is done when `complete` (the listing ended) or `last_key` reached its end.
    ///
    /// `None`: `owner` no longer holds the range (its lease lapsed and another lister took it
    /// over): nothing was written, the lister stops listing it. Otherwise the enqueue stats and
    /// whether the range is now done.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit_range_page(
        &self,
        range_id: i64,
        owner: &str,
        bucket: &str,
        objects: &[ListedObject],
        prefixes: &[String],
        last_key: &str,
        complete: bool,
        lease: Duration,
    ) -> Result<Option<(EnqueueStats, bool)>, StoreError> {
        retry_conflicts(|| {
            self.commit_range_page_once(
                range_id, owner, bucket, objects, prefixes, last_key, complete, lease,
            )
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn commit_range_page_once(
        &self,
        range_id: i64,
        owner: &str,
        bucket: &str,
        objects: &[ListedObject],
        prefixes: &[String],
        last_key: &str,
        complete: bool,
        lease: Duration,
    ) -> Result<Option<(EnqueueStats, bool)>, StoreError> {
        let now = self.now_ms();
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write_sql()).await?;
            let lock = self.row_lock();
            let sql = format!(
                "SELECT {RANGE_COLUMNS}, scan_prefix, shard FROM list_ranges \
                 WHERE id = $1 AND lease_owner = $2 AND state = 'running'{lock}"
            );
            let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(range_id)
                .bind(owner)
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(None);
            };
            let range = ListRange::from_row(&row)?;
            let scan_prefix: String = row.try_get("scan_prefix")?;
            let shard: String = row.try_get("shard")?;
            let kept: Vec<ListedObject> = within(objects, &range.start_at, range.end_before.as_deref())
                .into_iter()
                .cloned()
                .collect();
            let stats = EnqueueInto::enqueue_into(&mut *tx, bucket, &kept).await?;
            for p in prefixes {
                let sql = format!(
                    "INSERT INTO list_ranges (bucket, scan_prefix, shard, prefix, created_at, \
                     updated_at) VALUES ($1, $2, $3, $4, {now}, {now}) \
                     ON CONFLICT (bucket, scan_prefix, shard, prefix, start_at) DO NOTHING"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(bucket)
                .bind(&scan_prefix)
                .bind(&shard)
                .bind(p)
                .execute(&mut *tx)
                .await?;
            }
            let done = complete || range.end_before.as_deref().is_some_and(|e| last_key >= e);
            let sql = format!(
                "UPDATE list_ranges SET cursor = $1, listed = listed + $2, \
                 lease_until = {now} + $3, updated_at = {now}, state = $4, \
                 lease_owner = CASE WHEN $5 THEN NULL ELSE lease_owner END \
                 WHERE id = $6"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(last_key)
            .bind(kept.len() as i64)
            .bind(lease_millis(lease))
            .bind(if done { "done" } else { "running" })
            .bind(done)
            .bind(range_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some((stats, done)))
        })
    }

    /// Marks range `range_id` done without a page (an empty listing), if `owner` holds it.
    pub async fn finish_range(&self, range_id: i64, owner: &str) -> Result<bool, StoreError> {
        let now = self.now_ms();
        on_pool!(self, pool => {
            let sql = format!(
                "UPDATE list_ranges SET state = 'done', lease_owner = NULL, updated_at = {now} \
                 WHERE id = $1 AND lease_owner = $2 AND state = 'running'"
            );
            let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(range_id)
            .bind(owner)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Splits range `range_id` at `page.split_at` in one transaction: the range now ends
    /// before it, and a new range `[split_at, old end)` is inserted, leased to `owner`, with
    /// `page` as its first page (enqueued, its cursor at `page.last_key`; done at once if the
    /// page completes it).
    ///
    /// Refused (`None`, nothing written) unless the range is not done, is no Delimiter
    /// listing, its end is still `expected_end` (no other split since the splitter read it),
    /// `split_at` lies strictly inside it and the range's cursor is below `split_at` (its
    /// owner has not enqueued keys from there yet).
    pub async fn split_range(
        &self,
        range_id: i64,
        expected_end: Option<&str>,
        page: SplitPage<'_>,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<(ListRange, EnqueueStats)>, StoreError> {
        retry_conflicts(|| self.split_range_once(range_id, expected_end, page, owner, lease)).await
    }

    async fn split_range_once(
        &self,
        range_id: i64,
        expected_end: Option<&str>,
        page: SplitPage<'_>,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<(ListRange, EnqueueStats)>, StoreError> {
        let now = self.now_ms();
        on_pool!(self, pool => {
            if expected_end.is_some_and(|e| page.split_at >= e) {
                return Ok(None);
            }
            let mut tx = pool.begin_with(self.begin_write_sql()).await?;
            let sql = format!(
                "UPDATE list_ranges SET end_before = $1, updated_at = {now} \
                 WHERE id = $2 AND state <> 'done' AND delimiter IS NULL AND start_at < $1 \
                 AND (cursor IS NULL OR cursor < $1) \
                 AND (end_before = $3 OR (end_before IS NULL AND $3 IS NULL)) \
                 RETURNING {RANGE_COLUMNS}, scan_prefix, shard"
            );
            let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(page.split_at)
                .bind(range_id)
                .bind(expected_end)
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(None);
            };
            let old = ListRange::from_row(&row)?;
            let scan_prefix: String = row.try_get("scan_prefix")?;
            let shard: String = row.try_get("shard")?;
            let kept: Vec<ListedObject> = within(page.objects, page.split_at, expected_end)
                .into_iter()
                .cloned()
                .collect();
            let bucket: String = sqlx::query_scalar("SELECT bucket FROM list_ranges WHERE id = $1")
                .bind(range_id)
                .fetch_one(&mut *tx)
                .await?;
            let stats = EnqueueInto::enqueue_into(&mut *tx, &bucket, &kept).await?;
            let done = page.complete || expected_end.is_some_and(|e| page.last_key >= e);
            let (state, lease_owner, lease) = if done {
                ("done", None, None)
            } else {
                ("running", Some(owner), Some(lease_millis(lease)))
            };
            let sql = format!(
                "INSERT INTO list_ranges (bucket, scan_prefix, shard, prefix, start_at, end_before, \
                 cursor, listed, state, lease_owner, lease_until, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, {now} + $11, {now}, {now}) \
                 RETURNING {RANGE_COLUMNS}"
            );
            let new = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&bucket)
                .bind(&scan_prefix)
                .bind(&shard)
                .bind(&old.prefix)
                .bind(page.split_at)
                .bind(expected_end)
                .bind(page.last_key)
                .bind(kept.len() as i64)
                .bind(state)
                .bind(lease_owner)
                .bind(lease)
                .fetch_one(&mut *tx)
                .await?;
            let new = ListRange::from_row(&new)?;
            tx.commit().await?;
            Ok(Some((new, stats)))
        })
    }

    /// Hands every running range and manifest file leased by an owner starting with
    /// `owner_prefix` (a process's `host:pid:nonce:`) back as `pending`: a stop, or the leftovers of
    /// a dead process of this host. Returns how many.
    pub async fn release_work(&self, owner_prefix: &str) -> Result<u64, StoreError> {
        let now = self.now_ms();
        on_pool!(self, pool => {
            if owner_prefix.is_empty() {
                return Ok(0);
            }
            let mut released = 0;
            for table in ["list_ranges", "manifest_files"] {
                let sql = format!(
                    "UPDATE {table} SET state = 'pending', lease_owner = NULL, lease_until = NULL, \
                     updated_at = {now} WHERE state = 'running' \
                     AND substr(lease_owner, 1, length(CAST($1 AS TEXT))) = CAST($1 AS TEXT)"
                );
                released += sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(owner_prefix)
                    .execute(pool)
                    .await?
                    .rows_affected();
            }
            Ok(released)
        })
    }

    /// The distinct lease owners of running ranges and manifest files (to find a dead
    /// process's on this host).
    pub async fn work_owners(&self) -> Result<Vec<String>, StoreError> {
        on_pool!(self, pool => {
            Ok(sqlx::query_scalar(
                "SELECT DISTINCT lease_owner FROM list_ranges WHERE state = 'running' \
                 AND lease_owner IS NOT NULL \
                 UNION SELECT DISTINCT lease_owner FROM manifest_files WHERE state = 'running' \
                 AND lease_owner IS NOT NULL",
            )
            .fetch_all(pool)
            .await?)
        })
    }

    /// Listing and ingest progress over every scan in the file.
    pub async fn work_progress(&self) -> Result<WorkProgress, StoreError> {
        on_pool!(self, pool => {
            let mut p = WorkProgress::default();
            let ranges: Vec<(String, i64, i64)> = sqlx::query_as(
                "SELECT state, count(*), CAST(coalesce(sum(listed), 0) AS BIGINT) FROM list_ranges GROUP BY state",
            )
            .fetch_all(pool)
            .await?;
            for (state, n, listed) in ranges {
                p.ranges[WorkState::parse(&state)? as usize] = super::to_u64(n);
                p.keys_listed += super::to_u64(listed);
            }
            let files: Vec<(String, i64, i64)> = sqlx::query_as(
                "SELECT state, count(*), CAST(coalesce(sum(rows), 0) AS BIGINT) FROM manifest_files GROUP BY state",
            )
            .fetch_all(pool)
            .await?;
            for (state, n, rows) in files {
                p.files[WorkState::parse(&state)? as usize] = super::to_u64(n);
                p.manifest_rows += super::to_u64(rows);
            }
            Ok(p)
        })
    }

    /// Starts an ingest pass of manifest `manifest` (its data files `names`, in order) into
    /// `scan`, unless one is under way or a peer finished one during this run: as
    /// [`begin_listing`](Self::begin_listing). `resume`
    /// (an older state file's `FILE:LINE` checkpoint) marks the files before FILE done and
    /// FILE read up to LINE. A pass under way whose file list differs (the manifest was
    /// rewritten in place) is started over too.
    pub async fn begin_manifest(
        &self,
        scan: &ScanKey,
        manifest: &str,
        names: &[String],
        resume: Option<(usize, u64)>,
        run_started: i64,
    ) -> Result<bool, StoreError> {
        let now = self.now_ms();
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write_sql()).await?;
            if self.is_shared() {
                // Two processes starting a pass at once: the second waits, then joins it.
                sqlx::query("LOCK TABLE manifest_files IN SHARE ROW EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
            }
            let rows: Vec<(String, String, i64)> = sqlx::query_as(
                "SELECT name, state, updated_at FROM manifest_files WHERE bucket = $1 \
                 AND scan_prefix = $2 AND shard = $3 AND manifest = $4 ORDER BY file_index",
            )
            .bind(&scan.bucket)
            .bind(&scan.prefix)
            .bind(scan.shard_text())
            .bind(manifest)
            .fetch_all(&mut *tx)
            .await?;
            let same_files =
                rows.len() == names.len() && rows.iter().zip(names).all(|(r, n)| r.0 == *n);
            let open = rows.iter().any(|(_, state, _)| state != "done");
            let finished_in_this_run = rows.iter().any(|(.., t)| *t > run_started);
            if same_files && (open || finished_in_this_run) {
                tx.commit().await?;
                return Ok(false);
            }
            sqlx::query(
                "DELETE FROM manifest_files WHERE bucket = $1 AND scan_prefix = $2 AND shard = $3 \
                 AND manifest = $4",
            )
            .bind(&scan.bucket)
            .bind(&scan.prefix)
            .bind(scan.shard_text())
            .bind(manifest)
            .execute(&mut *tx)
            .await?;
            for (i, name) in names.iter().enumerate() {
                let (state, line) = match resume {
                    Some((f, _)) if i < f => ("done", 0),
                    Some((f, l)) if i == f => ("pending", l),
                    _ => ("pending", 0),
                };
                let sql = format!(
                    "INSERT INTO manifest_files (bucket, scan_prefix, shard, manifest, file_index, \
                     name, line, state, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {now}, {now})"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&scan.bucket)
                .bind(&scan.prefix)
                .bind(scan.shard_text())
                .bind(manifest)
                .bind(i as i64)
                .bind(name)
                .bind(to_i64(line))
                .bind(state)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Leases one data file of `manifest` to `owner`: pending, or running with an expired
    /// lease, lowest index first.
    pub async fn claim_manifest_file(
        &self,
        scan: &ScanKey,
        manifest: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<ManifestFile>, StoreError> {
        let sql = self.claim_sql(
            "manifest_files",
            " AND manifest = $6",
            "file_index",
            FILE_COLUMNS,
        );
        on_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(owner)
                .bind(lease_millis(lease))
                .bind(&scan.bucket)
                .bind(&scan.prefix)
                .bind(scan.shard_text())
                .bind(manifest)
                .fetch_optional(pool)
                .await?;
            Ok(row.as_ref().map(ManifestFile::from_row).transpose()?)
        })
    }

    /// What is left of the ingest pass of `manifest`.
    pub async fn manifest_remaining(
        &self,
        scan: &ScanKey,
        manifest: &str,
    ) -> Result<Remaining, StoreError> {
        on_pool!(self, pool => {
            let (open, next): (i64, Option<i64>) = sqlx::query_as(
                "SELECT count(*), min(CASE WHEN state = 'running' THEN lease_until END) \
                 FROM manifest_files WHERE bucket = $1 AND scan_prefix = $2 AND shard = $3 \
                 AND manifest = $4 AND state <> 'done'",
            )
            .bind(&scan.bucket)
            .bind(&scan.prefix)
            .bind(scan.shard_text())
            .bind(manifest)
            .fetch_one(pool)
            .await?;
            Ok(Remaining {
                open: super::to_u64(open),
                next_expiry: next,
            })
        })
    }

    /// Enqueues one batch of data file `file_id` held by `owner` (the rows up to and including
    /// line `last_line`, `rows` data rows of them) and moves its checkpoint, in one
    /// transaction; renews the lease; `done` marks the file read to its end. `None`: `owner`
    /// no longer holds the file, nothing was written.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit_file_batch(
        &self,
        file_id: i64,
        owner: &str,
        bucket: &str,
        objects: &[ListedObject],
        last_line: u64,
        rows: u64,
        done: bool,
        lease: Duration,
    ) -> Result<Option<EnqueueStats>, StoreError> {
        retry_conflicts(|| {
            self.commit_file_batch_once(
                file_id, owner, bucket, objects, last_line, rows, done, lease,
            )
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn commit_file_batch_once(
        &self,
        file_id: i64,
        owner: &str,
        bucket: &str,
        objects: &[ListedObject],
        last_line: u64,
        rows: u64,
        done: bool,
        lease: Duration,
    ) -> Result<Option<EnqueueStats>, StoreError> {
        let now = self.now_ms();
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write_sql()).await?;
            let sql = format!(
                "UPDATE manifest_files SET line = $1, rows = rows + $2, \
                 lease_until = {now} + $3, updated_at = {now}, state = $4, \
                 lease_owner = CASE WHEN $5 THEN NULL ELSE lease_owner END \
                 WHERE id = $6 AND lease_owner = $7 AND state = 'running'"
            );
            let held = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to_i64(last_line))
            .bind(to_i64(rows))
            .bind(lease_millis(lease))
            .bind(if done { "done" } else { "running" })
            .bind(done)
            .bind(file_id)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
            if held.rows_affected() != 1 {
                return Ok(None);
            }
            let stats = EnqueueInto::enqueue_into(&mut *tx, bucket, objects).await?;
            tx.commit().await?;
            Ok(Some(stats))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const LEASE: Duration = Duration::from_secs(1);

    async fn store() -> (tempfile::TempDir, JobStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(&dir.path().join("jobs.db")).await.unwrap();
        (dir, store)
    }

    fn scan() -> ScanKey {
        ScanKey {
            bucket: "bkt".into(),
            prefix: "".into(),
            shard: None,
        }
    }

    fn objs(keys: &[&str]) -> Vec<ListedObject> {
        keys.iter()
            .map(|k| ListedObject {
                key: (*k).into(),
                etag: "\"e\"".into(),
                size: 1,
                last_modified: None,
                storage_class: None,
            })
            .collect()
    }

    /// Lets every lease lapse, as the database's clock passing them would.
    async fn expire(store: &JobStore) {
        on_pool!(store, pool => {
            for sql in [
                "UPDATE list_ranges SET lease_until = 0 WHERE state = 'running'",
                "UPDATE manifest_files SET lease_until = 0 WHERE state = 'running'",
            ] {
                sqlx::query(sql).execute(pool).await.unwrap();
            }
        })
    }

    /// The database's clock, after a few milliseconds: later than every time written so far.
    async fn later(store: &JobStore) -> i64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        store.clock_millis().await.unwrap()
    }

    async fn job_keys(store: &JobStore) -> Vec<String> {
        on_pool!(store, pool => sqlx::query_scalar("SELECT key FROM jobs ORDER BY key")
            .fetch_all(pool)
            .await
            .unwrap())
    }

    /// Each test runs on a SQLite file and, where the test bed has one, on a fresh PostgreSQL
    /// database (`S3CSE_TEST_PG_URL`).
    macro_rules! both_backends {
        ($name:ident($store:ident) $body:block) => {
            mod $name {
                use super::*;

                async fn run($store: JobStore) $body

                #[tokio::test]
                async fn sqlite() {
                    let (_d, store) = store().await;
                    run(store).await
                }

                #[tokio::test]
                async fn postgres() {
                    if let Some(store) = crate::store::tests::pg_store().await {
                        run(store).await
                    }
                }
            }
        };
    }

    both_backends!(a_pass_is_joined_while_open_and_started_over_once_done(store) {
        let seed = [RangeSeed::default()];
        let run = later(&store).await;
        assert!(store.begin_listing(&scan(), &seed, run).await.unwrap());
        assert!(!store.begin_listing(&scan(), &seed, later(&store).await).await.unwrap());
        let r = store
            .claim_range(&scan(), "a", LEASE)
            .await
            .unwrap()
            .unwrap();
        assert!(
            store
                .claim_range(&scan(), "b", LEASE)
                .await
                .unwrap()
                .is_none()
        );
        // The lease lapses: another lister takes the range over, from its cursor.
        let (_, done) = store
            .commit_range_page(
                r.id,
                "a",
                "bkt",
                &objs(&["a", "b"]),
                &[],
                "b",
                false,
                LEASE,
            )
            .await
            .unwrap()
            .unwrap();
        assert!(!done);
        expire(&store).await;
        let r2 = store
            .claim_range(&scan(), "b", LEASE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r2.id, r2.cursor.as_deref()), (r.id, Some("b")));
        // The old owner's late page is refused: nothing written.
        assert!(
            store
                .commit_range_page(
                    r.id,
                    "a",
                    "bkt",
                    &objs(&["c"]),
                    &[],
                    "c",
                    false,
                    LEASE)
                .await
                .unwrap()
                .is_none()
        );
        let late_start = later(&store).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        store
            .commit_range_page(r.id, "b", "bkt", &objs(&["c"]), &[], "c", true, LEASE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(job_keys(&store).await, ["a", "b", "c"]);
        assert_eq!(store.ranges_remaining(&scan()).await.unwrap().open, 0);
        // A process of this run that started late (before the pass ended) joins the finished
        // pass instead of listing again.
        assert!(
            !store
                .begin_listing(&scan(), &seed, late_start)
                .await
                .unwrap()
        );
        // The next run starts a new pass from the beginning.
        let next_run = later(&store).await;
        assert!(store.begin_listing(&scan(), &seed, next_run).await.unwrap());
        let r3 = store
            .claim_range(&scan(), "c", LEASE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r3.cursor, None);
        let p = store.work_progress().await.unwrap();
        assert_eq!(p.ranges, [0, 1, 0]);
    });

    both_backends!(a_split_hands_the_upper_keys_to_the_splitter_and_the_owner_drops_them(store) {
        store
            .begin_listing(&scan(), &[RangeSeed::default()], 1)
            .await
            .unwrap();
        let r = store
            .claim_range(&scan(), "a", LEASE)
            .await
            .unwrap()
            .unwrap();
        store
            .commit_range_page(
                r.id,
                "a",
                "bkt",
                &objs(&["a1", "a2"]),
                &[],
                "a2",
                false,
                LEASE,
            )
            .await
            .unwrap()
            .unwrap();
        // The splitter sampled from midpoint "m": its page starts at "m1".
        let page = objs(&["m1", "m2"]);
        let (new, stats) = store
            .split_range(
                r.id,
                None,
                SplitPage {
                    split_at: "m1",
                    objects: &page,
                    last_key: "m2",
                    complete: false,
                },
                "b",
                LEASE,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stats.inserted, 2);
        assert_eq!(
            (new.start_at.as_str(), new.end_before.as_deref()),
            ("m1", None)
        );
        assert_eq!(new.state, WorkState::Running);
        // A second split with the stale end is refused; one below the owner's cursor too.
        let p2 = objs(&["a0"]);
        assert!(
            store
                .split_range(
                    r.id,
                    Some("zz"),
                    SplitPage {
                        split_at: "c",
                        objects: &p2,
                        last_key: "c",
                        complete: false
                    },
                    "c",
                    LEASE)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .split_range(
                    r.id,
                    Some("m1"),
                    SplitPage {
                        split_at: "a1",
                        objects: &p2,
                        last_key: "a1",
                        complete: false
                    },
                    "c",
                    LEASE)
                .await
                .unwrap()
                .is_none()
        );
        // The owner's next page runs past the split: keys >= m1 are dropped, the range is done.
        let (stats, done) = store
            .commit_range_page(
                r.id,
                "a",
                "bkt",
                &objs(&["b1", "m1", "m2", "m3"]),
                &[],
                "m3",
                false,
                LEASE,
            )
            .await
            .unwrap()
            .unwrap();
        assert!(done);
        assert_eq!((stats.inserted, stats.unchanged), (1, 0));
        store
            .commit_range_page(
                new.id,
                "b",
                "bkt",
                &objs(&["m3", "z"]),
                &[],
                "z",
                true,
                LEASE,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            job_keys(&store).await,
            ["a1", "a2", "b1", "m1", "m2", "m3", "z"]
        );
        let p = store.work_progress().await.unwrap();
        assert_eq!((p.ranges, p.keys_listed), ([0, 0, 2], 7));
    });

    both_backends!(delimiter_pages_seed_prefix_ranges_once(store) {
        let seed = RangeSeed {
            delimiter: Some("/".into()),
            ..RangeSeed::default()
        };
        store.begin_listing(&scan(), &[seed], 1).await.unwrap();
        let r = store
            .claim_range(&scan(), "a", LEASE)
            .await
            .unwrap()
            .unwrap();
        let prefixes = ["a/".to_owned(), "b/".to_owned()];
        store
            .commit_range_page(
                r.id,
                "a",
                "bkt",
                &objs(&["loose"]),
                &prefixes,
                "b/",
                false,
                LEASE,
            )
            .await
            .unwrap()
            .unwrap();
        // A resumed Delimiter listing hands "b/" back again: no second range.
        store
            .commit_range_page(r.id, "a", "bkt", &[], &prefixes[1..], "b/", true, LEASE)
            .await
            .unwrap()
            .unwrap();
        let ranges = store.ranges(&scan()).await.unwrap();
        let prefixes: Vec<_> = ranges.iter().map(|r| r.prefix.as_str()).collect();
        assert_eq!(prefixes, ["", "a/", "b/"]);
        assert_eq!(store.open_ranges(&scan(), 10).await.unwrap().len(), 2);
    });

    both_backends!(manifest_files_are_claimed_once_and_resume_from_their_line(store) {
        let names = ["f0".to_owned(), "f1".to_owned()];
        assert!(
            store
                .begin_manifest(&scan(), "m", &names, Some((1, 7)), 1)
                .await
                .unwrap()
        );
        let f = store
            .claim_manifest_file(&scan(), "m", "a", LEASE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((f.file_index, f.line), (1, 7));
        assert!(
            store
                .claim_manifest_file(&scan(), "m", "b", LEASE)
                .await
                .unwrap()
                .is_none()
        );
        store
            .commit_file_batch(f.id, "a", "bkt", &objs(&["x"]), 9, 2, false, LEASE)
            .await
            .unwrap()
            .unwrap();
        expire(&store).await;
        let f2 = store
            .claim_manifest_file(&scan(), "m", "b", LEASE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((f2.id, f2.line, f2.rows), (f.id, 9, 2));
        assert!(
            store
                .commit_file_batch(f.id, "a", "bkt", &objs(&["y"]), 10, 1, true, LEASE)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            !store
                .begin_manifest(&scan(), "m", &names, None, 0)
                .await
                .unwrap()
        );
        store
            .commit_file_batch(f.id, "b", "bkt", &objs(&["y"]), 10, 1, true, LEASE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            store.manifest_remaining(&scan(), "m").await.unwrap().open,
            0
        );
        assert_eq!(job_keys(&store).await, ["x", "y"]);
        // Done: the next run starts over; a different file list starts over at once.
        assert!(
            store
                .begin_manifest(&scan(), "m", &names, None, later(&store).await)
                .await
                .unwrap()
        );
        assert!(
            store
                .begin_manifest(&scan(), "m", &names[..1], None, later(&store).await)
                .await
                .unwrap()
        );
        assert_eq!(
            store.manifest_remaining(&scan(), "m").await.unwrap().open,
            1
        );
    });

    both_backends!(work_item_leases_run_on_the_database_clock(store) {
        // A lease is the database's clock plus the lease, whatever the lister's clock says:
        // pods whose clocks disagree cannot take over each other's live ranges.
        store
            .begin_listing(&scan(), &[RangeSeed::default()], 1)
            .await
            .unwrap();
        let lease = Duration::from_secs(60);
        let before = store.clock_millis().await.unwrap();
        let r = store.claim_range(&scan(), "a", lease).await.unwrap().unwrap();
        let after = store.clock_millis().await.unwrap();
        let until = r.lease_until.unwrap();
        assert!(
            until >= before + 60_000 && until <= after + 60_000,
            "{before} <= {until} - 60000 <= {after}"
        );
        assert!(store.claim_range(&scan(), "b", lease).await.unwrap().is_none());
        // One millisecond past the lease on the database's clock, the range is taken over.
        let lapse = format!("UPDATE list_ranges SET lease_until = {} - 1", store.now_ms());
        on_pool!(store, pool => sqlx::query(sqlx::AssertSqlSafe(lapse.clone()))
            .execute(pool)
            .await
            .unwrap()
            .rows_affected());
        let r2 = store.claim_range(&scan(), "b", lease).await.unwrap().unwrap();
        assert_eq!((r2.id, r2.lease_owner.as_deref()), (r.id, Some("b")));
        // The manifest files too.
        let names = ["f0".to_owned()];
        store
            .begin_manifest(&scan(), "m", &names, None, 1)
            .await
            .unwrap();
        store
            .claim_manifest_file(&scan(), "m", "a", lease)
            .await
            .unwrap()
            .unwrap();
        assert!(
            store
                .claim_manifest_file(&scan(), "m", "b", lease)
                .await
                .unwrap()
                .is_none()
        );
        let db = later(&store).await;
        let client = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        // Same machine here: the two clocks agree to within a second (milliseconds, not seconds).
        assert!((db - client).abs() < 1000, "database {db}, client {client}");
    });
}
