//! Product listing: PostgreSQL full-text search (name weighted over
//! description), typo correction against the vocabulary of product names
//! (edit distance and trigram similarity), filters, sort orders, keyset
//! pagination, and prefix suggestions.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use crate::{
    error::CatalogError,
    store::{ProductRow, Store, product_columns},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Order {
    Relevance,
    PriceAsc,
    PriceDesc,
    Newest,
}

/// A validated listing request.
#[derive(Debug, Clone)]
pub struct Query {
    pub words: Vec<String>,
    pub category: Option<String>,
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    pub in_stock: bool,
    pub order: Order,
    pub page_size: i64,
    pub after: Option<Cursor>,
}

/// Where the previous page ended, in the listing's own sort key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cursor {
    pub order: Order,
    /// Rank, price or creation time (micros), as the order needs.
    pub key: f64,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(token: &str, order: Order) -> Result<Self, CatalogError> {
        let invalid = || {
            CatalogError::invalid(
                "page_token",
                "is not a token from a previous page of this listing",
            )
        };
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let cursor: Cursor = serde_json::from_slice(&raw).map_err(|_| invalid())?;
        if cursor.order != order {
            return Err(invalid());
        }
        Ok(cursor)
    }
}

/// Splits search text into lower-case words of letters and digits (the
/// only characters that reach a tsquery).
pub fn words(q: &str) -> Vec<String> {
    q.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(8)
        .map(str::to_lowercase)
        .collect()
}

#[derive(sqlx::FromRow)]
struct Ranked {
    #[sqlx(flatten)]
    product: ProductRow,
    rank: f64,
}

impl Store {
    /// For each word, the word itself when it names something in the
    /// catalog, otherwise its closest known spellings.
    async fn corrected(&self, words: &[String]) -> Result<Vec<Vec<String>>, CatalogError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT q.w, c.word FROM unnest($1::text[]) AS q(w)
             CROSS JOIN LATERAL (
                 SELECT word FROM search_words WHERE word = q.w
                 UNION ALL
                 (SELECT word FROM search_words
                  WHERE NOT EXISTS (SELECT 1 FROM search_words WHERE word = q.w)
                    AND length(q.w) >= 3
                    AND length(word) BETWEEN length(q.w) - 2 AND length(q.w) + 2
                    AND (levenshtein(word, q.w) <= CASE WHEN length(q.w) <= 3 THEN 1 ELSE 2 END OR word % q.w)
                  ORDER BY levenshtein(word, q.w), similarity(word, q.w) DESC, ndoc DESC
                  LIMIT 3)
             ) c",
        )
        .bind(words)
        .fetch_all(self.pool())
        .await?;
        Ok(words
            .iter()
            .map(|w| {
                let mut alts: Vec<String> = rows
                    .iter()
                    .filter(|(q, _)| q == w)
                    .map(|(_, c)| c.clone())
                    .collect();
                if alts.is_empty() {
                    alts.push(w.clone());
                }
                alts
            })
            .collect())
    }

    /// One page of live products matching `q`.
    ///
    /// Relevance is tiered: 1 plus one for each query word (or its
    /// correction) found in the name, so a name match outranks a
    /// description match; ties go to the newest product. Unlike `ts_rank`
    /// this costs one cheap test per matching row, which keeps common words
    /// fast on large catalogs, and it is exact, so keyset pages stay stable.
    /// Matching and ordering run on `products` alone; stock is joined for
    /// the page only.
    pub async fn search(&self, q: &Query) -> Result<Vec<(ProductRow, f64)>, CatalogError> {
        let groups = if q.words.is_empty() {
            Vec::new()
        } else {
            self.corrected(&q.words).await?
        };
        let tsquery = (!groups.is_empty()).then(|| {
            groups
                .iter()
                .map(|a| format!("({})", a.join(" | ")))
                .collect::<Vec<_>>()
                .join(" & ")
        });
        let name_groups: Vec<String> = groups
            .iter()
            .map(|a| {
                format!(
                    "({})",
                    a.iter()
                        .map(|w| format!("{w}:A"))
                        .collect::<Vec<_>>()
                        .join(" | ")
                )
            })
            .collect();
        let rank_expr = |b: &mut QueryBuilder<Postgres>| {
            b.push("(1");
            for g in &name_groups {
                b.push(" + CASE WHEN p.search @@ to_tsquery('simple', ")
                    .push_bind(g.clone())
                    .push(") THEN 1 ELSE 0 END");
            }
            b.push(")::float8");
        };

        let mut b: QueryBuilder<Postgres> = QueryBuilder::new("SELECT ");
        b.push(product_columns!())
            .push(", r.rank FROM (SELECT p.id, ");
        rank_expr(&mut b);
        b.push(" AS rank FROM products p");
        if q.in_stock {
            b.push(" JOIN stock s ON s.product_id = p.id AND s.on_hand - s.reserved > 0");
        }
        b.push(" WHERE p.deleted_at IS NULL");
        if let Some(tsq) = &tsquery {
            b.push(" AND p.search @@ to_tsquery('simple', ")
                .push_bind(tsq.clone())
                .push(")");
        }
        if let Some(cat) = &q.category {
            // The category and all its descendants, by id or slug.
            b.push(" AND p.category_id IN (WITH RECURSIVE sub AS (SELECT id FROM categories WHERE id::text = ")
                .push_bind(cat.clone())
                .push(" OR slug = ")
                .push_bind(cat.clone())
                .push(" UNION ALL SELECT c.id FROM categories c JOIN sub ON c.parent_id = sub.id) SELECT id FROM sub)");
        }
        if let Some(min) = q.min_price {
            b.push(" AND p.price_minor >= ").push_bind(min);
        }
        if let Some(max) = q.max_price {
            b.push(" AND p.price_minor <= ").push_bind(max);
        }
        if let Some(c) = &q.after {
            b.push(" AND (");
            match q.order {
                Order::Relevance => {
                    rank_expr(&mut b);
                    b.push(", p.id) < (")
                        .push_bind(c.key)
                        .push(", ")
                        .push_bind(c.id)
                        .push(")");
                }
                Order::PriceAsc => {
                    b.push("p.price_minor, p.id) > (")
                        .push_bind(c.key as i64)
                        .push(", ")
                        .push_bind(c.id)
                        .push(")");
                }
                Order::PriceDesc => {
                    b.push("p.price_minor, p.id) < (")
                        .push_bind(c.key as i64)
                        .push(", ")
                        .push_bind(c.id)
                        .push(")");
                }
                Order::Newest => {
                    let t =
                        DateTime::<Utc>::from_timestamp_micros(c.key as i64).unwrap_or_default();
                    b.push("p.created_at, p.id) < (")
                        .push_bind(t)
                        .push(", ")
                        .push_bind(c.id)
                        .push(")");
                }
            }
        }
        let order = match q.order {
            Order::Relevance => " ORDER BY rank DESC, p.id DESC",
            Order::PriceAsc => " ORDER BY p.price_minor, p.id",
            Order::PriceDesc => " ORDER BY p.price_minor DESC, p.id DESC",
            Order::Newest => " ORDER BY p.created_at DESC, p.id DESC",
        };
        b.push(order).push(" LIMIT ").push_bind(q.page_size + 1);
        b.push(") r JOIN products p ON p.id = r.id LEFT JOIN stock s ON s.product_id = p.id");
        b.push(match q.order {
            Order::Relevance => " ORDER BY r.rank DESC, p.id DESC",
            _ => order,
        });
        let rows: Vec<Ranked> = b.build_query_as().fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(|r| (r.product, r.rank)).collect())
    }

    /// Live products whose name has a word starting with `prefix`.
    pub async fn suggest(
        &self,
        prefix: &[String],
        limit: i64,
    ) -> Result<Vec<(Uuid, String)>, CatalogError> {
        let Some((last, head)) = prefix.split_last() else {
            return Ok(Vec::new());
        };
        let mut terms: Vec<String> = head.to_vec();
        terms.push(format!("{last}:*"));
        let tsq = terms.join(" & ");
        Ok(sqlx::query_as(
            "SELECT id, name FROM products
             WHERE deleted_at IS NULL AND search @@ to_tsquery('simple', $1)
             ORDER BY ts_rank(search, to_tsquery('simple', $1)) DESC, length(name), id
             LIMIT $2",
        )
        .bind(tsq)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }
}

/// The cursor after `row` in `order`.
pub fn cursor_after(order: Order, row: &ProductRow, rank: f64) -> Cursor {
    let key = match order {
        Order::Relevance => rank,
        Order::PriceAsc | Order::PriceDesc => row.price_minor as f64,
        Order::Newest => row.created_at.timestamp_micros() as f64,
    };
    Cursor {
        order,
        key,
        id: row.id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_text_becomes_safe_lower_case_words() {
        assert_eq!(words("Desk LAMP!"), vec!["desk", "lamp"]);
        assert_eq!(words("a & b | !c:*"), vec!["a", "b", "c"]);
        assert!(words(" -- ").is_empty());
    }

    #[test]
    fn cursors_round_trip_and_belong_to_one_order() {
        let c = Cursor {
            order: Order::PriceAsc,
            key: 2599.0,
            id: Uuid::nil(),
        };
        let back = Cursor::decode(&c.encode(), Order::PriceAsc).expect("round trip");
        assert_eq!(back.key, 2599.0);
        assert!(Cursor::decode(&c.encode(), Order::Newest).is_err());
        assert!(Cursor::decode("garbage", Order::PriceAsc).is_err());
    }
}
