//! Request rate limits (`--s3-rps`, `--kms-rps`): a token bucket per service, shared by every
//! worker of the process, so the limit holds whatever `--concurrency` is.
//!
//! With a PostgreSQL state the limit is for the whole run: each of N live processes takes
//! `1/N` of it ([`RateLimit::set_share`], from `store::LiveProcesses`, re-read every
//! [`SHARE_REFRESH`]).

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// How often a process re-counts the live processes of a shared run: how long a joining or
/// leaving process can leave the others on the old share (the drift, README "Many processes").
pub const SHARE_REFRESH: Duration = Duration::from_secs(1);

/// A shared rate limit; `None` inside means unlimited.
#[derive(Clone, Default)]
pub struct RateLimit(Option<Arc<Shared>>);

struct Shared {
    /// The limit of the whole run, requests per second.
    total: NonZeroU32,
    /// (processes sharing it, this process's limiter).
    current: Mutex<(u32, Arc<DefaultDirectRateLimiter>)>,
}

/// `total / processes` requests per second, bursts of one second's worth (at least 1).
fn limiter(total: NonZeroU32, processes: u32) -> Arc<DefaultDirectRateLimiter> {
    let processes = processes.max(1);
    let burst = NonZeroU32::new(total.get() / processes).unwrap_or(NonZeroU32::MIN);
    // One token every processes/total seconds: exact for shares that are not whole numbers.
    let period = Duration::from_secs_f64(f64::from(processes) / f64::from(total.get()));
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(total))
        .allow_burst(burst);
    Arc::new(RateLimiter::direct(quota))
}

impl RateLimit {
    /// `rps` requests per second (bursts up to one second's worth); `None` or 0: unlimited.
    pub fn per_second(rps: Option<u32>) -> Self {
        Self(rps.and_then(NonZeroU32::new).map(|total| {
            Arc::new(Shared {
                total,
                current: Mutex::new((1, limiter(total, 1))),
            })
        }))
    }

    /// This process is one of `processes` sharing the limit: from now on it takes `1/processes`
    /// of it. A no-op when unlimited or unchanged.
    pub fn set_share(&self, processes: u32) {
        self.share_among(processes, false);
    }

    /// The first [`set_share`](Self::set_share) of a process joining a shared run: its bucket
    /// starts empty, so processes starting together do not each burst a second's worth.
    pub fn join_share(&self, processes: u32) {
        self.share_among(processes, true);
    }

    fn share_among(&self, processes: u32, joining: bool) {
        let Some(shared) = &self.0 else { return };
        let processes = processes.max(1);
        let mut current = shared
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if joining || current.0 != processes {
            // A new bucket starts empty: a change of share must not hand out a fresh burst
            // (every process of a run starting together would otherwise burst at once).
            let l = limiter(shared.total, processes);
            let burst = NonZeroU32::new(shared.total.get() / processes).unwrap_or(NonZeroU32::MIN);
            let _ = l.check_n(burst);
            *current = (processes, l);
        }
    }

    /// Requests per second this process may make now (`None`: unlimited).
    pub fn share(&self) -> Option<f64> {
        let shared = self.0.as_ref()?;
        let current = shared
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(f64::from(shared.total.get()) / f64::from(current.0))
    }

    /// Waits for one request's token.
    pub async fn wait(&self) {
        if let Some(shared) = &self.0 {
            let l = shared
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .1
                .clone();
            l.until_ready().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_share_divides_the_rate() {
        let l = RateLimit::per_second(Some(100));
        assert_eq!(l.share(), Some(100.0));
        l.set_share(4);
        assert_eq!(l.share(), Some(25.0));
        // 25 a second, and no fresh burst at the change: 25 tokens take about a second.
        let start = std::time::Instant::now();
        for _ in 0..25 {
            l.wait().await;
        }
        assert!(
            start.elapsed() >= Duration::from_millis(900),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(RateLimit::per_second(None).share(), None);
    }
}
