//! `rekey --manifest URL`: the job table filled from a manifest instead of a listing, resumably.
//!
//! The manifest is an S3 Inventory `manifest.json` (its CSV data files, gzip) or an S3 Batch
//! Operations CSV manifest (any other name), at `s3://BUCKET/KEY` or a local path. The rows are
//! parsed by [`crate::manifest`].
//!
//! # Bounded memory, whatever the manifest's size
//! Each data file is downloaded to an unnamed temporary file (its MD5 computed on the way and
//! compared with `manifest.json` before a row is read: a damaged file enqueues nothing), then
//! read by one blocking thread: gzip decoded as a stream, line by line, in batches of
//! `batch` rows handed over a channel of [`CHANNEL_BATCHES`] batches. So memory is a few
//! batches per ingester; disk is one data file per ingester.
//!
//! # Data files are work items
//! Each data file is a row of the state file (`manifest_files`, [`JobStore::begin_manifest`])
//! claimed with a lease by an ingester (`--listers` of them per process, any number of
//! processes on one PostgreSQL queue), with its checkpoint `line`: each batch is enqueued
//! together with the file's new line in one transaction ([`JobStore::commit_file_batch`],
//! the scanner's upsert), so a restarted or taken-over file skips the lines up to it and loses
//! no row, and a dead ingester's file lapses to another. A finished ingest is started over by
//! the next run, as a finished listing is: rows already known are left alone unless their
//! ETag changed. (An older state file's `FILE:LINE` checkpoint in `scans`,
//! [`manifest_scan_key`], is where the first pass resumes.)
//!
//! # Rows left alone
//! Rows of another bucket or outside the prefix (counted, logged with file and line), rows that
//! do not parse (the same), delete markers and noncurrent versions (counted: rekey works on
//! current versions; a version id in the manifest is not pinned, the worker reads the current
//! object and still checks the manifest's ETag against it).

use std::io::{BufRead, BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::client::S3Cse;
use crate::logkey::log_key;
use crate::manifest::{self, InventoryManifest, Row, RowError, Schema};
use crate::store::{EnqueueStats, JobStore, ListedObject, ManifestFile, ScanKey};

use super::limit::RateLimit;
use super::scan::{Shard, release_dead_work, work_owner};
use super::{RekeyError, Shutdown};

/// Batches parsed ahead of the store: with `batch` rows each, the rows in memory at once.
const CHANNEL_BATCHES: usize = 2;

/// Rows logged one by one (outside the prefix, malformed) per run; the rest are counted.
const LOGGED_ROWS: u64 = 100;

/// Default rows per batch (one transaction and one checkpoint each).
pub const DEFAULT_BATCH: usize = 10_000;

/// `--manifest URL` and its batch size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestJob {
    /// `s3://BUCKET/KEY` or a local path.
    pub url: String,
    /// Rows per transaction and checkpoint.
    pub batch: usize,
}

/// What one ingest did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestSummary {
    /// Data rows read (resumed runs: this run's only).
    pub rows: u64,
    /// Objects handed to the store.
    pub enqueued: EnqueueStats,
    /// Rows of another bucket or outside the prefix.
    pub outside: u64,
    /// Rows that did not parse.
    pub malformed: u64,
    /// Delete markers and noncurrent versions.
    pub skipped: u64,
    /// Rows of other shards (`--shard`).
    pub other_shards: u64,
}

/// Where a manifest or data file is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    S3 { bucket: String, key: String },
    Local(PathBuf),
}

impl Location {
    fn parse(url: &str) -> Result<Location, RekeyError> {
        match url.strip_prefix("s3://") {
            Some(rest) => match rest.split_once('/') {
                Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => Ok(Location::S3 {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                }),
                _ => Err(RekeyError::Manifest(format!(
                    "{url}: expected s3://BUCKET/KEY or a local path"
                ))),
            },
            None => Ok(Location::Local(PathBuf::from(url))),
        }
    }

    fn name(&self) -> String {
        match self {
            Location::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
            Location::Local(p) => p.display().to_string(),
        }
    }
}

/// The kind of manifest, and so of its data files.
#[derive(Debug, Clone)]
enum Kind {
    /// Inventory CSV (gzip), columns per `fileSchema`.
    Inventory(Schema),
    /// Batch Operations CSV, `Bucket,Key[,VersionId]`.
    Batch,
}

/// One data file to read.
#[derive(Debug, Clone)]
struct DataFile {
    at: Location,
    /// MD5 (hex) from manifest.json.
    md5: Option<String>,
    gzip: bool,
}

/// The `scans` row of an ingest of `url` into `scan`'s bucket and prefix: the prefix column
/// holds the listing prefix, a line break, and `manifest URL`, so it never matches a listing's
/// row (a listing prefix with a line break and exactly this text aside).
pub fn manifest_scan_key(scan: &ScanKey, url: &str) -> ScanKey {
    ScanKey {
        bucket: scan.bucket.clone(),
        prefix: format!("{}\nmanifest {url}", scan.prefix),
        shard: scan.shard,
    }
}

/// How many data files are read at once (`--listers`), and their lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingesters {
    /// Ingesters in this process: data files read at once.
    pub count: usize,
    /// Lease of a claimed data file, renewed by every batch.
    pub lease: Duration,
}

impl IngestSummary {
    fn add(&mut self, b: &Batch, stats: EnqueueStats) {
        self.rows += b.rows;
        self.enqueued.inserted += stats.inserted;
        self.enqueued.reset += stats.reset;
        self.enqueued.unchanged += stats.unchanged;
        self.outside += b.outside;
        self.malformed += b.malformed;
        self.skipped += b.skipped;
        self.other_shards += b.other_shards;
    }
}

/// Reads the manifest `job.url` into `store`: the objects of `scan.bucket` under `scan.prefix`
/// (this shard's), with `ingesters.count` ingesters, joining (or resuming) the ingest pass
/// under way or starting a new one. Returns when every data file is read (also those of other
/// processes: a lapsed one is taken over), or at a stop. See the module doc.
pub async fn ingest(
    client: &S3Cse,
    store: &JobStore,
    scan: &ScanKey,
    job: &ManifestJob,
    ingesters: &Ingesters,
    s3_limit: &RateLimit,
    shutdown: &Shutdown,
) -> Result<IngestSummary, RekeyError> {
    let started = store.clock_millis().await?;
    release_dead_work(store).await?;
    // An older state file's checkpoint (`FILE:LINE` in `scans`) is where a new pass resumes.
    let old = manifest_scan_key(scan, &job.url);
    let resume = match store.scan_checkpoint(&old).await? {
        Some((Some(c), false)) => parse_checkpoint(&c),
        _ => None,
    };
    let at = Location::parse(&job.url)?;
    let (kind, files) = open_manifest(client, &at, &scan.bucket, s3_limit).await?;
    let names: Vec<String> = files.iter().map(|f| f.at.name()).collect();
    if !store
        .begin_manifest(scan, &job.url, &names, resume, started)
        .await?
    {
        tracing::info!(manifest = %job.url, "joining the manifest ingest under way");
    } else if let Some((file, line)) = resume {
        tracing::info!(file, line, "resuming manifest ingest");
    }
    let total = Mutex::new(IngestSummary::default());
    let ingester = Ingester {
        client,
        store,
        scan,
        job,
        kind: &kind,
        files: &files,
        lease: ingesters.lease,
        s3_limit,
        shutdown,
        total: &total,
    };
    let runs = (0..ingesters.count.max(1)).map(|i| ingester.run(i));
    futures::future::try_join_all(runs).await?;
    let summary = total.lock().map(|t| *t).unwrap_or_default();
    if !shutdown.is_stopping()
        && store.manifest_remaining(scan, &job.url).await?.open == 0
        && resume.is_some()
    {
        store.finish_scan(&old).await?;
    }
    if summary.outside + summary.malformed > 0 {
        tracing::warn!(
            outside = summary.outside,
            malformed = summary.malformed,
            "manifest rows left alone (see the warnings above for their files and lines)"
        );
    }
    Ok(summary)
}

/// What the ingesters of one manifest share.
struct Ingester<'a> {
    client: &'a S3Cse,
    store: &'a JobStore,
    scan: &'a ScanKey,
    job: &'a ManifestJob,
    kind: &'a Kind,
    files: &'a [DataFile],
    lease: Duration,
    s3_limit: &'a RateLimit,
    shutdown: &'a Shutdown,
    total: &'a Mutex<IngestSummary>,
}

impl Ingester<'_> {
    /// One ingester: claims data files and reads them; with nothing to claim, waits for the
    /// others' files to end or lapse.
    async fn run(&self, index: usize) -> Result<(), RekeyError> {
        let owner = work_owner(&format!("i{index}"));
        let result = self.run_as(&owner).await;
        if self.shutdown.is_stopping() || result.is_err() {
            self.store.release_work(&owner).await?;
        }
        result
    }

    async fn run_as(&self, owner: &str) -> Result<(), RekeyError> {
        let poll = (self.lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(2));
        let mut logged = 0u64;
        loop {
            if self.shutdown.is_stopping() {
                return Ok(());
            }
            let claimed = self
                .store
                .claim_manifest_file(self.scan, &self.job.url, owner, self.lease)
                .await?;
            if let Some(file) = claimed {
                logged = self.read_file(owner, &file, logged).await?;
                continue;
            }
            if self
                .store
                .manifest_remaining(self.scan, &self.job.url)
                .await?
                .open
                == 0
            {
                return Ok(());
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = self.shutdown.stopped() => {}
            }
        }
    }

    /// Reads claimed data file `file` from its checkpoint to its end (or a stop, or its lease
    /// lost); returns the rows logged so far.
    async fn read_file(
        &self,
        owner: &str,
        file: &ManifestFile,
        logged: u64,
    ) -> Result<u64, RekeyError> {
        let Some(data) = self.files.get(file.file_index) else {
            return Err(RekeyError::Manifest(format!(
                "{}: data file {} is not in the manifest",
                self.job.url, file.file_index
            )));
        };
        let local = fetch(self.client, &data.at, data.md5.as_deref(), self.s3_limit).await?;
        let (tx, mut rx) = mpsc::channel(CHANNEL_BATCHES);
        let parser = Parser {
            kind: self.kind.clone(),
            bucket: self.scan.bucket.clone(),
            prefix: self.scan.prefix.clone(),
            shard: self.scan.shard.map(|(index, count)| Shard { index, count }),
            name: data.at.name(),
            gzip: data.gzip,
            skip: file.line,
            batch: self.job.batch.max(1),
            logged,
        };
        let reader = tokio::task::spawn_blocking(move || parser.run(local, tx));
        let mut line = file.line;
        let mut held = true;
        while let Some(b) = rx.recv().await {
            if self.shutdown.is_stopping() {
                break;
            }
            let stats = self
                .store
                .commit_file_batch(
                    file.id,
                    owner,
                    &self.scan.bucket,
                    &b.objects,
                    b.last_line,
                    b.rows,
                    false,
                    self.lease,
                )
                .await?;
            let Some(stats) = stats else {
                tracing::warn!(file = %data.at.name(), "manifest file lost (its lease lapsed and another ingester took it over)");
                held = false;
                break;
            };
            line = b.last_line;
            if let Ok(mut t) = self.total.lock() {
                t.add(&b, stats);
            }
        }
        // Dropping the receiver first ends a parser blocked on a full channel.
        drop(rx);
        let logged = reader
            .await
            .map_err(|e| RekeyError::Internal(format!("manifest reader: {e}")))?
            .map_err(|e| RekeyError::Manifest(format!("{}: {e}", data.at.name())))?;
        if held && !self.shutdown.is_stopping() {
            self.store
                .commit_file_batch(
                    file.id,
                    owner,
                    &self.scan.bucket,
                    &[],
                    line,
                    0,
                    true,
                    self.lease,
                )
                .await?;
        }
        Ok(logged)
    }
}

/// `FILE:LINE`, the checkpoint of an older state file.
fn parse_checkpoint(c: &str) -> Option<(usize, u64)> {
    let (f, l) = c.split_once(':')?;
    Some((f.parse().ok()?, l.parse().ok()?))
}

/// Reads the manifest at `at`: `manifest.json` (by its name) is an inventory, anything else a
/// Batch Operations CSV.
async fn open_manifest(
    client: &S3Cse,
    at: &Location,
    bucket: &str,
    s3_limit: &RateLimit,
) -> Result<(Kind, Vec<DataFile>), RekeyError> {
    let name = match at {
        Location::S3 { key, .. } => key.rsplit('/').next().unwrap_or(key),
        Location::Local(p) => p.file_name().and_then(|n| n.to_str()).unwrap_or(""),
    };
    if !name.ends_with(".json") {
        return Ok((
            Kind::Batch,
            vec![DataFile {
                at: at.clone(),
                md5: None,
                gzip: name.ends_with(".gz"),
            }],
        ));
    }
    let json = match at {
        Location::S3 { bucket, key } => get_small(client, bucket, key, s3_limit).await?,
        Location::Local(p) => tokio::fs::read(p)
            .await
            .map_err(|e| RekeyError::Manifest(format!("{}: {e}", p.display())))?,
    };
    let bad = |e: manifest::ManifestError| RekeyError::Manifest(format!("{}: {e}", at.name()));
    let m = InventoryManifest::parse(&json).map_err(bad)?;
    let schema = m.schema().map_err(bad)?;
    if m.source_bucket != bucket {
        tracing::warn!(
            manifest_bucket = %m.source_bucket,
            bucket,
            "the inventory is of another bucket: its rows will be reported as outside"
        );
    }
    let files = m
        .files
        .iter()
        .map(|f| DataFile {
            at: match at {
                Location::S3 { .. } => Location::S3 {
                    bucket: m.destination_bucket_name().to_owned(),
                    key: f.key.clone(),
                },
                Location::Local(p) => Location::Local(local_data_file(p, &f.key)),
            },
            md5: Some(f.md5_checksum.to_ascii_lowercase()),
            gzip: true,
        })
        .collect();
    Ok((Kind::Inventory(schema), files))
}

/// A data file of a local copy of an inventory: its key (from the bucket root) under the
/// manifest's directory or one of its parents (a synced copy of the destination bucket), else
/// its file name beside the manifest.
fn local_data_file(manifest: &Path, key: &str) -> PathBuf {
    let dir = manifest.parent().unwrap_or(Path::new("."));
    for a in dir.ancestors() {
        let p = a.join(key);
        if p.is_file() {
            return p;
        }
    }
    dir.join(key.rsplit('/').next().unwrap_or(key))
}

/// A small object (manifest.json) in memory.
async fn get_small(
    client: &S3Cse,
    bucket: &str,
    key: &str,
    s3_limit: &RateLimit,
) -> Result<Vec<u8>, RekeyError> {
    s3_limit.wait().await;
    let t = Instant::now();
    let r = client
        .s3()
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await;
    let out = client.observe("GetObject", bucket, key, t, r)?;
    let body = out
        .body
        .collect()
        .await
        .map_err(|e| RekeyError::Manifest(format!("s3://{bucket}/{key}: {e}")))?;
    Ok(body.to_vec())
}

/// The data file as a local file to read, its MD5 checked against `md5` (S3: downloaded to an
/// unnamed temporary file, hashed on the way).
async fn fetch(
    client: &S3Cse,
    at: &Location,
    md5: Option<&str>,
    s3_limit: &RateLimit,
) -> Result<std::fs::File, RekeyError> {
    let name = at.name();
    let failed = |e: &dyn std::fmt::Display| RekeyError::Manifest(format!("{name}: {e}"));
    let (file, digest) = match at {
        Location::Local(p) => {
            let p = p.clone();
            let hash = md5.is_some();
            tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                let mut f = std::fs::File::open(&p)?;
                let digest = if hash {
                    let mut h = Md5::new();
                    std::io::copy(&mut f, &mut HashWriter(&mut h))?;
                    f.rewind()?;
                    Some(hex::encode(h.finalize()))
                } else {
                    None
                };
                Ok((f, digest))
            })
            .await
            .map_err(|e| RekeyError::Internal(e.to_string()))?
            .map_err(|e| failed(&e))?
        }
        Location::S3 { bucket, key } => {
            s3_limit.wait().await;
            let t = Instant::now();
            let r = client
                .s3()
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await;
            let mut out = client.observe("GetObject", bucket, key, t, r)?;
            let tmp = tempfile::tempfile().map_err(|e| failed(&e))?;
            let mut w = tokio::fs::File::from_std(tmp);
            let mut h = Md5::new();
            while let Some(chunk) = out.body.next().await {
                let chunk = chunk.map_err(|e| failed(&e))?;
                h.update(&chunk);
                w.write_all(&chunk).await.map_err(|e| failed(&e))?;
            }
            w.flush().await.map_err(|e| failed(&e))?;
            let mut f = w.into_std().await;
            f.rewind().map_err(|e| failed(&e))?;
            (f, Some(hex::encode(h.finalize())))
        }
    };
    if let (Some(want), Some(got)) = (md5, digest.as_deref())
        && !want.eq_ignore_ascii_case(got)
    {
        return Err(RekeyError::Manifest(format!(
            "{name}: MD5 {got} does not match the manifest's {want}: not read"
        )));
    }
    Ok(file)
}

/// `std::io::Write` into a hash.
struct HashWriter<'a>(&'a mut Md5);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One batch of parsed rows, up to and including line `last_line` of its file.
#[derive(Debug, Default)]
struct Batch {
    objects: Vec<ListedObject>,
    last_line: u64,
    rows: u64,
    outside: u64,
    malformed: u64,
    skipped: u64,
    other_shards: u64,
}

/// Reads one data file on a blocking thread, in batches.
struct Parser {
    kind: Kind,
    bucket: String,
    prefix: String,
    shard: Option<Shard>,
    /// For the log: the file's URL or path.
    name: String,
    gzip: bool,
    /// Lines already enqueued by an earlier run.
    skip: u64,
    batch: usize,
    /// Rows logged so far this run (see [`LOGGED_ROWS`]).
    logged: u64,
}

impl Parser {
    /// Sends the batches; returns the rows logged so far, or why the file cannot be read on
    /// (an I/O or gzip error: the rows before it are enqueued, the checkpoint says where).
    fn run(mut self, file: std::fs::File, tx: mpsc::Sender<Batch>) -> std::io::Result<u64> {
        let raw = BufReader::with_capacity(1 << 16, file);
        let inner: Box<dyn Read> = if self.gzip {
            Box::new(flate2::bufread::MultiGzDecoder::new(raw))
        } else {
            Box::new(raw)
        };
        let mut reader = BufReader::with_capacity(1 << 16, inner);
        let mut buf = Vec::with_capacity(1024);
        let mut line_no = 0u64;
        let mut batch = Batch::default();
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf)? == 0 {
                break;
            }
            line_no += 1;
            if line_no <= self.skip {
                continue;
            }
            batch.last_line = line_no;
            let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
            if !text.is_empty() && text != b"\r" {
                batch.rows += 1;
                self.take(line_no, text, &mut batch);
            }
            if batch.rows as usize >= self.batch {
                let full = std::mem::take(&mut batch);
                if tx.blocking_send(full).is_err() {
                    return Ok(self.logged);
                }
            }
        }
        if batch.last_line > 0 {
            let _ = tx.blocking_send(batch);
        }
        Ok(self.logged)
    }

    fn take(&mut self, line_no: u64, text: &[u8], batch: &mut Batch) {
        let row = std::str::from_utf8(text)
            .map_err(|_| RowError::Encoding {
                what: "row",
                value: String::from_utf8_lossy(text).into_owned(),
            })
            .and_then(|line| match &self.kind {
                Kind::Inventory(schema) => manifest::parse_inventory_line(schema, line),
                Kind::Batch => manifest::parse_batch_line(line),
            });
        let o = match row {
            Ok(Row::Object(o)) => o,
            Ok(Row::DeleteMarker | Row::Noncurrent) => {
                batch.skipped += 1;
                return;
            }
            Err(e) => {
                batch.malformed += 1;
                self.log(
                    line_no,
                    "malformed manifest row, left alone",
                    &e.to_string(),
                );
                return;
            }
        };
        if o.bucket != self.bucket || !o.key.starts_with(&self.prefix) {
            batch.outside += 1;
            let what = format!("s3://{}/{}", o.bucket, log_key(&o.key));
            self.log(
                line_no,
                "manifest row outside the bucket/prefix, left alone",
                &what,
            );
            return;
        }
        if self.shard.is_some_and(|s| !s.owns(&self.prefix, &o.key)) {
            batch.other_shards += 1;
            return;
        }
        batch.objects.push(ListedObject {
            key: o.key,
            etag: o.etag,
            size: o.size,
            last_modified: o.last_modified,
            storage_class: o.storage_class,
        });
    }

    fn log(&mut self, line: u64, message: &str, detail: &str) {
        self.logged += 1;
        if self.logged <= LOGGED_ROWS {
            tracing::warn!(file = %self.name, line, detail, "{message}");
        } else if self.logged == LOGGED_ROWS + 1 {
            tracing::warn!("more manifest rows left alone: counted, no longer logged");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn locations_and_checkpoints() {
        assert_eq!(
            Location::parse("s3://b/dir/manifest.json").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                key: "dir/manifest.json".into()
            }
        );
        assert!(Location::parse("s3://b").is_err());
        assert!(Location::parse("s3:///k").is_err());
        assert_eq!(
            Location::parse("./m.csv").unwrap(),
            Location::Local("./m.csv".into())
        );
        assert_eq!(parse_checkpoint("3:1200"), Some((3, 1200)));
        assert_eq!(parse_checkpoint("x"), None);
    }

    #[test]
    fn the_manifest_checkpoint_is_not_the_listing_one() {
        let scan = ScanKey {
            bucket: "b".into(),
            prefix: "p/".into(),
            shard: None,
        };
        let m = manifest_scan_key(&scan, "s3://x/manifest.json");
        assert_ne!(m, scan);
        assert_ne!(m, manifest_scan_key(&scan, "s3://x/other.json"));
    }

    fn parse(kind: Kind, prefix: &str, text: &str, skip: u64, batch: usize) -> Vec<Batch> {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f.rewind().unwrap();
        let (tx, mut rx) = mpsc::channel(1000);
        let p = Parser {
            kind,
            bucket: "b".into(),
            prefix: prefix.into(),
            shard: None,
            name: "t".into(),
            gzip: false,
            skip,
            batch,
            logged: 0,
        };
        p.run(f, tx).unwrap();
        let mut out = Vec::new();
        while let Ok(b) = rx.try_recv() {
            out.push(b);
        }
        out
    }

    #[test]
    fn batches_carry_their_last_line_and_skip_what_was_done() {
        let text = "b,p/1\nb,p/2\nother,p/3\nb,q/4\n\"b,bad\nb,p/5\n";
        let all = parse(Kind::Batch, "p/", text, 0, 2);
        let lines: Vec<u64> = all.iter().map(|b| b.last_line).collect();
        assert_eq!(lines, [2, 4, 6]);
        let keys: Vec<String> = all
            .iter()
            .flat_map(|b| b.objects.iter().map(|o| o.key.clone()))
            .collect();
        assert_eq!(keys, ["p/1", "p/2", "p/5"]);
        assert_eq!(all.iter().map(|b| b.outside).sum::<u64>(), 2);
        assert_eq!(all.iter().map(|b| b.malformed).sum::<u64>(), 1);
        // Resumed after line 4: only what follows.
        let rest = parse(Kind::Batch, "p/", text, 4, 2);
        let keys: Vec<String> = rest
            .iter()
            .flat_map(|b| b.objects.iter().map(|o| o.key.clone()))
            .collect();
        assert_eq!(keys, ["p/5"]);
        assert_eq!(rest.iter().map(|b| b.malformed).sum::<u64>(), 1);
    }
}
