//! The shutdown sequence shared by every component.
//!
//! On a stop signal the process first reports NOT_SERVING (gRPC health and
//! `/readyz`) so load balancers stop sending new work, waits `drain_delay` for
//! them to notice, then tells servers to stop accepting and lets in-flight
//! requests finish within `grace_period`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Env};

/// Timing of the shutdown sequence.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Time between reporting NOT_SERVING and refusing new connections, in
    /// milliseconds (`AGORA_SHUTDOWN_DRAIN_MS`, default 5000).
    #[serde(with = "crate::config::millis")]
    pub drain_delay: Duration,
    /// Time in-flight requests get to finish after that, in milliseconds
    /// (`AGORA_SHUTDOWN_GRACE_MS`, default 30000).
    #[serde(with = "crate::config::millis")]
    pub grace_period: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_delay: Duration::from_secs(5),
            grace_period: Duration::from_secs(30),
        }
    }
}

impl ShutdownConfig {
    pub fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        env.millis_into("AGORA_SHUTDOWN_DRAIN_MS", &mut self.drain_delay)?;
        env.millis_into("AGORA_SHUTDOWN_GRACE_MS", &mut self.grace_period)
    }
}

/// Two phases of a stop: `draining` fires first (report NOT_SERVING), then
/// `stopping` (servers stop accepting and finish in-flight work).
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    draining: CancellationToken,
    stopping: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves when the process starts draining.
    pub async fn draining(&self) {
        self.draining.cancelled().await
    }

    /// Resolves when servers must stop accepting new work.
    pub async fn stopping(&self) {
        self.stopping.cancelled().await
    }

    /// An owned future for APIs that take a `'static` shutdown signal.
    pub fn stopping_owned(&self) -> impl Future<Output = ()> + Send + 'static {
        self.stopping.clone().cancelled_owned()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Runs the sequence: drain, wait `drain_delay`, stop.
    pub async fn begin(&self, config: &ShutdownConfig) {
        self.draining.cancel();
        tokio::time::sleep(config.drain_delay).await;
        self.stopping.cancel();
    }
}

/// Listens for SIGTERM and SIGINT (Ctrl-C) from the moment it is called
/// (so a signal during start-up is not lost to the default handler); the
/// returned future resolves on the first of them.
#[cfg(unix)]
pub fn signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("received SIGTERM"),
            _ = int.recv() => tracing::info!("received SIGINT"),
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("received Ctrl-C");
        }
    })
}
