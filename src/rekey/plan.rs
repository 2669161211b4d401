//! Classification: what to do with one object, from its HEAD and envelope only. Pure: no I/O,
//! no keys, so `--dry-run` and the worker decide the same way, and the table below is tested.
//!
//! | source                                               | action   |
//! |------------------------------------------------------|----------|
//! | no envelope                                          | skip (plaintext) |
//! | V3 (key-committing)                                  | skip (current)   |
//! | V2 `kms+context` AES-GCM whose EDK names the target  | skip (current), no KMS call |
//! | CBC content, any wrap                                | rewrite  |
//! | GCM content under any other wrap                     | rewrap (rewrite with `--reencrypt`) |
//! | a `.instruction` object                              | skip (never data) |

use crate::client::{EnvelopeState, ObjectHead};
use crate::consts::INSTRUCTION_SUFFIX;
use crate::envelope::{ContentAlg, Envelope, Version, WrapAlg};
use crate::store;

/// Why an object is left alone (the `skip_reason` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Not client-side encrypted.
    Plaintext,
    /// Already in a current format under the target key (or V3).
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
}

impl Action {
    /// The job table's action column.
    pub fn store_action(self) -> store::Action {
        match self {
            Action::Skip(_) => store::Action::Skip,
            Action::Rewrite => store::Action::Rewrite,
            Action::Rewrap => store::Action::Rewrap,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetKey {
    /// The key id (a UUID, or `mrk-…`).
    pub key_id: String,
    /// The key ARN.
    pub arn: String,
}

impl TargetKey {
    /// True if a KMS ciphertext blob was made under this key. KMS blobs carry the key's id:
    /// moto's start with it as ASCII, AWS's hold the raw 16-byte UUID. A false negative only
    /// costs a needless rewrap, never a skipped legacy object (the blob of another key never
    /// contains this key's id).
    pub fn owns_blob(&self, blob: &[u8]) -> bool {
        if contains(blob, self.key_id.as_bytes()) {
            return true;
        }
        match uuid_bytes(&self.key_id) {
            Some(raw) => contains(blob, &raw),
            None => false,
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// `1234abcd-12ab-34cd-56ef-1234567890ab` -> its 16 bytes.
fn uuid_bytes(id: &str) -> Option<[u8; 16]> {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let v = hex::decode(hex).ok()?;
    v.try_into().ok()
}

/// Classifies one object.
pub fn classify(
    head: &ObjectHead,
    state: &EnvelopeState,
    target: &TargetKey,
    reencrypt: bool,
) -> Action {
    if head.key.ends_with(INSTRUCTION_SUFFIX) {
        return Action::Skip(SkipReason::InstructionFile);
    }
    let env = match state {
        EnvelopeState::Plaintext => return Action::Skip(SkipReason::Plaintext),
        EnvelopeState::Encrypted(env) => env,
    };
    classify_envelope(env, target, reencrypt)
}

/// Classifies an encrypted object by its envelope.
pub fn classify_envelope(env: &Envelope, target: &TargetKey, reencrypt: bool) -> Action {
    if env.version == Version::V3 {
        return Action::Skip(SkipReason::Current);
    }
    match env.content_alg {
        ContentAlg::AesCbc => Action::Rewrite,
        ContentAlg::AesGcmCommitting => Action::Skip(SkipReason::Current),
        ContentAlg::AesGcm => {
            let current = env.version == Version::V2
                && env.wrap == WrapAlg::KmsContext
                && target.owns_blob(&env.encrypted_key);
            if current {
                Action::Skip(SkipReason::Current)
            } else if reencrypt {
                Action::Rewrite
            } else {
                Action::Rewrap
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Context, Location};

    const KEY_ID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";

    fn target() -> TargetKey {
        TargetKey {
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
        b.extend_from_slice(&uuid_bytes(key_id).expect("uuid"));
        b.extend_from_slice(&[9u8; 100]);
        b
    }

    const OTHER: &str = "99999999-8888-7777-6666-555555555555";

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
                "kms+context target (aws)",
                env(
                    Version::V2,
                    ContentAlg::AesGcm,
                    KmsContext,
                    &aws_blob(KEY_ID),
                ),
                false,
                Skip(Current),
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
                "v3",
                env(
                    Version::V3,
                    ContentAlg::AesGcmCommitting,
                    KmsContext,
                    &moto_blob(OTHER),
                ),
                false,
                Skip(Current),
            ),
            (
                "v3 raw aes",
                env(
                    Version::V3,
                    ContentAlg::AesGcmCommitting,
                    WrapAlg::AesGcm,
                    &[0; 60],
                ),
                true,
                Skip(Current),
            ),
        ];
        for (name, e, reencrypt, want) in cases {
            assert_eq!(classify_envelope(&e, &t, reencrypt), want, "{name}");
        }
    }

    #[test]
    fn plaintext_and_instruction_files_are_skipped() {
        let t = target();
        assert_eq!(
            classify(&head("a.txt"), &EnvelopeState::Plaintext, &t, false),
            Action::Skip(SkipReason::Plaintext)
        );
        let e = env(
            Version::V1,
            ContentAlg::AesCbc,
            WrapAlg::V1Unnamed,
            &[0; 48],
        );
        assert_eq!(
            classify(
                &head("a.txt.instruction"),
                &EnvelopeState::Encrypted(e.clone()),
                &t,
                false
            ),
            Action::Skip(SkipReason::InstructionFile)
        );
        assert_eq!(
            classify(&head("a.txt"), &EnvelopeState::Encrypted(e), &t, false),
            Action::Rewrite
        );
    }

    #[test]
    fn blob_ownership() {
        let t = target();
        assert!(t.owns_blob(&moto_blob(KEY_ID)));
        assert!(t.owns_blob(&aws_blob(KEY_ID)));
        assert!(!t.owns_blob(&moto_blob(OTHER)));
        assert!(!t.owns_blob(&aws_blob(OTHER)));
        assert!(!t.owns_blob(&[]));
        let alias = TargetKey {
            key_id: "mrk-1234".into(),
            arn: String::new(),
        };
        assert!(!alias.owns_blob(&aws_blob(KEY_ID)));
    }
}
