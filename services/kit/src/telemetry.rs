//! Logs and traces.
//!
//! Logs: JSON lines (`AGORA_LOG_FORMAT=text` for people) filtered by
//! `RUST_LOG` (default `info`), with `trace_id` and `span_id` when written
//! inside a traced call. Command-line tools log human text to stderr at
//! `warn` unless `RUST_LOG` asks for more.
//!
//! Lines are written by a background thread through a bounded buffer, so a
//! request never waits on stdout (a slow log collector, a full pipe). When
//! the buffer is full, lines are dropped rather than queued without bound;
//! `agora_log_lines_dropped_total` counts them.
//!
//! Traces: see [`crate::trace`].

use std::{fmt, time::Duration};

use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::{FilterExt as _, Targets, filter_fn},
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::{self, Writer},
    },
    prelude::*,
    registry::LookupSpan,
};

use crate::trace::{SqlSpans, Tracing};

/// Lines the log buffer holds before it drops new ones.
const BUFFERED_LINES: usize = 64 * 1024;

/// What the process is: a server (JSON logs to stdout, traces) or a
/// command-line tool (text to stderr, quiet).
pub enum Mode<'a> {
    /// Serving; the service names (`agora-edge`, …) of its components.
    Serve(&'a [&'static str]),
    Cli,
}

/// Keeps logging and tracing alive; dropping it flushes both.
pub struct Telemetry {
    // Field order is drop order: spans first (their export may log), then
    // the log writer.
    _tracing: Option<Tracing>,
    _log: WorkerGuard,
}

/// Installs the global subscriber. Call once, inside the Tokio runtime
/// (trace export runs on it), and keep the guard until the process ends.
pub fn init(mode: Mode<'_>) -> Telemetry {
    let components = match mode {
        Mode::Cli => return init_cli(),
        Mode::Serve(components) => components,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let log_level = filter.max_level_hint();
    let json = std::env::var("AGORA_LOG_FORMAT")
        .map(|f| f != "text")
        .unwrap_or(true);
    let (writer, log_guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("log-writer")
        .finish(std::io::stdout());
    let dropped = writer.error_counter();
    // Logs take events only: formatting every span's fields for lines
    // that may never be written would cost each request.
    let filter = filter.and(filter_fn(|meta| meta.is_event()));
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .event_format(WithTraceIds(
                format::format()
                    .json()
                    .with_current_span(false)
                    .with_span_list(false),
            ))
            .with_writer(writer)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_filter(filter)
            .boxed()
    };
    let (tracing, trace_error) = match crate::trace::pipeline(components) {
        Ok(t) => (t, None),
        Err(e) => (None, Some(e)),
    };
    let spans = tracing.as_ref().map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t.tracer())
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_error_events_to_exceptions(false)
            .with_filter(filter_fn(|meta| {
                meta.target().starts_with("agora")
                    && (meta.is_span() || *meta.level() <= tracing::Level::WARN)
            }))
    });
    let sql = tracing.as_ref().map(|t| {
        SqlSpans::new(t.tracer())
            .with_filter(Targets::new().with_target("sqlx::query", tracing::Level::DEBUG))
    });
    let acquires = AcquireTimes
        .with_filter(Targets::new().with_target("sqlx::pool::acquire", tracing::Level::TRACE));
    tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .with(sql)
        .with(acquires)
        .init();
    // Records of the `log` crate (tungstenite logs every frame at trace)
    // reach the subscriber only up to the log filter's level. The pool's
    // trace-level events are tracing events, not log records, so they are
    // unaffected; without this cap each record would cost a dispatcher
    // lookup on the hot path.
    log::set_max_level(match log_level {
        Some(level) if level >= tracing::level_filters::LevelFilter::TRACE => {
            log::LevelFilter::Trace
        }
        Some(level) if level >= tracing::level_filters::LevelFilter::DEBUG => {
            log::LevelFilter::Debug
        }
        Some(level) if level >= tracing::level_filters::LevelFilter::INFO => log::LevelFilter::Info,
        Some(level) if level >= tracing::level_filters::LevelFilter::WARN => log::LevelFilter::Warn,
        Some(level) if level >= tracing::level_filters::LevelFilter::ERROR => {
            log::LevelFilter::Error
        }
        Some(_) => log::LevelFilter::Off,
        None => log::LevelFilter::Trace,
    });
    if let Some(e) = trace_error {
        tracing::warn!(error = format!("{e:#}"), "trace export is off");
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
    Telemetry {
        _tracing: tracing,
        _log: log_guard,
    }
}

fn init_cli() -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let (writer, log_guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .without_time()
                .with_target(false)
                .with_writer(writer)
                .with_filter(filter),
        )
        .init();
    Telemetry {
        _tracing: None,
        _log: log_guard,
    }
}

/// Puts `trace_id` and `span_id` first in each JSON line written inside a
/// traced span.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // The dispatcher's current span: this layer sees no spans itself.
        let Some((trace_id, span_id)) = crate::trace::current_ids() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}

/// Turns sqlx's per-acquire events into `agora_db_pool_acquire_seconds`
/// (by the service whose call waited), the time a caller waited for a
/// database connection.
struct AcquireTimes;

struct AcquiredAfter(Option<f64>);

impl tracing::field::Visit for AcquiredAfter {
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        if field.name() == "acquired_after_secs" {
            self.0 = Some(value);
        }
    }

    fn record_debug(&mut self, _field: &tracing::field::Field, _value: &dyn fmt::Debug) {}
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for AcquireTimes {
    fn on_event(&self, event: &Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        let mut after = AcquiredAfter(None);
        event.record(&mut after);
        if let Some(secs) = after.0 {
            let service = crate::trace::current_component().trim_start_matches("agora-");
            metrics::histogram!("agora_db_pool_acquire_seconds", "service" => service).record(secs);
        }
    }
}
