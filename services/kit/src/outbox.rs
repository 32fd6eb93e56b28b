//! The transactional outbox: a service appends an event in the same
//! transaction as the change it describes, so no committed change loses its
//! event; a relay publishes the rows later. Each service has its own
//! `outbox` table (in its schema) with the columns written here. Each row
//! keeps the `traceparent` of the call that wrote it, and each append counts
//! in `business_events_total{event_type,service}`.

use sqlx::PgConnection;
use uuid::Uuid;

/// Appends an event inside the caller's transaction; returns its id.
pub async fn append(
    conn: &mut PgConnection,
    event_type: &str,
    aggregate_id: impl std::fmt::Display,
    payload: serde_json::Value,
) -> sqlx::Result<Uuid> {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO outbox (id, event_type, aggregate_id, payload, traceparent) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(event_type)
    .bind(aggregate_id.to_string())
    .bind(payload)
    .bind(crate::trace::current_traceparent())
    .execute(conn)
    .await?;
    metrics::counter!(
        "business_events_total",
        "event_type" => event_type.to_owned(),
        "service" => crate::trace::current_component().trim_start_matches("agora-"),
    )
    .increment(1);
    Ok(id)
}
