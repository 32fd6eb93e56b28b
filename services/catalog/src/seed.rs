//! Generated catalogs for trials and benchmarks (`agora seed catalog`):
//! a category tree and products with plausible, searchable names, loaded
//! in batches. Seeding is a bulk load: it writes no outbox events.

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::error::CatalogError;

const ADJECTIVES: &[&str] = &[
    "classic",
    "modern",
    "rustic",
    "compact",
    "deluxe",
    "vintage",
    "sleek",
    "sturdy",
    "portable",
    "elegant",
    "minimal",
    "bright",
    "cozy",
    "premium",
    "handmade",
    "smart",
    "foldable",
    "organic",
    "nordic",
    "industrial",
];
const MATERIALS: &[&str] = &[
    "oak", "walnut", "steel", "brass", "linen", "wool", "ceramic", "glass", "bamboo", "leather",
    "cotton", "marble", "copper", "velvet", "rattan",
];
/// (top-level category, its sub-categories with their nouns)
/// A sub-category's slug and the nouns its products are named with.
type Leaf = (&'static str, &'static [&'static str]);

const TREE: &[(&str, &[Leaf])] = &[
    (
        "lighting",
        &[
            ("desk-lamps", &["lamp", "desk lamp", "reading light"]),
            ("ceiling", &["pendant", "chandelier"]),
        ],
    ),
    (
        "furniture",
        &[
            ("seating", &["chair", "stool", "armchair", "sofa"]),
            ("tables", &["table", "desk", "bench"]),
        ],
    ),
    (
        "kitchen",
        &[
            ("cookware", &["pan", "pot", "kettle", "skillet"]),
            ("tableware", &["plate", "bowl", "mug", "cup"]),
        ],
    ),
    (
        "textiles",
        &[
            ("bedding", &["blanket", "pillow", "duvet"]),
            ("rugs", &["rug", "runner", "mat"]),
        ],
    ),
    (
        "decor",
        &[
            ("wall", &["mirror", "clock", "frame", "poster"]),
            ("plants", &["planter", "vase", "pot stand"]),
        ],
    ),
    (
        "storage",
        &[
            ("boxes", &["basket", "crate", "box"]),
            ("shelving", &["shelf", "bookcase", "rack"]),
        ],
    ),
];

/// A small deterministic generator (xorshift64*): the same seed gives the
/// same catalog, so benchmark runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Creates the category tree (if missing) and `count` products, calling
/// `progress` with the number done after each batch.
pub async fn seed(
    pool: &PgPool,
    count: usize,
    mut progress: impl FnMut(usize),
) -> Result<(), CatalogError> {
    let mut leaves: Vec<(Uuid, &[&str])> = Vec::new();
    for (top, subs) in TREE {
        let top_id = category(pool, top, None).await?;
        for (sub, nouns) in *subs {
            leaves.push((category(pool, sub, Some(top_id)).await?, nouns));
        }
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ count as u64);
    let run = Uuid::new_v4().simple().to_string();
    const BATCH: usize = 2_000;
    let mut done = 0;
    while done < count {
        let n = BATCH.min(count - done);
        let mut ids = Vec::with_capacity(n);
        let mut skus = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut descriptions = Vec::with_capacity(n);
        let mut categories = Vec::with_capacity(n);
        let mut prices = Vec::with_capacity(n);
        let mut stock = Vec::with_capacity(n);
        for i in done..done + n {
            let (cat, nouns) = leaves[(rng.next() % leaves.len() as u64) as usize];
            let (adj, mat, noun) = (rng.pick(ADJECTIVES), rng.pick(MATERIALS), rng.pick(nouns));
            ids.push(Uuid::now_v7());
            skus.push(format!("SEED-{}-{i:07}", &run[..8]).to_uppercase());
            names.push(format!("{} {mat} {noun}", capitalize(adj)));
            descriptions.push(format!(
                "A {adj} {noun} made of {mat}. Pairs well with a {} {}.",
                rng.pick(ADJECTIVES),
                rng.pick(nouns)
            ));
            categories.push(cat);
            prices.push(((rng.next() % 50_000) + 499) as i64);
            stock.push((rng.next() % 200) as i32);
        }
        let mut tx: Transaction<'_, Postgres> = pool.begin().await?;
        sqlx::query(
            "INSERT INTO products (id, sku, name, description, category_id, price_minor, currency)
             SELECT *, 'EUR' FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::bigint[])",
        )
        .bind(&ids)
        .bind(&skus)
        .bind(&names)
        .bind(&descriptions)
        .bind(&categories)
        .bind(&prices)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO stock (product_id, on_hand) SELECT * FROM unnest($1::uuid[], $2::int[])",
        )
        .bind(&ids)
        .bind(&stock)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO search_words (word, ndoc)
             SELECT w, count(*) FROM unnest($1::text[]) AS n, unnest(tsvector_to_array(to_tsvector('simple', n))) AS w
             GROUP BY w
             ON CONFLICT (word) DO UPDATE SET ndoc = search_words.ndoc + excluded.ndoc",
        )
        .bind(&names)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        done += n;
        progress(done);
    }
    sqlx::query("ANALYZE products").execute(pool).await?;
    Ok(())
}

async fn category(pool: &PgPool, slug: &str, parent: Option<Uuid>) -> Result<Uuid, CatalogError> {
    let name = capitalize(&slug.replace('-', " "));
    Ok(sqlx::query_scalar(
        "INSERT INTO categories (id, slug, name, parent_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (slug) DO UPDATE SET slug = excluded.slug RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(slug)
    .bind(name)
    .bind(parent)
    .fetch_one(pool)
    .await?)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}
