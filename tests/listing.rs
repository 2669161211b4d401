//! Distributed listing and manifest ingest (issue 12 items 2-3): key ranges and manifest data
//! files claimed by several listers/ingesters, split, resumed after a dead lister, sharded.
//!
//! SQLite allows one writer process per state file, so "processes" are simulated in-process by
//! several `JobStore` handles on one file, each driving its own `scan`/`ingest` call (several
//! listers each). The check functions take the stores as arguments so the PostgreSQL tests can
//! run them on stores of a shared database.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use md5::{Digest, Md5};
use s3cse::client::S3Cse;
use s3cse::metrics::{Metrics, Outcome};
use s3cse::rekey::Shutdown;
use s3cse::rekey::ingest::{Ingesters, ManifestJob};
use s3cse::rekey::limit::RateLimit;
use s3cse::rekey::scan::{ListConfig, ScanSummary, Shard};
use s3cse::store::{JobStore, ScanKey};

use common::{Bed, bed};

/// Keys under `prefixes` (`per` each) and `loose` keys at the top, as empty objects.
async fn fill(b: &Bed, prefixes: &[&str], per: usize, loose: usize) -> BTreeSet<String> {
    let mut keys: BTreeSet<String> = prefixes
        .iter()
        .flat_map(|p| (0..per).map(move |i| format!("{p}obj-{i:05}")))
        .collect();
    keys.extend((0..loose).map(|i| format!("loose-{i:04}")));
    futures::stream::iter(keys.iter().cloned())
        .for_each_concurrent(32, |k| async move {
            b.s3.put_object()
                .bucket(&b.bucket)
                .key(&k)
                .body(Vec::new().into())
                .send()
                .await
                .expect("put");
        })
        .await;
    keys
}

/// An S3Cse whose S3 attempts are counted in `metrics` (ListObjectsV2 included).
async fn client(metrics: &Arc<Metrics>) -> S3Cse {
    let s3 = s3cse::metrics::attempts::count_s3_attempts(&common::s3().await, metrics.clone());
    S3Cse::new(s3, s3cse::keyring::Keyring::new())
}

fn scan_key(b: &Bed, shard: Option<Shard>) -> ScanKey {
    ScanKey {
        bucket: b.bucket.clone(),
        prefix: String::new(),
        shard: shard.map(|s| (s.index, s.count)),
    }
}

async fn job_keys(store: &JobStore) -> Vec<String> {
    store
        .report(None)
        .map(|r| r.expect("report row").key)
        .collect()
        .await
}

fn list(page_size: i32, listers: usize, lease_secs: u64) -> ListConfig {
    ListConfig {
        page_size,
        listers,
        lease: Duration::from_secs(lease_secs),
    }
}

/// Runs one `scan` per store at once ("processes"), `listers` listers each, and returns their
/// summaries. Every key of `keys` must end up enqueued exactly once.
pub async fn check_listers_share_a_bucket(
    b: &Bed,
    keys: &BTreeSet<String>,
    stores: &[JobStore],
    listers: usize,
    page_size: i32,
    limit: RateLimit,
) -> Vec<ScanSummary> {
    let metrics = Arc::new(Metrics::new("test"));
    let client = client(&metrics).await;
    let key = scan_key(b, None);
    let shutdown = Shutdown::never();
    let cfg = list(page_size, listers, 30);
    let runs = stores
        .iter()
        .map(|s| s3cse::rekey::scan::scan(&client, s, &key, &cfg, &limit, &shutdown));
    let summaries: Vec<ScanSummary> = futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.expect("scan"))
        .collect();
    let inserted: u64 = summaries.iter().map(|s| s.enqueued.inserted).sum();
    let again: u64 = summaries
        .iter()
        .map(|s| s.enqueued.unchanged + s.enqueued.reset)
        .sum();
    assert_eq!(inserted, keys.len() as u64, "{summaries:?}");
    assert_eq!(again, 0, "no key enqueued twice: {summaries:?}");
    let listed: Vec<String> = job_keys(&stores[0]).await;
    assert_eq!(listed.len(), keys.len());
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), *keys);
    let progress = stores[0].work_progress().await.expect("progress");
    assert_eq!(progress.keys_listed, keys.len() as u64, "{progress:?}");
    assert_eq!(
        progress.ranges[0] + progress.ranges[1],
        0,
        "all ranges done"
    );
    // The requests the SDK sent, counted where they happen, agree with the listers' count.
    let requests: u64 = summaries.iter().map(|s| s.requests).sum();
    assert_eq!(
        metrics.s3_requests("ListObjectsV2", Outcome::Ok),
        requests,
        "{summaries:?}"
    );
    summaries
}

/// Four listers (two "processes" of two) list one bucket of several prefixes in pages of 10:
/// the ranges are split so every lister works, each key is enqueued once, and the requests
/// stay about one per page (plus a few probes and a short last page per split).
#[tokio::test(flavor = "multi_thread")]
async fn four_listers_list_each_key_once_at_about_one_request_per_page() {
    let Some(b) = bed("listers").await else {
        return;
    };
    let keys = fill(&b, &["a/", "b/", "c/", "d/", "e/"], 500, 40).await;
    let path = b.path("jobs.db");
    let stores = [
        JobStore::open(&path).await.expect("store"),
        JobStore::open(&path).await.expect("store"),
    ];
    let page = 10;
    // 100 requests/s between them: the listing takes over 2.5 s, so idle listers (polling
    // every 250 ms) find ranges to split.
    let limit = RateLimit::per_second(Some(100));
    let summaries = check_listers_share_a_bucket(&b, &keys, &stores, 2, page, limit).await;
    let pages = (keys.len() as u64).div_ceil(page as u64);
    let requests: u64 = summaries.iter().map(|s| s.requests).sum();
    let splits: u64 = summaries.iter().map(|s| s.splits).sum();
    // Listers other than the first listed ranges of their own (how many depends on timing;
    // unloaded, 2 to 6 splits).
    assert!(splits >= 1, "the ranges were split: {summaries:?}");
    assert!(
        requests >= pages
            && requests <= pages + splits + 4 * s3cse::rekey::scan::FAILED_PROBE_BUDGET,
        "{requests} requests for {pages} pages: {summaries:?}"
    );
    eprintln!(
        "{} keys, 4 listers, pages of {page}: {requests} requests, {splits} splits",
        keys.len()
    );

    // The next run (the nightly re-scan) lists the bucket again, changes nothing, and one
    // lister costs exactly one request per page.
    let metrics = Arc::new(Metrics::new("test"));
    let s = s3cse::rekey::scan::scan(
        &client(&metrics).await,
        &stores[0],
        &scan_key(&b, None),
        &list(page, 1, 30),
        &RateLimit::default(),
        &Shutdown::never(),
    )
    .await
    .expect("rescan");
    assert_eq!(s.enqueued.unchanged, keys.len() as u64, "{s:?}");
    assert_eq!(s.enqueued.inserted + s.enqueued.reset, 0, "{s:?}");
    assert!(
        s.requests == pages || s.requests == pages + 1,
        "one lister: one request a page: {s:?}"
    );
    for s in stores {
        s.close().await;
    }
}

/// Sixteen listers in one process on a bucket of about a hundred pages (issue 12: about one
/// request per page whatever the number of listers; 3.3 per page before the listers of a
/// process shared their failed probes and one budget). Every request is a page of some range
/// (at most one short or past-the-end page more per range) or a failed probe (at most
/// `FAILED_PROBE_BUDGET` plus one per `FAILED_PROBE_SHARE` requests), counted by the SDK.
#[tokio::test(flavor = "multi_thread")]
async fn sixteen_listers_cost_about_one_request_per_page() {
    let Some(b) = bed("listers16").await else {
        return;
    };
    let keys = fill(&b, &["a/", "b/", "c/", "d/", "e/"], 200, 40).await;
    let path = b.path("jobs.db");
    let stores = [JobStore::open(&path).await.expect("store")];
    let page = 10;
    // 30 requests/s: the listing takes about 3.5 s, so idle listers find ranges to split even
    // after a failed probe has paused them (at 100/s, under load, one lister once listed it
    // all before the others split anything).
    let limit = RateLimit::per_second(Some(30));
    let summaries = check_listers_share_a_bucket(&b, &keys, &stores, 16, page, limit).await;
    let s = summaries[0];
    let pages = (keys.len() as u64).div_ceil(page as u64);
    use s3cse::rekey::scan::{FAILED_PROBE_BUDGET, FAILED_PROBE_SHARE};
    let bound = pages + 2 * (s.splits + 1) + FAILED_PROBE_BUDGET + s.requests / FAILED_PROBE_SHARE;
    assert!(s.splits >= 1, "the ranges were split: {s:?}");
    assert!(
        s.requests >= pages && s.requests <= bound,
        "{} requests for {pages} pages (bound {bound}): {s:?}",
        s.requests
    );
    eprintln!(
        "{} keys, 16 listers, pages of {page}: {} requests, {} splits",
        keys.len(),
        s.requests,
        s.splits
    );
    for s in stores {
        s.close().await;
    }
}

/// A lister dropped in the middle of its range (a killed process): its range lapses with its
/// lease and another lister resumes it from its cursor; no key is lost or listed twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_listers_range_lapses_and_is_resumed_from_its_cursor() {
    let Some(b) = bed("lister-dies").await else {
        return;
    };
    let keys = fill(&b, &["x/"], 1000, 0).await;
    let store = JobStore::open(&b.path("jobs.db")).await.expect("store");
    let metrics = Arc::new(Metrics::new("test"));
    let client = client(&metrics).await;
    let key = scan_key(&b, None);
    let limit = RateLimit::default();
    let lease = 2;
    let (cfg, never) = (list(10, 1, lease), Shutdown::never());
    let first = s3cse::rekey::scan::scan(&client, &store, &key, &cfg, &limit, &never);
    let watch = async {
        loop {
            let p = store.work_progress().await.expect("progress");
            if p.keys_listed >= 300 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        r = first => panic!("the first lister was to be stopped mid-range: {r:?}"),
        () = watch => {}
    }
    // Dropped: its range stays `running` under its lease.
    let before = job_keys(&store).await.len() as u64;
    let ranges = store.ranges(&key).await.expect("ranges");
    assert_eq!(ranges.len(), 1);
    let cursor = ranges[0].cursor.clone().expect("a cursor");
    assert!((300..1000).contains(&before), "{before}");
    let started = std::time::Instant::now();
    let s = s3cse::rekey::scan::scan(
        &client,
        &store,
        &key,
        &list(10, 2, lease),
        &limit,
        &Shutdown::never(),
    )
    .await
    .expect("resume");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "waited for the lease to lapse"
    );
    assert_eq!(s.enqueued.inserted, 1000 - before, "{s:?}");
    assert_eq!(
        s.enqueued.unchanged + s.enqueued.reset,
        0,
        "resumed at {cursor}: {s:?}"
    );
    assert!(s.requests <= (1000 - before) / 10 + 12, "{s:?}");
    assert_eq!(
        job_keys(&store).await.into_iter().collect::<BTreeSet<_>>(),
        keys
    );
    store.close().await;
}

/// `--shard I/3`: each shard lists its own top-level prefixes (and the Delimiter listing),
/// not the whole bucket; the shards' keys are disjoint and together the bucket.
#[tokio::test(flavor = "multi_thread")]
async fn shards_list_disjoint_ranges_whose_union_is_the_bucket() {
    let Some(b) = bed("shards").await else {
        return;
    };
    let prefixes = ["p0/", "p1/", "p2/", "p3/", "p4/", "p5/", "p6/", "p7/"];
    let keys = fill(&b, &prefixes, 200, 30).await;
    let mut union = BTreeSet::new();
    let mut total_requests = 0;
    for index in 0..3 {
        let shard = Shard { index, count: 3 };
        let store = JobStore::open(&b.path(&format!("shard{index}.db")))
            .await
            .expect("store");
        let metrics = Arc::new(Metrics::new("test"));
        let s = s3cse::rekey::scan::scan(
            &client(&metrics).await,
            &store,
            &scan_key(&b, Some(shard)),
            &list(10, 2, 30),
            &RateLimit::default(),
            &Shutdown::never(),
        )
        .await
        .expect("scan");
        let mine = job_keys(&store).await;
        assert_eq!(s.enqueued.inserted, mine.len() as u64, "{s:?}");
        for k in &mine {
            let top = match k.find('/') {
                Some(i) => &k[..=i],
                None => k.as_str(),
            };
            assert!(shard.contains(top), "{k} is not shard {index}'s");
            assert!(union.insert(k.clone()), "{k} listed by two shards");
        }
        total_requests += s.requests;
        store.close().await;
    }
    assert_eq!(union, keys);
    // Together about one listing of the bucket: each shard lists its prefixes and the
    // Delimiter listing (8 prefixes and 30 loose keys: 4 pages of 10).
    let pages = keys.len() as u64 / 10;
    assert!(
        total_requests <= pages + 3 * 5 + 3 * 12,
        "{total_requests} requests for {pages} pages"
    );
}

fn gzip(text: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text.as_bytes()).expect("gzip");
    e.finish().expect("gzip")
}

/// A local inventory of `files` data files of `rows` rows each, of `bucket`; returns the path
/// of its manifest.json.
fn inventory(dir: &std::path::Path, bucket: &str, files: usize, rows: usize) -> String {
    std::fs::create_dir_all(dir.join("data")).expect("mkdir");
    let mut list = Vec::new();
    for f in 0..files {
        let text: String = (0..rows)
            .map(|r| format!("\"{bucket}\",\"m/{f:02}-{r:05}\",\"\",\"true\",\"false\",\"10\",\"e{r}\",\"STANDARD\"\n"))
            .collect();
        let gz = gzip(&text);
        let key = format!("data/part-{f}.csv.gz");
        std::fs::write(dir.join(&key), &gz).expect("write");
        list.push(serde_json::json!({
            "key": key,
            "size": gz.len(),
            "MD5checksum": hex::encode(Md5::digest(&gz)),
        }));
    }
    let manifest = serde_json::json!({
        "sourceBucket": bucket,
        "destinationBucket": format!("arn:aws:s3:::{bucket}"),
        "version": "2016-11-30",
        "creationTimestamp": "1514944800000",
        "fileFormat": "CSV",
        "fileSchema": "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, ETag, StorageClass",
        "files": list,
    });
    let path = dir.join("manifest.json");
    std::fs::write(&path, serde_json::to_vec(&manifest).expect("json")).expect("write");
    path.display().to_string()
}

/// Runs one `ingest` per store at once ("processes"), one ingester each, and checks that each
/// of the manifest's `rows` rows (in `files` data files) was enqueued exactly once.
pub async fn check_ingesters_share_a_manifest(
    b: &Bed,
    manifest: &str,
    files: u64,
    rows: u64,
    stores: &[JobStore],
) {
    let metrics = Arc::new(Metrics::new("test"));
    let client = client(&metrics).await;
    let key = scan_key(b, None);
    let job = ManifestJob {
        url: manifest.to_owned(),
        batch: 97,
    };
    let ingesters = Ingesters {
        count: 1,
        lease: Duration::from_secs(30),
    };
    let limit = RateLimit::default();
    let shutdown = Shutdown::never();
    let runs = stores.iter().map(|s| {
        s3cse::rekey::ingest::ingest(&client, s, &key, &job, &ingesters, &limit, &shutdown)
    });
    let summaries: Vec<_> = futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.expect("ingest"))
        .collect();
    let inserted: u64 = summaries.iter().map(|s| s.enqueued.inserted).sum();
    let read: u64 = summaries.iter().map(|s| s.rows).sum();
    let again: u64 = summaries
        .iter()
        .map(|s| s.enqueued.unchanged + s.enqueued.reset)
        .sum();
    assert_eq!((inserted, read, again), (rows, rows, 0), "{summaries:?}");
    assert!(
        summaries.iter().filter(|s| s.rows > 0).count() >= 2,
        "the files were shared: {summaries:?}"
    );
    assert_eq!(job_keys(&stores[0]).await.len() as u64, rows);
    let p = stores[0].work_progress().await.expect("progress");
    assert_eq!((p.files[2], p.manifest_rows), (files, rows), "{p:?}");
}

/// Three ingesters ("processes") read one six-file inventory together: each row once.
#[tokio::test(flavor = "multi_thread")]
async fn three_ingesters_read_one_manifest_each_row_once() {
    let Some(b) = bed("ingesters").await else {
        return;
    };
    // 10,000 rows a file: an ingester needs a few tenths of a second per file, longer than the
    // others wait for SQLite's write lock to begin the pass, so the files are shared.
    let manifest = inventory(&b.path("inv"), &b.bucket, 6, 10_000);
    let path = b.path("jobs.db");
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(JobStore::open(&path).await.expect("store"));
    }
    check_ingesters_share_a_manifest(&b, &manifest, 6, 60_000, &stores).await;
    for s in stores {
        s.close().await;
    }
}

/// Three processes (three connection pools) of one lister each on one PostgreSQL queue list
/// one bucket together: the ranges are split among them, each key is enqueued once, and the
/// requests stay about one per page.
#[tokio::test(flavor = "multi_thread")]
async fn three_processes_list_one_bucket_together_on_postgres() {
    let Some(b) = bed("pglisters").await else {
        return;
    };
    let Some(url) = common::pg_database("pg_listers").await else {
        return;
    };
    let keys = fill(&b, &["a/", "b/", "c/", "d/"], 300, 30).await;
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(JobStore::open_postgres(&url).await.expect("store"));
    }
    let page = 10;
    // 40 requests/s between them (a second's burst, then ~2 s): idle listers (polling every
    // 250 ms) find ranges to split; unthrottled, one process lists the bucket before the
    // others look.
    let limit = RateLimit::per_second(Some(40));
    let summaries = check_listers_share_a_bucket(&b, &keys, &stores, 1, page, limit).await;
    let pages = (keys.len() as u64).div_ceil(page as u64);
    let requests: u64 = summaries.iter().map(|s| s.requests).sum();
    let splits: u64 = summaries.iter().map(|s| s.splits).sum();
    assert!(splits >= 1, "the ranges were split: {summaries:?}");
    assert!(
        summaries.iter().filter(|s| s.enqueued.inserted > 0).count() >= 2,
        "more than one process listed: {summaries:?}"
    );
    assert!(
        requests >= pages
            && requests <= pages + splits + 3 * s3cse::rekey::scan::FAILED_PROBE_BUDGET,
        "{requests} requests for {pages} pages: {summaries:?}"
    );
    for s in stores {
        s.close().await;
    }
}

/// Three processes on one PostgreSQL queue ingest one six-file inventory: each row once.
#[tokio::test(flavor = "multi_thread")]
async fn three_processes_ingest_one_manifest_on_postgres() {
    let Some(b) = bed("pgingesters").await else {
        return;
    };
    let Some(url) = common::pg_database("pg_ingesters").await else {
        return;
    };
    let manifest = inventory(&b.path("inv"), &b.bucket, 6, 2000);
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(JobStore::open_postgres(&url).await.expect("store"));
    }
    check_ingesters_share_a_manifest(&b, &manifest, 6, 12_000, &stores).await;
    for s in stores {
        s.close().await;
    }
}
