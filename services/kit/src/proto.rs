//! Small conversions between protobuf fields and Rust values that every
//! service makes the same way, with errors that name the field.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Error;

/// A required UUID field.
pub fn parse_id(field: &'static str, raw: &str) -> Result<Uuid, Error> {
    if raw.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    Uuid::parse_str(raw).map_err(|_| Error::invalid(field, "must be a UUID"))
}

/// The most items one page may hold.
pub const MAX_PAGE_SIZE: i32 = 100;

/// A list request's `page_size`: `default` when unset (0). The contract's
/// rule (0 to [`MAX_PAGE_SIZE`]) is checked as the request is decoded, so
/// no other value arrives; one that did would be held to the bounds.
pub fn page_size(requested: i32, default: i32) -> i32 {
    match requested {
        0 => default,
        n => n.clamp(1, MAX_PAGE_SIZE),
    }
}

/// A count the contract bounds (checked as the request is decoded), where
/// 0 asks for `default`.
pub fn or_default(requested: i32, default: i32) -> i64 {
    i64::from(if requested == 0 {
        default
    } else {
        requested.max(1)
    })
}

/// A `google.protobuf.Timestamp` for `t`.
pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// The instant a `google.protobuf.Timestamp` field names.
pub fn from_timestamp(
    field: &'static str,
    t: &prost_types::Timestamp,
) -> Result<DateTime<Utc>, Error> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Error::invalid(field, "has nanos out of range"));
    }
    DateTime::from_timestamp(t.seconds, t.nanos as u32)
        .ok_or_else(|| Error::invalid(field, "is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_timestamps_convert_and_errors_name_the_field() {
        assert!(
            parse_id("product.id", "").is_err_and(|e| e.to_string() == "product.id: is required")
        );
        assert!(
            parse_id("product.id", "0")
                .is_err_and(|e| e.to_string() == "product.id: must be a UUID")
        );
        let id = Uuid::now_v7();
        assert_eq!(parse_id("id", &id.to_string()).ok(), Some(id));
        let now = Utc::now();
        assert_eq!(from_timestamp("t", &timestamp(now)).ok(), Some(now));
        let bad = prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert!(from_timestamp("t", &bad).is_err_and(|e| e.to_string().starts_with("t: ")));
    }
}
