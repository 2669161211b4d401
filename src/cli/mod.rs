//! Command-line front end: clap structs (what was typed) -> validated configuration -> the library.
//!
//! Exit codes (documented in the README and `--help`):
//! - 0: success;
//! - 1: the object(s) could not be decrypted / encrypted / migrated (the message names the object
//!   and the reason class);
//! - 2: usage, configuration or access error before any work was done.

mod audit;
mod aws;
mod goal;
mod keys;
mod live;
mod object;
mod offline;
mod rekey;
mod term;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code: an object could not be processed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: usage, configuration or access error.
pub const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "s3cse",
    version,
    about = "Amazon S3 client-side encryption: read every format, write V2/V3, re-key legacy buckets",
    after_help = "Exit codes: 0 success; 1 an object could not be processed (the message says which and why); 2 usage, configuration or access error."
)]
struct Cli {
    #[command(flatten)]
    output: term::OutputArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decrypt an object exported from S3 (body + its user metadata), offline.
    Decrypt(offline::DecryptArgs),
    /// Encrypt a file into an object body + the user metadata to store with it, offline.
    Encrypt(offline::EncryptArgs),
    /// Download and decrypt an object (any format AWS SDKs or aioboto3 wrote).
    Get(object::GetArgs),
    /// Encrypt and upload a file (V2 kms+context AES-GCM by default, or V3).
    Put(object::PutArgs),
    /// Show how an object is encrypted, from its metadata only (no key needed).
    Inspect(object::InspectArgs),
    /// Re-key a bucket of legacy objects to V2 kms+context AES-GCM: scan, then work (resumable).
    Rekey(rekey::RekeyArgs),
    /// List a bucket into the state file only (the first half of `rekey`).
    Scan(rekey::ScanArgs),
    /// Drain the state file's queue (the second half of `rekey`).
    Work(rekey::WorkArgs),
    /// Progress of a state file: counts by state, format and action; bytes; rate and ETA.
    Status(rekey::StatusArgs),
    /// One row per object, S3 Batch Operations completion-report columns (CSV or JSON lines).
    Report(rekey::ReportArgs),
    /// Census before retiring a key: which objects depend on the target KMS key only (no state
    /// file; exit 0 all current or plaintext, 1 some remain).
    Audit(audit::AuditArgs),
    /// Print a shell completion script to stdout (e.g. `s3cse completions bash >
    /// /usr/share/bash-completion/completions/s3cse`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout (`s3cse man > /usr/share/man/man1/s3cse.1`).
    Man,
}

/// `s3cse completions SHELL`.
fn completions(shell: clap_complete::Shell) -> CliResult {
    use clap::CommandFactory as _;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "s3cse", &mut out);
    print_out(&String::from_utf8_lossy(&out))
}

/// `s3cse man`.
fn man_page() -> CliResult {
    use clap::CommandFactory as _;
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .map_err(|e| Failure::failed(anyhow::Error::new(e).context("rendering the man page")))?;
    print_out(&String::from_utf8_lossy(&out))
}

/// An error with the exit code it maps to.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: EXIT_USAGE,
            error: error.into(),
        }
    }

    pub fn failed(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: EXIT_FAILED,
            error: error.into(),
        }
    }

    /// Stdout was closed by its reader (`s3cse report | head`): not a failure. The command
    /// stops writing and ends quietly with exit 0, as `cat` or `grep` do (they die of SIGPIPE,
    /// which Rust programs ignore, so every write reports `BrokenPipe` instead).
    pub fn closed_stdout() -> Self {
        Self {
            code: 0,
            error: anyhow::anyhow!("stdout closed"),
        }
    }

    /// A write to stdout failed: [`Failure::closed_stdout`] if its reader went away.
    pub fn stdout(error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            Self::closed_stdout()
        } else {
            Self::failed(anyhow::Error::new(error).context("writing to stdout"))
        }
    }
}

/// Writes `text` to stdout and flushes it; a closed stdout is [`Failure::closed_stdout`].
/// (`println!` would panic there.)
pub fn print_out(text: &str) -> CliResult {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Failure::stdout)
}

pub type CliResult<T = ()> = Result<T, Failure>;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let term = term::Term::new(&cli.output);
    term.init_logs();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("s3cse: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Decrypt(a) => offline::decrypt(a).await,
            Command::Encrypt(a) => offline::encrypt(a).await,
            Command::Get(a) => object::get(a).await,
            Command::Put(a) => object::put(a).await,
            Command::Inspect(a) => object::inspect(a).await,
            Command::Rekey(a) => rekey::rekey(a, &term).await,
            Command::Scan(a) => rekey::scan(a, &term).await,
            Command::Work(a) => rekey::work(a, &term).await,
            Command::Status(a) => rekey::status(a).await,
            Command::Report(a) => rekey::report(a).await,
            Command::Audit(a) => audit::audit(a).await,
            Command::Completions { shell } => completions(shell),
            Command::Man => man_page(),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A closed stdout (`| head`): nothing to say, and nobody to say it to.
        Err(f) if f.code == 0 => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("s3cse: error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

/// Parses `k=v` for `--context` and `--metadata`.
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}
