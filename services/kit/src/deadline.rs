//! The deadline of the gRPC call being served, for the work it causes.
//!
//! [`DeadlineLayer`] reads the caller's `grpc-timeout` and keeps the
//! deadline in a task-local while the handler runs, so that:
//! - outgoing gRPC calls send on what is left of it ([`remaining`]), and
//! - SQL statements get it as their `statement_timeout` (see
//!   [`crate::db`]), so PostgreSQL stops a query whose caller has given up
//!   instead of finishing work nobody will read.
//!
//! When the deadline passes, the handler is dropped and the call answers
//! DEADLINE_EXCEEDED; a call that fails after its deadline (a query that
//! PostgreSQL stopped for it, say) answers the same, so callers learn why.

use std::{
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use tonic::body::Body;
use tower::{Layer, Service};

tokio::task_local! {
    static DEADLINE: Instant;
}

/// What is left of the current call's deadline; `None` outside a call or
/// when the caller set none.
pub fn remaining() -> Option<Duration> {
    DEADLINE
        .try_with(|d| d.saturating_duration_since(Instant::now()))
        .ok()
}

/// Runs `fut` with `deadline` as the current call's deadline.
pub async fn scope<F: Future>(deadline: Instant, fut: F) -> F::Output {
    DEADLINE.scope(deadline, fut).await
}

/// Parses a `grpc-timeout` value: up to eight digits and a unit (`H`, `M`,
/// `S`, `m`, `u`, `n`), as the gRPC protocol writes it.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Makes each call's `grpc-timeout` the deadline of its handler's work.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = WithDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithDeadline { inner }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct WithDeadline<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for WithDeadline<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let deadline = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|t| Instant::now() + t);
        let fut = self.inner.call(req);
        let Some(deadline) = deadline else {
            return Box::pin(fut);
        };
        Box::pin(async move {
            let outcome =
                tokio::time::timeout_at(deadline.into(), DEADLINE.scope(deadline, fut)).await;
            match outcome {
                Err(_) => Ok(exceeded()),
                Ok(Ok(resp)) if failed(&resp) && Instant::now() >= deadline => Ok(exceeded()),
                Ok(other) => other,
            }
        })
    }
}

/// Whether a response is a gRPC error answered in its headers (how unary
/// handlers fail).
fn failed(resp: &http::Response<Body>) -> bool {
    resp.headers()
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() != b"0")
}

fn exceeded() -> http::Response<Body> {
    tonic::Status::deadline_exceeded("the call's deadline passed before it finished").into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_writes_them() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5"), None);
        assert_eq!(parse_grpc_timeout("-5m"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
    }

    #[tokio::test]
    async fn the_deadline_is_known_inside_the_scope_only() {
        assert_eq!(remaining(), None);
        let left = scope(Instant::now() + Duration::from_secs(5), async {
            remaining()
        })
        .await;
        assert!(left.is_some_and(|d| d > Duration::from_secs(4)));
    }

    fn call_with_timeout(timeout: &str) -> http::Request<()> {
        http::Request::builder()
            .header("grpc-timeout", timeout)
            .body(())
            .expect("request")
    }

    fn grpc_status(resp: &http::Response<Body>) -> &str {
        resp.headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
    }

    #[tokio::test]
    async fn a_handler_past_its_deadline_is_dropped_and_answers_deadline_exceeded() {
        let slow = tower::service_fn(|_req: http::Request<()>| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
        });
        let started = Instant::now();
        let resp = tower::ServiceExt::oneshot(DeadlineLayer.layer(slow), call_with_timeout("50m"))
            .await
            .expect("infallible");
        assert_eq!(grpc_status(&resp), "4");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_failure_after_the_deadline_is_reported_as_the_deadline() {
        // As when PostgreSQL cancels a statement at the deadline: the
        // handler fails on its own, just after the deadline passed.
        let failing = tower::service_fn(|_req: http::Request<()>| async {
            std::thread::sleep(Duration::from_millis(30));
            Ok::<_, std::convert::Infallible>(tonic::Status::internal("boom").into_http())
        });
        let resp =
            tower::ServiceExt::oneshot(DeadlineLayer.layer(failing), call_with_timeout("10m"))
                .await
                .expect("infallible");
        assert_eq!(grpc_status(&resp), "4");
        // Before its deadline, the handler's own answer stands.
        let early = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(tonic::Status::internal("boom").into_http())
        });
        let resp = tower::ServiceExt::oneshot(DeadlineLayer.layer(early), call_with_timeout("5S"))
            .await
            .expect("infallible");
        assert_eq!(grpc_status(&resp), "13");
    }
}
