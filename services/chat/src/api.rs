//! The tonic service: proto ⇄ [`Chat`], and the streams.

use std::{pin::Pin, sync::Arc};

use agora_kit::{auth::Caller, error::Error, proto::parse_id};
use agora_proto::chat::v1::{
    self as pb, NotificationKind, RequestError, RoomEvent, RoomKind, chat_service_server,
    connect_request, room_event,
};
use futures::Stream;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    hub::{Ended, Subscription},
    rooms::{self, Chat, Membership, Relay},
};

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Rooms and notifications per page unless asked.
const DEFAULT_PAGE: i32 = 50;

pub struct ChatService {
    chat: Arc<Chat>,
    /// Events a stream may fall behind by before it is ended.
    buffer: usize,
}

impl ChatService {
    pub fn new(chat: Chat, buffer: usize) -> Self {
        Self {
            chat: Arc::new(chat),
            buffer,
        }
    }
}

fn caller<T>(req: &Request<T>) -> Result<String, Status> {
    Ok(Caller::from_request(req)?.user_id.clone())
}

fn page_size(requested: i32) -> i64 {
    i64::from(agora_kit::proto::page_size(requested, DEFAULT_PAGE))
}

/// When a presigned URL made now stops working.
fn expiry() -> prost_types::Timestamp {
    agora_kit::proto::timestamp(chrono::Utc::now() + crate::files::URL_TTL)
}

/// A page token that continues after an id (empty: the first page).
fn cursor(token: &str) -> Result<Option<&str>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    parse_id("page_token", token)
        .map_err(|_| Error::invalid("page_token", "is not a token this service issued"))?;
    Ok(Some(token))
}

/// Why the hub ended a stream, as its final status.
fn ended_status(why: Ended, buffer: usize) -> Status {
    match why {
        Ended::TooSlow => Status::resource_exhausted(format!(
            "this stream fell more than {buffer} events behind and was ended; reconnect and read the history to catch up"
        )),
        Ended::Removed => Status::not_found("room not found: you are no longer a member"),
        Ended::Open => Status::unavailable("the stream ended; reconnect to continue"),
    }
}

/// A subscription as a response stream: its events in order, then the
/// status the hub or the request side ended it with. `finish` (bidi
/// streams) resolves when the client has stopped sending: the stream then
/// ends once what is queued is sent.
fn events<E: Clone + Send + Sync + 'static, T: Send + 'static>(
    sub: Subscription<E>,
    finish: Option<oneshot::Receiver<Option<Status>>>,
    buffer: usize,
    wrap: fn(E) -> T,
) -> Stream_<T> {
    struct State<E> {
        sub: Subscription<E>,
        finish: Option<oneshot::Receiver<Option<Status>>>,
        /// The request side ended, with this status (or cleanly).
        draining: Option<Option<Status>>,
        done: bool,
    }
    let state = State {
        sub,
        finish,
        draining: None,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, move |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            if let Some(end) = st.draining.take() {
                if let Ok(ev) = st.sub.rx.try_recv() {
                    st.draining = Some(end);
                    return Some((Ok(wrap((*ev).clone())), st));
                }
                st.done = true;
                return end.map(|status| (Err(status), st));
            }
            let next = match st.finish.as_mut() {
                Some(finish) => tokio::select! {
                    biased;
                    ev = st.sub.rx.recv() => Ok(ev),
                    end = finish => Err(end.unwrap_or(None)),
                },
                None => Ok(st.sub.rx.recv().await),
            };
            match next {
                Ok(Some(ev)) => return Some((Ok(wrap((*ev).clone())), st)),
                Ok(None) => {
                    st.done = true;
                    let status = ended_status(st.sub.ended.get(), buffer);
                    return Some((Err(status), st));
                }
                Err(end) => {
                    st.finish = None;
                    st.draining = Some(end);
                }
            }
        }
    }))
}

/// A response stream that stops its request reader when dropped.
struct AbortOnDrop<T> {
    inner: Stream_<T>,
    task: tokio::task::AbortHandle,
}

impl<T> Stream for AbortOnDrop<T> {
    type Item = Result<T, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Queues an event on the stream's own queue (acks, refusals).
async fn push(tx: &tokio::sync::mpsc::WeakSender<Arc<RoomEvent>>, event: RoomEvent) {
    if let Some(tx) = tx.upgrade() {
        let _ = tx.send(Arc::new(event)).await;
    }
}

fn refused(room_id: &str, client_id: &str, e: Error) -> RoomEvent {
    let status = Status::from(e);
    rooms::event(
        room_id,
        room_event::Event::Error(RequestError {
            client_id: client_id.to_owned(),
            code: status.code() as i32,
            message: status.message().to_owned(),
        }),
    )
}

/// Carries out one request of a Connect stream.
async fn handle(
    chat: &Chat,
    caller: &str,
    room_id: &str,
    req: pb::ConnectRequest,
    tx: &tokio::sync::mpsc::WeakSender<Arc<RoomEvent>>,
) {
    if !req.room_id.is_empty() && req.room_id != room_id {
        let e = Error::invalid("room_id", format!("this stream is for room {room_id}"));
        push(tx, refused(room_id, "", e)).await;
        return;
    }
    match req.action {
        Some(connect_request::Action::Send(m)) => {
            match chat
                .post(
                    Membership::CheckedByStream,
                    caller,
                    room_id,
                    &m.client_id,
                    &m.body,
                    &m.mention_ids,
                    &m.attachment_ids,
                )
                .await
            {
                Ok(posted) => push(tx, rooms::ack(room_id, &posted)).await,
                Err(e) => push(tx, refused(room_id, &m.client_id, e)).await,
            }
        }
        Some(connect_request::Action::Typing(t)) => chat.typing(caller, room_id, t.typing).await,
        Some(connect_request::Action::Read(r)) => {
            if let Err(e) = chat.mark_read(caller, room_id, &r.message_id).await {
                push(tx, refused(room_id, "", e)).await;
            }
        }
        None => {}
    }
}

impl ChatService {
    /// Membership check, then the subscription, whose first event says
    /// who is online.
    async fn follow(&self, caller: &str, room_id: &str) -> Result<Subscription<RoomEvent>, Status> {
        self.chat.membership(room_id, caller).await?;
        let mut online = self.chat.hub.online(room_id).await;
        if !online.iter().any(|u| u == caller) {
            online.push(caller.to_owned());
        }
        let ready = rooms::event(
            room_id,
            room_event::Event::Ready(pb::Ready {
                online_user_ids: online,
            }),
        );
        Ok(self.chat.hub.subscribe_room(room_id, caller, ready))
    }
}

#[tonic::async_trait]
impl chat_service_server::ChatService for ChatService {
    async fn create_room(
        &self,
        req: Request<pb::CreateRoomRequest>,
    ) -> Result<Response<pb::CreateRoomResponse>, Status> {
        let caller = caller(&req)?;
        let relay = Relay::from_metadata(req.metadata());
        let req = req.into_inner();
        let kind = RoomKind::try_from(req.kind)
            .map_err(|_| Error::invalid("kind", "is not a room kind"))?;
        let room = self
            .chat
            .create_room(&relay, &caller, kind, &req.name, &req.member_ids)
            .await?;
        Ok(Response::new(pb::CreateRoomResponse { room: Some(room) }))
    }

    async fn list_rooms(
        &self,
        req: Request<pb::ListRoomsRequest>,
    ) -> Result<Response<pb::ListRoomsResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let limit = page_size(req.page_size);
        let offset: u64 = if req.page_token.is_empty() {
            0
        } else {
            req.page_token
                .parse()
                .map_err(|_| Error::invalid("page_token", "is not a token this service issued"))?
        };
        let mut docs = self
            .chat
            .store
            .rooms_of(&caller, offset, limit + 1)
            .await
            .map_err(rooms::db)?;
        let more = docs.len() as i64 > limit;
        docs.truncate(limit as usize);
        let mut rooms = Vec::with_capacity(docs.len());
        for doc in &docs {
            rooms.push(self.chat.room_view(doc, &caller).await?);
        }
        Ok(Response::new(pb::ListRoomsResponse {
            next_page_token: if more {
                (offset + limit as u64).to_string()
            } else {
                String::new()
            },
            rooms,
        }))
    }

    async fn get_room(
        &self,
        req: Request<pb::GetRoomRequest>,
    ) -> Result<Response<pb::GetRoomResponse>, Status> {
        let caller = caller(&req)?;
        let room_id = req.into_inner().room_id;
        self.chat.membership(&room_id, &caller).await?;
        let room = self
            .chat
            .store
            .room(&room_id)
            .await
            .map_err(rooms::db)?
            .ok_or_else(|| Status::not_found("room not found"))?;
        Ok(Response::new(pb::GetRoomResponse {
            room: Some(self.chat.room_view(&room, &caller).await?),
        }))
    }

    async fn add_members(
        &self,
        req: Request<pb::AddMembersRequest>,
    ) -> Result<Response<pb::AddMembersResponse>, Status> {
        let caller = caller(&req)?;
        let relay = Relay::from_metadata(req.metadata());
        let req = req.into_inner();
        let role = pb::MemberRole::try_from(req.role)
            .map_err(|_| Error::invalid("role", "is not a member role"))?;
        let room = self
            .chat
            .add_members(&relay, &caller, &req.room_id, &req.user_ids, role)
            .await?;
        Ok(Response::new(pb::AddMembersResponse { room: Some(room) }))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let room = self
            .chat
            .remove_member(&caller, &req.room_id, &req.user_id)
            .await?;
        Ok(Response::new(pb::RemoveMemberResponse { room: Some(room) }))
    }

    async fn leave_room(
        &self,
        req: Request<pb::LeaveRoomRequest>,
    ) -> Result<Response<pb::LeaveRoomResponse>, Status> {
        let caller = caller(&req)?;
        self.chat.leave(&caller, &req.into_inner().room_id).await?;
        Ok(Response::new(pb::LeaveRoomResponse {}))
    }

    async fn post_message(
        &self,
        req: Request<pb::PostMessageRequest>,
    ) -> Result<Response<pb::PostMessageResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let posted = self
            .chat
            .post(
                Membership::Check,
                &caller,
                &req.room_id,
                &req.client_id,
                &req.body,
                &req.mention_ids,
                &req.attachment_ids,
            )
            .await?;
        Ok(Response::new(pb::PostMessageResponse {
            message: Some(posted.message),
        }))
    }

    async fn list_messages(
        &self,
        req: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let limit = page_size(req.page_size);
        let before = cursor(&req.page_token)?;
        let (messages, next) = self
            .chat
            .list_messages(&caller, &req.room_id, before, limit)
            .await?;
        Ok(Response::new(pb::ListMessagesResponse {
            messages,
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn edit_message(
        &self,
        req: Request<pb::EditMessageRequest>,
    ) -> Result<Response<pb::EditMessageResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let message = self
            .chat
            .edit(&caller, &req.room_id, &req.message_id, &req.body)
            .await?;
        Ok(Response::new(pb::EditMessageResponse {
            message: Some(message),
        }))
    }

    async fn delete_message(
        &self,
        req: Request<pb::DeleteMessageRequest>,
    ) -> Result<Response<pb::DeleteMessageResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let message = self
            .chat
            .delete(&caller, &req.room_id, &req.message_id)
            .await?;
        Ok(Response::new(pb::DeleteMessageResponse {
            message: Some(message),
        }))
    }

    async fn create_attachment(
        &self,
        req: Request<pb::CreateAttachmentRequest>,
    ) -> Result<Response<pb::CreateAttachmentResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let (attachment, upload) = self
            .chat
            .create_attachment(
                &caller,
                &req.room_id,
                &req.file_name,
                &req.content_type,
                req.size_bytes,
            )
            .await?;
        Ok(Response::new(pb::CreateAttachmentResponse {
            attachment: Some(attachment),
            upload_url: upload.url,
            upload_method: upload.method,
            upload_headers: upload.headers.into_iter().collect(),
            expire_time: Some(expiry()),
        }))
    }

    async fn get_attachment(
        &self,
        req: Request<pb::GetAttachmentRequest>,
    ) -> Result<Response<pb::GetAttachmentResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let (attachment, url) = self
            .chat
            .attachment_url(&caller, &req.room_id, &req.attachment_id)
            .await?;
        Ok(Response::new(pb::GetAttachmentResponse {
            attachment: Some(attachment),
            download_url: url,
            expire_time: Some(expiry()),
        }))
    }

    async fn mark_read(
        &self,
        req: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let receipt = self
            .chat
            .mark_read(&caller, &req.room_id, &req.message_id)
            .await?;
        Ok(Response::new(pb::MarkReadResponse {
            receipt: Some(receipt),
        }))
    }

    type WatchRoomStream = Stream_<pb::WatchRoomResponse>;

    async fn watch_room(
        &self,
        req: Request<pb::WatchRoomRequest>,
    ) -> Result<Response<Self::WatchRoomStream>, Status> {
        let caller = caller(&req)?;
        let room_id = req.into_inner().room_id;
        let sub = self.follow(&caller, &room_id).await?;
        Ok(Response::new(events(sub, None, self.buffer, |event| {
            pb::WatchRoomResponse { event: Some(event) }
        })))
    }

    type ConnectStream = Stream_<pb::ConnectResponse>;

    async fn connect(
        &self,
        req: Request<Streaming<pb::ConnectRequest>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let caller = caller(&req)?;
        let mut inbound = req.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("room_id: send a first request naming the room")
        })?;
        if first.room_id.is_empty() {
            return Err(Error::invalid("room_id", "is required on the first request").into());
        }
        let room_id = first.room_id.clone();
        let sub = self.follow(&caller, &room_id).await?;
        let (finish_tx, finish_rx) = oneshot::channel();
        let chat = self.chat.clone();
        let tx = sub.tx.clone();
        let reader = tokio::spawn(async move {
            // Boxed: the reader waits idle most of the time, and should not
            // hold the space of a whole request meanwhile.
            Box::pin(handle(&chat, &caller, &room_id, first, &tx)).await;
            let end = loop {
                match inbound.message().await {
                    Ok(Some(req)) => Box::pin(handle(&chat, &caller, &room_id, req, &tx)).await,
                    // The client has sent all it will: finish once its
                    // acknowledgements are out.
                    Ok(None) => break None,
                    Err(status) => break Some(status),
                }
            };
            let _ = finish_tx.send(end);
        });
        let stream = events(sub, Some(finish_rx), self.buffer, |event| {
            pb::ConnectResponse { event: Some(event) }
        });
        // The reader stops when the client goes away.
        Ok(Response::new(Box::pin(AbortOnDrop {
            inner: stream,
            task: reader.abort_handle(),
        })))
    }

    async fn list_notifications(
        &self,
        req: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let limit = page_size(req.page_size);
        let before = cursor(&req.page_token)?;
        let store = &self.chat.store;
        let mut docs = store
            .notifications_page(&caller, before, req.unread_only, limit + 1)
            .await
            .map_err(rooms::db)?;
        let more = docs.len() as i64 > limit;
        docs.truncate(limit as usize);
        let next = if more {
            docs.last().map(|d| d.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        let unread = store
            .unread_notifications(&caller)
            .await
            .map_err(rooms::db)?;
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: docs.into_iter().map(rooms::notification).collect(),
            next_page_token: next,
            unread_count: i32::try_from(unread).unwrap_or(i32::MAX),
        }))
    }

    async fn mark_notifications_read(
        &self,
        req: Request<pb::MarkNotificationsReadRequest>,
    ) -> Result<Response<pb::MarkNotificationsReadResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let ids = match (req.all, req.ids.is_empty()) {
            (true, _) => None,
            (false, true) => {
                return Ok(Response::new(pb::MarkNotificationsReadResponse {
                    marked: 0,
                }));
            }
            (false, false) => Some(
                req.ids
                    .iter()
                    .map(|id| parse_id("ids", id).map(|u| u.to_string()))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let marked = self
            .chat
            .store
            .mark_notifications_read(&caller, ids)
            .await
            .map_err(rooms::db)?;
        Ok(Response::new(pb::MarkNotificationsReadResponse {
            marked: i32::try_from(marked).unwrap_or(i32::MAX),
        }))
    }

    type WatchNotificationsStream = Stream_<pb::WatchNotificationsResponse>;

    async fn watch_notifications(
        &self,
        req: Request<pb::WatchNotificationsRequest>,
    ) -> Result<Response<Self::WatchNotificationsStream>, Status> {
        let caller = caller(&req)?;
        let sub = self.chat.hub.subscribe_user(&caller);
        Ok(Response::new(events(sub, None, self.buffer, |n| {
            pb::WatchNotificationsResponse {
                notification: Some(n),
            }
        })))
    }

    async fn notify(
        &self,
        req: Request<pb::NotifyRequest>,
    ) -> Result<Response<pb::NotifyResponse>, Status> {
        let req = req.into_inner();
        let user = parse_id("user_id", &req.user_id)?.to_string();
        let text = req.text.trim();
        if text.is_empty() {
            return Err(Error::invalid("text", "is required").into());
        }
        if text.chars().count() > 500 {
            return Err(Error::invalid("text", "must be at most 500 characters").into());
        }
        if !req.room_id.is_empty() {
            parse_id("room_id", &req.room_id)?;
        }
        let n = self
            .chat
            .notify(
                &user,
                NotificationKind::System,
                "",
                &req.room_id,
                "",
                text.to_owned(),
            )
            .await?;
        Ok(Response::new(pb::NotifyResponse {
            notification: Some(n),
        }))
    }
}
