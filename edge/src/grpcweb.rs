//! gRPC-Web (and gRPC over h2c) on the edge port, for browser clients.
//!
//! A request whose content type is `application/grpc-web…` (any HTTP
//! version), or `application/grpc` over HTTP/2, at `/package.Service/Method`
//! is a gRPC call through the edge: `tonic-web` translates the web framing,
//! and the call takes the same path as a REST call of the method (access
//! policy, rate limit, breaker, retries, deadline), carrying the message as
//! it came, without JSON. Unary and server-streaming methods that the
//! contracts expose over HTTP are served; others answer UNIMPLEMENTED.
//! Errors are gRPC statuses in trailers, as gRPC clients expect.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{body::Body, extract::Request, response::Response};
use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use futures::StreamExt as _;
use http::{HeaderMap, HeaderValue, header};
use http_body::Frame;
use http_body_util::StreamBody;
use tonic::{Code, Status, metadata::MetadataMap};
use tower::{Layer as _, ServiceExt as _};

use crate::{
    EdgeState,
    call::{self, UnaryCall},
    error::ApiError,
    proxy::{self, forward_metadata},
    routes::Route,
    stream::{self, StreamCall},
    upstream::Slot,
};

/// Whether a request is a gRPC-Web call, or a gRPC call over HTTP/2.
pub fn is_grpc(req: &Request) -> bool {
    let Some(ct) = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    ct.starts_with("application/grpc-web")
        || (ct.starts_with("application/grpc") && req.version() == http::Version::HTTP_2)
}

/// Answers a gRPC-Web or gRPC request.
pub async fn handle(state: Arc<EdgeState>, req: Request) -> Response {
    let bridge = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(bridge(&state, req).await) }
    });
    match tonic_web::GrpcWebLayer::new()
        .layer(bridge)
        .oneshot(req)
        .await
    {
        Ok(resp) => resp.map(Body::new),
        Err(never) => match never {},
    }
}

type GrpcResponse = http::Response<tonic::body::Body>;

async fn bridge(state: &EdgeState, req: http::Request<tonic::body::Body>) -> GrpcResponse {
    match call(state, req).await {
        Ok(resp) => resp,
        Err(status) => trailers_only(&status),
    }
}

async fn call(
    state: &EdgeState,
    req: http::Request<tonic::body::Body>,
) -> Result<GrpcResponse, Status> {
    let contract = state.contract.load_full();
    let route = contract
        .routes
        .by_grpc_path(req.uri().path())
        .ok_or_else(|| {
            Status::unimplemented(format!(
                "{} is not a method the edge serves over gRPC-Web",
                req.uri().path()
            ))
        })?;
    if route.method.is_client_streaming() {
        return Err(Status::unimplemented(
            "gRPC-Web carries unary and server-streaming calls only",
        ));
    }
    // Above the edge's cap, answer at once rather than queue.
    let Some(_slot) = Slot::try_take(&state.in_flight, state.max_in_flight) else {
        metrics::counter!("agora_edge_shed_total").increment(1);
        return Err(ApiError::new(
            Code::Unavailable,
            "the edge is at capacity; try again shortly",
        )
        .with_reason(agora_kit::REASON_OVERLOADED)
        .to_status());
    };
    let (parts, body) = req.into_parts();
    let client_timeout = proxy::client_timeout(&parts.headers).map_err(to_status)?;
    let caller = proxy::authorize_caller(state, route, &parts.headers)
        .await
        .map_err(to_status)?;
    let client_ip = proxy::client_ip(state, &parts);
    proxy::rate_limit(state, route, caller.as_ref(), client_ip)
        .await
        .map_err(|refused| to_status(refused.error))?;

    let body = axum::body::to_bytes(Body::new(body), state.body_limit.saturating_add(5))
        .await
        .map_err(|_| {
            Status::resource_exhausted(format!(
                "the request message is larger than {} bytes",
                state.body_limit
            ))
        })?;
    let message = single_message(body)?;
    let upstream = state.upstreams.get(&route.upstream).ok_or_else(|| {
        Status::unavailable(format!("the {} service is not configured", route.upstream))
    })?;
    let mut metadata = MetadataMap::new();
    forward_metadata(
        &parts.headers,
        &mut metadata,
        caller.as_ref().map(|c| c.user_id.as_str()),
    );

    if route.method.is_server_streaming() {
        return server_stream(state, route, upstream, message, metadata, client_timeout).await;
    }
    let reply = call::unary(
        upstream,
        UnaryCall {
            path: &route.grpc_uri,
            body: message,
            metadata,
            idempotent: route.idempotent,
            client_timeout,
        },
    )
    .await
    .map_err(to_status)?;
    let frames = futures::stream::iter([
        Ok::<_, Infallible>(Frame::data(frame(&reply))),
        Ok(Frame::trailers(ok_trailers())),
    ]);
    Ok(grpc_response(tonic::body::Body::new(StreamBody::new(
        frames,
    ))))
}

async fn server_stream(
    state: &EdgeState,
    route: &Route,
    upstream: &crate::upstream::Upstream,
    message: Bytes,
    metadata: MetadataMap,
    client_timeout: Option<Duration>,
) -> Result<GrpcResponse, Status> {
    let slot = proxy::stream_slot(state).map_err(to_status)?;
    let replies = stream::open(
        upstream,
        StreamCall {
            path: route.grpc_uri.clone(),
            first: message,
            rest: None,
            metadata,
            client_timeout,
        },
    )
    .await
    .map_err(to_status)?;
    // Replies pass as they come, read only as fast as the client takes
    // them; the stream ends with the service's status, or UNAVAILABLE when
    // the edge stops.
    let replies = stream::until_stopped(replies, state.shutdown.stopping_owned());
    let frames = replies.scan(false, move |done, next| {
        let _slot = &slot;
        if *done {
            return std::future::ready(None);
        }
        let frame = match next {
            Some(Ok(reply)) => Frame::data(frame(&reply)),
            Some(Err(status)) => {
                *done = true;
                Frame::trailers(status_trailers(&status))
            }
            None => {
                *done = true;
                Frame::trailers(ok_trailers())
            }
        };
        std::future::ready(Some(Ok::<_, Infallible>(frame)))
    });
    Ok(grpc_response(tonic::body::Body::new(StreamBody::new(
        frames,
    ))))
}

/// The one message of a unary or server-streaming request.
fn single_message(mut body: Bytes) -> Result<Bytes, Status> {
    if body.len() < 5 {
        return Err(Status::invalid_argument(
            "the request holds no gRPC message",
        ));
    }
    let compressed = body.get_u8();
    let len = body.get_u32() as usize;
    if compressed != 0 {
        return Err(Status::unimplemented(
            "compressed request messages are not accepted; send them uncompressed",
        ));
    }
    if body.len() != len {
        return Err(Status::invalid_argument(
            "the request must hold exactly one whole gRPC message",
        ));
    }
    Ok(body)
}

/// `message` with its gRPC length prefix.
fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(message.len() + 5);
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

fn grpc_response(body: tonic::body::Body) -> GrpcResponse {
    let mut resp = http::Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    resp
}

fn ok_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers
}

fn status_trailers(status: &Status) -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(2);
    if status.add_header(&mut trailers).is_err() {
        trailers.insert("grpc-status", HeaderValue::from(Code::Internal as i32));
    }
    trailers
}

/// An answer with no messages: the status travels in the headers.
fn trailers_only(status: &Status) -> GrpcResponse {
    let mut resp = grpc_response(tonic::body::Body::empty());
    let headers = status_trailers(status);
    resp.headers_mut().extend(headers);
    resp
}

/// The error as gRPC clients see it: details in binary, fields in proto
/// names.
fn to_status(e: ApiError) -> Status {
    e.to_status()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_framed_message_is_taken_and_anything_else_refused() {
        let framed = frame(b"hello");
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 5]);
        assert_eq!(single_message(framed).expect("one"), Bytes::from("hello"));
        assert_eq!(single_message(frame(b"")).expect("empty"), Bytes::new());

        let short = Bytes::from_static(&[0, 0, 0]);
        assert_eq!(
            single_message(short).expect_err("short").code(),
            Code::InvalidArgument
        );
        let mut two = BytesMut::from(&frame(b"a")[..]);
        two.extend_from_slice(&frame(b"b"));
        assert_eq!(
            single_message(two.freeze()).expect_err("two").code(),
            Code::InvalidArgument
        );
        let compressed = Bytes::from_static(&[1, 0, 0, 0, 1, 7]);
        assert_eq!(
            single_message(compressed).expect_err("compressed").code(),
            Code::Unimplemented
        );
    }
}
