//! The catalog through the edge, as shoppers and staff use it.

mod common;

use std::time::{Duration, Instant};

use common::{category, db, product, spawn_mesh, spawn_mesh_with, staff};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn names(body: &Value) -> Vec<String> {
    body["products"]
        .as_array()
        .expect("products")
        .iter()
        .map(|p| p["name"].as_str().expect("name").to_owned())
        .collect()
}

#[tokio::test]
async fn staff_manage_products_and_customers_only_read_them() {
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let (_, customer) = mesh.customer("cu@example.com").await;
    let lighting = category(&mesh, &staff, "lighting", None).await;
    let lamp = product(&mesh, &staff, "lamp-1", "Desk lamp", &lighting, 2599, 5).await;
    assert_eq!(lamp["sku"], "LAMP-1");
    assert_eq!(
        lamp["price"],
        json!({"currency": "EUR", "amountMinor": "2599"})
    );
    assert_eq!(lamp["available"], 5);
    assert_eq!(lamp["etag"], "v1");

    let body = json!({"sku": "x-1", "name": "X", "categoryId": lighting, "price": {"currency": "EUR", "amountMinor": "1"}});
    assert_eq!(
        mesh.post("/api/v1/products", Some(&customer), body.clone())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        mesh.post("/api/v1/products", None, body).await.status,
        StatusCode::UNAUTHORIZED
    );

    let id = lamp["id"].as_str().expect("id");
    let got = mesh.get(&format!("/api/v1/products/{id}"), None).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["name"], "Desk lamp");
    let missing = mesh
        .get(&format!("/api/v1/products/{}", uuid::Uuid::new_v4()), None)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let cats = mesh.get("/api/v1/categories", None).await;
    assert_eq!(cats.body["categories"][0]["slug"], "lighting");
    mesh.stop().await;
}

#[tokio::test]
async fn invalid_products_are_rejected_naming_the_field() {
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let cat = category(&mesh, &staff, "misc", None).await;
    product(&mesh, &staff, "dup-1", "Original", &cat, 100, 0).await;
    // Each problem names the field as the client sent it (JSON names, from
    // the request's root), in the message and as a BadRequest violation.
    let cases = [
        (
            json!({"sku": "bad sku", "name": "N", "categoryId": cat, "price": {"currency": "EUR", "amountMinor": "1"}}),
            StatusCode::BAD_REQUEST,
            "product.sku",
        ),
        (
            json!({"sku": "ok-1", "name": "", "categoryId": cat, "price": {"currency": "EUR", "amountMinor": "1"}}),
            StatusCode::BAD_REQUEST,
            "product.name",
        ),
        (
            json!({"sku": "ok-1", "name": "N", "categoryId": cat, "price": {"currency": "euro", "amountMinor": "1"}}),
            StatusCode::BAD_REQUEST,
            "product.price.currency",
        ),
        (
            json!({"sku": "ok-1", "name": "N", "categoryId": cat, "price": {"currency": "EUR", "amountMinor": "-5"}}),
            StatusCode::BAD_REQUEST,
            "product.price.amountMinor",
        ),
        // Caught by the edge while transcoding, named the same way.
        (
            json!({"sku": "ok-1", "name": "N", "categoryId": cat, "price": {"currency": "EUR", "amountMinor": "cheap"}}),
            StatusCode::BAD_REQUEST,
            "product.price.amountMinor",
        ),
    ];
    // A category that does not exist is a missing resource.
    let ghost = uuid::Uuid::new_v4();
    let r = mesh
        .post(
            "/api/v1/products",
            Some(&staff),
            json!({"sku": "ok-1", "name": "N", "categoryId": ghost, "price": {"currency": "EUR", "amountMinor": "1"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    assert!(
        r.message().contains(&format!("category {ghost}")),
        "{:?}",
        r.body
    );
    for (body, status, field) in cases {
        let r = mesh.post("/api/v1/products", Some(&staff), body).await;
        assert_eq!(r.status, status, "{field}: {:?}", r.body);
        assert!(r.message().contains(field), "{field}: {:?}", r.body);
        let violations: Vec<&Value> = r.body["details"]
            .as_array()
            .expect("details")
            .iter()
            .filter(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
            .flat_map(|d| d["fieldViolations"].as_array().expect("violations"))
            .collect();
        assert_eq!(violations.len(), 1, "{field}: {:?}", r.body);
        assert_eq!(violations[0]["field"], field, "{:?}", r.body);
        assert!(
            !violations[0]["description"]
                .as_str()
                .expect("description")
                .is_empty()
        );
    }
    let r = mesh
        .post(
            "/api/v1/products",
            Some(&staff),
            json!({"sku": "DUP-1", "name": "N", "categoryId": cat, "price": {"currency": "EUR", "amountMinor": "1"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    assert!(r.message().contains("DUP-1"), "{:?}", r.body);

    // An unknown query parameter is named too.
    let r = mesh.get("/api/v1/products?colour=red", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.body["details"][0]["fieldViolations"][0]["field"], "colour",
        "{:?}",
        r.body
    );

    // gRPC clients get the same detail in proto names.
    let mut client = agora_proto::catalog::v1::catalog_service_client::CatalogServiceClient::new(
        tonic::transport::Endpoint::from_shared(mesh.url(""))
            .expect("url")
            .connect()
            .await
            .expect("connects"),
    );
    let mut req = tonic::Request::new(agora_proto::catalog::v1::CreateProductRequest {
        product: Some(agora_proto::catalog::v1::Product {
            sku: "OK-2".into(),
            name: "N".into(),
            category_id: "not-a-uuid".into(),
            price: Some(agora_proto::catalog::v1::Money {
                currency: "EUR".into(),
                amount_minor: 1,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {staff}").parse().expect("header"),
    );
    let status = client
        .create_product(req)
        .await
        .expect_err("a malformed category id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    use tonic_types::StatusExt as _;
    let bad = status
        .get_details_bad_request()
        .expect("a BadRequest detail");
    assert_eq!(bad.field_violations[0].field, "product.category_id");
    mesh.stop().await;
}

#[tokio::test]
async fn updates_need_the_current_etag_and_are_never_read_stale() {
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let cat = category(&mesh, &staff, "lighting", None).await;
    let p = product(&mesh, &staff, "lamp-2", "Floor lamp", &cat, 9900, 1).await;
    let id = p["id"].as_str().expect("id");
    // Fill the cache.
    assert_eq!(
        mesh.get(&format!("/api/v1/products/{id}"), None).await.body["name"],
        "Floor lamp"
    );

    let r = mesh
        .call(
            Method::PATCH,
            &format!("/api/v1/products/{id}"),
            Some(&staff),
            json!({"name": "Tall floor lamp", "etag": "v1"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["etag"], "v2");
    assert_eq!(
        r.body["price"]["amountMinor"], "9900",
        "fields outside the mask are kept"
    );
    assert_eq!(
        mesh.get(&format!("/api/v1/products/{id}"), None).await.body["name"],
        "Tall floor lamp",
        "no stale read"
    );

    let stale = mesh
        .call(
            Method::PATCH,
            &format!("/api/v1/products/{id}"),
            Some(&staff),
            json!({"name": "Lost update", "etag": "v1"}),
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{:?}", stale.body);
    assert!(stale.message().contains("stale"), "{:?}", stale.body);
    assert_eq!(
        mesh.get(&format!("/api/v1/products/{id}"), None).await.body["name"],
        "Tall floor lamp"
    );

    let r = mesh
        .call(
            Method::PATCH,
            &format!("/api/v1/products/{id}?updateMask=price"),
            Some(&staff),
            json!({"price": {"currency": "EUR", "amountMinor": "8900"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        mesh.get(&format!("/api/v1/products/{id}"), None).await.body["price"]["amountMinor"],
        "8900"
    );

    let del = mesh
        .call(
            Method::DELETE,
            &format!("/api/v1/products/{id}?etag=v1"),
            Some(&staff),
            json!(null),
        )
        .await;
    assert_eq!(del.status, StatusCode::CONFLICT);
    let del = mesh
        .call(
            Method::DELETE,
            &format!("/api/v1/products/{id}"),
            Some(&staff),
            json!(null),
        )
        .await;
    assert_eq!(del.status, StatusCode::OK, "{:?}", del.body);
    assert_eq!(
        mesh.get(&format!("/api/v1/products/{id}"), None)
            .await
            .status,
        StatusCode::NOT_FOUND,
        "deleted, and not served from cache"
    );
    product(&mesh, &staff, "lamp-2", "Reused SKU", &cat, 100, 0).await;

    // Each change left its event in the outbox, in order, with the new state.
    let mut conn = db(&mesh).await;
    let events: Vec<(String, Value)> = sqlx::query_as(
        "SELECT event_type, payload FROM catalog.outbox WHERE aggregate_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&mut conn)
    .await
    .expect("outbox");
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        vec![
            "catalog.product_created",
            "catalog.product_updated",
            "catalog.product_updated",
            "catalog.product_deleted"
        ]
    );
    assert_eq!(events[1].1["name"], "Tall floor lamp");
    assert_eq!(events[2].1["price"]["amountMinor"], "8900");
    mesh.stop().await;
}

#[tokio::test]
async fn search_ranks_names_tolerates_typos_and_completes_prefixes() {
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let cat = category(&mesh, &staff, "home", None).await;
    product(&mesh, &staff, "s-1", "Desk lamp", &cat, 2500, 3).await;
    product(&mesh, &staff, "s-2", "Oak table", &cat, 9000, 3).await;
    let r = mesh
        .post(
            "/api/v1/products",
            Some(&staff),
            json!({"sku": "s-3", "name": "Reading chair", "description": "Comfortable chair with a lamp holder",
                   "categoryId": cat, "price": {"currency": "EUR", "amountMinor": "15000"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let found = mesh.get("/api/v1/products?q=lamp", None).await;
    assert_eq!(
        names(&found.body),
        vec!["Desk lamp", "Reading chair"],
        "a name match outranks a description match"
    );
    let typo = mesh.get("/api/v1/products?q=lmap", None).await;
    assert!(
        names(&typo.body).contains(&"Desk lamp".to_owned()),
        "{:?}",
        typo.body
    );
    let typo = mesh.get("/api/v1/products?q=tabel", None).await;
    assert_eq!(names(&typo.body), vec!["Oak table"]);
    assert!(names(&mesh.get("/api/v1/products?q=zeppelin", None).await.body).is_empty());

    let s = mesh.get("/api/v1/products:suggest?q=ta", None).await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.body["suggestions"][0]["name"], "Oak table");
    assert_eq!(
        mesh.get("/api/v1/products:suggest?q=", None).await.status,
        StatusCode::BAD_REQUEST
    );
    mesh.stop().await;
}

#[tokio::test]
async fn listings_filter_by_category_tree_price_and_stock_and_sort() {
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let lighting = category(&mesh, &staff, "lighting", None).await;
    let desk = category(&mesh, &staff, "desk-lamps", Some(&lighting)).await;
    let kitchen = category(&mesh, &staff, "kitchen", None).await;
    product(&mesh, &staff, "f-1", "Ceiling light", &lighting, 4000, 0).await;
    product(&mesh, &staff, "f-2", "Desk lamp", &desk, 2500, 2).await;
    product(&mesh, &staff, "f-3", "Kettle", &kitchen, 3000, 2).await;
    product(&mesh, &staff, "f-4", "Chandelier", &lighting, 60000, 1).await;

    let r = mesh
        .get(
            "/api/v1/products?category=lighting&orderBy=PRODUCT_ORDER_PRICE_ASC",
            None,
        )
        .await;
    assert_eq!(
        names(&r.body),
        vec!["Desk lamp", "Ceiling light", "Chandelier"],
        "sub-categories included"
    );
    let r = mesh
        .get(&format!("/api/v1/products?category={desk}"), None)
        .await;
    assert_eq!(names(&r.body), vec!["Desk lamp"]);
    let r = mesh
        .get(
            "/api/v1/products?minPrice=2600&maxPrice=5000&orderBy=PRODUCT_ORDER_PRICE_DESC",
            None,
        )
        .await;
    assert_eq!(names(&r.body), vec!["Ceiling light", "Kettle"]);
    let r = mesh
        .get(
            "/api/v1/products?category=lighting&inStock=true&orderBy=PRODUCT_ORDER_PRICE_ASC",
            None,
        )
        .await;
    assert_eq!(names(&r.body), vec!["Desk lamp", "Chandelier"]);
    let r = mesh.get("/api/v1/products", None).await;
    assert_eq!(
        names(&r.body),
        vec!["Chandelier", "Kettle", "Desk lamp", "Ceiling light"],
        "newest first"
    );
    // A category filter is an id or a slug; anything else (a NUL byte
    // that PostgreSQL cannot hold) is refused, naming it.
    let bad = mesh.get("/api/v1/products?category=a%00b", None).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{:?}", bad.body);
    assert!(bad.message().contains("category"), "{:?}", bad.body);
    // A ceiling below the floor: nothing costs that.
    let none = mesh
        .get("/api/v1/products?minPrice=500&maxPrice=100", None)
        .await;
    assert_eq!(none.status, StatusCode::OK, "{:?}", none.body);
    assert!(names(&none.body).is_empty(), "{:?}", none.body);
    mesh.stop().await;
}

#[tokio::test]
async fn pages_never_repeat_or_skip_even_with_inserts_between_them() {
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let cat = category(&mesh, &staff, "things", None).await;
    for i in 0..7 {
        product(
            &mesh,
            &staff,
            &format!("p-{i}"),
            &format!("Thing {i}"),
            &cat,
            100 * (i % 3 + 1),
            1,
        )
        .await;
    }
    for order in [
        "PRODUCT_ORDER_NEWEST",
        "PRODUCT_ORDER_PRICE_ASC",
        "PRODUCT_ORDER_PRICE_DESC",
    ] {
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut inserted = false;
        loop {
            let r = mesh
                .get(
                    &format!("/api/v1/products?pageSize=3&orderBy={order}&pageToken={token}"),
                    None,
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            seen.extend(names(&r.body));
            if !inserted {
                // A product added mid-listing must not shift later pages.
                product(
                    &mesh,
                    &staff,
                    &format!("late-{order}"),
                    &format!("Late {order}"),
                    &cat,
                    200,
                    1,
                )
                .await;
                inserted = true;
            }
            token = r.body["nextPageToken"].as_str().unwrap_or("").to_owned();
            if token.is_empty() {
                break;
            }
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "{order}: duplicates in {seen:?}");
        for i in 0..7 {
            assert!(
                seen.contains(&format!("Thing {i}")),
                "{order}: Thing {i} skipped in {seen:?}"
            );
        }
    }
    let r = mesh
        .get("/api/v1/products?pageSize=3&pageToken=nonsense", None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    mesh.stop().await;
}

#[tokio::test]
async fn stock_adjustments_are_recorded_and_never_go_below_what_is_reserved() {
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let (_, customer) = mesh.customer("st@example.com").await;
    let cat = category(&mesh, &staff, "stock", None).await;
    let p = product(&mesh, &staff, "st-1", "Stocked", &cat, 100, 2).await;
    let id = p["id"].as_str().expect("id");

    let r = mesh
        .post(
            &format!("/api/v1/products/{id}/stock:adjust"),
            Some(&staff),
            json!({"delta": 10, "reason": "restock"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.body,
        json!({"productId": id, "onHand": 12, "reserved": 0, "available": 12})
    );
    let res = mesh
        .post(
            "/api/v1/reservations",
            Some(&customer),
            json!({"items": [{"productId": id, "quantity": 5}]}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);

    let r = mesh
        .post(
            &format!("/api/v1/products/{id}/stock:adjust"),
            Some(&staff),
            json!({"delta": -8, "reason": "damaged"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert!(r.message().contains("reserved"), "{:?}", r.body);
    let r = mesh
        .post(
            &format!("/api/v1/products/{id}/stock:adjust"),
            Some(&customer),
            json!({"delta": 1, "reason": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = mesh
        .post(
            &format!("/api/v1/products/{id}/stock:adjust"),
            Some(&staff),
            json!({"delta": 1, "reason": ""}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("reason"));

    let stock = mesh
        .get(&format!("/api/v1/products/{id}/stock"), None)
        .await;
    assert_eq!(
        stock.body,
        json!({"productId": id, "onHand": 12, "reserved": 5, "available": 7})
    );
    let mut conn = db(&mesh).await;
    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT reason FROM catalog.stock_movements WHERE product_id = $1::uuid ORDER BY id",
    )
    .bind(id)
    .fetch_all(&mut conn)
    .await
    .expect("movements");
    assert_eq!(reasons, vec!["initial stock", "restock", "reserved"]);
    let changed: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM catalog.outbox WHERE event_type = 'catalog.stock_changed' AND aggregate_id = $1",
    )
    .bind(id)
    .fetch_all(&mut conn)
    .await
    .expect("outbox");
    assert_eq!(changed.len(), 1, "the refused adjustment wrote nothing");
    assert_eq!(changed[0]["delta"], 10);
    assert_eq!(changed[0]["reason"], "restock");
    mesh.stop().await;
}

#[tokio::test]
async fn reservations_hold_all_items_or_none_and_commit_or_release_once() {
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let (_, ana) = mesh.customer("ana-r@example.com").await;
    let (_, bob) = mesh.customer("bob-r@example.com").await;
    let cat = category(&mesh, &staff, "res", None).await;
    let a = product(&mesh, &staff, "r-a", "Alpha", &cat, 100, 3).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let b = product(&mesh, &staff, "r-b", "Beta", &cat, 100, 1).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let stock = |id: String| {
        let mesh = &mesh;
        async move {
            mesh.get(&format!("/api/v1/products/{id}/stock"), None)
                .await
                .body
        }
    };

    let r = mesh
        .post(
            "/api/v1/reservations",
            Some(&ana),
            json!({"items": [{"productId": a, "quantity": 2}, {"productId": b, "quantity": 2}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert!(
        r.message().contains("not enough stock") && r.message().contains(&b),
        "{:?}",
        r.body
    );
    assert_eq!(
        stock(a.clone()).await["reserved"],
        0,
        "nothing held when one item fails"
    );

    let items =
        json!({"items": [{"productId": a, "quantity": 2}, {"productId": b, "quantity": 1}]});
    let first = mesh
        .send(
            mesh.http
                .post(mesh.url("/api/v1/reservations"))
                .bearer_auth(&ana)
                .header("idempotency-key", "order-1")
                .json(&items),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(first.body["status"], "RESERVATION_STATUS_HELD");
    let again = mesh
        .send(
            mesh.http
                .post(mesh.url("/api/v1/reservations"))
                .bearer_auth(&ana)
                .header("idempotency-key", "order-1")
                .json(&items),
        )
        .await;
    assert_eq!(
        again.body["id"], first.body["id"],
        "a retry returns the same reservation"
    );
    assert_eq!(
        stock(a.clone()).await["reserved"],
        2,
        "and holds nothing more"
    );
    let other = mesh
        .send(
            mesh.http
                .post(mesh.url("/api/v1/reservations"))
                .bearer_auth(&ana)
                .header("idempotency-key", "order-1")
                .json(&json!({"items": [{"productId": a, "quantity": 1}]})),
        )
        .await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a reused key with other items is refused: {:?}",
        other.body
    );

    let id = first.body["id"].as_str().expect("id");
    let r = mesh
        .post(
            &format!("/api/v1/reservations/{id}:commit"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "others cannot touch it");
    let r = mesh
        .post(
            &format!("/api/v1/reservations/{id}:commit"),
            Some(&ana),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["status"], "RESERVATION_STATUS_COMMITTED");
    assert_eq!(
        stock(a.clone()).await,
        json!({"productId": a, "onHand": 1, "reserved": 0, "available": 1})
    );
    let r = mesh
        .post(
            &format!("/api/v1/reservations/{id}:commit"),
            Some(&ana),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "committing again is harmless");
    let r = mesh
        .post(
            &format!("/api/v1/reservations/{id}:release"),
            Some(&ana),
            json!({}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "a sale cannot be released"
    );

    let held = mesh
        .post(
            "/api/v1/reservations",
            Some(&bob),
            json!({"items": [{"productId": a, "quantity": 1}]}),
        )
        .await;
    let hid = held.body["id"].as_str().expect("id");
    let r = mesh
        .post(
            &format!("/api/v1/reservations/{hid}:release"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(r.body["status"], "RESERVATION_STATUS_RELEASED");
    assert_eq!(stock(a.clone()).await["available"], 1);
    let r = mesh
        .post(
            &format!("/api/v1/reservations/{hid}:commit"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let bad = mesh
        .post(
            "/api/v1/reservations",
            Some(&bob),
            json!({"items": [{"productId": a, "quantity": 0}]}),
        )
        .await;
    assert!(bad.message().contains("quantity"), "{:?}", bad.body);
    let anon = mesh
        .post(
            "/api/v1/reservations",
            None,
            json!({"items": [{"productId": a, "quantity": 1}]}),
        )
        .await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);

    let mut conn = db(&mesh).await;
    let events: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM catalog.outbox ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .expect("outbox");
    for e in [
        "catalog.product_created",
        "catalog.reservation_committed",
        "catalog.reservation_released",
    ] {
        assert!(events.iter().any(|x| x == e), "{e} missing from {events:?}");
    }
    mesh.stop().await;
}

#[tokio::test]
async fn expired_reservations_give_their_stock_back() {
    let mesh = spawn_mesh_with(|c| c.catalog.sweep_interval = Duration::from_millis(100)).await;
    let staff = staff(&mesh).await;
    let (_, ana) = mesh.customer("exp@example.com").await;
    let cat = category(&mesh, &staff, "exp", None).await;
    let id = product(&mesh, &staff, "e-1", "Fleeting", &cat, 100, 2).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let r = mesh
        .post(
            "/api/v1/reservations",
            Some(&ana),
            json!({"items": [{"productId": id, "quantity": 2}], "ttlSeconds": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let rid = r.body["id"].as_str().expect("id").to_owned();
    assert_eq!(
        mesh.get(&format!("/api/v1/products/{id}"), None).await.body["available"],
        0
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = mesh.get(&format!("/api/v1/products/{id}"), None).await;
        if p.body["available"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stock never came back: {:?}",
            p.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = mesh
        .post(
            &format!("/api/v1/reservations/{rid}:commit"),
            Some(&ana),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("expired"), "{:?}", r.body);
    mesh.stop().await;
}

#[tokio::test]
async fn fifty_shoppers_racing_for_ten_units_get_exactly_ten() {
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let cat = category(&mesh, &staff, "race", None).await;
    let id = product(&mesh, &staff, "last-10", "Last ten", &cat, 100, 10).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let mut tokens = Vec::new();
    for i in 0..50 {
        tokens.push(mesh.customer(&format!("racer{i}@example.com")).await.1);
    }
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|t| {
            let (http, url, id) = (
                mesh.http.clone(),
                mesh.url("/api/v1/reservations"),
                id.clone(),
            );
            tokio::spawn(async move {
                let r = http
                    .post(url)
                    .bearer_auth(t)
                    .json(&json!({"items": [{"productId": id, "quantity": 1}]}))
                    .send()
                    .await;
                r.expect("answer").status()
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.expect("task") {
            StatusCode::OK => ok += 1,
            StatusCode::BAD_REQUEST => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, refused), (10, 40));
    let stock = mesh
        .get(&format!("/api/v1/products/{id}/stock"), None)
        .await;
    assert_eq!(
        stock.body,
        json!({"productId": id, "onHand": 10, "reserved": 10, "available": 0})
    );
    mesh.stop().await;
}

#[tokio::test]
async fn reads_keep_working_when_redis_is_down() {
    let mesh = spawn_mesh_with(|c| c.catalog.redis_url = "redis://127.0.0.1:1".into()).await;
    let staff = staff(&mesh).await;
    let cat = category(&mesh, &staff, "nocache", None).await;
    let id = product(&mesh, &staff, "nc-1", "Uncached", &cat, 100, 1).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    for _ in 0..2 {
        let r = mesh.get(&format!("/api/v1/products/{id}"), None).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.body["name"], "Uncached");
    }
    let r = mesh
        .call(
            Method::PATCH,
            &format!("/api/v1/products/{id}"),
            Some(&staff),
            json!({"name": "Renamed"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        mesh.get(&format!("/api/v1/products/{id}"), None).await.body["name"],
        "Renamed"
    );
    let health = mesh.get("/health", None).await;
    assert_eq!(health.body["status"], "healthy", "{:?}", health.body);
    // The mesh runs every target in one process: the edge calls the
    // catalog there, without sockets, and says so.
    let catalog = health.body["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "catalog"))
        .expect("catalog health");
    assert_eq!(catalog["endpoints"][0]["inProcess"], true, "{catalog}");
    let metrics = mesh
        .http
        .get(format!("{}/metrics", mesh.admin))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("catalog_cache_errors_total"),
        "the fallback is counted"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn viewers_of_a_product_drive_its_recommendations() {
    let mesh = spawn_mesh().await;
    let staff = staff(&mesh).await;
    let cat = category(&mesh, &staff, "recs", None).await;
    let other_cat = category(&mesh, &staff, "other", None).await;
    let mut ids = Vec::new();
    for (i, name) in ["Tent", "Sleeping bag", "Stove", "Lantern"]
        .iter()
        .enumerate()
    {
        ids.push(
            product(&mesh, &staff, &format!("rc-{i}"), name, &cat, 100, 5).await["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    let lonely = product(&mesh, &staff, "rc-x", "Compass", &other_cat, 100, 5).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (_, u1) = mesh.customer("v1@example.com").await;
    let (_, u2) = mesh.customer("v2@example.com").await;
    for (user, seen) in [(&u1, vec![0, 1, 2]), (&u2, vec![0, 1]), (&u2, vec![0, 1])] {
        for i in seen {
            assert_eq!(
                mesh.get(&format!("/api/v1/products/{}", ids[i]), Some(user))
                    .await
                    .status,
                StatusCode::OK
            );
        }
    }
    let r = mesh
        .get(
            &format!("/api/v1/products/{}/recommendations", ids[0]),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["source"], "co_views");
    assert_eq!(
        names(&r.body),
        vec!["Sleeping bag", "Stove"],
        "two viewers saw both, one saw the stove; reloads count once"
    );

    // A product nobody viewed falls back to best sellers of its category.
    let (_, buyer) = mesh.customer("buyer@example.com").await;
    let res = mesh
        .post(
            "/api/v1/reservations",
            Some(&buyer),
            json!({"items": [{"productId": ids[3], "quantity": 2}]}),
        )
        .await;
    let rid = res.body["id"].as_str().expect("id");
    mesh.post(
        &format!("/api/v1/reservations/{rid}:commit"),
        Some(&buyer),
        json!({}),
    )
    .await;
    let r = mesh
        .get(
            &format!("/api/v1/products/{}/recommendations?limit=2", ids[2]),
            None,
        )
        .await;
    assert_eq!(r.body["source"], "co_views");
    let r = mesh
        .get(&format!("/api/v1/products/{lonely}/recommendations"), None)
        .await;
    assert_eq!(r.body["source"], "category_best_sellers");
    assert!(names(&r.body).is_empty(), "nothing else in its category");
    let mut conn = db(&mesh).await;
    sqlx::query("DELETE FROM catalog.product_views")
        .execute(&mut conn)
        .await
        .expect("clear views");
    let r = mesh
        .get(
            &format!("/api/v1/products/{}/recommendations", ids[0]),
            None,
        )
        .await;
    assert_eq!(r.body["source"], "category_best_sellers");
    assert_eq!(names(&r.body)[0], "Lantern", "the best seller comes first");
    mesh.stop().await;
}
