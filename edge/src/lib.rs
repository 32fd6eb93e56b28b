//! The edge gateway: REST/JSON on `/api/v1/*` transcoded to gRPC, generically,
//! from the `google.api.http` annotations in the contracts.
//!
//! # Layout
//!
//! - [`template`]: `google.api.http` path templates.
//! - [`contracts`]: where the contracts come from (built in, files, server
//!   reflection), reloaded on change.
//! - [`reflection`]: reading an upstream's contracts by server reflection.
//! - [`routes`]: the route table built from the descriptor set.
//! - [`transcode`]: JSON/URL ⇄ dynamic protobuf messages.
//! - [`validate`]: the contracts' field rules (protovalidate, field_behavior).
//! - [`codec`]: a pass-through gRPC codec for dynamic calls.
//! - [`proxy`]: the request handler tying these together.
//! - [`stream`]: server streams as SSE/NDJSON, WebSocket bridges.
//! - [`upstream`]: upstream services and their call policy.
//! - [`call`]: one upstream call with shedding, breaker, deadline and retries.
//! - [`error`]: gRPC status → HTTP status and `google.rpc.Status` bodies.
//! - [`etag`]: entity tags on GET answers, `If-None-Match` → 304.
//! - [`grpcweb`]: gRPC-Web (and gRPC over h2c) through the edge.
//! - [`openapi`]: the OpenAPI 3.1 document.
//! - [`dashboard`]: the business dashboard at `/admin/` (static, embedded).
//! - [`docs`]: the interactive API reference at `/api/v1/docs/` (Swagger UI, embedded).
//! - [`assets`]: embedded static files with entity tags.
//! - [`health`]: the aggregated `/health`.
//! - [`access`]: request metrics and the access log.
//! - [`ratelimit`]: per key / user / IP limits shared through Redis.
//! - [`idempotency`]: replaying the answer to a retried `Idempotency-Key`.

pub mod access;
pub mod assets;
pub mod call;
pub mod codec;
pub mod contracts;
pub mod dashboard;
pub mod docs;
pub mod error;
pub mod etag;
pub mod grpcweb;
pub mod health;
pub mod idempotency;
pub mod openapi;
pub mod proxy;
pub mod ratelimit;
pub mod reflection;
pub mod routes;
pub mod stream;
pub mod template;
pub mod transcode;
pub mod upstream;
pub mod validate;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicUsize},
    time::Duration,
};

use agora_kit::{
    config::{ConfigError, Env},
    jwks::RemoteAuthenticator,
    redis::SharedRedis,
    shutdown::Shutdown,
};
use anyhow::Context as _;
use axum::{
    Router, extract::State, middleware, response::IntoResponse, routing::get,
    serve::ListenerExt as _,
};
use http::Method;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tower_http::{
    compression::{
        CompressionLayer,
        predicate::{DefaultPredicate, NotForContentType, Predicate as _},
    },
    cors::{AllowOrigin, CorsLayer},
    decompression::RequestDecompressionLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
};

use crate::{
    contracts::{Contract, Loader},
    idempotency::IdempotencyStore,
    ratelimit::{RateLimitConfig, RateLimiter},
    upstream::{Upstreams, UpstreamsConfig},
};

/// The edge's `service.name` in traces.
pub const COMPONENT: &str = "agora-edge";

/// Edge settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// HTTP listen address (`AGORA_EDGE_ADDR`, default `0.0.0.0:3000`).
    pub addr: SocketAddr,
    /// Largest accepted request body, in bytes (`AGORA_EDGE_BODY_LIMIT_BYTES`,
    /// default 1 MiB).
    pub body_limit_bytes: usize,
    /// Expected `iss` of access tokens (`AGORA_JWT_ISSUER`, default `agora`).
    pub jwt_issuer: String,
    /// Expected `aud` of access tokens (`AGORA_JWT_AUDIENCE`, default `agora`).
    pub jwt_audience: String,
    /// Origins browsers may call from (`AGORA_EDGE_CORS_ORIGINS`, a comma
    /// list, or `*`; default none: no CORS headers).
    pub cors_origins: Vec<String>,
    /// The upstream that verifies access tokens (its JWKS) and API keys
    /// (`AGORA_EDGE_AUTH_UPSTREAM`, default `users`).
    pub auth_upstream: String,
    /// Requests in flight at the edge above which it answers 503 at once
    /// (`AGORA_EDGE_MAX_IN_FLIGHT`, default 10000).
    pub max_in_flight: usize,
    /// Streams (SSE, NDJSON, WebSockets) open at once above which the edge
    /// answers 503 (`AGORA_EDGE_MAX_STREAMS`, default 20000).
    pub max_streams: usize,
    /// Interval of WebSocket pings, in seconds; a client silent for two
    /// intervals is disconnected (`AGORA_EDGE_WS_PING_SECS`, default 30).
    #[serde(with = "agora_kit::config::secs")]
    pub ws_ping_interval: Duration,
    /// How long a stream message may wait for a WebSocket client to take
    /// it before the client is disconnected as too slow, in milliseconds
    /// (`AGORA_EDGE_STREAM_SEND_TIMEOUT_MS`, default 10000).
    #[serde(with = "agora_kit::config::millis")]
    pub stream_send_timeout: Duration,
    /// Messages per second a WebSocket client may send (bursts of twice
    /// as many); more are answered with an error frame and dropped
    /// (`AGORA_EDGE_WS_FRAMES_PER_SECOND`, default 20; 0: no limit).
    pub ws_frames_per_second: u32,
    /// Redis for rate limits and idempotency records, shared by every edge
    /// replica (`REDIS_URL`, default `redis://127.0.0.1:6379`; empty: limits
    /// per process, no idempotency records).
    pub redis_url: String,
    /// Prefix of the edge's Redis keys (`AGORA_EDGE_KEY_PREFIX`, default
    /// `agora:edge:`).
    pub key_prefix: String,
    /// Rate limits.
    pub rate_limits: RateLimitConfig,
    /// How JSON and query strings map to messages.
    pub transcoding: routes::Transcoding,
    /// Which contracts the edge serves.
    pub contracts: contracts::ContractsConfig,
    /// The services behind the edge and how to call each.
    pub upstreams: UpstreamsConfig,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 3000)),
            body_limit_bytes: 1 << 20,
            jwt_issuer: "agora".into(),
            jwt_audience: "agora".into(),
            cors_origins: Vec::new(),
            auth_upstream: "users".into(),
            max_in_flight: 10_000,
            max_streams: 20_000,
            ws_ping_interval: Duration::from_secs(30),
            stream_send_timeout: Duration::from_secs(10),
            ws_frames_per_second: 20,
            redis_url: "redis://127.0.0.1:6379".into(),
            key_prefix: "agora:edge:".into(),
            rate_limits: RateLimitConfig::default(),
            transcoding: routes::Transcoding::default(),
            contracts: contracts::ContractsConfig::default(),
            upstreams: UpstreamsConfig::default(),
        }
    }
}

impl EdgeConfig {
    /// Points the upstream `name` (if the contracts use it) at `url`.
    pub fn set_upstream_url(&mut self, name: &str, url: &str) {
        if let Some(policy) = self.upstreams.0.get_mut(name) {
            policy.url = url.to_owned();
        }
    }

    pub fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        env.parse_into("AGORA_EDGE_ADDR", &mut self.addr)?;
        env.parse_into("AGORA_EDGE_BODY_LIMIT_BYTES", &mut self.body_limit_bytes)?;
        env.string_into("AGORA_JWT_ISSUER", &mut self.jwt_issuer);
        env.string_into("AGORA_JWT_AUDIENCE", &mut self.jwt_audience);
        if let Some(list) = env.get("AGORA_EDGE_CORS_ORIGINS") {
            self.cors_origins = list
                .split(',')
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect();
        }
        cors_layer(&self.cors_origins)?;
        env.string_into("AGORA_EDGE_AUTH_UPSTREAM", &mut self.auth_upstream);
        env.parse_into("AGORA_EDGE_MAX_IN_FLIGHT", &mut self.max_in_flight)?;
        env.parse_into("AGORA_EDGE_MAX_STREAMS", &mut self.max_streams)?;
        env.secs_into("AGORA_EDGE_WS_PING_SECS", &mut self.ws_ping_interval)?;
        env.millis_into(
            "AGORA_EDGE_STREAM_SEND_TIMEOUT_MS",
            &mut self.stream_send_timeout,
        )?;
        env.parse_into(
            "AGORA_EDGE_WS_FRAMES_PER_SECOND",
            &mut self.ws_frames_per_second,
        )?;
        env.string_into("REDIS_URL", &mut self.redis_url);
        env.string_into("AGORA_EDGE_KEY_PREFIX", &mut self.key_prefix);
        self.rate_limits.apply_env(env)?;
        let t = &mut self.transcoding;
        env.parse_into("AGORA_EDGE_EMIT_UNPOPULATED", &mut t.emit_unpopulated)?;
        env.parse_into("AGORA_EDGE_USE_PROTO_NAMES", &mut t.use_proto_names)?;
        env.parse_into("AGORA_EDGE_ENUMS_AS_NUMBERS", &mut t.enums_as_numbers)?;
        env.parse_into(
            "AGORA_EDGE_UNKNOWN_QUERY_PARAMETERS",
            &mut t.unknown_query_parameters,
        )?;
        self.contracts.apply_env(env)?;
        self.upstreams.apply_env(env)?;
        self.validate()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.upstreams.validate()?;
        if !self.upstreams.0.contains_key(&self.auth_upstream) {
            return Err(ConfigError::invalid(
                "AGORA_EDGE_AUTH_UPSTREAM",
                format!("{:?} is not a configured upstream", self.auth_upstream),
            ));
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::invalid(
                "AGORA_EDGE_MAX_IN_FLIGHT",
                "must be positive",
            ));
        }
        if self.max_streams == 0 {
            return Err(ConfigError::invalid(
                "AGORA_EDGE_MAX_STREAMS",
                "must be positive",
            ));
        }
        if self.ws_ping_interval.is_zero() {
            return Err(ConfigError::invalid(
                "AGORA_EDGE_WS_PING_SECS",
                "must be positive",
            ));
        }
        if self.stream_send_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "AGORA_EDGE_STREAM_SEND_TIMEOUT_MS",
                "must be positive",
            ));
        }
        if self.body_limit_bytes == 0 {
            return Err(ConfigError::invalid(
                "AGORA_EDGE_BODY_LIMIT_BYTES",
                "must be positive",
            ));
        }
        Ok(())
    }
}

/// Shared state of the edge's handlers.
#[derive(Clone)]
pub struct EdgeState {
    /// The routes and OpenAPI document in force.
    pub contract: contracts::Current,
    pub upstreams: Upstreams,
    pub auth: Arc<RemoteAuthenticator>,
    pub body_limit: usize,
    pub shutdown: Shutdown,
    /// Requests in flight through the proxy, and the cap on them.
    pub in_flight: Arc<AtomicUsize>,
    pub max_in_flight: usize,
    /// Streams open through the edge, and the cap on them.
    pub streams: stream::StreamCount,
    pub max_streams: usize,
    pub streams_settings: stream::StreamSettings,
    pub rate_limits: Arc<RateLimitConfig>,
    pub limiter: Arc<RateLimiter>,
    pub idempotency: Arc<IdempotencyStore>,
}

/// The edge, built and bound, not yet serving.
pub struct EdgeComponent {
    listener: TcpListener,
    config: EdgeConfig,
    loader: Arc<Loader>,
    /// The contracts as far as they are known before the upstreams are
    /// asked (everything but server reflection).
    contract: Contract,
}

impl EdgeComponent {
    /// Builds the route table from the contracts known without asking the
    /// upstreams, and binds. A bad descriptor set or a binding no upstream
    /// serves stops here.
    pub async fn build(config: EdgeConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let loader = Arc::new(Loader::new(
            config.contracts.clone(),
            config.upstreams.clone(),
            config.transcoding,
        ));
        let contract = loader.load(None).await?;
        for (name, policy) in &config.upstreams.0 {
            let served = contract
                .routes
                .routes()
                .iter()
                .any(|r| &*r.upstream == name.as_str());
            if !served && *name != config.auth_upstream && !policy.reflection {
                tracing::warn!(
                    upstream = %name,
                    setting = %upstream::setting(name, "_URL"),
                    "no contract route is served by this upstream; is the name misspelt?"
                );
            }
        }
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("AGORA_EDGE_ADDR: cannot listen on {}", config.addr))?;
        Ok(Self {
            listener,
            config,
            loader,
            contract,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` stops the process; in-flight requests finish.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        agora_kit::metrics::handle();
        let upstreams = Upstreams::connect(&self.config.upstreams).await?;
        let redis = if self.config.redis_url.is_empty() {
            None
        } else {
            let redis = SharedRedis::connect(
                &self.config.redis_url,
                "REDIS_URL",
                "edge rate limits and idempotency",
            )?;
            redis.wait_connected(Duration::from_secs(2)).await;
            Some(redis)
        };
        let auth = RemoteAuthenticator::new(
            upstreams
                .get(&self.config.auth_upstream)
                .map(|u| u.channel.clone()),
            &self.config.jwt_issuer,
            &self.config.jwt_audience,
        );
        let contract = if self.contract.unread.is_empty() {
            self.contract
        } else {
            self.loader.load(Some(&upstreams)).await?
        };
        tracing::info!(
            routes = contract.routes.routes().len(),
            "edge routes built from the contracts"
        );
        let contract: contracts::Current = Arc::new(arc_swap::ArcSwap::from_pointee(contract));
        tokio::spawn(contracts::refresh(
            self.loader.clone(),
            contract.clone(),
            upstreams.clone(),
            shutdown.clone(),
        ));
        let state = EdgeState {
            contract,
            upstreams,
            auth,
            body_limit: self.config.body_limit_bytes,
            shutdown: shutdown.clone(),
            in_flight: Arc::default(),
            max_in_flight: self.config.max_in_flight,
            streams: Arc::default(),
            max_streams: self.config.max_streams,
            streams_settings: stream::StreamSettings {
                ping_interval: self.config.ws_ping_interval,
                send_timeout: self.config.stream_send_timeout,
                max_frame_bytes: self.config.body_limit_bytes,
                frames_per_second: self.config.ws_frames_per_second,
            },
            rate_limits: Arc::new(self.config.rate_limits.clone()),
            limiter: Arc::new(RateLimiter::new(redis.clone(), &self.config.key_prefix)),
            idempotency: Arc::new(IdempotencyStore::new(redis, &self.config.key_prefix)),
        };
        // `service_health_status` stays current for alerts even when
        // nothing calls /health.
        tokio::spawn(health::watch(state.upstreams.clone(), shutdown.clone()));
        let cors = cors_layer(&self.config.cors_origins)?;
        // Small responses must not wait for the client's delayed ACK.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(
            listener,
            router(state, cors).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.stopping_owned())
        .await
        .context("edge server failed")
    }
}

/// The edge's HTTP stack. Outermost first: request ids are set before
/// anything logs, and metrics see the final status of every answer.
/// CORS answers preflights before routing, so it sits outside the rest.
pub fn router(state: EdgeState, cors: Option<CorsLayer>) -> Router {
    let app = Router::new()
        .route("/health", get(health::health))
        .route("/api/v1/openapi.json", get(openapi_json))
        .merge(dashboard::routes())
        .merge(docs::routes())
        .fallback(proxy::handle)
        // One shared state: handlers clone an Arc, not every field.
        .with_state(Arc::new(state))
        .layer(middleware::from_fn(access::record_metrics))
        // gzip, br or zstd by Accept-Encoding, for bodies over 32 bytes;
        // never for streams (SSE, NDJSON), which must flush each event.
        .layer(CompressionLayer::new().compress_when(
            DefaultPredicate::new().and(NotForContentType::const_new("application/x-ndjson")),
        ))
        // Request bodies in gzip, br or zstd; others are refused with 415.
        // The body limit applies to the decompressed bytes.
        .layer(RequestDecompressionLayer::new())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
    match cors {
        Some(cors) => app.layer(cors),
        None => app,
    }
}

/// The CORS policy for `origins`; `None` when no origin is allowed.
fn cors_layer(origins: &[String]) -> Result<Option<CorsLayer>, ConfigError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                o.parse::<http::HeaderValue>().map_err(|_| {
                    ConfigError::invalid(
                        "AGORA_EDGE_CORS_ORIGINS",
                        format!("{o:?} is not a valid origin"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                http::header::AUTHORIZATION,
                http::header::CONTENT_TYPE,
                http::HeaderName::from_static("x-api-key"),
                http::HeaderName::from_static("x-request-id"),
                http::HeaderName::from_static("idempotency-key"),
                http::HeaderName::from_static("grpc-timeout"),
                http::header::IF_NONE_MATCH,
                // gRPC-Web clients.
                http::HeaderName::from_static("x-grpc-web"),
                http::HeaderName::from_static("x-user-agent"),
            ])
            .expose_headers([
                http::HeaderName::from_static("x-request-id"),
                http::header::ETAG,
                http::header::RETRY_AFTER,
                http::HeaderName::from_static("ratelimit-limit"),
                http::HeaderName::from_static("ratelimit-remaining"),
                http::HeaderName::from_static("ratelimit-reset"),
                http::HeaderName::from_static("idempotent-replayed"),
                http::HeaderName::from_static("grpc-status"),
                http::HeaderName::from_static("grpc-message"),
                http::HeaderName::from_static("grpc-status-details-bin"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    ))
}

async fn openapi_json(State(state): State<Arc<EdgeState>>) -> impl IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        state.contract.load().openapi.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_auth_upstream_must_be_configured_and_the_in_flight_cap_positive() {
        let err = EdgeConfig::default()
            .apply_env(&Env::from_pairs([("AGORA_EDGE_AUTH_UPSTREAM", "accounts")]))
            .expect_err("not configured");
        assert!(
            err.to_string().contains("AGORA_EDGE_AUTH_UPSTREAM"),
            "{err}"
        );
        let ok = EdgeConfig::default().apply_env(&Env::from_pairs([
            ("AGORA_EDGE_AUTH_UPSTREAM", "accounts"),
            ("AGORA_EDGE_ACCOUNTS_URL", "http://10.0.0.7:3001"),
        ]));
        assert!(ok.is_ok(), "{ok:?}");
        let err = EdgeConfig::default()
            .apply_env(&Env::from_pairs([("AGORA_EDGE_MAX_IN_FLIGHT", "0")]))
            .expect_err("zero");
        assert!(
            err.to_string().contains("AGORA_EDGE_MAX_IN_FLIGHT"),
            "{err}"
        );
    }

    #[test]
    fn transcoding_settings_are_read_and_bad_values_named() {
        let mut config = EdgeConfig::default();
        config
            .apply_env(&Env::from_pairs([
                ("AGORA_EDGE_EMIT_UNPOPULATED", "false"),
                ("AGORA_EDGE_USE_PROTO_NAMES", "true"),
                ("AGORA_EDGE_ENUMS_AS_NUMBERS", "true"),
                ("AGORA_EDGE_UNKNOWN_QUERY_PARAMETERS", "ignore"),
            ]))
            .expect("valid");
        assert_eq!(
            config.transcoding,
            routes::Transcoding {
                emit_unpopulated: false,
                use_proto_names: true,
                enums_as_numbers: true,
                unknown_query_parameters: routes::UnknownQuery::Ignore,
            }
        );
        for (name, value) in [
            ("AGORA_EDGE_UNKNOWN_QUERY_PARAMETERS", "drop"),
            ("AGORA_EDGE_USE_PROTO_NAMES", "yes"),
        ] {
            let err = EdgeConfig::default()
                .apply_env(&Env::from_pairs([(name, value)]))
                .expect_err(value);
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
