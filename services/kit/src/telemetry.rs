//! Structured logs: JSON lines with the span context, filtered by `RUST_LOG`
//! (default `info`). Trace export by OTLP attaches here in a later step.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. Call once, from `main`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("AGORA_LOG_FORMAT")
        .map(|f| f != "text")
        .unwrap_or(true);
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .init();
    } else {
        registry.with(fmt::layer()).init();
    }
}
