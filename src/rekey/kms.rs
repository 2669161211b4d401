//! [`RekeyKms`]: the rekey worker's KMS client. Decorates any [`KmsClient`] (in production
//! `keyring::AwsKms`) with a shared rate limit (`--kms-rps`), retries with jittered exponential
//! backoff on throttling and transient failures, and the `s3cse_kms_requests_total` metrics
//! ([`crate::metrics::Metrics`]).
//!
//! Each logical call counts once per attempt in the metrics, so "one KMS call per rewritten or
//! rewrapped object" can be checked from the `outcome="ok"` series.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rand::Rng;

use crate::envelope::Context;
use crate::keyring::{KmsClient, KmsError, KmsErrorKind};
use crate::metrics::{Metrics, Outcome, RetryReason, Service};
use crate::secret::SecretBytes;

use super::limit::RateLimit;

/// Attempts per KMS call (first try included). KMS throttling clears within seconds; beyond
/// this the object is failed and a later run retries it.
const MAX_ATTEMPTS: u32 = 6;
/// First backoff; doubles per attempt, full jitter, capped at [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Full-jitter exponential backoff before attempt `attempt` (1-based retries).
pub fn backoff(attempt: u32) -> Duration {
    let cap = BASE_BACKOFF
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF);
    let ms = rand::rng().random_range(0..=cap.as_millis() as u64);
    Duration::from_millis(ms)
}

/// The decorated client.
pub struct RekeyKms {
    inner: Arc<dyn KmsClient>,
    limit: RateLimit,
    metrics: Arc<Metrics>,
}

impl RekeyKms {
    pub fn new(inner: Arc<dyn KmsClient>, limit: RateLimit, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            limit,
            metrics,
        }
    }

    async fn call<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T, KmsError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, KmsError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.limit.wait().await;
            let t = Instant::now();
            let r = f().await;
            // `Transient` is network, timeout or 5xx; the SDK does not say which, so all of
            // them count as `server_error`.
            let (outcome, retry_reason) = match &r {
                Ok(_) => (Outcome::Ok, None),
                Err(e) if e.kind == KmsErrorKind::Throttled => {
                    (Outcome::Throttled, Some(RetryReason::Throttled))
                }
                Err(e) if e.kind == KmsErrorKind::Transient => {
                    (Outcome::Error, Some(RetryReason::ServerError))
                }
                Err(_) => (Outcome::Error, None),
            };
            self.metrics.kms_request(operation, outcome, t.elapsed());
            match (r, retry_reason) {
                (Err(e), Some(reason)) if attempt < MAX_ATTEMPTS => {
                    self.metrics.retry(Service::Kms, reason);
                    tracing::debug!(operation, attempt, error = %e, "retrying KMS call");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                (r, _) => return r,
            }
        }
    }
}

impl KmsClient for RekeyKms {
    fn generate_data_key<'a>(
        &'a self,
        key_id: &'a str,
        context: &'a Context,
    ) -> BoxFuture<'a, Result<(SecretBytes, Vec<u8>), KmsError>> {
        Box::pin(self.call("GenerateDataKey", move || {
            self.inner.generate_data_key(key_id, context)
        }))
    }

    fn decrypt<'a>(
        &'a self,
        key_id: Option<&'a str>,
        blob: &'a [u8],
        context: &'a Context,
    ) -> BoxFuture<'a, Result<SecretBytes, KmsError>> {
        Box::pin(self.call("Decrypt", move || self.inner.decrypt(key_id, blob, context)))
    }

    fn encrypt<'a>(
        &'a self,
        key_id: &'a str,
        plaintext: &'a SecretBytes,
        context: &'a Context,
    ) -> BoxFuture<'a, Result<Vec<u8>, KmsError>> {
        Box::pin(self.call("Encrypt", move || {
            self.inner.encrypt(key_id, plaintext, context)
        }))
    }

    fn re_encrypt<'a>(
        &'a self,
        blob: &'a [u8],
        source_context: &'a Context,
        key_id: &'a str,
        context: &'a Context,
    ) -> BoxFuture<'a, Result<Vec<u8>, KmsError>> {
        Box::pin(self.call("ReEncrypt", move || {
            self.inner.re_encrypt(blob, source_context, key_id, context)
        }))
    }
}

/// Resolves the target key once at start (DescribeKey): its id and ARN. An alias resolves to
/// the key behind it. Errors here are configuration/access errors (exit 2).
pub async fn describe_key(
    client: &aws_sdk_kms::Client,
    key_id: &str,
    metrics: &Metrics,
) -> Result<super::plan::TargetKey, KmsError> {
    let t = Instant::now();
    let r = client
        .describe_key()
        .key_id(key_id)
        .send()
        .await
        .map_err(|e| KmsError::from_sdk("DescribeKey", e));
    let outcome = match &r {
        Ok(_) => Outcome::Ok,
        Err(e) if e.kind == KmsErrorKind::Throttled => Outcome::Throttled,
        Err(_) => Outcome::Error,
    };
    metrics.kms_request("DescribeKey", outcome, t.elapsed());
    let out = r?;
    let meta = out.key_metadata().ok_or_else(|| {
        KmsError::new(KmsErrorKind::Other, "DescribeKey returned no key metadata")
    })?;
    Ok(super::plan::TargetKey {
        key_id: meta.key_id().to_owned(),
        arn: meta.arn().unwrap_or_default().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded() {
        for a in 0..40 {
            assert!(backoff(a) <= MAX_BACKOFF);
        }
    }
}
