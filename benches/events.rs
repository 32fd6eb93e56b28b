//! The event pipeline as analytics feels it: outbox → relay → SQS →
//! consumer → rollups.
//!
//! ```sh
//! cargo bench --bench events                       # needs an SQS server (scripts/test.sh starts one on 4566)
//! BENCH_EVENTS=20000 BENCH_RATE=500 BENCH_SECONDS=30 cargo bench --bench events   # against real SQS
//! ```
//!
//! It starts the release `agora serve` (every target in one process) with a
//! queue of its own on `AWS_ENDPOINT_URL_SQS` (default
//! `http://127.0.0.1:4566`), against `BENCH_DATABASE_URL` and
//! `MONGODB_URI`. Events are written into `catalog.outbox` as the catalog
//! writes them (a committed reservation each, so every event updates the
//! rollups), and it prints:
//! - burst: `BENCH_EVENTS` events already waiting, and how many per second
//!   reach the rollups;
//! - steady: `BENCH_RATE` events per second for `BENCH_SECONDS`, and the
//!   lag of each from its outbox row to its count in `processed_events`
//!   (p50, p99, max), with the largest outbox backlog seen and the CPU the
//!   `agora` process spent per event (relay, consumer and rollups).

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use common::{Process, env_or, free_port, wait_healthy};
use sqlx::{Connection as _, PgConnection};

/// Writes `n` committed-reservation events into the catalog outbox, as one
/// transaction of the catalog would each.
async fn write_events(db: &mut PgConnection, n: i64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO catalog.outbox (id, event_type, aggregate_id, payload)
         SELECT id, 'catalog.reservation_committed', id::text,
                jsonb_build_object('reservationId', id::text, 'ownerId', gen_random_uuid()::text,
                  'items', jsonb_build_array(jsonb_build_object(
                    'productId', '00000000-0000-7000-8000-' || lpad((g % 100)::text, 12, '0'),
                    'quantity', 1 + g % 3,
                    'unitPrice', jsonb_build_object('currency', 'EUR', 'amountMinor', (100 + g % 900)::text))))
         FROM (SELECT gen_random_uuid() AS id, g FROM generate_series(1, $1) AS g) AS s",
    )
    .bind(n)
    .execute(db)
    .await?;
    Ok(())
}

/// CPU time (user + system) a process has used, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces): utime is the 12th,
    // stime the 13th; in clock ticks of 1/100 s.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("no stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .context("short stat")?
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    Ok(ticks as f64 / 100.0)
}

async fn processed(db: &mut PgConnection) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM analytics.processed_events")
            .fetch_one(db)
            .await?,
    )
}

async fn wait_processed(db: &mut PgConnection, want: i64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while processed(db).await? < want {
        if Instant::now() > deadline {
            bail!(
                "only {} of {want} events counted after {limit:?}",
                processed(db).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let burst = env_or("BENCH_EVENTS", 2_000) as i64;
    let rate = env_or("BENCH_RATE", 150);
    let seconds = env_or("BENCH_SECONDS", 20);
    let db_url = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/agora_bench_events".into());
    let sqs =
        std::env::var("AWS_ENDPOINT_URL_SQS").unwrap_or_else(|_| "http://127.0.0.1:4566".into());
    let mongo_server =
        std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into());
    let run = format!("bench_events_{}", std::process::id());
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect::<Result<_, _>>()?;
    let mut serve = Command::new(env!("CARGO_BIN_EXE_agora"));
    serve
        .arg("serve")
        .env("DATABASE_URL", &db_url)
        .env(
            "MONGODB_URI",
            format!("{}/{run}", mongo_server.trim_end_matches('/')),
        )
        .env("AWS_ENDPOINT_URL_SQS", &sqs)
        .env(
            "AWS_REGION",
            std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
        )
        .env(
            "AWS_ACCESS_KEY_ID",
            std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "bench".into()),
        )
        .env(
            "AWS_SECRET_ACCESS_KEY",
            std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "bench".into()),
        )
        .env("AGORA_EVENTS_QUEUE", run.replace('_', "-"))
        .env("AGORA_EDGE_KEY_PREFIX", format!("{run}:edge:"))
        .env("AGORA_CHAT_KEY_PREFIX", format!("{run}:chat:"))
        .env("AGORA_ANALYTICS_JOBS", "false")
        .env("AGORA_SHUTDOWN_DRAIN_MS", "0")
        .env("AGORA_EDGE_ADDR", format!("127.0.0.1:{}", ports[0]))
        .env("AGORA_USERS_ADDR", format!("127.0.0.1:{}", ports[1]))
        .env("AGORA_CATALOG_ADDR", format!("127.0.0.1:{}", ports[2]))
        .env("AGORA_CHAT_ADDR", format!("127.0.0.1:{}", ports[3]))
        .env("AGORA_ANALYTICS_ADDR", format!("127.0.0.1:{}", ports[4]))
        .env("AGORA_ADMIN_ADDR", format!("127.0.0.1:{}", ports[5]))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mesh = Process(serve.spawn().context("cannot start agora")?);
    let pid = mesh.0.id();
    let edge = format!("http://127.0.0.1:{}", ports[0]);
    wait_healthy(&edge).await?;
    let mut db = PgConnection::connect(&db_url).await?;
    sqlx::query(
        "TRUNCATE analytics.processed_events, analytics.daily_metrics, analytics.user_behavior",
    )
    .execute(&mut db)
    .await?;
    sqlx::query("DELETE FROM catalog.outbox")
        .execute(&mut db)
        .await?;

    // Burst: everything waiting at once; how fast does it drain?
    write_events(&mut db, burst).await?;
    let started = Instant::now();
    wait_processed(&mut db, burst, Duration::from_secs(600)).await?;
    let elapsed = started.elapsed();
    println!(
        "burst: {burst} events through outbox → SQS → consumer → rollups in {:.1} s: {:.0} events/s",
        elapsed.as_secs_f64(),
        burst as f64 / elapsed.as_secs_f64()
    );

    // Steady: `rate` events per second, written every 100 ms.
    let per_tick = (rate as f64 / 10.0).max(1.0);
    let ticks = seconds * 10;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut owed = 0.0;
    let mut written = 0i64;
    let mut backlog_max = 0i64;
    let steady_from = chrono::Utc::now();
    let cpu_before = cpu_seconds(pid)?;
    for _ in 0..ticks {
        tick.tick().await;
        owed += per_tick;
        let n = owed.floor() as i64;
        owed -= n as f64;
        write_events(&mut db, n).await?;
        written += n;
        let backlog: i64 =
            sqlx::query_scalar("SELECT count(*) FROM catalog.outbox WHERE published_at IS NULL")
                .fetch_one(&mut db)
                .await?;
        backlog_max = backlog_max.max(backlog);
    }
    wait_processed(&mut db, burst + written, Duration::from_secs(120)).await?;
    let cpu = cpu_seconds(pid)? - cpu_before;
    let (p50, p99, max): (f64, f64, f64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag), percentile_cont(0.99) WITHIN GROUP (ORDER BY lag), max(lag)
         FROM (SELECT EXTRACT(EPOCH FROM p.processed_at - o.created_at)::float8 * 1000 AS lag
               FROM catalog.outbox o JOIN analytics.processed_events p ON p.event_id = o.id
               WHERE o.created_at >= $1) AS l",
    )
    .bind(steady_from)
    .fetch_one(&mut db)
    .await?;
    println!(
        "steady: {written} events at {rate}/s for {seconds} s: lag from outbox to rollup p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms; largest outbox backlog {backlog_max}; agora used {:.2} ms of CPU per event",
        cpu * 1000.0 / written as f64
    );
    Ok(())
}
