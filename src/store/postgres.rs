//! The PostgreSQL side of the store: where `--state` points, connecting (the password never
//! printed), the schema check, the statements that differ from SQLite's (the claim and the
//! enqueue), and the count of live processes that divides the shared rate limits.
//!
//! Many processes share one database: migrations take sqlx's advisory lock, a claim skips the
//! rows another claim holds (`FOR UPDATE SKIP LOCKED`), leases are on the database clock
//! (`unixepoch()` is `now()`, see `migrations/postgres/0001_jobs.sql`).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Connection, Row};

use super::{
    Backend, ENQUEUE_TAIL_COMMON, EnqueueStats, JobStore, ListedObject, ScanKey, SchemaNeed,
    StoreError, to_i64,
};

/// Connections per process: the workers' claims, lease renewals and outcome writes run
/// side by side on PostgreSQL (no single writer), so more than SQLite's 4; small enough that
/// a hundred pods stay under a default `max_connections` of a few hundred... with a pooler
/// (PgBouncer, transaction mode) in front beyond that.
const PG_POOL_SIZE: u32 = 8;

/// How long opening waits for the database: an unreachable one fails the command (exit 2)
/// within this, before any S3 write.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Rows per upsert statement: a listing page, or a manifest batch (10,000 by default) in one.
const PG_ENQUEUE_CHUNK: usize = 10_000;

/// Times an enqueue transaction is tried again after a deadlock or serialization failure (two
/// scanners upserting the same keys in different orders, e.g. two manifests naming them).
const ENQUEUE_RETRIES: u32 = 5;

/// The advisory-lock class of a live `rekey`/`work`/`scan` process ([`LiveProcesses`]); the
/// second key is the session's backend pid, so no two processes ever contend for one.
/// ASCII "s3cs".
const LIVE_LOCK_CLASS: i32 = 0x7333_6373;

/// Where the job table lives: `--state`.
#[derive(Clone, PartialEq, Eq)]
pub enum StateLocation {
    /// A SQLite file (anything that is not a `postgres://` or `postgresql://` URL).
    Sqlite(PathBuf),
    /// A PostgreSQL URL (password in it, or `PGPASSWORD`; TLS per `sslmode`).
    Postgres(String),
}

impl StateLocation {
    /// `postgres://...` and `postgresql://...` select PostgreSQL; anything else is a path.
    pub fn parse(s: &str) -> StateLocation {
        let lower = s.get(..13).unwrap_or(s).to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            StateLocation::Postgres(s.to_owned())
        } else {
            StateLocation::Sqlite(PathBuf::from(s))
        }
    }

    /// The SQLite file, if it is one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            StateLocation::Sqlite(p) => Some(p),
            StateLocation::Postgres(_) => None,
        }
    }
}

impl FromStr for StateLocation {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(StateLocation::parse(s))
    }
}

/// The URL with any password replaced by `***`: this is what messages and logs show.
pub(super) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{user_info}@{host}"),
        },
        None => authority.to_owned(),
    };
    // A password can also come as a query parameter.
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

impl fmt::Display for StateLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateLocation::Sqlite(p) => write!(f, "{}", p.display()),
            StateLocation::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

/// Never the password, also not in `{:?}`.
impl fmt::Debug for StateLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateLocation::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            StateLocation::Postgres(_) => {
                f.debug_tuple("Postgres").field(&self.to_string()).finish()
            }
        }
    }
}

fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    // PgConnectOptions reads PGHOST, PGUSER, PGPASSWORD, PGSSLMODE, ... then the URL over them.
    PgConnectOptions::from_str(url).map_err(|source| StoreError::Connect {
        target: redact(url),
        source,
    })
}

async fn connect(url: &str, opts: PgConnectOptions) -> Result<PgPool, StoreError> {
    PgPoolOptions::new()
        .max_connections(PG_POOL_SIZE)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(opts)
        .await
        .map_err(|source| StoreError::Connect {
            target: redact(url),
            source,
        })
}

impl JobStore {
    /// Opens the job store at `location`: [`open`](Self::open) for a file, or
    /// [`open_postgres`](Self::open_postgres).
    pub async fn open_location(location: &StateLocation) -> Result<JobStore, StoreError> {
        match location {
            StateLocation::Sqlite(path) => JobStore::open(path).await,
            StateLocation::Postgres(url) => JobStore::open_postgres(url).await,
        }
    }

    /// [`open_read_only`](Self::open_read_only) or [`open_postgres_read_only`](Self::open_postgres_read_only).
    pub async fn open_location_read_only(location: &StateLocation) -> Result<JobStore, StoreError> {
        match location {
            StateLocation::Sqlite(path) => JobStore::open_read_only(path).await,
            StateLocation::Postgres(url) => JobStore::open_postgres_read_only(url).await,
        }
    }

    /// Connects to the PostgreSQL database at `url` and applies the migrations (concurrent
    /// openers wait for each other on sqlx's migration lock). A database of a newer s3cse is
    /// refused ([`StoreError::Schema`]) and left as it is.
    pub async fn open_postgres(url: &str) -> Result<JobStore, StoreError> {
        let pool = connect(url, connect_options(url)?).await?;
        let store = JobStore {
            backend: Backend::Postgres(pool.clone()),
        }
        .with_schema(SchemaNeed::NotNewer)
        .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(store)
    }

    /// Connects for reading only (`status`, `report`, `audit`): every transaction is read-only
    /// (`default_transaction_read_only`), nothing is migrated, the schema must be exactly ours.
    pub async fn open_postgres_read_only(url: &str) -> Result<JobStore, StoreError> {
        let opts = connect_options(url)?.options([("default_transaction_read_only", "on")]);
        let pool = connect(url, opts).await?;
        JobStore {
            backend: Backend::Postgres(pool),
        }
        .with_schema(SchemaNeed::Exactly)
        .await
    }
}

/// The claim on PostgreSQL: the same candidates as SQLite's `claim_sql` (the first `n` pending
/// rows by id, the first `n` running rows whose lease expired), each locked with `FOR UPDATE
/// SKIP LOCKED` so concurrent claims pass over each other's rows instead of queueing, then the
/// lowest `n` ids taken. A candidate whose row changed before the lock (another claim took it
/// and committed) is re-checked against its `WHERE` and dropped. `n` is a literal for the same
/// reason as on SQLite: one prepared statement per `n`.
pub(super) fn claim_sql(n: u32) -> String {
    format!(
        "WITH pending AS (SELECT id FROM jobs WHERE state = 'pending' ORDER BY id LIMIT {n} \
                          FOR UPDATE SKIP LOCKED), \
              expired AS (SELECT id FROM jobs WHERE state = 'running' \
                          AND lease_until < unixepoch() ORDER BY lease_until LIMIT {n} \
                          FOR UPDATE SKIP LOCKED), \
              picked AS (SELECT id FROM pending UNION ALL SELECT id FROM expired \
                         ORDER BY id LIMIT {n}) \
         UPDATE jobs SET state = 'running', lease_owner = $1, lease_until = unixepoch() + $2, \
         attempts = attempts + 1, updated_at = unixepoch() \
         WHERE id IN (SELECT id FROM picked) \
         RETURNING {}",
        super::job_columns!()
    )
}

/// The upsert of one chunk: the rows as six arrays (`UNNEST`), so a statement has six bound
/// parameters whatever its row count (PostgreSQL's limit is 65,535 per statement) and sqlx
/// encodes six arrays instead of six values per row (BENCHMARKS.md, "Shared queue").
fn enqueue_sql() -> String {
    format!(
        "INSERT INTO jobs (bucket, key, etag, size, last_modified, storage_class) \
         SELECT $1::text, * FROM UNNEST($2::text[], $3::text[], $4::int8[], $5::text[], \
         $6::text[]){ENQUEUE_TAIL_COMMON} RETURNING (xmax = 0)"
    )
    // `xmax = 0`: the row version was made by an insert, not by the update of a known key
    // (SQLite tells them apart by id under its write lock; here writers run side by side).
}

/// [`JobStore::enqueue_page`] on PostgreSQL: one transaction, tried again on a deadlock (two
/// scanners of one bucket upserting overlapping pages) or a serialization failure.
pub(super) async fn enqueue_page(
    pool: &PgPool,
    scan: &ScanKey,
    objects: &[ListedObject],
    last_key: &str,
) -> Result<EnqueueStats, StoreError> {
    let mut tries = 0;
    loop {
        match enqueue_once(pool, scan, objects, last_key).await {
            Err(StoreError::Database(sqlx::Error::Database(e)))
                if matches!(e.code().as_deref(), Some("40P01" | "40001"))
                    && tries < ENQUEUE_RETRIES =>
            {
                tries += 1;
                tracing::debug!(error = %e, tries, "enqueue transaction retried");
                tokio::time::sleep(Duration::from_millis(20 * u64::from(tries))).await;
            }
            other => return other,
        }
    }
}

async fn enqueue_once(
    pool: &PgPool,
    scan: &ScanKey,
    objects: &[ListedObject],
    last_key: &str,
) -> Result<EnqueueStats, StoreError> {
    let mut tx = pool.begin().await?;
    let stats = enqueue_rows(&mut tx, &scan.bucket, objects).await?;
    super::checkpoint_query!(scan, last_key, objects.len())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(stats)
}

/// Upserts listed `objects` of `bucket` into the job table inside the caller's transaction,
/// and says what changed: PostgreSQL's twin of SQLite's `enqueue_rows` (the one enqueue path
/// of the scan checkpoint, the listing ranges and the manifest files).
pub(super) async fn enqueue_rows(
    tx: &mut PgConnection,
    bucket: &str,
    objects: &[ListedObject],
) -> Result<EnqueueStats, StoreError> {
    let mut stats = EnqueueStats::default();
    for chunk in objects.chunks(PG_ENQUEUE_CHUNK) {
        // One statement may not upsert a key twice ("ON CONFLICT DO UPDATE command cannot
        // affect row a second time"): a manifest can name a key twice. The last row wins, as
        // it would on SQLite, which applies the rows one by one.
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(chunk.len());
        for (i, o) in chunk.iter().enumerate() {
            last.insert(o.key.as_str(), i);
        }
        let rows = chunk
            .iter()
            .enumerate()
            .filter(|(i, o)| last.get(o.key.as_str()) == Some(i))
            .map(|(_, o)| o);
        let (mut keys, mut etags, mut sizes, mut modified, mut classes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for o in rows {
            keys.push(o.key.as_str());
            etags.push(o.etag.as_str());
            sizes.push(to_i64(o.size));
            modified.push(o.last_modified.as_deref());
            classes.push(o.storage_class.as_deref());
        }
        let inserted: Vec<bool> = sqlx::query(AssertSqlSafe(enqueue_sql()))
            .bind(bucket)
            .bind(keys)
            .bind(etags)
            .bind(sizes)
            .bind(modified)
            .bind(classes)
            .map(|row: PgRow| row.get::<bool, _>(0))
            .fetch_all(&mut *tx)
            .await?;
        for ins in inserted {
            if ins {
                stats.inserted += 1;
            } else {
                stats.reset += 1;
            }
        }
    }
    stats.unchanged = (objects.len() as u64).saturating_sub(stats.inserted + stats.reset);
    Ok(stats)
}

/// This process's membership of a run that shares one PostgreSQL queue, for the shared rate
/// limits: each process holds a session advisory lock (class [`LIVE_LOCK_CLASS`], its backend
/// pid) on a connection of its own for as long as it lives; the number of such locks in the
/// database is the number of live processes, and each takes `1/N` of `--kms-rps`/`--s3-rps`.
/// A killed process's connection closes and its lock goes with it: no heartbeat rows, no
/// expiry to wait for (a vanished host is noticed when its TCP connection times out).
pub struct LiveProcesses {
    conn: PgConnection,
}

impl LiveProcesses {
    /// Joins the run on `store`'s database; `None` for SQLite (one process per file).
    pub async fn join(
        store: &JobStore,
        location: &StateLocation,
    ) -> Result<Option<LiveProcesses>, StoreError> {
        let (Backend::Postgres(_), StateLocation::Postgres(url)) = (&store.backend, location)
        else {
            return Ok(None);
        };
        let mut conn = PgConnection::connect_with(&connect_options(url)?)
            .await
            .map_err(|source| StoreError::Connect {
                target: redact(url),
                source,
            })?;
        sqlx::query("SELECT pg_advisory_lock($1, pg_backend_pid())")
            .bind(LIVE_LOCK_CLASS)
            .execute(&mut conn)
            .await?;
        Ok(Some(LiveProcesses { conn }))
    }

    /// Live processes of this database, this one included (at least 1).
    pub async fn count(&mut self) -> Result<u32, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND classid = $1::oid AND objsubid = 2 \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .bind(i64::from(LIVE_LOCK_CLASS))
        .fetch_one(&mut self.conn)
        .await?;
        Ok(u32::try_from(n.max(1)).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_select_postgres_and_never_show_the_password() {
        assert!(matches!(
            StateLocation::parse("postgres://u:pw@db/x"),
            StateLocation::Postgres(_)
        ));
        assert!(matches!(
            StateLocation::parse("PostgreSQL://db/x"),
            StateLocation::Postgres(_)
        ));
        assert_eq!(
            StateLocation::parse("state/jobs.db"),
            StateLocation::Sqlite(PathBuf::from("state/jobs.db"))
        );
        let loc = StateLocation::parse("postgres://u:s3cret@db:5433/x?sslmode=require");
        assert_eq!(
            loc.to_string(),
            "postgres://u:***@db:5433/x?sslmode=require"
        );
        assert!(!format!("{loc:?}").contains("s3cret"));
        assert_eq!(
            redact("postgres://db/x?user=u&password=s3cret"),
            "postgres://db/x?user=u&password=***"
        );
        assert_eq!(redact("postgres://u@db/x"), "postgres://u@db/x");
        // A password with '@' in it (should be percent-encoded, but people don't).
        assert!(!redact("postgres://u:p@ss@db/x").contains("p@ss"));
    }
}
