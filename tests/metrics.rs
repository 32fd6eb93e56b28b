//! The metrics an operator's dashboards read, scraped from the admin port
//! of a fresh `agora` process (not this test process's shared registry):
//! the seed's names, buckets and labels, and the mesh's own.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

/// The value of the first sample whose line starts with `series` (a name
/// with some of its labels, in their exposition order).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn has(text: &str, series: &str) -> bool {
    sample(text, series).is_some()
}

#[tokio::test]
async fn a_process_exports_the_seeds_metrics_with_bounded_labels() {
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let category = category(&mesh, &staff, "metered", None).await;

    let admin_port = free_port();
    let admin = format!("127.0.0.1:{admin_port}");
    let env = [
        ("AGORA_ADMIN_ADDR", admin.as_str()),
        ("AGORA_CATALOG_ADDR", "127.0.0.1:0"),
    ];
    let edge = mesh.spawn_process("edge,catalog", free_port(), &env).await;

    let created = mesh
        .http
        .post(edge.url("/api/v1/products"))
        .bearer_auth(&staff)
        .json(&json!({"sku": "METER-1", "name": "Metered lamp", "description": "", "categoryId": category,
                      "price": {"currency": "EUR", "amountMinor": "1000"}}))
        .send()
        .await
        .expect("edge answers");
    assert_eq!(created.status(), StatusCode::OK);
    let id = created.json::<serde_json::Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    for path in [
        format!("/api/v1/products/{id}"),
        format!("/api/v1/products/{id}"),
        "/api/v1/products/00000000-0000-7000-8000-000000000000".to_owned(),
        "/api/v1/no/such/route".to_owned(),
        "/api/v1/docs/docs.css".to_owned(),
        "/admin/".to_owned(),
    ] {
        mesh.http
            .get(edge.url(&path))
            .send()
            .await
            .expect("edge answers");
    }

    let text = mesh
        .http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");

    // The seed's HTTP metrics, by route template, with its bucket bounds
    // and finer ones below 0.1 s.
    let route = r#"method="GET",route="/api/v1/products/{id}",status_code="200""#;
    for le in [
        "0.005", "0.1", "0.3", "0.5", "0.7", "1", "3", "5", "7", "10", "+Inf",
    ] {
        let series = format!(r#"http_request_duration_seconds_bucket{{{route},le="{le}"}}"#);
        assert!(has(&text, &series), "missing {series} in\n{text}");
    }
    assert_eq!(
        sample(&text, &format!("http_requests_total{{{route}}}")),
        Some(2.0)
    );
    assert!(has(
        &text,
        r#"http_requests_total{method="GET",route="/api/v1/products/{id}",status_code="404"}"#
    ));
    assert!(has(
        &text,
        r#"http_requests_total{method="GET",route="unmatched",status_code="404"}"#
    ));
    // The embedded pages count under one label each, not as unmatched.
    assert!(has(
        &text,
        r#"http_requests_total{method="GET",route="/api/v1/docs/*",status_code="200"}"#
    ));
    assert!(has(
        &text,
        r#"http_requests_total{method="GET",route="/admin/*",status_code="200"}"#
    ));
    assert!(has(&text, "active_connections_total"));
    // Kept current by the edge's own checks: nobody called /health.
    assert_eq!(
        sample(&text, r#"service_health_status{service_name="catalog"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"business_events_total{event_type="catalog.product_created",service="catalog"}"#
        ),
        Some(1.0)
    );
    // No raw path or id becomes a label value.
    for line in text.lines().filter(|l| l.starts_with("http_")) {
        assert!(!line.contains(&id), "an id in a label: {line}");
        assert!(!line.contains("no/such"), "a raw path in a label: {line}");
    }

    // The mesh's own: upstream calls, gRPC on both sides, pools, process.
    assert!(has(
        &text,
        r#"agora_upstream_attempts_total{upstream="catalog"}"#
    ));
    assert!(has(
        &text,
        r#"grpc_server_handled_total{grpc_service="agora.catalog.v1.CatalogService",grpc_method="GetProduct",grpc_code="Ok"}"#
    ));
    assert!(has(
        &text,
        r#"grpc_client_handled_total{grpc_service="agora.catalog.v1.CatalogService",grpc_method="GetProduct",grpc_code="Ok"}"#
    ));
    assert!(has(
        &text,
        r#"grpc_client_handled_total{grpc_service="agora.catalog.v1.CatalogService",grpc_method="GetProduct",grpc_code="NotFound"}"#
    ));
    assert!(has(
        &text,
        r#"agora_db_pool_connections{pool="catalog",state="idle"}"#
    ));
    assert!(
        sample(&text, r#"agora_db_pool_max_connections{pool="catalog"}"#).is_some_and(|m| m > 0.0)
    );
    assert!(sample(&text, "process_resident_memory_bytes").is_some_and(|v| v > 1e6));
    assert!(sample(&text, "process_open_fds").is_some_and(|v| v > 0.0));
    assert!(sample(&text, "process_threads").is_some_and(|v| v > 1.0));
    assert_eq!(
        sample(
            &text,
            &format!(
                r#"agora_build_info{{version="{}""#,
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );
    mesh.stop().await;
}
