//! How a failed gRPC call failed, as far as retrying it is concerned: it
//! provably never reached the service ([`NotSent`]: any method may be sent
//! again), its connection broke mid-call ([`is_transport_failure`]: only an
//! idempotent one may), or the service answered (not retried here).

use std::error::Error as StdError;

use tonic::body::Body;

/// The cause of a failed call that never reached the service. Found as the
/// `source()` of the UNAVAILABLE status tonic reports for it.
#[derive(Debug)]
pub struct NotSent {
    status: tonic::Status,
}

impl std::fmt::Display for NotSent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the call was not sent: {}", self.status.message())
    }
}

impl StdError for NotSent {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        // tonic looks for a Status down the source chain and reports it,
        // keeping this error as the Status's own source.
        Some(&self.status)
    }
}

impl NotSent {
    /// A call that could not be sent, reported to the caller as UNAVAILABLE
    /// with `message`.
    pub fn unavailable(message: String) -> Self {
        Self {
            status: tonic::Status::unavailable(message),
        }
    }

    /// Whether `status` reports a call that never reached the service.
    pub fn is_cause_of(status: &tonic::Status) -> bool {
        let mut source = status.source();
        while let Some(e) = source {
            if e.is::<NotSent>() {
                return true;
            }
            source = e.source();
        }
        false
    }
}

/// Whether `status` was made by the client from a broken connection rather
/// than sent by the service (statuses read from a response carry no
/// source). An idempotent call may be sent again after one.
pub fn is_transport_failure(status: &tonic::Status) -> bool {
    status.source().is_some()
        && !matches!(
            status.code(),
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        )
}

/// Whether an error from a channel proves the request never reached the
/// service: the connection could not be made, or HTTP/2 refused the stream
/// or announced GOAWAY before it was processed, or the connection closed
/// before the request was written.
pub fn never_sent(err: &(dyn StdError + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>()
            && (h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote()))
        {
            return true;
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>()
            && hyper.is_canceled()
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// The gRPC status code a response carries in its headers: a
/// trailers-only answer, how calls fail. `OK` when there is none (a call
/// that succeeds says so in its trailers).
pub fn header_code(headers: &http::HeaderMap) -> tonic::Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

/// A trailers-only answer of UNAVAILABLE: the server refused the call
/// (it is draining or overloaded) without running it.
pub fn refused_by_server(resp: &http::Response<Body>) -> bool {
    resp.headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"14")
}
