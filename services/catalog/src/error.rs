//! Every way a catalog call can fail, as the kit's shared error core.

use agora_kit::error::Error;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A request field is invalid; the message names the field.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The etag did not match: someone else changed the product first.
    #[error(
        "the product was changed by someone else (etag {given:?} is stale, current is {current:?}); read it again and retry"
    )]
    StaleEtag { given: String, current: String },
    /// The operation cannot happen in the current state (not enough stock,
    /// reservation already committed…).
    #[error("{0}")]
    FailedPrecondition(String),
    /// An idempotency key came again with a different request.
    #[error("this idempotency key was already used for a different request; use a new key")]
    IdempotencyKeyReused,
    #[error("{0}")]
    PermissionDenied(&'static str),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
    #[error(transparent)]
    Core(#[from] Error),
}

impl CatalogError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

impl From<sqlx::Error> for CatalogError {
    fn from(e: sqlx::Error) -> Self {
        Self::Core(e.into())
    }
}

impl From<CatalogError> for Error {
    fn from(e: CatalogError) -> Self {
        let message = e.to_string();
        match e {
            CatalogError::InvalidArgument { field, reason } => {
                Error::InvalidArgument { field, reason }
            }
            CatalogError::NotFound(_) => Error::NotFound(message),
            CatalogError::AlreadyExists(_) => Error::AlreadyExists(message),
            CatalogError::StaleEtag { .. } => Error::Aborted(message),
            CatalogError::FailedPrecondition(_) => Error::FailedPrecondition(message),
            CatalogError::IdempotencyKeyReused => Error::Refused {
                code: Code::FailedPrecondition,
                reason: agora_kit::REASON_IDEMPOTENCY_KEY_REUSED,
                message,
            },
            CatalogError::PermissionDenied(_) => Error::PermissionDenied(message),
            CatalogError::Internal(e) => Error::Internal(e),
            CatalogError::Core(e) => e,
        }
    }
}

impl From<CatalogError> for Status {
    fn from(e: CatalogError) -> Self {
        Error::from(e).into()
    }
}
