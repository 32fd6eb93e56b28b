//! The edge's cost as clients see it: the same unary RPC
//! (`CatalogService/GetProduct`) as REST through the edge and as gRPC
//! straight to the catalog, in one run, driven by one load generator
//! (`h2load`, Debian's `nghttp2-client`) for both.
//!
//! ```sh
//! cargo bench --bench edge
//! BENCH_REQUESTS=50000 BENCH_CLIENTS=16 cargo bench --bench edge
//! ```
//!
//! It starts the release `agora serve` binary (every target in one process,
//! logging as in production, to /dev/null) against `BENCH_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/agora_bench_edge`) and
//! Redis, creates one product, and prints for each path: peak throughput
//! with `BENCH_CLIENTS` concurrent requests, then p50/p99 latency at half of
//! the REST peak. Two more rows measure REST through an edge in its own
//! process (over the network to the services, as when each target runs in
//! its own pod), without and with the per-IP rate limit (a Redis round
//! trip per request).

mod common;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use common::{Process, env_or, free_port, post};
use prost::Message as _;
use serde_json::json;

const PASSWORD: &str = "benchmark password 1";

fn agora() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agora"));
    cmd.env("AGORA_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

async fn wait_healthy(http: &reqwest::Client, edge: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{edge}/health")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("agora did not become healthy at {edge}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One h2load run: throughput and latency percentiles (from its log).
struct Run {
    rps: f64,
    ok: u64,
    total: u64,
    p50_ms: f64,
    p99_ms: f64,
}

fn h2load(args: &[String], log: &Path) -> anyhow::Result<Run> {
    let _ = std::fs::remove_file(log);
    let out = Command::new("h2load")
        .args(args)
        .arg("--log-file")
        .arg(log)
        .output()
        .context("h2load is needed: apt-get install nghttp2-client")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .with_context(|| format!("unexpected h2load output:\n{text}"))?;
    let counts = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .with_context(|| format!("unexpected h2load output:\n{text}"))?;
    let ok = counts
        .split(", ")
        .find(|p| p.ends_with("2xx"))
        .and_then(|p| {
            p.trim_start_matches("status codes: ")
                .split_whitespace()
                .next()
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // Log lines: start time (µs), status, request time (µs).
    let mut micros: Vec<u64> = std::fs::read_to_string(log)?
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    micros.sort_unstable();
    let pct = |p: f64| {
        micros
            .get(((micros.len() as f64 * p) as usize).min(micros.len().saturating_sub(1)))
            .map_or(f64::NAN, |&us| us as f64 / 1000.0)
    };
    Ok(Run {
        rps,
        ok,
        total: micros.len() as u64,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let requests = env_or("BENCH_REQUESTS", 100_000);
    let clients = env_or("BENCH_CLIENTS", 32);
    let db = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/agora_bench_edge".into());
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let (edge_port, users_port, catalog_port, admin_port) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let prefix = format!("bench-{}:", std::process::id());
    let common = |cmd: &mut Command| {
        cmd.env("DATABASE_URL", &db)
            .env("REDIS_URL", &redis)
            .env("AGORA_EDGE_KEY_PREFIX", format!("{prefix}edge:"))
            .env("AGORA_CACHE_KEY_PREFIX", &prefix)
            .env("AGORA_EDGE_RATE_LIMIT_ANONYMOUS_PER_MINUTE", "0")
            .env("AGORA_SHUTDOWN_DRAIN_MS", "0");
    };
    let mut serve = agora();
    common(&mut serve);
    serve
        .args(["serve"])
        .env("AGORA_EDGE_ADDR", format!("127.0.0.1:{edge_port}"))
        .env("AGORA_USERS_ADDR", format!("127.0.0.1:{users_port}"))
        .env("AGORA_CATALOG_ADDR", format!("127.0.0.1:{catalog_port}"))
        .env("AGORA_CHAT_ADDR", "127.0.0.1:0")
        .env("AGORA_ANALYTICS_ADDR", "127.0.0.1:0")
        .env("AGORA_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"));
    let _mesh = Process(serve.spawn().context("cannot start agora")?);
    let edge = format!("http://127.0.0.1:{edge_port}");
    let http = reqwest::Client::new();
    wait_healthy(&http, &edge).await?;

    // One product, made the way an operator and staff would.
    let email = format!("bench-{}@example.com", uuid::Uuid::new_v4().simple());
    let mut admin = agora();
    common(&mut admin);
    let mut child = admin
        .args(["users", "create-admin", "--email", &email])
        .stdin(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(PASSWORD.as_bytes())?;
    if !child.wait()?.success() {
        bail!("create-admin failed");
    }
    let login = post(
        &http,
        &format!("{edge}/api/v1/auth/login"),
        None,
        json!({"email": email, "password": PASSWORD}),
    )
    .await?;
    let token = login["tokens"]["accessToken"]
        .as_str()
        .context("access token")?;
    let slug = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let cat = post(
        &http,
        &format!("{edge}/api/v1/categories"),
        Some(token),
        json!({"slug": slug, "name": "Bench"}),
    )
    .await?;
    let product = post(
        &http,
        &format!("{edge}/api/v1/products?initialStock=5"),
        Some(token),
        json!({"sku": slug, "name": "Bench lamp", "description": "A lamp for measuring",
               "categoryId": cat["id"], "price": {"currency": "EUR", "amountMinor": "2599"}}),
    )
    .await?;
    let id = product["id"].as_str().context("product id")?.to_owned();

    // gRPC: one length-prefixed GetProductRequest, sent as is by h2load.
    let msg = agora_proto::catalog::v1::GetProductRequest { id: id.clone() }.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let frame_path = dir.join("get_product.grpc");
    std::fs::write(&frame_path, &frame)?;
    let grpc_url =
        format!("http://127.0.0.1:{catalog_port}/agora.catalog.v1.CatalogService/GetProduct");
    let rest_url = format!("{edge}/api/v1/products/{id}");
    let grpc_args = |extra: &[String]| {
        let mut a = strs(&[
            "-d",
            frame_path.to_str().unwrap_or_default(),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
        ]);
        a.extend_from_slice(extra);
        a.push(grpc_url.clone());
        a
    };
    let rest_args = |url: &str, extra: &[String]| {
        let mut a = strs(&["--h1"]);
        a.extend_from_slice(extra);
        a.push(url.to_owned());
        a
    };
    let peak = strs(&[
        "-n",
        &requests.to_string(),
        "-c",
        &clients.to_string(),
        "-t",
        "1",
    ]);

    // Warm both paths (connections, cache, JIT of nothing but the OS).
    let warm = strs(&["-n", "2000", "-c", "4", "-t", "1"]);
    h2load(&grpc_args(&warm), &dir.join("warm.log"))?;
    h2load(&rest_args(&rest_url, &warm), &dir.join("warm.log"))?;

    let grpc = h2load(&grpc_args(&peak), &dir.join("grpc.log"))?;
    let rest = h2load(&rest_args(&rest_url, &peak), &dir.join("rest.log"))?;

    // Half of the REST peak, spread over the clients, for 5 seconds each.
    let half = (rest.rps / 2.0).max(1.0);
    let per_client = (half / clients as f64).max(1.0).round() as u64;
    let paced = strs(&[
        "-D",
        "5",
        "-c",
        &clients.to_string(),
        "-t",
        "1",
        "--rps",
        &per_client.to_string(),
    ]);
    let grpc_half = h2load(&grpc_args(&paced), &dir.join("grpc-half.log"))?;
    let rest_half = h2load(&rest_args(&rest_url, &paced), &dir.join("rest-half.log"))?;

    // Edges in their own processes, as in a deployment with one target per
    // pod: they reach the services over the loopback network (the edge of
    // `agora serve` calls them in process). One plain, one with the per-IP
    // limit on (a Redis round trip per call).
    let remote_edge = |limited: bool| -> anyhow::Result<(Process, String)> {
        let port = free_port()?;
        let mut edge = agora();
        common(&mut edge);
        edge.args(["serve", "--target", "edge"])
            .env("AGORA_EDGE_ADDR", format!("127.0.0.1:{port}"))
            .env("AGORA_ADMIN_ADDR", "127.0.0.1:0")
            .env("USER_SERVICE_URL", format!("http://127.0.0.1:{users_port}"))
            .env(
                "PRODUCT_SERVICE_URL",
                format!("http://127.0.0.1:{catalog_port}"),
            );
        if limited {
            edge.env("AGORA_EDGE_RATE_LIMIT_ANONYMOUS_PER_MINUTE", "1000000000");
        }
        Ok((Process(edge.spawn()?), format!("http://127.0.0.1:{port}")))
    };
    let mut remote = Vec::new();
    for (limited, log) in [(false, "rest-remote.log"), (true, "rest-limited.log")] {
        let (process, edge) = remote_edge(limited)?;
        wait_healthy(&http, &edge).await?;
        let url = format!("{edge}/api/v1/products/{id}");
        h2load(&rest_args(&url, &warm), &dir.join("warm.log"))?;
        remote.push(h2load(&rest_args(&url, &peak), &dir.join(log))?);
        drop(process);
    }
    let (rest_remote, rest_limited) = (&remote[0], &remote[1]);

    println!(
        "GetProduct, {requests} requests, {clients} concurrent (h2load; REST over HTTP/1.1 keep-alive, gRPC over h2)"
    );
    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>10}",
        "path", "req/s", "p50 ms", "p99 ms", "ok"
    );
    let row = |name: &str, r: &Run| {
        println!(
            "{name:<34} {:>10.0} {:>9.2} {:>9.2} {:>5}/{:<5}",
            r.rps, r.p50_ms, r.p99_ms, r.ok, r.total
        );
    };
    row("gRPC direct (peak)", &grpc);
    row("REST through the edge (peak)", &rest);
    row("REST, edge in its own process", rest_remote);
    row("REST, own process, rate limit on", rest_limited);
    println!("ratio REST/gRPC at peak: {:.2}", rest.rps / grpc.rps);
    println!(
        "ratio with the edge in its own process: {:.2}",
        rest_remote.rps / grpc.rps
    );
    println!("at {half:.0} req/s (half the REST peak):");
    row("gRPC direct", &grpc_half);
    row("REST through the edge", &rest_half);
    println!(
        "p99 added by the edge at half load: {:.2} ms",
        rest_half.p99_ms - grpc_half.p99_ms
    );
    Ok(())
}
