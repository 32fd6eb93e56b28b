//! Attachments in S3-compatible object storage (`aws-sdk-s3`, configured by
//! the SDK's own variables: `AWS_REGION`, `AWS_ENDPOINT_URL_S3`, the
//! credentials chain).
//!
//! Files never pass through the service: clients upload to a presigned
//! PUT URL and download from a presigned GET URL, both short-lived. What
//! was uploaded is checked (size and content type, with a HEAD request)
//! when a message names it; a file that does not match what was declared
//! is deleted and the message refused.

use std::time::Duration;

use aws_sdk_s3::{Client, presigning::PresigningConfig};

/// How long presigned URLs work.
pub const URL_TTL: Duration = Duration::from_secs(15 * 60);

/// A presigned request: where, how, with which headers.
pub struct Presigned {
    pub url: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
}

/// What storage holds under a key.
pub struct Stored {
    pub size: i64,
    pub content_type: String,
}

#[derive(Clone)]
pub struct Files {
    client: Client,
    bucket: String,
}

impl Files {
    /// A client for `bucket`; `path_style` addresses it as
    /// `endpoint/bucket/key` (local S3 servers) rather than
    /// `bucket.endpoint/key`.
    pub async fn new(bucket: &str, path_style: bool) -> Self {
        let region = aws_config::meta::region::RegionProviderChain::default_provider()
            .or_else(aws_config::Region::new("us-east-1"));
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(region)
            .load()
            .await;
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(path_style)
            .build();
        Self {
            client: Client::from_conf(config),
            bucket: bucket.to_owned(),
        }
    }

    /// Creates the bucket when it does not exist; a failure is logged, not
    /// fatal (uploads fail until storage answers).
    pub async fn ensure_bucket(&self) {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return;
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => tracing::info!(bucket = %self.bucket, "created the attachments bucket"),
            Err(e) => tracing::warn!(
                bucket = %self.bucket,
                error = %aws_sdk_s3::error::DisplayErrorContext(&e),
                "cannot reach or create the attachments bucket; uploads fail until it answers"
            ),
        }
    }

    pub async fn upload_url(
        &self,
        key: &str,
        content_type: &str,
        size: i64,
    ) -> anyhow::Result<Presigned> {
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .content_length(size)
            .presigned(PresigningConfig::expires_in(URL_TTL)?)
            .await?;
        Ok(Presigned {
            url: req.uri().to_owned(),
            method: req.method().to_owned(),
            headers: req
                .headers()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                // The HTTP client sets these itself.
                .filter(|(k, _)| !k.eq_ignore_ascii_case("content-length"))
                .collect(),
        })
    }

    pub async fn download_url(&self, key: &str, file_name: &str) -> anyhow::Result<String> {
        let disposition = format!(
            "attachment; filename=\"{}\"",
            file_name.replace(['"', '\\'], "_")
        );
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .response_content_disposition(disposition)
            .presigned(PresigningConfig::expires_in(URL_TTL)?)
            .await?;
        Ok(req.uri().to_owned())
    }

    /// What was uploaded under `key`; `None` when nothing was.
    pub async fn stat(&self, key: &str) -> anyhow::Result<Option<Stored>> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => Ok(Some(Stored {
                size: head.content_length().unwrap_or(0),
                content_type: head.content_type().unwrap_or_default().to_owned(),
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(anyhow::anyhow!(
                "object storage: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )),
        }
    }

    pub async fn delete(&self, key: &str) {
        if let Err(e) = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            tracing::warn!(key, error = %aws_sdk_s3::error::DisplayErrorContext(&e), "cannot delete a refused upload");
        }
    }
}
