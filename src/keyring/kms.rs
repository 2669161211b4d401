//! KMS wraps: legacy `kms` (context = the material description, `{"kms_cmk_id": …}`) and
//! `kms+context` (context = caller context + `aws:x-amz-cek-alg`).
//!
//! [`KmsClient`] is the seam between the keyring and KMS: [`AwsKms`] calls aws-sdk-kms; the rekey
//! worker wraps it to add rate limits, retries and metrics; tests use [`StaticKms`].

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::operation::decrypt::{DecryptError, DecryptOutput};
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
    /// A Decrypt pinned to a key (`KeyId`) got a blob of another key: `IncorrectKeyException`.
    IncorrectKey,
    /// The caller may not use the key.
    AccessDenied,
    /// No such key, or it is disabled / pending deletion.
    KeyUnavailable,
    /// Rate limited: retry with backoff.
    Throttled,
    /// Network, timeout, 5xx: retry.
    Transient,
    /// The data key is under a KMS key the [`SourceKeyPolicy`] does not allow (a key planted
    /// from a foreign account, say): the plaintext key, or the re-encrypted blob, was dropped.
    SourceKeyNotAllowed,
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
                Some("InvalidCiphertextException") => KmsErrorKind::InvalidCiphertext,
                Some("IncorrectKeyException") => KmsErrorKind::IncorrectKey,
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
///
/// With a [`SourceKeyPolicy`] ([`AwsKms::with_source_policy`], as `s3cse rekey` builds it) every
/// Decrypt and ReEncrypt answer is checked against it here, at the seam, before the plaintext
/// key or the new blob is handed to any caller: KMS names the key it used (Decrypt's `KeyId`,
/// ReEncrypt's `SourceKeyId`, both key ARNs), and a key outside the policy is a
/// [`KmsErrorKind::SourceKeyNotAllowed`] error, the plaintext key dropped (zeroized).
#[derive(Clone)]
pub struct AwsKms {
    client: aws_sdk_kms::Client,
    source_policy: Option<Arc<SourceKeyPolicy>>,
}

impl AwsKms {
    pub fn new(client: aws_sdk_kms::Client) -> Self {
        Self {
            client,
            source_policy: None,
        }
    }

    /// Accepts source data keys only under the keys `policy` allows.
    pub fn with_source_policy(mut self, policy: SourceKeyPolicy) -> Self {
        self.source_policy = Some(Arc::new(policy));
        self
    }

    async fn decrypt_once(
        &self,
        key_id: Option<&str>,
        blob: &[u8],
        context: &Context,
    ) -> Result<DecryptOutput, SdkError<DecryptError, HttpResponse>> {
        self.client
            .decrypt()
            .ciphertext_blob(Blob::new(blob))
            .set_key_id(key_id.map(str::to_owned))
            .set_encryption_context(to_hash_map(context))
            .send()
            .await
    }

    /// Decrypt pinned by the policy to its one source key; a blob KMS says is under another
    /// key is tried under the target key (always allowed), then refused.
    async fn decrypt_pinned(
        &self,
        policy: &SourceKeyPolicy,
        pin: &str,
        blob: &[u8],
        context: &Context,
    ) -> Result<DecryptOutput, KmsError> {
        let err = match self.decrypt_once(Some(pin), blob, context).await {
            Err(e) if under_another_key(&e) => KmsError::from_sdk("Decrypt", e),
            r => return r.map_err(|e| KmsError::from_sdk("Decrypt", e)),
        };
        let target = policy.target_arn();
        if target == pin {
            return Err(policy.refuse_unnamed("Decrypt", &err));
        }
        match self.decrypt_once(Some(&target), blob, context).await {
            Err(e) if under_another_key(&e) => Err(policy.refuse_unnamed("Decrypt", &err)),
            r => r.map_err(|e| KmsError::from_sdk("Decrypt", e)),
        }
    }
}

/// KMS's answer to a Decrypt pinned to a key the blob is not under: `IncorrectKeyException`
/// (moto says `AccessDeniedException`, which real KMS also sends for a key in another account).
fn under_another_key<R>(e: &SdkError<DecryptError, R>) -> bool {
    matches!(
        e.code(),
        Some("IncorrectKeyException" | "AccessDeniedException")
    )
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
            let policy = self.source_policy.as_deref();
            let pinned = policy.and_then(|p| Some((p, p.pinned_key()?)));
            let out = match (key_id, pinned) {
                (None, Some((p, pin))) => self.decrypt_pinned(p, &pin, blob, context).await?,
                _ => self
                    .decrypt_once(key_id, blob, context)
                    .await
                    .map_err(|e| KmsError::from_sdk("Decrypt", e))?,
            };
            let plaintext = out.plaintext.ok_or_else(|| {
                KmsError::new(KmsErrorKind::Other, "Decrypt returned no plaintext")
            })?;
            let plaintext = SecretBytes::new(plaintext.into_inner());
            if let Some(p) = policy {
                // On refusal `plaintext` is dropped here, and zeroized with it.
                p.check("Decrypt", out.key_id.as_deref())?;
            }
            Ok(plaintext)
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
            if let Some(p) = self.source_policy.as_deref() {
                // The new blob (under the target key) is dropped unused: nothing vouches for a
                // data key of a foreign key.
                p.check("ReEncrypt", out.source_key_id())?;
            }
            out.ciphertext_blob.map(Blob::into_inner).ok_or_else(|| {
                KmsError::new(KmsErrorKind::Other, "ReEncrypt returned no ciphertext")
            })
        })
    }
}

/// The parts of a KMS key ARN, `arn:PARTITION:kms:REGION:ACCOUNT:key/KEY-ID`
/// (<https://docs.aws.amazon.com/kms/latest/developerguide/concepts.html#key-id-key-ARN>).
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyArn {
    partition: String,
    region: String,
    account: String,
    key_id: String,
}

impl KeyArn {
    /// A key ARN, or `None` (an alias ARN, a bare key id, anything else).
    fn parse(arn: &str) -> Option<Self> {
        let mut parts = arn.splitn(6, ':');
        let (Some("arn"), Some(partition), Some("kms"), Some(region), Some(account), Some(res)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let key_id = res.strip_prefix("key/")?;
        let ok = !partition.is_empty()
            && !region.is_empty()
            && is_account_id(account)
            && !key_id.is_empty()
            && !key_id.contains(['/', ':']);
        ok.then(|| KeyArn {
            partition: partition.to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
            key_id: key_id.to_owned(),
        })
    }

    /// The same key: same partition, account and key id, and the same Region unless it is a
    /// multi-Region key (`mrk-…`), whose replicas in other Regions share its id and material
    /// (<https://docs.aws.amazon.com/kms/latest/developerguide/multi-region-keys-overview.html>).
    fn same_key(&self, other: &KeyArn) -> bool {
        self.partition == other.partition
            && self.account == other.account
            && self.key_id == other.key_id
            && (self.region == other.region || self.key_id.starts_with("mrk-"))
    }

    fn to_arn(&self) -> String {
        format!(
            "arn:{}:kms:{}:{}:key/{}",
            self.partition, self.region, self.account, self.key_id
        )
    }
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// A [`SourceKeyPolicy`] that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceKeyPolicyError {
    /// The target or a pinned key is not a key ARN (resolve ids and aliases with DescribeKey
    /// first).
    #[error("not a KMS key ARN: {0}")]
    NotAKeyArn(String),
    /// An account is not 12 digits.
    #[error("not an AWS account id (12 digits): {0}")]
    NotAnAccountId(String),
}

/// Which KMS keys `s3cse rekey` accepts a source data key under. Without it, an object planted
/// with a data key under a foreign account's key (one the credentials happen to be allowed to
/// use) would be re-encrypted under the trusted target key, and so vouched for.
///
/// A key is allowed when it is the target key, or one of the pinned `keys`
/// (`--source-kms-key`; a multi-Region key's replicas in other Regions too), or in one of the
/// `accounts` (`--source-kms-account`, plus the target key's account unless keys are pinned).
/// Only key ARNs match, and only in the target key's partition; KMS answers with key ARNs.
#[derive(Debug, Clone)]
pub struct SourceKeyPolicy {
    /// Always allowed: it is the key everything is re-keyed to, so trusted already.
    target: KeyArn,
    keys: Vec<KeyArn>,
    accounts: BTreeSet<String>,
}

impl SourceKeyPolicy {
    /// `target` and `keys` are key ARNs (as DescribeKey returns them); `accounts` widen the
    /// policy. No `keys`: the target's account is allowed; some: only those keys (plus the
    /// target, plus `accounts`).
    pub fn new(
        target: &str,
        keys: &[String],
        accounts: &[String],
    ) -> Result<Self, SourceKeyPolicyError> {
        let arn = |s: &String| {
            KeyArn::parse(s).ok_or_else(|| SourceKeyPolicyError::NotAKeyArn(s.clone()))
        };
        let target = arn(&target.to_owned())?;
        let keys = keys.iter().map(arn).collect::<Result<Vec<_>, _>>()?;
        let mut set = BTreeSet::new();
        for a in accounts {
            if !is_account_id(a) {
                return Err(SourceKeyPolicyError::NotAnAccountId(a.clone()));
            }
            set.insert(a.clone());
        }
        if keys.is_empty() {
            set.insert(target.account.clone());
        }
        Ok(Self {
            target,
            keys,
            accounts: set,
        })
    }

    /// Whether a data key under `arn` (a key ARN, as KMS names the key it used) may be
    /// unwrapped.
    pub fn allows(&self, arn: &str) -> bool {
        let Some(k) = KeyArn::parse(arn) else {
            return false;
        };
        k.partition == self.target.partition
            && (k.same_key(&self.target)
                || self.keys.iter().any(|p| p.same_key(&k))
                || self.accounts.contains(&k.account))
    }

    /// The one key Decrypt can be pinned to (its `KeyId`), so KMS itself refuses other blobs:
    /// when exactly one key is pinned and no account is allowed.
    pub fn pinned_key(&self) -> Option<String> {
        match &self.keys[..] {
            [only] if self.accounts.is_empty() => Some(only.to_arn()),
            _ => None,
        }
    }

    fn target_arn(&self) -> String {
        self.target.to_arn()
    }

    /// `Ok` when KMS used an allowed key; else the refusal naming the key and the flag.
    fn check(&self, operation: &str, used: Option<&str>) -> Result<(), KmsError> {
        match used {
            Some(arn) if self.allows(arn) => Ok(()),
            Some(arn) => {
                let flags = match KeyArn::parse(arn) {
                    Some(k) => format!(
                        "--source-kms-key {arn} allows this key, --source-kms-account {} its account",
                        k.account
                    ),
                    None => format!("--source-kms-key {arn} allows this key"),
                };
                Err(KmsError::new(
                    KmsErrorKind::SourceKeyNotAllowed,
                    format!(
                        "{operation}: the data key is under KMS key {arn}, not an allowed source key \
                         ({self}); {flags}"
                    ),
                ))
            }
            None => Err(KmsError::new(
                KmsErrorKind::SourceKeyNotAllowed,
                format!("{operation}: KMS did not say which key it used; refused ({self})"),
            )),
        }
    }

    /// The refusal of a blob that is under neither the pinned key nor the target (KMS does not
    /// say which key it is under).
    fn refuse_unnamed(&self, operation: &str, kms: &KmsError) -> KmsError {
        KmsError::new(
            KmsErrorKind::SourceKeyNotAllowed,
            format!(
                "{operation}: the data key is not under an allowed source key ({self}): KMS \
                 refused it pinned to them ({kms}); --source-kms-key KEY allows another key"
            ),
        )
    }
}

impl fmt::Display for SourceKeyPolicy {
    /// `allowed: the target key arn:…, keys arn:…, accounts 1234…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "allowed: the target key {}", self.target.to_arn())?;
        if !self.keys.is_empty() {
            let keys: Vec<String> = self.keys.iter().map(KeyArn::to_arn).collect();
            write!(f, ", keys {}", keys.join(" "))?;
        }
        if !self.accounts.is_empty() {
            let accounts: Vec<&str> = self.accounts.iter().map(String::as_str).collect();
            write!(f, ", keys of account(s) {}", accounts.join(" "))?;
        }
        Ok(())
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

#[cfg(test)]
mod policy_tests {
    use super::*;

    const TARGET: &str =
        "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    const PINNED: &str =
        "arn:aws:kms:us-east-1:444455556666:key/0987dcba-09fe-87dc-65ba-ab0987654321";
    const MRK: &str = "arn:aws:kms:us-east-1:444455556666:key/mrk-1234abcd12ab34cd56ef1234567890ab";

    fn policy(keys: &[&str], accounts: &[&str]) -> SourceKeyPolicy {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        SourceKeyPolicy::new(TARGET, &owned(keys), &owned(accounts)).expect("policy")
    }

    /// (policy keys, policy accounts, ARN KMS answered with, allowed?, why).
    type Case = (
        &'static [&'static str],
        &'static [&'static str],
        &'static str,
        bool,
        &'static str,
    );

    const CASES: &[Case] = &[
        // Default: the target key's account.
        (&[], &[], TARGET, true, "the target itself"),
        (
            &[],
            &[],
            "arn:aws:kms:us-east-1:111122223333:key/other",
            true,
            "same account",
        ),
        (
            &[],
            &[],
            "arn:aws:kms:eu-west-1:111122223333:key/other",
            true,
            "same account, other Region",
        ),
        (
            &[],
            &[],
            "arn:aws:kms:us-east-1:444455556666:key/other",
            false,
            "foreign account",
        ),
        (
            &[],
            &[],
            "arn:aws-cn:kms:cn-north-1:111122223333:key/other",
            false,
            "other partition",
        ),
        (
            &[],
            &[],
            "arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            false,
            "the target's id in another partition",
        ),
        (
            &[],
            &[],
            "arn:aws:kms:us-east-1:111122223333:alias/legacy",
            false,
            "an alias ARN never matches",
        ),
        (&[], &[], "alias/legacy", false, "an alias never matches"),
        (
            &[],
            &[],
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            false,
            "a bare key id never matches",
        ),
        (
            &[],
            &[],
            "arn:aws:kms:us-east-1:111122223333:key/",
            false,
            "no key id",
        ),
        (
            &[],
            &[],
            "arn:aws:kms:us-east-1:11112222333:key/x",
            false,
            "11-digit account",
        ),
        (
            &[],
            &[],
            "arn:aws:s3:us-east-1:111122223333:key/x",
            false,
            "not a KMS ARN",
        ),
        (&[], &[], "", false, "empty"),
        // Pinned keys: only those (and the target).
        (&[PINNED], &[], PINNED, true, "the pinned key"),
        (&[PINNED], &[], TARGET, true, "the target is always allowed"),
        (
            &[PINNED],
            &[],
            "arn:aws:kms:us-east-1:111122223333:key/other",
            false,
            "pinning narrows: not the target's account",
        ),
        (
            &[PINNED],
            &[],
            "arn:aws:kms:us-east-1:444455556666:key/other",
            false,
            "another key of the pinned key's account",
        ),
        (
            &[PINNED],
            &[],
            "arn:aws:kms:eu-west-1:444455556666:key/0987dcba-09fe-87dc-65ba-ab0987654321",
            false,
            "a single-Region key's id in another Region is another key",
        ),
        (
            &[MRK],
            &[],
            "arn:aws:kms:eu-west-1:444455556666:key/mrk-1234abcd12ab34cd56ef1234567890ab",
            true,
            "a replica of a pinned multi-Region key",
        ),
        (
            &[MRK],
            &[],
            "arn:aws:kms:eu-west-1:999999999999:key/mrk-1234abcd12ab34cd56ef1234567890ab",
            false,
            "a multi-Region id in another account",
        ),
        (
            &[MRK],
            &[],
            "arn:aws-cn:kms:cn-north-1:444455556666:key/mrk-1234abcd12ab34cd56ef1234567890ab",
            false,
            "a multi-Region id in another partition",
        ),
        (
            &[PINNED, MRK],
            &[],
            MRK,
            true,
            "the second of two pinned keys",
        ),
        // Accounts widen.
        (
            &[],
            &["999999999999"],
            "arn:aws:kms:us-east-1:999999999999:key/x",
            true,
            "an added account",
        ),
        (
            &[],
            &["999999999999"],
            "arn:aws:kms:us-east-1:111122223333:key/x",
            true,
            "an added account keeps the target's",
        ),
        (
            &[],
            &["999999999999"],
            "arn:aws:kms:us-east-1:444455556666:key/x",
            false,
            "an account not added",
        ),
        (
            &[],
            &["999999999999"],
            "arn:aws-cn:kms:cn-north-1:999999999999:key/x",
            false,
            "an added account in another partition",
        ),
        (
            &[PINNED],
            &["999999999999"],
            "arn:aws:kms:us-east-1:999999999999:key/x",
            true,
            "pinned key plus an account",
        ),
        (
            &[PINNED],
            &["999999999999"],
            "arn:aws:kms:us-east-1:111122223333:key/x",
            false,
            "pinned key plus an account, not the target's",
        ),
    ];

    #[test]
    fn source_key_policy_table() {
        for (keys, accounts, arn, want, why) in CASES {
            let p = policy(keys, accounts);
            assert_eq!(p.allows(arn), *want, "{why}: {arn} under {p}");
            // `check` agrees with `allows`, and a refusal says what allows the key.
            match p.check("Decrypt", Some(arn)) {
                Ok(()) => assert!(*want, "{why}"),
                Err(e) => {
                    assert!(!*want, "{why}");
                    assert_eq!(e.kind, KmsErrorKind::SourceKeyNotAllowed);
                    assert!(e.message.contains(arn), "{}", e.message);
                    assert!(e.message.contains("--source-kms-key"), "{}", e.message);
                }
            }
        }
    }

    #[test]
    fn an_answer_without_a_key_id_is_refused() {
        let e = policy(&[], &[])
            .check("Decrypt", None)
            .expect_err("refused");
        assert_eq!(e.kind, KmsErrorKind::SourceKeyNotAllowed);
    }

    #[test]
    fn decrypt_is_pinned_only_to_a_single_pinned_key() {
        assert_eq!(policy(&[PINNED], &[]).pinned_key().as_deref(), Some(PINNED));
        assert_eq!(policy(&[], &[]).pinned_key(), None);
        assert_eq!(policy(&[PINNED, MRK], &[]).pinned_key(), None);
        assert_eq!(policy(&[PINNED], &["999999999999"]).pinned_key(), None);
    }

    #[test]
    fn a_policy_takes_key_arns_and_account_ids_only() {
        let s = |v: &str| vec![v.to_owned()];
        assert_eq!(
            SourceKeyPolicy::new("alias/target", &[], &[]).err(),
            Some(SourceKeyPolicyError::NotAKeyArn("alias/target".into()))
        );
        assert_eq!(
            SourceKeyPolicy::new(TARGET, &s("1234abcd"), &[]).err(),
            Some(SourceKeyPolicyError::NotAKeyArn("1234abcd".into()))
        );
        assert_eq!(
            SourceKeyPolicy::new(TARGET, &[], &s("12345")).err(),
            Some(SourceKeyPolicyError::NotAnAccountId("12345".into()))
        );
    }
}
