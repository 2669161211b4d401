use std::sync::Arc;

use super::kms::StaticKms;
use super::*;
use crate::envelope::{Location, Version};

fn ctx(pairs: &[(&str, &str)]) -> Context {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn rsa_key() -> RsaMasterKey {
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/keys/rsa2048-private.pem"
    ))
    .expect("test RSA key");
    RsaMasterKey::from_pem(&pem).expect("pem")
}

fn envelope(wrap: WrapAlg, content_alg: ContentAlg, edk: Vec<u8>) -> Envelope {
    Envelope {
        version: Version::V2,
        content_alg,
        wrap,
        encrypted_key: edk,
        iv: vec![0; 12],
        matdesc: Context::new(),
        encryption_context: Context::new(),
        message_id: Vec::new(),
        commitment: Vec::new(),
        plaintext_length: None,
        location: Location::ObjectMetadata,
    }
}

fn static_kms(expected: Context) -> Arc<StaticKms> {
    Arc::new(StaticKms::new(
        "key-1",
        SecretBytes::from_slice(&[5; 32]),
        b"blob".to_vec(),
        expected,
    ))
}

#[tokio::test]
async fn kms_context_new_key_adds_cek_alg_and_refuses_reserved_key() {
    let kms = static_kms(Context::new());
    let ring = Keyring::kms(KmsKeyring::new(kms.clone(), "key-1"));
    let k = ring
        .new_key(ContentAlg::AesGcm, &ctx(&[("team", "ops")]))
        .await
        .expect("new key");
    assert_eq!(k.wrap, WrapAlg::KmsContext);
    assert_eq!(
        k.encryption_context,
        ctx(&[("team", "ops"), ("aws:x-amz-cek-alg", "AES/GCM/NoPadding")])
    );
    let calls = kms.calls.lock().expect("lock").clone();
    assert_eq!(calls[0].0, "GenerateDataKey");
    assert_eq!(calls[0].2, k.encryption_context);
    assert!(matches!(
        ring.new_key(ContentAlg::AesGcm, &ctx(&[("aws:x-amz-cek-alg", "x")]))
            .await,
        Err(KeyringError::ReservedContextKey)
    ));
}

#[tokio::test]
async fn kms_context_checks_cek_alg_and_caller_context() {
    let stored = ctx(&[("team", "ops"), ("aws:x-amz-cek-alg", "AES/GCM/NoPadding")]);
    let ring = Keyring::kms(KmsKeyring::new(static_kms(stored.clone()), "key-1"));
    let mut env = envelope(WrapAlg::KmsContext, ContentAlg::AesGcm, b"blob".to_vec());
    env.encryption_context = stored.clone();
    let opts = UnwrapOptions {
        allow_legacy_wrapping: false,
        expected_context: Some(ctx(&[("team", "ops")])),
    };
    assert_eq!(ring.unwrap_key(&env, &opts).await.expect("unwrap").len(), 1);
    // Caller expects another context.
    let wrong = UnwrapOptions {
        expected_context: Some(ctx(&[("team", "dev")])),
        ..opts.clone()
    };
    assert!(matches!(
        ring.unwrap_key(&env, &wrong).await,
        Err(KeyringError::ContextMismatch)
    ));
    // Stored cek-alg says CBC but the metadata claims GCM.
    env.encryption_context
        .insert("aws:x-amz-cek-alg".into(), "AES/CBC/PKCS5Padding".into());
    assert!(matches!(
        ring.unwrap_key(&env, &opts).await,
        Err(KeyringError::CekAlgMismatch { .. })
    ));
}

#[tokio::test]
async fn legacy_wraps_need_opt_in() {
    let ring = Keyring::kms(KmsKeyring::new(static_kms(Context::new()), "key-1"));
    let env = envelope(WrapAlg::Kms, ContentAlg::AesGcm, b"blob".to_vec());
    assert!(matches!(
        ring.unwrap_key(&env, &UnwrapOptions::default()).await,
        Err(KeyringError::LegacyRefused(WrapAlg::Kms))
    ));
    let opts = UnwrapOptions {
        allow_legacy_wrapping: true,
        expected_context: None,
    };
    assert_eq!(
        ring.unwrap_key(&env, &opts).await.expect("unwrap")[0].expose(),
        &[5; 32]
    );
}

#[tokio::test]
async fn wrong_key_kind_is_no_matching_key() {
    let aes = AesMasterKey::new(SecretBytes::from_slice(&[1; 32])).expect("aes");
    let ring = Keyring::aes(aes);
    let env = envelope(WrapAlg::RsaOaepSha1, ContentAlg::AesGcm, vec![0; 256]);
    let err = ring
        .unwrap_key(&env, &UnwrapOptions::default())
        .await
        .expect_err("must fail");
    assert!(matches!(err, KeyringError::NoMatchingKey { .. }), "{err}");
    assert!(err.to_string().contains("RSA-OAEP-SHA1"), "{err}");
}

#[tokio::test]
async fn rsa_oaep_sha1_round_trip_checks_alg_suffix() {
    let ring = Keyring::rsa(rsa_key());
    let k = ring
        .new_key(ContentAlg::AesGcm, &Context::new())
        .await
        .expect("new key");
    assert_eq!(k.wrap, WrapAlg::RsaOaepSha1);
    let env = envelope(
        WrapAlg::RsaOaepSha1,
        ContentAlg::AesGcm,
        k.encrypted_key.clone(),
    );
    let got = ring
        .unwrap_key(&env, &UnwrapOptions::default())
        .await
        .expect("unwrap");
    assert_eq!(got[0].expose(), k.cek.expose());
    // The same EDK presented as a V3 object: the suffix check refuses it.
    let mut v3 = env.clone();
    v3.content_alg = ContentAlg::AesGcmCommitting;
    assert!(matches!(
        ring.unwrap_key(&v3, &UnwrapOptions::default()).await,
        Err(KeyringError::UnwrapFailed)
    ));
}

#[tokio::test]
async fn rsa_v1_and_legacy_oaep_round_trip() {
    let key = rsa_key();
    let cek = SecretBytes::random(32);
    let edk = key.wrap_pkcs1(&cek).expect("wrap");
    assert_eq!(
        key.unwrap_pkcs1(&edk).expect("unwrap").expose(),
        cek.expose()
    );
    let edk = key.wrap_oaep_sha256_legacy(&cek).expect("wrap");
    assert_eq!(
        key.unwrap_oaep_sha256_legacy(&edk)
            .expect("unwrap")
            .expose(),
        cek.expose()
    );
    let ring = Keyring::rsa(rsa_key());
    let mut env = envelope(WrapAlg::RsaOaepSha256Legacy, ContentAlg::AesGcm, edk);
    assert!(
        ring.unwrap_key(&env, &UnwrapOptions::default())
            .await
            .is_err()
    );
    env.encrypted_key[10] ^= 1;
    let opts = UnwrapOptions {
        allow_legacy_wrapping: true,
        expected_context: None,
    };
    assert!(matches!(
        ring.unwrap_key(&env, &opts).await,
        Err(KeyringError::UnwrapFailed)
    ));
}

#[test]
fn public_only_rsa_key_encrypts_but_cannot_decrypt() {
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/keys/rsa2048-public.pem"
    ))
    .expect("test RSA public key");
    let key = RsaMasterKey::from_pem(&pem).expect("pem");
    assert!(!key.can_decrypt());
    let cek = SecretBytes::random(32);
    let edk = key.wrap_oaep_sha1(&cek, "AES/GCM/NoPadding").expect("wrap");
    assert_eq!(
        rsa_key()
            .unwrap_oaep_sha1(&edk, "AES/GCM/NoPadding")
            .expect("unwrap")
            .expose(),
        cek.expose()
    );
}

#[test]
fn a_reencrypt_source_context_gets_the_decrypt_checks() {
    let mut env = envelope(WrapAlg::KmsContext, ContentAlg::AesGcm, b"blob".to_vec());
    env.encryption_context = ctx(&[("aws:x-amz-cek-alg", "AES/GCM/NoPadding"), ("app", "x")]);
    assert_eq!(
        kms_source_context(&env).expect("gcm"),
        env.encryption_context
    );
    // The stored cek-alg names CBC but the envelope claims GCM: no ReEncrypt.
    env.encryption_context
        .insert("aws:x-amz-cek-alg".into(), "AES/CBC/PKCS5Padding".into());
    assert!(matches!(
        kms_source_context(&env),
        Err(KeyringError::CekAlgMismatch { .. })
    ));
    env.encryption_context.remove("aws:x-amz-cek-alg");
    assert!(matches!(
        kms_source_context(&env),
        Err(KeyringError::CekAlgMismatch { .. })
    ));
    // The legacy `kms` wrap has no cek-alg: its context (the matdesc) passes as it is.
    let mut legacy = envelope(WrapAlg::Kms, ContentAlg::AesGcm, b"blob".to_vec());
    legacy.encryption_context = ctx(&[("kms_cmk_id", "key-1")]);
    assert_eq!(
        kms_source_context(&legacy).expect("kms"),
        legacy.encryption_context
    );
}
