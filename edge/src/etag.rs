//! Entity tags on GET answers, and `If-None-Match` → 304.
//!
//! A resource that carries its own version (a message with an `etag`
//! string field, like the catalog's products) is tagged with it, so the tag
//! changes exactly when the resource does; any other answer is tagged with
//! a hash of its JSON. Tags are weak (`W/"…"`): the same answer may be sent
//! compressed or not, and `If-None-Match` compares weakly anyway.

use axum::http::HeaderValue;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use prost_reflect::{DynamicMessage, Kind, ReflectMessage as _, Value};
use sha2::{Digest as _, Sha256};

use crate::routes::Route;

/// The `etag` field of the answer's resource (the `response_body` field's
/// message, or the whole reply), when it has a usable one.
pub fn resource_version(route: &Route, reply: &DynamicMessage) -> Option<String> {
    let owned;
    let resource = match &route.response_body {
        Some(field) => match reply.get_field(field).into_owned() {
            Value::Message(inner) => {
                owned = inner;
                &owned
            }
            _ => return None,
        },
        None => reply,
    };
    let field = resource.descriptor().get_field_by_name("etag")?;
    if field.kind() != Kind::String || field.is_list() {
        return None;
    }
    match resource.get_field(&field).as_str() {
        // Characters outside an entity tag's alphabet fall back to the hash.
        Some(v) if !v.is_empty() && v.bytes().all(|b| b > 0x20 && b < 0x7f && b != b'"') => {
            Some(v.to_owned())
        }
        _ => None,
    }
}

/// The tag of an answer: its resource's version, or a hash of its body.
pub fn tag(version: Option<&str>, body: &[u8]) -> HeaderValue {
    let opaque = match version {
        Some(v) => v.to_owned(),
        None => URL_SAFE_NO_PAD.encode(&Sha256::digest(body)[..16]),
    };
    // Only visible ASCII without quotes reaches here, so this cannot fail.
    HeaderValue::from_str(&format!("W/\"{opaque}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("W/\"\""))
}

/// Whether `If-None-Match` names `tag` (weak comparison), or is `*`.
pub fn none_match(if_none_match: &HeaderValue, tag: &HeaderValue) -> bool {
    let Ok(list) = if_none_match.to_str() else {
        return false;
    };
    let Ok(tag) = tag.to_str() else {
        return false;
    };
    let opaque = |t: &str| -> Option<String> {
        let t = t.trim();
        let t = t.strip_prefix("W/").unwrap_or(t);
        (t.len() >= 2 && t.starts_with('"') && t.ends_with('"')).then(|| t.to_owned())
    };
    if list.trim() == "*" {
        return true;
    }
    let Some(ours) = opaque(tag) else {
        return false;
    };
    list.split(',').filter_map(opaque).any(|t| t == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).expect("header")
    }

    #[test]
    fn a_version_becomes_a_weak_tag_and_bodies_hash_stably() {
        assert_eq!(tag(Some("v7"), b"{}"), hv("W/\"v7\""));
        let a = tag(None, br#"{"a":1}"#);
        assert_eq!(a, tag(None, br#"{"a":1}"#));
        assert_ne!(a, tag(None, br#"{"a":2}"#));
        assert!(a.to_str().expect("ascii").starts_with("W/\""));
    }

    #[test]
    fn if_none_match_compares_weakly_through_lists_and_star() {
        let t = hv("W/\"abc\"");
        assert!(none_match(&hv("\"abc\""), &t));
        assert!(none_match(&hv("W/\"abc\""), &t));
        assert!(none_match(&hv("\"x\", W/\"abc\""), &t));
        assert!(none_match(&hv("*"), &t));
        assert!(!none_match(&hv("\"abcd\""), &t));
        assert!(!none_match(&hv("abc"), &t));
        assert!(!none_match(&hv(""), &t));
    }
}
