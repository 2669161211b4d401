//! Multipart copy of an object onto itself: the rewrap of objects too large for one CopyObject
//! (5 GiB). The bytes stay on the server; only the metadata (the new envelope) changes.
//!
//! 1. [CreateMultipartUpload] with the new metadata and every preserved attribute
//!    (Content-Type, -Encoding, -Disposition, -Language, Cache-Control, Expires, storage class,
//!    server-side encryption, tags).
//! 2. [UploadPartCopy] per byte range ([`part_ranges`]), each with
//!    `x-amz-copy-source-if-match: <ETag HEAD saw>`: every part comes from that very object, or
//!    the copy fails with 412.
//! 3. [CompleteMultipartUpload] with `If-Match: <the same ETag>`: the copy replaces only the
//!    object it was made from, never a newer one written meanwhile (412 otherwise).
//! 4. [AbortMultipartUpload] on any failure, so no parts are left behind (best effort).
//!
//! A 412 anywhere becomes [`ClientError::PreconditionFailed`], which the worker turns into a
//! conflict (requeue, classify again). Every request counts in the S3 metrics, parts included.
//!
//! [CreateMultipartUpload]: https://docs.aws.amazon.com/AmazonS3/latest/API/API_CreateMultipartUpload.html
//! [UploadPartCopy]: https://docs.aws.amazon.com/AmazonS3/latest/API/API_UploadPartCopy.html
//! [CompleteMultipartUpload]: https://docs.aws.amazon.com/AmazonS3/latest/API/API_CompleteMultipartUpload.html
//! [AbortMultipartUpload]: https://docs.aws.amazon.com/AmazonS3/latest/API/API_AbortMultipartUpload.html

use std::time::Instant;

use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::{StreamExt, TryStreamExt};

use crate::client::{ClientError, MAX_PARTS, MIN_PART_SIZE, ObjectHead, UploadNote};
use crate::envelope::Metadata;
use crate::metrics::{RetryReason, Service};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::RekeyConfig;
use super::kms::backoff;

/// Largest object CopyObject takes in one request; larger rewraps need UploadPartCopy. Also
/// S3's largest part.
pub const MAX_COPY_SIZE: u64 = 5 << 30;
/// Part size of a multipart copy: 512 MiB makes a 6 GiB object 12 requests; the server copies
/// the bytes, so no memory is at stake. 10,000 such parts reach 5,000 GiB; for larger objects
/// (S3 allows 5 TiB) [`part_ranges`] grows the part.
pub const COPY_PART_SIZE: u64 = 512 << 20;

/// Object-key characters CopySource keeps as they are (RFC 3986 unreserved, plus `/`).
const COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `bucket/key` as CopySource wants it (the key URL-encoded, slashes kept).
pub(super) fn copy_source(head: &ObjectHead) -> String {
    format!(
        "{}/{}",
        head.bucket,
        utf8_percent_encode(&head.key, COPY_SOURCE)
    )
}

/// Parts copied at once. The server moves the bytes, so this bounds only open requests; a few
/// overlap the per-request latency without crowding the `--s3-rps` budget of the other workers.
const PART_CONCURRENCY: usize = 4;
/// Attempts per part on a transient failure (first try included): one flaky part should not
/// restart a copy of hundreds of parts.
const PART_ATTEMPTS: u32 = 3;

/// The inclusive byte ranges `(first, last)` of a multipart copy of `size` bytes, in parts of
/// `part_size` bytes, grown if needed so that there are at most [`MAX_PARTS`] (S3's limit).
/// Every part but the last has the same size; the ranges are contiguous and cover `0..size`.
/// An empty object has no ranges.
pub fn part_ranges(size: u64, part_size: u64) -> Vec<(u64, u64)> {
    if size == 0 {
        return Vec::new();
    }
    let part = part_size.max(size.div_ceil(MAX_PARTS)).max(1);
    (0..size.div_ceil(part))
        .map(|i| (i * part, ((i + 1) * part).min(size) - 1))
        .collect()
}

/// What the copy wrote.
pub struct Copied {
    pub etag: Option<String>,
    pub version_id: Option<String>,
    /// Parts copied.
    pub parts: usize,
}

/// Replaces `head`'s object with a multipart copy of itself carrying `metadata` (the user
/// metadata plus the new envelope) and `tagging` (URL-encoded, as `x-amz-tagging`), on the
/// condition that it still has `head.etag`. See the module doc.
pub async fn copy_onto_itself(
    c: &RekeyConfig,
    head: &ObjectHead,
    metadata: Metadata,
    tagging: Option<String>,
    upload_started: Option<&UploadNote>,
) -> Result<Copied, ClientError> {
    let Some(etag) = head.etag.clone() else {
        // Without an ETag there is no condition to copy under: refuse rather than risk
        // overwriting a newer object.
        return Err(ClientError::S3 {
            operation: "HeadObject",
            code: Some("MissingETag".into()),
            status: None,
            message: "the object has no ETag: a conditional copy is impossible".into(),
        });
    };
    let (bucket, key) = (head.bucket.as_str(), head.key.as_str());
    let part_size = c.copy_part_size.clamp(MIN_PART_SIZE as u64, MAX_COPY_SIZE);
    let ranges = part_ranges(head.content_length, part_size);

    let a = &head.attrs;
    c.s3_limit.wait().await;
    let t = Instant::now();
    let r = crate::client::with_attributes!(
        c.client
            .s3()
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .set_metadata(Some(metadata.into_iter().collect())),
        a
    )
    .set_tagging(tagging)
    .send()
    .await;
    let out = c
        .client
        .observe("CreateMultipartUpload", bucket, key, t, r)?;
    let upload_id = out
        .upload_id()
        .ok_or_else(|| ClientError::S3 {
            operation: "CreateMultipartUpload",
            code: None,
            status: None,
            message: "no upload id in the response".into(),
        })?
        .to_owned();
    if let Some(note) = upload_started {
        let _ = note.send(upload_id.clone());
    }

    let result = copy_and_complete(c, head, &etag, &upload_id, &ranges).await;
    if result.is_err() {
        abort(c, bucket, key, &upload_id).await;
    }
    result
}

async fn copy_and_complete(
    c: &RekeyConfig,
    head: &ObjectHead,
    etag: &str,
    upload_id: &str,
    ranges: &[(u64, u64)],
) -> Result<Copied, ClientError> {
    let (bucket, key) = (head.bucket.as_str(), head.key.as_str());
    let source = copy_source(head);
    // Owned items (no references in the stream's item type), so the future stays `Send` for
    // every lifetime the worker's `tokio::spawn` asks about.
    let numbered: Vec<(i32, u64, u64)> = (1..)
        .zip(ranges.iter().copied())
        .map(|(n, (first, last))| (n, first, last))
        .collect();
    let source = source.as_str();
    let mut parts: Vec<CompletedPart> = futures::stream::iter(numbered)
        .map(|(number, first, last)| {
            copy_part(c, head, source, etag, upload_id, number, first, last)
        })
        .buffer_unordered(PART_CONCURRENCY)
        .try_collect()
        .await?;
    parts.sort_by_key(|p| p.part_number());
    let count = parts.len();
    crate::failpoint!("copy-before-complete");

    c.s3_limit.wait().await;
    let t = Instant::now();
    let r = c
        .client
        .s3()
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .if_match(etag)
        .send()
        .await;
    let out = c
        .client
        .observe("CompleteMultipartUpload", bucket, key, t, r)?;
    Ok(Copied {
        etag: out.e_tag().map(str::to_owned),
        version_id: out.version_id().map(str::to_owned),
        parts: count,
    })
}

/// One UploadPartCopy of bytes `first..=last`, retried on transient failures. A 412 (the
/// source changed) is not transient: it ends the copy at once.
#[allow(clippy::too_many_arguments)]
async fn copy_part(
    c: &RekeyConfig,
    head: &ObjectHead,
    source: &str,
    etag: &str,
    upload_id: &str,
    number: i32,
    first: u64,
    last: u64,
) -> Result<CompletedPart, ClientError> {
    let (bucket, key) = (head.bucket.as_str(), head.key.as_str());
    let mut attempt = 0;
    loop {
        attempt += 1;
        c.s3_limit.wait().await;
        let t = Instant::now();
        let r = c
            .client
            .s3()
            .upload_part_copy()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .copy_source(source)
            .copy_source_range(format!("bytes={first}-{last}"))
            .copy_source_if_match(etag)
            .send()
            .await;
        match c.client.observe("UploadPartCopy", bucket, key, t, r) {
            Ok(out) => {
                let etag = out.copy_part_result().and_then(|p| p.e_tag());
                return Ok(CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(etag.map(str::to_owned))
                    .build());
            }
            Err(e) if e.is_transient() && attempt < PART_ATTEMPTS => {
                let reason = match e.http_status() {
                    Some(503 | 429) => RetryReason::Throttled,
                    _ => RetryReason::ServerError,
                };
                c.metrics.retry(Service::S3, reason);
                tracing::debug!(key = %crate::logkey::log_key(key), part = number, attempt, error = %e, "retrying part copy");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Best effort: a failed abort leaves parts for the bucket's lifecycle rule
/// (AbortIncompleteMultipartUpload).
async fn abort(c: &RekeyConfig, bucket: &str, key: &str, upload_id: &str) {
    if let Err(e) = abort_upload(c, bucket, key, upload_id).await {
        tracing::warn!(%bucket, key = %crate::logkey::log_key(key), error = %e, "abort of the multipart copy failed");
    }
}

/// AbortMultipartUpload, rate-limited and counted like every S3 request of a run.
pub(super) async fn abort_upload(
    c: &RekeyConfig,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> Result<(), ClientError> {
    c.s3_limit.wait().await;
    let t = Instant::now();
    let r = c
        .client
        .s3()
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await;
    c.client
        .observe("AbortMultipartUpload", bucket, key, t, r)
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn copy_source_keeps_slashes_and_encodes_the_rest() {
        let k = "dir/naïve file+x?.txt";
        assert_eq!(
            utf8_percent_encode(k, COPY_SOURCE).to_string(),
            "dir/na%C3%AFve%20file%2Bx%3F.txt"
        );
    }

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn part_ranges_table() {
        /// (size, part size, expected ranges)
        type Case = (u64, u64, &'static [(u64, u64)]);
        let cases: &[Case] = &[
            (0, 5 * MIB, &[]),
            (1, 5 * MIB, &[(0, 0)]),
            (5 * MIB, 5 * MIB, &[(0, 5 * MIB - 1)]),
            (
                5 * MIB + 1,
                5 * MIB,
                &[(0, 5 * MIB - 1), (5 * MIB, 5 * MIB)],
            ),
            // The integration test's object: two full parts and a 2 MiB tail.
            (
                12 * MIB,
                5 * MIB,
                &[
                    (0, 5 * MIB - 1),
                    (5 * MIB, 10 * MIB - 1),
                    (10 * MIB, 12 * MIB - 1),
                ],
            ),
            (
                10 * MIB,
                5 * MIB,
                &[(0, 5 * MIB - 1), (5 * MIB, 10 * MIB - 1)],
            ),
        ];
        for &(size, part, want) in cases {
            assert_eq!(part_ranges(size, part), want, "size {size}, part {part}");
        }
    }

    #[test]
    fn just_over_copy_object_limit_takes_eleven_default_parts() {
        let r = part_ranges(MAX_COPY_SIZE + 1, COPY_PART_SIZE);
        assert_eq!(r.len(), 11);
        assert_eq!(r[10], (MAX_COPY_SIZE, MAX_COPY_SIZE));
    }

    #[test]
    fn a_5_tib_object_stays_within_10000_parts_of_at_most_5_gib() {
        let size = 5 * 1024 * GIB;
        let r = part_ranges(size, 512 * MIB);
        assert!(r.len() as u64 <= MAX_PARTS, "{}", r.len());
        let part = r[0].1 + 1;
        assert!(part > 512 * MIB && part <= MAX_COPY_SIZE, "{part}");
        assert_eq!(r.last().map(|r| r.1), Some(size - 1));
    }

    proptest! {
        #[test]
        fn ranges_are_contiguous_equal_and_cover_the_object(
            size in 0u64..(1 << 44),
            part in (5 * MIB)..(6 * GIB),
        ) {
            let r = part_ranges(size, part);
            prop_assert!(r.len() as u64 <= MAX_PARTS);
            let mut next = 0;
            for (i, &(first, last)) in r.iter().enumerate() {
                prop_assert_eq!(first, next);
                prop_assert!(last >= first);
                if i + 1 < r.len() {
                    prop_assert_eq!(last - first + 1, r[0].1 + 1, "every part but the last");
                    prop_assert!(last - first + 1 >= part);
                }
                next = last + 1;
            }
            prop_assert_eq!(next, size);
        }
    }
}
