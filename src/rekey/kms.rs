//! [`RekeyKms`]: the rekey worker's KMS client. Decorates any [`KmsClient`] (in production
//! `keyring::AwsKms`) with a shared rate limit (`--kms-rps`), a bound on the requests in flight
//! (`--concurrency`, [`RekeyKms::with_concurrency`]), retries with jittered exponential backoff
//! on throttling and transient failures, and the `s3cse_kms_requests_total` metrics
//! ([`crate::metrics::Metrics`]).
//!
//! Each logical call counts once per attempt in the metrics, so "one KMS call per rewritten or
//! rewrapped object" can be checked from the `outcome="ok"` series.
//!
//! # Retry budget
//! Retries happen in layers, and layers multiply: the SDK's own retry (standard mode: 3
//! attempts per request), this decorator's [`MAX_ATTEMPTS`], and the worker's attempts per
//! object (5, `worker::MAX_ATTEMPTS`), which re-run the whole object when this decorator gives
//! up. With all three one throttled call could be sent 3 x 6 x 5 = 90 times. So the SDK client
//! this decorator wraps has its retries turned off ([`without_sdk_retries`]): this layer retries
//! instead, because it waits for the shared `--kms-rps` token before each attempt and counts
//! every attempt in the metrics, which the SDK's hidden retries would not. One KMS call of one
//! object is sent at most `MAX_ATTEMPTS` x 5 = 30 times.

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

/// Attempts per KMS call (first try included), the only KMS retry layer below the worker's (the
/// SDK's is off, see [`without_sdk_retries`]). KMS throttling clears within seconds: the five
/// backoffs add up to at most 6.2 s. Beyond this the object attempt fails; the worker retries
/// the object, and a later run retries a failed object.
pub const MAX_ATTEMPTS: u32 = 6;
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
    /// Requests in flight at once (`--concurrency`). KMS is the quota-bound resource of a
    /// migration, S3 the plentiful one: the worker keeps several objects per permit in flight
    /// (`worker::PIPELINE_DEPTH`), so their S3 requests run around the KMS calls and every
    /// permit stays busy. A permit is held for one attempt, not across a retry's backoff.
    in_flight: tokio::sync::Semaphore,
    metrics: Arc<Metrics>,
}

impl RekeyKms {
    /// A client without a bound on requests in flight (see [`Self::with_concurrency`]).
    pub fn new(inner: Arc<dyn KmsClient>, limit: RateLimit, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            limit,
            in_flight: tokio::sync::Semaphore::new(tokio::sync::Semaphore::MAX_PERMITS),
            metrics,
        }
    }

    /// At most `n` (at least 1) requests in flight at once.
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.in_flight =
            tokio::sync::Semaphore::new(n.clamp(1, tokio::sync::Semaphore::MAX_PERMITS));
        self
    }

    async fn call<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T, KmsError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, KmsError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Never closed, so a permit always comes.
            let permit = self.in_flight.acquire().await.ok();
            self.limit.wait().await;
            let t = Instant::now();
            let r = f().await;
            drop(permit);
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

/// `client` with the SDK's retries turned off (one attempt per request), everything else (region,
/// endpoint, credentials, timeouts) kept: the client to wrap in [`RekeyKms`], which retries
/// itself. See the module's retry budget.
pub fn without_sdk_retries(client: &aws_sdk_kms::Client) -> aws_sdk_kms::Client {
    aws_sdk_kms::Client::from_conf(
        client
            .config()
            .to_builder()
            .retry_config(aws_sdk_kms::config::retry::RetryConfig::disabled())
            .build(),
    )
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
    // Key material made and kept by AWS KMS itself: the header of its blobs names a backing
    // key of this key only (rekey::owner). Imported material and custom key stores: not relied on.
    let aws_backed = meta.origin() == Some(&aws_sdk_kms::types::OriginType::AwsKms)
        && meta.custom_key_store_id().is_none()
        && meta.key_spec() == Some(&aws_sdk_kms::types::KeySpec::SymmetricDefault);
    Ok(super::plan::TargetKey {
        key_id: meta.key_id().to_owned(),
        arn: meta.arn().unwrap_or_default().to_owned(),
        aws_backed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicU32, Ordering};

    use aws_sdk_kms::config::retry::RetryConfig;
    use aws_sdk_kms::config::{BehaviorVersion, Region};

    #[test]
    fn backoff_is_bounded() {
        for a in 0..40 {
            assert!(backoff(a) <= MAX_BACKOFF);
        }
    }

    /// A KMS whose calls take 10 ms (of the paused test clock), each failing with `fail` if it
    /// is set; it counts the calls and records the most in flight at once.
    #[derive(Default)]
    struct Stub {
        fail: Option<KmsErrorKind>,
        calls: AtomicU32,
        now: AtomicU32,
        most: AtomicU32,
    }

    impl Stub {
        async fn call(&self) -> Result<Vec<u8>, KmsError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            match self.fail {
                Some(kind) => Err(KmsError::new(kind, "injected")),
                None => Ok(b"blob".to_vec()),
            }
        }
    }

    impl KmsClient for Stub {
        fn generate_data_key<'a>(
            &'a self,
            _: &'a str,
            _: &'a Context,
        ) -> BoxFuture<'a, Result<(SecretBytes, Vec<u8>), KmsError>> {
            Box::pin(async move { self.call().await.map(|b| (SecretBytes::random(32), b)) })
        }

        fn decrypt<'a>(
            &'a self,
            _: Option<&'a str>,
            _: &'a [u8],
            _: &'a Context,
        ) -> BoxFuture<'a, Result<SecretBytes, KmsError>> {
            Box::pin(async move { self.call().await.map(|_| SecretBytes::random(32)) })
        }

        fn encrypt<'a>(
            &'a self,
            _: &'a str,
            _: &'a SecretBytes,
            _: &'a Context,
        ) -> BoxFuture<'a, Result<Vec<u8>, KmsError>> {
            Box::pin(self.call())
        }

        fn re_encrypt<'a>(
            &'a self,
            _: &'a [u8],
            _: &'a Context,
            _: &'a str,
            _: &'a Context,
        ) -> BoxFuture<'a, Result<Vec<u8>, KmsError>> {
            Box::pin(self.call())
        }
    }

    /// Sends one `ReEncrypt` through a [`RekeyKms`] over a KMS failing with `kind`; returns how
    /// many requests reached it.
    async fn attempts_on(kind: KmsErrorKind) -> u32 {
        let inner = Arc::new(Stub {
            fail: Some(kind),
            ..Stub::default()
        });
        let metrics = Arc::new(Metrics::new("test"));
        let kms = RekeyKms::new(inner.clone(), RateLimit::default(), metrics.clone());
        let ctx = Context::new();
        let r = kms.re_encrypt(b"blob", &ctx, "key", &ctx).await;
        assert_eq!(r.map_err(|e| e.kind).err(), Some(kind));
        let calls = inner.calls.load(Ordering::SeqCst);
        assert_eq!(
            metrics.kms_requests("ReEncrypt"),
            u64::from(calls),
            "every attempt is counted"
        );
        calls
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_is_retried_up_to_the_budget_and_no_further() {
        assert_eq!(attempts_on(KmsErrorKind::Throttled).await, MAX_ATTEMPTS);
        assert_eq!(attempts_on(KmsErrorKind::Transient).await, MAX_ATTEMPTS);
        // Retrying would not fix these.
        assert_eq!(attempts_on(KmsErrorKind::AccessDenied).await, 1);
        assert_eq!(attempts_on(KmsErrorKind::InvalidCiphertext).await, 1);
    }

    /// `--concurrency` bounds the KMS requests in flight, whatever the callers (the worker
    /// keeps more objects than that in flight), and every call still goes out.
    #[tokio::test(start_paused = true)]
    async fn concurrency_bounds_the_requests_in_flight() {
        for (bound, expected) in [(Some(3), 3), (None, 20)] {
            let inner = Arc::new(Stub::default());
            let metrics = Arc::new(Metrics::new("test"));
            let kms = RekeyKms::new(inner.clone(), RateLimit::default(), metrics.clone());
            let kms = match bound {
                Some(n) => kms.with_concurrency(n),
                None => kms,
            };
            let ctx = Context::new();
            let calls = (0..20).map(|_| kms.generate_data_key("key", &ctx));
            let done = futures::future::join_all(calls).await;
            assert!(done.iter().all(Result::is_ok));
            assert_eq!(
                inner.most.load(Ordering::SeqCst),
                expected,
                "bound {bound:?}"
            );
            assert_eq!(metrics.kms_requests("GenerateDataKey"), 20);
        }
    }

    #[test]
    fn the_wrapped_sdk_client_does_not_retry() {
        let conf = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .endpoint_url("http://127.0.0.1:4599")
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .build();
        let client = without_sdk_retries(&aws_sdk_kms::Client::from_conf(conf));
        let c = client.config();
        assert_eq!(c.retry_config().map(|r| r.max_attempts()), Some(1));
        assert_eq!(c.region().map(|r| r.as_ref()), Some("eu-west-1"));
    }
}
