//! One unary call to an upstream, with the edge's resilience policy, in the
//! order a call meets it:
//!
//! 1. load shedding: above the upstream's in-flight cap, 503 at once;
//! 2. the circuit breaker: open, 503 at once with `Retry-After`;
//! 3. attempts within the deadline (the upstream's timeout, or less when
//!    the client asked), each on the balanced channel, which prefers another
//!    endpoint than the previous attempt's;
//! 4. retries: on UNAVAILABLE or a broken connection for idempotent
//!    methods, or for any method when the call provably never reached the
//!    service, and on RESOURCE_EXHAUSTED
//!    when the service says when to retry; with exponential backoff and
//!    jitter, never past the deadline, and within the upstream's retry
//!    budget;
//! 5. the breaker hears the call's outcome once, after its retries.

use std::time::{Duration, Instant};
use tracing::Instrument as _;

use agora_kit::{
    balance::{AttemptHint, NotSent, is_transport_failure},
    breaker::Admission,
};
use bytes::Bytes;
use http::uri::PathAndQuery;
use tonic::{Code, Status, metadata::MetadataMap};
use tower::retry::budget::Budget as _;

use crate::{
    codec::RawCodec,
    error::ApiError,
    upstream::{Slot, Upstream},
};

/// The first retry's backoff ceiling; each further retry doubles it.
const BASE_BACKOFF: Duration = Duration::from_millis(25);
/// The largest backoff between attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// What to send.
pub struct UnaryCall<'a> {
    pub path: &'a PathAndQuery,
    pub body: Bytes,
    pub metadata: MetadataMap,
    /// Whether sending it twice is safe.
    pub idempotent: bool,
    /// A deadline the client asked for (`grpc-timeout`), if any.
    pub client_timeout: Option<Duration>,
}

/// Calls `upstream`; returns the encoded reply.
pub async fn unary(upstream: &Upstream, call: UnaryCall<'_>) -> Result<Bytes, ApiError> {
    let Some(_slot) = Slot::try_take(&upstream.in_flight, upstream.policy.max_in_flight) else {
        metrics::counter!("agora_upstream_shed_total", "upstream" => upstream.name.to_string())
            .increment(1);
        return Err(ApiError::new(
            Code::Unavailable,
            format!(
                "too many requests in flight to the {} service; try again shortly",
                upstream.name
            ),
        )
        .with_reason(agora_kit::REASON_OVERLOADED)
        .with_retry_after(Duration::from_secs(1)));
    };
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

    let timeout = match call.client_timeout {
        Some(t) if t < upstream.policy.timeout => t,
        _ => upstream.policy.timeout,
    };
    let started = Instant::now();
    let deadline = started + timeout;
    let hint = AttemptHint::default();
    upstream.budget.deposit();
    let mut attempt = 0u32;
    let outcome = loop {
        let result = attempt_once(upstream, &call, deadline, &hint, attempt + 1).await;
        let status = match result {
            Ok(reply) => break Ok(reply),
            Err(status) => status,
        };
        let now = Instant::now();
        let retryable = NotSent::is_cause_of(&status)
            || (call.idempotent
                && (status.code() == Code::Unavailable
                    || is_transport_failure(&status)
                    || (status.code() == Code::ResourceExhausted && carries_retry_info(&status))));
        if !retryable || attempt >= upstream.policy.retries || now >= deadline {
            break Err(status);
        }
        // Backoff with full jitter; a call that never left the edge goes
        // at once to another endpoint.
        let ceiling = (BASE_BACKOFF * 2u32.pow(attempt.min(8))).min(MAX_BACKOFF);
        let backoff = if NotSent::is_cause_of(&status) && attempt == 0 {
            Duration::ZERO
        } else {
            ceiling.mul_f64(fastrand::f64())
        };
        if now + backoff >= deadline || !upstream.budget.withdraw() {
            break Err(status);
        }
        metrics::counter!("agora_upstream_retries_total", "upstream" => upstream.name.to_string())
            .increment(1);
        tokio::time::sleep(backoff).await;
        attempt += 1;
    };
    upstream.latency.record(started.elapsed().as_secs_f64());

    match outcome {
        Ok(reply) => {
            permit.finish(true);
            Ok(reply)
        }
        Err(status) => {
            let client_shortened = timeout < upstream.policy.timeout;
            match status.code() {
                // A deadline the client shortened says nothing of the
                // service's health: the breaker hears no outcome.
                Code::DeadlineExceeded if client_shortened => drop(permit),
                Code::DeadlineExceeded
                | Code::Unavailable
                | Code::Internal
                | Code::Unknown
                | Code::DataLoss => permit.finish(false),
                _ => permit.finish(!is_transport_failure(&status)),
            }
            Err(ApiError::from(status))
        }
    }
}

/// One attempt, bounded by what is left of the deadline.
async fn attempt_once(
    upstream: &Upstream,
    call: &UnaryCall<'_>,
    deadline: Instant,
    hint: &AttemptHint,
    attempt_no: u32,
) -> Result<Bytes, Status> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(Status::deadline_exceeded(
            "the service did not answer in time",
        ));
    }
    upstream.attempts.increment(1);
    let mut req = tonic::Request::new(call.body.clone());
    *req.metadata_mut() = call.metadata.clone();
    req.set_timeout(remaining);
    req.extensions_mut().insert(hint.clone());
    let mut client = tonic::client::Grpc::new(upstream.channel.clone());
    // One client span per attempt, so retries show as such in the trace.
    let span = agora_kit::trace::rpc_span(call.path.path(), false);
    span.record("agora.upstream", &*upstream.name);
    span.record("agora.attempt", attempt_no);
    // The deadline travels as grpc-timeout and also holds here, should the
    // service not answer at all (a black-holed connection).
    let attempt = async {
        client.ready().await.map_err(|e| {
            tracing::warn!(upstream = %upstream.name, error = %e, "upstream not ready");
            Status::unavailable("the service is unavailable; try again later")
        })?;
        client.unary(req, call.path.clone(), RawCodec).await
    };
    let result = match tokio::time::timeout(remaining, attempt)
        .instrument(span.clone())
        .await
    {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        // tonic servers report an expired grpc-timeout as CANCELLED; past
        // the deadline, clients should see DEADLINE_EXCEEDED (504).
        Ok(Err(s)) if s.code() == Code::Cancelled && Instant::now() >= deadline => Err(
            Status::deadline_exceeded("the service did not answer in time"),
        ),
        Ok(Err(s)) => Err(s),
        Err(_) => Err(Status::deadline_exceeded(
            "the service did not answer in time",
        )),
    };
    match &result {
        Ok(_) => agora_kit::trace::record_code(&span, 0, None, false),
        Err(s) => agora_kit::trace::record_code(&span, s.code() as i32, Some(s.message()), false),
    }
    result
}

/// Whether a status carries a `google.rpc.RetryInfo` detail.
fn carries_retry_info(status: &Status) -> bool {
    const TYPE: &[u8] = b"type.googleapis.com/google.rpc.RetryInfo";
    status.details().windows(TYPE.len()).any(|w| w == TYPE)
}
