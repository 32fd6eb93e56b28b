//! The admin HTTP server every process runs: `/metrics` (Prometheus),
//! `/livez` (the process is up) and `/readyz` (every component started and
//! the process is not draining).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::{
    config::{ConfigError, Env},
    shutdown::Shutdown,
};

/// Admin server settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address (`AGORA_ADMIN_ADDR`, default `0.0.0.0:9090`).
    pub addr: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 9090)),
        }
    }
}

impl AdminConfig {
    pub fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        env.parse_into("AGORA_ADMIN_ADDR", &mut self.addr)
    }
}

/// Whether the process should receive traffic. Set once every component is
/// serving; cleared when draining starts.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The admin routes.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(|| async { crate::metrics::render() }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, &'static str) {
    if readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Serves the admin routes until `shutdown` stops the process. The admin
/// server keeps answering while draining so probes see NOT ready.
pub async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    crate::metrics::handle();
    axum::serve(listener, router(readiness))
        .with_graceful_shutdown(shutdown.stopping_owned())
        .await?;
    Ok(())
}
