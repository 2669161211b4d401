//! The S3 side against the local test bed (SeaweedFS + moto KMS) through the real aws-sdk clients
//! and the real binary: put/get round trips for every format, key source and size class, ranged
//! reads, instruction files, refusals, and interop in both directions with aioboto3 and AWS's
//! Python S3 encryption client.

mod common;

use std::path::Path;

use common::*;
use s3cse::client::{PutRequest, S3Cse};
use s3cse::codec::WriteFormat;
use s3cse::keyring::{AesMasterKey, Keyring};
use s3cse::secret::SecretBytes;

/// Key options for each key source, over files in the bed's temp dir.
fn key_args(b: &Bed, source: &str) -> Vec<String> {
    match source {
        "kms" => vec!["--kms-key-id".into(), b.key_id.clone()],
        "aes" => vec![
            "--aes-key-file".into(),
            aes_key_file().display().to_string(),
        ],
        _ => vec![
            "--rsa-key-file".into(),
            rsa_private_key_file().display().to_string(),
        ],
    }
}

fn put(b: &Bed, file: &Path, key: &str, extra: &[String]) -> std::process::Output {
    run(bin().arg("put").arg(file).arg(b.url(key)).args(extra))
}

fn get(b: &Bed, key: &str, out: &Path, extra: &[String]) -> std::process::Output {
    run(bin()
        .arg("get")
        .arg(b.url(key))
        .arg("-o")
        .arg(out)
        .args(extra))
}

/// The command failed with exit 1 and `reason` in its stderr.
#[track_caller]
fn assert_refused(o: &std::process::Output, reason: &str) {
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains(reason), "{stderr}");
}

#[tokio::test]
async fn round_trip_every_format_key_source_and_size() {
    let Some(b) = bed("roundtrip").await else {
        return;
    };
    // 0..17 around the block size, one part, several 5 MiB parts (multipart with the tag at the end).
    let sizes = [0usize, 1, 15, 16, 17, 1 << 20, 11 * (1 << 20) + 3];
    for source in ["kms", "aes", "rsa"] {
        for format in ["v2", "v3"] {
            for &n in &sizes {
                if n > 1 << 20 && source != "kms" {
                    continue; // the multipart path does not depend on the key source
                }
                let pt = data(n, n as u8);
                let key = format!("{source}/{format}/{n}");
                let src = b.write("in", &pt);
                let mut args = key_args(&b, source);
                args.extend(strings(&["--format", format, "--part-size-mib", "5"]));
                assert_ok(&key, &put(&b, &src, &key, &args));
                let out = b.path("out");
                assert_ok(&key, &get(&b, &key, &out, &key_args(&b, source)));
                assert!(
                    std::fs::read(&out).expect("out") == pt,
                    "{key}: plaintext differs"
                );
                let (body, meta) = b.raw_get(&key).await;
                assert_eq!(body.len(), n + 16, "{key}: stored size");
                match format {
                    "v2" => {
                        assert_eq!(
                            meta.get("x-amz-cek-alg").map(String::as_str),
                            Some("AES/GCM/NoPadding")
                        );
                        assert_eq!(meta.get("x-amz-tag-len").map(String::as_str), Some("128"));
                        assert_eq!(
                            meta.get("x-amz-iv").map(|v| v.len()),
                            Some(16),
                            "12-byte IV in base64"
                        );
                        let wrap = match source {
                            "kms" => "kms+context",
                            "aes" => "AES/GCM",
                            _ => "RSA-OAEP-SHA1",
                        };
                        assert_eq!(
                            meta.get("x-amz-wrap-alg").map(String::as_str),
                            Some(wrap),
                            "{key}"
                        );
                    }
                    _ => assert_eq!(meta.get("x-amz-c").map(String::as_str), Some("115")),
                }
                assert_eq!(
                    meta.get("x-amz-unencrypted-content-length"),
                    Some(&n.to_string()),
                    "{key}"
                );
            }
        }
    }
}

#[tokio::test]
async fn object_over_100_mib_streams_through() {
    let Some(b) = bed("big").await else { return };
    let n = 101 * (1 << 20) + 5;
    let pt = data(n, 7);
    let src = b.write("big", &pt);
    assert_ok("put", &put(&b, &src, "big", &key_args(&b, "kms")));
    let out = b.path("big.out");
    assert_ok("get", &get(&b, "big", &out, &key_args(&b, "kms")));
    assert!(
        std::fs::read(&out).expect("out") == pt,
        "101 MiB plaintext differs"
    );
}

#[tokio::test]
async fn ranged_reads_at_and_across_block_and_part_boundaries() {
    let Some(b) = bed("ranges").await else { return };
    let n = 11 * (1 << 20) + 7;
    let pt = data(n, 3);
    let src = b.write("in", &pt);
    let mut objects = Vec::new();
    for format in ["v2", "v3"] {
        let mut args = key_args(&b, "kms");
        args.extend(strings(&["--format", format, "--part-size-mib", "5"]));
        assert_ok(format, &put(&b, &src, format, &args));
        objects.push((format.to_owned(), key_args(&b, "kms")));
    }
    // A legacy V1 CBC object through the library's legacy writer.
    put_v1(&b.s3, &b.bucket, "v1", &pt).await;
    objects.push(("v1".into(), key_args(&b, "aes")));
    let part = 5 << 20;
    let ranges: Vec<(u64, u64)> = vec![
        (0, 0),
        (0, 15),
        (15, 16),
        (16, 31),
        (17, 100),
        (part - 1, part),
        (part - 20, part + 40),
        (2 * part - 16, 2 * part + 15),
        (n as u64 - 1, n as u64 - 1),
        (n as u64 - 40, n as u64 + 100),
    ];
    for (key, keys) in &objects {
        for &(a, z) in &ranges {
            let out = b.path("range");
            let mut args = keys.clone();
            args.extend(strings(&[
                "--allow-legacy",
                "--range",
                &format!("bytes={a}-{z}"),
            ]));
            assert_ok(&format!("{key} {a}-{z}"), &get(&b, key, &out, &args));
            let want = &pt[a as usize..=(z as usize).min(n - 1)];
            assert!(
                std::fs::read(&out).expect("out") == want,
                "{key} bytes={a}-{z}"
            );
        }
        // Suffix range.
        let out = b.path("suffix");
        let mut args = keys.clone();
        args.extend(strings(&["--allow-legacy", "--range", "bytes=-33"]));
        assert_ok(key, &get(&b, key, &out, &args));
        assert!(
            std::fs::read(&out).expect("out") == pt[n - 33..],
            "{key} suffix"
        );
    }
    // Ranges are unauthenticated: refused without the opt-in.
    let out = b.path("refused");
    let mut args = key_args(&b, "kms");
    args.extend(strings(&["--range", "bytes=0-10"]));
    let o = get(&b, "v2", &out, &args);
    assert_refused(&o, "LegacyRefused");
    assert!(!out.exists());
}

#[tokio::test]
async fn instruction_file_envelopes_are_fetched() {
    let Some(b) = bed("instr").await else { return };
    let ring = Keyring::aes(AesMasterKey::new(SecretBytes::random(32)).expect("aes"));
    for format in [WriteFormat::V2, WriteFormat::V3] {
        let pt = data(4000, 9);
        let key = format!("obj-{format:?}");
        b.put_with_instruction_file(&ring, format, &key, &pt).await;
        let mut out = Vec::new();
        let client = S3Cse::new(b.s3.clone(), ring.clone());
        client
            .get_to(&b.bucket, &key, &Default::default(), &mut out)
            .await
            .expect("get via instruction file");
        assert!(out == pt, "{format:?}");
        let i = client.inspect(&b.bucket, &key).await.expect("inspect");
        assert_eq!(i.envelope_location.as_deref(), Some("InstructionFile"));
    }
}

#[tokio::test]
async fn refusals_leave_no_output() {
    let Some(b) = bed("refuse").await else { return };
    let pt = data(3000, 1);
    let src = b.write("in", &pt);
    let mut args = key_args(&b, "kms");
    args.extend(strings(&["--context", "team=ops"]));
    assert_ok("put", &put(&b, &src, "ctx", &args));
    // The right context reads; another context is refused.
    let out = b.path("ok");
    assert_ok("get", &get(&b, "ctx", &out, &args));
    let out = b.path("ctx.out");
    let mut wrong = key_args(&b, "kms");
    wrong.extend(strings(&["--context", "team=dev"]));
    let o = get(&b, "ctx", &out, &wrong);
    assert_refused(&o, "ContextMismatch");
    assert!(!out.exists());
    // A wrong AES key.
    assert_ok("put aes", &put(&b, &src, "aes", &key_args(&b, "aes")));
    let other = b.write("other.key", hex::encode([0x42u8; 32]).as_bytes());
    let o = get(
        &b,
        "aes",
        &out,
        &["--aes-key-file".into(), other.display().to_string()],
    );
    assert_refused(&o, "AuthenticationFailed");
    assert!(!out.exists());
    // A tampered body under a valid envelope.
    let (mut body, meta) = b.raw_get("aes").await;
    body[10] ^= 1;
    b.raw_put("aes", body, &meta.into_iter().collect::<Vec<_>>())
        .await;
    let o = get(&b, "aes", &out, &key_args(&b, "aes"));
    assert_refused(&o, "AuthenticationFailed");
    assert!(!out.exists(), "tampered object left output behind");
    // To stdout: nothing printed either.
    let o = run(bin().arg("get").arg(b.url("aes")).args(key_args(&b, "aes")));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        o.stdout.is_empty(),
        "unauthenticated plaintext reached stdout"
    );
    // Plaintext objects: refused unless allowed.
    b.raw_put("plain", b"hello".to_vec(), &[]).await;
    let o = get(&b, "plain", &out, &key_args(&b, "kms"));
    assert_eq!(o.status.code(), Some(1));
    let mut allow = key_args(&b, "kms");
    allow.push("--allow-plaintext".into());
    assert_ok("plain", &get(&b, "plain", &out, &allow));
    assert_eq!(std::fs::read(&out).expect("out"), b"hello");
    // A missing object: exit 1 naming it.
    let o = get(&b, "missing", &b.path("m"), &key_args(&b, "kms"));
    assert_refused(&o, "missing");
}

#[tokio::test]
async fn inspect_needs_no_key() {
    let Some(b) = bed("inspect").await else {
        return;
    };
    let src = b.write("in", b"abc");
    let mut args = key_args(&b, "kms");
    args.extend(strings(&[
        "--context",
        "team=ops",
        "--content-type",
        "text/plain",
    ]));
    assert_ok("put", &put(&b, &src, "k", &args));
    let o = run(bin().args(["inspect", "--json"]).arg(b.url("k")));
    assert_ok("inspect", &o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["format"], "v2-kms+context-gcm");
    assert_eq!(v["legacy"], false);
    assert_eq!(v["encryption_context"]["team"], "ops");
    assert_eq!(v["plaintext_length"], 3);
    assert_eq!(v["content_type"], "text/plain");
}

/// Objects written by aioboto3 (every context it has) and AWS's Python client (V2 and V3) read
/// back byte-identical through `s3cse get`.
#[tokio::test]
async fn peer_written_objects_read_back() {
    let Some(b) = bed("peers-in").await else {
        return;
    };
    let aes = aes_key_file().display().to_string();
    let rsa = rsa_private_key_file().display().to_string();
    let kms = b.key_id.as_str();
    // (peer, its put arguments, the key source s3cse reads it with)
    let cases: [(&str, Vec<&str>, &str); 6] = [
        (
            "aioboto3",
            vec!["--kind", "kms", "--kms-key-id", kms],
            "kms",
        ),
        (
            "aioboto3",
            vec!["--kind", "kms", "--cbc", "--kms-key-id", kms],
            "kms",
        ),
        (
            "aioboto3",
            vec!["--kind", "symmetric", "--aes-key-file", &aes],
            "aes",
        ),
        (
            "aioboto3",
            vec!["--kind", "asymmetric", "--rsa-key-file", &rsa],
            "rsa",
        ),
        (
            "awsclient",
            vec!["--format", "v2", "--kms-key-id", kms],
            "kms",
        ),
        (
            "awsclient",
            vec![
                "--format",
                "v3",
                "--kms-key-id",
                kms,
                "--context",
                "team=ops",
            ],
            "kms",
        ),
    ];
    for n in [0usize, 17, 70_000] {
        let pt = data(n, 5);
        let src = b.write("in", &pt);
        for (i, (peer_name, peer_args, source)) in cases.iter().enumerate() {
            let key = format!("{peer_name}-{i}-{n}");
            assert_ok(&key, &peer_put(peer_name, &b.bucket, &key, &src, peer_args));
            let out = b.path("out");
            let mut ours = key_args(&b, source);
            ours.push("--allow-legacy".into());
            assert_ok(&key, &get(&b, &key, &out, &ours));
            assert!(
                std::fs::read(&out).expect("out") == pt,
                "{key}: plaintext differs"
            );
        }
    }
}

/// Objects written by `s3cse put` (V2 and V3) read back through AWS's Python client with the same
/// bytes, metadata and content-type, and V2 through aioboto3.
#[tokio::test]
async fn s3cse_written_objects_read_by_peers() {
    let Some(b) = bed("peers-out").await else {
        return;
    };
    for n in [0usize, 17, 70_000, 6 * (1 << 20) + 1] {
        let pt = data(n, 11);
        let src = b.write("in", &pt);
        for format in ["v2", "v3"] {
            let key = format!("{format}-{n}");
            let mut args = key_args(&b, "kms");
            args.extend(strings(&[
                "--format",
                format,
                "--context",
                "team=ops",
                "--content-type",
                "application/x-test",
                "--metadata",
                "owner=qa",
                "--part-size-mib",
                "5",
            ]));
            assert_ok(&key, &put(&b, &src, &key, &args));
            let out = b.path("peer.out");
            let mut pargs = vec!["--kms-key-id", &b.key_id, "--context", "team=ops"];
            if format == "v3" {
                pargs.push("--strict");
            }
            let got = peer_get("awsclient", &b.bucket, &key, &out, &pargs);
            assert_ok(&format!("awsclient get {key}"), &got);
            assert!(
                std::fs::read(&out).expect("out") == pt,
                "{key}: AWS client read different bytes"
            );
            let h = peer_head(&b.bucket, &key);
            assert_eq!(h["content_type"], "application/x-test", "{key}");
            assert_eq!(h["metadata"]["owner"], "qa", "{key}");
            if format == "v2" && n < 1 << 20 {
                let aout = b.path("aio.out");
                let kms = ["--kind", "kms", "--kms-key-id", &b.key_id];
                let a = peer_get("aioboto3", &b.bucket, &key, &aout, &kms);
                assert_ok(&format!("aioboto3 get {key}"), &a);
                assert!(
                    std::fs::read(&aout).expect("out") == pt,
                    "{key}: aioboto3 read different bytes"
                );
            }
        }
    }
}

/// A source that fails after more than one part: nothing is committed and the multipart upload
/// is aborted (no parts left behind).
#[tokio::test]
async fn failing_source_aborts_the_multipart_upload() {
    let Some(b) = bed("abort").await else { return };
    struct Failing(usize);
    impl tokio::io::AsyncRead for Failing {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.0 == 0 {
                return std::task::Poll::Ready(Err(std::io::Error::other("source broke")));
            }
            let n = self.0.min(buf.remaining());
            buf.put_slice(&vec![7u8; n]);
            self.0 -= n;
            std::task::Poll::Ready(Ok(()))
        }
    }
    let ring = Keyring::aes(AesMasterKey::new(SecretBytes::random(32)).expect("aes"));
    let client = S3Cse::new(b.s3.clone(), ring).with_part_size(5 << 20);
    let req = PutRequest {
        bucket: b.bucket.clone(),
        key: "broken".into(),
        ..Default::default()
    };
    let err = client
        .put_from(&req, &mut Failing(12 << 20))
        .await
        .expect_err("must fail");
    assert!(err.to_string().contains("source broke"), "{err}");
    let uploads = b.open_uploads().await;
    assert!(
        uploads.is_empty(),
        "multipart upload left behind: {uploads:?}"
    );
    let head =
        b.s3.head_object()
            .bucket(&b.bucket)
            .key("broken")
            .send()
            .await;
    assert!(head.is_err(), "a broken source was committed");
}

/// An upload that announces a bound of its length (`plaintext_len_max`, as rekey does with the
/// source's stored size) takes its first buffer from the budget before it reads anything: one
/// queued behind a full budget has not read its source (for rekey: the GET's body stays in the
/// socket, no buffers held), and goes on once there is room.
#[tokio::test]
async fn an_upload_queued_behind_the_budget_has_not_read_its_source() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Poll, ready};
    let Some(b) = bed("queued").await else { return };
    /// `left` bytes of 7s, counting what was read; stops at `hold_at` until `gate` fires.
    struct Gated {
        left: usize,
        read: Arc<AtomicUsize>,
        hold_at: usize,
        gate: Option<tokio::sync::oneshot::Receiver<()>>,
    }
    impl tokio::io::AsyncRead for Gated {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let done = self.read.load(Ordering::SeqCst);
            let held = done >= self.hold_at;
            if let Some(gate) = self.gate.as_mut().filter(|_| held) {
                let _ = ready!(std::pin::Pin::new(gate).poll(cx));
                self.gate = None;
            }
            let mut n = self.left.min(buf.remaining());
            if self.gate.is_some() {
                n = n.min(self.hold_at - done);
            }
            buf.put_slice(&vec![7u8; n]);
            self.left -= n;
            self.read.fetch_add(n, Ordering::SeqCst);
            Poll::Ready(Ok(()))
        }
    }
    use std::future::Future;
    const PART: usize = 5 << 20;
    let ring = Keyring::aes(AesMasterKey::new(SecretBytes::random(32)).expect("aes"));
    // Room for exactly one part buffer (part size + the encryptor's slack).
    let client = S3Cse::new(b.s3.clone(), ring)
        .with_part_size(PART)
        .with_buffer_budget((PART + s3cse::client::PART_SLACK) as u64);
    // Uploads `len` bytes as `key` in a task of its own; returns the count of bytes read.
    let spawn_put = |key: &str, len: usize, max: Option<u64>, hold: Option<(usize, _)>| {
        let read = Arc::new(AtomicUsize::new(0));
        let (hold_at, gate) = hold.map_or((usize::MAX, None), |(at, g)| (at, Some(g)));
        let mut src = Gated {
            left: len,
            read: read.clone(),
            hold_at,
            gate,
        };
        let req = PutRequest {
            bucket: b.bucket.clone(),
            key: key.into(),
            plaintext_len_max: max,
            ..Default::default()
        };
        let client = client.clone();
        let task = tokio::spawn(async move { client.put_from(&req, &mut src).await });
        (task, read)
    };
    let (open, gate) = tokio::sync::oneshot::channel();
    let (a, a_read) = spawn_put("a", 12 << 20, None, Some((6 << 20, gate)));
    // A stops 1 MiB into its second part, holding the budget's only part buffer.
    let t0 = std::time::Instant::now();
    while a_read.load(Ordering::SeqCst) < 6 << 20 {
        assert!(
            t0.elapsed().as_secs() < 60,
            "upload a never reached its hold"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (queued, b_read) = spawn_put("b", 1 << 20, Some(1 << 20), None);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!queued.is_finished(), "b went through a full budget");
    assert_eq!(
        b_read.load(Ordering::SeqCst),
        0,
        "b read its source while waiting for the budget"
    );
    open.send(()).expect("a waits");
    let a = a.await.expect("join").expect("put a");
    let queued = queued.await.expect("join").expect("put b");
    assert_eq!((a.plaintext_len, a.parts), (12 << 20, 3));
    assert_eq!((queued.plaintext_len, queued.parts), (1 << 20, 1));
    assert_eq!(b_read.load(Ordering::SeqCst), 1 << 20);
}
