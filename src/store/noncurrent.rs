//! Noncurrent object versions (`rekey --noncurrent`, migration `0003_noncurrent.sql`): what the
//! listing saw of each, and what became of it. A table of its own beside `jobs`: a job is one
//! key, a key has any number of old versions, and the delete pass walks them per object.

use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, Row};

use super::{Backend, JobStore, StoreError, on_pool, to_i64, to_u64};

/// What became of a noncurrent version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionState {
    /// Seen by the last listing; nothing decided yet (`--noncurrent report`).
    Listed,
    /// Left in place by `--noncurrent delete`; the note says why.
    Kept,
    /// Decided and about to be deleted (written before the DeleteObject): a crash here is
    /// settled by the next run.
    Deleting,
    /// Deleted by its version id; `deleted_at` says when.
    Deleted,
}

impl VersionState {
    pub const ALL: [VersionState; 4] = [
        VersionState::Listed,
        VersionState::Kept,
        VersionState::Deleting,
        VersionState::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Listed => "listed",
            VersionState::Kept => "kept",
            VersionState::Deleting => "deleting",
            VersionState::Deleted => "deleted",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "listed" => VersionState::Listed,
            "kept" => VersionState::Kept,
            "deleting" => VersionState::Deleting,
            "deleted" => VersionState::Deleted,
            other => {
                return Err(StoreError::Corrupt {
                    column: "noncurrent_versions.state",
                    value: other.to_owned(),
                });
            }
        })
    }
}

/// A noncurrent version as listed and classified, for [`JobStore::record_version`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedVersion {
    pub key: String,
    pub version_id: String,
    /// The data object: `key` without its `.instruction` suffix.
    pub object_key: String,
    pub size: u64,
    pub last_modified: Option<String>,
    /// The census class: `plaintext`, `current` or `remaining`.
    pub class: String,
    /// For a remaining version, its underlying reason (`legacy-wrap`, `other-kms-key`, ...).
    pub detail: Option<String>,
    /// What wraps its content key (`target`, `kms:<id>`, `aes`, `rsa`, `-`, `?`).
    pub wrapping_key: Option<String>,
}

/// A row of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NoncurrentVersion {
    #[serde(skip)]
    pub id: i64,
    pub bucket: String,
    pub key: String,
    pub version_id: String,
    pub object_key: String,
    pub size: u64,
    pub last_modified: Option<String>,
    pub class: String,
    pub detail: Option<String>,
    pub wrapping_key: Option<String>,
    pub state: VersionState,
    pub note: Option<String>,
    /// Unix seconds.
    pub deleted_at: Option<i64>,
}

/// Versions and bytes of one (class, detail, state) group, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionCount {
    pub class: String,
    pub detail: Option<String>,
    pub state: VersionState,
    pub versions: u64,
    pub bytes: u64,
}

const COLUMNS: &str = "id, bucket, key, version_id, object_key, size, last_modified, class, \
                       detail, wrapping_key, state, note, deleted_at";

impl JobStore {
    /// Records a noncurrent version seen by a listing (an upsert): its verdict is refreshed and,
    /// unless it was deleted or is being deleted, it is `listed` again, its note cleared.
    pub async fn record_version(&self, bucket: &str, v: &ListedVersion) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO noncurrent_versions AS v (bucket, key, version_id, object_key, size, \
             last_modified, class, detail, wrapping_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (bucket, key, version_id) DO UPDATE SET size = excluded.size, \
             last_modified = excluded.last_modified, class = excluded.class, \
             detail = excluded.detail, wrapping_key = excluded.wrapping_key, \
             listed_at = unixepoch(), updated_at = unixepoch(), \
             state = CASE WHEN v.state IN ('deleting', 'deleted') THEN v.state \
             ELSE 'listed' END, \
             note = CASE WHEN v.state IN ('deleting', 'deleted') THEN v.note ELSE NULL END",
        )
        .bind(bucket)
        .bind(&v.key)
        .bind(&v.version_id)
        .bind(&v.object_key)
        .bind(to_i64(v.size))
        .bind(&v.last_modified)
        .bind(&v.class)
        .bind(&v.detail)
        .bind(&v.wrapping_key)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// After a complete listing of `bucket`/`prefix` that started at `listed_since` (unix
    /// seconds): forgets the rows it did not see again (versions removed since by someone
    /// else, or a lifecycle rule), except those being deleted or deleted (the record).
    pub async fn forget_unlisted_versions(
        &self,
        bucket: &str,
        prefix: &str,
        listed_since: i64,
    ) -> Result<u64, StoreError> {
        let r = on_pool!(self, pool => sqlx::query(
            "DELETE FROM noncurrent_versions WHERE bucket = $1 \
             AND substr(key, 1, length($2)) = $2 AND listed_at < $3 \
             AND state IN ('listed', 'kept')",
        )
        .bind(bucket)
        .bind(prefix)
        .bind(listed_since)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(r)
    }

    /// Up to `limit` data objects of `bucket` after `after`, in key order, with versions not
    /// yet deleted: the delete pass's work, one object at a time.
    pub async fn objects_with_versions(
        &self,
        bucket: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        // SQLite is pinned to the partial index (`INDEXED BY`); PostgreSQL has no such hint.
        const SQLITE: &str = "SELECT DISTINCT object_key FROM noncurrent_versions \
             INDEXED BY noncurrent_open WHERE bucket = $1 AND state <> 'deleted' \
             AND ($2 IS NULL OR object_key > $2) ORDER BY object_key LIMIT $3";
        const PG: &str = "SELECT DISTINCT object_key FROM noncurrent_versions \
             WHERE bucket = $1 AND state <> 'deleted' \
             AND ($2::text IS NULL OR object_key > $2) ORDER BY object_key LIMIT $3";
        let sql = match self.backend {
            Backend::Sqlite(_) => SQLITE,
            Backend::Postgres(_) => PG,
        };
        Ok(on_pool!(self, pool => sqlx::query_scalar(sql)
            .bind(bucket)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?)
    }

    /// The versions of `object_key` (its own and its `.instruction`'s) not yet deleted.
    pub async fn versions_of(
        &self,
        bucket: &str,
        object_key: &str,
    ) -> Result<Vec<NoncurrentVersion>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM noncurrent_versions WHERE bucket = $1 AND object_key = $2 \
             AND state <> 'deleted' ORDER BY key, id"
        );
        Ok(on_pool!(self, pool => sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(bucket)
            .bind(object_key)
            .fetch_all(pool)
            .await?
            .iter()
            .map(NoncurrentVersion::from_row)
            .collect::<Result<_, _>>()?))
    }

    /// Sets a version's state and note; `deleted` also stamps `deleted_at`.
    pub async fn set_version_state(
        &self,
        id: i64,
        state: VersionState,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query(
            "UPDATE noncurrent_versions SET state = $2, note = $3, updated_at = unixepoch(), \
             deleted_at = CASE WHEN $2 = 'deleted' THEN unixepoch() ELSE deleted_at END \
             WHERE id = $1",
        )
        .bind(id)
        .bind(state.as_str())
        .bind(note)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Versions and bytes per (class, detail, state), for `status` and the metric.
    pub async fn version_counts(&self) -> Result<Vec<VersionCount>, StoreError> {
        let rows: Vec<(String, Option<String>, String, i64, i64)> = on_pool!(self, pool => sqlx::query_as(
                "SELECT class, detail, state, count(*), CAST(sum(size) AS BIGINT) \
                 FROM noncurrent_versions GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            )
            .fetch_all(pool)
            .await)?;
        rows.into_iter()
            .map(|(class, detail, state, n, bytes)| {
                Ok(VersionCount {
                    class,
                    detail,
                    state: VersionState::parse(&state)?,
                    versions: to_u64(n),
                    bytes: to_u64(bytes),
                })
            })
            .collect()
    }

    /// Up to `limit` rows with id > `after_id`, in id order (keyset paging, for `report`).
    pub async fn versions_page(
        &self,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<NoncurrentVersion>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM noncurrent_versions WHERE id > $1 ORDER BY id LIMIT $2");
        Ok(
            on_pool!(self, pool => sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(after_id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
            .iter()
            .map(NoncurrentVersion::from_row)
            .collect::<Result<_, _>>()?),
        )
    }
}

macro_rules! impl_version_row {
    ($row:ty) => {
        impl<'r> FromRow<'r, $row> for NoncurrentVersion {
            fn from_row(row: &'r $row) -> Result<Self, sqlx::Error> {
                let state: String = row.try_get("state")?;
                Ok(NoncurrentVersion {
                    id: row.try_get("id")?,
                    bucket: row.try_get("bucket")?,
                    key: row.try_get("key")?,
                    version_id: row.try_get("version_id")?,
                    object_key: row.try_get("object_key")?,
                    size: to_u64(row.try_get("size")?),
                    last_modified: row.try_get("last_modified")?,
                    class: row.try_get("class")?,
                    detail: row.try_get("detail")?,
                    wrapping_key: row.try_get("wrapping_key")?,
                    state: VersionState::parse(&state).map_err(|e| sqlx::Error::ColumnDecode {
                        index: "state".into(),
                        source: Box::new(e),
                    })?,
                    note: row.try_get("note")?,
                    deleted_at: row.try_get("deleted_at")?,
                })
            }
        }
    };
}
impl_version_row!(SqliteRow);
impl_version_row!(PgRow);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn listed(key: &str, version: &str, class: &str) -> ListedVersion {
        ListedVersion {
            key: key.into(),
            version_id: version.into(),
            object_key: key.trim_end_matches(".instruction").into(),
            size: 10,
            last_modified: None,
            class: class.into(),
            detail: Some("legacy-wrap".into()),
            wrapping_key: Some("aes".into()),
        }
    }

    #[tokio::test]
    async fn a_deleted_version_stays_recorded_and_a_relisted_one_is_listed_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(&dir.path().join("jobs.db")).await.unwrap();
        store
            .record_version("b", &listed("a", "v1", "remaining"))
            .await
            .unwrap();
        store
            .record_version("b", &listed("a.instruction", "v2", "remaining"))
            .await
            .unwrap();
        store
            .record_version("b", &listed("c", "v3", "plaintext"))
            .await
            .unwrap();
        assert_eq!(
            store.objects_with_versions("b", None, 10).await.unwrap(),
            ["a", "c"]
        );
        let a = store.versions_of("b", "a").await.unwrap();
        assert_eq!(a.len(), 2, "the object's and its instruction file's");
        store
            .set_version_state(a[0].id, VersionState::Deleting, None)
            .await
            .unwrap();
        store
            .set_version_state(a[1].id, VersionState::Kept, Some("object lock"))
            .await
            .unwrap();
        // A crash after `deleting`: the next listing does not undo the decision.
        store
            .record_version("b", &listed("a", "v1", "remaining"))
            .await
            .unwrap();
        store
            .record_version("b", &listed("a.instruction", "v2", "remaining"))
            .await
            .unwrap();
        let a = store.versions_of("b", "a").await.unwrap();
        assert_eq!(
            (a[0].state, a[1].state, a[1].note.as_deref()),
            (VersionState::Deleting, VersionState::Listed, None)
        );
        store
            .set_version_state(a[0].id, VersionState::Deleted, None)
            .await
            .unwrap();
        let page = store.versions_page(0, 10).await.unwrap();
        let deleted = page.iter().find(|v| v.version_id == "v1").unwrap();
        assert!(deleted.deleted_at.is_some());
        // A listing that no longer sees a version forgets it, never a deleted one.
        let later = deleted.deleted_at.unwrap() + 10;
        assert_eq!(
            store
                .forget_unlisted_versions("b", "", later)
                .await
                .unwrap(),
            2
        );
        let page = store.versions_page(0, 10).await.unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].state, VersionState::Deleted);
        assert_eq!(
            store
                .objects_with_versions("b", None, 10)
                .await
                .unwrap()
                .len(),
            0
        );
        let counts = store.version_counts().await.unwrap();
        assert_eq!(counts.len(), 1);
        assert_eq!((counts[0].versions, counts[0].bytes), (1, 10));
    }
}
