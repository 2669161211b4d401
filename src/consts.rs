//! Wire constants: metadata keys, algorithm names and suite ids, each from the AWS S3 encryption
//! client specification (`awslabs/aws-encryption-sdk-specification`, `s3-encryption/`) and the
//! SDKs that write them. See FORMATS.md in the project docs for the sources of every value.

/// S3 user-metadata prefix on the wire; S3 returns metadata keys without it and lowercased.
pub const USER_META_PREFIX: &str = "x-amz-meta-";

// V1 / V2 keys (`data-format/content-metadata.md`).
pub const KEY_V1: &str = "x-amz-key";
pub const KEY_V2: &str = "x-amz-key-v2";
pub const IV: &str = "x-amz-iv";
pub const MATDESC: &str = "x-amz-matdesc";
pub const CEK_ALG: &str = "x-amz-cek-alg";
pub const WRAP_ALG: &str = "x-amz-wrap-alg";
pub const TAG_LEN: &str = "x-amz-tag-len";
pub const UNENCRYPTED_CONTENT_LENGTH: &str = "x-amz-unencrypted-content-length";
pub const UNENCRYPTED_CONTENT_MD5: &str = "x-amz-unencrypted-content-md5";

// V3 compressed keys.
pub const V3_CONTENT_ALG: &str = "x-amz-c";
pub const V3_KEY: &str = "x-amz-3";
pub const V3_WRAP: &str = "x-amz-w";
pub const V3_MATDESC: &str = "x-amz-m";
pub const V3_ENC_CONTEXT: &str = "x-amz-t";
pub const V3_COMMITMENT: &str = "x-amz-d";
pub const V3_MESSAGE_ID: &str = "x-amz-i";

/// Instruction files: `<key>.instruction`, marked with this (possibly empty) user metadata.
pub const INSTRUCTION_SUFFIX: &str = ".instruction";
pub const INSTRUCTION_MARKER: &str = "x-amz-crypto-instr-file";

// Content cipher names (`x-amz-cek-alg`).
pub const CEK_GCM: &str = "AES/GCM/NoPadding";
pub const CEK_CBC: &str = "AES/CBC/PKCS5Padding";
/// Ruby accepts this spelling of CBC too.
pub const CEK_CBC_PKCS7: &str = "AES/CBC/PKCS7Padding";
/// `x-amz-c` value of suite 0x0073 (GCM + HKDF-SHA512 + key commitment), the only V3 suite.
pub const V3_SUITE_COMMIT: &str = "115";
/// Suite id 0x0073 as two bytes: HKDF info prefix and GCM AAD of committing objects.
pub const SUITE_COMMIT_ID: [u8; 2] = [0x00, 0x73];

// Wrap algorithm names (`x-amz-wrap-alg`).
pub const WRAP_KMS: &str = "kms";
pub const WRAP_KMS_CONTEXT: &str = "kms+context";
pub const WRAP_AES_GCM: &str = "AES/GCM";
pub const WRAP_AES_KW: &str = "AESWrap";
pub const WRAP_RSA_OAEP_SHA1: &str = "RSA-OAEP-SHA1";
pub const WRAP_RSA_OAEP_SHA256_LEGACY: &str = "RSA/ECB/OAEPWithSHA-256AndMGF1Padding";

// V3 wrap codes (`x-amz-w`).
pub const V3_WRAP_AES_GCM: &str = "02";
pub const V3_WRAP_KMS_CONTEXT: &str = "12";
pub const V3_WRAP_RSA_OAEP_SHA1: &str = "22";

/// Encryption-context key that binds the content cipher under `kms+context`.
pub const EC_CEK_ALG: &str = "aws:x-amz-cek-alg";
/// Encryption-context key of the legacy `kms` wrap (and stripped from `kms+context` comparisons).
pub const EC_KMS_CMK_ID: &str = "kms_cmk_id";

/// GCM tag length in bytes; `x-amz-tag-len` says it in bits ("128").
pub const GCM_TAG_LEN: usize = 16;
pub const GCM_TAG_LEN_BITS: &str = "128";
pub const GCM_IV_LEN: usize = 12;
pub const CBC_IV_LEN: usize = 16;
pub const AES_BLOCK: usize = 16;
/// Every content key AWS's clients write is AES-256.
pub const DATA_KEY_LEN: usize = 32;
/// V3 message id and key commitment lengths.
pub const V3_MESSAGE_ID_LEN: usize = 28;
pub const V3_COMMITMENT_LEN: usize = 28;
/// GCM's limit: 2^36 - 32 bytes of plaintext under one (key, IV).
pub const GCM_MAX_PLAINTEXT: u64 = (1 << 36) - 32;
