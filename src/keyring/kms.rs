//! KMS wraps: legacy `kms` (context = the material description, `{"kms_cmk_id": …}`) and
//! `kms+context` (context = caller context + `aws:x-amz-cek-alg`).
//!
//! [`KmsClient`] is the seam between the keyring and KMS: [`AwsKms`] calls aws-sdk-kms; the rekey
//! worker wraps it to add rate limits, retries and metrics; tests use [`StaticKms`].

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use futures::future::BoxFuture;

use crate::envelope::Context;
use crate::secret::SecretBytes;

/// What KMS said, classified for retries, exit codes and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsErrorKind {
    /// The blob does not decrypt under this key and context (wrong context, tampered blob).
    InvalidCiphertext,
    /// The caller may not use the key.
    AccessDenied,
    /// No such key, or it is disabled / pending deletion.
    KeyUnavailable,
    /// Rate limited: retry with backoff.
    Throttled,
    /// Network, timeout, 5xx: retry.
    Transient,
    /// Anything else.
    Other,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct KmsError {
    pub kind: KmsErrorKind,
    pub message: String,
}

impl KmsError {
    pub fn new(kind: KmsErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Classifies an aws-sdk-kms error.
    pub fn from_sdk<E: ProvideErrorMetadata + std::error::Error + 'static, R>(
        operation: &str,
        err: SdkError<E, R>,
    ) -> Self {
        let kind = match &err {
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => KmsErrorKind::Transient,
            _ => match err.code() {
                Some("InvalidCiphertextException" | "IncorrectKeyException") => {
                    KmsErrorKind::InvalidCiphertext
                }
                Some("AccessDeniedException" | "UnrecognizedClientException") => {
                    KmsErrorKind::AccessDenied
                }
                Some("NotFoundException" | "DisabledException" | "KMSInvalidStateException") => {
                    KmsErrorKind::KeyUnavailable
                }
                Some("ThrottlingException" | "LimitExceededException") => KmsErrorKind::Throttled,
                Some("KMSInternalException" | "DependencyTimeoutException") => {
                    KmsErrorKind::Transient
                }
                _ => KmsErrorKind::Other,
            },
        };
        let detail = match (err.code(), err.message()) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.to_owned(),
            _ => format!("{err}"),
        };
        Self::new(kind, format!("{operation}: {detail}"))
    }
}

/// The two KMS operations the keyrings need.
pub trait KmsClient: Send + Sync {
    /// `GenerateDataKey` (AES_256) under `key_id` with `context`: (plaintext key, ciphertext blob).
    fn generate_data_key<'a>(
        &'a self,
        key_id: &'a str,
        context: &'a Context,
    ) -> BoxFuture<'a, Result<(SecretBytes, Vec<u8>), KmsError>>;

    /// `Decrypt` of `blob` with `context`; `key_id` pins the key (KMS refuses a blob of another key).
    fn decrypt<'a>(
        &'a self,
        key_id: Option<&'a str>,
        blob: &'a [u8],
        context: &'a Context,
    ) -> BoxFuture<'a, Result<SecretBytes, KmsError>>;

    /// `Encrypt` of a content key under `key_id` with `context` (rewraps a raw-key object's key).
    fn encrypt<'a>(
        &'a self,
        key_id: &'a str,
        plaintext: &'a SecretBytes,
        context: &'a Context,
    ) -> BoxFuture<'a, Result<Vec<u8>, KmsError>>;

    /// `ReEncrypt`: moves a blob to `key_id` / `context` inside KMS; the key never leaves it.
    fn re_encrypt<'a>(
        &'a self,
        blob: &'a [u8],
        source_context: &'a Context,
        key_id: &'a str,
        context: &'a Context,
    ) -> BoxFuture<'a, Result<Vec<u8>, KmsError>>;
}

/// KMS through aws-sdk-kms.
#[derive(Clone)]
pub struct AwsKms {
    client: aws_sdk_kms::Client,
}

impl AwsKms {
    pub fn new(client: aws_sdk_kms::Client) -> Self {
        Self { client }
    }
}

fn to_hash_map(ctx: &Context) -> Option<HashMap<String, String>> {
    (!ctx.is_empty()).then(|| ctx.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

impl KmsClient for AwsKms {
    fn generate_data_key<'a>(
        &'a self,
        key_id: &'a str,
        context: &'a Context,
    ) -> BoxFuture<'a, Result<(SecretBytes, Vec<u8>), KmsError>> {
        Box::pin(async move {
            let out = self
                .client
                .generate_data_key()
                .key_id(key_id)
                .key_spec(DataKeySpec::Aes256)
                .set_encryption_context(to_hash_map(context))
                .send()
                .await
                .map_err(|e| KmsError::from_sdk("GenerateDataKey", e))?;
            let plaintext = out.plaintext.ok_or_else(|| {
                KmsError::new(KmsErrorKind::Other, "GenerateDataKey returned no plaintext")
            })?;
            let blob = out.ciphertext_blob.ok_or_else(|| {
                KmsError::new(
                    KmsErrorKind::Other,
                    "GenerateDataKey returned no ciphertext",
                )
            })?;
            Ok((SecretBytes::new(plaintext.into_inner()), blob.into_inner()))
        })
    }

    fn decrypt<'a>(
        &'a self,
        key_id: Option<&'a str>,
        blob: &'a [u8],
        context: &'a Context,
    ) -> BoxFuture<'a, Result<SecretBytes, KmsError>> {
        Box::pin(async move {
            let out = self
                .client
                .decrypt()
                .ciphertext_blob(Blob::new(blob))
                .set_key_id(key_id.map(str::to_owned))
                .set_encryption_context(to_hash_map(context))
                .send()
                .await
                .map_err(|e| KmsError::from_sdk("Decrypt", e))?;
            let plaintext = out.plaintext.ok_or_else(|| {
                KmsError::new(KmsErrorKind::Other, "Decrypt returned no plaintext")
            })?;
            Ok(SecretBytes::new(plaintext.into_inner()))
        })
    }

    fn encrypt<'a>(
        &'a self,
        key_id: &'a str,
        plaintext: &'a SecretBytes,
        context: &'a Context,
    ) -> BoxFuture<'a, Result<Vec<u8>, KmsError>> {
        Box::pin(async move {
            let out = self
                .client
                .encrypt()
                .key_id(key_id)
                .plaintext(Blob::new(plaintext.expose()))
                .set_encryption_context(to_hash_map(context))
                .send()
                .await
                .map_err(|e| KmsError::from_sdk("Encrypt", e))?;
            out.ciphertext_blob
                .map(Blob::into_inner)
                .ok_or_else(|| KmsError::new(KmsErrorKind::Other, "Encrypt returned no ciphertext"))
        })
    }

    fn re_encrypt<'a>(
        &'a self,
        blob: &'a [u8],
        source_context: &'a Context,
        key_id: &'a str,
        context: &'a Context,
    ) -> BoxFuture<'a, Result<Vec<u8>, KmsError>> {
        Box::pin(async move {
            let out = self
                .client
                .re_encrypt()
                .ciphertext_blob(Blob::new(blob))
                .set_source_encryption_context(to_hash_map(source_context))
                .destination_key_id(key_id)
                .set_destination_encryption_context(to_hash_map(context))
                .send()
                .await
                .map_err(|e| KmsError::from_sdk("ReEncrypt", e))?;
            out.ciphertext_blob.map(Blob::into_inner).ok_or_else(|| {
                KmsError::new(KmsErrorKind::Other, "ReEncrypt returned no ciphertext")
            })
        })
    }
}

/// A KMS key source: the key new objects are wrapped with, and how decryption picks its key.
#[derive(Clone)]
pub struct KmsKeyring {
    client: Arc<dyn KmsClient>,
    key_id: Option<String>,
    /// Decrypt blobs of any KMS key the credentials may use (like GO1's
    /// `RegisterKMSWrapWithAnyCMK`), instead of pinning Decrypt to `key_id`. `rekey` needs it:
    /// its sources are under old keys, `key_id` is the target.
    decrypt_any_key: bool,
}

impl KmsKeyring {
    /// Wraps with, and decrypts only under, `key_id` (an id, ARN or `alias/…`).
    pub fn new(client: Arc<dyn KmsClient>, key_id: impl Into<String>) -> Self {
        Self {
            client,
            key_id: Some(key_id.into()),
            decrypt_any_key: false,
        }
    }

    /// Decrypts under whichever key each object names; cannot encrypt unless a key id is set.
    pub fn any_key(client: Arc<dyn KmsClient>, key_id: Option<String>) -> Self {
        Self {
            client,
            key_id,
            decrypt_any_key: true,
        }
    }

    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    pub fn client(&self) -> &Arc<dyn KmsClient> {
        &self.client
    }

    pub(crate) async fn decrypt(
        &self,
        blob: &[u8],
        context: &Context,
    ) -> Result<SecretBytes, KmsError> {
        // An alias cannot pin Decrypt (KMS wants a key id or ARN there); KMS still binds the blob
        // to its key, so an alias-configured keyring decrypts without pinning.
        let pin = self
            .key_id
            .as_deref()
            .filter(|id| !self.decrypt_any_key && !id.starts_with("alias/"));
        self.client.decrypt(pin, blob, context).await
    }

    pub(crate) async fn generate_data_key(
        &self,
        context: &Context,
    ) -> Result<(SecretBytes, Vec<u8>), KmsError> {
        let key_id = self
            .key_id
            .as_deref()
            .ok_or_else(|| KmsError::new(KmsErrorKind::Other, "no KMS key id to encrypt with"))?;
        self.client.generate_data_key(key_id, context).await
    }
}

/// A KMS stand-in for tests and offline checks: serves one known data key, and refuses (as KMS
/// would, with `InvalidCiphertext`) any request whose key id or encryption context differs from
/// the expected ones. Records every call.
pub struct StaticKms {
    pub key_id: String,
    pub data_key: SecretBytes,
    pub blob: Vec<u8>,
    pub expected_context: Context,
    pub calls: std::sync::Mutex<Vec<(String, Option<String>, Context)>>,
}

impl StaticKms {
    pub fn new(
        key_id: &str,
        data_key: SecretBytes,
        blob: Vec<u8>,
        expected_context: Context,
    ) -> Self {
        Self {
            key_id: key_id.into(),
            data_key,
            blob,
            expected_context,
            calls: Default::default(),
        }
    }

    fn record(&self, op: &str, key_id: Option<&str>, ctx: &Context) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push((op.into(), key_id.map(str::to_owned), ctx.clone()));
        }
    }
}

impl KmsClient for StaticKms {
    fn generate_data_key<'a>(
        &'a self,
        key_id: &'a str,
        context: &'a Context,
    ) -> BoxFuture<'a, Result<(SecretBytes, Vec<u8>), KmsError>> {
        self.record("GenerateDataKey", Some(key_id), context);
        let ok = key_id == self.key_id;
        Box::pin(async move {
            if !ok {
                return Err(KmsError::new(
                    KmsErrorKind::KeyUnavailable,
                    format!("unknown key {key_id}"),
                ));
            }
            Ok((self.data_key.clone(), self.blob.clone()))
        })
    }

    fn decrypt<'a>(
        &'a self,
        key_id: Option<&'a str>,
        blob: &'a [u8],
        context: &'a Context,
    ) -> BoxFuture<'a, Result<SecretBytes, KmsError>> {
        self.record("Decrypt", key_id, context);
        let ok = key_id.is_none_or(|k| k == self.key_id)
            && blob == self.blob
            && *context == self.expected_context;
        Box::pin(async move {
            if !ok {
                return Err(KmsError::new(
                    KmsErrorKind::InvalidCiphertext,
                    "InvalidCiphertextException",
                ));
            }
            Ok(self.data_key.clone())
        })
    }

    fn encrypt<'a>(
        &'a self,
        key_id: &'a str,
        plaintext: &'a SecretBytes,
        context: &'a Context,
    ) -> BoxFuture<'a, Result<Vec<u8>, KmsError>> {
        self.record("Encrypt", Some(key_id), context);
        let ok = key_id == self.key_id && plaintext.expose() == self.data_key.expose();
        Box::pin(async move {
            if !ok {
                return Err(KmsError::new(
                    KmsErrorKind::Other,
                    "StaticKms encrypts only its own data key",
                ));
            }
            Ok(self.blob.clone())
        })
    }

    fn re_encrypt<'a>(
        &'a self,
        blob: &'a [u8],
        source_context: &'a Context,
        key_id: &'a str,
        context: &'a Context,
    ) -> BoxFuture<'a, Result<Vec<u8>, KmsError>> {
        self.record("ReEncrypt", Some(key_id), context);
        let ok =
            blob == self.blob && *source_context == self.expected_context && key_id == self.key_id;
        Box::pin(async move {
            if !ok {
                return Err(KmsError::new(
                    KmsErrorKind::InvalidCiphertext,
                    "InvalidCiphertextException",
                ));
            }
            Ok(self.blob.clone())
        })
    }
}
