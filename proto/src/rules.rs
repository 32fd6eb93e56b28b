//! Field constraints declared in the contracts, checked generically.
//!
//! A field is required when its `google.api.field_behavior` says REQUIRED
//! or its `buf.validate.field` rules say `required`; the rest of the
//! protovalidate vocabulary this checks is `string` (lengths, pattern,
//! prefix/suffix/contains, in/not_in, uuid, email), the integer and float
//! rules (const, in/not_in, gt/gte/lt/lte), `enum` (defined_only, in,
//! not_in), `repeated` (min/max items, unique, items) and nested messages.
//! As in protovalidate, rules also hold for a field left at its zero value
//! unless it has presence or its rules say `IGNORE_IF_ZERO_VALUE`.
//!
//! Every problem is reported, each with the proto path of its field. The
//! edge checks requests before it calls a service, each service checks them
//! again as it decodes them ([`crate::codec`]), and the edge's OpenAPI
//! document publishes the same rules.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
};

use prost_reflect::{
    DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    Value,
};

/// One field violation: the field's path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

const FIELD_RULES: &str = "buf.validate.field";
const FIELD_BEHAVIOR: &str = "google.api.field_behavior";
/// `google.api.FieldBehavior` values.
pub const REQUIRED: i32 = 2;
pub const OUTPUT_ONLY: i32 = 3;
/// `buf.validate.Ignore.IGNORE_IF_ZERO_VALUE`.
const IGNORE_IF_ZERO_VALUE: i32 = 1;

/// The `buf.validate.field` rules of a field, if it has any.
pub fn field_rules(field: &FieldDescriptor) -> Option<DynamicMessage> {
    extension_message(field, &extension(field, FIELD_RULES)?)
}

/// The `google.api.field_behavior` values of a field.
pub fn behaviors(field: &FieldDescriptor) -> Vec<i32> {
    let Some(ext) = extension(field, FIELD_BEHAVIOR) else {
        return Vec::new();
    };
    let options = field.options();
    if !options.has_extension(&ext) {
        return Vec::new();
    }
    match options.get_extension(&ext).as_ref() {
        Value::List(values) => values.iter().filter_map(Value::as_enum_number).collect(),
        _ => Vec::new(),
    }
}

/// Whether a request must set the field.
pub fn is_required(field: &FieldDescriptor) -> bool {
    behaviors(field).contains(&REQUIRED) || field_rules(field).is_some_and(|r| flag(&r, "required"))
}

/// The rules of one kind (`string`, `int32`, `repeated`…) a field declares.
pub fn type_rules(rules: &DynamicMessage, kind: &str) -> Option<DynamicMessage> {
    let field = rules.descriptor().get_field_by_name(kind)?;
    if !rules.has_field(&field) {
        return None;
    }
    match rules.get_field(&field).into_owned() {
        Value::Message(m) => Some(m),
        _ => None,
    }
}

/// The rule `name` of a rules message, when it is set.
pub fn rule(rules: &DynamicMessage, name: &str) -> Option<Value> {
    let field = rules.descriptor().get_field_by_name(name)?;
    rules
        .has_field(&field)
        .then(|| rules.get_field(&field).into_owned())
}

fn flag(rules: &DynamicMessage, name: &str) -> bool {
    rule(rules, name).and_then(|v| v.as_bool()).unwrap_or(false)
}

fn extension(field: &FieldDescriptor, name: &str) -> Option<ExtensionDescriptor> {
    field.parent_pool().get_extension_by_name(name)
}

fn extension_message(field: &FieldDescriptor, ext: &ExtensionDescriptor) -> Option<DynamicMessage> {
    let options = field.options();
    if !options.has_extension(ext) {
        return None;
    }
    match options.get_extension(ext).into_owned() {
        Value::Message(m) => Some(m),
        _ => None,
    }
}

/// A field's rules, read from its options once: `field.options()` decodes
/// them anew on every call, which the request path must not pay.
struct FieldInfo {
    rules: Option<DynamicMessage>,
    required: bool,
}

type Infos = std::sync::RwLock<HashMap<Box<str>, std::sync::Arc<FieldInfo>>>;

static FIELDS: LazyLock<Infos> = LazyLock::new(Default::default);

fn info(field: &FieldDescriptor) -> std::sync::Arc<FieldInfo> {
    if let Some(found) = FIELDS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(field.full_name())
    {
        return found.clone();
    }
    let made = std::sync::Arc::new(FieldInfo {
        rules: field_rules(field),
        required: is_required(field),
    });
    FIELDS
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(field.full_name().into(), made.clone());
    made
}

/// Whether a field left out (holding its zero value) breaks its rules, so
/// that a request must send it: a list with `min_items`, a string with a
/// minimum length or a format, unless the rules ignore the zero value.
pub fn zero_breaks_rules(field: &FieldDescriptor) -> bool {
    let info = info(field);
    let Some(rules) = info.rules.as_ref() else {
        return false;
    };
    if rule(rules, "ignore").and_then(|v| v.as_enum_number()) == Some(IGNORE_IF_ZERO_VALUE)
        || field.supports_presence()
    {
        return false;
    }
    if field.is_list() {
        return type_rules(rules, "repeated")
            .and_then(|r| rule(&r, "min_items"))
            .and_then(|v| v.as_u64())
            .is_some_and(|n| n > 0);
    }
    match field.kind() {
        Kind::String => type_rules(rules, "string").is_some_and(|r| check_string("", &r).is_some()),
        _ => false,
    }
}

/// Forgets the rules read so far, for contracts that changed.
pub fn forget_rules() {
    FIELDS.write().unwrap_or_else(|e| e.into_inner()).clear();
}

/// The `update_mask` and the resource it applies to, for an update request
/// (AIP-134): the fields of the resource it leaves out keep their values,
/// so the resource's required fields are required only where named.
pub fn update_fields(input: &MessageDescriptor) -> Option<(FieldDescriptor, FieldDescriptor)> {
    let is_message = |f: &FieldDescriptor, wanted: Option<&str>| {
        !f.is_list()
            && matches!(f.kind(), Kind::Message(m) if wanted.is_none_or(|w| m.full_name() == w)
                && (wanted.is_some() || !m.full_name().starts_with("google.protobuf.")))
    };
    let mask = input
        .fields()
        .find(|f| f.name() == "update_mask" && is_message(f, Some("google.protobuf.FieldMask")))?;
    let resource = input.fields().find(|f| is_message(f, None))?;
    Some((mask, resource))
}

/// Every violation of the contract's rules in `msg`.
pub fn check(msg: &DynamicMessage) -> Vec<Violation> {
    let mut out = Vec::new();
    let Some((mask_field, resource)) = update_fields(&msg.descriptor()) else {
        check_message(msg, "", &mut out);
        return out;
    };
    let named: Vec<String> = match msg.get_field(&mask_field).as_ref() {
        Value::Message(mask) => mask
            .get_field_by_name("paths")
            .and_then(|v| {
                v.as_list().map(|l| {
                    l.iter()
                        .filter_map(|p| p.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    for field in msg.descriptor().fields() {
        let path = field.name().to_owned();
        match msg.get_field(&field).as_ref() {
            Value::Message(m) if field == resource && msg.has_field(&field) => {
                for f in m.descriptor().fields() {
                    let inner = format!("{path}.{}", f.name());
                    // Without a mask, the fields present are the update.
                    let in_mask = named.iter().any(|n| {
                        n == f.name()
                            || n.strip_prefix(f.name()).is_some_and(|r| r.starts_with('.'))
                    });
                    if in_mask || m.has_field(&f) {
                        check_field(m, &f, &inner, &mut out);
                    }
                }
            }
            _ => check_field(msg, &field, &path, &mut out),
        }
    }
    out
}

fn check_message(msg: &DynamicMessage, prefix: &str, out: &mut Vec<Violation>) {
    for field in msg.descriptor().fields() {
        let path = if prefix.is_empty() {
            field.name().to_owned()
        } else {
            format!("{prefix}.{}", field.name())
        };
        check_field(msg, &field, &path, out);
    }
}

fn check_field(
    msg: &DynamicMessage,
    field: &FieldDescriptor,
    path: &str,
    out: &mut Vec<Violation>,
) {
    let info = info(field);
    let rules = info.rules.as_ref();
    let set = msg.has_field(field);
    if !set {
        if info.required {
            out.push(violation(path, "is required"));
            return;
        }
        let ignored = rules.is_none_or(|r| {
            rule(r, "ignore").and_then(|v| v.as_enum_number()) == Some(IGNORE_IF_ZERO_VALUE)
        });
        // Fields with presence, and zero values the rules ignore, are
        // simply absent; nested messages left unset have nothing to check.
        let nested = matches!(field.kind(), Kind::Message(_)) && !field.is_list();
        if ignored || field.supports_presence() || nested {
            return;
        }
    }
    let value = msg.get_field(field);
    if field.is_list() {
        let items = value.as_list().unwrap_or(&[]);
        if let Some(repeated) = rules.and_then(|r| type_rules(r, "repeated")) {
            check_items(items, &field.kind(), &repeated, path, out);
        }
        for (i, item) in items.iter().enumerate() {
            if let Value::Message(m) = item {
                check_nested(m, &format!("{path}[{i}]"), out);
            }
        }
        return;
    }
    if field.is_map() {
        return;
    }
    if let Some(rules) = rules
        && let Some(problem) = check_value(&value, &field.kind(), rules)
    {
        out.push(violation(path, problem));
    }
    if let Value::Message(m) = value.as_ref() {
        check_nested(m, path, out);
    }
}

/// Nested messages are checked too, but not the well-known types.
fn check_nested(m: &DynamicMessage, path: &str, out: &mut Vec<Violation>) {
    if !m.descriptor().full_name().starts_with("google.protobuf.") {
        check_message(m, path, out);
    }
}

fn check_items(
    items: &[Value],
    kind: &Kind,
    rules: &DynamicMessage,
    path: &str,
    out: &mut Vec<Violation>,
) {
    let n = items.len() as u64;
    if let Some(min) = rule(rules, "min_items").and_then(|v| v.as_u64())
        && n < min
    {
        out.push(violation(
            path,
            format!("must have at least {min} item{}", plural(min)),
        ));
    }
    if let Some(max) = rule(rules, "max_items").and_then(|v| v.as_u64())
        && n > max
    {
        out.push(violation(
            path,
            format!("must have at most {max} item{}", plural(max)),
        ));
    }
    if flag(rules, "unique") {
        let mut seen = Vec::with_capacity(items.len());
        if items.iter().any(|item| {
            let dup = seen.contains(&item);
            seen.push(item);
            dup
        }) {
            out.push(violation(path, "must not repeat an item"));
        }
    }
    if let Some(each) = rule(rules, "items").and_then(|v| v.as_message().cloned()) {
        for (i, item) in items.iter().enumerate() {
            if let Some(problem) = check_value(item, kind, &each) {
                out.push(violation(&format!("{path}[{i}]"), problem));
            }
        }
    }
}

/// The paths a `field_mask` rule's `in` allows (proto names), if any.
pub fn mask_paths(rules: &DynamicMessage) -> Option<Vec<String>> {
    let r = type_rules(rules, "field_mask")?;
    match rule(&r, "in")? {
        Value::List(values) => Some(
            values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

/// The problem with the paths of a field mask, if any: each must be one
/// the rule allows, or a field inside one.
fn check_mask(mask: &DynamicMessage, rules: &DynamicMessage) -> Option<String> {
    let allowed = mask_paths(rules)?;
    let paths = mask.get_field_by_name("paths")?;
    let bad = paths
        .as_list()?
        .iter()
        .filter_map(|p| p.as_str())
        .find(|p| {
            !allowed.iter().any(|a| {
                p.strip_prefix(a.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            })
        })?;
    Some(format!(
        "{bad:?} is not a field that can be named here; use {}",
        allowed.join(", ")
    ))
}

/// The problem with one value under `rules`, if any.
fn check_value(value: &Value, kind: &Kind, rules: &DynamicMessage) -> Option<String> {
    match (value, kind) {
        (Value::Message(m), _) if m.descriptor().full_name() == "google.protobuf.FieldMask" => {
            check_mask(m, rules)
        }
        (Value::String(s), _) => type_rules(rules, "string").and_then(|r| check_string(s, &r)),
        (Value::EnumNumber(n), Kind::Enum(e)) => {
            let r = type_rules(rules, "enum")?;
            let defined = e.get_value(*n).is_some();
            if flag(&r, "defined_only") && !defined {
                return Some(format!("{n} is not a value of {}", e.name()));
            }
            check_in(&Value::I32(*n), &r, |v| {
                e.get_value(v.as_i32().unwrap_or_default())
                    .map_or_else(|| v.to_string(), |ev| ev.name().to_owned())
            })
        }
        (Value::F32(_) | Value::F64(_), _) => {
            let r = ["float", "double"]
                .iter()
                .find_map(|k| type_rules(rules, k))?;
            check_number(as_f64(value)?, &r, as_f64)
        }
        (Value::I32(_) | Value::I64(_) | Value::U32(_) | Value::U64(_), _) => {
            let r = [
                "int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32", "fixed64",
                "sfixed32", "sfixed64",
            ]
            .iter()
            .find_map(|k| type_rules(rules, k))?;
            check_number(as_i128(value)?, &r, as_i128)
        }
        _ => None,
    }
}

fn check_string(s: &str, r: &DynamicMessage) -> Option<String> {
    let chars = s.chars().count() as u64;
    if let Some(len) = rule(r, "len").and_then(|v| v.as_u64())
        && chars != len
    {
        return Some(format!("must be exactly {len} character{}", plural(len)));
    }
    let min = rule(r, "min_len").and_then(|v| v.as_u64());
    let max = rule(r, "max_len").and_then(|v| v.as_u64());
    match (min, max) {
        (Some(min), Some(max)) if chars < min || chars > max => {
            return Some(format!("must be {min} to {max} characters"));
        }
        (Some(min), _) if chars < min => {
            return Some(if min == 1 {
                "must not be empty".to_owned()
            } else {
                format!("must be at least {min} characters")
            });
        }
        (_, Some(max)) if chars > max => {
            return Some(format!("must be at most {max} character{}", plural(max)));
        }
        _ => {}
    }
    if let Some(max) = rule(r, "max_bytes").and_then(|v| v.as_u64())
        && s.len() as u64 > max
    {
        return Some(format!("must be at most {max} bytes"));
    }
    if let Some(Value::String(pattern)) = rule(r, "pattern")
        && !matches_pattern(&pattern, s)
    {
        return Some(format!("must match {pattern}"));
    }
    type Test = fn(&str, &str) -> bool;
    let affixes: [(&str, Test, &str); 3] = [
        ("prefix", |s, p| s.starts_with(p), "start with"),
        ("suffix", |s, p| s.ends_with(p), "end with"),
        ("contains", |s, p| s.contains(p), "contain"),
    ];
    for (name, test, what) in affixes {
        if let Some(Value::String(part)) = rule(r, name)
            && !test(s, &part)
        {
            return Some(format!("must {what} {part:?}"));
        }
    }
    if flag(r, "uuid") && uuid::Uuid::parse_str(s).is_err() {
        return Some("must be a UUID".to_owned());
    }
    if flag(r, "email") && !is_email(s) {
        return Some("must be an email address".to_owned());
    }
    check_in(&Value::String(s.to_owned()), r, |v| {
        format!("{:?}", v.as_str().unwrap_or(""))
    })
}

/// `const`, `in` and `not_in` of any rules message, with values named by
/// `show`.
fn check_in(value: &Value, r: &DynamicMessage, show: impl Fn(&Value) -> String) -> Option<String> {
    if let Some(c) = rule(r, "const")
        && !same(&c, value)
    {
        return Some(format!("must be {}", show(&c)));
    }
    if let Some(Value::List(allowed)) = rule(r, "in")
        && !allowed.iter().any(|a| same(a, value))
    {
        let names: Vec<String> = allowed.iter().map(&show).collect();
        return Some(format!(
            "{} is not one of {}",
            show(value),
            names.join(", ")
        ));
    }
    if let Some(Value::List(refused)) = rule(r, "not_in")
        && refused.iter().any(|a| same(a, value))
    {
        return Some(format!("must not be {}", show(value)));
    }
    None
}

fn check_number<T: PartialOrd + Copy + std::fmt::Display>(
    n: T,
    r: &DynamicMessage,
    read: fn(&Value) -> Option<T>,
) -> Option<String> {
    let bound = |name| rule(r, name).as_ref().and_then(read);
    let (gt, gte, lt, lte) = (bound("gt"), bound("gte"), bound("lt"), bound("lte"));
    let low_ok = gt.is_none_or(|b| n > b) && gte.is_none_or(|b| n >= b);
    let high_ok = lt.is_none_or(|b| n < b) && lte.is_none_or(|b| n <= b);
    if !(low_ok && high_ok) {
        let low = gte
            .map(|b| format!("at least {b}"))
            .or_else(|| gt.map(|b| format!("more than {b}")));
        let high = lte
            .map(|b| format!("at most {b}"))
            .or_else(|| lt.map(|b| format!("less than {b}")));
        return Some(match (low, high) {
            (Some(l), Some(h)) => format!("must be {l} and {h}"),
            (Some(l), None) => format!("must be {l}"),
            (None, Some(h)) => format!("must be {h}"),
            (None, None) => "is out of range".to_owned(),
        });
    }
    if let Some(c) = bound("const")
        && n != c
    {
        return Some(format!("must be {c}"));
    }
    let list = |name| match rule(r, name) {
        Some(Value::List(values)) => values.iter().filter_map(read).collect::<Vec<T>>(),
        _ => Vec::new(),
    };
    let allowed = list("in");
    if !allowed.is_empty() && !allowed.contains(&n) {
        let names: Vec<String> = allowed.iter().map(T::to_string).collect();
        return Some(format!("{n} is not one of {}", names.join(", ")));
    }
    if list("not_in").contains(&n) {
        return Some(format!("must not be {n}"));
    }
    None
}

fn as_i128(v: &Value) -> Option<i128> {
    Some(match v {
        Value::I32(n) => i128::from(*n),
        Value::I64(n) => i128::from(*n),
        Value::U32(n) => i128::from(*n),
        Value::U64(n) => i128::from(*n),
        _ => return None,
    })
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::F32(n) => Some(f64::from(*n)),
        Value::F64(n) => Some(*n),
        _ => None,
    }
}

/// Equal values, across the integer widths rules and fields may use.
fn same(a: &Value, b: &Value) -> bool {
    match (as_i128(a), as_i128(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Compiled patterns, by source (the contracts hold few).
static PATTERNS: LazyLock<Mutex<HashMap<String, Option<regex::Regex>>>> =
    LazyLock::new(Mutex::default);

fn matches_pattern(pattern: &str, s: &str) -> bool {
    let mut cache = PATTERNS.lock().unwrap_or_else(|e| e.into_inner());
    let re = cache
        .entry(pattern.to_owned())
        .or_insert_with(|| regex::Regex::new(pattern).ok());
    // A pattern that does not compile is the contract's bug: it refuses
    // nothing rather than everything.
    re.as_ref().is_none_or(|re| re.is_match(s))
}

fn violation(path: &str, description: impl Into<String>) -> Violation {
    Violation {
        field: path.to_owned(),
        description: description.into(),
    }
}
