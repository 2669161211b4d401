//! GCM in parts: decrypting the ranges of one GCM body independently (in parallel, in any
//! order) and still checking the whole body's tag before any plaintext is released.
//!
//! GHASH is a polynomial in H evaluated by Horner's rule, `Y_i = (Y_(i-1) xor B_i) * H`, so it is
//! linear in the blocks. Split the ciphertext at 16-byte boundaries into parts `C_1..C_k` and let
//! `X_j = GHASH_H(C_j)` be each part's GHASH computed from zero (its last block zero-padded;
//! only the body's last part may be partial). Then, with `n_j` the number of blocks of `C_j`,
//!
//! ```text
//! Y_0 = GHASH_H(A || 0*)                       the AAD (empty for V2, `00 73` for V3)
//! Y_j = Y_(j-1) * H^(n_j) xor X_j              one multiplication per part (H^n by squaring)
//! S   = (Y_k xor [len(A)]64 || [len(C)]64) * H
//! T   = S xor E(K, J0)
//! ```
//!
//! The code carries every `Y` and `X` times H (what aws-lc's GHASH gives cheaply, see
//! `content::ghash`); the recurrence is linear, so it is the same, and `S = Y_k * H xor
//! lengths * H`.
//!
//! which is exactly the sequential GHASH of NIST SP 800-38D §6.4 (tested below against it and
//! against `aes-gcm`). A part's keystream starts at counter `2 + offset / 16` (inc32), so CTR
//! decryption needs nothing from the other parts either.
//!
//! The flow: [`GcmParts::new`] (or [`super::commit::committing_parts`]) from the key, IV and the
//! ciphertext length; [`GcmParts::part`] for each range; [`PartDecryptor::decrypt`] on the
//! fetched bytes (plaintext UNVERIFIED: keep it where nobody reads it); [`PartDecryptor::finish`]
//! gives a [`PartSum`]; [`GcmParts::verify`] with every part's sum and the stored tag says whether
//! the plaintext may be released. Any mismatch, gap, overlap or misaligned part is the one opaque
//! [`ContentError::DecryptionFailed`].

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use super::gcm::{Ctr, check_iv, counter_block};
use super::ghash::{Ghasher, PowerCache, gf_mul, length_block, xor};
use super::{AnyAes, ContentError, DECRYPT_KEY_LENS};
use crate::consts::{AES_BLOCK, GCM_IV_LEN, GCM_MAX_PLAINTEXT, GCM_TAG_LEN};

const B: u64 = AES_BLOCK as u64;

/// Everything the parts of one GCM body share: key schedule, IV, H, the tag mask and the AAD's
/// GHASH. Cheap to share by reference across tasks (`Sync`).
pub struct GcmParts {
    cipher: AnyAes,
    iv: [u8; GCM_IV_LEN],
    /// H = E(K, 0^128).
    h: Zeroizing<[u8; 16]>,
    /// E(K, J0).
    mask: Zeroizing<[u8; 16]>,
    /// `GHASH_H(A || 0*) * H`: the Horner state before the first ciphertext block, times H.
    aad_sum: [u8; 16],
    aad_len: u64,
    /// Ciphertext length without the tag.
    ct_len: u64,
}

/// The GHASH of one part, computed from zero, with where the part sits in the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartSum {
    pub offset: u64,
    pub len: u64,
    sum: [u8; 16],
}

/// CTR decryption and GHASH of one part of a GCM body: the ciphertext bytes
/// `offset..offset + len`, fed in pieces of any size.
pub struct PartDecryptor {
    ctr: Ctr,
    hasher: Ghasher,
    offset: u64,
}

impl GcmParts {
    /// For a GCM body whose ciphertext (without the 16-byte tag) is `ct_len` bytes long.
    /// AES-128/192/256 keys, 12-byte IV, the AAD used at encryption.
    pub fn new(key: &[u8], iv: &[u8], aad: &[u8], ct_len: u64) -> Result<Self, ContentError> {
        if ct_len > GCM_MAX_PLAINTEXT {
            return Err(ContentError::TooLarge);
        }
        let iv = check_iv(iv)?;
        let cipher = AnyAes::new(key, DECRYPT_KEY_LENS)?;
        let mut h = aes::Block::default();
        cipher.encrypt_block(&mut h);
        let mut j0 = counter_block(&iv, 1);
        cipher.encrypt_block(&mut j0);
        let mut hb = Zeroizing::new([0u8; 16]);
        hb.copy_from_slice(&h);
        let mut mask = Zeroizing::new([0u8; 16]);
        mask.copy_from_slice(&j0);
        h.zeroize();
        j0.zeroize();
        let aad_sum = Ghasher::new(cipher.lc.clone(), &hb, aad).sum();
        Ok(Self {
            cipher,
            iv,
            h: hb,
            mask,
            aad_sum,
            aad_len: aad.len() as u64,
            ct_len,
        })
    }

    /// Ciphertext length without the tag (the plaintext length).
    pub fn ct_len(&self) -> u64 {
        self.ct_len
    }

    /// A decryptor for the part starting at ciphertext byte `offset`, a multiple of 16 below
    /// the ciphertext length (or 0 for an empty body). Anything else is a caller bug, reported as
    /// `InvalidLength`.
    pub fn part(&self, offset: u64) -> Result<PartDecryptor, ContentError> {
        if !offset.is_multiple_of(B) || (offset > 0 && offset >= self.ct_len) {
            return Err(ContentError::InvalidLength {
                what: "GCM part offset",
                len: usize::try_from(offset).unwrap_or(usize::MAX),
            });
        }
        // ct_len <= 2^36 - 32, so offset / 16 < 2^32 - 2 and the counter never wraps.
        let first = 2u32.wrapping_add((offset / B) as u32);
        Ok(PartDecryptor {
            ctr: Ctr::new(&self.cipher, &self.iv, first),
            hasher: Ghasher::new(self.cipher.lc.clone(), &self.h, b""),
            offset,
        })
    }

    /// `Ok(())` if `parts` cover the ciphertext exactly (in any order; every part but the last
    /// a multiple of 16 bytes) and combine to the stored `tag`; [`ContentError::DecryptionFailed`]
    /// otherwise.
    pub fn verify(&self, parts: &[PartSum], tag: &[u8]) -> Result<(), ContentError> {
        let mut sorted: Vec<&PartSum> = parts.iter().collect();
        sorted.sort_by_key(|p| p.offset);
        let mut acc = self.aad_sum;
        let mut at = 0u64;
        let mut powers = PowerCache::new(&self.h);
        for p in &sorted {
            let aligned = p.len.is_multiple_of(B);
            let last = p.offset + p.len == self.ct_len;
            if p.offset != at || (!aligned && !last) || (p.len == 0 && self.ct_len != 0) {
                return Err(ContentError::DecryptionFailed);
            }
            let hn = powers.get(p.len.div_ceil(B));
            acc = xor(&gf_mul(&acc, &hn), &p.sum);
            at += p.len;
        }
        if at != self.ct_len || tag.len() != GCM_TAG_LEN {
            return Err(ContentError::DecryptionFailed);
        }
        // The sums are `Y * H` (ghash.rs), so `S = (Y xor lengths) * H = acc xor lengths * H`.
        let s = xor(
            &acc,
            &gf_mul(&length_block(self.aad_len, self.ct_len), &self.h),
        );
        let want = Zeroizing::new(xor(&s, &self.mask));
        acc.zeroize();
        if bool::from(want.ct_eq(tag)) {
            Ok(())
        } else {
            Err(ContentError::DecryptionFailed)
        }
    }
}

impl PartDecryptor {
    /// Decrypts the next bytes of the part in place (and hashes their ciphertext first).
    /// The plaintext is UNVERIFIED until [`GcmParts::verify`] returned `Ok`.
    pub fn decrypt(&mut self, buf: &mut [u8]) {
        for slice in buf.chunks_mut(super::gcm::SLICE) {
            self.hasher.update(slice);
            self.ctr.apply(slice);
        }
    }

    /// The part's GHASH, for [`GcmParts::verify`].
    pub fn finish(self) -> PartSum {
        PartSum {
            offset: self.offset,
            len: self.hasher.ct_len(),
            sum: self.hasher.sum(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::content::gcm::GcmEncryptor;
    use aes_gcm::aead::{Aead, KeyInit as _, Payload};
    use proptest::prelude::*;

    /// Encrypts with `aes-gcm` (an independent implementation): `ciphertext || tag`.
    fn reference(key: &[u8; 32], iv: &[u8; 12], aad: &[u8], pt: &[u8]) -> Vec<u8> {
        aes_gcm::Aes256Gcm::new_from_slice(key)
            .unwrap()
            .encrypt(iv.into(), Payload { msg: pt, aad })
            .unwrap()
    }

    /// Decrypts `body` as parts starting at `cuts` (16-aligned offsets), processed in reverse
    /// order, each fed in `piece`-byte pieces; returns the plaintext if the tag checks out.
    fn decrypt_in_parts(
        key: &[u8],
        iv: &[u8],
        aad: &[u8],
        body: &[u8],
        cuts: &[u64],
        piece: usize,
    ) -> Result<Vec<u8>, ContentError> {
        let ct_len = body
            .len()
            .checked_sub(16)
            .ok_or(ContentError::DecryptionFailed)? as u64;
        let parts = GcmParts::new(key, iv, aad, ct_len)?;
        let mut bounds: Vec<u64> = cuts.iter().copied().filter(|&c| c < ct_len).collect();
        bounds.push(0);
        bounds.sort_unstable();
        bounds.dedup();
        let mut out = body[..ct_len as usize].to_vec();
        let mut sums = Vec::new();
        for (i, &start) in bounds.iter().enumerate().rev() {
            let end = bounds.get(i + 1).copied().unwrap_or(ct_len);
            let mut d = parts.part(start)?;
            for p in out[start as usize..end as usize].chunks_mut(piece.max(1)) {
                d.decrypt(p);
            }
            sums.push(d.finish());
        }
        parts.verify(&sums, &body[ct_len as usize..])?;
        Ok(out)
    }

    fn aligned_cuts() -> impl Strategy<Value = Vec<u64>> {
        proptest::collection::vec((0u64..5000).prop_map(|b| b * 16), 0..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any split at 16-byte boundaries gives the plaintext and accepts exactly the tag that
        /// `aes-gcm` (sequential GHASH) computed; lengths not multiple of 16, 0 and 1 included.
        #[test]
        fn parts_match_sequential_gcm(
            len in prop_oneof![0usize..3, 0usize..100, 0usize..80_000],
            key in any::<[u8; 32]>(),
            iv in any::<[u8; 12]>(),
            aad in prop_oneof![Just(vec![]), Just(vec![0x00, 0x73]), proptest::collection::vec(any::<u8>(), 0..40)],
            cuts in aligned_cuts(),
            piece in prop_oneof![Just(usize::MAX), 1usize..40, 1usize..20_000],
        ) {
            let pt: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(131) ^ key[i % 32]).collect();
            let body = reference(&key, &iv, &aad, &pt);
            prop_assert_eq!(decrypt_in_parts(&key, &iv, &aad, &body, &cuts, piece).unwrap(), pt);
        }

        /// A flipped bit anywhere (any part, the tag) fails with the one opaque error.
        #[test]
        fn any_flip_fails(
            len in 1usize..3000,
            pos in any::<prop::sample::Index>(),
            bit in 0u8..8,
            cuts in proptest::collection::vec((0u64..200).prop_map(|b| b * 16), 0..6),
        ) {
            let key = [9u8; 32];
            let iv = [8u8; 12];
            let mut body = reference(&key, &iv, b"", &vec![0x5a; len]);
            let i = pos.index(body.len());
            body[i] ^= 1 << bit;
            prop_assert_eq!(
                decrypt_in_parts(&key, &iv, b"", &body, &cuts, 777),
                Err(ContentError::DecryptionFailed)
            );
        }
    }

    #[test]
    fn one_byte_and_empty_bodies() {
        let key = [1u8; 32];
        let iv = [2u8; 12];
        for pt in [&b""[..], b"x"] {
            let body = reference(&key, &iv, b"", pt);
            assert_eq!(decrypt_in_parts(&key, &iv, b"", &body, &[], 1).unwrap(), pt);
        }
    }

    /// Parts that do not tile the body (a gap, an overlap, a missing or repeated part, a
    /// misaligned middle part) fail even though each part's own sum is right.
    #[test]
    fn parts_must_tile_the_body() {
        let key = [3u8; 32];
        let iv = [4u8; 12];
        let pt = vec![7u8; 100];
        let body = reference(&key, &iv, b"", &pt);
        let parts = GcmParts::new(&key, &iv, b"", 100).unwrap();
        let sum = |start: u64, end: u64| {
            let mut d = parts.part(start).unwrap();
            d.decrypt(&mut body[start as usize..end as usize].to_vec());
            d.finish()
        };
        let tag = &body[100..];
        assert!(parts.verify(&[sum(0, 32), sum(32, 100)], tag).is_ok());
        for bad in [
            vec![sum(0, 32)],
            vec![sum(32, 100)],
            vec![sum(0, 32), sum(48, 100)],
            vec![sum(0, 48), sum(32, 100)],
            vec![sum(0, 32), sum(0, 32), sum(32, 100)],
            vec![sum(0, 30), sum(32, 100)],
            vec![],
        ] {
            assert_eq!(parts.verify(&bad, tag), Err(ContentError::DecryptionFailed));
        }
        assert_eq!(
            parts.verify(&[sum(0, 100)], &tag[..15]),
            Err(ContentError::DecryptionFailed)
        );
        assert!(parts.part(8).is_err());
        assert!(parts.part(112).is_err());
    }

    /// The streaming encryptor and the parts agree too (same code path as V2 writes).
    #[test]
    fn streaming_encryptor_round_trips() {
        let key = [5u8; 32];
        let iv = [6u8; 12];
        let pt: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
        let mut enc = GcmEncryptor::new(&key, &iv, b"").unwrap();
        let mut body = Vec::new();
        enc.encrypt(&pt, &mut body).unwrap();
        body.extend_from_slice(&enc.finish_tag());
        assert_eq!(
            decrypt_in_parts(&key, &iv, b"", &body, &[8192, 16384, 49_984], 4096).unwrap(),
            pt
        );
    }
}
