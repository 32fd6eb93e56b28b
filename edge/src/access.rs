//! The edge's record of every request: `http_request_duration_seconds`,
//! `http_requests_total` and `active_connections_total`, labelled by route
//! template so unknown paths cannot grow the label set, and one access log
//! line per request.

use std::{
    sync::{Arc, LazyLock},
    time::Instant,
};

use agora_kit::metrics::HandleCache;
use axum::{extract::Request, middleware::Next, response::Response};
use http::{Method, StatusCode};
use metrics::{Counter, Histogram};
use opentelemetry::trace::TraceContextExt as _;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::proxy::RouteLabel;

/// `http_request_duration_seconds`, `http_requests_total` and
/// `active_connections_total` (requests in flight), labelled by route
/// template so unknown paths cannot grow the label set, plus one access
/// log line per request.
pub async fn record_metrics(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let request_id: Arc<str> = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .into();
    // The server span, a child of the client's `traceparent` if it sent
    // one; named by route template once routing has found it.
    // Health probes would fill the trace store with noise.
    let span = if path == "/health" {
        tracing::Span::none()
    } else {
        tracing::info_span!(
            "http.server",
            otel.name = method.as_str(),
            otel.kind = "server",
            http.request.method = method.as_str(),
            http.route = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            url.path = path.as_str(),
            request_id = &*request_id,
            otel.status_code = tracing::field::Empty,
        )
    };
    let parent = agora_kit::trace::extract(req.headers());
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    // A guard, so a request whose client went away still leaves the gauge.
    let _in_flight = InFlight::enter();
    let started = Instant::now();
    let mut resp = agora_kit::trace::in_component(
        crate::COMPONENT,
        REQUEST_ID.scope(request_id.clone(), next.run(req).instrument(span.clone())),
    )
    .await;
    let elapsed = started.elapsed();
    let route: Arc<str> = match path.as_str() {
        "/health" => Arc::clone(&HEALTH_LABEL),
        "/api/v1/openapi.json" => Arc::clone(&OPENAPI_LABEL),
        // The embedded pages: one label each, whatever the file.
        p if p.starts_with("/api/v1/docs") => Arc::clone(&DOCS_LABEL),
        p if p == "/admin" || p.starts_with("/admin/") => Arc::clone(&DASHBOARD_LABEL),
        _ => resp
            .extensions()
            .get::<RouteLabel>()
            .map_or_else(|| Arc::clone(&UNMATCHED_LABEL), |r| r.0.clone()),
    };
    let status = resp.status();
    span.record("http.route", &*route);
    // Started spans take a new name through OpenTelemetry itself.
    span.context()
        .span()
        .update_name(format!("{method} {route}"));
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    // W3C Trace Context level 2: the client learns the trace of its call.
    if let Some(value) =
        agora_kit::trace::traceparent(&span).and_then(|t| http::HeaderValue::from_str(&t).ok())
    {
        resp.headers_mut().insert("traceresponse", value);
    }
    span.in_scope(|| {
        tracing::info!(
            target: "agora_edge::access",
            %method, %path, %route, status = status.as_u16(), latency_ms = elapsed.as_secs_f64() * 1e3, request_id = &*request_id,
            "request"
        )
    });
    let method = method_label(&method);
    let (histogram, counter) = HTTP_HANDLES.get(&(route.clone(), method, status), || {
        let labels = [
            ("method", method.to_owned()),
            ("route", route.to_string()),
            ("status_code", status.as_str().to_owned()),
        ];
        (
            (route.clone(), method, status),
            (
                metrics::histogram!("http_request_duration_seconds", &labels),
                metrics::counter!("http_requests_total", &labels),
            ),
        )
    });
    histogram.record(elapsed.as_secs_f64());
    counter.increment(1);
    resp
}

tokio::task_local! {
    static REQUEST_ID: Arc<str>;
}

/// The request being answered: its id and, when traced, its trace id.
pub fn current_request() -> Option<(String, Option<String>)> {
    let id = REQUEST_ID.try_with(|id| id.to_string()).ok()?;
    Some((id, agora_kit::trace::current_ids().map(|(trace, _)| trace)))
}

/// The `method` label: standard methods by name, anything else as `OTHER`,
/// so clients cannot add label values.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Request metrics by (route template, method, status): bounded by the
/// route table.
type HttpHandles = HandleCache<(Arc<str>, &'static str, StatusCode), (Histogram, Counter)>;
static HTTP_HANDLES: LazyLock<HttpHandles> = LazyLock::new(HandleCache::new);

static HEALTH_LABEL: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("/health"));
static OPENAPI_LABEL: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("/api/v1/openapi.json"));
static DOCS_LABEL: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("/api/v1/docs/*"));
static DASHBOARD_LABEL: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("/admin/*"));
static UNMATCHED_LABEL: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("unmatched"));

struct InFlight(&'static metrics::Gauge);

impl InFlight {
    fn enter() -> Self {
        static GAUGE: LazyLock<metrics::Gauge> =
            LazyLock::new(|| metrics::gauge!("active_connections_total"));
        GAUGE.increment(1.0);
        Self(&GAUGE)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
