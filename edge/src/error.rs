//! Every error the edge answers with, in one shape: a `google.rpc.Status`
//! JSON body (`code`, `message`, `details`) with the HTTP status from the
//! standard google.rpc.Code table. Internal details stay in the logs.

use std::time::Duration;

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use tonic::Code;
use tonic_types::StatusExt as _;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    /// When the client may try again: a `Retry-After` header (whole
    /// seconds, rounded up) and a `google.rpc.RetryInfo` detail.
    pub retry_after: Option<Duration>,
    /// An HTTP status other than the code's standard one (422 for a reused
    /// idempotency key).
    pub status: Option<StatusCode>,
}

#[derive(Serialize)]
struct StatusBody<'a> {
    code: i32,
    message: &'a str,
    details: Vec<Detail>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Detail {
    Retry(RetryInfo),
    Request(RequestInfo),
}

/// `google.rpc.RequestInfo`: the request id (as in `x-request-id`) and, as
/// its serving data, the trace id, so a bug report leads to the trace.
#[derive(Serialize)]
struct RequestInfo {
    #[serde(rename = "@type")]
    type_url: &'static str,
    #[serde(rename = "requestId")]
    request_id: String,
    #[serde(rename = "servingData", skip_serializing_if = "String::is_empty")]
    serving_data: String,
}

/// `google.rpc.RetryInfo` in its proto3 JSON form.
#[derive(Serialize)]
struct RetryInfo {
    #[serde(rename = "@type")]
    type_url: &'static str,
    #[serde(rename = "retryDelay")]
    retry_delay: String,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
            status: None,
        }
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        // Transport failures carry connection details; clients get a
        // plain statement instead.
        let message = match s.code() {
            Code::Unavailable => "the service is unavailable; try again later".to_owned(),
            Code::Unknown | Code::Internal | Code::DataLoss if s.message().is_empty() => {
                "internal error".to_owned()
            }
            _ => s.message().to_owned(),
        };
        if matches!(s.code(), Code::Unavailable | Code::Unknown | Code::DataLoss) {
            tracing::warn!(code = ?s.code(), error = %s.message(), "upstream call failed");
        }
        let mut error = Self::new(s.code(), message);
        // A reused idempotency key is 422 whichever layer noticed it.
        if s.code() == Code::FailedPrecondition
            && s.get_details_error_info().is_some_and(|info| {
                info.reason == agora_kit::REASON_IDEMPOTENCY_KEY_REUSED
                    && info.domain == agora_kit::ERROR_DOMAIN
            })
        {
            error.status = Some(StatusCode::UNPROCESSABLE_ENTITY);
        }
        // A service that says when to retry is passed on as Retry-After.
        if let Some(delay) = s.get_details_retry_info().and_then(|r| r.retry_delay) {
            error.retry_after = Some(delay);
        }
        error
    }
}

/// The HTTP status for a gRPC code (the google.rpc.Code mapping).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
    }
}

impl ApiError {
    /// The `google.rpc.Status` JSON of this error.
    pub fn status_json(&self) -> Vec<u8> {
        let mut details: Vec<Detail> = self
            .retry_after
            .iter()
            .map(|d| {
                Detail::Retry(RetryInfo {
                    type_url: "type.googleapis.com/google.rpc.RetryInfo",
                    retry_delay: format!("{}.{:03}s", d.as_secs(), d.subsec_millis()),
                })
            })
            .collect();
        if let Some((request_id, trace_id)) = crate::access::current_request() {
            details.push(Detail::Request(RequestInfo {
                type_url: "type.googleapis.com/google.rpc.RequestInfo",
                request_id,
                serving_data: trace_id
                    .map(|t| format!("trace_id={t}"))
                    .unwrap_or_default(),
            }));
        }
        serde_json::to_vec(&StatusBody {
            code: self.code as i32,
            message: &self.message,
            details,
        })
        .unwrap_or_else(|_| b"{\"code\":13,\"message\":\"internal error\",\"details\":[]}".to_vec())
    }

    /// `{"error": <google.rpc.Status>}`: how a stream reports its failure
    /// in its last frame or line.
    pub fn stream_error_json(&self) -> Vec<u8> {
        let status = self.status_json();
        let mut out = Vec::with_capacity(status.len() + 10);
        out.extend_from_slice(b"{\"error\":");
        out.extend_from_slice(&status);
        out.push(b'}');
        out
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.status_json();
        let status = self.status.unwrap_or_else(|| http_status(self.code));
        let mut resp = (status, body).into_response();
        if let Some(after) = self.retry_after {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(after)),
            );
        }
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.code == Code::Unauthenticated {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_after_secs(after: Duration) -> u64 {
    after.as_millis().div_ceil(1000).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_the_standard_http_statuses() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::AlreadyExists), StatusCode::CONFLICT);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            http_status(Code::DeadlineExceeded),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
    }
}
