//! Structured logs: JSON lines with the span context, filtered by `RUST_LOG`
//! (default `info`). Trace export by OTLP attaches here in a later step.
//!
//! Lines are written by a background thread through a bounded buffer, so a
//! request never waits on stdout (a slow log collector, a full pipe). When
//! the buffer is full, lines are dropped rather than queued without bound;
//! `agora_log_lines_dropped_total` counts them.

use std::time::Duration;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Lines the log buffer holds before it drops new ones.
const BUFFERED_LINES: usize = 64 * 1024;

/// Installs the global subscriber. Call once, from `main`, and keep the
/// guard until the process ends: dropping it flushes buffered lines.
pub fn init() -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("AGORA_LOG_FORMAT")
        .map(|f| f != "text")
        .unwrap_or(true);
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("log-writer")
        .finish(std::io::stdout());
    let dropped = writer.error_counter();
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .init();
    } else {
        registry.with(fmt::layer().with_writer(writer)).init();
    }
    // Dropped lines become a metric (the registry is process-wide; reading
    // the counter is a relaxed atomic load every few seconds).
    let _ = std::thread::Builder::new()
        .name("log-drops".into())
        .spawn(move || {
            let mut reported = 0;
            loop {
                std::thread::sleep(Duration::from_secs(5));
                let now = dropped.dropped_lines();
                if now > reported {
                    // Looked up here, not before the loop: the metrics
                    // recorder is installed after logging starts.
                    metrics::counter!("agora_log_lines_dropped_total")
                        .increment((now - reported) as u64);
                    reported = now;
                }
            }
        });
    guard
}
