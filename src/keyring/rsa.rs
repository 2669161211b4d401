//! Raw RSA key pairs: V1 PKCS#1 v1.5, `RSA-OAEP-SHA1` and the legacy
//! `RSA/ECB/OAEPWithSHA-256AndMGF1Padding` wraps.
//!
//! Sources: JAVA `materials/RsaKeyring.java` (`len || CEK || cek-alg` layout), J1
//! `internal/crypto/keywrap/RsaOaepKeyWrapper.java`, FORMATS.md §3. PKCS#1 v1.5 decryption uses
//! rsa 0.10's implicit rejection (the Marvin-attack fix): a wrong key yields a synthetic plaintext,
//! never an error, so the caller authenticates the result through the content.

use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::{Oaep, Pkcs1v15Encrypt, PrivateKey, PublicKey};
use sha1::Sha1;
use subtle::ConstantTimeEq;

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

    /// V1: RSAES-PKCS1-v1_5(CEK). With implicit rejection a wrong key returns garbage of some
    /// length; only a plausible key length is kept.
    pub fn unwrap_pkcs1(&self, edk: &[u8]) -> Option<SecretBytes> {
        let pt = self.private.as_ref()?.decrypt(Pkcs1v15Encrypt, edk).ok()?;
        Some(SecretBytes::new(pt))
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
