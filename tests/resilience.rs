//! The edge and services when things fail, as users would notice it:
//! replicas crash or restart under load, the only replica dies, a caller
//! sets a short deadline, every call fails, Redis dies, and gRPC callers
//! going straight to a service.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use agora_proto::catalog::v1::{GetProductRequest, catalog_service_client::CatalogServiceClient};
use common::{
    Replica, TestMesh, category, free_port, load, metric, product, service_health, spawn_mesh,
    spawn_mesh_with, staff,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

/// A mesh with one product in stock; returns the product id.
async fn with_product(mesh: &TestMesh, stock: i32) -> String {
    let staff = staff(mesh).await;
    let cat = category(mesh, &staff, "lamps", None).await;
    product(mesh, &staff, "lamp-1", "Desk lamp", &cat, 2599, stock).await["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

/// GET `url`: status, and the body when it is not 200.
async fn get(http: &reqwest::Client, url: &str) -> (u16, String) {
    match http.get(url).send().await {
        Ok(r) if r.status() == StatusCode::OK => (200, String::new()),
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// Holds an exclusive lock on the products table, so every read of a
/// product from PostgreSQL waits until [`unlock`].
async fn lock_products(mesh: &TestMesh) -> PgConnection {
    let mut locker = PgConnection::connect(&mesh.database.url).await.expect("db");
    sqlx::raw_sql("BEGIN; LOCK TABLE catalog.products IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .expect("lock");
    locker
}

async fn unlock(locker: &mut PgConnection) {
    sqlx::raw_sql("ROLLBACK")
        .execute(locker)
        .await
        .expect("unlock");
}

/// The catalog's entry in an edge's `/health`.
async fn catalog_health(mesh: &TestMesh, edge: &Replica) -> Value {
    service_health(&mesh.http, &edge.url(""), "catalog").await
}

/// Asserts that a load run made enough requests and none failed.
fn assert_none_failed(results: &[(u16, String)]) {
    let failed: Vec<_> = results.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        results.len(),
        failed.first()
    );
    assert!(results.len() > 100, "the load ran: {}", results.len());
}

#[tokio::test]
async fn killing_one_of_two_catalog_replicas_under_load_fails_no_reads() {
    let mesh = spawn_mesh().await;
    let id = with_product(&mesh, 10).await;
    let mut a = mesh.spawn_process("catalog", free_port(), &[]).await;
    let b = mesh.spawn_process("catalog", free_port(), &[]).await;
    let urls = format!("{},{}", a.grpc_url(), b.grpc_url());
    let edge = mesh
        .spawn("edge", |c| {
            c.edge.upstreams.0.get_mut("catalog").expect("catalog").url = urls;
        })
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let (http, url) = (
        mesh.http.clone(),
        edge.url(&format!("/api/v1/products/{id}")),
    );
    let runner = tokio::spawn(load(8, stop.clone(), move |_| {
        let (http, url) = (http.clone(), url.clone());
        async move { get(&http, &url).await }
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let results = runner.await.expect("load");

    assert_none_failed(&results);
    let catalog = catalog_health(&mesh, &edge).await;
    let ejected: Vec<&Value> = catalog["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter(|e| e["inRotation"] == false)
        .collect();
    assert_eq!(
        ejected.len(),
        1,
        "the dead replica is out of rotation: {catalog}"
    );
    assert_eq!(ejected[0]["address"], a.addr.to_string());
    assert_eq!(ejected[0]["status"], "unhealthy", "{catalog}");
    assert_eq!(ejected[0]["inProcess"], false, "another process: {catalog}");
    assert_eq!(
        catalog["status"], "healthy",
        "one serving replica keeps the service healthy: {catalog}"
    );
    drop(edge);
    mesh.stop().await;
}

#[tokio::test]
async fn a_rolling_restart_fails_no_request_of_any_method() {
    let mesh = spawn_mesh().await;
    let id = with_product(&mesh, 1_000_000).await;
    let (_, customer) = mesh.customer("shopper@example.com").await;
    let (pa, pb) = (free_port(), free_port());
    let drain = [("AGORA_SHUTDOWN_DRAIN_MS", "200")];
    let a = mesh.spawn_process("catalog", pa, &drain).await;
    let b = mesh.spawn_process("catalog", pb, &drain).await;
    let urls = format!("{},{}", a.grpc_url(), b.grpc_url());
    let edge = mesh
        .spawn("edge", |c| {
            c.edge.upstreams.0.get_mut("catalog").expect("catalog").url = urls;
        })
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let http = mesh.http.clone();
    let (read, reserve) = (
        edge.url(&format!("/api/v1/products/{id}")),
        edge.url("/api/v1/reservations"),
    );
    let runner = tokio::spawn(load(8, stop.clone(), move |i| {
        let (http, read, reserve, token, id) = (
            http.clone(),
            read.clone(),
            reserve.clone(),
            customer.clone(),
            id.clone(),
        );
        async move {
            if i % 2 == 0 {
                return get(&http, &read).await;
            }
            let body = json!({"items": [{"productId": id, "quantity": 1}], "ttlSeconds": 60});
            match http
                .post(&reserve)
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
            {
                Ok(r) if r.status() == StatusCode::OK => (200, String::new()),
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(e) => (0, e.to_string()),
            }
        }
    }));

    // Replace each replica in turn, as a Deployment's rolling update does.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(a.terminate().await, "replica a stops cleanly");
    let a2 = mesh.spawn_process("catalog", pa, &drain).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(b.terminate().await, "replica b stops cleanly");
    let b2 = mesh.spawn_process("catalog", pb, &drain).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let results = runner.await.expect("load");

    assert_none_failed(&results);
    drop((a2, b2, edge));
    mesh.stop().await;
}

#[tokio::test]
async fn with_the_only_catalog_down_the_breaker_opens_answers_at_once_and_closes_after_recovery() {
    let mesh = spawn_mesh().await;
    let id = with_product(&mesh, 10).await;
    let port = free_port();
    let mut only = mesh.spawn_process("catalog", port, &[]).await;
    let url = only.grpc_url();
    let edge = mesh
        .spawn("edge", |c| {
            let policy = c.edge.upstreams.0.get_mut("catalog").expect("catalog");
            policy.url = url;
            policy.breaker_threshold = 3;
            policy.breaker_reset = Duration::from_millis(1500);
        })
        .await;
    let product_url = edge.url(&format!("/api/v1/products/{id}"));
    assert_eq!(get(&mesh.http, &product_url).await.0, 200);
    let state = || {
        metric(
            &mesh.http,
            &edge.admin,
            "agora_upstream_breaker_state{upstream=\"catalog\"}",
        )
    };
    assert_eq!(state().await, 0.0, "closed while the catalog answers");

    only.kill();
    for _ in 0..3 {
        let (status, body) = get(&mesh.http, &product_url).await;
        assert_eq!(status, 503, "{body}");
    }
    assert_eq!(state().await, 1.0, "open after three failed calls");
    let started = Instant::now();
    let r = mesh.http.get(&product_url).send().await.expect("answer");
    let elapsed = started.elapsed();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], 14);
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("catalog"),
        "{body}"
    );
    assert_eq!(
        body["details"][0]["@type"],
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    assert!(
        elapsed < Duration::from_millis(250),
        "an open breaker answers without waiting: {elapsed:?}"
    );

    let _back = mesh.spawn_process("catalog", port, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&mesh.http, &product_url).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the breaker never closed after recovery"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state().await, 0.0, "closed again");
    drop(edge);
    mesh.stop().await;
}

#[tokio::test]
async fn a_client_deadline_ends_a_slow_call_with_504_and_the_service_stops_its_work() {
    // No cache: every read goes to PostgreSQL, which a lock makes slow.
    let mesh = spawn_mesh_with(|c| c.catalog.redis_url = String::new()).await;
    let id = with_product(&mesh, 10).await;
    let mut locker = lock_products(&mesh).await;

    let started = Instant::now();
    let r = mesh
        .send(
            mesh.http
                .get(mesh.url(&format!("/api/v1/products/{id}")))
                .header("grpc-timeout", "100m"),
        )
        .await;
    let elapsed = started.elapsed();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{:?}", r.body);
    assert_eq!(r.body["code"], 4);
    assert!(
        elapsed >= Duration::from_millis(100) && elapsed < Duration::from_secs(2),
        "answered at the client's deadline, not the upstream's 5 s: {elapsed:?}"
    );

    // The catalog gave up its query instead of waiting for the lock.
    let mut watcher = PgConnection::connect(&mesh.database.url).await.expect("db");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut watcher)
        .await
        .expect("activity");
        if waiting == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} queries still wait for the lock after the deadline"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let bad = mesh
        .send(
            mesh.http
                .get(mesh.url(&format!("/api/v1/products/{id}")))
                .header("grpc-timeout", "soon"),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.message().contains("grpc-timeout"), "{:?}", bad.body);
    unlock(&mut locker).await;
    mesh.stop().await;
}

#[tokio::test]
async fn when_every_call_fails_retries_stay_within_the_budget() {
    let mesh = spawn_mesh().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let edge = mesh
        .spawn("edge", |c| {
            let policy = c.edge.upstreams.0.get_mut("catalog").expect("catalog");
            policy.url = dead;
            policy.breaker_threshold = 0;
            policy.retries = 3;
        })
        .await;
    let calls = 200;
    for _ in 0..calls {
        let (status, body) = get(
            &mesh.http,
            &edge.url(&format!("/api/v1/products/{}", uuid::Uuid::new_v4())),
        )
        .await;
        assert_eq!(status, 503, "{body}");
    }
    let retries = metric(
        &mesh.http,
        &edge.admin,
        "agora_upstream_retries_total{upstream=\"catalog\"}",
    )
    .await;
    // The budget: 10 retries per second over its 10 s window, plus 20% of
    // calls. Without it, 3 retries per call would make 600.
    let budget = 100.0 + 0.2 * f64::from(calls);
    assert!(
        retries > 0.0 && retries <= budget + 1.0,
        "{retries} retries for {calls} failed calls (budget {budget})"
    );
    drop(edge);
    mesh.stop().await;
}

#[tokio::test]
async fn direct_grpc_calls_do_not_stall_on_delayed_acks() {
    let mesh = spawn_mesh().await;
    let id = with_product(&mesh, 10).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.catalog_addr))
        .expect("valid url")
        .connect()
        .await
        .expect("connects");
    let mut client = CatalogServiceClient::new(channel);
    let mut latencies = Vec::with_capacity(200);
    for i in 0..220 {
        let started = Instant::now();
        client
            .get_product(GetProductRequest { id: id.clone() })
            .await
            .expect("product");
        // The first calls warm the connection and the cache.
        if i >= 20 {
            latencies.push(started.elapsed());
        }
    }
    latencies.sort();
    let p95 = latencies[latencies.len() * 95 / 100];
    assert!(
        p95 < Duration::from_millis(20),
        "p95 of sequential unary calls is {p95:?}: small writes wait for delayed ACKs (TCP_NODELAY off?)"
    );
    mesh.stop().await;
}

/// A private Redis on `port`, killed on drop.
struct PrivateRedis(std::process::Child);

impl PrivateRedis {
    async fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self(child)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn product_reads_stay_fast_with_redis_killed_and_use_it_again_when_it_returns() {
    let port = free_port();
    let redis = PrivateRedis::start(port).await;
    let mesh = spawn_mesh_with(|c| c.catalog.redis_url = format!("redis://127.0.0.1:{port}")).await;
    let id = with_product(&mesh, 10).await;
    let url = mesh.url(&format!("/api/v1/products/{id}"));
    let hits = || {
        metric(
            &mesh.http,
            &mesh.admin,
            "catalog_cache_requests_total{result=\"hit\"}",
        )
    };
    for _ in 0..5 {
        assert_eq!(get(&mesh.http, &url).await.0, 200);
    }
    assert!(hits().await >= 1.0, "reads are served from the cache");

    drop(redis);
    let mut latencies = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        let (status, body) = get(&mesh.http, &url).await;
        latencies.push(started.elapsed());
        assert_eq!(status, 200, "{body}");
    }
    latencies.sort();
    let p90 = latencies[45];
    assert!(
        p90 < Duration::from_millis(100),
        "with Redis dead, reads must not wait for it: p90 {p90:?}"
    );

    let _redis = PrivateRedis::start(port).await;
    let before = hits().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert_eq!(get(&mesh.http, &url).await.0, 200);
        if hits().await > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cache was not used again after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    mesh.stop().await;
}

#[tokio::test]
async fn above_the_in_flight_caps_the_edge_answers_503_at_once() {
    // No cache: reads go to PostgreSQL, which a lock holds up.
    let mesh = spawn_mesh_with(|c| c.catalog.redis_url = String::new()).await;
    let id = with_product(&mesh, 10).await;
    let per_upstream = mesh
        .spawn("edge", |c| {
            c.edge
                .upstreams
                .0
                .get_mut("catalog")
                .expect("catalog")
                .max_in_flight = 1;
        })
        .await;
    let whole_edge = mesh.spawn("edge", |c| c.edge.max_in_flight = 1).await;

    let mut locker = lock_products(&mesh).await;
    for (edge, what) in [(&per_upstream, "catalog"), (&whole_edge, "edge")] {
        let url = edge.url(&format!("/api/v1/products/{id}"));
        let stuck = tokio::spawn({
            let (http, url) = (mesh.http.clone(), url.clone());
            async move { get(&http, &url).await }
        });
        // Until the first call holds the only slot.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let r = mesh.http.get(&url).send().await.expect("answer");
        let elapsed = started.elapsed();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
        assert!(r.headers().contains_key("retry-after"), "{what}");
        let body: Value = r.json().await.expect("json");
        assert!(
            body["message"].as_str().expect("message").contains(what),
            "the message says which cap: {body}"
        );
        assert!(
            elapsed < Duration::from_millis(250),
            "refused without queueing: {elapsed:?}"
        );
        stuck.abort();
    }
    unlock(&mut locker).await;
    drop((per_upstream, whole_edge));
    mesh.stop().await;
}

#[tokio::test]
async fn an_upstream_named_by_dns_is_resolved_and_balanced_over() {
    let mesh = spawn_mesh().await;
    let id = with_product(&mesh, 10).await;
    let by_name = format!("http://localhost:{}", mesh.catalog_addr.port());
    let edge = mesh
        .spawn("edge", |c| {
            c.edge.upstreams.0.get_mut("catalog").expect("catalog").url = by_name;
        })
        .await;
    for _ in 0..20 {
        let (status, body) = get(&mesh.http, &edge.url(&format!("/api/v1/products/{id}"))).await;
        assert_eq!(status, 200, "{body}");
    }
    let catalog = catalog_health(&mesh, &edge).await;
    let addresses: Vec<&str> = catalog["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e["address"].as_str())
        .collect();
    assert!(
        addresses.contains(&format!("127.0.0.1:{}", mesh.catalog_addr.port()).as_str()),
        "localhost resolved to its addresses: {addresses:?}"
    );
    drop(edge);
    mesh.stop().await;
}

#[tokio::test]
async fn a_deadline_the_client_shortened_does_not_trip_the_breaker() {
    let mesh = spawn_mesh_with(|c| c.catalog.redis_url = String::new()).await;
    let id = with_product(&mesh, 10).await;
    let edge = mesh
        .spawn("edge", |c| {
            let policy = c.edge.upstreams.0.get_mut("catalog").expect("catalog");
            policy.breaker_threshold = 1;
            policy.breaker_reset = Duration::from_secs(30);
        })
        .await;
    let url = edge.url(&format!("/api/v1/products/{id}"));
    let mut locker = lock_products(&mesh).await;
    let r = mesh
        .http
        .get(&url)
        .header("grpc-timeout", "50m")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    unlock(&mut locker).await;
    let (status, body) = get(&mesh.http, &url).await;
    assert_eq!(
        status, 200,
        "the caller's own short deadline is not the service failing: {body}"
    );
    drop(edge);
    mesh.stop().await;
}
