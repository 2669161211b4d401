//! The envelope codec: S3 user metadata (and instruction-file JSON) <-> a typed [`Envelope`].
//!
//! Pure: no I/O, no keys. Formats, detection order and quirks follow FORMATS.md §1 and §4, which
//! cite the AWS S3 encryption client specification (`s3-encryption/data-format/content-metadata.md`,
//! `metadata-strategy.md`) and `ContentMetadataDecodingStrategy` of the Java client.
//!
//! Decoding is forgiving where real writers differ (an empty value is absent, instruction files may
//! hold numbers, non-ASCII values arrive RFC 2047-encoded, JSON is parsed and never string-compared)
//! and strict where ambiguity could be abused (two key fields at once, a V3 instruction file that
//! tries to override the commitment).

pub mod rfc2047;

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::consts::*;

/// Object user metadata as S3 returns it: keys lowercased, without the `x-amz-meta-` prefix.
pub type Metadata = BTreeMap<String, String>;
/// A material description or KMS encryption context: a flat JSON object of strings.
pub type Context = BTreeMap<String, String>;

/// Errors of the envelope codec: the metadata does not describe a well-formed envelope.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// More than one of `x-amz-key`, `x-amz-key-v2`, `x-amz-3`: refuse rather than guess.
    #[error("conflicting envelope: more than one of x-amz-key, x-amz-key-v2, x-amz-3 is present")]
    Conflicting,
    /// A field the envelope needs is missing.
    #[error("malformed envelope: {0} is missing")]
    Missing(&'static str),
    /// A field is present but its value cannot be used.
    #[error("malformed envelope: {field} is invalid ({reason})")]
    Invalid { field: &'static str, reason: String },
    /// An algorithm this implementation does not know (a newer writer, or garbage).
    #[error("unknown {field}: {value:?}")]
    Unknown { field: &'static str, value: String },
    /// A V3 instruction file carried a field that must live in object metadata.
    #[error("instruction file may not contain {0}: it must come from the object's metadata")]
    InstructionFileOverride(&'static str),
    /// The instruction file is not a JSON object.
    #[error("instruction file is not a JSON object: {0}")]
    InstructionFileJson(String),
}

/// Envelope generation, by the key field that carries the encrypted data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// `x-amz-key` (2014 and earlier): CBC content, ECB or PKCS#1 wrapped key.
    V1,
    /// `x-amz-key-v2`: named content cipher and wrap algorithm.
    V2,
    /// `x-amz-3` with `x-amz-c` = 115: compressed keys, key commitment.
    V3,
}

/// The content cipher (the algorithm suite).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentAlg {
    /// AES/CBC/PKCS5Padding, suite 0x0070: unauthenticated, legacy.
    AesCbc,
    /// AES/GCM/NoPadding with a 12-byte IV and 16-byte tag, suite 0x0072.
    AesGcm,
    /// AES-GCM with an HKDF-SHA512-derived key and a key commitment, suite 0x0073 (V3).
    AesGcmCommitting,
}

impl ContentAlg {
    /// The name this suite goes by in `x-amz-cek-alg` and in `aws:x-amz-cek-alg`.
    pub fn wire_name(self) -> &'static str {
        match self {
            ContentAlg::AesCbc => CEK_CBC,
            ContentAlg::AesGcm => CEK_GCM,
            ContentAlg::AesGcmCommitting => V3_SUITE_COMMIT,
        }
    }

    /// Unauthenticated content: readable only with the legacy opt-in.
    pub fn is_legacy(self) -> bool {
        self == ContentAlg::AesCbc
    }

    /// The name a person reads, then the wire name it goes by:
    /// `AES-GCM, key-committing (V3 suite 115)`, `AES-GCM (AES/GCM/NoPadding)`.
    pub fn display_name(self) -> String {
        let name = match self {
            ContentAlg::AesCbc => "AES-CBC, unauthenticated",
            ContentAlg::AesGcm => "AES-GCM",
            ContentAlg::AesGcmCommitting => "AES-GCM, key-committing",
        };
        match self {
            ContentAlg::AesGcmCommitting => format!("{name} (V3 suite {})", self.wire_name()),
            _ => format!("{name} ({})", self.wire_name()),
        }
    }
}

/// How the content key is wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WrapAlg {
    /// V1 with no wrap-alg field: AES/ECB/PKCS5 (48-byte EDK) or RSA PKCS#1 v1.5 (anything
    /// longer). Which one is decided by the key material at hand.
    V1Unnamed,
    /// `AESWrap`, RFC 3394 (legacy).
    AesWrap,
    /// `AES/GCM`: nonce(12) || ct(32) || tag(16), AAD = the content cipher's name.
    AesGcm,
    /// `RSA-OAEP-SHA1`: OAEP(SHA-1) over `len || CEK || cek-alg`.
    RsaOaepSha1,
    /// `RSA/ECB/OAEPWithSHA-256AndMGF1Padding` (legacy; MGF1 hash depends on the Java provider).
    RsaOaepSha256Legacy,
    /// `kms` (legacy): context = the material description.
    Kms,
    /// `kms+context`: context = caller context + `aws:x-amz-cek-alg`.
    KmsContext,
}

impl WrapAlg {
    /// Legacy wraps are readable only with the legacy opt-in.
    pub fn is_legacy(self) -> bool {
        !matches!(
            self,
            WrapAlg::AesGcm | WrapAlg::RsaOaepSha1 | WrapAlg::KmsContext
        )
    }

    /// True for the KMS wraps, whose `x-amz-matdesc` is an encryption context.
    pub fn is_kms(self) -> bool {
        matches!(self, WrapAlg::Kms | WrapAlg::KmsContext)
    }

    /// The `x-amz-wrap-alg` value (V2); `None` for V1, which has no such field.
    pub fn v2_name(self) -> Option<&'static str> {
        Some(match self {
            WrapAlg::V1Unnamed => return None,
            WrapAlg::AesWrap => WRAP_AES_KW,
            WrapAlg::AesGcm => WRAP_AES_GCM,
            WrapAlg::RsaOaepSha1 => WRAP_RSA_OAEP_SHA1,
            WrapAlg::RsaOaepSha256Legacy => WRAP_RSA_OAEP_SHA256_LEGACY,
            WrapAlg::Kms => WRAP_KMS,
            WrapAlg::KmsContext => WRAP_KMS_CONTEXT,
        })
    }

    fn from_v2_name(name: &str) -> Result<Self, EnvelopeError> {
        Ok(match name {
            WRAP_AES_KW => WrapAlg::AesWrap,
            WRAP_AES_GCM => WrapAlg::AesGcm,
            WRAP_RSA_OAEP_SHA1 => WrapAlg::RsaOaepSha1,
            WRAP_RSA_OAEP_SHA256_LEGACY => WrapAlg::RsaOaepSha256Legacy,
            WRAP_KMS => WrapAlg::Kms,
            WRAP_KMS_CONTEXT => WrapAlg::KmsContext,
            other => return Err(unknown("x-amz-wrap-alg", other)),
        })
    }

    /// The `x-amz-w` code (V3); only the three non-legacy wraps have one.
    pub fn v3_code(self) -> Option<&'static str> {
        match self {
            WrapAlg::AesGcm => Some(V3_WRAP_AES_GCM),
            WrapAlg::KmsContext => Some(V3_WRAP_KMS_CONTEXT),
            WrapAlg::RsaOaepSha1 => Some(V3_WRAP_RSA_OAEP_SHA1),
            _ => None,
        }
    }

    fn from_v3_code(code: &str) -> Result<Self, EnvelopeError> {
        Ok(match code {
            V3_WRAP_AES_GCM => WrapAlg::AesGcm,
            V3_WRAP_KMS_CONTEXT => WrapAlg::KmsContext,
            V3_WRAP_RSA_OAEP_SHA1 => WrapAlg::RsaOaepSha1,
            other => return Err(unknown("x-amz-w", other)),
        })
    }
}

impl fmt::Display for WrapAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.v2_name().unwrap_or("V1 (AES/ECB or RSA PKCS#1)"))
    }
}

/// Where the envelope's key fields live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    ObjectMetadata,
    /// In `<key>.instruction` (V3: only `x-amz-3`, `x-amz-w`, `x-amz-m`/`x-amz-t`).
    InstructionFile,
}

/// Everything the metadata says about how an object was encrypted.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    pub version: Version,
    pub content_alg: ContentAlg,
    pub wrap: WrapAlg,
    /// The encrypted data key (EDK) as stored, base64-decoded.
    pub encrypted_key: Vec<u8>,
    /// Content IV (V1/V2: 16 bytes for CBC, 12 for GCM). Empty for V3, whose IV is fixed.
    pub iv: Vec<u8>,
    /// Material description of raw-key wraps (`x-amz-matdesc` / `x-amz-m`).
    pub matdesc: Context,
    /// KMS encryption context of KMS wraps (`x-amz-matdesc` for V2 KMS wraps, `x-amz-t` for V3).
    pub encryption_context: Context,
    /// V3 message id (`x-amz-i`), 28 bytes.
    pub message_id: Vec<u8>,
    /// V3 key commitment (`x-amz-d`), 28 bytes.
    pub commitment: Vec<u8>,
    /// `x-amz-unencrypted-content-length`, when the writer recorded it.
    pub plaintext_length: Option<u64>,
    pub location: Location,
}

impl fmt::Debug for Envelope {
    // The EDK is not secret, but it is long and useless in logs: show its size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("version", &self.version)
            .field("content_alg", &self.content_alg)
            .field("wrap", &self.wrap)
            .field("encrypted_key_len", &self.encrypted_key.len())
            .field("matdesc", &self.matdesc)
            .field("encryption_context", &self.encryption_context)
            .field("plaintext_length", &self.plaintext_length)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// What the object's own metadata says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// The whole envelope is in the object's metadata.
    Complete(Envelope),
    /// V3 with the key fields in `<key>.instruction`: call [`Detected::complete_with_instruction_file`].
    V3InstructionFile(V3Header),
    /// No envelope in the metadata: either an instruction-file object (V1/V2) or plaintext.
    /// Only the presence of `<key>.instruction` can tell.
    NoEnvelopeInMetadata,
}

/// The V3 fields that always stay in object metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V3Header {
    pub message_id: Vec<u8>,
    pub commitment: Vec<u8>,
    pub plaintext_length: Option<u64>,
}

impl Detected {
    /// Completes the detection with the body of `<key>.instruction`.
    pub fn complete_with_instruction_file(
        self,
        object_metadata: &Metadata,
        instruction_json: &[u8],
    ) -> Result<Envelope, EnvelopeError> {
        let file = parse_instruction_file(instruction_json)?;
        let fields = Fields::new(&file);
        match self {
            Detected::Complete(env) => Ok(env),
            Detected::V3InstructionFile(header) => {
                for key in [V3_CONTENT_ALG, V3_COMMITMENT, V3_MESSAGE_ID] {
                    if fields.get(key).is_some() {
                        return Err(EnvelopeError::InstructionFileOverride(key));
                    }
                }
                let mut env = decode_v3(&fields, header)?;
                env.location = Location::InstructionFile;
                Ok(env)
            }
            Detected::NoEnvelopeInMetadata => {
                let mut env = decode_v1_v2(&fields)?;
                env.location = Location::InstructionFile;
                // Writers that keep the file put the length on the object (GO1 puts it in both).
                if env.plaintext_length.is_none() {
                    env.plaintext_length =
                        parse_len(Fields::new(object_metadata).get(UNENCRYPTED_CONTENT_LENGTH))?;
                }
                Ok(env)
            }
        }
    }
}

/// Reads the object's metadata: detection order of FORMATS.md §1 (Java's
/// `ContentMetadataDecodingStrategy.decode`).
pub fn detect(metadata: &Metadata) -> Result<Detected, EnvelopeError> {
    let f = Fields::new(metadata);
    let present = [KEY_V1, KEY_V2, V3_KEY]
        .iter()
        .filter(|k| f.get(k).is_some())
        .count();
    if present > 1 {
        return Err(EnvelopeError::Conflicting);
    }
    if f.get(IV).is_some() && (f.get(KEY_V1).is_some() || f.get(KEY_V2).is_some()) {
        return decode_v1_v2(&f).map(Detected::Complete);
    }
    if f.get(V3_CONTENT_ALG).is_some()
        && f.get(V3_COMMITMENT).is_some()
        && f.get(V3_MESSAGE_ID).is_some()
    {
        let header = v3_header(&f)?;
        if f.get(V3_KEY).is_some() {
            return decode_v3(&f, header).map(Detected::Complete);
        }
        return Ok(Detected::V3InstructionFile(header));
    }
    // A key field without the rest is a broken envelope, not plaintext.
    if present == 1 {
        return Err(EnvelopeError::Missing(if f.get(V3_KEY).is_some() {
            "x-amz-c/x-amz-d/x-amz-i"
        } else {
            "x-amz-iv"
        }));
    }
    Ok(Detected::NoEnvelopeInMetadata)
}

/// Decodes an envelope that is wholly in object metadata (no instruction file).
pub fn decode(metadata: &Metadata) -> Result<Envelope, EnvelopeError> {
    match detect(metadata)? {
        Detected::Complete(env) => Ok(env),
        Detected::V3InstructionFile(_) => {
            Err(EnvelopeError::Missing("x-amz-3 (in an instruction file)"))
        }
        Detected::NoEnvelopeInMetadata => {
            Err(EnvelopeError::Missing("x-amz-key / x-amz-key-v2 / x-amz-3"))
        }
    }
}

/// True if the metadata carries any envelope field (used to tell plaintext from encrypted).
pub fn has_envelope_fields(metadata: &Metadata) -> bool {
    let f = Fields::new(metadata);
    [KEY_V1, KEY_V2, V3_KEY, V3_CONTENT_ALG, IV]
        .iter()
        .any(|k| f.get(k).is_some())
}

/// The metadata keys that belong to the envelope (and are replaced when an object is re-keyed).
pub const ENVELOPE_KEYS: &[&str] = &[
    KEY_V1,
    KEY_V2,
    IV,
    MATDESC,
    CEK_ALG,
    WRAP_ALG,
    TAG_LEN,
    UNENCRYPTED_CONTENT_LENGTH,
    UNENCRYPTED_CONTENT_MD5,
    V3_CONTENT_ALG,
    V3_KEY,
    V3_WRAP,
    V3_MATDESC,
    V3_ENC_CONTEXT,
    V3_COMMITMENT,
    V3_MESSAGE_ID,
];

impl Envelope {
    /// Encodes into object metadata (location [`Location::ObjectMetadata`]).
    pub fn to_metadata(&self) -> Metadata {
        let mut m = Metadata::new();
        self.write_key_fields(&mut m);
        self.write_object_fields(&mut m);
        m
    }

    /// Encodes for an instruction file: `(object metadata, instruction file JSON)`.
    pub fn to_instruction_file(&self) -> (Metadata, Vec<u8>) {
        let mut object = Metadata::new();
        self.write_object_fields(&mut object);
        let mut file = Metadata::new();
        // Only envelope keys: AWS's Python client refuses a file with any other key (its
        // `VALID_S3EC_METADATA_KEYS`), so the plaintext length stays on the object.
        self.write_key_fields(&mut file);
        let json = serde_json::to_vec(&file).unwrap_or_default();
        (object, json)
    }

    /// The fields that stay on the object even when the rest goes to an instruction file.
    fn write_object_fields(&self, m: &mut Metadata) {
        if self.version == Version::V3 {
            m.insert(V3_CONTENT_ALG.into(), V3_SUITE_COMMIT.into());
            m.insert(V3_COMMITMENT.into(), B64.encode(&self.commitment));
            m.insert(V3_MESSAGE_ID.into(), B64.encode(&self.message_id));
        }
        if let Some(n) = self.plaintext_length {
            m.insert(UNENCRYPTED_CONTENT_LENGTH.into(), n.to_string());
        }
    }

    fn write_key_fields(&self, m: &mut Metadata) {
        match self.version {
            Version::V1 => {
                m.insert(KEY_V1.into(), B64.encode(&self.encrypted_key));
                m.insert(IV.into(), B64.encode(&self.iv));
                m.insert(MATDESC.into(), context_json(&self.matdesc));
                // No SDK writes V1 with GCM content, but the decoder (like Java v1's) takes a
                // cek-alg beside x-amz-key: keep it, or the envelope would come back as CBC.
                if self.content_alg != ContentAlg::AesCbc {
                    m.insert(CEK_ALG.into(), self.content_alg.wire_name().into());
                }
            }
            Version::V2 => {
                m.insert(KEY_V2.into(), B64.encode(&self.encrypted_key));
                m.insert(IV.into(), B64.encode(&self.iv));
                m.insert(CEK_ALG.into(), self.content_alg.wire_name().into());
                if let Some(w) = self.wrap.v2_name() {
                    m.insert(WRAP_ALG.into(), w.into());
                }
                if self.content_alg == ContentAlg::AesGcm {
                    m.insert(TAG_LEN.into(), GCM_TAG_LEN_BITS.into());
                }
                let desc = if self.wrap.is_kms() {
                    &self.encryption_context
                } else {
                    &self.matdesc
                };
                m.insert(MATDESC.into(), context_json(desc));
            }
            Version::V3 => {
                m.insert(V3_KEY.into(), B64.encode(&self.encrypted_key));
                if let Some(w) = self.wrap.v3_code() {
                    m.insert(V3_WRAP.into(), w.into());
                }
                if self.wrap.is_kms() {
                    m.insert(
                        V3_ENC_CONTEXT.into(),
                        context_json(&self.encryption_context),
                    );
                } else {
                    m.insert(V3_MATDESC.into(), context_json(&self.matdesc));
                }
            }
        }
    }

    /// Length of the plaintext given the stored object length, by the cipher's arithmetic
    /// (GCM: minus the tag; CBC: unknowable exactly without the last block, so `None` unless the
    /// writer recorded it).
    pub fn plaintext_len_for(&self, ciphertext_len: u64) -> Option<u64> {
        if let Some(n) = self.plaintext_length {
            return Some(n);
        }
        match self.content_alg {
            ContentAlg::AesCbc => None,
            _ => ciphertext_len.checked_sub(GCM_TAG_LEN as u64),
        }
    }

    /// Checks `x-amz-unencrypted-content-length` against the stored body length by the cipher's
    /// arithmetic: a GCM or V3 body is the plaintext and a 16-byte tag; a CBC body is the
    /// plaintext and 1 to 16 bytes of padding. The field is not authenticated, and a reader
    /// sizes ranges and uploads by it, so a length that cannot be is a malformed envelope,
    /// refused before any key is unwrapped. (A CBC length within the padding's slack is
    /// checked after decryption, by [`crate::codec::ObjectDecryptor`].)
    pub fn check_stored_length(&self, stored: u64) -> Result<(), EnvelopeError> {
        let Some(n) = self.plaintext_length else {
            return Ok(());
        };
        let possible = match self.content_alg {
            ContentAlg::AesCbc => n < stored && stored - n <= AES_BLOCK as u64,
            ContentAlg::AesGcm | ContentAlg::AesGcmCommitting => {
                stored.checked_sub(GCM_TAG_LEN as u64) == Some(n)
            }
        };
        if possible {
            Ok(())
        } else {
            Err(invalid(
                UNENCRYPTED_CONTENT_LENGTH,
                format!("{n} bytes of plaintext cannot make a {stored}-byte body"),
            ))
        }
    }

    /// A short name for reports and metrics labels: `v1-aes`, `v2-kms-cbc`, `v3-kms+context`, …
    pub fn format_name(&self) -> String {
        let (v, wrap, content) = self.labels();
        format!("{v}-{wrap}-{content}")
    }

    /// The three parts of [`Self::format_name`]: version (`v1`), wrap (`aes-ecb`,
    /// `kms+context`, …) and content cipher (`cbc`, `gcm`, `committing`).
    pub fn labels(&self) -> (&'static str, &'static str, &'static str) {
        let version = match self.version {
            Version::V1 => "v1",
            Version::V2 => "v2",
            Version::V3 => "v3",
        };
        let wrap = match self.wrap {
            WrapAlg::V1Unnamed if self.encrypted_key.len() == V1_AES_EDK_LEN => "aes-ecb",
            WrapAlg::V1Unnamed => "rsa-pkcs1",
            WrapAlg::AesWrap => "aeswrap",
            WrapAlg::AesGcm => "aes-gcm",
            WrapAlg::RsaOaepSha1 => "rsa-oaep-sha1",
            WrapAlg::RsaOaepSha256Legacy => "rsa-oaep-sha256",
            WrapAlg::Kms => "kms",
            WrapAlg::KmsContext => "kms+context",
        };
        let content = match self.content_alg {
            ContentAlg::AesCbc => "cbc",
            ContentAlg::AesGcm => "gcm",
            ContentAlg::AesGcmCommitting => "committing",
        };
        (version, wrap, content)
    }
}

/// A V1 AES/ECB-wrapped 256-bit key is 48 bytes (32 + a padding block); RSA-wrapped ones are
/// longer. V1 names no wrap algorithm, so the length tells them apart.
pub const V1_AES_EDK_LEN: usize = 48;

/// Compact JSON of a context. Non-ASCII characters are written as `\uXXXX` escapes, so the value
/// is plain ASCII and survives S3's header encoding untouched; every JSON parser reads it back.
/// An `=` before a `?` is written `\u003d`: a literal `=?…?=` in a key or value would otherwise
/// be taken for an RFC 2047 encoded word when the header is read back (found by fuzzing).
pub fn context_json(ctx: &Context) -> String {
    let json = serde_json::to_string(ctx).unwrap_or_else(|_| "{}".into());
    let mut out = String::with_capacity(json.len());
    let mut chars = json.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '=' && chars.peek() == Some(&'?') {
            out.push_str("\\u003d");
        } else if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// Parses a material description / encryption context (after RFC 2047 decoding).
pub fn parse_context(field: &'static str, raw: &str) -> Result<Context, EnvelopeError> {
    let text = rfc2047::decode(raw).ok_or_else(|| invalid(field, "bad RFC 2047 encoded word"))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| invalid(field, format!("not JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(invalid(field, "not a JSON object"));
    };
    map.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            other => Err(invalid(
                field,
                format!("value of {k:?} is not a string: {other}"),
            )),
        })
        .collect()
}

/// Metadata lookup with the quirks: an empty value is absent (Go S3EC v4 writes empty strings).
struct Fields<'a>(&'a Metadata);

impl<'a> Fields<'a> {
    fn new(m: &'a Metadata) -> Self {
        Fields(m)
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    fn require(&self, key: &'static str) -> Result<&'a str, EnvelopeError> {
        self.get(key).ok_or(EnvelopeError::Missing(key))
    }

    fn b64(&self, key: &'static str) -> Result<Vec<u8>, EnvelopeError> {
        B64.decode(self.require(key)?.trim())
            .map_err(|e| invalid(key, format!("not base64: {e}")))
    }

    fn context(&self, key: &'static str) -> Result<Context, EnvelopeError> {
        self.get(key)
            .map_or_else(|| Ok(Context::new()), |raw| parse_context(key, raw))
    }
}

fn decode_v1_v2(f: &Fields<'_>) -> Result<Envelope, EnvelopeError> {
    // The conflict rule holds for instruction files too.
    if [KEY_V1, KEY_V2, V3_KEY]
        .iter()
        .filter(|k| f.get(k).is_some())
        .count()
        > 1
    {
        return Err(EnvelopeError::Conflicting);
    }
    let (version, encrypted_key) = if f.get(KEY_V2).is_some() {
        (Version::V2, f.b64(KEY_V2)?)
    } else {
        (Version::V1, f.b64(KEY_V1)?)
    };
    let iv = f.b64(IV)?;
    let content_alg = match f.get(CEK_ALG) {
        // Absent means CBC (J1 package-info; Java S3EC ContentMetadataDecodingStrategy).
        None | Some(CEK_CBC) | Some(CEK_CBC_PKCS7) => ContentAlg::AesCbc,
        Some(CEK_GCM) => ContentAlg::AesGcm,
        Some(other) => return Err(unknown("x-amz-cek-alg", other)),
    };
    let wrap = match version {
        Version::V1 => WrapAlg::V1Unnamed,
        _ => WrapAlg::from_v2_name(f.require(WRAP_ALG)?.trim())?,
    };
    let expected_iv = if content_alg == ContentAlg::AesGcm {
        GCM_IV_LEN
    } else {
        CBC_IV_LEN
    };
    if iv.len() != expected_iv {
        return Err(invalid(
            IV,
            format!("{} bytes, {content_alg:?} needs {expected_iv}", iv.len()),
        ));
    }
    if content_alg == ContentAlg::AesGcm
        && let Some(bits) = f.get(TAG_LEN)
        && bits.trim() != GCM_TAG_LEN_BITS
    {
        return Err(invalid(
            TAG_LEN,
            format!("{bits:?}: only 128-bit tags exist"),
        ));
    }
    let desc = f.context(MATDESC)?;
    let (matdesc, encryption_context) = if wrap.is_kms() {
        (Context::new(), desc)
    } else {
        (desc, Context::new())
    };
    Ok(Envelope {
        version,
        content_alg,
        wrap,
        encrypted_key,
        iv,
        matdesc,
        encryption_context,
        message_id: Vec::new(),
        commitment: Vec::new(),
        plaintext_length: parse_len(f.get(UNENCRYPTED_CONTENT_LENGTH))?,
        location: Location::ObjectMetadata,
    })
}

fn v3_header(f: &Fields<'_>) -> Result<V3Header, EnvelopeError> {
    let suite = f.require(V3_CONTENT_ALG)?;
    if suite.trim() != V3_SUITE_COMMIT {
        return Err(unknown("x-amz-c", suite));
    }
    let message_id = f.b64(V3_MESSAGE_ID)?;
    let commitment = f.b64(V3_COMMITMENT)?;
    if message_id.len() != V3_MESSAGE_ID_LEN {
        return Err(invalid(
            V3_MESSAGE_ID,
            format!("{} bytes, needs 28", message_id.len()),
        ));
    }
    if commitment.len() != V3_COMMITMENT_LEN {
        return Err(invalid(
            V3_COMMITMENT,
            format!("{} bytes, needs 28", commitment.len()),
        ));
    }
    Ok(V3Header {
        message_id,
        commitment,
        plaintext_length: parse_len(f.get(UNENCRYPTED_CONTENT_LENGTH))?,
    })
}

fn decode_v3(f: &Fields<'_>, header: V3Header) -> Result<Envelope, EnvelopeError> {
    let encrypted_key = f.b64(V3_KEY)?;
    let wrap = WrapAlg::from_v3_code(f.require(V3_WRAP)?.trim())?;
    let (matdesc, encryption_context) = if wrap.is_kms() {
        (Context::new(), f.context(V3_ENC_CONTEXT)?)
    } else {
        (f.context(V3_MATDESC)?, Context::new())
    };
    Ok(Envelope {
        version: Version::V3,
        content_alg: ContentAlg::AesGcmCommitting,
        wrap,
        encrypted_key,
        iv: Vec::new(),
        matdesc,
        encryption_context,
        message_id: header.message_id,
        commitment: header.commitment,
        plaintext_length: header.plaintext_length,
        location: Location::ObjectMetadata,
    })
}

/// An instruction file's JSON: a flat object. Numbers are accepted where strings are expected
/// (Ruby writes `"x-amz-tag-len":128`); unknown keys are ignored (GO1 adds some).
pub fn parse_instruction_file(json: &[u8]) -> Result<Metadata, EnvelopeError> {
    let value: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| EnvelopeError::InstructionFileJson(e.to_string()))?;
    let serde_json::Value::Object(map) = value else {
        return Err(EnvelopeError::InstructionFileJson(
            "top level is not an object".into(),
        ));
    };
    let mut out = Metadata::new();
    for (k, v) in map {
        let s = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Null => continue,
            // An embedded object where a JSON string was expected (matdesc written unquoted).
            obj @ serde_json::Value::Object(_) => obj.to_string(),
            serde_json::Value::Array(_) => {
                return Err(EnvelopeError::InstructionFileJson(format!(
                    "{k} is an array"
                )));
            }
        };
        out.insert(k.to_ascii_lowercase(), s);
    }
    Ok(out)
}

fn parse_len(v: Option<&str>) -> Result<Option<u64>, EnvelopeError> {
    v.map(|s| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| invalid(UNENCRYPTED_CONTENT_LENGTH, format!("{s:?}")))
    })
    .transpose()
}

fn invalid(field: &'static str, reason: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn unknown(field: &'static str, value: &str) -> EnvelopeError {
    EnvelopeError::Unknown {
        field,
        value: value.to_owned(),
    }
}

#[cfg(test)]
mod tests;
