//! The protobuf codec of every generated client and server: tonic's prost
//! codec with small starting buffers, which also checks every request it
//! decodes against the contract's field rules ([`crate::rules`]), so a
//! service refuses a bad request from any caller (the edge, another
//! service, `grpcurl`) before its handler runs.
//!
//! A gRPC call holds an encode and a decode buffer for as long as it lasts;
//! tonic starts each at 8 KiB. For unary calls that is brief, but an open
//! stream (a chat connection) keeps them while idle, and thousands of
//! streams would hold tens of MiB of mostly empty buffers. Buffers start
//! small and grow with the messages that need more.

use std::{
    collections::HashMap,
    marker::PhantomData,
    sync::{LazyLock, RwLock},
};

use prost::{Message, Name, bytes::Buf as _};
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::{
    Code, Status,
    codec::{BufferSettings, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt as _};

use crate::rules;

/// Where a call's buffers start, in bytes.
pub const INITIAL_BUFFER: usize = 512;
/// Encoded bytes after which a stream yields to send them (tonic's default).
pub const YIELD_THRESHOLD: usize = 32 * 1024;

/// The buffer settings of Agora's gRPC calls.
pub fn buffer_settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder {
            inner: ProstCodec::<T, U>::raw_decoder(buffer_settings()),
            rules: rules_of(&U::full_name()),
        }
    }
}

/// Decodes messages and, for requests whose contract declares rules,
/// refuses those that break them with INVALID_ARGUMENT and a
/// `google.rpc.BadRequest` naming every problem.
pub struct CheckedDecoder<U> {
    inner: ProstDecoder<U>,
    /// The message's descriptor, when it is a request with rules.
    rules: Option<MessageDescriptor>,
}

impl<U: Message + Default> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let Some(descriptor) = &self.rules else {
            return self.inner.decode(src);
        };
        let bytes = src.copy_to_bytes(src.remaining());
        let dynamic = DynamicMessage::decode(descriptor.clone(), bytes.clone())
            .map_err(|e| Status::internal(format!("cannot decode the request: {e}")))?;
        let violations = rules::check(&dynamic);
        if !violations.is_empty() {
            return Err(refusal(violations));
        }
        U::decode(bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("cannot decode the request: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// INVALID_ARGUMENT naming each problem, in the message and as a
/// `google.rpc.BadRequest`.
pub fn refusal(violations: Vec<rules::Violation>) -> Status {
    let message = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    let details = ErrorDetails::with_bad_request(
        violations
            .into_iter()
            .map(|v| FieldViolation::new(v.field, v.description))
            .collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// The descriptor of `name` if it is a request (by the contracts' naming,
/// `…Request`) whose fields, or nested fields, carry rules.
fn rules_of(name: &str) -> Option<MessageDescriptor> {
    type Known = RwLock<HashMap<String, Option<MessageDescriptor>>>;
    static KNOWN: LazyLock<Known> = LazyLock::new(Known::default);
    if let Some(found) = KNOWN.read().unwrap_or_else(|e| e.into_inner()).get(name) {
        return found.clone();
    }
    let found = name
        .ends_with("Request")
        .then(|| crate::message(name))
        .flatten()
        .filter(|m| has_rules(m, &mut Vec::new()));
    KNOWN
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.to_owned(), found.clone());
    found
}

/// Whether `message` or a message inside it declares a rule.
fn has_rules(message: &MessageDescriptor, seen: &mut Vec<String>) -> bool {
    if seen.iter().any(|s| s == message.full_name()) {
        return false;
    }
    seen.push(message.full_name().to_owned());
    message.fields().any(|f| {
        rules::field_rules(&f).is_some()
            || rules::is_required(&f)
            || matches!(f.kind(), prost_reflect::Kind::Message(m) if has_rules(&m, seen))
    })
}
