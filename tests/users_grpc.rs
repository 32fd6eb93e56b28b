//! The users service as internal gRPC callers use it: generated stubs,
//! server reflection, health, and its own enforcement of the contracts'
//! access rules (it trusts nothing the edge asserts).

mod common;

use agora_proto::users::v1::{
    GetMeRequest, ListUsersRequest, LoginRequest, RegisterRequest,
    users_service_client::UsersServiceClient,
};
use common::{PASSWORD, spawn_mesh};
use tonic::{Code, Request, metadata::MetadataValue, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

fn bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).expect("ascii"),
    );
    req
}

#[tokio::test]
async fn generated_clients_register_log_in_and_read_their_profile() {
    let mesh = spawn_mesh().await;
    let mut client = UsersServiceClient::new(channel(mesh.users_addr).await);
    let user = client
        .register(RegisterRequest {
            email: "lea@example.com".into(),
            password: PASSWORD.into(),
            display_name: "Lea".into(),
        })
        .await
        .expect("register")
        .into_inner()
        .user
        .expect("user");
    let login = client
        .login(LoginRequest {
            email: "lea@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("login")
        .into_inner();
    let token = login.tokens.expect("tokens").access_token;
    let me = client
        .get_me(bearer(GetMeRequest {}, &token))
        .await
        .expect("get me")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(me.id, user.id);

    let err = client
        .register(RegisterRequest {
            email: "LEA@example.com".into(),
            password: PASSWORD.into(),
            display_name: "Lea".into(),
        })
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists);
    mesh.stop().await;
}

#[tokio::test]
async fn the_service_enforces_access_rules_without_the_edge() {
    let mesh = spawn_mesh().await;
    let (_, access) = mesh.customer("max@example.com").await;
    let mut client = UsersServiceClient::new(channel(mesh.users_addr).await);
    let err = client.get_me(GetMeRequest {}).await.expect_err("anonymous");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = client
        .list_users(bearer(ListUsersRequest::default(), &access))
        .await
        .expect_err("customer");
    assert_eq!(err.code(), Code::PermissionDenied);

    // Identity headers the edge would add are not trusted on their own.
    let mut spoofed = Request::new(ListUsersRequest::default());
    spoofed
        .metadata_mut()
        .insert("x-agora-user-id", MetadataValue::from_static("someone"));
    let err = client.list_users(spoofed).await.expect_err("spoofed");
    assert_eq!(err.code(), Code::Unauthenticated);
    mesh.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_services_and_health_reports_serving() {
    let mesh = spawn_mesh().await;
    let ch = channel(mesh.users_addr).await;

    let names = common::reflected_services(ch.clone()).await;
    assert!(
        !names.contains(&"agora.catalog.v1.CatalogService".to_owned()),
        "only what this port serves is listed: {names:?}"
    );
    assert!(
        names.contains(&"agora.users.v1.UsersService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );

    let mut health = HealthClient::new(ch);
    for service in ["", "agora.users.v1.UsersService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("check")
            .into_inner();
        assert_eq!(status.status(), ServingStatus::Serving, "{service:?}");
    }
    let err = health
        .check(HealthCheckRequest {
            service: "nope.Service".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    mesh.stop().await;
}
