//! The deadline of the gRPC call being served, for the work it causes.
//!
//! [`DeadlineLayer`] reads the caller's `grpc-timeout` and keeps the
//! deadline in a task-local while the handler runs, so that:
//! - outgoing gRPC calls send on what is left of it ([`remaining`]), and
//! - SQL statements get it as their `statement_timeout` (see
//!   [`crate::db`]), so PostgreSQL stops a query whose caller has given up
//!   instead of finishing work nobody will read.
//!
//! tonic itself drops the handler when the deadline passes.

use std::{
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
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
    S: Service<http::Request<B>>,
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
        match deadline {
            Some(deadline) => Box::pin(DEADLINE.scope(deadline, fut)),
            None => Box::pin(fut),
        }
    }
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
}
