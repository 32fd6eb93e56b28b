//! Rooms, members, messages and notifications in MongoDB.
//!
//! Collections (in the database named by `MONGODB_URI`):
//! - `rooms`: one document per room; a direct room's id is derived from
//!   its pair (a UUIDv5), so a pair has one room at most;
//! - `members`: one document per member (`<room>:<user>`), with role and
//!   read marker;
//! - `messages`: bodies sealed (ciphertext, nonce, key id), never plain;
//!   ids are UUIDv7 strings, so they sort in posting order; a unique index
//!   on (room, sender, client id) makes resends return the first message;
//! - `notifications`: per user, newest first;
//! - `attachments`: files reserved for upload, and the message each went
//!   out with;
//! - `settings`: the development encryption key when none is configured.
//!
//! Only single-document writes and simple queries are used, so the store
//! runs on MongoDB and on the local MongoDB-wire server alike. For the
//! same reason instants are integers (milliseconds since the epoch) and
//! flags are instants (0: not set): that server turns dates and booleans
//! written by `$set` into strings and numbers, and no index may name `_id`
//! beside other keys.

/// Milliseconds since the epoch.
pub type Millis = i64;

pub fn now() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};

use futures::TryStreamExt as _;
use mongodb::{
    Collection, IndexModel,
    bson::{Binary, doc, spec::BinarySubtype},
    error::{ErrorKind, WriteFailure},
    options::IndexOptions,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomDoc {
    #[serde(rename = "_id")]
    pub id: String,
    /// `direct` or `group`.
    pub kind: String,
    pub name: String,
    pub owner_id: String,
    pub created_at: Millis,
    /// When the newest message was posted (or the room created): the order
    /// of room lists.
    pub last_activity: Millis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub room_id: String,
    pub user_id: String,
    /// `member`, `admin` or `owner`.
    pub role: String,
    pub joined_at: Millis,
    /// The newest message read; empty when none.
    pub last_read: String,
    pub read_at: Millis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub room_id: String,
    pub sender_id: String,
    pub client_id: String,
    /// Key id, nonce and ciphertext of the body; empty once deleted.
    pub kid: String,
    pub nonce: Binary,
    pub ciphertext: Binary,
    pub mentions: Vec<String>,
    /// Files posted with it.
    #[serde(default)]
    pub attachments: Vec<AttachmentRef>,
    pub created_at: Millis,
    pub edited_at: Millis,
    /// Changed on every write: catch-up after a fan-out outage reads what
    /// changed since.
    pub updated_at: Millis,
    /// When it was deleted; 0 while it is not.
    pub deleted_at: Millis,
    /// The id of its `chat.message_sent` event while the event waits to be
    /// published: message and event are one document, written at once
    /// (see [`crate::events`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The `traceparent` of the call that posted it, for its event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_traceparent: Option<String>,
}

impl MessageDoc {
    pub fn deleted(&self) -> bool {
        self.deleted_at != 0
    }
}

/// An attachment as a message lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachmentRef {
    pub id: String,
    pub file_name: String,
    pub content_type: String,
    pub size: i64,
}

/// An attachment reserved for upload, and the message it went out with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachmentDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub room_id: String,
    pub uploader_id: String,
    /// The object's key in the bucket.
    pub key: String,
    pub file_name: String,
    pub content_type: String,
    pub size: i64,
    pub created_at: Millis,
    /// The message it was posted with; empty until then.
    pub message_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotificationDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub user_id: String,
    /// `invitation`, `direct`, `mention` or `system`.
    pub kind: String,
    pub actor_id: String,
    pub room_id: String,
    pub message_id: String,
    pub text: String,
    pub created_at: Millis,
    /// When it was marked read; 0 while unread.
    pub read_at: Millis,
}

#[derive(Debug, Serialize, Deserialize)]
struct SettingDoc {
    #[serde(rename = "_id")]
    id: String,
    value: String,
}

pub fn binary(bytes: Vec<u8>) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    }
}

/// A failure of the store; the cause goes to the log only.
pub type StoreResult<T> = Result<T, mongodb::error::Error>;

/// Whether a write failed on a unique index.
pub fn is_duplicate(e: &mongodb::error::Error) -> bool {
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

#[derive(Clone)]
pub struct Store {
    pub rooms: Collection<RoomDoc>,
    pub members: Collection<MemberDoc>,
    pub messages: Collection<MessageDoc>,
    pub notifications: Collection<NotificationDoc>,
    pub attachments: Collection<AttachmentDoc>,
    settings: Collection<SettingDoc>,
}

impl Store {
    /// Connects to `uri` (its database, or `agora`) and makes
    /// the indexes. Fails fast when no server answers, naming the setting.
    pub async fn connect(uri: &str) -> anyhow::Result<Self> {
        let db = agora_kit::mongo::database(uri, "agora-chat").await?;
        let store = Self {
            rooms: db.collection("rooms"),
            members: db.collection("members"),
            messages: db.collection("messages"),
            notifications: db.collection("notifications"),
            attachments: db.collection("attachments"),
            settings: db.collection("settings"),
        };
        store
            .ensure_indexes()
            .await
            .map_err(|e| anyhow::anyhow!("MONGODB_URI: cannot reach MongoDB at start: {e}"))?;
        Ok(store)
    }

    async fn ensure_indexes(&self) -> StoreResult<()> {
        let unique = IndexOptions::builder().unique(true).build();
        self.messages
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"room_id": 1, "sender_id": 1, "client_id": 1})
                    .options(unique)
                    .build(),
            )
            .await?;
        self.messages
            .create_index(IndexModel::builder().keys(doc! {"room_id": 1}).build())
            .await?;
        // Only messages whose event waits carry `event_id`.
        self.messages
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"event_id": 1})
                    .options(IndexOptions::builder().sparse(true).build())
                    .build(),
            )
            .await?;
        self.messages
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"room_id": 1, "updated_at": 1})
                    .build(),
            )
            .await?;
        self.members
            .create_index(IndexModel::builder().keys(doc! {"user_id": 1}).build())
            .await?;
        self.members
            .create_index(IndexModel::builder().keys(doc! {"room_id": 1}).build())
            .await?;
        self.notifications
            .create_index(IndexModel::builder().keys(doc! {"user_id": 1}).build())
            .await?;
        Ok(())
    }

    /// Reads a setting, or stores `make()` as it when there is none yet (the
    /// first writer wins; every replica then reads the same value).
    pub async fn setting_or_init(
        &self,
        id: &str,
        make: impl FnOnce() -> String,
    ) -> StoreResult<String> {
        if let Some(found) = self.settings.find_one(doc! {"_id": id}).await? {
            return Ok(found.value);
        }
        let value = make();
        match self
            .settings
            .insert_one(SettingDoc {
                id: id.to_owned(),
                value: value.clone(),
            })
            .await
        {
            Ok(_) => Ok(value),
            Err(e) if is_duplicate(&e) => Ok(self
                .settings
                .find_one(doc! {"_id": id})
                .await?
                .map_or(value, |d| d.value)),
            Err(e) => Err(e),
        }
    }

    pub async fn room(&self, id: &str) -> StoreResult<Option<RoomDoc>> {
        self.rooms.find_one(doc! {"_id": id}).await
    }

    pub async fn member(&self, room_id: &str, user_id: &str) -> StoreResult<Option<MemberDoc>> {
        self.members
            .find_one(doc! {"_id": member_id(room_id, user_id)})
            .await
    }

    /// The members of a room, longest standing first.
    pub async fn members_of(&self, room_id: &str) -> StoreResult<Vec<MemberDoc>> {
        self.members
            .find(doc! {"room_id": room_id})
            .sort(doc! {"joined_at": 1, "_id": 1})
            .await?
            .try_collect()
            .await
    }

    /// The rooms of a user, most recently active first, `offset` onwards.
    pub async fn rooms_of(
        &self,
        user_id: &str,
        offset: u64,
        limit: i64,
    ) -> StoreResult<Vec<RoomDoc>> {
        let ids: Vec<String> = self
            .members
            .find(doc! {"user_id": user_id})
            .await?
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .map(|m| m.room_id)
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.rooms
            .find(doc! {"_id": {"$in": ids}})
            .sort(doc! {"last_activity": -1, "_id": 1})
            .skip(offset)
            .limit(limit)
            .await?
            .try_collect()
            .await
    }

    pub async fn add_member(&self, member: &MemberDoc) -> StoreResult<bool> {
        match self.members.insert_one(member).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn remove_member(&self, room_id: &str, user_id: &str) -> StoreResult<bool> {
        let deleted = self
            .members
            .delete_one(doc! {"_id": member_id(room_id, user_id)})
            .await?;
        Ok(deleted.deleted_count > 0)
    }

    pub async fn set_role(&self, room_id: &str, user_id: &str, role: &str) -> StoreResult<()> {
        self.members
            .update_one(
                doc! {"_id": member_id(room_id, user_id)},
                doc! {"$set": {"role": role}},
            )
            .await?;
        Ok(())
    }

    pub async fn set_owner(&self, room_id: &str, owner_id: &str) -> StoreResult<()> {
        self.rooms
            .update_one(doc! {"_id": room_id}, doc! {"$set": {"owner_id": owner_id}})
            .await?;
        Ok(())
    }

    pub async fn delete_room(&self, room_id: &str) -> StoreResult<()> {
        self.rooms.delete_one(doc! {"_id": room_id}).await?;
        Ok(())
    }

    pub async fn touch_room(&self, room_id: &str, at: Millis) -> StoreResult<()> {
        self.rooms
            .update_one(doc! {"_id": room_id}, doc! {"$set": {"last_activity": at}})
            .await?;
        Ok(())
    }

    pub async fn message(&self, room_id: &str, id: &str) -> StoreResult<Option<MessageDoc>> {
        self.messages
            .find_one(doc! {"_id": id, "room_id": room_id})
            .await
    }

    pub async fn message_by_client_id(
        &self,
        room_id: &str,
        sender_id: &str,
        client_id: &str,
    ) -> StoreResult<Option<MessageDoc>> {
        self.messages
            .find_one(doc! {"room_id": room_id, "sender_id": sender_id, "client_id": client_id})
            .await
    }

    /// Newest first, older than `before` when given.
    pub async fn messages_page(
        &self,
        room_id: &str,
        before: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<MessageDoc>> {
        let filter = match before {
            Some(before) => doc! {"room_id": room_id, "_id": {"$lt": before}},
            None => doc! {"room_id": room_id},
        };
        self.messages
            .find(filter)
            .sort(doc! {"_id": -1})
            .limit(limit)
            .await?
            .try_collect()
            .await
    }

    /// What changed in `rooms` since `since`, oldest first, at most `limit`.
    pub async fn changed_since(
        &self,
        rooms: Vec<String>,
        since: Millis,
        limit: i64,
    ) -> StoreResult<Vec<MessageDoc>> {
        self.messages
            .find(doc! {"room_id": {"$in": rooms}, "updated_at": {"$gte": since}})
            .sort(doc! {"updated_at": 1, "_id": 1})
            .limit(limit)
            .await?
            .try_collect()
            .await
    }

    pub async fn newest_message(&self, room_id: &str) -> StoreResult<Option<MessageDoc>> {
        Ok(self
            .messages_page(room_id, None, 1)
            .await?
            .into_iter()
            .next())
    }

    /// Messages from others after `after` (all when empty), tombstones
    /// excluded.
    pub async fn unread_count(
        &self,
        room_id: &str,
        user_id: &str,
        after: &str,
    ) -> StoreResult<u64> {
        self.messages
            .count_documents(doc! {
                "room_id": room_id,
                "_id": {"$gt": after},
                "sender_id": {"$ne": user_id},
                "deleted_at": 0,
            })
            .await
    }

    /// Moves a read marker forward to `message_id`; false when it already
    /// was there or beyond.
    pub async fn mark_read(
        &self,
        room_id: &str,
        user_id: &str,
        message_id: &str,
        at: Millis,
    ) -> StoreResult<bool> {
        let updated = self
            .members
            .update_one(
                doc! {"_id": member_id(room_id, user_id), "last_read": {"$lt": message_id}},
                doc! {"$set": {"last_read": message_id, "read_at": at}},
            )
            .await?;
        Ok(updated.modified_count > 0)
    }

    pub async fn attachment(&self, room_id: &str, id: &str) -> StoreResult<Option<AttachmentDoc>> {
        self.attachments
            .find_one(doc! {"_id": id, "room_id": room_id})
            .await
    }

    /// Records the message an attachment went out with; false when it
    /// already went out with another.
    pub async fn attach(&self, id: &str, message_id: &str) -> StoreResult<bool> {
        let updated = self
            .attachments
            .update_one(
                doc! {"_id": id, "message_id": ""},
                doc! {"$set": {"message_id": message_id}},
            )
            .await?;
        Ok(updated.modified_count > 0)
    }

    pub async fn insert_notification(&self, n: &NotificationDoc) -> StoreResult<()> {
        self.notifications.insert_one(n).await?;
        Ok(())
    }

    pub async fn notifications_page(
        &self,
        user_id: &str,
        before: Option<&str>,
        unread_only: bool,
        limit: i64,
    ) -> StoreResult<Vec<NotificationDoc>> {
        let mut filter = doc! {"user_id": user_id};
        if let Some(before) = before {
            filter.insert("_id", doc! {"$lt": before});
        }
        if unread_only {
            filter.insert("read_at", 0i64);
        }
        self.notifications
            .find(filter)
            .sort(doc! {"_id": -1})
            .limit(limit)
            .await?
            .try_collect()
            .await
    }

    pub async fn unread_notifications(&self, user_id: &str) -> StoreResult<u64> {
        self.notifications
            .count_documents(doc! {"user_id": user_id, "read_at": 0i64})
            .await
    }

    /// Marks the named notifications of `user_id` read (all when `ids` is
    /// `None`); returns how many changed.
    pub async fn mark_notifications_read(
        &self,
        user_id: &str,
        ids: Option<Vec<String>>,
    ) -> StoreResult<u64> {
        let mut filter = doc! {"user_id": user_id, "read_at": 0i64};
        if let Some(ids) = ids {
            filter.insert("_id", doc! {"$in": ids});
        }
        let updated = self
            .notifications
            .update_many(filter, doc! {"$set": {"read_at": now()}})
            .await?;
        Ok(updated.modified_count)
    }
}

/// How a message write ended.
#[derive(Debug)]
pub enum Written {
    Stored,
    /// Its sender had sent it before (the unique index of client ids).
    Duplicate,
}

/// Largest batch of messages written at once.
const WRITE_BATCH: usize = 128;

type WriteRequest = (MessageDoc, oneshot::Sender<StoreResult<Written>>);

/// Writes messages in batches (group commit): while one `insert_many` is
/// under way, the messages that arrive meanwhile wait and go together in
/// the next. An idle store writes each message at once; a busy one writes
/// many per round trip (the MongoDB-wire stand-in takes four times as many
/// messages a second this way, and MongoDB itself benefits as well).
#[derive(Clone)]
pub struct MessageWriter {
    tx: mpsc::Sender<WriteRequest>,
}

impl MessageWriter {
    /// Starts the writer over `messages`; it stops when every handle is
    /// dropped.
    pub fn start(messages: Collection<MessageDoc>) -> Self {
        let (tx, rx) = mpsc::channel(WRITE_BATCH * 8);
        tokio::spawn(write_batches(messages, rx));
        Self { tx }
    }

    /// Stores `doc` and answers once it is durable as the store reports.
    pub async fn write(&self, doc: MessageDoc) -> StoreResult<Written> {
        let (reply, done) = oneshot::channel();
        if self.tx.send((doc, reply)).await.is_err() {
            return Err(mongodb::error::Error::custom("the message writer stopped"));
        }
        done.await
            .unwrap_or_else(|_| Err(mongodb::error::Error::custom("the message writer stopped")))
    }
}

async fn write_batches(messages: Collection<MessageDoc>, mut rx: mpsc::Receiver<WriteRequest>) {
    let mut batch: Vec<WriteRequest> = Vec::with_capacity(WRITE_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        metrics::histogram!("agora_chat_write_batch_messages").record(batch.len() as f64);
        let result = messages
            .insert_many(batch.iter().map(|(doc, _)| doc))
            .ordered(false)
            .await;
        let failed: HashMap<usize, i32> = match &result {
            Ok(_) => HashMap::new(),
            Err(e) => match &*e.kind {
                ErrorKind::InsertMany(m) if m.write_concern_error.is_none() => m
                    .write_errors
                    .iter()
                    .flatten()
                    .map(|w| (w.index, w.code))
                    .collect(),
                // The whole batch failed (unreachable store, …).
                _ => (0..batch.len()).map(|i| (i, -1)).collect(),
            },
        };
        for (i, (_, reply)) in batch.drain(..).enumerate() {
            let outcome = match failed.get(&i) {
                None => Ok(Written::Stored),
                Some(11000) => Ok(Written::Duplicate),
                Some(_) => Err(match &result {
                    Err(e) => e.clone(),
                    Ok(_) => mongodb::error::Error::custom("write failed"),
                }),
            };
            let _ = reply.send(outcome);
        }
    }
}

/// The id of a member document.
pub fn member_id(room_id: &str, user_id: &str) -> String {
    format!("{room_id}:{user_id}")
}

/// Names direct rooms: their ids are UUIDv5 of the pair in this namespace.
const DIRECT_ROOMS: uuid::Uuid = uuid::Uuid::from_u128(0x6a0c_1d1e_5c7b_4f0e_9a53_0c8e_0d1f_a9c2);

/// The id of the direct room of two users: the same whoever asks.
pub fn direct_room_id(a: &str, b: &str) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    uuid::Uuid::new_v5(&DIRECT_ROOMS, format!("{lo}/{hi}").as_bytes()).to_string()
}
