//! Flags shared by several commands (issue 13): the format and place `rekey` and `audit` call
//! current (`--target-format`, `--keep-instruction-files`), and the commitment policy of every
//! reader (`--commitment`).

use clap::{Args, ValueEnum};
use s3cse::rekey::{Goal, TargetFormat};

/// `--target-format`.
#[derive(Clone, Copy, Debug, ValueEnum, Default, PartialEq, Eq)]
pub enum FormatArg {
    /// V2 kms+context AES-GCM (V3 objects under the target count as current too).
    #[default]
    V2,
    /// V3 key-committing (suite 115) kms+context: V2 objects are rewritten.
    V3,
}

/// `--commitment`: AWS's commitment policy on the read side.
#[derive(Clone, Copy, Debug, ValueEnum, Default, PartialEq, Eq)]
pub enum CommitmentArg {
    /// Read V1, V2 and V3 objects (within the legacy opt-in).
    #[default]
    Allow,
    /// Refuse every object that is not V3 key-committing (error class CommitmentRequired),
    /// as AWS's 4.x clients do at REQUIRE_ENCRYPT_REQUIRE_DECRYPT.
    Require,
}

impl CommitmentArg {
    pub fn required(self) -> bool {
        self == CommitmentArg::Require
    }
}

/// What counts as current, for `rekey` and `audit` alike.
#[derive(Args, Debug, Clone, Default)]
pub struct GoalArgs {
    /// The format objects are brought to: v2 (kms+context AES-GCM; V3 under the target counts
    /// as current too) or v3 (key-committing; V2 objects are rewritten under a fresh data key).
    #[arg(long, value_enum, default_value = "v2")]
    target_format: FormatArg,
    /// Envelopes in `<key>.instruction` stay there: one under the target key counts as current,
    /// one under another key is rotated by rewriting only the instruction file (conditional on
    /// its ETag), the data object untouched. Without it they are moved into the metadata.
    #[arg(long)]
    keep_instruction_files: bool,
}

impl GoalArgs {
    pub fn goal(&self) -> Goal {
        Goal {
            format: match self.target_format {
                FormatArg::V2 => TargetFormat::V2,
                FormatArg::V3 => TargetFormat::V3,
            },
            keep_instruction_files: self.keep_instruction_files,
        }
    }
}
