//! [`BufferBudget`]: one byte budget for the part buffers of every upload of an [`S3Cse`]
//! (and its clones), so that many large objects in flight (`rekey --concurrency N`) cannot
//! multiply memory by N.
//!
//! An upload takes a [`PartBuffer`] from the budget before it fills the buffer with ciphertext,
//! and gives it back when that part's upload has finished (the share travels with the part
//! into its upload task). Small objects take only their own size, so they are not held up
//! behind large ones for longer than one part upload.
//!
//! Part buffers (1 MiB and more) are reused rather than freed: a finished part's buffer goes
//! to the first upload waiting for one of its size, or is kept for the next part. Freeing an
//! 8 MiB buffer per part and allocating the next one let glibc's arenas keep ~50 MiB more
//! resident with 16 uploads in flight (BENCHMARKS.md, "S3 client memory"); reused buffers are
//! allocated once. Kept buffers still count against the budget, and are freed as soon as a
//! buffer of another size needs the room.
//!
//! Waiters are served first come, first served. The budget is counted in KiB: a 1 KiB object
//! does not take a whole MiB of it.
//!
//! [`S3Cse`]: super::S3Cse

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::oneshot;

/// Budget accounting unit: 1 KiB.
const UNIT: u64 = 1 << 10;

/// Buffers at least this large are kept for reuse; smaller ones (small objects' exact-size
/// buffers, the last few bytes of a tag) are freed.
const REUSE_MIN: usize = 1 << 20;

/// Default budget of one [`S3Cse`](super::S3Cse): 64 MiB, room for the 5 buffers
/// (`part_size x (upload_concurrency + 1)`) of one upload at the default 8 MiB parts, 4 in
/// flight, plus 2 parts of a second one, or thousands of small single-PUT objects.
pub const DEFAULT_BUFFER_BUDGET: u64 = 64 << 20;

/// A byte budget shared by every upload of one client (clones share it).
///
/// Whatever the number of uploads in flight, the part buffers they hold at once (filling,
/// uploading, or kept for reuse) add up to at most [`BufferBudget::bytes`], with one exception:
/// a single part larger than the whole budget (part sizes grow for objects over
/// `part_size x 10,000`) takes the whole budget, so that the upload can still go on, one part
/// at a time.
///
/// No upload ever waits for the budget while holding part of it for a buffer it has not yet
/// sent (its parts in flight are separate tasks that finish and give their share back), so
/// uploads sharing a budget cannot deadlock, however small the budget.
#[derive(Clone)]
pub struct BufferBudget {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BufferBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferBudget")
            .field("bytes", &self.bytes())
            .field("available", &self.available())
            .finish()
    }
}

struct Inner {
    units: u64,
    state: Mutex<State>,
    /// Bytes of part buffers allocated now (capacity, not length; kept ones included) and the
    /// most ever, for tests and reports: they say whether the budget held.
    allocated: AtomicU64,
    peak: AtomicU64,
}

struct State {
    /// Units neither held by a buffer nor kept with one.
    free: u64,
    /// Empty buffers kept for reuse, each still holding its share.
    kept: Vec<Vec<u8>>,
    waiters: VecDeque<Waiter>,
}

struct Waiter {
    capacity: usize,
    units: u64,
    tx: oneshot::Sender<Grant>,
}

/// What a waiter is given: a kept buffer of its size, or room (its units) to allocate one.
enum Grant {
    Buffer(Vec<u8>),
    Room,
}

impl BufferBudget {
    /// A budget of `bytes` (rounded up to a KiB; at least 1 KiB).
    pub fn new(bytes: u64) -> Self {
        let units = bytes.div_ceil(UNIT).max(1);
        Self {
            inner: Arc::new(Inner {
                units,
                state: Mutex::new(State {
                    free: units,
                    kept: Vec::new(),
                    waiters: VecDeque::new(),
                }),
                allocated: AtomicU64::new(0),
                peak: AtomicU64::new(0),
            }),
        }
    }

    /// The budget, in bytes.
    pub fn bytes(&self) -> u64 {
        self.inner.units * UNIT
    }

    /// Bytes not taken by any buffer right now (buffers kept for reuse count as taken).
    pub fn available(&self) -> u64 {
        self.state().free * UNIT
    }

    /// Bytes of the empty buffers kept for reuse (part of the budget taken).
    pub fn kept(&self) -> u64 {
        let st = self.state();
        st.kept
            .iter()
            .map(|b| self.units_of(b.capacity()))
            .sum::<u64>()
            * UNIT
    }

    /// The most bytes of part buffers (their allocated capacity) ever held at once: at most
    /// [`Self::bytes`] unless a single part was larger than the whole budget.
    pub fn peak_allocated(&self) -> u64 {
        self.inner.peak.load(Ordering::Relaxed)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the lock is held leaves the counts as they were: go on with them.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn units_of(&self, capacity: usize) -> u64 {
        (capacity as u64).div_ceil(UNIT).clamp(1, self.inner.units)
    }

    /// Waits until `capacity` bytes of the budget are free (the whole budget if `capacity`
    /// exceeds it), then returns an empty buffer of that capacity: a kept one if there is one
    /// of that size, a new one otherwise.
    pub(crate) async fn buffer(&self, capacity: usize) -> PartBuffer {
        let units = self.units_of(capacity);
        let rx = {
            let mut st = self.state();
            while st.waiters.front().is_some_and(|w| w.tx.is_closed()) {
                st.waiters.pop_front();
            }
            if st.waiters.is_empty() {
                if let Some(i) = st.kept.iter().position(|b| b.capacity() == capacity) {
                    let data = st.kept.swap_remove(i);
                    return self.share(data, units);
                }
                if self.make_room(&mut st, units) {
                    st.free -= units;
                    drop(st);
                    return self.allocate(capacity, units);
                }
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(Waiter {
                capacity,
                units,
                tx,
            });
            rx
        };
        // If this future is dropped while waiting, a grant sent meanwhile is given back.
        let mut waiting = Waiting {
            budget: self,
            rx: Some(rx),
            units,
        };
        let grant = match waiting.rx.as_mut() {
            Some(rx) => rx.await,
            None => unreachable!("set above"),
        };
        waiting.rx = None;
        match grant {
            Ok(Grant::Buffer(data)) => self.share(data, units),
            Ok(Grant::Room) => self.allocate(capacity, units),
            Err(_) => unreachable!("a waiter is only dropped from the queue once it is closed"),
        }
    }

    /// Frees kept buffers until `units` are free; false if even all of them are not enough.
    fn make_room(&self, st: &mut State, units: u64) -> bool {
        let kept: u64 = st.kept.iter().map(|b| self.units_of(b.capacity())).sum();
        if st.free + kept < units {
            return false;
        }
        while st.free < units {
            let Some(b) = st.kept.pop() else { break };
            st.free += self.units_of(b.capacity());
            self.freed(b.capacity() as u64);
        }
        true
    }

    fn allocate(&self, capacity: usize, units: u64) -> PartBuffer {
        let now = self
            .inner
            .allocated
            .fetch_add(capacity as u64, Ordering::Relaxed)
            + capacity as u64;
        self.inner.peak.fetch_max(now, Ordering::Relaxed);
        self.share(Vec::with_capacity(capacity), units)
    }

    fn share(&self, data: Vec<u8>, units: u64) -> PartBuffer {
        let bytes = data.capacity() as u64;
        PartBuffer {
            data,
            share: Some(Share {
                budget: self.clone(),
                units,
                bytes,
            }),
        }
    }

    fn freed(&self, bytes: u64) {
        self.inner.allocated.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Gives a share back, with its buffer if that can be reused: to the waiters first, in
    /// order, then kept.
    fn give_back(&self, buf: Option<Vec<u8>>, units: u64, bytes: u64) {
        let mut st = self.state();
        // Reuse only a buffer whose share covers it exactly (not one that grew, nor a part
        // larger than the whole budget).
        let mut buf = match buf {
            Some(mut b)
                if b.capacity() >= REUSE_MIN
                    && b.capacity() as u64 == bytes
                    && self.units_of(b.capacity()) == units
                    && units * UNIT >= bytes =>
            {
                b.clear();
                Some(b)
            }
            other => {
                drop(other);
                self.freed(bytes);
                st.free += units;
                None
            }
        };
        while let Some(w) = st.waiters.front() {
            if w.tx.is_closed() {
                st.waiters.pop_front();
                continue;
            }
            if buf.as_ref().is_some_and(|b| b.capacity() == w.capacity) {
                let Some(w) = st.waiters.pop_front() else {
                    break;
                };
                if let Err(Grant::Buffer(b)) =
                    w.tx.send(Grant::Buffer(buf.take().unwrap_or_default()))
                {
                    buf = Some(b);
                }
                continue;
            }
            // Room for the first waiter, freeing the returned buffer and kept ones if need be.
            let want = w.units;
            if let Some(b) = buf.take() {
                st.kept.push(b);
            }
            if !self.make_room(&mut st, want) {
                break;
            }
            let Some(w) = st.waiters.pop_front() else {
                break;
            };
            st.free -= want;
            if w.tx.send(Grant::Room).is_err() {
                st.free += want;
            }
        }
        if let Some(b) = buf {
            st.kept.push(b);
        }
    }
}

/// A queued [`BufferBudget::buffer`]: dropped before its grant was taken, it gives the grant
/// back.
struct Waiting<'a> {
    budget: &'a BufferBudget,
    rx: Option<oneshot::Receiver<Grant>>,
    units: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        rx.close();
        match rx.try_recv() {
            Ok(Grant::Buffer(b)) => {
                let bytes = b.capacity() as u64;
                self.budget.give_back(Some(b), self.units, bytes);
            }
            Ok(Grant::Room) => self.budget.give_back(None, self.units, 0),
            Err(_) => {}
        }
    }
}

/// A share of the budget: `units` and the `bytes` of buffer it accounts for. Given back on
/// drop (the buffer itself freed), or with its buffer for reuse by [`Share::give_back`].
struct Share {
    budget: BufferBudget,
    units: u64,
    bytes: u64,
}

impl Share {
    fn give_back(mut self, buf: Option<Vec<u8>>) {
        let (units, bytes) = (self.units, self.bytes);
        self.units = 0;
        self.budget.give_back(buf, units, bytes);
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if self.units > 0 {
            self.budget.give_back(None, self.units, self.bytes);
        }
    }
}

/// A part buffer being filled, holding its share of the budget.
pub(crate) struct PartBuffer {
    /// The ciphertext. Allocated with the capacity that was budgeted; filled without growing
    /// (the encryptor appends at most the bytes it is given, plus its final block/tag, which
    /// the capacity includes).
    pub(crate) data: Vec<u8>,
    share: Option<Share>,
}

impl PartBuffer {
    pub(crate) fn len(&self) -> usize {
        self.data.len()
    }

    /// The bytes to upload, and the budget share to give back when the upload has finished.
    /// No copy. A buffer that had to grow past its budgeted capacity is accounted as such, and
    /// freed rather than reused.
    pub(crate) fn freeze(mut self) -> (Bytes, HeldBudget) {
        let data = std::mem::take(&mut self.data);
        let mut share = self.share.take();
        if let Some(s) = share.as_mut()
            && data.capacity() as u64 != s.bytes
        {
            let grown = data.capacity() as u64;
            let inner = &s.budget.inner;
            let now = inner.allocated.fetch_add(grown, Ordering::Relaxed) + grown;
            inner.peak.fetch_max(now, Ordering::Relaxed);
            s.budget.freed(s.bytes);
            s.bytes = grown;
        }
        (Bytes::from(data), HeldBudget { share })
    }
}

impl Drop for PartBuffer {
    fn drop(&mut self) {
        if let Some(s) = self.share.take() {
            s.give_back(Some(std::mem::take(&mut self.data)));
        }
    }
}

/// A sent part's share of the budget.
pub(crate) struct HeldBudget {
    share: Option<Share>,
}

impl HeldBudget {
    /// The upload is done with `sent` (the part's bytes): gives the share back, with the
    /// buffer for reuse when nothing else holds it any more.
    pub(crate) fn give_back(mut self, sent: Bytes) {
        let buf = sent.try_into_mut().ok().map(Vec::from);
        if let Some(s) = self.share.take() {
            s.give_back(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MIB: usize = 1 << 20;

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
        held.give_back(bytes);
        assert_eq!(b.available(), 10 << 10, "small buffers are freed");
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
        let (bytes, held) = first.freeze();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "a sent part's share is not free yet"
        );
        held.give_back(bytes);
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
        let b = BufferBudget::new(4 << 20);
        let mut buf = b.buffer(1024).await;
        buf.data.extend_from_slice(&[0u8; 5000]);
        let (bytes, held) = buf.freeze();
        assert!(b.peak_allocated() >= 5000, "{}", b.peak_allocated());
        held.give_back(bytes);
        assert_eq!(b.available(), b.bytes());
    }

    /// A part buffer is allocated once: the next part of the same size gets the same memory,
    /// kept with its share; a buffer of another size frees it when it needs the room.
    #[tokio::test]
    async fn part_buffers_are_reused_and_freed_for_room() {
        let b = BufferBudget::new(3 * MIB as u64);
        let mut buf = b.buffer(2 * MIB).await;
        buf.data.extend_from_slice(b"ciphertext");
        let ptr = buf.data.as_ptr();
        let (bytes, held) = buf.freeze();
        held.give_back(bytes);
        assert_eq!(b.available(), MIB as u64, "a kept buffer keeps its share");
        let again = b.buffer(2 * MIB).await;
        assert_eq!(again.data.as_ptr(), ptr, "the same allocation");
        assert!(again.data.is_empty());
        drop(again);
        assert_eq!(b.peak_allocated(), 2 * MIB as u64);
        // 1.5 MiB fits only once the kept 2 MiB buffer is freed.
        let other = b.buffer(3 * MIB / 2).await;
        assert_eq!(b.available(), (3 * MIB / 2) as u64);
        assert!(b.peak_allocated() <= b.bytes());
        drop(other);
    }

    /// A finished part's buffer goes straight to a waiting upload that wants that size.
    #[tokio::test]
    async fn a_waiter_gets_the_returned_buffer() {
        let b = BufferBudget::new(4 * MIB as u64);
        let one = b.buffer(2 * MIB).await;
        let _two = b.buffer(2 * MIB).await;
        let ptr = one.data.as_ptr() as usize;
        let waiting = {
            let b = b.clone();
            tokio::spawn(async move { b.buffer(2 * MIB).await.data.as_ptr() as usize })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        let (bytes, held) = one.freeze();
        held.give_back(bytes);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("handed over")
            .expect("task");
        assert_eq!(got, ptr);
        assert_eq!(b.peak_allocated(), 4 * MIB as u64);
    }

    /// A waiter that gives up loses nothing for the others.
    #[tokio::test]
    async fn a_cancelled_waiter_does_not_lose_the_share() {
        let b = BufferBudget::new(2 * MIB as u64);
        let held = b.buffer(2 * MIB).await;
        let gone = {
            let b = b.clone();
            tokio::spawn(async move { b.buffer(2 * MIB).await.data.capacity() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        gone.abort();
        let _ = gone.await;
        let next = {
            let b = b.clone();
            tokio::spawn(async move { b.buffer(MIB).await.data.capacity() })
        };
        drop(held);
        let cap = tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("served")
            .expect("task");
        assert_eq!(cap, MIB);
        assert_eq!(b.kept(), MIB as u64, "the 1 MiB buffer is kept");
        assert_eq!(b.available() + b.kept(), b.bytes());
    }

    /// Many tasks sharing a small budget, parts and small buffers mixed: never more than the
    /// budget allocated at once, and everyone finishes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_takers_stay_within_the_budget() {
        let b = BufferBudget::new(5 * MIB as u64);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64usize {
            let b = b.clone();
            tasks.spawn(async move {
                let cap = if i % 3 == 0 {
                    2 * MIB
                } else {
                    (i % 7 + 1) << 10
                };
                let mut buf = b.buffer(cap).await;
                buf.data.push(1);
                let (bytes, held) = buf.freeze();
                tokio::task::yield_now().await;
                held.give_back(bytes);
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("task");
        }
        assert!(b.peak_allocated() <= b.bytes(), "{}", b.peak_allocated());
        assert_eq!(b.available() + b.kept(), b.bytes(), "every share came back");
        assert!(b.kept() <= 4 * MIB as u64, "only 2 MiB buffers are kept");
    }
}
