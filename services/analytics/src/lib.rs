//! The analytics service: consumes every service's events from SQS, keeps
//! them raw in MongoDB, rolls them up in PostgreSQL (schema `analytics`),
//! and answers reports and demand forecasts. gRPC on port 8000.
//!
//! # Layout
//!
//! - [`api`]: the tonic service (client events, reports, forecasts).
//! - [`consumer`]: the SQS consumer.
//! - [`rollup`]: what each event adds to the rollups.
//! - [`store`]: raw events (MongoDB) and rollups (PostgreSQL).
//! - [`reports`]: the report queries.
//! - [`forecast`]: Holt's linear trend and simple exponential smoothing.
//! - [`jobs`]: scheduled jobs (one replica at a time) and backfills.

pub mod api;
pub mod consumer;
pub mod forecast;
pub mod jobs;
pub mod reports;
pub mod rollup;
pub mod store;

use std::{net::SocketAddr, time::Duration};

use agora_kit::{
    auth::AuthLayer,
    balance::Balanced,
    config::{ConfigError, Env},
    db::DatabaseConfig,
    events::{EventsConfig, Queue},
    jwks::service_auth,
    shutdown::Shutdown,
};
use agora_proto::analytics::v1::analytics_service_server::AnalyticsServiceServer;
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::{
    api::AnalyticsService,
    consumer::{Consumer, ConsumerConfig},
    jobs::Scheduler,
    store::Store,
};

/// The gRPC service name, as reported by health checks.
pub const SERVICE_NAME: &str = "agora.analytics.v1.AnalyticsService";
/// The component's `service.name` in traces.
pub const COMPONENT: &str = "agora-analytics";
/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "analytics";

/// The service's database: schema `analytics` and its migrations.
pub const DATABASE: agora_kit::db::ServiceDatabase = agora_kit::db::ServiceDatabase {
    schema: SCHEMA,
    migrator: &store::MIGRATOR,
};

/// Analytics service settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyticsConfig {
    /// gRPC listen address (`AGORA_ANALYTICS_ADDR`, default `0.0.0.0:8000`).
    pub addr: SocketAddr,
    /// MongoDB for raw events (`MONGODB_URI`, default
    /// `mongodb://127.0.0.1:27017/agora`); the database named in the URI
    /// is used (`agora` when none is).
    pub mongodb_uri: String,
    /// How long raw events are kept, in days
    /// (`AGORA_ANALYTICS_RAW_RETENTION_DAYS`, default 90). Days older than
    /// this cannot be rebuilt.
    pub raw_retention_days: u32,
    /// Messages processed at once (`AGORA_ANALYTICS_CONCURRENCY`, default 16).
    pub concurrency: usize,
    /// How long a received message stays hidden from other consumers, in
    /// seconds; extended while it is processed
    /// (`AGORA_ANALYTICS_VISIBILITY_SECS`, default 30).
    #[serde(with = "agora_kit::config::secs")]
    pub visibility: Duration,
    /// Long-poll wait, in seconds, 0 to 20 (`AGORA_ANALYTICS_WAIT_SECS`,
    /// default 20).
    #[serde(with = "agora_kit::config::secs")]
    pub wait: Duration,
    /// Whether this replica takes part in scheduled jobs
    /// (`AGORA_ANALYTICS_JOBS`, default true). Among those that do, each
    /// job runs on one at a time.
    pub jobs: bool,
    /// How often due scheduled jobs are looked for, in seconds
    /// (`AGORA_ANALYTICS_JOB_CHECK_SECS`, default 60).
    #[serde(with = "agora_kit::config::secs")]
    pub job_check: Duration,
    /// The users service, for public keys and API keys (`USER_SERVICE_URL`,
    /// default `http://127.0.0.1:3001`).
    pub users_url: String,
    /// Expected `iss` of access tokens (`AGORA_JWT_ISSUER`, default `agora`).
    pub jwt_issuer: String,
    /// Expected `aud` of access tokens (`AGORA_JWT_AUDIENCE`, default `agora`).
    pub jwt_audience: String,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 8000)),
            mongodb_uri: "mongodb://127.0.0.1:27017/agora".into(),
            raw_retention_days: 90,
            concurrency: 16,
            visibility: Duration::from_secs(30),
            wait: Duration::from_secs(20),
            jobs: true,
            job_check: Duration::from_secs(60),
            users_url: "http://127.0.0.1:3001".into(),
            jwt_issuer: "agora".into(),
            jwt_audience: "agora".into(),
        }
    }
}

impl AnalyticsConfig {
    pub fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        env.parse_into("AGORA_ANALYTICS_ADDR", &mut self.addr)?;
        env.string_into("MONGODB_URI", &mut self.mongodb_uri);
        env.parse_into(
            "AGORA_ANALYTICS_RAW_RETENTION_DAYS",
            &mut self.raw_retention_days,
        )?;
        env.parse_into("AGORA_ANALYTICS_CONCURRENCY", &mut self.concurrency)?;
        env.secs_into("AGORA_ANALYTICS_VISIBILITY_SECS", &mut self.visibility)?;
        env.secs_into("AGORA_ANALYTICS_WAIT_SECS", &mut self.wait)?;
        env.parse_into("AGORA_ANALYTICS_JOBS", &mut self.jobs)?;
        env.secs_into("AGORA_ANALYTICS_JOB_CHECK_SECS", &mut self.job_check)?;
        env.string_into("USER_SERVICE_URL", &mut self.users_url);
        env.string_into("AGORA_JWT_ISSUER", &mut self.jwt_issuer);
        env.string_into("AGORA_JWT_AUDIENCE", &mut self.jwt_audience);
        self.validate()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        agora_kit::mongo::validate_uri(&self.mongodb_uri)?;
        if self.raw_retention_days < 3 {
            return Err(ConfigError::invalid(
                "AGORA_ANALYTICS_RAW_RETENTION_DAYS",
                "must be at least 3 (the daily job rebuilds the two previous days)",
            ));
        }
        if !(1..=1000).contains(&self.concurrency) {
            return Err(ConfigError::invalid(
                "AGORA_ANALYTICS_CONCURRENCY",
                "must be between 1 and 1000",
            ));
        }
        if self.visibility < Duration::from_secs(2) || self.visibility > Duration::from_secs(43_200)
        {
            return Err(ConfigError::invalid(
                "AGORA_ANALYTICS_VISIBILITY_SECS",
                "must be between 2 and 43200",
            ));
        }
        if self.wait > agora_kit::events::LONG_POLL {
            return Err(ConfigError::invalid(
                "AGORA_ANALYTICS_WAIT_SECS",
                "must be at most 20",
            ));
        }
        if self.job_check.is_zero() {
            return Err(ConfigError::invalid(
                "AGORA_ANALYTICS_JOB_CHECK_SECS",
                "must be positive",
            ));
        }
        Balanced::parse_urls(&self.users_url, "USER_SERVICE_URL")?;
        Ok(())
    }

    /// How long raw events are kept.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.raw_retention_days) * 86_400)
    }
}

/// Connects both stores, migrating PostgreSQL if configured.
pub async fn connect(config: &AnalyticsConfig, db: &DatabaseConfig) -> anyhow::Result<Store> {
    let pool = DATABASE.open(db).await?;
    Store::connect(pool, &config.mongodb_uri, config.retention()).await
}

/// The analytics service, built and bound, not yet serving.
pub struct AnalyticsComponent {
    listener: TcpListener,
    store: Store,
    queue: Option<Queue>,
    auth: AuthLayer,
    config: AnalyticsConfig,
    max_receives: u32,
}

impl AnalyticsComponent {
    pub async fn build(
        config: AnalyticsConfig,
        db: &DatabaseConfig,
        events: &EventsConfig,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let store = connect(&config, db).await?;
        let queue = if events.enabled() {
            let queue = Queue::with_long_polls(events, config.wait).await;
            // Made now when missing, so producers' first events have a
            // place to go; a failure is retried by the consumer.
            if let Err(e) = queue.url().await {
                tracing::warn!(error = %e, "the event queue is not reachable yet");
            }
            Some(queue)
        } else {
            tracing::warn!("AGORA_EVENTS_QUEUE is empty: analytics consumes no events");
            None
        };
        let users = Balanced::new("users", &config.users_url, "USER_SERVICE_URL").await?;
        let auth = service_auth(users, &config.jwt_issuer, &config.jwt_audience)?;
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("AGORA_ANALYTICS_ADDR: cannot listen on {}", config.addr))?;
        Ok(Self {
            listener,
            store,
            queue,
            auth,
            config,
            max_receives: events.max_receives,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves, consumes events and runs scheduled jobs until `shutdown`
    /// stops.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let runner = format!(
            "{}:{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "agora".into()),
            std::process::id()
        );
        let consumer = self.queue.clone().map(|queue| {
            tokio::spawn(
                Consumer::new(
                    queue,
                    self.store.clone(),
                    ConsumerConfig {
                        concurrency: self.config.concurrency,
                        visibility: self.config.visibility,
                        wait: self.config.wait,
                        max_receives: self.max_receives,
                    },
                )
                .run(shutdown.clone()),
            )
        });
        let scheduler = self.config.jobs.then(|| {
            tokio::spawn(
                Scheduler {
                    store: self.store.clone(),
                    check_every: self.config.job_check,
                    retention: self.config.retention(),
                    runner,
                    queue: self.queue.clone(),
                }
                .run(shutdown.clone()),
            )
        });
        let routes = tonic::service::Routes::new(AnalyticsServiceServer::new(
            AnalyticsService::new(self.store),
        ));
        let served = agora_kit::grpc::serve(
            COMPONENT,
            self.listener,
            &[SERVICE_NAME],
            routes,
            Some(self.auth),
            shutdown,
        )
        .await;
        // The consumer hands back what it has not finished by now.
        if let Some(consumer) = consumer {
            if served.is_err() {
                consumer.abort();
            }
            let _ = consumer.await;
        }
        if let Some(scheduler) = scheduler {
            scheduler.abort();
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_and_errors_name_them() {
        let mut config = AnalyticsConfig::default();
        config
            .apply_env(&Env::from_pairs([
                ("AGORA_ANALYTICS_ADDR", "127.0.0.1:8100"),
                ("AGORA_ANALYTICS_RAW_RETENTION_DAYS", "30"),
                ("AGORA_ANALYTICS_CONCURRENCY", "4"),
                ("AGORA_ANALYTICS_VISIBILITY_SECS", "60"),
                ("AGORA_ANALYTICS_WAIT_SECS", "0"),
                ("AGORA_ANALYTICS_JOBS", "false"),
                ("AGORA_ANALYTICS_JOB_CHECK_SECS", "5"),
            ]))
            .expect("valid");
        assert_eq!(config.addr.port(), 8100);
        assert_eq!(config.retention(), Duration::from_secs(30 * 86_400));
        assert_eq!(config.concurrency, 4);
        assert_eq!(config.visibility, Duration::from_secs(60));
        assert_eq!(config.wait, Duration::ZERO);
        assert!(!config.jobs);
        assert_eq!(config.job_check, Duration::from_secs(5));
        for (name, value) in [
            ("AGORA_ANALYTICS_RAW_RETENTION_DAYS", "2"),
            ("AGORA_ANALYTICS_CONCURRENCY", "0"),
            ("AGORA_ANALYTICS_VISIBILITY_SECS", "1"),
            ("AGORA_ANALYTICS_WAIT_SECS", "21"),
            ("AGORA_ANALYTICS_JOB_CHECK_SECS", "0"),
            ("MONGODB_URI", "postgres://nope"),
        ] {
            let err = AnalyticsConfig::default()
                .apply_env(&Env::from_pairs([(name, value)]))
                .expect_err(name);
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
