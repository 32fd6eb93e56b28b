//! Where analytics keeps things: raw events in MongoDB (collection
//! `events`, expired by a TTL index), rollups in PostgreSQL (schema
//! `analytics`).
//!
//! Counting is idempotent. The live path counts an event inside one
//! transaction that first records its id in `processed_events`; a second
//! delivery finds the id and changes nothing. Rebuilding a day (the daily
//! job, backfills) replaces that day's rollups with the sum of its raw
//! events under an exclusive per-day advisory lock, which live counts of
//! the same day take shared; ids it counted are recorded too, so an event
//! stored raw but not yet counted live is counted exactly once either way.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt as _;
use mongodb::{
    Collection, IndexModel,
    bson::{self, doc},
    options::IndexOptions,
};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use agora_kit::events::{Envelope, Payload, decode_envelope, encode_envelope};

use crate::rollup::{self, Behavior, Effects, Increment};

/// The advisory lock space of per-day rollup locks ("AN").
const DAY_LOCK_SPACE: i32 = 0x414e;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// One raw event as kept in MongoDB.
#[derive(Debug, Serialize, Deserialize)]
struct RawEvent {
    #[serde(rename = "_id")]
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    source: String,
    /// "YYYY-MM-DD" (UTC), what rebuilds select by.
    day: String,
    /// What the retention TTL index expires by.
    #[serde(rename = "occurredAt")]
    occurred_at: bson::DateTime,
    /// The envelope's proto3 JSON, without secrets.
    envelope: String,
}

#[derive(Clone)]
pub struct Store {
    pub pool: PgPool,
    events: Collection<RawEvent>,
}

impl Store {
    /// Connects MongoDB (the database named in `uri`) and makes the
    /// retention index; `pool` is the `analytics` schema.
    pub async fn connect(pool: PgPool, uri: &str, retention: Duration) -> anyhow::Result<Self> {
        let events = agora_kit::mongo::database(uri, "agora-analytics")
            .await?
            .collection::<RawEvent>("events");
        let ttl = IndexModel::builder()
            .keys(doc! {"occurredAt": 1})
            .options(
                IndexOptions::builder()
                    .expire_after(retention)
                    .name("retention".to_owned())
                    .build(),
            )
            .build();
        let day = IndexModel::builder().keys(doc! {"day": 1}).build();
        events
            .create_indexes([ttl, day])
            .await
            .map_err(|e| anyhow::anyhow!("MONGODB_URI: cannot reach MongoDB at start: {e}"))?;
        Ok(Self { pool, events })
    }

    /// Stores `envelope` raw (once) and counts it (once); returns whether
    /// it was new to the rollups.
    pub async fn record(&self, mut envelope: Envelope) -> Result<bool, RecordError> {
        let fx = rollup::effects(&envelope).map_err(RecordError::Invalid)?;
        strip_secrets(&mut envelope);
        let raw = RawEvent {
            id: envelope.id.clone(),
            event_type: envelope.r#type.clone(),
            source: envelope.source.clone(),
            day: fx.day().to_string(),
            occurred_at: bson::DateTime::from_millis(fx.occurred_at.timestamp_millis()),
            envelope: encode_envelope(&envelope),
        };
        match self.events.insert_one(&raw).await {
            Ok(_) => {}
            Err(e) if is_duplicate(&e) => {}
            Err(e) => return Err(RecordError::Mongo(e.to_string())),
        }
        Ok(self.count(&fx).await?)
    }

    /// Counts one event's effects unless its id was counted before.
    async fn count(&self, fx: &Effects) -> Result<bool, sqlx::Error> {
        let day = fx.day();
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1, $2)")
            .bind(DAY_LOCK_SPACE)
            .bind(day_number(day))
            .execute(&mut *tx)
            .await?;
        let fresh = sqlx::query(
            "INSERT INTO processed_events (event_id, event_type, occurred_on) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(fx.id)
        .bind(&fx.event_type)
        .bind(day)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            tx.commit().await?;
            return Ok(false);
        }
        let mut increments = fx.increments.clone();
        if let Some((user, behavior)) = &fx.behavior {
            let first_today: bool = sqlx::query_scalar(
                "INSERT INTO user_behavior (user_id, date, page_views, product_views, searches, reservations, purchases, messages)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (user_id, date) DO UPDATE SET
                   page_views = user_behavior.page_views + EXCLUDED.page_views,
                   product_views = user_behavior.product_views + EXCLUDED.product_views,
                   searches = user_behavior.searches + EXCLUDED.searches,
                   reservations = user_behavior.reservations + EXCLUDED.reservations,
                   purchases = user_behavior.purchases + EXCLUDED.purchases,
                   messages = user_behavior.messages + EXCLUDED.messages
                 RETURNING (xmax = 0)",
            )
            .bind(user)
            .bind(day)
            .bind(behavior.page_views)
            .bind(behavior.product_views)
            .bind(behavior.searches)
            .bind(behavior.reservations)
            .bind(behavior.purchases)
            .bind(behavior.messages)
            .fetch_one(&mut *tx)
            .await?;
            if first_today {
                increments.push(active_user());
            }
        }
        if let Some(user) = fx.signup {
            sqlx::query("INSERT INTO user_signups (user_id, signed_up_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(user)
                .bind(fx.occurred_at)
                .execute(&mut *tx)
                .await?;
        }
        add_metrics(&mut tx, day, rollup::merge(increments), false).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Replaces `day`'s rollups with the sum of its raw events; returns how
    /// many events it counted.
    pub async fn rebuild_day(&self, day: NaiveDate) -> Result<usize, RecordError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(DAY_LOCK_SPACE)
            .bind(day_number(day))
            .execute(&mut *tx)
            .await?;
        // Read after the lock: what live counting committed before is in
        // MongoDB, what it counts after waits and then finds its id.
        let raw: Vec<RawEvent> = self
            .events
            .find(doc! {"day": day.to_string()})
            .await
            .map_err(|e| RecordError::Mongo(e.to_string()))?
            .try_collect()
            .await
            .map_err(|e| RecordError::Mongo(e.to_string()))?;
        let mut increments = Vec::new();
        let mut behavior: HashMap<Uuid, Behavior> = HashMap::new();
        let mut signups = Vec::new();
        let mut ids = Vec::with_capacity(raw.len());
        let mut types = Vec::with_capacity(raw.len());
        for r in &raw {
            let fx = match decode_envelope(&r.envelope).and_then(|e| rollup::effects(&e)) {
                Ok(fx) => fx,
                Err(reason) => {
                    tracing::warn!(event_id = %r.id, reason, "a stored event cannot be counted; skipped");
                    continue;
                }
            };
            increments.extend(fx.increments);
            if let Some((user, b)) = fx.behavior {
                behavior.entry(user).or_default().add(&b);
            }
            if let Some(user) = fx.signup {
                signups.push((user, fx.occurred_at));
            }
            ids.push(fx.id);
            types.push(fx.event_type);
        }
        increments.extend(behavior.keys().map(|_| active_user()));
        sqlx::query("DELETE FROM daily_metrics WHERE date = $1")
            .bind(day)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM user_behavior WHERE date = $1")
            .bind(day)
            .execute(&mut *tx)
            .await?;
        add_metrics(&mut tx, day, rollup::merge(increments), true).await?;
        let (users, days): (Vec<Uuid>, Vec<[i64; 6]>) = behavior
            .iter()
            .map(|(u, b)| {
                (
                    *u,
                    [
                        b.page_views,
                        b.product_views,
                        b.searches,
                        b.reservations,
                        b.purchases,
                        b.messages,
                    ],
                )
            })
            .unzip();
        let column = |i: usize| days.iter().map(|d| d[i]).collect::<Vec<i64>>();
        sqlx::query(
            "INSERT INTO user_behavior (user_id, date, page_views, product_views, searches, reservations, purchases, messages)
             SELECT u, $2, a, b, c, d, e, f FROM unnest($1::uuid[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::int8[]) AS t(u, a, b, c, d, e, f)",
        )
        .bind(&users)
        .bind(day)
        .bind(column(0))
        .bind(column(1))
        .bind(column(2))
        .bind(column(3))
        .bind(column(4))
        .bind(column(5))
        .execute(&mut *tx)
        .await?;
        let (signup_users, signup_times): (Vec<Uuid>, Vec<DateTime<Utc>>) =
            signups.into_iter().unzip();
        sqlx::query(
            "INSERT INTO user_signups (user_id, signed_up_at) SELECT * FROM unnest($1::uuid[], $2::timestamptz[]) ON CONFLICT DO NOTHING",
        )
        .bind(&signup_users)
        .bind(&signup_times)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO processed_events (event_id, event_type, occurred_on) SELECT i, t, $3 FROM unnest($1::uuid[], $2::text[]) AS x(i, t) ON CONFLICT DO NOTHING",
        )
        .bind(&ids)
        .bind(&types)
        .bind(day)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ids.len())
    }

    /// Deletes raw events and processed ids older than `keep` (the TTL index
    /// does the former too; this is the backstop); returns how many of each.
    pub async fn prune(&self, keep: Duration) -> Result<(u64, u64), RecordError> {
        let cutoff = Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        let raw = self
            .events
            .delete_many(doc! {"occurredAt": {"$lt": bson::DateTime::from_millis(cutoff.timestamp_millis())}})
            .await
            .map_err(|e| RecordError::Mongo(e.to_string()))?
            .deleted_count;
        let ids = sqlx::query("DELETE FROM processed_events WHERE occurred_on < $1")
            .bind(cutoff.date_naive())
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok((raw, ids))
    }
}

fn active_user() -> Increment {
    Increment {
        service: "analytics",
        metric: "active_users",
        dimensions: Default::default(),
        value: 1.0,
    }
}

/// Adds (or, when `replace`, sets) merged increments of `day`.
async fn add_metrics(
    tx: &mut sqlx::PgConnection,
    day: NaiveDate,
    increments: Vec<Increment>,
    replace: bool,
) -> Result<(), sqlx::Error> {
    if increments.is_empty() {
        return Ok(());
    }
    let services: Vec<&str> = increments.iter().map(|i| i.service).collect();
    let metrics: Vec<&str> = increments.iter().map(|i| i.metric).collect();
    let values: Vec<f64> = increments.iter().map(|i| i.value).collect();
    let dims: Vec<String> = increments.iter().map(Increment::dimensions_json).collect();
    let sql = if replace {
        "INSERT INTO daily_metrics (date, service_name, metric_name, metric_value, dimensions)
         SELECT $1, s, m, v, d::jsonb FROM unnest($2::text[], $3::text[], $4::float8[], $5::text[]) AS t(s, m, v, d)
         ON CONFLICT (date, service_name, metric_name, dimensions) DO UPDATE SET
           metric_value = EXCLUDED.metric_value, updated_at = now()"
    } else {
        "INSERT INTO daily_metrics (date, service_name, metric_name, metric_value, dimensions)
         SELECT $1, s, m, v, d::jsonb FROM unnest($2::text[], $3::text[], $4::float8[], $5::text[]) AS t(s, m, v, d)
         ON CONFLICT (date, service_name, metric_name, dimensions) DO UPDATE SET
           metric_value = daily_metrics.metric_value + EXCLUDED.metric_value, updated_at = now()"
    };
    sqlx::query(sql)
        .bind(day)
        .bind(&services)
        .bind(&metrics)
        .bind(&values)
        .bind(&dims)
        .execute(tx)
        .await?;
    Ok(())
}

/// Days since 1970-01-01: the per-day lock key.
fn day_number(day: NaiveDate) -> i32 {
    (day - NaiveDate::default()).num_days() as i32
}

/// Secrets that ride in some events (the one-time tokens a mailer sends)
/// are never kept by analytics.
fn strip_secrets(envelope: &mut Envelope) {
    if let Some(Payload::EmailVerificationRequested(t) | Payload::PasswordResetRequested(t)) =
        &mut envelope.payload
    {
        t.token.clear();
    }
}

fn is_duplicate(e: &mongodb::error::Error) -> bool {
    matches!(
        e.kind.as_ref(),
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) if w.code == 11000
    )
}

/// Why an event was not counted.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The event can never be counted (a poison message).
    #[error("unusable event: {0}")]
    Invalid(String),
    #[error("MongoDB: {0}")]
    Mongo(String),
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
}
