//! Distributed traces: OpenTelemetry spans from `tracing`, exported by
//! OTLP/gRPC, with W3C trace context carried across calls.
//!
//! - Export is configured only by the standard variables
//!   (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`,
//!   `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`/`_ARG`,
//!   `OTEL_BSP_*`). Without an endpoint, tracing is off and costs nothing:
//!   no spans are recorded, and the edge passes a client's trace context on
//!   unchanged.
//! - Each component of the process reports its own `service.name`
//!   (`agora-edge`, `agora-catalog`, …): work runs inside
//!   [`in_component`], and each span goes to the exporter of the component
//!   it started in. `OTEL_SERVICE_NAME`, when set, names them all.
//! - Export is batched on background threads through bounded queues; a
//!   span that finds its queue full is dropped and counted
//!   (`agora_trace_spans_dropped_total`), so a slow or dead collector never
//!   holds up a request.
//! - SQL statements become client spans (from sqlx's per-statement events:
//!   operation and table, never bound values).

use std::{
    borrow::Cow,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use opentelemetry::{
    Context, KeyValue,
    propagation::{Extractor, Injector, TextMapPropagator as _},
    trace::{SpanKind, TraceContextExt as _, Tracer as _},
};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{
        BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, Span, SpanData,
        SpanExporter, SpanProcessor,
    },
};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{layer::Context as LayerContext, registry::LookupSpan};

/// The attribute that carries a span's component from start to export.
const COMPONENT_KEY: &str = "agora.component";
/// The component of work outside any [`in_component`] scope.
const PROCESS_COMPONENT: &str = "agora";

tokio::task_local! {
    static COMPONENT: &'static str;
}

/// Runs `fut` as work of `component` (its `service.name`, e.g.
/// `agora-catalog`): spans started inside are exported under that name.
pub async fn in_component<F: Future>(component: &'static str, fut: F) -> F::Output {
    COMPONENT.scope(component, fut).await
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are recorded (an OTLP endpoint is set).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The component whose work is running (`agora` outside any).
pub fn current_component() -> &'static str {
    COMPONENT.try_with(|c| *c).unwrap_or(PROCESS_COMPONENT)
}

/// The trace pipeline of the process; dropping it flushes what is queued.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// A tracer for the `tracing` layer.
    pub fn tracer(&self) -> SdkTracer {
        use opentelemetry::trace::TracerProvider as _;
        self.provider.tracer("agora")
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        let _ = self.provider.shutdown_with_timeout(Duration::from_secs(5));
    }
}

/// Builds the pipeline for `components` (the process's targets' service
/// names). Call inside the Tokio runtime: exports run on it. `None` when
/// no OTLP endpoint is set: tracing is off.
pub fn pipeline(components: &[&'static str]) -> anyhow::Result<Option<Tracing>> {
    let endpoint_set = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|v| !v.trim().is_empty()));
    if !endpoint_set {
        return Ok(None);
    }
    ENABLED.store(true, Ordering::Relaxed);
    let mut builder = SdkTracerProvider::builder().with_resource(Resource::builder().build());
    {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow::anyhow!("trace export needs the Tokio runtime"))?;
        let max_queue = std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2048usize);
        let mut routes = Vec::new();
        let names = components
            .iter()
            .copied()
            .chain([PROCESS_COMPONENT])
            .collect::<Vec<_>>();
        for name in names {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()?;
            let gate = Arc::new(Gate::new(name, max_queue));
            let processor = BatchSpanProcessor::builder(Counted {
                inner: exporter,
                handle: handle.clone(),
                gate: gate.clone(),
            })
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(max_queue)
                    .build(),
            )
            .build();
            routes.push(Route {
                name,
                processor,
                gate,
            });
        }
        builder = builder.with_span_processor(Router {
            routes,
            default: components
                .first()
                .copied()
                .filter(|_| components.len() == 1),
        });
    }
    Ok(Some(Tracing {
        provider: builder.build(),
    }))
}

/// Counts the spans waiting in one component's export queue, so that a
/// full queue drops a span here, counted, before the batch processor
/// would drop it silently.
struct Gate {
    name: &'static str,
    pending: AtomicUsize,
    max: usize,
    failing: AtomicBool,
    dropped: metrics::Counter,
}

impl Gate {
    fn new(name: &'static str, max: usize) -> Self {
        Self {
            name,
            pending: AtomicUsize::new(0),
            max,
            failing: AtomicBool::new(false),
            dropped: metrics::counter!("agora_trace_spans_dropped_total", "service" => name),
        }
    }

    fn admit(&self) -> bool {
        let admitted = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            self.dropped.increment(1);
        }
        admitted
    }

    fn exported(&self, n: usize, result: &OTelSdkResult) {
        self.pending.fetch_sub(n, Ordering::AcqRel);
        match result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(service = self.name, "trace export works again");
                }
            }
            Err(e) => {
                self.dropped.increment(n as u64);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(service = self.name, error = %e, "trace export failing; spans are dropped until it works");
                }
            }
        }
    }
}

/// The OTLP exporter of one component, run on the Tokio runtime (the batch
/// processor's thread has none), counting what it could not send.
struct Counted<E> {
    inner: E,
    handle: tokio::runtime::Handle,
    gate: Arc<Gate>,
}

impl<E> fmt::Debug for Counted<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counted")
            .field("service", &self.gate.name)
            .finish()
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = InRuntime {
            handle: &self.handle,
            fut: std::pin::pin!(self.inner.export(batch)),
        }
        .await;
        self.gate.exported(n, &result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Each component names itself, unless the operator named the
        // service with OTEL_SERVICE_NAME.
        if std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty()) {
            self.inner.set_resource(resource);
            return;
        }
        let own = Resource::builder_empty()
            .with_attributes(
                resource
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .with_service_name(self.gate.name)
            .build();
        self.inner.set_resource(&own);
    }
}

/// Polls a future inside the runtime's context, so I/O it starts registers
/// with the runtime's reactor.
struct InRuntime<'a, F> {
    handle: &'a tokio::runtime::Handle,
    fut: std::pin::Pin<&'a mut F>,
}

impl<F: Future> Future for InRuntime<'_, F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let _entered = self.handle.enter();
        self.fut.as_mut().poll(cx)
    }
}

struct Route {
    name: &'static str,
    processor: BatchSpanProcessor,
    gate: Arc<Gate>,
}

/// Sends each span to the batch processor of the component it started in.
struct Router {
    routes: Vec<Route>,
    /// Where spans outside any component go when the process runs one.
    default: Option<&'static str>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.routes.iter().map(|r| r.name))
            .finish()
    }
}

impl Router {
    fn route(&self, name: &str) -> &Route {
        let name = match (name, self.default) {
            (PROCESS_COMPONENT, Some(default)) => default,
            _ => name,
        };
        self.routes
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| &self.routes[self.routes.len() - 1])
    }
}

impl SpanProcessor for Router {
    fn on_start(&self, span: &mut Span, _cx: &Context) {
        let component = current_component();
        opentelemetry::trace::Span::set_attribute(span, KeyValue::new(COMPONENT_KEY, component));
    }

    fn on_end(&self, mut span: SpanData) {
        let mut component = Cow::Borrowed(PROCESS_COMPONENT);
        if let Some(i) = span
            .attributes
            .iter()
            .position(|kv| kv.key.as_str() == COMPONENT_KEY)
        {
            component = Cow::Owned(span.attributes.swap_remove(i).value.as_str().into_owned());
        }
        let route = self.route(&component);
        if route.gate.admit() {
            route.processor.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Every route, even after one failed; the first error is reported.
        let results: Vec<_> = self
            .routes
            .iter()
            .map(|r| r.processor.force_flush())
            .collect();
        results.into_iter().collect()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let results: Vec<_> = self
            .routes
            .iter()
            .map(|r| r.processor.shutdown_with_timeout(timeout))
            .collect();
        results.into_iter().collect()
    }

    fn set_resource(&mut self, resource: &Resource) {
        for route in &mut self.routes {
            route.processor.set_resource(resource);
        }
    }
}

// --- W3C trace context in HTTP headers and gRPC metadata -----------------

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The remote parent named by `traceparent`/`tracestate` in `headers`.
pub fn extract(headers: &http::HeaderMap) -> Context {
    if !enabled() {
        return Context::new();
    }
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Makes `span` a child of the remote span named by a `traceparent` value
/// (one carried in a message rather than in headers); nothing when the
/// value is not a valid trace context.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    if !enabled() {
        return;
    }
    let Ok(value) = http::HeaderValue::from_str(traceparent) else {
        return;
    };
    let mut headers = http::HeaderMap::with_capacity(1);
    headers.insert("traceparent", value);
    let parent = extract(&headers);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Writes the current span's context into `headers` (nothing when there is
/// no current span).
pub fn inject_current(headers: &mut http::HeaderMap) {
    if !enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    }
}

/// The current span's `traceparent` value, if there is a current span.
pub fn current_traceparent() -> Option<String> {
    traceparent(&tracing::Span::current())
}

/// `span`'s `traceparent` value (W3C Trace Context), if it has an id.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The trace and span id of the current span, for log lines.
pub fn current_ids() -> Option<(String, String)> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

// --- The server span of each gRPC call -----------------------------------

/// Serves each call inside a server span named `package.Service/Method`
/// (child of the caller's `traceparent`), as work of `component`.
#[derive(Debug, Clone, Copy)]
pub struct ServerSpanLayer {
    component: &'static str,
}

impl ServerSpanLayer {
    pub fn new(component: &'static str) -> Self {
        Self { component }
    }
}

impl<S> tower::Layer<S> for ServerSpanLayer {
    type Service = ServerSpans<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerSpans {
            inner,
            component: self.component,
        }
    }
}

/// See [`ServerSpanLayer`].
#[derive(Debug, Clone)]
pub struct ServerSpans<S> {
    inner: S,
    component: &'static str,
}

impl<S, B> tower::Service<http::Request<B>> for ServerSpans<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        use tracing::Instrument as _;
        let path = req.uri().path();
        let component = self.component;
        // Probes and reflection would fill the trace store with noise.
        if !enabled() || path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
        {
            return Box::pin(in_component(component, self.inner.call(req)));
        }
        let span = rpc_span(path, true);
        let parent = extract(req.headers());
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
        // Entering starts the span: inside the component, so it reports
        // as that component even when called in process by another.
        let fut = COMPONENT.sync_scope(component, || {
            let _entered = span.enter();
            self.inner.call(req)
        });
        Box::pin(in_component(
            component,
            async move {
                let resp = fut.await?;
                record_grpc_status(&tracing::Span::current(), resp.headers(), true);
                Ok(resp)
            }
            .instrument(span),
        ))
    }
}

/// The span of one gRPC call to or from `path` (`/package.Service/Method`),
/// per the RPC conventions. Client spans may record `agora.upstream` and
/// `agora.attempt`.
pub fn rpc_span(path: &str, server: bool) -> tracing::Span {
    let full = path.trim_start_matches('/');
    let (service, method) = full.split_once('/').unwrap_or((full, ""));
    tracing::info_span!(
        "grpc",
        otel.name = full,
        otel.kind = if server { "server" } else { "client" },
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        agora.upstream = tracing::field::Empty,
        agora.attempt = tracing::field::Empty,
    )
}

/// Records the gRPC status a response carries in its headers (how calls
/// fail; a success says so in its trailers) on `span`. Server spans count
/// only the server's own faults as errors; client spans count any failure.
pub fn record_grpc_status(span: &tracing::Span, headers: &http::HeaderMap, server: bool) {
    let code = crate::failure::header_code(headers) as i32;
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| percent_encoding::percent_decode_str(m).decode_utf8_lossy());
    record_code(span, code, message.as_deref(), server);
}

/// Records gRPC status `code` (and its message) on `span`.
pub fn record_code(span: &tracing::Span, code: i32, message: Option<&str>, server: bool) {
    span.record("rpc.grpc.status_code", code);
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
    // DATA_LOSS: the server's fault, per the RPC conventions.
    let error = if server {
        matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
    } else {
        code != 0
    };
    if error {
        span.record("otel.status_code", "error");
        match message {
            Some(m) => span.record("otel.status_description", m),
            None => span.record(
                "otel.status_description",
                format!("{:?}", tonic::Code::from_i32(code)),
            ),
        };
    }
}

// --- SQL statements as spans ---------------------------------------------

/// Turns sqlx's per-statement events (target `sqlx::query`, emitted when a
/// statement finishes, with its duration) into client spans under the
/// current span, named and attributed per the database conventions.
pub struct SqlSpans {
    tracer: SdkTracer,
}

impl SqlSpans {
    pub fn new(tracer: SdkTracer) -> Self {
        Self { tracer }
    }
}

#[derive(Default)]
struct Statement {
    summary: String,
    statement: String,
    elapsed: f64,
    rows: Option<i64>,
}

impl tracing::field::Visit for Statement {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "summary" => value.clone_into(&mut self.summary),
            "db.statement" => value.clone_into(&mut self.statement),
            _ => {}
        }
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed = value;
        }
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "rows_returned" || field.name() == "rows_affected" {
            self.rows = Some(self.rows.unwrap_or(0) + value as i64);
        }
    }

    fn record_debug(&mut self, _field: &tracing::field::Field, _value: &dyn fmt::Debug) {}
}

impl<S> tracing_subscriber::Layer<S> for SqlSpans
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: LayerContext<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        let parent = tracing::Span::current().context();
        if !parent.span().span_context().is_valid() {
            // Statements outside a traced call (migrations, sweeps) would
            // each start a trace of their own: noise.
            return;
        }
        let mut stmt = Statement::default();
        event.record(&mut stmt);
        let sql = if stmt.statement.trim().is_empty() {
            stmt.summary.trim_end_matches(" …").to_owned()
        } else {
            stmt.statement.trim().to_owned()
        };
        let (operation, table) = describe_sql(&sql);
        let name = match &table {
            Some(t) => format!("{operation} {t}"),
            None => operation.clone(),
        };
        let end = SystemTime::now();
        let start = end - Duration::from_secs_f64(stmt.elapsed.max(0.0));
        let mut attributes = vec![
            KeyValue::new("db.system", "postgresql"),
            KeyValue::new("db.system.name", "postgresql"),
            KeyValue::new("db.operation.name", operation),
            KeyValue::new("db.query.text", sql),
        ];
        if let Some(t) = table {
            attributes.push(KeyValue::new("db.collection.name", t));
        }
        if let Some(rows) = stmt.rows {
            attributes.push(KeyValue::new("db.response.returned_rows", rows));
        }
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        opentelemetry::trace::Span::end_with_timestamp(&mut span, end);
    }
}

/// The operation (first keyword) and main table of a SQL statement, as the
/// conventions name them; `WITH` queries are named by what follows.
fn describe_sql(sql: &str) -> (String, Option<String>) {
    let words: Vec<&str> = sql.split_whitespace().collect();
    let operation = words
        .first()
        .map(|w| w.trim_end_matches(';').to_ascii_uppercase())
        .unwrap_or_else(|| "SQL".to_owned());
    let after = |keyword: &str| {
        words
            .iter()
            .position(|w| w.eq_ignore_ascii_case(keyword))
            .and_then(|i| words.get(i + 1))
            .map(|t| {
                t.trim_matches(|c: char| c == '(' || c == ')' || c == ';' || c == '"')
                    .to_owned()
            })
            .filter(|t| !t.is_empty() && !t.starts_with('$'))
    };
    let table = match operation.as_str() {
        "SELECT" | "DELETE" => after("FROM"),
        "INSERT" => after("INTO"),
        "UPDATE" => words.get(1).map(|t| t.trim_matches('"').to_owned()),
        _ => None,
    };
    (operation, table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_named_by_operation_and_table() {
        assert_eq!(
            describe_sql("SELECT id, name FROM catalog.products WHERE id = $1"),
            ("SELECT".to_owned(), Some("catalog.products".to_owned()))
        );
        assert_eq!(
            describe_sql("insert into users.outbox (id) values ($1)"),
            ("INSERT".to_owned(), Some("users.outbox".to_owned()))
        );
        assert_eq!(
            describe_sql("UPDATE catalog.products SET stock = stock - $1"),
            ("UPDATE".to_owned(), Some("catalog.products".to_owned()))
        );
        assert_eq!(describe_sql("BEGIN").0, "BEGIN");
        assert_eq!(describe_sql("BEGIN").1, None);
    }
}
