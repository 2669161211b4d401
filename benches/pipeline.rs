//! Content-cipher throughput: the rekey hot path (decrypt a legacy CBC object, re-encrypt with
//! AES-GCM) and GCM encryption alone, 64 MiB fed in 1 MiB chunks as the S3 body stream delivers
//! it. Results and the OpenSSL comparison live in BENCHMARKS.md ("Content ciphers").
//!
//! Run: `cargo bench --bench pipeline` (about 40 s). Sample counts are kept at criterion's minimum
//! (10) since every iteration already moves 64 MiB.
//!
//! Group `components` breaks the pipeline down into the primitives underneath, each alone over the
//! same 64 MiB: AES ECB decryption/encryption and POLYVAL from RustCrypto (`aes`, `polyval`: what
//! the pipeline ran on before), CBC decryption, CTR and GHASH from aws-lc (what it runs on now),
//! and a plain copy. Compare with `openssl speed` in the same run (BENCHMARKS.md).
//!
//! Two clocks: group `content` measures the benchmark thread's CPU time, which is what
//! `openssl speed` divides by by default (user CPU time, unless `-elapsed`), so the two compare
//! like for like even on a busy shared machine; group `content_wall` repeats (a) and (b) in
//! wall-clock time.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use s3cse::content::cbc::{CbcDecryptor, CbcEncryptor};
use s3cse::content::gcm::{GcmDecryptor, GcmEncryptor};

const TOTAL: usize = 64 << 20;
const CHUNK: usize = 1 << 20;

const OLD_KEY: [u8; 32] = [0x11; 32];
const OLD_IV: [u8; 16] = [0x22; 16];
const NEW_KEY: [u8; 32] = [0x33; 32];
const NEW_IV: [u8; 12] = [0x44; 12];

fn plaintext() -> Vec<u8> {
    (0..TOTAL).map(|i| (i as u8) ^ ((i >> 11) as u8)).collect()
}

fn cbc_object(pt: &[u8]) -> Vec<u8> {
    let mut enc = CbcEncryptor::new(&OLD_KEY, &OLD_IV).expect("key").boxed();
    let mut ct = Vec::with_capacity(pt.len() + 16);
    enc.update(pt, &mut ct).expect("cbc encrypt");
    enc.finish(&mut ct).expect("cbc finish");
    ct
}

/// CBC-decrypt `body` and GCM-encrypt the plaintext, chunk by chunk, as `rekey` does; the
/// re-encrypted chunk would be uploaded, here it is dropped. Returns the ciphertext length.
fn rekey_pipeline(body: &[u8]) -> usize {
    let mut dec = CbcDecryptor::new(&OLD_KEY, &OLD_IV).expect("key").boxed();
    let mut enc = GcmEncryptor::new(&NEW_KEY, &NEW_IV, &[])
        .expect("key")
        .boxed();
    let mut plain = Vec::with_capacity(CHUNK + 32);
    let mut out = Vec::with_capacity(CHUNK + 32);
    let mut written = 0;
    for chunk in body.chunks(CHUNK) {
        plain.clear();
        dec.update(chunk, &mut plain).expect("cbc decrypt");
        out.clear();
        enc.update(&plain, &mut out).expect("gcm encrypt");
        written += black_box(&out).len();
    }
    plain.clear();
    dec.finish(&mut plain).expect("cbc padding");
    out.clear();
    enc.update(&plain, &mut out).expect("gcm encrypt");
    enc.finish(&mut out).expect("gcm tag");
    written + black_box(&out).len()
}

fn gcm_encrypt(pt: &[u8]) -> usize {
    let mut enc = GcmEncryptor::new(&NEW_KEY, &NEW_IV, &[])
        .expect("key")
        .boxed();
    let mut out = Vec::with_capacity(CHUNK + 32);
    let mut written = 0;
    for chunk in pt.chunks(CHUNK) {
        out.clear();
        enc.update(chunk, &mut out).expect("gcm encrypt");
        written += black_box(&out).len();
    }
    out.clear();
    enc.finish(&mut out).expect("gcm tag");
    written + out.len()
}

fn gcm_decrypt(body: &[u8]) -> usize {
    let mut dec = GcmDecryptor::new(&NEW_KEY, &NEW_IV, &[])
        .expect("key")
        .boxed();
    let mut out = Vec::with_capacity(CHUNK + 32);
    let mut read = 0;
    for chunk in body.chunks(CHUNK) {
        out.clear();
        dec.update(chunk, &mut out).expect("gcm decrypt");
        read += black_box(&out).len();
    }
    dec.finish(&mut out).expect("gcm tag");
    read
}

fn cbc_decrypt(body: &[u8]) -> usize {
    let mut dec = CbcDecryptor::new(&OLD_KEY, &OLD_IV).expect("key").boxed();
    let mut out = Vec::with_capacity(CHUNK + 32);
    let mut read = 0;
    for chunk in body.chunks(CHUNK) {
        out.clear();
        dec.update(chunk, &mut out).expect("cbc decrypt");
        read += black_box(&out).len();
    }
    out.clear();
    dec.finish(&mut out).expect("cbc padding");
    read + out.len()
}

/// CPU time of the calling thread, from `/proc/thread-self/schedstat` (Linux: nanoseconds on
/// CPU). Falls back to wall-clock time where that file does not exist.
struct ThreadCpuTime {
    wall: WallTime,
}

fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Measurement for ThreadCpuTime {
    type Intermediate = (Option<u64>, std::time::Instant);
    type Value = Duration;

    fn start(&self) -> Self::Intermediate {
        (thread_cpu_ns(), std::time::Instant::now())
    }
    fn end(&self, (cpu, wall): Self::Intermediate) -> Duration {
        match (cpu, thread_cpu_ns()) {
            (Some(a), Some(b)) => Duration::from_nanos(b.saturating_sub(a)),
            _ => wall.elapsed(),
        }
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self.wall.formatter()
    }
}

fn group_config<M: Measurement>(g: &mut criterion::BenchmarkGroup<'_, M>) {
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(TOTAL as u64));
}

struct Inputs {
    pt: Vec<u8>,
    cbc_body: Vec<u8>,
    gcm_body: Vec<u8>,
}

fn inputs() -> Inputs {
    let pt = plaintext();
    let cbc_body = cbc_object(&pt);
    let gcm_body = {
        let mut enc = GcmEncryptor::new(&NEW_KEY, &NEW_IV, &[])
            .expect("key")
            .boxed();
        let mut body = Vec::with_capacity(TOTAL + 16);
        enc.update(&pt, &mut body).expect("gcm encrypt");
        enc.finish(&mut body).expect("gcm tag");
        body
    };
    assert_eq!(rekey_pipeline(&cbc_body), TOTAL + 16);
    Inputs {
        pt,
        cbc_body,
        gcm_body,
    }
}

fn content_ciphers(c: &mut Criterion<ThreadCpuTime>) {
    let Inputs {
        pt,
        cbc_body,
        gcm_body,
    } = inputs();
    let mut g = c.benchmark_group("content");
    group_config(&mut g);
    // (a) the rekey hot path.
    g.bench_function("pipeline_cbc_decrypt_gcm_encrypt_64MiB", |b| {
        b.iter(|| rekey_pipeline(black_box(&cbc_body)))
    });
    // (b) GCM encryption alone.
    g.bench_function("gcm_encrypt_64MiB", |b| {
        b.iter(|| gcm_encrypt(black_box(&pt)))
    });
    // The two other halves, to see where the pipeline's time goes.
    g.bench_function("cbc_decrypt_64MiB", |b| {
        b.iter(|| cbc_decrypt(black_box(&cbc_body)))
    });
    g.bench_function("gcm_decrypt_64MiB", |b| {
        b.iter(|| gcm_decrypt(black_box(&gcm_body)))
    });
    g.finish();
}

/// The primitives under the pipeline, each alone, in `slice`-byte calls.
fn components(c: &mut Criterion<ThreadCpuTime>) {
    use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    use aws_lc_rs::cipher::{
        AES_256, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext,
        UnboundCipherKey,
    };
    use polyval::universal_hash::UniversalHash;

    const SLICE: usize = 64 * 1024;
    let mut data = plaintext();
    let mut out = vec![0u8; TOTAL];
    let rc = aes::Aes256::new_from_slice(&NEW_KEY).expect("key");
    let lc_key = || UnboundCipherKey::new(&AES_256, &NEW_KEY).expect("key");
    let cbc = DecryptingKey::cbc(lc_key()).expect("key");
    let ctr = EncryptingKey::ctr(lc_key()).expect("key");
    let gcm = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &NEW_KEY).expect("key"));
    let mut g = c.benchmark_group("components");
    group_config(&mut g);
    g.bench_function("rustcrypto_aes_ecb_decrypt", |b| {
        b.iter(|| {
            for s in data.chunks_mut(8192) {
                rc.decrypt_blocks(aes::Block::slice_as_chunks_mut(s).0);
            }
        })
    });
    g.bench_function("rustcrypto_aes_ecb_encrypt", |b| {
        b.iter(|| {
            for s in data.chunks_mut(8192) {
                rc.encrypt_blocks(aes::Block::slice_as_chunks_mut(s).0);
            }
        })
    });
    g.bench_function("rustcrypto_polyval", |b| {
        let key = polyval::Key::from([7u8; 16]);
        b.iter(|| {
            let mut p = polyval::Polyval::new(&key);
            for s in data.chunks(8192) {
                p.update(polyval::Block::slice_as_chunks(s).0);
            }
            black_box(p.finalize())
        })
    });
    g.bench_function("byte_reversal", |b| {
        b.iter(|| {
            for (o, s) in out.chunks_exact_mut(16).zip(data.chunks_exact(16)) {
                let mut a = [0u8; 16];
                a.copy_from_slice(s);
                o.copy_from_slice(&u128::from_le_bytes(a).swap_bytes().to_le_bytes());
            }
            black_box(&out);
        })
    });
    g.bench_function("copy", |b| {
        b.iter(|| {
            for (o, s) in out.chunks_mut(SLICE).zip(data.chunks(SLICE)) {
                o.copy_from_slice(s);
            }
            black_box(&out);
        })
    });
    g.bench_function("awslc_cbc_decrypt", |b| {
        b.iter(|| {
            let mut iv = OLD_IV;
            for s in data.chunks_mut(SLICE) {
                let next: [u8; 16] = s[s.len() - 16..].try_into().expect("block");
                cbc.decrypt(s, DecryptionContext::Iv128(iv.into()))
                    .expect("cbc");
                iv = next;
            }
        })
    });
    g.bench_function("awslc_ctr", |b| {
        b.iter(|| {
            let mut counter = 2u128;
            for s in data.chunks_mut(SLICE) {
                ctr.less_safe_encrypt(s, EncryptionContext::Iv128(counter.to_be_bytes().into()))
                    .expect("ctr");
                counter += (s.len() / 16) as u128;
            }
        })
    });
    g.bench_function("awslc_ghash", |b| {
        b.iter(|| {
            for s in data.chunks(SLICE) {
                let tag = gcm
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key([0; 12]),
                        Aad::from(s),
                        &mut [],
                    )
                    .expect("gmac");
                black_box(tag.as_ref()[0]);
            }
        })
    });
    g.bench_function("awslc_gcm_seal_oneshot", |b| {
        b.iter(|| {
            for s in data.chunks_mut(CHUNK) {
                let tag = gcm
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key([0; 12]),
                        Aad::empty(),
                        s,
                    )
                    .expect("seal");
                black_box(tag.as_ref()[0]);
            }
        })
    });
    g.finish();
}

fn content_ciphers_wall(c: &mut Criterion) {
    let Inputs { pt, cbc_body, .. } = inputs();
    let mut g = c.benchmark_group("content_wall");
    group_config(&mut g);
    g.bench_function("pipeline_cbc_decrypt_gcm_encrypt_64MiB", |b| {
        b.iter(|| rekey_pipeline(black_box(&cbc_body)))
    });
    g.bench_function("gcm_encrypt_64MiB", |b| {
        b.iter(|| gcm_encrypt(black_box(&pt)))
    });
    g.finish();
}

criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ThreadCpuTime { wall: WallTime });
    targets = content_ciphers, components
}
criterion_group!(wall, content_ciphers_wall);
criterion_main!(cpu, wall);
