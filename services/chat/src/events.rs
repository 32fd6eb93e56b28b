//! Chat's events: each new message carries its `chat.message_sent` event
//! in its own document (`event_id`), so storing the message stores the
//! event with it, as an outbox row would. The relay (the kit's, over this
//! store) publishes pending events and then removes the fields.
//!
//! Replicas share the work with leases: a replica claims every pending
//! event whose lease has run out for [`LEASE_MS`], sends them in batches,
//! and clears what SQS accepted; what it could not send goes to whichever
//! replica claims it after the lease.

use std::time::Duration;

use chrono::DateTime;
use futures::{TryStreamExt as _, future::BoxFuture};
use mongodb::{
    Collection,
    bson::{Document, doc},
};
use uuid::Uuid;

use agora_kit::{
    events::{Payload, payload_json},
    outbox::{BATCH, Pending, RelayError, Sender, Store},
};
use agora_proto::events::v1::MessageSent;

use crate::store::{self, MessageDoc};

/// The `source` of chat's events.
pub const SOURCE: &str = "chat";
/// How long a claim on pending events lasts, in milliseconds.
pub const LEASE_MS: i64 = 30_000;

/// Pending message events in MongoDB.
pub struct MessageEvents {
    messages: Collection<MessageDoc>,
    /// This replica's name in `event_owner`.
    owner: String,
}

impl MessageEvents {
    pub fn new(messages: Collection<MessageDoc>) -> Self {
        Self {
            messages,
            owner: Uuid::now_v7().to_string(),
        }
    }
}

fn store_error(e: mongodb::error::Error) -> RelayError {
    RelayError::Store(format!("MongoDB: {e}"))
}

impl Store for MessageEvents {
    fn publish_batch<'a>(&'a self, sender: &'a Sender) -> BoxFuture<'a, Result<usize, RelayError>> {
        Box::pin(async move {
            let now = store::now();
            self.messages
                .update_many(
                    doc! {"event_id": {"$exists": true}, "$or": [
                        {"event_lease": {"$exists": false}},
                        {"event_lease": {"$lt": now}},
                    ]},
                    doc! {"$set": {"event_lease": now + LEASE_MS, "event_owner": &self.owner}},
                )
                .await
                .map_err(store_error)?;
            let docs: Vec<MessageDoc> = self
                .messages
                .find(doc! {"event_id": {"$exists": true}, "event_owner": &self.owner, "event_lease": {"$gt": now}})
                .sort(doc! {"_id": 1})
                .limit(BATCH as i64)
                .await
                .map_err(store_error)?
                .try_collect()
                .await
                .map_err(store_error)?;
            if docs.is_empty() {
                return Ok(0);
            }
            let events: Vec<(Uuid, String, serde_json::Value)> = docs
                .iter()
                .map(|d| {
                    let (field, payload) = payload_json(&Payload::MessageSent(MessageSent {
                        message_id: d.id.clone(),
                        room_id: d.room_id.clone(),
                        sender_id: d.sender_id.clone(),
                        mentions: d.mentions.len() as i32,
                        attachments: d.attachments.len() as i32,
                    }));
                    let id = d
                        .event_id
                        .as_deref()
                        .and_then(|id| Uuid::parse_str(id).ok())
                        .unwrap_or_else(Uuid::now_v7);
                    (id, format!("{SOURCE}.{field}"), payload)
                })
                .collect();
            let pending: Vec<Pending<'_>> = docs
                .iter()
                .zip(&events)
                .map(|(d, (id, event_type, payload))| Pending {
                    id: *id,
                    event_type,
                    aggregate_id: &d.room_id,
                    payload,
                    traceparent: d.event_traceparent.as_deref(),
                    occurred_at: DateTime::from_timestamp_millis(d.created_at).unwrap_or_default(),
                })
                .collect();
            let mut accepted = Vec::with_capacity(docs.len());
            let sent = sender.send(&pending, &mut accepted).await;
            let ids: Vec<&str> = accepted.iter().map(|i| docs[*i].id.as_str()).collect();
            if !ids.is_empty() {
                let done: Document = doc! {"$unset": {"event_id": "", "event_traceparent": "", "event_lease": "", "event_owner": ""}};
                self.messages
                    .update_many(doc! {"_id": {"$in": ids}}, done)
                    .await
                    .map_err(store_error)?;
            }
            sent.map(|()| docs.len())
        })
    }

    fn lag_seconds(&self) -> BoxFuture<'_, Result<f64, RelayError>> {
        Box::pin(async move {
            let oldest = self
                .messages
                .find_one(doc! {"event_id": {"$exists": true}})
                .sort(doc! {"_id": 1})
                .await
                .map_err(store_error)?;
            Ok(oldest.map_or(0.0, |d| {
                (store::now() - d.created_at).max(0) as f64 / 1000.0
            }))
        })
    }

    fn prune(&self, _keep: Duration) -> BoxFuture<'_, Result<u64, RelayError>> {
        // A published event leaves nothing behind to prune.
        Box::pin(async { Ok(0) })
    }
}
