//! The scanner: ListObjectsV2 pages -> the job table, resumable.
//!
//! Each page is enqueued together with the scan checkpoint (the page's last key) in one
//! transaction ([`JobStore::enqueue_page`]), so an interrupted scan resumes with
//! `StartAfter = checkpoint` and loses no key. A finished scan is started over on the next run
//! (the nightly case): the store resets only the objects whose ETag changed.

use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::client::S3Cse;
use crate::logkey::log_key;
use crate::store::{EnqueueStats, JobStore, ListedObject, ScanKey};

use super::limit::RateLimit;
use super::{RekeyError, Shutdown};

/// Shard `index` of `count`: the keys whose [`shard_of`] is `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `I/N` with `I < N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("expected a shard as INDEX/COUNT (e.g. 3/16), got {s:?}");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(format!(
                "shard index must be below the shard count, got {s:?}"
            ));
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    pub fn contains(&self, key: &str) -> bool {
        shard_of(key, self.count) == self.index
    }
}

/// The stable shard of `key` among `count`: the first 8 bytes of SHA-256(key), big-endian, mod
/// `count`. Stable across runs, machines and versions, so an Indexed Job's pods split a bucket
/// the same way every night.
pub fn shard_of(key: &str, count: u32) -> u32 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(count.max(1))) as u32
}

/// What one scan did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanSummary {
    /// Keys listed (all shards, before filtering).
    pub listed: u64,
    /// Keys handed to the store (this shard).
    pub enqueued: EnqueueStats,
}

/// ListObjectsV2's own page size, the default of `--list-page-size`. S3 returns at most this
/// many keys a page, and may return fewer (even none) on a page that says it is truncated.
pub const MAX_LIST_PAGE_SIZE: i32 = 1000;

/// Empty pages in a row that hand back the token they were asked with, before the scan gives up
/// as making no progress: a listing that loops forever would hold a nightly job forever. Real
/// S3 ends such runs within a few pages; a proxy that drops one page answers the retry.
const MAX_STALLED_PAGES: u32 = 100;

/// Lists `bucket/prefix` (this shard only) into `store`, resuming from its checkpoint, in pages
/// of at most `page_size` keys.
///
/// The listing goes on while a page says it is truncated, whatever it holds: an empty or short
/// page is normal (the SDK paginators do the same). A truncated page without a continuation
/// token is an error ([`RekeyError::Listing`]), never taken as the end: a scan marked finished
/// too early would leave objects unmigrated and look done.
pub async fn scan(
    client: &S3Cse,
    store: &JobStore,
    scan: &ScanKey,
    page_size: i32,
    s3_limit: &RateLimit,
    shutdown: &Shutdown,
) -> Result<ScanSummary, RekeyError> {
    let start_after = match store.scan_checkpoint(scan).await? {
        Some((_, true)) | None => {
            store.reset_scan(scan).await?;
            None
        }
        Some((start_after, false)) => start_after,
    };
    if let Some(k) = &start_after {
        tracing::info!(bucket = %scan.bucket, start_after = %log_key(k), "resuming scan");
    }
    let shard = scan.shard.map(|(index, count)| Shard { index, count });
    let mut summary = ScanSummary::default();
    let mut token: Option<String> = None;
    let mut stalled = 0u32;
    loop {
        if shutdown.is_stopping() {
            return Ok(summary);
        }
        s3_limit.wait().await;
        let t = Instant::now();
        let r = client
            .s3()
            .list_objects_v2()
            .bucket(&scan.bucket)
            .set_prefix((!scan.prefix.is_empty()).then(|| scan.prefix.clone()))
            .max_keys(page_size.clamp(1, MAX_LIST_PAGE_SIZE))
            .set_start_after(if token.is_none() {
                start_after.clone()
            } else {
                None
            })
            .set_continuation_token(token.clone())
            .send()
            .await;
        let page = client.observe("ListObjectsV2", &scan.bucket, &scan.prefix, t, r)?;
        let contents = page.contents();
        summary.listed += contents.len() as u64;
        if let Some(stats) = record_page(store, scan, shard, contents).await? {
            summary.enqueued.inserted += stats.inserted;
            summary.enqueued.reset += stats.reset;
            summary.enqueued.unchanged += stats.unchanged;
        }
        let next = next_page(page.is_truncated(), page.next_continuation_token()).map_err(|e| {
            RekeyError::Listing(format!("s3://{}/{}: {e}", scan.bucket, scan.prefix))
        })?;
        let Some(next) = next else {
            break;
        };
        stalled = if contents.is_empty() && token.as_deref() == Some(next.as_str()) {
            stalled + 1
        } else {
            0
        };
        if stalled >= MAX_STALLED_PAGES {
            return Err(RekeyError::Listing(format!(
                "s3://{}/{}: {stalled} empty pages in a row returned the same continuation token",
                scan.bucket, scan.prefix
            )));
        }
        if contents.is_empty() {
            tracing::debug!(bucket = %scan.bucket, "empty truncated listing page: listing on");
        }
        token = Some(next);
    }
    store.finish_scan(scan).await?;
    Ok(summary)
}

/// After a page: `Ok(Some(token))` to list on, `Ok(None)` at the end of the listing, or an error
/// for a page that says it is truncated without saying where to go on.
fn next_page(truncated: Option<bool>, token: Option<&str>) -> Result<Option<String>, String> {
    match (truncated, token) {
        (Some(true), Some(t)) if !t.is_empty() => Ok(Some(t.to_owned())),
        (Some(true), _) => Err("a truncated listing page without a continuation token".into()),
        _ => Ok(None),
    }
}

/// Enqueues this shard's keys of one page (`.instruction` objects too) and moves the checkpoint
/// to the page's last key, listed or filtered out alike, in one transaction. An empty page
/// changes nothing (`None`): the checkpoint stays at the last key seen.
async fn record_page(
    store: &JobStore,
    scan: &ScanKey,
    shard: Option<Shard>,
    contents: &[aws_sdk_s3::types::Object],
) -> Result<Option<EnqueueStats>, RekeyError> {
    let Some(last_key) = contents.last().and_then(|o| o.key()) else {
        return Ok(None);
    };
    let objects: Vec<ListedObject> = contents
        .iter()
        .filter_map(|o| {
            let key = o.key()?;
            // `.instruction` objects are enqueued too: a stale one (its object has its own
            // envelope now) still holds a content key under the legacy key.
            if shard.is_some_and(|s| !s.contains(key)) {
                return None;
            }
            Some(ListedObject {
                key: key.to_owned(),
                etag: o.e_tag().unwrap_or_default().to_owned(),
                size: o.size().unwrap_or(0).max(0) as u64,
                last_modified: o.last_modified().map(|d| d.to_string()),
                storage_class: o.storage_class().map(|s| s.as_str().to_owned()),
            })
        })
        .collect();
    Ok(Some(store.enqueue_page(scan, &objects, last_key).await?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use aws_sdk_s3::types::Object;

    use super::*;

    #[test]
    fn a_truncated_page_lists_on_whatever_it_holds() {
        assert_eq!(next_page(Some(true), Some("t")), Ok(Some("t".into())));
        assert_eq!(next_page(Some(false), None), Ok(None));
        assert_eq!(next_page(None, None), Ok(None));
        // A last page may still carry a token: IsTruncated=false ends the listing.
        assert_eq!(next_page(Some(false), Some("t")), Ok(None));
    }

    #[test]
    fn a_truncated_page_without_a_token_is_an_error_not_the_end() {
        assert!(next_page(Some(true), None).is_err());
        assert!(next_page(Some(true), Some("")).is_err());
    }

    fn objects(keys: &[String]) -> Vec<Object> {
        keys.iter()
            .map(|k| Object::builder().key(k).e_tag("\"e\"").size(10).build())
            .collect()
    }

    /// A page whose keys are all filtered out (another shard's) still
    /// moves the checkpoint past them, so a resumed scan does not list them again; an empty
    /// page leaves it where it was.
    #[tokio::test]
    async fn a_filtered_page_moves_the_checkpoint_and_an_empty_one_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(&dir.path().join("jobs.db")).await.unwrap();
        let shard = Shard { index: 0, count: 2 };
        let key = ScanKey {
            bucket: "bkt".into(),
            prefix: "".into(),
            shard: Some((0, 2)),
        };
        store.reset_scan(&key).await.unwrap();
        let others: Vec<String> = (0..200)
            .map(|i| format!("k{i:04}"))
            .filter(|k| !shard.contains(k))
            .take(5)
            .collect();
        let last = others.last().unwrap().clone();
        let stats = record_page(&store, &key, Some(shard), &objects(&others))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stats, EnqueueStats::default(), "nothing of this shard");
        assert_eq!(
            store.scan_checkpoint(&key).await.unwrap(),
            Some((Some(last.clone()), false))
        );
        assert_eq!(
            record_page(&store, &key, Some(shard), &[]).await.unwrap(),
            None
        );
        assert_eq!(
            store.scan_checkpoint(&key).await.unwrap(),
            Some((Some(last.clone()), false))
        );
        // A page of this shard's keys is enqueued and moves it on.
        let mine: Vec<String> = (0..200)
            .map(|i| format!("zz{i:04}"))
            .filter(|k| shard.contains(k))
            .take(3)
            .collect();
        let stats = record_page(&store, &key, Some(shard), &objects(&mine))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stats.inserted, 3);
        assert_eq!(
            store.scan_checkpoint(&key).await.unwrap(),
            Some((mine.last().cloned(), false))
        );
    }

    #[test]
    fn shards_parse() {
        assert_eq!(
            "3/16".parse::<Shard>(),
            Ok(Shard {
                index: 3,
                count: 16
            })
        );
        assert!("16/16".parse::<Shard>().is_err());
        assert!("1/0".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
    }

    #[test]
    fn shards_partition_keys() {
        let keys: Vec<String> = (0..1000).map(|i| format!("dir/obj-{i}")).collect();
        let mut seen = vec![0u32; 4];
        for k in &keys {
            let s = shard_of(k, 4);
            seen[s as usize] += 1;
            let owners = (0..4)
                .filter(|i| {
                    Shard {
                        index: *i,
                        count: 4,
                    }
                    .contains(k)
                })
                .count();
            assert_eq!(owners, 1);
        }
        assert!(seen.iter().all(|n| *n > 150), "{seen:?}");
        assert_eq!(shard_of("anything", 1), 0);
    }

    #[test]
    fn shard_hash_is_stable() {
        // SHA-256("") = e3b0c44298fc1c14...; 0xe3b0c44298fc1c14 mod 7 computed by hand.
        assert_eq!(shard_of("", 7), (0xe3b0_c442_98fc_1c14u64 % 7) as u32);
    }
}
