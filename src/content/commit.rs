//! The V3 key-committing suite 0x0073 (`ALG_AES_256_GCM_HKDF_SHA512_COMMIT_KEY`, `x-amz-c` = 115).
//!
//! Spec: `awslabs/aws-encryption-sdk-specification` `s3-encryption/key-derivation.md` and
//! `key-commitment.md`; FORMATS.md §2 "Key commitment". From the plaintext data key (PDK, the key
//! the keyring unwraps) and the 28-byte message id (MID, `x-amz-i`):
//!
//! ```text
//! PRK = HKDF-Extract(salt = MID, ikm = PDK)  = HMAC-SHA512(key = MID, msg = PDK)
//! DEK = HKDF-Expand(PRK, 00 73 || "DERIVEKEY", 32)   content key
//! CK  = HKDF-Expand(PRK, 00 73 || "COMMITKEY", 28)   key commitment, stored as x-amz-d
//! body = AES-256-GCM(DEK, nonce = 01 x 12, aad = 00 73, plaintext)
//! ```
//!
//! Without the commitment, a tampered EDK (say, in an instruction file) could make the same body
//! decrypt under a different key; with it, a reader checks CK before it derives the DEK.

use hkdf::Hkdf;
use sha2::Sha512;
use subtle::ConstantTimeEq;

use super::ContentError;
use super::gcm::{GcmDecryptor, GcmEncryptor, GcmTagVerifier};
use super::parts::GcmParts;
use super::range::CtrRangeDecryptor;
use crate::consts::{
    DATA_KEY_LEN, GCM_IV_LEN, SUITE_COMMIT_ID, V3_COMMITMENT_LEN, V3_MESSAGE_ID_LEN,
};
use crate::secret::SecretBytes;

/// The fixed GCM nonce of suite 0x0073. Two early revisions (Ruby `encryptionV3/utils.rb`, PHP
/// `EncryptionTraitV3.php`) used all zeros; Java 3.6+/4.x, Go, Python and the spec use 01 x 12.
pub const COMMIT_IV: [u8; GCM_IV_LEN] = [0x01; GCM_IV_LEN];
/// The GCM AAD of suite 0x0073: the suite id, big-endian.
pub const COMMIT_AAD: [u8; 2] = SUITE_COMMIT_ID;

const DERIVE_LABEL: &[u8] = b"DERIVEKEY";
const COMMIT_LABEL: &[u8] = b"COMMITKEY";

/// A fresh random 28-byte message id (`x-amz-i`) for a new object.
pub fn new_message_id() -> [u8; V3_MESSAGE_ID_LEN] {
    let mut mid = [0u8; V3_MESSAGE_ID_LEN];
    loop {
        crate::secret::fill_random(&mut mid);
        // All-zero is rejected by readers; 2^-224, but cheap to rule out.
        if mid.iter().any(|&b| b != 0) {
            return mid;
        }
    }
}

/// Length checks shared by both directions.
fn check_lengths(pdk: &[u8], message_id: &[u8]) -> Result<(), ContentError> {
    if pdk.len() != DATA_KEY_LEN {
        return Err(ContentError::InvalidLength {
            what: "data key",
            len: pdk.len(),
        });
    }
    if message_id.len() != V3_MESSAGE_ID_LEN {
        return Err(ContentError::InvalidLength {
            what: "message id",
            len: message_id.len(),
        });
    }
    Ok(())
}

fn is_all_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |acc, &x| acc | x) == 0
}

fn prk(pdk: &[u8], message_id: &[u8]) -> Hkdf<Sha512> {
    Hkdf::<Sha512>::new(Some(message_id), pdk)
}

fn expand<const N: usize>(prk: &Hkdf<Sha512>, label: &[u8]) -> Result<[u8; N], ContentError> {
    let mut okm = [0u8; N];
    // N <= 255 * 64, so expand cannot fail; map the impossible error rather than unwrap.
    prk.expand_multi_info(&[&SUITE_COMMIT_ID, label], &mut okm)
        .map_err(|_| ContentError::InvalidLength {
            what: "HKDF output",
            len: N,
        })?;
    Ok(okm)
}

fn derive_dek(prk: &Hkdf<Sha512>) -> Result<SecretBytes, ContentError> {
    let mut dek = expand::<DATA_KEY_LEN>(prk, DERIVE_LABEL)?;
    let secret = SecretBytes::from_slice(&dek);
    zeroize::Zeroize::zeroize(&mut dek);
    Ok(secret)
}

/// Derives the content key (DEK, 32 bytes) and the key commitment (28 bytes, `x-amz-d`) for
/// writing. `pdk` must be 32 bytes and `message_id` 28; an all-zero message id is a caller bug
/// (`InvalidLength { what: "message id (all zero)" }`), since readers reject it.
pub fn derive(
    pdk: &[u8],
    message_id: &[u8],
) -> Result<(SecretBytes, [u8; V3_COMMITMENT_LEN]), ContentError> {
    check_lengths(pdk, message_id)?;
    if is_all_zero(message_id) {
        return Err(ContentError::InvalidLength {
            what: "message id (all zero)",
            len: message_id.len(),
        });
    }
    let prk = prk(pdk, message_id);
    let commitment = expand::<V3_COMMITMENT_LEN>(&prk, COMMIT_LABEL)?;
    Ok((derive_dek(&prk)?, commitment))
}

/// Checks the stored commitment (`x-amz-d`) in constant time and only then derives the DEK.
/// Wrong lengths of `pdk` (32), `message_id` (28) or `stored` (28) are `InvalidLength`; an
/// all-zero message id or a commitment mismatch is the opaque `DecryptionFailed`.
pub fn verify_commitment(
    pdk: &[u8],
    message_id: &[u8],
    stored: &[u8],
) -> Result<SecretBytes, ContentError> {
    check_lengths(pdk, message_id)?;
    if stored.len() != V3_COMMITMENT_LEN {
        return Err(ContentError::InvalidLength {
            what: "key commitment",
            len: stored.len(),
        });
    }
    if is_all_zero(message_id) {
        return Err(ContentError::DecryptionFailed);
    }
    let prk = prk(pdk, message_id);
    let expected = expand::<V3_COMMITMENT_LEN>(&prk, COMMIT_LABEL)?;
    if !bool::from(expected.ct_eq(stored)) {
        return Err(ContentError::DecryptionFailed);
    }
    derive_dek(&prk)
}

/// A GCM encryptor for suite 0x0073 (DEK, nonce 01 x 12, AAD 00 73) and the commitment to store
/// as `x-amz-d`. Use [`new_message_id`] for `message_id` and store it as `x-amz-i`.
pub fn committing_encryptor(
    pdk: &[u8],
    message_id: &[u8],
) -> Result<(GcmEncryptor, [u8; V3_COMMITMENT_LEN]), ContentError> {
    let (dek, commitment) = derive(pdk, message_id)?;
    Ok((
        GcmEncryptor::new(dek.expose(), &COMMIT_IV, &COMMIT_AAD)?,
        commitment,
    ))
}

/// A GCM decryptor for a suite 0x0073 body. The commitment is checked FIRST: on mismatch no
/// decryptor is built and no byte of the body is ever decrypted.
pub fn committing_decryptor(
    pdk: &[u8],
    message_id: &[u8],
    stored_commitment: &[u8],
) -> Result<GcmDecryptor, ContentError> {
    let dek = verify_commitment(pdk, message_id, stored_commitment)?;
    GcmDecryptor::new(dek.expose(), &COMMIT_IV, &COMMIT_AAD)
}

/// A [`GcmTagVerifier`] for a suite 0x0073 body (commitment checked first).
pub fn committing_tag_verifier(
    pdk: &[u8],
    message_id: &[u8],
    stored_commitment: &[u8],
) -> Result<GcmTagVerifier, ContentError> {
    let dek = verify_commitment(pdk, message_id, stored_commitment)?;
    GcmTagVerifier::new(dek.expose(), &COMMIT_IV, &COMMIT_AAD)
}

/// A ranged (unauthenticated) decryptor for a suite 0x0073 body; see [`super::range`]. The
/// commitment is still checked first.
pub fn committing_range_decryptor(
    pdk: &[u8],
    message_id: &[u8],
    stored_commitment: &[u8],
    fetch_start: u64,
) -> Result<CtrRangeDecryptor, ContentError> {
    let dek = verify_commitment(pdk, message_id, stored_commitment)?;
    CtrRangeDecryptor::new(dek.expose(), &COMMIT_IV, fetch_start)
}

/// [`GcmParts`] for a suite 0x0073 body of `ct_len` ciphertext bytes (without the tag): parallel
/// ranged decryption whose whole-body tag is still checked. The commitment is checked first.
pub fn committing_parts(
    pdk: &[u8],
    message_id: &[u8],
    stored_commitment: &[u8],
    ct_len: u64,
) -> Result<GcmParts, ContentError> {
    let dek = verify_commitment(pdk, message_id, stored_commitment)?;
    GcmParts::new(dek.expose(), &COMMIT_IV, &COMMIT_AAD, ct_len)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::content::ContentDecryptor;
    use crate::content::ContentEncryptor;
    use base64::Engine;

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// aws/aws-sdk-ruby `gems/aws-sdk-s3/spec/fixtures/encryption/kdf_kat.json` (commit
    /// 9f235cdb0176d89d932808fb7457e09dee2a1f51), both entries ("Basic
    /// S3EC.ALG_AES_256_GCM_HKDF_SHA512_COMMIT_KEY"). Columns: data_key, message_id,
    /// encryption_key (DEK), commitment_key (CK).
    const RUBY_KDF_KAT: &[(&str, &str, &str, &str)] = &[
        (
            "80d90dc4cc7e77d8a6332efa44eba56230a7fe7b89af37d1e501ab2e07c0a163",
            "b8ea76bed24c7b85382a148cb9dcd1cfdfb765f55ded4dfa6e0c4c79",
            "6dd14f546cc006e639126e83f5d4d1b118576bb5df97f38c6fb3a1db87bbc338",
            "f89818bc0a346d3a3426b68e9509b6b2ae5fe1f904aa329fb73625db",
        ),
        (
            "501afb8227d22e75e68010414b8abdaf3064c081e8e922dafef4992036394d60",
            "61a00b4981a5aacfd136c55cb726e32d2a547dc7600a7d4675c69127",
            "e14786a714748d1d2c3a4a6816dec56ddf1881bbeabb4f39420ffb9f63700b2f",
            "5c1e73e47f6fe3a70d6d094283aceaa76d2975feb829212d88f0afc1",
        ),
    ];

    #[test]
    fn ruby_kdf_known_answers() {
        for &(pdk, mid, dek, ck) in RUBY_KDF_KAT {
            let (pdk, mid, dek, ck) = (hex(pdk), hex(mid), hex(dek), hex(ck));
            let (got_dek, got_ck) = derive(&pdk, &mid).unwrap();
            assert_eq!(got_dek.expose(), &dek[..]);
            assert_eq!(&got_ck[..], &ck[..]);
            assert_eq!(
                verify_commitment(&pdk, &mid, &ck).unwrap().expose(),
                &dek[..]
            );
            let mut bad = ck.clone();
            bad[27] ^= 1;
            assert_eq!(
                verify_commitment(&pdk, &mid, &bad).err(),
                Some(ContentError::DecryptionFailed)
            );
        }
    }

    #[test]
    fn lengths_and_zero_message_id() {
        let pdk = [7u8; 32];
        let mid = [9u8; 28];
        let (_, ck) = derive(&pdk, &mid).unwrap();
        let len_err = |what, len| Some(ContentError::InvalidLength { what, len });
        assert_eq!(
            verify_commitment(&pdk[..31], &mid, &ck).err(),
            len_err("data key", 31)
        );
        assert_eq!(
            verify_commitment(&[0; 16], &mid, &ck).err(),
            len_err("data key", 16)
        );
        assert_eq!(
            verify_commitment(&pdk, &mid[..27], &ck).err(),
            len_err("message id", 27)
        );
        assert_eq!(
            verify_commitment(&pdk, &[1; 32], &ck).err(),
            len_err("message id", 32)
        );
        assert_eq!(
            verify_commitment(&pdk, &mid, &ck[..27]).err(),
            len_err("key commitment", 27)
        );
        assert_eq!(
            verify_commitment(&pdk, &[0; 28], &ck).err(),
            Some(ContentError::DecryptionFailed)
        );
        assert!(derive(&pdk, &[0; 28]).is_err());
        assert!(committing_decryptor(&pdk, &[0; 28], &ck).is_err());
        assert!(new_message_id().iter().any(|&b| b != 0));
        assert_ne!(new_message_id(), new_message_id());
    }

    #[test]
    fn committing_round_trip_and_wrong_key() {
        let pdk = [3u8; 32];
        let mid = new_message_id();
        let (mut enc, ck) = committing_encryptor(&pdk, &mid).unwrap();
        let mut body = Vec::new();
        enc.encrypt(b"committed", &mut body).unwrap();
        Box::new(enc).finish(&mut body).unwrap();

        let mut dec = Box::new(committing_decryptor(&pdk, &mid, &ck).unwrap());
        let mut pt = Vec::new();
        dec.update(&body, &mut pt).unwrap();
        dec.finish(&mut pt).unwrap();
        assert_eq!(pt, b"committed");

        let mut v = committing_tag_verifier(&pdk, &mid, &ck).unwrap();
        v.update(&body).unwrap();
        v.finish().unwrap();

        // Another data key fails at the commitment, before any decryption.
        assert_eq!(
            committing_decryptor(&[4; 32], &mid, &ck).err(),
            Some(ContentError::DecryptionFailed)
        );
        // Another message id too.
        let mut mid2 = mid;
        mid2[0] ^= 0x80;
        assert_eq!(
            committing_decryptor(&pdk, &mid2, &ck).err(),
            Some(ContentError::DecryptionFailed)
        );
    }

    /// Peer-written: amazon-s3-encryption-client-python 4.0.0 wrote this V3 object (provenance in
    /// tests/vectors/README.md); its KMS data key was recovered from the emulator. The other
    /// vectors are covered table-driven in `content::tests::peer_vectors`.
    #[test]
    fn python_v4_commit_vector_decrypts() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/vectors/cases/awsv4-v3-commit-1000");
        let case: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("case.json")).unwrap()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let pdk = hex(case["data_key_hex"].as_str().unwrap());
        let meta = &case["metadata"];
        assert_eq!(meta["x-amz-c"], "115");
        let mid = b64.decode(meta["x-amz-i"].as_str().unwrap()).unwrap();
        let ck = b64.decode(meta["x-amz-d"].as_str().unwrap()).unwrap();
        let body = std::fs::read(dir.join("ciphertext.bin")).unwrap();
        let expected = std::fs::read(dir.join("plaintext.bin")).unwrap();
        assert_eq!(expected.len(), 1000);

        for chunk in [1usize, 16, 17, 4096] {
            let mut dec = Box::new(committing_decryptor(&pdk, &mid, &ck).unwrap());
            let mut pt = Vec::new();
            for piece in body.chunks(chunk) {
                dec.update(piece, &mut pt).unwrap();
            }
            dec.finish(&mut pt).unwrap();
            assert_eq!(pt, expected);
        }

        // Ranged read of the same object through the committing CTR path.
        let plan = crate::content::range::plan_gcm(100, 899, body.len() as u64).unwrap();
        let mut fetched =
            body[plan.fetch_start as usize..=plan.fetch_end_inclusive as usize].to_vec();
        committing_range_decryptor(&pdk, &mid, &ck, plan.fetch_start)
            .unwrap()
            .apply(&mut fetched);
        let got = &fetched[plan.skip as usize..(plan.skip + plan.take) as usize];
        assert_eq!(got, &expected[100..900]);

        // A flipped bit in the commitment is refused up front.
        let mut bad = ck.clone();
        bad[0] ^= 1;
        assert_eq!(
            committing_decryptor(&pdk, &mid, &bad).err(),
            Some(ContentError::DecryptionFailed)
        );
    }
}
