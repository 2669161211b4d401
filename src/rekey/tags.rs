//! The object's tags, for the writes that cannot copy them (PutObject, multipart uploads).

use std::sync::atomic::Ordering;
use std::time::Instant;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::client::ObjectHead;

use super::RekeyConfig;
use super::task::{Ctx, ObjError};

/// Characters a tag key or value keeps as they are in the `x-amz-tagging` query string.
const TAG: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The object's tags as an `x-amz-tagging` value, for a write that cannot copy them. The
/// GetObjectTagging request is skipped when the head said the object has none: S3 sends
/// `x-amz-tagging-count` on HEAD and GET when an object has tags *and* the caller may read
/// them, so an absent count means "no tags" only after a tag read in this run succeeded (the
/// first ones always read). A store that leaves the count out although the object has tags
/// is caught when a read finds tags the head did not count: from then on every write reads.
/// `--always-read-tags` reads them every time.
pub(super) async fn read_tags(ctx: &Ctx, head: &ObjectHead) -> Result<Option<String>, ObjError> {
    let counted = head.tag_count.unwrap_or(0) > 0;
    if !must_read_tags(
        head.tag_count,
        ctx.tags_readable.load(Ordering::Relaxed),
        ctx.counts_unreliable.load(Ordering::Relaxed),
        ctx.config.always_read_tags,
    ) {
        return Ok(None);
    }
    let tags = tagging(&ctx.config, head).await?;
    ctx.tags_readable.store(true, Ordering::Relaxed);
    if tags.is_some() && !counted && !ctx.counts_unreliable.swap(true, Ordering::Relaxed) {
        tracing::warn!(key = %crate::logkey::log_key(&head.key), "the store does not report tag counts: reading the tags of every object");
    }
    Ok(tags)
}

/// Whether [`read_tags`] asks: always when the head counts tags, and for an object the head
/// says has none until a read proved tags readable (and the count trustworthy).
fn must_read_tags(count: Option<i32>, readable: bool, unreliable: bool, always: bool) -> bool {
    count.unwrap_or(0) > 0 || !readable || unreliable || always
}

async fn tagging(c: &RekeyConfig, head: &ObjectHead) -> Result<Option<String>, ObjError> {
    c.s3_limit.wait().await;
    let t = Instant::now();
    let r = c
        .client
        .s3()
        .get_object_tagging()
        .bucket(&head.bucket)
        .key(&head.key)
        .send()
        .await;
    let out = c
        .client
        .observe("GetObjectTagging", &head.bucket, &head.key, t, r)?;
    let tags: Vec<String> = out
        .tag_set()
        .iter()
        .map(|t| {
            format!(
                "{}={}",
                utf8_percent_encode(t.key(), TAG),
                utf8_percent_encode(t.value(), TAG)
            )
        })
        .collect();
    Ok((!tags.is_empty()).then(|| tags.join("&")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_read_unless_the_count_is_known_to_be_trustworthy() {
        // Counted tags: always read.
        assert!(must_read_tags(Some(2), true, false, false));
        // No count: read until a read succeeded, then trust the count...
        assert!(must_read_tags(None, false, false, false));
        assert!(!must_read_tags(None, true, false, false));
        assert!(!must_read_tags(Some(0), true, false, false));
        // ...unless the store was caught leaving it out, or the user asked.
        assert!(must_read_tags(None, true, true, false));
        assert!(must_read_tags(None, true, false, true));
    }
}
