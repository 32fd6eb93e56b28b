//! Serving a tonic service the way every Agora service does: with
//! `grpc.health.v1`, server reflection (v1 and v1alpha, so both current and
//! older `grpcurl` work), the metrics layer, and the shared shutdown; and
//! offering the same stack to components of this process (see
//! [`crate::local`]).

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::{service::Routes, transport::server::TcpIncoming};
use tonic_health::ServingStatus;

use crate::{
    auth::AuthLayer, deadline::DeadlineLayer, local::LocalService, metrics::GrpcMetricsLayer,
    shutdown::Shutdown, trace::ServerSpanLayer,
};

/// Serves `routes` on `listener` as `component` (its `service.name` in
/// traces) until `shutdown` stops, reporting each of
/// `service_names` (and the overall "" service) SERVING until draining starts.
/// `auth` checks every call against the contracts' access policy.
pub async fn serve(
    component: &'static str,
    listener: TcpListener,
    service_names: &[&'static str],
    routes: Routes,
    auth: Option<AuthLayer>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in service_names.iter().copied().chain([""]) {
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    // Reflection lists only what this server answers, so `grpcurl list`
    // on a service's port shows that service and not the whole contract set.
    let reflection = |own: &'static str| {
        service_names
            .iter()
            .copied()
            .chain(["grpc.health.v1.Health", own])
            .fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(agora_proto::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
                |b, name| b.with_service_name(name),
            )
    };
    let reflection_v1 = reflection("grpc.reflection.v1.ServerReflection")
        .build_v1()
        .context("Failed to build the reflection service")?;
    let reflection_v1alpha = reflection("grpc.reflection.v1alpha.ServerReflection")
        .build_v1alpha()
        .context("Failed to build the reflection service")?;
    let routes = routes
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let names = service_names.to_vec();
    let drain = shutdown.clone();
    tokio::spawn(async move {
        drain.draining().await;
        for name in names.into_iter().chain([""]) {
            reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    });

    let stack = tower::ServiceBuilder::new()
        // Outermost, so the span covers everything, deadline answers too.
        .layer(ServerSpanLayer::new(component))
        // Next, so the handler and everything it calls know the deadline.
        .layer(DeadlineLayer)
        .layer(GrpcMetricsLayer)
        .layer(tower::util::option_layer(auth));
    // Components of this process call the same stack without sockets,
    // until the listener stops accepting.
    let registration = crate::local::register(
        listener
            .local_addr()
            .context("gRPC listener has no address")?,
        LocalService::new(stack.service(routes.clone().prepare())),
    );
    let stop = shutdown.stopping_owned();
    tonic::transport::Server::builder()
        .layer(stack)
        .add_routes(routes)
        // Without TCP_NODELAY, a response's small HTTP/2 frames wait for
        // the peer's delayed ACK: about 40 ms on many calls.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                stop.await;
                drop(registration);
            },
        )
        .await
        .context("gRPC server failed")
}
