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

#[tokio::test]
async fn get_answers_carry_etags_and_an_unchanged_resource_answers_304() {
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let cat = category(&mesh, &staff, "etag-lamps", None).await;
    let lamp = product(&mesh, &staff, "ETAG-1", "Etag lamp", &cat, 1999, 3).await;
    let id = lamp["id"].as_str().expect("id");
    let http = reqwest::Client::new();
    let get = |if_none_match: Option<&str>| {
        let mut req = http.get(mesh.url(&format!("/api/v1/products/{id}")));
        if let Some(tag) = if_none_match {
            req = req.header("if-none-match", tag);
        }
        async move { req.send().await.expect("answers") }
    };

    // A product is tagged with its own version.
    let first = get(None).await;
    assert_eq!(first.status(), StatusCode::OK);
    let tag = first.headers()["etag"].to_str().expect("ascii").to_owned();
    assert_eq!(
        tag,
        format!("W/\"{}\"", lamp["etag"].as_str().expect("etag"))
    );
    assert_eq!(first.headers()["cache-control"], "no-cache");

    let again = get(Some(&tag)).await;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()["etag"], tag.as_str());
    assert!(again.bytes().await.expect("body").is_empty());
    // A strong form of the tag, a list, and `*` match too.
    assert_eq!(
        get(Some("\"x\", \"v1\"")).await.status(),
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(get(Some("*")).await.status(), StatusCode::NOT_MODIFIED);

    // A change gives a new tag; the old one then gets the new body.
    let r = mesh
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/products/{id}"),
            Some(&staff),
            json!({"name": "Etag lamp, taller", "etag": lamp["etag"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let changed = get(Some(&tag)).await;
    assert_eq!(changed.status(), StatusCode::OK);
    assert_ne!(changed.headers()["etag"], tag.as_str());
    let body: Value = changed.json().await.expect("json");
    assert_eq!(body["name"], "Etag lamp, taller");

    // Answers without a version of their own are tagged by their content,
    // and answers to a signed-in caller are private.
    let list = |tag: Option<String>| {
        let mut req = http.get(mesh.url("/api/v1/categories")).bearer_auth(&staff);
        if let Some(tag) = tag {
            req = req.header("if-none-match", tag);
        }
        async move { req.send().await.expect("answers") }
    };
    let listed = list(None).await;
    assert_eq!(listed.headers()["cache-control"], "private, no-cache");
    let tag = listed.headers()["etag"].to_str().expect("ascii").to_owned();
    assert_eq!(
        list(Some(tag.clone())).await.status(),
        StatusCode::NOT_MODIFIED
    );
    category(&mesh, &staff, "etag-shades", None).await;
    assert_eq!(list(Some(tag)).await.status(), StatusCode::OK);

    // Writes carry no tag.
    let r = http
        .post(mesh.url("/api/v1/auth/login"))
        .json(&json!({"email": "nobody@example.com", "password": PASSWORD}))
        .send()
        .await
        .expect("answers");
    assert!(r.headers().get("etag").is_none());
    mesh.stop().await;
}

#[tokio::test]
async fn transcoding_options_shape_answers_errors_and_the_document_alike() {
    let mesh = spawn_mesh_with(|c| {
        c.edge.transcoding = agora_edge::routes::Transcoding {
            emit_unpopulated: false,
            use_proto_names: true,
            enums_as_numbers: true,
            unknown_query_parameters: agora_edge::routes::UnknownQuery::Ignore,
        }
    })
    .await;
    let staff = staff(&mesh).await;
    let cat = category(&mesh, &staff, "options-lamps", None).await;
    let r = mesh
        .post(
            "/api/v1/products",
            Some(&staff),
            json!({"sku": "OPT-1", "name": "Option lamp", "category_id": cat,
                   "price": {"currency": "EUR", "amount_minor": "700"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_owned();

    let r = mesh.get(&format!("/api/v1/products/{id}"), None).await;
    assert_eq!(r.body["category_id"], cat.as_str(), "{:?}", r.body);
    assert_eq!(r.body["price"]["amount_minor"], "700");
    assert!(r.body.get("categoryId").is_none());
    assert!(
        r.body.get("description").is_none(),
        "an empty description is left out: {:?}",
        r.body
    );

    // Unknown parameters are ignored; known ones still apply, by either name.
    let r = mesh
        .get("/api/v1/products?colour=red&page_size=1", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["products"].as_array().expect("products").len(), 1);

    // Errors name fields as the answers do.
    let r = mesh
        .post(
            "/api/v1/products",
            Some(&staff),
            json!({"sku": "OPT-2", "name": "N", "category_id": "not-a-uuid",
                   "price": {"currency": "EUR", "amount_minor": "1"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.body["details"][0]["fieldViolations"][0]["field"], "product.category_id",
        "{:?}",
        r.body
    );

    // The document describes the same shapes.
    let doc: Value = mesh.get("/api/v1/openapi.json", None).await.body;
    let product = &doc["components"]["schemas"]["agora.catalog.v1.Product"]["properties"];
    assert!(product.get("category_id").is_some(), "{product}");
    assert!(product.get("categoryId").is_none());
    let params = doc["paths"]["/api/v1/products"]["get"]["parameters"]
        .as_array()
        .expect("parameters");
    let order = params
        .iter()
        .find(|p| p["name"] == "order_by")
        .expect("order_by");
    // Numbers first, names still accepted.
    assert_eq!(
        order["schema"]["type"],
        json!(["integer", "string"]),
        "{order}"
    );
    assert_eq!(order["schema"]["enum"][0], 0, "{order}");
    mesh.stop().await;
}
