//! A malformed bucket: every way an object can be broken (issue 11, item 2), next to good
//! objects. `s3cse get` fails each broken one with exit 1 and its error class; `s3cse rekey`
//! records each as failed with the reason, leaves it byte-for-byte untouched (ETag, body and
//! metadata compared before and after), migrates the good ones and exits 1.
//!
//! The broken objects are derived from objects written by s3cse's own writers (V1 AES/ECB +
//! CBC, V2 AES/GCM + GCM, V3 committing) and by aioboto3 (KMS, GCM), changed by hand.

mod common;

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Bed, aes_key, aes_key_file, bed, data, peer_put, run_s3cse as run, show};
use s3cse::codec::{self, WriteFormat};
use s3cse::envelope::Metadata;
use s3cse::keyring::Keyring;

/// An EDK that unwraps under no key: the opaque failure of a key that does not unwrap, or, for
/// a V1 EDK whose length is not AES/ECB's 48 bytes (so an RSA one), no RSA key to try.
const ANY_KEY_FAILURE: &str = "AuthenticationFailed|NoMatchingKey";

/// A broken object: what to store, and the error class `get` must name.
struct Case {
    key: String,
    body: Vec<u8>,
    meta: Metadata,
    /// `<key>.instruction`, stored beside it.
    instruction: Option<Vec<u8>>,
    storage_class: Option<&'static str>,
    class: &'static str,
}

/// A good object of `format` (`v1`, `v2`, `v3`) under the vectors' AES key: body and envelope.
async fn good(format: &str, plain: &[u8]) -> (Vec<u8>, Metadata) {
    let ring = Keyring::aes(aes_key());
    let len = Some(plain.len() as u64);
    let enc = match format {
        "v1" => codec::new_legacy_v1_encryption(&ring, len).expect("v1"),
        "v2" => codec::new_encryption(&ring, WriteFormat::V2, &Default::default(), len)
            .await
            .expect("v2"),
        _ => codec::new_encryption(&ring, WriteFormat::V3, &Default::default(), len)
            .await
            .expect("v3"),
    };
    let mut body = Vec::new();
    let (env, _) = codec::encrypt_stream(enc, &mut &plain[..], &mut body)
        .await
        .expect("encrypt");
    (body, env.to_metadata())
}

fn with(meta: &Metadata, k: &str, v: &str) -> Metadata {
    let mut m = meta.clone();
    m.insert(k.into(), v.into());
    m
}

async fn cases() -> Vec<Case> {
    let plain = data(1000, 42);
    let (v1, m1) = good("v1", &plain).await;
    let (v2, m2) = good("v2", &plain).await;
    let (v3, m3) = good("v3", &plain).await;
    let (_, om3) = good("v3", &data(1000, 43)).await;
    let mut out = Vec::new();
    let mut add = |key: &str, body: &[u8], meta: Metadata, class: &'static str| {
        out.push(Case {
            key: key.into(),
            body: body.to_vec(),
            meta,
            instruction: None,
            storage_class: None,
            class,
        });
    };
    // Bad base64 in each envelope field.
    for (name, body, meta, field) in [
        ("v1", &v1, &m1, "x-amz-key"),
        ("v1", &v1, &m1, "x-amz-iv"),
        ("v2", &v2, &m2, "x-amz-key-v2"),
        ("v2", &v2, &m2, "x-amz-iv"),
        ("v3", &v3, &m3, "x-amz-3"),
        ("v3", &v3, &m3, "x-amz-d"),
        ("v3", &v3, &m3, "x-amz-i"),
    ] {
        add(
            &format!("b64/{name}/{field}"),
            body,
            with(meta, field, "not*base64!"),
            "MalformedEnvelope",
        );
    }
    // IVs of the wrong length.
    add(
        "iv/v1-12",
        &v1,
        with(&m1, "x-amz-iv", &B64.encode([7u8; 12])),
        "MalformedEnvelope",
    );
    add(
        "iv/v2-16",
        &v2,
        with(&m2, "x-amz-iv", &B64.encode([7u8; 16])),
        "MalformedEnvelope",
    );
    // Encrypted data keys of every wrong length (V1 AES/ECB: 48; V2/V3 AES/GCM: 60).
    for n in [1usize, 15, 16, 32, 47, 49, 64, 256, 512] {
        add(
            &format!("edk/v1-{n}"),
            &v1,
            with(&m1, "x-amz-key", &B64.encode(vec![0x41u8; n])),
            ANY_KEY_FAILURE,
        );
    }
    for n in [1usize, 12, 28, 44, 59, 61, 300] {
        add(
            &format!("edk/v2-{n}"),
            &v2,
            with(&m2, "x-amz-key-v2", &B64.encode(vec![0x41u8; n])),
            ANY_KEY_FAILURE,
        );
        add(
            &format!("edk/v3-{n}"),
            &v3,
            with(&m3, "x-amz-3", &B64.encode(vec![0x41u8; n])),
            ANY_KEY_FAILURE,
        );
    }
    // Unknown or mixed-case algorithms.
    for (k, field, v) in [
        ("alg/cek-unknown", "x-amz-cek-alg", "AES/XTS/NoPadding"),
        ("alg/cek-mixed-case", "x-amz-cek-alg", "aes/gcm/nopadding"),
        ("alg/wrap-unknown", "x-amz-wrap-alg", "ROT13"),
        ("alg/wrap-mixed-case", "x-amz-wrap-alg", "aes/gcm"),
    ] {
        add(k, &v2, with(&m2, field, v), "UnknownFormat");
    }
    add(
        "alg/v3-wrap-unknown",
        &v3,
        with(&m3, "x-amz-w", "99"),
        "UnknownFormat",
    );
    add(
        "alg/v3-suite-unknown",
        &v3,
        with(&m3, "x-amz-c", "114"),
        "UnknownFormat",
    );
    // Material descriptions that are not JSON, or JSON bombs (as deep as 2 KiB allows).
    add(
        "matdesc/not-json",
        &v2,
        with(&m2, "x-amz-matdesc", "{not json"),
        "MalformedEnvelope",
    );
    add(
        "matdesc/deep",
        &v2,
        with(
            &m2,
            "x-amz-matdesc",
            &format!("{}{}", "[".repeat(700), "]".repeat(700)),
        ),
        "MalformedEnvelope",
    );
    add(
        "matdesc/array",
        &v1,
        with(&m1, "x-amz-matdesc", "[1,2,3]"),
        "MalformedEnvelope",
    );
    // A body shorter than its tag; a CBC body not a multiple of 16; a tampered GCM body.
    // Without a recorded length (not every writer records one) the body itself must fail; with
    // one, the length already cannot be.
    let nolen = |m: &Metadata| {
        let mut m = m.clone();
        m.remove("x-amz-unencrypted-content-length");
        m
    };
    add(
        "body/gcm-short",
        &v2[..10],
        nolen(&m2),
        "AuthenticationFailed",
    );
    add(
        "body/gcm-short-length",
        &v2[..10],
        m2.clone(),
        "MalformedEnvelope",
    );
    add("body/gcm-empty", &[], nolen(&m2), "AuthenticationFailed");
    add(
        "body/v3-short",
        &v3[..15],
        nolen(&m3),
        "AuthenticationFailed",
    );
    add(
        "body/cbc-ragged",
        &v1[..v1.len() - 5],
        m1.clone(),
        "AuthenticationFailed",
    );
    add(
        "body/cbc-ragged-nolength",
        &v1[..v1.len() - 5],
        nolen(&m1),
        "AuthenticationFailed",
    );
    add("body/cbc-empty", &[], nolen(&m1), "AuthenticationFailed");
    let mut flipped = v2.clone();
    flipped[500] ^= 1;
    add(
        "body/gcm-flipped",
        &flipped,
        m2.clone(),
        "AuthenticationFailed",
    );
    // A V3 object with another object's commitment (and with a made-up one).
    add(
        "v3/other-commitment",
        &v3,
        with(&m3, "x-amz-d", &om3["x-amz-d"]),
        "AuthenticationFailed",
    );
    add(
        "v3/zero-commitment",
        &v3,
        with(&m3, "x-amz-d", &B64.encode([0u8; 28])),
        "AuthenticationFailed",
    );
    // x-amz-unencrypted-content-length lying in both directions: for GCM and V3 the stored
    // length tells at once; for CBC within the padding's 16 bytes only decryption does, beyond
    // them the length does.
    for (name, body, meta, class) in [
        ("v1", &v1, &m1, "AuthenticationFailed"),
        ("v2", &v2, &m2, "MalformedEnvelope"),
        ("v3", &v3, &m3, "MalformedEnvelope"),
    ] {
        for (dir, n) in [("short", "999"), ("long", "1001")] {
            add(
                &format!("length/{name}-{dir}"),
                body,
                with(meta, "x-amz-unencrypted-content-length", n),
                class,
            );
        }
        for (dir, n) in [("very-short", "10"), ("very-long", "1000000")] {
            add(
                &format!("length/{name}-{dir}"),
                body,
                with(meta, "x-amz-unencrypted-content-length", n),
                "MalformedEnvelope",
            );
        }
    }
    add(
        "length/not-a-number",
        &v2,
        with(&m2, "x-amz-unencrypted-content-length", "-1"),
        "MalformedEnvelope",
    );
    // A key with a newline; a key of 1,024 bytes (S3's maximum). Both tampered.
    add(
        "key/with\nnewline",
        &flipped,
        m2.clone(),
        "AuthenticationFailed",
    );
    // (SeaweedFS refuses a path segment over 255 bytes: 1,024 in segments, then in one.)
    let segmented = format!("key/{}", format!("{}/", "k".repeat(199)).repeat(5)) + &"k".repeat(20);
    assert_eq!(segmented.len(), 1024);
    add(&segmented, &flipped, m2.clone(), "AuthenticationFailed");
    let long = format!("key/{}", "k".repeat(1020));
    add(&long, &flipped, m2.clone(), "AuthenticationFailed");
    // Instruction files: huge, empty, not JSON, and another object's.
    let (obj3, _) = {
        let mut env = s3cse::envelope::decode(&m3).expect("v3");
        env.location = s3cse::envelope::Location::InstructionFile;
        env.to_instruction_file()
    };
    let (_, other_file3) = s3cse::envelope::decode(&om3)
        .expect("v3")
        .to_instruction_file();
    let (obj1, _) = s3cse::envelope::decode(&m1)
        .expect("v1")
        .to_instruction_file();
    let mut huge = b"{\"x-amz-matdesc\":\"".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 2 << 20));
    huge.extend_from_slice(b"\"}");
    let mut bomb = b"{\"x-amz-matdesc\":".to_vec();
    bomb.extend(std::iter::repeat_n(b'[', 300_000));
    bomb.extend(std::iter::repeat_n(b']', 300_000));
    bomb.push(b'}');
    for (k, obj, body, file, class) in [
        ("ins/v1-huge", &obj1, &v1, huge, "MalformedEnvelope"),
        ("ins/v1-bomb", &obj1, &v1, bomb, "MalformedEnvelope"),
        ("ins/v1-empty", &obj1, &v1, Vec::new(), "MalformedEnvelope"),
        (
            "ins/v1-not-json",
            &obj1,
            &v1,
            b"x-amz-key: 1".to_vec(),
            "MalformedEnvelope",
        ),
        ("ins/v3-empty", &obj3, &v3, Vec::new(), "MalformedEnvelope"),
        (
            "ins/v3-other-object",
            &obj3,
            &v3,
            other_file3,
            "AuthenticationFailed",
        ),
        (
            "ins/v3-not-an-object",
            &obj3,
            &v3,
            b"[]".to_vec(),
            "MalformedEnvelope",
        ),
    ] {
        out.push(Case {
            key: k.into(),
            body: body.clone(),
            meta: obj.clone(),
            instruction: Some(file),
            storage_class: None,
            class,
        });
    }
    // An object in GLACIER (the store may ignore the class: then it is a good V2 object).
    out.push(Case {
        key: "glacier/v2".into(),
        body: v2.clone(),
        meta: m2.clone(),
        instruction: None,
        storage_class: Some("GLACIER"),
        class: "",
    });
    out
}

/// ETag, body and user metadata of every object in the bucket.
async fn snapshot(b: &Bed) -> BTreeMap<String, (String, Vec<u8>, BTreeMap<String, String>)> {
    let mut out = BTreeMap::new();
    for (k, etag) in b.etags().await {
        let (body, meta) = b.raw_get(&k).await;
        out.insert(k, (etag, body, meta.into_iter().collect()));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_bucket_fails_each_object_and_changes_none() {
    let Some(b) = bed("malformed").await else {
        return;
    };
    let cases = cases().await;
    let mut refused = Vec::new();
    for c in &cases {
        let mut req =
            b.s3.put_object()
                .bucket(&b.bucket)
                .key(&c.key)
                .body(c.body.clone().into());
        for (k, v) in &c.meta {
            req = req.metadata(k, v);
        }
        if let Some(sc) = c.storage_class {
            req = req.storage_class(sc.into());
        }
        if let Err(e) = req.send().await {
            let code = e
                .as_service_error()
                .and_then(aws_sdk_s3::error::ProvideErrorMetadata::code)
                .unwrap_or("?")
                .to_owned();
            refused.push((c.key.clone(), code));
            continue;
        }
        if let Some(file) = &c.instruction {
            b.put_instruction(&format!("{}.instruction", c.key), file.clone())
                .await;
        }
    }
    for (k, code) in &refused {
        eprintln!(
            "refused by the store at PUT: {} bytes {:?}...: {code}",
            k.len(),
            &k[..20]
        );
    }
    let cases: Vec<Case> = cases
        .into_iter()
        .filter(|c| !refused.iter().any(|(k, _)| *k == c.key))
        .collect();
    // Good objects beside them: a V1 CBC and an aioboto3 KMS GCM object, to be migrated.
    let plain = data(3000, 9);
    common::put_v1(&b.s3, &b.bucket, "good/v1", &plain).await;
    let old = common::kms_key(&b.kms).await;
    let f = b.write("good-in", &plain);
    common::assert_ok(
        "aioboto3 put",
        &peer_put(
            "aioboto3",
            &b.bucket,
            "good/aio-kms-gcm",
            &f,
            &["--kind", "kms", "--kms-key-id", &old],
        ),
    );

    // `get`: exit 1 and the class, for each.
    let aes = aes_key_file().display().to_string();
    let out = b.path("out");
    let mut table = Vec::new();
    for c in &cases {
        let o = run(&[
            "get",
            &b.url(&c.key),
            "-o",
            out.to_str().expect("path"),
            "--aes-key-file",
            &aes,
            "--allow-legacy",
        ]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let class = err
            .rsplit_once(": ")
            .map(|(_, t)| t.split(' ').next().unwrap_or("").to_owned())
            .unwrap_or_default();
        table.push((
            c.key.escape_debug().to_string(),
            o.status.code(),
            err.trim().to_owned(),
        ));
        if c.class.is_empty() {
            continue;
        }
        assert_eq!(o.status.code(), Some(1), "get {:?}: {}", c.key, show(&o));
        assert!(
            c.class
                .split('|')
                .any(|want| err.contains(&format!(": {want} ("))),
            "get {:?}: want {}, got {class}: {}",
            c.key,
            c.class,
            show(&o)
        );
        assert!(!out.exists(), "get {:?} left an output file", c.key);
    }
    for (k, code, err) in &table {
        eprintln!("get {k}: exit {code:?}: {err}");
    }

    // `rekey`: each broken object failed with its reason, untouched; the rest migrated; exit 1.
    let before = snapshot(&b).await;
    let state = b.path("state.db").display().to_string();
    let o = b.rekey(&state, &[]);
    assert_eq!(o.status.code(), Some(1), "rekey: {}", show(&o));
    let after = snapshot(&b).await;
    let report = run(&[
        "report", "--state", &state, "--format", "jsonl", "--only", "failed",
    ]);
    let failed: BTreeMap<String, serde_json::Value> = String::from_utf8_lossy(&report.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("jsonl");
            (v["Key"].as_str().unwrap_or_default().to_owned(), v)
        })
        .collect();
    for c in cases.iter().filter(|c| !c.class.is_empty()) {
        let r = failed
            .get(&c.key)
            .unwrap_or_else(|| panic!("{:?} not recorded failed: {}", c.key, show(&o)));
        eprintln!(
            "rekey {}: {} {}",
            c.key.escape_debug(),
            r["ErrorCode"],
            r["ResultMessage"]
        );
        assert_eq!(
            before.get(&c.key),
            after.get(&c.key),
            "{:?} changed by rekey",
            c.key
        );
        let ins = format!("{}.instruction", c.key);
        assert_eq!(before.get(&ins), after.get(&ins), "{ins:?} changed");
    }
    assert_eq!(b.get_strict("good/v1").await, plain);
    assert_eq!(b.get_strict("good/aio-kms-gcm").await, plain);
}
