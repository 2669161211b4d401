//! Prometheus metrics of `s3cse rekey`: a [`Metrics`] struct that owns its own
//! [`Registry`] (no global registry, so tests and several jobs in one process don't collide),
//! a tiny `/metrics` HTTP server ([`serve`]) for scraping, and [`push_add`] for a Pushgateway.
//! [`attempts::CountAttempts`], an SDK interceptor, counts every S3 attempt (the SDK's own
//! retries included) and every SDK-internal retry of KMS.
//!
//! # Sharing
//! `Metrics` is not `Clone`: create one per process and share it as `Arc<Metrics>`. Every
//! recording method takes `&self` and costs a hash lookup plus an atomic add.
//!
//! # Names
//! The exposition names below are a contract with the Grafana dashboard and the alert rules;
//! don't rename them. Counters are registered without `_total`: prometheus-client appends it
//! (and panics in debug builds if the registered name already ends in `_total`).
//!
//! | name | type | labels |
//! |---|---|---|
//! | `s3cse_rekey_objects_total` | counter | `result` = rewritten, rewrapped, skipped, failed, conflict |
//! | `s3cse_rekey_bytes_total` | counter | `result` (source object bytes) |
//! | `s3cse_rekey_queue_objects` | gauge | `state` = pending, running, done, failed, conflict |
//! | `s3cse_rekey_queue_bytes` | gauge | `state` |
//! | `s3cse_rekey_object_duration_seconds` | histogram | `action` = rewrite, rewrap, skip |
//! | `s3cse_rekey_object_size_bytes` | histogram | (1 KiB .. 8 GiB, powers of two) |
//! | `s3cse_s3_requests_total` | counter | `operation` (S3 API name), `outcome` = ok, throttled, server_error, timeout, network_error, precondition_failed, not_found, error; one per attempt, SDK retries included |
//! | `s3cse_s3_request_duration_seconds` | histogram | `operation` (per attempt) |
//! | `s3cse_kms_requests_total` | counter | `operation` = GenerateDataKey, Decrypt, Encrypt, ReEncrypt, DescribeKey; `outcome` = ok, error, throttled |
//! | `s3cse_kms_request_duration_seconds` | histogram | `operation` |
//! | `s3cse_rekey_retries_total` | counter | `service` = s3, kms; `reason` = throttled, server_error, timeout, network, conflict; SDK-internal retries included |
//! | `s3cse_rekey_last_success_timestamp_seconds` | gauge | |
//! | `s3cse_rekey_noncurrent_versions` | gauge | `class` = plaintext, current, remaining (remaining: under a legacy key, it keeps that key alive); `state` = listed, kept, deleting, deleted |
//! | `s3cse_build_info` | gauge (= 1) | `version` |
//!
//! # Formats
//! [`Metrics::encode`] renders OpenMetrics text (what prometheus-client emits natively, ending in
//! `# EOF`), served with [`OPENMETRICS_CONTENT_TYPE`]. The Pushgateway only parses the Prometheus
//! text format 0.0.4, in which a counter's `# TYPE` line must carry the `_total` name
//! (OpenMetrics puts the bare family name there, and the Pushgateway would see an empty counter
//! family plus an untyped `…_total` one), so [`push_add`] sends
//! [`Metrics::encode_prometheus_text`] with [`PROMETHEUS_TEXT_CONTENT_TYPE`] instead, and
//! [`Metrics::write_textfile`] writes the same text for node_exporter's textfile collector.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

pub mod attempts;

pub use crate::store::Action;
use crate::store::{JobState, StateCounts, VersionCount, VersionState, WorkProgress, WorkState};

/// `Content-Type` of [`Metrics::encode`] (OpenMetrics 1.0 text).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `Content-Type` of [`Metrics::encode_prometheus_text`] (Prometheus text 0.0.4).
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// How long a scraper may take to send its request headers before the connection is dropped,
/// so idle or stuck clients cannot pile up connections.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`serve`] waits for open connections to finish after the shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Whole-request timeout of [`push_add`]: a missing Pushgateway must not hang the job's exit.
const PUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the metrics endpoint and the Pushgateway client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The `/metrics` listener could not bind.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// Requested address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Pushgateway URL is not a plain `http://host[:port][/path]` URL (https is not
    /// supported: push through a local sidecar or in-cluster HTTP service).
    #[error("unsupported Pushgateway URL {0:?}: only http:// URLs are supported")]
    UnsupportedUrl(String),
    /// A grouping label name is not a valid Prometheus label name.
    #[error("invalid Pushgateway grouping label name {0:?}")]
    InvalidLabelName(String),
    /// The push request could not be built (bad URL characters).
    #[error("invalid Pushgateway request: {0}")]
    InvalidRequest(#[from] hyper::http::Error),
    /// Connecting to or talking to the Pushgateway failed.
    #[error("Pushgateway request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    /// Reading the Pushgateway's answer failed.
    #[error("Pushgateway response failed: {0}")]
    Response(#[from] hyper::Error),
    /// The Pushgateway did not answer within the timeout.
    #[error("Pushgateway request timed out after {0:?}")]
    Timeout(Duration),
    /// The Pushgateway answered with an error status (e.g. 400 for inconsistent metrics).
    #[error("Pushgateway rejected the push with HTTP {status}: {body}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Start of the response body.
        body: String,
    },
    /// The `--metrics-textfile` could not be written (or renamed into place).
    #[error("cannot write the metrics textfile {path}: {source}")]
    Textfile {
        /// Target path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Text encoding failed (a bug: encoding into a `String` cannot fail otherwise).
    #[error("metrics encoding failed")]
    Encode(#[from] fmt::Error),
}

/// Result of one object, the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectResult {
    /// Re-encrypted (new content key and cipher).
    Rewritten,
    /// Data key re-wrapped, content kept.
    Rewrapped,
    /// Left as it was.
    Skipped,
    /// Failed.
    Failed,
    /// Changed under us too often.
    Conflict,
}

impl ObjectResult {
    /// All results (every series is created at zero, so `rate()` works from the first scrape).
    pub const ALL: [ObjectResult; 5] = [
        ObjectResult::Rewritten,
        ObjectResult::Rewrapped,
        ObjectResult::Skipped,
        ObjectResult::Failed,
        ObjectResult::Conflict,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectResult::Rewritten => "rewritten",
            ObjectResult::Rewrapped => "rewrapped",
            ObjectResult::Skipped => "skipped",
            ObjectResult::Failed => "failed",
            ObjectResult::Conflict => "conflict",
        }
    }
}

/// Outcome of one S3 or KMS request attempt, the `outcome` label. KMS uses only `Ok`, `Error`
/// and `Throttled`; S3 attempts are told apart as [`attempts::CountAttempts`] sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// 2xx (and 304).
    Ok,
    /// Any other failure (a 4xx other than those below).
    Error,
    /// 503 SlowDown / 429 / KMS ThrottlingException.
    Throttled,
    /// 412 on a conditional write.
    PreconditionFailed,
    /// 404.
    NotFound,
    /// 5xx other than 503.
    ServerError,
    /// No answer in time (the SDK's attempt timeout, or a 408 / RequestTimeout).
    Timeout,
    /// The connection failed or dropped before an answer.
    NetworkError,
}

impl Outcome {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Throttled => "throttled",
            Outcome::PreconditionFailed => "precondition_failed",
            Outcome::NotFound => "not_found",
            Outcome::ServerError => "server_error",
            Outcome::Timeout => "timeout",
            Outcome::NetworkError => "network_error",
        }
    }

    /// Every S3 outcome (the series created at zero).
    pub const S3: [Outcome; 8] = [
        Outcome::Ok,
        Outcome::Error,
        Outcome::Throttled,
        Outcome::PreconditionFailed,
        Outcome::NotFound,
        Outcome::ServerError,
        Outcome::Timeout,
        Outcome::NetworkError,
    ];

    /// Why an attempt with this outcome is retried (`None`: it is not).
    pub fn retry_reason(self) -> Option<RetryReason> {
        match self {
            Outcome::Throttled => Some(RetryReason::Throttled),
            Outcome::ServerError => Some(RetryReason::ServerError),
            Outcome::Timeout => Some(RetryReason::Timeout),
            Outcome::NetworkError => Some(RetryReason::Network),
            Outcome::Ok | Outcome::Error | Outcome::PreconditionFailed | Outcome::NotFound => None,
        }
    }
}

/// The `service` label of retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// Amazon S3.
    S3,
    /// AWS KMS.
    Kms,
}

impl Service {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::S3 => "s3",
            Service::Kms => "kms",
        }
    }
}

/// The `reason` label of retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// Throttled (503 SlowDown, KMS ThrottlingException).
    Throttled,
    /// 5xx.
    ServerError,
    /// Timed out.
    Timeout,
    /// The connection failed or dropped.
    Network,
    /// The object changed under a conditional write (or since it was listed): its job was
    /// requeued to be classified again.
    Conflict,
}

impl RetryReason {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Throttled => "throttled",
            RetryReason::ServerError => "server_error",
            RetryReason::Timeout => "timeout",
            RetryReason::Network => "network",
            RetryReason::Conflict => "conflict",
        }
    }
}

/// Label values written through `as_str`, so the exposition spelling lives in one place.
macro_rules! label_value_via_as_str {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    )*};
}
label_value_via_as_str!(
    ObjectResult,
    Outcome,
    Service,
    RetryReason,
    Action,
    JobState
);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: ObjectResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabels {
    class: String,
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabel {
    state: JobState,
}

/// `state` of a listing range or manifest data file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WorkLabel {
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ActionLabel {
    action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    operation: Cow<'static, str>,
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabel {
    operation: Cow<'static, str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RetryLabels {
    service: Service,
    reason: RetryReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Per-object wall time: 10 ms .. ~22 min (doubling), as a multi-GiB rewrite takes minutes.
fn object_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 18))
}

/// Per-request latency: 5 ms .. ~41 s (doubling); S3 GETs of big objects stream inside this.
fn request_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// The metrics of one `s3cse` process. See the module doc for names and sharing.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Holds only `last_success`, encoded only once [`Metrics::mark_success`] has run: a
    /// failed run's push-add then leaves the previous run's timestamp on the Pushgateway
    /// instead of overwriting it with 0, and a scrape shows no bogus "succeeded in 1970".
    success_registry: Registry,
    succeeded: std::sync::atomic::AtomicBool,
    objects: Family<ResultLabel, Counter>,
    bytes: Family<ResultLabel, Counter>,
    queue_objects: Family<StateLabel, Gauge>,
    queue_bytes: Family<StateLabel, Gauge>,
    object_duration: HistogramFamily<ActionLabel>,
    object_size: Histogram,
    s3_requests: Family<RequestLabels, Counter>,
    s3_duration: HistogramFamily<OperationLabel>,
    kms_requests: Family<RequestLabels, Counter>,
    kms_duration: HistogramFamily<OperationLabel>,
    retries: Family<RetryLabels, Counter>,
    last_success: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// `rekey --noncurrent`: the noncurrent versions recorded in the job table.
    noncurrent: Family<VersionLabels, Gauge>,
    /// Listing ranges and manifest data files by state, keys listed and manifest rows read
    /// (the state file's, all listers and processes together: [`Metrics::set_work`]).
    list_ranges: Family<WorkLabel, Gauge>,
    listed_keys: Gauge,
    manifest_files: Family<WorkLabel, Gauge>,
    manifest_rows: Gauge,
}

impl Metrics {
    /// A fresh registry with every metric registered; `version` goes into `s3cse_build_info`.
    pub fn new(version: &str) -> Metrics {
        let mut registry = Registry::default();
        let objects = Family::<ResultLabel, Counter>::default();
        registry.register(
            "s3cse_rekey_objects",
            "Objects processed by the rekey workers, by result",
            objects.clone(),
        );
        let bytes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "s3cse_rekey_bytes",
            "Source object bytes processed by the rekey workers, by result",
            bytes.clone(),
        );
        let queue_objects = Family::<StateLabel, Gauge>::default();
        registry.register(
            "s3cse_rekey_queue_objects",
            "Objects in the job table, by state",
            queue_objects.clone(),
        );
        let noncurrent = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "s3cse_rekey_noncurrent_versions",
            "Noncurrent object versions recorded by rekey --noncurrent, by census class and state",
            noncurrent.clone(),
        );
        for class in ["plaintext", "current", "remaining"] {
            for state in VersionState::ALL {
                drop(noncurrent.get_or_create(&VersionLabels {
                    class: class.to_owned(),
                    state: state.as_str(),
                }));
            }
        }
        let list_ranges = Family::<WorkLabel, Gauge>::default();
        registry.register(
            "s3cse_rekey_list_ranges",
            "Key ranges of the listing pass, by state (pending, running, done)",
            list_ranges.clone(),
        );
        let listed_keys = Gauge::default();
        registry.register(
            "s3cse_rekey_listed_keys",
            "Keys enqueued by the listing pass so far (all listers)",
            listed_keys.clone(),
        );
        let manifest_files = Family::<WorkLabel, Gauge>::default();
        registry.register(
            "s3cse_rekey_manifest_files",
            "Manifest data files of the ingest pass, by state (pending, running, done)",
            manifest_files.clone(),
        );
        let manifest_rows = Gauge::default();
        registry.register(
            "s3cse_rekey_manifest_rows",
            "Manifest rows read by the ingest pass so far (all ingesters)",
            manifest_rows.clone(),
        );
        for state in WorkState::ALL {
            let label = WorkLabel {
                state: state.as_str(),
            };
            drop(list_ranges.get_or_create(&label));
            drop(manifest_files.get_or_create(&label));
        }
        let queue_bytes = Family::<StateLabel, Gauge>::default();
        registry.register(
            "s3cse_rekey_queue_bytes",
            "Bytes of the objects in the job table, by state",
            queue_bytes.clone(),
        );
        let object_duration: HistogramFamily<ActionLabel> =
            Family::new_with_constructor(object_duration_histogram);
        registry.register(
            "s3cse_rekey_object_duration_seconds",
            "Wall time to process one object, by action",
            object_duration.clone(),
        );
        // 1 KiB .. 8 GiB: 2^10 .. 2^33, 24 buckets.
        let object_size = Histogram::new(exponential_buckets(1024.0, 2.0, 24));
        registry.register(
            "s3cse_rekey_object_size_bytes",
            "Size of the objects processed",
            object_size.clone(),
        );
        let s3_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "s3cse_s3_requests",
            "S3 requests, by API operation and outcome",
            s3_requests.clone(),
        );
        let s3_duration: HistogramFamily<OperationLabel> =
            Family::new_with_constructor(request_duration_histogram);
        registry.register(
            "s3cse_s3_request_duration_seconds",
            "S3 request latency, by API operation",
            s3_duration.clone(),
        );
        let kms_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "s3cse_kms_requests",
            "KMS requests, by API operation and outcome",
            kms_requests.clone(),
        );
        let kms_duration: HistogramFamily<OperationLabel> =
            Family::new_with_constructor(request_duration_histogram);
        registry.register(
            "s3cse_kms_request_duration_seconds",
            "KMS request latency, by API operation",
            kms_duration.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "s3cse_rekey_retries",
            "Retried S3 and KMS requests, by service and reason",
            retries.clone(),
        );
        let last_success = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let mut success_registry = Registry::default();
        success_registry.register(
            "s3cse_rekey_last_success_timestamp_seconds",
            "Unix time of the last successful rekey run",
            last_success.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        registry.register(
            "s3cse_build_info",
            "Always 1; the version label tells which s3cse is running",
            build_info.clone(),
        );
        build_info
            .get_or_create(&VersionLabel {
                version: version.to_owned(),
            })
            .set(1);

        // Create the fixed-label series at zero, so dashboards and `rate()` see them from the
        // first scrape rather than from the first event.
        for result in ObjectResult::ALL {
            let label = ResultLabel { result };
            drop(objects.get_or_create(&label));
            drop(bytes.get_or_create(&label));
        }
        for state in JobState::ALL {
            let label = StateLabel { state };
            drop(queue_objects.get_or_create(&label));
            drop(queue_bytes.get_or_create(&label));
        }
        // A run with nothing to do (a resumed, finished bucket) still exposes the duration
        // family, so a scrape of it names every contract metric.
        for action in Action::ALL {
            drop(object_duration.get_or_create(&ActionLabel { action }));
        }
        // The retry pairs rekey records (KMS conflicts don't exist; KMS timeouts are not told
        // apart from server errors), so the retries panel shows 0 rather than no data.
        for (service, reason) in [
            (Service::S3, RetryReason::Throttled),
            (Service::S3, RetryReason::ServerError),
            (Service::S3, RetryReason::Timeout),
            (Service::S3, RetryReason::Network),
            (Service::S3, RetryReason::Conflict),
            (Service::Kms, RetryReason::Throttled),
            (Service::Kms, RetryReason::ServerError),
        ] {
            drop(retries.get_or_create(&RetryLabels { service, reason }));
        }
        // The S3 operations every rekey sends, at every outcome: the throttling and error
        // panels show 0 until the first one, not "No data".
        for operation in ["HeadObject", "GetObject", "PutObject"] {
            for outcome in Outcome::S3 {
                drop(s3_requests.get_or_create(&RequestLabels {
                    operation: Cow::Borrowed(operation),
                    outcome,
                }));
            }
        }

        Metrics {
            registry,
            success_registry,
            succeeded: std::sync::atomic::AtomicBool::new(false),
            objects,
            bytes,
            queue_objects,
            queue_bytes,
            object_duration,
            object_size,
            s3_requests,
            s3_duration,
            kms_requests,
            kms_duration,
            retries,
            last_success,
            noncurrent,
            list_ranges,
            listed_keys,
            manifest_files,
            manifest_rows,
        }
    }

    /// Sets the listing and manifest gauges from the state file's progress.
    pub fn set_work(&self, p: &WorkProgress) {
        for (state, (ranges, files)) in WorkState::ALL.into_iter().zip(p.ranges.iter().zip(p.files))
        {
            let label = WorkLabel {
                state: state.as_str(),
            };
            self.list_ranges
                .get_or_create(&label)
                .set(saturating_i64(*ranges));
            self.manifest_files
                .get_or_create(&label)
                .set(saturating_i64(files));
        }
        self.listed_keys.set(saturating_i64(p.keys_listed));
        self.manifest_rows.set(saturating_i64(p.manifest_rows));
    }

    /// Sets the noncurrent-version gauges from the job table's counts (groups not counted
    /// are set to 0).
    pub fn set_noncurrent(&self, counts: &[VersionCount]) {
        let mut sums: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
        for c in counts {
            *sums.entry((c.class.clone(), c.state.as_str())).or_default() += c.versions;
        }
        for class in ["plaintext", "current", "remaining"] {
            for state in VersionState::ALL {
                let n = sums
                    .remove(&(class.to_owned(), state.as_str()))
                    .unwrap_or(0);
                self.noncurrent
                    .get_or_create(&VersionLabels {
                        class: class.to_owned(),
                        state: state.as_str(),
                    })
                    .set(saturating_i64(n));
            }
        }
    }

    /// One object finished: counts it and its source `bytes` under `result`, and records its
    /// wall time under `action` and its size.
    pub fn object_done(
        &self,
        result: ObjectResult,
        action: Action,
        bytes: u64,
        duration: Duration,
    ) {
        let label = ResultLabel { result };
        self.objects.get_or_create(&label).inc();
        self.bytes.get_or_create(&label).inc_by(bytes);
        self.object_duration
            .get_or_create(&ActionLabel { action })
            .observe(duration.as_secs_f64());
        self.object_size.observe(bytes as f64);
    }

    /// One object finished before it could be classified (its HEAD failed, or it changed
    /// before its action was known): counts it and its `bytes` under `result`, records its size,
    /// but no duration, as the `action` label would be a guess.
    pub fn object_unclassified(&self, result: ObjectResult, bytes: u64) {
        let label = ResultLabel { result };
        self.objects.get_or_create(&label).inc();
        self.bytes.get_or_create(&label).inc_by(bytes);
        self.object_size.observe(bytes as f64);
    }

    /// Sets the queue gauges from the job table's per-state counts.
    pub fn set_queue(&self, counts: &StateCounts) {
        for (state, tally) in counts.iter() {
            let label = StateLabel { state };
            self.queue_objects
                .get_or_create(&label)
                .set(saturating_i64(tally.objects));
            self.queue_bytes
                .get_or_create(&label)
                .set(saturating_i64(tally.bytes));
        }
    }

    /// One S3 request attempt (`operation` is the API name, e.g. `"PutObject"`).
    pub fn s3_request(
        &self,
        operation: impl Into<Cow<'static, str>>,
        outcome: Outcome,
        duration: Duration,
    ) {
        let operation = operation.into();
        self.s3_duration
            .get_or_create(&OperationLabel {
                operation: operation.clone(),
            })
            .observe(duration.as_secs_f64());
        self.s3_requests
            .get_or_create(&RequestLabels { operation, outcome })
            .inc();
    }

    /// S3 request attempts of `operation` with `outcome` so far (run summaries, tests).
    pub fn s3_requests(&self, operation: &'static str, outcome: Outcome) -> u64 {
        self.s3_requests
            .get(&RequestLabels {
                operation: Cow::Borrowed(operation),
                outcome,
            })
            .map_or(0, |c| c.get())
    }

    /// Objects and source bytes counted under `result` so far (the live display, summaries).
    pub fn objects_done(&self, result: ObjectResult) -> (u64, u64) {
        let label = ResultLabel { result };
        (
            self.objects.get(&label).map_or(0, |c| c.get()),
            self.bytes.get(&label).map_or(0, |c| c.get()),
        )
    }

    /// Retries of every service and reason so far.
    pub fn retries_total(&self) -> u64 {
        let mut n = 0;
        for service in [Service::S3, Service::Kms] {
            for reason in [
                RetryReason::Throttled,
                RetryReason::ServerError,
                RetryReason::Timeout,
                RetryReason::Network,
                RetryReason::Conflict,
            ] {
                n += self.retries(service, reason);
            }
        }
        n
    }

    /// Retries of `service` for `reason` so far (run summaries, tests).
    pub fn retries(&self, service: Service, reason: RetryReason) -> u64 {
        self.retries
            .get(&RetryLabels { service, reason })
            .map_or(0, |c| c.get())
    }

    /// One KMS request (`operation`: `"GenerateDataKey"`, `"Decrypt"`, `"Encrypt"`).
    pub fn kms_request(&self, operation: &'static str, outcome: Outcome, duration: Duration) {
        let operation = Cow::Borrowed(operation);
        self.kms_duration
            .get_or_create(&OperationLabel {
                operation: operation.clone(),
            })
            .observe(duration.as_secs_f64());
        self.kms_requests
            .get_or_create(&RequestLabels { operation, outcome })
            .inc();
    }

    /// KMS requests of `operation` so far, all outcomes together (run summaries, tests).
    /// Reads only: no series is created for an operation nobody recorded.
    pub fn kms_requests(&self, operation: &'static str) -> u64 {
        [Outcome::Ok, Outcome::Error, Outcome::Throttled]
            .into_iter()
            .filter_map(|outcome| {
                self.kms_requests
                    .get(&RequestLabels {
                        operation: Cow::Borrowed(operation),
                        outcome,
                    })
                    .map(|c| c.get())
            })
            .sum()
    }

    /// One retried request.
    pub fn retry(&self, service: Service, reason: RetryReason) {
        self.retries
            .get_or_create(&RetryLabels { service, reason })
            .inc();
    }

    /// Sets `s3cse_rekey_last_success_timestamp_seconds` to now. Alerts fire on
    /// `time() - s3cse_rekey_last_success_timestamp_seconds > 2 * period`.
    pub fn mark_success(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.last_success.set(now);
        self.succeeded.store(true, Ordering::Release);
    }

    /// OpenMetrics text exposition, ending in `# EOF`; serve it with
    /// [`OPENMETRICS_CONTENT_TYPE`].
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text;
        let mut out = String::with_capacity(16 * 1024);
        let mut encode = || {
            text::encode_registry(&mut out, &self.registry)?;
            if self.succeeded.load(Ordering::Acquire) {
                text::encode_registry(&mut out, &self.success_registry)?;
            }
            text::encode_eof(&mut out)
        };
        // Writing into a String cannot fail, and no metric of ours has a fallible encoder.
        if encode().is_err() {
            tracing::error!("metrics: OpenMetrics encoding failed");
        }
        out
    }

    /// Prometheus text format 0.0.4 (`# TYPE foo_total counter`, no `# EOF`), the format the
    /// Pushgateway parses; send it with [`PROMETHEUS_TEXT_CONTENT_TYPE`].
    pub fn encode_prometheus_text(&self) -> Result<String, MetricsError> {
        use prometheus_client::encoding::prometheus_text::encode;
        let mut out = String::with_capacity(16 * 1024);
        encode(&mut out, &self.registry)?;
        if self.succeeded.load(Ordering::Acquire) {
            encode(&mut out, &self.success_registry)?;
        }
        Ok(out)
    }

    /// Writes [`Metrics::encode_prometheus_text`] to `path` atomically: a temporary file in the
    /// same directory, fsynced, then renamed over `path`. This is node_exporter's textfile
    /// collector convention for batch jobs (`--collector.textfile.directory`, files `*.prom`):
    /// the collector never reads a half-written file, and the temporary name (`.tmp…`) does
    /// not end in `.prom`, so it is never collected. Blocking I/O of a few KiB.
    pub fn write_textfile(&self, path: &std::path::Path) -> Result<(), MetricsError> {
        write_textfile(&self.encode_prometheus_text()?, path)
    }
}

/// Writes `text` (Prometheus text format) to `path` atomically, as [`Metrics::write_textfile`]
/// says; shared with [`AuditMetrics`].
pub fn write_textfile(text: &str, path: &std::path::Path) -> Result<(), MetricsError> {
    use std::io::Write as _;
    let failed = |source| MetricsError::Textfile {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(failed)?;
    tmp.write_all(text.as_bytes()).map_err(failed)?;
    tmp.as_file().sync_all().map_err(failed)?;
    // NamedTempFile is created 0600; a collector running as another user must read it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let perms = std::fs::Permissions::from_mode(0o644);
        tmp.as_file().set_permissions(perms).map_err(failed)?;
    }
    tmp.persist(path).map_err(|e| failed(e.error))?;
    Ok(())
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Serves `GET /metrics` (OpenMetrics text) on `addr` until `shutdown` completes; any other
/// path is 404. Binding port 0 picks a free port: the bound address is returned with the
/// server's task, which finishes after `shutdown` and the open connections have ended (at
/// most [`SHUTDOWN_GRACE`] later). Connection errors are logged, not returned.
pub async fn serve(
    metrics: Arc<Metrics>,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, JoinHandle<()>), MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let task = tokio::spawn(accept_loop(listener, metrics, shutdown));
    Ok((bound, task))
}

async fn accept_loop(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    // Tells open keep-alive connections to finish their current request and close.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connection tasks so the set doesn't grow with every scrape.
        while connections.try_join_next().is_some() {}
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(
                        stream,
                        peer,
                        metrics.clone(),
                        stop_rx.clone(),
                    ));
                }
                Err(error) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let metrics = metrics.clone();
        async move { Ok::<_, Infallible>(respond(&metrics, &req)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let stopping = async {
        // Drop the watch guard here: it is not Send and must not live across an await.
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let finished = tokio::select! {
        result = conn.as_mut() => Some(result),
        () = stopping => None,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, %peer, "metrics: connection ended with an error");
    }
}

fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, OPENMETRICS_CONTENT_TYPE, metrics.encode()),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found; metrics are at /metrics\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Characters left as they are in a URL path segment (RFC 3986 unreserved).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Pushes the metrics to a Pushgateway with push-add semantics: `POST` replaces only the
/// metrics of the same names in the group `job` + `grouping` (a `PUT` would replace the whole
/// group). `s3cse_rekey_last_success_timestamp_seconds` is sent only after
/// [`Metrics::mark_success`], so a failed run keeps the previous run's success timestamp on
/// the Pushgateway, which is what the staleness alert needs.
///
/// `pushgateway_url` is `http://host:port` (optionally with a path prefix); https is not
/// supported. Label values containing `/` (or empty) are sent base64url-encoded with the
/// Pushgateway's `@base64` suffix.
pub async fn push_add(
    metrics: &Metrics,
    pushgateway_url: &str,
    job: &str,
    grouping: &[(&str, &str)],
) -> Result<(), MetricsError> {
    let body = metrics.encode_prometheus_text()?;
    push_add_text(body, pushgateway_url, job, grouping).await
}

/// [`push_add`] of a body already in Prometheus text format 0.0.4 (shared with
/// [`AuditMetrics`]).
pub async fn push_add_text(
    body: String,
    pushgateway_url: &str,
    job: &str,
    grouping: &[(&str, &str)],
) -> Result<(), MetricsError> {
    let uri = push_uri(pushgateway_url, job, grouping)?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE)
        .body(Full::new(Bytes::from(body)))?;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let exchange = async {
        let response = client.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, MetricsError>((status, body))
    };
    let (status, body) = tokio::time::timeout(PUSH_TIMEOUT, exchange)
        .await
        .map_err(|_| MetricsError::Timeout(PUSH_TIMEOUT))??;
    if status.is_success() {
        Ok(())
    } else {
        let body = String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned();
        Err(MetricsError::Rejected {
            status: status.as_u16(),
            body,
        })
    }
}

/// `{url}/metrics/job/{job}/{label}/{value}...`, each value encoded as the Pushgateway expects.
fn push_uri(
    pushgateway_url: &str,
    job: &str,
    grouping: &[(&str, &str)],
) -> Result<String, MetricsError> {
    let lower = pushgateway_url.to_ascii_lowercase();
    if !lower.starts_with("http://") || pushgateway_url.len() <= "http://".len() {
        return Err(MetricsError::UnsupportedUrl(pushgateway_url.to_owned()));
    }
    let mut uri = pushgateway_url.trim_end_matches('/').to_owned();
    uri.push_str("/metrics");
    push_segment(&mut uri, "job", job);
    for (name, value) in grouping {
        if !valid_label_name(name) {
            return Err(MetricsError::InvalidLabelName((*name).to_owned()));
        }
        push_segment(&mut uri, name, value);
    }
    Ok(uri)
}

fn push_segment(uri: &mut String, name: &str, value: &str) {
    if value.is_empty() || value.contains('/') {
        let encoded = base64::engine::general_purpose::URL_SAFE.encode(value);
        // The Pushgateway's spelling of an empty value is a lone "=".
        let encoded = if encoded.is_empty() {
            "=".to_owned()
        } else {
            encoded
        };
        let _ = write!(uri, "/{name}@base64/{encoded}");
    } else {
        let _ = write!(uri, "/{name}/{}", utf8_percent_encode(value, PATH_SEGMENT));
    }
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, and not `__`-prefixed (reserved).
fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// The gauges of one `s3cse audit` run, in their own registry (an audit is not a rekey: none of
/// the rekey families would mean anything in its push). Names are a contract with the chart's
/// alert rule:
///
/// | name | type | labels |
/// |---|---|---|
/// | `s3cse_audit_objects` | gauge | `class` = plaintext, current, remaining |
/// | `s3cse_audit_bytes` | gauge | `class` |
/// | `s3cse_audit_remaining_objects` | gauge | `reason` (the audit's reason names) |
/// | `s3cse_audit_last_run_timestamp_seconds` | gauge | |
///
/// Every class and reason is set, zeros included, so a push-add replaces the previous run's
/// values whole.
#[derive(Debug)]
pub struct AuditMetrics {
    registry: Registry,
    objects: Family<ClassLabel, Gauge>,
    bytes: Family<ClassLabel, Gauge>,
    remaining: Family<ReasonLabel, Gauge>,
    last_run: Gauge<f64, std::sync::atomic::AtomicU64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

impl Default for AuditMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let objects = Family::<ClassLabel, Gauge>::default();
        registry.register(
            "s3cse_audit_objects",
            "Objects by audit class (last run)",
            objects.clone(),
        );
        let bytes = Family::<ClassLabel, Gauge>::default();
        registry.register(
            "s3cse_audit_bytes",
            "Stored bytes by audit class (last run)",
            bytes.clone(),
        );
        let remaining = Family::<ReasonLabel, Gauge>::default();
        registry.register(
            "s3cse_audit_remaining_objects",
            "Objects that still depend on something other than the target key, by reason (last run)",
            remaining.clone(),
        );
        let last_run = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "s3cse_audit_last_run_timestamp_seconds",
            "When the last complete audit ended (Unix time)",
            last_run.clone(),
        );
        AuditMetrics {
            registry,
            objects,
            bytes,
            remaining,
            last_run,
        }
    }
}

impl AuditMetrics {
    /// Objects and bytes of one class (`plaintext`, `current`, `remaining`).
    pub fn set_class(&self, class: &'static str, objects: u64, bytes: u64) {
        let l = ClassLabel { class };
        self.objects.get_or_create(&l).set(saturating_i64(objects));
        self.bytes.get_or_create(&l).set(saturating_i64(bytes));
    }

    /// Remaining objects of one reason.
    pub fn set_remaining(&self, reason: &'static str, objects: u64) {
        self.remaining
            .get_or_create(&ReasonLabel { reason })
            .set(saturating_i64(objects));
    }

    /// Sets `s3cse_audit_last_run_timestamp_seconds` to now (call once the census is complete).
    pub fn mark_run(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.last_run.set(now);
    }

    /// Prometheus text format 0.0.4, for [`push_add_text`] and [`write_textfile`].
    pub fn encode_prometheus_text(&self) -> Result<String, MetricsError> {
        let mut out = String::with_capacity(2048);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The exposition names of the contract with the Grafana dashboard and alert rules (sample
/// names: counters with `_total`, histograms as their base name). Keep in step with the table
/// in the module doc.
pub const METRIC_NAMES: [&str; 14] = [
    "s3cse_rekey_objects_total",
    "s3cse_rekey_bytes_total",
    "s3cse_rekey_queue_objects",
    "s3cse_rekey_queue_bytes",
    "s3cse_rekey_object_duration_seconds",
    "s3cse_rekey_object_size_bytes",
    "s3cse_s3_requests_total",
    "s3cse_s3_request_duration_seconds",
    "s3cse_kms_requests_total",
    "s3cse_kms_request_duration_seconds",
    "s3cse_rekey_retries_total",
    "s3cse_rekey_last_success_timestamp_seconds",
    "s3cse_build_info",
    "s3cse_rekey_noncurrent_versions",
];

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    use super::*;
    use crate::store::Tally;

    /// Metric names of the sample lines, histogram suffixes folded into the base name.
    fn sample_names(text: &str) -> BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let name = l.split(['{', ' ']).next().unwrap();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| {
                        name.strip_suffix(s)
                            .filter(|b| b.ends_with("_seconds") || b.ends_with("_bytes"))
                    })
                    .unwrap_or(name);
                base.to_owned()
            })
            .collect()
    }

    fn exercised() -> Metrics {
        let m = Metrics::new("1.2.3");
        m.object_done(
            ObjectResult::Rewritten,
            Action::Rewrite,
            4096,
            Duration::from_millis(250),
        );
        m.set_queue(&StateCounts {
            pending: Tally {
                objects: 7,
                bytes: 7000,
            },
            ..StateCounts::default()
        });
        m.s3_request(
            "PutObject",
            Outcome::PreconditionFailed,
            Duration::from_millis(30),
        );
        m.kms_request("GenerateDataKey", Outcome::Ok, Duration::from_millis(5));
        m.retry(Service::Kms, RetryReason::Throttled);
        m.mark_success();
        m
    }

    #[test]
    fn exposition_contains_every_contract_name() {
        let m = exercised();
        let text = m.encode();
        let names = sample_names(&text);
        for name in METRIC_NAMES {
            assert!(names.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
        for line in [
            "s3cse_rekey_objects_total{result=\"rewritten\"} 1",
            "s3cse_rekey_objects_total{result=\"conflict\"} 0",
            "s3cse_rekey_bytes_total{result=\"rewritten\"} 4096",
            "s3cse_rekey_queue_objects{state=\"pending\"} 7",
            "s3cse_rekey_queue_bytes{state=\"pending\"} 7000",
            "s3cse_rekey_queue_objects{state=\"conflict\"} 0",
            "s3cse_rekey_object_duration_seconds_count{action=\"rewrite\"} 1",
            "s3cse_rekey_object_size_bytes_count 1",
            "s3cse_rekey_object_size_bytes_bucket{le=\"1024.0\"} 0",
            "s3cse_rekey_object_size_bytes_bucket{le=\"4096.0\"} 1",
            "s3cse_rekey_object_size_bytes_bucket{le=\"8589934592.0\"} 1",
            "s3cse_s3_requests_total{operation=\"PutObject\",outcome=\"precondition_failed\"} 1",
            "s3cse_s3_request_duration_seconds_count{operation=\"PutObject\"} 1",
            "s3cse_kms_requests_total{operation=\"GenerateDataKey\",outcome=\"ok\"} 1",
            "s3cse_kms_request_duration_seconds_count{operation=\"GenerateDataKey\"} 1",
            "s3cse_rekey_retries_total{service=\"kms\",reason=\"throttled\"} 1",
            "s3cse_build_info{version=\"1.2.3\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        let ts: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("s3cse_rekey_last_success_timestamp_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now - ts).abs() < 60.0, "{ts} vs {now}");

        // The Pushgateway flavour: same samples, `_total` on counter TYPE lines, no EOF.
        let prom = m.encode_prometheus_text().unwrap();
        assert_eq!(sample_names(&prom), names);
        assert!(
            prom.contains("# TYPE s3cse_rekey_objects_total counter\n"),
            "{prom}"
        );
        assert!(
            prom.contains("# TYPE s3cse_rekey_object_size_bytes histogram\n"),
            "{prom}"
        );
        assert!(!prom.contains("# EOF"), "{prom}");
        assert!(!prom.contains("# UNIT"), "{prom}");
    }

    #[test]
    fn kms_requests_sums_outcomes_without_creating_series() {
        let m = Metrics::new("dev");
        assert_eq!(m.kms_requests("Decrypt"), 0);
        assert!(!m.encode().contains("operation=\"Decrypt\""));
        m.kms_request("Decrypt", Outcome::Ok, Duration::ZERO);
        m.kms_request("Decrypt", Outcome::Throttled, Duration::ZERO);
        m.kms_request("DescribeKey", Outcome::Ok, Duration::ZERO);
        assert_eq!(m.kms_requests("Decrypt"), 2);
        assert_eq!(m.kms_requests("DescribeKey"), 1);
        assert_eq!(m.kms_requests("Encrypt"), 0);
    }

    #[test]
    fn unclassified_objects_count_without_a_duration() {
        let m = Metrics::new("dev");
        m.object_unclassified(ObjectResult::Failed, 10);
        let text = m.encode();
        assert!(text.contains("s3cse_rekey_objects_total{result=\"failed\"} 1"));
        assert!(text.contains("s3cse_rekey_bytes_total{result=\"failed\"} 10"));
        assert!(text.contains("s3cse_rekey_object_size_bytes_count 1"));
        assert!(text.contains("s3cse_rekey_retries_total{service=\"s3\",reason=\"conflict\"} 0"));
        for action in ["rewrite", "rewrap", "skip"] {
            let line =
                format!("s3cse_rekey_object_duration_seconds_count{{action=\"{action}\"}} 0");
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn write_textfile_replaces_the_file_atomically_with_prometheus_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s3cse.prom");
        std::fs::write(&path, "stale").unwrap();
        let m = exercised();
        m.write_textfile(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            m.encode_prometheus_text().unwrap()
        );
        // Only the target is left: the temporary file was renamed, not copied.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("s3cse.prom")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
        let missing = dir.path().join("no/such/dir/s3cse.prom");
        assert!(matches!(
            m.write_textfile(&missing),
            Err(MetricsError::Textfile { .. })
        ));
    }

    #[test]
    fn last_success_only_after_mark_success() {
        let m = Metrics::new("dev");
        assert!(!m.encode().contains("last_success"));
        assert!(!m.encode_prometheus_text().unwrap().contains("last_success"));
        m.mark_success();
        assert!(
            m.encode()
                .contains("s3cse_rekey_last_success_timestamp_seconds ")
        );
        assert!(
            m.encode_prometheus_text()
                .unwrap()
                .contains("s3cse_rekey_last_success_timestamp_seconds ")
        );
    }

    /// A raw HTTP/1.1 request; returns the whole response text.
    async fn raw_get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serve_answers_get_metrics_and_404() {
        let metrics = Arc::new(exercised());
        let (stop, stopped) = oneshot::channel::<()>();
        let (addr, task) = serve(metrics.clone(), "127.0.0.1:0".parse().unwrap(), async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        assert_ne!(addr.port(), 0);

        let response = raw_get(addr, "/metrics").await;
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-type: {OPENMETRICS_CONTENT_TYPE}")),
            "{head}"
        );
        assert!(body.contains("s3cse_rekey_objects_total{result=\"rewritten\"} 1"));
        assert!(body.ends_with("# EOF\n"));

        let response = raw_get(addr, "/").await;
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");

        // A keep-alive connection left open must not hold the shutdown up.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(idle.read(&mut buf).await.unwrap() > 0);

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[derive(Debug, Clone)]
    struct Recorded {
        method: String,
        path: String,
        content_type: String,
        body: String,
    }

    /// A one-route hyper server standing in for a Pushgateway: records each request and answers
    /// with `status`.
    async fn fake_pushgateway(status: StatusCode) -> (SocketAddr, Arc<Mutex<Vec<Recorded>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let log = log.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_owned();
                            let content_type = req
                                .headers()
                                .get(header::CONTENT_TYPE)
                                .map(|v| v.to_str().unwrap().to_owned())
                                .unwrap_or_default();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            log.lock().unwrap().push(Recorded {
                                method,
                                path,
                                content_type,
                                body: String::from_utf8(body.to_vec()).unwrap(),
                            });
                            let mut response = Response::new(Full::new(Bytes::from("nope")));
                            *response.status_mut() = status;
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn push_add_posts_prometheus_text_to_the_group() {
        let (addr, seen) = fake_pushgateway(StatusCode::OK).await;
        let metrics = exercised();
        push_add(
            &metrics,
            &format!("http://{addr}/"),
            "s3cse-rekey",
            &[
                ("bucket", "my bucket"),
                ("prefix", "logs/2026/"),
                ("shard", ""),
            ],
        )
        .await
        .unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        let r = &seen[0];
        assert_eq!(r.method, "POST");
        assert_eq!(
            r.path,
            "/metrics/job/s3cse-rekey/bucket/my%20bucket/prefix@base64/bG9ncy8yMDI2Lw==/shard@base64/="
        );
        assert_eq!(r.content_type, PROMETHEUS_TEXT_CONTENT_TYPE);
        assert_eq!(r.body, metrics.encode_prometheus_text().unwrap());
        assert!(r.body.contains("# TYPE s3cse_rekey_objects_total counter"));
    }

    /// Against a real Pushgateway (Debian's `prometheus-pushgateway`): run
    /// `prometheus-pushgateway --web.listen-address=127.0.0.1:9091` and
    /// `S3CSE_TEST_PUSHGATEWAY=http://127.0.0.1:9091 cargo test --lib metrics:: -- --ignored`.
    #[tokio::test]
    #[ignore = "needs a Pushgateway; set S3CSE_TEST_PUSHGATEWAY"]
    async fn push_add_to_a_real_pushgateway() {
        let Ok(url) = std::env::var("S3CSE_TEST_PUSHGATEWAY") else {
            return;
        };
        let metrics = exercised();
        let grouping = [("bucket", "b1"), ("prefix", "logs/")];
        push_add(&metrics, &url, "s3cse-test", &grouping)
            .await
            .unwrap();
        // Push-add again from a run that never succeeded: the timestamp must survive.
        let failed_run = Metrics::new("1.2.3");
        failed_run.object_done(ObjectResult::Failed, Action::Rewrite, 1, Duration::ZERO);
        push_add(&failed_run, &url, "s3cse-test", &grouping)
            .await
            .unwrap();

        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Full<Bytes>>();
        let uri: hyper::Uri = format!("{url}/metrics").parse().unwrap();
        let response = client.get(uri).await.unwrap();
        assert!(response.status().is_success());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        let ours: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("job=\"s3cse-test\""))
            .collect();
        let names = sample_names(&ours.join("\n"));
        for name in METRIC_NAMES {
            assert!(
                names.contains(name),
                "{name} missing from\n{}",
                ours.join("\n")
            );
        }
        assert!(
            ours.iter()
                .any(|l| l.starts_with("s3cse_rekey_objects_total{")
                    && l.contains("result=\"failed\"")
                    && l.ends_with(" 1")),
            "{ours:#?}"
        );
        assert!(
            ours.iter()
                .any(|l| l.starts_with("s3cse_rekey_last_success_timestamp_seconds{")),
            "{ours:#?}"
        );
        assert!(text.contains("# TYPE s3cse_rekey_objects_total counter"));
    }

    #[tokio::test]
    async fn push_add_reports_rejection_and_bad_urls() {
        let (addr, _seen) = fake_pushgateway(StatusCode::BAD_REQUEST).await;
        let metrics = Metrics::new("dev");
        let err = push_add(&metrics, &format!("http://{addr}"), "j", &[])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, MetricsError::Rejected { status: 400, body } if body == "nope"),
            "{err:?}"
        );
        for url in ["https://pushgateway:9091", "pushgateway:9091", "http://"] {
            assert!(matches!(
                push_add(&metrics, url, "j", &[]).await,
                Err(MetricsError::UnsupportedUrl(_))
            ));
        }
        assert!(matches!(
            push_add(&metrics, "http://127.0.0.1:1", "j", &[("bad-name", "v")]).await,
            Err(MetricsError::InvalidLabelName(_))
        ));
        // Nothing listens on port 1.
        assert!(matches!(
            push_add(&metrics, "http://127.0.0.1:1", "j", &[]).await,
            Err(MetricsError::Request(_))
        ));
    }

    #[test]
    fn audit_gauges_are_exposed_with_their_labels() {
        let m = AuditMetrics::default();
        m.set_class("remaining", 3, 4096);
        m.set_remaining("raw-key", 3);
        m.mark_run();
        let text = m.encode_prometheus_text().unwrap();
        assert!(
            text.contains("s3cse_audit_objects{class=\"remaining\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("s3cse_audit_bytes{class=\"remaining\"} 4096"),
            "{text}"
        );
        assert!(
            text.contains("s3cse_audit_remaining_objects{reason=\"raw-key\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE s3cse_audit_last_run_timestamp_seconds gauge"),
            "{text}"
        );
        assert!(!text.contains("s3cse_rekey"), "{text}");
    }
}
