//! `rekey --manifest` (S3 Inventory and Batch Operations manifests) and `report --to` (a Batch
//! Operations completion report in S3), through the real binary against the test bed.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Output;

use md5::{Digest, Md5};
use s3cse::manifest::{encode_key, split_csv_line};
use s3cse::rekey::report::{REPORT_FORMAT, REPORT_SCHEMA, ReportManifest};

mod common;

use common::{Bed, aes_key_file, bed, data, put_v1, report_statuses, run_s3cse as run, show};

/// `s3cse rekey s3://BUCKET/PREFIX --manifest URL --state STATE ...` (legacy objects under the
/// vectors' AES key, to the bed's KMS key).
fn rekey_manifest(b: &Bed, prefix: &str, manifest: &str, state: &str, extra: &[&str]) -> Output {
    let url = format!("s3://{}/{prefix}", b.bucket);
    let aes = aes_key_file().display().to_string();
    let mut args = vec![
        "rekey",
        url.as_str(),
        "--manifest",
        manifest,
        "--state",
        state,
        "--kms-key-id",
        b.key_id.as_str(),
        "--aes-key-file",
        aes.as_str(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

async fn put(b: &Bed, key: &str, body: Vec<u8>) {
    b.s3.put_object()
        .bucket(&b.bucket)
        .key(key)
        .body(body.into())
        .send()
        .await
        .expect("put");
}

async fn get(b: &Bed, key: &str) -> Vec<u8> {
    let o =
        b.s3.get_object()
            .bucket(&b.bucket)
            .key(key)
            .send()
            .await
            .expect("get");
    o.body.collect().await.expect("body").to_vec()
}

fn gzip(text: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text.as_bytes()).expect("gzip");
    e.finish().expect("gzip")
}

/// The keys whose ETag differs between two snapshots of the bucket.
fn changed(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    before
        .iter()
        .filter(|(k, e)| after.get(*k) != Some(*e))
        .map(|(k, _)| k.clone())
        .collect()
}

/// The log without its terminal colours.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

const SCHEMA: &str = "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, ETag, StorageClass";

#[tokio::test(flavor = "multi_thread")]
async fn an_inventory_manifest_rekeys_exactly_its_rows_and_reports_to_s3() {
    let Some(b) = bed("manifest-inv").await else {
        return;
    };
    // Listed: three legacy objects (one key that needs URL encoding) and one that cannot be
    // read (failed). Unlisted: one under the prefix. Listed but outside the prefix: one.
    let listed = ["in/a.bin", "in/b c+d é.bin", "in/c.bin"];
    for (i, k) in listed.iter().enumerate() {
        put_v1(&b.s3, &b.bucket, k, &data(1000 + i, i as u8)).await;
    }
    put_v1(&b.s3, &b.bucket, "in/unlisted.bin", &data(10, 9)).await;
    put_v1(&b.s3, &b.bucket, "out/x.bin", &data(10, 8)).await;
    // A V1 envelope whose wrapped key is garbage: a job that fails.
    b.raw_put(
        "in/broken.bin",
        data(32, 7),
        &[
            ("x-amz-key".into(), "AAAA".into()),
            ("x-amz-iv".into(), "AAAAAAAAAAAAAAAAAAAAAA==".into()),
            ("x-amz-matdesc".into(), "{}".into()),
        ],
    )
    .await;
    let before = b.etags().await;
    let row = |k: &str| {
        let e = before[k].trim_matches('"');
        format!(
            "\"{}\",\"{}\",\"\",\"true\",\"false\",\"1000\",\"{e}\",\"STANDARD\"\n",
            b.bucket,
            encode_key(k)
        )
    };
    // Two data files: the first with a malformed row and a delete marker, the second with
    // the out-of-prefix row.
    let file1 = format!(
        "{}\"{}\",\"in/bad\",\"\",\"true\"\n{}\"{}\",\"in/gone.bin\",\"v\",\"true\",\"true\",\"\",\"\",\"\"\n",
        row(listed[0]),
        b.bucket,
        row(listed[1]),
        b.bucket
    );
    let file2 = format!(
        "{}{}{}",
        row(listed[2]),
        row("out/x.bin"),
        row("in/broken.bin")
    );
    let mut files = Vec::new();
    for (i, text) in [file1, file2].iter().enumerate() {
        let gz = gzip(text);
        let key = format!("inventory/{}/cfg/data/part-{i}.csv.gz", b.bucket);
        files.push(serde_json::json!({
            "key": key,
            "size": gz.len(),
            "MD5checksum": hex::encode(Md5::digest(&gz)),
        }));
        put(&b, &key, gz).await;
    }
    let manifest = serde_json::json!({
        "sourceBucket": b.bucket,
        "destinationBucket": format!("arn:aws:s3:::{}", b.bucket),
        "version": "2016-11-30",
        "creationTimestamp": "1514944800000",
        "fileFormat": "CSV",
        "fileSchema": SCHEMA,
        "files": files,
    });
    let mkey = format!("inventory/{}/cfg/2026-11-30T00-00Z/manifest.json", b.bucket);
    put(&b, &mkey, serde_json::to_vec(&manifest).expect("json")).await;
    let before = b.etags().await;

    let state = b.path("jobs.db").display().to_string();
    let o = rekey_manifest(&b, "in/", &b.url(&mkey), &state, &[]);
    // The broken object fails: exit 1, the rest migrated.
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("1 outside the bucket/prefix, 1 malformed, 1 delete markers"),
        "{}",
        show(&o)
    );
    let err = strip_ansi(&String::from_utf8_lossy(&o.stderr));
    assert!(
        err.contains("part-0.csv.gz") && err.contains("line=2") && err.contains("malformed"),
        "the malformed row is reported with its file and line: {err}"
    );
    assert!(
        err.contains("part-1.csv.gz") && err.contains("line=2") && err.contains("outside"),
        "the outside row is reported with its file and line: {err}"
    );
    let after = b.etags().await;
    let mut want: Vec<String> = listed.iter().map(|k| k.to_string()).collect();
    want.sort();
    assert_eq!(changed(&before, &after), want, "exactly the listed objects");
    let statuses = report_statuses(&state);
    assert_eq!(statuses.len(), 4, "{statuses:?}");
    assert!(listed.iter().all(|k| statuses[*k] == "succeeded"));
    assert_eq!(statuses["in/broken.bin"], "failed");

    // A second run reads the manifest again: the known rows (same ETag) are left as they are.
    let o = rekey_manifest(&b, "in/", &b.url(&mkey), &state, &[]);
    assert_ne!(o.status.code(), Some(2), "{}", show(&o));
    assert_eq!(b.etags().await, after, "a second run writes nothing");

    // report --to: the Batch Operations layout, small files so the rows are split.
    let to = format!("s3://{}/reports/", b.bucket);
    let o = run(&[
        "report",
        "--state",
        &state,
        "--to",
        &to,
        "--job-id",
        "00000000-1111-4222-8333-444444444444",
        "--max-file-bytes",
        "60",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let job = "reports/job-00000000-1111-4222-8333-444444444444";
    let m: ReportManifest =
        serde_json::from_slice(&get(&b, &format!("{job}/manifest.json")).await).expect("manifest");
    assert_eq!(m.format, REPORT_FORMAT);
    assert_eq!(m.report_schema, REPORT_SCHEMA);
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for f in &m.results {
        assert_eq!(f.bucket, b.bucket);
        assert!(f.key.starts_with(&format!("{job}/results/")), "{}", f.key);
        let body = get(&b, &f.key).await;
        assert_eq!(hex::encode(Md5::digest(&body)), f.md5_checksum, "{}", f.key);
        for line in String::from_utf8(body).expect("utf8").lines() {
            let cells = split_csv_line(line).expect("csv");
            assert_eq!(cells.len(), 7, "{line}");
            assert_eq!(cells[0], b.bucket);
            assert_eq!(cells[3], f.task_execution_status, "{line}");
            seen.insert(cells[1].clone(), cells[3].clone());
        }
    }
    assert_eq!(seen, statuses, "every finished job, once, under its status");
    let succeeded = m
        .results
        .iter()
        .filter(|f| f.task_execution_status == "succeeded")
        .count();
    assert!(succeeded >= 2, "split into files of bounded size: {m:?}");
    assert_eq!(
        m.results
            .iter()
            .filter(|f| f.task_execution_status == "failed")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_operations_manifest_resumes_where_an_interrupted_run_stopped() {
    let Some(b) = bed("manifest-batch").await else {
        return;
    };
    let keys: Vec<String> = (0..12).map(|i| format!("p/obj {i:02}.bin")).collect();
    for (i, k) in keys.iter().enumerate() {
        put_v1(&b.s3, &b.bucket, k, &data(100 + i, i as u8)).await;
    }
    put_v1(&b.s3, &b.bucket, "p/unlisted.bin", &data(10, 1)).await;
    let before = b.etags().await;
    let rows: Vec<String> = keys
        .iter()
        .map(|k| format!("{},{}\n", b.bucket, encode_key(k)))
        .collect();
    // Two gzip members: the first (6 rows) whole, the second cut short. The first run enqueues
    // what it could read in batches of 2 and stops with the damaged file (exit 2).
    let first = gzip(&rows[..6].concat());
    let second = gzip(&rows[6..].concat());
    let cut = [&first[..], &second[..second.len() / 2]].concat();
    let mkey = "manifests/batch.csv.gz";
    put(&b, mkey, cut).await;
    let state = b.path("jobs.db").display().to_string();
    let batch = ["--manifest-batch", "2"];
    let o = rekey_manifest(&b, "p/", &b.url(mkey), &state, &batch);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let mut now = b.etags().await;
    now.remove(mkey);
    assert_eq!(now, before, "nothing migrated before the manifest is read");
    let enqueued = report_statuses(&state);
    assert!(
        enqueued.len() >= 6 && enqueued.len() < 12,
        "the whole batches before the damage: {enqueued:?}"
    );

    // The manifest repaired: the next run reads only the rows after the checkpoint.
    put(&b, mkey, [first, second].concat()).await;
    let o = rekey_manifest(&b, "p/", &b.url(mkey), &state, &batch);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let resumed = format!("manifest: read {} rows", 12 - enqueued.len());
    assert!(out.contains(&resumed), "{resumed}: {}", show(&o));
    let after = b.etags().await;
    assert_eq!(changed(&before, &after), keys, "exactly the listed objects");
    let statuses = report_statuses(&state);
    assert_eq!(statuses.len(), 12);
    assert!(statuses.values().all(|s| s == "succeeded"), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_manifests_are_refused_before_any_write() {
    let Some(b) = bed("manifest-bad").await else {
        return;
    };
    put_v1(&b.s3, &b.bucket, "k.bin", &data(10, 1)).await;
    let state = b.path("jobs.db").display().to_string();
    let parquet = serde_json::json!({
        "sourceBucket": b.bucket,
        "destinationBucket": format!("arn:aws:s3:::{}", b.bucket),
        "fileFormat": "Parquet",
        "fileSchema": "message s3.inventory { required binary bucket; }",
        "files": [],
    });
    put(
        &b,
        "m/manifest.json",
        serde_json::to_vec(&parquet).expect("json"),
    )
    .await;
    let o = rekey_manifest(&b, "", &b.url("m/manifest.json"), &state, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Parquet inventory not supported yet: use CSV"),
        "{}",
        show(&o)
    );
    // A data file whose MD5 is not the manifest's: not read.
    let gz = gzip(&format!("\"{}\",\"k.bin\"\n", b.bucket));
    put(&b, "m/data.csv.gz", gz).await;
    let bad = serde_json::json!({
        "sourceBucket": b.bucket,
        "destinationBucket": format!("arn:aws:s3:::{}", b.bucket),
        "fileFormat": "CSV",
        "fileSchema": "Bucket, Key",
        "files": [{"key": "m/data.csv.gz", "size": 1, "MD5checksum": "00000000000000000000000000000000"}],
    });
    put(
        &b,
        "m/manifest.json",
        serde_json::to_vec(&bad).expect("json"),
    )
    .await;
    let before = b.etags().await;
    let o = rekey_manifest(&b, "", &b.url("m/manifest.json"), &state, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not match the manifest's"),
        "{}",
        show(&o)
    );
    assert_eq!(b.etags().await, before);
    assert!(report_statuses(&state).is_empty());
}
