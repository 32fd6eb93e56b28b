//! Streaming RPCs for HTTP clients, generically, from the contracts:
//!
//! - a server-streaming RPC with a `google.api.http` rule answers with
//!   Server-Sent Events (`Accept: text/event-stream`) or newline-delimited
//!   JSON (anything else), one message per event or line;
//! - an RPC with an `agora.api.v1.websocket` binding becomes a WebSocket:
//!   text frames carry the proto3 JSON of the messages both ways.
//!
//! A stream that fails ends with its `google.rpc.Status`: an `error` event
//! (SSE), a last line or frame `{"error": <status>}` (NDJSON, WebSocket),
//! and for WebSockets a close frame whose code says how to react. It is
//! never a silent close.
//!
//! Streams have no deadline unless the client sends `grpc-timeout`; the
//! upstream's timeout bounds only how long the service may take to open
//! one. Memory is bounded: frames from a client wait in a small queue
//! (the client waits when it is full), replies are read from the service
//! only as fast as the client takes them, and a WebSocket client that
//! takes nothing for the send timeout is disconnected (the service's own
//! bounded queue ends a stream that falls behind).

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use agora_kit::breaker::Admission;
use axum::{
    body::Body,
    extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade},
    http::{HeaderValue, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _, stream::BoxStream};
use http::uri::PathAndQuery;
use prost::Message as _;
use prost_reflect::DynamicMessage;
use tokio::sync::mpsc;
use tonic::{Code, Status, Streaming, metadata::MetadataMap};
use tracing::Instrument as _;

use crate::{
    codec::RawCodec,
    error::ApiError,
    routes::Route,
    transcode::{message_from_json, response_json},
    upstream::{OwnedSlot, Upstream},
};

/// Frames from a WebSocket client waiting for the service.
const CLIENT_QUEUE: usize = 16;
/// Interval of SSE keep-alive comments.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How the edge serves streams (see [`crate::EdgeConfig`]).
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// WebSocket ping interval; a peer silent for two intervals is gone.
    pub ping_interval: Duration,
    /// How long one frame may wait for a WebSocket client to take it.
    pub send_timeout: Duration,
    /// Largest frame a client may send, in bytes.
    pub max_frame_bytes: usize,
    /// Frames per second a WebSocket client may send, with bursts of
    /// twice as many (0: no limit). The rate limit of the upgrade covers
    /// only the upgrade.
    pub frames_per_second: u32,
}

/// A token bucket over a client's frames.
struct FrameBudget {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl FrameBudget {
    fn new(per_second: u32) -> Option<Self> {
        (per_second > 0).then(|| {
            let rate = f64::from(per_second);
            Self {
                rate,
                burst: rate * 2.0,
                tokens: rate * 2.0,
                at: tokio::time::Instant::now(),
            }
        })
    }

    fn take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What to open.
pub struct StreamCall {
    pub path: PathAndQuery,
    /// The first request message, encoded.
    pub first: Bytes,
    /// Further request messages (bidi RPCs), until the sender is dropped.
    pub rest: Option<mpsc::Receiver<Bytes>>,
    pub metadata: MetadataMap,
    /// A deadline the client asked for (`grpc-timeout`), if any.
    pub client_timeout: Option<Duration>,
}

/// Opens a stream to `upstream`: answers once the service has accepted it
/// (sent its response headers), so a refusal is still an HTTP error.
/// Streams are not retried (their requests cannot be replayed), but the
/// breaker guards them as it guards unary calls.
pub async fn open(upstream: &Upstream, call: StreamCall) -> Result<Streaming<Bytes>, ApiError> {
    let permit = match upstream.breaker.admit() {
        Admission::Allowed(permit) => permit,
        Admission::Refused { retry_after } => {
            return Err(ApiError::new(
                Code::Unavailable,
                format!(
                    "the {} service is failing; the edge stopped calling it for now",
                    upstream.name
                ),
            )
            .with_reason(agora_kit::REASON_CIRCUIT_OPEN)
            .with_retry_after(retry_after));
        }
    };
    let first = futures::stream::once(std::future::ready(call.first));
    let requests: BoxStream<'static, Bytes> = match call.rest {
        Some(rx) => first
            .chain(tokio_stream::wrappers::ReceiverStream::new(rx))
            .boxed(),
        None => first.boxed(),
    };
    let mut req = tonic::Request::new(requests);
    *req.metadata_mut() = call.metadata;
    if let Some(t) = call.client_timeout {
        req.set_timeout(t);
    }
    let span = agora_kit::trace::rpc_span(call.path.path(), false);
    span.record("agora.upstream", &*upstream.name);
    upstream.attempts.increment(1);
    let mut client = tonic::client::Grpc::new(upstream.channel.clone());
    let path = call.path;
    let opening = async {
        client.ready().await.map_err(|e| {
            tracing::warn!(upstream = %upstream.name, error = %e, "upstream not ready");
            Status::unavailable("the service is unavailable; try again later")
        })?;
        client.streaming(req, path, RawCodec).await
    };
    let opened = match tokio::time::timeout(upstream.policy.timeout, opening)
        .instrument(span.clone())
        .await
    {
        Ok(result) => result,
        Err(_) => Err(Status::deadline_exceeded(
            "the service did not open the stream in time",
        )),
    };
    match opened {
        Ok(resp) => {
            agora_kit::trace::record_code(&span, 0, None, false);
            permit.finish(true);
            Ok(resp.into_inner())
        }
        Err(status) => {
            agora_kit::trace::record_code(
                &span,
                status.code() as i32,
                Some(status.message()),
                false,
            );
            match status.code() {
                Code::DeadlineExceeded | Code::Unavailable | Code::Internal | Code::Unknown => {
                    permit.finish(false)
                }
                _ => permit.finish(true),
            }
            Err(ApiError::from(status))
        }
    }
}

/// One reply message as the route's JSON.
fn render(route: &Route, reply: Bytes) -> Result<Vec<u8>, ApiError> {
    let out = DynamicMessage::decode(route.method.output(), reply).map_err(|e| {
        tracing::error!(method = %route.method.full_name(), error = %e, "cannot decode a stream message");
        ApiError::new(Code::Internal, "internal error")
    })?;
    response_json(route, &out).map_err(|e| {
        tracing::error!(method = %route.method.full_name(), error = %e, "cannot render a stream message");
        ApiError::new(Code::Internal, "internal error")
    })
}

/// Replies already rendered, by method, response field and bytes. A room's
/// event reaches every member's stream as the same bytes; it is rendered
/// to JSON once and the text shared. Two generations bound the memory:
/// when the newer fills, it becomes the older and the older is dropped.
#[derive(Default)]
struct Rendered {
    current: HashMap<RenderKey, Utf8Bytes>,
    previous: HashMap<RenderKey, Utf8Bytes>,
}

type RenderKey = (Arc<str>, u32, Bytes);

/// Replies remembered per generation.
const RENDERED_PER_GENERATION: usize = 512;

static RENDERED: LazyLock<Mutex<Rendered>> = LazyLock::new(Mutex::default);

/// [`render`], shared between streams that carry the same reply.
fn render_shared(route: &Route, reply: Bytes) -> Result<Utf8Bytes, ApiError> {
    let key: RenderKey = (
        route.grpc_path.clone(),
        route.response_body.as_ref().map_or(0, |f| f.number()),
        reply,
    );
    {
        let cache = RENDERED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(text) = cache.current.get(&key).or_else(|| cache.previous.get(&key)) {
            return Ok(text.clone());
        }
    }
    let json = render(route, key.2.clone())?;
    let text = Utf8Bytes::try_from(Bytes::from(json)).map_err(|_| {
        tracing::error!(method = %route.method.full_name(), "a rendered reply is not UTF-8");
        ApiError::new(Code::Internal, "internal error")
    })?;
    let mut cache = RENDERED.lock().unwrap_or_else(|e| e.into_inner());
    if cache.current.len() >= RENDERED_PER_GENERATION {
        cache.previous = std::mem::take(&mut cache.current);
    }
    cache.current.insert(key, text.clone());
    Ok(text)
}

/// What the stream yields to an HTTP client: a message, or its end.
enum Item {
    Message(Utf8Bytes),
    Failed(ApiError),
}

/// The replies as JSON, ending after the first failure, or with
/// UNAVAILABLE when the edge stops.
fn items(
    route: Route,
    replies: Streaming<Bytes>,
    stopping: impl Future<Output = ()> + Send + 'static,
) -> BoxStream<'static, Item> {
    until_stopped(replies, stopping)
        .scan(false, move |done, next| {
            if *done {
                return std::future::ready(None);
            }
            let item = match next {
                Some(Ok(reply)) => match render_shared(&route, reply) {
                    Ok(text) => Some(Item::Message(text)),
                    Err(e) => {
                        *done = true;
                        Some(Item::Failed(e))
                    }
                },
                Some(Err(status)) => {
                    *done = true;
                    Some(Item::Failed(ApiError::from(status)))
                }
                // The service finished the stream.
                None => None,
            };
            std::future::ready(item)
        })
        .boxed()
}

/// The replies of a stream, then `None` when the service ends it, or an
/// UNAVAILABLE status when the edge stops first (clients reconnect).
pub fn until_stopped(
    replies: Streaming<Bytes>,
    stopping: impl Future<Output = ()> + Send + 'static,
) -> impl futures::Stream<Item = Option<Result<Bytes, Status>>> + Send {
    let stopped = futures::stream::once(stopping).map(|()| {
        Err(Status::unavailable(
            "the server is restarting; reconnect to continue",
        ))
    });
    let replies = replies
        .map(Some)
        .chain(futures::stream::once(async { None }));
    futures::stream::select(replies, stopped.map(Some))
}

/// Whether the client asked for Server-Sent Events.
pub fn wants_sse(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// Answers a server stream as SSE or NDJSON. `slot` is held until the
/// stream ends.
pub fn respond(
    route: &Route,
    replies: Streaming<Bytes>,
    sse: bool,
    slot: OwnedSlot,
    stopping: impl Future<Output = ()> + Send + 'static,
) -> Response {
    let items = items(route.clone(), replies, stopping);
    if sse {
        let events = items.map(move |item| {
            let _held = &slot;
            Ok::<_, Infallible>(match item {
                Item::Message(text) => Event::default().data(text.as_str()),
                Item::Failed(e) => Event::default()
                    .event("error")
                    .data(String::from_utf8_lossy(&e.status_json())),
            })
        });
        let mut resp = Sse::new(events)
            .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
            .into_response();
        // Proxies must pass events on as they come.
        resp.headers_mut()
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
        return resp;
    }
    let lines = items.map(move |item| {
        let _held = &slot;
        let mut line = match item {
            Item::Message(text) => Vec::from(text.as_bytes()),
            Item::Failed(e) => e.stream_error_json(),
        };
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    let mut resp = Response::new(Body::from_stream(lines));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// The WebSocket close code for how a stream ended.
pub fn close_code(code: Code) -> u16 {
    match code {
        Code::Ok => 1000,
        // Going away / service restart: reconnect.
        Code::Unavailable => 1012,
        // Try again later: the client fell behind or was rate limited.
        Code::ResourceExhausted => 1013,
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::NotFound
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::AlreadyExists => 1008,
        _ => 1011,
    }
}

/// A close reason fits in 123 bytes.
fn close_reason(message: &str) -> String {
    let mut end = message.len().min(120);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_owned()
}

/// The WebSocket bridge of one opened stream.
pub struct Bridge {
    pub route: Route,
    pub replies: Streaming<Bytes>,
    /// Where client frames go (bidi RPCs); `None` when the RPC takes one
    /// request.
    pub requests: Option<mpsc::Sender<Bytes>>,
    pub settings: StreamSettings,
    pub slot: OwnedSlot,
}

/// A bounded queue for the requests of a bidi stream.
pub fn request_queue() -> (mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>) {
    mpsc::channel(CLIENT_QUEUE)
}

impl Bridge {
    /// Upgrades, then bridges until either side ends.
    pub fn upgrade(
        self,
        ws: WebSocketUpgrade,
        stopping: impl Future<Output = ()> + Send + 'static,
    ) -> Response {
        let max = self.settings.max_frame_bytes;
        ws.max_message_size(max)
            .max_frame_size(max)
            // Idle connections must stay small; frames are small.
            .read_buffer_size(512)
            .write_buffer_size(0)
            .max_write_buffer_size(max.saturating_mul(2).max(64 * 1024))
            .on_upgrade(move |socket| self.run(socket, stopping))
    }

    /// Every await on a write is boxed: they are brief, and an idle
    /// bridge (most of them) should not carry their space.
    async fn run(self, socket: WebSocket, stopping: impl Future<Output = ()> + Send + 'static) {
        let Bridge {
            route,
            mut replies,
            requests,
            settings,
            slot: _slot,
        } = self;
        let open = metrics::gauge!("agora_edge_websockets_open");
        open.increment(1.0);
        let (mut tx, mut rx) = socket.split();
        let mut ping = tokio::time::interval(settings.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut last_heard = tokio::time::Instant::now();
        let input = route.input();
        let mut budget = FrameBudget::new(settings.frames_per_second);
        tokio::pin!(stopping);
        // How the socket ends: a status, or nothing when the client left.
        let end: Option<Status> = loop {
            tokio::select! {
                reply = replies.next() => {
                    let frame = match reply {
                        Some(Ok(reply)) => match render_shared(&route, reply) {
                            Ok(text) => text,
                            Err(e) => break Some(Status::new(e.code, e.message)),
                        },
                        Some(Err(status)) => break Some(status),
                        None => break Some(Status::ok("")),
                    };
                    if !Box::pin(send_frame(&mut tx, frame, settings.send_timeout)).await {
                        break None;
                    }
                }
                frame = rx.next() => {
                    let text = match frame {
                        Some(Ok(WsMessage::Text(text))) => text,
                        Some(Ok(WsMessage::Binary(_))) => {
                            last_heard = tokio::time::Instant::now();
                            let e = ApiError::bad_request("send JSON messages as text frames");
                            if !Box::pin(send_text(&mut tx, e.stream_error_json(), settings.send_timeout)).await {
                                break None;
                            }
                            continue;
                        }
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {
                            last_heard = tokio::time::Instant::now();
                            continue;
                        }
                        // The client closed, or its connection broke.
                        Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break None,
                    };
                    last_heard = tokio::time::Instant::now();
                    let Some(requests) = &requests else {
                        let e = ApiError::bad_request(
                            "this stream takes no messages from the client",
                        );
                        if !Box::pin(send_text(&mut tx, e.stream_error_json(), settings.send_timeout)).await {
                            break None;
                        }
                        continue;
                    };
                    if let Some(budget) = &mut budget
                        && !budget.take()
                    {
                        metrics::counter!("agora_edge_websocket_frames_limited_total").increment(1);
                        let e = ApiError::new(
                            Code::ResourceExhausted,
                            format!(
                                "too many messages: at most {} per second; this one was dropped",
                                settings.frames_per_second
                            ),
                        );
                        if !Box::pin(send_text(&mut tx, e.stream_error_json(), settings.send_timeout)).await {
                            break None;
                        }
                        continue;
                    }
                    match message_from_json(&input, text.as_bytes()) {
                        Ok(msg) => {
                            // Waits while the queue is full: a client cannot
                            // outrun the service.
                            if Box::pin(requests.send(Bytes::from(msg.encode_to_vec()))).await.is_err() {
                                // The call is over; its status follows on
                                // the reply side.
                                continue;
                            }
                        }
                        Err(e) => {
                            let e = ApiError::from(e);
                            if !Box::pin(send_text(&mut tx, e.stream_error_json(), settings.send_timeout)).await {
                                break None;
                            }
                        }
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > settings.ping_interval * 2 {
                        metrics::counter!("agora_edge_websocket_dead_peers_total").increment(1);
                        break None;
                    }
                    let sent = Box::pin(tokio::time::timeout(
                        settings.send_timeout,
                        tx.send(WsMessage::Ping(Bytes::new())),
                    ))
                    .await;
                    if !matches!(sent, Ok(Ok(()))) {
                        break None;
                    }
                }
                () = &mut stopping => {
                    break Some(Status::unavailable("the server is restarting; reconnect to continue"));
                }
            }
        };
        if let Some(status) = end {
            if status.code() != Code::Ok {
                let e = ApiError::from(status.clone());
                let _ = send_text(&mut tx, e.stream_error_json(), settings.send_timeout).await;
            }
            let close = WsMessage::Close(Some(CloseFrame {
                code: close_code(status.code()),
                reason: close_reason(status.message()).into(),
            }));
            let _ = tokio::time::timeout(settings.send_timeout, tx.send(close)).await;
        }
        open.decrement(1.0);
    }
}

/// Sends JSON the edge wrote (an error) as a text frame.
async fn send_text(
    tx: &mut futures::stream::SplitSink<WebSocket, WsMessage>,
    json: Vec<u8>,
    timeout: Duration,
) -> bool {
    let text = match String::from_utf8(json) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    send_frame(tx, text.into(), timeout).await
}

/// Sends one text frame; false when the client is gone or has taken
/// nothing for `timeout` (it is then disconnected).
async fn send_frame(
    tx: &mut futures::stream::SplitSink<WebSocket, WsMessage>,
    text: Utf8Bytes,
    timeout: Duration,
) -> bool {
    match tokio::time::timeout(timeout, tx.send(WsMessage::Text(text))).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            metrics::counter!("agora_edge_websocket_slow_consumers_total").increment(1);
            tracing::info!("disconnecting a WebSocket client that stopped reading");
            false
        }
    }
}

/// Shared by handlers: a cheap handle on the streams' cap.
pub type StreamCount = Arc<std::sync::atomic::AtomicUsize>;
