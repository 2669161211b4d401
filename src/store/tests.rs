//! Tests against the real `migrations/`, each on its own database in a temp dir.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::TryStreamExt;

use super::*;

const LEASE: Duration = Duration::from_secs(60);

async fn store() -> (tempfile::TempDir, JobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = JobStore::open(&dir.path().join("jobs.db")).await.unwrap();
    (dir, store)
}

/// A store on a fresh database of the test bed's PostgreSQL (`S3CSE_TEST_PG_URL`, see
/// scripts/testbed.sh), or `None` without one (CI must have one).
pub(super) async fn pg_store() -> Option<JobStore> {
    use sqlx::Connection;
    use std::sync::atomic::{AtomicU32, Ordering};

    let Ok(admin) = std::env::var("S3CSE_TEST_PG_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI must run the PostgreSQL store tests: S3CSE_TEST_PG_URL is unset"
        );
        eprintln!("skipped: no PostgreSQL (S3CSE_TEST_PG_URL; scripts/testbed.sh up)");
        return None;
    };
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "store_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 1_000_000
    );
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').unwrap().0;
    Some(
        JobStore::open_postgres(&format!("{base}/{name}"))
            .await
            .unwrap(),
    )
}

/// `both_backends! { #[tokio::test] async fn name(store) { ... } }`: the test runs as
/// `name::sqlite` on a temporary file and as `name::postgres` on a fresh PostgreSQL database.
macro_rules! both_backends {
    ($(#[$m:meta])* async fn $name:ident($store:ident) $body:block) => {
        mod $name {
            use super::*;

            async fn run($store: JobStore) $body

            $(#[$m])*
            async fn sqlite() {
                let (_dir, store) = store().await;
                run(store).await
            }

            $(#[$m])*
            async fn postgres() {
                if let Some(store) = pg_store().await {
                    run(store).await
                }
            }
        }
    };
}

both_backends! {
#[tokio::test]
async fn a_key_twice_in_one_page_is_one_row_and_the_last_wins(store) {
    // A manifest may name a key twice; PostgreSQL refuses to upsert a row twice in one
    // statement, SQLite applies the rows in turn.
    let rows = [obj("k", "\"e1\"", 1), obj("k", "\"e2\"", 2), obj("m", "\"e\"", 3)];
    store.enqueue_page(&scan(), &rows, "m").await.unwrap();
    let k = by_key(&store, "k").await;
    assert_eq!((k.etag.as_str(), k.size), ("\"e2\"", 2));
    assert_eq!(store.state_counts().await.unwrap().pending.objects, 2);
}
}

/// Runs `sql` with `id` bound as `$1`, on either backend.
async fn exec(store: &JobStore, sql: &'static str, id: i64) {
    on_pool!(store, pool => sqlx::query(sql).bind(id).execute(pool).await.map(|_| ())).unwrap();
}

fn scan() -> ScanKey {
    ScanKey {
        bucket: "bkt".into(),
        prefix: "".into(),
        shard: None,
    }
}

fn obj(key: &str, etag: &str, size: u64) -> ListedObject {
    ListedObject {
        key: key.into(),
        etag: etag.into(),
        size,
        last_modified: Some("2026-11-26T00:00:00Z".into()),
        storage_class: Some("STANDARD".into()),
    }
}

fn page(n: usize, etag: &str) -> Vec<ListedObject> {
    (0..n)
        .map(|i| obj(&format!("k{i:06}"), etag, 100))
        .collect()
}

/// Claims everything claimable by `owner`.
async fn claim_all(store: &JobStore, owner: &str) -> Vec<Job> {
    store.claim(owner, 1_000_000, LEASE).await.unwrap()
}

async fn by_key(store: &JobStore, key: &str) -> Job {
    let id: i64 = on_pool!(store, pool => sqlx::query_scalar("SELECT id FROM jobs WHERE key = $1")
        .bind(key)
        .fetch_one(pool)
        .await)
    .unwrap();
    store.job(id).await.unwrap().unwrap()
}

fn done(action: Action, result_etag: &str) -> Outcome {
    Outcome {
        source_format: Some("v1-aes".into()),
        action: Some(action),
        result_etag: Some(result_etag.into()),
        ..Outcome::new(JobState::Done)
    }
}

#[tokio::test]
async fn migrations_apply_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested.db");
    let store = JobStore::open(&path).await.unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(store.sqlite())
            .await
            .unwrap();
    assert!(tables.contains(&"jobs".to_owned()), "{tables:?}");
    assert!(tables.contains(&"scans".to_owned()), "{tables:?}");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.sqlite())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    store
        .enqueue_page(&scan(), &page(3, "\"e\""), "k000002")
        .await
        .unwrap();
    store.close().await;

    // Reopening applies nothing new and keeps the rows.
    let store = JobStore::open(&path).await.unwrap();
    assert_eq!(store.state_counts().await.unwrap().pending.objects, 3);
    store.close().await;

    // Read-only: reads work, writes are refused.
    let ro = JobStore::open_read_only(&path).await.unwrap();
    assert_eq!(ro.counts().await.unwrap().total.objects, 3);
    assert!(ro.claim("w", 1, LEASE).await.is_err());
}

#[tokio::test]
async fn claim_uses_the_partial_indexes() {
    let (_dir, store) = store().await;
    store
        .enqueue_page(&scan(), &page(100, "\"e\""), "k000099")
        .await
        .unwrap();
    sqlx::query("ANALYZE")
        .execute(store.sqlite())
        .await
        .unwrap();
    let sql = format!("EXPLAIN QUERY PLAN {}", claim_sql(10));
    let plan: Vec<String> = sqlx::query(AssertSqlSafe(sql))
        .bind("w")
        .bind(60i64)
        .fetch_all(store.sqlite())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>(3))
        .collect();
    let plan = plan.join("; ");
    assert!(plan.contains("COVERING INDEX jobs_pending"), "{plan}");
    assert!(
        plan.contains("COVERING INDEX jobs_leases (lease_until<?)"),
        "{plan}"
    );
    // Never a scan of the table itself (only of the small partial index); the sorts are of
    // the <= n ids each arm returns.
    assert!(
        !plan
            .split("; ")
            .any(|step| step.starts_with("SCAN jobs") && !step.contains("jobs_pending")),
        "{plan}"
    );
}

both_backends! {
#[tokio::test]
async fn enqueue_is_idempotent(store) {
    let p = page(5, "\"e1\"");
    let first = store.enqueue_page(&scan(), &p, "k000004").await.unwrap();
    assert_eq!(
        first,
        EnqueueStats {
            inserted: 5,
            reset: 0,
            unchanged: 0
        }
    );
    let before: Vec<Job> = {
        let mut v = Vec::new();
        for o in &p {
            v.push(by_key(&store, &o.key).await);
        }
        v
    };
    let second = store.enqueue_page(&scan(), &p, "k000004").await.unwrap();
    assert_eq!(
        second,
        EnqueueStats {
            inserted: 0,
            reset: 0,
            unchanged: 5
        }
    );
    for (o, b) in p.iter().zip(&before) {
        assert_eq!(&by_key(&store, &o.key).await, b);
    }
    assert_eq!(store.state_counts().await.unwrap().pending.objects, 5);
}
}

both_backends! {
#[tokio::test]
async fn enqueue_resets_changed_objects_only(store) {
    let s = scan();
    store
        .enqueue_page(
            &s,
            &[
                obj("ours", "\"a\"", 10),
                obj("changed", "\"b\"", 20),
                obj("busy", "\"c\"", 30),
                obj("failed", "\"d\"", 40),
            ],
            "ours",
        )
        .await
        .unwrap();
    let jobs = claim_all(&store, "w1").await;
    assert_eq!(jobs.len(), 4);
    let id = |k: &str| jobs.iter().find(|j| j.key == k).unwrap().id;
    // We rewrote "ours" (new ETag "a2") and "changed" (new ETag "b2"); "busy" is still running.
    assert!(
        store
            .complete(id("ours"), "w1", &done(Action::Rewrite, "\"a2\""))
            .await
            .unwrap()
    );
    assert!(
        store
            .complete(id("changed"), "w1", &done(Action::Rewrap, "\"b2\""))
            .await
            .unwrap()
    );
    let failed = Outcome {
        error_code: Some("AccessDenied".into()),
        http_status: Some(403),
        last_error: Some("denied".into()),
        ..Outcome::new(JobState::Failed)
    };
    assert!(store.complete(id("failed"), "w1", &failed).await.unwrap());

    // Next night: "ours" lists with our own ETag, "changed" was rewritten by a legacy writer,
    // "busy" changed too but is running, "failed" is as before.
    let stats = store
        .enqueue_page(
            &s,
            &[
                obj("ours", "\"a2\"", 11),
                obj("changed", "\"b3\"", 21),
                obj("busy", "\"c2\"", 31),
                obj("failed", "\"d\"", 40),
                obj("new", "\"n\"", 50),
            ],
            "new",
        )
        .await
        .unwrap();
    assert_eq!(
        stats,
        EnqueueStats {
            inserted: 1,
            reset: 1,
            unchanged: 3
        }
    );
    let ours = by_key(&store, "ours").await;
    assert_eq!(ours.state, JobState::Done);
    assert_eq!(ours.etag, "\"a\"");
    let changed = by_key(&store, "changed").await;
    assert_eq!(changed.state, JobState::Pending);
    assert_eq!(changed.etag, "\"b3\"");
    assert_eq!(changed.size, 21);
    assert_eq!(changed.attempts, 0);
    assert_eq!(changed.result_etag, None);
    assert_eq!(changed.action, None);
    assert_eq!(changed.source_format, None);
    assert_eq!(changed.finished_at, None);
    let busy = by_key(&store, "busy").await;
    assert_eq!(busy.state, JobState::Running);
    assert_eq!(busy.etag, "\"c\"");
    assert_eq!(by_key(&store, "failed").await.state, JobState::Failed);
    assert_eq!(by_key(&store, "new").await.state, JobState::Pending);
}
}

both_backends! {
#[tokio::test]
async fn enqueue_chunks_large_pages(store) {
    let p = page(ENQUEUE_CHUNK * 3 + 7, "\"e\"");
    let stats = store.enqueue_page(&scan(), &p, "zzz").await.unwrap();
    assert_eq!(stats.inserted, p.len() as u64);
    let stats = store.enqueue_page(&scan(), &p, "zzz").await.unwrap();
    assert_eq!(stats.unchanged, p.len() as u64);
    assert_eq!(
        store.scan_checkpoint(&scan()).await.unwrap(),
        Some((Some("zzz".into()), false))
    );
}
}

both_backends! {
#[tokio::test]
async fn checkpoint_round_trip(store) {
    let s = scan();
    let sharded = ScanKey {
        shard: Some((3, 16)),
        ..scan()
    };
    let other_prefix = ScanKey {
        prefix: "logs/".into(),
        ..scan()
    };
    assert_eq!(store.scan_checkpoint(&s).await.unwrap(), None);
    store
        .enqueue_page(&s, &page(2, "\"e\""), "k000001")
        .await
        .unwrap();
    assert_eq!(
        store.scan_checkpoint(&s).await.unwrap(),
        Some((Some("k000001".into()), false))
    );
    assert_eq!(store.scan_checkpoint(&sharded).await.unwrap(), None);
    assert_eq!(store.scan_checkpoint(&other_prefix).await.unwrap(), None);
    store.enqueue_page(&s, &[], "k000009").await.unwrap();
    store.finish_scan(&s).await.unwrap();
    assert_eq!(
        store.scan_checkpoint(&s).await.unwrap(),
        Some((Some("k000009".into()), true))
    );
    let listed: i64 =
        on_pool!(store, pool => sqlx::query_scalar("SELECT listed FROM scans WHERE shard = ''")
            .fetch_one(pool)
            .await)
        .unwrap();
    assert_eq!(listed, 2);
    store.reset_scan(&s).await.unwrap();
    assert_eq!(
        store.scan_checkpoint(&s).await.unwrap(),
        Some((None, false))
    );

    store.finish_scan(&sharded).await.unwrap();
    assert_eq!(
        store.scan_checkpoint(&sharded).await.unwrap(),
        Some((None, true))
    );
}
}

both_backends! {
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_never_hand_out_a_job_twice(store) {
    for chunk in page(2000, "\"e\"").chunks(500) {
        store
            .enqueue_page(&scan(), chunk, &chunk[chunk.len() - 1].key)
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("w{w}");
            let mut got = Vec::new();
            loop {
                let jobs = store.claim(&owner, 7, LEASE).await.unwrap();
                if jobs.is_empty() {
                    break;
                }
                for j in jobs {
                    assert_eq!(j.state, JobState::Running);
                    assert_eq!(j.lease_owner.as_deref(), Some(owner.as_str()));
                    assert_eq!(j.attempts, 1);
                    assert!(
                        store
                            .complete(j.id, &owner, &done(Action::Skip, "\"x\""))
                            .await
                            .unwrap()
                    );
                    got.push(j.id);
                }
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), 2000, "a job was handed out twice");
    assert_eq!(unique.len(), 2000);
    assert_eq!(store.state_counts().await.unwrap().done.objects, 2000);
}
}

both_backends! {
#[tokio::test]
async fn expired_lease_is_reclaimed_and_stale_owner_refused(store) {
    store
        .enqueue_page(&scan(), &page(2, "\"e\""), "k000001")
        .await
        .unwrap();
    let first = store.claim("old", 1, LEASE).await.unwrap();
    assert_eq!(first.len(), 1);
    let id = first[0].id;
    // A live lease is not handed out again.
    let other = store.claim("new", 10, LEASE).await.unwrap();
    assert_eq!(other.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id + 1]);
    assert!(store.claim("new", 10, LEASE).await.unwrap().is_empty());

    // "old" dies; its lease runs out.
    exec(&store, "UPDATE jobs SET lease_until = unixepoch() - 1 WHERE id = $1", id).await;
    let again = store.claim("new", 10, LEASE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, id);
    assert_eq!(again[0].attempts, 2);
    assert_eq!(again[0].lease_owner.as_deref(), Some("new"));

    // The stale owner can no longer write anything.
    let outcome = done(Action::Rewrite, "\"stale\"");
    assert!(!store.complete(id, "old", &outcome).await.unwrap());
    assert!(!store.requeue(id, "old", None, None, "412").await.unwrap());
    assert_eq!(store.release(&[id], "old").await.unwrap(), 0);
    assert!(
        store
            .renew_lease(&[id], "old", LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.job(id).await.unwrap().unwrap().state,
        JobState::Running
    );

    assert_eq!(
        store
            .renew_lease(&[id, id + 1], "new", LEASE)
            .await
            .unwrap(),
        vec![id, id + 1]
    );
    assert!(store.complete(id, "new", &outcome).await.unwrap());
    let job = store.job(id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Done);
    assert_eq!(job.result_etag.as_deref(), Some("\"stale\""));
    assert_eq!(job.lease_owner, None);
    assert!(job.finished_at.is_some());
    // Finished rows are not outcome-writable any more, even by the last owner.
    assert!(!store.complete(id, "new", &outcome).await.unwrap());
}
}

both_backends! {
#[tokio::test]
async fn requeue_release_and_outcome_validation(store) {
    store
        .enqueue_page(&scan(), &page(3, "\"e\""), "k000002")
        .await
        .unwrap();
    let jobs = claim_all(&store, "w").await;
    let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();

    assert!(matches!(
        store
            .complete(ids[0], "w", &Outcome::new(JobState::Pending))
            .await,
        Err(StoreError::NotFinal(JobState::Pending))
    ));

    assert!(
        store
            .requeue(ids[0], "w", Some("\"e2\""), Some(123), "PreconditionFailed")
            .await
            .unwrap()
    );
    let j = store.job(ids[0]).await.unwrap().unwrap();
    assert_eq!(
        (j.state, j.etag.as_str(), j.size, j.conflicts, j.attempts),
        (JobState::Pending, "\"e2\"", 123, 1, 1)
    );
    assert_eq!(j.lease_owner, None);

    assert_eq!(store.release(&ids[1..], "w").await.unwrap(), 2);
    let j = store.job(ids[1]).await.unwrap().unwrap();
    assert_eq!((j.state, j.attempts), (JobState::Pending, 0));

    // All three come back, in id order, with the requeued one keeping its attempt.
    let again = claim_all(&store, "w2").await;
    assert_eq!(again.iter().map(|j| j.id).collect::<Vec<_>>(), ids);
    assert_eq!(
        again.iter().map(|j| j.attempts).collect::<Vec<_>>(),
        vec![2, 1, 1]
    );
    assert_eq!(again[0].etag, "\"e2\"");

    let failed = Outcome {
        last_error: Some("boom".into()),
        ..Outcome::new(JobState::Failed)
    };
    for id in &ids {
        assert!(store.complete(*id, "w2", &failed).await.unwrap());
    }
    assert_eq!(store.retry_failed(false).await.unwrap(), 3);
    assert_eq!(store.state_counts().await.unwrap().pending.objects, 3);
}
}

/// The kept counters (`counts`) against a `GROUP BY` over every job (`counts_by_scan`).
async fn assert_counts_exact(store: &JobStore, step: &str) {
    let kept = store.counts().await.unwrap();
    let scanned = store.counts_by_scan().await.unwrap();
    assert_eq!(kept, scanned, "after {step}");
    assert_eq!(
        store.state_counts().await.unwrap(),
        kept.by_state,
        "after {step}"
    );
}

both_backends! {
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kept_counts_equal_a_full_scan_after_a_mixed_workload(store) {
    // Every write path of `jobs`: enqueue (new rows and resets of changed ones), claims,
    // outcomes of each kind, a dry-run plan, requeue with a new size, release, lease expiry,
    // retry, deletes; and an empty source format / skip reason, which the counters must not
    // confuse with NULL.
    let rows: Vec<ListedObject> = (0..60)
        .map(|i| obj(&format!("k{i:03}"), "\"e\"", 100 + i))
        .collect();
    store.enqueue_page(&scan(), &rows, "k059").await.unwrap();
    assert_counts_exact(&store, "enqueue").await;

    let jobs = store.claim("w", 40, LEASE).await.unwrap();
    assert_counts_exact(&store, "claim").await;
    let outcome = |i: usize| match i % 8 {
        0 => done(Action::Rewrite, "\"r\""),
        1 => done(Action::Rewrap, "\"r\""),
        2 => Outcome {
            source_format: None,
            skip_reason: Some("plaintext".into()),
            ..done(Action::Skip, "")
        },
        3 => Outcome {
            source_format: Some(String::new()),
            skip_reason: Some(String::new()),
            ..done(Action::Skip, "")
        },
        4 => Outcome {
            source_format: Some("v2-kms-gcm".into()),
            error_code: Some("AccessDenied".into()),
            ..Outcome::new(JobState::Failed)
        },
        5 => Outcome::new(JobState::Conflict),
        _ => Outcome::new(JobState::Failed),
    };
    for (i, j) in jobs.iter().enumerate().take(32) {
        assert!(store.complete(j.id, "w", &outcome(i)).await.unwrap());
    }
    assert_counts_exact(&store, "outcomes").await;
    assert!(store.requeue(jobs[32].id, "w", Some("\"e2\""), Some(7), "412").await.unwrap());
    assert_eq!(store.release(&[jobs[33].id, jobs[34].id], "w").await.unwrap(), 2);
    assert_counts_exact(&store, "requeue and release").await;

    // A dry-run plan on pending rows, including a plan that changes nothing.
    let pending = store.report(Some(JobState::Pending)).try_collect::<Vec<_>>().await.unwrap();
    for (i, r) in pending.iter().enumerate().take(6) {
        let plan = Outcome {
            source_format: Some("v1-aes".into()),
            action: Some(if i % 2 == 0 { Action::Rewrap } else { Action::Skip }),
            skip_reason: (i % 2 == 1).then(|| "current".to_owned()),
            ..Outcome::new(JobState::Done)
        };
        assert!(store.record_plan(r.id, &plan).await.unwrap());
        assert!(store.record_plan(r.id, &plan).await.unwrap());
    }
    assert_counts_exact(&store, "plans").await;

    // Lease expiry: running rows of a dead worker claimed by another.
    on_pool!(store, pool => sqlx::query("UPDATE jobs SET lease_until = 0 WHERE lease_owner = 'w'")
        .execute(pool).await.map(|_| ())).unwrap();
    let again = store.claim("w2", 100, LEASE).await.unwrap();
    assert!(!again.is_empty());
    assert_counts_exact(&store, "reclaim").await;
    for j in &again {
        assert!(store.complete(j.id, "w2", &outcome(j.id as usize)).await.unwrap());
    }
    assert!(store.retry_failed(true).await.unwrap() > 0);
    assert_counts_exact(&store, "retry").await;

    // A rescan: changed ETags and sizes reset finished rows; new keys join.
    let rescan: Vec<ListedObject> = (0..70)
        .map(|i| obj(&format!("k{i:03}"), if i % 3 == 0 { "\"e3\"" } else { "\"e\"" }, 1000 + i))
        .collect();
    store.enqueue_page(&scan(), &rescan, "k069").await.unwrap();
    assert_counts_exact(&store, "rescan").await;

    on_pool!(store, pool => sqlx::query("DELETE FROM jobs WHERE id % 7 = 0")
        .execute(pool).await.map(|_| ())).unwrap();
    assert_counts_exact(&store, "delete").await;

    // Concurrent workers (on PostgreSQL: several connections, several counter slots).
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("c{w}");
            loop {
                let jobs = store.claim(&owner, 3, LEASE).await.unwrap();
                if jobs.is_empty() {
                    break;
                }
                for j in jobs {
                    assert!(store.complete(j.id, &owner, &outcome(j.id as usize)).await.unwrap());
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let kept = store.counts().await.unwrap();
    assert_eq!(kept.by_state.remaining().objects, 0);
    assert!(kept.first_finished_at.is_some());
    assert_counts_exact(&store, "concurrent workers").await;
}
}

/// A state file written before the counters (schema 4) gets them, backfilled, when it is
/// opened for writing.
#[tokio::test]
async fn the_counters_migration_backfills_an_existing_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let store = JobStore::open(&path).await.unwrap();
    store
        .enqueue_page(&scan(), &page(20, "\"e\""), "k000019")
        .await
        .unwrap();
    for (i, j) in claim_all(&store, "w").await.iter().enumerate().take(12) {
        let o = if i % 2 == 0 {
            done(Action::Rewrap, "\"r\"")
        } else {
            Outcome::new(JobState::Failed)
        };
        assert!(store.complete(j.id, "w", &o).await.unwrap());
    }
    let before = store.counts_by_scan().await.unwrap();
    // Back to schema 4: what an s3cse of last release left.
    for sql in [
        "DROP TRIGGER jobs_count_insert",
        "DROP TRIGGER jobs_count_delete",
        "DROP TRIGGER jobs_count_update",
        "DROP TABLE job_counts",
        "DROP INDEX jobs_finished",
        "DELETE FROM _sqlx_migrations WHERE version = 5",
    ] {
        sqlx::query(sql).execute(store.sqlite()).await.unwrap();
    }
    store.close().await;
    assert!(matches!(
        JobStore::open_read_only(&path).await,
        Err(StoreError::Schema { found: Some(4), .. })
    ));
    let store = JobStore::open(&path).await.unwrap();
    assert_eq!(store.counts().await.unwrap(), before);
    assert_eq!(before.by_state.done.objects, 6);
}

both_backends! {
#[tokio::test]
async fn release_owner_prefix_frees_one_process_only(store) {
    store
        .enqueue_page(&scan(), &page(5, "\"e\""), "k000004")
        .await
        .unwrap();
    // This process (two runs' owners), a process on another host with the same pid, and a
    // pid that merely starts with ours.
    let mine = store.claim("pod_a:7:111", 2, LEASE).await.unwrap();
    let mine2 = store.claim("pod_a:7:222", 1, LEASE).await.unwrap();
    let other_host = store.claim("pod_b:7:111", 1, LEASE).await.unwrap();
    let other_pid = store.claim("pod_a:77:111", 1, LEASE).await.unwrap();
    assert!(
        store
            .complete(mine[1].id, "pod_a:7:111", &done(Action::Skip, "x"))
            .await
            .unwrap()
    );

    // `_` is no wildcard: "pod%a" matches nothing.
    assert_eq!(store.release_owner_prefix("pod%a:7:").await.unwrap(), 0);
    assert_eq!(store.release_owner_prefix("pod_a:7:").await.unwrap(), 2);
    for job in [&mine[0], &mine2[0]] {
        let j = store.job(job.id).await.unwrap().unwrap();
        assert_eq!(
            (j.state, j.attempts, j.lease_owner),
            (JobState::Pending, 0, None)
        );
    }
    let finished = store.job(mine[1].id).await.unwrap().unwrap();
    assert_eq!(
        finished.state,
        JobState::Done,
        "finished jobs stay finished"
    );
    for job in [&other_host[0], &other_pid[0]] {
        let j = store.job(job.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Running, "{:?}", j.lease_owner);
    }
    assert_eq!(store.release_owner_prefix("").await.unwrap(), 0);
}
}

both_backends! {
#[tokio::test]
async fn counts_and_report(store) {
    let objects: Vec<ListedObject> = (0..6)
        .map(|i| obj(&format!("k{i}"), "\"e\"", 1000 + i))
        .collect();
    store.enqueue_page(&scan(), &objects, "k5").await.unwrap();
    let jobs = store.claim("w", 5, LEASE).await.unwrap();
    assert_eq!(jobs.len(), 5);
    let outcomes = [
        Outcome {
            previous_version_id: Some("v0".into()),
            result_version_id: Some("v1".into()),
            plaintext_sha256: Some("ab".repeat(32)),
            ..done(Action::Rewrite, "\"r0\"")
        },
        done(Action::Rewrap, "\"r1\""),
        Outcome {
            source_format: None,
            skip_reason: Some("plaintext".into()),
            result_etag: None,
            ..done(Action::Skip, "")
        },
        Outcome {
            source_format: Some("v1-aes".into()),
            error_code: Some("AccessDenied".into()),
            http_status: Some(403),
            last_error: Some("kms:Decrypt denied".into()),
            ..Outcome::new(JobState::Failed)
        },
        Outcome {
            last_error: Some("changed 5 times".into()),
            ..Outcome::new(JobState::Conflict)
        },
    ];
    for (j, o) in jobs.iter().zip(&outcomes) {
        assert!(store.complete(j.id, "w", o).await.unwrap());
    }
    // k4 (conflict) stays; k5 is pending.

    let c = store.counts().await.unwrap();
    assert_eq!(
        c.total,
        Tally {
            objects: 6,
            bytes: 6015
        }
    );
    assert_eq!(
        c.by_state.done,
        Tally {
            objects: 3,
            bytes: 3003
        }
    );
    assert_eq!(
        c.by_state.failed,
        Tally {
            objects: 1,
            bytes: 1003
        }
    );
    assert_eq!(
        c.by_state.conflict,
        Tally {
            objects: 1,
            bytes: 1004
        }
    );
    assert_eq!(
        c.by_state.pending,
        Tally {
            objects: 1,
            bytes: 1005
        }
    );
    assert_eq!(c.by_state.running, Tally::default());
    assert_eq!(
        c.by_state.remaining(),
        Tally {
            objects: 1,
            bytes: 1005
        }
    );
    assert_eq!(c.by_state.finished().objects, 5);
    assert_eq!(c.by_state, store.state_counts().await.unwrap());
    assert_eq!(
        c.by_source_format.get("v1-aes"),
        Some(&Tally {
            objects: 3,
            bytes: 3004
        })
    );
    assert_eq!(
        c.by_action.get(&(Action::Skip, Some("plaintext".into()))),
        Some(&Tally {
            objects: 1,
            bytes: 1002
        })
    );
    assert_eq!(
        c.by_action.get(&(Action::Rewrite, None)),
        Some(&Tally {
            objects: 1,
            bytes: 1000
        })
    );
    assert!(c.first_finished_at.is_some());
    assert!(c.first_finished_at <= c.last_finished_at);

    let all: Vec<ReportRow> = store.report(None).try_collect().await.unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(
        all.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["k0", "k1", "k2", "k3", "k4", "k5"]
    );
    assert_eq!(all[0].task_status, "succeeded");
    assert_eq!(all[0].version_id.as_deref(), Some("v0"));
    assert_eq!(all[0].result_message, "rewrite");
    assert_eq!(all[2].result_message, "skip: plaintext");
    assert_eq!(all[3].task_status, "failed");
    assert_eq!(all[3].error_code.as_deref(), Some("AccessDenied"));
    assert_eq!(all[3].http_status, Some(403));
    assert_eq!(all[3].result_message, "kms:Decrypt denied");
    assert_eq!(all[4].task_status, "failed");
    assert_eq!(all[5].task_status, "pending");
    let json = serde_json::to_value(&all[3]).unwrap();
    assert_eq!(json["HTTPStatusCode"], 403);
    assert_eq!(json["TaskStatus"], "failed");
    assert_eq!(json["state"], "failed");

    let failed: Vec<ReportRow> = store
        .report(Some(JobState::Failed))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].key, "k3");
}
}

both_backends! {
#[tokio::test]
async fn report_pages_through_many_rows(store) {
    let n = REPORT_PAGE as usize * 2 + 1;
    store
        .enqueue_page(&scan(), &page(n, "\"e\""), "z")
        .await
        .unwrap();
    let rows: Vec<ReportRow> = store.report(None).try_collect().await.unwrap();
    assert_eq!(rows.len(), n);
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id));
    let none: Vec<ReportRow> = store
        .report(Some(JobState::Done))
        .try_collect()
        .await
        .unwrap();
    assert!(none.is_empty());
}
}

#[test]
fn state_and_action_text_round_trip() {
    for s in JobState::ALL {
        assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
    }
    for a in Action::ALL {
        assert_eq!(a.as_str().parse::<Action>().unwrap(), a);
    }
    assert!("bogus".parse::<JobState>().is_err());
    assert!("Rewrite".parse::<Action>().is_err());
}

/// Enqueue throughput: 200k keys in pages of 1000, as a scan would. Run with
/// `cargo test --release --lib store::tests::enqueue_rate -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement; run in release"]
async fn enqueue_rate() {
    let (_dir, store) = store().await;
    let total = 200_000;
    let objects: Vec<ListedObject> = (0..total)
        .map(|i| ListedObject {
            key: format!("data/2026/11/{:02}/part-{i:08}.parquet", i % 30),
            etag: format!("\"{:032x}\"", i as u128 * 0x9e37_79b9_7f4a_7c15),
            size: 1 << 20,
            last_modified: Some("2026-11-26T00:00:00.000Z".into()),
            storage_class: Some("STANDARD".into()),
        })
        .collect();
    let mut sorted = objects;
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    for (label, expect_inserted) in [("insert", true), ("rescan (unchanged)", false)] {
        let start = Instant::now();
        let cpu_start = process_cpu_secs();
        for chunk in sorted.chunks(1000) {
            let stats = store
                .enqueue_page(&scan(), chunk, &chunk[chunk.len() - 1].key)
                .await
                .unwrap();
            if expect_inserted {
                assert_eq!(stats.inserted, chunk.len() as u64);
            } else {
                assert_eq!(stats.unchanged, chunk.len() as u64);
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let cpu = process_cpu_secs() - cpu_start;
        // CPU time too: on a shared, loaded machine the wall-clock rate is mostly noise.
        println!(
            "enqueue {label}: {total} keys in {secs:.2}s = {:.0} keys/s (process CPU {cpu:.2}s = {:.0} keys per CPU-second)",
            total as f64 / secs,
            total as f64 / cpu
        );
    }
    // Live leases at the front of the table (a big worker fleet mid-batch) must not slow the
    // claim down: hold 10k rows, then claim and complete 20k more.
    let held = store.claim("fleet", 10_000, LEASE).await.unwrap();
    assert_eq!(held.len(), 10_000);
    let start = Instant::now();
    let mut claimed = 0;
    while claimed < 20_000 {
        let jobs = store.claim("w", 100, LEASE).await.unwrap();
        assert_eq!(jobs.len(), 100);
        claimed += jobs.len();
        for j in jobs {
            assert!(
                store
                    .complete(j.id, "w", &done(Action::Skip, "\"x\""))
                    .await
                    .unwrap()
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "claim (batches of 100) + complete (one by one): {claimed} jobs in {secs:.2}s = {:.0} jobs/s",
        claimed as f64 / secs
    );
    let start = Instant::now();
    let s = store.state_counts().await.unwrap();
    println!(
        "state_counts over {} rows: {:?}",
        s.iter().map(|(_, t)| t.objects).sum::<u64>(),
        start.elapsed()
    );
    let start = Instant::now();
    let c = store.counts().await.unwrap();
    println!(
        "counts over {} rows: {:?}",
        c.total.objects,
        start.elapsed()
    );
}

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`, 100 Hz ticks).
fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) are utime and stime; `fields` starts at field 3.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

both_backends! {
#[tokio::test]
async fn an_intent_lasts_until_an_outcome_is_recorded(store) {
    store
        .enqueue_page(&scan(), &[obj("a", "e1", 10)], "a")
        .await
        .unwrap();
    let job = claim_all(&store, "w1").await.remove(0);
    assert_eq!(job.intent, None);
    let intent = Intent {
        action: Action::Rewrite,
        source_format: "v1-aes".into(),
        source_etag: Some("e1".into()),
        source_version_id: Some("v1".into()),
        upload_id: Some("up-1".into()),
        fingerprint: Some("0123abcd".into()),
        earlier_fingerprints: vec!["4567cdef".into()],
        instruction_etag: None,
    };
    // Intents written before `upload_id` existed (no such key) still read.
    let older = Intent {
        upload_id: None,
        fingerprint: None,
        earlier_fingerprints: Vec::new(),
        ..intent.clone()
    };
    let json = serde_json::to_string(&older).unwrap();
    assert!(!json.contains("upload_id"), "{json}");
    assert!(!json.contains("fingerprint"), "{json}");
    assert_eq!(serde_json::from_str::<Intent>(&json).unwrap(), older);
    assert!(
        !store.record_intent(job.id, "w2", &intent).await.unwrap(),
        "only the lease holder records an intent"
    );
    assert!(store.record_intent(job.id, "w1", &intent).await.unwrap());
    assert_eq!(by_key(&store, "a").await.intent.as_ref(), Some(&intent));

    // A refused write forgets only the holder's intent.
    store.clear_intent(job.id, "w2").await.unwrap();
    assert_eq!(by_key(&store, "a").await.intent.as_ref(), Some(&intent));
    store.clear_intent(job.id, "w1").await.unwrap();
    assert_eq!(by_key(&store, "a").await.intent, None);
    assert!(store.record_intent(job.id, "w1", &intent).await.unwrap());

    // The worker dies after its write; the next attempt sees the new ETag (a conflict) and a
    // rescan lists it: the intent survives both.
    store
        .requeue(job.id, "w1", Some("e2"), None, "changed")
        .await
        .unwrap();
    store
        .enqueue_page(&scan(), &[obj("a", "e3", 10)], "a")
        .await
        .unwrap();
    let again = by_key(&store, "a").await;
    assert_eq!(again.etag, "e3", "the rescan reset the row");
    assert_eq!(again.intent.as_ref(), Some(&intent));

    // An outcome clears it.
    let job = claim_all(&store, "w3").await.remove(0);
    assert!(
        store
            .complete(job.id, "w3", &done(Action::Rewrite, "e3"))
            .await
            .unwrap()
    );
    assert_eq!(by_key(&store, "a").await.intent, None);
}
}

/// The files in `dir`, with size and modification time.
fn files(dir: &std::path::Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Sets the mode of `path` (read-only 0o444/0o555, or back to writable).
#[cfg(unix)]
fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn read_only_open_of_a_read_only_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let store = JobStore::open(&path).await.unwrap();
    store
        .enqueue_page(&scan(), &page(3, "\"e\""), "k000002")
        .await
        .unwrap();
    store.close().await;
    let before = files(dir.path());
    assert_eq!(
        before.len(),
        1,
        "a closed store leaves one file: {before:?}"
    );
    // Also in a writable directory: no -wal/-shm appears beside a closed store.
    let ro = JobStore::open_read_only(&path).await.unwrap();
    assert_eq!(ro.counts().await.unwrap().total.objects, 3);
    ro.close().await;
    assert_eq!(files(dir.path()), before);
    chmod(&path, 0o444);
    chmod(dir.path(), 0o555);
    let r = async {
        let ro = JobStore::open_read_only(&path).await?;
        let n = ro.counts().await?.total.objects;
        let rows: Vec<_> = ro.report(None).try_collect().await?;
        ro.close().await;
        Ok::<_, StoreError>((n, rows.len()))
    }
    .await;
    let after = files(dir.path());
    chmod(dir.path(), 0o755);
    chmod(&path, 0o644);
    assert_eq!(r.unwrap(), (3, 3));
    assert_eq!(after, before, "the read changed the directory");
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_left_as_it_is() {
    let (dir, store) = store().await;
    let ours = our_schema_version();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (?, 'from the future', 1, x'00', 0)",
    )
    .bind(ours + 1)
    .execute(store.sqlite())
    .await
    .unwrap();
    store.close().await;
    let path = dir.path().join("jobs.db");
    let before = std::fs::read(&path).unwrap();
    for read_only in [true, false] {
        let r = if read_only {
            JobStore::open_read_only(&path).await
        } else {
            JobStore::open(&path).await
        };
        let e = r.map(|_| ()).unwrap_err();
        assert!(
            matches!(e, StoreError::Schema { found: Some(f), .. } if f == ours + 1),
            "{e}"
        );
        assert!(e.to_string().contains("newer than this s3cse"), "{e}");
    }
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file changed");
}

#[tokio::test]
async fn a_read_only_open_refuses_what_it_cannot_read() {
    let (dir, store) = store().await;
    // An older schema: the newest migration not applied yet.
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = ?")
        .bind(our_schema_version())
        .execute(store.sqlite())
        .await
        .unwrap();
    store.close().await;
    let e = JobStore::open_read_only(&dir.path().join("jobs.db"))
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(e.to_string().contains("older than this s3cse"), "{e}");
    // Not a state file at all (an empty SQLite database).
    let other = dir.path().join("other.db");
    let pool = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(&other)
            .create_if_missing(true),
    )
    .await
    .unwrap();
    sqlx::query("CREATE TABLE t (a)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let e = JobStore::open_read_only(&other)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(e, StoreError::Schema { found: None, .. }), "{e}");
}

/// The queue at scale, both backends in one run (`scripts/bench-queue.sh`; BENCHMARKS.md,
/// "Shared queue"): enqueue rate, `status` latency (`counts`), and the claim rate of 8
/// workers claiming 16 at a time and recording each outcome, with `BENCH_ROWS` rows (1M by
/// default). PostgreSQL only with `S3CSE_TEST_PG_URL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "scale measurement; scripts/bench-queue.sh"]
async fn queue_scale() {
    let rows: usize = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let (_dir, sqlite) = store().await;
    let mut stores = vec![("sqlite", sqlite)];
    if let Some(pg) = pg_store().await {
        stores.push(("postgres", pg));
    }
    for (name, store) in stores {
        let t = Instant::now();
        let mut page = Vec::with_capacity(1000);
        for i in 0..rows {
            page.push(ListedObject {
                key: format!("data/2026/11/{:02}/part-{i:09}.parquet", i % 30),
                etag: format!("\"{:032x}\"", i as u128 * 0x9e37_79b9_7f4a_7c15),
                size: 1 << 20,
                last_modified: Some("2026-11-26T00:00:00Z".into()),
                storage_class: Some("STANDARD".into()),
            });
            if page.len() == 1000 || i + 1 == rows {
                let last = page[page.len() - 1].key.clone();
                store.enqueue_page(&scan(), &page, &last).await.unwrap();
                page.clear();
            }
        }
        let enqueue = t.elapsed();
        let t = Instant::now();
        let c = store.counts().await.unwrap();
        let status_pending = t.elapsed();
        assert_eq!(c.total.objects, rows as u64);
        let window = Duration::from_secs(10);
        let t = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let owner = format!("bench-{w}");
                let mut n = 0u64;
                while t.elapsed() < window {
                    for j in store.claim(&owner, 16, LEASE).await.unwrap() {
                        assert!(
                            store
                                .complete(j.id, &owner, &done(Action::Rewrap, "\"r\""))
                                .await
                                .unwrap()
                        );
                        n += 1;
                    }
                }
                n
            }));
        }
        let mut claimed = 0;
        for task in tasks {
            claimed += task.await.unwrap();
        }
        let claim_secs = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let c = store.counts().await.unwrap();
        let status_mixed = t.elapsed();
        assert_eq!(c.by_state.done.objects, claimed);
        println!(
            "{name}: {rows} rows; enqueue {:.0} keys/s; status {:.0} ms (all pending), {:.0} ms \
             (after the claims); claim+complete {:.0} jobs/s (8 workers x 16)",
            rows as f64 / enqueue.as_secs_f64(),
            status_pending.as_secs_f64() * 1e3,
            status_mixed.as_secs_f64() * 1e3,
            claimed as f64 / claim_secs,
        );
        store.close().await;
    }
}
