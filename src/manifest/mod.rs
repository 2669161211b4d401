//! Manifests that name the objects to re-key instead of a listing: pure parsing, no I/O.
//!
//! # Layout
//! - [`InventoryManifest`]: an S3 Inventory `manifest.json` (which files, in which format and
//!   column order, with the MD5 of each file as stored).
//! - [`Schema`] + [`parse_inventory_line`]: one CSV row of an inventory file.
//! - [`parse_batch_line`]: one row of an S3 Batch Operations CSV manifest
//!   (`Bucket,Key[,VersionId]`, no header).
//!
//! Keys in both are URL-encoded the way S3 writes them (form encoding: `%XX` escapes, `+` for a
//! space), see [`decode_key`].
//!
//! The formats, as AWS documents them:
//! - <https://docs.aws.amazon.com/AmazonS3/latest/userguide/storage-inventory-location.html>
//!   (manifest.json: `sourceBucket`, `destinationBucket`, `fileFormat`, `fileSchema`,
//!   `files[].key/size/MD5checksum`; CSV files gzip-compressed)
//! - <https://docs.aws.amazon.com/AmazonS3/latest/userguide/batch-ops-create-job.html>
//!   (Batch Operations CSV manifest: bucket, key, optional version id; keys URL-encoded)

use serde::Deserialize;

/// A manifest that cannot be used at all (a bad row is a [`RowError`], not this).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// `manifest.json` is not the JSON AWS writes.
    #[error("inventory manifest.json: {0}")]
    Json(#[from] serde_json::Error),
    /// An inventory format we cannot read (yet).
    #[error("{0}")]
    Unsupported(String),
    /// `fileSchema` lacks a column we need.
    #[error("inventory fileSchema has no {0} column")]
    MissingColumn(&'static str),
}

/// Why one manifest row was not taken (reported with its file and line; the rest goes on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RowError {
    /// A quoted field is not closed, or text follows a closing quote.
    #[error("bad CSV quoting")]
    Quoting,
    /// Fewer fields than the schema has.
    #[error("{got} field(s), expected {want}")]
    Fields { got: usize, want: usize },
    /// A key (or bucket) that is not valid URL encoding of UTF-8.
    #[error("{what} is not URL-encoded UTF-8: {value:?}")]
    Encoding { what: &'static str, value: String },
    /// The Size column is not a number.
    #[error("size {0:?} is not a number")]
    Size(String),
    /// An empty bucket or key.
    #[error("empty {0}")]
    Empty(&'static str),
}

/// An S3 Inventory `manifest.json`; fields we do not use are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryManifest {
    /// The inventoried bucket.
    pub source_bucket: String,
    /// Where the inventory files are: `arn:aws:s3:::BUCKET`.
    pub destination_bucket: String,
    /// `CSV`, `ORC` or `Parquet`.
    pub file_format: String,
    /// The CSV columns, comma separated (`Bucket, Key, VersionId, ...`).
    #[serde(default)]
    pub file_schema: String,
    pub files: Vec<InventoryFile>,
}

/// One data file of an inventory.
#[derive(Debug, Clone, Deserialize)]
pub struct InventoryFile {
    /// Key in the destination bucket.
    pub key: String,
    /// Compressed size in bytes.
    #[serde(default)]
    pub size: u64,
    /// MD5 of the file as stored (hex), checked as it is read.
    #[serde(rename = "MD5checksum")]
    pub md5_checksum: String,
}

impl InventoryManifest {
    /// Parses `manifest.json` and refuses what we cannot read: Parquet and ORC inventories.
    pub fn parse(json: &[u8]) -> Result<InventoryManifest, ManifestError> {
        let m: InventoryManifest = serde_json::from_slice(json)?;
        match m.file_format.to_ascii_uppercase().as_str() {
            "CSV" => Ok(m),
            // A Parquet reader is a large dependency (arrow's tree); CSV covers the same rows.
            "PARQUET" => Err(ManifestError::Unsupported(
                "Parquet inventory not supported yet: use CSV (the inventory configuration's \
                 output format)"
                    .into(),
            )),
            "ORC" => Err(ManifestError::Unsupported(
                "ORC inventory not supported: use CSV".into(),
            )),
            other => Err(ManifestError::Unsupported(format!(
                "unknown inventory fileFormat {other:?}: use CSV"
            ))),
        }
    }

    /// The bucket holding the inventory files (`destinationBucket` is an ARN).
    pub fn destination_bucket_name(&self) -> &str {
        self.destination_bucket
            .strip_prefix("arn:aws:s3:::")
            .unwrap_or(&self.destination_bucket)
    }

    /// The column positions of `fileSchema`.
    pub fn schema(&self) -> Result<Schema, ManifestError> {
        Schema::parse(&self.file_schema)
    }
}

/// Where the columns we use are in an inventory row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// Number of columns.
    pub len: usize,
    pub bucket: usize,
    pub key: usize,
    pub version_id: Option<usize>,
    pub is_latest: Option<usize>,
    pub is_delete_marker: Option<usize>,
    pub size: Option<usize>,
    pub last_modified: Option<usize>,
    pub etag: Option<usize>,
    pub storage_class: Option<usize>,
}

impl Schema {
    /// Parses a `fileSchema` such as `Bucket, Key, Size, ETag`.
    pub fn parse(file_schema: &str) -> Result<Schema, ManifestError> {
        let cols: Vec<&str> = file_schema.split(',').map(str::trim).collect();
        let at = |name: &str| cols.iter().position(|c| c.eq_ignore_ascii_case(name));
        Ok(Schema {
            len: cols.len(),
            bucket: at("Bucket").ok_or(ManifestError::MissingColumn("Bucket"))?,
            key: at("Key").ok_or(ManifestError::MissingColumn("Key"))?,
            version_id: at("VersionId"),
            is_latest: at("IsLatest"),
            is_delete_marker: at("IsDeleteMarker"),
            size: at("Size"),
            last_modified: at("LastModifiedDate"),
            etag: at("ETag"),
            storage_class: at("StorageClass"),
        })
    }
}

/// One object named by a manifest row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestObject {
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
    /// Size in bytes (0 when the manifest does not say).
    pub size: u64,
    /// ETag in S3's quoted form (`"…"`), as a listing gives it; empty when the manifest does not
    /// say (the worker then takes the object as it finds it).
    pub etag: String,
    pub last_modified: Option<String>,
    pub storage_class: Option<String>,
}

/// What a well-formed row asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// An object to re-key.
    Object(ManifestObject),
    /// A delete marker: nothing to re-key.
    DeleteMarker,
    /// A noncurrent version: not re-keyed (rekey works on current versions).
    Noncurrent,
}

/// One inventory CSV line (without its line ending) in `schema`'s column order.
pub fn parse_inventory_line(schema: &Schema, line: &str) -> Result<Row, RowError> {
    let f = split_csv_line(line)?;
    if f.len() < schema.len {
        return Err(RowError::Fields {
            got: f.len(),
            want: schema.len,
        });
    }
    let col = |i: Option<usize>| i.map(|i| f[i].as_str()).filter(|s| !s.is_empty());
    if col(schema.is_delete_marker).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(Row::DeleteMarker);
    }
    if col(schema.is_latest).is_some_and(|v| v.eq_ignore_ascii_case("false")) {
        return Ok(Row::Noncurrent);
    }
    let size = match col(schema.size) {
        Some(s) => s.parse().map_err(|_| RowError::Size(s.to_owned()))?,
        None => 0,
    };
    Ok(Row::Object(ManifestObject {
        bucket: nonempty("bucket", &f[schema.bucket])?,
        key: decode("key", &f[schema.key])?,
        version_id: col(schema.version_id).map(str::to_owned),
        size,
        etag: col(schema.etag).map(quoted_etag).unwrap_or_default(),
        last_modified: col(schema.last_modified).map(str::to_owned),
        storage_class: col(schema.storage_class).map(str::to_owned),
    }))
}

/// One Batch Operations CSV manifest line: `Bucket,Key[,VersionId]`.
pub fn parse_batch_line(line: &str) -> Result<Row, RowError> {
    let f = split_csv_line(line)?;
    if !(2..=3).contains(&f.len()) {
        return Err(RowError::Fields {
            got: f.len(),
            want: 2,
        });
    }
    Ok(Row::Object(ManifestObject {
        bucket: nonempty("bucket", &f[0])?,
        key: decode("key", &f[1])?,
        version_id: f.get(2).filter(|v| !v.is_empty()).cloned(),
        size: 0,
        etag: String::new(),
        last_modified: None,
        storage_class: None,
    }))
}

fn nonempty(what: &'static str, s: &str) -> Result<String, RowError> {
    if s.is_empty() {
        return Err(RowError::Empty(what));
    }
    Ok(s.to_owned())
}

fn decode(what: &'static str, s: &str) -> Result<String, RowError> {
    let k = decode_key(s).ok_or_else(|| RowError::Encoding {
        what,
        value: s.to_owned(),
    })?;
    nonempty(what, &k)
}

/// Inventory writes the ETag bare; listings (and so the job table) keep S3's quotes.
fn quoted_etag(e: &str) -> String {
    if e.starts_with('"') {
        e.to_owned()
    } else {
        format!("\"{e}\"")
    }
}

/// Decodes a key as S3 Inventory and Batch Operations encode it: form URL encoding, `%XX` for
/// a byte and `+` for a space (a literal `+` is `%2B`). `None` for a bad escape or bytes that
/// are not UTF-8.
pub fn decode_key(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The inverse of [`decode_key`] (for tests and tools that write manifests): every byte but
/// `A-Z a-z 0-9 - _ . * /` escaped, a space as `+`.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for &c in key.as_bytes() {
        match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' | b'/' => {
                out.push(c as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{c:02X}")),
        }
    }
    out
}

/// Splits one CSV record (RFC 4180 quoting, no line breaks inside fields: the keys are
/// URL-encoded, so a manifest row is always one line).
pub fn split_csv_line(line: &str) -> Result<Vec<String>, RowError> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err(RowError::Quoting),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err(RowError::Quoting),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err(RowError::Quoting),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The example manifest.json of AWS's inventory documentation (file list shortened).
    const AWS_MANIFEST: &str = r#"{
        "sourceBucket": "example-source-bucket",
        "destinationBucket": "arn:aws:s3:::example-inventory-destination-bucket",
        "version": "2016-11-30",
        "creationTimestamp" : "1514944800000",
        "fileFormat": "CSV",
        "fileSchema": "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag, StorageClass, IsMultipartUploaded, ReplicationStatus, EncryptionStatus, ObjectLockRetainUntilDate, ObjectLockMode, ObjectLockLegalHoldStatus, IntelligentTieringAccessTier, BucketKeyStatus, ChecksumAlgorithm, ObjectAccessControlList, ObjectOwner",
        "files": [
            {
                "key": "Inventory/example-source-bucket/2016-11-06T21-32Z/files/939c6d46-85a9-4ba8-87bd-9db705a579ce.csv.gz",
                "size": 2147483647,
                "MD5checksum": "f11166069f1990abeb9c97ace9cdfabc"
            }
        ]
    }"#;

    #[test]
    fn the_aws_example_manifest_parses() {
        let m = InventoryManifest::parse(AWS_MANIFEST.as_bytes()).unwrap();
        assert_eq!(m.source_bucket, "example-source-bucket");
        assert_eq!(
            m.destination_bucket_name(),
            "example-inventory-destination-bucket"
        );
        assert_eq!(m.files.len(), 1);
        assert_eq!(m.files[0].md5_checksum, "f11166069f1990abeb9c97ace9cdfabc");
        let s = m.schema().unwrap();
        assert_eq!(
            (s.len, s.bucket, s.key, s.size, s.etag),
            (20, 0, 1, Some(5), Some(7))
        );
    }

    #[test]
    fn parquet_and_orc_are_refused_clearly() {
        for (format, want) in [
            ("Parquet", "Parquet inventory not supported yet: use CSV"),
            ("ORC", "ORC inventory not supported"),
        ] {
            let json = AWS_MANIFEST.replace("\"CSV\"", &format!("\"{format}\""));
            let e = InventoryManifest::parse(json.as_bytes()).unwrap_err();
            assert!(e.to_string().starts_with(want), "{e}");
        }
    }

    #[test]
    fn inventory_rows_per_schema() {
        let s = Schema::parse(
            "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, ETag, StorageClass",
        )
        .unwrap();
        let row =
            r#""bkt","dir/a+b%2Bc%C3%A9.bin","v1","true","false","42","0123abcd","STANDARD_IA""#;
        assert_eq!(
            parse_inventory_line(&s, row).unwrap(),
            Row::Object(ManifestObject {
                bucket: "bkt".into(),
                key: "dir/a b+cé.bin".into(),
                version_id: Some("v1".into()),
                size: 42,
                etag: "\"0123abcd\"".into(),
                last_modified: None,
                storage_class: Some("STANDARD_IA".into()),
            })
        );
        let marker = r#""bkt","k","v2","true","true","","","""#;
        assert_eq!(parse_inventory_line(&s, marker).unwrap(), Row::DeleteMarker);
        let old = r#""bkt","k","v0","false","false","1","e","STANDARD""#;
        assert_eq!(parse_inventory_line(&s, old).unwrap(), Row::Noncurrent);
        assert_eq!(
            parse_inventory_line(&s, r#""bkt","k""#),
            Err(RowError::Fields { got: 2, want: 8 })
        );
        let bad_size = r#""bkt","k","","true","false","x","e","STANDARD""#;
        assert_eq!(
            parse_inventory_line(&s, bad_size),
            Err(RowError::Size("x".into()))
        );
        let bad_key = r#""bkt","%ZZ","","true","false","1","e","STANDARD""#;
        assert!(matches!(
            parse_inventory_line(&s, bad_key),
            Err(RowError::Encoding { .. })
        ));
    }

    #[test]
    fn batch_rows() {
        assert_eq!(
            parse_batch_line("bkt,my%20dir/x+y.txt").unwrap(),
            Row::Object(ManifestObject {
                bucket: "bkt".into(),
                key: "my dir/x y.txt".into(),
                version_id: None,
                size: 0,
                etag: String::new(),
                last_modified: None,
                storage_class: None,
            })
        );
        let Row::Object(o) = parse_batch_line("bkt,k,3sL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY\r").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            o.version_id.as_deref(),
            Some("3sL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY")
        );
        assert!(parse_batch_line("bkt").is_err());
        assert!(parse_batch_line("bkt,k,v,extra").is_err());
        assert!(parse_batch_line(",k").is_err());
        assert!(parse_batch_line("bkt,").is_err());
        assert!(parse_batch_line("\"bkt,k").is_err());
    }

    #[test]
    fn keys_round_trip_through_the_form_encoding() {
        for k in [
            "plain",
            "a b+c",
            "é/ü ☃",
            "100%",
            "x=1&y=2",
            "line\nbreak",
            "-=@",
        ] {
            assert_eq!(decode_key(&encode_key(k)).as_deref(), Some(k), "{k:?}");
        }
        assert_eq!(decode_key("%"), None);
        assert_eq!(decode_key("%C3"), None, "a lone UTF-8 lead byte");
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(
            split_csv_line(r#""a,b","c""d",e"#).unwrap(),
            ["a,b", "c\"d", "e"]
        );
        assert_eq!(split_csv_line("").unwrap(), [""]);
        assert_eq!(split_csv_line("a,").unwrap(), ["a", ""]);
        assert_eq!(split_csv_line(r#""a"x"#), Err(RowError::Quoting));
    }
}
