//! Rate limits shared by every edge replica: GCRA (the generic cell rate
//! algorithm, a token bucket kept as one timestamp per key) in Redis, one
//! atomic round trip per check through a Lua script. When Redis is
//! unreachable each replica falls back to the same algorithm in memory and
//! keeps serving (see [`agora_kit::redis`] for how an outage is noticed).
//!
//! Who is counted, and against which limit, is decided per request by
//! [`subject`]: the public auth routes per client IP; an API key against
//! its own stored limit; a signed-in user per user; anonymous callers per
//! client IP. A route's contract may give it its own per-minute budget.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use agora_kit::{
    auth::{Caller, Credential},
    config::{ConfigError, Env},
    redis::SharedRedis,
};
use fred::types::scripts::Script;
use serde::{Deserialize, Serialize};

use crate::routes::Route;

/// The rate-limit settings of the edge.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Calls per minute per client IP without credentials
    /// (`AGORA_EDGE_RATE_LIMIT_ANONYMOUS_PER_MINUTE`, default 600; 0: off).
    pub anonymous_per_minute: u32,
    /// Calls per minute per signed-in user, and per API key without a limit
    /// of its own (`AGORA_EDGE_RATE_LIMIT_USER_PER_MINUTE`, default 1200;
    /// 0: off).
    pub user_per_minute: u32,
    /// Calls per minute per client IP on the public auth routes: login,
    /// registration, password reset (`AGORA_EDGE_RATE_LIMIT_AUTH_PER_MINUTE`,
    /// default 20; 0: off).
    pub auth_per_minute: u32,
    /// Proxies in front of the edge that append to `X-Forwarded-For`
    /// (`AGORA_EDGE_TRUSTED_PROXY_HOPS`, default 0: the client IP is the
    /// connection's peer). With N, the client is the Nth address from the
    /// right of that header.
    pub trusted_proxy_hops: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            anonymous_per_minute: 600,
            user_per_minute: 1200,
            auth_per_minute: 20,
            trusted_proxy_hops: 0,
        }
    }
}

impl RateLimitConfig {
    pub fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        env.parse_into(
            "AGORA_EDGE_RATE_LIMIT_ANONYMOUS_PER_MINUTE",
            &mut self.anonymous_per_minute,
        )?;
        env.parse_into(
            "AGORA_EDGE_RATE_LIMIT_USER_PER_MINUTE",
            &mut self.user_per_minute,
        )?;
        env.parse_into(
            "AGORA_EDGE_RATE_LIMIT_AUTH_PER_MINUTE",
            &mut self.auth_per_minute,
        )?;
        env.parse_into(
            "AGORA_EDGE_TRUSTED_PROXY_HOPS",
            &mut self.trusted_proxy_hops,
        )?;
        Ok(())
    }
}

/// Who a request is counted as, and its limit per minute.
#[derive(Debug, PartialEq, Eq)]
pub struct Subject {
    pub key: String,
    pub per_minute: u32,
}

/// The subject of a call, or `None` when its class is not limited.
pub fn subject(
    config: &RateLimitConfig,
    route: &Route,
    caller: Option<&Caller>,
    client_ip: IpAddr,
) -> Option<Subject> {
    let own = route.rate_limit.per_minute;
    let (mut key, default) = if route.rate_limit.class == "auth" {
        (format!("auth:{client_ip}"), config.auth_per_minute)
    } else {
        match caller {
            Some(Caller {
                credential:
                    Credential::ApiKey {
                        key_id,
                        rate_limit_per_minute,
                        ..
                    },
                ..
            }) => (
                format!("key:{key_id}"),
                if *rate_limit_per_minute > 0 {
                    *rate_limit_per_minute
                } else {
                    config.user_per_minute
                },
            ),
            Some(c) => (format!("user:{}", c.user_id), config.user_per_minute),
            None => (format!("ip:{client_ip}"), config.anonymous_per_minute),
        }
    };
    let per_minute = if own > 0 {
        // A route with its own limit has its own budget.
        key.push(':');
        key.push_str(&route.grpc_path);
        own
    } else {
        default
    };
    (per_minute > 0).then_some(Subject { key, per_minute })
}

/// The client IP: the peer, or the address `hops` proxies back in
/// `X-Forwarded-For`.
pub fn client_ip(peer: IpAddr, headers: &http::HeaderMap, hops: usize) -> IpAddr {
    if hops == 0 {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    forwarded
        .len()
        .checked_sub(hops)
        .and_then(|i| forwarded.get(i))
        .and_then(|a| a.parse().ok())
        .unwrap_or(peer)
}

/// The outcome of one check, with what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// When a refused call may be tried again.
    pub retry_after: Duration,
}

/// GCRA in Redis. The clock is Redis's own, so replicas agree. Returns
/// {allowed, remaining, retry after ms, reset ms}.
const GCRA_LUA: &str = r"
local interval = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local period = interval * limit
local next_tat = tat + interval
local ahead = next_tat - now
if ahead > period then
  return {0, 0, math.ceil(ahead - period), math.ceil(tat - now)}
end
redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil(ahead))
return {1, math.floor((period - ahead) / interval), 0, math.ceil(ahead)}
";

/// Keys the in-memory fallback tracks at most; past it, expired entries
/// go, and if none has expired the table starts over.
const LOCAL_CAPACITY: usize = 100_000;

pub struct RateLimiter {
    redis: Option<Arc<SharedRedis>>,
    prefix: String,
    script: Script,
    /// Theoretical arrival times of the fallback, by key.
    local: Mutex<HashMap<String, Instant>>,
}

impl RateLimiter {
    pub fn new(redis: Option<Arc<SharedRedis>>, prefix: &str) -> Self {
        Self {
            redis,
            prefix: format!("{prefix}rl:"),
            script: Script::from_lua(GCRA_LUA),
            local: Mutex::new(HashMap::new()),
        }
    }

    pub async fn check(&self, subject: &Subject) -> Decision {
        let interval_ms = 60_000.0 / f64::from(subject.per_minute);
        if let Some(redis) = &self.redis
            && let Some(client) = redis.client()
        {
            let key = format!("{}{}", self.prefix, subject.key);
            let args = vec![interval_ms.to_string(), subject.per_minute.to_string()];
            match agora_kit::redis::traced(
                "EVALSHA",
                self.script
                    .evalsha_with_reload::<Vec<i64>, _, _>(client, key, args),
            )
            .await
            {
                Ok(v) if v.len() == 4 => {
                    let ms = |x: i64| Duration::from_millis(x.max(0) as u64);
                    return Decision {
                        allowed: v[0] == 1,
                        limit: subject.per_minute,
                        remaining: v[1].clamp(0, i64::from(u32::MAX)) as u32,
                        retry_after: ms(v[2]),
                        reset: ms(v[3]),
                    };
                }
                Ok(v) => {
                    tracing::error!(reply = ?v, "unexpected rate-limit script reply");
                }
                Err(e) => {
                    metrics::counter!("agora_edge_redis_errors_total", "op" => "rate_limit")
                        .increment(1);
                    redis.failed("rate_limit", &e);
                }
            }
        }
        self.check_locally(subject, interval_ms)
    }

    fn check_locally(&self, subject: &Subject, interval_ms: f64) -> Decision {
        let interval = Duration::from_secs_f64(interval_ms / 1000.0);
        let period = interval * subject.per_minute;
        let now = Instant::now();
        let mut table = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= LOCAL_CAPACITY && !table.contains_key(&subject.key) {
            table.retain(|_, tat| *tat > now);
            if table.len() >= LOCAL_CAPACITY {
                table.clear();
            }
        }
        let tat = table
            .get(&subject.key)
            .copied()
            .filter(|t| *t > now)
            .unwrap_or(now);
        let next = tat + interval;
        let ahead = next - now;
        if ahead > period {
            return Decision {
                allowed: false,
                limit: subject.per_minute,
                remaining: 0,
                retry_after: ahead - period,
                reset: tat - now,
            };
        }
        table.insert(subject.key.clone(), next);
        let remaining = ((period - ahead).as_secs_f64() / interval.as_secs_f64()).floor();
        Decision {
            allowed: true,
            limit: subject.per_minute,
            remaining: remaining as u32,
            retry_after: Duration::ZERO,
            reset: ahead,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_allows_the_limit_then_refuses_with_a_retry_time() {
        let limiter = RateLimiter::new(None, "t:");
        let subject = Subject {
            key: "ip:1".into(),
            per_minute: 3,
        };
        let interval = 20_000.0;
        let remaining: Vec<u32> = (0..3)
            .map(|_| limiter.check_locally(&subject, interval))
            .inspect(|d| assert!(d.allowed))
            .map(|d| d.remaining)
            .collect();
        assert_eq!(remaining, vec![2, 1, 0]);
        let refused = limiter.check_locally(&subject, interval);
        assert!(!refused.allowed);
        assert!(refused.retry_after > Duration::from_secs(19));
        assert!(refused.retry_after <= Duration::from_secs(20));
        let other = Subject {
            key: "ip:2".into(),
            per_minute: 3,
        };
        assert!(limiter.check_locally(&other, interval).allowed);
    }

    fn route(grpc_path: &str) -> Route {
        let pool = prost_reflect::DescriptorPool::decode(agora_proto::FILE_DESCRIPTOR_SET)
            .expect("contracts");
        crate::routes::RouteTable::from_pool(&pool, "agora.")
            .expect("routes")
            .routes()
            .iter()
            .find(|r| &*r.grpc_path == grpc_path)
            .expect("route")
            .clone()
    }

    #[test]
    fn callers_are_counted_by_key_user_or_ip_and_sign_in_by_ip() {
        let config = RateLimitConfig {
            anonymous_per_minute: 10,
            user_per_minute: 20,
            auth_per_minute: 3,
            trusted_proxy_hops: 0,
        };
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let me = route("/agora.users.v1.UsersService/GetMe");
        let login = route("/agora.users.v1.UsersService/Login");
        let user = Caller {
            user_id: "u1".into(),
            roles: vec![],
            credential: Credential::AccessToken,
        };
        let key = Caller {
            credential: Credential::ApiKey {
                key_id: "k1".into(),
                permissions: vec![],
                rate_limit_per_minute: 5,
            },
            ..user.clone()
        };
        let subject = |route: &Route, caller: Option<&Caller>| {
            subject(&config, route, caller, ip).map(|s| (s.key, s.per_minute))
        };
        assert_eq!(subject(&me, None), Some(("ip:192.0.2.1".into(), 10)));
        assert_eq!(subject(&me, Some(&user)), Some(("user:u1".into(), 20)));
        assert_eq!(subject(&me, Some(&key)), Some(("key:k1".into(), 5)));
        assert_eq!(
            subject(&login, Some(&user)),
            Some(("auth:192.0.2.1".into(), 3)),
            "sign-in routes count per IP whoever calls"
        );

        // A contract's own budget is apart from the caller's other calls.
        let mut own = me.clone();
        own.rate_limit.per_minute = 2;
        assert_eq!(
            subject(&own, Some(&user)),
            Some(("user:u1:/agora.users.v1.UsersService/GetMe".into(), 2))
        );

        let off = RateLimitConfig {
            anonymous_per_minute: 0,
            ..config.clone()
        };
        assert_eq!(
            super::subject(&off, &me, None, ip),
            None,
            "0 turns a class off"
        );
    }

    #[test]
    fn the_client_ip_comes_from_forwarded_for_only_past_trusted_proxies() {
        let peer: IpAddr = "10.0.0.9".parse().expect("ip");
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "1.1.1.1, 203.0.113.7".parse().expect("header"),
        );
        assert_eq!(client_ip(peer, &headers, 0), peer);
        assert_eq!(
            client_ip(peer, &headers, 1),
            "203.0.113.7".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(
            client_ip(peer, &headers, 2),
            "1.1.1.1".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(client_ip(peer, &headers, 3), peer);
    }
}
