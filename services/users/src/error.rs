//! Every way a users call can fail, as the kit's shared error core.

use std::time::Duration;

use agora_kit::error::Error;
use tonic::Status;

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
    #[error(transparent)]
    Core(#[from] Error),
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
        Self::Core(e.into())
    }
}

impl From<UsersError> for Error {
    fn from(e: UsersError) -> Self {
        let message = e.to_string();
        match e {
            UsersError::InvalidArgument { field, reason } => {
                Error::InvalidArgument { field, reason }
            }
            UsersError::EmailTaken => Error::AlreadyExists(message),
            UsersError::InvalidCredentials
            | UsersError::Deactivated
            | UsersError::InvalidToken(_) => Error::Unauthenticated(message),
            UsersError::NotFound(_) => Error::NotFound(message),
            UsersError::PermissionDenied(_) => Error::PermissionDenied(message),
            UsersError::Busy => Error::Busy {
                message,
                retry_after: Duration::from_secs(1),
            },
            UsersError::Internal(e) => Error::Internal(e),
            UsersError::Core(e) => e,
        }
    }
}

impl From<UsersError> for Status {
    fn from(e: UsersError) -> Self {
        Error::from(e).into()
    }
}
