//! Request rate limits (`--s3-rps`, `--kms-rps`): a token bucket per service, shared by every
//! worker of the process, so the limit holds whatever `--concurrency` is.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A shared rate limit; `None` inside means unlimited.
#[derive(Clone, Default)]
pub struct RateLimit(Option<Arc<DefaultDirectRateLimiter>>);

impl RateLimit {
    /// `rps` requests per second (bursts up to one second's worth); `None` or 0: unlimited.
    pub fn per_second(rps: Option<u32>) -> Self {
        Self(
            rps.and_then(NonZeroU32::new)
                .map(|n| Arc::new(RateLimiter::direct(Quota::per_second(n)))),
        )
    }

    /// Waits for one request's token.
    pub async fn wait(&self) {
        if let Some(l) = &self.0 {
            l.until_ready().await;
        }
    }
}
