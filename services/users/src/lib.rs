//! The users service: accounts, argon2id passwords, access tokens (EdDSA
//! JWTs with a JWKS), rotating refresh tokens, roles, email verification,
//! password reset and API keys. gRPC on port 3001; PostgreSQL schema `users`.
//!
//! # Layout
//!
//! - [`api`]: the tonic service, proto ⇄ domain.
//! - [`domain`]: self-validating values (`Email`, `DisplayName`, `Role`…).
//! - [`store`]: accounts: SQL, transactions and the outbox.
//! - [`credentials`]: refresh tokens, one-time tokens and API keys.
//! - [`keys`]: the signing key, access tokens and JWKS.
//! - [`secrets`]: password hashing and random bearer secrets.
//! - [`error`]: `UsersError` and its one mapping to `tonic::Status`.

pub mod api;
pub mod credentials;
pub mod domain;
pub mod error;
pub mod keys;
pub mod secrets;
pub mod store;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use agora_kit::{
    access::AccessPolicy,
    auth::{AuthLayer, Authenticator, Caller, Credential, Presented, TokenError},
    config::{ConfigError, Env},
    db::DatabaseConfig,
    events::EventsConfig,
    outbox::{PgOutbox, Relay},
    shutdown::Shutdown,
};
use agora_proto::users::v1::users_service_server::UsersServiceServer;
use anyhow::Context as _;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tonic::Status;

use crate::{
    api::UsersService,
    domain::{DisplayName, Email, NewPassword, Role},
    keys::{KeySource, SigningKey},
    store::{Store, UserRow},
};

/// The gRPC service name, as reported by health checks.
pub const SERVICE_NAME: &str = "agora.users.v1.UsersService";
/// The component\'s `service.name` in traces.
pub const COMPONENT: &str = "agora-users";
/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "users";

/// Users service settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsersConfig {
    /// gRPC listen address (`AGORA_USERS_ADDR`, default `0.0.0.0:3001`).
    pub addr: SocketAddr,
    /// `iss` of issued access tokens (`AGORA_JWT_ISSUER`, default `agora`).
    pub issuer: String,
    /// `aud` of issued access tokens (`AGORA_JWT_AUDIENCE`, default `agora`).
    pub audience: String,
    /// The Ed25519 signing key as a PKCS#8 PEM (`AGORA_JWT_PRIVATE_KEY`).
    #[serde(skip_serializing)]
    pub private_key: Option<String>,
    /// A file holding that PEM (`AGORA_JWT_PRIVATE_KEY_FILE`). Without
    /// either, a key is generated at start (development only).
    pub private_key_file: Option<PathBuf>,
    /// Retired public keys still accepted and published in the JWKS, as a
    /// file of PEM `PUBLIC KEY` blocks (`AGORA_JWT_RETIRED_KEYS_FILE`); keep
    /// a rotated-out key here until its last token has expired.
    pub retired_keys_file: Option<PathBuf>,
    /// Access token lifetime in seconds (`AGORA_ACCESS_TOKEN_TTL_SECS`, default 900).
    #[serde(with = "agora_kit::config::secs")]
    pub access_token_ttl: Duration,
    /// Refresh token lifetime in seconds (`AGORA_REFRESH_TOKEN_TTL_SECS`,
    /// default 30 days).
    #[serde(with = "agora_kit::config::secs")]
    pub refresh_token_ttl: Duration,
    /// Email verification token lifetime in seconds
    /// (`AGORA_VERIFICATION_TOKEN_TTL_SECS`, default 24 h).
    #[serde(with = "agora_kit::config::secs")]
    pub verification_token_ttl: Duration,
    /// Password reset token lifetime in seconds
    /// (`AGORA_PASSWORD_RESET_TOKEN_TTL_SECS`, default 1 h).
    #[serde(with = "agora_kit::config::secs")]
    pub password_reset_token_ttl: Duration,
}

impl Default for UsersConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 3001)),
            issuer: "agora".into(),
            audience: "agora".into(),
            private_key: None,
            private_key_file: None,
            retired_keys_file: None,
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            verification_token_ttl: Duration::from_secs(24 * 3600),
            password_reset_token_ttl: Duration::from_secs(3600),
        }
    }
}

impl UsersConfig {
    pub fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        env.parse_into("AGORA_USERS_ADDR", &mut self.addr)?;
        env.string_into("AGORA_JWT_ISSUER", &mut self.issuer);
        env.string_into("AGORA_JWT_AUDIENCE", &mut self.audience);
        if let Some(pem) = env.get("AGORA_JWT_PRIVATE_KEY") {
            self.private_key = Some(pem.to_owned());
        }
        if let Some(path) = env.get("AGORA_JWT_PRIVATE_KEY_FILE") {
            self.private_key_file = Some(path.into());
        }
        if let Some(path) = env.get("AGORA_JWT_RETIRED_KEYS_FILE") {
            self.retired_keys_file = Some(path.into());
        }
        env.secs_into("AGORA_ACCESS_TOKEN_TTL_SECS", &mut self.access_token_ttl)?;
        env.secs_into("AGORA_REFRESH_TOKEN_TTL_SECS", &mut self.refresh_token_ttl)?;
        env.secs_into(
            "AGORA_VERIFICATION_TOKEN_TTL_SECS",
            &mut self.verification_token_ttl,
        )?;
        env.secs_into(
            "AGORA_PASSWORD_RESET_TOKEN_TTL_SECS",
            &mut self.password_reset_token_ttl,
        )?;
        self.validate()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.access_token_ttl.as_secs() < 10 || self.access_token_ttl.as_secs() > 24 * 3600 {
            return Err(ConfigError::invalid(
                "AGORA_ACCESS_TOKEN_TTL_SECS",
                "must be between 10 and 86400",
            ));
        }
        if self.refresh_token_ttl <= self.access_token_ttl {
            return Err(ConfigError::invalid(
                "AGORA_REFRESH_TOKEN_TTL_SECS",
                "must be longer than the access token lifetime",
            ));
        }
        if self.private_key.is_some() && self.private_key_file.is_some() {
            return Err(ConfigError::invalid(
                "AGORA_JWT_PRIVATE_KEY",
                "set either AGORA_JWT_PRIVATE_KEY or AGORA_JWT_PRIVATE_KEY_FILE, not both",
            ));
        }
        if self.issuer.is_empty() {
            return Err(ConfigError::invalid(
                "AGORA_JWT_ISSUER",
                "must not be empty",
            ));
        }
        Ok(())
    }

    fn key_source(&self) -> KeySource {
        match (&self.private_key, &self.private_key_file) {
            (Some(pem), _) => KeySource::Pem(pem.clone()),
            (None, Some(path)) => KeySource::File(path.clone()),
            (None, None) => KeySource::Generated,
        }
    }
}

/// The service's database: schema `users` and its migrations.
pub const DATABASE: agora_kit::db::ServiceDatabase = agora_kit::db::ServiceDatabase {
    schema: SCHEMA,
    migrator: &store::MIGRATOR,
};

/// Connects to PostgreSQL (schema `users`), migrating if configured.
pub async fn connect(db: &DatabaseConfig) -> anyhow::Result<Store> {
    Ok(Store::new(DATABASE.open(db).await?))
}

/// Creates an administrator account (the operator's `users create-admin`).
pub async fn create_admin(
    db: &DatabaseConfig,
    email: &str,
    password: String,
    display_name: &str,
) -> anyhow::Result<UserRow> {
    let store = connect(&DatabaseConfig {
        migrate_on_start: true,
        ..db.clone()
    })
    .await?;
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("{e}"))?;
    let password = NewPassword::parse("password", password).map_err(|e| anyhow::anyhow!("{e}"))?;
    let name =
        DisplayName::parse("display name", display_name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let hash = secrets::hash_password(password.expose().to_owned()).await?;
    store
        .create_user(
            email.as_str(),
            email.normalized(),
            name.as_str(),
            &hash,
            &[Role::Admin],
            true,
        )
        .await
        .map_err(anyhow::Error::new)
}

// === impl UsersAuthenticator ===

/// Verifies access tokens with this service's own key and API keys against
/// its own table: the service trusts no identity asserted by the edge.
struct UsersAuthenticator {
    keys: Arc<SigningKey>,
    store: Store,
}

impl Authenticator for UsersAuthenticator {
    fn authenticate<'a>(
        &'a self,
        headers: &'a http::HeaderMap,
    ) -> BoxFuture<'a, Result<Option<Caller>, Status>> {
        Box::pin(async move {
            match Presented::from_headers(headers)? {
                None => Ok(None),
                Some(Presented::AccessToken(token)) => {
                    let claims = self
                        .keys
                        .verifying()
                        .verify(token)
                        .map_err(|e: TokenError| Status::unauthenticated(e.to_string()))?;
                    Ok(Some(claims.into()))
                }
                Some(Presented::ApiKey(secret)) => {
                    let (key, user) = api::authenticate_key(&self.store, secret).await?;
                    Ok(Some(Caller {
                        user_id: user.id.to_string(),
                        roles: user.roles,
                        credential: Credential::ApiKey {
                            key_id: key.id.to_string(),
                            permissions: key.permissions,
                            rate_limit_per_minute: key.rate_limit_per_minute.max(0) as u32,
                        },
                    }))
                }
            }
        })
    }
}

// === impl UsersComponent ===

/// The users service, built and bound, not yet serving.
pub struct UsersComponent {
    listener: TcpListener,
    relay: Option<Relay>,
    service: UsersService,
    auth: AuthLayer,
}

impl UsersComponent {
    /// Connects the database, loads the signing key and binds the listener.
    pub async fn build(
        config: UsersConfig,
        db: &DatabaseConfig,
        events: &EventsConfig,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let mut keys = SigningKey::load(&config.key_source(), &config.issuer, &config.audience)?;
        if let Some(path) = &config.retired_keys_file {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "AGORA_JWT_RETIRED_KEYS_FILE: cannot read {}",
                    path.display()
                )
            })?;
            keys = keys
                .with_retired(&text)
                .with_context(|| format!("AGORA_JWT_RETIRED_KEYS_FILE: {}", path.display()))?;
        }
        let keys = Arc::new(keys);
        let store = connect(db).await?;
        let relay =
            Relay::for_service(PgOutbox(store.pool().clone()), store::OUTBOX.source, events).await;
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("AGORA_USERS_ADDR: cannot listen on {}", config.addr))?;
        let auth = AuthLayer::new(
            AccessPolicy::from_contracts()?,
            Arc::new(UsersAuthenticator {
                keys: keys.clone(),
                store: store.clone(),
            }),
        );
        let service = UsersService::new(store, keys, Arc::new(config)).await?;
        Ok(Self {
            listener,
            relay,
            service,
            auth,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves, and publishes the outbox, until `shutdown` stops the
    /// process.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let relay = Relay::spawn(self.relay, shutdown.clone());
        let routes = tonic::service::Routes::new(UsersServiceServer::new(self.service));
        let served = agora_kit::grpc::serve(
            COMPONENT,
            self.listener,
            &[SERVICE_NAME],
            routes,
            Some(self.auth),
            shutdown,
        )
        .await;
        if let Some(relay) = relay {
            relay.abort();
        }
        served
    }
}
