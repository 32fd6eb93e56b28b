//! Property tests of the transcoder's pure parts: path templates, query
//! mapping and the JSON form of messages, over generated input.
//!
//! The suite runs 256 cases per property; for a long local run:
//! `PROPTEST_CASES=100000 cargo nextest run -p agora-edge --test properties`.

mod support;

use agora_edge::{
    routes::{Lookup, RouteTable, Transcoding},
    template::PathTemplate,
    transcode::{message_from_json, message_json, request_message},
};
use http::Method;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use proptest::{prelude::*, sample::select};
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage as _,
    Value,
};
use support::test_pool;

/// The default case count (PROPTEST_CASES overrides it), without failure
/// files in the source tree.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- path templates -------------------------------------------------

/// A piece of a generated template and how to make a value for it.
#[derive(Debug, Clone)]
enum Piece {
    Literal(String),
    /// `{name}`: one segment.
    Var(String),
    /// `{name=lit/*}`: a literal, then one segment.
    Nested(String, String),
}

fn ident() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,6}"
}

fn literal() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,6}"
}

/// A template: pieces, an optional trailing `{rest=**}`, an optional verb;
/// variable names are made unique by their position.
fn template() -> impl Strategy<Value = (Vec<Piece>, bool, Option<String>)> {
    let piece = prop_oneof![
        literal().prop_map(Piece::Literal),
        ident().prop_map(Piece::Var),
        (ident(), literal()).prop_map(|(n, l)| Piece::Nested(n, l)),
    ];
    (
        proptest::collection::vec(piece, 1..6),
        any::<bool>(),
        proptest::option::of(literal()),
    )
}

fn render(pieces: &[Piece], rest: bool, verb: &Option<String>) -> String {
    let mut out = String::new();
    for (i, p) in pieces.iter().enumerate() {
        out.push('/');
        match p {
            Piece::Literal(l) => out.push_str(l),
            Piece::Var(n) => out.push_str(&format!("{{{n}{i}}}")),
            Piece::Nested(n, l) => out.push_str(&format!("{{{n}{i}={l}/*}}")),
        }
    }
    if rest {
        out.push_str("/{rest=**}");
    }
    if let Some(v) = verb {
        out.push(':');
        out.push_str(v);
    }
    out
}

/// Any text but the empty string, `/` and `:` included.
fn value() -> impl Strategy<Value = String> {
    "\\PC{1,10}"
}

fn segment_value() -> impl Strategy<Value = String> {
    "[^/]{1,8}"
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parsing_any_text_never_panics(text in "\\PC{0,40}", shaped in "[/a-z{}=*:._]{0,30}") {
        let _ = PathTemplate::parse(&text);
        let _ = PathTemplate::parse(&shaped);
    }

    #[test]
    fn expanded_values_match_back_to_themselves(
        (pieces, rest, verb) in template(),
        seed in proptest::collection::vec((value(), segment_value()), 6),
        tail in proptest::collection::vec(segment_value(), 1..4),
    ) {
        let source = render(&pieces, rest, &verb);
        let t = PathTemplate::parse(&source).expect("a generated template parses");
        prop_assert_eq!(t.to_string(), source.clone());
        let mut values: Vec<String> = pieces
            .iter()
            .zip(&seed)
            .filter_map(|(p, (free, seg))| match p {
                Piece::Literal(_) => None,
                Piece::Var(_) => Some(free.clone()),
                Piece::Nested(_, l) => Some(format!("{l}/{seg}")),
            })
            .collect();
        if rest {
            values.push(tail.join("/"));
        }
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let path = t.expand(&refs).expect("values fit the template");
        // As the route table splits a request path: the verb off the end,
        // then segments.
        let body = path.strip_prefix('/').expect("absolute");
        let body = match &verb {
            Some(v) => body.strip_suffix(&format!(":{v}")).expect("ends with the verb"),
            None => body,
        };
        let parts: Vec<&str> = body.split('/').collect();
        prop_assert_eq!(t.matches(&parts), Some(values));
    }

    #[test]
    fn matching_any_segments_never_panics(
        (pieces, rest, verb) in template(),
        parts in proptest::collection::vec("\\PC{0,6}", 0..8),
    ) {
        let t = PathTemplate::parse(&render(&pieces, rest, &verb)).expect("parses");
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        if let Some(values) = t.matches(&refs) {
            prop_assert_eq!(values.len(), t.variables.len());
        }
    }

    #[test]
    fn any_path_on_the_real_contracts_finds_a_route_or_says_why(
        method in select(vec![Method::GET, Method::POST, Method::PATCH, Method::DELETE, Method::PUT]),
        path in prop_oneof!["\\PC{0,40}", "/api/v1/[a-z/:{}%.-]{0,40}"],
    ) {
        let table = contracts();
        match table.lookup(&method, &path) {
            Lookup::Found(route, values) => {
                prop_assert_eq!(&route.http_method, &method);
                prop_assert_eq!(values.len(), route.path_fields.len());
            }
            Lookup::WrongMethod(allowed) => prop_assert!(!allowed.contains(&method)),
            Lookup::NotFound => {}
        }
    }
}

fn contracts() -> &'static RouteTable {
    static TABLE: std::sync::OnceLock<RouteTable> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let pool = DescriptorPool::decode(agora_proto::FILE_DESCRIPTOR_SET).expect("contracts");
        RouteTable::from_pool(&pool, "agora.").expect("routes")
    })
}

fn test_table() -> &'static RouteTable {
    static TABLE: std::sync::OnceLock<RouteTable> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| RouteTable::from_pool(&test_pool(), "agora.testing.").expect("routes"))
}

// ---- query mapping --------------------------------------------------

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_query_string_is_mapped_or_refused_never_a_panic(
        query in prop_oneof!["\\PC{0,60}", "[a-zA-Z.=&%0-9+_-]{0,60}"],
    ) {
        let Lookup::Found(route, values) = test_table().lookup(&Method::GET, "/v1/books") else {
            panic!("the search route");
        };
        let _ = request_message(route, &values, Some(&query), b"");
    }

    #[test]
    fn valid_queries_map_losslessly(
        text in "\\PC{0,12}",
        authors in proptest::collection::vec("\\PC{0,8}", 0..4),
        page_size in any::<i32>(),
        min_rating in any::<f64>().prop_filter("finite", |f| f.is_finite()),
        genre in select(vec!["GENRE_UNSPECIFIED", "GENRE_FICTION", "GENRE_SCIENCE"]),
        min_pages in any::<i64>(),
    ) {
        let mut pairs = vec![
            format!("query={}", enc(&text)),
            format!("pageSize={page_size}"),
            format!("minRating={}", enc(&min_rating.to_string())),
            format!("filter.genre={genre}"),
            format!("filter.minPages={min_pages}"),
        ];
        pairs.extend(authors.iter().map(|a| format!("authors={}", enc(a))));
        let query = pairs.join("&");
        let Lookup::Found(route, values) = test_table().lookup(&Method::GET, "/v1/books") else {
            panic!("the search route");
        };
        let msg = request_message(route, &values, Some(&query), b"").expect("a valid query maps");
        let got_text = msg.get_field_by_name("query").expect("query");
        prop_assert_eq!(got_text.as_str(), Some(text.as_str()));
        prop_assert_eq!(msg.get_field_by_name("page_size").expect("size").as_i32(), Some(page_size));
        prop_assert_eq!(msg.get_field_by_name("min_rating").expect("rating").as_f64(), Some(min_rating));
        let got: Vec<String> = msg
            .get_field_by_name("authors")
            .expect("authors")
            .as_list()
            .expect("a list")
            .iter()
            .map(|v| v.as_str().expect("text").to_owned())
            .collect();
        prop_assert_eq!(got, authors);
        let filter = msg.get_field_by_name("filter").expect("filter");
        let filter = filter.as_message().expect("a message");
        prop_assert_eq!(filter.get_field_by_name("min_pages").expect("pages").as_i64(), Some(min_pages));
        let number = filter.get_field_by_name("genre").expect("genre").as_enum_number().expect("enum");
        let name = filter.descriptor().get_field_by_name("genre").and_then(|f| match f.kind() {
            Kind::Enum(e) => e.get_value(number).map(|v| v.name().to_owned()),
            _ => None,
        });
        prop_assert_eq!(name.as_deref(), Some(genre));
    }
}

// ---- JSON ⇄ message -------------------------------------------------

/// Any message of `desc`, nesting at most `depth` messages deep.
fn message(desc: MessageDescriptor, depth: u32) -> BoxedStrategy<DynamicMessage> {
    let fields: Vec<FieldDescriptor> = desc.fields().collect();
    let strategies: Vec<BoxedStrategy<Option<Value>>> = fields
        .iter()
        .map(|f| proptest::option::of(field_value(f, depth)).boxed())
        .collect();
    strategies
        .prop_map(move |values| {
            let mut msg = DynamicMessage::new(desc.clone());
            for (f, v) in fields.iter().zip(values) {
                if let Some(v) = v {
                    msg.set_field(f, v);
                }
            }
            msg
        })
        .boxed()
}

fn field_value(field: &FieldDescriptor, depth: u32) -> BoxedStrategy<Value> {
    let one = kind_value(field.kind(), depth);
    if field.is_list() {
        proptest::collection::vec(one, 0..3)
            .prop_map(Value::List)
            .boxed()
    } else {
        one
    }
}

fn kind_value(kind: Kind, depth: u32) -> BoxedStrategy<Value> {
    match kind {
        Kind::Double => any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::F64)
            .boxed(),
        Kind::Float => any::<f32>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::F32)
            .boxed(),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => any::<i32>().prop_map(Value::I32).boxed(),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => any::<i64>().prop_map(Value::I64).boxed(),
        Kind::Uint32 | Kind::Fixed32 => any::<u32>().prop_map(Value::U32).boxed(),
        Kind::Uint64 | Kind::Fixed64 => any::<u64>().prop_map(Value::U64).boxed(),
        Kind::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        Kind::String => "\\PC{0,12}".prop_map(Value::String).boxed(),
        Kind::Bytes => proptest::collection::vec(any::<u8>(), 0..16)
            .prop_map(|b| Value::Bytes(b.into()))
            .boxed(),
        Kind::Enum(e) => select(e.values().map(|v| v.number()).collect::<Vec<_>>())
            .prop_map(Value::EnumNumber)
            .boxed(),
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Timestamp" => {
                (-62_135_596_800i64..=253_402_300_799, 0i32..1_000_000_000)
                    .prop_map(move |(s, n)| wkt(&m, s, n))
                    .boxed()
            }
            "google.protobuf.Duration" => {
                (-315_576_000_000i64..=315_576_000_000, 0i32..1_000_000_000)
                    .prop_map(move |(s, n)| wkt(&m, s, if s < 0 { -n } else { n }))
                    .boxed()
            }
            "google.protobuf.FieldMask" => {
                proptest::collection::vec("[a-z]{1,6}(\\.[a-z]{1,6})?", 0..3)
                    .prop_map(move |paths| {
                        let mut mask = DynamicMessage::new(m.clone());
                        mask.set_field_by_name(
                            "paths",
                            Value::List(paths.into_iter().map(Value::String).collect()),
                        );
                        Value::Message(mask)
                    })
                    .boxed()
            }
            _ if depth == 0 => Just(Value::Message(DynamicMessage::new(m))).boxed(),
            _ => message(m, depth - 1).prop_map(Value::Message).boxed(),
        },
    }
}

fn canonical(msg: &DynamicMessage) -> DynamicMessage {
    use prost::Message as _;
    DynamicMessage::decode(msg.descriptor(), msg.encode_to_vec().as_slice()).expect("decodes")
}

fn wkt(desc: &MessageDescriptor, seconds: i64, nanos: i32) -> Value {
    let mut msg = DynamicMessage::new(desc.clone());
    msg.set_field_by_name("seconds", Value::I64(seconds));
    msg.set_field_by_name("nanos", Value::I32(nanos));
    Value::Message(msg)
}

fn any_test_message() -> impl Strategy<Value = DynamicMessage> {
    let pool = test_pool();
    let messages: Vec<MessageDescriptor> = pool
        .all_messages()
        .filter(|m| m.package_name() == "agora.testing.v1")
        .collect();
    select(messages).prop_flat_map(|m| message(m, 2))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn messages_survive_json_and_back(
        msg in any_test_message(),
        emit_unpopulated in any::<bool>(),
        use_proto_names in any::<bool>(),
        enums_as_numbers in any::<bool>(),
    ) {
        // Whatever the transcoding options, the edge reads what it writes.
        let options = Transcoding {
            emit_unpopulated,
            use_proto_names,
            enums_as_numbers,
            ..Transcoding::default()
        };
        let json = message_json(&msg, &options).expect("renders");
        let back = message_from_json(&msg.descriptor(), &json).expect("the edge reads its own JSON");
        prop_assert_eq!(
            message_json(&back, &options).expect("renders"),
            json.clone(),
            "{}",
            String::from_utf8_lossy(&json)
        );
        // Fields set to their default and unset fields are the same
        // message: compare the canonical forms.
        prop_assert_eq!(canonical(&back), canonical(&msg));
    }
}
