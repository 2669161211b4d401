use std::sync::Arc;

use super::*;
use crate::keyring::kms::StaticKms;
use crate::keyring::{AesMasterKey, KmsKeyring, RsaMasterKey};

fn ctx(pairs: &[(&str, &str)]) -> Context {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn aes_ring() -> Keyring {
    Keyring::aes(AesMasterKey::new(SecretBytes::from_slice(&[3; 32])).expect("aes"))
}

fn rsa(path: &str) -> RsaMasterKey {
    let pem = std::fs::read_to_string(format!(
        "{}/tests/vectors/keys/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("pem");
    RsaMasterKey::from_pem(&pem).expect("rsa")
}

fn kms_ring(format: WriteFormat, user: &[(&str, &str)]) -> Keyring {
    let alg = match format {
        WriteFormat::V2 => "AES/GCM/NoPadding",
        WriteFormat::V3 => "115",
    };
    let mut stored = ctx(user);
    stored.insert("aws:x-amz-cek-alg".into(), alg.into());
    let kms = StaticKms::new(
        "key-1",
        SecretBytes::random(32),
        b"kms-blob".to_vec(),
        stored,
    );
    Keyring::kms(KmsKeyring::new(Arc::new(kms), "key-1"))
}

async fn encrypt(
    ring: &Keyring,
    format: WriteFormat,
    user: &Context,
    pt: &[u8],
) -> (Envelope, Vec<u8>) {
    let enc = new_encryption(ring, format, user, Some(pt.len() as u64))
        .await
        .expect("new encryption");
    let mut ct = Vec::new();
    let (env, n) = encrypt_stream(enc, &mut &pt[..], &mut ct)
        .await
        .expect("encrypt");
    assert_eq!(n, pt.len() as u64);
    (env, ct)
}

async fn decrypt(
    env: &Envelope,
    ring: &Keyring,
    policy: &DecryptPolicy,
    ct: &[u8],
) -> (Result<u64, CodecError>, Vec<u8>) {
    let mut out = Vec::new();
    let r = decrypt_stream(env, ring, policy, &mut &ct[..], &mut out).await;
    (r, out)
}

fn plaintext(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn round_trip_every_writer() {
    let user = ctx(&[("team", "ops")]);
    let rings = [
        (
            "kms v2",
            kms_ring(WriteFormat::V2, &[("team", "ops")]),
            WriteFormat::V2,
        ),
        (
            "kms v3",
            kms_ring(WriteFormat::V3, &[("team", "ops")]),
            WriteFormat::V3,
        ),
        ("aes v2", aes_ring(), WriteFormat::V2),
        ("aes v3", aes_ring(), WriteFormat::V3),
        (
            "rsa v2",
            Keyring::rsa(rsa("rsa2048-private.pem")),
            WriteFormat::V2,
        ),
        (
            "rsa v3",
            Keyring::rsa(rsa("rsa2048-private.pem")),
            WriteFormat::V3,
        ),
    ];
    for (name, ring, format) in rings {
        for n in [0usize, 1, 15, 16, 17, 1000, CHUNK + 5] {
            let pt = plaintext(n);
            let (env, ct) = encrypt(&ring, format, &user, &pt).await;
            assert_eq!(ct.len(), n + 16, "{name}");
            // Through the metadata codec, as it would be stored.
            let env = crate::envelope::decode(&env.to_metadata()).expect("decode");
            let (r, out) = decrypt(&env, &ring, &DecryptPolicy::default(), &ct).await;
            assert_eq!(r.expect(name), n as u64, "{name}");
            assert!(out == pt, "{name} {n}");
        }
    }
}

#[tokio::test]
async fn v2_kms_envelope_is_what_aws_clients_write() {
    let ring = kms_ring(WriteFormat::V2, &[("team", "ops")]);
    let (env, _) = encrypt(&ring, WriteFormat::V2, &ctx(&[("team", "ops")]), b"hello").await;
    let m = env.to_metadata();
    assert_eq!(m["x-amz-cek-alg"], "AES/GCM/NoPadding");
    assert_eq!(m["x-amz-wrap-alg"], "kms+context");
    assert_eq!(m["x-amz-tag-len"], "128");
    assert_eq!(m["x-amz-unencrypted-content-length"], "5");
    assert_eq!(
        crate::envelope::parse_context("m", &m["x-amz-matdesc"]).expect("json"),
        ctx(&[("team", "ops"), ("aws:x-amz-cek-alg", "AES/GCM/NoPadding")])
    );
    assert_eq!(env.iv.len(), 12);
}

#[tokio::test]
async fn legacy_v1_writers_round_trip_only_with_opt_in() {
    let rings = [aes_ring(), Keyring::rsa(rsa("rsa2048-private.pem"))];
    for ring in rings {
        let pt = plaintext(1000);
        let enc = new_legacy_v1_encryption(&ring, Some(1000)).expect("legacy");
        let mut ct = Vec::new();
        let (env, _) = encrypt_stream(enc, &mut &pt[..], &mut ct)
            .await
            .expect("encrypt");
        assert_eq!(env.version, crate::envelope::Version::V1);
        let (r, out) = decrypt(&env, &ring, &DecryptPolicy::default(), &ct).await;
        assert!(matches!(r, Err(CodecError::LegacyContentRefused(_))));
        assert!(out.is_empty());
        let (r, out) = decrypt(&env, &ring, &DecryptPolicy::legacy(), &ct).await;
        assert_eq!(r.expect("legacy decrypt"), 1000);
        assert_eq!(out, pt);
    }
}

/// Flip one bit in each part of an object: the result is always the one opaque error (or a
/// keyring refusal for the EDK), and nothing reaches the destination.
#[tokio::test]
async fn tampering_is_one_error_and_releases_nothing() {
    for format in [WriteFormat::V2, WriteFormat::V3] {
        let ring = aes_ring();
        let pt = plaintext(5000);
        let (env, ct) = encrypt(&ring, format, &Context::new(), &pt).await;
        let mut cases: Vec<(&str, Envelope, Vec<u8>)> = Vec::new();
        let mut body = ct.clone();
        body[100] ^= 1;
        cases.push(("body", env.clone(), body));
        let mut tag = ct.clone();
        let last = tag.len() - 1;
        tag[last] ^= 0x80;
        cases.push(("tag", env.clone(), tag));
        cases.push(("truncated", env.clone(), ct[..ct.len() - 1].to_vec()));
        let mut e = env.clone();
        e.encrypted_key[20] ^= 1;
        cases.push(("edk", e, ct.clone()));
        if format == WriteFormat::V2 {
            let mut e = env.clone();
            e.iv[0] ^= 1;
            cases.push(("iv", e, ct.clone()));
        } else {
            let mut e = env.clone();
            e.commitment[0] ^= 1;
            cases.push(("commitment", e, ct.clone()));
            let mut e = env.clone();
            e.message_id[27] ^= 1;
            cases.push(("message id", e, ct.clone()));
        }
        for (what, env, ct) in cases {
            let (r, out) = decrypt(&env, &ring, &DecryptPolicy::default(), &ct).await;
            let err = r
                .err()
                .unwrap_or_else(|| panic!("{what}: tampering not detected"));
            let class = err.class();
            assert_eq!(class, ErrorClass::AuthenticationFailed, "{what}: {err}");
            assert!(
                matches!(err, CodecError::DecryptionFailed),
                "{what}: not the one opaque error: {err}"
            );
            assert!(out.is_empty(), "{what}: plaintext released");
        }
    }
}

#[tokio::test]
async fn cbc_tampering_is_detected_by_padding_or_length() {
    let ring = aes_ring();
    let pt = plaintext(100);
    let enc = new_legacy_v1_encryption(&ring, Some(100)).expect("legacy");
    let mut ct = Vec::new();
    let (env, _) = encrypt_stream(enc, &mut &pt[..], &mut ct)
        .await
        .expect("encrypt");
    // Wrong recorded length: refused even though padding is fine.
    let mut e = env.clone();
    e.plaintext_length = Some(99);
    let (r, out) = decrypt(&e, &ring, &DecryptPolicy::legacy(), &ct).await;
    assert!(matches!(r, Err(CodecError::DecryptionFailed)));
    assert!(out.is_empty());
    // The last block garbled: padding fails.
    let mut bad = ct.clone();
    let n = bad.len();
    bad[n - 20] ^= 0xff;
    let (r, out) = decrypt(&env, &ring, &DecryptPolicy::legacy(), &bad).await;
    assert!(matches!(r, Err(CodecError::DecryptionFailed)));
    assert!(out.is_empty());
}

/// Issue 11: `x-amz-unencrypted-content-length` lying in either direction about an authentic
/// GCM or V3 body is refused like a tag failure, with nothing released.
#[tokio::test]
async fn a_recorded_length_that_contradicts_the_body_fails_every_cipher() {
    let ring = aes_ring();
    let pt = plaintext(100);
    for format in [WriteFormat::V2, WriteFormat::V3] {
        let (env, ct) = encrypt(&ring, format, &Context::new(), &pt).await;
        for lie in [0, 99, 101, u64::MAX] {
            let mut e = env.clone();
            e.plaintext_length = Some(lie);
            let (r, out) = decrypt(&e, &ring, &DecryptPolicy::default(), &ct).await;
            assert!(
                matches!(r, Err(CodecError::DecryptionFailed)),
                "{format:?} {lie}: {r:?}"
            );
            assert!(out.is_empty(), "{format:?} {lie}: plaintext released");
        }
        let (r, out) = decrypt(&env, &ring, &DecryptPolicy::default(), &ct).await;
        assert_eq!(r.expect("the truth decrypts"), 100);
        assert_eq!(out, pt);
    }
}

#[tokio::test]
async fn delayed_authentication_streams_then_fails() {
    let ring = aes_ring();
    let pt = plaintext(100);
    let (env, mut ct) = encrypt(&ring, WriteFormat::V2, &Context::new(), &pt).await;
    let n = ct.len();
    ct[n - 1] ^= 1;
    let policy = DecryptPolicy {
        delayed_authentication: true,
        ..Default::default()
    };
    let (r, out) = decrypt(&env, &ring, &policy, &ct).await;
    assert!(matches!(r, Err(CodecError::DecryptionFailed)));
    assert_eq!(
        out.len(),
        100,
        "delayed mode hands out unverified bytes, then fails"
    );
}

#[tokio::test]
async fn several_rsa_keys_pick_the_one_that_decrypts() {
    let right = rsa("rsa2048-private.pem");
    let pt = plaintext(333);
    let enc = new_legacy_v1_encryption(&Keyring::rsa(rsa("rsa2048-private.pem")), Some(333))
        .expect("legacy");
    let mut ct = Vec::new();
    let (env, _) = encrypt_stream(enc, &mut &pt[..], &mut ct)
        .await
        .expect("encrypt");
    // A second, unrelated key first in the ring.
    let other = RsaMasterKey::from_private(
        rsa::PrivateKey::new(&mut getrandom::SysRng, 1024).expect("generate"),
    );
    let ring = Keyring::new().with_rsa(other).with_rsa(right);
    let (r, out) = decrypt(&env, &ring, &DecryptPolicy::legacy(), &ct).await;
    assert_eq!(r.expect("decrypt"), 333);
    assert_eq!(out, pt);
}

#[tokio::test]
async fn large_plaintext_spools_to_disk_and_is_released_after_tag() {
    let ring = aes_ring();
    let pt = plaintext(SPOOL_IN_MEMORY + 3 * CHUNK + 7);
    let (env, ct) = encrypt(&ring, WriteFormat::V2, &Context::new(), &pt).await;
    let (r, out) = decrypt(&env, &ring, &DecryptPolicy::default(), &ct).await;
    assert_eq!(r.expect("decrypt"), pt.len() as u64);
    assert!(out == pt);
}

/// `--commitment require`: a V2 object is refused before any key is unwrapped (its class is
/// CommitmentRequired, nothing reaches the output); a V3 object decrypts; `allow` reads both.
#[tokio::test]
async fn the_commitment_policy_refuses_objects_without_commitment() {
    let ring = aes_ring();
    let pt = plaintext(1000);
    let require = DecryptPolicy {
        require_commitment: true,
        ..DecryptPolicy::default()
    };
    let (v2, ct2) = encrypt(&ring, WriteFormat::V2, &Context::new(), &pt).await;
    let (r, out) = decrypt(&v2, &ring, &require, &ct2).await;
    let e = r.expect_err("refused");
    assert_eq!(e.class(), ErrorClass::CommitmentRequired);
    assert_eq!(e.class().code(), "CommitmentRequired");
    assert!(out.is_empty());
    // Refused before the keyring: an empty keyring fails the same way, not with NoMatchingKey.
    let e = unwrap_content_key(&v2, &Keyring::new(), &require)
        .await
        .expect_err("refused");
    assert_eq!(e.class(), ErrorClass::CommitmentRequired);
    let (v3, ct3) = encrypt(&ring, WriteFormat::V3, &Context::new(), &pt).await;
    let (r, out) = decrypt(&v3, &ring, &require, &ct3).await;
    assert_eq!(r.expect("v3 decrypts"), pt.len() as u64);
    assert_eq!(out, pt);
    let (r, _) = decrypt(&v2, &ring, &DecryptPolicy::default(), &ct2).await;
    assert!(r.is_ok());
}
