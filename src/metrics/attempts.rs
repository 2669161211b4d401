//! [`CountAttempts`]: an SDK interceptor that sees every attempt of every request, the retries
//! the SDK makes by itself included.
//!
//! Why: the SDK retries a 503 SlowDown, a 5xx, a timeout or a dropped connection on its own
//! (standard mode: up to 3 attempts), so code that only sees what `send()` returns counts the
//! attempt that finally worked, and throttling is invisible until three attempts in a row fail.
//! Registered on a client ([`count_s3_attempts`], [`count_kms_attempts`]), this counts each
//! attempt where it happens:
//! - S3: every attempt in `s3cse_s3_requests_total{operation,outcome}` and its latency in
//!   `s3cse_s3_request_duration_seconds`;
//! - S3 and KMS: every attempt after the first (an SDK retry) in
//!   `s3cse_rekey_retries_total{service,reason}`, the reason taken from the attempt before it.
//!
//! KMS requests themselves are counted by the caller (`rekey::kms::RekeyKms`, one per attempt,
//! since the rekey KMS client runs with SDK retries off): counting them here too would count
//! each twice.
//!
//! Hooks (aws-smithy-runtime-api `Intercept`): `read_before_attempt` notes the start and, for a
//! retry, counts it; `read_after_attempt` classifies the attempt from its HTTP status (or its
//! error when there was no response) and keeps the outcome in the request's config bag for the
//! next attempt to read.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};

use super::{Metrics, Outcome, Service};

/// The interceptor; one per client, cheap to clone.
#[derive(Clone)]
pub struct CountAttempts {
    metrics: Arc<Metrics>,
    service: Service,
}

impl fmt::Debug for CountAttempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountAttempts")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// When the current attempt started.
#[derive(Debug, Clone, Copy)]
struct AttemptStart(Instant);

impl Storable for AttemptStart {
    type Storer = StoreReplace<Self>;
}

/// How the previous attempt of this request ended.
#[derive(Debug, Clone, Copy)]
struct LastOutcome(Outcome);

impl Storable for LastOutcome {
    type Storer = StoreReplace<Self>;
}

impl CountAttempts {
    /// Counts into `metrics` the attempts of a client of `service`.
    pub fn new(metrics: Arc<Metrics>, service: Service) -> Self {
        Self { metrics, service }
    }
}

/// `client` with a [`CountAttempts`] added (same configuration otherwise).
pub fn count_s3_attempts(client: &aws_sdk_s3::Client, metrics: Arc<Metrics>) -> aws_sdk_s3::Client {
    let conf = client
        .config()
        .to_builder()
        .interceptor(CountAttempts::new(metrics, Service::S3))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// `client` with a [`CountAttempts`] added (same configuration otherwise).
pub fn count_kms_attempts(
    client: &aws_sdk_kms::Client,
    metrics: Arc<Metrics>,
) -> aws_sdk_kms::Client {
    let conf = client
        .config()
        .to_builder()
        .interceptor(CountAttempts::new(metrics, Service::Kms))
        .build();
    aws_sdk_kms::Client::from_conf(conf)
}

/// The outcome of an attempt that got an HTTP answer. `code` is the error code when known (S3
/// sends `SlowDown` with 503, KMS `ThrottlingException` with 400).
pub fn classify_status(status: u16, code: Option<&str>) -> Outcome {
    match (status, code) {
        (
            _,
            Some(
                "SlowDown"
                | "Throttling"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "TooManyRequestsException",
            ),
        )
        | (503 | 429, _) => Outcome::Throttled,
        (_, Some("RequestTimeout")) | (408, _) => Outcome::Timeout,
        (200..=399, _) => Outcome::Ok,
        (404, _) => Outcome::NotFound,
        (412, _) | (409, Some("ConditionalRequestConflict")) => Outcome::PreconditionFailed,
        (500..=599, _) => Outcome::ServerError,
        _ => Outcome::Error,
    }
}

/// The error code of a failed attempt when a header carries it (AWS JSON services such as KMS
/// may send `x-amzn-ErrorType: ThrottlingException:...`). S3 puts its code only in the body,
/// which the SDK has consumed by now; its status says enough (503 is throttling).
fn error_code(ctx: &FinalizerInterceptorContextRef<'_>) -> Option<String> {
    let value = ctx.response()?.headers().get("x-amzn-errortype")?;
    let code = value.split(':').next().unwrap_or(value);
    Some(code.rsplit('#').next().unwrap_or(code).to_owned())
}

fn classify_attempt(ctx: &FinalizerInterceptorContextRef<'_>) -> Outcome {
    if let Some(resp) = ctx.response() {
        let code = error_code(ctx);
        return classify_status(resp.status().as_u16(), code.as_deref());
    }
    match ctx.output_or_error() {
        Some(Err(e)) if e.is_timeout_error() => Outcome::Timeout,
        Some(Err(e)) => match e.as_connector_error() {
            Some(c) if c.is_timeout() => Outcome::Timeout,
            Some(_) => Outcome::NetworkError,
            None => Outcome::Error,
        },
        _ => Outcome::Error,
    }
}

impl Intercept for CountAttempts {
    fn name(&self) -> &'static str {
        "s3cse::CountAttempts"
    }

    fn read_before_attempt(
        &self,
        _ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let attempt = cfg.load::<RequestAttempts>().map_or(1, |a| a.attempts());
        if attempt > 1 {
            // The SDK retries only what it deems transient; an unknown previous outcome (none
            // recorded) counts as a server error, as the SDK's own classifier would.
            let reason = match cfg.load::<LastOutcome>().map(|o| o.0) {
                Some(o) => o.retry_reason().unwrap_or(match o {
                    // The SDK retries a 4xx only for a throttling (or timeout) error code,
                    // which the body carried where this hook cannot read it.
                    Outcome::Error => super::RetryReason::Throttled,
                    _ => super::RetryReason::ServerError,
                }),
                None => super::RetryReason::ServerError,
            };
            self.metrics.retry(self.service, reason);
        }
        cfg.interceptor_state()
            .store_put(AttemptStart(Instant::now()));
        Ok(())
    }

    fn read_after_attempt(
        &self,
        ctx: &FinalizerInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let outcome = classify_attempt(ctx);
        if self.service == Service::S3 {
            let took = cfg
                .load::<AttemptStart>()
                .map(|s| s.0.elapsed())
                .unwrap_or_default();
            let operation = cfg
                .load::<Metadata>()
                .map_or_else(|| "unknown".to_owned(), |m| m.name().to_owned());
            self.metrics.s3_request(operation, outcome, took);
        }
        cfg.interceptor_state().store_put(LastOutcome(outcome));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes_map_to_outcomes() {
        let cases = [
            (200, None, Outcome::Ok),
            (206, None, Outcome::Ok),
            (304, None, Outcome::Ok),
            (503, Some("SlowDown"), Outcome::Throttled),
            (503, None, Outcome::Throttled),
            (429, None, Outcome::Throttled),
            (400, Some("ThrottlingException"), Outcome::Throttled),
            (400, Some("RequestTimeout"), Outcome::Timeout),
            (500, Some("InternalError"), Outcome::ServerError),
            (502, None, Outcome::ServerError),
            (404, Some("NoSuchKey"), Outcome::NotFound),
            (412, Some("PreconditionFailed"), Outcome::PreconditionFailed),
            (
                409,
                Some("ConditionalRequestConflict"),
                Outcome::PreconditionFailed,
            ),
            (403, Some("AccessDenied"), Outcome::Error),
        ];
        for (status, code, want) in cases {
            assert_eq!(classify_status(status, code), want, "{status} {code:?}");
        }
    }

    #[test]
    fn only_transient_outcomes_are_retried() {
        assert_eq!(
            Outcome::Throttled.retry_reason(),
            Some(super::super::RetryReason::Throttled)
        );
        assert_eq!(Outcome::Ok.retry_reason(), None);
        assert_eq!(Outcome::NotFound.retry_reason(), None);
    }
}
