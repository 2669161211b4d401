//! The scanner: ListObjectsV2 pages -> the job table, as claimable key ranges, resumable.
//!
//! # Ranges
//! A listing pass is a set of key ranges in the state file (`list_ranges`, see
//! [`crate::store::ListRange`]), claimed by listers with a lease like job rows. A lister lists
//! its range page by page; each page is enqueued together with the range's cursor (the page's
//! last key) in one transaction ([`JobStore::commit_range_page`]), so an interrupted listing
//! resumes with `StartAfter = cursor` and loses no key, and a dead lister's range lapses and is
//! taken over from its cursor by another.
//!
//! A lister with nothing to claim splits the widest range another lister holds
//! ([`split_one`]): it probes for a key above the owner's cursor (ListObjectsV2 `StartAfter` =
//! the cursor with one byte raised, one level deeper at a time, at most [`MAX_PROBES`]
//! requests) and the page the probe returns becomes the first page of a new range
//! `[first key, old end)`, committed with the old range's shortening in one transaction
//! ([`JobStore::split_range`]); the owner drops keys at or above its new end on its next page.
//! So N listers (`--listers`, or N processes on one PostgreSQL queue) list one bucket together,
//! each key once, and the requests stay about one per page plus a few probes per split.
//! One lister never splits: the single-process cost is the old one, one request per page.
//!
//! What a split costs: its probes that found nothing, and the owner's page that ran past the
//! split point. The listers of a process take turns to probe (else they all probe the same
//! widest range at once), remember each failed probe with the span it found empty, so no
//! probe inside that span is sent again by any of them (ranges split off later included), rest
//! a poll interval after a failed probe (at the tail of a pass the ranges left are about to
//! end anyway), and share one budget of failed probes: [`FAILED_PROBE_BUDGET`] plus one per
//! [`FAILED_PROBE_SHARE`] requests. A failed probe is a hint for splitting only, never a bound
//! of what is listed (some S3-compatible servers skip keys after a `StartAfter`). Processes
//! on one PostgreSQL queue each keep their own hints and budget.
//!
//! # Passes
//! A pass whose ranges are all done is started over by the next run (the nightly re-scan):
//! the store resets only the objects whose ETag changed.
//!
//! # Shards (`--shard I/N`)
//! A sharded scan is seeded with one Delimiter listing of the prefix (`/`): the common prefixes
//! it returns whose [`shard_of`] is this shard become ranges of their own (and split like any
//! range), the keys directly under the prefix are kept when their own hash is this shard's. So
//! each shard lists only its own top-level prefixes, plus the Delimiter listing (one request
//! per 1,000 top-level entries). A flat namespace (all keys directly under the prefix) falls
//! back to every shard listing it all and keeping its own keys, as before.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::client::S3Cse;
use crate::logkey::log_key;
use crate::store::{
    EnqueueStats, JobStore, ListRange, ListedObject, RangeSeed, ScanKey, SplitPage,
};

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
    /// Whether `name` (a key, or a top-level prefix) hashes to this shard.
    pub fn contains(&self, name: &str) -> bool {
        shard_of(name, self.count) == self.index
    }

    /// Whether this shard owns `key` of a scan of `prefix`: by its top-level prefix (the key up
    /// to and including its first `/` after `prefix`) when it has one, else by the key itself.
    /// The listing splits a bucket this way (a Delimiter listing, then whole prefixes), and
    /// manifest rows and noncurrent versions must go to the shard that lists their key.
    pub fn owns(&self, prefix: &str, key: &str) -> bool {
        let base = if key.starts_with(prefix) {
            prefix.len()
        } else {
            0
        };
        match key[base..].find('/') {
            Some(i) => self.contains(&key[..base + i + 1]),
            None => self.contains(key),
        }
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

/// What one scan did (this process's listers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanSummary {
    /// Keys listed (all shards, before filtering).
    pub listed: u64,
    /// Keys handed to the store (this shard).
    pub enqueued: EnqueueStats,
    /// ListObjectsV2 requests sent (pages and split probes).
    pub requests: u64,
    /// Ranges this process split off another lister's.
    pub splits: u64,
}

impl ScanSummary {
    fn add(&mut self, other: &ScanSummary) {
        self.listed += other.listed;
        self.enqueued.inserted += other.enqueued.inserted;
        self.enqueued.reset += other.enqueued.reset;
        self.enqueued.unchanged += other.enqueued.unchanged;
        self.requests += other.requests;
        self.splits += other.splits;
    }
}

/// How a scan lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListConfig {
    /// Keys per ListObjectsV2 page (`--list-page-size`).
    pub page_size: i32,
    /// Listers in this process (`--listers`): ranges listed at once.
    pub listers: usize,
    /// Lease of a claimed range, renewed by every page: a dead lister's lapses after it.
    pub lease: Duration,
}

impl ListConfig {
    /// One lister, S3's full pages, a 60 s lease.
    pub fn new(page_size: i32) -> ListConfig {
        ListConfig {
            page_size,
            listers: 1,
            lease: Duration::from_secs(60),
        }
    }
}

/// ListObjectsV2's own page size, the default of `--list-page-size`. S3 returns at most this
/// many keys a page, and may return fewer (even none) on a page that says it is truncated.
pub const MAX_LIST_PAGE_SIZE: i32 = 1000;

/// Empty pages in a row that hand back the token they were asked with, before the scan gives up
/// as making no progress: a listing that loops forever would hold a nightly job forever. Real
/// S3 ends such runs within a few pages; a proxy that drops one page answers the retry.
const MAX_STALLED_PAGES: u32 = 100;

/// Probe requests of one split attempt (each one byte position deeper): a range whose keys
/// all share a longer run of bytes with its cursor is left to its owner.
pub const MAX_PROBES: usize = 6;

/// Probes that found nothing to split, per process and scan, before [`FAILED_PROBE_SHARE`]: the
/// requests a process may waste on splits whatever the size of the bucket (at the tail of a
/// pass every range left is short, and each probe of one fails).
pub const FAILED_PROBE_BUDGET: u64 = 12;

/// Failed probes allowed on top of [`FAILED_PROBE_BUDGET`]: one per this many requests of the
/// process, so splits that rebalance a long pass stay possible at a bounded cost (2%).
pub const FAILED_PROBE_SHARE: u64 = 50;

/// Ranges looked at when choosing one to split.
const SPLIT_CANDIDATES: u32 = 1000;

/// A lease owner id unique to this process and call: `host:pid:nonce:start:tag`.
pub(crate) fn work_owner(tag: &str) -> String {
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}{start}:{tag}", super::process_owner_prefix())
}

/// Hands back the ranges and manifest files of dead processes of this host (SIGKILLed, OOM):
/// their leases would lapse anyway, this only saves the wait on a restart.
/// Only on SQLite (see [`super::dead_owner_on_this_host`]): on a shared queue leases only lapse.
pub(crate) async fn release_dead_work(store: &JobStore) -> Result<u64, RekeyError> {
    if store.is_shared() {
        return Ok(0);
    }
    let me = super::process_owner_prefix();
    let mut released = 0;
    for owner in store.work_owners().await? {
        if !super::dead_owner_on_this_host(&owner, &me) {
            continue;
        }
        if let Some(process) = super::owner_process(&owner) {
            released += store.release_work(process).await?;
        }
    }
    if released > 0 {
        tracing::info!(
            released,
            "released the listing work of a dead process on this host"
        );
    }
    Ok(released)
}

/// Lists `bucket/prefix` (this shard only) into `store` with `list.listers` listers, joining
/// (or resuming) the listing pass under way or starting a new one. Returns when every range of
/// the pass is done (also those of other processes: a lapsed one is taken over), or at a stop.
///
/// The listing goes on while a page says it is truncated, whatever it holds: an empty or short
/// page is normal (the SDK paginators do the same). A truncated page without a continuation
/// token is an error ([`RekeyError::Listing`]), never taken as the end: a scan marked finished
/// too early would leave objects unmigrated and look done.
pub async fn scan(
    client: &S3Cse,
    store: &JobStore,
    scan: &ScanKey,
    list: &ListConfig,
    s3_limit: &RateLimit,
    shutdown: &Shutdown,
) -> Result<ScanSummary, RekeyError> {
    let started = store.clock_millis().await?;
    release_dead_work(store).await?;
    let seeds = seeds(store, scan).await?;
    if store.begin_listing(scan, &seeds, started).await? {
        if let Some(c) = seeds.first().and_then(|s| s.cursor.as_deref()) {
            tracing::info!(bucket = %scan.bucket, start_after = %log_key(c), "resuming scan");
        }
    } else {
        tracing::info!(bucket = %scan.bucket, "joining the listing pass under way");
    }
    let shard = scan.shard.map(|(index, count)| Shard { index, count });
    let total = Mutex::new(ScanSummary::default());
    let splitting = Splitting::default();
    let lister = Lister {
        client,
        store,
        scan,
        shard,
        list,
        s3_limit,
        shutdown,
        total: &total,
        splitting: &splitting,
    };
    let listers = list.listers.max(1);
    // Splitting needs another lister to split for: a second one here, or other processes on a
    // shared (PostgreSQL) queue. A lone lister is never idle while a range is open anyway.
    let split = listers > 1 || store.is_shared();
    let runs = (0..listers).map(|i| lister.run(i, split));
    futures::future::try_join_all(runs).await?;
    if !shutdown.is_stopping() && store.ranges_remaining(scan).await?.open == 0 {
        // Also the old checkpoint row: an older state file's unfinished scan is not resumed
        // again by the next pass.
        store.finish_scan(scan).await?;
    }
    let summary = total.lock().map(|t| *t).unwrap_or_default();
    Ok(summary)
}

/// The ranges a new pass starts with: the whole prefix (from an older state file's unfinished
/// scan checkpoint, if any), or for a shard the Delimiter listing that finds its prefixes.
async fn seeds(store: &JobStore, scan: &ScanKey) -> Result<Vec<RangeSeed>, RekeyError> {
    if scan.shard.is_some() {
        return Ok(vec![RangeSeed {
            prefix: scan.prefix.clone(),
            delimiter: Some("/".into()),
            ..RangeSeed::default()
        }]);
    }
    let cursor = match store.scan_checkpoint(scan).await? {
        Some((cursor, false)) => cursor,
        _ => None,
    };
    Ok(vec![RangeSeed {
        prefix: scan.prefix.clone(),
        cursor,
        ..RangeSeed::default()
    }])
}

/// What the listers of one process know about splitting, shared so that no two of them probe
/// at once (they would all probe the same widest range), no probe that failed is sent again,
/// and the failed probes are counted once per process.
#[derive(Default)]
struct Splitting {
    /// Held while a lister chooses a range and probes it.
    turn: tokio::sync::Mutex<()>,
    /// Probes that found no key inside their range.
    failed: std::sync::atomic::AtomicU64,
    /// The probes that found no key inside their range, with the range's end then: no key lay
    /// between the two, so no range inside that span is probed there again (a range split off
    /// later included). A hint for splitting only, never a bound of what is listed: some
    /// S3-compatible servers skip keys after a StartAfter (SeaweedFS skips `b/...` after `b`),
    /// so "nothing above the probe" is not trusted to drop keys.
    empty: Mutex<Vec<(String, Option<String>)>>,
    /// Ranges (id, end) with no probe left to send: left to their owners.
    unsplittable: Mutex<HashSet<(i64, Option<String>)>>,
    /// After a failed probe, no lister of this process probes again before this: a range
    /// with nothing above the probe is most often one about to end (the tail of a pass), which
    /// its owner finishes in a page or two without help.
    quiet_until: Mutex<Option<Instant>>,
}

/// What every lister of one scan shares.
struct Lister<'a> {
    client: &'a S3Cse,
    store: &'a JobStore,
    scan: &'a ScanKey,
    shard: Option<Shard>,
    list: &'a ListConfig,
    s3_limit: &'a RateLimit,
    shutdown: &'a Shutdown,
    total: &'a Mutex<ScanSummary>,
    splitting: &'a Splitting,
}

/// One ListObjectsV2 page, as the listers use it.
struct Page {
    objects: Vec<ListedObject>,
    /// Common prefixes (Delimiter listings).
    prefixes: Vec<String>,
    /// The greatest key or common prefix of the page.
    last: Option<String>,
    /// `None`: the listing ended.
    next: Option<String>,
}

impl Lister<'_> {
    /// One lister: claims ranges and lists them; with nothing to claim, splits another
    /// lister's range (if `split`) or waits for the others' ranges to end or lapse.
    async fn run(&self, index: usize, split: bool) -> Result<(), RekeyError> {
        let owner = work_owner(&format!("l{index}"));
        let mut keys = 0u64;
        let result = self.run_as(&owner, split, &mut keys).await;
        tracing::info!(lister = index, keys, "lister finished");
        if self.shutdown.is_stopping() || result.is_err() {
            // A graceful stop (or an error) hands the range back at once, not at lease expiry.
            self.store.release_work(&owner).await?;
        }
        result
    }

    async fn run_as(&self, owner: &str, split: bool, keys: &mut u64) -> Result<(), RekeyError> {
        let poll = self.poll();
        loop {
            if self.shutdown.is_stopping() {
                return Ok(());
            }
            let claimed = self
                .store
                .claim_range(self.scan, owner, self.list.lease)
                .await?;
            if let Some(range) = claimed {
                *keys += self.list_range(owner, &range, None).await?;
                continue;
            }
            if split
                && self.may_probe()
                && let Some((range, token)) = self.split_one(owner).await?
            {
                *keys += range.listed;
                *keys += self.list_range(owner, &range, token).await?;
                continue;
            }
            if self.store.ranges_remaining(self.scan).await?.open == 0 {
                return Ok(());
            }
            // Other listers are at work: wait for their ranges to end, lapse, or grow
            // splittable.
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = self.shutdown.stopped() => {}
            }
        }
    }

    fn add(&self, s: ScanSummary) {
        if let Ok(mut t) = self.total.lock() {
            t.add(&s);
        }
    }

    /// How often an idle lister looks again. Short: an idle lister splits a range as soon as
    /// its owner has listed a first page.
    fn poll(&self) -> Duration {
        (self.list.lease / 8).clamp(Duration::from_millis(50), Duration::from_millis(250))
    }

    /// Whether this process may still probe for a split: fewer failed probes than
    /// [`FAILED_PROBE_BUDGET`] plus one per [`FAILED_PROBE_SHARE`] requests sent.
    fn may_probe(&self) -> bool {
        let requests = self.total.lock().map(|t| t.requests).unwrap_or(0);
        self.splitting
            .failed
            .load(std::sync::atomic::Ordering::Relaxed)
            < FAILED_PROBE_BUDGET + requests / FAILED_PROBE_SHARE
    }

    /// One ListObjectsV2 request of `range` (from `start_after`, or on with `token`).
    async fn page(
        &self,
        range: &ListRange,
        start_after: Option<&str>,
        token: Option<&str>,
    ) -> Result<Page, RekeyError> {
        self.s3_limit.wait().await;
        let t = Instant::now();
        let r = self
            .client
            .s3()
            .list_objects_v2()
            .bucket(&self.scan.bucket)
            .set_prefix((!range.prefix.is_empty()).then(|| range.prefix.clone()))
            .set_delimiter(range.delimiter.clone())
            .max_keys(self.list.page_size.clamp(1, MAX_LIST_PAGE_SIZE))
            .set_start_after(if token.is_none() {
                start_after.map(str::to_owned)
            } else {
                None
            })
            .set_continuation_token(token.map(str::to_owned))
            .send()
            .await;
        let page = self
            .client
            .observe("ListObjectsV2", &self.scan.bucket, &range.prefix, t, r)?;
        self.add(ScanSummary {
            requests: 1,
            listed: page.contents().len() as u64,
            ..ScanSummary::default()
        });
        let next = next_page(page.is_truncated(), page.next_continuation_token()).map_err(|e| {
            RekeyError::Listing(format!("s3://{}/{}: {e}", self.scan.bucket, range.prefix))
        })?;
        let delimited = range.delimiter.is_some();
        let mut objects = listed_objects(page.contents());
        let mut prefixes: Vec<String> = page
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(str::to_owned))
            .collect();
        let last = objects
            .last()
            .map(|o| o.key.clone())
            .into_iter()
            .chain(prefixes.last().cloned())
            .max();
        if delimited && let Some(shard) = self.shard {
            // The seeding listing of a shard: its keys and prefixes only.
            objects.retain(|o| shard.contains(&o.key));
            prefixes.retain(|p| shard.contains(p));
        }
        Ok(Page {
            objects,
            prefixes,
            last,
            next,
        })
    }

    /// Lists `range` (claimed by `owner`) to its end, its lease lost, or a stop. `token`: the
    /// continuation of a split probe's page. Returns the keys it enqueued.
    async fn list_range(
        &self,
        owner: &str,
        range: &ListRange,
        mut token: Option<String>,
    ) -> Result<u64, RekeyError> {
        let mut stalled = 0u32;
        let mut keys = 0u64;
        loop {
            if self.shutdown.is_stopping() {
                return Ok(keys);
            }
            let page = self
                .page(range, range.cursor.as_deref(), token.as_deref())
                .await?;
            let complete = page.next.is_none();
            let Some(last) = page.last.as_deref() else {
                if complete {
                    self.store.finish_range(range.id, owner).await?;
                    return Ok(keys);
                }
                stalled = if token == page.next { stalled + 1 } else { 0 };
                if stalled >= MAX_STALLED_PAGES {
                    return Err(RekeyError::Listing(format!(
                        "s3://{}/{}: {stalled} empty pages in a row returned the same \
                         continuation token",
                        self.scan.bucket, range.prefix
                    )));
                }
                tracing::debug!(bucket = %self.scan.bucket, "empty truncated listing page: listing on");
                token = page.next;
                continue;
            };
            stalled = 0;
            let committed = self
                .store
                .commit_range_page(
                    range.id,
                    owner,
                    &self.scan.bucket,
                    &page.objects,
                    &page.prefixes,
                    last,
                    complete,
                    self.list.lease,
                )
                .await?;
            let Some((stats, done)) = committed else {
                tracing::warn!(
                    bucket = %self.scan.bucket,
                    range = range.id,
                    "listing range lost (its lease lapsed and another lister took it over)"
                );
                return Ok(keys);
            };
            keys += stats.inserted + stats.reset + stats.unchanged;
            self.add(ScanSummary {
                enqueued: stats,
                ..ScanSummary::default()
            });
            if done {
                return Ok(keys);
            }
            token = page.next;
        }
    }

    /// Splits the widest open range held by another lister: probes above its cursor and, when
    /// a probe finds keys inside the range, makes its page the first of a new range leased to
    /// `owner`. Returns that range (if not already done) and the probe's continuation token.
    ///
    /// A probe that finds no key inside the range is not wasted on the other listers of this
    /// process: it is remembered, and no one here sends that probe (or any above it) again.
    /// One lister of this process probes at a time, and after a failed probe none for a poll
    /// interval.
    async fn split_one(
        &self,
        owner: &str,
    ) -> Result<Option<(ListRange, Option<String>)>, RekeyError> {
        let _turn = self.splitting.turn.lock().await;
        let quiet = self
            .splitting
            .quiet_until
            .lock()
            .map(|q| *q)
            .unwrap_or(None);
        if quiet.is_some_and(|q| Instant::now() < q) {
            return Ok(None);
        }
        let candidates = self.store.open_ranges(self.scan, SPLIT_CANDIDATES).await?;
        let unsplittable = self
            .splitting
            .unsplittable
            .lock()
            .map(|u| u.clone())
            .unwrap_or_default();
        let widest = candidates
            .into_iter()
            .filter(|r| r.lease_owner.as_deref() != Some(owner))
            .filter(|r| !unsplittable.contains(&(r.id, r.end_before.clone())))
            .filter_map(|r| {
                let lo = low_mark(&r)?.to_owned();
                Some((width(&r.prefix, &lo, r.end_before.as_deref()), lo, r))
            })
            .max_by_key(|(w, ..)| *w);
        let Some((_, lo, range)) = widest else {
            return Ok(None);
        };
        let hi = self
            .splitting
            .empty
            .lock()
            .map(|e| probe_ceiling(&e, &lo, range.end_before.as_deref()))
            .unwrap_or_else(|_| range.end_before.clone());
        for probe in probes(&range.prefix, &lo, hi.as_deref()) {
            if self.shutdown.is_stopping() || !self.may_probe() {
                return Ok(None);
            }
            let page = self.page(&range, Some(&probe), None).await?;
            let Some(first) = page.objects.first().filter(|o| range.contains(&o.key)) else {
                self.splitting
                    .failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(
                    bucket = %self.scan.bucket,
                    range = range.id,
                    probe = %log_key(&probe),
                    "split probe found no key inside the range"
                );
                if let Ok(mut e) = self.splitting.empty.lock() {
                    e.push((probe.clone(), range.end_before.clone()));
                }
                if let Ok(mut q) = self.splitting.quiet_until.lock() {
                    *q = Some(Instant::now() + self.poll());
                }
                return Ok(None);
            };
            let (Some(last), split_at) = (page.last.as_deref(), first.key.as_str()) else {
                continue;
            };
            let split = SplitPage {
                split_at,
                objects: &page.objects,
                last_key: last,
                complete: page.next.is_none(),
            };
            let done = self
                .store
                .split_range(
                    range.id,
                    range.end_before.as_deref(),
                    split,
                    owner,
                    self.list.lease,
                )
                .await?;
            // Refused: the owner passed the split point, or another split moved the end; the
            // range is looked at again as it is now. The probe was for nothing: it counts as
            // failed, so that the budget bounds every request a split did not use.
            let Some((new, stats)) = done else {
                self.splitting
                    .failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(None);
            };
            tracing::debug!(
                bucket = %self.scan.bucket,
                range = range.id,
                at = %log_key(split_at),
                "listing range split"
            );
            self.add(ScanSummary {
                enqueued: stats,
                splits: 1,
                ..ScanSummary::default()
            });
            let token = page.next;
            return Ok((new.state == crate::store::WorkState::Running).then_some((new, token)));
        }
        if let Ok(mut u) = self.splitting.unsplittable.lock() {
            u.insert((range.id, range.end_before.clone()));
        }
        Ok(None)
    }
}

/// The upper bound of a split's probes in the range `(lo, end)`: its end, lowered to just above
/// each failed probe `p` inside it whose span `(p, its end)` covers the rest of the range (the
/// probe followed by U+0001, so that the probe itself counts as "a prefix of the end" and is
/// skipped by [`probes`]).
fn probe_ceiling(
    empty: &[(String, Option<String>)],
    lo: &str,
    end: Option<&str>,
) -> Option<String> {
    let mut hi = end.map(str::to_owned);
    for (p, p_end) in empty {
        let covers = match (p_end.as_deref(), end) {
            (None, _) => true,
            (Some(pe), Some(e)) => pe >= e,
            (Some(_), None) => false,
        };
        if p.as_str() > lo && covers {
            let ceiling = format!("{p}\u{1}");
            if hi.as_deref().is_none_or(|h| ceiling.as_str() < h) {
                hi = Some(ceiling);
            }
        }
    }
    hi
}

/// Where a range's unlisted keys start: its cursor, else its lower bound; `None` while
/// nothing of it is listed (the owner's first page tells more than a guess).
fn low_mark(r: &ListRange) -> Option<&str> {
    let lo = match r.cursor.as_deref() {
        Some(c) if c >= r.start_at.as_str() => c,
        _ => r.start_at.as_str(),
    };
    (lo.len() > r.prefix.len() && lo.starts_with(r.prefix.as_str())).then_some(lo)
}

/// Key space between `lo` and `hi` (the end of `prefix` when `None`), from the eight bytes
/// after `prefix`: only to choose the widest range, not a key count.
fn width(prefix: &str, lo: &str, hi: Option<&str>) -> u64 {
    let point = |s: &str| {
        let rest = s.as_bytes().get(prefix.len()..).unwrap_or_default();
        let mut b = [0u8; 8];
        for (d, s) in b.iter_mut().zip(rest) {
            *d = *s;
        }
        u64::from_be_bytes(b)
    };
    let hi = match hi {
        Some(h) if h.starts_with(prefix) => point(h),
        _ => u64::MAX,
    };
    hi.saturating_sub(point(lo))
}

/// The StartAfter keys of a split's probes, nearest the top first: `lo` cut after byte `d` of
/// its part after `prefix`, that byte raised by one, for d = 0, 1, … (at most
/// [`MAX_PROBES`]), each strictly inside `(lo, hi)`. A probe that returns a key inside the
/// range splits it there: the owner keeps the keys sharing `lo`'s first d+1 bytes, the
/// splitter takes the rest. Bytes are kept ASCII (a raised byte above 0x7E is skipped): a
/// StartAfter must be valid UTF-8.
fn probes(prefix: &str, lo: &str, hi: Option<&str>) -> Vec<String> {
    let rest = lo.as_bytes().get(prefix.len()..).unwrap_or_default();
    let mut out = Vec::new();
    for d in 0..rest.len() {
        let b = rest[d];
        if !(0x20..0x7E).contains(&b) {
            continue;
        }
        let mut probe = prefix.as_bytes().to_vec();
        probe.extend_from_slice(&rest[..d]);
        probe.push(b + 1);
        let Ok(probe) = String::from_utf8(probe) else {
            break;
        };
        // At or above the end, or a prefix of it: the end most likely came from this probe (a
        // failed probe's end just above it, or a split at the first key after it).
        if probe.as_str() <= lo || hi.is_some_and(|h| probe.as_str() >= h || h.starts_with(&probe))
        {
            continue;
        }
        out.push(probe);
        if out.len() == MAX_PROBES {
            break;
        }
    }
    out
}

/// A page's objects (`.instruction` objects too: a stale one, whose object has its own
/// envelope now, still holds a content key under the legacy key).
fn listed_objects(contents: &[aws_sdk_s3::types::Object]) -> Vec<ListedObject> {
    contents
        .iter()
        .filter_map(|o| {
            Some(ListedObject {
                key: o.key()?.to_owned(),
                etag: o.e_tag().unwrap_or_default().to_owned(),
                size: o.size().unwrap_or(0).max(0) as u64,
                last_modified: o.last_modified().map(|d| d.to_string()),
                storage_class: o.storage_class().map(|s| s.as_str().to_owned()),
            })
        })
        .collect()
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

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

    #[test]
    fn probes_raise_one_byte_a_level_deeper_each_inside_the_range() {
        assert_eq!(
            probes("p/", "p/k0042", None),
            ["p/l", "p/k1", "p/k01", "p/k005", "p/k0043"]
        );
        // Inside (lo, hi) only.
        assert_eq!(
            probes("p/", "p/k0042", Some("p/k01")),
            ["p/k005", "p/k0043"]
        );
        // Not a probe the end came from: a failed one (end just above it) or a split's.
        assert_eq!(probes("p/", "p/k0042", Some("p/k005\u{1}")), ["p/k0043"]);
        assert_eq!(probes("p/", "p/k0042", Some("p/k0050-x")), ["p/k0043"]);
        // Non-ASCII and the top byte are skipped: a StartAfter must be UTF-8.
        assert_eq!(probes("", "~a\u{e9}", None), ["~b"]);
        assert!(probes("p/", "p/", None).is_empty());
        assert_eq!(probes("", "abcdefghij", None).len(), MAX_PROBES);
    }

    #[test]
    fn failed_probes_lower_the_ceiling_of_ranges_inside_their_span() {
        let empty = vec![
            ("q".to_owned(), None),
            ("p1".to_owned(), None),
            ("p005".to_owned(), Some("p010/x".to_owned())),
        ];
        // A range split off the top later: "q" and "p1" found nothing above them up to the end.
        assert_eq!(
            probe_ceiling(&empty, "p010/x", None).as_deref(),
            Some("p1\u{1}")
        );
        assert_eq!(
            probes("", "p010/x", Some("p1\u{1}")),
            ["p02", "p011", "p0100", "p010/y"]
        );
        // A span that ends below the range's end says nothing about the rest of it.
        assert_eq!(
            probe_ceiling(&empty[2..], "p002/x", Some("p020/x")).as_deref(),
            Some("p020/x")
        );
        assert_eq!(
            probe_ceiling(&empty[2..], "p002/x", Some("p010/x")).as_deref(),
            Some("p005\u{1}")
        );
        // A probe at or below the range's cursor is no ceiling.
        assert_eq!(probe_ceiling(&empty, "r", None), None);
    }

    #[test]
    fn width_orders_ranges_by_key_space_left() {
        let open = width("p/", "p/a", None);
        let bounded = width("p/", "p/a", Some("p/b"));
        let late = width("p/", "p/y", None);
        assert!(open > late && late > bounded && bounded > 0);
        assert_eq!(width("", "b", Some("a")), 0);
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
    fn a_key_belongs_to_the_shard_of_its_top_level_prefix() {
        // What the listing does (whole top-level prefixes, loose keys by their own hash) is
        // what manifest rows and versions are assigned by: one owner per key.
        for count in [2u32, 3, 16] {
            for key in ["a/x", "a/b/c", "loose", "p/q/r/s", "a/"] {
                let owners: Vec<u32> = (0..count)
                    .filter(|&index| Shard { index, count }.owns("", key))
                    .collect();
                assert_eq!(owners.len(), 1, "{key} under {count}");
                let want = match key.find('/') {
                    Some(i) => shard_of(&key[..=i], count),
                    None => shard_of(key, count),
                };
                assert_eq!(owners[0], want, "{key}");
            }
            // Under a scan prefix, the next level is the top level.
            let s = Shard {
                index: shard_of("logs/2024/", count),
                count,
            };
            assert!(s.owns("logs/", "logs/2024/01/x"));
        }
    }

    #[test]
    fn shard_hash_is_stable() {
        // SHA-256("") = e3b0c44298fc1c14...; 0xe3b0c44298fc1c14 mod 7 computed by hand.
        assert_eq!(shard_of("", 7), (0xe3b0_c442_98fc_1c14u64 % 7) as u32);
    }
}
