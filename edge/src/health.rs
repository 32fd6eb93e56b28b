//! `GET /health`: the gRPC health of every endpoint of every configured
//! upstream, checked concurrently with a short timeout.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Json, extract::State, http::StatusCode};
use chrono::{SecondsFormat, Utc};
use futures::future::join_all;
use serde::Serialize;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use agora_kit::{balance::EndpointView, shutdown::Shutdown};

use crate::{
    EdgeState,
    upstream::{Upstream, Upstreams},
};

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceHealth {
    pub name: String,
    pub status: &'static str,
    /// Milliseconds the check took.
    pub response_time: u64,
    pub last_check: String,
    pub error: Option<String>,
    /// Each known address of the service, checked on its own.
    pub endpoints: Vec<EndpointHealth>,
    /// Whether the edge's circuit breaker for the service is open.
    pub breaker_open: bool,
    /// The gRPC services of the contracts in force that the edge routes
    /// to this upstream.
    pub grpc_services: Vec<String>,
    /// Whether the upstream's contracts are read by server reflection and
    /// have not been read yet (its routes are missing until they are).
    pub contracts_unread: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointHealth {
    pub address: String,
    /// Whether the edge sends calls to it (not ejected for failing).
    pub in_rotation: bool,
    /// Whether it runs in the edge's own process (called without sockets).
    pub in_process: bool,
    /// Its own gRPC health: `healthy` or `unhealthy`.
    pub status: &'static str,
    pub error: Option<String>,
}

#[derive(Serialize)]
pub struct Health {
    /// `healthy` when every service is, `degraded` when some are, else `unhealthy`.
    pub status: &'static str,
    pub timestamp: String,
    pub services: Vec<ServiceHealth>,
}

pub async fn health(State(state): State<Arc<EdgeState>>) -> (StatusCode, Json<Health>) {
    let mut services = join_all(state.upstreams.iter().map(|u| check(u))).await;
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let contract = state.contract.load();
    for service in &mut services {
        let mut names: Vec<String> = contract
            .routes
            .routes()
            .iter()
            .filter(|r| *r.upstream == *service.name)
            .map(|r| r.method.parent_service().full_name().to_owned())
            .collect();
        names.sort();
        names.dedup();
        service.grpc_services = names;
        service.contracts_unread = contract.unread.contains(&service.name);
    }
    let healthy = services.iter().filter(|s| s.status == "healthy").count();
    let status = match healthy {
        n if n == services.len() => "healthy",
        0 => "unhealthy",
        _ => "degraded",
    };
    let code = if status == "unhealthy" || state.shutdown.is_draining() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        code,
        Json(Health {
            status,
            timestamp: now(),
            services,
        }),
    )
}

/// How often the edge checks its services on its own.
const WATCH_EVERY: Duration = Duration::from_secs(10);

/// Checks every upstream every [`WATCH_EVERY`], which keeps
/// `service_health_status` current, until `shutdown` stops.
pub async fn watch(upstreams: Upstreams, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.stopping() => return,
            _ = tick.tick() => {}
        }
        join_all(upstreams.iter().map(|u| check(u))).await;
    }
}

/// Checks every endpoint of `upstream` at once; the service is healthy when
/// any endpoint serves (the edge balances over those).
async fn check(upstream: &Upstream) -> ServiceHealth {
    let started = Instant::now();
    let endpoints = join_all(upstream.channel.endpoints().into_iter().map(check_endpoint)).await;
    let serving = endpoints.iter().filter(|e| e.status == "healthy").count();
    let status = if serving > 0 { "healthy" } else { "unhealthy" };
    let error = match (serving, endpoints.first()) {
        (0, Some(first)) if endpoints.len() == 1 => first.error.clone(),
        (0, _) => Some("no endpoint is serving".to_owned()),
        _ => None,
    };
    metrics::gauge!("service_health_status", "service_name" => upstream.name.to_string())
        .set(if status == "healthy" { 1.0 } else { 0.0 });
    ServiceHealth {
        name: upstream.name.to_string(),
        status,
        response_time: started.elapsed().as_millis() as u64,
        last_check: now(),
        error,
        endpoints,
        breaker_open: upstream.breaker.is_open(),
        grpc_services: Vec::new(),
        contracts_unread: false,
    }
}

async fn check_endpoint(endpoint: EndpointView) -> EndpointHealth {
    let in_process = endpoint.in_process;
    let mut client = HealthClient::new(endpoint.channel);
    let result = tokio::time::timeout(
        CHECK_TIMEOUT,
        client.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await;
    let (status, error) = match result {
        Err(_) => (
            "unhealthy",
            Some(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
        ),
        // A server without the standard health service answered, so it is
        // up: a backend the edge fronts need not implement grpc.health.v1.
        Ok(Err(e)) if e.code() == tonic::Code::Unimplemented => ("healthy", None),
        Ok(Err(e)) => (
            "unhealthy",
            Some(format!("{:?}: unreachable or failing", e.code())),
        ),
        Ok(Ok(r)) if r.get_ref().status() == ServingStatus::Serving => ("healthy", None),
        Ok(Ok(r)) => (
            "unhealthy",
            Some(format!("reports {:?}", r.get_ref().status())),
        ),
    };
    EndpointHealth {
        address: endpoint.addr.to_string(),
        in_rotation: endpoint.in_rotation,
        in_process,
        status,
        error,
    }
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}
