//! Chat as its clients feel it: WebSocket clients through the edge, held
//! open in rooms, while senders post at a steady rate.
//!
//! ```sh
//! cargo bench --bench chat
//! BENCH_CONNECTIONS=2000 BENCH_ROOMS=20 BENCH_RATE=200 BENCH_SECONDS=10 cargo bench --bench chat
//! ```
//!
//! It raises its file limit (the `agora` process it starts inherits it),
//! starts the release `agora serve` (every target in one process) against
//! `BENCH_DATABASE_URL`, Redis and `MONGODB_URI`, registers
//! `BENCH_USERS` users, makes `BENCH_ROOMS` rooms with all of them, and
//! opens `BENCH_CONNECTIONS` WebSockets spread over the rooms. It prints:
//! - connections held, and the server's resident memory per idle
//!   connection (its RSS with them open, less before, over their number);
//! - with one sender per room posting `BENCH_RATE` messages per second in
//!   all for `BENCH_SECONDS`: messages posted, deliveries per second, and
//!   p50/p99/max delivery latency (post to receipt by every member).

mod common;

use std::{
    io::Write as _,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use common::{Process, env_or, free_port, post, wait_healthy};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio_tungstenite::tungstenite::{Message as Ws, client::IntoClientRequest as _};

const PASSWORD: &str = "benchmark password 1";

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let connections = env_or("BENCH_CONNECTIONS", 10_000);
    let rooms = env_or("BENCH_ROOMS", 100).max(1);
    let users = env_or("BENCH_USERS", 50).max(1);
    let rate = env_or("BENCH_RATE", 1_000);
    let seconds = env_or("BENCH_SECONDS", 10);
    // Each side (this process, and the server, which inherits the limit)
    // holds one descriptor per connection.
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    let want = (connections + 4_096).min(hard);
    if soft < want {
        rlimit::Resource::NOFILE.set(want, hard)?;
    }
    if want < connections + 512 {
        bail!(
            "the file limit ({hard}) is too low for {connections} connections; raise it (ulimit -Hn)"
        );
    }

    let db = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/agora_bench_chat".into());
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mongo_server =
        std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into());
    let run = format!("bench_chat_{}", std::process::id());
    let ports = [
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
    ];
    let common = |cmd: &mut Command| {
        cmd.env("DATABASE_URL", &db)
            .env("REDIS_URL", &redis)
            .env(
                "MONGODB_URI",
                format!("{}/{run}", mongo_server.trim_end_matches('/')),
            )
            .env("AGORA_EDGE_KEY_PREFIX", format!("{run}:edge:"))
            .env("AGORA_CHAT_KEY_PREFIX", format!("{run}:chat:"))
            .env("AGORA_EDGE_RATE_LIMIT_ANONYMOUS_PER_MINUTE", "0")
            .env("AGORA_EDGE_RATE_LIMIT_USER_PER_MINUTE", "0")
            .env("AGORA_EDGE_RATE_LIMIT_AUTH_PER_MINUTE", "0")
            .env("AGORA_SHUTDOWN_DRAIN_MS", "0")
            // Senders may post faster than a person would.
            .env("AGORA_EDGE_WS_FRAMES_PER_SECOND", "0")
            .env("AGORA_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    };
    let mut serve = Command::new(env!("CARGO_BIN_EXE_agora"));
    common(&mut serve);
    serve
        .arg("serve")
        .env("AGORA_EDGE_ADDR", format!("127.0.0.1:{}", ports[0]))
        .env("AGORA_USERS_ADDR", format!("127.0.0.1:{}", ports[1]))
        .env("AGORA_CATALOG_ADDR", format!("127.0.0.1:{}", ports[2]))
        .env("AGORA_CHAT_ADDR", format!("127.0.0.1:{}", ports[3]))
        .env("AGORA_ANALYTICS_ADDR", "127.0.0.1:0")
        .env("AGORA_ADMIN_ADDR", format!("127.0.0.1:{}", ports[4]));
    let mesh = Process(serve.spawn().context("cannot start agora")?);
    let pid = mesh.0.id();
    let edge = format!("http://127.0.0.1:{}", ports[0]);
    let http = reqwest::Client::new();
    wait_healthy(&edge).await?;

    // Users and rooms, made as clients would.
    let mut tokens = Vec::new();
    let mut ids = Vec::new();
    for i in 0..users {
        let email = format!("{run}-{i}@example.com");
        let user = post(
            &http,
            &format!("{edge}/api/v1/users"),
            None,
            json!({"email": email, "password": PASSWORD, "displayName": format!("Bench {i}")}),
        )
        .await?;
        ids.push(user["id"].as_str().context("id")?.to_owned());
        let login = post(
            &http,
            &format!("{edge}/api/v1/auth/login"),
            None,
            json!({"email": email, "password": PASSWORD}),
        )
        .await?;
        tokens.push(
            login["tokens"]["accessToken"]
                .as_str()
                .context("token")?
                .to_owned(),
        );
    }
    let mut room_ids = Vec::new();
    for r in 0..rooms {
        let room = post(
            &http,
            &format!("{edge}/api/v1/chat/rooms"),
            Some(&tokens[0]),
            json!({"name": format!("room {r}"), "memberIds": &ids[1..]}),
        )
        .await?;
        room_ids.push(room["id"].as_str().context("room id")?.to_owned());
    }
    let idle_before = rss_kib(pid)?;

    // The connections; each counts what it receives and how late.
    let started = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    // (sent at, latency), in microseconds since the start.
    let (lat_tx, mut lat_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<(u64, u64)>>();
    let measuring = Arc::new(tokio::sync::Notify::new());
    let mut held = 0u64;
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    let connect_started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(64));
    let mut opening = Vec::new();
    for c in 0..connections {
        let room = room_ids[(c % rooms) as usize].clone();
        let token = tokens[((c / rooms) % users) as usize].clone();
        let url = format!(
            "{}/api/v1/chat/rooms/{room}/ws",
            edge.replacen("http://", "ws://", 1)
        );
        let permit = semaphore.clone().acquire_owned().await?;
        opening.push(tokio::spawn(async move {
            let _permit = permit;
            let mut req = url.into_client_request().ok()?;
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().ok()?);
            tokio_tungstenite::connect_async(req)
                .await
                .ok()
                .map(|(s, _)| s)
        }));
    }
    // Each connection is read from the moment it opens: every arrival
    // counts in `frames`; messages also record how late they came.
    let frames = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    for (c, o) in opening.into_iter().enumerate() {
        let Ok(Some(socket)) = o.await else { continue };
        held += 1;
        let (sink, mut stream) = socket.split();
        if (c as u64) < rooms {
            // The first connection of each room also sends.
            senders.push(sink);
        } else {
            drop(sink);
        }
        let delivered = delivered.clone();
        let frames = frames.clone();
        let acked = acked.clone();
        let lat_tx = lat_tx.clone();
        let measuring = measuring.clone();
        readers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let stop = measuring.notified();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    () = &mut stop => break,
                    frame = stream.next() => {
                        let Some(Ok(Ws::Text(t))) = frame else {
                            if frame.is_none() { break } else { continue }
                        };
                        frames.fetch_add(1, Ordering::Relaxed);
                        if t.contains("\"ack\":{") {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        // Only messages carry a send time: "body":"t<micros>".
                        if let Some(i) = t.find("\"body\":\"t") {
                            let digits: String = t[i + 9..].chars().take_while(char::is_ascii_digit).collect();
                            if let Ok(sent) = digits.parse::<u64>() {
                                let now = started.elapsed().as_micros() as u64;
                                lat.push((sent, now.saturating_sub(sent)));
                                delivered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
            let _ = lat_tx.send(lat);
        }));
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    // Every arrival announces itself to its room (presence): wait until
    // that storm is over, as an idle system.
    let mut last = u64::MAX;
    let settle_started = Instant::now();
    while settle_started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = frames.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    println!("connections held: {held} of {connections} (opened in {connect_secs:.1} s)");
    println!(
        "their arrival announcements ({} frames) were delivered {:.1} s after the last opened",
        frames.load(Ordering::Relaxed),
        settle_started.elapsed().as_secs_f64()
    );
    let idle_after = rss_kib(pid)?;
    println!(
        "server memory: {idle_before} KiB before, {idle_after} KiB with them open: {:.1} KiB per idle connection",
        (idle_after.saturating_sub(idle_before)) as f64 / held.max(1) as f64
    );
    drop(lat_tx);

    // Senders: BENCH_RATE messages per second in all, round robin over rooms.
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let send_started = Instant::now();
    let mut posted = 0u64;
    let sending = senders.len().max(1) as u64;
    for n in 0..total {
        tick.tick().await;
        let Some(sink) = senders.get_mut((n % sending) as usize) else {
            break;
        };
        let body = format!("t{}", started.elapsed().as_micros());
        let frame = json!({"send": {"clientId": format!("m{n}"), "body": body}}).to_string();
        if sink.send(Ws::Text(frame.into())).await.is_ok() {
            posted += 1;
        }
    }
    let send_secs = send_started.elapsed().as_secs_f64();
    // Let the last deliveries arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let received = delivered.load(Ordering::Relaxed);
    let stored = acked.load(Ordering::Relaxed);
    measuring.notify_waiters();
    let mut samples = Vec::new();
    while let Some(lat) = lat_rx.recv().await {
        samples.extend(lat);
    }
    // The slowest delivery of each second of sending, to tell a steady
    // backlog from occasional stalls.
    let mut worst: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    for (sent, lat) in &samples {
        let w = worst.entry(sent / 1_000_000).or_default();
        *w = (*w).max(*lat);
    }
    let mut all: Vec<u64> = samples.into_iter().map(|(_, lat)| lat).collect();
    for r in readers {
        let _ = r.await;
    }
    all.sort_unstable();
    let per_room = held as f64 / rooms as f64;
    println!(
        "posted {posted} messages in {send_secs:.1} s ({:.0}/s), {per_room:.0} members online per room",
        posted as f64 / send_secs
    );
    println!(
        "stored (acknowledged to their senders) {stored} ({:.0}/s)",
        stored as f64 / (send_secs + 3.0)
    );
    println!(
        "delivered {received} ({:.0}/s; {:.1}% of posted × online members)",
        received as f64 / (send_secs + 3.0),
        100.0 * received as f64 / (posted as f64 * per_room).max(1.0)
    );
    println!(
        "delivery latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        percentile(&all, 1.0)
    );
    let by_second: Vec<String> = worst
        .values()
        .map(|w| format!("{:.0}", *w as f64 / 1000.0))
        .collect();
    println!(
        "slowest delivery per second of sending (ms): {}",
        by_second.join(" ")
    );
    std::io::stdout().flush()?;
    drop(senders);
    drop(mesh);
    Ok(())
}
