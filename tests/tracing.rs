//! Traces as an operator sees them in Jaeger: real `agora` processes export
//! by OTLP/gRPC to a collector in this test (a tonic `TraceService` from the
//! published opentelemetry-proto definitions), and a REST call with a given
//! `traceparent` becomes one trace across the edge, the services and SQL.

mod common;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::*;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value as Any},
    trace::v1::{Span, span::SpanKind},
};
use reqwest::StatusCode;
use serde_json::json;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A span as received, with the `service.name` of its resource.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    /// `deployment.environment` of the resource, if set.
    environment: Option<String>,
    span: Span,
}

impl Received {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
        .map(|v| match v {
            Any::StringValue(s) => s.clone(),
            Any::IntValue(i) => i.to_string(),
            Any::BoolValue(b) => b.to_string(),
            Any::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            let environment = rs
                .resource
                .as_ref()
                .and_then(|r| attr(&r.attributes, "deployment.environment"));
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Received {
                        service: service.clone(),
                        environment: environment.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start() -> (Self, SocketAddr) {
        let collector = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (collector, addr)
    }

    /// The spans of `trace_id`, once `pred` holds for them (within 10 s).
    async fn trace(&self, trace_id: &str, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans: Vec<Received> = self
                .spans
                .lock()
                .expect("lock")
                .iter()
                .filter(|s| s.trace_id() == trace_id)
                .cloned()
                .collect();
            if pred(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "the trace never became complete; got {:?}; all spans received: {:?}",
                spans
                    .iter()
                    .map(|s| (&s.service, &s.span.name))
                    .collect::<Vec<_>>(),
                self.spans
                    .lock()
                    .expect("lock")
                    .iter()
                    .map(|s| (s.service.clone(), s.span.name.clone(), s.trace_id()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn otel_env(collector: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
        // Export soon after each span ends, so the test does not wait 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ]
}

/// A catalog process and an edge process in front of it, both exporting
/// to `otlp`.
async fn traced_edge_and_catalog(
    mesh: &TestMesh,
    otlp: SocketAddr,
) -> (AgoraProcess, AgoraProcess) {
    let env = otel_env(otlp);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let catalog = mesh.spawn_process("catalog", free_port(), &env).await;
    let catalog_url = catalog.grpc_url();
    let mut edge_env = env.clone();
    edge_env.push(("AGORA_EDGE_CATALOG_URL", &catalog_url));
    let edge = mesh.spawn_process("edge", free_port(), &edge_env).await;
    (catalog, edge)
}

fn find(spans: &[Received], f: impl Fn(&Received) -> bool) -> Option<&Received> {
    spans.iter().find(|s| f(s))
}

fn server_span<'a>(spans: &'a [Received], service: &str) -> Option<&'a Received> {
    find(spans, |s| {
        s.service == service && s.span.kind == SpanKind::Server as i32
    })
}

/// Asserts the shape every traced product read has: edge route span →
/// upstream attempt → catalog handler → SQL.
fn assert_product_read(spans: &[Received]) {
    let edge = server_span(spans, "agora-edge").expect("edge server span");
    assert_eq!(
        edge.parent_id(),
        "00f067aa0ba902b7",
        "child of the client's span"
    );
    assert_eq!(edge.span.name, "GET /api/v1/products/{id}");
    assert_eq!(
        edge.attr("http.route").as_deref(),
        Some("/api/v1/products/{id}")
    );
    assert_eq!(edge.attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(
        edge.attr("http.response.status_code").as_deref(),
        Some("200")
    );

    let attempt = find(spans, |s| {
        s.service == "agora-edge"
            && s.span.kind == SpanKind::Client as i32
            && s.attr("rpc.system").as_deref() == Some("grpc")
    })
    .expect("upstream attempt span");
    assert_eq!(attempt.parent_id(), edge.span_id());
    assert_eq!(
        attempt.span.name,
        "agora.catalog.v1.CatalogService/GetProduct"
    );
    assert_eq!(attempt.attr("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(attempt.attr("rpc.grpc.status_code").as_deref(), Some("0"));

    let handler = server_span(spans, "agora-catalog").expect("catalog server span");
    assert_eq!(handler.parent_id(), attempt.span_id());
    assert_eq!(
        handler.attr("rpc.service").as_deref(),
        Some("agora.catalog.v1.CatalogService")
    );
    assert_eq!(handler.attr("rpc.method").as_deref(), Some("GetProduct"));

    let redis = find(spans, |s| {
        s.service == "agora-catalog" && s.attr("db.system").as_deref() == Some("redis")
    })
    .expect("Redis span of the cache lookup");
    assert_eq!(redis.parent_id(), handler.span_id());
    assert_eq!(redis.span.name, "GET");

    let sql = find(spans, |s| {
        s.service == "agora-catalog"
            && s.attr("db.system").as_deref() == Some("postgresql")
            && s.attr("db.operation.name").as_deref() == Some("SELECT")
    })
    .expect("SQL span of the product query");
    assert_eq!(sql.parent_id(), handler.span_id());
    assert_eq!(sql.span.kind, SpanKind::Client as i32);
    assert!(sql.span.name.starts_with("SELECT"), "{}", sql.span.name);
    let text = sql.attr("db.query.text").unwrap_or_default();
    assert!(text.contains("$1"), "placeholders, never values: {text}");
}

fn complete(spans: &[Received]) -> bool {
    server_span(spans, "agora-edge").is_some()
        && server_span(spans, "agora-catalog").is_some()
        && spans
            .iter()
            .any(|s| s.attr("db.operation.name").as_deref() == Some("SELECT"))
}

/// A product in a new category; its id.
async fn new_product(mesh: &TestMesh, staff: &str, slug: &str) -> String {
    let category = category(mesh, staff, slug, None).await;
    let sku = format!("SKU-{slug}");
    let p = product(mesh, staff, &sku, "Traced lamp", &category, 1000, 5).await;
    p["id"].as_str().expect("id").to_owned()
}

async fn traced_read(mesh: &TestMesh, edge: &str, id: &str) -> reqwest::Response {
    mesh.http
        .get(format!("{edge}/api/v1/products/{id}"))
        .header("traceparent", PARENT)
        .send()
        .await
        .expect("edge answers")
}

#[tokio::test]
async fn one_rest_call_is_one_trace_across_edge_catalog_and_sql_in_separate_processes() {
    let (collector, otlp) = Collector::start().await;
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let id = new_product(&mesh, &staff, "traced").await;

    let (_catalog, edge) = traced_edge_and_catalog(&mesh, otlp).await;

    let resp = traced_read(&mesh, &edge.url(""), &id).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let traceresponse = resp
        .headers()
        .get("traceresponse")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        traceresponse.starts_with(&format!("00-{TRACE_ID}-")),
        "the edge names the trace: {traceresponse:?}"
    );

    let spans = collector.trace(TRACE_ID, complete).await;
    assert_product_read(&spans);
    let edge_span = server_span(&spans, "agora-edge").expect("edge span");
    assert!(
        traceresponse.contains(&edge_span.span_id()),
        "traceresponse names the edge's span: {traceresponse}"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn components_in_one_process_report_their_own_service_names() {
    let (collector, otlp) = Collector::start().await;
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let id = new_product(&mesh, &staff, "one-process").await;

    // Edge and catalog in one process: the edge calls the catalog in
    // process, and each still reports as itself.
    let catalog_port = free_port();
    let mut env = otel_env(otlp);
    env.push(("AGORA_CATALOG_ADDR", format!("127.0.0.1:{catalog_port}")));
    env.push((
        "OTEL_RESOURCE_ATTRIBUTES",
        "deployment.environment=ci".to_owned(),
    ));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let edge = mesh.spawn_process("edge,catalog", free_port(), &env).await;

    let resp = traced_read(&mesh, &edge.url(""), &id).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let spans = collector.trace(TRACE_ID, complete).await;
    assert_product_read(&spans);
    // The operator's resource attributes reach every component's spans.
    assert!(
        spans.iter().all(|s| s.environment.as_deref() == Some("ci")),
        "{:?}",
        spans
            .iter()
            .map(|s| (&s.service, &s.environment))
            .collect::<Vec<_>>()
    );
    mesh.stop().await;
}

#[tokio::test]
async fn errors_mark_spans_and_bodies_name_the_request_and_trace() {
    let (collector, otlp) = Collector::start().await;
    let mesh = spawn_mesh().await;
    let (_catalog, edge) = traced_edge_and_catalog(&mesh, otlp).await;

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let resp = mesh
        .http
        .get(edge.url("/api/v1/products/00000000-0000-7000-8000-000000000000"))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .header("x-request-id", "bug-report-42")
        .send()
        .await
        .expect("edge answers");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = resp.json().await.expect("json");
    let info = body["details"]
        .as_array()
        .and_then(|d| {
            d.iter()
                .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RequestInfo")
        })
        .cloned()
        .unwrap_or_default();
    assert_eq!(info["requestId"], "bug-report-42", "{body}");
    assert_eq!(
        info["servingData"],
        format!("trace_id={trace_id}"),
        "{body}"
    );

    let spans = collector
        .trace(trace_id, |s| {
            server_span(s, "agora-catalog").is_some() && server_span(s, "agora-edge").is_some()
        })
        .await;
    let attempt = find(&spans, |s| {
        s.span.kind == SpanKind::Client as i32 && s.service == "agora-edge"
    })
    .expect("attempt");
    assert_eq!(attempt.attr("rpc.grpc.status_code").as_deref(), Some("5"));
    // A client span fails with its call; NOT_FOUND is no fault of the server.
    assert_eq!(attempt.span.status.as_ref().map(|s| s.code), Some(2));
    let handler = server_span(&spans, "agora-catalog").expect("handler");
    assert_ne!(handler.span.status.as_ref().map(|s| s.code), Some(2));
    mesh.stop().await;
}

/// Creates a product through `edge` as part of the trace `trace_id`.
async fn traced_product(
    mesh: &TestMesh,
    edge: &AgoraProcess,
    staff: &str,
    category: &str,
    trace_id: &str,
    sku: &str,
) {
    let resp = mesh
        .http
        .post(edge.url("/api/v1/products"))
        .bearer_auth(staff)
        .header("traceparent", format!("00-{trace_id}-051581bf3cb55c13-01"))
        .json(&json!({
            "sku": sku, "name": format!("Lamp {sku}"), "description": "", "categoryId": category,
            "price": {"currency": "EUR", "amountMinor": "1000"}
        }))
        .send()
        .await
        .expect("edge answers");
    assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.text().await);
}

#[tokio::test]
async fn outbox_rows_carry_the_trace_of_the_write() {
    let (_collector, otlp) = Collector::start().await;
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let category = category(&mesh, &staff, "outboxed", None).await;
    let (_catalog, edge) = traced_edge_and_catalog(&mesh, otlp).await;

    let trace_id = "5b8aa5a2d2c872e8321cf37308d69df2";
    traced_product(&mesh, &edge, &staff, &category, trace_id, "OUTBOX-1").await;

    let pool = sqlx::PgPool::connect(&mesh.database.url).await.expect("db");
    let rows: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT traceparent FROM catalog.outbox WHERE event_type = 'catalog.product_created' ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_all(&pool)
    .await
    .expect("outbox");
    let traceparent = rows.into_iter().flatten().next().unwrap_or_default();
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "the event continues the write's trace: {traceparent:?}"
    );
    pool.close().await;
    mesh.stop().await;
}

#[tokio::test]
async fn a_consumed_event_continues_the_trace_of_its_write() {
    if std::env::var("AWS_ENDPOINT_URL_SQS").is_err() {
        eprintln!("AWS_ENDPOINT_URL_SQS is not set; run through scripts/test.sh");
        return;
    }
    let (collector, otlp) = Collector::start().await;
    // Only the traced processes below publish and consume events.
    let mesh = spawn_mesh_with(|c| c.events.queue = String::new()).await;
    let staff = staff(&mesh).await;
    let category = category(&mesh, &staff, "consumed", None).await;
    let queue = format!("{}-traced", mesh.db_name);
    let mut env = otel_env(otlp);
    env.push(("AGORA_EVENTS_QUEUE", queue));
    env.push(("AGORA_OUTBOX_POLL_MS", "50".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let catalog = mesh.spawn_process("catalog", free_port(), &env).await;
    let catalog_url = catalog.grpc_url();
    let mut edge_env = env.clone();
    edge_env.push(("AGORA_EDGE_CATALOG_URL", &catalog_url));
    let edge = mesh.spawn_process("edge", free_port(), &edge_env).await;
    let _analytics = mesh.spawn_process("analytics", free_port(), &env).await;

    let trace_id = "7c0dd3a2d2c872e8321cf37308d69df2";
    traced_product(&mesh, &edge, &staff, &category, trace_id, "TRACED-1").await;

    let spans = collector
        .trace(trace_id, |spans| {
            find(spans, |s| {
                s.service == "agora-analytics" && s.span.name == "process event"
            })
            .is_some()
        })
        .await;
    let consumed = find(&spans, |s| {
        s.service == "agora-analytics" && s.span.name == "process event"
    })
    .expect("consumer span");
    assert_eq!(consumed.span.kind, SpanKind::Consumer as i32);
    assert_eq!(
        consumed.attr("event.type").as_deref(),
        Some("catalog.product_created")
    );
    // Its parent is a span of the write, in the catalog.
    let parent = find(&spans, |s| s.span.span_id == consumed.span.parent_span_id).expect("parent");
    assert_eq!(parent.service, "agora-catalog");
    mesh.stop().await;
}

/// p50 of `n` sequential product reads through `edge`, in ms.
async fn p50_read_ms(http: &reqwest::Client, edge: &str, id: &str, n: usize) -> f64 {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let status = http
            .get(format!("{edge}/api/v1/products/{id}"))
            .send()
            .await
            .expect("edge answers")
            .status();
        assert_eq!(status, StatusCode::OK);
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    times[n / 2]
}

#[tokio::test]
async fn a_dead_collector_does_not_slow_requests() {
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let id = new_product(&mesh, &staff, "untraced").await;

    // Nothing listens on this port: every export fails at once or hangs in
    // connect; neither may reach the request path.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut results = HashMap::new();
    for (name, endpoint) in [("none", None), ("dead", Some(dead.as_str()))] {
        let catalog_port = free_port();
        let addr = format!("127.0.0.1:{catalog_port}");
        let mut env = vec![("AGORA_CATALOG_ADDR", addr.as_str())];
        if let Some(e) = endpoint {
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", e));
            env.push(("OTEL_BSP_SCHEDULE_DELAY", "50"));
        }
        let edge = mesh.spawn_process("edge,catalog", free_port(), &env).await;
        let base = edge.url("");
        p50_read_ms(&mesh.http, &base, &id, 50).await;
        results.insert(name, p50_read_ms(&mesh.http, &base, &id, 300).await);
    }
    let (none, dead) = (results["none"], results["dead"]);
    assert!(
        dead < none * 2.0 + 2.0,
        "a dead collector slowed reads: p50 {dead:.2} ms vs {none:.2} ms without export"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn log_lines_inside_a_request_carry_its_trace_and_span_ids() {
    let (_collector, otlp) = Collector::start().await;
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let id = new_product(&mesh, &staff, "logged").await;
    let log_path = std::env::temp_dir().join(format!("agora-log-{}.jsonl", uuid::Uuid::new_v4()));
    let log = std::fs::File::create(&log_path).expect("log file");
    let endpoint = format!("http://{otlp}");
    let env = [
        ("AGORA_LOG_FORMAT", "json"),
        ("RUST_LOG", "info"),
        ("AGORA_CATALOG_ADDR", "127.0.0.1:0"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
    ];
    let edge = mesh
        .spawn_process_with("edge,catalog", free_port(), &env, log.into())
        .await;
    let resp = traced_read(&mesh, &edge.url(""), &id).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let traceresponse = resp
        .headers()
        .get("traceresponse")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let edge_span = traceresponse
        .split('-')
        .nth(2)
        .unwrap_or_default()
        .to_owned();
    assert_eq!(edge_span.len(), 16, "{traceresponse:?}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = std::fs::read_to_string(&log_path).expect("log");
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| {
                l["fields"]["message"] == "request"
                    && l["fields"]["route"] == "/api/v1/products/{id}"
            });
        if let Some(line) = found {
            break line;
        }
        assert!(Instant::now() < deadline, "no access log line in {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(line["trace_id"], TRACE_ID, "{line}");
    assert_eq!(line["span_id"], edge_span, "{line}");
    let _ = std::fs::remove_file(&log_path);
    mesh.stop().await;
}

#[tokio::test]
async fn a_call_authenticated_by_api_key_stays_one_trace_through_the_users_service() {
    let (collector, otlp) = Collector::start().await;
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let id = new_product(&mesh, &staff, "keyed").await;
    let (_, access) = mesh.customer("keyed@example.com").await;
    let r = mesh
        .post(
            "/api/v1/api-keys",
            Some(&access),
            json!({"name": "traced", "permissions": ["users.read"], "rateLimitPerMinute": 600}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let secret = r.body["secret"].as_str().expect("secret").to_owned();

    // Users, catalog and edge each in their own process, all traced: the
    // edge and the catalog both ask the users service about the key.
    let env = otel_env(otlp);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let users = mesh.spawn_process("users", free_port(), &env).await;
    let users_url = users.grpc_url();
    env.push(("USER_SERVICE_URL", &users_url));
    let catalog = mesh.spawn_process("catalog", free_port(), &env).await;
    let catalog_url = catalog.grpc_url();
    env.push(("AGORA_EDGE_CATALOG_URL", &catalog_url));
    let edge = mesh.spawn_process("edge", free_port(), &env).await;

    let resp = mesh
        .http
        .get(edge.url(&format!("/api/v1/products/{id}")))
        .header("traceparent", PARENT)
        .header("x-api-key", &secret)
        .send()
        .await
        .expect("edge answers");
    assert_eq!(resp.status(), StatusCode::OK);

    let by_catalog = |spans: &[Received]| {
        let handler = server_span(spans, "agora-catalog")?;
        find(spans, |s| {
            s.service == "agora-users"
                && s.span.kind == SpanKind::Server as i32
                && s.parent_id() == handler.span_id()
        })
        .cloned()
    };
    let spans = collector
        .trace(TRACE_ID, |s| complete(s) && by_catalog(s).is_some())
        .await;
    assert_product_read(&spans);
    let users_span = by_catalog(&spans).expect("users span under the catalog");
    assert_eq!(
        users_span.attr("rpc.service").as_deref(),
        Some("agora.users.v1.UsersService")
    );
    mesh.stop().await;
}

#[tokio::test]
async fn otel_service_name_names_every_component_of_the_process() {
    let (collector, otlp) = Collector::start().await;
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let id = new_product(&mesh, &staff, "renamed").await;
    let mut env = otel_env(otlp);
    env.push(("AGORA_CATALOG_ADDR", "127.0.0.1:0".to_owned()));
    env.push(("OTEL_SERVICE_NAME", "shop".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let edge = mesh.spawn_process("edge,catalog", free_port(), &env).await;

    let resp = traced_read(&mesh, &edge.url(""), &id).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // The edge's and the catalog's server spans, both under the operator's name.
    let spans = collector
        .trace(TRACE_ID, |s| {
            s.iter()
                .filter(|s| s.span.kind == SpanKind::Server as i32)
                .count()
                >= 2
        })
        .await;
    assert!(
        spans.iter().all(|s| s.service == "shop"),
        "{:?}",
        spans
            .iter()
            .map(|s| (&s.service, &s.span.name))
            .collect::<Vec<_>>()
    );
    mesh.stop().await;
}
