//! The bulk work of GCM on aws-lc's assembly, through aws-lc-rs's safe API: AES-CTR (GCM's
//! keystream) and GHASH. aws-lc-rs is already linked for TLS (rustls under the AWS SDK), so this
//! adds no crate, and our crate stays free of `unsafe`. In the release bench, aws-lc's GHASH
//! (VPCLMULQDQ) ran at 3x `polyval` 0.7 (which also needs a byte reversal); its CBC decryption
//! (AES-NI) was slower than `aes`'s VAES-512, so CBC stays on `aes` (BENCHMARKS.md).
//!
//! aws-lc-rs has no GHASH API, so GHASH is read off AES-GCM. Sealing an empty plaintext with data
//! `D` (whole blocks) as AAD under the all-zero nonce gives the tag
//!
//! ```text
//! T = GHASH_H(D || [8 len(D)]64 || [0]64) xor E(K, 0^96 || 1)
//! ```
//!
//! and aws-lc hashes AAD with the same code as ciphertext. Such tags never leave `content/`:
//! [`super::ghash::Ghasher`] turns them back into Horner states.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{self, EncryptingKey, EncryptionContext, UnboundCipherKey};
use zeroize::Zeroizing;

use super::ContentError;
use crate::consts::{AES_BLOCK, GCM_IV_LEN};

/// aws-lc keys for one AES key (16, 24 or 32 bytes); their schedules are wiped on drop.
pub(super) struct LcAes {
    ctr: EncryptingKey,
    gcm: LessSafeKey,
    /// `E(K, 0^96 || 1)`: what masks the zero-nonce tags.
    zero_mask: Zeroizing<[u8; 16]>,
}

/// aws-lc-rs fails these calls only on arguments we never pass (a context of the wrong kind).
fn must<T>(r: Result<T, aws_lc_rs::error::Unspecified>) -> T {
    r.expect("aws-lc rejected a well-formed AES call")
}

impl LcAes {
    /// `zero_mask` is `E(K, 0^96 || 1)`, computed by the caller's block cipher.
    pub(super) fn new(key: &[u8], zero_mask: [u8; 16]) -> Result<Self, ContentError> {
        let (alg, aead_alg) = match key.len() {
            16 => (&cipher::AES_128, &aead::AES_128_GCM),
            24 => (&cipher::AES_192, &aead::AES_192_GCM),
            _ => (&cipher::AES_256, &aead::AES_256_GCM),
        };
        let bad = |_| ContentError::InvalidLength {
            what: "key",
            len: key.len(),
        };
        let unbound = || UnboundCipherKey::new(alg, key).map_err(bad);
        Ok(Self {
            ctr: EncryptingKey::ctr(unbound()?).map_err(bad)?,
            gcm: LessSafeKey::new(UnboundKey::new(aead_alg, key).map_err(bad)?),
            zero_mask: Zeroizing::new(zero_mask),
        })
    }

    /// XORs into `buf` the keystream blocks `E(K, IV || [first + i]32)`, the counter wrapping
    /// to 0 without carrying into the IV (GCM's inc32). `buf` may end in a partial block.
    pub(super) fn ctr32(&self, iv: &[u8; GCM_IV_LEN], first: u32, mut buf: &mut [u8]) {
        let mut counter = first;
        while !buf.is_empty() {
            // aws-lc counts in 128 bits: never let one call run past the 32-bit wrap.
            let room = ((1u64 << 32) - u64::from(counter)) * AES_BLOCK as u64;
            let n = usize::try_from(room).map_or(buf.len(), |r| r.min(buf.len()));
            let (now, rest) = buf.split_at_mut(n);
            let mut block = [0u8; AES_BLOCK];
            block[..GCM_IV_LEN].copy_from_slice(iv);
            block[GCM_IV_LEN..].copy_from_slice(&counter.to_be_bytes());
            must(
                self.ctr
                    .less_safe_encrypt(now, EncryptionContext::Iv128(block.into())),
            );
            // Truncation is inc32; a partial block only ever ends the buffer.
            counter = counter.wrapping_add((n / AES_BLOCK) as u32);
            buf = rest;
        }
    }

    /// `GHASH_H(data || [8 len(data)]64 || [0]64)` for whole blocks (`data` not empty).
    pub(super) fn ghash_with_len(&self, data: &[u8]) -> [u8; 16] {
        debug_assert!(!data.is_empty() && data.len().is_multiple_of(AES_BLOCK));
        let tag = must(self.gcm.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(data),
            &mut [],
        ));
        let mut out = [0u8; 16];
        for (o, (t, m)) in out
            .iter_mut()
            .zip(tag.as_ref().iter().zip(&*self.zero_mask))
        {
            *o = t ^ m;
        }
        out
    }
}
