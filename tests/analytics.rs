//! Events and analytics end to end: writes through the edge → outbox →
//! SQS → the consumer → rollups → reports through the edge.

mod common;

use std::time::Duration;

use futures::StreamExt as _;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Polls `check` until it returns `Some`, for at most 30 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn today() -> String {
    chrono::Utc::now().date_naive().to_string()
}

/// Today's value of `metric` (summed over its series), read through the edge.
async fn today_metric(mesh: &TestMesh, admin: &str, metric: &str) -> f64 {
    let day = today();
    let r = mesh
        .get(
            &format!("/api/v1/analytics/metrics/daily?metric={metric}&from={day}&to={day}"),
            Some(admin),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["value"].as_f64().unwrap_or(0.0))
        .sum()
}

async fn wait_metric(mesh: &TestMesh, admin: &str, metric: &str, want: f64) {
    eventually(&format!("{metric} = {want}"), || async {
        (today_metric(mesh, admin, metric).await == want).then_some(())
    })
    .await;
}

fn skip_without_sqs() -> bool {
    if std::env::var("AWS_ENDPOINT_URL_SQS").is_err() {
        eprintln!("AWS_ENDPOINT_URL_SQS is not set; run through scripts/test.sh");
        return true;
    }
    false
}

#[tokio::test]
async fn writes_become_reports_through_outbox_sqs_and_the_consumer() {
    if skip_without_sqs() {
        return;
    }
    let mesh = spawn_mesh().await;
    let (_, admin) = mesh.admin().await;
    let staff = staff(&mesh).await;
    let (ana_id, ana) = mesh.customer("ana-analytics@example.com").await;
    let (bob_id, bob) = mesh.customer("bob-analytics@example.com").await;
    // admin, staff's admin and staff, ana, bob
    wait_metric(&mesh, &admin, "signups", 5.0).await;

    let cat = category(&mesh, &staff, "an", None).await;
    let lamp = product(&mesh, &staff, "an-1", "Lamp", &cat, 2500, 10).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let desk = product(&mesh, &staff, "an-2", "Desk", &cat, 10000, 10).await["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // Client events: both look at the lamp, bob twice at the desk.
    let view = |p: &str| json!({"type": "product_view", "sessionId": "s1", "properties": {"productId": p}});
    let r = mesh
        .post(
            "/api/v1/analytics/events",
            Some(&ana),
            json!({"events": [
                {"type": "page_view", "sessionId": "s1", "properties": {"path": "/products"}},
                view(&lamp),
                {"type": "search", "sessionId": "s1", "properties": {"query": "lamp"}},
            ]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["accepted"], 3);
    let r = mesh
        .post(
            "/api/v1/analytics/events",
            Some(&bob),
            json!({"events": [view(&lamp), view(&desk), view(&desk)]}),
        )
        .await;
    assert_eq!(r.body["accepted"], 3, "{:?}", r.body);

    // Ana buys two lamps; bob reserves a desk and lets it go.
    let reserve = |token: String, product: String, quantity: i32| {
        let mesh = &mesh;
        async move {
            let r = mesh
                .post(
                    "/api/v1/reservations",
                    Some(&token),
                    json!({"items": [{"productId": product, "quantity": quantity}]}),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            r.body["id"].as_str().expect("id").to_owned()
        }
    };
    let r1 = reserve(ana.clone(), lamp.clone(), 2).await;
    let r = mesh
        .post(
            &format!("/api/v1/reservations/{r1}:commit"),
            Some(&ana),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r2 = reserve(bob.clone(), desk.clone(), 1).await;
    let r = mesh
        .post(
            &format!("/api/v1/reservations/{r2}:release"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // Ana writes to bob in chat.
    let room = mesh
        .post(
            "/api/v1/chat/rooms",
            Some(&ana),
            json!({"name": "deal", "memberIds": [bob_id]}),
        )
        .await;
    assert_eq!(room.status, StatusCode::OK, "{:?}", room.body);
    let room = room.body["id"].as_str().expect("room").to_owned();
    let r = mesh
        .post(
            &format!("/api/v1/chat/rooms/{room}/messages"),
            Some(&ana),
            json!({"body": "the lamp is great", "clientId": "c1"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // Events arrive in any order: wait for each count.
    for (metric, want) in [
        ("reservations_committed", 1.0),
        ("messages_sent", 1.0),
        ("units_committed", 2.0),
        ("reservations_created", 2.0),
        ("product_views", 4.0),
        ("page_views", 1.0),
        ("searches", 1.0),
        ("active_users", 2.0),
    ] {
        wait_metric(&mesh, &admin, metric, want).await;
    }
    let day = today();
    let revenue = mesh
        .get(
            &format!("/api/v1/analytics/metrics/daily?metric=revenue&from={day}&to={day}"),
            Some(&admin),
        )
        .await;
    assert_eq!(
        revenue.body["points"],
        json!([{"date": day, "value": 5000.0, "dimensions": {"currency": "EUR"}}]),
        "revenue in minor units per currency"
    );

    let top = mesh
        .get(
            "/api/v1/analytics/reports/top-products?days=7",
            Some(&admin),
        )
        .await;
    assert_eq!(top.status, StatusCode::OK, "{:?}", top.body);
    let ids: Vec<&str> = top.body["products"]
        .as_array()
        .expect("products")
        .iter()
        .map(|p| p["productId"].as_str().unwrap_or_default())
        .collect();
    // Two views each: ties go by id.
    let mut by_views = vec![lamp.as_str(), desk.as_str()];
    by_views.sort();
    assert_eq!(ids, by_views, "{:?}", top.body);
    let top = mesh
        .get(
            "/api/v1/analytics/reports/top-products?days=7&by=revenue",
            Some(&admin),
        )
        .await;
    assert_eq!(
        top.body["products"],
        json!([{"productId": lamp, "views": "2", "unitsSold": "2", "revenueMinor": "5000", "currency": "EUR"}])
    );

    let funnel = mesh
        .get("/api/v1/analytics/reports/funnel?days=30", Some(&admin))
        .await;
    assert_eq!(
        funnel.body["steps"],
        json!([
            {"name": "viewed", "users": "2", "ratio": 1.0},
            {"name": "reserved", "users": "2", "ratio": 1.0},
            {"name": "purchased", "users": "1", "ratio": 0.5},
        ])
    );

    let cohorts = mesh
        .get("/api/v1/analytics/reports/cohorts?weeks=2", Some(&admin))
        .await;
    let this_week = &cohorts.body["cohorts"][1];
    assert_eq!(this_week["users"], "5", "{:?}", cohorts.body);
    assert_eq!(this_week["active"], json!(["2"]), "{:?}", cohorts.body);

    let behavior = mesh
        .get(
            &format!("/api/v1/analytics/users/{ana_id}/behavior"),
            Some(&admin),
        )
        .await;
    assert_eq!(behavior.status, StatusCode::OK, "{:?}", behavior.body);
    let ana_today = &behavior.body["days"][0];
    assert_eq!(ana_today["date"], day);
    assert_eq!(
        (
            &ana_today["pageViews"],
            &ana_today["productViews"],
            &ana_today["searches"],
            &ana_today["purchases"],
            &ana_today["messages"]
        ),
        (
            &json!("1"),
            &json!("1"),
            &json!("1"),
            &json!("1"),
            &json!("1")
        )
    );
    assert!(behavior.body["signedUpAt"].is_string());

    // Staff read reports; customers do not, and one user's behaviour is
    // for admins.
    let r = mesh
        .get("/api/v1/analytics/reports/funnel", Some(&ana))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = mesh
        .get("/api/v1/analytics/reports/funnel", Some(&staff))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = mesh
        .get(
            &format!("/api/v1/analytics/users/{ana_id}/behavior"),
            Some(&staff),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Raw events are kept in MongoDB, without the one-time tokens mailers
    // send.
    let client = mongodb::Client::with_uri_str(mongodb_uri(&mesh.db_name))
        .await
        .expect("mongo");
    let events = client
        .database(&mesh.db_name)
        .collection::<mongodb::bson::Document>("events");
    let stored = events
        .count_documents(mongodb::bson::doc! {"type": "catalog.reservation_committed"})
        .await
        .expect("count");
    assert_eq!(stored, 1);
    mesh.stop().await;
}

#[tokio::test]
async fn client_events_are_validated_whole_and_counted_once() {
    if skip_without_sqs() {
        return;
    }
    let mesh = spawn_mesh().await;
    let (_, admin) = mesh.admin().await;
    let (_, ana) = mesh.customer("ana-events@example.com").await;

    let bad = [
        (json!({"events": []}), "events"),
        (json!({"events": [{"type": "teleport"}]}), "teleport"),
        (
            json!({"events": [{"type": "page_view", "properties": {"path": "/"}}, {"type": "product_view", "properties": {"productId": "42"}}]}),
            "item 1",
        ),
        (
            json!({"events": [{"type": "page_view", "properties": {"path": "x".repeat(5000)}}]}),
            "4096",
        ),
        (
            json!({"events": [{"type": "page_view", "properties": {"path": "/"}, "occurredAt": "2001-01-01T00:00:00Z"}]}),
            "occurredAt",
        ),
    ];
    for (body, names) in bad {
        let r = mesh
            .post("/api/v1/analytics/events", Some(&ana), body.clone())
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {:?}", r.body);
        assert!(r.message().contains(names), "{body}: {:?}", r.body);
    }
    let many: Vec<Value> = (0..101)
        .map(|_| json!({"type": "click", "sessionId": "s"}))
        .collect();
    let r = mesh
        .post(
            "/api/v1/analytics/events",
            Some(&ana),
            json!({"events": many}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "batch limit");
    let r = mesh
        .post(
            "/api/v1/analytics/events",
            None,
            json!({"events": [{"type": "click"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Nothing of the refused batches was kept.
    assert_eq!(today_metric(&mesh, &admin, "page_views").await, 0.0);

    // A resent event (same client id) counts once.
    let id = uuid::Uuid::new_v4().to_string();
    let event = json!({"events": [{"id": id, "type": "page_view", "properties": {"path": "/"}}]});
    let first = mesh
        .post("/api/v1/analytics/events", Some(&ana), event.clone())
        .await;
    let again = mesh
        .post("/api/v1/analytics/events", Some(&ana), event)
        .await;
    assert_eq!(
        (
            first.body["accepted"].clone(),
            again.body["accepted"].clone()
        ),
        (json!(1), json!(0))
    );
    assert_eq!(today_metric(&mesh, &admin, "page_views").await, 1.0);

    let r = mesh
        .get(
            "/api/v1/analytics/metrics/daily?metric=happiness",
            Some(&admin),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("signups"), "{:?}", r.body);
    let r = mesh
        .get(
            "/api/v1/analytics/metrics/daily?metric=signups&from=2026-12-01&to=2026-11-01",
            Some(&admin),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("from"), "{:?}", r.body);
    mesh.stop().await;
}

/// An SQS client on the local server (the AWS SDK's own settings).
async fn sqs() -> aws_sdk_sqs::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    aws_sdk_sqs::Client::new(&config)
}

async fn queue_url(sqs: &aws_sdk_sqs::Client, name: &str) -> String {
    sqs.get_queue_url()
        .queue_name(name)
        .send()
        .await
        .expect("queue exists")
        .queue_url()
        .expect("url")
        .to_owned()
}

/// Messages in a queue, visible or in flight.
async fn depth(sqs: &aws_sdk_sqs::Client, url: &str) -> i64 {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("attributes");
    let attrs = out.attributes().expect("attributes");
    [
        A::ApproximateNumberOfMessages,
        A::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .filter_map(|a| attrs.get(a)?.parse::<i64>().ok())
    .sum()
}

fn signup_envelope(id: &str) -> String {
    json!({
        "id": id,
        "type": "users.user_registered",
        "source": "users",
        "occurredAt": chrono::Utc::now().to_rfc3339(),
        "schemaVersion": 1,
        "userRegistered": {"userId": uuid::Uuid::now_v7().to_string(), "email": "x@example.com"},
    })
    .to_string()
}

#[tokio::test]
async fn redelivered_and_duplicate_messages_count_once() {
    if skip_without_sqs() {
        return;
    }
    let mesh = spawn_mesh().await;
    let (_, admin) = mesh.admin().await;
    for who in ["a", "b", "c"] {
        mesh.customer(&format!("{who}-dup@example.com")).await;
    }
    wait_metric(&mesh, &admin, "signups", 4.0).await;

    // Every users event goes out again, as after a relay that crashed
    // between SQS accepting a batch and marking it sent.
    let mut conn = db(&mesh).await;
    let republished = sqlx::query("UPDATE users.outbox SET published_at = NULL")
        .execute(&mut conn)
        .await
        .expect("reset")
        .rows_affected() as f64;
    let http = reqwest::Client::new();
    eventually("the republished events to be consumed", || async {
        (metric(
            &http,
            &mesh.admin,
            "analytics_events_consumed_total{outcome=\"duplicate\"}",
        )
        .await
            >= republished)
            .then_some(())
    })
    .await;
    assert_eq!(today_metric(&mesh, &admin, "signups").await, 4.0);

    // The same message sent twice counts once.
    let sqs = sqs().await;
    let url = queue_url(&sqs, &mesh.config.events.queue).await;
    let body = signup_envelope(&uuid::Uuid::now_v7().to_string());
    for _ in 0..2 {
        sqs.send_message()
            .queue_url(&url)
            .message_body(&body)
            .send()
            .await
            .expect("sent");
    }
    wait_metric(&mesh, &admin, "signups", 5.0).await;
    eventually("the queue to drain", || async {
        (depth(&sqs, &url).await == 0).then_some(())
    })
    .await;
    assert_eq!(today_metric(&mesh, &admin, "signups").await, 5.0);
    mesh.stop().await;
}

#[tokio::test]
async fn a_poison_message_moves_to_the_dead_letter_queue_after_the_last_receive() {
    if skip_without_sqs() {
        return;
    }
    let mesh = spawn_mesh_with(|c| c.events.max_receives = 2).await;
    let (_, admin) = mesh.admin().await;
    let sqs = sqs().await;
    let url = queue_url(&sqs, &mesh.config.events.queue).await;
    let dlq = queue_url(&sqs, &format!("{}-dlq", mesh.config.events.queue)).await;
    for poison in [
        "not json".to_owned(),
        json!({"id": "e1", "type": "users.user_registered", "teleported": {}}).to_string(),
        // A well-formed envelope whose payload cannot be counted.
        json!({"id": uuid::Uuid::now_v7().to_string(), "type": "users.user_registered",
               "occurredAt": chrono::Utc::now().to_rfc3339(), "userRegistered": {"userId": "nobody"}})
        .to_string(),
    ] {
        sqs.send_message()
            .queue_url(&url)
            .message_body(poison)
            .send()
            .await
            .expect("sent");
    }
    // Good events keep flowing meanwhile.
    sqs.send_message()
        .queue_url(&url)
        .message_body(signup_envelope(&uuid::Uuid::now_v7().to_string()))
        .send()
        .await
        .expect("sent");
    wait_metric(&mesh, &admin, "signups", 2.0).await;
    eventually(
        "the poison messages to reach the dead-letter queue",
        || async { (depth(&sqs, &dlq).await == 3 && depth(&sqs, &url).await == 0).then_some(()) },
    )
    .await;
    let http = reqwest::Client::new();
    assert!(
        metric(
            &http,
            &mesh.admin,
            "analytics_events_consumed_total{outcome=\"failed\"}"
        )
        .await
            >= 6.0,
        "each poison message was tried max_receives times"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn events_written_while_sqs_is_down_are_all_counted_once_after_it_returns() {
    if skip_without_sqs() {
        return;
    }
    // This mesh publishes nothing; a users and an analytics process do,
    // against an SQS server of this test's own that it stops and restarts.
    let mesh = spawn_mesh_with(|c| c.events.queue = String::new()).await;
    let (_, admin) = mesh.admin().await;
    let port = free_port();
    let start_sqs = || {
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server starts (scripts/test.sh puts it on PATH)");
        async move {
            eventually("the SQS server to listen", || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            })
            .await;
            child
        }
    };
    let mut server = start_sqs().await;
    let endpoint = format!("http://127.0.0.1:{port}");
    let queue = format!("{}-outage", mesh.db_name);
    let env = [
        ("AWS_ENDPOINT_URL_SQS", endpoint.as_str()),
        ("AGORA_EVENTS_QUEUE", queue.as_str()),
        ("AGORA_OUTBOX_POLL_MS", "50"),
        ("AGORA_EVENTS_TIMEOUT_MS", "1000"),
    ];
    let _users = mesh.spawn_process("users", free_port(), &env).await;
    let _analytics = mesh
        .spawn_process(
            "analytics",
            free_port(),
            &[&env[..], &[("AGORA_ANALYTICS_JOBS", "false")]].concat(),
        )
        .await;
    // The admin's signup went out through the process's relay.
    wait_metric(&mesh, &admin, "signups", 1.0).await;

    server.kill().expect("stop SQS");
    let _ = server.wait();
    // A few at a time: registration hashes a password, and the users
    // service refuses (429) what would wait over a second for a hashing slot.
    let registered: Vec<_> = futures::stream::iter(0..50)
        .map(|i| {
            let mesh = &mesh;
            async move { mesh.register(&format!("outage-{i}@example.com")).await }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    assert_eq!(registered.len(), 50, "every write was acknowledged");
    let mut conn = db(&mesh).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM users.outbox WHERE published_at IS NULL AND event_type = 'users.user_registered'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("count");
    assert_eq!(waiting, 50, "the events wait in the outbox");

    // A new server knows no queues: both sides make them again.
    let mut server = start_sqs().await;
    wait_metric(&mesh, &admin, "signups", 51.0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(today_metric(&mesh, &admin, "signups").await, 51.0);
    let _ = server.kill();
    let _ = server.wait();
    mesh.stop().await;
}

#[tokio::test]
async fn each_scheduled_job_runs_once_among_replicas() {
    if skip_without_sqs() {
        return;
    }
    let mesh = spawn_mesh_with(|c| c.analytics.jobs = false).await;
    let dir = std::env::temp_dir().join(format!("agora-jobs-{}", mesh.db_name));
    std::fs::create_dir_all(&dir).expect("dir");
    let env = [
        ("AGORA_ANALYTICS_JOB_CHECK_SECS", "1"),
        ("RUST_LOG", "warn,agora_analytics=info"),
    ];
    let mut replicas = Vec::new();
    for i in 0..2 {
        let log = std::fs::File::create(dir.join(format!("{i}.log"))).expect("log");
        replicas.push(
            mesh.spawn_process_with("analytics", free_port(), &env, log.into())
                .await,
        );
    }
    eventually("both jobs to finish", || async {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM analytics.job_runs WHERE period = current_date AND finished_at IS NOT NULL",
        )
        .fetch_one(&mut db(&mesh).await)
        .await
        .expect("runs");
        (done == 2).then_some(())
    })
    .await;
    // Both replicas keep checking every second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for r in replicas {
        assert!(r.terminate().await, "a clean stop");
    }
    let logs: String = (0..2)
        .map(|i| std::fs::read_to_string(dir.join(format!("{i}.log"))).expect("log"))
        .collect();
    for job in ["daily_rollup", "retention"] {
        let runs = logs
            .lines()
            .filter(|l| l.contains("scheduled job ran") && l.contains(job))
            .count();
        assert_eq!(runs, 1, "{job} ran {runs} times:\n{logs}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    mesh.stop().await;
}

#[tokio::test]
async fn demand_forecasts_follow_the_committed_series() {
    if skip_without_sqs() {
        return;
    }
    // No daily rebuild may replace the constructed series meanwhile.
    let mesh = spawn_mesh_with(|c| c.analytics.jobs = false).await;
    let (_, admin) = mesh.admin().await;
    let product = uuid::Uuid::now_v7().to_string();
    // Units sold per day over the last 20 whole days: 10, 12, … 48.
    let mut conn = db(&mesh).await;
    sqlx::query(
        "INSERT INTO analytics.daily_metrics (date, service_name, metric_name, metric_value, dimensions)
         SELECT current_date - 20 + t, 'catalog', 'product.units_committed', 10 + 2 * t, jsonb_build_object('productId', $1::text)
         FROM generate_series(0, 19) AS t",
    )
    .bind(&product)
    .execute(&mut conn)
    .await
    .expect("series");
    let r = mesh
        .get(
            &format!("/api/v1/analytics/forecasts/demand?productId={product}&days=3"),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["method"], "holt");
    let values: Vec<f64> = r.body["forecast"]
        .as_array()
        .expect("forecast")
        .iter()
        .map(|p| p["value"].as_f64().expect("value"))
        .collect();
    assert_eq!(values.len(), 3);
    for (got, want) in values.iter().zip([50.0, 52.0, 54.0]) {
        assert!((got - want).abs() < 1e-6, "{values:?}");
    }
    // The history ends yesterday, the last whole day; the forecast starts
    // today.
    assert_eq!(r.body["forecast"][0]["date"], today());
    assert_eq!(r.body["history"].as_array().map(Vec::len), Some(90));

    let r = mesh
        .get(
            "/api/v1/analytics/forecasts/demand?productId=42",
            Some(&admin),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = mesh
        .get(
            &format!("/api/v1/analytics/forecasts/demand?productId={product}&days=91"),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("days"), "{:?}", r.body);
    mesh.stop().await;
}

#[tokio::test]
async fn backfill_rebuilds_days_from_the_raw_events() {
    if skip_without_sqs() {
        return;
    }
    let mesh = spawn_mesh().await;
    let (_, admin) = mesh.admin().await;
    let (_, ana) = mesh.customer("ana-backfill@example.com").await;
    let r = mesh
        .post(
            "/api/v1/analytics/events",
            Some(&ana),
            json!({"events": [{"type": "page_view", "properties": {"path": "/"}}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    wait_metric(&mesh, &admin, "signups", 2.0).await;

    // Rollups gone wrong: the rebuild restores them from MongoDB.
    let mut conn = db(&mesh).await;
    sqlx::query("UPDATE analytics.daily_metrics SET metric_value = 99")
        .execute(&mut conn)
        .await
        .expect("corrupt");
    sqlx::query("DELETE FROM analytics.user_behavior")
        .execute(&mut conn)
        .await
        .expect("corrupt");
    let day = today();
    let backfill = |from: String| {
        let mesh = &mesh;
        let day = day.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_agora"))
                .args(["analytics", "backfill", "--from", &from, "--to", &day])
                .env("DATABASE_URL", &mesh.database.url)
                .env("MONGODB_URI", &mesh.config.analytics.mongodb_uri)
                .output()
                .await
                .expect("runs");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        }
    };
    let (ok, output) = backfill(day.clone()).await;
    assert!(ok, "{output}");
    assert!(output.contains("rebuilt 1 days"), "{output}");
    assert_eq!(today_metric(&mesh, &admin, "signups").await, 2.0);
    assert_eq!(today_metric(&mesh, &admin, "page_views").await, 1.0);
    assert_eq!(today_metric(&mesh, &admin, "active_users").await, 1.0);

    let (ok, output) = backfill("2020-01-01".into()).await;
    assert!(!ok);
    assert!(output.contains("retention"), "{output}");
    mesh.stop().await;
}

#[tokio::test]
async fn sent_outbox_rows_are_pruned_after_the_retention() {
    if skip_without_sqs() {
        return;
    }
    let mesh = spawn_mesh_with(|c| c.events.outbox_retention = Duration::from_secs(1)).await;
    let (_, admin) = mesh.admin().await;
    wait_metric(&mesh, &admin, "signups", 1.0).await;
    // Sent, counted, and then gone from the outbox.
    eventually("the sent rows to be pruned", || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM users.outbox")
            .fetch_one(&mut db(&mesh).await)
            .await
            .expect("count");
        (left == 0).then_some(())
    })
    .await;
    mesh.stop().await;
}
