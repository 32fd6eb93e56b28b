//! PostgreSQL persistence of accounts (schema `users`). Every change that others must
//! hear about writes its outbox event in the same transaction.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{domain::Role, error::UsersError};

/// The embedded migrations of this service.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub password_hash: String,
    pub roles: Vec<String>,
    pub email_verified: bool,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl UserRow {
    pub fn roles(&self) -> Vec<Role> {
        self.roles
            .iter()
            .filter_map(|r| Role::from_name(r))
            .collect()
    }
}

// Column lists as macros so queries stay `&'static str` (sqlx checks that
// SQL is not built from runtime strings).
macro_rules! user_columns {
    () => {
        "id, email, display_name, password_hash, roles, email_verified, active, created_at, updated_at"
    };
}
macro_rules! key_columns {
    () => {
        "id, user_id, name, prefix, permissions, rate_limit_per_minute, expires_at, created_at, last_used_at"
    };
}

pub(crate) use {key_columns, user_columns};

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

    // --- accounts ---

    /// Inserts an account; `EmailTaken` if the normalized email exists.
    pub async fn create_user(
        &self,
        email: &str,
        email_normalized: &str,
        display_name: &str,
        password_hash: &str,
        roles: &[Role],
        email_verified: bool,
    ) -> Result<UserRow, UsersError> {
        let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query_as::<_, UserRow>(concat!("INSERT INTO users (id, email, email_normalized, display_name, password_hash, roles, email_verified)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (email_normalized) DO NOTHING
             RETURNING ", user_columns!()))
        .bind(Uuid::now_v7())
        .bind(email)
        .bind(email_normalized)
        .bind(display_name)
        .bind(password_hash)
        .bind(&roles)
        .bind(email_verified)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(UsersError::EmailTaken)?;
        OUTBOX
            .append(
                &mut tx,
                row.id,
                Payload::UserRegistered(ev::UserRegistered {
                    user_id: row.id.to_string(),
                    email: row.email.clone(),
                    roles: row.roles.clone(),
                }),
            )
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn user_by_email(
        &self,
        email_normalized: &str,
    ) -> Result<Option<UserRow>, UsersError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE email_normalized = $1"
        ))
        .bind(email_normalized)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn user(&self, id: Uuid) -> Result<Option<UserRow>, UsersError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Ids and display names of the active users among `ids`.
    pub async fn profiles(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, String)>, UsersError> {
        Ok(
            sqlx::query_as("SELECT id, display_name FROM users WHERE id = ANY($1) AND active")
                .bind(ids)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn update_display_name(
        &self,
        id: Uuid,
        name: &str,
    ) -> Result<Option<UserRow>, UsersError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<UserRow> = sqlx::query_as(concat!("UPDATE users SET display_name = $2, updated_at = now() WHERE id = $1 AND active RETURNING ", user_columns!()))
        .bind(id)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = &row {
            OUTBOX
                .append(
                    &mut tx,
                    row.id,
                    Payload::UserUpdated(ev::UserUpdated {
                        user_id: row.id.to_string(),
                        display_name: row.display_name.clone(),
                    }),
                )
                .await?;
        }
        tx.commit().await?;
        Ok(row)
    }

    /// One page in (created_at, id) order, starting after `after`.
    pub async fn list_users(
        &self,
        limit: i64,
        after: Option<(DateTime<Utc>, Uuid)>,
    ) -> Result<Vec<UserRow>, UsersError> {
        let (ts, id) = after.unzip();
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users
             WHERE $1::timestamptz IS NULL OR (created_at, id) > ($1, $2)
             ORDER BY created_at, id LIMIT $3"
        ))
        .bind(ts)
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn set_roles(&self, id: Uuid, roles: &[Role]) -> Result<Option<UserRow>, UsersError> {
        let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        let mut tx = self.pool.begin().await?;
        let row: Option<UserRow> = sqlx::query_as(concat!(
            "UPDATE users SET roles = $2, updated_at = now() WHERE id = $1 RETURNING ",
            user_columns!()
        ))
        .bind(id)
        .bind(&roles)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = &row {
            OUTBOX
                .append(
                    &mut tx,
                    row.id,
                    Payload::RolesChanged(ev::RolesChanged {
                        user_id: row.id.to_string(),
                        roles: row.roles.clone(),
                    }),
                )
                .await?;
        }
        tx.commit().await?;
        Ok(row)
    }

    /// Deactivates an account and ends its sessions and API keys.
    pub async fn deactivate(&self, id: Uuid) -> Result<Option<UserRow>, UsersError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<UserRow> = sqlx::query_as(concat!(
            "UPDATE users SET active = false, updated_at = now() WHERE id = $1 RETURNING ",
            user_columns!()
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = &row {
            sqlx::query("UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE api_keys SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            OUTBOX
                .append(
                    &mut tx,
                    row.id,
                    Payload::UserDeactivated(ev::UserDeactivated {
                        user_id: row.id.to_string(),
                    }),
                )
                .await?;
        }
        tx.commit().await?;
        Ok(row)
    }
}

/// Where this service appends its events, in the transaction of their
/// change; their `source` is "users".
pub const OUTBOX: agora_kit::outbox::Outbox = agora_kit::outbox::Outbox { source: "users" };

pub(crate) use agora_kit::events::Payload;
pub(crate) use agora_proto::events::v1 as ev;
