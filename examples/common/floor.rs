//! What `sdk_floor` and `raw_floor` share: their arguments, the bucket's keys, and one future per
//! key with CONCURRENCY in flight, ending in the summary line `scripts/bench/bench_rekey.py` reads.

use std::future::Future;
use std::time::Instant;

use futures::StreamExt;

pub type Error = Box<dyn std::error::Error>;

/// `NAME BUCKET KMS_KEY_ID [CONCURRENCY]` (16 by default).
pub struct Args {
    pub bucket: String,
    pub key_id: String,
    pub concurrency: usize,
}

impl Args {
    pub fn parse(name: &str) -> Result<Self, Error> {
        let args: Vec<String> = std::env::args().collect();
        let (Some(bucket), Some(key_id)) = (args.get(1), args.get(2)) else {
            return Err(format!("usage: {name} BUCKET KMS_KEY_ID [CONCURRENCY]").into());
        };
        let concurrency = args.get(3).map(|c| c.parse()).transpose()?.unwrap_or(16);
        Ok(Self {
            bucket: bucket.clone(),
            key_id: key_id.clone(),
            concurrency,
        })
    }
}

/// Every key of `bucket`, listed through the SDK (start-up, the same in both floors).
pub async fn keys(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<Vec<String>, Error> {
    let mut keys = Vec::new();
    let mut pages = s3.list_objects_v2().bucket(bucket).into_paginator().send();
    while let Some(page) = pages.next().await {
        keys.extend(
            page?
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
    }
    Ok(keys)
}

/// `object(key)` for every key, `concurrency` at a time; prints
/// `NAME: N objects, F failed, S s, concurrency C` and the first failure, which is also the
/// error returned (so the process exits non-zero if any object failed).
pub async fn each<F, Fut>(
    name: &str,
    keys: Vec<String>,
    concurrency: usize,
    object: F,
) -> Result<(), Error>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    let n = keys.len();
    let results: Vec<Result<(), String>> = futures::stream::iter(keys)
        .map(object)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    println!(
        "{name}: {n} objects, {failed} failed, {:.2} s, concurrency {concurrency}",
        started.elapsed().as_secs_f64()
    );
    match results.into_iter().find_map(Result::err) {
        Some(e) => Err(format!("{failed} of {n} objects failed; the first: {e}").into()),
        None => Ok(()),
    }
}
