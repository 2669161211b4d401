//! `s3cse rekey` against the local test bed (SeaweedFS S3 + moto KMS, `scripts/testbed.sh up`),
//! through the real binary. Buckets are seeded by the peers (aioboto3, AWS's Python client) and
//! by s3cse's own legacy writer; results are read back with AWS's Python client under the target
//! key. Without `S3CSE_TESTBED` every test says "skipped" and passes (under CI it fails instead:
//! see `common::testbed`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use s3cse::client::{PutRequest, S3Cse};
use s3cse::codec::{self, WriteFormat};
use s3cse::keyring::{AwsKms, Keyring};

mod common;

use common::{
    Bed, aes_key, aes_key_file, bed, data, kms_key, peer_get, peer_head, peer_put, put_raw_gcm,
    put_v1, put_v1_with, record, rsa_private_key_file, run_s3cse as run, show, vectors,
};

const BIN: &str = env!("CARGO_BIN_EXE_s3cse");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Flips one byte of an object's stored body (the one `at` picks), keeping its metadata.
async fn tamper(b: &Bed, key: &str, at: impl Fn(&[u8]) -> usize) {
    let (mut body, meta) = b.raw_get(key).await;
    let i = at(&body);
    body[i] ^= 0x55;
    b.raw_put(key, body, &meta.into_iter().collect::<Vec<_>>())
        .await;
}

fn ok(o: Output, what: &str) -> Output {
    assert!(o.status.success(), "{what}: {}", show(&o));
    o
}

/// A one-shot stand-in for a Pushgateway: accepts one POST and hands back its body.
fn fake_pushgateway() -> (String, std::thread::JoinHandle<String>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            let n = s.read(&mut chunk).expect("read");
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(p) = text.find("\r\n\r\n") {
                let len = text[..p]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= p + 4 + len {
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    return String::from_utf8_lossy(&buf[p + 4..p + 4 + len]).to_string();
                }
            }
        }
        String::new()
    });
    (url, h)
}

/// Sum of a counter's samples whose labels contain every `want` pair.
fn metric(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Family names a text exposition declares (`# TYPE` lines; counters with `_total`), plus
/// the names of its samples.
fn exposition_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(family), Some(kind)) = (it.next(), it.next()) {
                names.insert(if kind == "counter" && !family.ends_with("_total") {
                    format!("{family}_total")
                } else {
                    family.to_owned()
                });
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            names.insert(line.split(['{', ' ']).next().unwrap_or_default().to_owned());
        }
    }
    names
}

fn save_scrape(text: &str) {
    let path = std::env::var("S3CSE_METRICS_SCRAPE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".testbed/metrics-scrape.txt"));
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&path, text).expect("save scrape");
}

/// `s3cse CMD [URL] --state STATE --kms-key-id TARGET EXTRA...`.
fn rekey_cmd(cmd: &str, url: Option<&str>, state: &str, target: &str, extra: &[&str]) -> Output {
    let mut args = vec![cmd];
    args.extend(url);
    args.extend(["--state", state, "--kms-key-id", target]);
    args.extend_from_slice(extra);
    run(&args)
}

/// `s3cse status --state STATE --json`.
fn status(state: &str) -> serde_json::Value {
    let o = ok(run(&["status", "--state", state, "--json"]), "status");
    serde_json::from_slice(&o.stdout).expect("status json")
}

fn state_file(name: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join(name).display().to_string();
    (dir, p)
}

fn report(state: &str, only: &str) -> Vec<serde_json::Value> {
    let o = ok(
        run(&[
            "report", "--state", state, "--format", "jsonl", "--only", only,
        ]),
        "report",
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("jsonl"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn rekey_migrates_a_mixed_bucket_and_is_idempotent() {
    let Some(b) = bed("rekey-mixed").await else {
        return;
    };
    let (bucket, target) = (&b.bucket, &b.key_id);
    let old = kms_key(&b.kms).await;
    let aes = aes_key_file().display().to_string();
    let rsa_pub = vectors()
        .join("keys/rsa2048-public.pem")
        .display()
        .to_string();
    let rsa = rsa_private_key_file().display().to_string();
    let mut inputs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    // `which` (a peer) puts `n` bytes from `seed` at `key`, with `extra` options.
    let mut peer_seed = |which: &str, key: &str, n: usize, seed: u8, extra: &[&str]| {
        let d = data(n, seed);
        let f = b.write(&format!("in-{seed}"), &d);
        inputs.insert(key.to_owned(), d);
        ok(peer_put(which, bucket, key, &f, extra), key);
    };
    // Peers: aioboto3 V1 raw AES, V1 RSA, KMS CBC, KMS GCM (`kms` wrap); AWS's client V2 and V3.
    let aio = "aioboto3";
    peer_seed(
        aio,
        "aio-v1-aes.bin",
        5000,
        1,
        &["--kind", "symmetric", "--aes-key-file", &aes],
    );
    peer_seed(
        aio,
        "aio-v1-rsa.bin",
        3001,
        2,
        &["--kind", "asymmetric", "--rsa-key-file", &rsa_pub],
    );
    peer_seed(
        aio,
        "aio-kms-cbc.txt",
        777,
        3,
        &[
            "--kind",
            "kms",
            "--kms-key-id",
            &old,
            "--cbc",
            "--content-type",
            "text/plain",
            "--metadata",
            "owner=cbc",
        ],
    );
    peer_seed(
        aio,
        "aio-kms-gcm.bin",
        4096,
        4,
        &[
            "--kind",
            "kms",
            "--kms-key-id",
            &old,
            "--content-type",
            "application/x-gcm",
            "--metadata",
            "owner=gcm",
        ],
    );
    let awsc = "awsclient";
    peer_seed(
        awsc,
        "aws-v2-old.bin",
        2048,
        5,
        &[
            "--kms-key-id",
            &old,
            "--format",
            "v2",
            "--content-type",
            "application/x-old",
            "--metadata",
            "owner=aws",
            "--tag",
            "t1=v1",
            "t2=v 2",
        ],
    );
    peer_seed(
        awsc,
        "aws-v2-current.bin",
        100,
        6,
        &["--kms-key-id", target, "--format", "v2"],
    );
    peer_seed(
        awsc,
        "aws-v3.bin",
        100,
        7,
        &["--kms-key-id", &old, "--format", "v3"],
    );
    // s3cse's own writers: unicode key with metadata, content type and tags; a multipart-size
    // V1 object; a raw-key GCM object (rewrap by Encrypt); plaintext; a corrupt V1 object.
    let uni = "dïr/ünïcødé ☃+x.bin";
    let d = data(1500, 8);
    let mut meta = s3cse::envelope::Metadata::new();
    meta.insert("owner".into(), "uni".into());
    let attrs = s3cse::client::ObjectAttributes {
        content_type: Some("application/x-uni".into()),
        ..Default::default()
    };
    put_v1_with(
        &b.s3,
        bucket,
        uni,
        &d,
        PutRequest {
            metadata: meta,
            attrs,
            tagging: Some("k=v%20w".into()),
            ..Default::default()
        },
    )
    .await;
    inputs.insert(uni.into(), d);
    let big = data(9 << 20, 9);
    put_v1(&b.s3, bucket, "big.bin", &big).await;
    inputs.insert("big.bin".into(), big);
    let d = data(3333, 10);
    put_raw_gcm(&b.s3, bucket, "raw-gcm.bin", &d).await;
    inputs.insert("raw-gcm.bin".into(), d);
    b.raw_put("plain.txt", b"hello".to_vec(), &[]).await;
    put_v1(&b.s3, bucket, "corrupt.bin", &data(1000, 11)).await;
    tamper(&b, "corrupt.bin", |body| body.len() - 1).await;
    // A GCM body under a legacy wrap would only need a rewrap (no body rewrite): its tag is
    // still checked before its key is vouched for under the target key.
    put_raw_gcm(&b.s3, bucket, "raw-gcm-tampered.bin", &data(2000, 12)).await;
    tamper(&b, "raw-gcm-tampered.bin", |body| body.len() / 2).await;

    let before = b.etags().await;
    let (_sd, state) = state_file("mixed.db");
    let (push_url, push) = fake_pushgateway();
    let rekey_with_keys = |extra: &[&str]| {
        b.rekey(
            &state,
            &[&["--rsa-key-file", rsa.as_str()][..], extra].concat(),
        )
    };
    let o = rekey_with_keys(&["--concurrency", "4", "--pushgateway", &push_url]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "the corrupt object fails the run: {}",
        show(&o)
    );
    let pushed = push.join().expect("push");

    let migrated = [
        "aio-v1-aes.bin",
        "aio-v1-rsa.bin",
        "aio-kms-cbc.txt",
        "aio-kms-gcm.bin",
        "aws-v2-old.bin",
        uni,
        "big.bin",
        "raw-gcm.bin",
        // V3 under another KMS key still needs that key: rewrapped, and still V3.
        "aws-v3.bin",
    ];
    for key in migrated {
        let out = b.path("out");
        let o = peer_get("awsclient", bucket, key, &out, &["--kms-key-id", target]);
        assert!(
            o.status.success(),
            "{key} reads with AWS's client under the target key: {}",
            show(&o)
        );
        assert!(
            std::fs::read(&out).expect("out") == inputs[key],
            "{key}: same bytes"
        );
    }
    let head = |key: &str| peer_head(bucket, key);
    let h = head("aws-v2-old.bin");
    assert_eq!(h["content_type"], "application/x-old");
    assert_eq!(h["metadata"]["owner"], "aws");
    assert_eq!(h["tags"], serde_json::json!({"t1": "v1", "t2": "v 2"}));
    let h = head("aio-kms-cbc.txt");
    assert_eq!(h["content_type"], "text/plain");
    assert_eq!(h["metadata"]["owner"], "cbc");
    let h = head(uni);
    assert_eq!(h["content_type"], "application/x-uni");
    assert_eq!(h["metadata"]["owner"], "uni");
    assert_eq!(h["tags"], serde_json::json!({"k": "v w"}));
    assert_eq!(head("aio-kms-gcm.bin")["metadata"]["owner"], "gcm");
    let (_, v3meta) = b.raw_get("aws-v3.bin").await;
    assert_eq!(
        v3meta.get("x-amz-c").map(String::as_str),
        Some("115"),
        "a V3 object stays V3 (key-committing) when rewrapped: {v3meta:?}"
    );

    let after = b.etags().await;
    for key in [
        "aws-v2-current.bin",
        "plain.txt",
        "corrupt.bin",
        "raw-gcm-tampered.bin",
    ] {
        assert_eq!(before[key], after[key], "{key} untouched");
    }
    let failed = report(&state, "failed");
    let failed_keys: Vec<_> = failed.iter().map(|r| r["Key"].as_str()).collect();
    assert_eq!(
        failed_keys,
        [Some("corrupt.bin"), Some("raw-gcm-tampered.bin")],
        "{failed:?}"
    );
    for row in &failed {
        assert_eq!(row["ErrorCode"], "AuthenticationFailed", "{row:?}");
    }

    // One KMS call per migrated object: GenerateDataKey per rewrite (5), ReEncrypt per KMS
    // rewrap (3, the V3 one among them), Encrypt per raw-key rewrap (1); Decrypt only for the KMS-wrapped CBC source;
    // none for the skipped ones. Once per run, the first `kms+context` GCM blob that does not
    // name the target learns the target's signature (4 GenerateDataKey + 1 Decrypt), and a
    // Decrypt pinned to the target says each old-key blob is not the target's (rekey::owner). The corrupt CBC object costs one GenerateDataKey too: CBC
    // cannot be authenticated before its body has streamed through the new encryption. The
    // tampered raw-key GCM object costs none: its tag is checked before the Encrypt.
    let k = |op: &str| {
        metric(
            &pushed,
            "s3cse_kms_requests_total",
            &[("operation", op), ("outcome", "ok")],
        )
    };
    let probe = s3cse::rekey::owner::PROBES as f64;
    assert_eq!(k("GenerateDataKey"), 5.0 + 1.0 + probe, "{pushed}");
    assert_eq!(k("ReEncrypt"), 3.0);
    assert_eq!(k("Encrypt"), 1.0);
    assert_eq!(k("Decrypt"), 1.0 + 1.0);
    let refused = metric(
        &pushed,
        "s3cse_kms_requests_total",
        &[("operation", "Decrypt"), ("outcome", "error")],
    );
    assert_eq!(
        refused, 2.0,
        "KMS refused each old-key blob (2) pinned to the target (moto: AccessDenied, not learned)"
    );
    assert_eq!(k("DescribeKey"), 1.0, "the target key is resolved once");
    let objects =
        |text: &str, result: &str| metric(text, "s3cse_rekey_objects_total", &[("result", result)]);
    assert_eq!(objects(&pushed, "rewritten"), 5.0, "{pushed}");
    assert_eq!(objects(&pushed, "rewrapped"), 4.0);
    assert_eq!(objects(&pushed, "skipped"), 2.0);
    assert_eq!(objects(&pushed, "failed"), 2.0);
    assert!(
        !pushed.contains("s3cse_rekey_last_success_timestamp_seconds"),
        "a failed run does not claim success: {pushed}"
    );

    // A second run writes nothing, calls KMS for nothing but DescribeKey, succeeds, and leaves
    // its final metrics in the textfile.
    let textfile = b.path("s3cse.prom");
    let o = rekey_with_keys(&["--metrics-textfile", &textfile.display().to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(b.etags().await, after, "second run wrote nothing");
    let final_metrics = std::fs::read_to_string(&textfile).expect("metrics textfile");
    // The chart tests check the dashboard's and alerts' names against this real exposition;
    // it is a successful run's, so it has the last-success timestamp too.
    save_scrape(&final_metrics);
    for name in s3cse::metrics::METRIC_NAMES {
        assert!(
            exposition_names(&final_metrics).contains(name),
            "{name} missing from\n{final_metrics}"
        );
    }
    let k2 = |op: &str| {
        metric(
            &final_metrics,
            "s3cse_kms_requests_total",
            &[("operation", op)],
        )
    };
    for op in ["GenerateDataKey", "ReEncrypt", "Encrypt", "Decrypt"] {
        assert_eq!(k2(op), 0.0, "{op}: no KMS call per skipped object");
    }
    assert_eq!(k2("DescribeKey"), 1.0);
    assert_eq!(objects(&final_metrics, "rewritten"), 0.0);
    assert_eq!(objects(&final_metrics, "rewrapped"), 0.0);
    assert_eq!(
        metric(
            &final_metrics,
            "s3cse_rekey_queue_objects",
            &[("state", "done")]
        ),
        11.0
    );
    let st = status(&state);
    assert_eq!(st["by_state"]["done"]["objects"], 11, "{st}");
    assert_eq!(st["by_state"]["failed"]["objects"], 2, "{st}");

    // --retry-failed puts the failed objects back in the queue: they are examined again (and,
    // still corrupt, fail again: exit 1), while the done ones stay untouched.
    let retry_metrics = b.path("retry.prom");
    let o = rekey_with_keys(&[
        "--retry-failed",
        "--metrics-textfile",
        &retry_metrics.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let retried = std::fs::read_to_string(&retry_metrics).expect("metrics textfile");
    assert_eq!(
        objects(&retried, "failed"),
        2.0,
        "the failed objects were examined again"
    );
    assert_eq!(
        objects(&retried, "rewritten") + objects(&retried, "rewrapped"),
        0.0
    );
    assert_eq!(
        b.etags().await,
        after,
        "a retry of a corrupt object writes nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_writes_nothing_and_reports_the_plan() {
    let Some(b) = bed("rekey-dry").await else {
        return;
    };
    put_v1(&b.s3, &b.bucket, "a.bin", &data(100, 1)).await;
    put_v1(&b.s3, &b.bucket, "b.bin", &data(200, 2)).await;
    put_raw_gcm(&b.s3, &b.bucket, "c.bin", &data(300, 3)).await;
    b.raw_put("p.txt", b"plain".to_vec(), &[]).await;
    let before = b.etags().await;
    let (_sd, state) = state_file("dry.db");
    let o = b.rekey(&state, &["--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("rewrite") && out.contains("rewrap") && out.contains("skip:plaintext"),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("rewrite"))
        .expect("rewrite line");
    assert!(line.split_whitespace().nth(1) == Some("2"), "{line}");
    assert_eq!(b.etags().await, before, "dry run wrote nothing");
    // The jobs are still pending, with the plan recorded: status and report show it.
    let pending = report(&state, "pending");
    assert_eq!(pending.len(), 4);
    let plan: BTreeMap<String, (String, String)> = pending
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (s("Key"), (s("action"), s("source_format")))
        })
        .collect();
    assert_eq!(plan["a.bin"].0, "rewrite", "{pending:?}");
    assert_eq!(plan["c.bin"].0, "rewrap", "{pending:?}");
    assert_eq!(plan["p.txt"], ("skip".into(), "plaintext".into()));
    let st = status(&state);
    assert_eq!(st["planned"]["rewrite"]["objects"], 2, "{st}");
    assert_eq!(st["planned"]["rewrap"]["objects"], 1, "{st}");
    assert_eq!(st["planned"]["skip:plaintext"]["objects"], 1, "{st}");
    assert_eq!(
        st["by_action"],
        serde_json::json!({}),
        "nothing done yet: {st}"
    );

    // A real run afterwards does the work and replaces the plan by what was done.
    let o = b.rekey(&state, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let st = status(&state);
    assert_eq!(st["planned"], serde_json::json!({}), "{st}");
    assert_eq!(st["by_action"]["rewrite"]["objects"], 2, "{st}");
    assert_eq!(st["by_action"]["rewrap"]["objects"], 1, "{st}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_overwritten_between_scan_and_work_is_not_clobbered() {
    let Some(b) = bed("rekey-race").await else {
        return;
    };
    for i in 0..3u8 {
        put_v1(&b.s3, &b.bucket, &format!("o{i}"), &data(500, i)).await;
    }
    let (_sd, state) = state_file("race.db");
    let aes = aes_key_file().display().to_string();
    ok(run(&["scan", &b.bucket_url(), "--state", &state]), "scan");
    // Someone writes new content after the scan.
    let newer = data(777, 99);
    put_v1(&b.s3, &b.bucket, "o1", &newer).await;
    let o = rekey_cmd("work", None, &state, &b.key_id, &["--aes-key-file", &aes]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(
        b.get_strict("o1").await,
        newer,
        "the newer content survives"
    );
    for i in [0u8, 2] {
        assert_eq!(b.get_strict(&format!("o{i}")).await, data(500, i));
    }
    let store = s3cse::store::JobStore::open(Path::new(&state))
        .await
        .expect("store");
    let rows: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(store.report(None))
        .await
        .expect("rows");
    let row = rows.iter().find(|r| r.key == "o1").expect("o1 row");
    let job = store.job(row.id).await.expect("job").expect("job");
    assert_eq!(job.state, s3cse::store::JobState::Done);
    assert!(
        job.conflicts >= 1,
        "the change was noticed and the job requeued: {job:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_run_resumes_and_loses_nothing() {
    let Some(b) = bed("rekey-kill").await else {
        return;
    };
    const N: u8 = 120;
    let mut puts = Vec::new();
    for i in 0..N {
        let (s3, bucket) = (b.s3.clone(), b.bucket.clone());
        puts.push(tokio::spawn(async move {
            put_v1(
                &s3,
                &bucket,
                &format!("k/{i:03}"),
                &data(300 + i as usize, i),
            )
            .await;
        }));
    }
    for p in puts {
        p.await.expect("seed");
    }
    let (_sd, state) = state_file("kill.db");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut child = b
        .rekey_command(&state)
        .args([
            "--concurrency",
            "2",
            "--s3-rps",
            "40",
            "--metrics-addr",
            &addr,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let t = Instant::now();
    let mut scraped = None;
    loop {
        assert!(t.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(300)).await;
        if scraped.is_none()
            && let Ok(text) = scrape(&addr)
            && text.contains("s3cse_rekey_objects_total")
        {
            scraped = Some(text);
        }
        let o = run(&["status", "--state", &state, "--json"]);
        if !o.status.success() {
            continue;
        }
        let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if st["by_state"]["done"]["objects"].as_u64().unwrap_or(0) >= 10 {
            break;
        }
    }
    child.kill().expect("kill -9");
    let _ = child.wait();
    if let Some(text) = scraped {
        assert!(text.contains("s3cse_s3_requests_total"), "{text}");
    }
    let o = run(&["status", "--state", &state, "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status");
    assert!(
        st["by_state"]["pending"]["objects"].as_u64().unwrap_or(0) > 0,
        "killed midway: {st}"
    );

    let o = b.rekey(&state, &["--concurrency", "8"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let st = status(&state);
    assert_eq!(st["by_state"]["done"]["objects"], u64::from(N), "{st}");
    for i in 0..N {
        let got = b.get_strict(&format!("k/{i:03}")).await;
        assert!(got == data(300 + i as usize, i), "k/{i:03}");
    }
}

/// GET /metrics with a bare HTTP/1.0 request.
fn scrape(addr: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// Sum of a counter's samples (any labels) whose labels contain every `want` pair, from a text
/// exposition, as u64.
fn count(text: &str, name: &str, want: &[(&str, &str)]) -> u64 {
    metric(text, name, want) as u64
}

/// Rewrap above `--copy-part-threshold` goes through the multipart copy (UploadPartCopy in
/// 5 MiB parts, S3's minimum): a ~12 MiB V2 object written by AWS's Python client under an old
/// key reads back with that client under the target key, with its content type, metadata and
/// tags; a small one next to it still takes one CopyObject.
#[tokio::test(flavor = "multi_thread")]
async fn rewrap_above_the_copy_threshold_is_a_multipart_copy() {
    let Some(b) = bed("rekey-mpcopy").await else {
        return;
    };
    let (bucket, target) = (&b.bucket, &b.key_id);
    let old = kms_key(&b.kms).await;
    let big = data((12 << 20) - 12_345, 21);
    let small = data(4321, 22);
    for (key, d) in [("big-gcm.bin", &big), ("small-gcm.bin", &small)] {
        let f = b.write(key, d);
        let put = [
            "--kms-key-id",
            &old,
            "--format",
            "v2",
            "--content-type",
            "application/x-big",
            "--metadata",
            "owner=mp",
            "--tag",
            "t=big one",
        ];
        ok(peer_put("awsclient", bucket, key, &f, &put), "aws v2 put");
    }
    let (_sd, state) = state_file("mpcopy.db");
    let textfile = b.path("metrics.prom");
    let part = (5u64 << 20).to_string();
    let o = rekey_cmd(
        "rekey",
        Some(&b.bucket_url()),
        &state,
        target,
        &[
            "--copy-part-threshold",
            &part,
            "--copy-part-size",
            &part,
            "--metrics-textfile",
            &textfile.display().to_string(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    for (key, want) in [("big-gcm.bin", &big), ("small-gcm.bin", &small)] {
        let out = b.path("out");
        ok(
            peer_get("awsclient", bucket, key, &out, &["--kms-key-id", target]),
            key,
        );
        assert!(
            std::fs::read(&out).expect("out") == *want,
            "{key}: same bytes"
        );
        let h = peer_head(bucket, key);
        assert_eq!(h["content_type"], "application/x-big", "{key}");
        assert_eq!(h["metadata"]["owner"], "mp", "{key}");
        assert_eq!(h["tags"], serde_json::json!({"t": "big one"}), "{key}");
    }
    let rows = report(&state, "done");
    assert!(
        rows.len() == 2 && rows.iter().all(|r| r["action"] == "rewrap"),
        "both rewrapped: {rows:?}"
    );

    let m = std::fs::read_to_string(&textfile).expect("metrics textfile");
    let s3_ok = |op: &str| {
        count(
            &m,
            "s3cse_s3_requests_total",
            &[("operation", op), ("outcome", "ok")],
        )
    };
    // 12 MiB - 12,345 bytes (+16 tag bytes) in 5 MiB parts: 5 + 5 + ~2.
    assert_eq!(s3_ok("CreateMultipartUpload"), 1, "{m}");
    assert_eq!(s3_ok("UploadPartCopy"), 3, "{m}");
    assert_eq!(s3_ok("CompleteMultipartUpload"), 1, "{m}");
    assert_eq!(
        count(
            &m,
            "s3cse_s3_requests_total",
            &[("operation", "AbortMultipartUpload")]
        ),
        0
    );
    assert_eq!(s3_ok("CopyObject"), 1, "the small object: one CopyObject");
    // One KMS call per rewrapped object, none else but DescribeKey and which key wraps the old
    // blobs (rekey::owner: the target's signature, 4 GenerateDataKey + 1 Decrypt, once, and a
    // Decrypt pinned to the target per old blob, which moto refuses without teaching).
    let kms = |op: &str| count(&m, "s3cse_kms_requests_total", &[("operation", op)]);
    assert_eq!(kms("ReEncrypt"), 2, "{m}");
    assert_eq!(kms("GenerateDataKey"), s3cse::rekey::owner::PROBES as u64);
    assert_eq!(kms("Decrypt"), 1 + 2);
    assert_eq!(kms("Encrypt"), 0);
    assert_eq!(
        count(&m, "s3cse_rekey_objects_total", &[("result", "rewrapped")]),
        2
    );
}

/// A KMS client that overwrites one object the first time `encrypt` is called: it runs after
/// the worker's HEAD and before its copy, so it stands in for a writer racing the rewrap.
struct RacingKms {
    inner: Arc<dyn s3cse::keyring::KmsClient>,
    s3: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    newer: Vec<u8>,
    fired: std::sync::atomic::AtomicBool,
}

impl s3cse::keyring::KmsClient for RacingKms {
    fn generate_data_key<'a>(
        &'a self,
        key_id: &'a str,
        context: &'a s3cse::envelope::Context,
    ) -> futures::future::BoxFuture<
        'a,
        Result<(s3cse::secret::SecretBytes, Vec<u8>), s3cse::keyring::KmsError>,
    > {
        self.inner.generate_data_key(key_id, context)
    }

    fn decrypt<'a>(
        &'a self,
        key_id: Option<&'a str>,
        blob: &'a [u8],
        context: &'a s3cse::envelope::Context,
    ) -> futures::future::BoxFuture<'a, Result<s3cse::secret::SecretBytes, s3cse::keyring::KmsError>>
    {
        self.inner.decrypt(key_id, blob, context)
    }

    fn encrypt<'a>(
        &'a self,
        key_id: &'a str,
        plaintext: &'a s3cse::secret::SecretBytes,
        context: &'a s3cse::envelope::Context,
    ) -> futures::future::BoxFuture<'a, Result<Vec<u8>, s3cse::keyring::KmsError>> {
        Box::pin(async move {
            if !self.fired.swap(true, std::sync::atomic::Ordering::SeqCst) {
                put_raw_gcm(&self.s3, &self.bucket, &self.key, &self.newer).await;
            }
            self.inner.encrypt(key_id, plaintext, context).await
        })
    }

    fn re_encrypt<'a>(
        &'a self,
        blob: &'a [u8],
        source_context: &'a s3cse::envelope::Context,
        key_id: &'a str,
        context: &'a s3cse::envelope::Context,
    ) -> futures::future::BoxFuture<'a, Result<Vec<u8>, s3cse::keyring::KmsError>> {
        self.inner.re_encrypt(blob, source_context, key_id, context)
    }
}

/// The multipart copy is conditional on the ETag HEAD saw: an object overwritten after the HEAD
/// fails the copy with 412 (nothing of the older object is committed, the upload is aborted),
/// the job is requeued, and the newer object is what gets rewrapped. Drives `rekey::run`
/// directly, with a KMS client that overwrites the object mid-job.
#[tokio::test(flavor = "multi_thread")]
async fn a_multipart_copy_rewrap_is_conditional_on_the_etag() {
    use s3cse::metrics::{Metrics, Outcome};
    use s3cse::rekey::limit::RateLimit;

    let Some(b) = bed("rekey-mprace").await else {
        return;
    };
    let older = data(11 << 20, 31);
    let newer = data((11 << 20) + 777, 32);
    put_raw_gcm(&b.s3, &b.bucket, "race.bin", &older).await;

    let metrics = Arc::new(Metrics::new("test"));
    let target_key = s3cse::rekey::kms::describe_key(&b.kms, &b.key_id, &metrics)
        .await
        .expect("describe key");
    let racing = RacingKms {
        inner: Arc::new(AwsKms::new(b.kms.clone())),
        s3: b.s3.clone(),
        bucket: b.bucket.clone(),
        key: "race.bin".into(),
        newer: newer.clone(),
        fired: std::sync::atomic::AtomicBool::new(false),
    };
    // The production decorator on top: it counts the KMS requests.
    let kms: Arc<dyn s3cse::keyring::KmsClient> = Arc::new(s3cse::rekey::kms::RekeyKms::new(
        Arc::new(racing),
        RateLimit::default(),
        metrics.clone(),
    ));
    let m = metrics.clone();
    let client = S3Cse::new(b.s3.clone(), Keyring::aes(aes_key()))
        .with_policy(codec::DecryptPolicy::legacy())
        .with_observer(Arc::new(move |op, outcome, took| {
            use s3cse::client::RequestOutcome as R;
            let outcome = match outcome {
                R::Ok => Outcome::Ok,
                R::Error => Outcome::Error,
                R::Throttled => Outcome::Throttled,
                R::PreconditionFailed => Outcome::PreconditionFailed,
                R::NotFound => Outcome::NotFound,
            };
            m.s3_request(op, outcome, took);
        }));
    let (_sd, state) = state_file("mprace.db");
    let store = s3cse::store::JobStore::open(Path::new(&state))
        .await
        .expect("store");
    let config = s3cse::rekey::RekeyConfig {
        copy_part_threshold: 5 << 20,
        copy_part_size: 5 << 20,
        ..common::rekey_config(&b, client, kms, target_key, store.clone(), metrics.clone()).await
    };
    let summary = s3cse::rekey::run(config, s3cse::rekey::Shutdown::never())
        .await
        .expect("run");
    assert_eq!(summary.work.migrated, 1, "{summary:?}");
    assert_eq!(
        summary.work.requeued, 1,
        "the race was noticed: {summary:?}"
    );

    assert_eq!(
        b.get_strict("race.bin").await,
        newer,
        "the newer object survives, rewrapped"
    );
    let text = metrics.encode();
    let s3 = |op: &str, outcome: &str| {
        count(
            &text,
            "s3cse_s3_requests_total",
            &[("operation", op), ("outcome", outcome)],
        )
    };
    // The first attempt's parts were refused (x-amz-copy-source-if-match) and the upload
    // aborted; the second attempt copied the newer object's 3 parts.
    assert!(
        s3("UploadPartCopy", "precondition_failed") >= 1,
        "the part copies carry the ETag condition:\n{text}"
    );
    // (The second attempt aborts the recorded upload id again, in case the first attempt's
    // own abort had not gone through; S3 answers 404 for an upload already gone, SeaweedFS ok.)
    assert!(s3("AbortMultipartUpload", "ok") >= 1, "{text}");
    assert_eq!(s3("CompleteMultipartUpload", "ok"), 1, "{text}");
    assert_eq!(s3("CompleteMultipartUpload", "precondition_failed"), 0);
    assert_eq!(metrics.kms_requests("Encrypt"), 2, "one per attempt");
    assert_eq!(
        count(
            &text,
            "s3cse_rekey_retries_total",
            &[("service", "s3"), ("reason", "conflict")]
        ),
        1
    );
    let rows: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(store.report(None))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1);
    let job = store.job(rows[0].id).await.expect("job").expect("job");
    assert_eq!(job.state, s3cse::store::JobState::Done);
    assert_eq!(job.conflicts, 1, "{job:?}");
}

/// A multipart copy in progress is recorded in the job's intent as soon as it starts: a run
/// killed (SIGKILL) in the middle of it leaves exactly that upload open, and the resumed run
/// aborts it before it rewraps the object again, so no parts are left behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_multipart_copy_killed_midway_leaves_no_parts() {
    let Some(b) = bed("rekey-killcopy").await else {
        return;
    };
    let old = kms_key(&b.kms).await;
    let body = data(20 << 20, 31);
    let ring = Keyring::kms(s3cse::keyring::KmsKeyring::new(
        Arc::new(AwsKms::new(b.kms.clone())),
        &old,
    ));
    let req = PutRequest {
        bucket: b.bucket.clone(),
        key: "big.bin".into(),
        format: WriteFormat::V2,
        ..Default::default()
    };
    S3Cse::new(b.s3.clone(), ring)
        .put_from(&req, &mut &body[..])
        .await
        .expect("put under the old key");
    let (_sd, state) = state_file("killcopy.db");
    let part = (5u64 << 20).to_string();
    // 4 UploadPartCopy at 2 S3 requests per second: the copy is open for about 2 s.
    let mut child = Command::new(BIN)
        .args([
            "rekey",
            &b.bucket_url(),
            "--state",
            &state,
            "--kms-key-id",
            &b.key_id,
            "--copy-part-threshold",
            &part,
            "--copy-part-size",
            &part,
            "--s3-rps",
            "2",
        ])
        .env("S3CSE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let recorded = {
        let t = Instant::now();
        loop {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no upload id recorded"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            let Ok(db) = sqlx::SqlitePool::connect(&format!("sqlite://{state}")).await else {
                continue;
            };
            let row: Option<(Option<String>,)> = sqlx::query_as("SELECT intent FROM jobs")
                .fetch_optional(&db)
                .await
                .unwrap_or(None);
            db.close().await;
            let intent: Option<serde_json::Value> = row
                .and_then(|(i,)| i)
                .and_then(|i| serde_json::from_str(&i).ok());
            if let Some(id) = intent.and_then(|i| i["upload_id"].as_str().map(str::to_owned)) {
                break id;
            }
        }
    };
    child.kill().expect("kill -9");
    let _ = child.wait();
    assert_eq!(
        b.open_uploads().await,
        vec![recorded.clone()],
        "the killed run left its recorded upload open"
    );

    let o = rekey_cmd(
        "rekey",
        Some(&b.bucket_url()),
        &state,
        &b.key_id,
        &["--copy-part-threshold", &part, "--copy-part-size", &part],
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(
        b.open_uploads().await,
        Vec::<String>::new(),
        "no parts left"
    );
    assert!(
        b.get_strict("big.bin").await == body,
        "rewrapped, same bytes"
    );
}

/// A multipart upload that an attempt started and never finished (the process died) is in the
/// job's intent; the next attempt aborts it, so no parts are left behind. An upload nobody
/// recorded (another writer's) is not touched, and one already gone (completed or aborted:
/// 404 `NoSuchUpload`) does not hold the object up.
#[tokio::test]
async fn an_upload_left_by_a_dead_attempt_is_aborted() {
    let Some(b) = bed("rekey-orphan").await else {
        return;
    };
    put_v1(&b.s3, &b.bucket, "a.bin", &data(700, 2)).await;
    put_v1(&b.s3, &b.bucket, "b.bin", &data(800, 4)).await;
    // Two open uploads with a part each: one as a dead attempt of ours leaves it, one not ours.
    let mut ids = Vec::new();
    for key in ["a.bin", "other.bin"] {
        let up =
            b.s3.create_multipart_upload()
                .bucket(&b.bucket)
                .key(key)
                .send()
                .await
                .expect("create upload");
        let id = up.upload_id().expect("upload id").to_owned();
        b.s3.upload_part()
            .bucket(&b.bucket)
            .key(key)
            .upload_id(&id)
            .part_number(1)
            .body(data(1024, 3).into())
            .send()
            .await
            .expect("upload part");
        ids.push(id);
    }
    let mut both = ids.clone();
    both.sort();
    assert_eq!(b.open_uploads().await, both);

    let (_sd, state) = state_file("orphan.db");
    ok(run(&["scan", &b.bucket_url(), "--state", &state]), "scan");
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{state}"))
        .await
        .expect("open state");
    let intent = serde_json::json!({
        "action": "rewrite",
        "source_format": "v1-aes",
        "source_etag": null,
        "source_version_id": null,
        "upload_id": ids[0],
    });
    let n = sqlx::query("UPDATE jobs SET intent = ?1 WHERE key = 'a.bin'")
        .bind(intent.to_string())
        .execute(&db)
        .await
        .expect("simulate the dead attempt")
        .rows_affected();
    assert_eq!(n, 1);
    let mut gone = intent.clone();
    gone["upload_id"] = "an-upload-that-is-gone".into();
    sqlx::query("UPDATE jobs SET intent = ?1 WHERE key = 'b.bin'")
        .bind(gone.to_string())
        .execute(&db)
        .await
        .expect("an attempt whose upload is gone");

    let o = b.rekey(&state, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(
        b.open_uploads().await,
        vec![ids[1].clone()],
        "the recorded upload is aborted, the other one is left alone"
    );
    for (key, want) in [("a.bin", data(700, 2)), ("b.bin", data(800, 4))] {
        let row: (String, Option<String>) =
            sqlx::query_as("SELECT state, intent FROM jobs WHERE key = ?1")
                .bind(key)
                .fetch_one(&db)
                .await
                .expect("row");
        assert_eq!(
            row,
            ("done".to_owned(), None),
            "{key}: migrated, intent cleared"
        );
        assert_eq!(b.get_strict(key).await, want, "{key}");
    }
}

/// A worker that dies after its write and before recording it: the next run finds the object
/// already current, and records the write from the intent kept in the state file (action,
/// source format, the replaced version: the way back), writing nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_whose_outcome_was_lost_is_recorded_from_its_intent() {
    let Some(b) = bed("rekey-intent").await else {
        return;
    };
    b.enable_versioning().await;
    put_v1(&b.s3, &b.bucket, "a.bin", &data(700, 1)).await;
    let source =
        b.s3.head_object()
            .bucket(&b.bucket)
            .key("a.bin")
            .send()
            .await
            .expect("head");
    let (src_etag, src_version) = (
        source.e_tag().expect("etag").to_owned(),
        source.version_id().expect("versioned").to_owned(),
    );
    let (_sd, state) = state_file("intent.db");
    assert_eq!(b.rekey(&state, &[]).status.code(), Some(0));
    let after = b.etags().await;

    // Put the row back as a crash after the write leaves it: running under a dead worker's
    // expired lease, the listed (source) ETag, no outcome, and the intent the worker recorded.
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{state}"))
        .await
        .expect("open state");
    let (intent,): (Option<String>,) = sqlx::query_as("SELECT intent FROM jobs")
        .fetch_one(&db)
        .await
        .expect("row");
    assert_eq!(intent, None, "a recorded outcome clears the intent");
    // The envelope there now is the one an earlier attempt wrote: its fingerprint is among the
    // intent's earlier ones, while the latest attempt's (dropped at its deadline, say) never
    // landed. A write that lands late is still recognised as ours.
    let (_, meta) = b.raw_get("a.bin").await;
    let written =
        s3cse::envelope::decode(&s3cse::client::normalize_metadata(Some(&meta))).expect("envelope");
    let intent = serde_json::json!({
        "action": "rewrite",
        "source_format": "v1-aes",
        "source_etag": src_etag,
        "source_version_id": src_version,
        "fingerprint": "ffffffffffffffffffffffffffffffff",
        "earlier_fingerprints": [s3cse::rekey::fingerprint(&written)],
    });
    sqlx::query(
        "UPDATE jobs SET state = 'running', lease_owner = 'gone-host:1:1', \
         lease_until = unixepoch() - 1, etag = ?1, version_id = NULL, source_format = NULL, \
         action = NULL, result_etag = NULL, result_version_id = NULL, \
         previous_version_id = NULL, plaintext_sha256 = NULL, finished_at = NULL, intent = ?2",
    )
    .bind(&src_etag)
    .bind(intent.to_string())
    .execute(&db)
    .await
    .expect("simulate the crash");

    let o = b.rekey(&state, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(b.etags().await, after, "nothing written again");
    let row: (
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ) = sqlx::query_as(
        "SELECT state, action, source_format, previous_version_id, intent FROM jobs",
    )
    .fetch_one(&db)
    .await
    .expect("row");
    assert_eq!(
        row,
        (
            "done".to_owned(),
            Some("rewrite".to_owned()),
            Some("v1-aes".to_owned()),
            Some(src_version.clone()),
            None
        ),
        "the write is recorded with the way back"
    );
    // ...and verified now, as any write: decrypted under the target key, its plaintext hashed.
    let (sha,): (Option<String>,) = sqlx::query_as("SELECT plaintext_sha256 FROM jobs")
        .fetch_one(&db)
        .await
        .expect("row");
    use sha2::Digest as _;
    assert_eq!(
        sha,
        Some(hex::encode(sha2::Sha256::digest(data(700, 1)))),
        "the recovered write was read back and decrypted"
    );
    let done = report(&state, "done");
    assert_eq!(done[0]["VersionId"], src_version.as_str(), "{done:?}");
    db.close().await;
}

/// A fault in the S3 client's HTTP layer, injected by an SDK interceptor: the `nth` (1-based)
/// response to an `operation` (as the SDK names it, e.g. `PutObject`) has its status replaced,
/// after the server acted on the request: the answer to a write that landed is lost.
#[derive(Debug)]
struct LoseAnswer {
    operation: &'static str,
    /// Which responses to replace: every one from `from` to `to` (1-based, inclusive).
    from: u32,
    to: u32,
    status: u16,
    seen: std::sync::atomic::AtomicU32,
}

impl LoseAnswer {
    fn new(operation: &'static str, from: u32, to: u32, status: u16) -> Arc<Self> {
        Arc::new(LoseAnswer {
            operation,
            from,
            to,
            status,
            seen: std::sync::atomic::AtomicU32::new(0),
        })
    }
}

#[derive(Debug)]
struct LoseAnswerInterceptor(Arc<LoseAnswer>);

impl aws_sdk_s3::config::Intercept for LoseAnswerInterceptor {
    fn name(&self) -> &'static str {
        "LoseAnswer"
    }

    fn modify_before_deserialization(
        &self,
        ctx: &mut aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextMut<'_>,
        _rc: &aws_sdk_s3::config::RuntimeComponents,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let f = &self.0;
        let op = cfg.load::<aws_smithy_runtime_api::client::orchestrator::Metadata>();
        if op.map(|m| m.name()) != Some(f.operation) {
            return Ok(());
        }
        let n = f.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if (f.from..=f.to).contains(&n) {
            let body = format!(
                "<?xml version=\"1.0\"?><Error><Code>{}</Code><Message>injected</Message></Error>",
                if f.status == 403 {
                    "AccessDenied"
                } else {
                    "InternalError"
                }
            );
            let resp = ctx.response_mut();
            *resp.status_mut() = f.status.try_into().expect("status");
            let len = body.len().to_string();
            *resp.body_mut() = aws_smithy_types::body::SdkBody::from(body);
            let h = resp.headers_mut();
            h.insert("content-length", len);
            h.insert("content-type", "application/xml");
            for k in ["etag", "x-amz-meta-x-amz-key", "x-amz-meta-x-amz-key-v2"] {
                h.remove(k);
            }
        }
        Ok(())
    }
}

/// Runs `rekey` in-process over the bed's bucket with `faults` injected into its S3 client;
/// legacy objects are read with the vectors' AES key and KMS (any key), as the CLI does.
async fn rekey_with_faults(
    b: &Bed,
    state: &str,
    faults: &[Arc<LoseAnswer>],
) -> s3cse::rekey::RunSummary {
    rekey_in_process(b, state, faults, None, Duration::from_secs(600))
        .await
        .expect("run")
}

/// [`rekey_with_faults`] with, optionally, a misbehaving KMS client in front of the real one,
/// and the given `--object-timeout`; the run's own result.
async fn rekey_in_process(
    b: &Bed,
    state: &str,
    faults: &[Arc<LoseAnswer>],
    misbehave: Option<Misbehave>,
    object_timeout: Duration,
) -> Result<s3cse::rekey::RunSummary, s3cse::rekey::RekeyError> {
    use s3cse::keyring::KmsKeyring;
    use s3cse::metrics::Metrics;
    use s3cse::rekey::limit::RateLimit;

    let conf = common::sdk_config().await;
    let mut s3conf = aws_sdk_s3::config::Builder::from(&conf).force_path_style(true);
    for f in faults {
        s3conf = s3conf.interceptor(LoseAnswerInterceptor(f.clone()));
    }
    let s3 = aws_sdk_s3::Client::from_conf(s3conf.build());
    let metrics = Arc::new(Metrics::new("test"));
    let target = s3cse::rekey::kms::describe_key(&b.kms, &b.key_id, &metrics)
        .await
        .expect("describe key");
    let real: Arc<dyn s3cse::keyring::KmsClient> = Arc::new(AwsKms::new(b.kms.clone()));
    let inner: Arc<dyn s3cse::keyring::KmsClient> = match misbehave {
        Some(how) => Arc::new(MisbehavingKms { inner: real, how }),
        None => real,
    };
    let kms: Arc<dyn s3cse::keyring::KmsClient> = Arc::new(s3cse::rekey::kms::RekeyKms::new(
        inner,
        RateLimit::default(),
        metrics.clone(),
    ));
    let ring = Keyring::aes(aes_key()).with_kms(KmsKeyring::any_key(kms.clone(), None));
    let client = S3Cse::new(s3, ring).with_policy(codec::DecryptPolicy::legacy());
    let store = s3cse::store::JobStore::open(Path::new(state))
        .await
        .expect("store");
    let config = s3cse::rekey::RekeyConfig {
        object_timeout,
        ..common::rekey_config(b, client, kms, target, store.clone(), metrics).await
    };
    let result = s3cse::rekey::run(config, s3cse::rekey::Shutdown::never()).await;
    store.close().await;
    result
}

/// Issue 10, defect 2: S3 takes the PUT, its answer is lost (500), the SDK's retry gets 412.
/// Before the fix the job was requeued and the next attempt recorded the object "skip:
/// current", unverified, without the replaced version. Also a CopyObject rewrap whose answer
/// is lost on every attempt (the copy landed, with the same ETag).
#[tokio::test(flavor = "multi_thread")]
async fn a_write_whose_answer_was_lost_is_recorded_as_the_write_it_was() {
    let Some(b) = bed("rekey-lost").await else {
        return;
    };
    b.enable_versioning().await;
    put_v1(&b.s3, &b.bucket, "cbc.bin", &data(5000, 3)).await;
    put_raw_gcm(&b.s3, &b.bucket, "gcm.bin", &data(3000, 4)).await;
    let (v_cbc, v_gcm) = (b.version_of("cbc.bin").await, b.version_of("gcm.bin").await);
    let (_sd, state) = state_file("lost.db");
    let put = LoseAnswer::new("PutObject", 1, 1, 500);
    let copy = LoseAnswer::new("CopyObject", 1, 100, 500);
    let summary = rekey_with_faults(&b, &state, &[put.clone(), copy.clone()]).await;
    assert!(
        put.seen.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the PUT was retried"
    );
    assert_eq!(summary.work.migrated, 2, "{summary:?}");
    let (s, action, format, prev, code, _) = record(&state, "cbc.bin").await;
    assert_eq!(
        (
            s.as_str(),
            action.as_deref(),
            format.as_deref(),
            prev.as_deref(),
            code
        ),
        (
            "done",
            Some("rewrite"),
            Some("v1-aes-ecb-cbc"),
            Some(v_cbc.as_str()),
            None
        )
    );
    let (s, action, _, prev, code, _) = record(&state, "gcm.bin").await;
    assert_eq!(
        (s.as_str(), action.as_deref(), prev.as_deref(), code),
        ("done", Some("rewrap"), Some(v_gcm.as_str()), None)
    );
    for (key, want) in [("cbc.bin", data(5000, 3)), ("gcm.bin", data(3000, 4))] {
        assert_eq!(b.aws_reads(key), want, "{key} reads back under the target");
    }
}

/// Issue 10, defect 3: a verify that fails after the write is recorded failed *with* what was
/// written (the result ETag, the replaced version) and keeps the intent; the next scan leaves
/// it alone, and `--retry-failed` settles it as the rewrite it was (before the fix: the scan
/// reset it and the next run recorded "skip: current").
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_verify_is_recorded_with_the_write_and_settled_later() {
    let Some(b) = bed("rekey-verify").await else {
        return;
    };
    b.enable_versioning().await;
    put_v1(&b.s3, &b.bucket, "v.bin", &data(4000, 5)).await;
    let v0 = b.version_of("v.bin").await;
    let (_sd, state) = state_file("verify.db");
    // GET 1 reads the source (head + body at once), GET 2 is the verify read: refused, and so
    // is every later read (a retry's), so the run ends with the object failed.
    let verify = LoseAnswer::new("GetObject", 2, 100, 403);
    let summary = rekey_with_faults(&b, &state, &[verify]).await;
    assert_eq!(summary.work.failed, 1, "{summary:?}");
    let (s, action, format, prev, code, result) = record(&state, "v.bin").await;
    assert_eq!(
        (
            s.as_str(),
            action.as_deref(),
            format.as_deref(),
            prev.as_deref()
        ),
        (
            "failed",
            Some("rewrite"),
            Some("v1-aes-ecb-cbc"),
            Some(v0.as_str())
        ),
    );
    assert!(code.is_some(), "the failure's code is recorded");
    let now = b.etags().await;
    assert_eq!(
        result.as_deref(),
        now.get("v.bin").map(String::as_str),
        "the written ETag"
    );

    // A rescan leaves the failed record alone; a retry settles it without writing again.
    let o = b.rekey(&state, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(
        record(&state, "v.bin").await.0,
        "failed",
        "not reset by the rescan"
    );
    let o = b.rekey(&state, &["--retry-failed"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(b.etags().await, now, "nothing written again");
    let (s, action, format, prev, code, _) = record(&state, "v.bin").await;
    assert_eq!(
        (
            s.as_str(),
            action.as_deref(),
            format.as_deref(),
            prev.as_deref(),
            code
        ),
        (
            "done",
            Some("rewrite"),
            Some("v1-aes-ecb-cbc"),
            Some(v0.as_str()),
            None
        )
    );
    assert_eq!(b.aws_reads("v.bin"), data(4000, 5));
}

/// Issue 10, defect 4: an intent left behind by a crash before the write must not claim a
/// later application write that happens to be current: its replaced version would be ours in
/// the report, and a rollback from the report would destroy the application's newer data.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_intent_never_claims_another_writers_object() {
    let Some(b) = bed("rekey-stale").await else {
        return;
    };
    b.enable_versioning().await;
    put_v1(&b.s3, &b.bucket, "app.bin", &data(900, 6)).await;
    let v0 = b.version_of("app.bin").await;
    let listed = b.etags().await["app.bin"].clone();
    let (_sd, state) = state_file("stale.db");
    assert_eq!(
        run(&["scan", &b.bucket_url(), "--state", &state])
            .status
            .code(),
        Some(0)
    );
    // A worker recorded its intent and died before writing (its fingerprint is of an
    // envelope that never reached S3)...
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{state}"))
        .await
        .expect("open state");
    let intent = serde_json::json!({
        "action": "rewrite", "source_format": "v1-aes", "source_etag": listed,
        "source_version_id": v0, "fingerprint": "00000000000000000000000000000000",
    });
    sqlx::query(
        "UPDATE jobs SET state = 'running', lease_owner = 'gone-host:1:1', \
         lease_until = unixepoch() - 1, attempts = 1, intent = ?1",
    )
    .bind(intent.to_string())
    .execute(&db)
    .await
    .expect("simulate the crash");
    db.close().await;
    // ...then the application wrote the object anew, under the target key (current).
    let app = b.write("app.txt", &data(1200, 7));
    let o = run(&[
        "put",
        &app.display().to_string(),
        &b.url("app.bin"),
        "--kms-key-id",
        &b.key_id,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let before = b.etags().await;

    let o = b.rekey(&state, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(
        b.etags().await,
        before,
        "the application's object is left as it is"
    );
    let (s, action, _, prev, _, result) = record(&state, "app.bin").await;
    assert_eq!(
        (s.as_str(), action.as_deref(), prev, result),
        ("done", Some("skip"), None, None),
        "recorded as the current object it is, not as our rewrite of v0"
    );
    assert_eq!(b.aws_reads("app.bin"), data(1200, 7));
}

/// How [`MisbehavingKms`] misbehaves on GenerateDataKey (every other call goes through).
#[derive(Debug, Clone, Copy)]
enum Misbehave {
    /// Never answers: a hung request.
    Hang,
    /// Panics: a bug.
    Panic,
}

struct MisbehavingKms {
    inner: Arc<dyn s3cse::keyring::KmsClient>,
    how: Misbehave,
}

impl s3cse::keyring::KmsClient for MisbehavingKms {
    fn generate_data_key<'a>(
        &'a self,
        _key_id: &'a str,
        _context: &'a s3cse::envelope::Context,
    ) -> futures::future::BoxFuture<
        'a,
        Result<(s3cse::secret::SecretBytes, Vec<u8>), s3cse::keyring::KmsError>,
    > {
        let how = self.how;
        Box::pin(async move {
            match how {
                Misbehave::Hang => futures::future::pending().await,
                Misbehave::Panic => panic!("injected panic in GenerateDataKey"),
            }
        })
    }

    fn decrypt<'a>(
        &'a self,
        key_id: Option<&'a str>,
        blob: &'a [u8],
        context: &'a s3cse::envelope::Context,
    ) -> futures::future::BoxFuture<'a, Result<s3cse::secret::SecretBytes, s3cse::keyring::KmsError>>
    {
        self.inner.decrypt(key_id, blob, context)
    }

    fn encrypt<'a>(
        &'a self,
        key_id: &'a str,
        plaintext: &'a s3cse::secret::SecretBytes,
        context: &'a s3cse::envelope::Context,
    ) -> futures::future::BoxFuture<'a, Result<Vec<u8>, s3cse::keyring::KmsError>> {
        self.inner.encrypt(key_id, plaintext, context)
    }

    fn re_encrypt<'a>(
        &'a self,
        blob: &'a [u8],
        source_context: &'a s3cse::envelope::Context,
        key_id: &'a str,
        context: &'a s3cse::envelope::Context,
    ) -> futures::future::BoxFuture<'a, Result<Vec<u8>, s3cse::keyring::KmsError>> {
        self.inner.re_encrypt(blob, source_context, key_id, context)
    }
}

/// Issue 10, item 8: a panicking worker task was only logged (its lease renewed until the
/// process exited, exit code possibly 0). Now its job is recorded failed (`Panic`), the other
/// objects are done, and the run ends with an error.
#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_task_is_recorded_failed_and_fails_the_run() {
    let Some(b) = bed("rekey-panic").await else {
        return;
    };
    put_v1(&b.s3, &b.bucket, "cbc.bin", &data(800, 8)).await;
    put_raw_gcm(&b.s3, &b.bucket, "gcm.bin", &data(900, 9)).await;
    let before = b.etags().await;
    let (_sd, state) = state_file("panic.db");
    let r = rekey_in_process(
        &b,
        &state,
        &[],
        Some(Misbehave::Panic),
        Duration::from_secs(600),
    )
    .await;
    assert!(
        matches!(r, Err(s3cse::rekey::RekeyError::Internal(_))),
        "the run fails: {r:?}"
    );
    let (s, _, _, _, code, _) = record(&state, "cbc.bin").await;
    assert_eq!((s.as_str(), code.as_deref()), ("failed", Some("Panic")));
    assert_eq!(b.etags().await["cbc.bin"], before["cbc.bin"], "untouched");
    // The rewrap (no GenerateDataKey) went on and was done.
    let gcm = record(&state, "gcm.bin").await;
    assert_eq!(gcm.0, "done", "{gcm:?}");
}

/// Issue 10, item 8: a request that hangs held its object's lease forever (no per-object
/// deadline). Now the attempt is dropped at `--object-timeout`, retried, and recorded failed
/// (`ObjectTimeout`) when every attempt hangs; the object is untouched.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_object_times_out_and_is_recorded() {
    let Some(b) = bed("rekey-hang").await else {
        return;
    };
    put_v1(&b.s3, &b.bucket, "hang.bin", &data(700, 10)).await;
    let before = b.etags().await;
    let (_sd, state) = state_file("hang.db");
    let started = Instant::now();
    let summary = rekey_in_process(
        &b,
        &state,
        &[],
        Some(Misbehave::Hang),
        Duration::from_secs(1),
    )
    .await
    .expect("run");
    assert_eq!(summary.work.failed, 1, "{summary:?}");
    assert!(started.elapsed() < Duration::from_secs(120), "bounded");
    let (s, _, _, _, code, _) = record(&state, "hang.bin").await;
    assert_eq!(
        (s.as_str(), code.as_deref()),
        ("failed", Some("ObjectTimeout"))
    );
    assert_eq!(b.etags().await, before, "untouched");
}

/// Issue 10, item 8: `attempts` was never capped, so an object that kills its worker came back
/// every run. A job claimed more than `--max-attempts` times without an outcome is recorded
/// failed (`TooManyAttempts`) without being touched; `--retry-failed` gives it another round.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_claimed_too_often_is_recorded_failed() {
    let Some(b) = bed("rekey-poison").await else {
        return;
    };
    put_v1(&b.s3, &b.bucket, "poison.bin", &data(600, 11)).await;
    let (_sd, state) = state_file("poison.db");
    assert_eq!(
        run(&["scan", &b.bucket_url(), "--state", &state])
            .status
            .code(),
        Some(0)
    );
    // As if ten processes in a row had died on it.
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{state}"))
        .await
        .expect("open state");
    sqlx::query(
        "UPDATE jobs SET state = 'running', lease_owner = 'gone-host:1:1', \
         lease_until = unixepoch() - 1, attempts = 10",
    )
    .execute(&db)
    .await
    .expect("simulate the crashes");
    db.close().await;
    let before = b.etags().await;
    let o = b.rekey(&state, &["--max-attempts", "10"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let (s, _, _, _, code, _) = record(&state, "poison.bin").await;
    assert_eq!(
        (s.as_str(), code.as_deref()),
        ("failed", Some("TooManyAttempts"))
    );
    assert_eq!(b.etags().await, before, "untouched");
    let o = b.rekey(&state, &["--retry-failed"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(record(&state, "poison.bin").await.0, "done");
}

/// Issue 10, item 5: a `.instruction` object left beside an object that has its own envelope
/// in the metadata (a crash between the write and the delete, or another tool) still holds a
/// content key under the legacy key: it is deleted, conditionally; an orphan without its object
/// is recorded and left alone (audit lists it).
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_instruction_file_is_deleted_and_an_orphan_recorded() {
    let Some(b) = bed("rekey-stale-instr").await else {
        return;
    };
    let app = b.write("app.txt", &data(1000, 12));
    let o = run(&[
        "put",
        &app.display().to_string(),
        &b.url("cur.bin"),
        "--kms-key-id",
        &b.key_id,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    // A legacy envelope in an instruction file beside it, and one with no object at all.
    let (_, legacy_meta) = {
        put_v1(&b.s3, &b.bucket, "tmp-v1.bin", &data(10, 13)).await;
        b.raw_get("tmp-v1.bin").await
    };
    b.s3.delete_object()
        .bucket(&b.bucket)
        .key("tmp-v1.bin")
        .send()
        .await
        .expect("delete");
    let file = serde_json::to_vec(&legacy_meta).expect("json");
    for key in ["cur.bin.instruction", "gone.bin.instruction"] {
        b.put_instruction(key, file.clone()).await;
    }
    let (_sd, state) = state_file("stale-instr.db");
    let o = b.rekey(&state, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let keys = b.keys().await;
    assert!(
        !keys.contains(&"cur.bin.instruction".to_owned()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"gone.bin.instruction".to_owned()),
        "{keys:?}"
    );
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{state}"))
        .await
        .expect("open state");
    let reasons: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT key, state, skip_reason FROM jobs WHERE key LIKE '%.instruction' ORDER BY key",
    )
    .fetch_all(&db)
    .await
    .expect("rows");
    db.close().await;
    assert_eq!(
        reasons,
        [
            (
                "cur.bin.instruction".to_owned(),
                "done".to_owned(),
                Some("stale-instruction-deleted".to_owned())
            ),
            (
                "gone.bin.instruction".to_owned(),
                "done".to_owned(),
                Some("orphan-instruction".to_owned())
            ),
        ]
    );
    assert_eq!(
        b.aws_reads("cur.bin"),
        data(1000, 12),
        "the object reads as before"
    );
}

/// Review finding (data loss): any object whose name ends in `.instruction` was taken for an
/// instruction file, and deleted as stale when `report` beside it had its own envelope. Only an
/// object with the instruction-file marker (or an instruction file's JSON body) is one: a data
/// object named so is migrated like any other, and never deleted.
#[tokio::test(flavor = "multi_thread")]
async fn a_data_object_named_like_an_instruction_file_is_migrated_not_deleted() {
    let Some(b) = bed("rekey-instr-name").await else {
        return;
    };
    put_v1(&b.s3, &b.bucket, "report", &data(500, 14)).await;
    put_v1(&b.s3, &b.bucket, "report.instruction", &data(2000, 15)).await;
    let (_sd, state) = state_file("instr-name.db");
    let o = b.rekey(&state, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let keys = b.keys().await;
    assert!(
        keys.contains(&"report.instruction".to_owned()),
        "never deleted: {keys:?}"
    );
    let (s, action, format, ..) = record(&state, "report.instruction").await;
    assert_eq!(
        (s.as_str(), action.as_deref(), format.as_deref()),
        ("done", Some("rewrite"), Some("v1-aes-ecb-cbc"))
    );
    assert_eq!(b.aws_reads("report.instruction"), data(2000, 15));
    assert_eq!(b.aws_reads("report"), data(500, 14));
}
