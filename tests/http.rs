//! HTTP niceties of the edge: response compression by Accept-Encoding,
//! compressed request bodies, and streams left uncompressed.

mod common;

use std::io::{Read as _, Write as _};

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn responses_are_compressed_as_the_client_accepts_and_streams_are_not() {
    let mesh = spawn_mesh().await;
    let http = reqwest::Client::new();
    let get = |encoding: &'static str| {
        let req = http
            .get(mesh.url("/api/v1/openapi.json"))
            .header("accept-encoding", encoding);
        async move { req.send().await.expect("answers") }
    };
    let plain = get("identity").await;
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.bytes().await.expect("body");

    let gzip = get("gzip").await;
    assert_eq!(gzip.headers()["content-encoding"], "gzip");
    let packed = gzip.bytes().await.expect("body");
    assert!(
        packed.len() * 4 < plain.len(),
        "{} of {}",
        packed.len(),
        plain.len()
    );
    let mut unpacked = Vec::new();
    flate2::read::GzDecoder::new(packed.as_ref())
        .read_to_end(&mut unpacked)
        .expect("gzip");
    assert_eq!(unpacked, plain, "the same document");

    for encoding in ["br", "zstd"] {
        let r = get(encoding).await;
        assert_eq!(r.headers()["content-encoding"], encoding);
    }

    // Streams (SSE, NDJSON) flush each event: never compressed.
    let (_, token) = mesh.customer("sse-gzip@example.com").await;
    for accept in ["text/event-stream", "application/x-ndjson"] {
        let stream = http
            .get(mesh.url("/api/v1/notifications/events"))
            .bearer_auth(&token)
            .header("accept", accept)
            .header("accept-encoding", "gzip")
            .send()
            .await
            .expect("answers");
        assert_eq!(stream.status(), StatusCode::OK, "{accept}");
        assert!(
            stream.headers().get("content-encoding").is_none(),
            "{accept} compressed"
        );
    }
    mesh.stop().await;
}

#[tokio::test]
async fn compressed_request_bodies_are_accepted_and_unknown_encodings_refused() {
    let mesh = spawn_mesh().await;
    let body = json!({"email": "gz@example.com", "password": PASSWORD, "displayName": "Gz"});
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.to_string().as_bytes()).expect("gzip");
    let packed = gz.finish().expect("gzip");
    let http = reqwest::Client::new();
    let r = http
        .post(mesh.url("/api/v1/users"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(packed)
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status(), StatusCode::OK);
    let user: Value = r.json().await.expect("json");
    assert_eq!(user["email"], "gz@example.com");

    let r = http
        .post(mesh.url("/api/v1/users"))
        .header("content-type", "application/json")
        .header("content-encoding", "compress")
        .body(body.to_string())
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    mesh.stop().await;
}
