//! Credentials through the edge: access tokens, refresh rotation, roles,
//! deactivation, email verification, password reset and API keys.

mod common;

use agora_kit::auth::AccessClaims;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use common::{PASSWORD, TestMesh, new_signing_pem, spawn_mesh};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::json;

fn claims(sub: &str, roles: &[&str], exp_offset: i64) -> AccessClaims {
    let now = chrono::Utc::now().timestamp();
    AccessClaims {
        iss: "agora".into(),
        aud: "agora".into(),
        sub: sub.into(),
        exp: now + exp_offset,
        iat: now - 60,
        jti: uuid::Uuid::new_v4().to_string(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
    }
}

fn forge(pem: &str, kid: &str, claims: &AccessClaims) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_ed_pem(pem.as_bytes()).expect("pem"),
    )
    .expect("sign")
}

async fn kid(mesh: &TestMesh) -> String {
    mesh.get("/.well-known/jwks.json", None).await.body["keys"][0]["kid"]
        .as_str()
        .expect("kid")
        .to_owned()
}

#[tokio::test]
async fn expired_garbled_unsigned_and_foreign_tokens_are_unauthorized() {
    let mesh = spawn_mesh().await;
    let (id, _) = mesh.customer("eve@example.com").await;
    let kid = kid(&mesh).await;

    let valid = forge(&mesh.signing_pem, &kid, &claims(&id, &["customer"], 300));
    assert_eq!(
        mesh.get("/api/v1/users/me", Some(&valid)).await.status,
        StatusCode::OK,
        "the forge helper is sound"
    );

    let expired = forge(&mesh.signing_pem, &kid, &claims(&id, &["customer"], -120));
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body =
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(&id, &["admin"], 300)).expect("json"));
    let alg_none = format!("{none_header}.{body}.");
    let other_key = new_signing_pem();
    let wrong_key_same_kid = forge(&other_key, &kid, &claims(&id, &["admin"], 300));
    let unknown_kid = forge(&other_key, "not-a-kid", &claims(&id, &["admin"], 300));
    let hs256 = jsonwebtoken::encode(
        &Header {
            kid: Some(kid.clone()),
            ..Header::new(Algorithm::HS256)
        },
        &claims(&id, &["admin"], 300),
        &EncodingKey::from_secret(b"guess"),
    )
    .expect("sign");

    for (name, token, expect) in [
        ("expired", expired.as_str(), "expired"),
        ("garbled", "abc.def.ghi", "malformed"),
        ("alg none", alg_none.as_str(), ""),
        ("wrong key", wrong_key_same_kid.as_str(), "invalid"),
        ("unknown kid", unknown_kid.as_str(), "unknown"),
        ("hs256", hs256.as_str(), "EdDSA"),
    ] {
        let r = mesh.get("/api/v1/users/me", Some(token)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}: {:?}", r.body);
        assert_eq!(r.body["code"], 16, "{name}");
        assert!(r.message().contains(expect), "{name}: {:?}", r.body);
        assert_eq!(
            r.headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer")
        );
    }
    let r = mesh.get("/api/v1/users/me", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    mesh.stop().await;
}

#[tokio::test]
async fn customers_are_forbidden_from_admin_routes_and_admins_manage_users() {
    let mesh = spawn_mesh().await;
    let (cust_id, cust) = mesh.customer("fay@example.com").await;
    for (method, path) in [
        (Method::GET, "/api/v1/users".to_owned()),
        (Method::GET, format!("/api/v1/users/{cust_id}")),
        (Method::DELETE, format!("/api/v1/users/{cust_id}")),
    ] {
        let r = mesh
            .call(method.clone(), &path, Some(&cust), json!({}))
            .await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {:?}",
            r.body
        );
        assert!(r.message().contains("admin"), "{:?}", r.body);
    }

    let (admin_id, admin) = mesh.admin().await;
    let r = mesh
        .get(&format!("/api/v1/users/{cust_id}"), Some(&admin))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["email"], "fay@example.com");
    let r = mesh
        .get(
            &format!("/api/v1/users/{}", uuid::Uuid::new_v4()),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = mesh.get("/api/v1/users/not-a-uuid", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("id"), "{:?}", r.body);

    let r = mesh
        .call(
            Method::PUT,
            &format!("/api/v1/users/{cust_id}/roles"),
            Some(&admin),
            json!({"roles": ["ROLE_STAFF", "ROLE_CUSTOMER"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["roles"], json!(["ROLE_CUSTOMER", "ROLE_STAFF"]));
    let r = mesh
        .call(
            Method::PUT,
            &format!("/api/v1/users/{cust_id}/roles"),
            Some(&admin),
            json!({"roles": ["ROLE_KING"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    let r = mesh
        .call(
            Method::PUT,
            &format!("/api/v1/users/{admin_id}/roles"),
            Some(&admin),
            json!({"roles": ["ROLE_CUSTOMER"]}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "an admin cannot demote themselves"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn listing_users_pages_through_everyone_exactly_once() {
    let mesh = spawn_mesh().await;
    let (_, admin) = mesh.admin().await;
    for i in 0..5 {
        mesh.register(&format!("page{i}@example.com")).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = mesh
            .get(
                &format!("/api/v1/users?pageSize=2&pageToken={token}"),
                Some(&admin),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let users = r.body["users"].as_array().expect("users");
        assert!(users.len() <= 2);
        seen.extend(
            users
                .iter()
                .map(|u| u["email"].as_str().expect("email").to_owned()),
        );
        token = r.body["nextPageToken"].as_str().unwrap_or("").to_owned();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 6);
    let r = mesh
        .get("/api/v1/users?pageToken=garbage", Some(&admin))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("pageToken"), "{:?}", r.body);
    let r = mesh.get("/api/v1/users?pageSize=1000", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    mesh.stop().await;
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_the_session() {
    let mesh = spawn_mesh().await;
    mesh.register("gus@example.com").await;
    let (_, first) = mesh.login("gus@example.com", PASSWORD).await;

    let r = mesh
        .post("/api/v1/auth/refresh", None, json!({"refreshToken": first}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let second = r.body["tokens"]["refreshToken"]
        .as_str()
        .expect("rotated")
        .to_owned();
    assert_ne!(second, first);
    let access = r.body["tokens"]["accessToken"]
        .as_str()
        .expect("access")
        .to_owned();
    assert_eq!(
        mesh.get("/api/v1/users/me", Some(&access)).await.status,
        StatusCode::OK
    );

    // Someone replays the first token: refused, and the family dies with it.
    let r = mesh
        .post("/api/v1/auth/refresh", None, json!({"refreshToken": first}))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.message().contains("already used"), "{:?}", r.body);
    let r = mesh
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refreshToken": second}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "the legitimate successor is revoked too"
    );

    // Another session is unaffected, and logout ends it.
    let (_, other) = mesh.login("gus@example.com", PASSWORD).await;
    assert_eq!(
        mesh.post("/api/v1/auth/logout", None, json!({"refreshToken": other}))
            .await
            .status,
        StatusCode::OK
    );
    let r = mesh
        .post("/api/v1/auth/refresh", None, json!({"refreshToken": other}))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = mesh
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refreshToken": "rt_made_up"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    mesh.stop().await;
}

#[tokio::test]
async fn a_deactivated_user_can_no_longer_log_in_or_refresh() {
    let mesh = spawn_mesh().await;
    let user = mesh.register("hal@example.com").await;
    let id = user["id"].as_str().expect("id");
    let (_, refresh) = mesh.login("hal@example.com", PASSWORD).await;
    let (_, admin) = mesh.admin().await;

    let r = mesh
        .call(
            Method::DELETE,
            &format!("/api/v1/users/{id}"),
            Some(&admin),
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["active"], false);

    let r = mesh
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "hal@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.message().contains("deactivated"), "{:?}", r.body);
    let r = mesh
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refreshToken": refresh}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    mesh.stop().await;
}

#[tokio::test]
async fn email_verification_tokens_work_once() {
    let mesh = spawn_mesh().await;
    let (id, access) = mesh.customer("ida@example.com").await;
    // Registration already issued one; asking again issues a fresh one.
    let r = mesh
        .post(
            "/api/v1/auth/verify-email:request",
            Some(&access),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.body["expireTime"].is_string());
    let token = mesh
        .outbox_token("users.email_verification_requested", &id)
        .await;

    let r = mesh
        .post("/api/v1/auth/verify-email", None, json!({"token": token}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["user"]["emailVerified"], true);
    let r = mesh
        .post("/api/v1/auth/verify-email", None, json!({"token": token}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "a used token fails");
    assert!(r.message().contains("token"));
    assert_eq!(
        mesh.get("/api/v1/users/me", Some(&access)).await.body["emailVerified"],
        true
    );
    mesh.stop().await;
}

#[tokio::test]
async fn a_password_reset_sets_the_new_password_and_ends_sessions() {
    let mesh = spawn_mesh().await;
    let user = mesh.register("jo@example.com").await;
    let id = user["id"].as_str().expect("id");
    let (_, refresh) = mesh.login("jo@example.com", PASSWORD).await;

    for email in ["jo@example.com", "unknown@example.com"] {
        let r = mesh
            .post(
                "/api/v1/auth/password-reset:request",
                None,
                json!({"email": email}),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "the answer does not reveal whether {email} exists"
        );
    }
    let token = mesh
        .outbox_token("users.password_reset_requested", id)
        .await;
    let r = mesh
        .post(
            "/api/v1/auth/password-reset",
            None,
            json!({"token": token, "newPassword": "short"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("newPassword"), "{:?}", r.body);
    let r = mesh
        .post(
            "/api/v1/auth/password-reset",
            None,
            json!({"token": token, "newPassword": "a brand new secret"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    let old = mesh
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "jo@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    mesh.login("jo@example.com", "a brand new secret").await;
    let r = mesh
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refreshToken": refresh}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "sessions from before the reset are over"
    );
    let r = mesh
        .post(
            "/api/v1/auth/password-reset",
            None,
            json!({"token": token, "newPassword": "yet another secret"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "the token is single-use");
    mesh.stop().await;
}

#[tokio::test]
async fn api_keys_show_their_secret_once_carry_permissions_and_can_be_revoked() {
    let mesh = spawn_mesh().await;
    let (id, access) = mesh.customer("kim@example.com").await;
    let r = mesh
        .post(
            "/api/v1/api-keys",
            Some(&access),
            json!({"name": "ci", "permissions": ["users.read"], "rateLimitPerMinute": 120}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let secret = r.body["secret"].as_str().expect("secret").to_owned();
    let key_id = r.body["apiKey"]["id"].as_str().expect("id").to_owned();
    assert!(secret.starts_with(r.body["apiKey"]["prefix"].as_str().expect("prefix")));
    assert_eq!(r.body["apiKey"]["rateLimitPerMinute"], 120);

    let list = mesh.get("/api/v1/api-keys", Some(&access)).await;
    assert_eq!(list.body["apiKeys"].as_array().map(Vec::len), Some(1));
    assert!(
        !list.body.to_string().contains(&secret),
        "the secret is never listed"
    );

    let with_key = |path: &str| {
        mesh.http
            .get(mesh.url(path))
            .header("x-api-key", secret.clone())
    };
    let me = mesh.send(with_key("/api/v1/users/me")).await;
    assert_eq!(me.status, StatusCode::OK, "{:?}", me.body);
    assert_eq!(me.body["id"], id.as_str());
    let denied = mesh.send(with_key("/api/v1/api-keys")).await;
    assert_eq!(
        denied.status,
        StatusCode::FORBIDDEN,
        "the key lacks api_keys.read"
    );
    assert!(
        denied.message().contains("api_keys.read"),
        "{:?}",
        denied.body
    );

    let r = mesh
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{key_id}"),
            Some(&access),
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let gone = mesh.send(with_key("/api/v1/users/me")).await;
    assert_eq!(gone.status, StatusCode::UNAUTHORIZED);
    let bogus = mesh
        .send(
            mesh.http
                .get(mesh.url("/api/v1/users/me"))
                .header("x-api-key", "agk_nope"),
        )
        .await;
    assert_eq!(bogus.status, StatusCode::UNAUTHORIZED);

    let past = mesh
        .post(
            "/api/v1/api-keys",
            Some(&access),
            json!({"name": "old", "permissions": ["*"], "expireTime": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(past.status, StatusCode::BAD_REQUEST);
    assert!(past.message().contains("expireTime"), "{:?}", past.body);
    let bad = mesh
        .post(
            "/api/v1/api-keys",
            Some(&access),
            json!({"name": "x", "permissions": ["Everything!"]}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.message().contains("permissions"));
    mesh.stop().await;
}

#[tokio::test]
async fn an_edge_that_cannot_reach_the_users_service_answers_503_not_401() {
    use agora::{
        app::{App, Targets},
        config::Config,
    };
    let mut config = Config::default();
    config.admin.addr = "127.0.0.1:0".parse().expect("addr");
    config.edge.addr = "127.0.0.1:0".parse().expect("addr");
    for upstream in config.edge.upstreams.0.values_mut() {
        upstream.url = "http://127.0.0.1:1".into();
    }
    config.shutdown.drain_delay = std::time::Duration::ZERO;
    let app = App::build(config, &"edge".parse::<Targets>().expect("targets"))
        .await
        .expect("edge builds");
    let edge = format!("http://{}", app.addr("edge").expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));

    let token = forge(
        &new_signing_pem(),
        "some-kid",
        &claims("u1", &["customer"], 300),
    );
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{edge}/api/v1/users/me"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let r = http
        .get(format!("{edge}/health"))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["status"], "unhealthy");
    assert!(body["services"][0]["error"].is_string());

    let _ = tx.send(());
    task.await.expect("task").expect("stops cleanly");
}

#[tokio::test]
async fn the_edge_verifies_credentials_with_the_upstream_its_setting_names() {
    let mesh = spawn_mesh().await;
    let (_, access) = mesh.customer("ana@example.com").await;
    let users = format!("http://{}", mesh.users_addr);
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    // "users" (the routes' upstream) is unreachable; "accounts" is the real
    // users service and the one that checks credentials.
    let edge = mesh
        .spawn("edge", |c| {
            let mut accounts = c.edge.upstreams.0["users"].clone();
            accounts.url = users;
            c.edge.upstreams.0.insert("accounts".into(), accounts);
            c.edge.upstreams.0.get_mut("users").expect("users").url = dead;
            c.edge.auth_upstream = "accounts".into();
        })
        .await;
    let r = mesh
        .send(
            mesh.http
                .get(edge.url("/api/v1/products?pageSize=1"))
                .bearer_auth(&access),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = mesh
        .send(
            mesh.http
                .post(edge.url("/api/v1/reservations"))
                .bearer_auth(&access)
                .json(&json!({"items": []})),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "the token was verified through accounts and the call reached the catalog: {:?}",
        r.body
    );
    drop(edge);
    mesh.stop().await;
}
