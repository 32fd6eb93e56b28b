//! The catalog service: products, categories, stock and reservations,
//! full-text search with typo tolerance, a Redis read-through cache, and
//! "also viewed" recommendations. gRPC on port 3002; PostgreSQL schema
//! `catalog`.
//!
//! # Layout
//!
//! - [`api`]: the tonic service, proto ⇄ domain.
//! - [`domain`]: self-validating values (`Sku`, `Money`, quantities…).
//! - [`store`]: products, categories, views (SQL and the outbox).
//! - [`inventory`]: stock and reservations.
//! - [`search`]: listing, search, suggestions.
//! - [`cache`]: the Redis product cache.
//! - [`seed`]: generated catalogs for trials and benchmarks.
//! - [`error`]: `CatalogError` and its one mapping to `tonic::Status`.

pub mod api;
pub mod cache;
pub mod domain;
pub mod error;
pub mod inventory;
pub mod search;
pub mod seed;
pub mod store;

use std::{net::SocketAddr, time::Duration};

use agora_kit::{
    auth::AuthLayer,
    balance::Balanced,
    config::{ConfigError, Env},
    db::DatabaseConfig,
    events::EventsConfig,
    jwks::service_auth,
    outbox::{PgOutbox, Relay},
    shutdown::Shutdown,
};
use agora_proto::catalog::v1::catalog_service_server::CatalogServiceServer;
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::{api::CatalogService, cache::ProductCache, store::Store};

/// The gRPC service name, as reported by health checks.
pub const SERVICE_NAME: &str = "agora.catalog.v1.CatalogService";
/// The component\'s `service.name` in traces.
pub const COMPONENT: &str = "agora-catalog";
/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "catalog";

/// Catalog service settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// gRPC listen address (`AGORA_CATALOG_ADDR`, default `0.0.0.0:3002`).
    pub addr: SocketAddr,
    /// Redis for the product cache (`REDIS_URL`, default
    /// `redis://127.0.0.1:6379`); empty disables the cache.
    pub redis_url: String,
    /// Prefix of every cache key (`AGORA_CACHE_KEY_PREFIX`, default empty),
    /// so several deployments can share one Redis.
    pub cache_key_prefix: String,
    /// Lifetime of a cached product in seconds (`AGORA_CATALOG_CACHE_TTL_SECS`,
    /// default 60); bounds staleness if an invalidation cannot reach Redis.
    #[serde(with = "agora_kit::config::secs")]
    pub cache_ttl: Duration,
    /// How long a reservation holds stock unless the request says, in
    /// seconds (`AGORA_RESERVATION_TTL_SECS`, default 900).
    #[serde(with = "agora_kit::config::secs")]
    pub reservation_ttl: Duration,
    /// How often expired reservations are released, in milliseconds
    /// (`AGORA_RESERVATION_SWEEP_MS`, default 1000).
    #[serde(with = "agora_kit::config::millis")]
    pub sweep_interval: Duration,
    /// The users service, for public keys and API keys (`USER_SERVICE_URL`,
    /// default `http://127.0.0.1:3001`; a comma list or a DNS name with
    /// several addresses balances over them).
    pub users_url: String,
    /// Expected `iss` of access tokens (`AGORA_JWT_ISSUER`, default `agora`).
    pub jwt_issuer: String,
    /// Expected `aud` of access tokens (`AGORA_JWT_AUDIENCE`, default `agora`).
    pub jwt_audience: String,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 3002)),
            redis_url: "redis://127.0.0.1:6379".into(),
            cache_key_prefix: String::new(),
            cache_ttl: Duration::from_secs(60),
            reservation_ttl: Duration::from_secs(900),
            sweep_interval: Duration::from_secs(1),
            users_url: "http://127.0.0.1:3001".into(),
            jwt_issuer: "agora".into(),
            jwt_audience: "agora".into(),
        }
    }
}

impl CatalogConfig {
    pub fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        env.parse_into("AGORA_CATALOG_ADDR", &mut self.addr)?;
        env.string_into("REDIS_URL", &mut self.redis_url);
        env.string_into("AGORA_CACHE_KEY_PREFIX", &mut self.cache_key_prefix);
        env.secs_into("AGORA_CATALOG_CACHE_TTL_SECS", &mut self.cache_ttl)?;
        env.secs_into("AGORA_RESERVATION_TTL_SECS", &mut self.reservation_ttl)?;
        env.millis_into("AGORA_RESERVATION_SWEEP_MS", &mut self.sweep_interval)?;
        env.string_into("USER_SERVICE_URL", &mut self.users_url);
        env.string_into("AGORA_JWT_ISSUER", &mut self.jwt_issuer);
        env.string_into("AGORA_JWT_AUDIENCE", &mut self.jwt_audience);
        self.validate()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.redis_url.is_empty() {
            fred::prelude::Config::from_url(&self.redis_url)
                .map_err(|e| ConfigError::invalid("REDIS_URL", format!("not a Redis URL: {e}")))?;
        }
        Balanced::parse_urls(&self.users_url, "USER_SERVICE_URL")?;
        if self.reservation_ttl.is_zero() || self.reservation_ttl > Duration::from_secs(3600) {
            return Err(ConfigError::invalid(
                "AGORA_RESERVATION_TTL_SECS",
                "must be between 1 and 3600",
            ));
        }
        if self.sweep_interval.is_zero() {
            return Err(ConfigError::invalid(
                "AGORA_RESERVATION_SWEEP_MS",
                "must be positive",
            ));
        }
        Ok(())
    }
}

/// The service's database: schema `catalog` and its migrations.
pub const DATABASE: agora_kit::db::ServiceDatabase = agora_kit::db::ServiceDatabase {
    schema: SCHEMA,
    migrator: &store::MIGRATOR,
};

/// Connects to PostgreSQL (schema `catalog`), migrating if configured.
pub async fn connect(db: &DatabaseConfig) -> anyhow::Result<Store> {
    Ok(Store::new(DATABASE.open(db).await?))
}

/// The catalog service, built and bound, not yet serving.
pub struct CatalogComponent {
    listener: TcpListener,
    relay: Option<Relay>,
    service: CatalogService,
    store: Store,
    cache: ProductCache,
    auth: AuthLayer,
    sweep_interval: Duration,
}

impl CatalogComponent {
    pub async fn build(
        config: CatalogConfig,
        db: &DatabaseConfig,
        events: &EventsConfig,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let store = connect(db).await?;
        let relay =
            Relay::for_service(PgOutbox(store.pool().clone()), store::OUTBOX.source, events).await;
        let cache = if config.redis_url.is_empty() {
            ProductCache::disabled()
        } else {
            ProductCache::connect(
                &config.redis_url,
                &config.cache_key_prefix,
                config.cache_ttl,
            )?
        };
        // The same balanced client stack as the edge's: every users replica,
        // with failing ones ejected.
        let users = Balanced::new("users", &config.users_url, "USER_SERVICE_URL").await?;
        let auth = service_auth(users, &config.jwt_issuer, &config.jwt_audience)?;
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("AGORA_CATALOG_ADDR: cannot listen on {}", config.addr))?;
        let service = CatalogService::new(store.clone(), cache.clone(), config.reservation_ttl);
        Ok(Self {
            listener,
            relay,
            service,
            store,
            cache,
            auth,
            sweep_interval: config.sweep_interval,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves, releases expired reservations and publishes the outbox,
    /// until `shutdown` stops.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let relay = Relay::spawn(self.relay, shutdown.clone());
        let sweeper = tokio::spawn(sweep(
            self.store,
            self.cache,
            self.sweep_interval,
            shutdown.clone(),
        ));
        let routes = tonic::service::Routes::new(CatalogServiceServer::new(self.service));
        let served = agora_kit::grpc::serve(
            COMPONENT,
            self.listener,
            &[SERVICE_NAME],
            routes,
            Some(self.auth),
            shutdown,
        )
        .await;
        sweeper.abort();
        if let Some(relay) = relay {
            relay.abort();
        }
        served
    }
}

async fn sweep(store: Store, cache: ProductCache, every: Duration, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.stopping() => return,
            _ = tick.tick() => {}
        }
        match store.expire_due(100).await {
            Ok(products) => {
                for p in &products {
                    cache.invalidate(*p).await;
                }
                if !products.is_empty() {
                    tracing::info!(products = products.len(), "released expired reservations");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot release expired reservations"),
        }
    }
}
