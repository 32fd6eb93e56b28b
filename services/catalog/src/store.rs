//! PostgreSQL persistence for products and categories (schema `catalog`).
//! Every change writes its outbox event in the same transaction.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::{
    domain::{Money, Sku, etag},
    error::CatalogError,
};

/// The embedded migrations of this service.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProductRow {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category_id: Uuid,
    pub price_minor: i64,
    pub currency: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub available: i32,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CategoryRow {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub parent_id: Option<Uuid>,
}

#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct StockRow {
    pub product_id: Uuid,
    pub on_hand: i32,
    pub reserved: i32,
}

/// A new product, validated.
pub struct NewProduct {
    pub sku: Sku,
    pub name: String,
    pub description: String,
    pub category_id: Uuid,
    pub price: Money,
    pub initial_stock: i32,
}

/// Changes to a product; `None` leaves a field as it is.
#[derive(Default)]
pub struct ProductChanges {
    pub sku: Option<Sku>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub category_id: Option<Uuid>,
    pub price: Option<Money>,
}

/// Columns of a product with its available stock; pair with [`product_from`].
macro_rules! product_columns {
    () => {
        "p.id, p.sku, p.name, p.description, p.category_id, p.price_minor, p.currency, p.version, \
         p.created_at, p.updated_at, coalesce(s.on_hand - s.reserved, 0) AS available"
    };
}
macro_rules! product_from {
    () => {
        " FROM products p LEFT JOIN stock s ON s.product_id = p.id "
    };
}
pub(crate) use product_columns;

const UNIQUE_VIOLATION: &str = "23505";
const FOREIGN_KEY_VIOLATION: &str = "23503";

fn db_code(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    // --- categories ---

    pub async fn categories(&self) -> Result<Vec<CategoryRow>, CatalogError> {
        Ok(sqlx::query_as(
            "WITH RECURSIVE tree AS (
                 SELECT id, slug, name, parent_id, 0 AS depth FROM categories WHERE parent_id IS NULL
                 UNION ALL
                 SELECT c.id, c.slug, c.name, c.parent_id, t.depth + 1 FROM categories c JOIN tree t ON c.parent_id = t.id
             )
             SELECT id, slug, name, parent_id FROM tree ORDER BY depth, name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn create_category(
        &self,
        slug: &str,
        name: &str,
        parent: Option<Uuid>,
    ) -> Result<CategoryRow, CatalogError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query_as::<_, CategoryRow>(
            "INSERT INTO categories (id, slug, name, parent_id) VALUES ($1, $2, $3, $4) RETURNING id, slug, name, parent_id",
        )
        .bind(Uuid::now_v7())
        .bind(slug)
        .bind(name)
        .bind(parent)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match db_code(&e).as_deref() {
            Some(UNIQUE_VIOLATION) => CatalogError::AlreadyExists(format!("a category with slug {slug:?} already exists")),
            Some(FOREIGN_KEY_VIOLATION) => CatalogError::NotFound(format!(
                "parent category {}",
                parent.map(|p| p.to_string()).unwrap_or_default()
            )),
            _ => e.into(),
        })?;
        OUTBOX
            .append(
                &mut tx,
                row.id,
                Payload::CategoryCreated(ev::CategoryCreated {
                    category_id: row.id.to_string(),
                    slug: row.slug.clone(),
                }),
            )
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    // --- products ---

    pub async fn product(&self, id: Uuid) -> Result<Option<ProductRow>, CatalogError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            product_columns!(),
            product_from!(),
            "WHERE p.id = $1 AND p.deleted_at IS NULL"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Live products by id, in the order of `ids`.
    pub async fn products_by_ids(&self, ids: &[Uuid]) -> Result<Vec<ProductRow>, CatalogError> {
        let mut rows: Vec<ProductRow> = sqlx::query_as(concat!(
            "SELECT ",
            product_columns!(),
            product_from!(),
            "WHERE p.id = ANY($1) AND p.deleted_at IS NULL"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.sort_by_key(|r| ids.iter().position(|id| *id == r.id));
        Ok(rows)
    }

    pub async fn create_product(
        &self,
        new: NewProduct,
        actor: &str,
    ) -> Result<ProductRow, CatalogError> {
        let mut tx = self.pool.begin().await?;
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO products (id, sku, name, description, category_id, price_minor, currency)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(new.sku.as_str())
        .bind(&new.name)
        .bind(&new.description)
        .bind(new.category_id)
        .bind(new.price.amount_minor)
        .bind(&new.price.currency)
        .execute(&mut *tx)
        .await
        .map_err(|e| match db_code(&e).as_deref() {
            Some(UNIQUE_VIOLATION) => CatalogError::AlreadyExists(format!(
                "a product with SKU {:?} already exists",
                new.sku.as_str()
            )),
            Some(FOREIGN_KEY_VIOLATION) => {
                CatalogError::NotFound(format!("category {}", new.category_id))
            }
            _ => e.into(),
        })?;
        sqlx::query("INSERT INTO stock (product_id, on_hand) VALUES ($1, $2)")
            .bind(id)
            .bind(new.initial_stock)
            .execute(&mut *tx)
            .await?;
        if new.initial_stock > 0 {
            movement(
                &mut tx,
                id,
                new.initial_stock,
                0,
                "initial stock",
                None,
                actor,
            )
            .await?;
        }
        index_words(&mut tx, &new.name).await?;
        let row = product_in(&mut tx, id)
            .await?
            .ok_or_else(|| CatalogError::NotFound("product".into()))?;
        OUTBOX
            .append(&mut tx, id, Payload::ProductCreated(product_event(&row)))
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Applies `changes` if `expected_version` (when given) is current.
    pub async fn update_product(
        &self,
        id: Uuid,
        expected_version: Option<i64>,
        changes: ProductChanges,
    ) -> Result<ProductRow, CatalogError> {
        let mut tx = self.pool.begin().await?;
        let current: Option<(i64,)> = sqlx::query_as(
            "SELECT version FROM products WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let (version,) = current.ok_or_else(|| CatalogError::NotFound(format!("product {id}")))?;
        check_version(expected_version, version)?;
        sqlx::query(
            "UPDATE products SET
                 sku = coalesce($2, sku), name = coalesce($3, name), description = coalesce($4, description),
                 category_id = coalesce($5, category_id), price_minor = coalesce($6, price_minor),
                 currency = coalesce($7, currency), version = version + 1, updated_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .bind(changes.sku.as_ref().map(Sku::as_str))
        .bind(changes.name.as_deref())
        .bind(changes.description.as_deref())
        .bind(changes.category_id)
        .bind(changes.price.as_ref().map(|m| m.amount_minor))
        .bind(changes.price.as_ref().map(|m| m.currency.as_str()))
        .execute(&mut *tx)
        .await
        .map_err(|e| match db_code(&e).as_deref() {
            Some(UNIQUE_VIOLATION) => CatalogError::AlreadyExists("another product already has this SKU".into()),
            Some(FOREIGN_KEY_VIOLATION) => CatalogError::NotFound(format!(
                "category {}",
                changes.category_id.map(|c| c.to_string()).unwrap_or_default()
            )),
            _ => e.into(),
        })?;
        if let Some(name) = &changes.name {
            index_words(&mut tx, name).await?;
        }
        let row = product_in(&mut tx, id)
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("product {id}")))?;
        OUTBOX
            .append(&mut tx, id, Payload::ProductUpdated(product_event(&row)))
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn delete_product(
        &self,
        id: Uuid,
        expected_version: Option<i64>,
    ) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await?;
        let current: Option<(i64,)> = sqlx::query_as(
            "SELECT version FROM products WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let (version,) = current.ok_or_else(|| CatalogError::NotFound(format!("product {id}")))?;
        check_version(expected_version, version)?;
        sqlx::query("UPDATE products SET deleted_at = now(), version = version + 1, updated_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        OUTBOX
            .append(
                &mut tx,
                id,
                Payload::ProductDeleted(ev::ProductDeleted {
                    product_id: id.to_string(),
                }),
            )
            .await?;
        tx.commit().await?;
        Ok(())
    }

    // --- views and recommendations ---

    /// Records a view unless the same viewer saw the product in the last
    /// ten minutes (reloads do not inflate co-occurrence).
    pub async fn record_view(&self, viewer: &str, product: Uuid) -> Result<(), CatalogError> {
        sqlx::query(
            "INSERT INTO product_views (viewer_id, product_id)
             SELECT $1, $2 WHERE NOT EXISTS (
                 SELECT 1 FROM product_views WHERE viewer_id = $1 AND product_id = $2
                 AND viewed_at > now() - interval '10 minutes')",
        )
        .bind(viewer)
        .bind(product)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Products viewed by the viewers of `product` in the last 30 days, by
    /// how many distinct viewers saw both.
    pub async fn co_viewed(&self, product: Uuid, limit: i64) -> Result<Vec<Uuid>, CatalogError> {
        Ok(sqlx::query_scalar(
            "SELECT other.product_id
             FROM product_views mine
             JOIN product_views other ON other.viewer_id = mine.viewer_id AND other.product_id <> mine.product_id
             JOIN products p ON p.id = other.product_id AND p.deleted_at IS NULL
             WHERE mine.product_id = $1
               AND mine.viewed_at > now() - interval '30 days' AND other.viewed_at > now() - interval '30 days'
             GROUP BY other.product_id
             ORDER BY count(DISTINCT other.viewer_id) DESC, other.product_id
             LIMIT $2",
        )
        .bind(product)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Best sellers (committed units) of the product's category.
    pub async fn category_best_sellers(
        &self,
        product: Uuid,
        limit: i64,
    ) -> Result<Vec<Uuid>, CatalogError> {
        Ok(sqlx::query_scalar(
            "SELECT p.id FROM products p
             LEFT JOIN (
                 SELECT ri.product_id, sum(ri.quantity) AS sold
                 FROM reservation_items ri JOIN reservations r ON r.id = ri.reservation_id AND r.status = 'committed'
                 GROUP BY ri.product_id
             ) sales ON sales.product_id = p.id
             WHERE p.category_id = (SELECT category_id FROM products WHERE id = $1)
               AND p.id <> $1 AND p.deleted_at IS NULL
             ORDER BY coalesce(sales.sold, 0) DESC, p.created_at DESC
             LIMIT $2",
        )
        .bind(product)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

fn check_version(expected: Option<i64>, current: i64) -> Result<(), CatalogError> {
    match expected {
        Some(v) if v != current => Err(CatalogError::StaleEtag {
            given: etag(v),
            current: etag(current),
        }),
        _ => Ok(()),
    }
}

pub(crate) async fn product_in(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
) -> Result<Option<ProductRow>, CatalogError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        product_columns!(),
        product_from!(),
        "WHERE p.id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?)
}

fn product_event(row: &ProductRow) -> ev::ProductChanged {
    ev::ProductChanged {
        product_id: row.id.to_string(),
        sku: row.sku.clone(),
        name: row.name.clone(),
        category_id: row.category_id.to_string(),
        price: Some(ev::Money {
            currency: row.currency.clone(),
            amount_minor: row.price_minor,
        }),
        etag: etag(row.version),
    }
}

/// Adds the words of a product name to the typo-correction vocabulary.
async fn index_words(tx: &mut Transaction<'_, Postgres>, name: &str) -> Result<(), CatalogError> {
    sqlx::query(
        "INSERT INTO search_words (word)
         SELECT DISTINCT w FROM unnest(tsvector_to_array(to_tsvector('simple', $1))) AS w
         ON CONFLICT (word) DO UPDATE SET ndoc = search_words.ndoc + 1",
    )
    .bind(name)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records a stock change.
pub(crate) async fn movement(
    tx: &mut Transaction<'_, Postgres>,
    product: Uuid,
    on_hand_delta: i32,
    reserved_delta: i32,
    reason: &str,
    reservation: Option<Uuid>,
    actor: &str,
) -> Result<(), CatalogError> {
    sqlx::query(
        "INSERT INTO stock_movements (product_id, on_hand_delta, reserved_delta, reason, reservation_id, actor)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(product)
    .bind(on_hand_delta)
    .bind(reserved_delta)
    .bind(reason)
    .bind(reservation)
    .bind(actor)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Where this service appends its events, in the transaction of their
/// change; their `source` is "catalog".
pub const OUTBOX: agora_kit::outbox::Outbox = agora_kit::outbox::Outbox { source: "catalog" };

pub(crate) use agora_kit::events::Payload;
pub(crate) use agora_proto::events::v1 as ev;
