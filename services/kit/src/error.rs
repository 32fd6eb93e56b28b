//! The ways a service call fails that every service shares, and their one
//! mapping to a gRPC status. Each service keeps its own error enum for its
//! domain and turns it into an [`Error`] to answer.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is invalid; the message names the field.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller is not (or no longer) who it claims to be.
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// The operation cannot happen in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A precondition the client can branch on: `reason` is an ErrorInfo
    /// reason in the Agora domain.
    #[error("{message}")]
    Refused {
        code: Code,
        reason: &'static str,
        message: String,
    },
    /// A concurrent change won (a stale etag).
    #[error("{0}")]
    Aborted(String),
    /// Overloaded: the client should retry after the delay.
    #[error("{message}")]
    Busy {
        message: String,
        retry_after: Duration,
    },
    /// Anything else; the cause goes to the log, never to the client.
    #[error("internal error")]
    Internal(anyhow::Error),
}

impl Error {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(anyhow::Error::new(e).context("database error"))
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            // The field travels as a BadRequest violation too, so clients
            // (and the edge, which names it in JSON) need not parse text.
            Error::InvalidArgument { field, ref reason } => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request_violation(field, reason.clone()),
            ),
            Error::NotFound(_) => Status::not_found(message),
            Error::AlreadyExists(_) => Status::already_exists(message),
            Error::Unauthenticated(_) => Status::unauthenticated(message),
            Error::PermissionDenied(_) => Status::permission_denied(message),
            Error::FailedPrecondition(_) => Status::failed_precondition(message),
            Error::Refused { code, reason, .. } => Status::with_error_details(
                code,
                message,
                ErrorDetails::with_error_info(reason, crate::ERROR_DOMAIN, HashMap::new()),
            ),
            Error::Aborted(_) => Status::aborted(message),
            Error::Busy { retry_after, .. } => {
                let mut details = ErrorDetails::with_retry_info(Some(retry_after));
                details.set_error_info(
                    crate::REASON_OVERLOADED,
                    crate::ERROR_DOMAIN,
                    HashMap::new(),
                );
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
            Error::Internal(e) => {
                tracing::error!(
                    service = crate::trace::current_component(),
                    error = format!("{e:#}"),
                    "request failed"
                );
                Status::internal(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_causes_stay_in_the_log() {
        let status = Status::from(Error::Internal(anyhow::anyhow!("password=hunter2")));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }

    #[test]
    fn busy_answers_carry_when_to_retry() {
        let status = Status::from(Error::Busy {
            message: "busy".into(),
            retry_after: Duration::from_secs(2),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        let retry = status.get_details_retry_info().and_then(|r| r.retry_delay);
        assert_eq!(retry, Some(Duration::from_secs(2)));
    }
}
