//! The client-CPU floor of `rekey`'s requests through aws-sdk-rust, with nothing of s3cse's:
//! for every object of a bucket, GetObject and KMS GenerateDataKey together, then PutObject of
//! the same bytes back, then GetObject again (the read-back) — the four requests `rekey` makes
//! per small object, without decryption, encryption, the job table, metrics or logs.
//! BENCHMARKS.md ("Client CPU per small object") compares `rekey`'s CPU per object with this.
//!
//! ```text
//! cargo build --release --example sdk_floor
//! /usr/bin/time -v target/release/examples/sdk_floor BUCKET KMS_KEY_ID [CONCURRENCY]
//! ```
//! Endpoints and credentials from the environment (`source .testbed/env`); path-style addressing.

#[path = "common/floor.rs"]
mod floor;

use aws_sdk_s3::primitives::ByteStream;

#[tokio::main]
async fn main() -> Result<(), floor::Error> {
    let floor::Args {
        bucket,
        key_id,
        concurrency,
    } = floor::Args::parse("sdk_floor")?;
    let (bucket, key_id) = (bucket.as_str(), key_id.as_str());
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    // Settings to compare (each `1` to turn on): what they save is what rekey could save.
    let on = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
    let mut b = aws_sdk_s3::config::Builder::from(&conf).force_path_style(true);
    let mut k = aws_sdk_kms::config::Builder::from(&conf);
    if on("FLOOR_NO_STALLED_STREAM_PROTECTION") {
        use aws_sdk_s3::config::StalledStreamProtectionConfig as S;
        b = b.stalled_stream_protection(S::disabled());
        k = k.stalled_stream_protection(S::disabled());
    }
    if on("FLOOR_CHECKSUMS_WHEN_REQUIRED") {
        b = b
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            );
    }
    let s3 = aws_sdk_s3::Client::from_conf(b.build());
    let kms = aws_sdk_kms::Client::from_conf(k.build());
    let keys = floor::keys(&s3, bucket).await?;
    floor::each("sdk_floor", keys, concurrency, |key| {
        let (s3, kms) = (s3.clone(), kms.clone());
        async move {
            let get = async {
                let o = s3.get_object().bucket(bucket).key(&key).send().await;
                let o = o.map_err(|e| format!("{e:?}"))?;
                let meta = o.metadata().cloned();
                let body = o.body.collect().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((meta, body.into_bytes()))
            };
            let dk = kms
                .generate_data_key()
                .key_id(key_id)
                .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
                .encryption_context("aws:x-amz-cek-alg", "AES/GCM/NoPadding")
                .encryption_context("bench", "rekey")
                .send();
            let ((meta, body), dk) =
                tokio::try_join!(get, async { dk.await.map_err(|e| format!("{e:?}")) })?;
            drop(dk);
            s3.put_object()
                .bucket(bucket)
                .key(&key)
                .set_metadata(meta)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            let o = s3.get_object().bucket(bucket).key(&key).send().await;
            let o = o.map_err(|e| format!("{e:?}"))?;
            o.body.collect().await.map_err(|e| e.to_string())?;
            Ok(())
        }
    })
    .await
}
