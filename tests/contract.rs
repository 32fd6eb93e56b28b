//! The contracts' field rules (google.api.field_behavior, buf.validate)
//! are enforced at the edge, all problems at once, and published in the
//! OpenAPI document as JSON Schema.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn violations(body: &Value) -> Vec<(String, String)> {
    body["details"]
        .as_array()
        .expect("details")
        .iter()
        .filter(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .flat_map(|d| d["fieldViolations"].as_array().expect("violations").clone())
        .map(|v| {
            (
                v["field"].as_str().expect("field").to_owned(),
                v["description"].as_str().expect("description").to_owned(),
            )
        })
        .collect()
}

fn fields(body: &Value) -> Vec<String> {
    violations(body).into_iter().map(|(f, _)| f).collect()
}

#[tokio::test]
async fn requests_breaking_declared_rules_are_refused_naming_every_field() {
    let mesh = spawn_mesh().await;

    // Every problem at once, in the client's names.
    let r = mesh
        .post(
            "/api/v1/users",
            None,
            json!({"email": "nope", "password": "short", "displayName": "  "}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(
        fields(&r.body),
        ["email", "password", "displayName"],
        "{:?}",
        r.body
    );
    assert!(
        r.message()
            .contains("password: must be 10 to 256 characters"),
        "{:?}",
        r.body
    );

    // A required field missing, and a body missing altogether.
    let r = mesh.post("/api/v1/auth/refresh", None, json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        violations(&r.body),
        [("refreshToken".to_owned(), "is required".to_owned())]
    );
    let (_, token) = mesh.customer("contract-keys@example.com").await;
    let r = mesh
        .send(
            mesh.http
                .post(mesh.url("/api/v1/api-keys"))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(fields(&r.body), ["name", "permissions"], "{:?}", r.body);

    // Formats and ranges.
    let r = mesh.get("/api/v1/products/0", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        violations(&r.body),
        [("id".to_owned(), "must be a UUID".to_owned())]
    );
    let r = mesh.get("/api/v1/products?pageSize=101", None).await;
    assert_eq!(fields(&r.body), ["pageSize"], "{:?}", r.body);
    let r = mesh
        .post(
            "/api/v1/reservations",
            Some(&token),
            json!({"items": [{"productId": "x", "quantity": 0}]}),
        )
        .await;
    assert_eq!(
        fields(&r.body),
        ["items[0].productId", "items[0].quantity"],
        "{:?}",
        r.body
    );
    let (_, admin) = mesh.admin().await;
    let user = mesh.register("contract-roles@example.com").await;
    let r = mesh
        .call(
            reqwest::Method::PUT,
            &format!("/api/v1/users/{}/roles", user["id"].as_str().expect("id")),
            Some(&admin),
            json!({"roles": ["ROLE_UNSPECIFIED"]}),
        )
        .await;
    assert_eq!(fields(&r.body), ["roles[0]"], "{:?}", r.body);

    // What the rules allow still reaches the service.
    let r = mesh.get("/api/v1/products?pageSize=100", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    mesh.stop().await;
}

#[tokio::test]
async fn the_document_publishes_the_rules_the_edge_enforces() {
    let mesh = spawn_mesh().await;
    let doc = mesh.get("/api/v1/openapi.json", None).await.body;
    let schemas = &doc["components"]["schemas"];

    let register = &schemas["agora.users.v1.RegisterRequest"];
    assert_eq!(
        register["required"],
        json!(["email", "password", "displayName"])
    );
    assert_eq!(register["properties"]["password"]["minLength"], 10);
    assert_eq!(register["properties"]["password"]["maxLength"], 256);
    assert!(register["properties"]["email"]["pattern"].is_string());

    let product = &schemas["agora.catalog.v1.Product"]["properties"];
    assert_eq!(product["id"]["readOnly"], true);
    // Optional in an update, so empty is allowed beside the rule.
    assert_eq!(
        product["categoryId"]["anyOf"],
        json!([{"const": ""}, {"type": "string", "format": "uuid"}])
    );
    assert_eq!(product["sku"]["anyOf"][1]["maxLength"], 64);
    let money = &schemas["agora.catalog.v1.Money"];
    assert_eq!(money["required"], json!(["currency"]));
    // int64 travels as a string; its lower bound of 0 leaves out the sign.
    assert_eq!(
        money["properties"]["amountMinor"]["pattern"],
        "^[0-9]{1,19}$"
    );

    let item = &schemas["agora.catalog.v1.ReservationItem"]["properties"]["quantity"];
    assert_eq!(
        (item["minimum"].clone(), item["maximum"].clone()),
        (json!(1), json!(10000))
    );

    let param = |path: &str, method: &str, name: &str| -> Value {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
            .clone()
    };
    assert_eq!(
        param("/api/v1/products/{id}", "get", "id")["schema"]["format"],
        "uuid"
    );
    assert_eq!(
        param("/api/v1/products", "get", "pageSize")["schema"]["maximum"],
        100
    );

    // The id comes from the path, so the body leaves it out.
    let body = &doc["paths"]["/api/v1/users/{id}/roles"]["put"]["requestBody"]["content"]["application/json"]
        ["schema"];
    assert!(body["properties"].get("id").is_none(), "{body}");
    assert_eq!(body["required"], json!(["roles"]));
    // "0 means the default" is published beside the range.
    assert_eq!(
        param("/api/v1/analytics/reports/cohorts", "get", "weeks")["schema"]["anyOf"],
        json!([{"const": 0}, {"type": "integer", "format": "int32", "minimum": 1, "maximum": 52}])
    );
    let roles = &schemas["agora.users.v1.SetUserRolesRequest"]["properties"]["roles"];
    assert_eq!(roles["minItems"], 1);
    let names = roles["items"]["enum"].as_array().expect("enum");
    assert!(!names.contains(&json!("ROLE_UNSPECIFIED")), "{roles}");
    assert!(names.contains(&json!("ROLE_ADMIN")), "{roles}");
    mesh.stop().await;
}
