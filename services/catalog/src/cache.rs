//! Redis read-through cache of products (encoded protobuf, short TTL).
//!
//! Writes delete the entry after their transaction commits, so a read that
//! follows a successful update never sees the old product. (A read that
//! loaded the old row just before a concurrent write can still put it back
//! after the delete; the TTL bounds how long such an entry lives.) Redis is an
//! optimisation only: when it fails, reads go to PostgreSQL, a metric counts
//! it, and while Redis is known to be down the cache is skipped at once (see
//! [`agora_kit::redis`]).

use std::{sync::Arc, time::Duration};

use agora_kit::redis::{SharedRedis, traced};
use fred::prelude::{Expiration, KeysInterface as _};
use uuid::Uuid;

#[derive(Clone)]
pub struct ProductCache {
    redis: Option<Arc<SharedRedis>>,
    prefix: String,
    ttl: Duration,
}

impl ProductCache {
    /// Connects in the background: the service starts even when Redis is
    /// down and uses the cache once it is reachable.
    pub fn connect(url: &str, prefix: &str, ttl: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            redis: Some(SharedRedis::connect(url, "REDIS_URL", "product cache")?),
            prefix: prefix.to_owned(),
            ttl,
        })
    }

    /// A cache that never hits (Redis not configured).
    pub fn disabled() -> Self {
        Self {
            redis: None,
            prefix: String::new(),
            ttl: Duration::ZERO,
        }
    }

    fn key(&self, id: Uuid) -> String {
        format!("{}catalog:product:{id}", self.prefix)
    }

    pub async fn get(&self, id: Uuid) -> Option<Vec<u8>> {
        let redis = self.redis.as_ref()?;
        let Some(client) = redis.client() else {
            metrics::counter!("catalog_cache_requests_total", "result" => "skipped").increment(1);
            return None;
        };
        match traced("GET", client.get::<Option<Vec<u8>>, _>(self.key(id))).await {
            Ok(hit) => {
                metrics::counter!("catalog_cache_requests_total", "result" => if hit.is_some() { "hit" } else { "miss" })
                    .increment(1);
                hit
            }
            Err(e) => {
                degraded(redis, "get", &e);
                None
            }
        }
    }

    pub async fn put(&self, id: Uuid, bytes: Vec<u8>) {
        let Some(redis) = &self.redis else { return };
        let Some(client) = redis.client() else { return };
        let ttl = Expiration::EX(self.ttl.as_secs().max(1) as i64);
        if let Err(e) = traced(
            "SET",
            client.set::<(), _, _>(self.key(id), bytes, Some(ttl), None, false),
        )
        .await
        {
            degraded(redis, "set", &e);
        }
    }

    /// Drops the entry, even just after a failure (a skipped delete could
    /// leave a stale entry once Redis is back). If Redis is unreachable the
    /// entry cannot be stale for longer than its TTL, kept short for that.
    pub async fn invalidate(&self, id: Uuid) {
        let Some(redis) = &self.redis else { return };
        if let Err(e) = traced("DEL", redis.always().del::<i64, _>(self.key(id))).await {
            degraded(redis, "del", &e);
        }
    }
}

fn degraded(redis: &SharedRedis, op: &'static str, e: &fred::error::Error) {
    metrics::counter!("catalog_cache_errors_total", "op" => op).increment(1);
    redis.failed(op, e);
}
