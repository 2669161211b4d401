//! `s3cse decrypt` / `s3cse encrypt`: objects exported from S3 (body + user metadata), no S3.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use clap::{Args, ValueEnum};
use s3cse::codec::{self, CodecError, DecryptPolicy, WriteFormat};
use s3cse::envelope::{self, Detected, Metadata};
use tokio::io::AsyncWriteExt;

use super::keys::{KeyArgs, context_of};
use super::{CliResult, Failure, parse_kv};

#[derive(Args)]
pub struct DecryptArgs {
    /// The object's user metadata as S3 returns it: a JSON object of strings, keys without the
    /// `x-amz-meta-` prefix (a prefix, if present, is stripped).
    #[arg(long, value_name = "META.json")]
    metadata: PathBuf,
    /// The object body (ciphertext).
    #[arg(long, value_name = "CT")]
    input: PathBuf,
    /// Where the plaintext goes (`-` for stdout). Written under a temporary name and renamed only
    /// after authentication: on failure it is absent, never partial.
    #[arg(long, value_name = "PT")]
    output: PathBuf,
    /// The object's `<key>.instruction` file, when the envelope lives there.
    #[arg(long, value_name = "FILE")]
    instruction_file: Option<PathBuf>,
    /// Read legacy formats: V1, CBC content, AESWrap / RSA-OAEP-SHA256 / `kms` wraps.
    #[arg(long)]
    allow_legacy: bool,
    /// Encryption context the object must have been written with (kms+context), `k=v`, repeatable.
    #[arg(long = "context", value_parser = parse_kv, value_name = "K=V")]
    context: Vec<(String, String)>,
    /// `require`: refuse every object that is not V3 key-committing (exit 1,
    /// CommitmentRequired), before any key is unwrapped; `allow` (default) reads every format.
    #[arg(long, value_enum, default_value = "allow", value_name = "POLICY")]
    commitment: super::goal::CommitmentArg,
    #[command(flatten)]
    keys: KeyArgs,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// V2: AES-GCM, key wrapped kms+context (or AES/GCM, RSA-OAEP-SHA1 with raw keys).
    V2,
    /// V3: key-committing AES-GCM (suite 115).
    V3,
    /// Legacy V1: unauthenticated AES-CBC, raw AES (ECB) or RSA (PKCS#1) wrap. Needs --allow-legacy.
    V1,
}

#[derive(Args)]
pub struct EncryptArgs {
    /// The plaintext.
    #[arg(long, value_name = "PT")]
    input: PathBuf,
    /// Where the ciphertext (object body) goes.
    #[arg(long, value_name = "CT")]
    output: PathBuf,
    /// Where the user metadata to store with the object goes (JSON, keys without x-amz-meta-).
    #[arg(long, value_name = "META.json")]
    metadata_out: PathBuf,
    /// Envelope format to write.
    #[arg(long, value_enum, default_value = "v2")]
    format: FormatArg,
    /// Encryption context entries (kms+context) or material description (raw keys), `k=v`.
    #[arg(long = "context", value_parser = parse_kv, value_name = "K=V")]
    context: Vec<(String, String)>,
    /// Allow writing the legacy V1 format.
    #[arg(long)]
    allow_legacy: bool,
    /// Also write the envelope's key fields to `<OUTPUT>.instruction` (the body of
    /// `<KEY>.instruction`, to upload with the marker metadata `x-amz-crypto-instr-file: ""`);
    /// the metadata file then holds only what the format keeps on the object.
    #[arg(long)]
    instruction_file: bool,
    #[command(flatten)]
    keys: KeyArgs,
}

/// Reads user metadata JSON, lowercasing keys and stripping a stray `x-amz-meta-` prefix.
pub fn read_metadata(path: &Path) -> CliResult<Metadata> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading metadata {}", path.display()))
        .map_err(Failure::usage)?;
    let raw: std::collections::BTreeMap<String, serde_json::Value> = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a JSON object", path.display()))
        .map_err(Failure::usage)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let k = k.to_ascii_lowercase();
            let k = k
                .strip_prefix(s3cse::consts::USER_META_PREFIX)
                .map(str::to_owned)
                .unwrap_or(k);
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect())
}

pub async fn decrypt(a: DecryptArgs) -> CliResult {
    let meta = read_metadata(&a.metadata)?;
    let detected = envelope::detect(&meta).map_err(|e| Failure::failed(anyhow!(e)))?;
    let env = match (detected, &a.instruction_file) {
        (Detected::Complete(env), _) => env,
        (Detected::NoEnvelopeInMetadata, None) => {
            return Err(Failure::failed(anyhow!(
                "no encryption envelope in the metadata: the object is plaintext, or its envelope is in an instruction file (give --instruction-file)"
            )));
        }
        (Detected::V3InstructionFile(_), None) => {
            return Err(Failure::failed(anyhow!(
                "the V3 envelope's key is in the object's instruction file: give --instruction-file"
            )));
        }
        (det, Some(path)) => {
            let json = std::fs::read(path)
                .with_context(|| format!("reading instruction file {}", path.display()))
                .map_err(Failure::usage)?;
            det.complete_with_instruction_file(&meta, &json)
                .map_err(|e| Failure::failed(anyhow!(e)))?
        }
    };
    let keyring = a.keys.keyring(env.wrap.is_kms()).await?;
    let policy = DecryptPolicy {
        allow_legacy: a.allow_legacy,
        delayed_authentication: false,
        expected_context: (!a.context.is_empty()).then(|| context_of(&a.context)),
        require_commitment: a.commitment.required(),
    };
    // Before the key is unwrapped or a byte read: the commitment policy.
    codec::check_commitment(&env, &policy)
        .map_err(|e| object_error(&format!("{} ({})", a.input.display(), env.format_name()), e))?;
    let mut src = tokio::fs::File::open(&a.input)
        .await
        .with_context(|| format!("opening {}", a.input.display()))
        .map_err(Failure::usage)?;
    let what = format!("{} ({})", a.input.display(), env.format_name());
    if a.output.as_os_str() == "-" {
        let mut out = tokio::io::stdout();
        codec::decrypt_stream(&env, &keyring, &policy, &mut src, &mut out)
            .await
            .map_err(|e| match &e {
                CodecError::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe => {
                    Failure::closed_stdout()
                }
                _ => object_error(&what, e),
            })?;
        return Ok(());
    }
    // Into a temporary file beside the destination, renamed only after authentication: the
    // temporary file is not the destination, so delayed authentication is safe here and saves a copy.
    let (tmp, std_file) = temp_beside(&a.output)?;
    let mut dst = tokio::fs::File::from_std(std_file);
    let policy = DecryptPolicy {
        delayed_authentication: true,
        ..policy
    };
    codec::decrypt_stream(&env, &keyring, &policy, &mut src, &mut dst)
        .await
        .map_err(|e| object_error(&what, e))?;
    dst.sync_all()
        .await
        .map_err(|e| Failure::failed(anyhow!(e)))?;
    tmp.persist(&a.output)
        .with_context(|| format!("renaming into {}", a.output.display()))
        .map_err(Failure::failed)?;
    Ok(())
}

pub async fn encrypt(a: EncryptArgs) -> CliResult {
    let keyring = a.keys.keyring(false).await?;
    if keyring.is_empty() {
        return Err(Failure::usage(anyhow!(
            "give a key to encrypt with: --kms-key-id, --aes-key-file or --rsa-key-file"
        )));
    }
    let mut src = tokio::fs::File::open(&a.input)
        .await
        .with_context(|| format!("opening {}", a.input.display()))
        .map_err(Failure::usage)?;
    let len = src
        .metadata()
        .await
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    let ctx = context_of(&a.context);
    let enc = match a.format {
        FormatArg::V1 if !a.allow_legacy => {
            return Err(Failure::usage(anyhow!(
                "--format v1 writes unauthenticated legacy objects: add --allow-legacy"
            )));
        }
        FormatArg::V1 => codec::new_legacy_v1_encryption(&keyring, len),
        FormatArg::V2 => codec::new_encryption(&keyring, WriteFormat::V2, &ctx, len).await,
        FormatArg::V3 => codec::new_encryption(&keyring, WriteFormat::V3, &ctx, len).await,
    }
    .map_err(|e| object_error(&a.input.display().to_string(), e))?;
    let (tmp, std_file) = temp_beside(&a.output)?;
    let mut dst = tokio::fs::File::from_std(std_file);
    let (env, _) = codec::encrypt_stream(enc, &mut src, &mut dst)
        .await
        .map_err(|e| object_error(&a.input.display().to_string(), e))?;
    dst.sync_all()
        .await
        .map_err(|e| Failure::failed(anyhow!(e)))?;
    let object_meta = if a.instruction_file {
        let (object_meta, json) = env.to_instruction_file();
        let mut path = a.output.clone().into_os_string();
        path.push(s3cse::consts::INSTRUCTION_SUFFIX);
        std::fs::write(&path, json)
            .with_context(|| format!("writing {}", Path::new(&path).display()))
            .map_err(Failure::usage)?;
        object_meta
    } else {
        env.to_metadata()
    };
    let meta = serde_json::to_vec_pretty(&object_meta).map_err(|e| Failure::failed(anyhow!(e)))?;
    let mut mf = tokio::fs::File::create(&a.metadata_out)
        .await
        .with_context(|| format!("creating {}", a.metadata_out.display()))
        .map_err(Failure::usage)?;
    mf.write_all(&meta)
        .await
        .map_err(|e| Failure::failed(anyhow!(e)))?;
    tmp.persist(&a.output)
        .with_context(|| format!("renaming into {}", a.output.display()))
        .map_err(Failure::failed)?;
    Ok(())
}

/// A temporary file in the destination's directory (so the final rename is atomic).
pub fn temp_beside(dest: &Path) -> CliResult<(tempfile::TempPath, std::fs::File)> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".s3cse-")
        .suffix(".partial")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))
        .map_err(Failure::usage)?;
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(|e| Failure::usage(anyhow!(e)))?;
    Ok((tmp.into_temp_path(), file))
}

/// An object-level failure: exit 1, naming the object and the reason class.
pub fn object_error(what: &str, e: CodecError) -> Failure {
    Failure::failed(anyhow!("{what}: {} ({e})", e.class().code()))
}
