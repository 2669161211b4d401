//! The pure part of the census: one envelope -> plaintext, current or remaining (and why).
//! No I/O, no keys: the table in the tests below is the definition of "current".
//!
//! **current** means "depends on the target key only": the envelope is in the object's own
//! metadata (an instruction file can be swapped: the 2025 key-commitment advisories), the content
//! key is wrapped `kms+context` by the target key ([`crate::rekey::owner::KeyOwner`] says), and the content is
//! AES-GCM (V2) or key-committing AES-GCM (V3): rekey's [`Goal::is_current`], which
//! `--target-format v3` narrows to V3 and `--keep-instruction-files` widens to envelopes in
//! `<key>.instruction`. Anything else encrypted is **remaining**, with
//! one [`Reason`], picked in this order (the first that applies says what the object still
//! depends on):
//!
//! | envelope                                               | reason           |
//! |--------------------------------------------------------|------------------|
//! | V1 (AES/ECB, RSA PKCS#1), `kms`, `AESWrap`, RSA-OAEP-SHA256 (legacy Java) | `legacy-wrap` |
//! | `AES/GCM` or `RSA-OAEP-SHA1` wrap (raw master key), V2 or V3 | `raw-key`   |
//! | `kms+context` under another KMS key                    | `other-kms-key`  |
//! | `kms+context` under the target, CBC content            | `cbc-content`    |
//! | `kms+context` under the target, V2 GCM, `--target-format v3` | `not-key-committing` |
//! | anything else, envelope in `<key>.instruction`         | `instruction-file` |
//!
//! The census adds `noncurrent-version`, `orphan-instruction` and `unreadable`, which depend on
//! where the object is, not on its envelope.

use std::fmt;

use crate::client::kms_key_id_of;
use crate::envelope::{self, ContentAlg, Detected, Envelope, Location, Metadata, Version, WrapAlg};
use crate::rekey::plan::{Goal, TargetFormat};

/// What the census says of one object (or one version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// Not client-side encrypted.
    Plaintext,
    /// Depends on the target key only.
    Current,
    /// Still depends on something else (see the [`Reason`]).
    Remaining,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Plaintext, Class::Current, Class::Remaining];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Plaintext => "plaintext",
            Class::Current => "current",
            Class::Remaining => "remaining",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an object is remaining. The machine names ([`Reason::as_str`]) are stable: scripts, the
/// JSON output and the `reason` label of `s3cse_audit_remaining_objects` use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// A legacy key wrap: V1 (AES/ECB, RSA PKCS#1 v1.5), `kms`, `AESWrap`, Java's RSA-OAEP-SHA256.
    LegacyWrap,
    /// CBC content (unauthenticated), even under the target key.
    CbcContent,
    /// `--target-format v3`: V2 AES-GCM content, without key commitment, even under the target
    /// key (readers at AWS's default commitment policy refuse it).
    NotKeyCommitting,
    /// The content key is wrapped by a raw AES or RSA master key (`AES/GCM`, `RSA-OAEP-SHA1`).
    RawKey,
    /// `kms+context` under a KMS key other than the target.
    OtherKmsKey,
    /// The envelope lives in `<key>.instruction`, which can be swapped.
    InstructionFile,
    /// A noncurrent version (`--versions`) that is encrypted and not current.
    NoncurrentVersion,
    /// A `.instruction` object that is nobody's live envelope but still holds a content key.
    OrphanInstruction,
    /// HEAD failed or the envelope is malformed: nothing proves it is current.
    Unreadable,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::LegacyWrap,
        Reason::CbcContent,
        Reason::NotKeyCommitting,
        Reason::RawKey,
        Reason::OtherKmsKey,
        Reason::InstructionFile,
        Reason::NoncurrentVersion,
        Reason::OrphanInstruction,
        Reason::Unreadable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::LegacyWrap => "legacy-wrap",
            Reason::CbcContent => "cbc-content",
            Reason::NotKeyCommitting => "not-key-committing",
            Reason::RawKey => "raw-key",
            Reason::OtherKmsKey => "other-kms-key",
            Reason::InstructionFile => "instruction-file",
            Reason::NoncurrentVersion => "noncurrent-version",
            Reason::OrphanInstruction => "orphan-instruction",
            Reason::Unreadable => "unreadable",
        }
    }

    /// One line for people.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::LegacyWrap => {
                "content key under a legacy wrap (V1, kms, AESWrap, RSA-OAEP-SHA256)"
            }
            Reason::CbcContent => "unauthenticated AES-CBC content",
            Reason::NotKeyCommitting => "V2 content without key commitment (target format v3)",
            Reason::RawKey => "content key wrapped by a raw AES or RSA master key",
            Reason::OtherKmsKey => "content key wrapped by another KMS key",
            Reason::InstructionFile => "envelope in a .instruction object, not in the metadata",
            Reason::NoncurrentVersion => "an encrypted noncurrent version not under the target",
            Reason::OrphanInstruction => {
                "a .instruction object that no object uses, still holding a content key"
            }
            Reason::Unreadable => "HEAD failed or the envelope is malformed",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on one object, with the row it is counted in (format x wrap x content x key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub class: Class,
    /// `Some` exactly when `class` is [`Class::Remaining`].
    pub reason: Option<Reason>,
    /// Envelope generation: `v1`, `v2`, `v3`; `-` for plaintext, `instruction` for a `.instruction`
    /// object, `?` when unreadable.
    pub format: &'static str,
    /// Key wrap as [`Envelope::format_name`] spells it (`aes-ecb`, `kms+context`, ...), or `-`.
    pub wrap: &'static str,
    /// Content cipher: `cbc`, `gcm`, `committing`, or `-`.
    pub content: &'static str,
    /// What wraps the content key: `target`, `kms:<key id>`, `kms:unknown`, `aes`, `rsa`, or `-`.
    pub key: String,
    /// More for people: the underlying reason of a noncurrent version, an error class.
    pub detail: Option<String>,
}

impl Verdict {
    pub fn plaintext() -> Self {
        Verdict {
            class: Class::Plaintext,
            reason: None,
            format: "-",
            wrap: "-",
            content: "-",
            key: "-".into(),
            detail: None,
        }
    }

    /// HEAD failed or the envelope could not be read; `error_class` says which.
    pub fn unreadable(error_class: impl Into<String>) -> Self {
        Verdict {
            class: Class::Remaining,
            reason: Some(Reason::Unreadable),
            format: "?",
            wrap: "?",
            content: "?",
            key: "?".into(),
            detail: Some(error_class.into()),
        }
    }

    /// A `.instruction` object that is not the live envelope of its data object (its wrap and
    /// key unknown until its content is read).
    pub fn orphan_instruction() -> Self {
        Verdict {
            class: Class::Remaining,
            reason: Some(Reason::OrphanInstruction),
            format: "instruction",
            wrap: "?",
            content: "?",
            key: "?".into(),
            detail: None,
        }
    }

    /// The same object seen as a noncurrent version: a remaining one is `noncurrent-version`
    /// (its own reason kept as the detail); plaintext and current stay what they are.
    pub fn noncurrent(mut self) -> Self {
        if let Some(r) = self.reason {
            let detail = match self.detail.take() {
                Some(d) => format!("{r}: {d}"),
                None => r.as_str().to_owned(),
            };
            self.reason = Some(Reason::NoncurrentVersion);
            self.detail = Some(detail);
        }
        self
    }
}

/// Classifies an encrypted object by its envelope (see the module doc for the order). Current
/// is rekey's [`Goal::is_current`]: what rekey skips.
///
/// `owned`: the data key is wrapped by the target key ([`crate::rekey::owner::KeyOwner`]).
pub fn classify_envelope(env: &Envelope, owned: bool, goal: &Goal) -> Verdict {
    let (format, wrap, content) = env.labels();
    let key = wrapping_key(env, owned);
    let under_target = env.wrap == WrapAlg::KmsContext && owned;
    let reason = if goal.is_current(env, under_target) {
        None
    } else if env.version == Version::V1 || env.wrap.is_legacy() {
        Some(Reason::LegacyWrap)
    } else if matches!(env.wrap, WrapAlg::AesGcm | WrapAlg::RsaOaepSha1) {
        Some(Reason::RawKey)
    } else if !under_target {
        Some(Reason::OtherKmsKey)
    } else if env.content_alg == ContentAlg::AesCbc {
        Some(Reason::CbcContent)
    } else if goal.format == TargetFormat::V3 && env.content_alg != ContentAlg::AesGcmCommitting {
        Some(Reason::NotKeyCommitting)
    } else if env.location == Location::InstructionFile {
        Some(Reason::InstructionFile)
    } else {
        // Not current for a reason this list does not name: nothing proves it is.
        Some(Reason::Unreadable)
    };
    Verdict {
        class: if reason.is_some() {
            Class::Remaining
        } else {
            Class::Current
        },
        reason,
        format,
        wrap,
        content,
        key,
        detail: None,
    }
}

/// What wraps the content key, as far as the envelope says without asking KMS.
fn wrapping_key(env: &Envelope, owned: bool) -> String {
    match env.wrap {
        WrapAlg::V1Unnamed if env.encrypted_key.len() == envelope::V1_AES_EDK_LEN => "aes".into(),
        WrapAlg::V1Unnamed | WrapAlg::RsaOaepSha1 | WrapAlg::RsaOaepSha256Legacy => "rsa".into(),
        WrapAlg::AesWrap | WrapAlg::AesGcm => "aes".into(),
        WrapAlg::Kms | WrapAlg::KmsContext => {
            if owned {
                return "target".into();
            }
            let id = kms_key_id_of(env).or_else(|| ascii_key_id(&env.encrypted_key));
            format!("kms:{}", id.as_deref().unwrap_or("unknown"))
        }
    }
}

/// What a `<key>.instruction` object is to its data object `<key>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstructionRole {
    /// The data object exists and keeps no (complete) envelope in its metadata: this file is its
    /// envelope, counted with it.
    Live,
    /// Nobody's envelope, but it still holds a content key under whatever key wrapped it.
    Orphan(&'static str),
}

/// The role of `<key>.instruction`, from the metadata of `<key>` (`None`: no such object). A
/// malformed envelope in the data object's metadata counts as live: the data object itself is
/// then `unreadable`, and the file is counted with it.
pub fn instruction_role(data_object_metadata: Option<&Metadata>) -> InstructionRole {
    match data_object_metadata.map(envelope::detect) {
        None => InstructionRole::Orphan("its object does not exist"),
        Some(Ok(Detected::Complete(_))) => {
            InstructionRole::Orphan("its object has its own envelope in its metadata")
        }
        Some(_) => InstructionRole::Live,
    }
}

/// The key id a blob starts with, as moto writes them: a UUID (36 characters) or `mrk-` and 32
/// hex digits. AWS's own blobs do not carry the key id in the clear: `None` for those.
pub fn ascii_key_id(blob: &[u8]) -> Option<String> {
    let is_uuid = |s: &[u8]| {
        s.len() == 36
            && s.iter().enumerate().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => *c == b'-',
                _ => c.is_ascii_hexdigit(),
            })
    };
    let is_mrk = |s: &[u8]| {
        s.len() == 36 && s.starts_with(b"mrk-") && s[4..].iter().all(u8::is_ascii_hexdigit)
    };
    let head = blob.get(..36)?;
    (is_uuid(head) || is_mrk(head)).then(|| String::from_utf8_lossy(head).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Context;
    use crate::rekey::plan::TargetKey;

    const TARGET: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";
    const OTHER: &str = "99999999-8888-7777-6666-555555555555";

    fn owned_by_blob(e: &Envelope) -> bool {
        target().owns_blob(&e.encrypted_key)
    }

    fn target() -> TargetKey {
        TargetKey {
            aws_backed: false,
            key_id: TARGET.into(),
            arn: format!("arn:aws:kms:us-east-1:123456789012:key/{TARGET}"),
        }
    }

    fn moto_blob(key_id: &str) -> Vec<u8> {
        let mut b = key_id.as_bytes().to_vec();
        b.extend_from_slice(&[7u8; 60]);
        b
    }

    fn env(v: Version, c: ContentAlg, w: WrapAlg, edk: &[u8], loc: Location) -> Envelope {
        Envelope {
            version: v,
            content_alg: c,
            wrap: w,
            encrypted_key: edk.to_vec(),
            iv: vec![0; 12],
            matdesc: Context::new(),
            encryption_context: Context::new(),
            message_id: Vec::new(),
            commitment: Vec::new(),
            plaintext_length: None,
            location: loc,
        }
    }

    /// (name, envelope, class, reason, key column).
    #[test]
    fn table() {
        use ContentAlg::{AesCbc as Cbc, AesGcm as Gcm, AesGcmCommitting as Commit};
        use Location::{InstructionFile as File, ObjectMetadata as Meta};
        use Version::*;
        use WrapAlg::*;
        let (t, o) = (moto_blob(TARGET), moto_blob(OTHER));
        let rem = |r| (Class::Remaining, Some(r));
        let cur = (Class::Current, None);
        let other = format!("kms:{OTHER}");
        #[rustfmt::skip]
        type Case<'a> = (&'a str, Envelope, (Class, Option<Reason>), &'a str);
        let cases: Vec<Case> = vec![
            (
                "v2 kms+context gcm target",
                env(V2, Gcm, KmsContext, &t, Meta),
                cur,
                "target",
            ),
            (
                "v3 kms+context target",
                env(V3, Commit, KmsContext, &t, Meta),
                cur,
                "target",
            ),
            (
                "v1 aes-ecb cbc",
                env(V1, Cbc, V1Unnamed, &[0; 48], Meta),
                rem(Reason::LegacyWrap),
                "aes",
            ),
            (
                "v1 rsa cbc",
                env(V1, Cbc, V1Unnamed, &[0; 256], Meta),
                rem(Reason::LegacyWrap),
                "rsa",
            ),
            (
                "v1 in a file",
                env(V1, Cbc, V1Unnamed, &[0; 48], File),
                rem(Reason::LegacyWrap),
                "aes",
            ),
            (
                "v2 kms target (legacy wrap)",
                env(V2, Gcm, Kms, &t, Meta),
                rem(Reason::LegacyWrap),
                "target",
            ),
            (
                "v2 kms cbc other",
                env(V2, Cbc, Kms, &o, Meta),
                rem(Reason::LegacyWrap),
                &other,
            ),
            (
                "v2 aeswrap gcm",
                env(V2, Gcm, AesWrap, &[0; 40], Meta),
                rem(Reason::LegacyWrap),
                "aes",
            ),
            (
                "v2 rsa-oaep-256",
                env(V2, Gcm, RsaOaepSha256Legacy, &[0; 256], Meta),
                rem(Reason::LegacyWrap),
                "rsa",
            ),
            (
                "v2 aes/gcm",
                env(V2, Gcm, AesGcm, &[0; 60], Meta),
                rem(Reason::RawKey),
                "aes",
            ),
            (
                "v2 rsa-oaep-sha1",
                env(V2, Gcm, RsaOaepSha1, &[0; 256], Meta),
                rem(Reason::RawKey),
                "rsa",
            ),
            (
                "v3 raw aes",
                env(V3, Commit, AesGcm, &[0; 60], Meta),
                rem(Reason::RawKey),
                "aes",
            ),
            (
                "v3 raw rsa",
                env(V3, Commit, RsaOaepSha1, &[0; 256], Meta),
                rem(Reason::RawKey),
                "rsa",
            ),
            (
                "v2 kms+context other",
                env(V2, Gcm, KmsContext, &o, Meta),
                rem(Reason::OtherKmsKey),
                &other,
            ),
            (
                "v3 kms+context other",
                env(V3, Commit, KmsContext, &o, Meta),
                rem(Reason::OtherKmsKey),
                &other,
            ),
            (
                "aws blob, other key",
                env(V2, Gcm, KmsContext, &[1, 2, 3, 0, 0x78, 9, 9], Meta),
                rem(Reason::OtherKmsKey),
                "kms:unknown",
            ),
            (
                "kms+context target cbc",
                env(V2, Cbc, KmsContext, &t, Meta),
                rem(Reason::CbcContent),
                "target",
            ),
            (
                "v2 target in a file",
                env(V2, Gcm, KmsContext, &t, File),
                rem(Reason::InstructionFile),
                "target",
            ),
            (
                "v3 target in a file",
                env(V3, Commit, KmsContext, &t, File),
                rem(Reason::InstructionFile),
                "target",
            ),
            (
                "other key in a file",
                env(V2, Gcm, KmsContext, &o, File),
                rem(Reason::OtherKmsKey),
                &other,
            ),
        ];
        for (name, e, (class, reason), key) in cases {
            let v = classify_envelope(&e, owned_by_blob(&e), &Goal::default());
            assert_eq!((v.class, v.reason), (class, reason), "{name}");
            assert_eq!(v.key, key, "{name}");
            // rekey skips exactly what the census counts as current, and acts on the rest,
            // whatever the target format and instruction-file choice.
            for goal in all_goals() {
                let v = classify_envelope(&e, owned_by_blob(&e), &goal);
                let plan =
                    crate::rekey::plan::classify_envelope(&e, owned_by_blob(&e), false, &goal);
                assert_eq!(
                    plan == crate::rekey::plan::Action::Skip(
                        crate::rekey::plan::SkipReason::Current
                    ),
                    v.class == Class::Current,
                    "{name} {goal:?}: rekey's plan {plan:?} agrees with the census {v:?}"
                );
                assert_ne!(v.reason, Some(Reason::Unreadable), "{name} {goal:?}");
            }
        }
    }

    fn all_goals() -> Vec<Goal> {
        let mut goals = Vec::new();
        for format in [TargetFormat::V2, TargetFormat::V3] {
            for keep_instruction_files in [false, true] {
                goals.push(Goal {
                    format,
                    keep_instruction_files,
                });
            }
        }
        goals
    }

    /// `--target-format v3` and `--keep-instruction-files`: what changes against the default.
    #[test]
    fn goals() {
        use ContentAlg::{AesGcm as Gcm, AesGcmCommitting as Commit};
        use Location::{InstructionFile as File, ObjectMetadata as Meta};
        use Version::*;
        use WrapAlg::*;
        let t = moto_blob(TARGET);
        let v3 = Goal {
            format: TargetFormat::V3,
            keep_instruction_files: false,
        };
        let keep = Goal {
            format: TargetFormat::V2,
            keep_instruction_files: true,
        };
        let cases: Vec<(&str, Envelope, Goal, Option<Reason>)> = vec![
            (
                "v2 target, v3",
                env(V2, Gcm, KmsContext, &t, Meta),
                v3,
                Some(Reason::NotKeyCommitting),
            ),
            (
                "v3 target, v3",
                env(V3, Commit, KmsContext, &t, Meta),
                v3,
                None,
            ),
            (
                "v2 target in a file, v3",
                env(V2, Gcm, KmsContext, &t, File),
                v3,
                Some(Reason::NotKeyCommitting),
            ),
            (
                "v3 target in a file, v3",
                env(V3, Commit, KmsContext, &t, File),
                v3,
                Some(Reason::InstructionFile),
            ),
            (
                "v2 target in a file, keep",
                env(V2, Gcm, KmsContext, &t, File),
                keep,
                None,
            ),
            (
                "v3 target in a file, keep",
                env(V3, Commit, KmsContext, &t, File),
                keep,
                None,
            ),
            (
                "v2 raw aes in a file, keep",
                env(V2, Gcm, AesGcm, &[0; 60], File),
                keep,
                Some(Reason::RawKey),
            ),
        ];
        for (name, e, goal, reason) in cases {
            let v = classify_envelope(&e, owned_by_blob(&e), &goal);
            assert_eq!(v.reason, reason, "{name}");
            assert_eq!(v.class == Class::Current, reason.is_none(), "{name}");
        }
    }

    #[test]
    fn labels_of_rows() {
        let e = env(
            Version::V1,
            ContentAlg::AesCbc,
            WrapAlg::V1Unnamed,
            &[0; 48],
            Location::ObjectMetadata,
        );
        let v = classify_envelope(&e, owned_by_blob(&e), &Goal::default());
        assert_eq!((v.format, v.wrap, v.content), ("v1", "aes-ecb", "cbc"));
    }

    #[test]
    fn the_legacy_kms_matdesc_names_its_key() {
        let mut e = env(
            Version::V2,
            ContentAlg::AesGcm,
            WrapAlg::Kms,
            &[1, 2, 3],
            Location::ObjectMetadata,
        );
        e.encryption_context
            .insert(crate::consts::EC_KMS_CMK_ID.into(), "alias/old".into());
        assert_eq!(
            classify_envelope(&e, owned_by_blob(&e), &Goal::default()).key,
            "kms:alias/old"
        );
    }

    #[test]
    fn noncurrent_versions() {
        let e = env(
            Version::V1,
            ContentAlg::AesCbc,
            WrapAlg::V1Unnamed,
            &[0; 48],
            Location::ObjectMetadata,
        );
        let v = classify_envelope(&e, owned_by_blob(&e), &Goal::default()).noncurrent();
        assert_eq!(v.reason, Some(Reason::NoncurrentVersion));
        assert_eq!(v.detail.as_deref(), Some("legacy-wrap"));
        assert_eq!(Verdict::plaintext().noncurrent(), Verdict::plaintext());
        let cur = env(
            Version::V2,
            ContentAlg::AesGcm,
            WrapAlg::KmsContext,
            &moto_blob(TARGET),
            Location::ObjectMetadata,
        );
        assert_eq!(
            classify_envelope(&cur, owned_by_blob(&cur), &Goal::default())
                .noncurrent()
                .class,
            Class::Current
        );
        let u = Verdict::unreadable("AccessDenied").noncurrent();
        assert_eq!(u.detail.as_deref(), Some("unreadable: AccessDenied"));
    }

    #[test]
    fn instruction_roles() {
        use InstructionRole::*;
        let e = env(
            Version::V2,
            ContentAlg::AesGcm,
            WrapAlg::KmsContext,
            &moto_blob(TARGET),
            Location::ObjectMetadata,
        );
        let mut e = e;
        e.encryption_context.insert(
            crate::consts::EC_CEK_ALG.into(),
            crate::consts::CEK_GCM.into(),
        );
        let (_, file) = e.to_instruction_file();
        let complete = e.to_metadata();
        assert!(matches!(
            envelope::detect(&complete),
            Ok(Detected::Complete(_))
        ));
        let mut plain = Metadata::new();
        plain.insert("owner".into(), "app".into());
        // A V3 object keeps its header in the metadata and its key in the file: live.
        let mut v3 = env(
            Version::V3,
            ContentAlg::AesGcmCommitting,
            WrapAlg::KmsContext,
            &moto_blob(TARGET),
            Location::ObjectMetadata,
        );
        v3.message_id = vec![1; 28];
        v3.commitment = vec![2; 28];
        let (v3_header, _) = v3.to_instruction_file();
        let mut broken = Metadata::new();
        broken.insert("x-amz-key-v2".into(), "AAAA".into());
        assert!(!file.is_empty());
        assert!(matches!(instruction_role(None), Orphan(_)));
        assert!(matches!(instruction_role(Some(&complete)), Orphan(_)));
        assert_eq!(instruction_role(Some(&plain)), Live);
        assert_eq!(instruction_role(Some(&v3_header)), Live);
        assert_eq!(instruction_role(Some(&broken)), Live);
    }

    #[test]
    fn key_ids_from_moto_blobs() {
        assert_eq!(ascii_key_id(&moto_blob(OTHER)).as_deref(), Some(OTHER));
        let mrk = "mrk-4321abcd12ab34cd56ef1234567890ab";
        assert_eq!(ascii_key_id(&moto_blob(mrk)).as_deref(), Some(mrk));
        assert_eq!(ascii_key_id(&[1, 2, 3]), None);
        assert_eq!(ascii_key_id(&[b'a'; 80]), None);
        assert_eq!(
            ascii_key_id(b"zzzzzzzz-8888-7777-6666-555555555555xx"),
            None
        );
    }

    #[test]
    fn names_are_stable() {
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "legacy-wrap",
                "cbc-content",
                "not-key-committing",
                "raw-key",
                "other-kms-key",
                "instruction-file",
                "noncurrent-version",
                "orphan-instruction",
                "unreadable"
            ]
        );
        for r in Reason::ALL {
            assert_eq!(serde_json::to_value(r).ok(), Some(r.as_str().into()));
        }
    }
}
