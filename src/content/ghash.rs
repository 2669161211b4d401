//! GHASH (NIST SP 800-38D §6.4) for GCM and GCM in parts: the bulk on aws-lc's assembly
//! ([`super::awslc`]), the few single multiplications in GF(2^128) on `polyval`.
//!
//! GHASH is Horner's rule, `Y_i = (Y_(i-1) xor X_i) * H`. aws-lc gives, for a batch `D` of `n`
//! whole blocks hashed from zero, `G = (Y_D xor L_n) * H` with `L_n = [128 n]64 || [0]64`. Going
//! back from `G` to `Y_D` needs `H^-1`, so [`Ghasher`] keeps its state times H instead:
//!
//! ```text
//! Z     = Y * H                                   state after the blocks so far (0 at first)
//! Z'    = Z * H^n xor (G xor L_n * H)             after a batch D of n blocks
//! S     = Z xor [len(A)]64 || [len(C)]64 * H      GHASH of A || 0* || C || 0* || lengths
//! ```
//!
//! A full batch costs one aws-lc call and one multiplication by a cached `H^n`. [`super::parts`]
//! combines the parts' `Z` values with the same rule.

use std::sync::Arc;

use polyval::Polyval;
use polyval::universal_hash::UniversalHash;
use zeroize::{Zeroize, Zeroizing};

use super::awslc::LcAes;

/// One GF(2^128) multiplication at a time through POLYVAL (RFC 8452 Appendix A):
/// `GHASH_H(X) = rev(POLYVAL_{mulX(rev(H))}(rev(X)))`, `rev` reversing a block's 16 bytes.
struct PolyMul {
    poly: Polyval,
}

impl PolyMul {
    /// Keyed with `h`.
    fn new(h: &[u8; 16]) -> Self {
        // rev(H) read little-endian is H read big-endian; then mulX_POLYVAL, in constant time.
        let mut v = u128::from_be_bytes(*h);
        let hi = v >> 127;
        v = (v << 1) ^ (hi | (hi << 127) | (hi << 126) | (hi << 121));
        let mut key = polyval::Key::from(v.to_le_bytes());
        let poly = Polyval::new(&key);
        v.zeroize();
        key.zeroize();
        Self { poly }
    }

    /// `x * h`.
    fn mul(mut self, x: &[u8; 16]) -> [u8; 16] {
        let mut rev = polyval::Block::from(u128::from_be_bytes(*x).to_le_bytes());
        self.poly.update(std::slice::from_ref(&rev));
        rev.zeroize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&self.poly.finalize());
        out.reverse();
        out
    }
}

/// `a * b` in GHASH's field.
pub(super) fn gf_mul(a: &[u8; 16], b: &[u8; 16]) -> [u8; 16] {
    PolyMul::new(a).mul(b)
}

pub(super) fn xor(a: &[u8; 16], b: &[u8; 16]) -> [u8; 16] {
    (u128::from_ne_bytes(*a) ^ u128::from_ne_bytes(*b)).to_ne_bytes()
}

/// GCM's last GHASH block: `[len(A)]64 || [len(C)]64`, in bits.
pub(super) fn length_block(aad_len: u64, ct_len: u64) -> [u8; 16] {
    let mut lengths = [0u8; 16];
    lengths[..8].copy_from_slice(&(aad_len * 8).to_be_bytes());
    lengths[8..].copy_from_slice(&(ct_len * 8).to_be_bytes());
    lengths
}

/// `H^n` by square-and-multiply, remembering the last two `n` asked (a stream's batches are
/// nearly all one size, with a shorter one at the end of each chunk).
pub(super) struct PowerCache {
    /// `H^(2^i)` for i = 0..64, filled as needed.
    squares: Vec<Zeroizing<[u8; 16]>>,
    recent: [Option<(u64, Zeroizing<[u8; 16]>)>; 2],
}

impl PowerCache {
    pub(super) fn new(h: &[u8; 16]) -> Self {
        Self {
            squares: vec![Zeroizing::new(*h)],
            recent: [None, None],
        }
    }

    pub(super) fn get(&mut self, n: u64) -> [u8; 16] {
        for (m, v) in self.recent.iter().flatten() {
            if *m == n {
                return **v;
            }
        }
        // H^0 = 1, which in GHASH's bit order is the block 80 00 .. 00.
        let mut one = [0u8; 16];
        one[0] = 0x80;
        let mut r = Zeroizing::new(one);
        let mut bits = n;
        let mut i = 0;
        while bits != 0 {
            while self.squares.len() <= i {
                let prev = **self.squares.last().unwrap_or(&Zeroizing::new(one));
                self.squares.push(Zeroizing::new(gf_mul(&prev, &prev)));
            }
            if bits & 1 == 1 {
                *r = gf_mul(&r, &self.squares[i]);
            }
            bits >>= 1;
            i += 1;
        }
        self.recent.swap(0, 1);
        self.recent[0] = Some((n, r.clone()));
        *r
    }
}

/// GHASH over `A || 0* || C || 0*` fed in arbitrary pieces of C, kept as `Z = Y * H` (module doc).
pub(super) struct Ghasher {
    lc: Arc<LcAes>,
    h: Zeroizing<[u8; 16]>,
    /// `Y * H`; meaningful once `started`.
    z: [u8; 16],
    /// Whether any block was absorbed: the first batch needs no multiplication.
    started: bool,
    powers: PowerCache,
    /// `(n, L_n * H)` for the last batch size (H can be computed from it: wiped like H).
    len_h: Option<(usize, Zeroizing<[u8; 16]>)>,
    /// Ciphertext bytes not yet forming a whole block.
    partial: [u8; 16],
    partial_len: usize,
    aad_len: u64,
    ct_len: u64,
}

impl Drop for Ghasher {
    fn drop(&mut self) {
        self.z.zeroize();
    }
}

impl Ghasher {
    /// GHASH keyed with `h` (`E(K, 0^128)` for `lc`'s key), the AAD absorbed.
    pub(super) fn new(lc: Arc<LcAes>, h: &[u8; 16], aad: &[u8]) -> Self {
        let mut g = Self {
            lc,
            h: Zeroizing::new(*h),
            z: [0; 16],
            started: false,
            powers: PowerCache::new(h),
            len_h: None,
            partial: [0; 16],
            partial_len: 0,
            aad_len: aad.len() as u64,
            ct_len: 0,
        };
        let whole = aad.len() - aad.len() % 16;
        g.absorb(&aad[..whole]);
        if whole < aad.len() {
            let mut last = [0u8; 16];
            last[..aad.len() - whole].copy_from_slice(&aad[whole..]);
            g.absorb(&last);
        }
        g
    }

    /// `L_n * H` for a batch of `n` blocks.
    fn len_times_h(&self, n: usize) -> [u8; 16] {
        gf_mul(&length_block(n as u64 * 16, 0), &self.h)
    }

    /// Absorbs whole blocks (a multiple of 16 bytes).
    fn absorb(&mut self, blocks: &[u8]) {
        if blocks.is_empty() {
            return;
        }
        let n = blocks.len() / 16;
        let lh = match &self.len_h {
            Some((m, v)) if *m == n => v.clone(),
            _ => {
                let v = Zeroizing::new(self.len_times_h(n));
                self.len_h = Some((n, v.clone()));
                v
            }
        };
        let masked = Zeroizing::new(self.lc.ghash_with_len(blocks));
        let mut zd = xor(&masked, &lh);
        self.z = if self.started {
            let hn = Zeroizing::new(self.powers.get(n as u64));
            xor(&gf_mul(&self.z, &hn), &zd)
        } else {
            zd
        };
        self.started = true;
        zd.zeroize();
    }

    pub(super) fn update(&mut self, mut data: &[u8]) {
        self.ct_len += data.len() as u64;
        if self.partial_len > 0 {
            let take = (16 - self.partial_len).min(data.len());
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&data[..take]);
            self.partial_len += take;
            data = &data[take..];
            if self.partial_len < 16 {
                return;
            }
            let block = self.partial;
            self.absorb(&block);
            self.partial_len = 0;
        }
        let whole = data.len() - data.len() % 16;
        self.absorb(&data[..whole]);
        let tail = &data[whole..];
        self.partial[..tail.len()].copy_from_slice(tail);
        self.partial_len = tail.len();
    }

    /// Ciphertext bytes absorbed so far.
    pub(super) fn ct_len(&self) -> u64 {
        self.ct_len
    }

    /// `Z = Y * H` of the AAD and the ciphertext so far, the last block zero-padded, without the
    /// length block: the state [`super::parts`] combines.
    pub(super) fn sum(&self) -> [u8; 16] {
        if self.partial_len == 0 {
            return if self.started { self.z } else { [0; 16] };
        }
        let mut last = [0u8; 16];
        last[..self.partial_len].copy_from_slice(&self.partial[..self.partial_len]);
        // One block: H^1 = H.
        let masked = Zeroizing::new(self.lc.ghash_with_len(&last));
        let mut zd = xor(&masked, &Zeroizing::new(self.len_times_h(1)));
        let z = if self.started {
            xor(&gf_mul(&self.z, &self.h), &zd)
        } else {
            zd
        };
        zd.zeroize();
        last.zeroize();
        z
    }

    /// `GHASH(A || 0* || C || 0* || lengths) xor mask`.
    pub(super) fn tag(&self, mask: &[u8; 16]) -> [u8; 16] {
        let mut z = self.sum();
        let lengths = Zeroizing::new(gf_mul(&length_block(self.aad_len, self.ct_len), &self.h));
        let mut s = xor(&z, &lengths);
        z.zeroize();
        let tag = xor(&s, mask);
        s.zeroize();
        tag
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `gf_mul` is GHASH's multiplication: H^a * H^b = H^(a+b), and 1 is neutral.
    #[test]
    fn powers_compose() {
        let h = [0x66u8; 16];
        let mut c = PowerCache::new(&h);
        let (a, b) = (c.get(5), c.get(7));
        assert_eq!(gf_mul(&a, &b), c.get(12));
        assert_eq!(c.get(1), h);
        let mut one = [0u8; 16];
        one[0] = 0x80;
        assert_eq!(c.get(0), one);
        assert_eq!(gf_mul(&one, &h), h);
        // A third size evicts the older of the two remembered, and still answers right.
        let c5 = c.get(5);
        assert_eq!(c.get(3), gf_mul(&c.get(1), &c.get(2)));
        assert_eq!(c.get(5), c5);
    }
}
