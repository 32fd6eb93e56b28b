//! The edge port beyond REST over HTTP/1.1: gRPC-Web as browsers send it
//! (HTTP/1.1, binary and text framing), gRPC over h2c with generated
//! clients, and REST over h2c.

mod common;

use std::time::Duration;

use agora_proto::{
    catalog::v1::{
        GetProductRequest, GetProductResponse, catalog_service_client::CatalogServiceClient,
    },
    chat::v1::{WatchRoomRequest, WatchRoomResponse, room_event::Event},
    users::v1::{GetMeRequest, GetMeResponse},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use common::*;
use http_body_util::BodyExt as _;
use prost::Message as _;
use reqwest::StatusCode;
use serde_json::json;

/// A message with its gRPC-Web length prefix.
fn framed(msg: &impl prost::Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The frames of a gRPC-Web body: messages, then the trailers as text.
fn unframe(mut body: &[u8]) -> (Vec<Vec<u8>>, String) {
    let mut messages = Vec::new();
    let mut trailers = String::new();
    while body.len() >= 5 {
        let flag = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let data = &body[5..5 + len];
        if flag & 0x80 != 0 {
            trailers.push_str(&String::from_utf8_lossy(data));
        } else {
            messages.push(data.to_vec());
        }
        body = &body[5 + len..];
    }
    (messages, trailers.to_ascii_lowercase())
}

/// A gRPC-Web call as a browser sends it (POST over HTTP/1.1): the answer's
/// status and headers, its messages, and its trailers.
async fn grpc_web(
    mesh: &TestMesh,
    path: &str,
    msg: &impl prost::Message,
    token: Option<&str>,
) -> (Answer, Vec<Vec<u8>>, String) {
    let mut req = reqwest::Client::new()
        .post(mesh.url(path))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(framed(msg));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.expect("answers");
    let answer = Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
    };
    let body = resp.bytes().await.expect("body");
    let (messages, trailers) = unframe(&body);
    (answer, messages, trailers)
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
}

impl Answer {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn headers(&self) -> &reqwest::header::HeaderMap {
        &self.headers
    }
}

#[tokio::test]
async fn browsers_call_methods_over_grpc_web_with_the_edges_access_rules() {
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let cat = category(&mesh, &staff, "grpcweb-lamps", None).await;
    let lamp = product(&mesh, &staff, "GWEB-1", "Web lamp", &cat, 2500, 2).await;
    let id = lamp["id"].as_str().expect("id").to_owned();

    // A public unary call: one message, then grpc-status 0 in the trailers.
    let get = GetProductRequest { id: id.clone() };
    let path = "/agora.catalog.v1.CatalogService/GetProduct";
    let (resp, messages, trailers) = grpc_web(&mesh, path, &get, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/grpc-web"),
        "{:?}",
        resp.headers()
    );
    assert_eq!(messages.len(), 1);
    let reply = GetProductResponse::decode(&messages[0][..]).expect("a GetProductResponse");
    assert_eq!(reply.product.expect("product").name, "Web lamp");
    assert!(trailers.contains("grpc-status:0"), "{trailers}");

    // The text framing (base64), which browsers without binary streams use.
    let resp = reqwest::Client::new()
        .post(mesh.url(path))
        .header("content-type", "application/grpc-web-text")
        .header("accept", "application/grpc-web-text")
        .body(STANDARD.encode(framed(&get)))
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.expect("body");
    // Each part (message, trailers) is base64 of its own: a part ends
    // with the quad that holds its padding.
    let text = text.trim();
    let mut decoded = Vec::new();
    let (mut start, mut at) = (0, 0);
    while at + 4 <= text.len() {
        at += 4;
        if text[at - 4..at].contains('=') || at == text.len() {
            decoded.extend(STANDARD.decode(&text[start..at]).expect("base64"));
            start = at;
        }
    }
    assert_eq!(start, text.len(), "whole quads: {text}");
    let (messages, trailers) = unframe(&decoded);
    assert_eq!(messages.len(), 1);
    assert!(trailers.contains("grpc-status:0"), "{trailers}");

    // Errors are gRPC statuses, in the headers when no message came.
    let (resp, messages, _) = grpc_web(
        &mesh,
        path,
        &GetProductRequest {
            id: uuid::Uuid::new_v4().to_string(),
        },
        None,
    )
    .await;
    assert!(messages.is_empty());
    assert_eq!(resp.headers()["grpc-status"], "5", "NOT_FOUND");

    // The contract's access policy holds: no credentials, no profile.
    let me = "/agora.users.v1.UsersService/GetMe";
    let (resp, _, _) = grpc_web(&mesh, me, &GetMeRequest {}, None).await;
    assert_eq!(resp.headers()["grpc-status"], "16", "UNAUTHENTICATED");
    let email = format!("gweb-{}@example.com", uuid::Uuid::new_v4().simple());
    let (_, token) = mesh.customer(&email).await;
    let (_, messages, trailers) = grpc_web(&mesh, me, &GetMeRequest {}, Some(&token)).await;
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    let me = GetMeResponse::decode(&messages[0][..]).expect("GetMeResponse");
    assert_eq!(me.user.expect("user").email, email);

    // Methods outside the contracts are not reachable.
    let (resp, _, _) = grpc_web(
        &mesh,
        "/grpc.health.v1.Health/Check",
        &GetMeRequest {},
        None,
    )
    .await;
    assert_eq!(resp.headers()["grpc-status"], "12", "UNIMPLEMENTED");

    // A malformed body is refused, naming the problem.
    let resp = reqwest::Client::new()
        .post(mesh.url(path))
        .header("content-type", "application/grpc-web+proto")
        .body(vec![0u8, 0, 0])
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.headers()["grpc-status"], "3", "INVALID_ARGUMENT");
    mesh.stop().await;
}

#[tokio::test]
async fn a_room_streams_to_a_grpc_web_client() {
    let mesh = spawn_mesh().await;
    let (_, token) = mesh
        .customer(&format!(
            "gweb-stream-{}@example.com",
            uuid::Uuid::new_v4().simple()
        ))
        .await;
    let r = mesh
        .post(
            "/api/v1/chat/rooms",
            Some(&token),
            json!({"name": "web", "memberIds": []}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let room = r.body["id"].as_str().expect("room").to_owned();

    let resp = reqwest::Client::new()
        .post(mesh.url("/agora.chat.v1.ChatService/WatchRoom"))
        .header("content-type", "application/grpc-web+proto")
        .bearer_auth(&token)
        .body(framed(&WatchRoomRequest {
            room_id: room.clone(),
        }))
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut resp = resp;
    let mut buf = Vec::new();
    let mut next_event = async || -> Event {
        loop {
            if buf.len() >= 5 {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if buf.len() >= 5 + len {
                    assert_eq!(buf[0], 0, "a message, not trailers: {buf:?}");
                    let msg = WatchRoomResponse::decode(&buf[5..5 + len]).expect("event");
                    buf.drain(..5 + len);
                    return msg.event.and_then(|e| e.event).expect("an event");
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
                .await
                .expect("an event in time")
                .expect("chunk")
                .expect("the stream stays open");
            buf.extend_from_slice(&chunk);
        }
    };
    assert!(matches!(next_event().await, Event::Ready(_)));
    let r = mesh
        .post(
            &format!("/api/v1/chat/rooms/{room}/messages"),
            Some(&token),
            json!({"clientId": "gweb-1", "body": "over grpc-web"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    loop {
        if let Event::Message(m) = next_event().await {
            assert_eq!(m.body, "over grpc-web");
            break;
        }
    }
    mesh.stop().await;
}

#[tokio::test]
async fn generated_grpc_clients_and_rest_clients_speak_h2c_to_the_edge() {
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let cat = category(&mesh, &staff, "h2c-lamps", None).await;
    let lamp = product(&mesh, &staff, "H2C-1", "H2c lamp", &cat, 990, 1).await;
    let id = lamp["id"].as_str().expect("id").to_owned();

    // gRPC (HTTP/2 with prior knowledge) straight to the edge port.
    let channel = tonic::transport::Endpoint::from_shared(mesh.url(""))
        .expect("url")
        .connect()
        .await
        .expect("connects");
    let mut client = CatalogServiceClient::new(channel);
    let reply = client
        .get_product(GetProductRequest { id: id.clone() })
        .await
        .expect("served through the edge")
        .into_inner();
    assert_eq!(reply.product.expect("product").name, "H2c lamp");
    let missing = client
        .get_product(GetProductRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("no such product");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // REST over h2c.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<prost::bytes::Bytes>>();
    let uri: http::Uri = mesh
        .url(&format!("/api/v1/products/{id}"))
        .parse()
        .expect("uri");
    let resp = h2.get(uri).await.expect("answers over h2c");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), http::StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let product: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(product["name"], "H2c lamp");
    mesh.stop().await;
}
