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
    /// What is wrong with which request fields (`google.rpc.BadRequest`).
    pub violations: Vec<Violation>,
    /// A reason a client can branch on (`google.rpc.ErrorInfo`); boxed,
    /// as most errors have none.
    pub info: Option<Box<Info>>,
}

pub use agora_proto::rules::Violation;

/// `google.rpc.ErrorInfo`: a stable reason in a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub reason: String,
    pub domain: String,
    pub metadata: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize)]
struct StatusBody<'a> {
    code: i32,
    message: &'a str,
    details: Vec<Detail<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Detail<'a> {
    Retry(RetryInfo),
    Request(RequestInfo),
    BadRequest(BadRequestJson<'a>),
    Info(ErrorInfoJson<'a>),
}

/// `google.rpc.BadRequest` in its proto3 JSON form.
#[derive(Serialize)]
struct BadRequestJson<'a> {
    #[serde(rename = "@type")]
    type_url: &'static str,
    #[serde(rename = "fieldViolations")]
    field_violations: &'a [Violation],
}

/// `google.rpc.ErrorInfo` in its proto3 JSON form.
#[derive(Serialize)]
struct ErrorInfoJson<'a> {
    #[serde(rename = "@type")]
    type_url: &'static str,
    reason: &'a str,
    domain: &'a str,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    metadata: &'a std::collections::BTreeMap<String, String>,
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
            violations: Vec::new(),
            info: None,
        }
    }

    /// INVALID_ARGUMENT for `violations` (at least one), the message
    /// naming each.
    pub fn invalid_fields(violations: Vec<Violation>) -> Self {
        let message = violations
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; ");
        let mut error = Self::bad_request(message);
        error.violations = violations;
        error
    }

    /// Adds a field violation (`field` is the JSON path the client used).
    pub fn with_violation(
        mut self,
        field: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        self.violations.push(Violation {
            field: field.into(),
            description: description.into(),
        });
        self
    }

    /// Gives the error a reason in Agora's domain a client can branch on.
    pub fn with_reason(mut self, reason: &str) -> Self {
        self.info = Some(Box::new(Info {
            reason: reason.to_owned(),
            domain: agora_kit::ERROR_DOMAIN.to_owned(),
            metadata: Default::default(),
        }));
        self
    }

    /// Names fields as REST clients do: the violations of a service (proto
    /// paths of `input`, the request message) and the message that names
    /// them become JSON paths (`product.category_id` → `product.categoryId`).
    pub fn in_json_names(mut self, input: &prost_reflect::MessageDescriptor) -> Self {
        for v in &mut self.violations {
            let json = json_path(input, &v.field);
            if json != v.field {
                let proto = format!("{}:", v.field);
                if self.message.starts_with(&proto) {
                    self.message = self.message.replacen(&proto, &format!("{json}:"), 1);
                } else {
                    let proto = format!(" {proto}");
                    self.message = self.message.replacen(&proto, &format!(" {json}:"), 1);
                }
                v.field = json;
            }
        }
        self
    }

    /// The error as a gRPC status, with its details in binary form.
    pub fn to_status(&self) -> tonic::Status {
        let mut details = tonic_types::ErrorDetails::new();
        if !self.violations.is_empty() {
            details.set_bad_request(
                self.violations
                    .iter()
                    .map(|v| tonic_types::FieldViolation::new(&v.field, &v.description))
                    .collect::<Vec<_>>(),
            );
        }
        if let Some(info) = &self.info {
            details.set_error_info(
                &info.reason,
                &info.domain,
                info.metadata
                    .clone()
                    .into_iter()
                    .collect::<std::collections::HashMap<_, _>>(),
            );
        }
        if let Some(after) = self.retry_after {
            details.set_retry_info(Some(after));
        }
        tonic::Status::with_error_details(self.code, self.message.clone(), details)
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
        if let Some(bad) = s.get_details_bad_request() {
            error.violations = bad
                .field_violations
                .into_iter()
                .map(|v| Violation {
                    field: v.field,
                    description: v.description,
                })
                .collect();
        }
        if let Some(info) = s.get_details_error_info() {
            error.info = Some(Box::new(Info {
                reason: info.reason,
                domain: info.domain,
                metadata: info.metadata.into_iter().collect(),
            }));
        }
        error
    }
}

/// A proto field path of `input` (`items[0].product_id`) in JSON names
/// (`items[0].productId`); segments it cannot resolve stay as they are.
pub fn json_path(input: &prost_reflect::MessageDescriptor, path: &str) -> String {
    use prost_reflect::Kind;
    let mut current = Some(input.clone());
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        let (name, suffix) = segment
            .find('[')
            .map_or((segment, ""), |at| segment.split_at(at));
        let field = current.as_ref().and_then(|m| {
            m.get_field_by_name(name)
                .or_else(|| m.get_field_by_json_name(name))
        });
        match field {
            Some(f) => {
                out.push_str(f.json_name());
                out.push_str(suffix);
                current = match f.kind() {
                    Kind::Message(m) if f.is_map() => match m.map_entry_value_field().kind() {
                        Kind::Message(v) => Some(v),
                        _ => None,
                    },
                    Kind::Message(m) => Some(m),
                    _ => None,
                };
            }
            None => {
                out.push_str(segment);
                current = None;
            }
        }
    }
    out
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
        if !self.violations.is_empty() {
            details.push(Detail::BadRequest(BadRequestJson {
                type_url: "type.googleapis.com/google.rpc.BadRequest",
                field_violations: &self.violations,
            }));
        }
        if let Some(info) = &self.info {
            details.push(Detail::Info(ErrorInfoJson {
                type_url: "type.googleapis.com/google.rpc.ErrorInfo",
                reason: &info.reason,
                domain: &info.domain,
                metadata: &info.metadata,
            }));
        }
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
