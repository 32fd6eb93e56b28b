//! The HTTP/2 client to one endpoint (one address) of an upstream.
//!
//! tonic's `Channel` queues every call through a buffer worker task before
//! it reaches the connection; on the edge's request path that is one more
//! task hop per call. [`EndpointClient`] drives hyper's pooled HTTP/2
//! client from the caller's task instead, and tonic clients use it like a
//! `Channel` (it is a `Service<http::Request<tonic::body::Body>>`).
//!
//! Connection settings every Agora client uses: a short connect timeout,
//! `TCP_NODELAY` (small frames must not wait for delayed ACKs), and HTTP/2
//! keep-alive pings so a silently dead peer is noticed. A connection that
//! closes before a call was written is replaced and the call sent on the
//! new one (hyper's pool does this); a connection that cannot be made is
//! reported as [`tonic::ConnectError`], so callers know the call never left.
//!
//! An address served by this same process is called in process instead
//! (see [`crate::local`]).

use std::{
    net::SocketAddr,
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use http::uri::{Authority, Scheme};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use tonic::body::Body;
use tower::{Service, ServiceExt as _};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Interval of HTTP/2 keep-alive pings (and TCP keep-alive).
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// A lazily connected HTTP/2 client to one address.
#[derive(Clone)]
pub struct EndpointClient {
    addr: SocketAddr,
    client: Client<HttpConnector, Body>,
    scheme: Scheme,
    authority: Authority,
}

impl EndpointClient {
    pub fn new(addr: SocketAddr) -> anyhow::Result<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_keepalive(Some(KEEP_ALIVE));
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_only(true)
            .http2_keep_alive_interval(KEEP_ALIVE)
            .http2_keep_alive_while_idle(true)
            .build(connector);
        Ok(Self {
            addr,
            client,
            scheme: Scheme::HTTP,
            authority: addr
                .to_string()
                .parse()
                .map_err(|e| anyhow::anyhow!("bad address {addr}: {e}"))?,
        })
    }
}

impl Service<http::Request<Body>> for EndpointClient {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pool has no readiness of its own; connecting happens per call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        // The service continues the caller's trace.
        crate::trace::inject_current(&mut parts.headers);
        if let Some(local) = crate::local::lookup(self.addr) {
            // Served by this process: no sockets. The server sees what it
            // would over the network, so the caller's extensions stay here.
            parts.extensions = http::Extensions::new();
            let req = http::Request::from_parts(parts, body);
            return Box::pin(async move {
                let Ok(resp) = local.oneshot(req).await;
                Ok(resp)
            });
        }
        // tonic clients send only the path; this client knows the address.
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        uri.path_and_query = parts.uri.path_and_query().cloned();
        let client = self.client.clone();
        Box::pin(async move {
            parts.uri = http::Uri::from_parts(uri)?;
            match client.request(http::Request::from_parts(parts, body)).await {
                Ok(resp) => Ok(resp.map(Body::new)),
                Err(e) if e.is_connect() => {
                    Err(Box::new(tonic::ConnectError(Box::new(e))) as BoxError)
                }
                Err(e) => Err(Box::new(e) as BoxError),
            }
        })
    }
}
