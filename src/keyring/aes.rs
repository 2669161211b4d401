//! Raw AES master keys: V1 AES/ECB/PKCS5, `AESWrap` (RFC 3394) and `AES/GCM` wraps.
//!
//! Sources: J1 `internal/crypto/v1/S3KeyWrapScheme.java` (ECB), JAVA `materials/AesKeyring.java`
//! (AES/GCM: `nonce(12) || ct || tag(16)`, AAD = the content cipher's name), FORMATS.md §3.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce};
use cbc::cipher::block_padding::Pkcs7;
use ecb::cipher::{BlockModeDecrypt, BlockModeEncrypt};

use super::KeyringError;
use crate::consts::GCM_IV_LEN;
use crate::secret::{SecretBytes, fill_random};

/// A V1 ECB-wrapped 32-byte key is two blocks plus one block of padding.
pub const V1_ECB_EDK_LEN: usize = 48;

/// An AES master key (128, 192 or 256 bits).
pub struct AesMasterKey {
    key: SecretBytes,
}

impl AesMasterKey {
    pub fn new(key: SecretBytes) -> Result<Self, KeyringError> {
        if !matches!(key.len(), 16 | 24 | 32) {
            return Err(KeyringError::BadKey(format!(
                "an AES master key is 16, 24 or 32 bytes, not {}",
                key.len()
            )));
        }
        Ok(Self { key })
    }

    /// Reads a key file holding the key as raw bytes, hex, or base64 (detected in that order of
    /// strictness: exactly 16/24/32 raw bytes, then hex text, then base64 text).
    ///
    /// Text is tried first when the file is printable: a 32-character hex (or 24-character
    /// base64) key without a newline is 16 (or 24) bytes of hex/base64, not raw key bytes.
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, KeyringError> {
        use base64::Engine;
        let printable = bytes
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
        if printable {
            let text = zeroize::Zeroizing::new(String::from_utf8_lossy(bytes).trim().to_owned());
            let decoded = hex::decode(text.as_str())
                .ok()
                .or_else(|| {
                    base64::engine::general_purpose::STANDARD
                        .decode(text.as_str())
                        .ok()
                })
                .map(SecretBytes::new)
                .filter(|k| matches!(k.len(), 16 | 24 | 32));
            if let Some(key) = decoded {
                return Self::new(key);
            }
        }
        if matches!(bytes.len(), 16 | 24 | 32) {
            return Self::new(SecretBytes::from_slice(bytes));
        }
        Err(KeyringError::BadKey(
            "AES key file is not a 16/24/32-byte key as raw bytes, hex or base64".into(),
        ))
    }

    /// V1: AES/ECB/PKCS5Padding(CEK). `None` on a padding failure (wrong key or tampered EDK).
    pub fn unwrap_v1_ecb(&self, edk: &[u8]) -> Option<SecretBytes> {
        let k = self.key.expose();
        // Zeroized on every path, the padding-failure one included.
        let mut buf = zeroize::Zeroizing::new(edk.to_vec());
        let out = match k.len() {
            16 => ecb::Decryptor::<aes::Aes128>::new_from_slice(k)
                .ok()?
                .decrypt_padded::<Pkcs7>(&mut buf)
                .ok()?
                .len(),
            24 => ecb::Decryptor::<aes::Aes192>::new_from_slice(k)
                .ok()?
                .decrypt_padded::<Pkcs7>(&mut buf)
                .ok()?
                .len(),
            _ => ecb::Decryptor::<aes::Aes256>::new_from_slice(k)
                .ok()?
                .decrypt_padded::<Pkcs7>(&mut buf)
                .ok()?
                .len(),
        };
        Some(SecretBytes::from_slice(&buf[..out]))
    }

    /// V1 writer: AES/ECB/PKCS5Padding(CEK).
    pub fn wrap_v1_ecb(&self, cek: &SecretBytes) -> Result<Vec<u8>, KeyringError> {
        let k = self.key.expose();
        let msg = cek.expose();
        let bad = |_| KeyringError::BadKey("AES key".into());
        Ok(match k.len() {
            16 => ecb::Encryptor::<aes::Aes128>::new_from_slice(k)
                .map_err(bad)?
                .encrypt_padded_vec::<Pkcs7>(msg),
            24 => ecb::Encryptor::<aes::Aes192>::new_from_slice(k)
                .map_err(bad)?
                .encrypt_padded_vec::<Pkcs7>(msg),
            _ => ecb::Encryptor::<aes::Aes256>::new_from_slice(k)
                .map_err(bad)?
                .encrypt_padded_vec::<Pkcs7>(msg),
        })
    }

    /// `AESWrap`: RFC 3394 key wrap with the default IV.
    pub fn unwrap_aes_kw(&self, edk: &[u8]) -> Option<SecretBytes> {
        let k = self.key.expose();
        let n = edk.len().checked_sub(8)?;
        let mut out = vec![0u8; n];
        let ok = match k.len() {
            16 => aes_kw::KwAes128::new_from_slice(k)
                .ok()?
                .unwrap_key(edk, &mut out)
                .is_ok(),
            24 => aes_kw::KwAes192::new_from_slice(k)
                .ok()?
                .unwrap_key(edk, &mut out)
                .is_ok(),
            _ => aes_kw::KwAes256::new_from_slice(k)
                .ok()?
                .unwrap_key(edk, &mut out)
                .is_ok(),
        };
        let key = SecretBytes::new(out);
        ok.then_some(key)
    }

    /// `AESWrap` writer (tests and parity only: the wrap is legacy).
    pub fn wrap_aes_kw(&self, cek: &SecretBytes) -> Result<Vec<u8>, KeyringError> {
        let k = self.key.expose();
        let mut out = vec![0u8; cek.len() + 8];
        let bad = |_| KeyringError::BadKey("AES key wrap".into());
        match k.len() {
            16 => aes_kw::KwAes128::new_from_slice(k)
                .map_err(bad)?
                .wrap_key(cek.expose(), &mut out)
                .map_err(|_| KeyringError::BadKey("wrap".into()))?,
            24 => aes_kw::KwAes192::new_from_slice(k)
                .map_err(bad)?
                .wrap_key(cek.expose(), &mut out)
                .map_err(|_| KeyringError::BadKey("wrap".into()))?,
            _ => aes_kw::KwAes256::new_from_slice(k)
                .map_err(bad)?
                .wrap_key(cek.expose(), &mut out)
                .map_err(|_| KeyringError::BadKey("wrap".into()))?,
        };
        Ok(out)
    }

    /// `AES/GCM`: `nonce(12) || ct || tag(16)` with AAD = the content cipher's name
    /// (`AES/GCM/NoPadding` for V2, `115` for V3).
    pub fn unwrap_aes_gcm(&self, edk: &[u8], aad: &[u8]) -> Option<SecretBytes> {
        if edk.len() < GCM_IV_LEN + 16 {
            return None;
        }
        let (nonce, ct) = edk.split_at(GCM_IV_LEN);
        let nonce = Nonce::try_from(nonce).ok()?;
        let payload = Payload { msg: ct, aad };
        let k = self.key.expose();
        let pt = match k.len() {
            16 => Aes128Gcm::new_from_slice(k)
                .ok()?
                .decrypt(&nonce, payload)
                .ok()?,
            32 => Aes256Gcm::new_from_slice(k)
                .ok()?
                .decrypt(&nonce, payload)
                .ok()?,
            _ => return None,
        };
        Some(SecretBytes::new(pt))
    }

    /// `AES/GCM` writer with a fresh random nonce.
    pub fn wrap_aes_gcm(&self, cek: &SecretBytes, aad: &[u8]) -> Result<Vec<u8>, KeyringError> {
        let mut nonce = [0u8; GCM_IV_LEN];
        fill_random(&mut nonce);
        let n = Nonce::from(nonce);
        let payload = Payload {
            msg: cek.expose(),
            aad,
        };
        let k = self.key.expose();
        let ct = match k.len() {
            16 => Aes128Gcm::new_from_slice(k)
                .ok()
                .and_then(|c| c.encrypt(&n, payload).ok()),
            32 => Aes256Gcm::new_from_slice(k)
                .ok()
                .and_then(|c| c.encrypt(&n, payload).ok()),
            _ => None,
        }
        .ok_or_else(|| KeyringError::BadKey("AES/GCM wrap needs a 128- or 256-bit key".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AesMasterKey {
        AesMasterKey::new(SecretBytes::from_slice(&[7u8; 32])).expect("key")
    }

    #[test]
    fn key_file_formats() {
        let raw = [9u8; 32];
        let hex_text = format!("{}\n", hex::encode(raw));
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw);
        for bytes in [raw.to_vec(), hex_text.into_bytes(), b64.into_bytes()] {
            let k = AesMasterKey::from_file_bytes(&bytes).expect("parse");
            assert_eq!(k.key.expose(), &raw);
        }
        assert!(AesMasterKey::from_file_bytes(b"not a key").is_err());
        // 32 hex characters without a newline: a 16-byte key in hex, not 32 raw bytes.
        let k = AesMasterKey::from_file_bytes(hex::encode([3u8; 16]).as_bytes()).expect("hex");
        assert_eq!(k.key.expose(), &[3u8; 16]);
    }

    #[test]
    fn ecb_round_trip_and_wrong_key() {
        let cek = SecretBytes::random(32);
        let edk = key().wrap_v1_ecb(&cek).expect("wrap");
        assert_eq!(edk.len(), V1_ECB_EDK_LEN);
        assert_eq!(
            key().unwrap_v1_ecb(&edk).expect("unwrap").expose(),
            cek.expose()
        );
        let other = AesMasterKey::new(SecretBytes::from_slice(&[8u8; 32])).expect("key");
        assert!(other.unwrap_v1_ecb(&edk).is_none());
    }

    #[test]
    fn aes_kw_round_trip_and_tamper() {
        let cek = SecretBytes::random(32);
        let mut edk = key().wrap_aes_kw(&cek).expect("wrap");
        assert_eq!(edk.len(), 40);
        assert_eq!(
            key().unwrap_aes_kw(&edk).expect("unwrap").expose(),
            cek.expose()
        );
        edk[5] ^= 1;
        assert!(key().unwrap_aes_kw(&edk).is_none());
    }

    #[test]
    fn aes_gcm_round_trip_aad_bound() {
        let cek = SecretBytes::random(32);
        let edk = key()
            .wrap_aes_gcm(&cek, b"AES/GCM/NoPadding")
            .expect("wrap");
        assert_eq!(edk.len(), 60);
        assert_eq!(
            key()
                .unwrap_aes_gcm(&edk, b"AES/GCM/NoPadding")
                .expect("unwrap")
                .expose(),
            cek.expose()
        );
        // V3's AAD differs: a V2 wrap cannot be replayed as V3.
        assert!(key().unwrap_aes_gcm(&edk, b"115").is_none());
    }
}
