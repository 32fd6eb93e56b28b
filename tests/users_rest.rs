//! The users service as REST clients use it, through the edge.

mod common;

use common::{PASSWORD, spawn_mesh};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn a_new_user_registers_logs_in_and_reads_their_profile() {
    let mesh = spawn_mesh().await;
    let user = mesh.register("Ana@Example.com").await;
    assert_eq!(user["email"], "Ana@Example.com");
    assert_eq!(user["displayName"], "Test User");
    assert_eq!(user["roles"], json!(["ROLE_CUSTOMER"]));
    assert_eq!(user["emailVerified"], false);
    assert!(user.get("password").is_none() && user.get("passwordHash").is_none());

    let login = mesh
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "ana@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{:?}", login.body);
    assert_eq!(login.body["tokens"]["tokenType"], "Bearer");
    assert_eq!(login.body["tokens"]["expiresIn"], 900);
    let access = login.body["tokens"]["accessToken"].as_str().expect("token");

    let me = mesh.get("/api/v1/users/me", Some(access)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["id"], user["id"]);
    mesh.stop().await;
}

#[tokio::test]
async fn registering_an_email_twice_is_a_conflict_whatever_its_case() {
    let mesh = spawn_mesh().await;
    mesh.register("bo@example.com").await;
    let again = mesh
        .post(
            "/api/v1/users",
            None,
            json!({"email": "BO@example.com", "password": PASSWORD, "displayName": "Bo"}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.body["code"], 6);
    assert!(
        again.message().contains("already exists"),
        "{:?}",
        again.body
    );
    mesh.stop().await;
}

#[tokio::test]
async fn registration_input_errors_name_the_field() {
    let mesh = spawn_mesh().await;
    for (body, field) in [
        (
            json!({"email": "nope", "password": PASSWORD, "displayName": "X"}),
            "email",
        ),
        (
            json!({"email": "x@example.com", "password": "short", "displayName": "X"}),
            "password",
        ),
        (
            json!({"email": "x@example.com", "password": PASSWORD, "displayName": "  "}),
            "displayName",
        ),
        (
            json!({"email": "x@example.com", "password": PASSWORD, "displayName": 5}),
            "displayName",
        ),
    ] {
        let r = mesh.post("/api/v1/users", None, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
        assert!(r.message().contains(field), "{field}: {:?}", r.body);
    }
    mesh.stop().await;
}

#[tokio::test]
async fn a_wrong_password_or_unknown_email_is_unauthorized() {
    let mesh = spawn_mesh().await;
    mesh.register("cy@example.com").await;
    for email in ["cy@example.com", "nobody@example.com"] {
        let r = mesh
            .post(
                "/api/v1/auth/login",
                None,
                json!({"email": email, "password": "wrong horse battery"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.message(), "wrong email or password");
    }
    mesh.stop().await;
}

#[tokio::test]
async fn unknown_routes_wrong_methods_and_malformed_json_answer_in_the_status_shape() {
    let mesh = spawn_mesh().await;
    let r = mesh.get("/api/v1/nothing-here", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["code"], 5);
    assert!(r.body["details"].is_array());

    let r = mesh
        .send(mesh.http.delete(mesh.url("/api/v1/auth/login")))
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        r.headers.get("allow").and_then(|v| v.to_str().ok()),
        Some("POST, OPTIONS")
    );

    // OPTIONS names what a path serves; HEAD is GET without the body.
    let r = mesh
        .send(
            mesh.http
                .request(Method::OPTIONS, mesh.url("/api/v1/users/me")),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        r.headers.get("allow").and_then(|v| v.to_str().ok()),
        Some("GET, HEAD, PATCH, OPTIONS")
    );
    let head = mesh
        .http
        .head(mesh.url("/api/v1/categories"))
        .send()
        .await
        .expect("answers");
    assert_eq!(head.status(), StatusCode::OK);
    assert!(head.headers().get("etag").is_some());
    assert!(head.bytes().await.expect("body").is_empty());
    let r = mesh
        .send(
            mesh.http
                .request(Method::OPTIONS, mesh.url("/api/v1/nothing-here")),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let r = mesh
        .send(
            mesh.http
                .post(mesh.url("/api/v1/auth/login"))
                .header("content-type", "application/json")
                .body("{\"email\":"),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["code"], 3);

    let r = mesh
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "a@example.com", "pasword": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("pasword"), "{:?}", r.body);

    let huge = format!("{{\"email\": \"{}\"}}", "a".repeat(2 << 20));
    let r = mesh
        .send(
            mesh.http
                .post(mesh.url("/api/v1/auth/login"))
                .header("content-type", "application/json")
                .body(huge),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.message().contains("larger than"), "{:?}", r.body);
    mesh.stop().await;
}

#[tokio::test]
async fn updating_my_profile_follows_the_field_mask() {
    let mesh = spawn_mesh().await;
    let (_, access) = mesh.customer("di@example.com").await;
    let r = mesh
        .call(
            Method::PATCH,
            "/api/v1/users/me",
            Some(&access),
            json!({"displayName": "Diana"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["displayName"], "Diana");

    let r = mesh
        .call(
            Method::PATCH,
            "/api/v1/users/me?updateMask=displayName",
            Some(&access),
            json!({"displayName": "Di", "email": "x@y.z"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["displayName"], "Di");
    assert_eq!(
        r.body["email"], "di@example.com",
        "fields outside the mask are untouched"
    );

    let r = mesh
        .call(
            Method::PATCH,
            "/api/v1/users/me",
            Some(&access),
            json!({"email": "new@example.com"}),
        )
        .await;
    // The email is output-only here: ignored in a request (AIP-203), so
    // nothing changes.
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let me = mesh.get("/api/v1/users/me", Some(&access)).await.body;
    assert_eq!(me["displayName"], "Di");
    assert_eq!(me["email"], "di@example.com");
    // A mask naming it is refused, naming the field.
    let r = mesh
        .call(
            Method::PATCH,
            "/api/v1/users/me?updateMask=email",
            Some(&access),
            json!({"email": "new@example.com"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("email"), "{:?}", r.body);
    mesh.stop().await;
}

#[tokio::test]
async fn public_keys_and_the_openapi_document_need_no_credentials() {
    let mesh = spawn_mesh().await;
    let jwks = mesh.get("/.well-known/jwks.json", None).await;
    assert_eq!(jwks.status, StatusCode::OK);
    let key = &jwks.body["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["alg"], "EdDSA");
    assert!(key["kid"].as_str().is_some_and(|k| !k.is_empty()));

    let doc = mesh.get("/api/v1/openapi.json", None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["openapi"], "3.1.0");
    let paths = doc.body["paths"].as_object().expect("paths");
    for p in [
        "/api/v1/users",
        "/api/v1/users/me",
        "/api/v1/users/{id}",
        "/api/v1/auth/login",
        "/api/v1/api-keys/{id}",
    ] {
        assert!(paths.contains_key(p), "OpenAPI lacks {p}");
    }
    assert_eq!(
        doc.body["paths"]["/api/v1/auth/login"]["post"]["security"],
        json!([])
    );
    assert!(
        doc.body["components"]["schemas"]["agora.users.v1.User"]["properties"]["displayName"]
            .is_object()
    );
    // Paths differing only in parameter names are one path in OpenAPI;
    // the document must not list such twins.
    let mut shapes: Vec<String> = paths
        .keys()
        .map(|p| {
            p.split('/')
                .map(|seg| match (seg.starts_with('{'), seg.find('}')) {
                    (true, Some(end)) => format!("{{}}{}", &seg[end + 1..]),
                    _ => seg.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    let total = shapes.len();
    shapes.sort();
    shapes.dedup();
    assert_eq!(
        shapes.len(),
        total,
        "templated twins in {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    let patch = &doc.body["paths"]["/api/v1/products/{id}"]["patch"];
    assert_eq!(patch["parameters"][0]["name"], "id");
    assert!(
        patch["parameters"][0]["description"]
            .as_str()
            .is_some_and(|d| d.contains("product.id"))
    );
    mesh.stop().await;
}

#[tokio::test]
async fn health_metrics_and_probes_report_a_serving_mesh() {
    let mesh = spawn_mesh().await;
    let h = mesh.get("/health", None).await;
    assert_eq!(h.status, StatusCode::OK, "{:?}", h.body);
    assert_eq!(h.body["status"], "healthy");
    let services = h.body["services"].as_array().expect("services");
    for name in ["users", "catalog"] {
        let s = services
            .iter()
            .find(|s| s["name"] == name)
            .expect("each upstream is checked");
        assert_eq!(s["status"], "healthy", "{name}");
        assert!(s["responseTime"].is_number());
    }

    let ready = mesh
        .http
        .get(format!("{}/readyz", mesh.admin))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), StatusCode::OK);
    let live = mesh
        .http
        .get(format!("{}/livez", mesh.admin))
        .send()
        .await
        .expect("livez");
    assert_eq!(live.status(), StatusCode::OK);
    let metrics = mesh
        .http
        .get(format!("{}/metrics", mesh.admin))
        .send()
        .await
        .expect("metrics");
    let text = metrics.text().await.expect("text");
    assert!(text.contains("http_requests_total"), "{text}");
    assert!(text.contains("route=\"/health\""), "{text}");
    assert!(text.contains("grpc_server_handled_total"), "{text}");
    mesh.stop().await;
}

#[tokio::test]
async fn browsers_from_allowed_origins_pass_cors_and_every_answer_has_a_request_id() {
    let mesh =
        common::spawn_mesh_with(|c| c.edge.cors_origins = vec!["https://shop.example".into()])
            .await;
    let preflight = mesh
        .send(
            mesh.http
                .request(Method::OPTIONS, mesh.url("/api/v1/users/me"))
                .header("origin", "https://shop.example")
                .header("access-control-request-method", "PATCH")
                .header(
                    "access-control-request-headers",
                    "authorization,content-type",
                ),
        )
        .await;
    assert!(preflight.status.is_success(), "{:?}", preflight.status);
    let allowed = preflight
        .headers
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok());
    assert_eq!(allowed, Some("https://shop.example"));

    let other = mesh
        .send(
            mesh.http
                .get(mesh.url("/health"))
                .header("origin", "https://evil.example"),
        )
        .await;
    assert!(other.headers.get("access-control-allow-origin").is_none());
    assert!(
        other
            .headers
            .get("x-request-id")
            .is_some_and(|v| !v.is_empty())
    );

    let given = mesh
        .send(
            mesh.http
                .get(mesh.url("/api/v1/nowhere"))
                .header("x-request-id", "req-123"),
        )
        .await;
    assert_eq!(
        given
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-123")
    );
    mesh.stop().await;
}

#[tokio::test]
async fn a_call_past_its_deadline_answers_504() {
    // Hashing a password takes far longer than a millisecond, so this
    // deadline always passes first.
    let mesh = common::spawn_mesh_with(|c| {
        if let Some(users) = c.edge.upstreams.0.get_mut("users") {
            users.timeout = std::time::Duration::from_millis(1);
        }
    })
    .await;
    let r = mesh
        .post(
            "/api/v1/users",
            None,
            json!({"email": "slow@example.com", "password": PASSWORD, "displayName": "Slow"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{:?}", r.body);
    assert_eq!(r.body["code"], 4);
    mesh.stop().await;
}
