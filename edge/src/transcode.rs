//! JSON ⇄ protobuf for one route, following the proto3 JSON mapping: path
//! variables, query parameters and the body become one request message;
//! the response message (or its `response_body` field) becomes JSON.

use base64::Engine as _;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    SerializeOptions, Value,
};

use crate::routes::{BodyRule, PathError, Route, Transcoding, UnknownQuery, resolve_path};

/// A request that cannot be transcoded; the text names what was wrong,
/// and `field` the field's JSON path when one field is at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct BadRequest {
    pub message: String,
    pub field: Option<String>,
}

impl BadRequest {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            field: None,
        }
    }

    /// A problem with the field at `field` (a JSON path).
    pub fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            field: Some(field.into()),
        }
    }
}

impl From<BadRequest> for crate::error::ApiError {
    fn from(e: BadRequest) -> Self {
        let error = Self::bad_request(e.message.clone());
        match e.field {
            Some(field) => error.with_violation(field, e.message),
            None => error,
        }
    }
}

/// Builds the request message: body first, then query parameters, then
/// path variables (which win over both).
pub fn request_message(
    route: &Route,
    path_values: &[String],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, BadRequest> {
    let input = route.input();
    let mut msg = match &route.body {
        BodyRule::None => DynamicMessage::new(input.clone()),
        BodyRule::All => parse_body(&input, body, None)?,
        BodyRule::Field(field) => parse_body(&input, body, Some(field))?,
    };
    if !matches!(route.body, BodyRule::All)
        && let Some(query) = query
    {
        apply_query(&mut msg, route, query)?;
    }
    for (fields, value) in route.path_fields.iter().zip(path_values) {
        set_path(&mut msg, fields, value, true)?;
    }
    if let BodyRule::Field(field) = &route.body {
        infer_update_mask(&mut msg, field, body)?;
    }
    Ok(msg)
}

/// Parses one JSON message of type `desc` (a WebSocket frame).
pub fn message_from_json(
    desc: &MessageDescriptor,
    json: &[u8],
) -> Result<DynamicMessage, BadRequest> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Err(BadRequest::new("the frame is empty; send one JSON message"));
    }
    parse_body(desc, json, None)
}

/// Parses the body as the whole request, or as the one field `field`.
fn parse_body(
    input: &MessageDescriptor,
    body: &[u8],
    field: Option<&FieldDescriptor>,
) -> Result<DynamicMessage, BadRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(input.clone()));
    }
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let parsed = match field {
        None => tracked(&mut de, &mut track, MessageSeed(input.clone(), &options)),
        Some(field) => match field.kind() {
            Kind::Message(m) if !field.is_list() && !field.is_map() => {
                tracked(&mut de, &mut track, MessageSeed(m, &options)).map(|value| {
                    let mut msg = DynamicMessage::new(input.clone());
                    msg.set_field(field, Value::Message(value));
                    msg
                })
            }
            // A scalar or repeated body field: wrap it as `{"field": body}`.
            _ => {
                let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
                    BadRequest::new(format!("the request body is not valid JSON: {e}"))
                })?;
                let wrapped = serde_json::json!({ field.json_name(): value });
                return DynamicMessage::deserialize_with_options(input.clone(), wrapped, &options)
                    .map_err(|e| {
                        BadRequest::at(
                            field.json_name(),
                            format!("invalid value for field {:?}: {e}", field.json_name()),
                        )
                    });
            }
        },
    };
    let msg = parsed.map_err(|inner| {
        let path = track.path().to_string();
        if path.is_empty() || path == "." {
            BadRequest::new(format!(
                "the request body is not a valid {} JSON object: {inner}",
                input.name()
            ))
        } else {
            // The path from the request message's root, as the client
            // names fields.
            let path = match field {
                Some(f) => format!("{}.{path}", f.json_name()),
                None => path,
            };
            BadRequest::at(
                path.clone(),
                format!("invalid value for field {path:?}: {inner}"),
            )
        }
    })?;
    de.end()
        .map_err(|e| BadRequest::new(format!("the request body has trailing data: {e}")))?;
    Ok(msg)
}

fn tracked<'de>(
    de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
    track: &mut serde_path_to_error::Track,
    seed: MessageSeed<'_>,
) -> Result<DynamicMessage, serde_json::Error> {
    use serde::de::DeserializeSeed as _;
    seed.deserialize(serde_path_to_error::Deserializer::new(de, track))
}

/// Adapts prost-reflect's deserializer to `DeserializeSeed`, so that
/// `serde_path_to_error` can report which field failed.
struct MessageSeed<'a>(MessageDescriptor, &'a DeserializeOptions);

impl<'de> serde::de::DeserializeSeed<'de> for MessageSeed<'_> {
    type Value = DynamicMessage;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        DynamicMessage::deserialize_with_options(self.0, d, self.1)
    }
}

fn apply_query(msg: &mut DynamicMessage, route: &Route, query: &str) -> Result<(), BadRequest> {
    let input = route.input();
    for (key, value) in form_urlencoded_pairs(query) {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        let fields = match resolve_path(&input, &path) {
            Ok(fields) => fields,
            Err(PathError::Unknown(_))
                if route.transcoding.unknown_query_parameters == UnknownQuery::Ignore =>
            {
                continue;
            }
            Err(PathError::Unknown(_)) => {
                return Err(BadRequest::at(
                    key.clone(),
                    format!("unknown query parameter {key:?}"),
                ));
            }
            Err(PathError::Unreachable(reason)) => {
                return Err(BadRequest::at(
                    key.clone(),
                    format!("query parameter {key:?} cannot be set: {reason}"),
                ));
            }
        };
        if let BodyRule::Field(body_field) = &route.body
            && fields.first().is_some_and(|f| f == body_field)
        {
            return Err(BadRequest::at(
                key.clone(),
                format!("query parameter {key:?} is part of the request body"),
            ));
        }
        if route.path_fields.iter().any(|p| p == &fields) {
            return Err(BadRequest::at(
                key.clone(),
                format!("query parameter {key:?} is already bound by the path"),
            ));
        }
        set_path(msg, &fields, &value, false)?;
    }
    Ok(())
}

fn form_urlencoded_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_query(k), decode_query(v))
    })
}

fn decode_query(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Sets (or, for repeated leaves, appends) the field at `fields`.
fn set_path(
    msg: &mut DynamicMessage,
    fields: &[FieldDescriptor],
    raw: &str,
    from_path: bool,
) -> Result<(), BadRequest> {
    let Some((leaf, parents)) = fields.split_last() else {
        return Ok(());
    };
    let mut current = msg;
    for parent in parents {
        current = match current.get_field_mut(parent) {
            Value::Message(m) => m,
            _ => {
                return Err(BadRequest::new(format!(
                    "{:?} is not a message field",
                    parent.json_name()
                )));
            }
        };
    }
    let name = dotted(fields);
    if leaf.is_map() {
        return Err(BadRequest::at(
            name.clone(),
            format!("map field {name:?} cannot be set from the URL"),
        ));
    }
    if let Kind::Message(m) = leaf.kind()
        && !is_string_form(&m)
    {
        let reason = if leaf.is_list() {
            format!("{name:?} is a repeated message field; send it in the request body")
        } else {
            format!("{name:?} is a message; set its fields ({name}.<field>=…)")
        };
        return Err(BadRequest::at(name.clone(), reason));
    }
    let value = scalar(&leaf.kind(), raw).map_err(|reason| {
        let place = if from_path {
            "path variable"
        } else {
            "query parameter"
        };
        BadRequest::at(name.clone(), format!("invalid {place} {name:?}: {reason}"))
    })?;
    if leaf.is_list() {
        if let Value::List(list) = current.get_field_mut(leaf) {
            list.push(value);
        }
    } else {
        current.set_field(leaf, value);
    }
    Ok(())
}

fn dotted(fields: &[FieldDescriptor]) -> String {
    fields
        .iter()
        .map(|f| f.json_name().to_owned())
        .collect::<Vec<_>>()
        .join(".")
}

/// Well-known types whose JSON form is a scalar, so a URL value can carry
/// one.
fn is_string_form(m: &MessageDescriptor) -> bool {
    m.full_name().starts_with("google.protobuf.")
        && m.full_name() != "google.protobuf.Struct"
        && m.full_name() != "google.protobuf.ListValue"
        && m.full_name() != "google.protobuf.Any"
        && m.full_name() != "google.protobuf.Empty"
}

/// Parses one URL value as a field of `kind`, per the proto3 JSON mapping.
fn scalar(kind: &Kind, raw: &str) -> Result<Value, String> {
    fn num<T: std::str::FromStr>(raw: &str, what: &str) -> Result<T, String> {
        raw.parse().map_err(|_| format!("{raw:?} is not {what}"))
    }
    Ok(match kind {
        Kind::String => Value::String(raw.to_owned()),
        Kind::Bool => Value::Bool(match raw {
            "true" => true,
            "false" => false,
            _ => return Err(format!("{raw:?} is not true or false")),
        }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(num(raw, "a 32-bit integer")?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(num(raw, "a 64-bit integer")?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(num(raw, "an unsigned 32-bit integer")?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(num(raw, "an unsigned 64-bit integer")?),
        Kind::Float => Value::F32(float(raw)? as f32),
        Kind::Double => Value::F64(float(raw)?),
        Kind::Bytes => Value::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(raw)
                .or_else(|_| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(raw.trim_end_matches('='))
                })
                .map_err(|_| format!("{raw:?} is not base64"))?
                .into(),
        ),
        Kind::Enum(e) => {
            let v = e
                .get_value_by_name(raw)
                .map(|v| v.number())
                .or_else(|| {
                    raw.parse::<i32>()
                        .ok()
                        .filter(|n| e.get_value(*n).is_some())
                })
                .ok_or_else(|| {
                    let names: Vec<_> = e.values().map(|v| v.name().to_owned()).collect();
                    format!("{raw:?} is not one of {}", names.join(", "))
                })?;
            Value::EnumNumber(v)
        }
        // Well-known types whose JSON form is a string (Timestamp, Duration,
        // FieldMask, wrappers) parse through their JSON mapping.
        Kind::Message(m) => {
            let json = serde_json::Value::String(raw.to_owned());
            let parsed = DynamicMessage::deserialize(m.clone(), json.clone())
                .or_else(|_| match raw.parse::<f64>() {
                    Ok(n) => DynamicMessage::deserialize(m.clone(), serde_json::json!(n)),
                    Err(e) => Err(serde::de::Error::custom(e)),
                })
                .or_else(|_| match raw {
                    "true" | "false" => {
                        DynamicMessage::deserialize(m.clone(), serde_json::json!(raw == "true"))
                    }
                    _ => Err(serde::de::Error::custom("not a bool")),
                })
                .map_err(|e: serde_json::Error| {
                    format!("{raw:?} is not a valid {}: {e}", m.full_name())
                })?;
            Value::Message(parsed)
        }
    })
}

fn float(raw: &str) -> Result<f64, String> {
    match raw {
        "NaN" => Ok(f64::NAN),
        "Infinity" => Ok(f64::INFINITY),
        "-Infinity" => Ok(f64::NEG_INFINITY),
        _ => raw.parse().map_err(|_| format!("{raw:?} is not a number")),
    }
}

/// For `body: "<message field>"` with an unset `google.protobuf.FieldMask`
/// field in the request, fills the mask with the fields present in the body
/// (as grpc-gateway does for PATCH), so clients may send only what changes.
fn infer_update_mask(
    msg: &mut DynamicMessage,
    body_field: &FieldDescriptor,
    body: &[u8],
) -> Result<(), BadRequest> {
    let Some(mask_field) = msg.descriptor().fields().find(|f| {
        matches!(f.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask")
            && !f.is_list()
    }) else {
        return Ok(());
    };
    if msg.has_field(&mask_field) {
        return Ok(());
    }
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return Ok(());
    };
    let Kind::Message(body_type) = body_field.kind() else {
        return Ok(());
    };
    let mut paths = Vec::new();
    for (key, value) in &obj {
        // `null` is the default value: not a field to change. An `etag`
        // is the precondition of the update (AIP-154), not a change.
        if value.is_null() || key == "etag" {
            continue;
        }
        if let Some(f) = body_type
            .get_field_by_json_name(key)
            .or_else(|| body_type.get_field_by_name(key))
            // Output-only fields in a request are ignored (AIP-203).
            && !crate::validate::behaviors(&f).contains(&crate::validate::OUTPUT_ONLY)
        {
            paths.push(Value::String(f.name().to_owned()));
        }
    }
    // One order whatever the JSON map keeps (serde_json's key order
    // depends on its features).
    paths.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    let Kind::Message(mask_type) = mask_field.kind() else {
        return Ok(());
    };
    let mut mask = DynamicMessage::new(mask_type);
    mask.set_field_by_name("paths", Value::List(paths));
    msg.set_field(&mask_field, Value::Message(mask));
    Ok(())
}

/// Serialization used for every response: lowerCamel names, 64-bit
/// integers as strings, enums by name, and default values included so
/// clients see every field of the contract.
fn serialize_options(options: &Transcoding) -> SerializeOptions {
    SerializeOptions::new()
        .skip_default_fields(!options.emit_unpopulated)
        .use_proto_field_name(options.use_proto_names)
        .use_enum_numbers(options.enums_as_numbers)
}

/// Renders a whole message as the edge writes JSON (every field, default
/// or not, in JSON names).
pub fn message_json(
    msg: &DynamicMessage,
    options: &Transcoding,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    msg.serialize_with_options(
        &mut serde_json::Serializer::new(&mut out),
        &serialize_options(options),
    )?;
    Ok(out)
}

/// Renders a response message (or its `response_body` field) as JSON.
pub fn response_json(route: &Route, msg: &DynamicMessage) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::new(&mut out);
    match &route.response_body {
        None => return message_json(msg, &route.transcoding),
        Some(field) => match msg.get_field(field).as_ref() {
            Value::Message(inner) => {
                inner.serialize_with_options(&mut ser, &serialize_options(&route.transcoding))?
            }
            _ => {
                let whole = msg.serialize_with_options(
                    serde_json::value::Serializer,
                    &serialize_options(&route.transcoding),
                )?;
                // Left out when it holds its default and defaults are not
                // emitted: an empty list or map is still one.
                let part = whole
                    .get(route.transcoding.field_name(field))
                    .cloned()
                    .unwrap_or_else(|| {
                        if field.is_list() {
                            serde_json::Value::Array(Vec::new())
                        } else if field.is_map() {
                            serde_json::Value::Object(serde_json::Map::new())
                        } else {
                            serde_json::Value::Null
                        }
                    });
                serde::Serialize::serialize(&part, &mut ser)?;
            }
        },
    }
    Ok(out)
}
