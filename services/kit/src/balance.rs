//! A gRPC client channel over every endpoint of one upstream.
//!
//! An upstream URL names one or more endpoints (`http://a:3002,http://b:3002`)
//! or a DNS name with several addresses (a Kubernetes headless Service),
//! which is resolved again every [`RESOLVE_EVERY`]. [`Balanced`] is a tower
//! service that tonic clients use like a `Channel`:
//!
//! - each call goes to the less loaded of two healthy endpoints picked at
//!   random (power of two choices on in-flight calls, as tower's `balance`);
//! - an endpoint that fails [`EJECT_AFTER`] calls in a row at the connection
//!   level (refused, reset, or answering UNAVAILABLE without a body) is
//!   ejected for a while, doubling on each ejection up to [`MAX_EJECTION`],
//!   then tried again (outlier detection). The last healthy endpoint is never
//!   ejected: with one endpoint, the caller's circuit breaker alone decides;
//! - a call that provably never reached the service (connection refused,
//!   HTTP/2 REFUSED_STREAM or GOAWAY before the stream was processed) fails
//!   with an UNAVAILABLE status whose source is [`NotSent`], so callers may
//!   retry it whatever the method;
//! - a retry can ask for another endpoint than its previous attempt with an
//!   [`AttemptHint`] extension on the request.

use std::{
    collections::HashMap,
    error::Error as StdError,
    net::SocketAddr,
    sync::{
        Arc, LazyLock, RwLock,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;

pub use crate::failure::{NotSent, is_transport_failure};
use crate::failure::{never_sent, refused_by_server};
use tonic::body::Body;

use crate::h2client::EndpointClient;
use tower::{Service, ServiceExt as _};

/// Consecutive connection-level failures that eject an endpoint.
pub const EJECT_AFTER: u32 = 3;
/// The first ejection's length; each further one doubles it.
pub const BASE_EJECTION: Duration = Duration::from_secs(1);
/// The longest ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(30);
/// How often DNS names are resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);

type BoxError = Box<dyn StdError + Send + Sync>;

fn now_ms() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    EPOCH.elapsed().as_millis() as u64
}

/// Set on a request (`tonic::Request::extensions_mut`) to learn which
/// endpoint served it and, on the next attempt, to prefer another one.
#[derive(Clone, Default)]
pub struct AttemptHint(Arc<AtomicU64>);

/// One endpoint as seen from outside the balancer.
pub struct EndpointView {
    pub addr: SocketAddr,
    pub in_rotation: bool,
    /// Served by this process and called without sockets.
    pub in_process: bool,
    pub channel: EndpointClient,
}

/// One address of an upstream, with its own lazily connected channel.
struct EndpointState {
    id: u64,
    addr: SocketAddr,
    channel: EndpointClient,
    in_flight: AtomicUsize,
    failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until: AtomicU64,
}

impl EndpointState {
    fn healthy(&self, now: u64) -> bool {
        now >= self.ejected_until.load(Ordering::Relaxed)
    }
}

/// One configured endpoint: `http://host:port`, resolved to addresses.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
}

struct Inner {
    /// The upstream's name, for logs and metrics.
    name: String,
    targets: Vec<Target>,
    endpoints: RwLock<Arc<Vec<Arc<EndpointState>>>>,
}

/// A load-balanced channel over every endpoint of one upstream.
#[derive(Clone)]
pub struct Balanced {
    inner: Arc<Inner>,
}

impl Balanced {
    /// Parses `urls` (a comma list of `http://host:port`), checking each,
    /// without connecting. `setting` names the variable, for errors.
    pub fn parse_urls(urls: &str, setting: &str) -> Result<(), crate::config::ConfigError> {
        parse_targets(urls, setting).map(drop)
    }

    /// A channel over `urls`. Addresses written as IPs are used at once;
    /// names are resolved now and every [`RESOLVE_EVERY`] in a background
    /// task that ends when the last clone of the channel is dropped.
    pub async fn new(name: &str, urls: &str, setting: &str) -> anyhow::Result<Self> {
        let targets = parse_targets(urls, setting)?;
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            targets,
            endpoints: RwLock::new(Arc::new(Vec::new())),
        });
        let needs_dns = inner.targets.iter().any(|t| t.host_ip().is_none());
        inner.refresh().await;
        if needs_dns {
            let weak = Arc::downgrade(&inner);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(RESOLVE_EVERY);
                every.tick().await;
                loop {
                    every.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    inner.refresh().await;
                }
            });
        }
        Ok(Self { inner })
    }

    /// Each endpoint: its address, whether it is in rotation (not ejected),
    /// and a channel to it alone (for per-endpoint health checks).
    pub fn endpoints(&self) -> Vec<EndpointView> {
        let now = now_ms();
        self.inner
            .snapshot()
            .iter()
            .map(|e| EndpointView {
                addr: e.addr,
                in_rotation: e.healthy(now),
                in_process: crate::local::lookup(e.addr).is_some(),
                channel: e.channel.clone(),
            })
            .collect()
    }
}

impl Target {
    fn host_ip(&self) -> Option<std::net::IpAddr> {
        self.host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()
    }
}

fn parse_targets(urls: &str, setting: &str) -> Result<Vec<Target>, crate::config::ConfigError> {
    let invalid = |url: &str, why: &str| {
        crate::config::ConfigError::invalid(setting, format!("{url:?} is not a valid URL: {why}"))
    };
    let mut out = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let uri: http::Uri = url.parse().map_err(|_| invalid(url, "cannot parse it"))?;
        match uri.scheme_str() {
            Some("http") => {}
            _ => {
                return Err(invalid(
                    url,
                    "use http:// (plaintext HTTP/2; TLS to upstreams is not supported)",
                ));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| invalid(url, "name a host"))?
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        out.push(Target { host, port });
    }
    if out.is_empty() {
        return Err(crate::config::ConfigError::invalid(
            setting,
            "name at least one URL",
        ));
    }
    Ok(out)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Inner {
    fn snapshot(&self) -> Arc<Vec<Arc<EndpointState>>> {
        match self.endpoints.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Resolves every target and swaps in the new address set, keeping the
    /// state (and connection) of addresses that stay. A failed lookup keeps
    /// that target's current addresses: DNS trouble must not empty the set.
    async fn refresh(&self) {
        let current = self.snapshot();
        let mut by_addr: HashMap<SocketAddr, Arc<EndpointState>> =
            current.iter().map(|e| (e.addr, e.clone())).collect();
        let mut next = Vec::new();
        for target in &self.targets {
            let addrs: Vec<SocketAddr> = match target.host_ip() {
                Some(ip) => vec![SocketAddr::new(ip, target.port)],
                None => match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
                    Ok(found) => found.collect(),
                    Err(e) => {
                        tracing::warn!(upstream = %self.name, host = %target.host, error = %e, "cannot resolve an upstream; keeping its known addresses");
                        current
                            .iter()
                            .filter(|e| e.addr.port() == target.port)
                            .map(|e| e.addr)
                            .collect()
                    }
                },
            };
            for addr in addrs {
                if next.iter().any(|e: &Arc<EndpointState>| e.addr == addr) {
                    continue;
                }
                let state = match by_addr.remove(&addr) {
                    Some(state) => state,
                    None => match self.endpoint(addr) {
                        Ok(state) => Arc::new(state),
                        Err(e) => {
                            tracing::warn!(upstream = %self.name, %addr, error = %e, "cannot use an upstream address");
                            continue;
                        }
                    },
                };
                next.push(state);
            }
        }
        let changed = next.len() != current.len()
            || next.iter().zip(current.iter()).any(|(a, b)| a.id != b.id);
        if changed {
            tracing::info!(upstream = %self.name, endpoints = ?next.iter().map(|e| e.addr).collect::<Vec<_>>(), "upstream endpoints");
            let next = Arc::new(next);
            match self.endpoints.write() {
                Ok(mut guard) => *guard = next,
                Err(poisoned) => *poisoned.into_inner() = next,
            }
        }
    }

    fn endpoint(&self, addr: SocketAddr) -> anyhow::Result<EndpointState> {
        Ok(EndpointState {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            addr,
            channel: EndpointClient::new(addr)?,
            in_flight: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        })
    }

    /// Power of two choices among healthy endpoints other than `avoid`
    /// (the previous attempt's). Failing that, among the other endpoints
    /// even if ejected: a retry is better sent to an endpoint that may have
    /// come back than to the one that just failed. Failing that, `avoid`.
    fn pick(&self, avoid: u64) -> Option<Arc<EndpointState>> {
        let all = self.snapshot();
        if all.len() <= 1 {
            return all.first().cloned();
        }
        let now = now_ms();
        let preferred = |e: &&Arc<EndpointState>| e.id != avoid && e.healthy(now);
        let others = |e: &&Arc<EndpointState>| e.id != avoid;
        // Counted and indexed rather than collected: no allocation per call.
        let chosen = match all.iter().filter(preferred).count() {
            0 => match all.iter().filter(others).count() {
                0 => two_choices(all.iter(), all.len()),
                n => two_choices(all.iter().filter(others), n),
            },
            n => two_choices(all.iter().filter(preferred), n),
        };
        chosen.cloned()
    }

    fn succeeded(&self, ep: &EndpointState) {
        if ep.failures.load(Ordering::Relaxed) != 0 {
            ep.failures.store(0, Ordering::Relaxed);
        }
        if ep.ejections.load(Ordering::Relaxed) != 0 {
            ep.ejections.store(0, Ordering::Relaxed);
            tracing::info!(upstream = %self.name, addr = %ep.addr, "upstream endpoint recovered");
        }
    }

    fn failed(&self, ep: &EndpointState) {
        let failures = ep.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < EJECT_AFTER {
            return;
        }
        let now = now_ms();
        let all = self.snapshot();
        let others_healthy = all.iter().any(|e| e.id != ep.id && e.healthy(now));
        if !others_healthy || !ep.healthy(now) {
            return;
        }
        let n = ep.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let ejection = (BASE_EJECTION * 2u32.pow(n)).min(MAX_EJECTION);
        ep.ejected_until
            .store(now + ejection.as_millis() as u64, Ordering::Relaxed);
        ep.failures.store(0, Ordering::Relaxed);
        metrics::counter!("agora_upstream_ejections_total", "upstream" => self.name.clone())
            .increment(1);
        tracing::warn!(upstream = %self.name, addr = %ep.addr, ejection_ms = ejection.as_millis() as u64, "ejecting a failing upstream endpoint");
    }
}

/// The less loaded of two distinct endpoints picked at random from the `n`
/// that `candidates` yields.
fn two_choices<'a>(
    candidates: impl Iterator<Item = &'a Arc<EndpointState>> + Clone,
    n: usize,
) -> Option<&'a Arc<EndpointState>> {
    if n <= 1 {
        return candidates.clone().next();
    }
    let a = fastrand::usize(..n);
    let mut b = fastrand::usize(..n - 1);
    if b >= a {
        b += 1;
    }
    let a = candidates.clone().nth(a)?;
    let b = candidates.clone().nth(b)?;
    let load = |e: &EndpointState| e.in_flight.load(Ordering::Relaxed);
    Some(if load(b) < load(a) { b } else { a })
}

/// Decrements an endpoint's in-flight count however the call ends.
struct InFlight(Arc<EndpointState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Service<http::Request<Body>> for Balanced {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is per endpoint, awaited inside the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        let hint = req.extensions().get::<AttemptHint>().cloned();
        let avoid = hint.as_ref().map_or(0, |h| h.0.load(Ordering::Relaxed));
        Box::pin(async move {
            let Some(ep) = inner.pick(avoid) else {
                return Err(Box::new(NotSent::unavailable(format!(
                    "the {} service has no known address",
                    inner.name
                ))) as BoxError);
            };
            if let Some(hint) = &hint {
                hint.0.store(ep.id, Ordering::Relaxed);
            }
            ep.in_flight.fetch_add(1, Ordering::Relaxed);
            let _guard = InFlight(ep.clone());
            let uri = req.uri().clone();
            let started = Instant::now();
            let result = ep.channel.clone().oneshot(req).await;
            // A status in the headers is how calls fail; success is in the
            // trailers. A call that got no answer at all is UNAVAILABLE.
            let code = match &result {
                Ok(resp) => crate::failure::header_code(resp.headers()),
                Err(_) => tonic::Code::Unavailable,
            };
            crate::metrics::record_client_call(uri.path(), code, started.elapsed());
            match result {
                Ok(resp) => {
                    if refused_by_server(&resp) {
                        inner.failed(&ep);
                    } else {
                        inner.succeeded(&ep);
                    }
                    Ok(resp)
                }
                Err(e) => {
                    inner.failed(&ep);

                    if never_sent(&*e) {
                        Err(Box::new(NotSent::unavailable(format!(
                            "cannot reach the {} service at {}: {e}",
                            inner.name, ep.addr
                        ))) as BoxError)
                    } else {
                        Err(e)
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_a_comma_list_and_errors_name_the_setting() {
        let targets =
            parse_targets("http://10.0.0.1:3002, http://catalog:3002", "X_URL").expect("valid");
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[1].host, "catalog");
        assert_eq!(targets[1].port, 3002);
        let err = parse_targets("ftp://a", "X_URL").expect_err("bad scheme");
        assert!(err.to_string().contains("X_URL"), "{err}");
        assert!(parse_targets(" , ", "X_URL").is_err());
    }

    #[tokio::test]
    async fn picks_spread_over_endpoints_and_skip_ejected_ones() {
        let b = Balanced::new(
            "test",
            "http://127.0.0.1:1,http://127.0.0.1:2,http://127.0.0.1:3",
            "X",
        )
        .await
        .expect("builds");
        let all = b.inner.snapshot();
        assert_eq!(all.len(), 3);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(b.inner.pick(0).expect("one").addr);
        }
        assert_eq!(seen.len(), 3, "every endpoint takes calls");

        for _ in 0..EJECT_AFTER {
            b.inner.failed(&all[0]);
        }
        for _ in 0..200 {
            assert_ne!(b.inner.pick(0).expect("one").addr, all[0].addr);
        }
        // Never the last healthy one.
        for _ in 0..EJECT_AFTER {
            b.inner.failed(&all[1]);
        }
        for _ in 0..EJECT_AFTER {
            b.inner.failed(&all[2]);
        }
        assert!(all[2].healthy(now_ms()), "the last healthy endpoint stays");
        for _ in 0..50 {
            assert_eq!(b.inner.pick(0).expect("one").addr, all[2].addr);
        }
        // A retry avoids the endpoint of its previous attempt, trying an
        // ejected one rather than the one that just failed.
        let retry = b.inner.pick(all[2].id).expect("one");
        assert_ne!(retry.addr, all[2].addr);
    }
}
