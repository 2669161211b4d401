//! Step 1 of an object: what is there. HEAD (or, for a small object, one GET pinned to the
//! listed ETag that gives head and body at once), the envelope (from the metadata or the
//! `<key>.instruction` object), and the classification ([`super::plan`]). Shared by the worker
//! and `--dry-run`, so both decide the same way.

use aws_sdk_s3::primitives::ByteStream;

use crate::client::{ClientError, EnvelopeState, ObjectHead};

use super::RekeyConfig;
use super::plan::{self, Action};
use super::task::ObjError;

/// Objects the listing says are at most this large are fetched with one GET (head and body)
/// instead of HEAD, then GET: for small objects the request, not the bytes, is the cost. A
/// skipped one costs its body's transfer instead of a HEAD, so the bound stays small.
pub(super) const GET_FIRST_MAX: u64 = 256 << 10;

/// What classification saw.
pub(super) struct Inspected {
    pub head: ObjectHead,
    /// The body, when one GET fetched it with the head ([`GET_FIRST_MAX`]); not yet read.
    pub body: Option<ByteStream>,
    pub state: EnvelopeState,
    pub action: Action,
    /// The ETag of the `<key>.instruction` object the envelope came from, if it did.
    pub instruction_etag: Option<String>,
}

impl Inspected {
    /// The source format's name (`plaintext`, `v1-aes-cbc`, ...): the `source_format` column.
    pub(super) fn format(&self) -> String {
        match &self.state {
            EnvelopeState::Plaintext => "plaintext".to_owned(),
            EnvelopeState::Encrypted(env) => env.format_name(),
        }
    }
}

/// HEAD (or, with `get_if_match`, a GET pinned to that ETag) + envelope + classification.
/// `None`: the object is gone.
pub(super) async fn inspect(
    ctx: &RekeyConfig,
    bucket: &str,
    key: &str,
    get_if_match: Option<&str>,
) -> Result<Option<Inspected>, ObjError> {
    ctx.s3_limit.wait().await;
    let mut fetched = match get_if_match {
        Some(etag) => ctx
            .client
            .get_with_head(bucket, key, Some(etag))
            .await
            .map(|(h, b)| (h, Some(b))),
        None => ctx.client.head(bucket, key).await.map(|h| (h, None)),
    };
    if let Err(ClientError::S3 {
        code: Some(code), ..
    }) = &fetched
        && code == "InvalidObjectState"
    {
        // Archived (an archive tier the listing did not show): HEAD still answers, and a
        // plaintext or current object is skipped without being restored.
        ctx.s3_limit.wait().await;
        fetched = ctx.client.head(bucket, key).await.map(|h| (h, None));
    }
    let (head, body) = match fetched {
        Ok(x) => x,
        Err(ClientError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    ctx.s3_limit.wait().await;
    let (state, instruction_etag) = ctx.client.envelope_and_instruction_etag(&head).await?;
    let owned = match &state {
        EnvelopeState::Encrypted(env) if plan::ownership_matters(env) => {
            ctx.owner.owns(env).await?
        }
        _ => false,
    };
    let action = plan::classify(&head, &state, owned, ctx.reencrypt, &ctx.goal);
    Ok(Some(Inspected {
        head,
        body,
        state,
        action,
        instruction_etag,
    }))
}

/// Storage classes whose objects a GET returns at once. GLACIER and DEEP_ARCHIVE objects
/// answer a GET with InvalidObjectState until restored, and INTELLIGENT_TIERING ones may sit in
/// an archive tier: those start with HEAD.
pub(super) fn readable_at_once(storage_class: Option<&str>) -> bool {
    matches!(
        storage_class,
        None | Some(
            "STANDARD"
                | "STANDARD_IA"
                | "ONEZONE_IA"
                | "REDUCED_REDUNDANCY"
                | "GLACIER_IR"
                | "EXPRESS_ONEZONE"
        )
    )
}

/// Reads a small body that is not needed to its end, so the connection can be reused (an
/// unread response makes the HTTP client close it). Larger bodies are just dropped.
pub(super) async fn discard(body: Option<ByteStream>, len: u64) {
    if let Some(body) = body
        && len <= GET_FIRST_MAX
    {
        let _ = body.collect().await;
    }
}

/// The body: the one [`inspect`]'s GET fetched, or a GET pinned to the ETag HEAD saw.
pub(super) async fn body_of(
    c: &RekeyConfig,
    head: &ObjectHead,
    body: Option<ByteStream>,
) -> Result<ByteStream, ObjError> {
    match body {
        Some(b) => Ok(b),
        None => {
            c.s3_limit.wait().await;
            Ok(c.client.get_body(head, None).await?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archived_storage_classes_start_with_head() {
        for class in [
            None,
            Some("STANDARD"),
            Some("STANDARD_IA"),
            Some("GLACIER_IR"),
        ] {
            assert!(readable_at_once(class), "{class:?}");
        }
        for class in [
            "GLACIER",
            "DEEP_ARCHIVE",
            "INTELLIGENT_TIERING",
            "SOMETHING_NEW",
        ] {
            assert!(!readable_at_once(Some(class)), "{class}");
        }
    }
}
