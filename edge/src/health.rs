//! `GET /health`: the gRPC health of every configured upstream, checked
//! concurrently with a short timeout.

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

use crate::{EdgeState, upstream::Upstream};

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
    /// Each known address and whether it takes calls (not ejected).
    pub endpoints: Vec<EndpointHealth>,
    /// Whether the edge's circuit breaker for the service is open.
    pub breaker_open: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointHealth {
    pub address: String,
    pub in_rotation: bool,
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

async fn check(upstream: &Upstream) -> ServiceHealth {
    let started = Instant::now();
    let mut client = HealthClient::new(upstream.channel.clone());
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
    metrics::gauge!("service_health_status", "service_name" => upstream.name.to_string())
        .set(if status == "healthy" { 1.0 } else { 0.0 });
    ServiceHealth {
        name: upstream.name.to_string(),
        status,
        response_time: started.elapsed().as_millis() as u64,
        last_check: now(),
        error,
        endpoints: upstream
            .channel
            .endpoint_health()
            .into_iter()
            .map(|(addr, in_rotation)| EndpointHealth {
                address: addr.to_string(),
                in_rotation,
            })
            .collect(),
        breaker_open: upstream.breaker.is_open(),
    }
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}
