//! Streaming AES-GCM (suite 0x0072, `AES/GCM/NoPadding`; also the cipher under suite 0x0073).
//!
//! `aes-gcm` 0.11 is one-shot only, so this is GCM assembled from its parts exactly as
//! NIST SP 800-38D §7 defines it (<https://nvlpubs.nist.gov/nistpubs/Legacy/SP/nistspecialpublication800-38d.pdf>),
//! for a 96-bit IV (the only IV length S3 encryption clients write):
//!
//! ```text
//! H    = E(K, 0^128)                          GHASH key
//! J0   = IV || 00 00 00 01                    E(K, J0) masks the tag
//! C    = P xor CTR32(K, J0 + 1)               the counter is the low 32 bits, big-endian (inc32)
//! S    = GHASH_H(A || 0* || C || 0* || [len(A)]64 || [len(C)]64)
//! T    = S xor E(K, J0)                       body on the wire: C || T
//! ```
//!
//! The streaming state keeps the counter position (`ctr`) and a GHASH accumulator fed in 16-byte
//! blocks, with up to 15 bytes of ciphertext pending between calls. The result is byte-identical to
//! `aes_gcm::Aes256Gcm` (tested below by property and by the McGrew-Viega vectors).
//!
//! Speed: each chunk is processed in 64 KiB slices (CTR then GHASH on the same slice while it is
//! in cache); the keystream and GHASH run on aws-lc's assembly (`content::awslc`, which picks
//! VAES/VPCLMULQDQ, AES-NI/PCLMULQDQ or ARMv8 AES/PMULL at run time), GHASH as in
//! `content::ghash`.

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use super::ghash::Ghasher;
use super::{
    AnyAes, ContentDecryptor, ContentEncryptor, ContentError, DECRYPT_KEY_LENS, ENCRYPT_KEY_LENS,
};
use crate::consts::{GCM_IV_LEN, GCM_MAX_PLAINTEXT, GCM_TAG_LEN};

type Block = aes::Block;

/// Bytes processed per CTR+GHASH step: the slice is still in L2 when GHASH reads it back after
/// the keystream was applied, and large enough that each aws-lc call's fixed cost (a GHASH
/// batch also costs one multiplication) stays small. 8 KiB slices measured slower.
pub(super) const SLICE: usize = 64 * 1024;

/// AES-CTR with GCM's counter: blocks `IV || [c]32`, `c` incremented modulo 2^32 (inc32).
///
/// Whole blocks go to aws-lc's CTR assembly in one call per piece (`content::awslc`); a partial
/// last block's keystream is kept for the next call.
pub(super) struct Ctr {
    cipher: AnyAes,
    iv: [u8; GCM_IV_LEN],
    /// Counter of the next keystream block to generate.
    next: u32,
    /// The unused tail of the last keystream block: `last[16 - unused..]`.
    last: [u8; 16],
    unused: usize,
}

impl Ctr {
    /// A keystream whose first block is `E(K, IV || [first]32)`.
    pub(super) fn new(cipher: &AnyAes, iv: &[u8; GCM_IV_LEN], first: u32) -> Self {
        Self {
            cipher: cipher.clone(),
            iv: *iv,
            next: first,
            last: [0; 16],
            unused: 0,
        }
    }

    /// XORs the next `buf.len()` keystream bytes into `buf`.
    pub(super) fn apply(&mut self, mut buf: &mut [u8]) {
        if self.unused > 0 {
            let n = self.unused.min(buf.len());
            let from = 16 - self.unused;
            for (d, k) in buf[..n].iter_mut().zip(&self.last[from..from + n]) {
                *d ^= k;
            }
            self.unused -= n;
            buf = &mut buf[n..];
        }
        let whole = buf.len() - buf.len() % 16;
        let (blocks, tail) = buf.split_at_mut(whole);
        self.cipher.lc.ctr32(&self.iv, self.next, blocks);
        // GCM's inc32: the block count wraps with the counter.
        self.next = self.next.wrapping_add((whole / 16) as u32);
        if !tail.is_empty() {
            self.last = [0; 16];
            self.cipher.lc.ctr32(&self.iv, self.next, &mut self.last);
            self.next = self.next.wrapping_add(1);
            for (d, k) in tail.iter_mut().zip(&self.last) {
                *d ^= k;
            }
            self.unused = 16 - tail.len();
        }
    }

    /// Appends `input` XOR the next `input.len()` keystream bytes to `out`.
    pub(super) fn apply_into(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(input);
        self.apply(&mut out[start..]);
    }
}

impl Drop for Ctr {
    fn drop(&mut self) {
        self.last.zeroize();
    }
}

pub(super) fn check_iv(iv: &[u8]) -> Result<[u8; GCM_IV_LEN], ContentError> {
    iv.try_into().map_err(|_| ContentError::InvalidLength {
        what: "GCM IV",
        len: iv.len(),
    })
}

/// `IV || [n]32` big-endian.
pub(super) fn counter_block(iv: &[u8; GCM_IV_LEN], n: u32) -> Block {
    let mut b = Block::default();
    b[..GCM_IV_LEN].copy_from_slice(iv);
    b[GCM_IV_LEN..].copy_from_slice(&n.to_be_bytes());
    b
}

/// Everything GCM derives from (K, IV): the body keystream, the GHASH key and the tag mask.
struct GcmKeys {
    ctr: Ctr,
    hasher: Ghasher,
    /// E(K, J0); XORed onto the GHASH output to form the tag.
    mask: [u8; 16],
}

impl GcmKeys {
    fn new(key: &[u8], iv: &[u8], aad: &[u8], key_lens: &[usize]) -> Result<Self, ContentError> {
        let iv = check_iv(iv)?;
        let cipher = AnyAes::new(key, key_lens)?;
        let mut h = Block::default();
        cipher.encrypt_block(&mut h);
        let mut j0 = counter_block(&iv, 1);
        cipher.encrypt_block(&mut j0);
        let mut mask = [0u8; 16];
        mask.copy_from_slice(&j0);
        j0.zeroize();
        let mut hb = [0u8; 16];
        hb.copy_from_slice(&h);
        let hasher = Ghasher::new(cipher.lc.clone(), &hb, aad);
        hb.zeroize();
        h.zeroize();
        let ctr = Ctr::new(&cipher, &iv, 2);
        Ok(Self { ctr, hasher, mask })
    }

    fn tag(&self) -> [u8; 16] {
        self.hasher.tag(&self.mask)
    }
}

impl Drop for GcmKeys {
    fn drop(&mut self) {
        self.mask.zeroize();
    }
}

/// Streaming AES-256-GCM encryption. Output: `ciphertext || tag(16)`.
pub struct GcmEncryptor {
    keys: GcmKeys,
    /// Plaintext bytes encrypted so far, against the GCM limit.
    len: u64,
}

impl GcmEncryptor {
    /// AES-256 key (32 bytes), 12-byte IV, any AAD (S3 content: empty; suite 0x0073: `00 73`).
    pub fn new(key: &[u8], iv: &[u8], aad: &[u8]) -> Result<Self, ContentError> {
        Ok(Self {
            keys: GcmKeys::new(key, iv, aad, ENCRYPT_KEY_LENS)?,
            len: 0,
        })
    }

    /// Boxes `self` as a [`ContentEncryptor`].
    pub fn boxed(self) -> Box<dyn ContentEncryptor> {
        Box::new(self)
    }

    /// Encrypts `input` and appends the ciphertext to `out`.
    pub fn encrypt(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), ContentError> {
        self.len = add_checked(self.len, input.len())?;
        out.reserve(input.len());
        // Encrypt into `out` and hash one L1-sized slice at a time, so each byte is loaded from
        // memory once instead of once per pass.
        for slice in input.chunks(SLICE) {
            let start = out.len();
            self.keys.ctr.apply_into(slice, out);
            self.keys.hasher.update(&out[start..]);
        }
        Ok(())
    }

    /// Ends the stream and returns the 16-byte tag (to append, or to store detached).
    pub fn finish_tag(self) -> [u8; GCM_TAG_LEN] {
        self.keys.tag()
    }
}

impl ContentEncryptor for GcmEncryptor {
    fn update(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), ContentError> {
        self.encrypt(input, out)
    }

    fn finish(self: Box<Self>, out: &mut Vec<u8>) -> Result<(), ContentError> {
        out.extend_from_slice(&self.finish_tag());
        Ok(())
    }

    fn ciphertext_len(&self, n: u64) -> u64 {
        n + GCM_TAG_LEN as u64
    }
}

/// `len + n`, or [`ContentError::TooLarge`] past the GCM limit.
fn add_checked(len: u64, n: usize) -> Result<u64, ContentError> {
    match len.checked_add(n as u64) {
        Some(total) if total <= GCM_MAX_PLAINTEXT => Ok(total),
        _ => Err(ContentError::TooLarge),
    }
}

/// Holds back the last 16 bytes of a stream (they may be the tag) and releases the rest.
struct TagHoldback {
    held: [u8; GCM_TAG_LEN],
    held_len: usize,
}

impl TagHoldback {
    fn new() -> Self {
        Self {
            held: [0; GCM_TAG_LEN],
            held_len: 0,
        }
    }

    /// Feeds `input`; calls `release` (at most twice, in stream order) with the bytes that are now
    /// certainly ciphertext, and returns how many that was.
    fn feed(&mut self, input: &[u8], mut release: impl FnMut(&[u8])) -> usize {
        let total = self.held_len + input.len();
        if total <= GCM_TAG_LEN {
            self.held[self.held_len..total].copy_from_slice(input);
            self.held_len = total;
            return 0;
        }
        let n = total - GCM_TAG_LEN;
        let from_held = n.min(self.held_len);
        let from_input = n - from_held;
        if from_held > 0 {
            release(&self.held[..from_held]);
        }
        if from_input > 0 {
            release(&input[..from_input]);
        }
        let kept = self.held_len - from_held;
        self.held.copy_within(from_held..self.held_len, 0);
        self.held[kept..].copy_from_slice(&input[from_input..]);
        self.held_len = GCM_TAG_LEN;
        n
    }

    /// The tag, if the stream was at least 16 bytes long.
    fn tag(&self) -> Option<&[u8; GCM_TAG_LEN]> {
        (self.held_len == GCM_TAG_LEN).then_some(&self.held)
    }
}

/// Streaming AES-GCM decryption of `ciphertext || tag`.
///
/// [`ContentDecryptor::update`] appends UNVERIFIED plaintext (all but the last 16 bytes seen so
/// far); [`ContentDecryptor::finish`] compares the tag in constant time and fails with
/// [`ContentError::DecryptionFailed`] on any mismatch or a body shorter than 16 bytes.
pub struct GcmDecryptor {
    keys: GcmKeys,
    tail: TagHoldback,
    len: u64,
}

impl GcmDecryptor {
    /// AES-128/192/256 key, 12-byte IV, the AAD used at encryption.
    pub fn new(key: &[u8], iv: &[u8], aad: &[u8]) -> Result<Self, ContentError> {
        Ok(Self {
            keys: GcmKeys::new(key, iv, aad, DECRYPT_KEY_LENS)?,
            tail: TagHoldback::new(),
            len: 0,
        })
    }

    /// Boxes `self` as a [`ContentDecryptor`].
    pub fn boxed(self) -> Box<dyn ContentDecryptor> {
        Box::new(self)
    }

    fn verify(&self) -> Result<(), ContentError> {
        let tag = self.tail.tag().ok_or(ContentError::DecryptionFailed)?;
        if bool::from(self.keys.tag().ct_eq(tag)) {
            Ok(())
        } else {
            Err(ContentError::DecryptionFailed)
        }
    }
}

impl ContentDecryptor for GcmDecryptor {
    fn update(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), ContentError> {
        let releasing = (self.tail.held_len + input.len()).saturating_sub(GCM_TAG_LEN);
        self.len = add_checked(self.len, releasing)?;
        out.reserve(releasing);
        let keys = &mut self.keys;
        // Same slice-at-a-time shape as encryption: hash the ciphertext, then decrypt it into `out`.
        self.tail.feed(input, |ct| {
            for slice in ct.chunks(SLICE) {
                keys.hasher.update(slice);
                keys.ctr.apply_into(slice, out);
            }
        });
        Ok(())
    }

    fn finish(self: Box<Self>, _out: &mut Vec<u8>) -> Result<(), ContentError> {
        self.verify()
    }
}

/// Authenticates a GCM body (`ciphertext || tag`) without decrypting it: GHASH only, no keystream
/// and no plaintext. Use it for a first pass when no byte may be released before the tag checks
/// out, then decrypt in a second pass with [`GcmDecryptor`].
pub struct GcmTagVerifier {
    keys: GcmKeys,
    tail: TagHoldback,
    len: u64,
}

impl GcmTagVerifier {
    /// Same arguments as [`GcmDecryptor::new`].
    pub fn new(key: &[u8], iv: &[u8], aad: &[u8]) -> Result<Self, ContentError> {
        Ok(Self {
            keys: GcmKeys::new(key, iv, aad, DECRYPT_KEY_LENS)?,
            tail: TagHoldback::new(),
            len: 0,
        })
    }

    /// Feeds the next bytes of the body (tag included, at the end), in chunks of any size.
    pub fn update(&mut self, input: &[u8]) -> Result<(), ContentError> {
        let hasher = &mut self.keys.hasher;
        let n = self.tail.feed(input, |ct| hasher.update(ct));
        self.len = add_checked(self.len, n)?;
        Ok(())
    }

    /// `Ok(())` if the last 16 bytes fed are the right tag for everything before them.
    pub fn finish(self) -> Result<(), ContentError> {
        let tag = self.tail.tag().ok_or(ContentError::DecryptionFailed)?;
        if bool::from(self.keys.tag().ct_eq(tag)) {
            Ok(())
        } else {
            Err(ContentError::DecryptionFailed)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use aes_gcm::aead::{Aead, KeyInit as _, Payload};
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn encrypt_chunked(key: &[u8], iv: &[u8], aad: &[u8], pt: &[u8], chunks: &[usize]) -> Vec<u8> {
        let mut enc = GcmEncryptor::new(key, iv, aad).unwrap().boxed();
        let mut out = Vec::new();
        for piece in split(pt, chunks) {
            enc.update(piece, &mut out).unwrap();
        }
        enc.finish(&mut out).unwrap();
        out
    }

    fn decrypt_chunked(
        key: &[u8],
        iv: &[u8],
        aad: &[u8],
        ct: &[u8],
        chunks: &[usize],
    ) -> Result<Vec<u8>, ContentError> {
        let mut dec = GcmDecryptor::new(key, iv, aad)?.boxed();
        let mut out = Vec::new();
        for piece in split(ct, chunks) {
            dec.update(piece, &mut out)?;
        }
        dec.finish(&mut out)?;
        Ok(out)
    }

    fn verify_chunked(
        key: &[u8],
        iv: &[u8],
        aad: &[u8],
        ct: &[u8],
        chunks: &[usize],
    ) -> Result<(), ContentError> {
        let mut v = GcmTagVerifier::new(key, iv, aad)?;
        for piece in split(ct, chunks) {
            v.update(piece)?;
        }
        v.finish()
    }

    /// Cuts `data` into pieces of the given sizes (cycled), the last piece taking the rest.
    pub(crate) fn split<'a>(mut data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut i = 0;
        while !data.is_empty() {
            let n = sizes
                .get(i % sizes.len().max(1))
                .copied()
                .unwrap_or(data.len())
                .min(data.len());
            let (a, b) = data.split_at(n);
            out.push(a);
            data = b;
            i += 1;
        }
        out.push(&[][..]); // an empty update must be harmless
        out
    }

    fn oneshot(key: &[u8], iv: &[u8], aad: &[u8], pt: &[u8]) -> Vec<u8> {
        let c = aes_gcm::Aes256Gcm::new_from_slice(key).unwrap();
        c.encrypt(iv.try_into().unwrap(), Payload { msg: pt, aad })
            .unwrap()
    }

    /// McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)" (the NIST submission),
    /// Appendix B, test cases 13-16: AES-256 with 96-bit IVs. Copied from the same table in nettle's
    /// `testsuite/gcm-test.c`. Columns: key, IV, AAD, plaintext, ciphertext, tag.
    const MCGREW_VIEGA_256: &[(&str, &str, &str, &str, &str, &str)] = &[
        // Test case 13
        (
            "0000000000000000000000000000000000000000000000000000000000000000",
            "000000000000000000000000",
            "",
            "",
            "",
            "530f8afbc74536b9a963b4f1c4cb738b",
        ),
        // Test case 14
        (
            "0000000000000000000000000000000000000000000000000000000000000000",
            "000000000000000000000000",
            "",
            "00000000000000000000000000000000",
            "cea7403d4d606b6e074ec5d3baf39d18",
            "d0d1c8a799996bf0265b98b5d48ab919",
        ),
        // Test case 15
        (
            "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            "cafebabefacedbaddecaf888",
            "",
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
            "b094dac5d93471bdec1a502270e3cc6c",
        ),
        // Test case 16
        (
            "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            "cafebabefacedbaddecaf888",
            "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            "76fc6ece0f4e1768cddf8853bb2d551b",
        ),
    ];

    #[test]
    fn mcgrew_viega_known_answers() {
        for (i, &(k, iv, aad, pt, ct, tag)) in MCGREW_VIEGA_256.iter().enumerate() {
            let (k, iv, aad, pt) = (hex(k), hex(iv), hex(aad), hex(pt));
            let mut body = hex(ct);
            body.extend(hex(tag));
            for chunks in [&[usize::MAX][..], &[1], &[7, 16, 3], &[17]] {
                assert_eq!(
                    encrypt_chunked(&k, &iv, &aad, &pt, chunks),
                    body,
                    "encrypt case {}",
                    13 + i
                );
                assert_eq!(
                    decrypt_chunked(&k, &iv, &aad, &body, chunks).unwrap(),
                    pt,
                    "decrypt case {}",
                    13 + i
                );
                verify_chunked(&k, &iv, &aad, &body, chunks).unwrap();
            }
            assert_eq!(
                oneshot(&k, &iv, &aad, &pt),
                body,
                "aes-gcm agrees on case {}",
                13 + i
            );
        }
    }

    #[test]
    fn every_bit_flip_fails() {
        let key = [0x42; 32];
        let iv = [0x24; 12];
        let pt: Vec<u8> = (0..37u8).collect();
        let body = encrypt_chunked(&key, &iv, b"", &pt, &[usize::MAX]);
        for byte in 0..body.len() {
            for bit in 0..8 {
                let mut bad = body.clone();
                bad[byte] ^= 1 << bit;
                assert_eq!(
                    decrypt_chunked(&key, &iv, b"", &bad, &[5]),
                    Err(ContentError::DecryptionFailed)
                );
                assert_eq!(
                    verify_chunked(&key, &iv, b"", &bad, &[5]),
                    Err(ContentError::DecryptionFailed)
                );
            }
        }
        // Wrong AAD, IV or key.
        assert!(decrypt_chunked(&key, &iv, b"x", &body, &[5]).is_err());
        assert!(decrypt_chunked(&key, &[0x25; 12], b"", &body, &[5]).is_err());
        assert!(decrypt_chunked(&[0x43; 32], &iv, b"", &body, &[5]).is_err());
    }

    #[test]
    fn truncated_bodies_fail() {
        let key = [1; 32];
        let iv = [2; 12];
        let body = encrypt_chunked(&key, &iv, b"", b"", &[1]);
        assert_eq!(body.len(), 16);
        for n in 0..16 {
            assert_eq!(
                decrypt_chunked(&key, &iv, b"", &body[..n], &[1]),
                Err(ContentError::DecryptionFailed)
            );
            assert_eq!(
                verify_chunked(&key, &iv, b"", &body[..n], &[3]),
                Err(ContentError::DecryptionFailed)
            );
        }
        let body = encrypt_chunked(&key, &iv, b"", &[9; 100], &[usize::MAX]);
        for n in [0, 1, 15, 16, 17, 50, 115] {
            assert!(decrypt_chunked(&key, &iv, b"", &body[..n], &[usize::MAX]).is_err());
        }
    }

    #[test]
    fn aes128_and_192_decrypt() {
        for len in [16, 24] {
            let key = vec![5u8; len];
            let iv = [6u8; 12];
            let pt = b"shorter keys still decrypt".to_vec();
            let body = match len {
                16 => aes_gcm::Aes128Gcm::new_from_slice(&key)
                    .unwrap()
                    .encrypt(&iv.into(), &pt[..])
                    .unwrap(),
                _ => {
                    aes_gcm::AesGcm::<aes::Aes192, aes_gcm::aead::consts::U12>::new_from_slice(&key)
                        .unwrap()
                        .encrypt(&iv.into(), &pt[..])
                        .unwrap()
                }
            };
            assert_eq!(decrypt_chunked(&key, &iv, b"", &body, &[3]).unwrap(), pt);
        }
    }

    #[test]
    fn bad_iv_lengths() {
        for len in [0, 8, 11, 13, 16] {
            let err = Some(ContentError::InvalidLength {
                what: "GCM IV",
                len,
            });
            assert_eq!(GcmEncryptor::new(&[0; 32], &vec![0; len], b"").err(), err);
            assert_eq!(GcmDecryptor::new(&[0; 32], &vec![0; len], b"").err(), err);
        }
    }

    #[test]
    fn limit_is_enforced() {
        assert_eq!(add_checked(GCM_MAX_PLAINTEXT - 1, 1), Ok(GCM_MAX_PLAINTEXT));
        assert_eq!(
            add_checked(GCM_MAX_PLAINTEXT, 1),
            Err(ContentError::TooLarge)
        );
        assert_eq!(add_checked(u64::MAX, 1), Err(ContentError::TooLarge));
        let mut enc = GcmEncryptor::new(&[0; 32], &[0; 12], b"").unwrap();
        enc.len = GCM_MAX_PLAINTEXT - 2;
        let mut out = Vec::new();
        assert_eq!(enc.encrypt(&[0; 3], &mut out), Err(ContentError::TooLarge));
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

        /// The hand-rolled CTR equals `ctr::Ctr32BE` (same counter layout, inc32 wrap) for any
        /// chunking, starting counter and key size.
        #[test]
        fn ctr_matches_ctr_crate(
            len in 0usize..20_000,
            first in prop_oneof![Just(u32::MAX - 3), any::<u32>()],
            key_len in prop::sample::select(vec![16usize, 24, 32]),
            chunks in chunking(),
        ) {
            use aes::cipher::{KeyIvInit, StreamCipher};
            let key = vec![0x5a; key_len];
            let iv = [0x3c; 12];
            let mut want = vec![0u8; len];
            let block = counter_block(&iv, first);
            match key_len {
                16 => ctr::Ctr32BE::<aes::Aes128>::new(key[..].try_into().unwrap(), &block).apply_keystream(&mut want),
                24 => ctr::Ctr32BE::<aes::Aes192>::new(key[..].try_into().unwrap(), &block).apply_keystream(&mut want),
                _ => ctr::Ctr32BE::<aes::Aes256>::new(key[..].try_into().unwrap(), &block).apply_keystream(&mut want),
            }
            let mut got = vec![0u8; len];
            let mut ctr = Ctr::new(&AnyAes::new(&key, DECRYPT_KEY_LENS).unwrap(), &iv, first);
            let mut rest = &mut got[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = chunks[i % chunks.len()].min(rest.len());
                let (a, b) = rest.split_at_mut(n);
                ctr.apply(a);
                rest = b;
                i += 1;
            }
            prop_assert_eq!(got, want);
        }

        #[test]
        fn streaming_matches_aes_gcm(
            len in prop_oneof![0usize..100, 0usize..70_000],
            seed in any::<u8>(),
            key in any::<[u8; 32]>(),
            iv in any::<[u8; 12]>(),
            aad in proptest::collection::vec(any::<u8>(), 0..40),
            enc_chunks in chunking(),
            dec_chunks in chunking(),
        ) {
            let pt: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
            let expected = oneshot(&key, &iv, &aad, &pt);
            let body = encrypt_chunked(&key, &iv, &aad, &pt, &enc_chunks);
            prop_assert_eq!(&body, &expected);
            prop_assert_eq!(decrypt_chunked(&key, &iv, &aad, &body, &dec_chunks).unwrap(), pt);
            prop_assert!(verify_chunked(&key, &iv, &aad, &body, &dec_chunks).is_ok());
        }

        #[test]
        fn random_tamper_fails(
            len in 0usize..3000,
            pos in any::<prop::sample::Index>(),
            bit in 0u8..8,
            dec_chunks in chunking(),
        ) {
            let pt = vec![0xA5; len];
            let mut body = encrypt_chunked(&[3; 32], &[4; 12], b"", &pt, &[usize::MAX]);
            let i = pos.index(body.len());
            body[i] ^= 1 << bit;
            prop_assert_eq!(decrypt_chunked(&[3; 32], &[4; 12], b"", &body, &dec_chunks), Err(ContentError::DecryptionFailed));
        }
    }
}
