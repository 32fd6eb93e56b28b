//! The process-wide Prometheus registry and the gRPC server metrics layer.
//!
//! The registry is installed once per process, whichever component asks
//! first, so several components (or several in-process test meshes) share it.

use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::Hash,
    sync::{Arc, LazyLock, OnceLock, RwLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower::{Layer, Service};

/// Latency buckets in seconds: the seed's boundaries (0.1 to 10 s, which
/// its dashboards use) plus finer ones below 0.1 s, where the edge and
/// cached reads answer.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.7, 1.0, 3.0, 5.0, 7.0, 10.0,
];

/// How often buffered histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Metric handles by label values, registered once each. Looking a metric
/// up by its labels builds and hashes a key with owned strings on every
/// call; on the request path that is a cost per request, so hot metrics
/// keep their handles here. Callers keep the key space bounded.
pub struct HandleCache<K, H> {
    map: RwLock<HashMap<K, H>>,
}

impl<K: Eq + Hash, H: Clone> HandleCache<K, H> {
    pub fn new() -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
        }
    }

    /// The handle for `key`, registered by `make` the first time.
    pub fn get<Q>(&self, key: &Q, make: impl FnOnce() -> (K, H)) -> H
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(h) = self.map.read().unwrap_or_else(|p| p.into_inner()).get(key) {
            return h.clone();
        }
        let (k, h) = make();
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(k)
            .or_insert(h)
            .clone()
    }
}

impl<K: Eq + Hash, H: Clone> Default for HandleCache<K, H> {
    fn default() -> Self {
        Self::new()
    }
}

/// The registry's handle, installing the global recorder on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // Fails only if another recorder was installed; metrics then go there.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        PROCESS.describe();
        // Histogram samples wait in a buffer until drained into their
        // buckets; drain it on a schedule, so memory stays bounded even
        // when nothing scrapes /metrics.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
        }
        handle
    })
}

/// Renders every metric in the Prometheus text format, with the process's
/// and the database pools' figures read now.
pub fn render() -> String {
    let handle = handle();
    PROCESS.collect();
    let mut pools = POOLS.lock().unwrap_or_else(|p| p.into_inner());
    pools.retain(|(_, pool)| !pool.is_closed());
    for (pool_name, pool) in pools.iter() {
        let idle = pool.num_idle() as f64;
        let size = f64::from(pool.size());
        metrics::gauge!("agora_db_pool_connections", "pool" => pool_name.clone(), "state" => "idle")
            .set(idle);
        metrics::gauge!("agora_db_pool_connections", "pool" => pool_name.clone(), "state" => "in_use")
            .set((size - idle).max(0.0));
        metrics::gauge!("agora_db_pool_max_connections", "pool" => pool_name.clone())
            .set(f64::from(pool.options().get_max_connections()));
    }
    drop(pools);
    handle.render()
}

/// Process figures (`process_resident_memory_bytes`,
/// `process_cpu_seconds_total`, `process_open_fds`, `process_threads`, …),
/// read at each scrape.
static PROCESS: LazyLock<metrics_process::Collector> =
    LazyLock::new(metrics_process::Collector::default);

/// Database pools reported at each scrape, by name (their schema).
static POOLS: std::sync::Mutex<Vec<(String, sqlx::PgPool)>> = std::sync::Mutex::new(Vec::new());

/// Reports `pool`'s connections (idle, in use, the maximum) as `name`.
pub fn watch_pool(name: &str, pool: &sqlx::PgPool) {
    POOLS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((name.to_owned(), pool.clone()));
}

// === impl GrpcMetricsLayer ===

/// Records `grpc_server_handled_total{grpc_service,grpc_method,grpc_code}` and
/// `grpc_server_handling_seconds{grpc_service,grpc_method}` for unary calls
/// and stream openings.
#[derive(Debug, Clone, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        handle();
        GrpcMetrics { inner }
    }
}

/// See [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for GrpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Cheap to clone (shared bytes); the path is looked up once the
        // code says whether it named a method at all.
        let uri = req.uri().clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            // A status in the headers is a trailers-only answer (an error or
            // an empty stream); otherwise the call opened successfully.
            let code = match &result {
                Ok(resp) => crate::failure::header_code(resp.headers()),
                Err(_) => tonic::Code::Internal,
            };
            // Unknown paths would otherwise let callers create label values.
            let path = if code == tonic::Code::Unimplemented {
                UNKNOWN
            } else {
                uri.path()
            };
            let handles = GRPC_HANDLES.get(path, || {
                let (service, method) = split_path(path);
                (
                    path.into(),
                    MethodMetrics::new(Side::Server, service, method),
                )
            });
            handles.handled(code).increment(1);
            handles.seconds.record(start.elapsed().as_secs_f64());
            result
        })
    }
}

/// The gRPC server metrics of one method: a counter per code (registered
/// when first used) and the latency histogram. Keyed by path; paths that
/// name no method of the server share the `unknown` entry, so clients
/// cannot grow the map.
#[derive(Clone)]
struct MethodMetrics {
    side: Side,
    labels: Arc<(String, String)>,
    handled: Arc<[OnceLock<metrics::Counter>; 17]>,
    seconds: metrics::Histogram,
}

impl MethodMetrics {
    fn new(side: Side, service: &str, method: &str) -> Self {
        let (service, method) = (service.to_owned(), method.to_owned());
        let seconds = match side {
            Side::Server => "grpc_server_handling_seconds",
            Side::Client => "grpc_client_handling_seconds",
        };
        Self {
            side,
            seconds: metrics::histogram!(seconds,
                "grpc_service" => service.clone(), "grpc_method" => method.clone()),
            labels: Arc::new((service, method)),
            handled: Arc::new(std::array::from_fn(|_| OnceLock::new())),
        }
    }

    fn handled(&self, code: tonic::Code) -> &metrics::Counter {
        self.handled[code as usize % 17].get_or_init(|| {
            let (service, method) = &*self.labels;
            let name = match self.side {
                Side::Server => "grpc_server_handled_total",
                Side::Client => "grpc_client_handled_total",
            };
            metrics::counter!(name,
                "grpc_service" => service.clone(), "grpc_method" => method.clone(),
                "grpc_code" => format!("{code:?}"))
        })
    }
}

#[derive(Clone, Copy)]
enum Side {
    Server,
    Client,
}

/// Records one outgoing call to `path` (a method of the contracts, so the
/// label set is bounded): `grpc_client_handled_total` and
/// `grpc_client_handling_seconds` (until the answer's headers).
pub fn record_client_call(path: &str, code: tonic::Code, elapsed: Duration) {
    let handles = GRPC_CLIENT_HANDLES.get(path, || {
        let (service, method) = split_path(path);
        (
            path.into(),
            MethodMetrics::new(Side::Client, service, method),
        )
    });
    handles.handled(code).increment(1);
    handles.seconds.record(elapsed.as_secs_f64());
}

static GRPC_CLIENT_HANDLES: LazyLock<HandleCache<Box<str>, MethodMetrics>> =
    LazyLock::new(HandleCache::new);

const UNKNOWN: &str = "/unknown/unknown";

static GRPC_HANDLES: LazyLock<HandleCache<Box<str>, MethodMetrics>> =
    LazyLock::new(HandleCache::new);

/// Splits `/pkg.Service/Method` into its service and method.
fn split_path(path: &str) -> (&str, &str) {
    let path = path.trim_start_matches('/');
    path.split_once('/').unwrap_or((path, ""))
}

#[cfg(test)]
mod tests {
    use super::split_path;

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/agora.users.v1.UsersService/Login"),
            ("agora.users.v1.UsersService", "Login")
        );
        assert_eq!(split_path("/"), ("", ""));
    }
}
