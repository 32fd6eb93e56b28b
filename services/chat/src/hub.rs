//! Fan-out: who is listening here, and the other replicas through Redis.
//!
//! Each replica keeps its own streams (room followers and notification
//! followers) and delivers what happens to them directly, so its clients
//! are served even while Redis is down. Everything is also published on one
//! Redis channel; the other replicas deliver it to their own streams.
//!
//! A stream's queue is bounded ([`crate::ChatConfig::subscriber_buffer`]):
//! a client that falls that far behind is cut off with RESOURCE_EXHAUSTED,
//! and the others are not held up by it.
//!
//! Presence lives in Redis (a sorted set per room of `user|replica` with an
//! expiry, refreshed while connected), so it is right across replicas; a
//! replica that cannot reach Redis knows only its own clients.
//!
//! After a Redis outage a replica catches up from MongoDB: it delivers to
//! its streams what changed while it could not hear the others, and asks
//! the others to do the same for what it could not tell them.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use agora_kit::{redis::SharedRedis, shutdown::Shutdown};
use agora_proto::chat::v1::{Notification, Presence, RoomEvent, room_event};
use fred::{
    interfaces::{
        ClientLike as _, EventInterface as _, PubsubInterface as _, SortedSetsInterface as _,
    },
    prelude::{Builder, Config, ReconnectPolicy},
};
use prost::Message as _;
use tokio::sync::mpsc;

/// How long a presence entry lives unless refreshed.
const PRESENCE_TTL: Duration = Duration::from_secs(30);
/// How often a replica refreshes the presence of its clients.
const PRESENCE_REFRESH: Duration = Duration::from_secs(10);
/// Message versions remembered per room, so a catch-up does not deliver
/// twice what Redis already brought.
const RECENT_PER_ROOM: usize = 512;
/// Most messages delivered per catch-up.
const CATCH_UP_LIMIT: i64 = 5_000;

/// What replicas tell each other.
#[derive(Clone, PartialEq, prost::Message)]
struct Envelope {
    /// The replica that published it (which ignores its own).
    #[prost(string, tag = "1")]
    origin: String,
    #[prost(message, optional, tag = "2")]
    event: Option<RoomEvent>,
    #[prost(message, optional, tag = "3")]
    notification: Option<Notification>,
    /// `room|user`: that user is no longer a member; end their streams.
    #[prost(string, tag = "4")]
    removed: String,
    /// Catch up from MongoDB on what changed since (ms since the epoch).
    #[prost(int64, tag = "5")]
    resync_since_ms: i64,
}

/// Why a stream was ended by the hub.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Open = 0,
    /// Its client fell behind by the whole queue.
    TooSlow = 1,
    /// Its user left or was removed from the room.
    Removed = 2,
}

/// A stream's end reason, shared between the hub and the stream.
#[derive(Default)]
pub struct EndReason(AtomicU8);

impl EndReason {
    fn set(&self, why: Ended) {
        self.0.store(why as u8, Ordering::Release);
    }

    pub fn get(&self) -> Ended {
        match self.0.load(Ordering::Acquire) {
            1 => Ended::TooSlow,
            2 => Ended::Removed,
            _ => Ended::Open,
        }
    }
}

struct Sub<T> {
    id: u64,
    user_id: String,
    tx: mpsc::Sender<Arc<T>>,
    ended: Arc<EndReason>,
}

/// Local streams of one kind, by key (room or user).
struct Subs<T> {
    by_key: HashMap<String, Vec<Sub<T>>>,
}

impl<T> Default for Subs<T> {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
        }
    }
}

impl<T> Subs<T> {
    /// Delivers to every stream of `key`; cuts off those whose queue is
    /// full. Returns the users of the streams cut off.
    fn deliver(&mut self, key: &str, item: &Arc<T>) -> Vec<String> {
        let mut cut = Vec::new();
        if let Some(subs) = self.by_key.get_mut(key) {
            subs.retain(|s| match s.tx.try_send(item.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.ended.set(Ended::TooSlow);
                    metrics::counter!("agora_chat_slow_consumers_total").increment(1);
                    cut.push(s.user_id.clone());
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
            if subs.is_empty() {
                self.by_key.remove(key);
            }
        }
        cut
    }

    fn remove(&mut self, key: &str, id: u64) {
        if let Some(subs) = self.by_key.get_mut(key) {
            subs.retain(|s| s.id != id);
            if subs.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    /// Ends the streams of `user` under `key`.
    fn end_user(&mut self, key: &str, user: &str, why: Ended) {
        if let Some(subs) = self.by_key.get_mut(key) {
            subs.retain(|s| {
                if s.user_id == user {
                    s.ended.set(why);
                    false
                } else {
                    true
                }
            });
            if subs.is_empty() {
                self.by_key.remove(key);
            }
        }
    }
}

#[derive(Default)]
struct Local {
    rooms: Subs<RoomEvent>,
    users: Subs<Notification>,
    /// Open streams per (room, user), for presence.
    present: HashMap<(String, String), usize>,
    /// Recently delivered message versions per room.
    recent: HashMap<String, (VecDeque<String>, HashSet<String>)>,
}

impl Local {
    /// Remembers a message version; false when it was already delivered.
    fn first_delivery(&mut self, room: &str, version: String) -> bool {
        let (order, seen) = self.recent.entry(room.to_owned()).or_default();
        if !seen.insert(version.clone()) {
            return false;
        }
        order.push_back(version);
        if order.len() > RECENT_PER_ROOM
            && let Some(old) = order.pop_front()
        {
            seen.remove(&old);
        }
        true
    }
}

/// The version of a message event: id and what happened to it.
fn version(event: &RoomEvent) -> Option<String> {
    let (tag, m) = match event.event.as_ref()? {
        room_event::Event::Message(m) => ("m", m),
        room_event::Event::Edited(m) => ("e", m),
        room_event::Event::Deleted(m) => ("d", m),
        _ => return None,
    };
    let at = m
        .edit_time
        .as_ref()
        .map_or(0, |t| t.seconds * 1_000 + i64::from(t.nanos / 1_000_000));
    Some(format!("{tag}{}@{at}", m.id))
}

/// A room stream's receiving end; leaving the room's hub when dropped.
pub struct Subscription<T> {
    pub rx: mpsc::Receiver<Arc<T>>,
    /// Where the stream's own answers (acks) go, in order with the rest.
    /// Weak: once the hub lets go of the stream, `rx` ends.
    pub tx: mpsc::WeakSender<Arc<T>>,
    pub ended: Arc<EndReason>,
    leave: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        if let Some(leave) = self.leave.take() {
            leave();
        }
    }
}

/// Reads catch-up data; implemented by the service over its store.
pub trait CatchUp: Send + Sync + 'static {
    /// Events for what changed in `rooms` since `since_ms`.
    fn since(
        &self,
        rooms: Vec<String>,
        since_ms: i64,
        limit: i64,
    ) -> futures::future::BoxFuture<'static, anyhow::Result<Vec<RoomEvent>>>;
}

pub struct Hub {
    replica: String,
    local: Mutex<Local>,
    next_id: AtomicU64,
    buffer: usize,
    channel: String,
    presence_prefix: String,
    redis: Option<Arc<SharedRedis>>,
    /// When this replica last lost its subscription (ms since the epoch; 0
    /// while connected).
    lost_at: AtomicI64,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Hub {
    /// A hub publishing through `redis` (none: this replica alone) on
    /// channels under `prefix`; each stream queues up to `buffer` events.
    pub fn new(redis: Option<Arc<SharedRedis>>, prefix: &str, buffer: usize) -> Arc<Self> {
        Arc::new(Self {
            replica: uuid::Uuid::new_v4().to_string(),
            local: Mutex::default(),
            next_id: AtomicU64::new(1),
            buffer,
            channel: format!("{prefix}events"),
            presence_prefix: format!("{prefix}presence:"),
            redis,
            lost_at: AtomicI64::new(0),
        })
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows `room` as `user`, with `first` as the stream's first event.
    /// The user counts as online in the room while the subscription lives.
    pub fn subscribe_room(
        self: &Arc<Self>,
        room: &str,
        user: &str,
        first: RoomEvent,
    ) -> Subscription<RoomEvent> {
        let (tx, rx) = mpsc::channel(self.buffer);
        // Before anything the hub delivers.
        let _ = tx.try_send(Arc::new(first));
        let ended = Arc::new(EndReason::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let first_here = {
            let mut local = self.local();
            local
                .rooms
                .by_key
                .entry(room.to_owned())
                .or_default()
                .push(Sub {
                    id,
                    user_id: user.to_owned(),
                    tx: tx.clone(),
                    ended: ended.clone(),
                });
            let count = local
                .present
                .entry((room.to_owned(), user.to_owned()))
                .or_default();
            *count += 1;
            *count == 1
        };
        if first_here {
            let hub = self.clone();
            let (room, user) = (room.to_owned(), user.to_owned());
            tokio::spawn(async move { hub.came_online(room, user).await });
        }
        metrics::gauge!("agora_chat_streams_open", "kind" => "room").increment(1.0);
        let hub = self.clone();
        let (room, user) = (room.to_owned(), user.to_owned());
        Subscription {
            rx,
            tx: tx.downgrade(),
            ended,
            leave: Some(Box::new(move || {
                metrics::gauge!("agora_chat_streams_open", "kind" => "room").decrement(1.0);
                let last_here = {
                    let mut local = hub.local();
                    local.rooms.remove(&room, id);
                    let key = (room.clone(), user.clone());
                    match local.present.get_mut(&key) {
                        Some(n) if *n > 1 => {
                            *n -= 1;
                            false
                        }
                        Some(_) => {
                            local.present.remove(&key);
                            true
                        }
                        None => false,
                    }
                };
                if last_here && let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let hub = hub.clone();
                    rt.spawn(async move { hub.went_offline(room, user).await });
                }
            })),
        }
    }

    /// Follows the notifications of `user`.
    pub fn subscribe_user(self: &Arc<Self>, user: &str) -> Subscription<Notification> {
        let (tx, rx) = mpsc::channel(self.buffer);
        let ended = Arc::new(EndReason::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.local()
            .users
            .by_key
            .entry(user.to_owned())
            .or_default()
            .push(Sub {
                id,
                user_id: user.to_owned(),
                tx: tx.clone(),
                ended: ended.clone(),
            });
        metrics::gauge!("agora_chat_streams_open", "kind" => "notifications").increment(1.0);
        let hub = self.clone();
        let user = user.to_owned();
        Subscription {
            rx,
            tx: tx.downgrade(),
            ended,
            leave: Some(Box::new(move || {
                metrics::gauge!("agora_chat_streams_open", "kind" => "notifications")
                    .decrement(1.0);
                hub.local().users.remove(&user, id);
            })),
        }
    }

    /// Delivers `event` here and to the other replicas.
    pub async fn publish(&self, event: RoomEvent) {
        self.deliver_event(event.clone());
        self.broadcast(Envelope {
            event: Some(event),
            ..self.envelope()
        })
        .await;
    }

    /// Delivers a notification to its user's streams, here and elsewhere.
    pub async fn notify(&self, n: Notification) {
        self.deliver_notification(n.clone());
        self.broadcast(Envelope {
            notification: Some(n),
            ..self.envelope()
        })
        .await;
    }

    /// Ends the streams of a user who is no longer a member of `room`.
    pub async fn removed(&self, room: &str, user: &str) {
        self.local().rooms.end_user(room, user, Ended::Removed);
        self.broadcast(Envelope {
            removed: format!("{room}|{user}"),
            ..self.envelope()
        })
        .await;
    }

    fn envelope(&self) -> Envelope {
        Envelope {
            origin: self.replica.clone(),
            ..Envelope::default()
        }
    }

    fn deliver_event(&self, event: RoomEvent) {
        let room = event.room_id.clone();
        let mut local = self.local();
        if let Some(v) = version(&event)
            && !local.first_delivery(&room, v)
        {
            return;
        }
        let event = Arc::new(event);
        local.rooms.deliver(&room, &event);
    }

    fn deliver_notification(&self, n: Notification) {
        let user = n.user_id.clone();
        self.local().users.deliver(&user, &Arc::new(n));
    }

    async fn broadcast(&self, envelope: Envelope) {
        let Some(redis) = &self.redis else { return };
        let Some(client) = redis.client() else {
            self.mark_lost();
            return;
        };
        let payload = envelope.encode_to_vec();
        let sent: Result<i64, _> = agora_kit::redis::traced(
            "PUBLISH",
            fred::interfaces::PubsubInterface::publish(client, &self.channel, payload),
        )
        .await;
        if let Err(e) = sent {
            redis.failed("PUBLISH", &e);
            self.mark_lost();
        }
    }

    fn mark_lost(&self) {
        let _ = self
            .lost_at
            .compare_exchange(0, now_ms(), Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Who is online in `room`: across replicas when Redis answers, else
    /// those connected here.
    pub async fn online(&self, room: &str) -> Vec<String> {
        let mut users: Vec<String> = self
            .local()
            .present
            .keys()
            .filter(|(r, _)| r == room)
            .map(|(_, u)| u.clone())
            .collect();
        if let Some(redis) = &self.redis
            && let Some(client) = redis.client()
        {
            let key = format!("{}{room}", self.presence_prefix);
            let found: Result<Vec<String>, _> = agora_kit::redis::traced(
                "ZRANGEBYSCORE",
                client.zrangebyscore(&key, now_ms() as f64, "+inf", false, None),
            )
            .await;
            match found {
                Ok(entries) => users.extend(
                    entries
                        .into_iter()
                        .filter_map(|e| e.split_once('|').map(|(u, _)| u.to_owned())),
                ),
                Err(e) => redis.failed("ZRANGEBYSCORE", &e),
            }
        }
        users.sort();
        users.dedup();
        users
    }

    async fn came_online(&self, room: String, user: String) {
        let was_online = self.online_elsewhere(&room, &user).await;
        self.refresh_presence(&room, std::slice::from_ref(&user))
            .await;
        if !was_online {
            self.publish(presence(&room, &user, true)).await;
        }
    }

    async fn went_offline(&self, room: String, user: String) {
        if let Some(redis) = &self.redis
            && let Some(client) = redis.client()
        {
            let key = format!("{}{room}", self.presence_prefix);
            let member = format!("{user}|{}", self.replica);
            if let Err(e) =
                agora_kit::redis::traced("ZREM", client.zrem::<i64, _, _>(&key, member)).await
            {
                redis.failed("ZREM", &e);
            }
        }
        // Connected again meanwhile, here or elsewhere: still online.
        let here = self
            .local()
            .present
            .contains_key(&(room.clone(), user.clone()));
        if !here && !self.online_elsewhere(&room, &user).await {
            self.publish(presence(&room, &user, false)).await;
        }
    }

    /// Whether another replica holds a live presence entry of `user`.
    async fn online_elsewhere(&self, room: &str, user: &str) -> bool {
        let Some(redis) = &self.redis else {
            return false;
        };
        let Some(client) = redis.client() else {
            return false;
        };
        let key = format!("{}{room}", self.presence_prefix);
        let found: Result<Vec<String>, _> = agora_kit::redis::traced(
            "ZRANGEBYSCORE",
            client.zrangebyscore(&key, now_ms() as f64, "+inf", false, None),
        )
        .await;
        match found {
            Ok(entries) => entries.iter().any(|e| {
                e.split_once('|')
                    .is_some_and(|(u, r)| u == user && r != self.replica)
            }),
            Err(e) => {
                redis.failed("ZRANGEBYSCORE", &e);
                false
            }
        }
    }

    /// Marks `users` online in `room` for another [`PRESENCE_TTL`], in one
    /// write for them all, and drops entries that expired.
    async fn refresh_presence(&self, room: &str, users: &[String]) {
        let Some(redis) = &self.redis else { return };
        let Some(client) = redis.client() else { return };
        if users.is_empty() {
            return;
        }
        let key = format!("{}{room}", self.presence_prefix);
        let expiry = (now_ms() + PRESENCE_TTL.as_millis() as i64) as f64;
        let members: Vec<(f64, String)> = users
            .iter()
            .map(|user| (expiry, format!("{user}|{}", self.replica)))
            .collect();
        let added: Result<i64, _> =
            agora_kit::redis::traced("ZADD", client.zadd(&key, None, None, false, false, members))
                .await;
        if let Err(e) = added {
            redis.failed("ZADD", &e);
            return;
        }
        // Entries of replicas that died without cleaning up expire.
        let _: Result<i64, _> = client.zremrangebyscore(&key, "-inf", now_ms() as f64).await;
        let _: Result<bool, _> = fred::interfaces::KeysInterface::expire(
            client,
            &key,
            PRESENCE_TTL.as_secs() as i64 * 2,
            None,
        )
        .await;
    }

    /// Listens to the other replicas and keeps presence fresh, until
    /// `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        redis_url: String,
        catch_up: Arc<dyn CatchUp>,
        shutdown: Shutdown,
    ) {
        let refresher = {
            let hub = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PRESENCE_REFRESH);
                loop {
                    tokio::select! {
                        () = shutdown.stopping() => return,
                        _ = tick.tick() => {}
                    }
                    // One write per room, for every user present here.
                    let mut by_room: HashMap<String, Vec<String>> = HashMap::new();
                    for (room, user) in hub.local().present.keys() {
                        by_room.entry(room.clone()).or_default().push(user.clone());
                    }
                    for (room, users) in by_room {
                        hub.refresh_presence(&room, &users).await;
                    }
                }
            })
        };
        if self.redis.is_some() && !redis_url.is_empty() {
            self.listen(&redis_url, catch_up, &shutdown).await;
        } else {
            shutdown.stopping().await;
        }
        refresher.abort();
    }

    async fn listen(self: &Arc<Self>, url: &str, catch_up: Arc<dyn CatchUp>, shutdown: &Shutdown) {
        let subscriber = match Config::from_url(url).and_then(|config| {
            Builder::from_config(config)
                .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
                .build_subscriber_client()
        }) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the chat fan-out subscriber; this replica serves only its own clients");
                shutdown.stopping().await;
                return;
            }
        };
        let mut messages = subscriber.message_rx();
        let mut reconnects = subscriber.reconnect_rx();
        let mut errors = subscriber.error_rx();
        let _connection = subscriber.init().await.map_err(|e| {
            tracing::warn!(error = %e, "Redis is not reachable; chat fan-out waits for it");
            self.mark_lost();
        });
        // Resubscribes after every reconnection.
        let _resubscribe = subscriber.manage_subscriptions();
        if let Err(e) = subscriber.subscribe(&self.channel).await {
            tracing::warn!(error = %e, "cannot subscribe to the chat fan-out channel yet");
            self.mark_lost();
        }
        loop {
            tokio::select! {
                () = shutdown.stopping() => break,
                msg = messages.recv() => match msg {
                    Ok(msg) => {
                        let Some(bytes) = msg.value.as_bytes() else { continue };
                        match Envelope::decode(bytes) {
                            Ok(env) => self.receive(env, &catch_up),
                            Err(e) => tracing::warn!(error = %e, "unreadable fan-out message"),
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "fan-out fell behind; catching up from MongoDB");
                        self.mark_lost();
                    }
                    Err(_) => break,
                },
                err = errors.recv() => if err.is_ok() {
                    self.mark_lost();
                },
                re = reconnects.recv() => if re.is_ok() {
                    let since = self.lost_at.swap(0, Ordering::AcqRel);
                    if since > 0 {
                        // A margin covers clocks that differ a little.
                        let since = since - 5_000;
                        tracing::info!("chat fan-out reconnected; catching up");
                        self.catch_up(since, &catch_up).await;
                        self.broadcast(Envelope {
                            resync_since_ms: since,
                            ..self.envelope()
                        })
                        .await;
                    }
                },
            }
        }
        let _ = subscriber.quit().await;
    }

    fn receive(self: &Arc<Self>, env: Envelope, catch_up: &Arc<dyn CatchUp>) {
        if env.origin == self.replica {
            return;
        }
        if let Some(event) = env.event {
            self.deliver_event(event);
        }
        if let Some(n) = env.notification {
            self.deliver_notification(n);
        }
        if let Some((room, user)) = env.removed.split_once('|') {
            self.local().rooms.end_user(room, user, Ended::Removed);
        }
        if env.resync_since_ms > 0 {
            let hub = self.clone();
            let catch_up = catch_up.clone();
            tokio::spawn(async move { hub.catch_up(env.resync_since_ms, &catch_up).await });
        }
    }

    /// Delivers what changed since `since_ms` in the rooms followed here
    /// and was not delivered yet.
    async fn catch_up(&self, since_ms: i64, catch_up: &Arc<dyn CatchUp>) {
        let rooms: Vec<String> = self.local().rooms.by_key.keys().cloned().collect();
        if rooms.is_empty() {
            return;
        }
        match catch_up.since(rooms, since_ms, CATCH_UP_LIMIT).await {
            Ok(events) => {
                metrics::counter!("agora_chat_catch_up_events_total")
                    .increment(events.len() as u64);
                for event in events {
                    self.deliver_event(event);
                }
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "cannot catch up from MongoDB"),
        }
    }
}

fn presence(room: &str, user: &str, online: bool) -> RoomEvent {
    RoomEvent {
        room_id: room.to_owned(),
        event: Some(room_event::Event::Presence(Presence {
            user_id: user.to_owned(),
            online,
        })),
    }
}
