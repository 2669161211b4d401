//! `--dry-run`: classifies every pending job (HEAD + envelope; no KMS, no writes), records the
//! plan in its row (state left `pending`: `status` and `report` show it) and tallies objects
//! and bytes by planned action.

use futures::{StreamExt, TryStreamExt};

use crate::store::{JobState, Outcome};

use super::inspect::{Inspected, inspect};
use super::plan::Action;
use super::task::ObjError;
use super::worker::WorkSummary;
use super::{RekeyConfig, RekeyError, Shutdown};

/// Plans every pending job; see the module documentation.
/// and bytes by planned action.
pub async fn dry_run(config: &RekeyConfig, shutdown: &Shutdown) -> Result<WorkSummary, RekeyError> {
    // Streamed, a page of pending rows at a time, and folded into the summary as plans come
    // in: memory stays flat whatever the queue's size (collecting the rows first held every
    // pending job in memory). `record_plan` leaves a row pending and the paging is by id, so
    // the rows planned behind the read position are not read again.
    let mut planned = std::pin::pin!(config
        .store
        .report(Some(JobState::Pending))
        .take_while(|_| std::future::ready(!shutdown.is_stopping()))
        .map(|row| async move {
            let row = row?;
            let mut plan = Outcome::new(JobState::Pending);
            let inspected = inspect(config, &row.bucket, &row.key, None)
                .await
                .and_then(|ins| refuse_uncommitted(config, ins));
            let (label, bytes) = match inspected {
                Ok(Some(ins)) => {
                    let (format, action) = (ins.format(), ins.action);
                    let label = match action {
                        Action::Skip(r) => format!("skip:{}", r.as_str()),
                        a => a.store_action().as_str().to_owned(),
                    };
                    tracing::info!(key = %crate::logkey::log_key(&row.key), format = %format, plan = %label, "planned");
                    plan.source_format = Some(format);
                    plan.action = Some(action.store_action());
                    plan.skip_reason = action.skip_reason().map(str::to_owned);
                    (label, ins.head.content_length)
                }
                Ok(None) => ("skip:deleted".to_owned(), 0),
                Err(ObjError::Failed { code, message, .. }) => {
                    tracing::warn!(key = %crate::logkey::log_key(&row.key), code = %code, error = %message, "would fail");
                    let label = format!("fail:{code}");
                    plan.error_code = Some(code);
                    plan.last_error = Some(message);
                    (label, 0)
                }
                // (Inspection writes nothing, so nothing can fail after a write.)
                Err(ObjError::Conflict { .. } | ObjError::AfterWrite { .. }) => {
                    ("conflict".to_owned(), 0)
                }
                // Only a rewrite waits for a slot; a dry run does not rewrite.
                Err(ObjError::Stopped) => ("stopped".to_owned(), 0),
            };
            // No object metric: nothing was processed. The HEADs show in the S3 requests.
            config.store.record_plan(row.id, &plan).await?;
            Ok::<_, RekeyError>((label, bytes))
        })
        .buffer_unordered(config.concurrency.max(1)));
    let mut summary = WorkSummary::default();
    while let Some((label, bytes)) = planned.try_next().await? {
        let e = summary.planned.entry(label).or_default();
        e.0 += 1;
        e.1 += bytes;
    }
    Ok(summary)
}

/// `--commitment require`: what the real run refuses before unwrapping a key (a source without
/// key commitment) is planned as that failure, not as a rewrite or rewrap.
fn refuse_uncommitted(
    c: &RekeyConfig,
    ins: Option<Inspected>,
) -> Result<Option<Inspected>, ObjError> {
    if let Some(i) = &ins
        && c.require_commitment
        && !matches!(i.action, Action::Skip(_))
        && let crate::client::EnvelopeState::Encrypted(env) = &i.state
    {
        let policy = crate::codec::DecryptPolicy {
            require_commitment: true,
            ..crate::codec::DecryptPolicy::default()
        };
        crate::codec::check_commitment(env, &policy)?;
    }
    Ok(ins)
}
