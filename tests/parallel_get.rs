//! Parallel ranged GETs of large objects (issue 14 item 3) against the local test bed: every
//! format and size class reads back the same as one GET, a tampered part or tag leaves no file,
//! and an object replaced mid-download fails instead of mixing two objects.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use s3cse::client::parallel::{ParallelGet, PartReader};
use s3cse::client::{ClientError, GetOptions, PutRequest, RequestOutcome, S3Cse};
use s3cse::codec::{DecryptPolicy, WriteFormat};
use s3cse::keyring::Keyring;

const PART: usize = 64 << 10;

/// A client reading with `PART`-byte ranged GETs, 4 in flight, counting its GetObject calls.
fn client(b: &Bed, policy: DecryptPolicy, gets: &Arc<AtomicUsize>) -> S3Cse {
    let gets = gets.clone();
    S3Cse::new(b.s3.clone(), Keyring::aes(aes_key()))
        .with_policy(policy)
        .with_download(ParallelGet {
            part_size: PART,
            concurrency: 4,
        })
        .with_observer(Arc::new(move |op, _: RequestOutcome, _| {
            if op == "GetObject" {
                gets.fetch_add(1, Ordering::Relaxed);
            }
        }))
}

async fn put(b: &Bed, key: &str, format: WriteFormat, data: &[u8]) {
    let c = S3Cse::new(b.s3.clone(), Keyring::aes(aes_key()));
    let req = PutRequest {
        bucket: b.bucket.clone(),
        key: key.into(),
        format,
        plaintext_len: Some(data.len() as u64),
        ..PutRequest::default()
    };
    c.put_from(&req, &mut &data[..]).await.expect("put");
}

#[tokio::test]
async fn parallel_gets_read_every_format_like_one_get() {
    let Some(b) = bed("pget").await else { return };
    // Ciphertext a whole number of parts, just under, just over, and one byte over one part
    // (the tag then makes a part of its own, 16 bytes).
    let sizes = [3 * PART, 3 * PART - 5, 2 * PART + 1, PART + 1, PART - 10];
    for (i, &n) in sizes.iter().enumerate() {
        let pt = data(n, i as u8);
        put(&b, &format!("v2-{n}"), WriteFormat::V2, &pt).await;
        put(&b, &format!("v3-{n}"), WriteFormat::V3, &pt).await;
        put_v1(&b.s3, &b.bucket, &format!("v1-{n}"), &pt).await;
        for (key, legacy) in [
            (format!("v2-{n}"), false),
            (format!("v3-{n}"), false),
            (format!("v1-{n}"), true),
        ] {
            // Delayed authentication (the `-o FILE` path: GCM decrypted in parallel parts) and
            // verified (the spool: parallel GETs, one decryptor).
            for delayed in [true, false] {
                let gets = Arc::new(AtomicUsize::new(0));
                let policy = DecryptPolicy {
                    allow_legacy: legacy,
                    delayed_authentication: delayed,
                    ..DecryptPolicy::default()
                };
                let mut out = Vec::new();
                let s = client(&b, policy, &gets)
                    .get_to(&b.bucket, &key, &GetOptions::default(), &mut out)
                    .await
                    .unwrap_or_else(|e| panic!("{key} delayed={delayed}: {e}"));
                assert!(out == pt, "{key} delayed={delayed}: plaintext differs");
                assert_eq!(s.bytes, n as u64, "{key}");
                // One ranged GET per part (the tag rides with the last one).
                let stored = if legacy { (n / 16 + 1) * 16 } else { n + 16 };
                let want = if legacy || !delayed {
                    stored.div_ceil(PART)
                } else {
                    n.div_ceil(PART)
                };
                assert_eq!(
                    gets.load(Ordering::Relaxed),
                    want,
                    "{key} delayed={delayed}"
                );
            }
        }
    }
}

/// Flips one stored byte (body or tag) of `key`, keeping its metadata.
async fn tamper(b: &Bed, key: &str, at: usize) {
    let (mut body, meta) = b.raw_get(key).await;
    body[at] ^= 0x10;
    let meta: Vec<(String, String)> = meta.into_iter().collect();
    b.raw_put(key, body, &meta).await;
}

#[tokio::test]
async fn a_tampered_part_or_tag_leaves_no_file() {
    let Some(b) = bed("pget-tamper").await else {
        return;
    };
    let n = 3 * (1 << 20) + 5;
    let pt = data(n, 9);
    let src = b.write("in", &pt);
    let kms = ["--kms-key-id", b.key_id.as_str()];
    for format in ["v2", "v3"] {
        let o = run(bin()
            .arg("put")
            .arg(&src)
            .arg(b.url(format))
            .args(kms)
            .args(["--format", format]));
        assert_ok("put", &o);
    }
    let get = |key: &str, out: &std::path::Path| {
        run(bin()
            .arg("get")
            .arg(b.url(key))
            .arg("-o")
            .arg(out)
            .args(kms)
            .args(["--part-size-mib", "1", "--concurrency", "3"]))
    };
    // Untampered: the parallel path reads it back.
    for format in ["v2", "v3"] {
        let out = b.path(&format!("{format}.ok"));
        assert_ok(format, &get(format, &out));
        assert!(std::fs::read(&out).expect("out") == pt, "{format}");
    }
    // A byte in the second part, then a byte of the tag.
    for (format, at) in [("v2", (1 << 20) + 77), ("v3", n + 15)] {
        tamper(&b, format, at).await;
        let out = b.path(&format!("{format}.bad"));
        let o = get(format, &out);
        assert_eq!(o.status.code(), Some(1), "{}", show(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("AuthenticationFailed"),
            "{}",
            show(&o)
        );
        assert!(!out.exists(), "{format}: no file may appear");
    }
    let leftovers: Vec<_> = std::fs::read_dir(b.dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[tokio::test]
async fn an_object_replaced_mid_download_fails() {
    let Some(b) = bed("pget-replace").await else {
        return;
    };
    let pt = data(4 * PART + 3, 1);
    put(&b, "obj", WriteFormat::V2, &pt).await;
    let c = client(&b, DecryptPolicy::default(), &Arc::new(AtomicUsize::new(0)));
    let head = c.head(&b.bucket, "obj").await.expect("head");
    let mut reader = PartReader::new(
        &c,
        &head,
        ParallelGet {
            part_size: PART,
            concurrency: 1,
        },
    );
    let first = reader
        .next_part()
        .await
        .expect("a part")
        .expect("first part");
    assert_eq!(first.data.len(), PART);
    let (stored, meta) = b.raw_get("obj").await;
    // Same key, new body (and ETag) between two parts.
    put(&b, "obj", WriteFormat::V2, &data(4 * PART + 3, 2)).await;
    match reader.next_part().await {
        Some(Err(ClientError::PreconditionFailed)) => {}
        Some(Ok(_)) => panic!("a part of the replacement was read"),
        other => panic!("expected 412, got {:?}", other.map(|r| r.map(|p| p.offset))),
    }
    // The original bytes back (the same ETag): the later parts would read again. The reader
    // is fused: asked again, it fails again instead of skipping the failed part (a caller
    // that went on would read a body with a hole in it).
    let meta: Vec<(String, String)> = meta.into_iter().collect();
    b.raw_put("obj", stored, &meta).await;
    assert_eq!(
        c.head(&b.bucket, "obj").await.expect("head").etag,
        head.etag
    );
    for _ in 0..3 {
        assert!(
            matches!(reader.next_part().await, Some(Err(_))),
            "a part after a failed one was handed out"
        );
    }
}

/// `rekey --target-format v3` reads large V2 sources with parallel ranged GETs (2 MiB parts,
/// `rekey::read::READ_AHEAD`): a good source becomes V3 with the same plaintext; a source with
/// one flipped byte in its third part is left as it was (the new object is never completed,
/// so the key keeps the old ETag) and recorded as failed authentication.
#[tokio::test]
async fn rekey_reads_large_sources_in_parallel_and_keeps_tampered_ones() {
    let Some(b) = bed("pget-rekey").await else {
        return;
    };
    let n = 7 * (1 << 20) + 3;
    let pt = data(n, 4);
    let src = b.write("in", &pt);
    let kms = ["--kms-key-id", b.key_id.as_str()];
    for key in ["good", "bad"] {
        let o = run(bin()
            .arg("put")
            .arg(&src)
            .arg(b.url(key))
            .args(kms)
            .args(["--format", "v2"]));
        assert_ok("put", &o);
    }
    tamper(&b, "bad", 5 * (1 << 20) + 1).await;
    let before = b.etags().await;
    let state = b.path("state.db");
    let prom = b.path("s3cse.prom");
    let o = run(bin()
        .arg("rekey")
        .arg(b.bucket_url())
        .arg("--state")
        .arg(&state)
        .arg("--metrics-textfile")
        .arg(&prom)
        .args(kms)
        .args(["--target-format", "v3"]));
    assert_eq!(o.status.code(), Some(1), "one object fails: {}", show(&o));
    // 4 ranged GETs per source (7 MiB in 2 MiB parts), where one GET each used to do.
    let gets: f64 = std::fs::read_to_string(&prom)
        .expect("metrics textfile")
        .lines()
        .filter(|l| l.starts_with("s3cse_s3_requests_total{") && l.contains("\"GetObject\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(gets >= 8.0, "GetObject requests: {gets}");
    let after = b.etags().await;
    assert_eq!(
        before["bad"], after["bad"],
        "the tampered source is untouched"
    );
    assert_ne!(
        before["good"], after["good"],
        "the good source was rewritten"
    );
    assert!(b.open_uploads().await.is_empty(), "no upload left open");
    let out = b.path("good.out");
    let o = run(bin()
        .arg("get")
        .arg(b.url("good"))
        .arg("-o")
        .arg(&out)
        .args(kms)
        .args(["--commitment", "require"]));
    assert_ok("get v3", &o);
    assert!(std::fs::read(&out).expect("out") == pt);
    let (_, _, _, _, code, _) = record(state.to_str().expect("path"), "bad").await;
    assert_eq!(code.as_deref(), Some("AuthenticationFailed"));
}
