//! Memory of uploads against the local test bed, measured by a counting global allocator (its
//! own test binary, so that no other test's allocations count): the part buffers of all the
//! uploads of one `S3Cse` stay within its `BufferBudget`, whatever the number of uploads in
//! flight, and each part buffer is allocated once (no buffer doubling while it fills).
//!
//! One test function: the heap peak is process-wide.

mod common;

use std::alloc::System;
use std::pin::Pin;
use std::task::{Context, Poll};

use cap::Cap;
use common::*;
use s3cse::client::{GetOptions, PutRequest, S3Cse};
use s3cse::keyring::{AesMasterKey, Keyring};
use s3cse::secret::SecretBytes;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[global_allocator]
static HEAP: Cap<System> = Cap::new(System, usize::MAX);

const MIB: usize = 1 << 20;

/// `len` pseudo-random bytes (xorshift, from `seed`), made 64 KiB at a time as they are read:
/// the source holds no more than that.
struct Generated {
    left: usize,
    state: u64,
    block: Vec<u8>,
    pos: usize,
}

impl Generated {
    fn new(seed: u64, len: usize) -> Self {
        Self {
            left: len,
            state: seed | 1,
            block: Vec::new(),
            pos: 0,
        }
    }

    fn sha256(seed: u64, len: usize) -> [u8; 32] {
        let mut g = Self::new(seed, len);
        let mut h = Sha256::new();
        loop {
            let b = g.next_bytes(usize::MAX);
            if b.is_empty() {
                break;
            }
            h.update(b);
        }
        h.finalize().into()
    }

    /// Up to `max` next bytes of the stream (empty at the end).
    fn next_bytes(&mut self, max: usize) -> &[u8] {
        if self.pos == self.block.len() {
            let n = self.left.min(64 << 10);
            self.block.resize(n, 0);
            for w in self.block.chunks_mut(8) {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                w.copy_from_slice(&self.state.to_le_bytes()[..w.len()]);
            }
            self.left -= n;
            self.pos = 0;
        }
        let n = max.min(self.block.len() - self.pos);
        self.pos += n;
        &self.block[self.pos - n..self.pos]
    }
}

impl AsyncRead for Generated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let room = buf.remaining();
        buf.put_slice(self.next_bytes(room));
        Poll::Ready(Ok(()))
    }
}

/// Hashes what is written to it.
struct HashSink(Sha256);

impl AsyncWrite for HashSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.update(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn upload(client: &S3Cse, bucket: &str, key: &str, seed: u64, len: usize, announce: bool) {
    let req = PutRequest {
        bucket: bucket.into(),
        key: key.into(),
        plaintext_len: announce.then_some(len as u64),
        ..Default::default()
    };
    let put = client
        .put_from(&req, &mut Generated::new(seed, len))
        .await
        .unwrap_or_else(|e| panic!("{key}: {e}"));
    assert_eq!(put.plaintext_len, len as u64, "{key}");
}

async fn round_trips(client: &S3Cse, bucket: &str, key: &str, seed: u64, len: usize) {
    let mut sink = HashSink(Sha256::new());
    client
        .get_to(bucket, key, &GetOptions::default(), &mut sink)
        .await
        .unwrap_or_else(|e| panic!("{key}: {e}"));
    let got: [u8; 32] = sink.0.finalize().into();
    assert_eq!(
        got,
        Generated::sha256(seed, len),
        "{key} did not round-trip"
    );
}

/// Three 22 MiB uploads at once (5 MiB parts, 4 in flight each: 3 x 25 MiB of part buffers
/// without a shared budget) plus small ones, under a 16 MiB budget: the heap never grows by more
/// than the budget plus the uploads' read buffers and the SDK's own. Then a budget smaller than
/// one part: uploads still finish, one part at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn part_buffers_of_concurrent_uploads_stay_within_the_budget() {
    let Some(Bed { s3, bucket, .. }) = bed("memory").await else {
        return;
    };
    let ring = Keyring::aes(AesMasterKey::new(SecretBytes::random(32)).expect("aes"));
    let budget = 16 * MIB as u64;
    let client = S3Cse::new(s3.clone(), ring.clone())
        .with_part_size(5 * MIB)
        .with_upload_concurrency(4)
        .with_buffer_budget(budget);
    // Warm up the SDK's connection pool and credentials, so that the base is the steady state.
    upload(&client, &bucket, "warm-up", 99, 1000, true).await;

    let base = HEAP.allocated();
    let large = 22 * MIB + 12_345;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..3u64 {
        let (c, b) = (client.clone(), bucket.clone());
        // One of them of unknown length: the put cannot size its first buffer from it.
        tasks.spawn(async move { upload(&c, &b, &format!("large-{i}"), i, large, i != 2).await });
    }
    for i in 0..20u64 {
        let (c, b) = (client.clone(), bucket.clone());
        tasks.spawn(async move {
            let len = 1000 + i as usize * 777;
            upload(&c, &b, &format!("small-{i}"), 100 + i, len, i % 2 == 0).await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("upload task");
    }
    let grew = HEAP.max_allocated().saturating_sub(base);
    let b = client.buffer_budget();
    assert!(
        b.peak_allocated() <= b.bytes(),
        "part buffers peaked at {} bytes over a {}-byte budget",
        b.peak_allocated(),
        b.bytes()
    );
    assert_eq!(
        b.available() + b.kept(),
        b.bytes(),
        "every share was given back (or kept with its buffer for reuse)"
    );
    // Outside the budget: 23 read buffers (256 KiB for the large objects, their own size for
    // the small ones), hyper's and the SDK's buffers. Without the budget the part buffers alone
    // would reach 75 MiB; with buffers that double as they fill, twice that.
    let limit = budget as usize + 12 * MIB;
    assert!(
        grew <= limit,
        "the heap grew by {:.1} MiB during the uploads (limit {:.1} MiB)",
        grew as f64 / MIB as f64,
        limit as f64 / MIB as f64
    );
    eprintln!(
        "heap grew by {:.1} MiB; part buffers peaked at {:.1} MiB of a {} MiB budget",
        grew as f64 / MIB as f64,
        b.peak_allocated() as f64 / MIB as f64,
        budget >> 20
    );
    for i in 0..3u64 {
        round_trips(&client, &bucket, &format!("large-{i}"), i, large).await;
    }
    for i in 0..20u64 {
        let len = 1000 + i as usize * 777;
        round_trips(&client, &bucket, &format!("small-{i}"), 100 + i, len).await;
    }

    // A budget under one part: both uploads finish, taking turns part by part.
    let tiny = S3Cse::new(s3.clone(), ring)
        .with_part_size(5 * MIB)
        .with_buffer_budget(MIB as u64);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..2u64 {
        let (c, b) = (tiny.clone(), bucket.clone());
        tasks.spawn(
            async move { upload(&c, &b, &format!("tiny-{i}"), 50 + i, 11 * MIB, true).await },
        );
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("upload task");
    }
    let b = tiny.buffer_budget();
    assert!(
        b.peak_allocated() <= (5 * MIB + 64) as u64,
        "one part at a time: {}",
        b.peak_allocated()
    );
    for i in 0..2u64 {
        round_trips(&tiny, &bucket, &format!("tiny-{i}"), 50 + i, 11 * MIB).await;
    }
    // ~100 MiB per run: leave nothing behind in the test bed.
    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .expect("list");
    for o in listed.contents() {
        s3.delete_object()
            .bucket(&bucket)
            .set_key(o.key().map(str::to_owned))
            .send()
            .await
            .expect("delete object");
    }
    s3.delete_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("delete bucket");
}
