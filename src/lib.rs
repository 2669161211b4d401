//! # s3cse: Amazon S3 client-side encryption, every format, in Rust
//!
//! Reads every envelope the AWS SDKs and aioboto3 have written (V1 `x-amz-key`, V2 `x-amz-key-v2`,
//! V3 key-committing), writes V2 `kms+context` AES-GCM and V3, and re-keys whole buckets of legacy
//! objects to KMS AES-GCM.
//!
//! # Layout
//! Data flows one way: bytes + metadata -> [`envelope`] -> [`keyring`] unwraps the content key ->
//! [`content`] cipher -> plaintext -> [`content`] cipher (new) -> [`keyring`] wraps -> [`envelope`]
//! -> bytes + metadata.
//!
//! - [`consts`]: wire constants (metadata keys, algorithm names, suite ids), in one place.
//! - [`secret`]: `SecretBytes`, the zeroizing, never-printed home of every key.
//! - [`envelope`]: pure codec, S3 user metadata / instruction file JSON <-> typed [`envelope::Envelope`].
//! - [`content`]: streaming content ciphers (CBC, GCM, committing GCM, CTR for ranges). No I/O.
//! - [`keyring`]: unwrap/wrap the content key: KMS (`kms`, `kms+context`), raw AES, raw RSA.
//! - [`codec`]: decrypt/encrypt whole object streams: envelope + keyring + content, with the policy
//!   that keeps legacy formats opt-in.
//! - [`client`]: `S3Cse`, get/put/inspect over aws-sdk-s3 (aioboto3's `S3CSE`, in Rust).
//! - [`store`]: the rekey job table over sqlx: SQLite, or PostgreSQL shared by many processes;
//!   schemas in `migrations/{sqlite,postgres}/`.
//! - [`metrics`]: a `Metrics` struct owning its Prometheus registry.
//! - [`rekey`]: scanner, classifier and worker pool of `s3cse rekey`.
//! - [`logkey`]: S3 keys escaped for text logs (a key may hold a newline).
//! - [`manifest`]: S3 Inventory and Batch Operations manifests, parsed (no I/O); read by
//!   [`rekey::ingest`].
//! - [`audit`]: the census of `s3cse audit` (list + HEAD -> plaintext / current / remaining),
//!   independent of the job table.
//!
//! Nothing below `client`/`rekey` knows about S3; nothing below `rekey` knows about the job table.
#![forbid(unsafe_code)]

pub mod audit;
pub mod client;
pub mod codec;
pub mod consts;
pub mod content;
pub mod envelope;
pub mod failpoint;
pub mod keyring;
pub mod logkey;
pub mod manifest;
pub mod metrics;
pub mod rekey;
pub mod secret;
pub mod store;
