//! The scanner: ListObjectsV2 pages -> the job table, resumable.
//!
//! Each page is enqueued together with the scan checkpoint (the page's last key) in one
//! transaction ([`JobStore::enqueue_page`]), so an interrupted scan resumes with
//! `StartAfter = checkpoint` and loses no key. A finished scan is started over on the next run
//! (the nightly case): the store resets only the objects whose ETag changed.

use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::client::S3Cse;
use crate::consts::INSTRUCTION_SUFFIX;
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
    /// Keys handed to the store (this shard, no `.instruction`).
    pub enqueued: EnqueueStats,
}

/// Lists `bucket/prefix` (this shard only) into `store`, resuming from its checkpoint.
pub async fn scan(
    client: &S3Cse,
    store: &JobStore,
    scan: &ScanKey,
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
        let Some(last_key) = contents.last().and_then(|o| o.key()).map(str::to_owned) else {
            break;
        };
        summary.listed += contents.len() as u64;
        let objects: Vec<ListedObject> = contents
            .iter()
            .filter_map(|o| {
                let key = o.key()?;
                if key.ends_with(INSTRUCTION_SUFFIX) || shard.is_some_and(|s| !s.contains(key)) {
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
        let stats = store.enqueue_page(scan, &objects, &last_key).await?;
        summary.enqueued.inserted += stats.inserted;
        summary.enqueued.reset += stats.reset;
        summary.enqueued.unchanged += stats.unchanged;
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
            _ => break,
        }
    }
    store.finish_scan(scan).await?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

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
