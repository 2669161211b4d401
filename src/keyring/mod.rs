//! Keyrings: unwrap the content encryption key (CEK) an envelope carries, and wrap new ones.
//!
//! A [`Keyring`] holds every key source the caller has: a KMS client (the `kms` and `kms+context`
//! wraps), raw AES master keys (V1 AES/ECB, `AESWrap`, `AES/GCM`) and raw RSA key pairs (V1 PKCS#1
//! v1.5, `RSA-OAEP-SHA1`, legacy `RSA/ECB/OAEPWithSHA-256AndMGF1Padding`). Several raw keys may be
//! given: an envelope rarely says which one it used, so each is tried (FORMATS.md §3).
//!
//! The seed's `KMSCryptoContext`, `SymmetricCryptoContext` and `AsymmetricCryptoContext` (aioboto3)
//! map to [`Keyring::kms`], [`Keyring::aes`] and [`Keyring::rsa`].

pub mod aes;
pub mod kms;
pub mod rsa;

use std::sync::Arc;

use crate::consts::{DATA_KEY_LEN, EC_CEK_ALG, EC_KMS_CMK_ID};
use crate::envelope::{ContentAlg, Context, Envelope, WrapAlg};
use crate::secret::SecretBytes;

pub use self::aes::AesMasterKey;
pub use self::kms::{
    AwsKms, KmsClient, KmsError, KmsErrorKind, KmsKeyring, SourceKeyPolicy, SourceKeyPolicyError,
};
pub use self::rsa::RsaMasterKey;

/// Why a content key could not be unwrapped or wrapped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// No configured key can even try this envelope (e.g. an RSA envelope and only AES keys).
    #[error("no matching key: the object's key is wrapped with {wrap}, and {have}")]
    NoMatchingKey { wrap: WrapAlg, have: String },
    /// The configured keys were tried and none unwrapped the key (wrong key or tampered EDK).
    /// Deliberately opaque: padding, OAEP and tag failures look the same, and `codec` reports it
    /// as the same `DecryptionFailed` as a content tag/padding failure.
    #[error("no matching key: none of the configured keys unwraps this object's data key")]
    UnwrapFailed,
    /// A legacy wrap without the caller's opt-in.
    #[error("legacy key wrap {0} refused: it needs the explicit legacy opt-in (--allow-legacy)")]
    LegacyRefused(WrapAlg),
    /// The caller's encryption context differs from the one stored with the object.
    #[error("encryption context mismatch: the object was written with a different context")]
    ContextMismatch,
    /// A caller context may not set the reserved `aws:x-amz-cek-alg` key.
    #[error("the encryption context may not contain the reserved key aws:x-amz-cek-alg")]
    ReservedContextKey,
    /// The stored `aws:x-amz-cek-alg` does not name the content cipher the metadata claims.
    #[error("stored aws:x-amz-cek-alg {stored:?} does not match the content cipher {actual}")]
    CekAlgMismatch {
        stored: String,
        actual: &'static str,
    },
    /// KMS refused or failed (access denied, key disabled, throttled, network...).
    #[error("KMS: {0}")]
    Kms(#[from] KmsError),
    /// Asked to encrypt with no key that can wrap.
    #[error("no key to encrypt with: give a KMS key id, an AES key or an RSA public key")]
    NoWrappingKey,
    /// A key file could not be read or parsed.
    #[error("bad key material: {0}")]
    BadKey(String),
}

/// What the caller allows and expects when unwrapping.
#[derive(Debug, Clone, Default)]
pub struct UnwrapOptions {
    /// Read legacy wraps (V1 ECB / PKCS#1, `AESWrap`, `RSA/ECB/OAEPWithSHA-256…`, `kms`).
    pub allow_legacy_wrapping: bool,
    /// `kms+context`: the context the caller expects (the stored one minus the reserved keys must
    /// equal it). `None` accepts whatever is stored: KMS still binds the context to the key.
    pub expected_context: Option<Context>,
}

/// A freshly generated content key and how it was wrapped.
pub struct NewKey {
    pub cek: SecretBytes,
    pub encrypted_key: Vec<u8>,
    pub wrap: WrapAlg,
    /// For raw-key wraps: the material description to store.
    pub matdesc: Context,
    /// For KMS wraps: the encryption context to store.
    pub encryption_context: Context,
}

/// Every key source of one caller. Cheap to clone.
#[derive(Clone, Default)]
pub struct Keyring {
    kms: Option<KmsKeyring>,
    aes: Vec<Arc<AesMasterKey>>,
    rsa: Vec<Arc<RsaMasterKey>>,
}

impl Keyring {
    /// A keyring with no keys; add them with the `with_*` methods.
    pub fn new() -> Self {
        Self::default()
    }

    /// KMS only (aioboto3's `KMSCryptoContext`).
    pub fn kms(kms: KmsKeyring) -> Self {
        Self::new().with_kms(kms)
    }

    /// One AES master key (aioboto3's `SymmetricCryptoContext`).
    pub fn aes(key: AesMasterKey) -> Self {
        Self::new().with_aes(key)
    }

    /// One RSA key (aioboto3's `AsymmetricCryptoContext`).
    pub fn rsa(key: RsaMasterKey) -> Self {
        Self::new().with_rsa(key)
    }

    pub fn with_kms(mut self, kms: KmsKeyring) -> Self {
        self.kms = Some(kms);
        self
    }

    pub fn with_aes(mut self, key: AesMasterKey) -> Self {
        self.aes.push(Arc::new(key));
        self
    }

    pub fn with_rsa(mut self, key: RsaMasterKey) -> Self {
        self.rsa.push(Arc::new(key));
        self
    }

    pub fn kms_keyring(&self) -> Option<&KmsKeyring> {
        self.kms.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.kms.is_none() && self.aes.is_empty() && self.rsa.is_empty()
    }

    /// Unwraps the envelope's content key. Returns the candidate keys: exactly one, except for V1
    /// PKCS#1 envelopes with several RSA keys, where implicit rejection (rsa 0.10, the Marvin fix)
    /// makes a wrong key look like success; the content then decides (see `codec`).
    pub async fn unwrap_key(
        &self,
        env: &Envelope,
        opts: &UnwrapOptions,
    ) -> Result<Vec<SecretBytes>, KeyringError> {
        if env.wrap.is_legacy() && !opts.allow_legacy_wrapping {
            return Err(KeyringError::LegacyRefused(env.wrap));
        }
        let candidates = match env.wrap {
            WrapAlg::Kms | WrapAlg::KmsContext => {
                let kms = self.kms.as_ref().ok_or_else(|| self.no_match(env.wrap))?;
                let ctx = kms_decrypt_context(env, opts)?;
                vec![kms.decrypt(&env.encrypted_key, &ctx).await?]
            }
            WrapAlg::V1Unnamed if env.encrypted_key.len() == aes::V1_ECB_EDK_LEN => {
                self.try_aes(env, |k| k.unwrap_v1_ecb(&env.encrypted_key))?
            }
            WrapAlg::V1Unnamed => self.try_rsa_all(env, |k| k.unwrap_pkcs1(&env.encrypted_key))?,
            WrapAlg::AesWrap => self.try_aes(env, |k| k.unwrap_aes_kw(&env.encrypted_key))?,
            WrapAlg::AesGcm => {
                let aad = env.content_alg.wire_name().as_bytes();
                self.try_aes(env, |k| k.unwrap_aes_gcm(&env.encrypted_key, aad))?
            }
            WrapAlg::RsaOaepSha1 => {
                let alg = env.content_alg.wire_name();
                self.try_rsa_first(env, |k| k.unwrap_oaep_sha1(&env.encrypted_key, alg))?
            }
            WrapAlg::RsaOaepSha256Legacy => {
                self.try_rsa_first(env, |k| k.unwrap_oaep_sha256_legacy(&env.encrypted_key))?
            }
        };
        let candidates: Vec<_> = candidates
            .into_iter()
            .filter(|k| valid_cek_len(k.len()))
            .collect();
        if candidates.is_empty() {
            return Err(KeyringError::UnwrapFailed);
        }
        Ok(candidates)
    }

    /// Generates a content key for `content` and wraps it with the keyring's preferred key:
    /// KMS `kms+context` if a KMS key id is set, else `AES/GCM` with the first AES key, else
    /// `RSA-OAEP-SHA1` with the first RSA key.
    pub async fn new_key(
        &self,
        content: ContentAlg,
        user_context: &Context,
    ) -> Result<NewKey, KeyringError> {
        if user_context.contains_key(EC_CEK_ALG) {
            return Err(KeyringError::ReservedContextKey);
        }
        let alg = content.wire_name();
        if let Some(kms) = self.kms.as_ref().filter(|k| k.key_id().is_some()) {
            let mut ctx = user_context.clone();
            ctx.insert(EC_CEK_ALG.into(), alg.into());
            let (cek, encrypted_key) = kms.generate_data_key(&ctx).await?;
            return Ok(NewKey {
                cek,
                encrypted_key,
                wrap: WrapAlg::KmsContext,
                matdesc: Context::new(),
                encryption_context: ctx,
            });
        }
        let cek = SecretBytes::random(DATA_KEY_LEN);
        if let Some(key) = self.aes.first() {
            let encrypted_key = key.wrap_aes_gcm(&cek, alg.as_bytes())?;
            return Ok(NewKey {
                cek,
                encrypted_key,
                wrap: WrapAlg::AesGcm,
                matdesc: user_context.clone(),
                encryption_context: Context::new(),
            });
        }
        if let Some(key) = self.rsa.first() {
            let encrypted_key = key.wrap_oaep_sha1(&cek, alg)?;
            return Ok(NewKey {
                cek,
                encrypted_key,
                wrap: WrapAlg::RsaOaepSha1,
                matdesc: user_context.clone(),
                encryption_context: Context::new(),
            });
        }
        Err(KeyringError::NoWrappingKey)
    }

    /// Legacy V1 wrap (AES/ECB with the first AES key, else RSA PKCS#1 v1.5 with the first RSA
    /// key), as 2014-era SDKs and aioboto3's raw-key contexts write. For making old-style objects
    /// (tests, parity), never the default.
    pub fn legacy_v1_new_key(&self) -> Result<NewKey, KeyringError> {
        let cek = SecretBytes::random(DATA_KEY_LEN);
        let encrypted_key = if let Some(key) = self.aes.first() {
            key.wrap_v1_ecb(&cek)?
        } else if let Some(key) = self.rsa.first() {
            key.wrap_pkcs1(&cek)?
        } else {
            return Err(KeyringError::NoWrappingKey);
        };
        Ok(NewKey {
            cek,
            encrypted_key,
            wrap: WrapAlg::V1Unnamed,
            matdesc: Context::new(),
            encryption_context: Context::new(),
        })
    }

    fn no_match(&self, wrap: WrapAlg) -> KeyringError {
        let mut have = Vec::new();
        if self.kms.is_some() {
            have.push("a KMS client");
        }
        if !self.aes.is_empty() {
            have.push("AES keys");
        }
        if !self.rsa.is_empty() {
            have.push("RSA keys");
        }
        let have = if have.is_empty() {
            "no key was given".to_owned()
        } else {
            format!("only {} were given", have.join(" and "))
        };
        KeyringError::NoMatchingKey { wrap, have }
    }

    /// The first AES key that unwraps wins (each of these wraps has an integrity check).
    fn try_aes(
        &self,
        env: &Envelope,
        f: impl Fn(&AesMasterKey) -> Option<SecretBytes>,
    ) -> Result<Vec<SecretBytes>, KeyringError> {
        if self.aes.is_empty() {
            return Err(self.no_match(env.wrap));
        }
        Ok(self.aes.iter().find_map(|k| f(k)).into_iter().collect())
    }

    /// OAEP has an integrity check: the first RSA key that unwraps wins.
    fn try_rsa_first(
        &self,
        env: &Envelope,
        f: impl Fn(&RsaMasterKey) -> Option<SecretBytes>,
    ) -> Result<Vec<SecretBytes>, KeyringError> {
        if !self.rsa.iter().any(|k| k.can_decrypt()) {
            return Err(self.no_match(env.wrap));
        }
        Ok(self.rsa.iter().find_map(|k| f(k)).into_iter().collect())
    }

    /// PKCS#1 v1.5 with implicit rejection has no reliable integrity check: keep every plausible key.
    fn try_rsa_all(
        &self,
        env: &Envelope,
        f: impl Fn(&RsaMasterKey) -> Option<SecretBytes>,
    ) -> Result<Vec<SecretBytes>, KeyringError> {
        if !self.rsa.iter().any(|k| k.can_decrypt()) {
            return Err(self.no_match(env.wrap));
        }
        Ok(self.rsa.iter().filter_map(|k| f(k)).collect())
    }
}

/// AES-128/192/256 content keys; AWS's writers use 256, the V1 era allowed the others.
fn valid_cek_len(n: usize) -> bool {
    matches!(n, 16 | 24 | 32)
}

/// The source encryption context of a KMS `ReEncrypt` of `env`'s data key, after the same
/// `kms+context` checks as a Decrypt (FORMATS.md §3): a stored `aws:x-amz-cek-alg` that does not
/// name the object's content cipher is refused ([`KeyringError::CekAlgMismatch`]), so a rewrap
/// cannot vouch, under the target key, for an envelope whose cipher was swapped.
pub fn kms_source_context(env: &Envelope) -> Result<Context, KeyringError> {
    kms_decrypt_context(env, &UnwrapOptions::default())
}

/// The encryption context KMS Decrypt must be given, after the `kms+context` checks of FORMATS.md
/// §3: stored `aws:x-amz-cek-alg` must name the content cipher; the caller's context (if given)
/// must equal the stored one minus the reserved keys.
fn kms_decrypt_context(env: &Envelope, opts: &UnwrapOptions) -> Result<Context, KeyringError> {
    let stored = &env.encryption_context;
    if env.wrap == WrapAlg::KmsContext {
        let actual = env.content_alg.wire_name();
        match stored.get(EC_CEK_ALG) {
            Some(s) if s == actual => {}
            Some(s) => {
                return Err(KeyringError::CekAlgMismatch {
                    stored: s.clone(),
                    actual,
                });
            }
            None => {
                return Err(KeyringError::CekAlgMismatch {
                    stored: String::new(),
                    actual,
                });
            }
        }
    }
    if let Some(expected) = &opts.expected_context {
        if expected.contains_key(EC_CEK_ALG) {
            return Err(KeyringError::ReservedContextKey);
        }
        let mut user: Context = stored.clone();
        user.remove(EC_CEK_ALG);
        user.remove(EC_KMS_CMK_ID);
        let mut want = expected.clone();
        want.remove(EC_KMS_CMK_ID);
        if user != want {
            return Err(KeyringError::ContextMismatch);
        }
    }
    Ok(stored.clone())
}

#[cfg(test)]
mod tests;
