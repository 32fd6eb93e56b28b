//! The services behind the edge and the policy for calling each.
//!
//! Every upstream the contracts name is configured by one pattern:
//! `AGORA_EDGE_<NAME>_URL`, `_TIMEOUT_MS`, `_RETRIES`, `_BREAKER_THRESHOLD`,
//! `_BREAKER_RESET_MS`, `_MAX_IN_FLIGHT` (the seed's `USER_SERVICE_URL`,
//! `PRODUCT_SERVICE_URL`, `CHAT_SERVICE_URL` and `DATA_SERVICE_URL` are
//! aliases; the `AGORA_EDGE_*` name wins), or `[edge.upstreams.<name>]` in
//! `agora.toml`. Channels connect lazily, so the edge starts (and reports
//! the failure in `/health`) even when a service is not up yet.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use agora_kit::{
    balance::Balanced,
    breaker::CircuitBreaker,
    config::{ConfigError, Env},
};
use serde::{Deserialize, Serialize};
use tower::retry::budget::TpsBudget;

/// How the edge calls one upstream.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamPolicy {
    /// gRPC URL of the service, e.g. `http://127.0.0.1:3001`; a comma list
    /// of several, or a DNS name with several addresses, is balanced over.
    pub url: String,
    /// Deadline of each call, in milliseconds, retries included; sent as
    /// `grpc-timeout`. A client may ask for less, never for more.
    #[serde(with = "agora_kit::config::millis")]
    pub timeout: Duration,
    /// Attempts after the first, for idempotent methods (and for calls that
    /// never reached the service), within the retry budget.
    pub retries: u32,
    /// Consecutive failed calls that open the circuit breaker (0: no breaker).
    pub breaker_threshold: u32,
    /// Time the breaker stays open before one probe, in milliseconds.
    #[serde(with = "agora_kit::config::millis")]
    pub breaker_reset: Duration,
    /// Calls in flight to this upstream above which the edge answers 503 at
    /// once instead of queueing.
    pub max_in_flight: usize,
    /// Proto packages this upstream serves, beyond what the name says: an
    /// entry serves that package and the ones under it (`acme.shop` serves
    /// `acme.shop.v1` and `acme.shop.v2`). The contracts' own packages
    /// (`agora.<name>.v1`) need no entry.
    pub packages: Vec<String>,
    /// Whether the edge reads this upstream's contracts from its gRPC
    /// server reflection, at start and on every contract refresh, rather
    /// than only from contracts it was built with or given as files.
    pub reflection: bool,
}

impl UpstreamPolicy {
    /// The defaults of the original gateway design for `name`.
    pub fn defaults_for(name: &str) -> Self {
        let (port, timeout_s, retries, threshold, reset_s) = match name {
            "users" => (3001, 5, 3, 5, 30),
            "catalog" => (3002, 5, 3, 5, 30),
            "chat" => (3003, 5, 3, 5, 30),
            "analytics" => (8000, 10, 2, 3, 60),
            _ => (80, 5, 3, 5, 30),
        };
        Self {
            url: if port == 80 {
                format!("http://{name}")
            } else {
                format!("http://127.0.0.1:{port}")
            },
            timeout: Duration::from_secs(timeout_s),
            retries,
            breaker_threshold: threshold,
            breaker_reset: Duration::from_secs(reset_s),
            max_in_flight: 1024,
            packages: Vec::new(),
            reflection: false,
        }
    }
}

/// The upstreams by name (`users`, `catalog`, `chat`, `analytics`).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct UpstreamsConfig(pub BTreeMap<String, UpstreamPolicy>);

/// An `[edge.upstreams.<name>]` section: each field it sets overrides that
/// upstream's own default; the rest keep it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySection {
    url: Option<String>,
    timeout: Option<u64>,
    retries: Option<u32>,
    breaker_threshold: Option<u32>,
    breaker_reset: Option<u64>,
    max_in_flight: Option<usize>,
    packages: Option<Vec<String>>,
    reflection: Option<bool>,
}

/// Sections in `agora.toml` are merged over the defaults: naming one
/// upstream keeps the others, and a field left out keeps that upstream's
/// default (analytics' differ from the rest).
impl<'de> Deserialize<'de> for UpstreamsConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let sections = BTreeMap::<String, PolicySection>::deserialize(d)?;
        let mut config = Self::default();
        for (name, section) in sections {
            let policy = config
                .0
                .entry(name.clone())
                .or_insert_with(|| UpstreamPolicy::defaults_for(&name));
            if let Some(url) = section.url {
                policy.url = url;
            }
            if let Some(ms) = section.timeout {
                policy.timeout = Duration::from_millis(ms);
            }
            if let Some(n) = section.retries {
                policy.retries = n;
            }
            if let Some(n) = section.breaker_threshold {
                policy.breaker_threshold = n;
            }
            if let Some(ms) = section.breaker_reset {
                policy.breaker_reset = Duration::from_millis(ms);
            }
            if let Some(n) = section.max_in_flight {
                policy.max_in_flight = n;
            }
            if let Some(packages) = section.packages {
                policy.packages = packages;
            }
            if let Some(on) = section.reflection {
                policy.reflection = on;
            }
        }
        Ok(config)
    }
}

impl Default for UpstreamsConfig {
    fn default() -> Self {
        // Only services that exist get a default entry; others appear when
        // configured.
        Self(
            ["users", "catalog", "chat", "analytics"]
                .into_iter()
                .map(|n| (n.to_owned(), UpstreamPolicy::defaults_for(n)))
                .collect(),
        )
    }
}

/// The seed's URL variables, aliases of `AGORA_EDGE_<NAME>_URL`.
const URL_ALIASES: &[(&str, &str)] = &[
    ("users", "USER_SERVICE_URL"),
    ("catalog", "PRODUCT_SERVICE_URL"),
    ("chat", "CHAT_SERVICE_URL"),
    ("analytics", "DATA_SERVICE_URL"),
];

const PREFIX: &str = "AGORA_EDGE_";
const SUFFIXES: &[&str] = &[
    "_URL",
    "_TIMEOUT_MS",
    "_RETRIES",
    "_BREAKER_THRESHOLD",
    "_BREAKER_RESET_MS",
    "_MAX_IN_FLIGHT",
    "_PACKAGES",
    "_REFLECTION",
];

/// Dot-separated identifiers: `acme.shop.v1`.
fn is_package_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// `AGORA_EDGE_<NAME>_<SUFFIX>` for an upstream name.
pub fn setting(name: &str, suffix: &str) -> String {
    format!("{PREFIX}{}{suffix}", name.to_uppercase())
}

impl UpstreamsConfig {
    pub fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        // Upstreams named by any variable of the pattern, or by an alias.
        let mut names: BTreeSet<String> = self.0.keys().cloned().collect();
        for var in env.names() {
            let Some(rest) = var.strip_prefix(PREFIX) else {
                continue;
            };
            if let Some(name) = SUFFIXES.iter().find_map(|s| rest.strip_suffix(s))
                && !name.is_empty()
            {
                names.insert(name.to_lowercase());
            }
        }
        for (name, alias) in URL_ALIASES {
            if env.get(alias).is_some() {
                names.insert((*name).to_owned());
            }
        }
        for name in names {
            let policy = self
                .0
                .entry(name.clone())
                .or_insert_with(|| UpstreamPolicy::defaults_for(&name));
            // Errors name the variable the URL came from.
            let mut url_var = None;
            if let Some((_, alias)) = URL_ALIASES.iter().find(|(n, _)| *n == name)
                && let Some(url) = env.get(alias)
            {
                url.clone_into(&mut policy.url);
                url_var = Some((*alias).to_owned());
            }
            let var = setting(&name, "_URL");
            if let Some(url) = env.get(&var) {
                url.clone_into(&mut policy.url);
                url_var = Some(var);
            }
            if let Some(var) = url_var {
                Balanced::parse_urls(&policy.url, &var)?;
            }
            env.millis_into(&setting(&name, "_TIMEOUT_MS"), &mut policy.timeout)?;
            env.parse_into(&setting(&name, "_RETRIES"), &mut policy.retries)?;
            env.parse_into(
                &setting(&name, "_BREAKER_THRESHOLD"),
                &mut policy.breaker_threshold,
            )?;
            env.millis_into(
                &setting(&name, "_BREAKER_RESET_MS"),
                &mut policy.breaker_reset,
            )?;
            env.parse_into(&setting(&name, "_MAX_IN_FLIGHT"), &mut policy.max_in_flight)?;
            if let Some(list) = env.get(&setting(&name, "_PACKAGES")) {
                policy.packages = list
                    .split(',')
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect();
            }
            env.parse_into(&setting(&name, "_REFLECTION"), &mut policy.reflection)?;
        }
        self.validate()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, policy) in &self.0 {
            Balanced::parse_urls(&policy.url, &setting(name, "_URL"))?;
            if policy.timeout.is_zero() {
                return Err(ConfigError::invalid(
                    setting(name, "_TIMEOUT_MS"),
                    "must be positive",
                ));
            }
            if policy.retries > 10 {
                return Err(ConfigError::invalid(
                    setting(name, "_RETRIES"),
                    "must be at most 10",
                ));
            }
            if policy.breaker_threshold > 0 && policy.breaker_reset.is_zero() {
                return Err(ConfigError::invalid(
                    setting(name, "_BREAKER_RESET_MS"),
                    "must be positive while the breaker is on",
                ));
            }
            if policy.max_in_flight == 0 {
                return Err(ConfigError::invalid(
                    setting(name, "_MAX_IN_FLIGHT"),
                    "must be positive",
                ));
            }
            for package in &policy.packages {
                if !is_package_name(package) {
                    return Err(ConfigError::invalid(
                        setting(name, "_PACKAGES"),
                        format!("{package:?} is not a proto package name such as acme.shop.v1"),
                    ));
                }
                if let Some(other) = self
                    .0
                    .iter()
                    .find(|(n, p)| *n != name && p.packages.contains(package))
                {
                    return Err(ConfigError::invalid(
                        setting(name, "_PACKAGES"),
                        format!("{package:?} is also served by upstream {:?}", other.0),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The upstream that serves `package` by configuration: the one with
    /// the longest entry equal to it or a parent of it.
    pub fn serving(&self, package: &str) -> Option<&str> {
        self.0
            .iter()
            .flat_map(|(name, p)| p.packages.iter().map(move |entry| (name, entry)))
            .filter(|(_, entry)| {
                package
                    .strip_prefix(entry.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            })
            .max_by_key(|(_, entry)| entry.len())
            .map(|(name, _)| name.as_str())
    }
}

/// A connected (lazily) upstream with its breaker, retry budget and
/// in-flight count.
pub struct Upstream {
    pub name: Arc<str>,
    pub policy: UpstreamPolicy,
    pub channel: Balanced,
    pub breaker: CircuitBreaker,
    /// Retries may add at most 20% to the calls of the last 10 seconds,
    /// plus 10 per second, so a failing service is not hammered (Linkerd's
    /// default budget).
    pub budget: TpsBudget,
    pub in_flight: AtomicUsize,
    /// `upstream_request_duration_seconds{upstream}`, registered once.
    pub latency: metrics::Histogram,
    /// `agora_upstream_attempts_total`: calls sent, retries included.
    pub attempts: metrics::Counter,
}

/// Every configured upstream.
#[derive(Clone, Default)]
pub struct Upstreams {
    by_name: Arc<HashMap<String, Arc<Upstream>>>,
}

impl Upstreams {
    pub async fn connect(config: &UpstreamsConfig) -> anyhow::Result<Self> {
        let mut by_name = HashMap::new();
        for (name, policy) in &config.0 {
            let channel = Balanced::new(name, &policy.url, &setting(name, "_URL")).await?;
            by_name.insert(
                name.clone(),
                Arc::new(Upstream {
                    name: name.as_str().into(),
                    breaker: CircuitBreaker::new(
                        name,
                        policy.breaker_threshold,
                        policy.breaker_reset,
                    ),
                    budget: TpsBudget::new(Duration::from_secs(10), 10, 0.2),
                    in_flight: AtomicUsize::new(0),
                    latency: metrics::histogram!("upstream_request_duration_seconds", "upstream" => name.clone()),
                    attempts: metrics::counter!("agora_upstream_attempts_total", "upstream" => name.clone()),
                    policy: policy.clone(),
                    channel,
                }),
            );
        }
        Ok(Self {
            by_name: Arc::new(by_name),
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.by_name.values()
    }
}

/// A slot of a bounded in-flight count, released on drop.
pub struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    /// Takes a slot, or `None` when `max` are taken.
    pub fn try_take(count: &'a AtomicUsize, max: usize) -> Option<Self> {
        let taken = count.fetch_add(1, Ordering::AcqRel);
        if taken >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(count))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A [`Slot`] that owns its count, for what outlives the request handler
/// (an open stream).
pub struct OwnedSlot(Arc<AtomicUsize>);

impl OwnedSlot {
    /// Takes a slot, or `None` when `max` are taken.
    pub fn try_take(count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        let taken = count.fetch_add(1, Ordering::AcqRel);
        if taken >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(count.clone()))
    }
}

impl Drop for OwnedSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_upstream_is_configured_by_one_pattern_and_the_edge_name_wins() {
        let mut config = UpstreamsConfig::default();
        let env = Env::from_pairs([
            ("PRODUCT_SERVICE_URL", "http://alias:1"),
            ("AGORA_EDGE_CATALOG_URL", "http://a:1,http://b:1"),
            ("USER_SERVICE_URL", "http://users:9"),
            ("AGORA_EDGE_ANALYTICS_RETRIES", "1"),
            ("AGORA_EDGE_CATALOG_MAX_IN_FLIGHT", "7"),
            ("AGORA_EDGE_CHAT_BREAKER_RESET_MS", "1500"),
        ]);
        config.apply_env(&env).expect("valid");
        assert_eq!(config.0["catalog"].url, "http://a:1,http://b:1");
        assert_eq!(config.0["catalog"].max_in_flight, 7);
        assert_eq!(config.0["users"].url, "http://users:9");
        let analytics = &config.0["analytics"];
        assert_eq!(analytics.retries, 1);
        assert_eq!(analytics.timeout, Duration::from_secs(10));
        assert_eq!(analytics.breaker_threshold, 3);
        assert_eq!(config.0["chat"].breaker_reset, Duration::from_millis(1500));

        let err = UpstreamsConfig::default()
            .apply_env(&Env::from_pairs([("AGORA_EDGE_USERS_MAX_IN_FLIGHT", "0")]))
            .expect_err("zero");
        assert!(
            err.to_string().contains("AGORA_EDGE_USERS_MAX_IN_FLIGHT"),
            "{err}"
        );
        let err = UpstreamsConfig::default()
            .apply_env(&Env::from_pairs([("AGORA_EDGE_USERS_RETRIES", "many")]))
            .expect_err("not a number");
        assert!(
            err.to_string().contains("AGORA_EDGE_USERS_RETRIES"),
            "{err}"
        );
    }

    #[test]
    fn a_toml_section_overrides_only_what_it_names() {
        let config: UpstreamsConfig =
            toml::from_str("[analytics]\nurl = \"http://data:8000\"\n[catalog]\nretries = 1\n")
                .expect("parses");
        let analytics = &config.0["analytics"];
        assert_eq!(analytics.url, "http://data:8000");
        assert_eq!(
            analytics.timeout,
            Duration::from_secs(10),
            "analytics' own default"
        );
        assert_eq!(analytics.breaker_threshold, 3);
        assert_eq!(config.0["catalog"].retries, 1);
        assert_eq!(config.0["catalog"].url, "http://127.0.0.1:3002");
        assert!(config.0.contains_key("users"), "unnamed upstreams stay");
        assert!(toml::from_str::<UpstreamsConfig>("[users]\nretry = 1\n").is_err());
    }

    #[test]
    fn packages_map_to_the_upstream_with_the_longest_entry() {
        let mut config = UpstreamsConfig::default();
        config
            .apply_env(&Env::from_pairs([
                ("AGORA_EDGE_SHOP_URL", "http://shop:50051"),
                ("AGORA_EDGE_SHOP_PACKAGES", "acme.shop, acme.orders.v1"),
                ("AGORA_EDGE_SHOP_REFLECTION", "true"),
                ("AGORA_EDGE_LEGACY_PACKAGES", "acme.shop.v0"),
            ]))
            .expect("valid");
        assert!(config.0["shop"].reflection);
        assert_eq!(config.serving("acme.shop.v1"), Some("shop"));
        assert_eq!(config.serving("acme.shop"), Some("shop"));
        assert_eq!(config.serving("acme.shop.v0"), Some("legacy"));
        assert_eq!(config.serving("acme.shopping.v1"), None);
        assert_eq!(config.serving("acme.orders.v2"), None);

        for (pairs, named) in [
            (
                vec![("AGORA_EDGE_SHOP_PACKAGES", "acme..v1")],
                "AGORA_EDGE_SHOP_PACKAGES",
            ),
            (
                vec![
                    ("AGORA_EDGE_SHOP_PACKAGES", "acme.shop"),
                    ("AGORA_EDGE_STORE_PACKAGES", "acme.shop"),
                ],
                "acme.shop",
            ),
            (
                vec![("AGORA_EDGE_SHOP_REFLECTION", "sometimes")],
                "AGORA_EDGE_SHOP_REFLECTION",
            ),
        ] {
            let err = UpstreamsConfig::default()
                .apply_env(&Env::from_pairs(pairs))
                .expect_err("refused");
            assert!(err.to_string().contains(named), "{err}");
        }
    }

    #[test]
    fn slots_are_bounded() {
        let count = AtomicUsize::new(0);
        let a = Slot::try_take(&count, 2).expect("first");
        let _b = Slot::try_take(&count, 2).expect("second");
        assert!(Slot::try_take(&count, 2).is_none());
        drop(a);
        assert!(Slot::try_take(&count, 2).is_some());
    }
}
