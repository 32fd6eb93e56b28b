//! An OpenAPI 3.1 document generated from the same route table and
//! descriptors the transcoder uses, so it cannot drift from the API.

use std::collections::BTreeMap;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};

use crate::{
    routes::{BodyRule, Route, RouteKind, RouteTable, Transcoding},
    validate::{self, rule, type_rules},
};

pub fn document(table: &RouteTable) -> Value {
    let mut paths: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    let mut schemas = BTreeMap::new();
    // OpenAPI treats `/products/{id}` and `/products/{product.id}` as the
    // same path, so routes of one shape share the first route's names.
    let mut names_by_shape: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for route in table.routes() {
        let own: Vec<String> = route
            .template
            .variables
            .iter()
            .map(|v| v.field_path.join("."))
            .collect();
        let names = names_by_shape
            .entry(openapi_path(route, &vec![String::new(); own.len()]))
            .or_insert(own)
            .clone();
        let path = openapi_path(route, &names);
        let op = operation(route, &names, &mut schemas);
        paths
            .entry(path)
            .or_default()
            .insert(route.http_method.as_str().to_ascii_lowercase(), op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Agora API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "REST/JSON API of the Agora commerce platform, transcoded to gRPC."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}
            }
        }
    })
}

/// `/api/v1/users/{id}`: the template with its variables named `names`.
fn openapi_path(route: &Route, names: &[String]) -> String {
    let t = &route.template;
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < t.segments.len() {
        if let Some((n, v)) = t.variables.iter().enumerate().find(|(_, v)| v.start == i) {
            parts.push(format!("{{{}}}", names.get(n).map_or("", String::as_str)));
            i = v.end.unwrap_or(t.segments.len()).max(i + 1);
        } else {
            parts.push(match &t.segments[i] {
                crate::template::Segment::Literal(l) => l.clone(),
                crate::template::Segment::Single => "*".into(),
                crate::template::Segment::Rest => "**".into(),
            });
            i += 1;
        }
    }
    let mut path = format!("/{}", parts.join("/"));
    if let Some(verb) = &t.verb {
        path.push(':');
        path.push_str(verb);
    }
    path
}

fn operation(route: &Route, names: &[String], schemas: &mut BTreeMap<String, Value>) -> Value {
    let opts = &route.transcoding;
    let input = route.input();
    let mut params = Vec::new();
    for ((var, fields), name) in route
        .template
        .variables
        .iter()
        .zip(&route.path_fields)
        .zip(names)
    {
        let leaf = fields
            .last()
            .map(|f| constrained(f, field_schema(f, opts)))
            .unwrap_or_else(|| json!({"type": "string"}));
        let field = var.field_path.join(".");
        let mut param = json!({"name": name, "in": "path", "required": true, "schema": leaf});
        if *name != field {
            param["description"] = json!(format!("Sets the request field `{field}`."));
        }
        params.push(param);
    }
    let bound: Vec<&FieldDescriptor> = route.path_fields.iter().filter_map(|f| f.first()).collect();
    let mut op = serde_json::Map::new();
    op.insert(
        "operationId".into(),
        json!(format!(
            "{}_{}",
            route.method.parent_service().name(),
            route.method.name()
        )),
    );
    op.insert("tags".into(), json!([route.method.parent_service().name()]));
    if let Some(doc) = comments(&route.method) {
        op.insert("description".into(), json!(doc));
    }
    match &route.body {
        BodyRule::None | BodyRule::Field(_) => {
            for f in input.fields() {
                if bound.contains(&&f) || matches!(&route.body, BodyRule::Field(b) if *b == f) {
                    continue;
                }
                if matches!(f.kind(), Kind::Message(ref m) if !is_string_wkt(m)) {
                    continue;
                }
                let schema = constrained(&f, field_schema_or_list(&f, opts));
                let mut param =
                    json!({"name": opts.field_name(&f), "in": "query", "schema": schema});
                if validate::is_required(&f) {
                    param["required"] = json!(true);
                    param["schema"] = non_empty(&f, param["schema"].take());
                } else if validate::zero_breaks_rules(&f) {
                    param["required"] = json!(true);
                }
                params.push(param);
            }
        }
        BodyRule::All => {}
    }
    let body_schema = match &route.body {
        BodyRule::None => None,
        BodyRule::All if bound.is_empty() => Some(message_ref(&input, schemas, opts)),
        // Path variables win over the body: the body's schema leaves them
        // out, as grpc-gateway's does.
        BodyRule::All => {
            let reference = message_ref(&input, schemas, opts);
            let mut body = schemas.get(input.full_name()).cloned().unwrap_or(reference);
            for f in &bound {
                let name = opts.field_name(f);
                if let Some(props) = body["properties"].as_object_mut() {
                    props.remove(name);
                }
                if let Some(required) = body["required"].as_array_mut() {
                    required.retain(|r| r != name);
                }
            }
            Some(body)
        }
        BodyRule::Field(f) => match (validate::update_fields(&input), f.kind()) {
            // An update sends only what changes: the resource's required
            // fields may be left out (but not sent empty).
            (Some((_, resource)), Kind::Message(m)) if resource == *f => {
                message_ref(&m, schemas, opts);
                let name = format!("{}.patch", m.full_name());
                let mut partial = schemas.get(m.full_name()).cloned().unwrap_or_default();
                if let Some(obj) = partial.as_object_mut() {
                    obj.remove("required");
                }
                schemas.insert(name.clone(), partial);
                Some(json!({"$ref": format!("#/components/schemas/{name}")}))
            }
            _ => Some(kind_schema(f, schemas, opts)),
        },
    };
    if let Some(schema) = body_schema {
        // A body is required when its message has required fields; an
        // empty body is the empty message otherwise.
        let required = schema_of(&schema, schemas)
            .and_then(|s| s.get("required"))
            .and_then(Value::as_array)
            .is_some_and(|r| !r.is_empty());
        op.insert(
            "requestBody".into(),
            json!({"required": required, "content": {"application/json": {"schema": schema}}}),
        );
    }
    let output = route.method.output();
    let resp_schema = match &route.response_body {
        None => message_ref(&output, schemas, opts),
        Some(f) => kind_schema(f, schemas, opts),
    };
    op.insert("parameters".into(), Value::Array(params));
    let ok = match route.kind {
        RouteKind::Unary => json!({
            "200": {"description": "OK", "content": {"application/json": {"schema": resp_schema}}}
        }),
        RouteKind::ServerStream => json!({
            "200": {
                "description": "A stream: with `Accept: text/event-stream`, Server-Sent Events whose data is one message each (a failure is a last `error` event carrying a google.rpc.Status); otherwise newline-delimited JSON, one message per line (a failure is a last line `{\"error\": <google.rpc.Status>}`).",
                "content": {
                    "text/event-stream": {"schema": {"type": "string"}, "x-message": resp_schema.clone()},
                    "application/x-ndjson": {"schema": resp_schema}
                }
            }
        }),
        RouteKind::WebSocket => json!({
            "101": {
                "description": "A WebSocket. Text frames carry one JSON message each, both ways; the access token may come as the `access_token` query parameter. A failure is a last frame `{\"error\": <google.rpc.Status>}` and a close frame.",
                "x-message": resp_schema
            }
        }),
    };
    let mut responses = json!({
            "default": {"description": "An error as a google.rpc.Status", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"code": {"type": "integer"}, "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}}}}}}}
    });
    if let (Some(all), Value::Object(ok)) = (responses.as_object_mut(), ok) {
        all.extend(ok);
    }
    op.insert("responses".into(), responses);
    if route.access.public {
        op.insert("security".into(), json!([]));
    } else {
        op.insert("security".into(), json!([{"bearer": []}, {"apiKey": []}]));
    }
    Value::Object(op)
}

fn comments(method: &prost_reflect::MethodDescriptor) -> Option<String> {
    let file = method.parent_file();
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let loc = info.location.iter().find(|l| l.path == method.path())?;
    let text = loc.leading_comments().trim();
    (!text.is_empty()).then(|| text.lines().map(str::trim).collect::<Vec<_>>().join(" "))
}

fn is_string_wkt(m: &MessageDescriptor) -> bool {
    matches!(
        m.full_name(),
        "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask"
    )
}

fn message_ref(
    m: &MessageDescriptor,
    schemas: &mut BTreeMap<String, Value>,
    opts: &Transcoding,
) -> Value {
    if is_string_wkt(m) {
        return wkt_schema(m);
    }
    // JSON values of their own: any object, any value, any array.
    match m.full_name() {
        "google.protobuf.Struct" => return json!({"type": "object"}),
        "google.protobuf.Value" => return json!({}),
        "google.protobuf.ListValue" => return json!({"type": "array"}),
        _ => {}
    }
    let name = m.full_name().to_owned();
    if !schemas.contains_key(&name) {
        schemas.insert(name.clone(), Value::Null);
        let mut props = serde_json::Map::new();
        let mut required = Vec::new();
        for f in m.fields() {
            let mut schema = constrained(&f, kind_schema(&f, schemas, opts));
            if validate::behaviors(&f).contains(&validate::OUTPUT_ONLY) {
                schema = read_only(schema);
            }
            if validate::is_required(&f) {
                required.push(opts.field_name(&f).to_owned());
                schema = non_empty(&f, schema);
            } else if validate::zero_breaks_rules(&f) {
                required.push(opts.field_name(&f).to_owned());
            } else {
                schema = nullable(schema);
            }
            props.insert(opts.field_name(&f).to_owned(), schema);
        }
        // The edge refuses fields a message does not have.
        let mut schema =
            json!({"type": "object", "properties": props, "additionalProperties": false});
        if !required.is_empty() {
            schema["required"] = json!(required);
        }
        schemas.insert(name.clone(), schema);
    }
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn wkt_schema(m: &MessageDescriptor) -> Value {
    match m.full_name() {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"})
        }
        _ => json!({"type": "string"}),
    }
}

fn kind_schema(
    f: &FieldDescriptor,
    schemas: &mut BTreeMap<String, Value>,
    opts: &Transcoding,
) -> Value {
    let single = match f.kind() {
        Kind::Message(m) if f.is_map() => {
            let value = m.map_entry_value_field();
            return json!({"type": "object", "additionalProperties": kind_schema(&value, schemas, opts)});
        }
        Kind::Message(m) => message_ref(&m, schemas, opts),
        _ => field_schema(f, opts),
    };
    if f.is_list() {
        json!({"type": "array", "items": single})
    } else {
        single
    }
}

fn field_schema(f: &FieldDescriptor, opts: &Transcoding) -> Value {
    match f.kind() {
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "format": "int32", "minimum": 0}),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$"})
        }
        Kind::Uint64 | Kind::Fixed64 => {
            json!({"type": "string", "format": "uint64", "pattern": "^[0-9]{1,20}$"})
        }
        Kind::Float => json!({"type": "number", "format": "float"}),
        Kind::Double => json!({"type": "number", "format": "double"}),
        Kind::Enum(e) => enum_schema(e.values(), opts),
        Kind::Message(m) => wkt_schema(&m),
    }
}

/// A repeated scalar query parameter is an array of its items.
fn field_schema_or_list(f: &FieldDescriptor, opts: &Transcoding) -> Value {
    let item = field_schema(f, opts);
    if f.is_list() {
        json!({"type": "array", "items": item})
    } else {
        item
    }
}

/// A `$ref` with `readOnly` beside it needs `allOf` in older tools; 3.1
/// allows siblings, which is what this writes.
fn read_only(mut schema: Value) -> Value {
    schema["readOnly"] = json!(true);
    schema
}

/// `schema` (the field's, or an array of them) with the field's declared
/// rules as JSON Schema keywords.
fn constrained(f: &FieldDescriptor, mut schema: Value) -> Value {
    let Some(rules) = validate::field_rules(f) else {
        return schema;
    };
    if f.is_list() {
        if let Some(r) = type_rules(&rules, "repeated") {
            if let Some(n) = rule(&r, "min_items").and_then(|v| v.as_u64()) {
                schema["minItems"] = json!(n);
            }
            if let Some(n) = rule(&r, "max_items").and_then(|v| v.as_u64()) {
                schema["maxItems"] = json!(n);
            }
            if rule(&r, "unique").and_then(|v| v.as_bool()) == Some(true) {
                schema["uniqueItems"] = json!(true);
            }
            if let Some(items) = rule(&r, "items").and_then(|v| v.as_message().cloned()) {
                scalar_keywords(&mut schema["items"], &f.kind(), &items);
            }
        }
        return schema;
    }
    scalar_keywords(&mut schema, &f.kind(), &rules);
    // A field whose rules skip its zero value may also hold it.
    if rule(&rules, "ignore").and_then(|v| v.as_enum_number()) == Some(1) {
        let zero = match f.kind() {
            Kind::String | Kind::Bytes => json!(""),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
                json!("0")
            }
            Kind::Bool => json!(false),
            Kind::Message(_) => return schema,
            _ => json!(0),
        };
        schema = json!({"anyOf": [{"const": zero}, schema]});
    }
    schema
}

fn scalar_keywords(schema: &mut Value, kind: &Kind, rules: &prost_reflect::DynamicMessage) {
    if let Some(paths) = validate::mask_paths(rules) {
        // A comma list of the allowed paths in their JSON spelling (the
        // proto3 JSON form of a field mask); empty means the fields present
        // in the body.
        let names: Vec<String> = paths.iter().map(|p| lower_camel(p)).collect();
        let one = format!("(?:{})", names.join("|"));
        schema["pattern"] = json!(format!("^(?:{one}(?:,{one})*)?$"));
        return;
    }
    if let (Kind::Enum(e), Some(r)) = (kind, type_rules(rules, "enum")) {
        // The names a request may use: those `in` lists (or all), less
        // those `not_in` lists.
        let numbers = |name| match rule(&r, name) {
            Some(prost_reflect::Value::List(values)) => {
                values.iter().filter_map(|v| v.as_i32()).collect::<Vec<_>>()
            }
            _ => Vec::new(),
        };
        let (only, never) = (numbers("in"), numbers("not_in"));
        let allowed: Vec<prost_reflect::EnumValueDescriptor> = e
            .values()
            .filter(|v| only.is_empty() || only.contains(&v.number()))
            .filter(|v| !never.contains(&v.number()))
            .collect();
        // Both spellings stay accepted (the item schema of a list, too).
        let opts = Transcoding {
            enums_as_numbers: schema["type"][0] == "integer",
            ..Transcoding::default()
        };
        *schema = enum_schema(allowed.into_iter(), &opts);
        return;
    }
    if let Some(r) = type_rules(rules, "string") {
        let num = |name| rule(&r, name).and_then(|v| v.as_u64());
        if let Some(n) = num("len") {
            schema["minLength"] = json!(n);
            schema["maxLength"] = json!(n);
        }
        if let Some(n) = num("min_len") {
            schema["minLength"] = json!(n);
        }
        if let Some(n) = num("max_len") {
            schema["maxLength"] = json!(n);
        }
        if let Some(p) = rule(&r, "pattern").and_then(|v| v.as_str().map(str::to_owned)) {
            schema["pattern"] = json!(p);
        }
        if rule(&r, "uuid").and_then(|v| v.as_bool()) == Some(true) {
            schema["format"] = json!("uuid");
        }
        if rule(&r, "email").and_then(|v| v.as_bool()) == Some(true) {
            schema["format"] = json!("email");
        }
        if let Some(prost_reflect::Value::List(values)) = rule(&r, "in") {
            schema["enum"] = json!(values.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>());
        }
        return;
    }
    // 32-bit integers and floats are JSON numbers; 64-bit ones are
    // strings, whose bounds JSON Schema cannot state, save one: a lower
    // bound of 0 or more leaves out the minus sign.
    for kind in ["int64", "sint64", "sfixed64"] {
        let Some(r) = type_rules(rules, kind) else {
            continue;
        };
        let at_least = |name| rule(&r, name).and_then(|v| v.as_i64());
        let non_negative =
            at_least("gte").is_some_and(|n| n >= 0) || at_least("gt").is_some_and(|n| n >= -1);
        if non_negative && schema["pattern"].is_string() {
            schema["pattern"] = json!("^[0-9]{1,19}$");
        }
    }
    for kind in [
        "int32", "uint32", "sint32", "fixed32", "sfixed32", "float", "double",
    ] {
        let Some(r) = type_rules(rules, kind) else {
            continue;
        };
        let num = |name| {
            rule(&r, name).and_then(|v| match v {
                prost_reflect::Value::I32(n) => Some(json!(n)),
                prost_reflect::Value::U32(n) => Some(json!(n)),
                prost_reflect::Value::F32(n) => Some(json!(n)),
                prost_reflect::Value::F64(n) => Some(json!(n)),
                _ => None,
            })
        };
        for (rule_name, keyword) in [
            ("gte", "minimum"),
            ("gt", "exclusiveMinimum"),
            ("lte", "maximum"),
            ("lt", "exclusiveMaximum"),
            ("const", "const"),
        ] {
            if let Some(n) = num(rule_name) {
                schema[keyword] = n;
            }
        }
    }
}

/// An enum's values as the proto3 JSON mapping takes them: by name or by
/// number, whichever the edge writes first.
fn enum_schema(
    values: impl Iterator<Item = prost_reflect::EnumValueDescriptor>,
    opts: &Transcoding,
) -> Value {
    let (mut names, mut numbers) = (Vec::new(), Vec::new());
    for v in values {
        names.push(json!(v.name()));
        numbers.push(json!(v.number()));
    }
    if opts.enums_as_numbers {
        numbers.extend(names);
        json!({"type": ["integer", "string"], "enum": numbers})
    } else {
        names.extend(numbers);
        json!({"type": ["string", "integer"], "enum": names})
    }
}

/// A field that may be sent as `null`, which the proto3 JSON mapping reads
/// as its default value.
fn nullable(mut schema: Value) -> Value {
    if let Some(values) = schema.get_mut("enum").and_then(Value::as_array_mut) {
        values.push(Value::Null);
    }
    match schema.get_mut("type") {
        Some(Value::String(t)) => {
            let t = std::mem::take(t);
            schema["type"] = json!([t, "null"]);
            schema
        }
        Some(Value::Array(types)) => {
            types.push(json!("null"));
            schema
        }
        _ => match schema.get_mut("anyOf").and_then(Value::as_array_mut) {
            Some(options) => {
                options.push(json!({"type": "null"}));
                schema
            }
            None => json!({"anyOf": [schema, {"type": "null"}]}),
        },
    }
}

/// The schema `schema` stands for: itself, or the component it refers to.
fn schema_of<'a>(schema: &'a Value, schemas: &'a BTreeMap<String, Value>) -> Option<&'a Value> {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => schemas.get(r.strip_prefix("#/components/schemas/")?),
        None => Some(schema),
    }
}

/// A required field's schema: in proto3 an empty string or list is the
/// same as none, so it must not be empty.
fn non_empty(f: &FieldDescriptor, mut schema: Value) -> Value {
    if f.is_list() {
        if schema.get("minItems").is_none() {
            schema["minItems"] = json!(1);
        }
    } else if matches!(f.kind(), Kind::String | Kind::Bytes) && schema.get("minLength").is_none() {
        schema["minLength"] = json!(1);
    } else if matches!(
        f.kind(),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32
    ) {
        schema["not"] = json!({"const": 0});
    }
    schema
}

/// `category_id` → `categoryId`, per segment of a dotted path: the JSON
/// spelling of a field mask path.
fn lower_camel(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut upper = false;
    for c in path.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.extend(c.to_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}
