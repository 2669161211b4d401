//! `s3cse audit`: raw clap arguments -> [`AuditConfig`] -> [`s3cse::audit::run`] -> a table,
//! JSON, or JSON lines; gauges to a Pushgateway or a textfile.
//!
//! Exit codes: 0 no encrypted object depends on anything but the target key; 1 some objects
//! remain (the output says which and why); 2 usage, access or listing error (no verdict).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use clap::{Args, ValueEnum};
use s3cse::audit::{AuditConfig, Class, Reason, Scope, Summary, Tally};
use s3cse::client::S3Cse;
use s3cse::keyring::Keyring;
use s3cse::keyring::{AwsKms, KmsClient};
use s3cse::metrics::{self, AuditMetrics};
use s3cse::rekey::kms::{RekeyKms, describe_key, without_sdk_retries};
use s3cse::rekey::limit::RateLimit;
use s3cse::rekey::owner::KeyOwner;

use super::aws::{AwsArgs, parse_s3_url, sdk_config};
use super::keys::kms_client;
use super::rekey::{check_bucket, check_textfile, new_metrics};
use super::{CliResult, EXIT_FAILED, Failure};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ListWhat {
    /// Only the objects that remain.
    Remaining,
    /// Every object.
    All,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// What to audit: s3://BUCKET[/PREFIX].
    url: String,
    /// The KMS key (id, ARN or alias/NAME) objects must depend on, and on nothing else. Resolved
    /// once with DescribeKey. Real KMS blobs do not name their key: a few GenerateDataKey calls
    /// learn the target's signature, and a blob that matches no known signature is checked with a
    /// Decrypt pinned to the target (plaintext dropped at once), about once per backing key.
    /// Needs kms:GenerateDataKey and kms:Decrypt on the target key.
    #[arg(long, env = "S3CSE_KMS_KEY_ID")]
    kms_key_id: Option<String>,
    /// Every version (ListObjectVersions): an encrypted noncurrent version that is not current
    /// under the target key remains (`noncurrent-version`). Delete markers are ignored.
    #[arg(long)]
    versions: bool,
    /// What counts as current besides the key: --target-format v2|v3, --keep-instruction-files
    /// (the same meaning as rekey's, so audit counts current exactly what rekey skips).
    #[command(flatten)]
    goal: super::goal::GoalArgs,
    /// Print one JSON document instead of the table.
    #[arg(long, conflicts_with = "list")]
    json: bool,
    /// Print one JSON line per object (the remaining ones, or all) instead of the summary; the
    /// verdict goes to stderr.
    #[arg(long, value_enum, value_name = "WHAT")]
    list: Option<ListWhat>,
    /// How many remaining objects the summary names (the JSON says when there were more).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    max_listed: usize,
    /// HEAD requests in flight at once.
    #[arg(long, default_value_t = 32, value_name = "N")]
    concurrency: usize,
    /// Limit S3 requests per second.
    #[arg(long, value_name = "N")]
    s3_rps: Option<u32>,
    /// Limit KMS requests per second (see --kms-key-id for which calls are made).
    #[arg(long, value_name = "N")]
    kms_rps: Option<u32>,
    /// Push-add the audit gauges to this Pushgateway at the end (http://host:9091).
    #[arg(long, value_name = "URL")]
    pushgateway: Option<String>,
    /// At the end, write the audit gauges (Prometheus text format) to this file, atomically, for
    /// node_exporter's textfile collector (name it `*.prom`).
    #[arg(long, value_name = "PATH")]
    metrics_textfile: Option<PathBuf>,
    #[command(flatten)]
    aws: AwsArgs,
}

/// How many remaining objects the table names (the JSON and `--list` name more).
const TEXT_LISTED: usize = 20;

pub async fn audit(a: AuditArgs) -> CliResult {
    let (bucket, prefix) = parse_s3_url(&a.url, false)?;
    let Some(kms_key_id) = a.kms_key_id.clone() else {
        return Err(Failure::usage(anyhow!(
            "--kms-key-id (or S3CSE_KMS_KEY_ID) is required: the key objects must depend on"
        )));
    };
    check_textfile(a.metrics_textfile.as_deref())?;
    // The rekey metrics only carry DescribeKey's request counter here; they are not published.
    let request_metrics = new_metrics();
    let kms_sdk = kms_client().await;
    let target = describe_key(&kms_sdk, &kms_key_id, &request_metrics)
        .await
        .with_context(|| format!("KMS key {kms_key_id}"))
        .map_err(Failure::usage)?;
    // Rate-limited and retried like rekey's (the SDK's own retries off).
    let kms: Arc<dyn KmsClient> = Arc::new(RekeyKms::new(
        Arc::new(AwsKms::new(without_sdk_retries(&kms_sdk))),
        RateLimit::per_second(a.kms_rps),
        request_metrics.clone(),
    ));
    let owner = KeyOwner::new(target.clone(), kms);
    // The target's signature now, so a missing permission is exit 2 before any object.
    owner
        .prepare()
        .await
        .with_context(|| format!("learning how blobs under {kms_key_id} look"))
        .map_err(Failure::usage)?;
    let s3 = a.aws.s3_client(&sdk_config().await).await;
    check_bucket(&s3, &bucket).await?;
    // No keyring: an audit decrypts no object (KMS Decrypt only to tell which key wraps a
    // data key, rekey::owner; the plaintext key is dropped at once).
    let client = S3Cse::new(s3, Keyring::new());
    let config = AuditConfig {
        bucket: bucket.clone(),
        prefix: prefix.clone(),
        versions: a.versions,
        concurrency: a.concurrency.max(1),
        max_listed: a.max_listed,
        goal: a.goal.goal(),
    };
    let mut lines = LineWriter::new(a.list);
    let tally = s3cse::audit::run(
        &client,
        &owner,
        &config,
        &RateLimit::per_second(a.s3_rps),
        |o| lines.write(o),
    )
    .await
    .context("audit")
    .map_err(Failure::usage)?;
    lines.finish();
    let summary = tally.summary(Scope {
        bucket,
        prefix,
        versions: a.versions,
        target_key: if target.arn.is_empty() {
            target.key_id.clone()
        } else {
            target.arn.clone()
        },
    });
    if a.json {
        let text =
            serde_json::to_string_pretty(&summary).map_err(|e| Failure::usage(anyhow!(e)))?;
        print_or_ignore_broken_pipe(&format!("{text}\n"));
    } else if a.list.is_none() {
        print_or_ignore_broken_pipe(&render_text(&summary, &tally));
    }
    publish(&a, &summary).await;
    if summary.remaining == 0 {
        eprintln!("{}", verdict(&summary));
        Ok(())
    } else {
        Err(Failure {
            code: EXIT_FAILED,
            error: anyhow!("{}", verdict(&summary)),
        })
    }
}

/// `--list`: one JSON line per object, as they complete. A closed stdout (`| head`) stops the
/// lines, not the census: its verdict and exit code still come.
struct LineWriter {
    what: Option<ListWhat>,
    out: Option<std::io::BufWriter<std::io::Stdout>>,
}

impl LineWriter {
    fn new(what: Option<ListWhat>) -> Self {
        LineWriter {
            what,
            out: what.map(|_| std::io::BufWriter::new(std::io::stdout())),
        }
    }

    fn write(&mut self, o: &s3cse::audit::Audited) {
        let wanted = match self.what {
            None => false,
            Some(ListWhat::All) => true,
            Some(ListWhat::Remaining) => o.verdict.class == Class::Remaining,
        };
        if !wanted {
            return;
        }
        if let Some(out) = &mut self.out
            && writeln!(out, "{}", o.to_json()).is_err()
        {
            self.out = None;
        }
    }

    fn finish(&mut self) {
        if let Some(out) = &mut self.out {
            let _ = out.flush();
        }
    }
}

fn print_or_ignore_broken_pipe(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// The last line: what an operator may (not) do.
fn verdict(s: &Summary) -> String {
    if s.remaining == 0 {
        format!(
            "verdict: OK, no encrypted object depends on anything but {} ({} current, {} plaintext)",
            s.scope.target_key, s.current, s.plaintext
        )
    } else {
        format!(
            "verdict: {} object(s), {}, still depend on something other than {}: do not retire the keys they use",
            s.remaining,
            human_bytes(s.bytes.remaining),
            s.scope.target_key
        )
    }
}

/// The table by format x wrap x content x key, the totals, the first remaining objects, the
/// verdict.
fn render_text(s: &Summary, tally: &Tally) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let scope = if s.scope.prefix.is_empty() {
        format!("s3://{}", s.scope.bucket)
    } else {
        format!("s3://{}/{}", s.scope.bucket, s.scope.prefix)
    };
    let versions = if s.scope.versions {
        " (every version)"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "audit of {scope}{versions} against {}",
        s.scope.target_key
    );
    let header = [
        "FORMAT", "WRAP", "CONTENT", "KEY", "CLASS", "REASON", "OBJECTS", "BYTES",
    ];
    let rows: Vec<[String; 8]> = s
        .by_class
        .iter()
        .map(|r| {
            [
                r.format.to_owned(),
                r.wrap.to_owned(),
                r.content.to_owned(),
                r.key.clone(),
                r.class.to_string(),
                r.reason.map_or("-".to_owned(), |r| r.to_string()),
                r.objects.to_string(),
                human_bytes(r.bytes),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            // Counts and sizes right-aligned.
            if i >= 6 {
                let _ = write!(l, "{c:>w$}  ");
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(&header);
    for r in &rows {
        line(&r.each_ref().map(String::as_str));
    }
    let total_bytes = s.bytes.plaintext + s.bytes.current + s.bytes.remaining;
    let _ = writeln!(
        out,
        "\ntotal {} objects ({}): {} plaintext ({}), {} current ({}), {} remaining ({})",
        s.total,
        human_bytes(total_bytes),
        s.plaintext,
        human_bytes(s.bytes.plaintext),
        s.current,
        human_bytes(s.bytes.current),
        s.remaining,
        human_bytes(s.bytes.remaining)
    );
    if s.remaining > 0 {
        let _ = writeln!(out, "remaining by reason:");
        for r in Reason::ALL {
            let n = s.remaining_by_reason.get(r.as_str()).copied().unwrap_or(0);
            if n > 0 {
                let _ = writeln!(out, "  {:<19} {n:>8}  {}", r.as_str(), r.describe());
            }
        }
        let _ = writeln!(out, "remaining objects:");
        for o in tally.remaining_objects().iter().take(TEXT_LISTED) {
            // Escaped: a key with a newline must not forge a line of this report.
            let version = o
                .version_id
                .as_deref()
                .map(|v| format!(" (version {})", v.escape_debug()))
                .unwrap_or_default();
            let detail = o
                .detail
                .as_deref()
                .map(|d| format!(": {}", d.escape_debug()))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {}{version}  {}{detail}",
                o.key.escape_debug(),
                o.reason
            );
        }
        let named = tally.remaining_objects().len().min(TEXT_LISTED) as u64;
        if s.remaining > named {
            let _ = writeln!(
                out,
                "  ... and {} more (--json names up to --max-listed, --list remaining names all)",
                s.remaining - named
            );
        }
    }
    if s.vanished > 0 {
        let _ = writeln!(
            out,
            "{} object(s) were deleted between the listing and their HEAD (not counted)",
            s.vanished
        );
    }
    let _ = writeln!(out, "{}", verdict(s));
    out
}

/// `1536` -> `1.5 KiB`: binary units, one decimal.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The gauges, to the Pushgateway and/or the textfile. Failures are logged: the census stands.
async fn publish(a: &AuditArgs, s: &Summary) {
    if a.pushgateway.is_none() && a.metrics_textfile.is_none() {
        return;
    }
    let m = AuditMetrics::default();
    let by_class = [
        (Class::Plaintext, s.plaintext, s.bytes.plaintext),
        (Class::Current, s.current, s.bytes.current),
        (Class::Remaining, s.remaining, s.bytes.remaining),
    ];
    for (class, objects, bytes) in by_class {
        m.set_class(class.as_str(), objects, bytes);
    }
    for r in Reason::ALL {
        let n = s.remaining_by_reason.get(r.as_str()).copied().unwrap_or(0);
        m.set_remaining(r.as_str(), n);
    }
    m.mark_run();
    let text = match m.encode_prometheus_text() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "encoding the audit metrics failed");
            return;
        }
    };
    if let Some(url) = &a.pushgateway {
        // One group per audited bucket and prefix: audits of several buckets share a gateway.
        let grouping = [
            ("bucket", s.scope.bucket.as_str()),
            ("prefix", s.scope.prefix.as_str()),
        ];
        if let Err(e) = metrics::push_add_text(text.clone(), url, "s3cse-audit", &grouping).await {
            tracing::warn!(error = %e, "pushing the audit metrics to the Pushgateway failed");
        }
    }
    if let Some(path) = a.metrics_textfile.clone() {
        let written = tokio::task::spawn_blocking(move || metrics::write_textfile(&text, &path))
            .await
            .map_err(|e| anyhow!(e))
            .and_then(|r| r.map_err(|e| anyhow!(e)));
        if let Err(e) = written {
            tracing::warn!(error = %e, "writing the metrics textfile failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_human_readable() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }
}
