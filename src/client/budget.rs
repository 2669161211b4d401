//! [`BufferBudget`]: one byte budget for the part buffers of every upload of an [`S3Cse`]
//! (and its clones), so that many large objects in flight (`rekey --concurrency N`) cannot
//! multiply memory by N.
//!
//! An upload takes a [`PartBuffer`] from the budget before it fills the buffer with ciphertext,
//! and gives the bytes back when that part's upload has finished (the permit travels with the
//! part into its upload task). Small objects take only their own size, so they are not held up
//! behind large ones for longer than one part upload.
//!
//! The budget is counted in KiB (a tokio [`Semaphore`], one permit per KiB): a 1 KiB object does
//! not take a whole MiB of it, and `acquire_many` takes a `u32`, which a byte count would
//! overflow at 4 GiB.
//!
//! [`S3Cse`]: super::S3Cse

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget accounting unit: 1 KiB.
const UNIT: u64 = 1 << 10;

/// Default budget of one [`S3Cse`](super::S3Cse): 64 MiB, room for the 5 buffers
/// (`part_size x (upload_concurrency + 1)`) of one upload at the default 8 MiB parts, 4 in
/// flight, plus 3 parts of a second one, or thousands of small single-PUT objects.
pub const DEFAULT_BUFFER_BUDGET: u64 = 64 << 20;

/// A byte budget shared by every upload of one client (clones share it).
///
/// Whatever the number of uploads in flight, the part buffers they hold at once add up to at
/// most [`BufferBudget::bytes`], with one exception: a single part larger than the whole budget
/// (part sizes grow for objects over `part_size x 10,000`) takes the whole budget, so that the
/// upload can still go on, one part at a time.
///
/// No upload ever waits for the budget while holding part of it for a buffer it has not yet
/// sent (its parts in flight are separate tasks that finish and give their share back), so
/// uploads sharing a budget cannot deadlock, however small the budget.
#[derive(Clone, Debug)]
pub struct BufferBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sem: Arc<Semaphore>,
    units: u32,
    /// Bytes of part buffers allocated now (capacity, not length) and the most ever, for
    /// tests and reports: they say whether the budget held.
    allocated: AtomicU64,
    peak: AtomicU64,
}

impl BufferBudget {
    /// A budget of `bytes` (rounded up to a KiB; at least 1 KiB).
    pub fn new(bytes: u64) -> Self {
        let units = bytes.div_ceil(UNIT).clamp(1, u64::from(u32::MAX)) as u32;
        Self {
            inner: Arc::new(Inner {
                sem: Arc::new(Semaphore::new(units as usize)),
                units,
                allocated: AtomicU64::new(0),
                peak: AtomicU64::new(0),
            }),
        }
    }

    /// The budget, in bytes.
    pub fn bytes(&self) -> u64 {
        u64::from(self.inner.units) * UNIT
    }

    /// Bytes not taken by any buffer right now.
    pub fn available(&self) -> u64 {
        self.inner.sem.available_permits() as u64 * UNIT
    }

    /// The most bytes of part buffers (their allocated capacity) ever held at once: at most
    /// [`Self::bytes`] unless a single part was larger than the whole budget.
    pub fn peak_allocated(&self) -> u64 {
        self.inner.peak.load(Ordering::Relaxed)
    }

    /// Waits until `capacity` bytes of the budget are free (the whole budget if `capacity`
    /// exceeds it), then allocates an empty buffer of that capacity.
    pub(crate) async fn buffer(&self, capacity: usize) -> PartBuffer {
        let want = (capacity as u64)
            .div_ceil(UNIT)
            .clamp(1, u64::from(self.inner.units)) as u32;
        let permit = self
            .inner
            .sem
            .clone()
            .acquire_many_owned(want)
            .await
            .expect("the budget's semaphore is never closed");
        let mut held = Held {
            budget: self.clone(),
            bytes: 0,
            _permit: permit,
        };
        held.account(capacity as u64);
        PartBuffer {
            data: Vec::with_capacity(capacity),
            held,
        }
    }
}

/// A share of the budget and the bytes it accounts for; both are given back on drop.
#[derive(Debug)]
struct Held {
    budget: BufferBudget,
    bytes: u64,
    _permit: OwnedSemaphorePermit,
}

impl Held {
    /// Accounts for `bytes` of allocated capacity (instead of what it held before).
    fn account(&mut self, bytes: u64) {
        let inner = &self.budget.inner;
        if bytes >= self.bytes {
            let now = inner
                .allocated
                .fetch_add(bytes - self.bytes, Ordering::Relaxed)
                + (bytes - self.bytes);
            inner.peak.fetch_max(now, Ordering::Relaxed);
        } else {
            inner
                .allocated
                .fetch_sub(self.bytes - bytes, Ordering::Relaxed);
        }
        self.bytes = bytes;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.account(0);
    }
}

/// A part buffer being filled, holding its share of the budget.
#[derive(Debug)]
pub(crate) struct PartBuffer {
    /// The ciphertext. Allocated once with the capacity that was budgeted; filled without
    /// growing (the encryptor appends at most the bytes it is given, plus its final block/tag,
    /// which the capacity includes).
    pub(crate) data: Vec<u8>,
    held: Held,
}

impl PartBuffer {
    pub(crate) fn len(&self) -> usize {
        self.data.len()
    }

    /// The bytes to upload, and the budget share to keep until the upload has finished. No
    /// copy; if the buffer had to grow past its budgeted capacity, the growth is accounted.
    pub(crate) fn freeze(mut self) -> (Bytes, HeldBudget) {
        self.held.account(self.data.capacity() as u64);
        (Bytes::from(self.data), HeldBudget { _held: self.held })
    }
}

/// A sent part's share of the budget: drop it when the part's upload has finished.
#[derive(Debug)]
pub(crate) struct HeldBudget {
    _held: Held,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn buffers_take_their_capacity_and_give_it_back() {
        let b = BufferBudget::new(10 << 10);
        assert_eq!(b.bytes(), 10 << 10);
        let one = b.buffer(3000).await; // 3 KiB
        let two = b.buffer(1024).await; // 1 KiB
        assert_eq!(b.available(), 6 << 10);
        assert_eq!(one.data.capacity(), 3000);
        drop(one);
        assert_eq!(b.available(), 9 << 10);
        let (bytes, held) = two.freeze();
        assert_eq!(b.available(), 9 << 10, "a sent part keeps its share");
        drop(bytes);
        drop(held);
        assert_eq!(b.available(), 10 << 10);
        assert_eq!(b.peak_allocated(), 3000 + 1024);
    }

    #[tokio::test]
    async fn a_buffer_waits_until_the_budget_has_room() {
        let b = BufferBudget::new(8 << 10);
        let first = b.buffer(6 << 10).await;
        let waiting = {
            let b = b.clone();
            tokio::spawn(async move { b.buffer(4 << 10).await.data.capacity() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "6 + 4 KiB fit in an 8 KiB budget");
        let (_bytes, held) = first.freeze();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "a sent part's share is not free yet"
        );
        drop(held);
        let cap = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the share came back")
            .expect("task");
        assert_eq!(cap, 4 << 10);
        assert!(b.peak_allocated() <= b.bytes(), "{}", b.peak_allocated());
    }

    #[tokio::test]
    async fn a_part_larger_than_the_budget_takes_all_of_it() {
        let b = BufferBudget::new(4 << 10);
        let big = b.buffer(64 << 10).await;
        assert_eq!(b.available(), 0);
        assert_eq!(big.data.capacity(), 64 << 10);
        drop(big);
        assert_eq!(b.available(), 4 << 10);
    }

    #[tokio::test]
    async fn growth_past_the_capacity_is_accounted() {
        let b = BufferBudget::new(1 << 20);
        let mut buf = b.buffer(1024).await;
        buf.data.extend_from_slice(&[0u8; 5000]);
        let (_bytes, _held) = buf.freeze();
        assert!(b.peak_allocated() >= 5000, "{}", b.peak_allocated());
    }

    /// Many tasks sharing a small budget: never more than the budget allocated at once, and
    /// everyone finishes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_takers_stay_within_the_budget() {
        let b = BufferBudget::new(20 << 10);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64usize {
            let b = b.clone();
            tasks.spawn(async move {
                let mut buf = b.buffer(((i % 7) + 1) << 10).await;
                buf.data.push(1);
                let (_bytes, held) = buf.freeze();
                tokio::task::yield_now().await;
                drop(held);
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("task");
        }
        assert!(b.peak_allocated() <= b.bytes(), "{}", b.peak_allocated());
        assert_eq!(b.available(), b.bytes());
    }
}
