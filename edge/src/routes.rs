//! The route table: every `google.api.http` binding in the descriptor set,
//! built once at start. Adding an annotated RPC to a contract adds a route
//! here with no edge code.

use std::sync::Arc;

use agora_kit::access::AccessPolicy;
use agora_proto::{
    api::v1::{Access, RateLimit, WebSocketBinding},
    google::api::{HttpRule, http_rule::Pattern},
};
use http::Method;
use prost_reflect::{
    DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, ServiceDescriptor,
    Value,
};

use crate::template::{PathTemplate, TemplateError};

const HTTP_EXTENSION: &str = "google.api.http";
const RATE_LIMIT_EXTENSION: &str = "agora.api.v1.rate_limit";
const WEBSOCKET_EXTENSION: &str = "agora.api.v1.websocket";

/// How a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// One request, one JSON response.
    Unary,
    /// One request, a stream of responses: Server-Sent Events or
    /// newline-delimited JSON, by `Accept`.
    ServerStream,
    /// A WebSocket bridged to a server- or bidi-streaming RPC.
    WebSocket,
}

/// Where the request body goes.
#[derive(Debug, Clone)]
pub enum BodyRule {
    /// No body; every unbound field may come from the query.
    None,
    /// `body: "*"`: the body is the request message, minus path fields.
    All,
    /// `body: "field"`: the body is that field; the rest may come from the query.
    Field(FieldDescriptor),
}

/// One REST binding of one RPC method.
#[derive(Debug, Clone)]
pub struct Route {
    pub kind: RouteKind,
    pub http_method: Method,
    pub template: PathTemplate,
    /// The request fields bound by each template variable, in order.
    pub path_fields: Vec<Vec<FieldDescriptor>>,
    pub body: BodyRule,
    pub response_body: Option<FieldDescriptor>,
    pub method: MethodDescriptor,
    /// `/package.Service/Method`.
    pub grpc_path: Arc<str>,
    /// The same path, ready for the gRPC client (cheap to clone).
    pub grpc_uri: http::uri::PathAndQuery,
    /// The template text, the route's metrics label.
    pub label: Arc<str>,
    /// The upstream that serves the method (`users`, `catalog`…).
    pub upstream: Arc<str>,
    pub access: Access,
    /// Whether a failed call may be sent again: GET routes, and methods
    /// whose contract declares `idempotency_level` NO_SIDE_EFFECTS or
    /// IDEMPOTENT.
    pub idempotent: bool,
    /// The contract's `agora.api.v1.rate_limit` option (default: none).
    pub rate_limit: RateLimit,
    /// How JSON and query strings map to messages on this route.
    pub transcoding: Transcoding,
}

/// JSON and query mapping options, as grpc-gateway's marshaler options
/// (`[edge.transcoding]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Transcoding {
    /// Write fields that hold their default value (`0`, `""`, `[]`, the
    /// zero enum) rather than leave them out
    /// (`AGORA_EDGE_EMIT_UNPOPULATED`, default true).
    pub emit_unpopulated: bool,
    /// Name fields as the contracts spell them (`page_size`) instead of
    /// their JSON names (`pageSize`) in answers and in the OpenAPI document
    /// (`AGORA_EDGE_USE_PROTO_NAMES`, default false). Requests may use
    /// either.
    pub use_proto_names: bool,
    /// Write enum values as numbers instead of names
    /// (`AGORA_EDGE_ENUMS_AS_NUMBERS`, default false). Requests may use
    /// either.
    pub enums_as_numbers: bool,
    /// What to do with a query parameter that names no field:
    /// `reject` it with 400 naming it, or `ignore` it
    /// (`AGORA_EDGE_UNKNOWN_QUERY_PARAMETERS`, default `reject`).
    pub unknown_query_parameters: UnknownQuery,
}

impl Default for Transcoding {
    fn default() -> Self {
        Self {
            emit_unpopulated: true,
            use_proto_names: false,
            enums_as_numbers: false,
            unknown_query_parameters: UnknownQuery::Reject,
        }
    }
}

/// See [`Transcoding::unknown_query_parameters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownQuery {
    Reject,
    Ignore,
}

impl std::str::FromStr for UnknownQuery {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reject" => Ok(Self::Reject),
            "ignore" => Ok(Self::Ignore),
            _ => Err(format!("{s:?} is neither reject nor ignore")),
        }
    }
}

impl Transcoding {
    /// The name a field has in JSON under these options.
    pub fn field_name<'a>(&self, field: &'a FieldDescriptor) -> &'a str {
        if self.use_proto_names {
            field.name()
        } else {
            field.json_name()
        }
    }
}

impl Route {
    pub fn input(&self) -> MessageDescriptor {
        self.method.input()
    }

    /// The order routes are tried in, most specific first: verbs (so
    /// `/x/{id}:commit` wins over `/x/{id}`), then more literal segments,
    /// then fewer variables.
    fn specificity(&self) -> (bool, std::cmp::Reverse<usize>, usize) {
        (
            self.template.verb.is_none(),
            std::cmp::Reverse(self.template.literal_count()),
            self.template.variables.len(),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("{method}: {reason}")]
    Binding { method: String, reason: String },
}

/// What a lookup found.
pub enum Lookup<'a> {
    Found(&'a Route, Vec<String>),
    /// The path exists, but not for this method: these are allowed.
    WrongMethod(Vec<Method>),
    NotFound,
}

/// Every route, most specific first.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Reads the bindings of every service in `pool` whose full name starts
    /// with `package_prefix`, each served by the upstream its package
    /// names (`agora.users.v1` → `users`).
    pub fn from_pool(pool: &DescriptorPool, package_prefix: &str) -> Result<Self, RouteError> {
        Self::from_services(pool, |service| {
            service
                .full_name()
                .starts_with(package_prefix)
                .then(|| Ok(upstream_name(service.package_name()).into()))
        })
    }

    /// Reads the bindings of the services of `pool` that `select` picks:
    /// `None` leaves a service out; otherwise it names the upstream that
    /// serves it, or says why none does (an error only if the service has
    /// bindings).
    pub fn from_services(
        pool: &DescriptorPool,
        select: impl Fn(&ServiceDescriptor) -> Option<Result<Arc<str>, String>>,
    ) -> Result<Self, RouteError> {
        let policy = AccessPolicy::from_pool(pool);
        let ext = pool.get_extension_by_name(HTTP_EXTENSION);
        let limit_ext = pool.get_extension_by_name(RATE_LIMIT_EXTENSION);
        let ws_ext = pool.get_extension_by_name(WEBSOCKET_EXTENSION);
        let mut routes = Vec::new();
        for service in pool.services() {
            let Some(upstream) = select(&service) else {
                continue;
            };
            for method in service.methods() {
                let options = method.options();
                let grpc_path: Arc<str> =
                    format!("/{}/{}", service.full_name(), method.name()).into();
                let bad = |reason: String| RouteError::Binding {
                    method: method.full_name().to_owned(),
                    reason,
                };
                let http_rule = match &ext {
                    Some(ext) if options.has_extension(ext) => {
                        match options.get_extension(ext).into_owned() {
                            Value::Message(rule) => {
                                Some(rule.transcode_to::<HttpRule>().map_err(|e| {
                                    bad(format!("unreadable google.api.http option: {e}"))
                                })?)
                            }
                            _ => None,
                        }
                    }
                    _ => None,
                };
                let ws_rule = match &ws_ext {
                    Some(ext) if options.has_extension(ext) => {
                        match options.get_extension(ext).into_owned() {
                            Value::Message(rule) => {
                                Some(rule.transcode_to::<WebSocketBinding>().map_err(|e| {
                                    bad(format!("unreadable agora.api.v1.websocket option: {e}"))
                                })?)
                            }
                            _ => None,
                        }
                    }
                    _ => None,
                };
                if http_rule.is_none() && ws_rule.is_none() {
                    continue;
                }
                let upstream = upstream.clone().map_err(|reason| RouteError::Binding {
                    method: method.full_name().to_owned(),
                    reason,
                })?;
                // A REST request is one message: a stream from the client
                // has no REST form (a WebSocket binding serves those).
                if http_rule.is_some() && method.is_client_streaming() {
                    return Err(bad(format!(
                        "google.api.http cannot bind a {}-streaming RPC; bind it with \
                         agora.api.v1.websocket instead",
                        if method.is_server_streaming() {
                            "bidi"
                        } else {
                            "client"
                        }
                    )));
                }
                if ws_rule.is_some() && !method.is_server_streaming() {
                    return Err(bad(
                        "agora.api.v1.websocket binds only server- or bidi-streaming RPCs".into(),
                    ));
                }
                let access = policy.get(&grpc_path).cloned().unwrap_or_default();
                let rate_limit = match &limit_ext {
                    Some(le) if options.has_extension(le) => {
                        match options.get_extension(le).as_ref() {
                            Value::Message(m) => m.transcode_to::<RateLimit>().map_err(|e| {
                                bad(format!("unreadable agora.api.v1.rate_limit option: {e}"))
                            })?,
                            _ => RateLimit::default(),
                        }
                    }
                    _ => RateLimit::default(),
                };
                let mut add = |rule: &HttpRule, kind: RouteKind| -> Result<(), RouteError> {
                    routes.push(Route::from_rule(
                        rule,
                        kind,
                        &method,
                        grpc_path.clone(),
                        upstream.clone(),
                        access.clone(),
                        rate_limit.clone(),
                    )?);
                    Ok(())
                };
                if let Some(rule) = &http_rule {
                    let kind = if method.is_server_streaming() {
                        RouteKind::ServerStream
                    } else {
                        RouteKind::Unary
                    };
                    add(rule, kind)?;
                    for extra in &rule.additional_bindings {
                        add(extra, kind)?;
                    }
                }
                if let Some(ws) = &ws_rule {
                    let rule = HttpRule {
                        pattern: Some(Pattern::Get(ws.path.clone())),
                        response_body: ws.response_body.clone(),
                        ..HttpRule::default()
                    };
                    add(&rule, RouteKind::WebSocket)?;
                }
            }
        }
        routes.sort_by_key(Route::specificity);
        Ok(Self { routes })
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// One table of several, in order of precedence, lowest first: a
    /// service found in a later table replaces every route of the same
    /// service in earlier ones (a service's own reflection over the
    /// contracts the edge was built with). Two services binding the same
    /// method and path are refused, naming both.
    pub fn merge(tables: impl IntoIterator<Item = RouteTable>) -> Result<Self, RouteError> {
        let mut routes: Vec<Route> = Vec::new();
        for table in tables {
            let replaced: std::collections::HashSet<&str> = table
                .routes
                .iter()
                .map(|r| r.method.parent_service().full_name())
                .collect();
            routes.retain(|r| !replaced.contains(r.method.parent_service().full_name()));
            routes.extend(table.routes.iter().cloned());
        }
        let mut seen = std::collections::HashMap::new();
        for route in &routes {
            let key = (route.http_method.clone(), route.template.to_string());
            if let Some(other) = seen.insert(key, &route.grpc_path)
                && *other != route.grpc_path
            {
                return Err(RouteError::Binding {
                    method: route.method.full_name().to_owned(),
                    reason: format!(
                        "{} {} is also bound by {other}",
                        route.http_method, route.label
                    ),
                });
            }
        }
        routes.sort_by_key(Route::specificity);
        Ok(Self { routes })
    }

    /// Sets every route's transcoding options.
    pub fn with_transcoding(mut self, options: Transcoding) -> Self {
        for route in &mut self.routes {
            route.transcoding = options;
        }
        self
    }

    /// A route of the method at `/package.Service/Method`, for calls that
    /// name the method itself (gRPC-Web).
    pub fn by_grpc_path(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| &*r.grpc_path == path)
    }

    /// Finds the route for `method` and a raw (still percent-encoded) path.
    pub fn lookup(&self, method: &Method, path: &str) -> Lookup<'_> {
        let Some(path) = path.strip_prefix('/') else {
            return Lookup::NotFound;
        };
        let (head, last) = path.rsplit_once('/').map_or(("", path), |(h, l)| (h, l));
        let verb_split = last.rsplit_once(':');
        let mut allowed = Vec::new();
        let mut best = None;
        let mut parts_buf: Vec<&str> = Vec::with_capacity(8);
        for route in &self.routes {
            parts_buf.clear();
            if !head.is_empty() {
                parts_buf.extend(head.split('/'));
            }
            match (&route.template.verb, verb_split) {
                (Some(verb), Some((seg, v))) if v == verb => parts_buf.push(seg),
                (Some(_), _) => continue,
                (None, _) => parts_buf.push(last),
            }
            // A literal path wins over a template that also matches it
            // (`/users/me` over `/users/{id}`), as in OpenAPI: only routes
            // as specific as the first match count.
            let specificity = route.specificity();
            if best.is_some_and(|b| b != specificity) {
                break;
            }
            if let Some(values) = route.template.matches(&parts_buf) {
                best = Some(specificity);
                if route.http_method == *method {
                    return Lookup::Found(route, values);
                }
                if !allowed.contains(&route.http_method) {
                    allowed.push(route.http_method.clone());
                }
            }
        }
        if allowed.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::WrongMethod(allowed)
        }
    }
}

impl Route {
    fn from_rule(
        rule: &HttpRule,
        kind: RouteKind,
        method: &MethodDescriptor,
        grpc_path: Arc<str>,
        upstream: Arc<str>,
        access: Access,
        rate_limit: RateLimit,
    ) -> Result<Self, RouteError> {
        let bad = |reason: String| RouteError::Binding {
            method: method.full_name().to_owned(),
            reason,
        };
        let (http_method, path) = match &rule.pattern {
            Some(Pattern::Get(p)) => (Method::GET, p),
            Some(Pattern::Put(p)) => (Method::PUT, p),
            Some(Pattern::Post(p)) => (Method::POST, p),
            Some(Pattern::Delete(p)) => (Method::DELETE, p),
            Some(Pattern::Patch(p)) => (Method::PATCH, p),
            Some(Pattern::Custom(c)) => (
                Method::from_bytes(c.kind.as_bytes())
                    .map_err(|_| bad(format!("bad custom method {:?}", c.kind)))?,
                &c.path,
            ),
            None => return Err(bad("google.api.http has no pattern".into())),
        };
        let template = PathTemplate::parse(path)?;
        let input = method.input();
        let path_fields = template
            .variables
            .iter()
            .map(|v| {
                resolve_path(&input, &v.field_path).map_err(|e| bad(format!("path {path}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for fields in &path_fields {
            let leaf = fields.last().ok_or_else(|| bad("empty variable".into()))?;
            if leaf.is_list() || matches!(leaf.kind(), Kind::Message(_)) {
                return Err(bad(format!(
                    "path variable {} must be a singular scalar field",
                    leaf.name()
                )));
            }
        }
        let body = match rule.body.as_str() {
            "" => BodyRule::None,
            "*" => BodyRule::All,
            name => BodyRule::Field(
                input
                    .get_field_by_name(name)
                    .ok_or_else(|| bad(format!("body field {name:?} is not in the request")))?,
            ),
        };
        let response_body = match rule.response_body.as_str() {
            "" => None,
            name => Some(method.output().get_field_by_name(name).ok_or_else(|| {
                bad(format!(
                    "response_body field {name:?} is not in the response"
                ))
            })?),
        };
        let grpc_uri = http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::copy_from_slice(
            grpc_path.as_bytes(),
        ))
        .map_err(|e| bad(format!("invalid gRPC path: {e}")))?;
        let label = Arc::from(path.as_str());
        // protobuf's MethodOptions.IdempotencyLevel: 1 NO_SIDE_EFFECTS, 2 IDEMPOTENT.
        let level = method
            .method_descriptor_proto()
            .options
            .as_ref()
            .and_then(|o| o.idempotency_level)
            .unwrap_or(0);
        let idempotent = http_method == Method::GET || matches!(level, 1 | 2);
        Ok(Self {
            kind,
            http_method,
            template,
            path_fields,
            body,
            response_body,
            method: method.clone(),
            grpc_path,
            grpc_uri,
            label,
            upstream,
            access,
            idempotent,
            rate_limit,
            transcoding: Transcoding::default(),
        })
    }
}

/// Resolves a dotted field path (proto names) through nested messages.
pub fn resolve_path(
    root: &MessageDescriptor,
    path: &[String],
) -> Result<Vec<FieldDescriptor>, PathError> {
    let mut out = Vec::with_capacity(path.len());
    let mut current = root.clone();
    for (i, name) in path.iter().enumerate() {
        let field = current
            .get_field_by_name(name)
            .or_else(|| current.get_field_by_json_name(name))
            .ok_or_else(|| {
                PathError::Unknown(format!("{} has no field {name:?}", current.full_name()))
            })?;
        if i + 1 < path.len() {
            match field.kind() {
                Kind::Message(m) if !field.is_list() && !field.is_map() => current = m,
                Kind::Message(_) if field.is_list() => {
                    return Err(PathError::Unreachable(format!(
                        "{name:?} is a repeated message field; send it in the request body"
                    )));
                }
                _ => {
                    return Err(PathError::Unreachable(format!(
                        "{name:?} is not a message field"
                    )));
                }
            }
        }
        out.push(field);
    }
    Ok(out)
}

/// Why a field path does not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A name that is no field.
    #[error("{0}")]
    Unknown(String),
    /// A field that a path cannot reach into (a list, a map, a scalar).
    #[error("{0}")]
    Unreachable(String),
}

/// `agora.users.v1` → `users`: the upstream serving a contract package.
fn upstream_name(package: &str) -> String {
    package.split('.').nth(1).unwrap_or(package).to_owned()
}
