//! The REST handler: match a route, authenticate, transcode, call the
//! upstream over gRPC, transcode back.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use agora_kit::{
    access::authorize,
    auth::{API_KEY_HEADER, CALLER_ID_HEADER, Caller},
};
use axum::{
    body::Body,
    extract::{ConnectInfo, FromRequestParts as _, Request, State, ws::WebSocketUpgrade},
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
    call::{self, UnaryCall},
    error::{self, ApiError},
    etag, grpcweb,
    idempotency::{self, Begin},
    ratelimit::{self, Decision},
    routes::{Lookup, Route, RouteKind},
    stream::{self, Bridge, StreamCall},
    transcode::{request_message, response_json},
    upstream::{OwnedSlot, Slot, Upstream},
    validate,
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
    // Passed on as they came when tracing is off; when it is on, the
    // edge's own span replaces them.
    "traceparent",
    "tracestate",
];

pub async fn handle(State(state): State<Arc<EdgeState>>, req: Request) -> Response {
    if grpcweb::is_grpc(&req) {
        let label = state
            .contract
            .load()
            .routes
            .by_grpc_path(req.uri().path())
            .map(|r| RouteLabel(r.grpc_path.clone()));
        let mut resp = grpcweb::handle(state, req).await;
        if let Some(label) = label {
            resp.extensions_mut().insert(label);
        }
        return resp;
    }
    let method = req.method().clone();
    // HEAD is GET without the body (the server drops it).
    let lookup_method = if method == http::Method::HEAD {
        http::Method::GET
    } else {
        method.clone()
    };
    // The contracts in force when the request came; a reload swaps in new
    // ones for later requests.
    let contract = state.contract.load_full();
    let (route, values) = match contract.routes.lookup(&lookup_method, req.uri().path()) {
        Lookup::Found(route, values) => (route, values),
        Lookup::WrongMethod(allowed) => {
            let allow = allow_value(&allowed);
            if method == http::Method::OPTIONS {
                let mut resp = Response::new(Body::empty());
                *resp.status_mut() = StatusCode::NO_CONTENT;
                if let Ok(v) = HeaderValue::from_str(&allow) {
                    resp.headers_mut().insert(header::ALLOW, v);
                }
                return resp;
            }
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
    // Above the edge's cap, answer at once rather than queue.
    let Some(_slot) = Slot::try_take(&state.in_flight, state.max_in_flight) else {
        metrics::counter!("agora_edge_shed_total").increment(1);
        let mut resp = ApiError::new(
            Code::Unavailable,
            "the edge is at capacity; try again shortly",
        )
        .with_reason(agora_kit::REASON_OVERLOADED)
        .with_retry_after(std::time::Duration::from_secs(1))
        .into_response();
        resp.extensions_mut().insert(label);
        return resp;
    };
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
    let (mut parts, body) = req.into_parts();
    let ws = match route.kind {
        RouteKind::WebSocket => Some(
            WebSocketUpgrade::from_request_parts(&mut parts, &())
                .await
                .map_err(|_| {
                    ApiError::bad_request(
                        "this path is a WebSocket: connect with a WebSocket client (GET with Upgrade: websocket)",
                    )
                    .with_status(StatusCode::UPGRADE_REQUIRED)
                })?,
        ),
        _ => None,
    };
    // Browsers cannot set headers on WebSockets and EventSource: streams
    // also take the access token from the query.
    let mut query = parts.uri.query().map(str::to_owned);
    if route.kind != RouteKind::Unary {
        query = take_access_token(&mut parts.headers, query.as_deref())?;
    }
    let client_timeout = client_timeout(&parts.headers)?;
    let caller = authorize_caller(state, route, &parts.headers).await?;
    let client_ip = client_ip(state, &parts);
    let decision = match rate_limit(state, route, caller.as_ref(), client_ip).await {
        Ok(decision) => decision,
        Err(refused) => {
            let mut resp = refused.error.into_response();
            rate_limit_headers(&mut resp, &refused.decision);
            return Ok(resp);
        }
    };

    let body = match axum::body::to_bytes(body, state.body_limit).await {
        Ok(body) => body,
        Err(_) => {
            return Err(ApiError::bad_request(format!(
                "the request body is larger than {} bytes",
                state.body_limit
            ))
            .with_status(StatusCode::PAYLOAD_TOO_LARGE));
        }
    };
    if !body.is_empty() && !is_json(&parts.headers) {
        return Err(ApiError::bad_request(
            "the request body must be JSON (content-type: application/json)",
        ));
    }
    let msg = request_message(route, values, query.as_deref(), &body).map_err(ApiError::from)?;
    // The contract's field rules, all at once, before anything is called.
    let violations = validate::check(&msg);
    if !violations.is_empty() {
        return Err(in_route_names(route, ApiError::invalid_fields(violations)));
    }

    let upstream = state.upstreams.get(&route.upstream).ok_or_else(|| {
        ApiError::new(
            Code::Unavailable,
            format!("the {} service is not configured", route.upstream),
        )
    })?;

    // An idempotency key claims the request before it runs, or answers for it.
    let mut claim = None;
    if let Some(key) = idempotency_key(&parts)? {
        let scope = caller.as_ref().map_or_else(
            || format!("ip:{client_ip}"),
            |c| format!("user:{}", c.user_id),
        );
        let lease = upstream.policy.timeout + Duration::from_secs(5);
        match state
            .idempotency
            .begin(&scope, key, (&parts.method, &parts.uri, &body), lease)
            .await
        {
            Begin::Run(c) => claim = Some(c),
            Begin::Unprotected => {}
            Begin::Replay(mut resp) => {
                if let Some(d) = &decision {
                    rate_limit_headers(&mut resp, d);
                }
                return Ok(resp);
            }
            Begin::InProgress => {
                return Err(ApiError::new(
                    Code::Aborted,
                    "a request with this Idempotency-Key is still running; retry when it has finished",
                )
                .with_reason(agora_kit::REASON_IDEMPOTENCY_KEY_IN_PROGRESS)
                .with_retry_after(Duration::from_secs(1)));
            }
            Begin::Mismatch => {
                return Err(ApiError::bad_request(
                    "Idempotency-Key was already used for a different request; use a new key for a new request",
                )
                .with_reason(agora_kit::REASON_IDEMPOTENCY_KEY_REUSED)
                .with_status(StatusCode::UNPROCESSABLE_ENTITY));
            }
        }
    }

    let mut metadata = MetadataMap::new();
    forward_metadata(
        &parts.headers,
        &mut metadata,
        caller.as_ref().map(|c| c.user_id.as_str()),
    );
    if route.kind != RouteKind::Unary {
        let mut resp = open_stream(
            state,
            route,
            upstream,
            StreamCall {
                path: route.grpc_uri.clone(),
                first: Bytes::from(msg.encode_to_vec()),
                rest: None,
                metadata,
                client_timeout,
            },
            &parts.headers,
            ws,
        )
        .await?;
        if let Some(d) = &decision {
            rate_limit_headers(&mut resp, d);
        }
        return Ok(resp);
    }
    let reads = matches!(parts.method, http::Method::GET | http::Method::HEAD);
    let reply = call::unary(
        upstream,
        UnaryCall {
            path: &route.grpc_uri,
            body: Bytes::from(msg.encode_to_vec()),
            metadata,
            idempotent: route.idempotent,
            client_timeout,
        },
    )
    .await
    .map_err(|e| in_route_names(route, e))
    .and_then(|reply| render(route, reply, reads));
    let (status, json, version) = match reply {
        Ok((json, version)) => (StatusCode::OK, Bytes::from(json), version),
        Err(e) => {
            let resp = e.into_response();
            let status = resp.status();
            let (parts, body) = resp.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap_or_default();
            if let Some(claim) = claim {
                state.idempotency.finish(claim, status, &bytes).await;
            }
            let mut resp = Response::from_parts(parts, Body::from(bytes));
            if let Some(d) = &decision {
                rate_limit_headers(&mut resp, d);
            }
            return Ok(resp);
        }
    };
    if let Some(claim) = claim {
        state.idempotency.finish(claim, status, &json).await;
    }
    let mut resp = if reads {
        let tag = etag::tag(version.as_deref(), &json);
        let unchanged = parts
            .headers
            .get(header::IF_NONE_MATCH)
            .is_some_and(|v| etag::none_match(v, &tag));
        let mut resp = if unchanged {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            resp
        } else {
            json_response(json)
        };
        let h = resp.headers_mut();
        h.insert(header::ETAG, tag);
        // Caches must check back; answers to a caller are theirs alone.
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(if caller.is_some() {
                "private, no-cache"
            } else {
                "no-cache"
            }),
        );
        resp
    } else {
        json_response(json)
    };
    if let Some(d) = &decision {
        rate_limit_headers(&mut resp, d);
    }
    Ok(resp)
}

fn json_response(json: Bytes) -> Response {
    let mut resp = Response::new(Body::from(json));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The `Allow` header of a path served for `allowed`: HEAD wherever GET
/// is, and OPTIONS everywhere.
fn allow_value(allowed: &[http::Method]) -> String {
    use http::Method;
    const ORDER: [(Method, &str); 5] = [
        (Method::GET, "GET, HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::PATCH, "PATCH"),
        (Method::DELETE, "DELETE"),
    ];
    let mut out: Vec<&str> = ORDER
        .iter()
        .filter(|(m, _)| allowed.contains(m))
        .map(|(_, names)| *names)
        .collect();
    // Custom methods of the contracts, as they are.
    out.extend(
        allowed
            .iter()
            .filter(|m| !ORDER.iter().any(|(o, _)| o == *m))
            .map(|m| m.as_str()),
    );
    out.push("OPTIONS");
    out.join(", ")
}

/// An upstream's error with its fields named as the route's clients name
/// them: JSON names, unless the edge answers in proto names.
fn in_route_names(route: &Route, e: ApiError) -> ApiError {
    if route.transcoding.use_proto_names {
        e
    } else {
        e.in_json_names(&route.input())
    }
}

/// One of the edge's stream slots, or a refusal when all are taken.
pub(crate) fn stream_slot(state: &EdgeState) -> Result<OwnedSlot, ApiError> {
    OwnedSlot::try_take(&state.streams, state.max_streams).ok_or_else(|| {
        metrics::counter!("agora_edge_shed_total").increment(1);
        ApiError::new(
            Code::Unavailable,
            "the edge holds as many streams as it may; try again shortly",
        )
        .with_reason(agora_kit::REASON_OVERLOADED)
        .with_retry_after(Duration::from_secs(1))
    })
}

/// A deadline the client set with `grpc-timeout`, checked.
pub(crate) fn client_timeout(headers: &http::HeaderMap) -> Result<Option<Duration>, ApiError> {
    match headers.get("grpc-timeout") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(agora_kit::deadline::parse_grpc_timeout)
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "grpc-timeout: must be up to 8 digits and a unit (H, M, S, m, u, n), like 100m",
                )
            }),
    }
}

/// The caller of a request, allowed to call `route`.
pub(crate) async fn authorize_caller(
    state: &EdgeState,
    route: &Route,
    headers: &http::HeaderMap,
) -> Result<Option<Caller>, ApiError> {
    let caller = match state.auth.authenticate(headers).await {
        Ok(caller) => caller,
        // Public routes serve anonymous callers even with stale credentials.
        Err(_) if route.access.public => None,
        Err(e) => return Err(e.into()),
    };
    authorize(&route.access, caller.as_ref()).map_err(ApiError::from)?;
    Ok(caller)
}

/// The client's address, through as many proxies as are trusted.
pub(crate) fn client_ip(state: &EdgeState, parts: &http::request::Parts) -> IpAddr {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    ratelimit::client_ip(peer, &parts.headers, state.rate_limits.trusted_proxy_hops)
}

/// A call refused by a rate limit.
pub(crate) struct Refused {
    pub error: ApiError,
    pub decision: Decision,
}

/// Takes one call from the caller's budget for `route`: the decision to
/// report in headers, `None` when no limit applies.
pub(crate) async fn rate_limit(
    state: &EdgeState,
    route: &Route,
    caller: Option<&Caller>,
    client_ip: IpAddr,
) -> Result<Option<Decision>, Refused> {
    let Some(subject) = ratelimit::subject(&state.rate_limits, route, caller, client_ip) else {
        return Ok(None);
    };
    let decision = state.limiter.check(&subject).await;
    if decision.allowed {
        return Ok(Some(decision));
    }
    metrics::counter!("agora_edge_rate_limited_total", "route" => route.label.to_string())
        .increment(1);
    let error = ApiError::new(
        Code::ResourceExhausted,
        format!(
            "rate limit exceeded: {} calls per minute; retry in {} s",
            decision.limit,
            error::retry_after_secs(decision.retry_after)
        ),
    )
    .with_retry_after(decision.retry_after)
    .with_reason(agora_kit::REASON_RATE_LIMITED);
    Err(Refused { error, decision })
}

/// Opens a stream and answers with it: SSE/NDJSON, or the WebSocket
/// upgrade.
async fn open_stream(
    state: &EdgeState,
    route: &Route,
    upstream: &Upstream,
    mut call: StreamCall,
    headers: &http::HeaderMap,
    ws: Option<WebSocketUpgrade>,
) -> Result<Response, ApiError> {
    let slot = stream_slot(state)?;
    let requests = match (&ws, route.method.is_client_streaming()) {
        (Some(_), true) => {
            let (tx, rx) = stream::request_queue();
            call.rest = Some(rx);
            Some(tx)
        }
        _ => None,
    };
    let replies = stream::open(upstream, call)
        .await
        .map_err(|e| in_route_names(route, e))?;
    let stopping = state.shutdown.stopping_owned();
    Ok(match ws {
        Some(ws) => Bridge {
            route: route.clone(),
            replies,
            requests,
            settings: state.streams_settings,
            slot,
        }
        .upgrade(ws, stopping),
        None => stream::respond(route, replies, stream::wants_sse(headers), slot, stopping),
    })
}

/// Moves an `access_token` query parameter into the `authorization`
/// header (unless one was sent) and returns the query without it.
fn take_access_token(
    headers: &mut http::HeaderMap,
    query: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let Some(query) = query else {
        return Ok(None);
    };
    let mut rest = Vec::new();
    let mut token = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("access_token", value)) => token = Some(value),
            _ => rest.push(pair),
        }
    }
    if let Some(token) = token
        && !headers.contains_key(header::AUTHORIZATION)
    {
        let token = percent_encoding::percent_decode_str(token).decode_utf8_lossy();
        let value = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| ApiError::bad_request("access_token: not a valid token"))?;
        headers.insert(header::AUTHORIZATION, value);
    }
    Ok((!rest.is_empty()).then(|| rest.join("&")))
}

/// The upstream's reply as the route's JSON.
/// The reply as JSON and, when asked for, its resource's version (for the
/// entity tag).
fn render(
    route: &Route,
    reply: Bytes,
    versioned: bool,
) -> Result<(Vec<u8>, Option<String>), ApiError> {
    let out = DynamicMessage::decode(route.method.output(), reply).map_err(|e| {
        tracing::error!(method = %route.method.full_name(), error = %e, "cannot decode an upstream reply");
        ApiError::new(Code::Internal, "internal error")
    })?;
    let json = response_json(route, &out).map_err(|e| {
        tracing::error!(method = %route.method.full_name(), error = %e, "cannot render an upstream reply");
        ApiError::new(Code::Internal, "internal error")
    })?;
    let version = versioned
        .then(|| etag::resource_version(route, &out))
        .flatten();
    Ok((json, version))
}

/// The `Idempotency-Key` of a POST or PATCH, checked.
fn idempotency_key(parts: &http::request::Parts) -> Result<Option<&str>, ApiError> {
    if parts.method != http::Method::POST && parts.method != http::Method::PATCH {
        return Ok(None);
    }
    let Some(v) = parts.headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= idempotency::MAX_KEY_LEN => Ok(Some(k)),
        _ => Err(ApiError::bad_request(format!(
            "Idempotency-Key: must be 1 to {} visible ASCII characters",
            idempotency::MAX_KEY_LEN
        ))),
    }
}

/// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds).
fn rate_limit_headers(resp: &mut Response, d: &Decision) {
    let h = resp.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(d.limit));
    h.insert("ratelimit-remaining", HeaderValue::from(d.remaining));
    h.insert(
        "ratelimit-reset",
        HeaderValue::from(d.reset.as_millis().div_ceil(1000) as u64),
    );
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

pub(crate) fn forward_metadata(
    headers: &http::HeaderMap,
    md: &mut MetadataMap,
    caller: Option<&str>,
) {
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
