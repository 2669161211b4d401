//! Classification: what to do with one object, from its HEAD and envelope only. Pure: no I/O,
//! no keys, so `--dry-run` and the worker decide the same way, and the table below is tested.
//!
//! | source                                               | action   |
//! |------------------------------------------------------|----------|
//! | no envelope                                          | skip (plaintext) |
//! | current ([`Goal::is_current`]): `kms+context` whose EDK is under the target (in any Region, for a multi-Region key; [`super::owner`] says how that is known), content in the target format (`--target-format v2`: V2 AES-GCM or V3; `v3`: V3 only), envelope in the metadata (or, with `--keep-instruction-files`, in `<key>.instruction`) | skip (current) |
//! | CBC content, any wrap                                | rewrite  |
//! | V2 AES-GCM content, `--target-format v3`             | rewrite (a V2 content key cannot be rewrapped into V3: the commitment is derived from a fresh data key) |
//! | GCM content (V2 or V3) under any other wrap, with `--keep-instruction-files` and its envelope in `<key>.instruction` | rotate the instruction file only (the data object untouched) |
//! | GCM content (V2 or V3) under any other wrap, or with its envelope in a `.instruction` object | rewrap, V3 staying V3 (rewrite with `--reencrypt`) |
//! | a `.instruction` object                              | skip (never data) |

use crate::client::{EnvelopeState, ObjectHead};
use crate::consts::{INSTRUCTION_MARKER, INSTRUCTION_SUFFIX};
use crate::envelope::{ContentAlg, Envelope, Location, Version, WrapAlg};
use crate::store;

/// Why an object is left alone (the `skip_reason` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Not client-side encrypted.
    Plaintext,
    /// Depends on the target key only: `kms+context` under it, envelope in the metadata.
    Current,
    /// `<key>.instruction`: the envelope of another object, never data.
    InstructionFile,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Plaintext => "plaintext",
            SkipReason::Current => "current",
            SkipReason::InstructionFile => "instruction-file",
        }
    }
}

/// What the worker does with one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Leave it untouched.
    Skip(SkipReason),
    /// Decrypt the body and encrypt it again under a fresh data key (CBC sources, `--reencrypt`).
    Rewrite,
    /// Keep the GCM body, wrap its content key under the target key, replace the metadata by a
    /// server-side copy.
    Rewrap,
    /// `--keep-instruction-files`: keep the GCM body and the data object, wrap the content key
    /// under the target key and rewrite only `<key>.instruction` (conditional on its ETag).
    /// Recorded as a rewrap in the job table.
    RotateInstruction,
}

/// The envelope format `rekey` brings objects to (`--target-format`, `audit --target-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetFormat {
    /// V2 `kms+context` AES-GCM; a V3 object under the target is current too.
    #[default]
    V2,
    /// V3 key-committing (suite 115) `kms+context`: V2 GCM objects are rewritten.
    V3,
}

impl TargetFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetFormat::V2 => "v2",
            TargetFormat::V3 => "v3",
        }
    }
}

/// What "current" means for a run beyond the target key: the target format and where the
/// envelope may live. Shared by `rekey` ([`classify_envelope`]) and `audit`, so rekey skips
/// exactly what audit counts current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Goal {
    pub format: TargetFormat,
    /// `--keep-instruction-files`: an envelope in `<key>.instruction` under the target key is
    /// current, and one under another key is rotated in its file instead of moved into the
    /// object's metadata.
    pub keep_instruction_files: bool,
}

impl Goal {
    /// True if an object with `env` depends on the target key only and is in the target format.
    /// `under_target`: the content key is wrapped `kms+context` by the target key (the caller
    /// asks [`TargetKey::owns_blob`]).
    pub fn is_current(&self, env: &Envelope, under_target: bool) -> bool {
        let content = match env.content_alg {
            ContentAlg::AesGcmCommitting => env.version == Version::V3,
            ContentAlg::AesGcm => self.format == TargetFormat::V2 && env.version == Version::V2,
            ContentAlg::AesCbc => false,
        };
        let place = env.location == Location::ObjectMetadata || self.keep_instruction_files;
        under_target && content && place
    }
}

impl Action {
    /// The job table's action column.
    pub fn store_action(self) -> store::Action {
        match self {
            Action::Skip(_) => store::Action::Skip,
            Action::Rewrite => store::Action::Rewrite,
            Action::Rewrap | Action::RotateInstruction => store::Action::Rewrap,
        }
    }

    pub fn skip_reason(self) -> Option<&'static str> {
        match self {
            Action::Skip(r) => Some(r.as_str()),
            _ => None,
        }
    }
}

/// The KMS key new envelopes are wrapped with, resolved once (DescribeKey) at start.
///
/// # Multi-Region keys
/// A multi-Region key (`mrk-…`) and its replicas in other Regions share one key id and one key
/// material: a blob made by any replica decrypts with any other. So an object whose data key
/// was wrapped by a replica of the target key in another Region counts as **current** (skipped,
/// as rewrapping it here would only produce an equivalent blob). That is also the AWS Encryption
/// SDK's rule, "MRK match for decrypt": two multi-Region key ARNs match when everything but the
/// Region matches
/// (<https://github.com/awslabs/aws-encryption-sdk-specification/blob/master/framework/aws-kms/aws-kms-mrk-match-for-decrypt.md>).
/// It comes for free here: the blob names the key by its id, which has no Region in it.
///
/// # Aliases
/// An alias is not a key: the key behind it can change. [`crate::rekey::kms::describe_key`]
/// resolves it at start, so `key_id` is a key id. A `TargetKey` built by hand with an alias
/// (or anything that is not a key id or key ARN) never makes an object current: everything
/// under it is rewrapped, which costs KMS calls but never leaves a legacy object behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetKey {
    /// The key id (a UUID, or `mrk-…` for a multi-Region key).
    pub key_id: String,
    /// The key ARN.
    pub arn: String,
    /// Symmetric key material made and kept by AWS KMS (origin `AWS_KMS`, no custom key store):
    /// only then are its blobs recognised by their header ([`super::owner`]); otherwise every
    /// blob that does not name the key is checked with KMS.
    pub aws_backed: bool,
}

impl TargetKey {
    /// True if a KMS ciphertext blob starts with this key's id in ASCII, as moto's (and other
    /// emulators') blobs do; real AWS KMS blobs never do (their header names a backing key, see
    /// [`super::owner`], which asks this first). Same id in any Region, for a multi-Region key.
    /// False is no answer: the blob may still be this key's.
    pub fn owns_blob(&self, blob: &[u8]) -> bool {
        let Some(id) = key_id_of(&self.key_id).or_else(|| key_id_of(&self.arn)) else {
            return false;
        };
        // Only a well-formed key id.
        raw_key_id(id).is_some() && blob.starts_with(id.as_bytes())
    }

    /// A multi-Region key (`mrk-…`): replicas in other Regions count as this key.
    pub fn is_multi_region(&self) -> bool {
        key_id_of(&self.key_id)
            .or_else(|| key_id_of(&self.arn))
            .is_some_and(|id| id.starts_with(MRK_PREFIX))
    }
}

/// The key id prefix of multi-Region keys.
const MRK_PREFIX: &str = "mrk-";

/// The key id named by a KMS key identifier: a key id as it is, the resource id of a key ARN
/// (`arn:PARTITION:kms:REGION:ACCOUNT:key/ID`, any partition and Region). `None` for aliases
/// (`alias/…`, alias ARNs) and anything else: they do not name one key for good. The rules are
/// the AWS Encryption SDK's
/// (<https://github.com/awslabs/aws-encryption-sdk-specification/blob/master/framework/aws-kms/aws-kms-key-arn.md>).
pub fn key_id_of(identifier: &str) -> Option<&str> {
    if identifier.starts_with("alias/") {
        return None;
    }
    let Some(rest) = identifier.strip_prefix("arn:") else {
        return (!identifier.is_empty() && !identifier.contains([':', '/'])).then_some(identifier);
    };
    // partition : service : region : account : resource
    let parts: Vec<&str> = rest.splitn(5, ':').collect();
    let [partition, service, region, account, resource] = parts[..] else {
        return None;
    };
    if partition.is_empty() || service != "kms" || region.is_empty() || account.is_empty() {
        return None;
    }
    match resource.split_once('/') {
        Some(("key", id)) if !id.is_empty() && !id.contains(['/', ':']) => Some(id),
        _ => None,
    }
}

/// The 16 raw bytes of a key id: a UUID `1234abcd-12ab-34cd-56ef-1234567890ab`, or a
/// multi-Region `mrk-` + 32 hex digits (dashes tolerated). `None` for anything else.
fn raw_key_id(id: &str) -> Option<[u8; 16]> {
    let body = id.strip_prefix(MRK_PREFIX).unwrap_or(id);
    let hex: String = body.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let v = hex::decode(hex).ok()?;
    v.try_into().ok()
}

/// True if whether `env`'s data key is under the target key can decide its action: only then
/// is [`super::owner::KeyOwner`] asked (which may cost a KMS call).
pub fn ownership_matters(env: &Envelope) -> bool {
    env.wrap == WrapAlg::KmsContext
        && matches!(
            env.content_alg,
            ContentAlg::AesGcm | ContentAlg::AesGcmCommitting
        )
        && matches!(env.version, Version::V2 | Version::V3)
}

/// Classifies one object. `owned`: as for [`classify_envelope`].
pub fn classify(
    head: &ObjectHead,
    state: &EnvelopeState,
    owned: bool,
    reencrypt: bool,
    goal: &Goal,
) -> Action {
    // An instruction file carries the marker; a data object may have any name.
    if head.key.ends_with(INSTRUCTION_SUFFIX) && head.metadata.contains_key(INSTRUCTION_MARKER) {
        return Action::Skip(SkipReason::InstructionFile);
    }
    let env = match state {
        EnvelopeState::Plaintext => return Action::Skip(SkipReason::Plaintext),
        EnvelopeState::Encrypted(env) => env,
    };
    classify_envelope(env, owned, reencrypt, goal)
}

/// Classifies an encrypted object by its envelope. Current ([`Goal::is_current`]) means
/// "depends on the target key only, in the target format": `kms+context` under the target key,
/// in the object's own metadata. A V3 object under any other wrap still needs that wrap's key
/// (it is rewrapped, staying V3), and an envelope in a `.instruction` object can be swapped
/// apart from its data (the 2025 key-commitment advisories), so it is moved into the metadata
/// even under the target key, unless `--keep-instruction-files` says to keep it there.
///
/// `owned`: the data key is wrapped by the target key ([`super::owner::KeyOwner`] says; it
/// need only be asked when [`ownership_matters`]).
pub fn classify_envelope(env: &Envelope, owned: bool, reencrypt: bool, goal: &Goal) -> Action {
    let under_target = env.wrap == WrapAlg::KmsContext && owned;
    if goal.is_current(env, under_target) {
        return Action::Skip(SkipReason::Current);
    }
    match env.content_alg {
        ContentAlg::AesCbc => Action::Rewrite,
        // V3's commitment is derived from the data key and a message id: a V2 content key
        // cannot be rewrapped into V3, only a fresh one can.
        ContentAlg::AesGcm if goal.format == TargetFormat::V3 => Action::Rewrite,
        ContentAlg::AesGcm | ContentAlg::AesGcmCommitting => {
            if reencrypt {
                Action::Rewrite
            } else if goal.keep_instruction_files && env.location == Location::InstructionFile {
                Action::RotateInstruction
            } else {
                Action::Rewrap
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The classification with ownership read off the blob (the key id at its start).
    fn by_blob(e: &Envelope, t: &TargetKey, reencrypt: bool, goal: &Goal) -> Action {
        classify_envelope(e, t.owns_blob(&e.encrypted_key), reencrypt, goal)
    }

    fn classify_by_blob(
        h: &ObjectHead,
        s: &EnvelopeState,
        t: &TargetKey,
        r: bool,
        goal: &Goal,
    ) -> Action {
        let owned = match s {
            EnvelopeState::Encrypted(e) => t.owns_blob(&e.encrypted_key),
            EnvelopeState::Plaintext => false,
        };
        classify(h, s, owned, r, goal)
    }

    use super::*;
    use crate::envelope::Context;

    const KEY_ID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";

    fn target() -> TargetKey {
        TargetKey {
            aws_backed: false,
            key_id: KEY_ID.into(),
            arn: format!("arn:aws:kms:us-east-1:123456789012:key/{KEY_ID}"),
        }
    }

    fn env(version: Version, content_alg: ContentAlg, wrap: WrapAlg, edk: &[u8]) -> Envelope {
        Envelope {
            version,
            content_alg,
            wrap,
            encrypted_key: edk.to_vec(),
            iv: vec![0; 12],
            matdesc: Context::new(),
            encryption_context: Context::new(),
            message_id: Vec::new(),
            commitment: Vec::new(),
            plaintext_length: None,
            location: Location::ObjectMetadata,
        }
    }

    fn head(key: &str) -> ObjectHead {
        ObjectHead {
            key: key.into(),
            ..ObjectHead::default()
        }
    }

    fn moto_blob(key_id: &str) -> Vec<u8> {
        let mut b = key_id.as_bytes().to_vec();
        b.extend_from_slice(&[7u8; 60]);
        b
    }

    fn aws_blob(key_id: &str) -> Vec<u8> {
        let mut b = vec![1u8, 2, 0];
        b.extend_from_slice(&raw_key_id(key_id).expect("key id"));
        b.extend_from_slice(&[9u8; 100]);
        b
    }

    const OTHER: &str = "99999999-8888-7777-6666-555555555555";
    const MRK: &str = "mrk-4321abcd12ab34cd56ef1234567890ab";
    const OTHER_MRK: &str = "mrk-0000abcd12ab34cd56ef1234567890ab";

    fn mrk_target(region: &str) -> TargetKey {
        TargetKey {
            aws_backed: false,
            key_id: MRK.into(),
            arn: format!("arn:aws:kms:{region}:123456789012:key/{MRK}"),
        }
    }

    fn kms_context_gcm(edk: &[u8]) -> Envelope {
        env(Version::V2, ContentAlg::AesGcm, WrapAlg::KmsContext, edk)
    }

    #[test]
    fn table() {
        use Action::*;
        use SkipReason::*;
        use WrapAlg::*;
        let t = target();
        let cases: Vec<(&str, Envelope, bool, Action)> = vec![
            (
                "v1 aes cbc",
                env(Version::V1, ContentAlg::AesCbc, V1Unnamed, &[0; 48]),
                false,
                Rewrite,
            ),
            (
                "v1 rsa cbc",
                env(Version::V1, ContentAlg::AesCbc, V1Unnamed, &[0; 256]),
                false,
                Rewrite,
            ),
            (
                "v2 kms cbc",
                env(Version::V2, ContentAlg::AesCbc, Kms, &moto_blob(OTHER)),
                false,
                Rewrite,
            ),
            (
                "cbc under target",
                env(
                    Version::V2,
                    ContentAlg::AesCbc,
                    KmsContext,
                    &moto_blob(KEY_ID),
                ),
                false,
                Rewrite,
            ),
            (
                "v2 kms gcm",
                env(Version::V2, ContentAlg::AesGcm, Kms, &moto_blob(OTHER)),
                false,
                Rewrap,
            ),
            (
                "v2 kms gcm target, legacy wrap",
                env(Version::V2, ContentAlg::AesGcm, Kms, &moto_blob(KEY_ID)),
                false,
                Rewrap,
            ),
            (
                "v2 aeswrap gcm",
                env(Version::V2, ContentAlg::AesGcm, AesWrap, &[0; 40]),
                false,
                Rewrap,
            ),
            (
                "v2 aes/gcm gcm",
                env(Version::V2, ContentAlg::AesGcm, WrapAlg::AesGcm, &[0; 60]),
                false,
                Rewrap,
            ),
            (
                "v2 rsa-oaep gcm",
                env(Version::V2, ContentAlg::AesGcm, RsaOaepSha1, &[0; 256]),
                false,
                Rewrap,
            ),
            (
                "v2 rsa-oaep-256 gcm",
                env(
                    Version::V2,
                    ContentAlg::AesGcm,
                    RsaOaepSha256Legacy,
                    &[0; 256],
                ),
                false,
                Rewrap,
            ),
            (
                "kms+context other key",
                env(
                    Version::V2,
                    ContentAlg::AesGcm,
                    KmsContext,
                    &moto_blob(OTHER),
                ),
                false,
                Rewrap,
            ),
            (
                "kms+context target (moto)",
                env(
                    Version::V2,
                    ContentAlg::AesGcm,
                    KmsContext,
                    &moto_blob(KEY_ID),
                ),
                false,
                Skip(Current),
            ),
            (
                // An AWS blob does not name its key: the blob alone says nothing (rekey::owner).
                "kms+context, AWS blob holding the raw key id",
                env(
                    Version::V2,
                    ContentAlg::AesGcm,
                    KmsContext,
                    &aws_blob(KEY_ID),
                ),
                false,
                Rewrap,
            ),
            (
                "kms+context target, --reencrypt",
                env(
                    Version::V2,
                    ContentAlg::AesGcm,
                    KmsContext,
                    &moto_blob(KEY_ID),
                ),
                true,
                Skip(Current),
            ),
            (
                "v2 kms gcm --reencrypt",
                env(Version::V2, ContentAlg::AesGcm, Kms, &moto_blob(OTHER)),
                true,
                Rewrite,
            ),
            (
                "v3 under the target",
                env(
                    Version::V3,
                    ContentAlg::AesGcmCommitting,
                    KmsContext,
                    &moto_blob(KEY_ID),
                ),
                false,
                Skip(Current),
            ),
            (
                "v3 under another kms key",
                env(
                    Version::V3,
                    ContentAlg::AesGcmCommitting,
                    KmsContext,
                    &moto_blob(OTHER),
                ),
                false,
                Rewrap,
            ),
            (
                "v3 raw aes",
                env(
                    Version::V3,
                    ContentAlg::AesGcmCommitting,
                    WrapAlg::AesGcm,
                    &[0; 60],
                ),
                false,
                Rewrap,
            ),
            (
                "v3 raw rsa --reencrypt",
                env(
                    Version::V3,
                    ContentAlg::AesGcmCommitting,
                    RsaOaepSha1,
                    &[0; 256],
                ),
                true,
                Rewrite,
            ),
            (
                "v2 under the target, envelope in an instruction file",
                Envelope {
                    location: Location::InstructionFile,
                    ..kms_context_gcm(&moto_blob(KEY_ID))
                },
                false,
                Rewrap,
            ),
            (
                "v3 under the target, envelope in an instruction file",
                Envelope {
                    location: Location::InstructionFile,
                    ..env(
                        Version::V3,
                        ContentAlg::AesGcmCommitting,
                        KmsContext,
                        &moto_blob(KEY_ID),
                    )
                },
                false,
                Rewrap,
            ),
        ];
        for (name, e, reencrypt, want) in cases {
            assert_eq!(by_blob(&e, &t, reencrypt, &Goal::default()), want, "{name}");
        }
    }

    /// `--target-format v3` and `--keep-instruction-files`: (name, envelope, goal, action).
    #[test]
    fn goals() {
        use Action::*;
        use SkipReason::*;
        let t = target();
        let v3 = Goal {
            format: TargetFormat::V3,
            keep_instruction_files: false,
        };
        let keep = Goal {
            format: TargetFormat::V2,
            keep_instruction_files: true,
        };
        let keep_v3 = Goal {
            format: TargetFormat::V3,
            keep_instruction_files: true,
        };
        let v3_env = |wrap, edk: &[u8]| env(Version::V3, ContentAlg::AesGcmCommitting, wrap, edk);
        let in_file = |e: Envelope| Envelope {
            location: Location::InstructionFile,
            ..e
        };
        let (mine, other) = (moto_blob(KEY_ID), moto_blob(OTHER));
        let cases: Vec<(&str, Envelope, Goal, Action)> = vec![
            (
                "v2 gcm under the target, v3",
                kms_context_gcm(&mine),
                v3,
                Rewrite,
            ),
            ("v2 gcm other key, v3", kms_context_gcm(&other), v3, Rewrite),
            (
                "v2 aes/gcm, v3",
                env(Version::V2, ContentAlg::AesGcm, WrapAlg::AesGcm, &[0; 60]),
                v3,
                Rewrite,
            ),
            (
                "cbc, v3",
                env(
                    Version::V1,
                    ContentAlg::AesCbc,
                    WrapAlg::V1Unnamed,
                    &[0; 48],
                ),
                v3,
                Rewrite,
            ),
            (
                "v3 under the target, v3",
                v3_env(WrapAlg::KmsContext, &mine),
                v3,
                Skip(Current),
            ),
            (
                "v3 other key, v3",
                v3_env(WrapAlg::KmsContext, &other),
                v3,
                Rewrap,
            ),
            (
                "v3 raw aes, v3",
                v3_env(WrapAlg::AesGcm, &[0; 60]),
                v3,
                Rewrap,
            ),
            (
                "v3 under the target in a file, v3",
                in_file(v3_env(WrapAlg::KmsContext, &mine)),
                v3,
                Rewrap,
            ),
            // --keep-instruction-files
            (
                "v2 in a file under the target, keep",
                in_file(kms_context_gcm(&mine)),
                keep,
                Skip(Current),
            ),
            (
                "v2 in a file other key, keep",
                in_file(kms_context_gcm(&other)),
                keep,
                RotateInstruction,
            ),
            (
                "v2 aeswrap gcm in a file, keep",
                in_file(env(
                    Version::V2,
                    ContentAlg::AesGcm,
                    WrapAlg::AesWrap,
                    &[0; 40],
                )),
                keep,
                RotateInstruction,
            ),
            (
                "v1 cbc in a file, keep",
                in_file(env(
                    Version::V1,
                    ContentAlg::AesCbc,
                    WrapAlg::V1Unnamed,
                    &[0; 48],
                )),
                keep,
                Rewrite,
            ),
            (
                "v2 kms cbc in a file, keep",
                in_file(env(Version::V2, ContentAlg::AesCbc, WrapAlg::Kms, &other)),
                keep,
                Rewrite,
            ),
            (
                "v2 in metadata other key, keep",
                kms_context_gcm(&other),
                keep,
                Rewrap,
            ),
            (
                "v2 in a file under the target, keep v3",
                in_file(kms_context_gcm(&mine)),
                keep_v3,
                Rewrite,
            ),
            (
                "v3 in a file under the target, keep v3",
                in_file(v3_env(WrapAlg::KmsContext, &mine)),
                keep_v3,
                Skip(Current),
            ),
            (
                "v3 raw rsa in a file, keep v3",
                in_file(v3_env(WrapAlg::RsaOaepSha1, &[0; 256])),
                keep_v3,
                RotateInstruction,
            ),
        ];
        for (name, e, goal, want) in cases {
            assert_eq!(by_blob(&e, &t, false, &goal), want, "{name}");
        }
        // --reencrypt rewrites what is not current, instruction file or not.
        assert_eq!(
            by_blob(&in_file(kms_context_gcm(&other)), &t, true, &keep),
            Rewrite
        );
    }

    #[test]
    fn plaintext_and_instruction_files_are_skipped() {
        let t = target();
        assert_eq!(
            classify_by_blob(
                &head("a.txt"),
                &EnvelopeState::Plaintext,
                &t,
                false,
                &Goal::default()
            ),
            Action::Skip(SkipReason::Plaintext)
        );
        let e = env(
            Version::V1,
            ContentAlg::AesCbc,
            WrapAlg::V1Unnamed,
            &[0; 48],
        );
        let mut instruction = head("a.txt.instruction");
        instruction
            .metadata
            .insert(INSTRUCTION_MARKER.into(), String::new());
        assert_eq!(
            classify_by_blob(
                &instruction,
                &EnvelopeState::Encrypted(e.clone()),
                &t,
                false,
                &Goal::default()
            ),
            Action::Skip(SkipReason::InstructionFile)
        );
        // Without the marker an object named so is data, migrated like any other.
        assert_eq!(
            classify_by_blob(
                &head("report.instruction"),
                &EnvelopeState::Encrypted(e.clone()),
                &t,
                false,
                &Goal::default()
            ),
            Action::Rewrite
        );
        assert_eq!(
            classify_by_blob(
                &head("a.txt"),
                &EnvelopeState::Encrypted(e),
                &t,
                false,
                &Goal::default()
            ),
            Action::Rewrite
        );
    }

    #[test]
    fn blob_ownership() {
        let t = target();
        assert!(t.owns_blob(&moto_blob(KEY_ID)));
        assert!(
            !t.owns_blob(&aws_blob(KEY_ID)),
            "raw bytes anywhere are no evidence"
        );
        let mut inside = b"xx".to_vec();
        inside.extend_from_slice(&moto_blob(KEY_ID));
        assert!(!t.owns_blob(&inside), "the id must start the blob");
        assert!(!t.owns_blob(&moto_blob(OTHER)));
        assert!(!t.owns_blob(&aws_blob(OTHER)));
        assert!(!t.owns_blob(&[]));
        let alias = TargetKey {
            aws_backed: false,
            key_id: "mrk-1234".into(),
            arn: String::new(),
        };
        assert!(!alias.owns_blob(&aws_blob(KEY_ID)));
    }

    #[test]
    fn key_ids_from_identifiers() {
        let cases: &[(&str, Option<&str>)] = &[
            (KEY_ID, Some(KEY_ID)),
            (MRK, Some(MRK)),
            (
                "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                Some(KEY_ID),
            ),
            (
                "arn:aws:kms:eu-west-1:123456789012:key/mrk-4321abcd12ab34cd56ef1234567890ab",
                Some(MRK),
            ),
            (
                "arn:aws-cn:kms:cn-north-1:123456789012:key/mrk-4321abcd12ab34cd56ef1234567890ab",
                Some(MRK),
            ),
            // Aliases name whatever key they point at today.
            ("alias/app", None),
            ("alias/mrk-4321abcd12ab34cd56ef1234567890ab", None),
            ("arn:aws:kms:us-east-1:123456789012:alias/app", None),
            // Not KMS key identifiers.
            ("", None),
            ("arn:aws:s3:::bucket/key", None),
            ("arn:aws:kms:us-east-1:123456789012:key/", None),
            (
                "arn:aws:kms::123456789012:key/mrk-4321abcd12ab34cd56ef1234567890ab",
                None,
            ),
            ("arn:aws:kms:us-east-1:123456789012", None),
            ("key/1234", None),
        ];
        for (identifier, want) in cases {
            assert_eq!(key_id_of(identifier), *want, "{identifier}");
        }
    }

    #[test]
    fn raw_key_ids() {
        assert_eq!(
            raw_key_id(MRK).map(hex::encode).as_deref(),
            Some("4321abcd12ab34cd56ef1234567890ab")
        );
        assert_eq!(
            raw_key_id("mrk-4321abcd-12ab-34cd-56ef-1234567890ab"),
            raw_key_id(MRK)
        );
        assert_eq!(
            raw_key_id(KEY_ID).map(hex::encode).as_deref(),
            Some("1234abcd12ab34cd56ef1234567890ab")
        );
        for bad in [
            "mrk-1234",
            "alias/app",
            "mrk-zz21abcd12ab34cd56ef1234567890ab",
            "",
        ] {
            assert_eq!(raw_key_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn multi_region_keys() {
        use Action::*;
        let here = mrk_target("us-east-1");
        assert!(here.is_multi_region());
        assert!(!target().is_multi_region());
        // Blobs name the key by id, not by Region: one made by the replica in eu-west-1 is the
        // same bytes as one made here, and counts as current (same key material).
        let blob = moto_blob(MRK);
        assert!(here.owns_blob(&blob));
        assert!(mrk_target("eu-west-1").owns_blob(&blob));
        assert_eq!(
            by_blob(&kms_context_gcm(&blob), &here, false, &Goal::default()),
            Skip(SkipReason::Current)
        );
        // Another multi-Region key, or a single-Region key: rewrapped.
        for blob in [moto_blob(OTHER_MRK), aws_blob(OTHER_MRK), aws_blob(KEY_ID)] {
            assert!(!here.owns_blob(&blob));
            assert_eq!(
                by_blob(&kms_context_gcm(&blob), &here, false, &Goal::default()),
                Rewrap
            );
        }
        // A target given by its ARN only, in either field, resolves to the same id.
        let by_arn = TargetKey {
            aws_backed: false,
            key_id: here.arn.clone(),
            arn: String::new(),
        };
        assert!(by_arn.owns_blob(&moto_blob(MRK)) && by_arn.is_multi_region());
        let arn_only = TargetKey {
            aws_backed: false,
            key_id: String::new(),
            arn: mrk_target("ap-south-1").arn,
        };
        assert!(arn_only.owns_blob(&moto_blob(MRK)));
    }

    #[test]
    fn an_alias_target_never_makes_an_object_current() {
        // Even a blob that happens to hold the alias' bytes, or an alias named like a key id.
        for alias in ["alias/app", "alias/mrk-4321abcd12ab34cd56ef1234567890ab"] {
            let t = TargetKey {
                aws_backed: false,
                key_id: alias.into(),
                arn: format!("arn:aws:kms:us-east-1:123456789012:{alias}"),
            };
            assert!(!t.is_multi_region(), "{alias}");
            for blob in [moto_blob(alias), moto_blob(MRK), aws_blob(MRK)] {
                assert!(!t.owns_blob(&blob), "{alias}");
                assert_eq!(
                    by_blob(&kms_context_gcm(&blob), &t, false, &Goal::default()),
                    Action::Rewrap,
                    "{alias}"
                );
            }
        }
    }
}
