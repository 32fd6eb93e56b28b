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

use crate::proxy::RouteLabel;

/// `http_request_duration_seconds`, `http_requests_total` and
/// `active_connections_total` (requests in flight), labelled by route
/// template so unknown paths cannot grow the label set, plus one access
/// log line per request.
pub async fn record_metrics(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    // A guard, so a request whose client went away still leaves the gauge.
    let _in_flight = InFlight::enter();
    let started = Instant::now();
    let resp = next.run(req).await;
    let elapsed = started.elapsed();
    let route: Arc<str> = match path.as_str() {
        "/health" => Arc::clone(&HEALTH_LABEL),
        "/api/v1/openapi.json" => Arc::clone(&OPENAPI_LABEL),
        _ => resp
            .extensions()
            .get::<RouteLabel>()
            .map_or_else(|| Arc::clone(&UNMATCHED_LABEL), |r| r.0.clone()),
    };
    let status = resp.status();
    tracing::info!(
        target: "agora_edge::access",
        %method, %path, %route, status = status.as_u16(), latency_ms = elapsed.as_secs_f64() * 1e3, request_id,
        "request"
    );
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
