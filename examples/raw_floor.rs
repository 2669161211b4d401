//! The client-CPU floor of `rekey`'s four requests per small object *without* aws-sdk-rust's
//! orchestrator: the same requests as `sdk_floor` (GetObject and KMS GenerateDataKey together,
//! PutObject of the same bytes and metadata, GetObject again), each signed with SigV4 by the
//! `aws-sigv4` crate (payload SHA-256 included, S3's signing settings) and sent over one hyper
//! keep-alive pool with TCP_NODELAY, as the SDK's client sets it. A measurement of what a
//! hand-signed client on the same hyper/tokio stack could at best cost on this machine, not a
//! client: next to `sdk_floor` it also leaves out, each making it cheaper than a real client,
//! retries, endpoint rules, credential refresh and session tokens, timeouts and stalled-stream
//! protection, request and response checksums (the SDK's default is CRC32 when supported), the
//! SDK's user-agent and invocation headers, error-response parsing, and base64-decoding the
//! data key (the KMS answer is parsed as JSON only). Keys are not URL-encoded: the benchmark's
//! keys (`small/000123`) need none. BENCHMARKS.md ("Client CPU per small object") compares it
//! with `sdk_floor` and `rekey`.
//!
//! ```text
//! cargo build --release --example raw_floor
//! /usr/bin/time -v target/release/examples/raw_floor BUCKET KMS_KEY_ID [CONCURRENCY]
//! ```
//! Endpoints and credentials from the environment (`source .testbed/env`); path-style addressing.

#[path = "common/floor.rs"]
mod floor;

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type Http = Client<HttpConnector, Full<Bytes>>;

struct Ctx {
    http: Http,
    identity: Identity,
    region: String,
    s3: String,
    kms: String,
    bucket: String,
    key_id: String,
}

impl Ctx {
    /// Signs and sends one request; returns status, headers and the whole body.
    async fn send(
        &self,
        service: &str,
        method: &str,
        url: &str,
        headers: Vec<(String, String)>,
        body: Bytes,
    ) -> Result<(u16, http::HeaderMap, Bytes), String> {
        let mut settings = SigningSettings::default();
        if service == "s3" {
            // What the SDK signs S3 requests with: the payload hash in a header, the path
            // encoded once and not normalised.
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
            settings.percent_encoding_mode = PercentEncodingMode::Single;
            settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        }
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name(service)
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let host = url.split('/').nth(2).unwrap_or_default().to_owned();
        let mut all = headers;
        all.push(("host".into(), host));
        let signable = SignableRequest::new(
            method,
            url,
            all.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| e.to_string())?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| e.to_string())?
            .into_parts();
        let mut req = http::Request::builder().method(method).uri(url);
        for (k, v) in &all {
            if k != "host" {
                req = req.header(k, v);
            }
        }
        let mut req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        instructions.apply_to_request_http1x(&mut req);
        let resp = self.http.request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((parts.status.as_u16(), parts.headers, body))
    }

    async fn object(&self, key: &str) -> Result<(), String> {
        let url = format!("{}/{}/{}", self.s3, self.bucket, key);
        let get = self.send("s3", "GET", &url, Vec::new(), Bytes::new());
        let body = serde_json::json!({
            "KeyId": self.key_id,
            "KeySpec": "AES_256",
            "EncryptionContext": {"aws:x-amz-cek-alg": "AES/GCM/NoPadding", "bench": "rekey"},
        })
        .to_string();
        let kms_headers = vec![
            (
                "content-type".to_owned(),
                "application/x-amz-json-1.1".to_owned(),
            ),
            (
                "x-amz-target".to_owned(),
                "TrentService.GenerateDataKey".to_owned(),
            ),
        ];
        let dk = self.send("kms", "POST", &self.kms, kms_headers, Bytes::from(body));
        let ((status, headers, body), (kstatus, _, kbody)) = tokio::try_join!(get, dk)?;
        if status != 200 || kstatus != 200 {
            return Err(format!("GET {status}, GenerateDataKey {kstatus}"));
        }
        let answer: serde_json::Value =
            serde_json::from_slice(&kbody).map_err(|e| e.to_string())?;
        if answer.get("CiphertextBlob").is_none() {
            return Err("no CiphertextBlob".into());
        }
        let meta: Vec<(String, String)> = headers
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-amz-meta-"))
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let (status, _, _) = self.send("s3", "PUT", &url, meta, body).await?;
        if status != 200 {
            return Err(format!("PUT {status}"));
        }
        let (status, _, _) = self
            .send("s3", "GET", &url, Vec::new(), Bytes::new())
            .await?;
        if status != 200 {
            return Err(format!("read-back GET {status}"));
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), floor::Error> {
    let args = floor::Args::parse("raw_floor")?;
    let env = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    // The listing goes through the SDK (as in sdk_floor); only the four requests per object are
    // hand-signed.
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    );
    let keys = floor::keys(&s3, &args.bucket).await?;
    let ctx = Ctx {
        http: {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new()).build(connector)
        },
        identity: Credentials::new(
            env("AWS_ACCESS_KEY_ID")?,
            env("AWS_SECRET_ACCESS_KEY")?,
            None,
            None,
            "raw_floor",
        )
        .into(),
        region: env("AWS_REGION")?,
        s3: env("AWS_ENDPOINT_URL_S3")?,
        kms: format!("{}/", env("AWS_ENDPOINT_URL_KMS")?),
        bucket: args.bucket,
        key_id: args.key_id,
    };
    floor::each("raw_floor", keys, args.concurrency, |key| {
        let ctx = &ctx;
        async move { ctx.object(&key).await }
    })
    .await
}
