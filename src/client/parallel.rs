//! Parallel ranged GETs of one large object, the way a transfer manager downloads: the stored
//! body is cut into parts of `part_size` bytes, up to `concurrency` ranged GETs are in flight,
//! and the parts come out in order.
//!
//! - Every part's GET carries `If-Match: <the ETag HEAD saw>` (and the version HEAD was asked
//!   for): an object replaced mid-download fails with 412 instead of mixing two objects.
//! - A part that fails with a transient error (5xx, throttling, a dropped connection, a short
//!   body) is retried on its own, [`PART_ATTEMPTS`] times in all, with backoff.
//! - Memory: at most `concurrency` part buffers (`part_size` bytes each) exist at once, whatever
//!   the object size: a part is fetched into a buffer only when a slot is free, and a buffer the
//!   consumer is done with is reused for the next part.
//!
//! Two ways to read: [`PartReader::next_part`] yields each part, and with [`GcmParts`] each
//! part is also CTR-decrypted and GHASHed in its own task (the CPU work spreads across the
//! runtime's threads); [`PartReader`] as an `AsyncRead` yields the stored (cipher) bytes in
//! order, for the streaming decryptors (CBC objects, stdout's verified spool, rekey).
//!
//! [`GcmParts`]: crate::content::parts::GcmParts

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::task::JoinHandle;

use super::{ClientError, ObjectHead, S3Cse};
use crate::consts::GCM_TAG_LEN;
use crate::content::parts::{GcmParts, PartSum};

/// Default part size: 8 MiB, as boto3's transfer manager and the AWS CLI use.
pub const DEFAULT_GET_PART_SIZE: usize = 8 << 20;
/// Default parts in flight: 10, boto3's transfer manager default (`max_concurrency`).
pub const DEFAULT_GET_CONCURRENCY: usize = 10;
/// Attempts per part (first try included): one flaky part should not restart a 1 GiB download.
pub const PART_ATTEMPTS: u32 = 3;

/// How to download large objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParallelGet {
    /// Bytes per ranged GET (rounded down to a multiple of 16, at least 64 KiB). Objects up
    /// to this size are read with one plain GET.
    pub part_size: usize,
    /// Ranged GETs in flight; 1 turns parallel downloads off.
    pub concurrency: usize,
}

impl Default for ParallelGet {
    fn default() -> Self {
        Self {
            part_size: DEFAULT_GET_PART_SIZE,
            concurrency: DEFAULT_GET_CONCURRENCY,
        }
    }
}

impl ParallelGet {
    fn part(&self) -> u64 {
        (self.part_size.max(64 << 10) as u64) & !15
    }

    /// True if `head`'s body is read in parallel: larger than one part, concurrency above 1,
    /// and an ETag to pin the parts to (without one, parts could come from different objects).
    pub fn applies_to(&self, head: &ObjectHead) -> bool {
        self.concurrency > 1 && head.content_length > self.part() && head.etag.is_some()
    }
}

/// One part of the body, in order.
pub struct Part {
    /// Offset of `data[0]` in the stored body.
    pub offset: u64,
    /// The bytes: plaintext (UNVERIFIED until [`GcmParts::verify`]) when decrypting, stored
    /// bytes otherwise. A decrypted body's last part does not include the tag.
    pub data: Vec<u8>,
    /// The part's GHASH, when decrypting.
    pub sum: Option<PartSum>,
    /// The stored tag, on a decrypted body's last part.
    pub tag: Option<[u8; GCM_TAG_LEN]>,
}

/// Buffers handed back by the consumer, for the next parts.
type Pool = Arc<Mutex<Vec<Vec<u8>>>>;

/// Awaited before every ranged GET (and every retry): a caller's request-rate limit.
pub type BeforeRequest = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Ordered parallel ranged GETs of one object; see the module doc. Dropping it aborts the GETs
/// in flight.
pub struct PartReader {
    client: S3Cse,
    head: Arc<ObjectHead>,
    /// The stored-body ranges, in order, computed as they are needed.
    ranges: Ranges,
    next: u64,
    inflight: VecDeque<JoinHandle<Result<Part, ClientError>>>,
    concurrency: usize,
    decrypt: Option<Arc<GcmParts>>,
    pool: Pool,
    /// The part being read through `AsyncRead`, and how much of it was read.
    current: Option<(Vec<u8>, usize)>,
    before_request: Option<BeforeRequest>,
    /// A part failed: every later read fails too (a reader that went on would skip a part).
    failed: bool,
}

impl PartReader {
    /// Reads the stored body of `head` as it is.
    pub fn new(client: &S3Cse, head: &ObjectHead, opts: ParallelGet) -> Self {
        let ranges = Ranges {
            len: head.content_length,
            part: opts.part(),
            tag: 0,
        };
        Self::with_ranges(client, head, opts, ranges, None)
    }

    /// Reads a GCM body (`ciphertext || tag`) and decrypts every part with `parts` (built for
    /// `head.content_length - 16` ciphertext bytes). The last part's range takes the tag along.
    pub fn decrypting(
        client: &S3Cse,
        head: &ObjectHead,
        opts: ParallelGet,
        parts: Arc<GcmParts>,
    ) -> Self {
        let ranges = Ranges {
            len: parts.ct_len(),
            part: opts.part(),
            tag: GCM_TAG_LEN as u64,
        };
        Self::with_ranges(client, head, opts, ranges, Some(parts))
    }

    fn with_ranges(
        client: &S3Cse,
        head: &ObjectHead,
        opts: ParallelGet,
        ranges: Ranges,
        decrypt: Option<Arc<GcmParts>>,
    ) -> Self {
        Self {
            client: client.clone(),
            head: Arc::new(head.clone()),
            ranges,
            next: 0,
            inflight: VecDeque::new(),
            concurrency: opts.concurrency.max(1),
            decrypt,
            pool: Arc::default(),
            current: None,
            before_request: None,
            failed: false,
        }
    }

    /// Awaits `hook` before every GET (rekey's `--s3-rps`).
    pub fn before_each_request(mut self, hook: BeforeRequest) -> Self {
        self.before_request = Some(hook);
        self
    }

    /// Starts GETs until `concurrency` are in flight (or none is left to start).
    fn top_up(&mut self) {
        while self.inflight.len() < self.concurrency && self.next < self.ranges.count() {
            let (first, last) = self.ranges.get(self.next);
            self.next += 1;
            let client = self.client.clone();
            let head = self.head.clone();
            let decrypt = self.decrypt.clone();
            let buf = self.pool.lock().ok().and_then(|mut p| p.pop());
            let hook = self.before_request.clone();
            self.inflight.push_back(tokio::spawn(async move {
                let data = fetch(&client, &head, first, last, buf, hook).await?;
                Ok(match decrypt {
                    None => Part {
                        offset: first,
                        data,
                        sum: None,
                        tag: None,
                    },
                    Some(parts) => decrypt_part(&parts, first, data)?,
                })
            }));
        }
    }

    fn poll_next_part(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Part, ClientError>>> {
        if self.failed {
            return Poll::Ready(Some(Err(ClientError::Io(std::io::Error::other(
                "an earlier part of this download failed",
            )))));
        }
        self.top_up();
        let Some(front) = self.inflight.front_mut() else {
            return Poll::Ready(None);
        };
        let r = ready!(Pin::new(front).poll(cx));
        // The next GET starts when the consumer asks for the next part: the parts in flight
        // never outnumber `concurrency` buffers, counting the one the consumer holds.
        self.inflight.pop_front();
        let part = match r {
            Ok(part) => part,
            Err(e) => Err(ClientError::Io(std::io::Error::other(format!(
                "download task failed: {e}"
            )))),
        };
        if part.is_err() {
            self.failed = true;
            for task in self.inflight.drain(..) {
                task.abort();
            }
        }
        Poll::Ready(Some(part))
    }

    /// The next part in order; `None` after the last. After an error, stop reading.
    pub async fn next_part(&mut self) -> Option<Result<Part, ClientError>> {
        std::future::poll_fn(|cx| self.poll_next_part(cx)).await
    }

    /// Hands a part's buffer back for reuse.
    pub fn recycle(&self, mut buf: Vec<u8>) {
        buf.clear();
        if let Ok(mut p) = self.pool.lock() {
            p.push(buf);
        }
    }
}

impl Drop for PartReader {
    fn drop(&mut self) {
        for h in &self.inflight {
            h.abort();
        }
    }
}

/// The stored bytes in order (only for readers built with [`PartReader::new`]). An S3 error
/// comes out as an `io::Error` wrapping the [`ClientError`].
impl AsyncRead for PartReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some((data, pos)) = &mut this.current {
                if *pos < data.len() {
                    let n = (data.len() - *pos).min(buf.remaining());
                    buf.put_slice(&data[*pos..*pos + n]);
                    *pos += n;
                    return Poll::Ready(Ok(()));
                }
                if let Some((data, _)) = this.current.take() {
                    this.recycle(data);
                }
            }
            match ready!(this.poll_next_part(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(part)) => this.current = Some((part.data, 0)),
                Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
            }
        }
    }
}

/// `0..len` in inclusive ranges of `part` bytes, the last one extended by `tag` bytes (a GCM
/// body's tag rides with its last part; an empty ciphertext is one range, the tag). Computed on
/// demand: a 5 TiB object at 1 MiB parts has 5 million ranges.
#[derive(Clone, Copy, Debug)]
struct Ranges {
    len: u64,
    part: u64,
    tag: u64,
}

impl Ranges {
    fn count(&self) -> u64 {
        match self.len.div_ceil(self.part) {
            0 => u64::from(self.tag > 0),
            n => n,
        }
    }

    /// Range `i` (below [`Self::count`]), inclusive.
    fn get(&self, i: u64) -> (u64, u64) {
        let end = ((i + 1) * self.part).min(self.len);
        let tag = if i + 1 == self.count() { self.tag } else { 0 };
        (i * self.part, end + tag - 1)
    }
}

/// Decrypts one fetched range of a GCM body in place; the bytes past the ciphertext are the tag.
fn decrypt_part(parts: &GcmParts, offset: u64, mut data: Vec<u8>) -> Result<Part, ClientError> {
    let ct_end = parts.ct_len();
    let ct_here = usize::try_from(ct_end.saturating_sub(offset))
        .unwrap_or(usize::MAX)
        .min(data.len());
    let tag = if ct_here < data.len() {
        let t: [u8; GCM_TAG_LEN] = data[ct_here..]
            .try_into()
            .map_err(|_| crate::codec::CodecError::DecryptionFailed)?;
        data.truncate(ct_here);
        Some(t)
    } else {
        None
    };
    let mut d = parts.part(offset)?;
    d.decrypt(&mut data);
    Ok(Part {
        offset,
        data,
        sum: Some(d.finish()),
        tag,
    })
}

/// Pause before retry `attempt` (1-based): 100 ms, 200 ms, ... with jitter.
fn retry_pause(attempt: u32) -> Duration {
    let base = 100u64 << attempt.min(6);
    let jitter = u64::from(std::process::id().wrapping_mul(attempt)) % 50;
    Duration::from_millis(base / 2 + jitter)
}

/// One ranged GET into `buf` (reused when given), retried on transient failures. The body must
/// be exactly `last - first + 1` bytes.
async fn fetch(
    client: &S3Cse,
    head: &ObjectHead,
    first: u64,
    last: u64,
    buf: Option<Vec<u8>>,
    hook: Option<BeforeRequest>,
) -> Result<Vec<u8>, ClientError> {
    let want = usize::try_from(last - first + 1).map_err(|_| {
        ClientError::Io(std::io::Error::other("part larger than the address space"))
    })?;
    let mut buf = buf.unwrap_or_default();
    let mut attempt = 1;
    loop {
        buf.clear();
        buf.reserve_exact(want);
        if let Some(h) = &hook {
            h().await;
        }
        match fetch_once(client, head, first, last, want, &mut buf).await {
            Ok(()) => return Ok(buf),
            Err(e) if e.is_transient() && attempt < PART_ATTEMPTS => {
                tracing::debug!(first, attempt, error = %e, "retrying a part of a download");
                tokio::time::sleep(retry_pause(attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn fetch_once(
    client: &S3Cse,
    head: &ObjectHead,
    first: u64,
    last: u64,
    want: usize,
    buf: &mut Vec<u8>,
) -> Result<(), ClientError> {
    let mut body = client.get_body(head, Some((first, last))).await?;
    let short = || {
        ClientError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("ranged GET of bytes {first}-{last}: wrong length"),
        ))
    };
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|e| ClientError::Io(std::io::Error::other(e)))?
    {
        if buf.len() + chunk.len() > want {
            return Err(short());
        }
        buf.extend_from_slice(&chunk);
    }
    if buf.len() == want {
        Ok(())
    } else {
        Err(short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_tile_the_body() {
        let split = |len, part, tag| {
            let r = Ranges { len, part, tag };
            (0..r.count()).map(|i| r.get(i)).collect::<Vec<_>>()
        };
        assert_eq!(split(0, 16, 0), vec![]);
        assert_eq!(split(1, 16, 0), vec![(0, 0)]);
        assert_eq!(split(32, 16, 0), vec![(0, 15), (16, 31)]);
        assert_eq!(split(33, 16, 0), vec![(0, 15), (16, 31), (32, 32)]);
        // GCM bodies: the tag rides with the last part, or is the only range.
        assert_eq!(split(0, 16, 16), vec![(0, 15)]);
        assert_eq!(split(33, 16, 16), vec![(0, 15), (16, 31), (32, 48)]);
        assert_eq!(split(32, 16, 16), vec![(0, 15), (16, 47)]);
        // 5 TiB at 1 MiB parts: nothing is materialized, the last range ends at the last byte.
        let big = Ranges {
            len: 5 << 40,
            part: 1 << 20,
            tag: 16,
        };
        assert_eq!(big.count(), 5 << 20);
        assert_eq!(
            big.get(big.count() - 1),
            ((5 << 40) - (1 << 20), (5 << 40) + 15)
        );
        let opts = ParallelGet {
            part_size: (8 << 20) + 5,
            concurrency: 10,
        };
        assert_eq!(opts.part(), 8 << 20);
        assert_eq!(
            ParallelGet {
                part_size: 1,
                concurrency: 2
            }
            .part(),
            64 << 10
        );
    }
}
