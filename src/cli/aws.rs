//! AWS clients from the standard configuration chain (env, profiles, SSO, web identity / IRSA,
//! EKS Pod Identity, instance metadata), plus `--endpoint-url` / `--path-style` for
//! S3-compatible stores.

use clap::Args;

use super::{CliResult, Failure};

#[derive(Args, Debug, Clone, Default)]
pub struct AwsArgs {
    /// S3 endpoint (overrides AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Path-style bucket addressing (automatic for IP-address and localhost endpoints).
    #[arg(long)]
    pub path_style: bool,
}

/// The shared SDK configuration, with us-east-1 when nothing names a region.
pub async fn sdk_config() -> aws_config::SdkConfig {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    if conf.region().is_some() {
        return conf;
    }
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await
}

impl AwsArgs {
    pub async fn s3_client(&self, conf: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
        let mut b = aws_sdk_s3::config::Builder::from(conf);
        let endpoint = self
            .endpoint_url
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        if let Some(url) = &self.endpoint_url {
            b = b.endpoint_url(url);
        }
        if self.path_style || endpoint.as_deref().is_some_and(is_local_endpoint) {
            b = b.force_path_style(true);
        }
        aws_sdk_s3::Client::from_conf(b.build())
    }
}

/// Virtual-hosted addressing needs DNS names per bucket: IP addresses and localhost never have them.
fn is_local_endpoint(url: &str) -> bool {
    let host = url.split("://").nth(1).unwrap_or(url);
    let host = host.split(['/', '?']).next().unwrap_or(host);
    let host = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.ends_with(".localhost") || host.parse::<std::net::IpAddr>().is_ok()
}

/// `s3://bucket/key` -> (bucket, key). `key_required`: a key must follow the bucket.
pub fn parse_s3_url(url: &str, key_required: bool) -> CliResult<(String, String)> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| Failure::usage(anyhow::anyhow!("expected s3://BUCKET/KEY, got {url:?}")))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() || (key_required && key.is_empty()) {
        return Err(Failure::usage(anyhow::anyhow!(
            "expected s3://BUCKET/{}, got {url:?}",
            if key_required { "KEY" } else { "[PREFIX]" }
        )));
    }
    Ok((bucket.to_owned(), key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_endpoints_use_path_style() {
        assert!(is_local_endpoint("http://127.0.0.1:8333"));
        assert!(is_local_endpoint("http://localhost:9000/"));
        assert!(is_local_endpoint("http://[::1]:9000"));
        assert!(!is_local_endpoint("https://s3.eu-west-1.amazonaws.com"));
        assert!(!is_local_endpoint("https://minio.example.com:9000"));
    }

    #[test]
    fn s3_urls() {
        assert_eq!(
            parse_s3_url("s3://b/k/x", true).ok(),
            Some(("b".into(), "k/x".into()))
        );
        assert_eq!(
            parse_s3_url("s3://b", false).ok(),
            Some(("b".into(), String::new()))
        );
        assert!(parse_s3_url("s3://b", true).is_err());
        assert!(parse_s3_url("b/k", true).is_err());
    }
}
