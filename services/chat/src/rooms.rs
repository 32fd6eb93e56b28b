//! What chat does, whichever way it is asked (a unary call or a frame of a
//! stream): membership rules, messages sealed before they are stored and
//! stored before they are acknowledged or fanned out, read markers and
//! notifications.

use std::sync::Arc;

use std::collections::HashMap;

use agora_kit::{balance::Balanced, error::Error, proto::parse_id};
use agora_proto::chat::v1::{
    Ack, Attachment, Member, MemberRole, Message, Notification, NotificationKind, ReadReceipt,
    Room, RoomEvent, RoomKind, Typing, room_event,
};
use agora_proto::users::v1::{LookupUsersRequest, users_service_client::UsersServiceClient};
use tonic::Code;
use uuid::Uuid;

use crate::{
    crypto::{Keyring, Sealed},
    files::{Files, Presigned},
    hub::Hub,
    store::{
        self, AttachmentDoc, AttachmentRef, MemberDoc, MessageDoc, MessageWriter, NotificationDoc,
        RoomDoc, Store, Written, binary,
    },
};

/// The longest message body, in characters.
pub const MAX_BODY_CHARS: usize = 16_384;
/// The longest client id, in bytes.
pub const MAX_CLIENT_ID: usize = 64;
/// The most members a group may have.
pub const MAX_MEMBERS: usize = 1_000;
/// The most attachments one message may carry.
pub const MAX_ATTACHMENTS: usize = 10;

/// What attachments may be.
#[derive(Debug, Clone)]
pub struct AttachmentRules {
    /// The largest file, in bytes.
    pub max_bytes: i64,
    /// Accepted content types (lowercase, without parameters).
    pub types: Vec<String>,
}

/// A store failure: UNAVAILABLE when MongoDB cannot be reached, else
/// internal; the cause goes to the log.
pub fn db(e: mongodb::error::Error) -> Error {
    use mongodb::error::ErrorKind;
    match &*e.kind {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. } => {
            tracing::warn!(error = %e, "MongoDB unreachable");
            Error::Refused {
                code: Code::Unavailable,
                reason: "STORE_UNAVAILABLE",
                message: "chat storage is unavailable; try again shortly".into(),
            }
        }
        _ => Error::Internal(anyhow::Error::new(e).context("MongoDB error")),
    }
}

fn not_member() -> Error {
    Error::NotFound("room not found".into())
}

fn ms(millis: store::Millis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn role_name(role: MemberRole) -> &'static str {
    match role {
        MemberRole::Owner => "owner",
        MemberRole::Admin => "admin",
        _ => "member",
    }
}

fn role_of(name: &str) -> MemberRole {
    match name {
        "owner" => MemberRole::Owner,
        "admin" => MemberRole::Admin,
        _ => MemberRole::Member,
    }
}

/// A stored message's place, bound into its ciphertext.
fn aad(room_id: &str, message_id: &str) -> String {
    format!("{room_id}/{message_id}")
}

/// Checks a body: 1 to [`MAX_BODY_CHARS`] characters, not only blanks.
fn check_body(field: &'static str, body: &str) -> Result<(), Error> {
    if body.trim().is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if body.chars().count() > MAX_BODY_CHARS {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_BODY_CHARS} characters"),
        ));
    }
    Ok(())
}

/// What posting a message did.
pub struct Posted {
    pub message: Message,
    /// The client id had been used: this is the first message.
    pub duplicate: bool,
}

/// The caller's credentials, relayed to the users service when chat asks
/// it about other users on the caller's behalf.
#[derive(Clone, Default)]
pub struct Relay(tonic::metadata::MetadataMap);

impl Relay {
    pub fn from_metadata(md: &tonic::metadata::MetadataMap) -> Self {
        let mut out = tonic::metadata::MetadataMap::new();
        for name in ["authorization", agora_kit::auth::API_KEY_HEADER] {
            if let Some(v) = md.get(name) {
                out.insert(name, v.clone());
            }
        }
        Self(out)
    }
}

/// Whether a post must check the sender's membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Check,
    /// Checked when the sender's stream opened; a removal ends the stream.
    CheckedByStream,
}

/// When each room's activity was last recorded, so a busy room costs one
/// write a second, not one per message.
#[derive(Default)]
pub struct Activity(std::sync::Mutex<HashMap<String, store::Millis>>);

impl Activity {
    /// Rooms remembered before old entries are dropped.
    const ROOMS: usize = 10_000;

    fn due(&self, room_id: &str, now: store::Millis) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.get(room_id).is_some_and(|at| now - at < 1_000) {
            return false;
        }
        if seen.len() >= Self::ROOMS {
            seen.retain(|_, at| now - *at < 1_000);
        }
        seen.insert(room_id.to_owned(), now);
        true
    }
}

#[derive(Clone)]
pub struct Chat {
    /// Writes messages in batches.
    pub writer: MessageWriter,
    /// Recent room activity writes.
    pub activity: Arc<Activity>,
    /// The users service: members must be users.
    pub users: UsersServiceClient<Balanced>,
    pub store: Store,
    pub keys: Arc<Keyring>,
    pub hub: Arc<Hub>,
    /// Object storage for attachments; `None` when not configured.
    pub files: Option<Files>,
    pub rules: Arc<AttachmentRules>,
}

/// A user's display name, or "someone" when the users service did not
/// know it.
fn display<'a>(names: &'a HashMap<String, String>, id: &str) -> &'a str {
    names.get(id).map_or("someone", String::as_str)
}

/// Where an attachment is stored in the bucket.
fn object_key(room_id: &str, id: &str) -> String {
    format!("rooms/{room_id}/{id}")
}

fn storage_down(e: anyhow::Error) -> Error {
    tracing::warn!(error = format!("{e:#}"), "object storage failed");
    Error::Refused {
        code: Code::Unavailable,
        reason: "STORAGE_UNAVAILABLE",
        message: "attachment storage is unavailable; try again shortly".into(),
    }
}

fn attachment(a: &AttachmentRef) -> Attachment {
    Attachment {
        id: a.id.clone(),
        file_name: a.file_name.clone(),
        content_type: a.content_type.clone(),
        size_bytes: a.size,
    }
}

fn reference(a: &AttachmentDoc) -> AttachmentRef {
    AttachmentRef {
        id: a.id.clone(),
        file_name: a.file_name.clone(),
        content_type: a.content_type.clone(),
        size: a.size,
    }
}

impl Chat {
    /// The caller's membership, or NOT_FOUND: non-members do not learn
    /// whether the room exists.
    pub async fn membership(&self, room_id: &str, user: &str) -> Result<MemberDoc, Error> {
        parse_id("room_id", room_id)?;
        self.store
            .member(room_id, user)
            .await
            .map_err(db)?
            .ok_or_else(not_member)
    }

    /// A stored message with its body decrypted.
    pub fn message(&self, doc: &MessageDoc) -> Result<Message, Error> {
        let body = if doc.deleted() {
            String::new()
        } else {
            self.keys
                .open(
                    &Sealed {
                        kid: doc.kid.clone(),
                        nonce: doc.nonce.bytes.clone(),
                        ciphertext: doc.ciphertext.bytes.clone(),
                    },
                    &aad(&doc.room_id, &doc.id),
                )
                .map_err(|e| Error::Internal(anyhow::Error::new(e).context(doc.id.clone())))?
        };
        Ok(to_message(doc, body))
    }

    /// Display names of the active users among `ids`, from the users
    /// service, asked with the caller's credentials.
    async fn profiles(
        &self,
        relay: &Relay,
        ids: &[String],
    ) -> Result<HashMap<String, String>, Error> {
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(100) {
            let mut req = tonic::Request::new(LookupUsersRequest {
                ids: chunk.to_vec(),
            });
            *req.metadata_mut() = relay.0.clone();
            req.set_timeout(
                agora_kit::deadline::remaining().unwrap_or(std::time::Duration::from_secs(5)),
            );
            match self.users.clone().lookup_users(req).await {
                Ok(resp) => found.extend(
                    resp.into_inner()
                        .users
                        .into_iter()
                        .map(|u| (u.id, u.display_name)),
                ),
                Err(s) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded) => {
                    return Err(Error::Refused {
                        code: Code::Unavailable,
                        reason: "USERS_UNAVAILABLE",
                        message: "cannot check the members now; try again shortly".into(),
                    });
                }
                Err(s) => {
                    return Err(Error::Internal(anyhow::anyhow!(
                        "users lookup failed: {:?} {}",
                        s.code(),
                        s.message()
                    )));
                }
            }
        }
        Ok(found)
    }

    /// The names of `caller` and `others`; every one of `others` must be an
    /// active user.
    async fn known_users(
        &self,
        relay: &Relay,
        field: &'static str,
        caller: &str,
        others: &[String],
    ) -> Result<HashMap<String, String>, Error> {
        let mut ids = others.to_vec();
        ids.push(caller.to_owned());
        let names = self.profiles(relay, &ids).await?;
        if let Some(unknown) = others.iter().find(|id| !names.contains_key(*id)) {
            // A reference to a user that does not exist (404), named by
            // the field that holds it.
            return Err(Error::NotFound(format!("{field}: {unknown} is not a user")));
        }
        Ok(names)
    }

    /// A room as `viewer` sees it: members, last message, unread count.
    pub async fn room_view(&self, room: &RoomDoc, viewer: &str) -> Result<Room, Error> {
        let members = self.store.members_of(&room.id).await.map_err(db)?;
        let last = self.store.newest_message(&room.id).await.map_err(db)?;
        let last_read = members
            .iter()
            .find(|m| m.user_id == viewer)
            .map(|m| m.last_read.clone())
            .unwrap_or_default();
        let unread = self
            .store
            .unread_count(&room.id, viewer, &last_read)
            .await
            .map_err(db)?;
        Ok(Room {
            id: room.id.clone(),
            kind: if room.kind == "direct" {
                RoomKind::Direct
            } else {
                RoomKind::Group
            } as i32,
            name: room.name.clone(),
            owner_id: room.owner_id.clone(),
            members: members
                .into_iter()
                .map(|m| Member {
                    user_id: m.user_id,
                    role: role_of(&m.role) as i32,
                    join_time: Some(ms(m.joined_at)),
                    last_read_message_id: m.last_read,
                })
                .collect(),
            create_time: Some(ms(room.created_at)),
            last_message: last.as_ref().map(|m| self.message(m)).transpose()?,
            unread_count: i32::try_from(unread).unwrap_or(i32::MAX),
        })
    }

    pub async fn create_room(
        &self,
        relay: &Relay,
        caller: &str,
        kind: RoomKind,
        name: &str,
        member_ids: &[String],
    ) -> Result<Room, Error> {
        let mut others: Vec<String> = Vec::with_capacity(member_ids.len());
        for id in member_ids {
            let id = parse_id("member_ids", id)?.to_string();
            if id != caller && !others.contains(&id) {
                others.push(id);
            }
        }
        let now = store::now();
        match kind {
            RoomKind::Direct => {
                let [other] = others.as_slice() else {
                    return Err(Error::invalid(
                        "member_ids",
                        "a direct room names exactly one other user",
                    ));
                };
                if !name.is_empty() {
                    return Err(Error::invalid("name", "direct rooms have no name"));
                }
                let names = self
                    .known_users(relay, "member_ids", caller, std::slice::from_ref(other))
                    .await?;
                let id = store::direct_room_id(caller, other);
                let doc = RoomDoc {
                    id: id.clone(),
                    kind: "direct".into(),
                    name: String::new(),
                    owner_id: caller.to_owned(),
                    created_at: now,
                    last_activity: now,
                };
                let created = match self.store.rooms.insert_one(&doc).await {
                    Ok(_) => true,
                    Err(e) if store::is_duplicate(&e) => false,
                    Err(e) => return Err(db(e)),
                };
                for user in [caller, other.as_str()] {
                    self.store
                        .add_member(&member(&id, user, "member", now))
                        .await
                        .map_err(db)?;
                }
                let room = self
                    .store
                    .room(&id)
                    .await
                    .map_err(db)?
                    .ok_or_else(|| Error::Internal(anyhow::anyhow!("direct room vanished")))?;
                if created {
                    self.notify(
                        other,
                        NotificationKind::DirectRoom,
                        caller,
                        &id,
                        "",
                        format!(
                            "{} started a direct conversation with you",
                            display(&names, caller)
                        ),
                    )
                    .await?;
                }
                self.room_view(&room, caller).await
            }
            RoomKind::Group | RoomKind::Unspecified => {
                // An unnamed group is shown by its members, as clients do
                // for group conversations.
                let name = name.trim();
                if name.chars().count() > 100 {
                    return Err(Error::invalid("name", "must be at most 100 characters"));
                }
                if others.len() + 1 > MAX_MEMBERS {
                    return Err(Error::invalid(
                        "member_ids",
                        format!("a room has at most {MAX_MEMBERS} members"),
                    ));
                }
                let names = self
                    .known_users(relay, "member_ids", caller, &others)
                    .await?;
                let id = Uuid::now_v7().to_string();
                let doc = RoomDoc {
                    id: id.clone(),
                    kind: "group".into(),
                    name: name.to_owned(),
                    owner_id: caller.to_owned(),
                    created_at: now,
                    last_activity: now,
                };
                self.store.rooms.insert_one(&doc).await.map_err(db)?;
                self.store
                    .add_member(&member(&id, caller, "owner", now))
                    .await
                    .map_err(db)?;
                for other in &others {
                    self.store
                        .add_member(&member(&id, other, "member", now))
                        .await
                        .map_err(db)?;
                    self.notify(
                        other,
                        NotificationKind::RoomInvitation,
                        caller,
                        &id,
                        "",
                        format!("{} added you to {name}", display(&names, caller)),
                    )
                    .await?;
                }
                self.room_view(&doc, caller).await
            }
        }
    }

    /// The group room `room_id` if the caller may manage its members.
    async fn managed_group(&self, room_id: &str, caller: &str) -> Result<RoomDoc, Error> {
        let me = self.membership(room_id, caller).await?;
        let room = self
            .store
            .room(room_id)
            .await
            .map_err(db)?
            .ok_or_else(not_member)?;
        if room.kind == "direct" {
            return Err(Error::FailedPrecondition(
                "the members of a direct room cannot change".into(),
            ));
        }
        if !matches!(role_of(&me.role), MemberRole::Owner | MemberRole::Admin) {
            return Err(Error::PermissionDenied(
                "only the room's owner and admins change its members".into(),
            ));
        }
        Ok(room)
    }

    pub async fn add_members(
        &self,
        relay: &Relay,
        caller: &str,
        room_id: &str,
        user_ids: &[String],
        role: MemberRole,
    ) -> Result<Room, Error> {
        let room = self.managed_group(room_id, caller).await?;
        if user_ids.is_empty() {
            return Err(Error::invalid("user_ids", "name at least one user"));
        }
        if role == MemberRole::Owner {
            return Err(Error::invalid("role", "a room has one owner"));
        }
        let ids = user_ids
            .iter()
            .map(|id| parse_id("user_ids", id).map(|u| u.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let names = self.known_users(relay, "user_ids", caller, &ids).await?;
        let current = self.store.members_of(room_id).await.map_err(db)?.len();
        if current + ids.len() > MAX_MEMBERS {
            return Err(Error::invalid(
                "user_ids",
                format!("a room has at most {MAX_MEMBERS} members"),
            ));
        }
        let role = role_name(if role == MemberRole::Unspecified {
            MemberRole::Member
        } else {
            role
        });
        let now = store::now();
        for id in ids {
            if self
                .store
                .add_member(&member(room_id, &id, role, now))
                .await
                .map_err(db)?
            {
                self.notify(
                    &id,
                    NotificationKind::RoomInvitation,
                    caller,
                    room_id,
                    "",
                    format!("{} added you to {}", display(&names, caller), room.name),
                )
                .await?;
            }
        }
        self.room_view(&room, caller).await
    }

    pub async fn remove_member(
        &self,
        caller: &str,
        room_id: &str,
        user_id: &str,
    ) -> Result<Room, Error> {
        let room = self.managed_group(room_id, caller).await?;
        let user_id = parse_id("user_id", user_id)?.to_string();
        if user_id == room.owner_id {
            return Err(Error::FailedPrecondition(
                "the owner cannot be removed; the owner may leave instead".into(),
            ));
        }
        if !self
            .store
            .remove_member(room_id, &user_id)
            .await
            .map_err(db)?
        {
            return Err(Error::NotFound(format!(
                "{user_id} is not a member of this room"
            )));
        }
        self.hub.removed(room_id, &user_id).await;
        self.room_view(&room, caller).await
    }

    pub async fn leave(&self, caller: &str, room_id: &str) -> Result<(), Error> {
        self.membership(room_id, caller).await?;
        let room = self
            .store
            .room(room_id)
            .await
            .map_err(db)?
            .ok_or_else(not_member)?;
        if room.kind == "direct" {
            return Err(Error::FailedPrecondition(
                "a direct room cannot be left".into(),
            ));
        }
        self.store
            .remove_member(room_id, caller)
            .await
            .map_err(db)?;
        self.hub.removed(room_id, caller).await;
        if room.owner_id == caller {
            let rest = self.store.members_of(room_id).await.map_err(db)?;
            let heir = rest
                .iter()
                .find(|m| m.role == "admin")
                .or_else(|| rest.first());
            match heir {
                Some(heir) => {
                    self.store
                        .set_role(room_id, &heir.user_id, "owner")
                        .await
                        .map_err(db)?;
                    self.store
                        .set_owner(room_id, &heir.user_id)
                        .await
                        .map_err(db)?;
                }
                None => self.store.delete_room(room_id).await.map_err(db)?,
            }
        }
        Ok(())
    }

    fn files(&self) -> Result<&Files, Error> {
        self.files.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(
                "attachments are not enabled on this service (AGORA_CHAT_ATTACHMENTS_BUCKET)"
                    .into(),
            )
        })
    }

    /// Reserves an attachment and presigns its upload.
    pub async fn create_attachment(
        &self,
        caller: &str,
        room_id: &str,
        file_name: &str,
        content_type: &str,
        size: i64,
    ) -> Result<(Attachment, Presigned), Error> {
        self.membership(room_id, caller).await?;
        let files = self.files()?;
        let file_name = file_name.trim();
        if file_name.is_empty() {
            return Err(Error::invalid("file_name", "is required"));
        }
        if file_name.chars().count() > 255 || file_name.contains(['/', '\\', '\0']) {
            return Err(Error::invalid(
                "file_name",
                "must be at most 255 characters, without path separators",
            ));
        }
        let content_type = content_type.trim().to_ascii_lowercase();
        if !self.rules.types.contains(&content_type) {
            return Err(Error::invalid(
                "content_type",
                format!("must be one of {}", self.rules.types.join(", ")),
            ));
        }
        if size < 1 || size > self.rules.max_bytes {
            return Err(Error::invalid(
                "size_bytes",
                format!("must be between 1 and {} bytes", self.rules.max_bytes),
            ));
        }
        let id = Uuid::now_v7().to_string();
        let doc = AttachmentDoc {
            key: object_key(room_id, &id),
            id,
            room_id: room_id.to_owned(),
            uploader_id: caller.to_owned(),
            file_name: file_name.to_owned(),
            content_type,
            size,
            created_at: store::now(),
            message_id: String::new(),
        };
        let presigned = files
            .upload_url(&doc.key, &doc.content_type, size)
            .await
            .map_err(storage_down)?;
        self.store.attachments.insert_one(&doc).await.map_err(db)?;
        Ok((attachment(&reference(&doc)), presigned))
    }

    /// A download URL for an attachment the caller may see: posted in a
    /// room they are a member of, or their own upload.
    pub async fn attachment_url(
        &self,
        caller: &str,
        room_id: &str,
        id: &str,
    ) -> Result<(Attachment, String), Error> {
        self.membership(room_id, caller).await?;
        let files = self.files()?;
        parse_id("attachment_id", id)?;
        let doc = self
            .store
            .attachment(room_id, id)
            .await
            .map_err(db)?
            .filter(|a| !a.message_id.is_empty() || a.uploader_id == caller)
            .ok_or_else(|| Error::NotFound("attachment not found".into()))?;
        let url = files
            .download_url(&doc.key, &doc.file_name)
            .await
            .map_err(storage_down)?;
        Ok((attachment(&reference(&doc)), url))
    }

    /// The caller's uploaded, unposted attachments `ids` in `room_id`,
    /// checked against what storage holds. A file that does not match its
    /// declaration is deleted.
    async fn uploaded(
        &self,
        caller: &str,
        room_id: &str,
        ids: &[String],
    ) -> Result<Vec<AttachmentRef>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let files = self.files()?;
        if ids.len() > MAX_ATTACHMENTS {
            return Err(Error::invalid(
                "attachment_ids",
                format!("a message carries at most {MAX_ATTACHMENTS} attachments"),
            ));
        }
        let mut out: Vec<AttachmentRef> = Vec::with_capacity(ids.len());
        for id in ids {
            parse_id("attachment_ids", id)?;
            if out.iter().any(|a| a.id == *id) {
                continue;
            }
            let doc = self
                .store
                .attachment(room_id, id)
                .await
                .map_err(db)?
                .filter(|a| a.uploader_id == caller)
                .ok_or_else(|| {
                    Error::invalid(
                        "attachment_ids",
                        format!("{id} is not an attachment of yours in this room"),
                    )
                })?;
            if !doc.message_id.is_empty() {
                return Err(Error::invalid(
                    "attachment_ids",
                    format!("{id} was already posted"),
                ));
            }
            let stored = files.stat(&doc.key).await.map_err(storage_down)?;
            let Some(stored) = stored else {
                return Err(Error::FailedPrecondition(format!(
                    "attachment {id}: nothing was uploaded yet"
                )));
            };
            let declared_type = stored
                .content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(&doc.content_type);
            if stored.size != doc.size || stored.size > self.rules.max_bytes || !declared_type {
                files.delete(&doc.key).await;
                return Err(Error::invalid(
                    "attachment_ids",
                    format!(
                        "{id}: the upload ({} bytes, {}) is not the declared {} bytes of {}; it was deleted, upload it again",
                        stored.size, stored.content_type, doc.size, doc.content_type
                    ),
                ));
            }
            out.push(reference(&doc));
        }
        Ok(out)
    }

    /// Stores a message, then fans it out and notifies its mentions. A
    /// resend (same sender and client id) returns the stored message.
    ///
    /// A message costs one write in the common case: a stream's membership
    /// was checked when it opened (removal ends the stream), a resend is
    /// caught by the unique index, and room activity is recorded at most
    /// once a second per room.
    #[allow(clippy::too_many_arguments)]
    pub async fn post(
        &self,
        membership: Membership,
        caller: &str,
        room_id: &str,
        client_id: &str,
        body: &str,
        mention_ids: &[String],
        attachment_ids: &[String],
    ) -> Result<Posted, Error> {
        if membership == Membership::Check {
            self.membership(room_id, caller).await?;
        }
        if client_id.is_empty() {
            return Err(Error::invalid("client_id", "is required"));
        }
        if client_id.len() > MAX_CLIENT_ID {
            return Err(Error::invalid(
                "client_id",
                format!("must be at most {MAX_CLIENT_ID} bytes"),
            ));
        }
        if attachment_ids.is_empty() {
            check_body("body", body)?;
        } else if body.chars().count() > MAX_BODY_CHARS {
            return Err(Error::invalid(
                "body",
                format!("must be at most {MAX_BODY_CHARS} characters"),
            ));
        }
        // A resend naming attachments must find the first message before
        // the attachments are checked (they went out with it).
        if !attachment_ids.is_empty()
            && let Some(first) = self
                .store
                .message_by_client_id(room_id, caller, client_id)
                .await
                .map_err(db)?
        {
            return Ok(Posted {
                message: self.message(&first)?,
                duplicate: true,
            });
        }
        let mut mentions = Vec::new();
        if !mention_ids.is_empty() {
            let members = self.store.members_of(room_id).await.map_err(db)?;
            for id in mention_ids {
                let id = parse_id("mention_ids", id)?.to_string();
                if !members.iter().any(|m| m.user_id == id) {
                    return Err(Error::invalid(
                        "mention_ids",
                        format!("{id} is not a member of this room"),
                    ));
                }
                if !mentions.contains(&id) {
                    mentions.push(id);
                }
            }
        }
        let attachments = self.uploaded(caller, room_id, attachment_ids).await?;
        let id = Uuid::now_v7().to_string();
        let sealed = self
            .keys
            .seal(body, &aad(room_id, &id))
            .map_err(Error::Internal)?;
        let now = store::now();
        let doc = MessageDoc {
            id: id.clone(),
            room_id: room_id.to_owned(),
            sender_id: caller.to_owned(),
            client_id: client_id.to_owned(),
            kid: sealed.kid,
            nonce: binary(sealed.nonce),
            ciphertext: binary(sealed.ciphertext),
            mentions: mentions.clone(),
            attachments,
            created_at: now,
            edited_at: 0,
            updated_at: now,
            deleted_at: 0,
            event_id: Some(Uuid::now_v7().to_string()),
            event_traceparent: agora_kit::trace::current_traceparent(),
        };
        match self.writer.write(doc.clone()).await {
            Ok(Written::Stored) => {}
            // A resend: the first message stands.
            Ok(Written::Duplicate) => {
                let first = self
                    .store
                    .message_by_client_id(room_id, caller, client_id)
                    .await
                    .map_err(db)?
                    .ok_or_else(|| Error::Internal(anyhow::anyhow!("duplicate vanished")))?;
                return Ok(Posted {
                    message: self.message(&first)?,
                    duplicate: true,
                });
            }
            Err(e) => return Err(db(e)),
        }
        metrics::counter!("agora_chat_messages_total").increment(1);
        for a in &doc.attachments {
            if !self.store.attach(&a.id, &id).await.map_err(db)? {
                tracing::warn!(attachment = %a.id, "an attachment went out with two messages at once");
            }
        }
        // The room list order, at most once a second per room; a failure
        // costs only ordering.
        if self.activity.due(room_id, now)
            && let Err(e) = self.store.touch_room(room_id, now).await
        {
            tracing::warn!(error = %e, "cannot record room activity");
        }
        let message = to_message(&doc, body.to_owned());
        self.hub
            .publish(event(room_id, room_event::Event::Message(message.clone())))
            .await;
        for user in mentions.iter().filter(|u| *u != caller) {
            self.notify(
                user,
                NotificationKind::Mention,
                caller,
                room_id,
                &id,
                "mentioned you".into(),
            )
            .await?;
        }
        Ok(Posted {
            message,
            duplicate: false,
        })
    }

    pub async fn list_messages(
        &self,
        caller: &str,
        room_id: &str,
        before: Option<&str>,
        page_size: i64,
    ) -> Result<(Vec<Message>, Option<String>), Error> {
        self.membership(room_id, caller).await?;
        let mut docs = self
            .store
            .messages_page(room_id, before, page_size + 1)
            .await
            .map_err(db)?;
        let more = docs.len() as i64 > page_size;
        docs.truncate(page_size as usize);
        let next = more.then(|| docs.last().map(|d| d.id.clone())).flatten();
        let messages = docs
            .iter()
            .map(|d| self.message(d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((messages, next))
    }

    /// The caller's own live message `id` in `room_id`.
    async fn own_message(
        &self,
        caller: &str,
        room_id: &str,
        id: &str,
    ) -> Result<MessageDoc, Error> {
        self.membership(room_id, caller).await?;
        parse_id("message_id", id)?;
        let doc = self
            .store
            .message(room_id, id)
            .await
            .map_err(db)?
            .ok_or_else(|| Error::NotFound("message not found".into()))?;
        if doc.sender_id != caller {
            return Err(Error::PermissionDenied(
                "only its sender may change a message".into(),
            ));
        }
        // A deleted message is gone for its sender too.
        if doc.deleted() {
            return Err(Error::NotFound("message not found (deleted)".into()));
        }
        Ok(doc)
    }

    pub async fn edit(
        &self,
        caller: &str,
        room_id: &str,
        id: &str,
        body: &str,
    ) -> Result<Message, Error> {
        let doc = self.own_message(caller, room_id, id).await?;
        check_body("body", body)?;
        let sealed = self
            .keys
            .seal(body, &aad(room_id, id))
            .map_err(Error::Internal)?;
        let now = store::now();
        self.store
            .messages
            .update_one(
                mongodb::bson::doc! {"_id": id, "room_id": room_id},
                mongodb::bson::doc! {"$set": {
                    "kid": &sealed.kid,
                    "nonce": binary(sealed.nonce.clone()),
                    "ciphertext": binary(sealed.ciphertext.clone()),
                    "edited_at": now,
                    "updated_at": now,
                }},
            )
            .await
            .map_err(db)?;
        let message = to_message(
            &MessageDoc {
                edited_at: now,
                ..doc
            },
            body.to_owned(),
        );
        self.hub
            .publish(event(room_id, room_event::Event::Edited(message.clone())))
            .await;
        Ok(message)
    }

    pub async fn delete(&self, caller: &str, room_id: &str, id: &str) -> Result<Message, Error> {
        let doc = self.own_message(caller, room_id, id).await?;
        let now = store::now();
        self.store
            .messages
            .update_one(
                mongodb::bson::doc! {"_id": id, "room_id": room_id},
                mongodb::bson::doc! {"$set": {
                    "deleted_at": now,
                    "attachments": [],
                    "kid": "",
                    "nonce": binary(Vec::new()),
                    "ciphertext": binary(Vec::new()),
                    "updated_at": now,
                }},
            )
            .await
            .map_err(db)?;
        if let Some(files) = &self.files {
            for a in &doc.attachments {
                files.delete(&object_key(room_id, &a.id)).await;
            }
        }
        let tombstone = to_message(
            &MessageDoc {
                deleted_at: now,
                attachments: Vec::new(),
                ..doc
            },
            String::new(),
        );
        self.hub
            .publish(event(
                room_id,
                room_event::Event::Deleted(tombstone.clone()),
            ))
            .await;
        Ok(tombstone)
    }

    /// Moves the caller's read marker to `message_id` (default: newest).
    pub async fn mark_read(
        &self,
        caller: &str,
        room_id: &str,
        message_id: &str,
    ) -> Result<ReadReceipt, Error> {
        let me = self.membership(room_id, caller).await?;
        let target = if message_id.is_empty() {
            match self.store.newest_message(room_id).await.map_err(db)? {
                Some(m) => m.id,
                None => {
                    return Ok(ReadReceipt {
                        user_id: caller.to_owned(),
                        last_read_message_id: me.last_read,
                        read_time: (me.read_at != 0).then(|| ms(me.read_at)),
                    });
                }
            }
        } else {
            parse_id("message_id", message_id)?;
            self.store
                .message(room_id, message_id)
                .await
                .map_err(db)?
                .ok_or_else(|| Error::NotFound("message not found".into()))?
                .id
        };
        let now = store::now();
        let moved = self
            .store
            .mark_read(room_id, caller, &target, now)
            .await
            .map_err(db)?;
        if !moved {
            let me = self.membership(room_id, caller).await?;
            return Ok(ReadReceipt {
                user_id: caller.to_owned(),
                last_read_message_id: me.last_read,
                read_time: (me.read_at != 0).then(|| ms(me.read_at)),
            });
        }
        let receipt = ReadReceipt {
            user_id: caller.to_owned(),
            last_read_message_id: target,
            read_time: Some(ms(now)),
        };
        self.hub
            .publish(event(room_id, room_event::Event::Read(receipt.clone())))
            .await;
        Ok(receipt)
    }

    pub async fn typing(&self, caller: &str, room_id: &str, typing: bool) {
        self.hub
            .publish(event(
                room_id,
                room_event::Event::Typing(Typing {
                    user_id: caller.to_owned(),
                    typing,
                }),
            ))
            .await;
    }

    /// Stores a notification for `user` and delivers it to their streams.
    pub async fn notify(
        &self,
        user: &str,
        kind: NotificationKind,
        actor: &str,
        room_id: &str,
        message_id: &str,
        text: String,
    ) -> Result<Notification, Error> {
        let now = store::now();
        let doc = NotificationDoc {
            id: Uuid::now_v7().to_string(),
            user_id: user.to_owned(),
            kind: match kind {
                NotificationKind::RoomInvitation => "invitation",
                NotificationKind::DirectRoom => "direct",
                NotificationKind::Mention => "mention",
                _ => "system",
            }
            .into(),
            actor_id: actor.to_owned(),
            room_id: room_id.to_owned(),
            message_id: message_id.to_owned(),
            text,
            created_at: now,
            read_at: 0,
        };
        self.store.insert_notification(&doc).await.map_err(db)?;
        let n = notification(doc);
        self.hub.notify(n.clone()).await;
        Ok(n)
    }

    /// The events of what changed in `rooms` since `since_ms`, for a
    /// catch-up after a fan-out outage.
    pub async fn changes_since(
        &self,
        rooms: Vec<String>,
        since_ms: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<RoomEvent>> {
        let since = since_ms;
        let docs = self.store.changed_since(rooms, since, limit).await?;
        let mut events = Vec::with_capacity(docs.len());
        for doc in docs {
            let room = doc.room_id.clone();
            let message = match self.message(&doc) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an unreadable message in a catch-up");
                    continue;
                }
            };
            let kind = if doc.deleted() {
                room_event::Event::Deleted(message)
            } else if doc.edited_at != 0 && doc.created_at < since {
                room_event::Event::Edited(message)
            } else {
                room_event::Event::Message(message)
            };
            events.push(event(&room, kind));
        }
        Ok(events)
    }
}

pub fn event(room_id: &str, kind: room_event::Event) -> RoomEvent {
    RoomEvent {
        room_id: room_id.to_owned(),
        event: Some(kind),
    }
}

pub fn ack(room_id: &str, posted: &Posted) -> RoomEvent {
    event(
        room_id,
        room_event::Event::Ack(Ack {
            client_id: posted.message.client_id.clone(),
            message_id: posted.message.id.clone(),
            duplicate: posted.duplicate,
        }),
    )
}

fn member(room_id: &str, user: &str, role: &str, now: store::Millis) -> MemberDoc {
    MemberDoc {
        id: store::member_id(room_id, user),
        room_id: room_id.to_owned(),
        user_id: user.to_owned(),
        role: role.to_owned(),
        joined_at: now,
        last_read: String::new(),
        read_at: 0,
    }
}

pub fn notification(doc: NotificationDoc) -> Notification {
    Notification {
        id: doc.id,
        user_id: doc.user_id,
        kind: match doc.kind.as_str() {
            "invitation" => NotificationKind::RoomInvitation,
            "direct" => NotificationKind::DirectRoom,
            "mention" => NotificationKind::Mention,
            _ => NotificationKind::System,
        } as i32,
        actor_id: doc.actor_id,
        room_id: doc.room_id,
        message_id: doc.message_id,
        text: doc.text,
        create_time: Some(ms(doc.created_at)),
        read: doc.read_at != 0,
    }
}

fn to_message(doc: &MessageDoc, body: String) -> Message {
    Message {
        id: doc.id.clone(),
        room_id: doc.room_id.clone(),
        sender_id: doc.sender_id.clone(),
        client_id: doc.client_id.clone(),
        body,
        mention_ids: doc.mentions.clone(),
        create_time: Some(ms(doc.created_at)),
        edit_time: (doc.edited_at != 0).then(|| ms(doc.edited_at)),
        deleted: doc.deleted(),
        attachments: doc.attachments.iter().map(attachment).collect(),
    }
}
