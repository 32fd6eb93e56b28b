//! The transactional outbox: a service appends an event in the same
//! transaction as the change it describes, so no committed change loses its
//! event; its [`Relay`] publishes the rows to the event queue later.
//!
//! Each service has its own `outbox` table (in its schema, made by its
//! migrations). A row keeps the event's type, the proto3 JSON of its
//! typed payload (`agora.events.v1.Envelope`'s oneof), and the
//! `traceparent` of the call that wrote it. Each append counts in
//! `business_events_total{event_type,service}`.

use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    events::{EventsConfig, Payload, Queue, QueueError, SCHEMA_VERSION, payload_json},
    shutdown::Shutdown,
};

/// The outbox of one publishing service (`source`: "users", "catalog").
#[derive(Debug, Clone, Copy)]
pub struct Outbox {
    pub source: &'static str,
}

impl Outbox {
    /// Appends an event inside the caller's transaction; returns its id.
    /// The event's type is `<source>.<payload field>`.
    pub async fn append(
        self,
        conn: &mut PgConnection,
        aggregate_id: impl std::fmt::Display,
        payload: Payload,
    ) -> sqlx::Result<Uuid> {
        append(conn, self.source, aggregate_id, payload).await
    }
}

async fn append(
    conn: &mut PgConnection,
    source: &str,
    aggregate_id: impl std::fmt::Display,
    payload: Payload,
) -> sqlx::Result<Uuid> {
    let id = Uuid::now_v7();
    let (field, json) = payload_json(&payload);
    let event_type = format!("{source}.{field}");
    sqlx::query(
        "INSERT INTO outbox (id, event_type, aggregate_id, payload, traceparent) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(&event_type)
    .bind(aggregate_id.to_string())
    .bind(json)
    .bind(crate::trace::current_traceparent())
    .execute(conn)
    .await?;
    metrics::counter!(
        "business_events_total",
        "event_type" => event_type,
        "service" => source.to_owned(),
    )
    .increment(1);
    Ok(id)
}

/// The most messages one SendMessageBatch call carries.
const BATCH: i64 = 10;
/// How often sent rows older than the retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How often the lag gauge is refreshed.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// Publishes a service's outbox to the event queue, oldest rows first.
///
/// Several replicas relay the same table side by side: each claims a batch
/// with `FOR UPDATE SKIP LOCKED`, so no row is published by two at once. A
/// row is marked sent only after SQS accepted it; while SQS is unreachable
/// rows wait, and the relay retries with exponential backoff (100 ms to
/// 30 s). A crash between SQS accepting a batch and the mark leaves the
/// rows unsent, so they go again: consumers deduplicate by event id.
///
/// Metrics: `outbox_lag_seconds{service}` (age of the oldest unsent row),
/// `outbox_published_total{service}`, `outbox_publish_failures_total{service}`.
pub struct Relay {
    pool: PgPool,
    queue: Queue,
    service: &'static str,
    poll: Duration,
    retention: Duration,
}

impl Relay {
    /// The relay of `service`'s outbox, or `None` when the bus is off.
    pub async fn for_service(
        pool: PgPool,
        service: &'static str,
        config: &EventsConfig,
    ) -> Option<Self> {
        if !config.enabled() {
            tracing::warn!(
                "AGORA_EVENTS_QUEUE is empty: events stay in the outbox and are not published"
            );
            return None;
        }
        Some(Self::new(pool, Queue::new(config).await, service, config))
    }

    /// Runs in the background until `shutdown` stops the process.
    pub fn spawn(this: Option<Self>, shutdown: Shutdown) -> Option<tokio::task::JoinHandle<()>> {
        this.map(|relay| tokio::spawn(relay.run(shutdown)))
    }

    pub fn new(pool: PgPool, queue: Queue, service: &'static str, config: &EventsConfig) -> Self {
        Self {
            pool,
            queue,
            service,
            poll: config.poll_interval,
            retention: config.outbox_retention,
        }
    }

    /// Runs until `shutdown` stops the process (it keeps publishing while
    /// the process drains, so the events of the last calls go out).
    pub async fn run(self, shutdown: Shutdown) {
        let mut backoff = Duration::ZERO;
        let mut last_prune: Option<Instant> = None;
        let mut last_lag: Option<Instant> = None;
        loop {
            let wait = match self.publish_batch().await {
                Ok(n) => {
                    backoff = Duration::ZERO;
                    if n == BATCH as usize {
                        Duration::ZERO
                    } else {
                        self.poll
                    }
                }
                Err(e) => {
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
                    metrics::counter!("outbox_publish_failures_total", "service" => self.service)
                        .increment(1);
                    tracing::warn!(
                        error = %e,
                        retry_in_ms = backoff.as_millis() as u64,
                        "cannot publish outbox events; they wait in the outbox"
                    );
                    backoff.mul_f64(0.75 + fastrand::f64() / 2.0)
                }
            };
            if last_lag.is_none_or(|t| t.elapsed() >= LAG_EVERY) {
                last_lag = Some(Instant::now());
                self.record_lag().await;
            }
            if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(Instant::now());
                self.prune().await;
            }
            if !wait.is_zero() {
                tokio::select! {
                    () = shutdown.stopping() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            } else if futures::FutureExt::now_or_never(shutdown.stopping()).is_some() {
                return;
            }
        }
    }

    /// Claims up to one batch of unsent rows, publishes them, and marks
    /// those SQS accepted; returns how many rows it claimed.
    pub async fn publish_batch(&self) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT id, event_type, aggregate_id, payload, traceparent, created_at FROM outbox
             WHERE published_at IS NULL ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let entries = rows
            .iter()
            .enumerate()
            .map(|(i, row)| row.entry(i, self.service))
            .collect::<Result<Vec<_>, _>>()?;
        let url = self.queue.url().await?;
        let sent = self
            .queue
            .client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(QueueError::from_sdk);
        let out = match sent {
            Ok(out) => out,
            Err(QueueError::Missing) => {
                // Deleted under us: the next attempt recreates it.
                self.queue.forget().await;
                return Err(QueueError::Missing.into());
            }
            Err(e) => return Err(e.into()),
        };
        let accepted: Vec<Uuid> = out
            .successful()
            .iter()
            .filter_map(|e| e.id().parse::<usize>().ok())
            .filter_map(|i| rows.get(i).map(|r| r.id))
            .collect();
        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(&accepted)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        metrics::counter!("outbox_published_total", "service" => self.service)
            .increment(accepted.len() as u64);
        if let Some(failed) = out.failed().first() {
            return Err(RelayError::Refused(format!(
                "{} of {} events refused: {} {}",
                out.failed().len(),
                rows.len(),
                failed.code(),
                failed.message().unwrap_or_default()
            )));
        }
        Ok(rows.len())
    }

    async fn record_lag(&self) {
        let oldest: Result<Option<f64>, _> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM outbox WHERE published_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await;
        match oldest {
            Ok(lag) => metrics::gauge!("outbox_lag_seconds", "service" => self.service)
                .set(lag.unwrap_or(0.0).max(0.0)),
            Err(e) => tracing::debug!(error = %e, "cannot measure the outbox lag"),
        }
    }

    async fn prune(&self) {
        let pruned = sqlx::query(
            "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)",
        )
        .bind(self.retention.as_secs_f64())
        .execute(&self.pool)
        .await;
        match pruned {
            Ok(done) if done.rows_affected() > 0 => {
                tracing::info!(rows = done.rows_affected(), "pruned sent outbox rows")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot prune the outbox"),
        }
    }
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: Uuid,
    event_type: String,
    aggregate_id: String,
    payload: serde_json::Value,
    traceparent: Option<String>,
    created_at: DateTime<Utc>,
}

impl OutboxRow {
    /// The row as one SQS message: the envelope's proto3 JSON as the body,
    /// and the fields consumers route and trace by as attributes.
    fn entry(
        &self,
        index: usize,
        source: &str,
    ) -> Result<SendMessageBatchRequestEntry, RelayError> {
        let field = self
            .event_type
            .split_once('.')
            .map_or(self.event_type.as_str(), |(_, f)| f);
        let mut body = serde_json::Map::with_capacity(8);
        body.insert("id".into(), self.id.to_string().into());
        body.insert("type".into(), self.event_type.clone().into());
        body.insert("source".into(), source.into());
        body.insert(
            "occurredAt".into(),
            self.created_at
                .to_rfc3339_opts(SecondsFormat::Micros, true)
                .into(),
        );
        if let Some(tp) = &self.traceparent {
            body.insert("traceparent".into(), tp.clone().into());
        }
        body.insert("schemaVersion".into(), SCHEMA_VERSION.into());
        body.insert("aggregateId".into(), self.aggregate_id.clone().into());
        body.insert(field.to_owned(), self.payload.clone());
        let attr = |v: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
        };
        let id = self.id.to_string();
        let version = SCHEMA_VERSION.to_string();
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(index.to_string())
            .message_body(serde_json::Value::Object(body).to_string())
            .message_attributes("event_id", attr(&id)?)
            .message_attributes("event_type", attr(&self.event_type)?)
            .message_attributes("source", attr(source)?)
            .message_attributes("schema_version", attr(&version)?);
        if let Some(tp) = &self.traceparent {
            entry = entry.message_attributes("traceparent", attr(tp)?);
        }
        Ok(entry.build()?)
    }
}

/// Why a batch did not go out.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("{0}")]
    Refused(String),
    #[error("cannot build the message: {0}")]
    Build(#[from] aws_sdk_sqs::error::BuildError),
}
