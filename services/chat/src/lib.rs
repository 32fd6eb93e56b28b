//! The chat service: group and direct rooms, messages encrypted at rest in
//! MongoDB, live streams (a bidirectional `Connect` and a read-only
//! `WatchRoom`), fan-out across replicas through Redis pub/sub, presence,
//! and per-user notifications. gRPC on port 3003.
//!
//! # Layout
//!
//! - [`api`]: the tonic service and its streams.
//! - [`rooms`]: what chat does: membership, messages, read markers,
//!   notifications.
//! - [`store`]: the MongoDB collections.
//! - [`crypto`]: AES-256-GCM sealing of message bodies, key rotation.
//! - [`events`]: `chat.message_sent` events, kept in their messages until
//!   published.
//! - [`files`]: attachments in S3-compatible storage, presigned URLs.
//! - [`hub`]: local streams, Redis fan-out, presence, catch-up.

pub mod api;
pub mod crypto;
pub mod events;
pub mod files;
pub mod hub;
pub mod rooms;
pub mod store;

use std::{fmt, net::SocketAddr, path::PathBuf, sync::Arc};

use agora_kit::{
    auth::AuthLayer,
    balance::Balanced,
    config::{ConfigError, Env},
    events::EventsConfig,
    jwks::service_auth,
    outbox::Relay,
    redis::SharedRedis,
    shutdown::Shutdown,
};
use agora_proto::chat::v1::{RoomEvent, chat_service_server::ChatServiceServer};
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::{
    api::ChatService,
    crypto::Keyring,
    files::Files,
    hub::Hub,
    rooms::{AttachmentRules, Chat},
    store::Store,
};

/// The gRPC service name, as reported by health checks.
pub const SERVICE_NAME: &str = "agora.chat.v1.ChatService";
/// The component's `service.name` in traces.
pub const COMPONENT: &str = "agora-chat";
/// The key id of the development key made when none is configured.
const DEV_KEY_ID: &str = "dev";

/// A secret setting: never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

/// Chat service settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// gRPC listen address (`AGORA_CHAT_ADDR`, default `0.0.0.0:3003`).
    pub addr: SocketAddr,
    /// MongoDB (`MONGODB_URI`, default `mongodb://127.0.0.1:27017/agora`);
    /// the database named in the URI is used (`agora` when none is).
    pub mongodb_uri: String,
    /// Redis for fan-out between replicas and presence (`REDIS_URL`,
    /// default `redis://127.0.0.1:6379`; empty: this replica alone).
    pub redis_url: String,
    /// Prefix of chat's Redis channel and keys (`AGORA_CHAT_KEY_PREFIX`,
    /// default `agora:chat:`); replicas that share it see each other.
    pub key_prefix: String,
    /// Message-body keys, `kid:base64key` pairs, comma-separated; the first
    /// encrypts (`AGORA_CHAT_ENCRYPTION_KEYS`; environment only, never in
    /// the file). Default none.
    #[serde(skip)]
    pub encryption_keys: Secret,
    /// A file holding the keys in the same form
    /// (`AGORA_CHAT_ENCRYPTION_KEYS_FILE`, default none). Without keys, a
    /// development key is made once and kept in MongoDB, with a warning.
    pub encryption_keys_file: Option<PathBuf>,
    /// The S3 bucket of attachments (`AGORA_CHAT_ATTACHMENTS_BUCKET`,
    /// default empty: attachments are off). Created at start when missing.
    /// Storage is reached by the AWS SDK's own settings (`AWS_REGION`,
    /// `AWS_ENDPOINT_URL_S3`, the credentials chain).
    pub attachments_bucket: String,
    /// Address the bucket by path (`endpoint/bucket`), as local S3 servers
    /// need (`AGORA_CHAT_S3_PATH_STYLE`, default false).
    pub s3_path_style: bool,
    /// The largest attachment, in bytes (`AGORA_CHAT_ATTACHMENT_MAX_BYTES`,
    /// default 10 MiB).
    pub attachment_max_bytes: i64,
    /// Accepted attachment content types (`AGORA_CHAT_ATTACHMENT_TYPES`, a
    /// comma list; default images, PDF and plain text).
    pub attachment_types: Vec<String>,
    /// Events a stream may fall behind by before it is ended as too slow
    /// (`AGORA_CHAT_STREAM_BUFFER`, default 256).
    pub stream_buffer: usize,
    /// The users service, for public keys and API keys (`USER_SERVICE_URL`,
    /// default `http://127.0.0.1:3001`).
    pub users_url: String,
    /// Expected `iss` of access tokens (`AGORA_JWT_ISSUER`, default `agora`).
    pub jwt_issuer: String,
    /// Expected `aud` of access tokens (`AGORA_JWT_AUDIENCE`, default `agora`).
    pub jwt_audience: String,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 3003)),
            mongodb_uri: "mongodb://127.0.0.1:27017/agora".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            key_prefix: "agora:chat:".into(),
            encryption_keys: Secret::default(),
            encryption_keys_file: None,
            attachments_bucket: String::new(),
            s3_path_style: false,
            attachment_max_bytes: 10 << 20,
            attachment_types: [
                "image/png",
                "image/jpeg",
                "image/gif",
                "image/webp",
                "application/pdf",
                "text/plain",
            ]
            .map(String::from)
            .to_vec(),
            stream_buffer: 256,
            users_url: "http://127.0.0.1:3001".into(),
            jwt_issuer: "agora".into(),
            jwt_audience: "agora".into(),
        }
    }
}

impl ChatConfig {
    pub fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        env.parse_into("AGORA_CHAT_ADDR", &mut self.addr)?;
        env.string_into("MONGODB_URI", &mut self.mongodb_uri);
        env.string_into("REDIS_URL", &mut self.redis_url);
        env.string_into("AGORA_CHAT_KEY_PREFIX", &mut self.key_prefix);
        if let Some(keys) = env.get("AGORA_CHAT_ENCRYPTION_KEYS") {
            self.encryption_keys = Secret(keys.to_owned());
        }
        if let Some(path) = env.get("AGORA_CHAT_ENCRYPTION_KEYS_FILE") {
            self.encryption_keys_file = (!path.is_empty()).then(|| PathBuf::from(path));
        }
        env.string_into(
            "AGORA_CHAT_ATTACHMENTS_BUCKET",
            &mut self.attachments_bucket,
        );
        env.parse_into("AGORA_CHAT_S3_PATH_STYLE", &mut self.s3_path_style)?;
        env.parse_into(
            "AGORA_CHAT_ATTACHMENT_MAX_BYTES",
            &mut self.attachment_max_bytes,
        )?;
        if let Some(list) = env.get("AGORA_CHAT_ATTACHMENT_TYPES") {
            self.attachment_types = list
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect();
        }
        env.parse_into("AGORA_CHAT_STREAM_BUFFER", &mut self.stream_buffer)?;
        env.string_into("USER_SERVICE_URL", &mut self.users_url);
        env.string_into("AGORA_JWT_ISSUER", &mut self.jwt_issuer);
        env.string_into("AGORA_JWT_AUDIENCE", &mut self.jwt_audience);
        self.validate()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        agora_kit::mongo::validate_uri(&self.mongodb_uri)?;
        if !self.redis_url.is_empty() {
            fred::prelude::Config::from_url(&self.redis_url)
                .map_err(|e| ConfigError::invalid("REDIS_URL", format!("not a Redis URL: {e}")))?;
        }
        if self.attachment_max_bytes < 1 {
            return Err(ConfigError::invalid(
                "AGORA_CHAT_ATTACHMENT_MAX_BYTES",
                "must be positive",
            ));
        }
        if let Some(bad) = self.attachment_types.iter().find(|t| {
            t.split_once('/')
                .is_none_or(|(a, b)| a.is_empty() || b.is_empty())
        }) {
            return Err(ConfigError::invalid(
                "AGORA_CHAT_ATTACHMENT_TYPES",
                format!("{bad:?} is not a content type like image/png"),
            ));
        }
        if self.stream_buffer == 0 {
            return Err(ConfigError::invalid(
                "AGORA_CHAT_STREAM_BUFFER",
                "must be positive",
            ));
        }
        if !self.encryption_keys.0.is_empty() {
            Keyring::parse(&self.encryption_keys.0, "AGORA_CHAT_ENCRYPTION_KEYS")?;
        }
        Balanced::parse_urls(&self.users_url, "USER_SERVICE_URL")?;
        Ok(())
    }

    /// The configured keys; `None` when none are configured.
    fn keyring(&self) -> anyhow::Result<Option<Keyring>> {
        if !self.encryption_keys.0.is_empty() {
            return Ok(Some(Keyring::parse(
                &self.encryption_keys.0,
                "AGORA_CHAT_ENCRYPTION_KEYS",
            )?));
        }
        if let Some(path) = &self.encryption_keys_file {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "AGORA_CHAT_ENCRYPTION_KEYS_FILE: cannot read {}",
                    path.display()
                )
            })?;
            return Ok(Some(Keyring::parse(
                &text,
                "AGORA_CHAT_ENCRYPTION_KEYS_FILE",
            )?));
        }
        Ok(None)
    }
}

/// The catch-up source of the hub: the store.
struct StoreCatchUp(Chat);

impl hub::CatchUp for StoreCatchUp {
    fn since(
        &self,
        rooms: Vec<String>,
        since_ms: i64,
        limit: i64,
    ) -> futures::future::BoxFuture<'static, anyhow::Result<Vec<RoomEvent>>> {
        let chat = self.0.clone();
        Box::pin(async move { chat.changes_since(rooms, since_ms, limit).await })
    }
}

/// The chat service, built and bound, not yet serving.
pub struct ChatComponent {
    listener: TcpListener,
    relay: Option<Relay>,
    chat: Chat,
    auth: AuthLayer,
    config: ChatConfig,
}

impl ChatComponent {
    pub async fn build(config: ChatConfig, events: &EventsConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let store = Store::connect(&config.mongodb_uri).await?;
        let relay = Relay::for_service(
            events::MessageEvents::new(store.messages.clone()),
            events::SOURCE,
            events,
        )
        .await;
        let keys = match config.keyring()? {
            Some(keys) => keys,
            None => {
                let key = store
                    .setting_or_init("dev_encryption_key", Keyring::generate_key)
                    .await
                    .context("MONGODB_URI: cannot read or store the development key")?;
                tracing::warn!(
                    "AGORA_CHAT_ENCRYPTION_KEYS is not set: message bodies are encrypted with a \
                     development key kept in MongoDB beside them, which protects nothing. \
                     Configure real keys before production."
                );
                let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key)
                    .context("the stored development key is not base64")?;
                Keyring::single(DEV_KEY_ID, &raw)?
            }
        };
        let redis = if config.redis_url.is_empty() {
            None
        } else {
            let redis = SharedRedis::connect(&config.redis_url, "REDIS_URL", "chat fan-out")?;
            redis
                .wait_connected(std::time::Duration::from_secs(2))
                .await;
            Some(redis)
        };
        let hub = Hub::new(redis, &config.key_prefix, config.stream_buffer);
        let files = if config.attachments_bucket.is_empty() {
            None
        } else {
            let files = Files::new(&config.attachments_bucket, config.s3_path_style).await;
            files.ensure_bucket().await;
            Some(files)
        };
        let users = Balanced::new("users", &config.users_url, "USER_SERVICE_URL").await?;
        let auth = service_auth(users.clone(), &config.jwt_issuer, &config.jwt_audience)?;
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("AGORA_CHAT_ADDR: cannot listen on {}", config.addr))?;
        Ok(Self {
            listener,
            relay,
            chat: Chat {
                writer: store::MessageWriter::start(store.messages.clone()),
                activity: Arc::default(),
                users: agora_proto::users::v1::users_service_client::UsersServiceClient::new(users),
                store,
                keys: Arc::new(keys),
                hub,
                files,
                rules: Arc::new(AttachmentRules {
                    max_bytes: config.attachment_max_bytes,
                    types: config.attachment_types.clone(),
                }),
            },
            auth,
            config,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves, listens to the other replicas and publishes message events,
    /// until `shutdown` stops.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let relay = Relay::spawn(self.relay, shutdown.clone());
        let fanout = tokio::spawn(self.chat.hub.clone().run(
            self.config.redis_url.clone(),
            Arc::new(StoreCatchUp(self.chat.clone())),
            shutdown.clone(),
        ));
        let service = ChatService::new(self.chat, self.config.stream_buffer);
        let routes = tonic::service::Routes::new(ChatServiceServer::new(service));
        let served = agora_kit::grpc::serve(
            COMPONENT,
            self.listener,
            &[SERVICE_NAME],
            routes,
            Some(self.auth),
            shutdown,
        )
        .await;
        fanout.abort();
        if let Some(relay) = relay {
            relay.abort();
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_environment_or_a_file_and_errors_name_the_setting() {
        let key = Keyring::generate_key();
        let mut config = ChatConfig::default();
        config
            .apply_env(&Env::from_pairs([(
                "AGORA_CHAT_ENCRYPTION_KEYS",
                format!("new:{key}").as_str(),
            )]))
            .expect("valid keys");
        let ring = config.keyring().expect("reads").expect("configured");
        assert_eq!(ring.seal("x", "a").expect("seals").kid, "new");
        assert!(!format!("{config:?}").contains(&key), "keys never print");

        let path = std::env::temp_dir().join(format!("agora-chat-keys-{}", std::process::id()));
        std::fs::write(&path, format!("file:{key}\n")).expect("write");
        let config = ChatConfig {
            encryption_keys_file: Some(path.clone()),
            ..ChatConfig::default()
        };
        let ring = config.keyring().expect("reads").expect("configured");
        assert_eq!(ring.seal("x", "a").expect("seals").kid, "file");
        std::fs::remove_file(&path).expect("remove");

        let err = ChatConfig::default()
            .apply_env(&Env::from_pairs([("AGORA_CHAT_ENCRYPTION_KEYS", "bad")]))
            .expect_err("refused");
        assert!(
            err.to_string().contains("AGORA_CHAT_ENCRYPTION_KEYS"),
            "{err}"
        );
        assert!(ChatConfig::default().keyring().expect("reads").is_none());
    }
}
