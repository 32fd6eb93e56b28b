//! PostgreSQL pools. Each service owns one schema: its pool's `search_path`
//! is that schema, so its tables and its migration history live there and
//! several services can share one database without touching each other.

use std::{str::FromStr, time::Duration};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sqlx::{
    ConnectOptions, Executor, PgPool,
    migrate::{MigrateDatabase, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::{ConfigError, Env};

/// PostgreSQL settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Connection URL (`DATABASE_URL`, default
    /// `postgres://postgres@127.0.0.1:5432/agora`).
    pub url: String,
    /// Connections per pool (`AGORA_DATABASE_MAX_CONNECTIONS`, default 10).
    pub max_connections: u32,
    /// How long a request waits for a free connection, in milliseconds
    /// (`AGORA_DATABASE_ACQUIRE_TIMEOUT_MS`, default 5000).
    #[serde(with = "crate::config::millis")]
    pub acquire_timeout: Duration,
    /// Create the database if it does not exist (`AGORA_DATABASE_CREATE`,
    /// default true).
    pub create_database: bool,
    /// Run migrations when a service starts (`AGORA_DATABASE_MIGRATE_ON_START`,
    /// default true; clusters set false and run `agora migrate` as a Job).
    pub migrate_on_start: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/agora".into(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            create_database: true,
            migrate_on_start: true,
        }
    }
}

impl DatabaseConfig {
    pub fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        env.string_into("DATABASE_URL", &mut self.url);
        env.parse_into("AGORA_DATABASE_MAX_CONNECTIONS", &mut self.max_connections)?;
        env.millis_into(
            "AGORA_DATABASE_ACQUIRE_TIMEOUT_MS",
            &mut self.acquire_timeout,
        )?;
        env.parse_into("AGORA_DATABASE_CREATE", &mut self.create_database)?;
        env.parse_into(
            "AGORA_DATABASE_MIGRATE_ON_START",
            &mut self.migrate_on_start,
        )?;
        self.validate()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        PgConnectOptions::from_str(&self.url).map_err(|e| {
            ConfigError::invalid("DATABASE_URL", format!("not a PostgreSQL URL: {e}"))
        })?;
        if self.max_connections == 0 {
            return Err(ConfigError::invalid(
                "AGORA_DATABASE_MAX_CONNECTIONS",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Connects a pool whose connections use `schema`, creating the database
/// (if configured) and the schema when missing.
pub async fn connect(config: &DatabaseConfig, schema: &str) -> anyhow::Result<PgPool> {
    if config.create_database
        && !sqlx::Postgres::database_exists(&config.url)
            .await
            .context("Failed to reach PostgreSQL")?
    {
        // Another process may create it at the same moment; that is fine.
        if let Err(e) = sqlx::Postgres::create_database(&config.url).await
            && !sqlx::Postgres::database_exists(&config.url)
                .await
                .unwrap_or(false)
        {
            return Err(e).context("Failed to create the database");
        }
    }
    let base = PgConnectOptions::from_str(&config.url)
        .context("DATABASE_URL is not a PostgreSQL URL")?
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500));

    let mut admin = base
        .connect()
        .await
        .context("Failed to connect to PostgreSQL")?;
    let create = format!(
        "CREATE SCHEMA IF NOT EXISTS \"{}\"",
        schema.replace('"', "")
    );
    if let Err(e) = admin
        .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(create)))
        .await
    {
        // Concurrent creation races on the catalog's unique index; the
        // schema exists either way.
        tracing::debug!(error = %e, schema, "schema creation raced");
    }

    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        // One event per acquire, at TRACE: `agora_db_pool_acquire_seconds`
        // is made from it (see crate::telemetry); logs never show it.
        .acquire_time_level(tracing::log::LevelFilter::Trace)
        // Each statement gets what is left of the served call's deadline
        // as its timeout, so PostgreSQL stops work whose caller gave up
        // (dropping a query's future alone leaves it running): on every
        // acquire of an idle connection, and on a connection opened for
        // the caller. Setting it also proves the connection alive, the job
        // of the default ping-before-acquire it replaces. Connections
        // without a deadline (background jobs) get the server's default.
        .test_before_acquire(false)
        .before_acquire(|conn, _meta| Box::pin(async { apply_deadline(conn).await.map(|()| true) }))
        .after_connect(|conn, _meta| Box::pin(apply_deadline(conn)))
        // `public` stays reachable for extensions installed there by others.
        .connect_with(base.options([("search_path", format!("{schema},public"))]))
        .await
        .context("Failed to connect to PostgreSQL")?;
    crate::metrics::watch_pool(schema, &pool);
    Ok(pool)
}

/// Sets `statement_timeout` to what is left of the current call's deadline,
/// or back to the default outside a call.
async fn apply_deadline(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    let sql = match crate::deadline::remaining() {
        Some(left) => format!(
            "SET statement_timeout = {}",
            left.as_millis().clamp(1, i32::MAX as u128)
        ),
        None => "RESET statement_timeout".to_owned(),
    };
    conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)))
        .await?;
    Ok(())
}

/// A service's database: its own schema and the migrations that shape it.
#[derive(Debug, Clone, Copy)]
pub struct ServiceDatabase {
    pub schema: &'static str,
    pub migrator: &'static Migrator,
}

impl ServiceDatabase {
    /// A pool on the schema, migrated first when `migrate_on_start` is set.
    pub async fn open(&self, config: &DatabaseConfig) -> anyhow::Result<PgPool> {
        open(config, self.schema, self.migrator).await
    }

    /// Applies the migrations (the operator's `agora migrate`) and closes.
    pub async fn migrate(&self, config: &DatabaseConfig) -> anyhow::Result<()> {
        let pool = connect(config, self.schema).await?;
        let migrated = migrate(&pool, self.migrator).await;
        pool.close().await;
        migrated
    }
}

/// A service's pool on its schema, with its migrations applied first when
/// `migrate_on_start` is set.
pub async fn open(
    config: &DatabaseConfig,
    schema: &str,
    migrator: &Migrator,
) -> anyhow::Result<PgPool> {
    let pool = connect(config, schema).await?;
    if config.migrate_on_start {
        migrate(&pool, migrator).await?;
    }
    Ok(pool)
}

/// Applies `migrator` to the pool's schema.
pub async fn migrate(pool: &PgPool, migrator: &Migrator) -> anyhow::Result<()> {
    migrator
        .run(pool)
        .await
        .context("Failed to run database migrations")
}
