//! The run's Prometheus metrics (the `prometheus-client` crate: a registry owned by the run, no
//! global state), served on `--metrics-addr` and pushed to a Pushgateway at the end.
//!
//! Names are the contract the Helm chart's dashboard and alerts use (tests/chart/test_chart.py,
//! `METRICS_CONTRACT`): base units, `_total` counters, no object keys in labels.
//!
//! An adapter until `crate::metrics` lands: it only needs `Registry` access to move there.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::client::RequestOutcome;
use crate::store::{JobState, StateCounts};

type Labels = Vec<(&'static str, String)>;
type HistFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn size_histogram() -> Histogram {
    // 1 KiB .. 16 GiB.
    Histogram::new(exponential_buckets(1024.0, 4.0, 13))
}

fn object_duration_histogram() -> Histogram {
    // 5 ms .. ~3 h.
    Histogram::new(exponential_buckets(0.005, 2.0, 22))
}

/// Every metric of a rekey run.
pub struct Telemetry {
    registry: Registry,
    objects: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    queue_objects: Family<Labels, Gauge>,
    queue_bytes: Family<Labels, Gauge>,
    object_duration: HistFamily,
    object_size: Histogram,
    s3_requests: Family<Labels, Counter>,
    s3_duration: HistFamily,
    kms_requests: Family<Labels, Counter>,
    kms_duration: HistFamily,
    retries: Family<Labels, Counter>,
    last_success: Gauge<f64, AtomicU64>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("s3cse");
        let objects = Family::<Labels, Counter>::default();
        let bytes = Family::<Labels, Counter>::default();
        let queue_objects = Family::<Labels, Gauge>::default();
        let queue_bytes = Family::<Labels, Gauge>::default();
        let object_duration: HistFamily = Family::new_with_constructor(object_duration_histogram);
        let object_size = size_histogram();
        let s3_requests = Family::<Labels, Counter>::default();
        let s3_duration: HistFamily = Family::new_with_constructor(latency_histogram);
        let kms_requests = Family::<Labels, Counter>::default();
        let kms_duration: HistFamily = Family::new_with_constructor(latency_histogram);
        let retries = Family::<Labels, Counter>::default();
        let last_success = Gauge::<f64, AtomicU64>::default();
        let build_info = Family::<Labels, Gauge>::default();
        build_info
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_owned())])
            .set(1);

        registry.register(
            "rekey_objects",
            "Objects finished, by result",
            objects.clone(),
        );
        registry.register(
            "rekey_bytes",
            "Bytes of finished objects, by result",
            bytes.clone(),
        );
        registry.register(
            "rekey_queue_objects",
            "Jobs in the state file, by state",
            queue_objects.clone(),
        );
        registry.register(
            "rekey_queue_bytes",
            "Bytes of the jobs in the state file, by state",
            queue_bytes.clone(),
        );
        registry.register(
            "rekey_object_duration_seconds",
            "Time to process one object, by action",
            object_duration.clone(),
        );
        registry.register(
            "rekey_object_size_bytes",
            "Sizes of the objects processed",
            object_size.clone(),
        );
        registry.register(
            "s3_requests",
            "S3 requests, by operation and outcome",
            s3_requests.clone(),
        );
        registry.register(
            "s3_request_duration_seconds",
            "S3 request latency, by operation",
            s3_duration.clone(),
        );
        registry.register(
            "kms_requests",
            "KMS requests, by operation and outcome",
            kms_requests.clone(),
        );
        registry.register(
            "kms_request_duration_seconds",
            "KMS request latency, by operation",
            kms_duration.clone(),
        );
        registry.register(
            "rekey_retries",
            "Retries, by service and reason",
            retries.clone(),
        );
        registry.register(
            "rekey_last_success_timestamp_seconds",
            "Unix time the last run finished with every object migrated or rightly skipped",
            last_success.clone(),
        );
        registry.register("build_info", "Build information", build_info);
        // Every series a dashboard or alert reads exists from the start (at 0), so rate() and
        // absent() behave and a scrape always shows the family.
        for (service, reason) in [
            ("s3", "transient"),
            ("s3", "conflict"),
            ("kms", "throttled"),
            ("kms", "transient"),
        ] {
            let _ = retries.get_or_create(&vec![
                ("service", service.to_owned()),
                ("reason", reason.to_owned()),
            ]);
        }
        for result in ["migrated", "skipped", "failed", "conflict"] {
            let l = vec![("result", result.to_owned())];
            let _ = objects.get_or_create(&l);
            let _ = bytes.get_or_create(&l);
        }
        Self {
            registry,
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
        }
    }

    /// One object finished with `result` (`migrated`, `skipped`, `failed`, `conflict`, `planned`).
    pub fn object(&self, result: &'static str, action: &'static str, size: u64, took: Duration) {
        let l = vec![("result", result.to_owned())];
        self.objects.get_or_create(&l).inc();
        self.bytes.get_or_create(&l).inc_by(size);
        self.object_duration
            .get_or_create(&vec![("action", action.to_owned())])
            .observe(took.as_secs_f64());
        self.object_size.observe(size as f64);
    }

    pub fn s3_request(&self, operation: &'static str, outcome: RequestOutcome, took: Duration) {
        let outcome = match outcome {
            RequestOutcome::Ok => "ok",
            RequestOutcome::Error => "error",
            RequestOutcome::Throttled => "throttled",
            RequestOutcome::PreconditionFailed => "precondition_failed",
            RequestOutcome::NotFound => "not_found",
        };
        self.s3_requests
            .get_or_create(&vec![
                ("operation", operation.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
        self.s3_duration
            .get_or_create(&vec![("operation", operation.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// `outcome`: `ok`, `throttled`, `error`.
    pub fn kms_request(&self, operation: &'static str, outcome: &'static str, took: Duration) {
        self.kms_requests
            .get_or_create(&vec![
                ("operation", operation.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
        self.kms_duration
            .get_or_create(&vec![("operation", operation.to_owned())])
            .observe(took.as_secs_f64());
    }

    pub fn retry(&self, service: &'static str, reason: &'static str) {
        self.retries
            .get_or_create(&vec![
                ("service", service.to_owned()),
                ("reason", reason.to_owned()),
            ])
            .inc();
    }

    /// The queue gauges, from the store's counts.
    pub fn queue(&self, counts: &StateCounts) {
        for state in JobState::ALL {
            let t = counts.get(state);
            let l = vec![("state", state.as_str().to_owned())];
            self.queue_objects.get_or_create(&l).set(t.objects as i64);
            self.queue_bytes.get_or_create(&l).set(t.bytes as i64);
        }
    }

    /// The run ended with exit code 0.
    pub fn mark_success(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        self.last_success.set(now);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Sum of `s3cse_kms_requests_total` for `operation` (all outcomes), for summaries and tests.
    pub fn kms_count(&self, operation: &'static str) -> u64 {
        ["ok", "throttled", "error"]
            .iter()
            .map(|o| {
                self.kms_requests
                    .get_or_create(&vec![
                        ("operation", operation.to_owned()),
                        ("outcome", (*o).to_owned()),
                    ])
                    .get()
            })
            .sum()
    }
}

/// Serves `GET /metrics` (any path, in fact) on `addr` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    telemetry: Arc<Telemetry>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let t = telemetry.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = t.render();
                    async move {
                        hyper::Response::builder()
                            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                            .body(Full::new(Bytes::from(body)))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await
                {
                    tracing::debug!(error = %e, "metrics connection");
                }
            });
        }
    }))
}

/// Push-add (HTTP POST: replaces only the metrics pushed, so a failed run keeps the last
/// success timestamp of an earlier one) to `{url}/metrics/job/s3cse-rekey[/shard/I]`.
pub async fn push_add(url: &str, shard: Option<u32>, telemetry: &Telemetry) -> Result<(), String> {
    let mut target = format!("{}/metrics/job/s3cse-rekey", url.trim_end_matches('/'));
    if let Some(i) = shard {
        target.push_str(&format!("/shard/{i}"));
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = hyper::Request::post(&target)
        .header("content-type", "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(telemetry.render())))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(())
}
