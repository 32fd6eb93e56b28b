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
use futures::future::BoxFuture;
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
pub const BATCH: usize = 10;
/// How often sent rows older than the retention are pruned, at most
/// (sooner when the retention is shorter).
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How often the lag gauge is refreshed.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// Where a service's unsent events wait: a PostgreSQL `outbox` table
/// ([`PgOutbox`]), or documents that carry their own pending event (chat's
/// messages in MongoDB).
pub trait Store: Send + Sync + 'static {
    /// Claims up to [`BATCH`] unsent events (so that no other replica sends
    /// them meanwhile), sends them with [`send`], and marks those SQS
    /// accepted as sent; returns how many it claimed.
    fn publish_batch<'a>(&'a self, relay: &'a Sender) -> BoxFuture<'a, Result<usize, RelayError>>;
    /// Age in seconds of the oldest unsent event (0 when none).
    fn lag_seconds(&self) -> BoxFuture<'_, Result<f64, RelayError>>;
    /// Forgets sent events older than `keep`.
    fn prune(&self, keep: Duration) -> BoxFuture<'_, Result<u64, RelayError>>;
}

/// One event to send.
pub struct Pending<'a> {
    pub id: Uuid,
    /// `<source>.<payload field>`.
    pub event_type: &'a str,
    pub aggregate_id: &'a str,
    /// The payload's proto3 JSON.
    pub payload: &'a serde_json::Value,
    pub traceparent: Option<&'a str>,
    pub occurred_at: DateTime<Utc>,
}

/// What a relay's store sends through: the queue and the publishing
/// service's name.
pub struct Sender {
    queue: Queue,
    service: &'static str,
}

impl Sender {
    /// Sends up to [`BATCH`] events in one call; returns the indexes of
    /// `events` SQS accepted. Events it refused are an error after the
    /// accepted ones are returned through `accepted`.
    pub async fn send(
        &self,
        events: &[Pending<'_>],
        accepted: &mut Vec<usize>,
    ) -> Result<(), RelayError> {
        let entries = events
            .iter()
            .enumerate()
            .map(|(i, e)| entry(i, self.service, e))
            .collect::<Result<Vec<_>, _>>()?;
        let url = self.queue.url().await?;
        let out = match self
            .queue
            .client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(QueueError::from_sdk)
        {
            Ok(out) => out,
            Err(QueueError::Missing) => {
                // Deleted under us: the next attempt recreates it.
                self.queue.forget().await;
                return Err(QueueError::Missing.into());
            }
            Err(e) => return Err(e.into()),
        };
        accepted.extend(
            out.successful()
                .iter()
                .filter_map(|e| e.id().parse::<usize>().ok())
                .filter(|i| *i < events.len()),
        );
        metrics::counter!("outbox_published_total", "service" => self.service)
            .increment(accepted.len() as u64);
        match out.failed().first() {
            Some(failed) => Err(RelayError::Refused(format!(
                "{} of {} events refused: {} {}",
                out.failed().len(),
                events.len(),
                failed.code(),
                failed.message().unwrap_or_default()
            ))),
            None => Ok(()),
        }
    }
}

/// Publishes a service's unsent events to the event queue, oldest first.
///
/// Several replicas relay the same store side by side; each claims what it
/// sends, so no event is published by two at once. An event is marked sent
/// only after SQS accepted it; while SQS is unreachable events wait, and
/// the relay retries with exponential backoff (100 ms to 30 s). A crash
/// between SQS accepting a batch and the mark leaves the events unsent, so
/// they go again: consumers deduplicate by event id.
///
/// Metrics: `outbox_lag_seconds{service}` (age of the oldest unsent event),
/// `outbox_published_total{service}`, `outbox_publish_failures_total{service}`.
pub struct Relay {
    store: Box<dyn Store>,
    sender: Sender,
    poll: Duration,
    retention: Duration,
}

impl Relay {
    /// The relay of `service`'s events waiting in `store`, or `None` when
    /// the bus is off.
    pub async fn for_service(
        store: impl Store,
        service: &'static str,
        config: &EventsConfig,
    ) -> Option<Self> {
        if !config.enabled() {
            tracing::warn!(
                "AGORA_EVENTS_QUEUE is empty: events stay in the outbox and are not published"
            );
            return None;
        }
        Some(Self {
            store: Box::new(store),
            sender: Sender {
                queue: Queue::new(config).await,
                service,
            },
            poll: config.poll_interval,
            retention: config.outbox_retention,
        })
    }

    /// Runs in the background until `shutdown` stops the process.
    pub fn spawn(this: Option<Self>, shutdown: Shutdown) -> Option<tokio::task::JoinHandle<()>> {
        this.map(|relay| tokio::spawn(relay.run(shutdown)))
    }

    /// Runs until `shutdown` stops the process (it keeps publishing while
    /// the process drains, so the events of the last calls go out).
    pub async fn run(self, shutdown: Shutdown) {
        let service = self.sender.service;
        let mut backoff = Duration::ZERO;
        let mut last_prune: Option<Instant> = None;
        let mut last_lag: Option<Instant> = None;
        loop {
            let wait = match self.store.publish_batch(&self.sender).await {
                Ok(n) => {
                    backoff = Duration::ZERO;
                    if n == BATCH {
                        Duration::ZERO
                    } else {
                        self.poll
                    }
                }
                Err(e) => {
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
                    metrics::counter!("outbox_publish_failures_total", "service" => service)
                        .increment(1);
                    tracing::warn!(
                        error = %e,
                        retry_in_ms = backoff.as_millis() as u64,
                        "cannot publish events; they wait in the outbox"
                    );
                    backoff.mul_f64(0.75 + fastrand::f64() / 2.0)
                }
            };
            if last_lag.is_none_or(|t| t.elapsed() >= LAG_EVERY) {
                last_lag = Some(Instant::now());
                match self.store.lag_seconds().await {
                    Ok(lag) => metrics::gauge!("outbox_lag_seconds", "service" => service)
                        .set(lag.max(0.0)),
                    Err(e) => tracing::debug!(error = %e, "cannot measure the outbox lag"),
                }
            }
            let prune_every = PRUNE_EVERY.min(self.retention).max(Duration::from_secs(1));
            if last_prune.is_none_or(|t| t.elapsed() >= prune_every) {
                last_prune = Some(Instant::now());
                match self.store.prune(self.retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "pruned sent outbox events"),
                    Err(e) => tracing::warn!(error = %e, "cannot prune the outbox"),
                }
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
}

/// A service's `outbox` table in its PostgreSQL schema. A batch is claimed
/// with `FOR UPDATE SKIP LOCKED` and marked in the same transaction.
#[derive(Clone)]
pub struct PgOutbox(pub PgPool);

impl Store for PgOutbox {
    fn publish_batch<'a>(&'a self, sender: &'a Sender) -> BoxFuture<'a, Result<usize, RelayError>> {
        Box::pin(async move {
            let mut tx = self.0.begin().await?;
            let rows: Vec<OutboxRow> = sqlx::query_as(
                "SELECT id, event_type, aggregate_id, payload, traceparent, created_at FROM outbox
                 WHERE published_at IS NULL ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
            )
            .bind(BATCH as i64)
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                return Ok(0);
            }
            let events: Vec<Pending<'_>> = rows
                .iter()
                .map(|r| Pending {
                    id: r.id,
                    event_type: &r.event_type,
                    aggregate_id: &r.aggregate_id,
                    payload: &r.payload,
                    traceparent: r.traceparent.as_deref(),
                    occurred_at: r.created_at,
                })
                .collect();
            let mut accepted = Vec::with_capacity(rows.len());
            let sent = sender.send(&events, &mut accepted).await;
            let ids: Vec<Uuid> = accepted.iter().map(|i| rows[*i].id).collect();
            if !ids.is_empty() {
                sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            sent.map(|()| rows.len())
        })
    }

    fn lag_seconds(&self) -> BoxFuture<'_, Result<f64, RelayError>> {
        Box::pin(async move {
            let oldest: Option<f64> = sqlx::query_scalar(
                "SELECT EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM outbox WHERE published_at IS NULL",
            )
            .fetch_one(&self.0)
            .await?;
            Ok(oldest.unwrap_or(0.0))
        })
    }

    fn prune(&self, keep: Duration) -> BoxFuture<'_, Result<u64, RelayError>> {
        Box::pin(async move {
            Ok(sqlx::query(
                "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)",
            )
            .bind(keep.as_secs_f64())
            .execute(&self.0)
            .await?
            .rows_affected())
        })
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

/// An event as one SQS message: the envelope's proto3 JSON as the body,
/// and the fields consumers route and trace by as attributes.
fn entry(
    index: usize,
    source: &str,
    e: &Pending<'_>,
) -> Result<SendMessageBatchRequestEntry, RelayError> {
    let field = e
        .event_type
        .split_once('.')
        .map_or(e.event_type, |(_, f)| f);
    let mut body = serde_json::Map::with_capacity(8);
    body.insert("id".into(), e.id.to_string().into());
    body.insert("type".into(), e.event_type.into());
    body.insert("source".into(), source.into());
    body.insert(
        "occurredAt".into(),
        e.occurred_at
            .to_rfc3339_opts(SecondsFormat::Micros, true)
            .into(),
    );
    if let Some(tp) = e.traceparent {
        body.insert("traceparent".into(), tp.into());
    }
    body.insert("schemaVersion".into(), SCHEMA_VERSION.into());
    body.insert("aggregateId".into(), e.aggregate_id.into());
    body.insert(field.to_owned(), e.payload.clone());
    let attr = |v: &str| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
    };
    let id = e.id.to_string();
    let version = SCHEMA_VERSION.to_string();
    let mut entry = SendMessageBatchRequestEntry::builder()
        .id(index.to_string())
        .message_body(serde_json::Value::Object(body).to_string())
        .message_attributes("event_id", attr(&id)?)
        .message_attributes("event_type", attr(e.event_type)?)
        .message_attributes("source", attr(source)?)
        .message_attributes("schema_version", attr(&version)?);
    if let Some(tp) = e.traceparent {
        entry = entry.message_attributes("traceparent", attr(tp)?);
    }
    Ok(entry.build()?)
}

/// Why a batch did not go out.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Store(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("{0}")]
    Refused(String),
    #[error("cannot build the message: {0}")]
    Build(#[from] aws_sdk_sqs::error::BuildError),
}
