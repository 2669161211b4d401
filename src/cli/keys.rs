//! Key options shared by every command, and the keyring they build.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use s3cse::envelope::Context;
use s3cse::keyring::{AesMasterKey, AwsKms, Keyring, KmsKeyring, RsaMasterKey};

use super::{CliResult, Failure};

#[derive(Args, Debug, Clone, Default)]
pub struct KeyArgs {
    /// KMS key (id, ARN or alias/NAME) to encrypt with, and to pin decryption to. KMS is reached
    /// through the standard AWS configuration (AWS_REGION, AWS_ENDPOINT_URL[_KMS], profiles, ...).
    #[arg(long, env = "S3CSE_KMS_KEY_ID")]
    pub kms_key_id: Option<String>,
    /// AES master key file: 16/24/32 raw bytes, hex or base64. Repeatable: each is tried.
    #[arg(long = "aes-key-file", value_name = "FILE")]
    pub aes_key_files: Vec<PathBuf>,
    /// RSA key file, PEM (PKCS#8 or PKCS#1); private to decrypt, public is enough to encrypt.
    /// Repeatable: each is tried.
    #[arg(long = "rsa-key-file", value_name = "FILE")]
    pub rsa_key_files: Vec<PathBuf>,
}

impl KeyArgs {
    /// Builds the keyring. `kms` is the KMS client to use when a KMS key is configured or
    /// `kms_for_decrypt` asks for one anyway (to read KMS objects with no key id given).
    pub async fn keyring(&self, kms_for_decrypt: bool) -> CliResult<Keyring> {
        let mut ring = Keyring::new();
        for path in &self.aes_key_files {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading AES key file {}", path.display()))
                .map_err(Failure::usage)?;
            let key = AesMasterKey::from_file_bytes(&bytes)
                .with_context(|| format!("AES key file {}", path.display()))
                .map_err(Failure::usage)?;
            ring = ring.with_aes(key);
        }
        for path in &self.rsa_key_files {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading RSA key file {}", path.display()))
                .map_err(Failure::usage)?;
            let key = RsaMasterKey::from_pem(&pem)
                .with_context(|| format!("RSA key file {}", path.display()))
                .map_err(Failure::usage)?;
            ring = ring.with_rsa(key);
        }
        if self.kms_key_id.is_some() || kms_for_decrypt {
            let client = Arc::new(AwsKms::new(kms_client().await));
            ring = ring.with_kms(match &self.kms_key_id {
                Some(id) => KmsKeyring::new(client, id.clone()),
                None => KmsKeyring::any_key(client, None),
            });
        }
        Ok(ring)
    }
}

/// A KMS client from the standard AWS configuration chain.
pub async fn kms_client() -> aws_sdk_kms::Client {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    aws_sdk_kms::Client::new(&conf)
}

/// `--context k=v ...` as an encryption context.
pub fn context_of(pairs: &[(String, String)]) -> Context {
    pairs.iter().cloned().collect()
}
