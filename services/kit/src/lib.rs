//! Shared building blocks for every Agora component.
//!
//! # Layout
//!
//! - [`config`]: layered configuration (defaults < `agora.toml` < environment)
//!   and errors that name the offending setting.
//! - [`telemetry`]: structured JSON logs with trace ids.
//! - [`trace`]: OpenTelemetry spans exported by OTLP, W3C trace context.
//! - [`metrics`]: the process-wide Prometheus registry and the gRPC server
//!   metrics layer.
//! - [`admin`]: the admin HTTP server (`/metrics`, `/livez`, `/readyz`).
//! - [`balance`]: a gRPC channel balanced over an upstream's endpoints,
//!   with outlier ejection and DNS re-resolution.
//! - [`failure`]: whether a failed call reached the service, for retries.
//! - [`h2client`]: the HTTP/2 client to one endpoint of an upstream.
//! - [`local`]: calls between components of one process, without sockets.
//! - [`breaker`]: a circuit breaker per upstream.
//! - [`grpc`]: serving a tonic service with health, reflection and metrics.
//! - [`shutdown`]: the drain/grace-period shutdown sequence.
//! - [`access`]: the per-method access policy read from the contracts.
//! - [`auth`]: access-token claims and the metadata that carries a caller.
//! - [`jwks`]: authentication against the users service (JWKS, API keys)
//!   for components that do not own credentials.
//! - [`outbox`]: appending events in the transaction of their change, and
//!   the relay that publishes them.
//! - [`events`]: the event queue (SQS) and the envelope's JSON form.
//! - [`error`]: the failures every service shares, and their one mapping
//!   to a gRPC status.
//! - [`proto`]: protobuf field conversions (ids, timestamps).
//! - [`deadline`]: the served call's deadline, for the work it causes.
//! - [`db`]: PostgreSQL pools, one schema per service.
//! - [`mongo`]: MongoDB connections from `MONGODB_URI`.
//! - [`redis`]: a Redis client that skips Redis at once while it is down.

pub mod access;
pub mod admin;
pub mod auth;
pub mod balance;
pub mod breaker;
pub mod config;
pub mod db;
pub mod deadline;
pub mod error;
pub mod events;
pub mod failure;
pub mod grpc;
pub mod h2client;
pub mod jwks;
pub mod local;
pub mod metrics;
pub mod mongo;
pub mod outbox;
pub mod proto;
pub mod redis;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

/// The `google.rpc.ErrorInfo` domain of errors Agora's services report.
pub const ERROR_DOMAIN: &str = "agora";

/// The `google.rpc.ErrorInfo` reason of an idempotency key used again with
/// a different request. The edge answers it with 422, as it answers such a
/// key itself, so a client sees the same whichever layer caught it.
pub const REASON_IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";

/// A request with the same idempotency key is still running: retry when it
/// has finished.
pub const REASON_IDEMPOTENCY_KEY_IN_PROGRESS: &str = "IDEMPOTENCY_KEY_IN_PROGRESS";

/// The caller spent its rate limit: retry after `Retry-After`.
pub const REASON_RATE_LIMITED: &str = "RATE_LIMITED";

/// The edge or a service is at capacity and refused at once rather than
/// queue: retry shortly, with backoff.
pub const REASON_OVERLOADED: &str = "OVERLOADED";

/// The edge stopped calling a failing service for a while (its circuit
/// breaker is open): retry after `Retry-After`.
pub const REASON_CIRCUIT_OPEN: &str = "CIRCUIT_OPEN";
