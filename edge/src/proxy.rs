//! The REST handler: match a route, authenticate, transcode, call the
//! upstream over gRPC, transcode back.

use std::{sync::Arc, time::Instant};

use agora_kit::{
    access::authorize,
    auth::{API_KEY_HEADER, CALLER_ID_HEADER},
};
use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use prost::Message as _;
use prost_reflect::DynamicMessage;
use tonic::{
    Code,
    metadata::{MetadataMap, MetadataValue},
};

use crate::{
    EdgeState,
    codec::RawCodec,
    error::ApiError,
    routes::{Lookup, Route},
    transcode::{request_message, response_json},
};

/// The matched route template, for metrics labels (bounded cardinality).
#[derive(Clone)]
pub struct RouteLabel(pub Arc<str>);

/// Headers passed through to services as gRPC metadata.
const FORWARDED: &[&str] = &[
    "authorization",
    API_KEY_HEADER,
    "idempotency-key",
    "x-request-id",
    "traceparent",
    "tracestate",
];

pub async fn handle(State(state): State<EdgeState>, req: Request) -> Response {
    let method = req.method().clone();
    let (route, values) = match state.routes.lookup(&method, req.uri().path()) {
        Lookup::Found(route, values) => (route, values),
        Lookup::WrongMethod(allowed) => {
            let allow = allowed
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let mut resp = ApiError::new(
                Code::Unimplemented,
                format!("method {method} is not allowed here; use {allow}"),
            )
            .into_response();
            *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            if let Ok(v) = HeaderValue::from_str(&allow) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
            return resp;
        }
        Lookup::NotFound => {
            return ApiError::not_found(format!("no route for {method} {}", req.uri().path()))
                .into_response();
        }
    };
    let label = RouteLabel(route.label.clone());
    let mut resp = match call(&state, route, &values, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    resp.extensions_mut().insert(label);
    resp
}

async fn call(
    state: &EdgeState,
    route: &Route,
    values: &[String],
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();

    let caller = match state.auth.authenticate(&parts.headers).await {
        Ok(caller) => caller,
        // Public routes serve anonymous callers even with stale credentials.
        Err(_) if route.access.public => None,
        Err(e) => return Err(e.into()),
    };
    authorize(&route.access, caller.as_ref()).map_err(ApiError::from)?;

    let body = match axum::body::to_bytes(body, state.body_limit).await {
        Ok(body) => body,
        Err(_) => {
            let mut resp = ApiError::bad_request(format!(
                "the request body is larger than {} bytes",
                state.body_limit
            ))
            .into_response();
            *resp.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return Ok(resp);
        }
    };
    if !body.is_empty() && !is_json(&parts.headers) {
        return Err(ApiError::bad_request(
            "the request body must be JSON (content-type: application/json)",
        ));
    }
    let msg = request_message(route, values, parts.uri.query(), &body)
        .map_err(|e| ApiError::bad_request(e.0))?;

    let upstream = state.upstreams.get(&route.upstream).ok_or_else(|| {
        ApiError::new(
            Code::Unavailable,
            format!("the {} service is not configured", route.upstream),
        )
    })?;

    let mut grpc_req = tonic::Request::new(Bytes::from(msg.encode_to_vec()));
    forward_metadata(
        &parts.headers,
        grpc_req.metadata_mut(),
        caller.as_ref().map(|c| c.user_id.as_str()),
    );
    grpc_req.set_timeout(upstream.policy.timeout);

    let mut client = tonic::client::Grpc::new(upstream.channel.clone());
    let started = Instant::now();
    // The deadline travels as grpc-timeout and also holds here, should the
    // service not answer at all (a black-holed connection).
    let call = async {
        client.ready().await.map_err(|e| {
            tracing::warn!(upstream = %upstream.name, error = %e, "upstream not ready");
            tonic::Status::unavailable("the service is unavailable; try again later")
        })?;
        client
            .unary(grpc_req, route.grpc_uri.clone(), RawCodec)
            .await
    };
    let result = match tokio::time::timeout(upstream.policy.timeout, call).await {
        // tonic servers report an expired grpc-timeout as CANCELLED; past
        // the deadline, clients should see DEADLINE_EXCEEDED (504).
        Ok(Err(s))
            if s.code() == Code::Cancelled && started.elapsed() >= upstream.policy.timeout =>
        {
            Err(None)
        }
        Ok(r) => r.map_err(Some),
        Err(_) => Err(None),
    }
    .map_err(|s| {
        s.unwrap_or_else(|| tonic::Status::deadline_exceeded("the service did not answer in time"))
    });
    metrics::histogram!("upstream_request_duration_seconds", "upstream" => upstream.name.clone())
        .record(started.elapsed().as_secs_f64());
    let reply = result.map_err(ApiError::from)?.into_inner();

    let out = DynamicMessage::decode(route.method.output(), reply)
        .map_err(|e| {
            tracing::error!(method = %route.method.full_name(), error = %e, "cannot decode an upstream reply");
            ApiError::new(Code::Internal, "internal error")
        })?;
    let json = response_json(route, &out).map_err(|e| {
        tracing::error!(method = %route.method.full_name(), error = %e, "cannot render an upstream reply");
        ApiError::new(Code::Internal, "internal error")
    })?;
    let mut resp = Response::new(Body::from(json));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn is_json(headers: &http::HeaderMap) -> bool {
    match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        // curl -d sends form encoding by default; JSON is what it carries here.
        None => true,
        Some(ct) => {
            let ct = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            ct == "application/json"
                || ct.ends_with("+json")
                || ct == "application/x-www-form-urlencoded"
        }
    }
}

fn forward_metadata(headers: &http::HeaderMap, md: &mut MetadataMap, caller: Option<&str>) {
    for name in FORWARDED {
        if let Some(v) = headers.get(*name)
            && let Ok(v) = MetadataValue::try_from(v.as_bytes())
        {
            md.insert(*name, v);
        }
    }
    if let Some(id) = caller
        && let Ok(v) = MetadataValue::try_from(id)
    {
        md.insert(CALLER_ID_HEADER, v);
    }
}
