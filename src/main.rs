//! The `s3cse` command line. `anyhow` lives here only; the library has typed errors.
#![forbid(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
