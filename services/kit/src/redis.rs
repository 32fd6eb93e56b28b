//! A Redis client that remembers an outage.
//!
//! Redis is an accelerator for every component that uses it (the product
//! cache, rate limits, idempotency records): when it is down, callers take
//! their fallback path. A dead Redis must cost microseconds, not a command
//! timeout per request, so after a failure — or while the client knows its
//! connection is gone — [`SharedRedis::client`] answers `None` at once, and
//! the client reconnects in the background with exponential backoff.

use std::{
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use fred::{
    prelude::{Builder, Client, ClientLike as _, Config, ReconnectPolicy},
    types::config::{ConnectionConfig, PerformanceConfig},
};

/// How long a command may take before the caller falls back.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failed command, Redis is skipped for this long; the background
/// reconnection goes on meanwhile.
const SKIP_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// An outage is logged at most once per this interval.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Milliseconds since the first use, the clock of the outage marks.
fn now_ms() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    EPOCH.elapsed().as_millis() as u64
}

pub struct SharedRedis {
    client: Client,
    /// What this client is for, in log lines ("product cache").
    purpose: &'static str,
    /// `now_ms()` before which Redis is skipped.
    skip_until: AtomicU64,
    /// `now_ms() + 1` of the last outage warning (0: never).
    last_warning: AtomicU64,
}

impl SharedRedis {
    /// Connects in the background: the component starts even when Redis is
    /// down and uses it once it is reachable. `setting` names the variable
    /// the URL came from, for the error.
    pub fn connect(url: &str, setting: &str, purpose: &'static str) -> anyhow::Result<Arc<Self>> {
        let config = Config::from_url(url)
            .map_err(|e| anyhow::anyhow!("{setting}: {url:?} is not a Redis URL: {e}"))?;
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
        // The connection task lives as long as the client; fred retries by
        // the reconnect policy, and failures surface through `failed`.
        drop(client.connect());
        Ok(Arc::new(Self {
            client,
            purpose,
            skip_until: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
        }))
    }

    /// Waits up to `max` for the first connection, so that a component
    /// starting next to a healthy Redis uses it from its first request (a
    /// shared rate limit must not begin with each replica's local one).
    /// Returns whether Redis is connected.
    pub async fn wait_connected(&self, max: Duration) -> bool {
        let connected = tokio::time::timeout(max, self.client.wait_for_connect())
            .await
            .is_ok_and(|r| r.is_ok());
        if !connected {
            tracing::warn!(
                purpose = self.purpose,
                "Redis is not reachable yet; using the fallback until it is"
            );
        }
        connected
    }

    /// The client, or `None` while Redis is known to be unreachable.
    pub fn client(&self) -> Option<&Client> {
        if now_ms() < self.skip_until.load(Ordering::Relaxed) || !self.client.is_connected() {
            return None;
        }
        Some(&self.client)
    }

    /// The client regardless of a recent failure, for writes whose loss
    /// would leave stale data behind (a cache invalidation): they pay the
    /// command timeout during an outage rather than be skipped.
    pub fn always(&self) -> &Client {
        &self.client
    }

    /// Records a failed command: Redis is skipped for a moment, and the
    /// outage is logged once per interval (callers count every failure in
    /// their own metrics).
    pub fn failed(&self, op: &'static str, e: &fred::error::Error) {
        let now = now_ms();
        self.skip_until.store(
            now + SKIP_AFTER_FAILURE.as_millis() as u64,
            Ordering::Relaxed,
        );
        let last = self.last_warning.load(Ordering::Relaxed);
        let due = last == 0 || now + 1 >= last + WARNING_INTERVAL.as_millis() as u64;
        if due
            && self
                .last_warning
                .compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(op, error = %e, purpose = self.purpose, "Redis unavailable; using the fallback");
        }
    }
}

/// Runs one Redis command (`op`, e.g. `GET`) in a client span, per the
/// database conventions; a failure marks the span as an error.
pub async fn traced<T>(
    op: &'static str,
    command: impl Future<Output = Result<T, fred::error::Error>>,
) -> Result<T, fred::error::Error> {
    use tracing::Instrument as _;
    let span = tracing::info_span!(
        "redis",
        otel.name = op,
        otel.kind = "client",
        db.system = "redis",
        db.system.name = "redis",
        db.operation.name = op,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    let result = command.instrument(span.clone()).await;
    if let Err(e) = &result {
        span.record("otel.status_code", "error");
        span.record("otel.status_description", e.to_string());
    }
    result
}
