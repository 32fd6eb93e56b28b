//! Every way a users call can fail, and its one mapping to a gRPC status.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// A request field is invalid; the message names the field.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("an account with this email already exists")]
    EmailTaken,
    /// Wrong email or password (deliberately not saying which).
    #[error("wrong email or password")]
    InvalidCredentials,
    #[error("the account is deactivated")]
    Deactivated,
    /// A refresh, verification or reset token that cannot be used.
    #[error("{0}")]
    InvalidToken(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    PermissionDenied(&'static str),
    /// Every password-hashing slot stayed busy (a sign-in flood).
    #[error("too many sign-ins are in progress; retry in a moment")]
    Busy,
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl UsersError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

impl From<sqlx::Error> for UsersError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(anyhow::Error::new(e).context("database error"))
    }
}

impl From<UsersError> for Status {
    fn from(e: UsersError) -> Self {
        let message = e.to_string();
        match e {
            UsersError::InvalidArgument { .. } => Status::invalid_argument(message),
            UsersError::EmailTaken => Status::already_exists(message),
            UsersError::InvalidCredentials
            | UsersError::Deactivated
            | UsersError::InvalidToken(_) => Status::unauthenticated(message),
            UsersError::NotFound(_) => Status::not_found(message),
            UsersError::PermissionDenied(_) => Status::permission_denied(message),
            UsersError::Busy => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
            ),
            UsersError::Internal(e) => {
                // The cause chain goes to the log only; clients learn nothing internal.
                tracing::error!(error = format!("{e:#}"), "users request failed");
                Status::internal(message)
            }
        }
    }
}
