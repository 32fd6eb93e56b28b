//! Shared building blocks for every Agora component.
//!
//! # Layout
//!
//! - [`config`]: layered configuration (defaults < `agora.toml` < environment)
//!   and errors that name the offending setting.
//! - [`telemetry`]: structured JSON logs.
//! - [`metrics`]: the process-wide Prometheus registry and the gRPC server
//!   metrics layer.
//! - [`admin`]: the admin HTTP server (`/metrics`, `/livez`, `/readyz`).
//! - [`grpc`]: serving a tonic service with health, reflection and metrics.
//! - [`shutdown`]: the drain/grace-period shutdown sequence.
//! - [`access`]: the per-method access policy read from the contracts.
//! - [`auth`]: access-token claims and the metadata that carries a caller.
//! - [`jwks`]: authentication against the users service (JWKS, API keys)
//!   for components that do not own credentials.
//! - [`outbox`]: appending events in the transaction of their change.
//! - [`db`]: PostgreSQL pools, one schema per service.

pub mod access;
pub mod admin;
pub mod auth;
pub mod config;
pub mod db;
pub mod grpc;
pub mod jwks;
pub mod metrics;
pub mod outbox;
pub mod shutdown;
pub mod telemetry;
