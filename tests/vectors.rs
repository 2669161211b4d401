//! Every peer-written vector in tests/vectors decrypts to its plaintext (table-driven), through
//! the library and, for the raw-key cases, through the `s3cse decrypt` binary. KMS cases go through
//! `StaticKms`, which serves the case's recorded data key only when asked with the right key id,
//! ciphertext blob and encryption context (the emulator's blobs cannot be unwrapped elsewhere).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use s3cse::codec::{self, CodecError, DecryptPolicy};
use s3cse::envelope::{self, Context, Metadata};
use s3cse::keyring::kms::StaticKms;
use s3cse::keyring::{AesMasterKey, Keyring, KmsKeyring, RsaMasterKey};
use s3cse::secret::SecretBytes;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

struct Case {
    name: String,
    dir: PathBuf,
    json: Value,
    metadata: Metadata,
}

fn cases() -> Vec<Case> {
    let mut out: Vec<Case> = std::fs::read_dir(vectors().join("cases"))
        .expect("tests/vectors/cases")
        .map(|e| {
            let dir = e.expect("entry").path();
            let json: Value =
                serde_json::from_slice(&std::fs::read(dir.join("case.json")).expect("case.json"))
                    .expect("json");
            let metadata = serde_json::from_value(json["metadata"].clone()).expect("metadata");
            Case {
                name: json["name"].as_str().expect("name").to_owned(),
                dir,
                json,
                metadata,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(
        out.len() >= 49,
        "expected the 49 shared cases, found {}",
        out.len()
    );
    out
}

fn keyring_for(case: &Case, env: &envelope::Envelope) -> (Keyring, Option<Arc<StaticKms>>) {
    match case.json["master_key"].as_str() {
        Some(p) if p.ends_with(".hex") => {
            let bytes = std::fs::read(vectors().join(p)).expect("aes key");
            (
                Keyring::aes(AesMasterKey::from_file_bytes(&bytes).expect("aes")),
                None,
            )
        }
        Some(p) => {
            let pem = std::fs::read_to_string(vectors().join(p)).expect("rsa key");
            (
                Keyring::rsa(RsaMasterKey::from_pem(&pem).expect("rsa")),
                None,
            )
        }
        None => {
            let key_id = case.json["kms_key_id"].as_str().expect("kms_key_id");
            let data_key =
                hex::decode(case.json["data_key_hex"].as_str().expect("data key")).expect("hex");
            let ctx: Context =
                serde_json::from_value(case.json["kms_encryption_context"].clone()).expect("ctx");
            let kms = Arc::new(StaticKms::new(
                key_id,
                SecretBytes::new(data_key),
                env.encrypted_key.clone(),
                ctx,
            ));
            (
                Keyring::kms(KmsKeyring::new(kms.clone(), key_id)),
                Some(kms),
            )
        }
    }
}

fn is_legacy(case: &Case) -> bool {
    !case.name.starts_with("awsv4-")
}

#[tokio::test]
async fn every_vector_decrypts_through_the_library() {
    for case in cases() {
        let env = envelope::decode(&case.metadata).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let (ring, kms) = keyring_for(&case, &env);
        let ct = std::fs::read(case.dir.join("ciphertext.bin")).expect("ciphertext");
        let pt = std::fs::read(case.dir.join("plaintext.bin")).expect("plaintext");
        let mut out = Vec::new();
        let n = codec::decrypt_stream(
            &env,
            &ring,
            &DecryptPolicy::legacy(),
            &mut &ct[..],
            &mut out,
        )
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(n, pt.len() as u64, "{}", case.name);
        assert!(out == pt, "{}: plaintext differs", case.name);
        assert_eq!(
            hex::encode(Sha256::digest(&out)),
            case.json["plaintext_sha256"].as_str().expect("sha")
        );
        if let Some(kms) = kms {
            // KMS was asked exactly once, with the key id and context the writer used.
            let calls = kms.calls.lock().expect("lock").clone();
            assert_eq!(calls.len(), 1, "{}", case.name);
            assert_eq!(calls[0].0, "Decrypt");
            let ctx: Context =
                serde_json::from_value(case.json["kms_encryption_context"].clone()).expect("ctx");
            assert_eq!(calls[0].2, ctx, "{}", case.name);
            assert_eq!(
                calls[0].1.as_deref(),
                case.json["kms_key_id"].as_str(),
                "{}",
                case.name
            );
        }
        // Without the legacy opt-in, legacy objects are refused and modern ones still read.
        let mut out = Vec::new();
        let strict = codec::decrypt_stream(
            &env,
            &ring,
            &DecryptPolicy::default(),
            &mut &ct[..],
            &mut out,
        )
        .await;
        if is_legacy(&case) {
            assert!(
                strict.is_err(),
                "{}: legacy object read without opt-in",
                case.name
            );
            assert!(out.is_empty());
        } else {
            assert_eq!(
                strict.unwrap_or_else(|e| panic!("{}: {e}", case.name)),
                pt.len() as u64
            );
        }
    }
}

/// Flip one bit in the body of every non-empty vector: never the original plaintext, nothing released.
#[tokio::test]
async fn tampered_vectors_fail_uniformly() {
    for case in cases()
        .into_iter()
        .filter(|c| c.json["plaintext_len"].as_u64() > Some(0))
    {
        let env = envelope::decode(&case.metadata).expect("decode");
        let (ring, _) = keyring_for(&case, &env);
        let mut ct = std::fs::read(case.dir.join("ciphertext.bin")).expect("ciphertext");
        let n = ct.len();
        // The last byte: the tag of GCM objects, the padding block of CBC ones.
        ct[n - 1] ^= 0x01;
        let mut out = Vec::new();
        let r = codec::decrypt_stream(
            &env,
            &ring,
            &DecryptPolicy::legacy(),
            &mut &ct[..],
            &mut out,
        )
        .await;
        assert!(
            matches!(r, Err(CodecError::DecryptionFailed)),
            "{}: {r:?}",
            case.name
        );
        assert!(out.is_empty(), "{}: plaintext released", case.name);
    }
}

/// The raw-key vectors through the binary: `s3cse decrypt --metadata --input --output`.
#[test]
fn raw_key_vectors_decrypt_through_the_cli() {
    let tmp = tempfile::tempdir().expect("tmp");
    for case in cases()
        .into_iter()
        .filter(|c| c.json["master_key"].is_string())
    {
        let meta = tmp.path().join(format!("{}.json", case.name));
        std::fs::write(&meta, serde_json::to_vec(&case.metadata).expect("json")).expect("write");
        let out = tmp.path().join(format!("{}.out", case.name));
        let key = vectors().join(case.json["master_key"].as_str().expect("key"));
        let flag = if key.extension().is_some_and(|e| e == "hex") {
            "--aes-key-file"
        } else {
            "--rsa-key-file"
        };
        let st = Command::new(env!("CARGO_BIN_EXE_s3cse"))
            .args(["decrypt", "--allow-legacy", "--metadata"])
            .arg(&meta)
            .arg("--input")
            .arg(case.dir.join("ciphertext.bin"))
            .arg("--output")
            .arg(&out)
            .arg(flag)
            .arg(&key)
            .output()
            .expect("run s3cse");
        assert!(
            st.status.success(),
            "{}: {}",
            case.name,
            String::from_utf8_lossy(&st.stderr)
        );
        assert_eq!(
            std::fs::read(&out).expect("out"),
            std::fs::read(case.dir.join("plaintext.bin")).expect("pt")
        );
        // Without --allow-legacy: exit 1, a reason, and no output file.
        let out2 = tmp.path().join(format!("{}.strict", case.name));
        let st = Command::new(env!("CARGO_BIN_EXE_s3cse"))
            .args(["decrypt", "--metadata"])
            .arg(&meta)
            .arg("--input")
            .arg(case.dir.join("ciphertext.bin"))
            .arg("--output")
            .arg(&out2)
            .arg(flag)
            .arg(&key)
            .output()
            .expect("run s3cse");
        assert_eq!(st.status.code(), Some(1), "{}", case.name);
        assert!(
            String::from_utf8_lossy(&st.stderr).contains("legacy"),
            "{}",
            case.name
        );
        assert!(!out2.exists(), "{}: partial output left behind", case.name);
    }
}
