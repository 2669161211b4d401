//! `s3cse get` / `put` / `inspect`: one object in S3.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use clap::Args;
use s3cse::client::parallel::ParallelGet;
use s3cse::client::{ByteRange, ClientError, GetOptions, ObjectAttributes, PutRequest, S3Cse};
use s3cse::codec::{CodecError, DecryptPolicy, WriteFormat};
use s3cse::keyring::Keyring;

use super::aws::{AwsArgs, parse_s3_url, sdk_config};
use super::keys::{KeyArgs, context_of};
use super::offline::{FormatArg, temp_beside};
use super::{CliResult, Failure, parse_kv, print_out};

#[derive(Args)]
pub struct GetArgs {
    /// The object: s3://BUCKET/KEY.
    url: String,
    /// Write the plaintext here (under a temporary name, renamed only after authentication);
    /// stdout when absent (released only after authentication).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// A plaintext byte range, e.g. bytes=0-1023 (unauthenticated: needs --allow-legacy).
    #[arg(long, value_name = "bytes=A-B")]
    range: Option<String>,
    /// Read legacy formats and ranges (unauthenticated CBC, legacy key wraps).
    #[arg(long)]
    allow_legacy: bool,
    /// Pass objects that are not client-side encrypted through unchanged instead of failing.
    #[arg(long)]
    allow_plaintext: bool,
    /// Encryption context the object must carry (kms+context), k=v, repeatable.
    #[arg(long = "context", value_parser = parse_kv, value_name = "K=V")]
    context: Vec<(String, String)>,
    /// `require`: refuse every object that is not V3 key-committing (exit 1,
    /// CommitmentRequired), before any key is unwrapped; `allow` (default) reads every format.
    #[arg(long, value_enum, default_value = "allow", value_name = "POLICY")]
    commitment: super::goal::CommitmentArg,
    /// Objects larger than this are read as parallel ranged GETs of this many MiB each (GCM:
    /// decrypted in parallel, the whole object's tag still checked before FILE appears).
    #[arg(long, default_value_t = 8, value_name = "MiB")]
    part_size_mib: usize,
    /// Ranged GETs in flight for a large object (1: one plain GET). Memory: about
    /// concurrency x part size.
    #[arg(long, default_value_t = 10, value_name = "N")]
    concurrency: usize,
    #[command(flatten)]
    version: VersionArgs,
    #[command(flatten)]
    keys: KeyArgs,
    #[command(flatten)]
    aws: AwsArgs,
}

/// `--version-id` and `--instruction-version-id` of `get`.
#[derive(Args)]
pub struct VersionArgs {
    /// Read this version of the object (versioned buckets) instead of the current one.
    #[arg(long, value_name = "ID")]
    version_id: Option<String>,
    /// When the envelope is in `<key>.instruction`: read that version of the instruction file.
    /// By default the current one is read, whatever version of the object is asked for (S3
    /// links no version of the instruction file to a version of its object).
    #[arg(long, value_name = "ID")]
    instruction_version_id: Option<String>,
}

#[derive(Args)]
pub struct PutArgs {
    /// The plaintext file, or - for stdin.
    input: PathBuf,
    /// The destination: s3://BUCKET/KEY.
    url: String,
    /// Envelope format: v2 (AES-GCM, kms+context) or v3 (key-committing).
    #[arg(long, value_enum, default_value = "v2")]
    format: FormatArg,
    /// Encryption context entries (kms+context) or material description (raw keys), k=v.
    #[arg(long = "context", value_parser = parse_kv, value_name = "K=V")]
    context: Vec<(String, String)>,
    /// Content-Type of the object.
    #[arg(long, value_name = "TYPE")]
    content_type: Option<String>,
    /// User metadata, k=v, repeatable.
    #[arg(long = "metadata", value_parser = parse_kv, value_name = "K=V")]
    metadata: Vec<(String, String)>,
    /// Object tags, k=v, repeatable.
    #[arg(long = "tag", value_parser = parse_kv, value_name = "K=V")]
    tags: Vec<(String, String)>,
    /// Multipart part size in MiB (objects up to one part go in a single PUT).
    #[arg(long, default_value_t = 8, value_name = "MiB")]
    part_size_mib: usize,
    /// Write the envelope into `<KEY>.instruction` (marked x-amz-crypto-instr-file), as Java,
    /// Ruby and .NET can; the object keeps only what the format puts there (V3: x-amz-c/d/i).
    #[arg(long)]
    instruction_file: bool,
    #[command(flatten)]
    keys: KeyArgs,
    #[command(flatten)]
    aws: AwsArgs,
}

#[derive(Args)]
pub struct InspectArgs {
    /// The object: s3://BUCKET/KEY.
    url: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Inspect this version of the object (versioned buckets) instead of the current one. An
    /// envelope in an instruction file is read from the current `<key>.instruction`.
    #[arg(long, value_name = "ID")]
    version_id: Option<String>,
    #[command(flatten)]
    aws: AwsArgs,
}

fn client_error(url: &str, e: ClientError) -> Failure {
    match e {
        ClientError::Codec(c) => Failure::failed(anyhow!("{url}: {} ({c})", c.class().code())),
        ClientError::S3 {
            status: Some(403), ..
        } => Failure::usage(anyhow!("{url}: access denied: {e}")),
        other => Failure::failed(anyhow!("{url}: {other}")),
    }
}

pub async fn get(a: GetArgs) -> CliResult {
    let (bucket, key) = parse_s3_url(&a.url, true)?;
    let range = a
        .range
        .as_deref()
        .map(str::parse::<ByteRange>)
        .transpose()
        .map_err(|e| Failure::usage(anyhow!(e)))?;
    let conf = sdk_config().await;
    let keyring = a.keys.keyring(true).await?;
    let policy = DecryptPolicy {
        allow_legacy: a.allow_legacy,
        delayed_authentication: false,
        expected_context: (!a.context.is_empty()).then(|| context_of(&a.context)),
        require_commitment: a.commitment.required(),
    };
    let opts = GetOptions {
        range,
        allow_plaintext: a.allow_plaintext,
        version_id: a.version.version_id.clone(),
        instruction_version_id: a.version.instruction_version_id.clone(),
    };
    let s3 = a.aws.s3_client(&conf).await;
    let download = ParallelGet {
        part_size: a.part_size_mib.max(1) << 20,
        concurrency: a.concurrency.max(1),
    };
    match &a.output {
        None => {
            let client = S3Cse::new(s3, keyring)
                .with_policy(policy)
                .with_download(download);
            let mut out = tokio::io::stdout();
            client
                .get_to(&bucket, &key, &opts, &mut out)
                .await
                .map_err(|e| match &e {
                    ClientError::Io(io) | ClientError::Codec(CodecError::Io(io))
                        if io.kind() == std::io::ErrorKind::BrokenPipe =>
                    {
                        Failure::closed_stdout()
                    }
                    _ => client_error(&a.url, e),
                })?;
        }
        Some(path) => {
            // The temporary file is not the destination: stream into it and rename after the tag.
            let policy = DecryptPolicy {
                delayed_authentication: true,
                ..policy
            };
            let client = S3Cse::new(s3, keyring)
                .with_policy(policy)
                .with_download(download);
            let (tmp, file) = temp_beside(path)?;
            let mut dst = tokio::fs::File::from_std(file);
            client
                .get_to(&bucket, &key, &opts, &mut dst)
                .await
                .map_err(|e| client_error(&a.url, e))?;
            dst.sync_all()
                .await
                .map_err(|e| Failure::failed(anyhow!(e)))?;
            tmp.persist(path)
                .with_context(|| format!("renaming into {}", path.display()))
                .map_err(Failure::failed)?;
        }
    }
    Ok(())
}

pub async fn put(a: PutArgs) -> CliResult {
    let (bucket, key) = parse_s3_url(&a.url, true)?;
    let format = match a.format {
        FormatArg::V2 => WriteFormat::V2,
        FormatArg::V3 => WriteFormat::V3,
        FormatArg::V1 => {
            return Err(Failure::usage(anyhow!(
                "put writes v2 or v3; legacy v1 is for `encrypt --format v1` only"
            )));
        }
    };
    let keyring: Keyring = a.keys.keyring(false).await?;
    if keyring.is_empty() {
        return Err(Failure::usage(anyhow!(
            "give a key to encrypt with: --kms-key-id, --aes-key-file or --rsa-key-file"
        )));
    }
    let conf = sdk_config().await;
    let client =
        S3Cse::new(a.aws.s3_client(&conf).await, keyring).with_part_size(a.part_size_mib << 20);
    // One upload: a budget that never holds it back, whatever --part-size-mib.
    let budget = client.upload_buffer_bytes();
    let client = client.with_buffer_budget(budget);
    let tagging = (!a.tags.is_empty()).then(|| {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        a.tags
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&")
    });
    let mut req = PutRequest {
        bucket,
        key,
        format,
        context: context_of(&a.context),
        metadata: a
            .metadata
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        attrs: ObjectAttributes {
            content_type: a.content_type.clone(),
            ..Default::default()
        },
        tagging,
        instruction_file: a.instruction_file,
        ..Default::default()
    };
    let summary = if a.input.as_os_str() == "-" {
        client.put_from(&req, &mut tokio::io::stdin()).await
    } else {
        let mut f = tokio::fs::File::open(&a.input)
            .await
            .with_context(|| format!("opening {}", a.input.display()))
            .map_err(Failure::usage)?;
        req.plaintext_len = f
            .metadata()
            .await
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        client.put_from(&req, &mut f).await
    }
    .map_err(|e| match e {
        ClientError::Codec(CodecError::Keyring(k)) => Failure::usage(anyhow!("{}: {k}", a.url)),
        other => client_error(&a.url, other),
    })?;
    eprintln!(
        "s3cse: wrote {} ({} bytes, {}, {} part{}, etag {})",
        a.url,
        summary.plaintext_len,
        summary.envelope.format_name(),
        summary.parts,
        if summary.parts == 1 { "" } else { "s" },
        summary.etag.as_deref().unwrap_or("-")
    );
    Ok(())
}

/// `781.31 KiB (800,064 bytes)`: readable, and exact.
fn size(n: u64) -> String {
    if n < 1024 {
        return format!("{n} bytes");
    }
    format!(
        "{} ({} bytes)",
        super::term::bytes(n),
        super::term::count(n)
    )
}

pub async fn inspect(a: InspectArgs) -> CliResult {
    let (bucket, key) = parse_s3_url(&a.url, true)?;
    let conf = sdk_config().await;
    let client = S3Cse::new(a.aws.s3_client(&conf).await, Keyring::new());
    let i = client
        .inspect_version(&bucket, &key, a.version_id.as_deref())
        .await
        .map_err(|e| client_error(&a.url, e))?;
    if a.json {
        let json = serde_json::to_string_pretty(&i).map_err(|e| Failure::failed(anyhow!(e)))?;
        return print_out(&format!("{json}\n"));
    }
    // Built whole, then written once: a closed stdout ends the command quietly.
    let mut t = String::new();
    let _ = writeln!(t, "object:            s3://{}/{}", i.bucket, i.key);
    let _ = writeln!(t, "etag:              {}", i.etag.as_deref().unwrap_or("-"));
    if let Some(v) = &i.version_id {
        let _ = writeln!(t, "version id:        {v}");
    }
    if !i.encrypted {
        let _ = writeln!(
            t,
            "encrypted:         no (no client-side encryption envelope)"
        );
        let _ = writeln!(t, "size:              {}", size(i.stored_length));
        return print_out(&t);
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(
        t,
        "format:            {}{}",
        opt(&i.format),
        if i.legacy {
            "  (LEGACY: re-key with `s3cse rekey`)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        t,
        "envelope:          {} in {}",
        opt(&i.version),
        opt(&i.envelope_location)
    );
    let _ = writeln!(t, "content cipher:    {}", opt(&i.content_cipher_name));
    let _ = writeln!(t, "key wrap:          {}", opt(&i.key_wrap));
    if let Some(k) = &i.kms_key_id {
        let _ = writeln!(t, "kms key id:        {k}");
    }
    if !i.encryption_context.is_empty() {
        let _ = writeln!(
            t,
            "encryption context: {}",
            s3cse::envelope::context_json(&i.encryption_context)
        );
    }
    if !i.material_description.is_empty() {
        let _ = writeln!(
            t,
            "material desc:     {}",
            s3cse::envelope::context_json(&i.material_description)
        );
    }
    let _ = writeln!(t, "stored size:       {}", size(i.stored_length));
    let _ = writeln!(
        t,
        "plaintext size:    {}",
        i.plaintext_length
            .map_or("unknown (CBC, not recorded)".into(), size)
    );
    print_out(&t)
}
