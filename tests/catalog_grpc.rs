//! The catalog as internal gRPC callers use it: generated stubs, server
//! reflection, health, and its own enforcement of the contracts' access
//! rules.

mod common;

use agora_proto::catalog::v1::{
    CreateCategoryRequest, ListProductsRequest, catalog_service_client::CatalogServiceClient,
};
use common::spawn_mesh;
use tonic::{Code, Request, metadata::MetadataValue, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test]
async fn the_catalog_serves_stubs_reflection_and_health_and_checks_roles_itself() {
    let mesh = spawn_mesh().await;
    let addr = mesh.catalog_addr;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");

    let mut client = CatalogServiceClient::new(channel.clone());
    let listed = client
        .list_products(ListProductsRequest::default())
        .await
        .expect("public listing")
        .into_inner();
    assert!(listed.products.is_empty());

    let category = CreateCategoryRequest {
        category: Some(Default::default()),
    };
    let err = client
        .create_category(category.clone())
        .await
        .expect_err("anonymous");
    assert_eq!(err.code(), Code::Unauthenticated);
    let (_, customer) = mesh.customer("grpc-cu@example.com").await;
    let mut req = Request::new(category);
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {customer}")).expect("ascii"),
    );
    let err = client.create_category(req).await.expect_err("customer");
    assert_eq!(err.code(), Code::PermissionDenied);

    let names = common::reflected_services(channel.clone()).await;
    assert!(
        names.iter().any(|s| s == "agora.catalog.v1.CatalogService"),
        "{names:?}"
    );

    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "agora.catalog.v1.CatalogService".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(status.status(), ServingStatus::Serving);
    mesh.stop().await;
}

#[tokio::test]
async fn the_service_itself_refuses_a_request_breaking_the_contract_naming_every_problem() {
    let mesh = spawn_mesh().await;
    let channel = Channel::from_shared(format!("http://{}", mesh.catalog_addr))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let staff = common::staff(&mesh).await;
    // Straight to the catalog's gRPC port, past the edge: the service
    // checks the declared rules as it decodes the request.
    let mut req = Request::new(agora_proto::catalog::v1::CreateProductRequest {
        product: Some(agora_proto::catalog::v1::Product {
            sku: "not a sku!".into(),
            category_id: "nope".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {staff}")).expect("ascii"),
    );
    let err = CatalogServiceClient::new(channel)
        .create_product(req)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    use tonic_types::StatusExt as _;
    let mut fields: Vec<String> = err
        .get_details_bad_request()
        .expect("a BadRequest detail")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "product.category_id",
            "product.name",
            "product.price",
            "product.sku"
        ],
        "{err:?}"
    );
    mesh.stop().await;
}
