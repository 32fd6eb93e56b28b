//! Chat through the edge as its users meet it: REST, WebSockets, SSE and
//! NDJSON streams, and direct gRPC; against the MongoDB-wire server and
//! Redis, with two replicas where fan-out is the point.

mod common;

use std::time::Duration;

use common::{TestMesh, spawn_mesh, spawn_mesh_with};
use futures::{SinkExt as _, StreamExt as _};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{Message as Ws, client::IntoClientRequest as _},
};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a test waits for something that should arrive at once.
const WAIT: Duration = Duration::from_secs(10);

/// Server logs (errors) go to the test's output.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
}

async fn user(mesh: &TestMesh, name: &str) -> (String, String) {
    logs();
    mesh.customer(&format!(
        "{name}-{}@example.com",
        uuid::Uuid::new_v4().simple()
    ))
    .await
}

async fn group(mesh: &TestMesh, token: &str, name: &str, members: &[&str]) -> String {
    let r = mesh
        .post(
            "/api/v1/chat/rooms",
            Some(token),
            json!({"name": name, "memberIds": members}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body["id"].as_str().expect("room id").to_owned()
}

fn ws_url(mesh: &TestMesh, path: &str) -> String {
    mesh.url(path).replacen("http://", "ws://", 1)
}

async fn ws(mesh: &TestMesh, path: &str, token: &str) -> Socket {
    ws_at(&ws_url(mesh, path), token).await
}

/// A WebSocket to `url` (ws://…) with a bearer token.
async fn ws_at(url: &str, token: &str) -> Socket {
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let (socket, resp) = connect_async(req).await.expect("upgrade");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    socket
}

/// A generated chat client straight to a chat server at `url`.
async fn chat_client(
    url: String,
) -> agora_proto::chat::v1::chat_service_client::ChatServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("url")
        .connect()
        .await
        .expect("connects");
    agora_proto::chat::v1::chat_service_client::ChatServiceClient::new(channel)
}

/// Posts `body` over REST as the holder of `token`.
async fn say(
    mesh: &TestMesh,
    token: &str,
    room: &str,
    client_id: &str,
    body: &str,
) -> common::Reply {
    mesh.post(
        &format!("/api/v1/chat/rooms/{room}/messages"),
        Some(token),
        json!({"clientId": client_id, "body": body}),
    )
    .await
}

/// The next JSON text frame (pings are answered by the client library).
async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("frame");
        match frame {
            Ws::Text(t) => return serde_json::from_str(&t).expect("JSON frame"),
            Ws::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

/// Reads frames until one satisfies `want`.
async fn until(socket: &mut Socket, want: impl Fn(&Value) -> bool) -> Value {
    loop {
        let v = next_json(socket).await;
        if want(&v) {
            return v;
        }
    }
}

async fn send(socket: &mut Socket, v: Value) {
    socket
        .send(Ws::Text(v.to_string().into()))
        .await
        .expect("sent");
}

#[tokio::test]
async fn two_users_in_a_room_see_messages_typing_and_presence_over_websockets() {
    let mesh = spawn_mesh().await;
    let (ana_id, ana) = user(&mesh, "ana").await;
    let (bo_id, bo) = user(&mesh, "bo").await;
    let room = group(&mesh, &ana, "support", &[&bo_id]).await;
    let path = format!("/api/v1/chat/rooms/{room}/ws");

    let mut a = ws(&mesh, &path, &ana).await;
    let ready = next_json(&mut a).await;
    assert_eq!(ready["roomId"], room);
    assert_eq!(ready["ready"]["onlineUserIds"], json!([ana_id]));

    // Browsers send the token in the query.
    let (mut b, _) = connect_async(format!("{}?access_token={bo}", ws_url(&mesh, &path)))
        .await
        .expect("upgrade with a query token");
    let ready = next_json(&mut b).await;
    let online = ready["ready"]["onlineUserIds"]
        .as_array()
        .expect("list")
        .clone();
    assert!(
        online.contains(&json!(ana_id)) && online.contains(&json!(bo_id)),
        "{ready}"
    );
    let joined = until(&mut a, |v| v["presence"]["userId"] == bo_id).await;
    assert_eq!(joined["presence"], json!({"userId": bo_id, "online": true}));

    send(&mut b, json!({"typing": {"typing": true}})).await;
    let typing = until(&mut a, |v| v.get("typing").is_some()).await;
    assert_eq!(typing["typing"], json!({"userId": bo_id, "typing": true}));

    send(
        &mut b,
        json!({"send": {"clientId": "b-1", "body": "hello ana"}}),
    )
    .await;
    let ack = until(&mut b, |v| v.get("ack").is_some()).await;
    assert_eq!(ack["ack"]["clientId"], "b-1");
    assert_eq!(ack["ack"]["duplicate"], false);
    let got = until(&mut a, |v| v.get("message").is_some()).await;
    assert_eq!(got["message"]["body"], "hello ana");
    assert_eq!(got["message"]["senderId"], bo_id);
    assert_eq!(got["message"]["id"], ack["ack"]["messageId"]);

    // A message posted over REST reaches the sockets too.
    let r = say(&mesh, &ana, &room, "a-1", "hi bo").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let got = until(&mut b, |v| v.get("message").is_some()).await;
    assert_eq!(got["message"]["body"], "hi bo");

    b.close(None).await.expect("close");
    let left = until(&mut a, |v| v["presence"]["userId"] == bo_id).await;
    assert_eq!(left["presence"], json!({"userId": bo_id, "online": false}));
    drop(a);
    mesh.stop().await;
}

#[tokio::test]
async fn a_resend_with_the_same_client_id_after_reconnecting_is_not_a_duplicate() {
    let mesh = spawn_mesh().await;
    let (_, ana) = user(&mesh, "ana").await;
    let room = group(&mesh, &ana, "notes", &[]).await;
    let path = format!("/api/v1/chat/rooms/{room}/ws");

    let mut a = ws(&mesh, &path, &ana).await;
    send(
        &mut a,
        json!({"send": {"clientId": "c-7", "body": "only once"}}),
    )
    .await;
    let first = until(&mut a, |v| v.get("ack").is_some()).await;
    // The connection drops before the client could trust the ack.
    drop(a);
    let mut a = ws(&mesh, &path, &ana).await;
    send(
        &mut a,
        json!({"send": {"clientId": "c-7", "body": "only once"}}),
    )
    .await;
    let again = until(&mut a, |v| v.get("ack").is_some()).await;
    assert_eq!(again["ack"]["messageId"], first["ack"]["messageId"]);
    assert_eq!(again["ack"]["duplicate"], true);

    let history = mesh
        .get(&format!("/api/v1/chat/rooms/{room}/messages"), Some(&ana))
        .await;
    assert_eq!(history.body["messages"].as_array().expect("list").len(), 1);
    drop(a);
    mesh.stop().await;
}

#[tokio::test]
async fn non_members_are_refused_at_the_upgrade_and_bad_frames_do_not_end_the_socket() {
    let mesh = spawn_mesh().await;
    let (_, ana) = user(&mesh, "ana").await;
    let (_, eve) = user(&mesh, "eve").await;
    let room = group(&mesh, &ana, "private", &[]).await;
    let path = format!("/api/v1/chat/rooms/{room}/ws");

    let mut req = ws_url(&mesh, &path).into_client_request().expect("request");
    req.headers_mut()
        .insert("authorization", format!("Bearer {eve}").parse().expect("h"));
    match connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        }
        other => panic!("a non-member must be refused: {other:?}"),
    }
    match connect_async(ws_url(&mesh, &path)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        }
        other => panic!("no token must be refused: {other:?}"),
    }
    // A plain GET on the WebSocket path says what it is.
    let plain = mesh.get(&path, Some(&ana)).await;
    assert_eq!(
        plain.status,
        StatusCode::UPGRADE_REQUIRED,
        "{:?}",
        plain.body
    );

    let mut a = ws(&mesh, &path, &ana).await;
    next_json(&mut a).await;
    a.send(Ws::Text("{not json".into())).await.expect("sent");
    let err = until(&mut a, |v| v.get("error").is_some()).await;
    assert_eq!(err["error"]["code"], 3, "{err}");
    send(&mut a, json!({"sned": {}})).await;
    let err = until(&mut a, |v| v.get("error").is_some()).await;
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("sned"),
        "{err}"
    );
    // A refused message is answered on the stream, which goes on.
    send(&mut a, json!({"send": {"clientId": "x", "body": "  "}})).await;
    let refused = until(&mut a, |v| v.get("error").is_some()).await;
    assert_eq!(refused["error"]["clientId"], "x");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("body"),
        "{refused}"
    );
    send(
        &mut a,
        json!({"send": {"clientId": "ok", "body": "still here"}}),
    )
    .await;
    let ack = until(&mut a, |v| v.get("ack").is_some()).await;
    assert_eq!(ack["ack"]["clientId"], "ok");
    drop(a);
    mesh.stop().await;
}

#[tokio::test]
async fn history_pages_newest_first_and_edits_and_deletes_show() {
    let mesh = spawn_mesh().await;
    let (_, ana) = user(&mesh, "ana").await;
    let (bo_id, bo) = user(&mesh, "bo").await;
    let room = group(&mesh, &ana, "history", &[&bo_id]).await;
    let messages = format!("/api/v1/chat/rooms/{room}/messages");
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = mesh
            .post(
                &messages,
                Some(&ana),
                json!({"clientId": format!("m{i}"), "body": format!("message {i}")}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        ids.push(r.body["id"].as_str().expect("id").to_owned());
    }
    let page = mesh.get(&format!("{messages}?pageSize=2"), Some(&bo)).await;
    let bodies: Vec<&str> = page.body["messages"]
        .as_array()
        .expect("list")
        .iter()
        .map(|m| m["body"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(bodies, ["message 4", "message 3"]);
    let token = page.body["nextPageToken"]
        .as_str()
        .expect("more")
        .to_owned();
    let page = mesh
        .get(
            &format!("{messages}?pageSize=2&pageToken={token}"),
            Some(&bo),
        )
        .await;
    assert_eq!(page.body["messages"][0]["body"], "message 2");

    // Unread counts and the last message in the room list.
    let rooms = mesh.get("/api/v1/chat/rooms", Some(&bo)).await;
    assert_eq!(rooms.body["rooms"][0]["unreadCount"], 5, "{:?}", rooms.body);
    assert_eq!(rooms.body["rooms"][0]["lastMessage"]["body"], "message 4");
    let r = mesh
        .post(
            &format!("/api/v1/chat/rooms/{room}:markRead"),
            Some(&bo),
            json!({"messageId": ids[2]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let rooms = mesh.get("/api/v1/chat/rooms", Some(&bo)).await;
    assert_eq!(rooms.body["rooms"][0]["unreadCount"], 2);

    let edited = mesh
        .call(
            Method::PATCH,
            &format!("{messages}/{}", ids[4]),
            Some(&ana),
            json!({"body": "message four"}),
        )
        .await;
    assert_eq!(edited.status, StatusCode::OK, "{:?}", edited.body);
    assert!(edited.body["editTime"].is_string());
    let not_mine = mesh
        .call(
            Method::PATCH,
            &format!("{messages}/{}", ids[4]),
            Some(&bo),
            json!({"body": "x"}),
        )
        .await;
    assert_eq!(not_mine.status, StatusCode::FORBIDDEN);
    let deleted = mesh
        .call(
            Method::DELETE,
            &format!("{messages}/{}", ids[3]),
            Some(&ana),
            json!({}),
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    let page = mesh.get(&format!("{messages}?pageSize=2"), Some(&bo)).await;
    assert_eq!(page.body["messages"][0]["body"], "message four");
    assert_eq!(page.body["messages"][1]["deleted"], true);
    assert_eq!(page.body["messages"][1]["body"], "");

    // Members must be users.
    let stranger = uuid::Uuid::new_v4().to_string();
    let r = mesh
        .post(
            "/api/v1/chat/rooms",
            Some(&ana),
            json!({"name": "ghosts", "memberIds": [stranger]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    assert!(r.message().contains("is not a user"), "{:?}", r.body);
    let r = mesh
        .post(
            &format!("/api/v1/chat/rooms/{room}/members"),
            Some(&ana),
            json!({"userIds": [stranger]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);

    // Outsiders do not learn the room exists.
    let (_, eve) = user(&mesh, "eve").await;
    let r = mesh.get(&messages, Some(&eve)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    mesh.stop().await;
}

#[tokio::test]
async fn stored_messages_hold_ciphertext_only() {
    let mesh = spawn_mesh().await;
    let (_, ana) = user(&mesh, "ana").await;
    let room = group(&mesh, &ana, "secret", &[]).await;
    let secret = "the launch code is 0000";
    let r = say(&mesh, &ana, &room, "s", secret).await;
    assert_eq!(r.status, StatusCode::OK);
    let client = mongodb::Client::with_uri_str(common::mongodb_uri(&mesh.db_name))
        .await
        .expect("mongo");
    let raw: mongodb::bson::Document = client
        .database(&mesh.db_name)
        .collection("messages")
        .find_one(mongodb::bson::doc! {"room_id": &room})
        .await
        .expect("query")
        .expect("stored");
    let bytes = mongodb::bson::to_vec(&raw).expect("bson");
    assert!(
        !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "{raw}"
    );
    assert!(!bytes.windows(6).any(|w| w == b"launch"), "{raw}");
    assert!(raw.contains_key("ciphertext") && raw.contains_key("nonce") && raw.contains_key("kid"));
    mesh.stop().await;
}

/// Reads an SSE or NDJSON body as lines until it ends.
async fn read_stream(mut resp: reqwest::Response) -> Vec<String> {
    let mut text = String::new();
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout(WAIT, resp.chunk()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text.lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn sse_and_ndjson_streams_deliver_events_and_end_with_the_error() {
    let mesh = spawn_mesh().await;
    let (_, ana) = user(&mesh, "ana").await;
    let (bo_id, bo) = user(&mesh, "bo").await;
    let (cy_id, cy) = user(&mesh, "cy").await;
    let room = group(&mesh, &ana, "streams", &[&bo_id, &cy_id]).await;
    let events = mesh.url(&format!("/api/v1/chat/rooms/{room}/events"));
    let sse = mesh
        .http
        .get(&events)
        .bearer_auth(&bo)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("sse");
    assert_eq!(sse.status(), StatusCode::OK);
    assert!(
        sse.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/event-stream")
    );
    let ndjson = mesh
        .http
        .get(&events)
        .bearer_auth(&cy)
        .send()
        .await
        .expect("ndjson");
    assert_eq!(ndjson.headers()["content-type"], "application/x-ndjson");
    let sse = tokio::spawn(read_stream(sse));
    let ndjson = tokio::spawn(read_stream(ndjson));
    // Both streams are open once their `ready` events went out; the
    // message must find them subscribed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = say(&mesh, &ana, &room, "1", "to the streams").await;
    assert_eq!(r.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Removing the members ends their streams with the reason.
    for id in [&bo_id, &cy_id] {
        let r = mesh
            .call(
                Method::DELETE,
                &format!("/api/v1/chat/rooms/{room}/members/{id}"),
                Some(&ana),
                json!({}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }

    let lines = sse.await.expect("sse read");
    let data: Vec<Value> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(|d| serde_json::from_str(d.trim()).expect("event data is JSON"))
        .collect();
    assert!(data[0].get("ready").is_some(), "{lines:?}");
    assert!(
        data.iter()
            .any(|d| d["message"]["body"] == "to the streams"),
        "{lines:?}"
    );
    let error_at = lines
        .iter()
        .position(|l| l == "event: error")
        .expect("an error event");
    let last = data.last().expect("data");
    assert_eq!(last["code"], 5, "{lines:?}");
    assert!(error_at < lines.len());

    let lines = ndjson.await.expect("ndjson read");
    let values: Vec<Value> = lines
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert!(
        values
            .iter()
            .any(|v| v["message"]["body"] == "to the streams"),
        "{lines:?}"
    );
    let last = values.last().expect("lines");
    assert_eq!(last["error"]["code"], 5, "{lines:?}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("no longer a member")
    );
    mesh.stop().await;
}

#[tokio::test]
async fn a_mention_reaches_the_mentioned_users_notification_stream() {
    let mesh = spawn_mesh().await;
    let (_, ana) = user(&mesh, "ana").await;
    let (bo_id, bo) = user(&mesh, "bo").await;
    let mut notes = ws(&mesh, "/api/v1/notifications/ws", &bo).await;
    let room = group(&mesh, &ana, "mentions", &[&bo_id]).await;
    let invited = next_json(&mut notes).await;
    assert_eq!(invited["kind"], "NOTIFICATION_KIND_ROOM_INVITATION");
    assert_eq!(invited["text"], "Test User added you to mentions");
    assert_eq!(invited["roomId"], room);
    let r = mesh
        .post(
            &format!("/api/v1/chat/rooms/{room}/messages"),
            Some(&ana),
            json!({"clientId": "m", "body": "look at this, bo", "mentionIds": [bo_id]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let mention = next_json(&mut notes).await;
    assert_eq!(mention["kind"], "NOTIFICATION_KIND_MENTION");
    assert_eq!(mention["messageId"], r.body["id"]);

    let list = mesh
        .get("/api/v1/notifications?unreadOnly=true", Some(&bo))
        .await;
    assert_eq!(list.body["unreadCount"], 2, "{:?}", list.body);
    let r = mesh
        .post(
            "/api/v1/notifications:markRead",
            Some(&bo),
            json!({"all": true}),
        )
        .await;
    assert_eq!(r.body["marked"], 2);
    let list = mesh.get("/api/v1/notifications", Some(&bo)).await;
    assert_eq!(list.body["unreadCount"], 0);
    assert_eq!(
        list.body["notifications"].as_array().expect("list").len(),
        2
    );
    drop(notes);
    mesh.stop().await;
}

#[tokio::test]
async fn a_message_posted_on_one_replica_reaches_streams_on_another() {
    let mesh = spawn_mesh().await;
    let (_, ana) = user(&mesh, "ana").await;
    let (bo_id, bo) = user(&mesh, "bo").await;
    let room = group(&mesh, &ana, "replicas", &[&bo_id]).await;
    // A second chat replica sharing MongoDB and Redis with the first, and
    // an edge of its own in front of it.
    let chat2 = mesh
        .spawn("chat", |c| {
            c.chat.addr = "127.0.0.1:0".parse().expect("addr");
            c.admin.addr = "127.0.0.1:0".parse().expect("addr");
        })
        .await;
    let chat2_url = chat2.grpc_url();
    let second = mesh
        .spawn("edge", |c| {
            c.edge.addr = "127.0.0.1:0".parse().expect("addr");
            c.admin.addr = "127.0.0.1:0".parse().expect("addr");
            c.edge.set_upstream_url("chat", &chat2_url);
        })
        .await;
    let path = format!("/api/v1/chat/rooms/{room}/ws");
    let mut b = ws_at(&second.url(&path).replacen("http://", "ws://", 1), &bo).await;
    next_json(&mut b).await;
    // Ana, on the first replica, sees Bo come online there.
    let mut a = ws(&mesh, &path, &ana).await;
    let ready = next_json(&mut a).await;
    assert!(
        ready["ready"]["onlineUserIds"]
            .as_array()
            .expect("list")
            .contains(&json!(bo_id)),
        "presence crosses replicas: {ready}"
    );
    let r = say(&mesh, &ana, &room, "x", "across").await;
    assert_eq!(r.status, StatusCode::OK);
    let got = until(&mut b, |v| v.get("message").is_some()).await;
    assert_eq!(got["message"]["body"], "across");
    send(
        &mut b,
        json!({"send": {"clientId": "y", "body": "and back"}}),
    )
    .await;
    let got = until(&mut a, |v| v["message"]["senderId"] == bo_id).await;
    assert_eq!(got["message"]["body"], "and back");
    drop((a, b));
    second.terminate().await;
    chat2.terminate().await;
    mesh.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_others_are_not() {
    let mesh = spawn_mesh_with(|c| {
        c.chat.stream_buffer = 32;
        c.edge.ws_frames_per_second = 0;
        c.edge.stream_send_timeout = Duration::from_millis(500);
    })
    .await;
    let (_, ana) = user(&mesh, "ana").await;
    let (bo_id, bo) = user(&mesh, "bo").await;
    let room = group(&mesh, &ana, "firehose", &[&bo_id]).await;
    let path = format!("/api/v1/chat/rooms/{room}/ws");
    // Bo connects and never reads again.
    let mut slow = ws(&mesh, &path, &bo).await;
    let reader = ws(&mesh, &path, &ana).await;
    let (mut writer, mut reader) = reader.split();
    // Ana reads everything as it comes, in a task of its own.
    let read_all = tokio::spawn(async move {
        let (mut acks, mut messages) = (0, 0);
        while acks < 600 || messages < 600 {
            let frame = tokio::time::timeout(WAIT, reader.next())
                .await
                .expect("the reader is served in time")
                .expect("open")
                .expect("frame");
            if let Ws::Text(t) = frame {
                let v: Value = serde_json::from_str(&t).expect("json");
                acks += usize::from(v.get("ack").is_some());
                messages += usize::from(v.get("message").is_some());
            }
        }
        (acks, messages)
    });
    // Enough bytes to fill the socket buffers between Bo and the edge.
    let body = "x".repeat(16_000);
    for i in 0..600 {
        let frame = json!({"send": {"clientId": format!("f{i}"), "body": body}});
        writer
            .send(Ws::Text(frame.to_string().into()))
            .await
            .expect("sent");
    }
    let (acks, messages) = read_all.await.expect("reader");
    assert_eq!((acks, messages), (600, 600), "the reader got everything");
    // The reader got every ack; the slow client's socket was closed: what
    // it finally reads ends, rather than growing without bound.
    let mut frames = 0usize;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(frame) = slow.next().await {
            match frame {
                Ok(Ws::Close(_)) | Err(_) => return true,
                Ok(_) => frames += 1,
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    assert!(ended, "the slow client was not cut off");
    assert!(
        frames < 600,
        "it was cut off before receiving everything ({frames})"
    );
    drop(writer);
    mesh.stop().await;
}

#[tokio::test]
async fn connect_works_directly_over_grpc() {
    use agora_proto::chat::v1::{
        ConnectRequest, SendMessage, connect_request::Action, room_event::Event,
    };
    let mesh = spawn_mesh().await;
    let (_, ana) = user(&mesh, "ana").await;
    let room = group(&mesh, &ana, "grpc", &[]).await;
    let mut client = chat_client(format!("http://{}", mesh.chat_addr)).await;
    let requests = futures::stream::iter([
        ConnectRequest {
            room_id: room.clone(),
            action: None,
        },
        ConnectRequest {
            room_id: String::new(),
            action: Some(Action::Send(SendMessage {
                client_id: "g1".into(),
                body: "over gRPC".into(),
                ..SendMessage::default()
            })),
        },
    ]);
    let mut req = tonic::Request::new(requests);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {ana}").parse().expect("md"),
    );
    let mut stream = client.connect(req).await.expect("opens").into_inner();
    let mut seen = Vec::new();
    // The client finished sending: the stream ends after its ack.
    while let Some(resp) = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("in time")
        .expect("ok")
    {
        seen.push(resp.event.and_then(|e| e.event));
    }
    assert!(
        matches!(seen.first(), Some(Some(Event::Ready(_)))),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, Some(Event::Ack(a)) if a.client_id == "g1")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, Some(Event::Message(m)) if m.body == "over gRPC")),
        "{seen:?}"
    );

    // Without credentials: refused before anything streams.
    let mut anon = chat_client(format!("http://{}", mesh.chat_addr)).await;
    let err = anon
        .connect(futures::stream::iter([ConnectRequest {
            room_id: room.clone(),
            action: None,
        }]))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    mesh.stop().await;
}

/// A Redis server of the test's own, which it can stop and start again.
struct PrivateRedis {
    port: u16,
    child: std::process::Child,
}

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts");
        Self { port, child }
    }

    async fn ready(&self) {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not listen on {}", self.port);
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn a_replica_that_loses_redis_serves_its_own_clients_and_catches_up_after() {
    use agora_proto::chat::v1::{WatchRoomRequest, room_event::Event};
    let port = common::free_port();
    let mut redis = PrivateRedis::start(port);
    redis.ready().await;
    let redis_url = format!("redis://127.0.0.1:{port}");
    let url = redis_url.clone();
    let mesh = spawn_mesh_with(move |c| c.chat.redis_url = url).await;
    let (_, ana) = user(&mesh, "ana").await;
    let (bo_id, bo) = user(&mesh, "bo").await;
    let room = group(&mesh, &ana, "outage", &[&bo_id]).await;
    let url = redis_url.clone();
    let chat2 = mesh
        .spawn("chat", move |c| {
            c.chat.addr = "127.0.0.1:0".parse().expect("addr");
            c.admin.addr = "127.0.0.1:0".parse().expect("addr");
            c.chat.redis_url = url;
        })
        .await;
    // Ana follows the room on the first replica (through the edge), Bo on
    // the second (directly over gRPC).
    let mut a = ws(&mesh, &format!("/api/v1/chat/rooms/{room}/ws"), &ana).await;
    next_json(&mut a).await;
    let mut req = tonic::Request::new(WatchRoomRequest {
        room_id: room.clone(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {bo}").parse().expect("md"));
    let mut b = chat_client(chat2.grpc_url())
        .await
        .watch_room(req)
        .await
        .expect("watch")
        .into_inner();
    let bodies = |e: Option<Event>| match e {
        Some(Event::Message(m)) => Some(m.body),
        _ => None,
    };

    redis.stop();
    let posted = say(&mesh, &ana, &room, "during", "while Redis is down").await;
    assert_eq!(posted.status, StatusCode::OK, "{:?}", posted.body);
    // The first replica still serves its own clients.
    let got = until(&mut a, |v| v.get("message").is_some()).await;
    assert_eq!(got["message"]["body"], "while Redis is down");

    let mut redis = PrivateRedis::start(port);
    redis.ready().await;
    // Bo's replica learns of the message once Redis is back.
    let caught_up = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(resp) = b.message().await.expect("stream ok") {
            if bodies(resp.event.and_then(|e| e.event)).as_deref() == Some("while Redis is down") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(
        caught_up,
        "the second replica did not catch up after Redis returned"
    );
    drop((a, b));
    chat2.terminate().await;
    redis.stop();
    mesh.stop().await;
}

#[tokio::test]
async fn other_services_notify_users_through_notify_and_customers_may_not() {
    use agora_proto::chat::v1::NotifyRequest;
    let mesh = spawn_mesh().await;
    let (bo_id, bo) = user(&mesh, "bo").await;
    let (_, staff) = mesh.admin().await;
    let mut client = chat_client(format!("http://{}", mesh.chat_addr)).await;
    let notify = |token: &str| {
        let mut req = tonic::Request::new(NotifyRequest {
            user_id: bo_id.clone(),
            text: "your order shipped".into(),
            room_id: String::new(),
        });
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("md"),
        );
        req
    };
    let err = client
        .notify(notify(&bo))
        .await
        .expect_err("customers may not");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let sent = client
        .notify(notify(&staff))
        .await
        .expect("staff may")
        .into_inner();
    assert_eq!(
        sent.notification.expect("notification").text,
        "your order shipped"
    );
    let list = mesh.get("/api/v1/notifications", Some(&bo)).await;
    assert_eq!(
        list.body["notifications"][0]["kind"], "NOTIFICATION_KIND_SYSTEM",
        "{:?}",
        list.body
    );
    assert_eq!(list.body["unreadCount"], 1);
    mesh.stop().await;
}

#[tokio::test]
async fn attachments_upload_to_storage_and_only_members_download_them() {
    if std::env::var("AWS_ENDPOINT_URL_S3").is_err() {
        panic!("set AWS_ENDPOINT_URL_S3 (./scripts/test.sh starts a local S3 server)");
    }
    let mesh = spawn_mesh().await;
    let (_, ana) = user(&mesh, "ana").await;
    let (bo_id, bo) = user(&mesh, "bo").await;
    let (_, eve) = user(&mesh, "eve").await;
    let room = group(&mesh, &ana, "files", &[&bo_id]).await;
    let attachments = format!("/api/v1/chat/rooms/{room}/attachments");
    let file = b"%PDF-1.4 a small document".to_vec();

    // Declarations outside the limits are refused at once.
    let r = mesh
        .post(&attachments, Some(&ana), json!({"fileName": "x.exe", "contentType": "application/x-msdownload", "sizeBytes": "10"}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("contentType"), "{:?}", r.body);
    let r = mesh
        .post(&attachments, Some(&ana), json!({"fileName": "big.pdf", "contentType": "application/pdf", "sizeBytes": "20000000"}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("sizeBytes"), "{:?}", r.body);

    let r = mesh
        .post(
            &attachments,
            Some(&ana),
            json!({"fileName": "report.pdf", "contentType": "application/pdf", "sizeBytes": file.len().to_string()}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let id = r.body["attachment"]["id"].as_str().expect("id").to_owned();
    // Posting before uploading is refused.
    let messages = format!("/api/v1/chat/rooms/{room}/messages");
    let early = mesh
        .post(
            &messages,
            Some(&ana),
            json!({"clientId": "f0", "body": "", "attachmentIds": [id]}),
        )
        .await;
    assert_eq!(early.status, StatusCode::BAD_REQUEST, "{:?}", early.body);
    assert!(
        early.message().contains("nothing was uploaded"),
        "{:?}",
        early.body
    );

    let mut put = mesh
        .http
        .request(
            reqwest::Method::from_bytes(
                r.body["uploadMethod"].as_str().expect("method").as_bytes(),
            )
            .expect("method"),
            r.body["uploadUrl"].as_str().expect("url"),
        )
        .body(file.clone());
    for (k, v) in r.body["uploadHeaders"].as_object().expect("headers") {
        put = put.header(k, v.as_str().expect("value"));
    }
    let uploaded = put.send().await.expect("upload");
    assert!(
        uploaded.status().is_success(),
        "upload: {}",
        uploaded.status()
    );

    let posted = mesh
        .post(
            &messages,
            Some(&ana),
            json!({"clientId": "f1", "body": "", "attachmentIds": [id]}),
        )
        .await;
    assert_eq!(posted.status, StatusCode::OK, "{:?}", posted.body);
    assert_eq!(posted.body["attachments"][0]["fileName"], "report.pdf");
    assert_eq!(
        posted.body["attachments"][0]["sizeBytes"],
        file.len().to_string()
    );
    // An attachment goes out once.
    let again = mesh
        .post(
            &messages,
            Some(&ana),
            json!({"clientId": "f2", "body": "again", "attachmentIds": [id]}),
        )
        .await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST, "{:?}", again.body);

    let link = mesh.get(&format!("{attachments}/{id}"), Some(&bo)).await;
    assert_eq!(link.status, StatusCode::OK, "{:?}", link.body);
    let downloaded = mesh
        .http
        .get(link.body["downloadUrl"].as_str().expect("url"))
        .send()
        .await
        .expect("download");
    assert!(downloaded.status().is_success());
    assert_eq!(downloaded.bytes().await.expect("bytes").to_vec(), file);
    let outsider = mesh.get(&format!("{attachments}/{id}"), Some(&eve)).await;
    assert_eq!(outsider.status, StatusCode::NOT_FOUND);

    // An upload that is not what was declared is refused and deleted.
    let r = mesh
        .post(
            &attachments,
            Some(&bo),
            json!({"fileName": "note.txt", "contentType": "text/plain", "sizeBytes": "5"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let other = r.body["attachment"]["id"].as_str().expect("id").to_owned();
    let mut put = mesh
        .http
        .put(r.body["uploadUrl"].as_str().expect("url"))
        .body(b"far more than five bytes".to_vec());
    for (k, v) in r.body["uploadHeaders"].as_object().expect("headers") {
        put = put.header(k, v.as_str().expect("value"));
    }
    let sent = put.send().await.expect("upload");
    // Storage may refuse a body longer than the signed length itself;
    // if it takes it, posting must refuse it.
    if !sent.status().is_success() {
        assert!(sent.status().is_client_error(), "{}", sent.status());
    } else {
        let refused = mesh
            .post(
                &messages,
                Some(&bo),
                json!({"clientId": "b1", "body": "see", "attachmentIds": [other]}),
            )
            .await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{:?}",
            refused.body
        );
        assert!(refused.message().contains("declared"), "{:?}", refused.body);
    }
    mesh.stop().await;
}

/// Reads until the socket ends; returns the close frame's code, if any.
async fn closed_with(socket: &mut Socket) -> Option<u16> {
    tokio::time::timeout(WAIT, async {
        while let Some(frame) = socket.next().await {
            match frame {
                Ok(Ws::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Err(_) => return None,
                Ok(_) => {}
            }
        }
        None
    })
    .await
    .expect("the socket ends in time")
}

#[tokio::test]
async fn a_websocket_peer_that_stops_answering_pings_is_disconnected() {
    let mesh = spawn_mesh_with(|c| c.edge.ws_ping_interval = Duration::from_secs(1)).await;
    let (_, ana) = user(&mesh, "ana").await;
    let room = group(&mesh, &ana, "quiet", &[]).await;
    let mut a = ws(&mesh, &format!("/api/v1/chat/rooms/{room}/ws"), &ana).await;
    // The client library answers pings only while it reads: it goes silent.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let dead = common::metric(
        &mesh.http,
        &mesh.admin,
        "agora_edge_websocket_dead_peers_total",
    )
    .await;
    assert_eq!(dead, 1.0);
    closed_with(&mut a).await;
    mesh.stop().await;
}

#[tokio::test]
async fn a_stopping_edge_tells_websocket_clients_to_reconnect() {
    let mesh = spawn_mesh().await;
    let (_, ana) = user(&mesh, "ana").await;
    let room = group(&mesh, &ana, "restart", &[]).await;
    let edge = mesh
        .spawn("edge", |c| {
            c.edge.addr = "127.0.0.1:0".parse().expect("addr");
            c.admin.addr = "127.0.0.1:0".parse().expect("addr");
        })
        .await;
    let url = edge.url(&format!("/api/v1/chat/rooms/{room}/ws"));
    let mut a = ws_at(&url.replacen("http://", "ws://", 1), &ana).await;
    next_json(&mut a).await;
    let stopping = tokio::spawn(edge.terminate());
    let last = until(&mut a, |v| v.get("error").is_some()).await;
    assert_eq!(last["error"]["code"], 14, "UNAVAILABLE: {last}");
    assert_eq!(
        closed_with(&mut a).await,
        Some(1012),
        "service restart: reconnect"
    );
    stopping.await.expect("the edge stops");
    mesh.stop().await;
}

#[tokio::test]
async fn grpcurl_lists_chat_and_streams_connect_through_reflection() {
    let mesh = spawn_mesh().await;
    let (_, ana) = user(&mesh, "ana").await;
    let room = group(&mesh, &ana, "grpcurl", &[]).await;
    let addr = mesh.chat_addr.to_string();
    let run = |args: Vec<String>, input: Option<String>| async move {
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new("grpcurl");
            cmd.args(&args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = cmd
                .spawn()
                .expect("grpcurl on PATH (./scripts/test.sh installs it)");
            if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
                use std::io::Write as _;
                stdin.write_all(text.as_bytes()).expect("stdin");
            }
            child.wait_with_output().expect("grpcurl runs")
        })
        .await
        .expect("joined")
    };
    let listed = run(vec!["-plaintext".into(), addr.clone(), "list".into()], None).await;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("agora.chat.v1.ChatService"), "{listed}");

    let input =
        format!(r#"{{"roomId":"{room}"}} {{"send":{{"clientId":"cli-1","body":"from grpcurl"}}}}"#);
    let out = run(
        vec![
            "-plaintext".into(),
            "-H".into(),
            format!("authorization: Bearer {ana}"),
            "-d".into(),
            "@".into(),
            addr,
            "agora.chat.v1.ChatService/Connect".into(),
        ],
        Some(input),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"ready\""), "{stdout}");
    assert!(stdout.contains("\"clientId\": \"cli-1\""), "{stdout}");
    assert!(stdout.contains("from grpcurl"), "{stdout}");
    mesh.stop().await;
}

#[tokio::test]
async fn a_websocket_client_sending_too_fast_is_told_and_its_excess_dropped() {
    let mesh = spawn_mesh_with(|c| c.edge.ws_frames_per_second = 2).await;
    let (_, ana) = user(&mesh, "ana").await;
    let room = group(&mesh, &ana, "flood", &[]).await;
    let mut a = ws(&mesh, &format!("/api/v1/chat/rooms/{room}/ws"), &ana).await;
    next_json(&mut a).await;
    for i in 0..10 {
        send(
            &mut a,
            json!({"send": {"clientId": format!("c{i}"), "body": "flood"}}),
        )
        .await;
    }
    let (mut acks, mut limited) = (0, 0);
    while acks + limited < 10 {
        let v = next_json(&mut a).await;
        if v.get("ack").is_some() {
            acks += 1;
        } else if v["error"]["code"] == 8 {
            limited += 1;
        }
    }
    // A burst of twice the rate goes through; the rest is refused.
    assert!((4..=5).contains(&acks), "acks {acks}");
    assert_eq!(acks + limited, 10);
    let history = mesh
        .get(&format!("/api/v1/chat/rooms/{room}/messages"), Some(&ana))
        .await;
    assert_eq!(
        history.body["messages"].as_array().expect("list").len(),
        acks
    );
    drop(a);
    mesh.stop().await;
}

#[tokio::test]
async fn configured_keys_seal_messages_and_no_development_key_is_made() {
    let key = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    };
    let mesh = spawn_mesh_with(move |c| {
        c.chat.encryption_keys = agora_chat::Secret(format!("k2026:{key}"));
    })
    .await;
    let (_, ana) = user(&mesh, "ana").await;
    let room = group(&mesh, &ana, "keys", &[]).await;
    let r = say(&mesh, &ana, &room, "k", "sealed").await;
    assert_eq!(r.status, StatusCode::OK);
    let client = mongodb::Client::with_uri_str(common::mongodb_uri(&mesh.db_name))
        .await
        .expect("mongo");
    let db = client.database(&mesh.db_name);
    let raw: mongodb::bson::Document = db
        .collection("messages")
        .find_one(mongodb::bson::doc! {"room_id": &room})
        .await
        .expect("query")
        .expect("stored");
    assert_eq!(raw.get_str("kid").expect("kid"), "k2026");
    let dev: Option<mongodb::bson::Document> = db
        .collection("settings")
        .find_one(mongodb::bson::doc! {"_id": "dev_encryption_key"})
        .await
        .expect("query");
    assert!(dev.is_none(), "no development key when keys are configured");
    let page = mesh
        .get(&format!("/api/v1/chat/rooms/{room}/messages"), Some(&ana))
        .await;
    assert_eq!(page.body["messages"][0]["body"], "sealed");
    mesh.stop().await;
}

#[tokio::test]
async fn the_edge_refuses_streams_beyond_its_cap() {
    let mesh = spawn_mesh_with(|c| c.edge.max_streams = 1).await;
    let (_, ana) = user(&mesh, "ana").await;
    let room = group(&mesh, &ana, "capped", &[]).await;
    let events = mesh.url(&format!("/api/v1/chat/rooms/{room}/events"));
    let first = mesh
        .http
        .get(&events)
        .bearer_auth(&ana)
        .send()
        .await
        .expect("first");
    assert_eq!(first.status(), StatusCode::OK);
    let second = mesh
        .get(&format!("/api/v1/chat/rooms/{room}/events"), Some(&ana))
        .await;
    assert_eq!(
        second.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        second.body
    );
    assert!(second.headers.contains_key("retry-after"));
    // Closing the first frees its slot.
    drop(first);
    let mut reopened = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        let r = mesh
            .http
            .get(&events)
            .bearer_auth(&ana)
            .send()
            .await
            .expect("again");
        reopened = r.status();
        if reopened == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reopened, StatusCode::OK);
    mesh.stop().await;
}
