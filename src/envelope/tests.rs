use super::*;

fn meta(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn v2_kms_gcm() -> Metadata {
    meta(&[
        ("x-amz-key-v2", "AAECAwQFBgcICQ=="),
        ("x-amz-iv", "J+/TIrOtlvPsMuzA"),
        ("x-amz-cek-alg", "AES/GCM/NoPadding"),
        ("x-amz-wrap-alg", "kms+context"),
        ("x-amz-tag-len", "128"),
        (
            "x-amz-matdesc",
            r#"{"aws:x-amz-cek-alg": "AES/GCM/NoPadding", "team": "ops"}"#,
        ),
        ("x-amz-unencrypted-content-length", "17"),
    ])
}

fn v3_kms() -> Metadata {
    meta(&[
        ("x-amz-c", "115"),
        ("x-amz-3", "AAECAwQFBgcICQ=="),
        ("x-amz-w", "12"),
        ("x-amz-t", r#"{"aws:x-amz-cek-alg": "115"}"#),
        ("x-amz-d", "pDlHqlSM0Ty4rQGD6JJJ+05xwBCBdsEXqKNgzA=="),
        ("x-amz-i", "ry+OKTKGHDk4KoZx58F8KctFMvAIZN0qkOwvKw=="),
    ])
}

#[test]
fn v2_kms_context_decodes_and_round_trips() {
    let env = decode(&v2_kms_gcm()).expect("decode");
    assert_eq!(env.version, Version::V2);
    assert_eq!(env.content_alg, ContentAlg::AesGcm);
    assert_eq!(env.wrap, WrapAlg::KmsContext);
    assert_eq!(env.iv.len(), 12);
    assert_eq!(
        env.encryption_context.get("team").map(String::as_str),
        Some("ops")
    );
    assert!(env.matdesc.is_empty());
    assert_eq!(env.plaintext_length, Some(17));
    let again = decode(&env.to_metadata()).expect("re-decode");
    assert_eq!(again, env);
    // The encoded form is exactly AWS's V2 key set.
    let keys: Vec<_> = env.to_metadata().into_keys().collect();
    assert_eq!(
        keys,
        [
            "x-amz-cek-alg",
            "x-amz-iv",
            "x-amz-key-v2",
            "x-amz-matdesc",
            "x-amz-tag-len",
            "x-amz-unencrypted-content-length",
            "x-amz-wrap-alg"
        ]
    );
}

#[test]
fn v3_decodes_and_round_trips() {
    let env = decode(&v3_kms()).expect("decode");
    assert_eq!(env.version, Version::V3);
    assert_eq!(env.content_alg, ContentAlg::AesGcmCommitting);
    assert_eq!(env.wrap, WrapAlg::KmsContext);
    assert_eq!(env.message_id.len(), 28);
    assert_eq!(env.commitment.len(), 28);
    assert_eq!(decode(&env.to_metadata()).expect("re-decode"), env);
}

#[test]
fn v1_absent_cek_alg_is_cbc() {
    let env = decode(&meta(&[
        (
            "x-amz-key",
            "KeSLewYmwhbOmmPtBz1JdWCcWn8QuGPLHlP8zuO7EUtalE/2BO/Msf6TZL/JuW4A",
        ),
        ("x-amz-iv", "RpzTy/LG8IUI9M9yLJ3aQg=="),
        ("x-amz-matdesc", "{}"),
    ]))
    .expect("decode");
    assert_eq!(env.version, Version::V1);
    assert_eq!(env.content_alg, ContentAlg::AesCbc);
    assert_eq!(env.wrap, WrapAlg::V1Unnamed);
    assert_eq!(env.format_name(), "v1-aes-ecb-cbc");
    assert_eq!(decode(&env.to_metadata()).expect("re-decode"), env);
}

#[test]
fn two_key_fields_conflict() {
    let mut m = v2_kms_gcm();
    m.insert("x-amz-key".into(), "AAAA".into());
    assert_eq!(detect(&m), Err(EnvelopeError::Conflicting));
    let mut m = v3_kms();
    m.insert("x-amz-key-v2".into(), "AAAA".into());
    assert_eq!(detect(&m), Err(EnvelopeError::Conflicting));
}

#[test]
fn empty_values_are_absent() {
    let mut m = v3_kms();
    m.insert("x-amz-m".into(), String::new());
    m.insert("x-amz-unencrypted-content-length".into(), String::new());
    let env = decode(&m).expect("decode");
    assert_eq!(env.plaintext_length, None);
    // An empty key field is absent too: no conflict.
    let mut m = v2_kms_gcm();
    m.insert("x-amz-key".into(), String::new());
    assert!(decode(&m).is_ok());
}

#[test]
fn plaintext_object_has_no_envelope() {
    let m = meta(&[("owner", "me")]);
    assert_eq!(detect(&m), Ok(Detected::NoEnvelopeInMetadata));
    assert!(!has_envelope_fields(&m));
}

#[test]
fn lone_key_field_is_malformed_not_plaintext() {
    assert!(matches!(
        detect(&meta(&[("x-amz-key-v2", "AAAA")])),
        Err(EnvelopeError::Missing(_))
    ));
}

#[test]
fn unknown_algorithms_are_reported() {
    let mut m = v2_kms_gcm();
    m.insert("x-amz-cek-alg".into(), "AES/XTS".into());
    assert!(matches!(
        decode(&m),
        Err(EnvelopeError::Unknown {
            field: "x-amz-cek-alg",
            ..
        })
    ));
    let mut m = v3_kms();
    m.insert("x-amz-c".into(), "116".into());
    assert!(matches!(
        decode(&m),
        Err(EnvelopeError::Unknown {
            field: "x-amz-c",
            ..
        })
    ));
    let mut m = v3_kms();
    m.insert("x-amz-w".into(), "11".into());
    assert!(matches!(
        decode(&m),
        Err(EnvelopeError::Unknown {
            field: "x-amz-w",
            ..
        })
    ));
}

#[test]
fn wrong_iv_length_is_rejected() {
    let mut m = v2_kms_gcm();
    m.insert("x-amz-iv".into(), "RpzTy/LG8IUI9M9yLJ3aQg==".into()); // 16 bytes under GCM
    assert!(matches!(
        decode(&m),
        Err(EnvelopeError::Invalid {
            field: "x-amz-iv",
            ..
        })
    ));
}

#[test]
fn json_is_parsed_not_compared() {
    let mut a = v2_kms_gcm();
    a.insert(
        "x-amz-matdesc".into(),
        r#"{"team":"ops","aws:x-amz-cek-alg":"AES\/GCM\/NoPadding"}"#.into(),
    );
    let b = v2_kms_gcm();
    assert_eq!(
        decode(&a).expect("a").encryption_context,
        decode(&b).expect("b").encryption_context
    );
}

#[test]
fn rfc2047_matdesc_is_decoded_and_written_as_ascii() {
    let json = r#"{"aws:x-amz-cek-alg":"AES/GCM/NoPadding","city":"Zürich"}"#;
    let mut m = v2_kms_gcm();
    m.insert(
        "x-amz-matdesc".into(),
        format!("=?UTF-8?B?{}?=", B64.encode(json)),
    );
    let env = decode(&m).expect("decode");
    assert_eq!(
        env.encryption_context.get("city").map(String::as_str),
        Some("Zürich")
    );
    let written = env.to_metadata();
    assert!(
        written["x-amz-matdesc"].is_ascii(),
        "{}",
        written["x-amz-matdesc"]
    );
    assert_eq!(decode(&written).expect("re-decode"), env);
}

#[test]
fn instruction_file_v2_with_numbers() {
    let file = br#"{"x-amz-key-v2":"AAECAwQFBgcICQ==","x-amz-iv":"J+/TIrOtlvPsMuzA",
        "x-amz-cek-alg":"AES/GCM/NoPadding","x-amz-wrap-alg":"kms+context","x-amz-tag-len":128,
        "x-amz-matdesc":"{\"aws:x-amz-cek-alg\":\"AES/GCM/NoPadding\"}","extra":"ignored"}"#;
    let object = meta(&[("x-amz-unencrypted-content-length", "5")]);
    let det = detect(&object).expect("detect");
    assert_eq!(det, Detected::NoEnvelopeInMetadata);
    let env = det
        .complete_with_instruction_file(&object, file)
        .expect("complete");
    assert_eq!(env.location, Location::InstructionFile);
    assert_eq!(env.wrap, WrapAlg::KmsContext);
    assert_eq!(env.plaintext_length, Some(5));
    let (obj2, file2) = env.to_instruction_file();
    // Only the keys AWS's Python client accepts in a file (it refuses any other).
    let accepted = [
        "x-amz-key",
        "x-amz-key-v2",
        "x-amz-wrap-alg",
        "x-amz-matdesc",
        "x-amz-iv",
        "x-amz-cek-alg",
        "x-amz-tag-len",
        "x-amz-3",
        "x-amz-m",
        "x-amz-t",
        "x-amz-w",
    ];
    let keys = parse_instruction_file(&file2).expect("parse");
    assert!(
        keys.keys().all(|k| accepted.contains(&k.as_str())),
        "{keys:?}"
    );
    let env2 = detect(&obj2)
        .expect("detect")
        .complete_with_instruction_file(&obj2, &file2)
        .expect("complete");
    assert_eq!(env2, env);
}

#[test]
fn instruction_file_v3_round_trip_and_override_refused() {
    let full = decode(&v3_kms()).expect("decode");
    let (object, file) = full.to_instruction_file();
    assert!(!object.contains_key("x-amz-3"));
    let det = detect(&object).expect("detect");
    assert!(matches!(det, Detected::V3InstructionFile(_)));
    let env = det
        .clone()
        .complete_with_instruction_file(&object, &file)
        .expect("complete");
    assert_eq!(env.encrypted_key, full.encrypted_key);
    assert_eq!(env.location, Location::InstructionFile);
    // A file that tries to bring its own commitment is refused.
    let mut evil = parse_instruction_file(&file).expect("parse");
    evil.insert("x-amz-d".into(), "AAAA".into());
    let evil = serde_json::to_vec(&evil).expect("json");
    assert_eq!(
        det.complete_with_instruction_file(&object, &evil),
        Err(EnvelopeError::InstructionFileOverride("x-amz-d"))
    );
}

#[test]
fn bad_instruction_file_json() {
    let det = Detected::NoEnvelopeInMetadata;
    assert!(matches!(
        det.complete_with_instruction_file(&Metadata::new(), b"[1,2]"),
        Err(EnvelopeError::InstructionFileJson(_))
    ));
}

/// Every peer-written vector's metadata decodes, and our encoding of it decodes to the same envelope.
#[test]
fn peer_vectors_decode_and_round_trip() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/cases");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        panic!("missing {}", dir.display());
    };
    let mut n = 0;
    for entry in entries {
        let path = entry.expect("entry").path().join("case.json");
        let case: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        let m: Metadata = serde_json::from_value(case["metadata"].clone()).expect("metadata");
        let env = decode(&m).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            decode(&env.to_metadata()).expect("re-decode"),
            env,
            "{}",
            path.display()
        );
        n += 1;
    }
    assert!(n >= 49, "only {n} vectors");
}

#[test]
fn instruction_file_with_two_key_fields_conflicts() {
    let file =
        br#"{"x-amz-key":"AAAA","x-amz-key-v2":"AAECAwQFBgcICQ==","x-amz-iv":"J+/TIrOtlvPsMuzA",
        "x-amz-cek-alg":"AES/GCM/NoPadding","x-amz-wrap-alg":"kms+context"}"#;
    assert_eq!(
        Detected::NoEnvelopeInMetadata.complete_with_instruction_file(&Metadata::new(), file),
        Err(EnvelopeError::Conflicting)
    );
}

/// Issue 11: `x-amz-unencrypted-content-length` is checked against the stored length by the
/// cipher's arithmetic (GCM/V3: plaintext + tag; CBC: plaintext + 1..=16 bytes of padding).
#[test]
fn a_recorded_length_the_body_cannot_have_is_malformed() {
    let mut gcm = decode(&v2_kms_gcm()).expect("v2");
    let mut v3 = decode(&v3_kms()).expect("v3");
    let mut cbc = gcm.clone();
    cbc.content_alg = ContentAlg::AesCbc;
    for (env, stored, good, bad) in [
        (
            &mut gcm,
            116u64,
            &[100u64][..],
            &[0u64, 99, 101, 116, u64::MAX][..],
        ),
        (&mut v3, 116, &[100], &[99, 101]),
        (&mut cbc, 112, &[96, 100, 111], &[95, 112, 113, 0]),
    ] {
        env.plaintext_length = None;
        assert_eq!(env.check_stored_length(stored), Ok(()));
        for &n in good {
            env.plaintext_length = Some(n);
            assert_eq!(env.check_stored_length(stored), Ok(()), "{n} in {stored}");
        }
        for &n in bad {
            env.plaintext_length = Some(n);
            assert!(
                matches!(
                    env.check_stored_length(stored),
                    Err(EnvelopeError::Invalid {
                        field: UNENCRYPTED_CONTENT_LENGTH,
                        ..
                    })
                ),
                "{n} in {stored}"
            );
        }
    }
}

/// Found by `scripts/fuzz.sh` (target `context`): a literal `=?…?=` in a context key or value
/// was written as is, and read back as an RFC 2047 encoded word: another context, or an error.
#[test]
fn context_with_a_literal_encoded_word_round_trips() {
    let ctx: Context = [
        ("=?UTF-8?B?YQ==?=".to_string(), "x=?y".to_string()),
        ("team".to_string(), "=?".to_string()),
    ]
    .into_iter()
    .collect();
    let json = context_json(&ctx);
    assert!(!json.contains("=?"), "{json}");
    assert_eq!(parse_context("x-amz-matdesc", &json).expect("parse"), ctx);
    let mut m = v2_kms_gcm();
    let mut ec = ctx.clone();
    ec.insert("aws:x-amz-cek-alg".into(), "AES/GCM/NoPadding".into());
    m.insert("x-amz-matdesc".into(), context_json(&ec));
    let env = decode(&m).expect("decode");
    assert_eq!(env.encryption_context, ec);
    assert_eq!(decode(&env.to_metadata()).expect("re-decode"), env);
}

/// Found by `scripts/fuzz.sh` (target `envelope`): `x-amz-key` with `x-amz-cek-alg:
/// AES/GCM/NoPadding` decodes (as Java v1 reads it), but was encoded without the cek-alg and so
/// came back as a CBC envelope with a 12-byte IV: an error.
#[test]
fn v1_key_with_gcm_content_round_trips() {
    let m = meta(&[
        ("x-amz-key", "AAECAwQFBgcICQ=="),
        ("x-amz-iv", "J+/TIrOtlvPsMuzA"),
        ("x-amz-cek-alg", "AES/GCM/NoPadding"),
        ("x-amz-matdesc", "{}"),
    ]);
    let env = decode(&m).expect("decode");
    assert_eq!(
        (env.version, env.content_alg),
        (Version::V1, ContentAlg::AesGcm)
    );
    assert_eq!(decode(&env.to_metadata()).expect("re-decode"), env);
    // CBC V1 keeps AWS's exact V1 key set: no cek-alg.
    let cbc = meta(&[
        ("x-amz-key", "AAECAwQFBgcICQ=="),
        ("x-amz-iv", "AAECAwQFBgcICQoLDA0ODw=="),
        ("x-amz-matdesc", "{}"),
    ]);
    let env = decode(&cbc).expect("decode");
    assert!(!env.to_metadata().contains_key("x-amz-cek-alg"));
}
