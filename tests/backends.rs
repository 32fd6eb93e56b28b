//! The edge in front of a gRPC service it was not built with: the
//! `acme.shop` contracts under tests/protos, served by a separately started
//! server, reach `agora serve --target edge` as a descriptor set file or by
//! the server's reflection, with no rebuild; v1 and v2 live side by side.

mod common;

use std::{net::SocketAddr, path::Path, time::Duration};

use common::{PASSWORD, TestMesh, free_port, spawn_mesh};
use futures::future::BoxFuture;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// The shop contracts, compiled with their imports.
fn shop_contracts(files: &[&str]) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut compiler =
        protox::Compiler::new([root.join("tests/protos"), root.join("proto")]).expect("paths");
    compiler.include_imports(true);
    compiler
        .open_files(files)
        .expect("the shop contracts compile");
    compiler.encode_file_descriptor_set()
}

const V1: &str = "acme/shop/v1/shop.proto";
const V2: &str = "acme/shop/v2/shop.proto";

/// A gRPC server implementing every method of `contracts` from the
/// descriptors alone, with server reflection over them, and the standard
/// health service if `health`. Stops when the returned sender is dropped.
async fn start_shop(port: u16, contracts: Vec<u8>, health: bool) -> oneshot::Sender<()> {
    let pool = DescriptorPool::decode(contracts.as_slice()).expect("descriptors");
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(&contracts)
        .build_v1()
        .expect("reflection");
    let calls = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let pool = pool.clone();
        async move { answer(&pool, req).await }
    });
    let mut routes = tonic::service::Routes::from(calls).add_service(reflection);
    if health {
        routes = routes.add_service(tonic_health::server::health_reporter().1);
    }
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("the shop's port");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    stop
}

async fn answer(
    pool: &DescriptorPool,
    req: axum::extract::Request,
) -> http::Response<tonic::body::Body> {
    let path = req.uri().path().to_owned();
    let method = path
        .trim_start_matches('/')
        .split_once('/')
        .and_then(|(service, name)| {
            pool.get_service_by_name(service)?
                .methods()
                .find(|m| m.name() == name)
        });
    match method {
        None => Status::unimplemented(path).into_http(),
        Some(method) => {
            tonic::server::Grpc::new(DynamicCodec(method.input()))
                .unary(Shop(method), req)
                .await
        }
    }
}

/// The shop's business: items are named after their id.
#[derive(Clone)]
struct Shop(MethodDescriptor);

impl tonic::server::UnaryService<DynamicMessage> for Shop {
    type Response = DynamicMessage;
    type Future = BoxFuture<'static, Result<tonic::Response<DynamicMessage>, Status>>;

    fn call(&mut self, request: tonic::Request<DynamicMessage>) -> Self::Future {
        let method = self.0.clone();
        Box::pin(async move {
            let signed_in = request.metadata().contains_key("authorization");
            let input = serde_json::to_value(request.get_ref()).map_err(internal)?;
            let id = input["id"].as_str().unwrap_or("new").to_owned();
            let output = match method.full_name() {
                "acme.shop.v1.ShopService.GetItem" => json!({
                    "id": id, "name": format!("item {id}"), "priceCents": "250"
                }),
                "acme.shop.v1.ShopService.CreateItem" => {
                    let mut item = input["item"].clone();
                    item["id"] = json!(if signed_in { "made-signed-in" } else { "made" });
                    item
                }
                "acme.shop.v2.ShopService.GetItem" => json!({
                    "id": id, "title": format!("item {id}"),
                    "price": {"currencyCode": "EUR", "units": "2"}
                }),
                other => return Err(Status::unimplemented(other.to_owned())),
            };
            DynamicMessage::deserialize(method.output(), output)
                .map(tonic::Response::new)
                .map_err(internal)
        })
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// Messages of a descriptor known only at run time.
struct DynamicCodec(MessageDescriptor);

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicCodec;
    type Decoder = DynamicCodec;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicCodec(self.0.clone())
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicCodec(self.0.clone())
    }
}

impl Encoder for DynamicCodec {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(internal)
    }
}

impl Decoder for DynamicCodec {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

async fn customer(mesh: &TestMesh) -> String {
    let email = format!("shopper-{}@example.com", uuid::Uuid::new_v4());
    mesh.register(&email).await;
    mesh.login(&email, PASSWORD).await.0
}

async fn get_json(http: &reqwest::Client, url: &str, token: Option<&str>) -> Value {
    let mut req = http.get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("edge").json().await.expect("json")
}

/// Polls `url` until it answers `status`, for what a contract refresh
/// brings.
async fn eventually(http: &reqwest::Client, url: &str, token: &str, status: StatusCode) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let resp = http.get(url).bearer_auth(token).send().await.expect("edge");
        let got = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if got == status {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{url} still answers {got}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_descriptor_set_file_puts_a_foreign_service_and_both_its_versions_behind_the_edge() {
    let mesh = spawn_mesh().await;
    let shop_port = free_port();
    let _shop = start_shop(shop_port, shop_contracts(&[V1, V2]), true).await;
    let dir = std::env::temp_dir().join(format!("agora-shop-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("shop.binpb");
    std::fs::write(&file, shop_contracts(&[V1, V2])).expect("descriptor set");
    let shop_url = format!("http://127.0.0.1:{shop_port}");
    let edge = mesh
        .spawn_process(
            "edge",
            free_port(),
            &[
                ("AGORA_EDGE_DESCRIPTOR_SETS", file.to_str().expect("utf-8")),
                ("AGORA_EDGE_SHOP_URL", &shop_url),
                ("AGORA_EDGE_SHOP_PACKAGES", "acme.shop"),
            ],
        )
        .await;
    let http = &mesh.http;
    let token = customer(&mesh).await;

    // Both versions, each at its own paths, each in its own shape.
    let v1: Value = get_json(http, &edge.url("/api/v1/shop/items/lamp"), Some(&token)).await;
    assert_eq!(
        v1,
        json!({"id": "lamp", "name": "item lamp", "priceCents": "250"})
    );
    let v2: Value = get_json(http, &edge.url("/api/v2/shop/items/lamp"), Some(&token)).await;
    assert_eq!(v2["title"], "item lamp", "{v2}");
    assert_eq!(v2["price"], json!({"currencyCode": "EUR", "units": "2"}));

    // The edge's own policy applies: methods without an access option need
    // a signed-in caller, and the contract's rules are checked before the
    // call, in the JSON names the client used.
    let anonymous = http
        .get(edge.url("/api/v1/shop/items/lamp"))
        .send()
        .await
        .expect("edge");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let refused = http
        .post(edge.url("/api/v1/shop/items"))
        .bearer_auth(&token)
        .json(&json!({"name": "", "priceCents": "-1"}))
        .send()
        .await
        .expect("edge");
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let body: Value = refused.json().await.expect("json");
    let fields: Vec<&str> = body["details"][0]["fieldViolations"]
        .as_array()
        .expect("violations")
        .iter()
        .filter_map(|v| v["field"].as_str())
        .collect();
    assert_eq!(fields, ["item.name", "item.priceCents"], "{body}");
    let made: Value = http
        .post(edge.url("/api/v1/shop/items"))
        .bearer_auth(&token)
        .json(&json!({"name": "desk lamp", "priceCents": "1999"}))
        .send()
        .await
        .expect("edge")
        .json()
        .await
        .expect("json");
    assert_eq!(
        made,
        json!({"id": "made-signed-in", "name": "desk lamp", "priceCents": "1999"}),
        "the caller's credentials reach the service"
    );

    // The OpenAPI document and /health follow the loaded contracts; the
    // built-in ones are still served.
    let doc: Value = get_json(http, &edge.url("/api/v1/openapi.json"), None).await;
    for path in [
        "/api/v1/shop/items/{id}",
        "/api/v2/shop/items/{id}",
        "/api/v1/products",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    let shop = common::service_health(http, &edge.url(""), "shop").await;
    assert_eq!(shop["status"], "healthy", "{shop}");
    assert_eq!(
        shop["grpcServices"],
        json!(["acme.shop.v1.ShopService", "acme.shop.v2.ShopService"])
    );
    let _ = std::fs::remove_dir_all(&dir);
    mesh.stop().await;
}

#[tokio::test]
async fn server_reflection_brings_a_service_in_and_a_new_version_without_an_edge_restart() {
    let mesh = spawn_mesh().await;
    let shop_port = free_port();
    let shop = start_shop(shop_port, shop_contracts(&[V1]), false).await;
    let shop_url = format!("http://127.0.0.1:{shop_port}");
    let edge = mesh
        .spawn_process(
            "edge",
            free_port(),
            &[
                ("AGORA_EDGE_SHOP_URL", &shop_url),
                ("AGORA_EDGE_SHOP_REFLECTION", "true"),
                ("AGORA_EDGE_CONTRACTS_REFRESH_SECS", "1"),
                // This edge fronts the shop alone.
                ("AGORA_EDGE_EMBEDDED_CONTRACTS", "false"),
            ],
        )
        .await;
    let http = &mesh.http;
    let token = customer(&mesh).await;
    let v1 = eventually(
        http,
        &edge.url("/api/v1/shop/items/chair"),
        &token,
        StatusCode::OK,
    )
    .await;
    assert_eq!(v1["name"], "item chair");
    eventually(
        http,
        &edge.url("/api/v2/shop/items/chair"),
        &token,
        StatusCode::NOT_FOUND,
    )
    .await;

    // The shop is upgraded in place to serve v2 as well; the edge reads
    // its reflection again and serves the new version.
    drop(shop);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _shop = start_shop(shop_port, shop_contracts(&[V1, V2]), false).await;
    let v2 = eventually(
        http,
        &edge.url("/api/v2/shop/items/chair"),
        &token,
        StatusCode::OK,
    )
    .await;
    assert_eq!(v2["title"], "item chair", "{v2}");
    let doc: Value = get_json(http, &edge.url("/api/v1/openapi.json"), None).await;
    assert!(doc["paths"].get("/api/v2/shop/items/{id}").is_some());
    assert!(
        doc["paths"].get("/api/v1/products").is_none(),
        "the built-in contracts are off"
    );
    let products = http
        .get(edge.url("/api/v1/products"))
        .send()
        .await
        .expect("edge");
    assert_eq!(products.status(), StatusCode::NOT_FOUND);
    // A backend without the standard health service still counts as up
    // when it answers.
    let shop = common::service_health(http, &edge.url(""), "shop").await;
    assert_eq!(shop["status"], "healthy", "{shop}");
    assert_eq!(shop["contractsUnread"], false, "{shop}");
    mesh.stop().await;
}

#[tokio::test]
async fn an_unreadable_descriptor_set_or_an_unserved_package_stops_the_edge_naming_it() {
    let dir = std::env::temp_dir().join(format!("agora-shop-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("shop.binpb");
    std::fs::write(&file, shop_contracts(&[V1])).expect("descriptor set");
    let garbage = dir.join("garbage.binpb");
    std::fs::write(&garbage, b"not a descriptor set").expect("file");
    let missing = dir.join("missing.binpb");
    for (set, named) in [
        (&missing, "missing.binpb"),
        (&garbage, "garbage.binpb"),
        (&file, "no upstream serves package acme.shop.v1"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_agora"))
            .args(["serve", "--target", "edge", "--descriptor-set"])
            .arg(set)
            .env("AGORA_EDGE_ADDR", "127.0.0.1:0")
            .env("AGORA_ADMIN_ADDR", "127.0.0.1:0")
            .env("AGORA_LOG_FORMAT", "text")
            .env("RUST_LOG", "off")
            .output()
            .expect("runs");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{named}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
