//! Search latency on a large catalog: prints p50/p90/p99 per kind of query.
//!
//! ```sh
//! cargo bench -p agora-catalog --bench search            # 100,000 products
//! BENCH_PRODUCTS=20000 cargo bench -p agora-catalog --bench search
//! ```
//!
//! Uses `BENCH_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/agora_bench`),
//! seeding it up to `BENCH_PRODUCTS` products first. It measures the
//! catalog's search as the service runs it (SQL included), one query at a
//! time, after a warm-up.

use std::time::{Duration, Instant};

use agora_catalog::search::{Order, Query, words};
use agora_kit::db::DatabaseConfig;

const QUERIES: &[(&str, &[&str])] = &[
    (
        "single word",
        &[
            "lamp", "chair", "oak", "kettle", "rug", "mirror", "basket", "velvet",
        ],
    ),
    (
        "two words",
        &["oak table", "desk lamp", "ceramic mug", "wool blanket"],
    ),
    ("typo", &["lmap", "chiar", "tabel", "kettel"]),
    ("rare word", &["chandelier", "skillet", "bookcase"]),
];
const ROUNDS: usize = 50;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/agora_bench".into());
    let target: usize = std::env::var("BENCH_PRODUCTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let db = DatabaseConfig {
        url,
        ..DatabaseConfig::default()
    };
    let store = agora_catalog::connect(&db).await?;

    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM products WHERE deleted_at IS NULL")
        .fetch_one(store.pool())
        .await?;
    if (have as usize) < target {
        let missing = target - have as usize;
        println!("seeding {missing} products (have {have}) …");
        let started = Instant::now();
        agora_catalog::seed::seed(store.pool(), missing, |done| {
            if done % 20_000 == 0 {
                println!("  {done}/{missing}");
            }
        })
        .await?;
        println!("seeded in {:.1} s", started.elapsed().as_secs_f64());
    }
    println!("catalog: {} products", have.max(target as i64));
    println!(
        "{:<12} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "query", "samples", "p50 ms", "p90 ms", "p99 ms", "max ms", "hits/q"
    );

    for (kind, queries) in QUERIES {
        let mut samples: Vec<Duration> = Vec::with_capacity(ROUNDS * queries.len());
        let mut hits = 0usize;
        for round in 0..ROUNDS + 3 {
            for q in *queries {
                let query = Query {
                    words: words(q),
                    category: None,
                    min_price: None,
                    max_price: None,
                    in_stock: false,
                    order: Order::Relevance,
                    page_size: 20,
                    after: None,
                };
                let started = Instant::now();
                let rows = store.search(&query).await?;
                let took = started.elapsed();
                // The first rounds warm caches and plans; they are not counted.
                if round >= 3 {
                    samples.push(took);
                    hits += rows.len();
                }
            }
        }
        samples.sort_unstable();
        let pct = |p: f64| {
            samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)].as_secs_f64()
                * 1e3
        };
        println!(
            "{kind:<12} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.1}",
            samples.len(),
            pct(0.50),
            pct(0.90),
            pct(0.99),
            samples.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
            hits as f64 / samples.len() as f64
        );
    }
    Ok(())
}
