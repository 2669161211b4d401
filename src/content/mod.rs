//! Streaming content ciphers: the bytes of an S3 object body, in and out. Pure: no I/O, no S3.
//!
//! FORMATS.md §2 lists the content suites; this module implements each as a streaming cipher that
//! takes chunks of any size (so a multi-GiB object never has to sit in memory):
//!
//! - [`gcm`]: AES-GCM (suite 0x0072, `AES/GCM/NoPadding`), built from AES-CTR + GHASH per
//!   NIST SP 800-38D and byte-identical to the one-shot `aes-gcm` crate, plus a
//!   [`gcm::GcmTagVerifier`] that authenticates a body without decrypting it.
//! - [`cbc`]: AES-CBC with PKCS#7 padding (suite 0x0070, `AES/CBC/PKCS5Padding`, legacy).
//! - [`commit`]: the V3 key-committing suite 0x0073 (HKDF-SHA512 derived key + commitment).
//! - [`parts`]: GCM in independent parts (parallel ranged GETs) with the whole body's tag still
//!   checked, by combining per-part GHASH values with powers of H.
//! - [`range`]: ranged (unauthenticated) decryption: the fetch plan and CTR / CBC decryptors.
//!
//! Underneath, `awslc` runs CTR and GHASH on aws-lc's assembly through
//! aws-lc-rs's safe API, and `ghash` turns aws-lc's AES-GCM tags into GHASH states; `aes` and
//! `polyval` do CBC decryption (VAES-512 measured faster there), single blocks and single multiplications (BENCHMARKS.md "Content ciphers").
//!
//! # Key sizes
//! Every AWS client writes AES-256 content keys, so the encryptors accept 32-byte keys only.
//! The GCM and CBC decryptors (and the range decryptors) also accept 16- and 24-byte keys, so a
//! hand-made AES-128/192 object can still be read. The committing suite is AES-256 only.
//!
//! # Verify before release
//! [`ContentDecryptor::update`] hands out plaintext before the tag (GCM) or padding (CBC) has been
//! checked; that is what streaming means. Callers that must not release unverified bytes either
//! buffer until [`ContentDecryptor::finish`] returns `Ok`, or authenticate the body first with
//! [`gcm::GcmTagVerifier`] and decrypt in a second pass.

mod awslc;
pub mod cbc;
pub mod commit;
pub mod gcm;
mod ghash;
pub mod parts;
pub mod range;

use zeroize::Zeroize;

/// What can go wrong in the content layer.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum ContentError {
    /// Tag, padding or key-commitment mismatch. Deliberately one opaque variant (no padding oracle).
    #[error("decryption failed: the object is corrupt, tampered with, or the key is wrong")]
    DecryptionFailed,
    /// Key/IV/message-id of the wrong length (caller or envelope problem, not a crypto failure).
    #[error("invalid {what} length: {len}")]
    InvalidLength { what: &'static str, len: usize },
    /// More plaintext than GCM allows under one key/IV (2^36 - 32 bytes).
    #[error("content too large for AES-GCM")]
    TooLarge,
}

/// Streaming encryption. `update` may be called with any chunk sizes; output is appended to `out`.
pub trait ContentEncryptor: Send {
    fn update(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), ContentError>;
    /// Appends the final bytes (CBC: the padded last block; GCM: the 16-byte tag).
    fn finish(self: Box<Self>, out: &mut Vec<u8>) -> Result<(), ContentError>;
    /// Ciphertext length for a plaintext of `n` bytes.
    fn ciphertext_len(&self, n: u64) -> u64;
}

/// Streaming decryption of a whole object body (tag/padding at the end). `update` appends plaintext
/// as it goes (GCM holds back the last 16 bytes since they may be the tag; CBC holds back the last block
/// for padding removal). `finish` verifies the tag (constant time) / padding and appends the rest.
/// The caller must treat every byte appended before `finish` returned Ok as UNVERIFIED.
pub trait ContentDecryptor: Send {
    fn update(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), ContentError>;
    fn finish(self: Box<Self>, out: &mut Vec<u8>) -> Result<(), ContentError>;
}

/// Boxed [`gcm::GcmEncryptor`]: AES-256-GCM, 12-byte IV.
pub fn gcm_encryptor(
    key: &[u8],
    iv: &[u8],
    aad: &[u8],
) -> Result<Box<dyn ContentEncryptor>, ContentError> {
    Ok(Box::new(gcm::GcmEncryptor::new(key, iv, aad)?))
}

/// Boxed [`gcm::GcmDecryptor`]: AES-GCM (128/192/256), 12-byte IV.
pub fn gcm_decryptor(
    key: &[u8],
    iv: &[u8],
    aad: &[u8],
) -> Result<Box<dyn ContentDecryptor>, ContentError> {
    Ok(Box::new(gcm::GcmDecryptor::new(key, iv, aad)?))
}

/// Boxed [`cbc::CbcEncryptor`]: AES-256-CBC with PKCS#7, 16-byte IV.
pub fn cbc_encryptor(key: &[u8], iv: &[u8]) -> Result<Box<dyn ContentEncryptor>, ContentError> {
    Ok(Box::new(cbc::CbcEncryptor::new(key, iv)?))
}

/// Boxed [`cbc::CbcDecryptor`]: AES-CBC (128/192/256) with PKCS#7, 16-byte IV.
pub fn cbc_decryptor(key: &[u8], iv: &[u8]) -> Result<Box<dyn ContentDecryptor>, ContentError> {
    Ok(Box::new(cbc::CbcDecryptor::new(key, iv)?))
}

/// Checks a key length against what a constructor accepts.
fn check_key(key: &[u8], allowed: &[usize]) -> Result<(), ContentError> {
    if allowed.contains(&key.len()) {
        Ok(())
    } else {
        Err(ContentError::InvalidLength {
            what: "key",
            len: key.len(),
        })
    }
}

/// Encryptors write AES-256 only (what every AWS client writes).
const ENCRYPT_KEY_LENS: &[usize] = &[32];
/// Decryptors also read AES-128/192 objects.
const DECRYPT_KEY_LENS: &[usize] = &[16, 24, 32];

/// An AES key of any standard size, chosen at run time from the key length: single blocks on
/// `aes` (AES-NI or ARMv8 AES picked at run time), the bulk on aws-lc ([`awslc`]). Both zeroize
/// their key schedules on drop; clones share the aws-lc keys.
#[derive(Clone)]
struct AnyAes {
    block: BlockAes,
    lc: std::sync::Arc<awslc::LcAes>,
}

#[derive(Clone)]
enum BlockAes {
    A128(aes::Aes128),
    A192(aes::Aes192),
    A256(aes::Aes256),
}

impl AnyAes {
    fn new(key: &[u8], allowed: &[usize]) -> Result<Self, ContentError> {
        use aes::cipher::KeyInit;
        check_key(key, allowed)?;
        let bad = |_| ContentError::InvalidLength {
            what: "key",
            len: key.len(),
        };
        let block = match key.len() {
            16 => BlockAes::A128(aes::Aes128::new_from_slice(key).map_err(bad)?),
            24 => BlockAes::A192(aes::Aes192::new_from_slice(key).map_err(bad)?),
            _ => BlockAes::A256(aes::Aes256::new_from_slice(key).map_err(bad)?),
        };
        // E(K, 0^96 || 1): what masks the zero-nonce tags aws-lc's GHASH comes from.
        let mut zero_nonce = gcm::counter_block(&[0; crate::consts::GCM_IV_LEN], 1);
        block.encrypt_block(&mut zero_nonce);
        let mut mask = [0u8; 16];
        mask.copy_from_slice(&zero_nonce);
        zero_nonce.zeroize();
        let lc = awslc::LcAes::new(key, mask);
        mask.zeroize();
        Ok(Self {
            block,
            lc: std::sync::Arc::new(lc?),
        })
    }

    fn encrypt_block(&self, block: &mut aes::Block) {
        self.block.encrypt_block(block);
    }
}

impl AnyAes {
    /// ECB decryption in place of whole blocks (`buf.len()` a multiple of 16; a trailing
    /// partial block is left alone).
    fn decrypt_blocks(&self, buf: &mut [u8]) {
        use aes::cipher::BlockCipherDecrypt;
        let (blocks, _) = aes::Block::slice_as_chunks_mut(buf);
        match &self.block {
            BlockAes::A128(c) => c.decrypt_blocks(blocks),
            BlockAes::A192(c) => c.decrypt_blocks(blocks),
            BlockAes::A256(c) => c.decrypt_blocks(blocks),
        }
    }
}

impl BlockAes {
    fn encrypt_block(&self, block: &mut aes::Block) {
        use aes::cipher::BlockCipherEncrypt;
        match self {
            Self::A128(c) => c.encrypt_block(block),
            Self::A192(c) => c.encrypt_block(block),
            Self::A256(c) => c.encrypt_block(block),
        }
    }
}

/// `dst ^= src` for equal-length slices, 16 bytes at a time (the compiler vectorizes it); a
/// trailing partial block is XORed byte by byte.
fn xor_in_place(dst: &mut [u8], src: &[u8]) {
    debug_assert_eq!(dst.len(), src.len());
    let mut d_blocks = dst.chunks_exact_mut(16);
    let mut s_blocks = src.chunks_exact(16);
    for (d, s) in (&mut d_blocks).zip(&mut s_blocks) {
        let mut a = [0u8; 16];
        let mut b = [0u8; 16];
        a.copy_from_slice(d);
        b.copy_from_slice(s);
        d.copy_from_slice(&(u128::from_ne_bytes(a) ^ u128::from_ne_bytes(b)).to_ne_bytes());
    }
    for (d, s) in d_blocks
        .into_remainder()
        .iter_mut()
        .zip(s_blocks.remainder())
    {
        *d ^= s;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn boxed_constructors_round_trip() {
        let key = [7u8; 32];
        let mut ct = Vec::new();
        let mut enc = gcm_encryptor(&key, &[1; 12], b"aad").unwrap();
        assert_eq!(enc.ciphertext_len(5), 21);
        enc.update(b"hello", &mut ct).unwrap();
        enc.finish(&mut ct).unwrap();
        let mut pt = Vec::new();
        let mut dec = gcm_decryptor(&key, &[1; 12], b"aad").unwrap();
        dec.update(&ct, &mut pt).unwrap();
        dec.finish(&mut pt).unwrap();
        assert_eq!(pt, b"hello");

        let mut ct = Vec::new();
        let mut enc = cbc_encryptor(&key, &[2; 16]).unwrap();
        assert_eq!(enc.ciphertext_len(16), 32);
        enc.update(b"hello", &mut ct).unwrap();
        enc.finish(&mut ct).unwrap();
        let mut pt = Vec::new();
        let mut dec = cbc_decryptor(&key, &[2; 16]).unwrap();
        dec.update(&ct, &mut pt).unwrap();
        dec.finish(&mut pt).unwrap();
        assert_eq!(pt, b"hello");
    }

    /// Every peer-written vector under tests/vectors whose data key is known (the KMS cases:
    /// aioboto3 V2 CBC and GCM, the AWS Python client's V2 GCM and V3 committing objects; see
    /// tests/vectors/README.md) decrypts through the streaming decryptors, authenticates through
    /// the tag verifier, and serves ranges equal to slices of the plaintext.
    #[test]
    fn peer_vectors() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/cases");
        let mut dirs: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        dirs.sort();
        let mut checked = std::collections::BTreeMap::<&str, usize>::new();
        for dir in dirs {
            let case: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("case.json")).unwrap()).unwrap();
            let Some(key) = case["data_key_hex"].as_str() else {
                continue; // raw-key V1 cases: the key must be unwrapped first (keyring tests)
            };
            let key = hex::decode(key).unwrap();
            let meta = &case["metadata"];
            let name = case["name"].as_str().unwrap().to_owned();
            let body = std::fs::read(dir.join("ciphertext.bin")).unwrap();
            let pt = std::fs::read(dir.join("plaintext.bin")).unwrap();
            let meta_b64 = |k: &str| b64.decode(meta[k].as_str().unwrap()).unwrap();

            let (kind, dec, verifier, range_key, iv): (_, Box<dyn ContentDecryptor>, _, _, _) =
                if meta["x-amz-c"] == "115" {
                    let (mid, ck) = (meta_b64("x-amz-i"), meta_b64("x-amz-d"));
                    let dek = commit::verify_commitment(&key, &mid, &ck).unwrap();
                    let dec = commit::committing_decryptor(&key, &mid, &ck).unwrap();
                    let ver = commit::committing_tag_verifier(&key, &mid, &ck).unwrap();
                    (
                        "v3-commit",
                        Box::new(dec),
                        Some(ver),
                        dek.expose().to_vec(),
                        commit::COMMIT_IV.to_vec(),
                    )
                } else if meta["x-amz-cek-alg"] == "AES/GCM/NoPadding" {
                    let iv = meta_b64("x-amz-iv");
                    let ver = gcm::GcmTagVerifier::new(&key, &iv, b"").unwrap();
                    (
                        "gcm",
                        gcm_decryptor(&key, &iv, b"").unwrap(),
                        Some(ver),
                        key.clone(),
                        iv,
                    )
                } else {
                    assert_eq!(meta["x-amz-cek-alg"], "AES/CBC/PKCS5Padding", "{name}");
                    let iv = meta_b64("x-amz-iv");
                    (
                        "cbc",
                        cbc_decryptor(&key, &iv).unwrap(),
                        None,
                        key.clone(),
                        iv,
                    )
                };

            let mut dec = dec;
            let mut out = Vec::new();
            for piece in body.chunks(4093) {
                dec.update(piece, &mut out).unwrap();
            }
            dec.finish(&mut out).unwrap();
            assert_eq!(out, pt, "{name}");
            if let Some(mut v) = verifier {
                v.update(&body).unwrap();
                v.finish().unwrap();
                // GCM in parts (parallel GETs): 32-byte parts decrypted last to first.
                let ct_len = body.len() as u64 - 16;
                let parts = if kind == "v3-commit" {
                    commit::committing_parts(
                        &key,
                        &meta_b64("x-amz-i"),
                        &meta_b64("x-amz-d"),
                        ct_len,
                    )
                } else {
                    parts::GcmParts::new(&key, &iv, b"", ct_len)
                }
                .unwrap();
                let mut plain = body[..ct_len as usize].to_vec();
                let mut sums = Vec::new();
                for (i, chunk) in plain.chunks_mut(32).enumerate().rev() {
                    let mut d = parts.part(i as u64 * 32).unwrap();
                    d.decrypt(chunk);
                    sums.push(d.finish());
                }
                parts.verify(&sums, &body[ct_len as usize..]).unwrap();
                assert_eq!(plain, pt, "{name} in parts");
            }

            let len = pt.len() as u64;
            for (s, e) in [
                (0, 0),
                (0, u64::MAX),
                (1, 16),
                (15, 33),
                (len / 2, len / 2 + 40),
                (len.saturating_sub(3), len + 5),
            ] {
                let want = (s <= e && s < len).then(|| &pt[s as usize..=e.min(len - 1) as usize]);
                let got = if kind == "cbc" {
                    range::plan_cbc(s, e, body.len() as u64).map(|plan| {
                        let fetched =
                            &body[plan.fetch_start as usize..=plan.fetch_end_inclusive as usize];
                        range::decrypt_cbc_range(&range_key, &iv, &plan, body.len() as u64, fetched)
                            .unwrap()
                    })
                } else {
                    range::plan_gcm(s, e, body.len() as u64).map(|plan| {
                        let fetched =
                            &body[plan.fetch_start as usize..=plan.fetch_end_inclusive as usize];
                        range::decrypt_gcm_range(&range_key, &iv, &plan, fetched).unwrap()
                    })
                };
                match want {
                    Some(w) => assert_eq!(got.as_deref(), Some(w), "{name} range {s}-{e}"),
                    None => assert!(got.is_none_or(|g| g.is_empty()), "{name} range {s}-{e}"),
                }
            }
            *checked.entry(kind).or_default() += 1;
        }
        // 7 sizes each: aioboto3 kms-cbc; aioboto3 kms-gcm + awsv4 v2-gcm + v2-gcm-ctx; awsv4 v3.
        assert_eq!(checked.get("cbc"), Some(&7), "{checked:?}");
        assert_eq!(checked.get("gcm"), Some(&21), "{checked:?}");
        assert_eq!(checked.get("v3-commit"), Some(&7), "{checked:?}");
    }

    #[test]
    fn key_lengths() {
        for len in [0, 15, 17, 31, 33, 64] {
            let err = ContentError::InvalidLength { what: "key", len };
            assert_eq!(
                gcm_decryptor(&vec![0; len], &[0; 12], b"").err(),
                Some(err.clone())
            );
            assert_eq!(cbc_decryptor(&vec![0; len], &[0; 16]).err(), Some(err));
        }
        for len in [16, 24] {
            let err = ContentError::InvalidLength { what: "key", len };
            assert_eq!(
                gcm_encryptor(&vec![0; len], &[0; 12], b"").err(),
                Some(err.clone())
            );
            assert_eq!(cbc_encryptor(&vec![0; len], &[0; 16]).err(), Some(err));
            assert!(gcm_decryptor(&vec![0; len], &[0; 12], b"").is_ok());
            assert!(cbc_decryptor(&vec![0; len], &[0; 16]).is_ok());
        }
    }
}
