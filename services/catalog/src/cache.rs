//! Redis read-through cache of products (encoded protobuf, short TTL).
//!
//! Writes delete the entry after their transaction commits, so a read that
//! follows a successful update never sees the old product. (A read that
//! loaded the old row just before a concurrent write can still put it back
//! after the delete; the TTL bounds how long such an entry lives.) Redis is an
//! optimisation only: when it fails, reads go to PostgreSQL, a warning
//! metric counts it, and the service keeps serving.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use fred::{
    prelude::{
        Builder, Client, ClientLike as _, Config, Expiration, KeysInterface as _, ReconnectPolicy,
    },
    types::config::{ConnectionConfig, PerformanceConfig},
};
use uuid::Uuid;

/// How long Redis may take before a read falls back to PostgreSQL.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct ProductCache {
    client: Option<Client>,
    prefix: String,
    ttl: Duration,
}

impl ProductCache {
    /// Connects in the background: the service starts even when Redis is
    /// down and uses the cache once it is reachable.
    pub fn connect(url: &str, prefix: &str, ttl: Duration) -> anyhow::Result<Self> {
        let config = Config::from_url(url)
            .map_err(|e| anyhow::anyhow!("REDIS_URL is not a Redis URL: {e}"))?;
        let client = Builder::from_config(config)
            .with_connection_config(|c: &mut ConnectionConfig| {
                c.connection_timeout = Duration::from_secs(1);
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p: &mut PerformanceConfig| {
                p.default_command_timeout = COMMAND_TIMEOUT;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the Redis client: {e}"))?;
        // The handle ends only with the client; errors are logged by fred
        // and retried by the reconnect policy.
        drop(client.connect());
        Ok(Self {
            client: Some(client),
            prefix: prefix.to_owned(),
            ttl,
        })
    }

    /// A cache that never hits (Redis not configured).
    pub fn disabled() -> Self {
        Self {
            client: None,
            prefix: String::new(),
            ttl: Duration::ZERO,
        }
    }

    fn key(&self, id: Uuid) -> String {
        format!("{}catalog:product:{id}", self.prefix)
    }

    pub async fn get(&self, id: Uuid) -> Option<Vec<u8>> {
        let client = self.client.as_ref()?;
        match client.get::<Option<Vec<u8>>, _>(self.key(id)).await {
            Ok(hit) => {
                metrics::counter!("catalog_cache_requests_total", "result" => if hit.is_some() { "hit" } else { "miss" })
                    .increment(1);
                hit
            }
            Err(e) => {
                degraded("get", &e);
                None
            }
        }
    }

    pub async fn put(&self, id: Uuid, bytes: Vec<u8>) {
        let Some(client) = &self.client else { return };
        let ttl = Expiration::EX(self.ttl.as_secs().max(1) as i64);
        if let Err(e) = client
            .set::<(), _, _>(self.key(id), bytes, Some(ttl), None, false)
            .await
        {
            degraded("set", &e);
        }
    }

    /// Drops the entry. If Redis is unreachable the entry cannot be stale
    /// for longer than its TTL, which is kept short for that reason.
    pub async fn invalidate(&self, id: Uuid) {
        let Some(client) = &self.client else { return };
        if let Err(e) = client.del::<i64, _>(self.key(id)).await {
            degraded("del", &e);
        }
    }
}

/// Seconds since the Unix epoch of the last warning, so an outage logs
/// once per interval rather than once per request (the metric counts all).
static LAST_WARNING: AtomicU64 = AtomicU64::new(0);
const WARNING_INTERVAL_SECS: u64 = 10;

fn degraded(op: &'static str, e: &fred::error::Error) {
    metrics::counter!("catalog_cache_errors_total", "op" => op).increment(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_WARNING.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= WARNING_INTERVAL_SECS
        && LAST_WARNING
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(op, error = %e, "product cache unavailable; using PostgreSQL");
    }
}
