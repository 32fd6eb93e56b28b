//! The services behind the edge and the policy for calling each.
//!
//! Channels connect lazily, so the edge starts (and reports the failure in
//! `/health`) even when a service is not up yet.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use agora_kit::config::{ConfigError, Env};
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

/// How the edge calls one upstream. Retries and the circuit breaker are
/// configured here already; the edge enforces `timeout` today.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamPolicy {
    /// gRPC URL of the service, e.g. `http://127.0.0.1:3001`.
    pub url: String,
    /// Deadline of each call, in milliseconds; sent as `grpc-timeout`.
    #[serde(with = "agora_kit::config::millis")]
    pub timeout: Duration,
    /// Attempts after the first, for idempotent methods only.
    pub retries: u32,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_threshold: u32,
    /// Time the breaker stays open before probing again, in milliseconds.
    #[serde(with = "agora_kit::config::millis")]
    pub breaker_reset: Duration,
}

impl UpstreamPolicy {
    fn new(url: &str, timeout_s: u64, retries: u32, threshold: u32, reset_s: u64) -> Self {
        Self {
            url: url.into(),
            timeout: Duration::from_secs(timeout_s),
            retries,
            breaker_threshold: threshold,
            breaker_reset: Duration::from_secs(reset_s),
        }
    }
}

impl Default for UpstreamPolicy {
    fn default() -> Self {
        Self::new("http://127.0.0.1:3001", 5, 3, 5, 30)
    }
}

/// The upstreams by name (`users`, `catalog`, `chat`, `analytics`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UpstreamsConfig(pub BTreeMap<String, UpstreamPolicy>);

impl Default for UpstreamsConfig {
    fn default() -> Self {
        // Only services that exist get a default entry.
        Self(BTreeMap::from([
            (
                "users".to_owned(),
                UpstreamPolicy::new("http://127.0.0.1:3001", 5, 3, 5, 30),
            ),
            (
                "catalog".to_owned(),
                UpstreamPolicy::new("http://127.0.0.1:3002", 5, 3, 5, 30),
            ),
        ]))
    }
}

/// Environment variable naming each upstream's URL (the seed's names).
const URL_VARS: &[(&str, &str)] = &[
    ("users", "USER_SERVICE_URL"),
    ("catalog", "PRODUCT_SERVICE_URL"),
    ("chat", "CHAT_SERVICE_URL"),
    ("analytics", "DATA_SERVICE_URL"),
];

impl UpstreamsConfig {
    pub fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        for (name, var) in URL_VARS {
            if let Some(url) = env.get(var) {
                self.0.entry((*name).to_owned()).or_default().url = url.to_owned();
            }
            let timeout_var = format!("AGORA_EDGE_{}_TIMEOUT_MS", name.to_uppercase());
            if let Some(policy) = self.0.get_mut(*name) {
                env.millis_into(&timeout_var, &mut policy.timeout)?;
            }
        }
        self.validate()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, policy) in &self.0 {
            let setting = URL_VARS
                .iter()
                .find(|(n, _)| n == name)
                .map_or(name.as_str(), |(_, v)| *v);
            Endpoint::from_shared(policy.url.clone()).map_err(|e| {
                ConfigError::invalid(setting, format!("{:?} is not a valid URL: {e}", policy.url))
            })?;
            if policy.timeout.is_zero() {
                return Err(ConfigError::invalid(
                    format!("edge.upstreams.{name}.timeout"),
                    "must be positive",
                ));
            }
        }
        Ok(())
    }
}

/// A connected (lazily) upstream.
#[derive(Clone)]
pub struct Upstream {
    pub name: String,
    pub policy: UpstreamPolicy,
    pub channel: Channel,
}

/// Every configured upstream.
#[derive(Clone, Default)]
pub struct Upstreams {
    by_name: HashMap<String, Upstream>,
}

impl Upstreams {
    pub fn connect(config: &UpstreamsConfig) -> anyhow::Result<Self> {
        let mut by_name = HashMap::new();
        for (name, policy) in &config.0 {
            let channel = Endpoint::from_shared(policy.url.clone())?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true)
                .connect_lazy();
            by_name.insert(
                name.clone(),
                Upstream {
                    name: name.clone(),
                    policy: policy.clone(),
                    channel,
                },
            );
        }
        Ok(Self { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Upstream> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Upstream> {
        self.by_name.values()
    }
}
