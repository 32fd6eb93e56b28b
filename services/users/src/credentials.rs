//! Credentials other than passwords: rotating refresh tokens, single-use
//! email-verification and password-reset tokens, and API keys. Secrets are
//! stored as SHA-256 digests only.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{
    error::UsersError,
    store::{OUTBOX, Payload, Store, UserRow, ev, key_columns, user_columns},
};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub prefix: String,
    pub permissions: Vec<String>,
    pub rate_limit_per_minute: i32,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A one-time token's purpose, as stored.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    EmailVerification,
    PasswordReset,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::EmailVerification => "email_verification",
            Purpose::PasswordReset => "password_reset",
        }
    }

    fn event(self) -> &'static str {
        match self {
            Purpose::EmailVerification => "users.email_verification_requested",
            Purpose::PasswordReset => "users.password_reset_requested",
        }
    }
}

#[derive(sqlx::FromRow)]
struct RefreshRow {
    family_id: Uuid,
    user_id: Uuid,
    expires_at: DateTime<Utc>,
    used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

/// What presenting a refresh token led to.
pub enum Rotation {
    /// The token was current: here is its user; the new token is stored.
    Rotated(UserRow),
    /// The token was already used: its family is now revoked.
    Reused,
    /// Unknown, expired, revoked, or the user is deactivated.
    Invalid,
}

impl Store {
    // --- refresh tokens ---

    pub async fn insert_refresh_token(
        &self,
        hash: &[u8],
        family: Uuid,
        user_id: Uuid,
        expires_at: DateTime<Utc>,
    ) -> Result<(), UsersError> {
        sqlx::query("INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(hash)
            .bind(family)
            .bind(user_id)
            .bind(expires_at)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Marks the presented token used and stores its successor in the same
    /// family, atomically. The row lock makes two concurrent presentations
    /// of one token count as a reuse, never as two rotations.
    pub async fn rotate_refresh_token(
        &self,
        presented: &[u8],
        next: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<Rotation, UsersError> {
        let mut tx = self.pool().begin().await?;
        let found: Option<RefreshRow> = sqlx::query_as(
            "SELECT family_id, user_id, expires_at, used_at, revoked_at FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
        )
        .bind(presented)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(RefreshRow {
            family_id: family,
            user_id,
            expires_at: token_expires,
            used_at,
            revoked_at,
        }) = found
        else {
            return Ok(Rotation::Invalid);
        };
        if used_at.is_some() {
            sqlx::query("UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL")
                .bind(family)
                .execute(&mut *tx)
                .await?;
            OUTBOX
                .append(
                    &mut tx,
                    user_id,
                    Payload::RefreshTokenReused(ev::RefreshTokenReused {
                        user_id: user_id.to_string(),
                        family_id: family.to_string(),
                    }),
                )
                .await?;
            tx.commit().await?;
            return Ok(Rotation::Reused);
        }
        if revoked_at.is_some() || token_expires <= Utc::now() {
            return Ok(Rotation::Invalid);
        }
        let user: Option<UserRow> = sqlx::query_as(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = $1 AND active"
        ))
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(user) = user else {
            return Ok(Rotation::Invalid);
        };
        sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1")
            .bind(presented)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(next)
            .bind(family)
            .bind(user_id)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Rotation::Rotated(user))
    }

    /// Revokes the family of a refresh token. Returns whether it was found.
    pub async fn revoke_family_of(&self, presented: &[u8]) -> Result<bool, UsersError> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = now()
             WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $1) AND revoked_at IS NULL",
        )
        .bind(presented)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    // --- one-time tokens ---

    /// Stores a one-time token and publishes it (with the secret, for the
    /// mailer) through the outbox, in one transaction.
    pub async fn issue_one_time_token(
        &self,
        user: &UserRow,
        purpose: Purpose,
        hash: &[u8],
        secret: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), UsersError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("INSERT INTO one_time_tokens (token_hash, user_id, purpose, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(hash)
            .bind(user.id)
            .bind(purpose.as_str())
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        let issued = ev::OneTimeTokenIssued {
            user_id: user.id.to_string(),
            email: user.email.clone(),
            token: secret.to_owned(),
            expire_time: Some(agora_kit::proto::timestamp(expires_at)),
        };
        let payload = match purpose {
            Purpose::EmailVerification => Payload::EmailVerificationRequested(issued),
            Purpose::PasswordReset => Payload::PasswordResetRequested(issued),
        };
        let event_id = OUTBOX.append(&mut tx, user.id, payload).await?;
        tx.commit().await?;
        tracing::info!(user_id = %user.id, %event_id, event = purpose.event(), "one-time token issued");
        Ok(())
    }

    /// Consumes a valid token of `purpose` and marks the email verified.
    pub async fn verify_email(&self, hash: &[u8]) -> Result<Option<UserRow>, UsersError> {
        let mut tx = self.pool().begin().await?;
        let Some(user_id) = consume(&mut tx, hash, Purpose::EmailVerification).await? else {
            return Ok(None);
        };
        let row: UserRow = sqlx::query_as(concat!(
            "UPDATE users SET email_verified = true, updated_at = now() WHERE id = $1 RETURNING ",
            user_columns!()
        ))
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
        OUTBOX
            .append(
                &mut tx,
                row.id,
                Payload::EmailVerified(ev::EmailVerified {
                    user_id: row.id.to_string(),
                    email: row.email.clone(),
                }),
            )
            .await?;
        tx.commit().await?;
        Ok(Some(row))
    }

    /// Consumes a valid reset token, sets the password and ends sessions.
    pub async fn reset_password(
        &self,
        hash: &[u8],
        password_hash: &str,
    ) -> Result<bool, UsersError> {
        let mut tx = self.pool().begin().await?;
        let Some(user_id) = consume(&mut tx, hash, Purpose::PasswordReset).await? else {
            return Ok(false);
        };
        sqlx::query("UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1")
            .bind(user_id)
            .bind(password_hash)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        OUTBOX
            .append(
                &mut tx,
                user_id,
                Payload::PasswordChanged(ev::PasswordChanged {
                    user_id: user_id.to_string(),
                }),
            )
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    // --- API keys ---

    #[allow(clippy::too_many_arguments)]
    pub async fn create_api_key(
        &self,
        user_id: Uuid,
        name: &str,
        prefix: &str,
        hash: &[u8],
        permissions: &[String],
        rate_limit_per_minute: i32,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<ApiKeyRow, UsersError> {
        Ok(sqlx::query_as(concat!("INSERT INTO api_keys (id, user_id, name, prefix, key_hash, permissions, rate_limit_per_minute, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ", key_columns!()))
        .bind(Uuid::now_v7())
        .bind(user_id)
        .bind(name)
        .bind(prefix)
        .bind(hash)
        .bind(permissions)
        .bind(rate_limit_per_minute)
        .bind(expires_at)
        .fetch_one(self.pool())
        .await?)
    }

    pub async fn list_api_keys(&self, user_id: Uuid) -> Result<Vec<ApiKeyRow>, UsersError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC"
        ))
        .bind(user_id)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn revoke_api_key(&self, user_id: Uuid, id: Uuid) -> Result<bool, UsersError> {
        let done = sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL")
            .bind(id)
            .bind(user_id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The live key with this hash and its active owner.
    pub async fn authenticate_api_key(
        &self,
        hash: &[u8],
    ) -> Result<Option<(ApiKeyRow, UserRow)>, UsersError> {
        // `last_used_at` is refreshed at most once a minute, so busy keys
        // do not turn every authenticated read into a write.
        let key: Option<ApiKeyRow> = sqlx::query_as(concat!(
            "WITH live AS (SELECT ",
            key_columns!(),
            " FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())),
             touched AS (UPDATE api_keys SET last_used_at = now()
                 WHERE id IN (SELECT id FROM live) AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute'))
             SELECT * FROM live"
        ))
        .bind(hash)
        .fetch_optional(self.pool())
        .await?;
        let Some(key) = key else { return Ok(None) };
        Ok(self
            .user(key.user_id)
            .await?
            .filter(|u| u.active)
            .map(|u| (key, u)))
    }
}

/// Marks a live one-time token used; its user id if it was live.
async fn consume(
    tx: &mut Transaction<'_, Postgres>,
    hash: &[u8],
    purpose: Purpose,
) -> Result<Option<Uuid>, UsersError> {
    Ok(sqlx::query_scalar(
        "UPDATE one_time_tokens SET used_at = now()
         WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > now()
         RETURNING user_id",
    )
    .bind(hash)
    .bind(purpose.as_str())
    .fetch_optional(&mut **tx)
    .await?)
}
