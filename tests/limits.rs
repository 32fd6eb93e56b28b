//! Rate limits and idempotency keys at the edge, as clients meet them:
//! the `RateLimit-*` headers, 429 with `Retry-After`, one limit shared by
//! every edge replica, a dead Redis, and retried POSTs answered once.

mod common;

use common::{PASSWORD, Replica, TestMesh, category, product, spawn_mesh, spawn_mesh_with, staff};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{Value, json};

async fn send(req: RequestBuilder) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let resp = req.send().await.expect("edge answers");
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

fn header(headers: &reqwest::header::HeaderMap, name: &str) -> u64 {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("{name} is missing: {headers:?}"))
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number")
}

async fn edge_with(mesh: &TestMesh, adjust: impl FnOnce(&mut agora::config::Config)) -> Replica {
    mesh.spawn("edge", adjust).await
}

#[tokio::test]
async fn anonymous_callers_are_limited_per_ip_and_told_when_to_come_back() {
    let mesh = spawn_mesh().await;
    let edge = edge_with(&mesh, |c| c.edge.rate_limits.anonymous_per_minute = 3).await;
    for left in [2, 1, 0] {
        let (status, headers, body) = send(mesh.http.get(edge.url("/api/v1/categories"))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(header(&headers, "ratelimit-limit"), 3);
        assert_eq!(header(&headers, "ratelimit-remaining"), left);
        assert!(header(&headers, "ratelimit-reset") <= 60);
    }
    let (status, headers, body) = send(mesh.http.get(edge.url("/api/v1/categories"))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let retry_after = header(&headers, "retry-after");
    assert!(
        (15..=20).contains(&retry_after),
        "one call per 20 s: {retry_after}"
    );
    assert_eq!(header(&headers, "ratelimit-remaining"), 0);
    assert_eq!(body["code"], 8);
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("3 calls per minute"),
        "{body}"
    );
    assert_eq!(
        body["details"][0]["@type"],
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    assert!(
        body["details"][0]["retryDelay"]
            .as_str()
            .expect("delay")
            .ends_with('s')
    );
    // A reason a client can branch on.
    assert_eq!(
        body["details"][1],
        json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMITED", "domain": "agora"}),
        "{body}"
    );
    drop(edge);
    mesh.stop().await;
}

#[tokio::test]
async fn two_edge_replicas_share_one_limit_through_redis() {
    let mesh = spawn_mesh().await;
    let a = edge_with(&mesh, |c| c.edge.rate_limits.anonymous_per_minute = 4).await;
    let b = edge_with(&mesh, |c| c.edge.rate_limits.anonymous_per_minute = 4).await;
    for edge in [&a, &b, &a, &b] {
        let (status, _, body) = send(mesh.http.get(edge.url("/api/v1/categories"))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for edge in [&a, &b] {
        let (status, _, _) = send(mesh.http.get(edge.url("/api/v1/categories"))).await;
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "four calls through either replica spend the one budget"
        );
    }
    drop((a, b));
    mesh.stop().await;
}

#[tokio::test]
async fn signed_in_users_and_api_keys_have_limits_of_their_own() {
    let mesh = spawn_mesh().await;
    let (_, ana) = mesh.customer("ana@example.com").await;
    let (_, bob) = mesh.customer("bob@example.com").await;
    let edge = edge_with(&mesh, |c| c.edge.rate_limits.user_per_minute = 3).await;

    let (status, _, key) = send(
        mesh.http
            .post(edge.url("/api/v1/api-keys"))
            .bearer_auth(&ana)
            .json(
                &json!({"name": "script", "permissions": ["users.read"], "rateLimitPerMinute": 2}),
            ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{key}");
    let secret = key["secret"].as_str().expect("secret").to_owned();

    let me = || mesh.http.get(edge.url("/api/v1/users/me"));
    for _ in 0..2 {
        assert_eq!(send(me().bearer_auth(&ana)).await.0, StatusCode::OK);
    }
    let (status, headers, _) = send(me().bearer_auth(&ana)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "Ana's fourth call");
    assert_eq!(header(&headers, "ratelimit-limit"), 3);
    assert_eq!(
        send(me().bearer_auth(&bob)).await.0,
        StatusCode::OK,
        "Bob has his own budget"
    );

    for left in [1, 0] {
        let (status, headers, body) = send(me().header("x-api-key", &secret)).await;
        assert_eq!(status, StatusCode::OK, "the key has its own budget: {body}");
        assert_eq!(
            header(&headers, "ratelimit-limit"),
            2,
            "the key's stored limit"
        );
        assert_eq!(header(&headers, "ratelimit-remaining"), left);
    }
    let (status, _, _) = send(me().header("x-api-key", &secret)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    drop(edge);
    mesh.stop().await;
}

#[tokio::test]
async fn sign_in_routes_are_limited_per_ip_whoever_calls() {
    let mesh = spawn_mesh().await;
    mesh.register("eve@example.com").await;
    let edge = edge_with(&mesh, |c| {
        c.edge.rate_limits.auth_per_minute = 2;
        c.edge.rate_limits.anonymous_per_minute = 1000;
    })
    .await;
    let login = |password: &str| {
        mesh.http
            .post(edge.url("/api/v1/auth/login"))
            .json(&json!({"email": "eve@example.com", "password": password}))
    };
    assert_eq!(
        send(login("wrong guess 1")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(login("wrong guess 2")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, headers, _) = send(login(PASSWORD)).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "a third attempt within the minute waits, even with the right password"
    );
    assert_eq!(header(&headers, "ratelimit-limit"), 2);
    let (status, _, _) = send(mesh.http.get(edge.url("/api/v1/categories"))).await;
    assert_eq!(status, StatusCode::OK, "other routes keep their own budget");
    drop(edge);
    mesh.stop().await;
}

#[tokio::test]
async fn with_redis_down_each_edge_still_limits_on_its_own() {
    let mesh = spawn_mesh().await;
    let edge = edge_with(&mesh, |c| {
        c.edge.redis_url = "redis://127.0.0.1:1".into();
        c.edge.rate_limits.anonymous_per_minute = 2;
    })
    .await;
    for left in [1, 0] {
        let (status, headers, body) = send(mesh.http.get(edge.url("/api/v1/categories"))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(header(&headers, "ratelimit-remaining"), left);
    }
    let (status, headers, _) = send(mesh.http.get(edge.url("/api/v1/categories"))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(header(&headers, "retry-after") >= 1);
    drop(edge);
    mesh.stop().await;
}

#[tokio::test]
async fn a_retried_post_with_the_same_idempotency_key_gets_the_first_answer() {
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let create = |key: &str, slug: &str| {
        mesh.http
            .post(mesh.url("/api/v1/categories"))
            .bearer_auth(&staff)
            .header("idempotency-key", key)
            .json(&json!({"slug": slug, "name": "Lighting"}))
    };
    let (status, headers, first) = send(create("cat-1", "lighting")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert!(headers.get("idempotent-replayed").is_none());

    // Run again, the slug would be a conflict; the key answers instead.
    let (status, headers, again) = send(create("cat-1", "lighting")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again, first, "the very same answer");
    assert_eq!(headers["idempotent-replayed"], "true");

    let (status, _, body) = send(create("cat-1", "lamps")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("Idempotency-Key"),
        "{body}"
    );

    let (status, _, body) = send(create("cat-2", "lighting")).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a new key runs the request: {body}"
    );
    let (status, _, body) = send(create(&"k".repeat(300), "shelves")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("Idempotency-Key")
    );

    // Keys belong to their caller: another staff member's "cat-1" is theirs.
    let other = common::staff(&mesh).await;
    let (status, _, body) = send(
        mesh.http
            .post(mesh.url("/api/v1/categories"))
            .bearer_auth(&other)
            .header("idempotency-key", "cat-1")
            .json(&json!({"slug": "desks", "name": "Desks"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ne!(body["id"], first["id"]);
    mesh.stop().await;
}

/// A product with `stock` units; returns its id.
async fn stocked(mesh: &TestMesh, stock: i32) -> String {
    let staff = staff(mesh).await;
    let cat = category(mesh, &staff, "desks", None).await;
    product(mesh, &staff, "desk-1", "Desk", &cat, 19900, stock).await["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

#[tokio::test]
async fn concurrent_duplicates_reserve_once() {
    let mesh = spawn_mesh().await;
    let id = stocked(&mesh, 100).await;
    let (_, ana) = mesh.customer("ana@example.com").await;
    let reserve = || {
        mesh.http
            .post(mesh.url("/api/v1/reservations"))
            .bearer_auth(&ana)
            .header("idempotency-key", "order-7")
            .json(&json!({"items": [{"productId": id, "quantity": 3}]}))
    };
    let answers = futures::future::join_all((0..6).map(|_| send(reserve()))).await;
    let mut ids = std::collections::HashSet::new();
    for (status, headers, body) in &answers {
        match *status {
            StatusCode::OK => {
                ids.insert(body["id"].as_str().expect("id").to_owned());
            }
            StatusCode::CONFLICT => {
                assert!(headers.contains_key("retry-after"), "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(ids.len(), 1, "one reservation, whoever answered");
    let stock = mesh
        .get(&format!("/api/v1/products/{id}/stock"), None)
        .await;
    assert_eq!(stock.body["reserved"], 3, "{:?}", stock.body);
    mesh.stop().await;
}

#[tokio::test]
async fn without_the_edge_records_the_catalog_answers_a_reused_key_the_same_way() {
    // No Redis at the edge: the catalog's own reservation keys decide.
    let mesh = spawn_mesh_with(|c| c.edge.redis_url = String::new()).await;
    let id = stocked(&mesh, 100).await;
    let (_, ana) = mesh.customer("ana@example.com").await;
    let reserve = |quantity: i32| {
        mesh.http
            .post(mesh.url("/api/v1/reservations"))
            .bearer_auth(&ana)
            .header("idempotency-key", "order-9")
            .json(&json!({"items": [{"productId": id, "quantity": quantity}]}))
    };
    let (status, _, first) = send(reserve(2)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, _, again) = send(reserve(2)).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);
    let (status, _, body) = send(reserve(5)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    mesh.stop().await;
}

#[tokio::test]
async fn a_login_flood_is_answered_429_not_queued_without_bound() {
    let mesh = spawn_mesh().await;
    mesh.register("flood@example.com").await;
    // Far more sign-ins than the cores can hash within the wait.
    let attempts = (0..200).map(|i| {
        send(
            mesh.http
                .post(mesh.url("/api/v1/auth/login"))
                .json(&json!({"email": "flood@example.com", "password": format!("guess {i}")})),
        )
    });
    let answers = futures::future::join_all(attempts).await;
    let mut refused = 0;
    for (status, headers, body) in &answers {
        match *status {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                assert!(header(headers, "retry-after") >= 1, "{body}");
                assert_eq!(body["code"], 8);
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(refused > 0, "some sign-ins were refused rather than queued");
    let (access, _) = mesh.login("flood@example.com", PASSWORD).await;
    assert!(!access.is_empty(), "after the flood, sign-in works again");
    mesh.stop().await;
}
