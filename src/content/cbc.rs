//! Streaming AES-CBC with PKCS#7 padding (suite 0x0070, `AES/CBC/PKCS5Padding`): the V1 format
//! and V2 objects written in "EncryptionOnly" mode. Legacy and unauthenticated: reading it should
//! sit behind the "legacy unauthenticated" switch (FORMATS.md §8).
//!
//! Ciphertext length is `16 * (n / 16 + 1)`: PKCS#7 always adds 1..=16 bytes. A padding error is
//! reported as the same opaque [`ContentError::DecryptionFailed`] as a bad GCM tag, and the padding
//! is checked without data-dependent branches, so this is no padding oracle.

use aes::cipher::{BlockModeEncrypt, KeyIvInit};
use zeroize::Zeroize;

use super::{
    AnyAes, ContentDecryptor, ContentEncryptor, ContentError, DECRYPT_KEY_LENS, ENCRYPT_KEY_LENS,
};
use crate::consts::{AES_BLOCK, CBC_IV_LEN};

type Block = aes::Block;

fn check_iv(iv: &[u8]) -> Result<(), ContentError> {
    if iv.len() == CBC_IV_LEN {
        Ok(())
    } else {
        Err(ContentError::InvalidLength {
            what: "CBC IV",
            len: iv.len(),
        })
    }
}

fn bad_key(key: &[u8]) -> ContentError {
    ContentError::InvalidLength {
        what: "key",
        len: key.len(),
    }
}

/// Bytes decrypted per step: the copy, the AES pass and the XOR pass all stay in L1.
const SLICE: usize = 8 * 1024;

/// Raw CBC decryption (no padding handling), for whole blocks.
///
/// Decryption has no serial dependency (`P_i = D(C_i) xor C_(i-1)`), so it runs as a parallel
/// ECB pass (the `aes` backends pipeline 8 blocks with AES-NI, more with VAES) followed by an
/// XOR with the ciphertext shifted by one block. That is faster than the `cbc` crate's
/// block-by-block chaining; `CbcDecryptor` is tested against the `cbc` crate. aws-lc's CBC
/// decryption (AES-NI, 8 blocks) measured slower here than `aes`'s VAES-512 ECB pass
/// (BENCHMARKS.md "Content ciphers"), so this one stays on `aes`.
pub(super) struct RawCbcDec {
    cipher: AnyAes,
    /// The previous ciphertext block (the IV at first).
    prev: [u8; AES_BLOCK],
    /// Decrypted blocks before the XOR: plaintext, so zeroized on drop.
    scratch: Vec<u8>,
}

impl Drop for RawCbcDec {
    fn drop(&mut self) {
        self.scratch.zeroize();
    }
}

impl RawCbcDec {
    pub(super) fn new(key: &[u8], iv: &[u8]) -> Result<Self, ContentError> {
        check_iv(iv)?;
        let cipher = AnyAes::new(key, DECRYPT_KEY_LENS)?;
        let mut prev = [0u8; AES_BLOCK];
        prev.copy_from_slice(iv);
        Ok(Self {
            cipher,
            prev,
            scratch: vec![0; SLICE],
        })
    }

    /// Appends the plaintext of `src` to `out`; `src.len()` must be a multiple of 16.
    pub(super) fn decrypt_into(&mut self, src: &[u8], out: &mut Vec<u8>) {
        debug_assert!(src.len().is_multiple_of(AES_BLOCK));
        out.reserve(src.len());
        for slice in src.chunks(SLICE) {
            let n = slice.len();
            // ECB-decrypt into the (L1-resident) scratch, then write `out` once: D(C_i) ^ C_(i-1).
            let d = &mut self.scratch[..n];
            d.copy_from_slice(slice);
            self.cipher.decrypt_blocks(d);
            out.extend(d[..AES_BLOCK].iter().zip(&self.prev).map(|(a, b)| a ^ b));
            out.extend(
                d[AES_BLOCK..]
                    .iter()
                    .zip(&slice[..n - AES_BLOCK])
                    .map(|(a, b)| a ^ b),
            );
            self.prev.copy_from_slice(&slice[n - AES_BLOCK..]);
        }
    }

    /// Decrypts one block in place.
    pub(super) fn decrypt_block(&mut self, block: &mut [u8; AES_BLOCK]) {
        let ct = *block;
        self.cipher.decrypt_blocks(block);
        super::xor_in_place(block, &self.prev);
        self.prev = ct;
    }
}

/// Length of the message in a decrypted last block, or `DecryptionFailed` if its PKCS#7 padding
/// is wrong. Runs the same instructions whatever the padding bytes are.
pub(super) fn unpad_len(last: &[u8; AES_BLOCK]) -> Result<usize, ContentError> {
    use subtle::{ConstantTimeEq, ConstantTimeGreater};
    let pad = last[AES_BLOCK - 1];
    // 1 <= pad <= 16
    let mut ok = pad.ct_gt(&0) & !pad.ct_gt(&(AES_BLOCK as u8));
    for (i, &b) in last.iter().enumerate() {
        // Byte i is padding iff i >= 16 - pad, i.e. (16 - i) <= pad.
        let in_pad = !((AES_BLOCK - i) as u8).ct_gt(&pad);
        ok &= !in_pad | b.ct_eq(&pad);
    }
    if bool::from(ok) {
        Ok(AES_BLOCK - pad as usize)
    } else {
        Err(ContentError::DecryptionFailed)
    }
}

/// Streaming AES-256-CBC encryption with PKCS#7 padding.
pub struct CbcEncryptor {
    cipher: cbc::Encryptor<aes::Aes256>,
    /// Plaintext not yet forming a whole block (zeroized on drop).
    partial: [u8; AES_BLOCK],
    partial_len: usize,
}

impl CbcEncryptor {
    /// AES-256 key (32 bytes), 16-byte IV.
    pub fn new(key: &[u8], iv: &[u8]) -> Result<Self, ContentError> {
        super::check_key(key, ENCRYPT_KEY_LENS)?;
        check_iv(iv)?;
        Ok(Self {
            cipher: cbc::Encryptor::new_from_slices(key, iv).map_err(|_| bad_key(key))?,
            partial: [0; AES_BLOCK],
            partial_len: 0,
        })
    }

    /// Boxes `self` as a [`ContentEncryptor`].
    pub fn boxed(self) -> Box<dyn ContentEncryptor> {
        Box::new(self)
    }

    fn encrypt_in_place(&mut self, buf: &mut [u8]) {
        let (blocks, _) = Block::slice_as_chunks_mut(buf);
        self.cipher.encrypt_blocks(blocks);
    }
}

impl Drop for CbcEncryptor {
    fn drop(&mut self) {
        self.partial.zeroize();
    }
}

impl ContentEncryptor for CbcEncryptor {
    fn update(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), ContentError> {
        if self.partial_len > 0 {
            let take = (AES_BLOCK - self.partial_len).min(input.len());
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&input[..take]);
            self.partial_len += take;
            input = &input[take..];
            if self.partial_len < AES_BLOCK {
                return Ok(());
            }
            let start = out.len();
            out.extend_from_slice(&self.partial);
            self.encrypt_in_place(&mut out[start..]);
            self.partial_len = 0;
        }
        let whole = input.len() - input.len() % AES_BLOCK;
        let start = out.len();
        out.extend_from_slice(&input[..whole]);
        self.encrypt_in_place(&mut out[start..]);
        let rest = &input[whole..];
        self.partial[..rest.len()].copy_from_slice(rest);
        self.partial_len = rest.len();
        Ok(())
    }

    fn finish(mut self: Box<Self>, out: &mut Vec<u8>) -> Result<(), ContentError> {
        let pad = (AES_BLOCK - self.partial_len) as u8;
        let mut last = self.partial;
        last[self.partial_len..].fill(pad);
        let start = out.len();
        out.extend_from_slice(&last);
        last.zeroize();
        self.encrypt_in_place(&mut out[start..]);
        Ok(())
    }

    fn ciphertext_len(&self, n: u64) -> u64 {
        (n / AES_BLOCK as u64 + 1) * AES_BLOCK as u64
    }
}

/// Streaming AES-CBC decryption with PKCS#7 padding removal.
///
/// [`ContentDecryptor::update`] appends the UNVERIFIED plaintext of every block except the last
/// one seen so far (the last block carries the padding); [`ContentDecryptor::finish`] decrypts
/// that block, checks and strips the padding. A body that is empty or not a multiple of 16 bytes,
/// or bad padding, gives [`ContentError::DecryptionFailed`]. CBC has no integrity: a wrong key or
/// tampered body usually (not always) shows up only as bad padding.
pub struct CbcDecryptor {
    cipher: RawCbcDec,
    /// Ciphertext not yet decrypted: at most one block (partial, or the held-back last block).
    held: [u8; AES_BLOCK],
    held_len: usize,
}

impl CbcDecryptor {
    /// AES-128/192/256 key, 16-byte IV.
    pub fn new(key: &[u8], iv: &[u8]) -> Result<Self, ContentError> {
        Ok(Self {
            cipher: RawCbcDec::new(key, iv)?,
            held: [0; AES_BLOCK],
            held_len: 0,
        })
    }

    /// Boxes `self` as a [`ContentDecryptor`].
    pub fn boxed(self) -> Box<dyn ContentDecryptor> {
        Box::new(self)
    }
}

impl ContentDecryptor for CbcDecryptor {
    fn update(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), ContentError> {
        let total = self.held_len + input.len();
        // Keep back the trailing partial block, or the last whole block if aligned.
        let keep = match total % AES_BLOCK {
            0 => AES_BLOCK.min(total),
            r => r,
        };
        let release = total - keep;
        if release == 0 {
            self.held[self.held_len..total].copy_from_slice(input);
            self.held_len = total;
            return Ok(());
        }
        // release >= 16 >= held_len: all held bytes go, topped up to a block from `input`.
        let mut used = 0;
        if self.held_len > 0 {
            used = AES_BLOCK - self.held_len;
            let mut first = self.held;
            first[self.held_len..].copy_from_slice(&input[..used]);
            self.cipher.decrypt_into(&first, out);
        }
        let released_end = release - self.held_len;
        self.cipher.decrypt_into(&input[used..released_end], out);
        self.held[..keep].copy_from_slice(&input[released_end..]);
        self.held_len = keep;
        Ok(())
    }

    fn finish(mut self: Box<Self>, out: &mut Vec<u8>) -> Result<(), ContentError> {
        if self.held_len != AES_BLOCK {
            return Err(ContentError::DecryptionFailed);
        }
        let mut last = self.held;
        self.cipher.decrypt_block(&mut last);
        let n = unpad_len(&last);
        if let Ok(n) = n {
            out.extend_from_slice(&last[..n]);
        }
        last.zeroize();
        n.map(|_| ())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::gcm::tests::split;
    use super::*;
    use proptest::prelude::*;

    fn oneshot_encrypt(key: &[u8], iv: &[u8], pt: &[u8]) -> Vec<u8> {
        use aes::cipher::block_padding::Pkcs7;
        cbc::Encryptor::<aes::Aes256>::new_from_slices(key, iv)
            .unwrap()
            .encrypt_padded_vec::<Pkcs7>(pt)
    }

    fn encrypt_chunked(key: &[u8], iv: &[u8], pt: &[u8], chunks: &[usize]) -> Vec<u8> {
        let mut enc = CbcEncryptor::new(key, iv).unwrap().boxed();
        let mut out = Vec::new();
        for piece in split(pt, chunks) {
            enc.update(piece, &mut out).unwrap();
        }
        let expected_len = enc.ciphertext_len(pt.len() as u64);
        enc.finish(&mut out).unwrap();
        assert_eq!(out.len() as u64, expected_len);
        out
    }

    pub(crate) fn decrypt_chunked(
        key: &[u8],
        iv: &[u8],
        ct: &[u8],
        chunks: &[usize],
    ) -> Result<Vec<u8>, ContentError> {
        let mut dec = CbcDecryptor::new(key, iv)?.boxed();
        let mut out = Vec::new();
        for piece in split(ct, chunks) {
            dec.update(piece, &mut out)?;
        }
        dec.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn nist_sp800_38a_f_2_5() {
        // NIST SP 800-38A, Appendix F.2.5 (CBC-AES256.Encrypt), first two blocks; the padding block
        // we add is checked against the `cbc` crate instead.
        let key = hex::decode("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
            .unwrap();
        let iv = hex::decode("000102030405060708090a0b0c0d0e0f").unwrap();
        let pt = hex::decode("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
            .unwrap();
        let ct = encrypt_chunked(&key, &iv, &pt, &[5]);
        assert_eq!(
            hex::encode(&ct[..32]),
            "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d"
        );
        assert_eq!(ct, oneshot_encrypt(&key, &iv, &pt));
    }

    #[test]
    fn ciphertext_len() {
        let enc = CbcEncryptor::new(&[0; 32], &[0; 16]).unwrap();
        for (n, c) in [(0, 16), (1, 16), (15, 16), (16, 32), (17, 32), (1000, 1008)] {
            assert_eq!(enc.ciphertext_len(n), c);
        }
    }

    #[test]
    fn bad_lengths_fail() {
        let key = [9; 32];
        let iv = [8; 16];
        let ct = oneshot_encrypt(&key, &iv, &[1; 40]);
        for n in [0, 1, 15, 17, 31, 47] {
            assert_eq!(
                decrypt_chunked(&key, &iv, &ct[..n], &[7]),
                Err(ContentError::DecryptionFailed),
                "{n}"
            );
        }
        assert_eq!(
            CbcDecryptor::new(&key, &[0; 12]).err(),
            Some(ContentError::InvalidLength {
                what: "CBC IV",
                len: 12
            })
        );
    }

    #[test]
    fn bad_padding_fails() {
        let key = [9; 32];
        let iv = [8; 16];
        // Encrypt raw (unpadded) blocks whose last block ends in each possible padding pattern.
        let raw = |last: [u8; 16]| {
            let mut buf = [0x11u8; 32];
            buf[16..].copy_from_slice(&last);
            let mut c = cbc::Encryptor::<aes::Aes256>::new_from_slices(&key, &iv).unwrap();
            let (blocks, _) = Block::slice_as_chunks_mut(&mut buf);
            c.encrypt_blocks(blocks);
            buf
        };
        for bad in [
            [0u8; 16],  // pad 0
            [17u8; 16], // pad 17
            [0xFF; 16], // pad 255
            {
                let mut b = [2u8; 16];
                b[14] = 3; // pad 2, second byte wrong
                b
            },
            {
                let mut b = [16u8; 16];
                b[0] = 15; // pad 16, first byte wrong
                b
            },
        ] {
            assert_eq!(
                decrypt_chunked(&key, &iv, &raw(bad), &[3]),
                Err(ContentError::DecryptionFailed)
            );
        }
        // Valid paddings of every length.
        for p in 1..=16u8 {
            let mut b = [0x33u8; 16];
            b[16 - p as usize..].fill(p);
            let pt = decrypt_chunked(&key, &iv, &raw(b), &[usize::MAX]).unwrap();
            assert_eq!(pt.len(), 32 - p as usize);
        }
    }

    #[test]
    fn aes128_and_192_decrypt() {
        use aes::cipher::block_padding::Pkcs7;
        let pt = b"legacy objects with short keys".to_vec();
        let iv = [4u8; 16];
        let k16 = [1u8; 16];
        let ct = cbc::Encryptor::<aes::Aes128>::new_from_slices(&k16, &iv)
            .unwrap()
            .encrypt_padded_vec::<Pkcs7>(&pt);
        assert_eq!(decrypt_chunked(&k16, &iv, &ct, &[5]).unwrap(), pt);
        let k24 = [1u8; 24];
        let ct = cbc::Encryptor::<aes::Aes192>::new_from_slices(&k24, &iv)
            .unwrap()
            .encrypt_padded_vec::<Pkcs7>(&pt);
        assert_eq!(decrypt_chunked(&k24, &iv, &ct, &[5]).unwrap(), pt);
    }

    fn chunking() -> impl Strategy<Value = Vec<usize>> {
        prop_oneof![
            Just(vec![1]),
            Just(vec![16]),
            Just(vec![15, 17]),
            Just(vec![usize::MAX]),
            proptest::collection::vec(1usize..40_000, 1..8),
            proptest::collection::vec(1usize..40, 1..8),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn streaming_matches_cbc_crate(
            len in prop_oneof![0usize..100, 0usize..70_000],
            seed in any::<u8>(),
            key in any::<[u8; 32]>(),
            iv in any::<[u8; 16]>(),
            enc_chunks in chunking(),
            dec_chunks in chunking(),
        ) {
            let pt: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)).collect();
            let ct = encrypt_chunked(&key, &iv, &pt, &enc_chunks);
            prop_assert_eq!(&ct, &oneshot_encrypt(&key, &iv, &pt));
            prop_assert_eq!(decrypt_chunked(&key, &iv, &ct, &dec_chunks).unwrap(), pt);
        }
    }
}
