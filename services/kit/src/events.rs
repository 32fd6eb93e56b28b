//! The event bus: an SQS queue (with its dead-letter queue) that the outbox
//! relays publish to and the analytics consumer reads. The queue is reached
//! through the AWS SDK's own settings (`AWS_REGION`, `AWS_ENDPOINT_URL_SQS`,
//! the credentials chain), so the same configuration works against AWS and
//! a local SQS-compatible server.

use std::{sync::Arc, time::Duration};

use aws_sdk_sqs::{Client, error::ProvideErrorMetadata as _, types::QueueAttributeName};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::config::{ConfigError, Env};

/// The envelope's schema version, sent as the `schema_version` attribute.
pub const SCHEMA_VERSION: u32 = 1;

/// Event bus settings, shared by every component that publishes or
/// consumes events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// The SQS queue name (`AGORA_EVENTS_QUEUE`, default `agora-events`).
    /// Empty turns the bus off: events stay in the outboxes and analytics
    /// consumes nothing. Created at start when missing, with a dead-letter
    /// queue named `<queue>-dlq`.
    pub queue: String,
    /// Receives after which a message that keeps failing moves to the
    /// dead-letter queue (`AGORA_EVENTS_MAX_RECEIVES`, default 10); applied
    /// when the queue is created.
    pub max_receives: u32,
    /// How often a relay looks for unsent outbox rows when it has found
    /// none, in milliseconds (`AGORA_OUTBOX_POLL_MS`, default 200).
    #[serde(with = "crate::config::millis")]
    pub poll_interval: Duration,
    /// How long sent outbox rows are kept before they are pruned, in
    /// seconds (`AGORA_OUTBOX_RETENTION_SECS`, default 604800: 7 days).
    #[serde(with = "crate::config::secs")]
    pub outbox_retention: Duration,
    /// The longest an SQS call may take before it counts as failed, in
    /// milliseconds (`AGORA_EVENTS_TIMEOUT_MS`, default 5000).
    #[serde(with = "crate::config::millis")]
    pub timeout: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            queue: "agora-events".into(),
            max_receives: 10,
            poll_interval: Duration::from_millis(200),
            outbox_retention: Duration::from_secs(7 * 24 * 3600),
            timeout: Duration::from_secs(5),
        }
    }
}

impl EventsConfig {
    pub fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        env.string_into("AGORA_EVENTS_QUEUE", &mut self.queue);
        env.parse_into("AGORA_EVENTS_MAX_RECEIVES", &mut self.max_receives)?;
        env.millis_into("AGORA_OUTBOX_POLL_MS", &mut self.poll_interval)?;
        env.secs_into("AGORA_OUTBOX_RETENTION_SECS", &mut self.outbox_retention)?;
        env.millis_into("AGORA_EVENTS_TIMEOUT_MS", &mut self.timeout)?;
        self.validate()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        // SQS queue names: 1 to 80 letters, digits, '-' and '_'; the
        // dead-letter queue adds "-dlq".
        if self.queue.len() > 76
            || !self
                .queue
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::invalid(
                "AGORA_EVENTS_QUEUE",
                "must be at most 76 letters, digits, '-' or '_'",
            ));
        }
        if !(1..=1000).contains(&self.max_receives) {
            return Err(ConfigError::invalid(
                "AGORA_EVENTS_MAX_RECEIVES",
                "must be between 1 and 1000",
            ));
        }
        if self.poll_interval.is_zero() {
            return Err(ConfigError::invalid(
                "AGORA_OUTBOX_POLL_MS",
                "must be positive",
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "AGORA_EVENTS_TIMEOUT_MS",
                "must be positive",
            ));
        }
        Ok(())
    }

    /// Whether events are published and consumed at all.
    pub fn enabled(&self) -> bool {
        !self.queue.is_empty()
    }
}

/// An SQS client bound to the event queue. The queue's URL is looked up
/// (and the queue created) on first use and again whenever SQS says the
/// queue does not exist, so a deleted queue comes back.
#[derive(Clone)]
pub struct Queue {
    pub client: Client,
    name: Arc<str>,
    max_receives: u32,
    url: Arc<RwLock<Option<String>>>,
}

impl Queue {
    /// A client whose calls give up after the configured timeout.
    pub async fn new(config: &EventsConfig) -> Self {
        Self::with_long_polls(config, Duration::ZERO).await
    }

    /// A client for a consumer whose long polls wait up to `wait`: each call
    /// may take that much longer.
    pub async fn with_long_polls(config: &EventsConfig, wait: Duration) -> Self {
        let region = aws_config::meta::region::RegionProviderChain::default_provider()
            .or_else(aws_config::Region::new("us-east-1"));
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(region)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(config.timeout)
                    .operation_attempt_timeout(config.timeout + wait)
                    .build(),
            )
            .load()
            .await;
        Self {
            client: Client::new(&shared),
            name: config.queue.as_str().into(),
            max_receives: config.max_receives,
            url: Arc::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's URL, creating the queue and its dead-letter queue when
    /// they are missing.
    pub async fn url(&self) -> Result<String, QueueError> {
        if let Some(url) = self.url.read().await.as_ref() {
            return Ok(url.clone());
        }
        let url = self.ensure().await?;
        *self.url.write().await = Some(url.clone());
        Ok(url)
    }

    /// Forgets the queue's URL after SQS said it does not exist; the next
    /// call looks it up (and recreates it) again.
    pub async fn forget(&self) {
        *self.url.write().await = None;
    }

    /// The dead-letter queue's URL (created when missing).
    pub async fn dead_letter_url(&self) -> Result<String, QueueError> {
        self.lookup_or_create(&format!("{}-dlq", self.name), None)
            .await
    }

    async fn ensure(&self) -> Result<String, QueueError> {
        if let Some(url) = self.lookup(&self.name).await? {
            return Ok(url);
        }
        let dlq = self.dead_letter_url().await?;
        let arn = self
            .client
            .get_queue_attributes()
            .queue_url(&dlq)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(QueueError::from_sdk)?
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .ok_or_else(|| QueueError::Other("the dead-letter queue has no ARN".into()))?;
        let policy = serde_json::json!({
            "deadLetterTargetArn": arn,
            "maxReceiveCount": self.max_receives.to_string(),
        })
        .to_string();
        let url = self.lookup_or_create(&self.name, Some(policy)).await?;
        tracing::info!(queue = %self.name, max_receives = self.max_receives, "event queue created");
        Ok(url)
    }

    async fn lookup(&self, name: &str) -> Result<Option<String>, QueueError> {
        match self.client.get_queue_url().queue_name(name).send().await {
            Ok(out) => Ok(out.queue_url().map(str::to_owned)),
            Err(e) if QueueError::is_missing_queue(e.code()) => Ok(None),
            Err(e) => Err(QueueError::from_sdk(e)),
        }
    }

    async fn lookup_or_create(
        &self,
        name: &str,
        redrive: Option<String>,
    ) -> Result<String, QueueError> {
        if let Some(url) = self.lookup(name).await? {
            return Ok(url);
        }
        let mut create = self
            .client
            .create_queue()
            .queue_name(name)
            // Two weeks, the most SQS keeps a message: events wait out a
            // long consumer outage.
            .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600");
        if let Some(policy) = redrive {
            create = create.attributes(QueueAttributeName::RedrivePolicy, policy);
        }
        let out = create.send().await.map_err(QueueError::from_sdk)?;
        out.queue_url()
            .map(str::to_owned)
            .ok_or_else(|| QueueError::Other(format!("SQS created {name} without a URL")))
    }
}

/// The longest long poll SQS allows.
pub const LONG_POLL: Duration = Duration::from_secs(20);

/// A failed SQS call, with what SQS said.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue does not exist")]
    Missing,
    #[error("SQS: {0}")]
    Other(String),
}

impl QueueError {
    pub fn from_sdk<E, R>(e: aws_sdk_sqs::error::SdkError<E, R>) -> Self
    where
        E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        if Self::is_missing_queue(e.code()) {
            return Self::Missing;
        }
        Self::Other(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())
    }

    fn is_missing_queue(code: Option<&str>) -> bool {
        code.is_some_and(|c| c.contains("NonExistentQueue") || c.contains("QueueDoesNotExist"))
    }
}

/// The `Envelope` message's descriptor, for its proto3 JSON form.
fn envelope_descriptor() -> &'static prost_reflect::MessageDescriptor {
    static DESCRIPTOR: std::sync::LazyLock<prost_reflect::MessageDescriptor> =
        std::sync::LazyLock::new(|| {
            prost_reflect::DescriptorPool::decode(agora_proto::FILE_DESCRIPTOR_SET)
                .ok()
                .and_then(|pool| pool.get_message_by_name("agora.events.v1.Envelope"))
                .expect("the embedded contracts define agora.events.v1.Envelope")
        });
    &DESCRIPTOR
}

/// A payload's field name in the envelope (`user_registered`) and its
/// proto3 JSON form.
pub fn payload_json(payload: &Payload) -> (String, serde_json::Value) {
    use prost::Message as _;
    let envelope = Envelope {
        payload: Some(payload.clone()),
        ..Envelope::default()
    };
    let message = prost_reflect::DynamicMessage::decode(
        envelope_descriptor().clone(),
        envelope.encode_to_vec().as_slice(),
    )
    .expect("a generated envelope decodes against its own descriptor");
    message
        .fields()
        .find_map(|(field, value)| {
            value.as_message().map(|m| {
                (
                    field.name().to_owned(),
                    serde_json::to_value(m).unwrap_or_default(),
                )
            })
        })
        .expect("a payload sets its oneof field")
}

/// An envelope's proto3 JSON form, as carried in an SQS body.
pub fn encode_envelope(envelope: &Envelope) -> String {
    use prost::Message as _;
    prost_reflect::DynamicMessage::decode(
        envelope_descriptor().clone(),
        envelope.encode_to_vec().as_slice(),
    )
    .ok()
    .and_then(|m| serde_json::to_string(&m).ok())
    .expect("a generated envelope encodes against its own descriptor")
}

/// Reads an envelope from its proto3 JSON form, as carried in an SQS body.
/// Unknown fields and payloads that do not match their type are refused.
pub fn decode_envelope(body: &str) -> Result<Envelope, String> {
    let mut de = serde_json::Deserializer::from_str(body);
    let message =
        prost_reflect::DynamicMessage::deserialize(envelope_descriptor().clone(), &mut de)
            .map_err(|e| format!("not an agora.events.v1.Envelope: {e}"))?;
    de.end()
        .map_err(|e| format!("not an agora.events.v1.Envelope: {e}"))?;
    message
        .transcode_to::<Envelope>()
        .map_err(|e| format!("not an agora.events.v1.Envelope: {e}"))
}

pub use agora_proto::events::v1::{Envelope, envelope::Payload};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_and_errors_name_them() {
        let mut config = EventsConfig::default();
        config
            .apply_env(&Env::from_pairs([
                ("AGORA_EVENTS_QUEUE", "orders-events"),
                ("AGORA_EVENTS_MAX_RECEIVES", "3"),
                ("AGORA_OUTBOX_POLL_MS", "50"),
                ("AGORA_OUTBOX_RETENTION_SECS", "60"),
                ("AGORA_EVENTS_TIMEOUT_MS", "1500"),
            ]))
            .expect("valid");
        assert_eq!(config.queue, "orders-events");
        assert_eq!(config.max_receives, 3);
        assert_eq!(config.poll_interval, Duration::from_millis(50));
        assert_eq!(config.outbox_retention, Duration::from_secs(60));
        assert_eq!(config.timeout, Duration::from_millis(1500));
        for (name, value) in [
            ("AGORA_EVENTS_QUEUE", "orders events"),
            ("AGORA_EVENTS_MAX_RECEIVES", "0"),
            ("AGORA_OUTBOX_POLL_MS", "0"),
            ("AGORA_EVENTS_TIMEOUT_MS", "0"),
        ] {
            let err = EventsConfig::default()
                .apply_env(&Env::from_pairs([(name, value)]))
                .expect_err(name);
            assert!(err.to_string().contains(name), "{err}");
        }
        let off = EventsConfig {
            queue: String::new(),
            ..EventsConfig::default()
        };
        assert!(!off.enabled() && off.validate().is_ok());
    }

    #[test]
    fn envelopes_round_trip_and_strangers_are_refused() {
        let envelope = Envelope {
            id: "01a2185b-4165-769b-861c-78074ef42210".into(),
            r#type: "users.password_changed".into(),
            source: "users".into(),
            payload: Some(Payload::PasswordChanged(
                agora_proto::events::v1::PasswordChanged {
                    user_id: "u1".into(),
                },
            )),
            ..Envelope::default()
        };
        let json = encode_envelope(&envelope);
        assert!(json.contains("\"passwordChanged\""), "{json}");
        assert_eq!(decode_envelope(&json).expect("decodes"), envelope);
        let (field, payload) = payload_json(envelope.payload.as_ref().expect("payload"));
        assert_eq!(
            (field.as_str(), payload["userId"].as_str()),
            ("password_changed", Some("u1"))
        );
        assert!(decode_envelope(r#"{"id":"x","teleported":{}}"#).is_err());
        assert!(decode_envelope("not json").is_err());
    }
}
