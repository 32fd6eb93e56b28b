//! Every way a catalog call can fail, and its one mapping to a gRPC status.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

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
        Self::Internal(anyhow::Error::new(e).context("database error"))
    }
}

impl From<CatalogError> for Status {
    fn from(e: CatalogError) -> Self {
        let message = e.to_string();
        match e {
            CatalogError::InvalidArgument { .. } => Status::invalid_argument(message),
            CatalogError::NotFound(_) => Status::not_found(message),
            CatalogError::AlreadyExists(_) => Status::already_exists(message),
            CatalogError::StaleEtag { .. } => Status::aborted(message),
            CatalogError::FailedPrecondition(_) => Status::failed_precondition(message),
            CatalogError::IdempotencyKeyReused => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_error_info(
                    agora_kit::REASON_IDEMPOTENCY_KEY_REUSED,
                    agora_kit::ERROR_DOMAIN,
                    HashMap::new(),
                ),
            ),
            CatalogError::PermissionDenied(_) => Status::permission_denied(message),
            CatalogError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "catalog request failed");
                Status::internal(message)
            }
        }
    }
}
