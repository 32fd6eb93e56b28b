//! Stock and reservations. Stock never goes negative and is never counted
//! twice: every change is one conditional `UPDATE` on the product's stock
//! row (`on_hand - reserved >= wanted`), which PostgreSQL re-checks after
//! taking the row lock, so concurrent reservations for the last units
//! serialize on that row and only those that fit succeed.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{
    error::CatalogError,
    store::{OUTBOX, Payload, StockRow, Store, ev, movement},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Held,
    Committed,
    Released,
    Expired,
}

impl Status {
    fn parse(s: &str) -> Self {
        match s {
            "committed" => Status::Committed,
            "released" => Status::Released,
            "expired" => Status::Expired,
            _ => Status::Held,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Status::Held => "held",
            Status::Committed => "committed",
            Status::Released => "released",
            Status::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Reservation {
    pub id: Uuid,
    pub owner_id: String,
    pub status: Status,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// (product, quantity), ordered by product.
    pub items: Vec<(Uuid, i32)>,
}

#[derive(sqlx::FromRow)]
struct ReservationRow {
    id: Uuid,
    owner_id: String,
    status: String,
    expires_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

impl Store {
    pub async fn stock(&self, product: Uuid) -> Result<Option<StockRow>, CatalogError> {
        Ok(sqlx::query_as(
            "SELECT s.product_id, s.on_hand, s.reserved FROM stock s JOIN products p ON p.id = s.product_id
             WHERE s.product_id = $1 AND p.deleted_at IS NULL",
        )
        .bind(product)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Adds `delta` units on hand (negative removes), never below what is reserved.
    pub async fn adjust_stock(
        &self,
        product: Uuid,
        delta: i32,
        reason: &str,
        actor: &str,
    ) -> Result<StockRow, CatalogError> {
        let mut tx = self.pool().begin().await?;
        let row: Option<StockRow> = sqlx::query_as(
            "UPDATE stock SET on_hand = on_hand + $2
             WHERE product_id = $1 AND on_hand + $2 >= reserved
               AND EXISTS (SELECT 1 FROM products WHERE id = $1 AND deleted_at IS NULL)
             RETURNING product_id, on_hand, reserved",
        )
        .bind(product)
        .bind(delta)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            drop(tx);
            return Err(match self.stock(product).await? {
                None => CatalogError::NotFound(format!("product {product}")),
                Some(s) => CatalogError::FailedPrecondition(format!(
                    "cannot remove {} units: {} on hand, {} of them reserved",
                    -delta, s.on_hand, s.reserved
                )),
            });
        };
        movement(&mut tx, product, delta, 0, reason, None, actor).await?;
        OUTBOX
            .append(
                &mut tx,
                product,
                Payload::StockChanged(ev::StockChanged {
                    product_id: product.to_string(),
                    delta,
                    reason: reason.to_owned(),
                    on_hand: row.on_hand,
                    reserved: row.reserved,
                }),
            )
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Holds every item or none. With an idempotency key, a repeated request
    /// returns the reservation the first one made.
    pub async fn reserve(
        &self,
        owner: &str,
        idempotency_key: Option<&str>,
        items: &[(Uuid, i32)],
        expires_at: DateTime<Utc>,
    ) -> Result<Reservation, CatalogError> {
        let mut tx = self.pool().begin().await?;
        let id = Uuid::now_v7();
        // Claim the idempotency key first: a concurrent twin blocks here
        // until this transaction ends, then sees the conflict.
        let inserted = sqlx::query(
            "INSERT INTO reservations (id, owner_id, status, idempotency_key, expires_at) VALUES ($1, $2, 'held', $3, $4)
             ON CONFLICT (owner_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
        )
        .bind(id)
        .bind(owner)
        .bind(idempotency_key)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            drop(tx);
            let existing: Uuid = sqlx::query_scalar(
                "SELECT id FROM reservations WHERE owner_id = $1 AND idempotency_key = $2",
            )
            .bind(owner)
            .bind(idempotency_key)
            .fetch_one(self.pool())
            .await?;
            return self
                .reservation(existing)
                .await?
                .ok_or_else(|| CatalogError::NotFound("reservation".into()));
        }
        // Items are sorted by product id, so concurrent reservations lock
        // stock rows in the same order and cannot deadlock.
        for &(product, quantity) in items {
            let held = sqlx::query(
                "UPDATE stock SET reserved = reserved + $2
                 WHERE product_id = $1 AND on_hand - reserved >= $2
                   AND EXISTS (SELECT 1 FROM products WHERE id = $1 AND deleted_at IS NULL)",
            )
            .bind(product)
            .bind(quantity)
            .execute(&mut *tx)
            .await?;
            if held.rows_affected() == 0 {
                // Nothing is kept: dropping the transaction rolls back every hold.
                drop(tx);
                return Err(match self.stock(product).await? {
                    None => CatalogError::NotFound(format!("product {product}")),
                    Some(s) => CatalogError::FailedPrecondition(format!(
                        "not enough stock for product {product}: {} available, {quantity} requested",
                        s.on_hand - s.reserved
                    )),
                });
            }
            sqlx::query("INSERT INTO reservation_items (reservation_id, product_id, quantity) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(product)
                .bind(quantity)
                .execute(&mut *tx)
                .await?;
            movement(&mut tx, product, 0, quantity, "reserved", Some(id), owner).await?;
        }
        let reservation = load(&mut tx, id)
            .await?
            .ok_or_else(|| CatalogError::NotFound("reservation".into()))?;
        let created = reservation_event(&mut tx, &reservation).await?;
        OUTBOX
            .append(&mut tx, id, Payload::ReservationCreated(created))
            .await?;
        tx.commit().await?;
        Ok(reservation)
    }

    pub async fn reservation(&self, id: Uuid) -> Result<Option<Reservation>, CatalogError> {
        let mut tx = self.pool().begin().await?;
        let r = load(&mut tx, id).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// Sells held stock. Committing twice answers the same reservation.
    pub async fn commit(
        &self,
        id: Uuid,
        may_act: impl Fn(&str) -> bool,
    ) -> Result<Reservation, CatalogError> {
        let mut tx = self.pool().begin().await?;
        let r = lock(&mut tx, id, &may_act).await?;
        match r.status {
            Status::Committed => return Ok(r),
            Status::Released | Status::Expired => {
                return Err(CatalogError::FailedPrecondition(format!(
                    "reservation {id} is {} and can no longer be committed",
                    r.status.as_str()
                )));
            }
            Status::Held => {}
        }
        if r.expires_at <= Utc::now() {
            finish(&mut tx, &r, Status::Expired).await?;
            tx.commit().await?;
            return Err(CatalogError::FailedPrecondition(format!(
                "reservation {id} expired and its stock was released"
            )));
        }
        finish(&mut tx, &r, Status::Committed).await?;
        let done = load(&mut tx, id)
            .await?
            .ok_or_else(|| CatalogError::NotFound("reservation".into()))?;
        tx.commit().await?;
        Ok(done)
    }

    /// Gives held stock back. Releasing twice answers the same reservation.
    pub async fn release(
        &self,
        id: Uuid,
        may_act: impl Fn(&str) -> bool,
    ) -> Result<Reservation, CatalogError> {
        let mut tx = self.pool().begin().await?;
        let r = lock(&mut tx, id, &may_act).await?;
        match r.status {
            Status::Released | Status::Expired => return Ok(r),
            Status::Committed => {
                return Err(CatalogError::FailedPrecondition(format!(
                    "reservation {id} is committed and cannot be released"
                )));
            }
            Status::Held => {}
        }
        finish(&mut tx, &r, Status::Released).await?;
        let done = load(&mut tx, id)
            .await?
            .ok_or_else(|| CatalogError::NotFound("reservation".into()))?;
        tx.commit().await?;
        Ok(done)
    }

    /// Releases up to `limit` held reservations whose time is up; returns
    /// the products whose stock changed. Safe to run on every replica at
    /// once (SKIP LOCKED).
    pub async fn expire_due(&self, limit: i64) -> Result<Vec<Uuid>, CatalogError> {
        let mut tx = self.pool().begin().await?;
        let due: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM reservations WHERE status = 'held' AND expires_at <= now()
             ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut products = Vec::new();
        for id in &due {
            if let Some(r) = load(&mut tx, *id).await? {
                finish(&mut tx, &r, Status::Expired).await?;
                products.extend(r.items.iter().map(|(p, _)| *p));
            }
        }
        tx.commit().await?;
        products.sort_unstable();
        products.dedup();
        Ok(products)
    }
}

/// Moves a held reservation to `to`, adjusting stock and recording it.
async fn finish(
    tx: &mut Transaction<'_, Postgres>,
    r: &Reservation,
    to: Status,
) -> Result<(), CatalogError> {
    let sold = to == Status::Committed;
    for &(product, quantity) in &r.items {
        let on_hand_delta = if sold { -quantity } else { 0 };
        sqlx::query("UPDATE stock SET on_hand = on_hand + $2, reserved = reserved - $3 WHERE product_id = $1")
            .bind(product)
            .bind(on_hand_delta)
            .bind(quantity)
            .execute(&mut **tx)
            .await?;
        movement(
            tx,
            product,
            on_hand_delta,
            -quantity,
            to.as_str(),
            Some(r.id),
            &r.owner_id,
        )
        .await?;
    }
    sqlx::query("UPDATE reservations SET status = $2, updated_at = now() WHERE id = $1")
        .bind(r.id)
        .bind(to.as_str())
        .execute(&mut **tx)
        .await?;
    let change = reservation_event(tx, r).await?;
    let payload = match to {
        Status::Committed => Payload::ReservationCommitted(change),
        Status::Expired => Payload::ReservationExpired(change),
        _ => Payload::ReservationReleased(change),
    };
    OUTBOX.append(tx, r.id, payload).await?;
    Ok(())
}

/// A reservation's event payload: its items at their current prices.
async fn reservation_event(
    tx: &mut Transaction<'_, Postgres>,
    r: &Reservation,
) -> Result<ev::ReservationChanged, CatalogError> {
    let ids: Vec<Uuid> = r.items.iter().map(|(p, _)| *p).collect();
    let prices: Vec<(Uuid, i64, String)> =
        sqlx::query_as("SELECT id, price_minor, currency FROM products WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut **tx)
            .await?;
    let items = r
        .items
        .iter()
        .map(|&(product, quantity)| ev::ReservationItem {
            product_id: product.to_string(),
            quantity,
            unit_price: prices.iter().find(|(id, _, _)| *id == product).map(
                |(_, amount, currency)| ev::Money {
                    currency: currency.clone(),
                    amount_minor: *amount,
                },
            ),
        })
        .collect();
    Ok(ev::ReservationChanged {
        reservation_id: r.id.to_string(),
        owner_id: r.owner_id.clone(),
        items,
    })
}

async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    may_act: &impl Fn(&str) -> bool,
) -> Result<Reservation, CatalogError> {
    sqlx::query("SELECT 1 FROM reservations WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    let r = load(tx, id)
        .await?
        .ok_or_else(|| CatalogError::NotFound(format!("reservation {id}")))?;
    if !may_act(&r.owner_id) {
        // Someone else's reservation is reported as absent, not forbidden,
        // so ids cannot be probed.
        return Err(CatalogError::NotFound(format!("reservation {id}")));
    }
    Ok(r)
}

async fn load(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
) -> Result<Option<Reservation>, CatalogError> {
    let row: Option<ReservationRow> = sqlx::query_as(
        "SELECT id, owner_id, status, expires_at, created_at FROM reservations WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let items: Vec<(Uuid, i32)> = sqlx::query_as(
        "SELECT product_id, quantity FROM reservation_items WHERE reservation_id = $1 ORDER BY product_id",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(Some(Reservation {
        id: row.id,
        owner_id: row.owner_id,
        status: Status::parse(&row.status),
        expires_at: row.expires_at,
        created_at: row.created_at,
        items,
    }))
}
