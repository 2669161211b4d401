//! `s3cse report --to s3://BUCKET/PREFIX/`: the job table as an S3 Batch Operations completion
//! report, written to S3.
//!
//! The layout AWS writes
//! (<https://docs.aws.amazon.com/AmazonS3/latest/userguide/batch-ops-examples-reports.html>):
//! `PREFIX/job-ID/results/NAME.csv`, CSV files of rows `Bucket, Key, VersionId, TaskStatus,
//! ErrorCode, HTTPStatusCode, ResultMessage` (no header), succeeded and failed tasks in
//! separate files; then `PREFIX/job-ID/manifest.json` naming each file with its task status,
//! bucket, key and MD5. The manifest is written last, so a reader that finds it finds every
//! file it names.
//!
//! Rows are streamed from the store ([`JobStore::report`], keyset pages) into one file at a
//! time of at most `max_file_bytes` (plus one row): memory does not grow with the job count.
//! Jobs not finished yet (pending, running) have no Batch Operations status: they are counted
//! ([`ReportSummary::unfinished`]), not written.

use std::time::{Instant, SystemTime};

use base64::Engine as _;
use futures::TryStreamExt;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::client::S3Cse;
use crate::store::{JobState, JobStore, ReportRow};

use super::RekeyError;

/// `Format` of the report manifest, as Batch Operations writes it.
pub const REPORT_FORMAT: &str = "Report_CSV_20180820";
/// `ReportSchema`: the columns of each CSV file.
pub const REPORT_SCHEMA: &str =
    "Bucket, Key, VersionId, TaskStatus, ErrorCode, HTTPStatusCode, ResultMessage";
/// Default size of one result file (bytes).
pub const DEFAULT_MAX_FILE_BYTES: usize = 64 << 20;

/// The top-level `manifest.json` of a completion report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReportManifest {
    pub format: String,
    pub report_creation_date: String,
    pub results: Vec<ResultFile>,
    pub report_schema: String,
}

/// One CSV file of a completion report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultFile {
    /// `succeeded` or `failed`.
    #[serde(rename = "TaskExecutionStatus")]
    pub task_execution_status: String,
    #[serde(rename = "Bucket")]
    pub bucket: String,
    /// MD5 of the file (hex).
    #[serde(rename = "MD5Checksum")]
    pub md5_checksum: String,
    /// Full key of the file in `bucket`.
    #[serde(rename = "Key")]
    pub key: String,
}

/// What [`write_to_s3`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSummary {
    /// Key of `manifest.json`.
    pub manifest_key: String,
    pub files: Vec<ResultFile>,
    pub succeeded: u64,
    pub failed: u64,
    /// Pending or running jobs: not in the report.
    pub unfinished: u64,
}

/// One CSV cell (RFC 4180 quoting). A cell a spreadsheet would take for a formula (starting
/// with `=`, `+`, `-`, `@`, a tab or a carriage return: an object key is anyone's text, and
/// `=HYPERLINK(…)` runs when the report is opened) is neutralised the OWASP way: a `'`
/// before it, inside quotes. Used by both `report` (stdout) and `report --to` (S3).
pub fn csv_field(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("\"'{}\"", s.replace('"', "\"\""))
    } else if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The Batch Operations columns of a report row ([`REPORT_SCHEMA`]), as CSV cells.
pub fn batch_ops_fields(r: &ReportRow) -> [String; 7] {
    [
        csv_field(&r.bucket),
        csv_field(&r.key),
        csv_field(r.version_id.as_deref().unwrap_or("")),
        r.task_status.to_owned(),
        csv_field(r.error_code.as_deref().unwrap_or("")),
        r.http_status.map(|s| s.to_string()).unwrap_or_default(),
        csv_field(&r.result_message),
    ]
}

/// A fresh job id in the UUID form Batch Operations uses (random, version 4).
pub fn new_job_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Writes the completion report of `store` under `s3://bucket/prefix` (a prefix ends with `/`
/// or is empty) as job `job_id`. See the module doc.
pub async fn write_to_s3(
    client: &S3Cse,
    store: &JobStore,
    bucket: &str,
    prefix: &str,
    job_id: &str,
    max_file_bytes: usize,
) -> Result<ReportSummary, RekeyError> {
    let job_dir = format!("{prefix}job-{job_id}");
    let mut summary = ReportSummary {
        manifest_key: format!("{job_dir}/manifest.json"),
        files: Vec::new(),
        succeeded: 0,
        failed: 0,
        unfinished: 0,
    };
    let groups: [(&str, &[JobState]); 2] = [
        ("succeeded", &[JobState::Done]),
        ("failed", &[JobState::Failed, JobState::Conflict]),
    ];
    let mut out = Files {
        client,
        bucket,
        results_dir: format!("{job_dir}/results/"),
        max: max_file_bytes.max(1),
        buf: Vec::new(),
        files: Vec::new(),
    };
    for (status, states) in groups {
        for state in states {
            let mut rows = store.report(Some(*state));
            while let Some(r) = rows.try_next().await? {
                if status == "succeeded" {
                    summary.succeeded += 1;
                } else {
                    summary.failed += 1;
                }
                out.push(status, &r).await?;
            }
        }
        out.flush(status).await?;
    }
    let counts = store.state_counts().await?;
    summary.unfinished = counts.remaining().objects;
    summary.files = out.files;
    let manifest = ReportManifest {
        format: REPORT_FORMAT.into(),
        report_creation_date: aws_smithy_types::DateTime::from(SystemTime::now())
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .unwrap_or_default(),
        results: summary.files.clone(),
        report_schema: REPORT_SCHEMA.into(),
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| RekeyError::Internal(format!("report manifest: {e}")))?;
    put(client, bucket, &summary.manifest_key, json).await?;
    if summary.unfinished > 0 {
        tracing::warn!(
            unfinished = summary.unfinished,
            "jobs still pending or running are not in the report"
        );
    }
    Ok(summary)
}

/// The result file being filled, and the ones written.
struct Files<'a> {
    client: &'a S3Cse,
    bucket: &'a str,
    results_dir: String,
    max: usize,
    buf: Vec<u8>,
    files: Vec<ResultFile>,
}

impl Files<'_> {
    async fn push(&mut self, status: &str, r: &ReportRow) -> Result<(), RekeyError> {
        self.buf
            .extend_from_slice(batch_ops_fields(r).join(",").as_bytes());
        self.buf.push(b'\n');
        if self.buf.len() >= self.max {
            self.flush(status).await?;
        }
        Ok(())
    }

    /// Writes the rows gathered so far as one file (none if there are none). Named, like
    /// Batch Operations' files, by a 40-hex-digit hash: here of the content.
    async fn flush(&mut self, status: &str) -> Result<(), RekeyError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let body = std::mem::take(&mut self.buf);
        let name = hex::encode(&Sha256::digest(&body)[..20]);
        let key = format!("{}{name}.csv", self.results_dir);
        let md5 = hex::encode(Md5::digest(&body));
        put(self.client, self.bucket, &key, body).await?;
        self.files.push(ResultFile {
            task_execution_status: status.into(),
            bucket: self.bucket.into(),
            md5_checksum: md5,
            key,
        });
        Ok(())
    }
}

/// PutObject with Content-MD5, so S3 refuses a body damaged on the way.
async fn put(client: &S3Cse, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), RekeyError> {
    let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&body));
    let t = Instant::now();
    let r = client
        .s3()
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_md5(md5)
        .content_type(if key.ends_with(".json") {
            "application/json"
        } else {
            "text/csv"
        })
        .body(body.into())
        .send()
        .await;
    client.observe("PutObject", bucket, key, t, r)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn csv_cells_never_start_a_formula() {
        let cases = [
            ("plain.bin", "plain.bin"),
            ("dïr/ünï ☃.bin", "dïr/ünï ☃.bin"),
            ("a,b", "\"a,b\""),
            ("say \"hi\"", "\"say \"\"hi\"\"\""),
            ("line\nbreak", "\"line\nbreak\""),
            ("=HYPERLINK(\"x\")", "\"'=HYPERLINK(\"\"x\"\")\""),
            ("+1", "\"'+1\""),
            ("-1+2", "\"'-1+2\""),
            ("@SUM(A1)", "\"'@SUM(A1)\""),
            ("\t=1", "\"'\t=1\""),
            ("\r=1", "\"'\r=1\""),
            ("a=1", "a=1"),
            ("", ""),
        ];
        for (cell, want) in cases {
            assert_eq!(csv_field(cell), want, "{cell:?}");
        }
    }

    #[test]
    fn job_ids_look_like_batch_operations_ones() {
        let id = new_job_id();
        let parts: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12], "{id}");
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_job_id());
    }

    /// The example manifest of AWS's documentation reads back into our type.
    #[test]
    fn the_aws_example_report_manifest_parses() {
        let json = r#"{
            "Format": "Report_CSV_20180820",
            "ReportCreationDate": "2019-04-05T17:48:39.725Z",
            "Results": [{
                "TaskExecutionStatus": "succeeded",
                "Bucket": "my-job-reports",
                "MD5Checksum": "83b1c4cbe93fc893f54053697e10fd6e",
                "Key": "job-f8fb9d89-a3aa-461d-bddc-ea6a1b131955/results/6217b0fab0de85c408b4be96aeaca9b195a7daa5.csv"
            }],
            "ReportSchema": "Bucket, Key, VersionId, TaskStatus, ErrorCode, HTTPStatusCode, ResultMessage"
        }"#;
        let m: ReportManifest = serde_json::from_str(json).unwrap();
        assert_eq!(m.format, REPORT_FORMAT);
        assert_eq!(m.report_schema, REPORT_SCHEMA);
        assert_eq!(m.results[0].task_execution_status, "succeeded");
    }
}
