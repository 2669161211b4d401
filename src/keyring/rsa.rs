//! Raw RSA key pairs: V1 PKCS#1 v1.5, `RSA-OAEP-SHA1` and the legacy
//! `RSA/ECB/OAEPWithSHA-256AndMGF1Padding` wraps.
//!
//! Sources: JAVA `materials/RsaKeyring.java` (`len || CEK || cek-alg` layout), J1
//! `internal/crypto/keywrap/RsaOaepKeyWrapper.java`, FORMATS.md §3. PKCS#1 v1.5 decryption uses
//! rsa 0.10's implicit rejection (the Marvin-attack fix): a wrong key yields a synthetic plaintext,
//! never an error, so the caller authenticates the result through the content.

use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{BoxedUint, Oaep, Pkcs1v15Encrypt, PrivateKey, PublicKey};
use sha1::Sha1;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq, ConstantTimeGreater};
use zeroize::Zeroizing;

use super::KeyringError;
use crate::secret::SecretBytes;

/// An RSA key: a private key (decrypts and encrypts) or only a public key (encrypts).
pub struct RsaMasterKey {
    private: Option<PrivateKey>,
    public: PublicKey,
}

impl RsaMasterKey {
    /// Parses a PEM file: PKCS#8 or PKCS#1, private or public.
    pub fn from_pem(pem: &str) -> Result<Self, KeyringError> {
        if let Ok(k) = PrivateKey::from_pkcs8_pem(pem).or_else(|_| PrivateKey::from_pkcs1_pem(pem))
        {
            return Ok(Self::from_private(k));
        }
        if let Ok(k) =
            PublicKey::from_public_key_pem(pem).or_else(|_| PublicKey::from_pkcs1_pem(pem))
        {
            return Ok(Self {
                private: None,
                public: k,
            });
        }
        Err(KeyringError::BadKey(
            "not an RSA key in PEM (PKCS#8 or PKCS#1, private or public)".into(),
        ))
    }

    pub fn from_private(key: PrivateKey) -> Self {
        let public = key.to_public_key();
        Self {
            private: Some(key),
            public,
        }
    }

    pub fn can_decrypt(&self) -> bool {
        self.private.is_some()
    }

    /// V1: RSAES-PKCS1-v1_5(CEK), decoded strictly: `00 02 PS(>= 8 non-zero) 00 CEK` with a
    /// 16/24/32-byte CEK, checked in constant time over the whole encoded message.
    ///
    /// Why not rsa's own `Pkcs1v15Encrypt`: its implicit rejection (the Marvin fix) turns a wrong
    /// key into a pseudo-random "key" of plausible length about 1 time in 80, and unauthenticated
    /// CBC then accepts the garbage 1 time in 256: `rekey` could replace an object with garbage.
    /// Here the RSA operation is still rsa 0.10's constant-time, blinded, fault-checked one; the
    /// padding verdict is computed without branches, and the caller turns a failure into the
    /// same opaque error as a tag or padding failure of the content (no padding oracle).
    pub fn unwrap_pkcs1(&self, edk: &[u8]) -> Option<SecretBytes> {
        let key = self.private.as_ref()?;
        let k = key.size();
        if edk.len() != k || k < 11 + 32 {
            return None;
        }
        let c = BoxedUint::from_be_slice(edk, key.n_bits_precision()).ok()?;
        let m = Zeroizing::new(
            rsa::hazmat::rsa_decrypt_and_check(key, Some(&mut getrandom::SysRng), &c).ok()?,
        );
        let raw = Zeroizing::new(m.to_be_bytes());
        let mut em = Zeroizing::new(vec![0u8; k]);
        let n = raw.len().min(k);
        em[k - n..].copy_from_slice(&raw[raw.len() - n..]);
        let (valid, start) = pkcs1_v15_decode(&em);
        // Branching on the verdict happens once, after the constant-time decode.
        bool::from(valid).then(|| SecretBytes::from_slice(&em[start..]))
    }

    pub fn wrap_pkcs1(&self, cek: &SecretBytes) -> Result<Vec<u8>, KeyringError> {
        self.public
            .encrypt(&mut getrandom::SysRng, Pkcs1v15Encrypt, cek.expose())
            .map_err(|e| KeyringError::BadKey(format!("RSA encrypt: {e}")))
    }

    /// `RSA-OAEP-SHA1`: OAEP(SHA-1, MGF1-SHA-1) over `len(1) || CEK || UTF-8 cek-alg`. The length
    /// byte and the algorithm suffix are checked; the suffix in constant time.
    pub fn unwrap_oaep_sha1(&self, edk: &[u8], cek_alg: &str) -> Option<SecretBytes> {
        let pt = SecretBytes::new(
            self.private
                .as_ref()?
                .decrypt(Oaep::<Sha1>::new(), edk)
                .ok()?,
        );
        let bytes = pt.expose();
        let (&len, rest) = bytes.split_first()?;
        let len = usize::from(len);
        if !matches!(len, 16 | 24 | 32) || rest.len() != len + cek_alg.len() {
            return None;
        }
        let (key, alg) = rest.split_at(len);
        bool::from(alg.ct_eq(cek_alg.as_bytes())).then(|| SecretBytes::from_slice(key))
    }

    pub fn wrap_oaep_sha1(
        &self,
        cek: &SecretBytes,
        cek_alg: &str,
    ) -> Result<Vec<u8>, KeyringError> {
        let len = u8::try_from(cek.len())
            .map_err(|_| KeyringError::BadKey("content key length".into()))?;
        let mut buf = Vec::with_capacity(1 + cek.len() + cek_alg.len());
        buf.push(len);
        buf.extend_from_slice(cek.expose());
        buf.extend_from_slice(cek_alg.as_bytes());
        let msg = SecretBytes::new(buf);
        self.public
            .encrypt(&mut getrandom::SysRng, Oaep::<Sha1>::new(), msg.expose())
            .map_err(|e| KeyringError::BadKey(format!("RSA-OAEP encrypt: {e}")))
    }

    /// Legacy `RSA/ECB/OAEPWithSHA-256AndMGF1Padding`: OAEP hash SHA-256; the MGF1 hash was
    /// SHA-1 under SunJCE and SHA-256 under BouncyCastle, so both are tried.
    pub fn unwrap_oaep_sha256_legacy(&self, edk: &[u8]) -> Option<SecretBytes> {
        let key = self.private.as_ref()?;
        key.decrypt(Oaep::<rsa::sha2::Sha256>::new(), edk)
            .or_else(|_| key.decrypt(Oaep::<rsa::sha2::Sha256, Sha1>::new_with_mgf_hash(), edk))
            .ok()
            .map(SecretBytes::new)
    }

    /// Legacy writer (tests and parity only), SunJCE flavour (MGF1-SHA-1).
    pub fn wrap_oaep_sha256_legacy(&self, cek: &SecretBytes) -> Result<Vec<u8>, KeyringError> {
        self.public
            .encrypt(
                &mut getrandom::SysRng,
                Oaep::<rsa::sha2::Sha256, Sha1>::new_with_mgf_hash(),
                cek.expose(),
            )
            .map_err(|e| KeyringError::BadKey(format!("RSA-OAEP encrypt: {e}")))
    }
}

/// EME-PKCS1-v1_5 decoding (RFC 8017 §7.2.2 step 3) in constant time: `(valid, message start)`.
/// Valid means `00 02`, at least 8 non-zero padding bytes, a `00` separator, and a message of 16,
/// 24 or 32 bytes (an AES content key). Every byte is visited whatever the content.
fn pkcs1_v15_decode(em: &[u8]) -> (Choice, usize) {
    let k = em.len();
    let mut found = Choice::from(0);
    let mut sep = 0u32;
    for (i, &b) in em.iter().enumerate().skip(2) {
        let is_zero = b.ct_eq(&0);
        let first = is_zero & !found;
        sep = u32::conditional_select(&sep, &(i as u32), first);
        found |= is_zero;
    }
    let mlen = (k as u32).wrapping_sub(sep).wrapping_sub(1);
    let len_ok = mlen.ct_eq(&16) | mlen.ct_eq(&24) | mlen.ct_eq(&32);
    let valid = em[0].ct_eq(&0) & em[1].ct_eq(&2) & found & sep.ct_gt(&9) & len_ok;
    (valid, (sep as usize + 1).min(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn em(ps_len: usize, msg_len: usize, k: usize) -> Vec<u8> {
        let mut v = vec![0u8, 2];
        v.extend(std::iter::repeat_n(0x5a, ps_len));
        v.push(0);
        v.extend(std::iter::repeat_n(0x11, msg_len));
        assert_eq!(v.len(), k);
        v
    }

    #[test]
    fn pkcs1_decode_accepts_only_well_formed_key_messages() {
        let k = 256;
        for len in [16usize, 24, 32] {
            let (ok, start) = pkcs1_v15_decode(&em(k - 3 - len, len, k));
            assert!(bool::from(ok));
            assert_eq!(k - start, len);
        }
        // Wrong message length, short padding, wrong header, no separator.
        assert!(!bool::from(pkcs1_v15_decode(&em(k - 3 - 31, 31, k)).0));
        let short = {
            let mut v = vec![0u8, 2, 1, 1, 1, 1, 1, 1, 1, 0];
            v.extend([7u8; 32]);
            v
        };
        assert!(!bool::from(pkcs1_v15_decode(&short).0));
        let mut bad = em(k - 35, 32, k);
        bad[1] = 1;
        assert!(!bool::from(pkcs1_v15_decode(&bad).0));
        assert!(!bool::from(
            pkcs1_v15_decode(&[0u8, 2, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]).0
        ));
    }

    #[test]
    fn wrong_rsa_key_never_yields_a_content_key() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/keys/");
        let right = RsaMasterKey::from_pem(
            &std::fs::read_to_string(format!("{dir}rsa2048-private.pem")).expect("pem"),
        )
        .expect("key");
        let wrong =
            RsaMasterKey::from_private(PrivateKey::new(&mut getrandom::SysRng, 2048).expect("gen"));
        for _ in 0..64 {
            let cek = SecretBytes::random(32);
            let edk = right.wrap_pkcs1(&cek).expect("wrap");
            assert_eq!(
                right.unwrap_pkcs1(&edk).expect("right key").expose(),
                cek.expose()
            );
            assert!(
                wrong.unwrap_pkcs1(&edk).is_none(),
                "a wrong key produced a content key"
            );
        }
    }
}
