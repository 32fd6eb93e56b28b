//! The transcoder against a test-only contract that uses every supported
//! `google.api.http` feature: routes and messages are checked exactly as
//! the edge builds them from descriptors.

mod support;

use agora_edge::{
    routes::{Lookup, Route, RouteKind, RouteTable, Transcoding, UnknownQuery},
    transcode::{request_message, response_json},
};
use http::Method;
use prost_reflect::{DynamicMessage, ReflectMessage, Value};

fn table() -> RouteTable {
    RouteTable::from_pool(&support::test_pool(), "agora.testing.").expect("routes build")
}

fn find<'a>(table: &'a RouteTable, method: Method, path: &str) -> (&'a Route, Vec<String>) {
    match table.lookup(&method, path) {
        Lookup::Found(route, values) => (route, values),
        Lookup::WrongMethod(allowed) => {
            panic!("{method} {path}: wrong method, allowed {allowed:?}")
        }
        Lookup::NotFound => panic!("{method} {path}: no route"),
    }
}

fn transcode(
    table: &RouteTable,
    method: Method,
    path_and_query: &str,
    body: &str,
) -> (String, serde_json::Value) {
    let (path, query) = path_and_query
        .split_once('?')
        .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
    let (route, values) = find(table, method, path);
    let msg = request_message(route, &values, query, body.as_bytes()).expect("request transcodes");
    (route.method.name().to_owned(), to_json(&msg))
}

fn to_json(msg: &DynamicMessage) -> serde_json::Value {
    serde_json::to_value(msg).expect("serializes")
}

fn transcode_err(table: &RouteTable, method: Method, path_and_query: &str, body: &str) -> String {
    let (path, query) = path_and_query
        .split_once('?')
        .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
    let (route, values) = find(table, method, path);
    request_message(route, &values, query, body.as_bytes())
        .expect_err("must be rejected")
        .message
}

#[test]
fn nested_path_fields_and_additional_bindings_reach_the_same_method() {
    let t = table();
    let (m, json) = transcode(&t, Method::GET, "/v1/shelves/s1/books/b%2F2", "");
    assert_eq!(m, "GetBook");
    assert_eq!(
        json,
        serde_json::json!({"shelf": {"id": "s1"}, "bookId": "b/2"})
    );
    let (m, json) = transcode(&t, Method::GET, "/v1/books/b3?genre=GENRE_SCIENCE", "");
    assert_eq!(m, "GetBook");
    assert_eq!(
        json,
        serde_json::json!({"bookId": "b3", "genre": "GENRE_SCIENCE"})
    );
}

#[test]
fn multi_segment_captures_bind_the_whole_resource_name() {
    let t = table();
    let (m, json) = transcode(&t, Method::GET, "/v2/shelves/s1/books/b%202", "");
    assert_eq!(m, "GetBookByName");
    assert_eq!(json["name"], "shelves/s1/books/b 2");
    assert!(matches!(
        t.lookup(&Method::GET, "/v2/shelves/s1/chapters/c1"),
        Lookup::NotFound
    ));
    let lookup = t.lookup(&Method::GET, "/v1/shelves/s1/books");
    assert!(
        matches!(lookup, Lookup::WrongMethod(_)),
        "POST-only path answers 405"
    );
}

#[test]
fn body_field_binds_one_field_and_the_rest_comes_from_query() {
    let t = table();
    let body = r#"{"title":"Dune","pageCount":"412","genre":"GENRE_FICTION","publishTime":"1965-08-01T00:00:00Z","readingTime":"3600s"}"#;
    let (m, json) = transcode(
        &t,
        Method::POST,
        "/v1/shelves/s9/books?validateOnly=true",
        body,
    );
    assert_eq!(m, "CreateBook");
    assert_eq!(json["shelf"]["id"], "s9");
    assert_eq!(json["validateOnly"], true);
    assert_eq!(json["book"]["title"], "Dune");
    assert_eq!(
        json["book"]["pageCount"], "412",
        "64-bit integers are strings"
    );
    assert_eq!(json["book"]["publishTime"], "1965-08-01T00:00:00Z");
    assert_eq!(json["book"]["readingTime"], "3600s");
    assert_eq!(json["book"]["genre"], "GENRE_FICTION");
}

#[test]
fn proto_field_names_are_accepted_as_well_as_lower_camel() {
    let t = table();
    let (_, json) = transcode(
        &t,
        Method::POST,
        "/v1/shelves/s9/books?validate_only=true",
        r#"{"page_count": 7}"#,
    );
    assert_eq!(json["book"]["pageCount"], "7");
    assert_eq!(json["validateOnly"], true);
}

#[test]
fn body_star_takes_every_field_not_bound_by_the_path() {
    let t = table();
    let (m, json) = transcode(
        &t,
        Method::POST,
        "/v1/books/b1:archive",
        r#"{"reason":"worn out","bookId":"ignored"}"#,
    );
    assert_eq!(m, "ArchiveBook");
    assert_eq!(
        json,
        serde_json::json!({"bookId": "b1", "reason": "worn out"}),
        "the path wins over the body"
    );
}

#[test]
fn custom_verbs_route_apart_from_plain_paths() {
    let t = table();
    assert!(
        matches!(t.lookup(&Method::POST, "/v1/books/b1:archive"), Lookup::Found(r, _) if r.method.name() == "ArchiveBook")
    );
    // An unknown verb is not the archive method: it is just an id with a
    // colon, which only GET serves.
    assert!(matches!(
        t.lookup(&Method::POST, "/v1/books/b1:unknown"),
        Lookup::WrongMethod(_)
    ));
    assert!(
        matches!(t.lookup(&Method::GET, "/v1/books/b1:unknown"), Lookup::Found(r, v) if r.method.name() == "GetBook" && v == ["b1:unknown"])
    );
}

#[test]
fn query_parameters_fill_nested_repeated_and_well_known_fields() {
    let t = table();
    let q = "query=space+opera&authors=Herbert&authors=Le%20Guin&filter.genre=GENRE_SCIENCE&filter.minPages=100\
             &filter.published_after=2001-01-01T00:00:00Z&pageSize=20&maxReadingTime=1.5s&minRating=4.5&cursor=AQID";
    let (m, json) = transcode(&t, Method::GET, &format!("/v1/books?{q}"), "");
    assert_eq!(m, "SearchBooks");
    assert_eq!(json["query"], "space opera");
    assert_eq!(json["authors"], serde_json::json!(["Herbert", "Le Guin"]));
    assert_eq!(json["filter"]["genre"], "GENRE_SCIENCE");
    assert_eq!(json["filter"]["minPages"], "100");
    assert_eq!(json["filter"]["publishedAfter"], "2001-01-01T00:00:00Z");
    assert_eq!(json["pageSize"], 20);
    assert_eq!(json["maxReadingTime"], "1.500s");
    assert_eq!(json["minRating"], 4.5);
    assert_eq!(json["cursor"], "AQID");
}

#[test]
fn bad_query_parameters_name_the_parameter() {
    let t = table();
    let err = transcode_err(&t, Method::GET, "/v1/books?pageSize=many", "");
    assert!(err.contains("pageSize") && err.contains("many"), "{err}");
    let err = transcode_err(&t, Method::GET, "/v1/books?filter.genre=POETRY", "");
    assert!(
        err.contains("filter.genre") && err.contains("GENRE_FICTION"),
        "{err}"
    );
    let err = transcode_err(&t, Method::GET, "/v1/books?colour=red", "");
    assert!(err.contains("colour"), "{err}");
    // Repeated messages belong in a body; messages are set field by field.
    for query in ["shelves=s1", "shelves.id=s1"] {
        let err = transcode_err(&t, Method::GET, &format!("/v1/books?{query}"), "");
        assert!(
            err.contains("\"shelves\" is a repeated message field; send it in the request body"),
            "{query}: {err}"
        );
    }
    let err = transcode_err(&t, Method::GET, "/v1/books?filter=x", "");
    assert!(err.contains("filter.<field>"), "{err}");
}

#[test]
fn unknown_query_parameters_can_be_ignored_and_answers_shaped_by_the_options() {
    let t = table().with_transcoding(Transcoding {
        emit_unpopulated: false,
        use_proto_names: true,
        enums_as_numbers: true,
        unknown_query_parameters: UnknownQuery::Ignore,
    });
    let (_, json) = transcode(&t, Method::GET, "/v1/books?colour=red&pageSize=5", "");
    assert_eq!(json["pageSize"], 5, "known parameters still apply");
    // Requests may name fields either way.
    let (_, json) = transcode(&t, Method::GET, "/v1/books?page_size=7", "");
    assert_eq!(json["pageSize"], 7);

    let (route, _) = find(&t, Method::GET, "/v1/books/b1");
    let mut book = DynamicMessage::new(route.method.output());
    book.set_field_by_name("page_count", Value::I64(12));
    book.set_field_by_name("genre", Value::EnumNumber(2));
    let out: serde_json::Value =
        serde_json::from_slice(&response_json(route, &book).expect("renders")).expect("json");
    assert_eq!(
        out,
        serde_json::json!({"page_count": "12", "genre": 2}),
        "proto names, enum numbers, defaults left out"
    );
}

#[test]
fn malformed_json_and_wrong_types_name_the_field() {
    let t = table();
    let err = transcode_err(&t, Method::POST, "/v1/shelves/s1/books", r#"{"title": 12}"#);
    assert!(err.contains("title"), "{err}");
    let err = transcode_err(
        &t,
        Method::POST,
        "/v1/shelves/s1/books",
        r#"{"pageCount": "lots"}"#,
    );
    assert!(err.contains("pageCount"), "{err}");
    let err = transcode_err(&t, Method::POST, "/v1/shelves/s1/books", r#"{"title": "x""#);
    assert!(err.contains("JSON") || err.contains("EOF"), "{err}");
    let err = transcode_err(
        &t,
        Method::POST,
        "/v1/shelves/s1/books",
        r#"{"colour": "red"}"#,
    );
    assert!(err.contains("colour"), "{err}");
}

#[test]
fn patch_without_a_mask_updates_the_fields_present_in_the_body() {
    let t = table();
    let (_, json) = transcode(
        &t,
        Method::PATCH,
        "/v1/books/b1",
        r#"{"title":"New","available":false}"#,
    );
    assert_eq!(json["book"]["id"], "b1");
    assert_eq!(json["updateMask"], "available,title");
    let (_, json) = transcode(
        &t,
        Method::PATCH,
        "/v1/books/b1?updateMask=title",
        r#"{"title":"New","available":true}"#,
    );
    assert_eq!(json["updateMask"], "title", "an explicit mask is kept");
}

#[test]
fn repeated_body_fields_and_response_body_fields() {
    let t = table();
    let (m, json) = transcode(&t, Method::PUT, "/v1/books/b1/tags", r#"["classic","sf"]"#);
    assert_eq!(m, "Tags");
    assert_eq!(json["tags"], serde_json::json!(["classic", "sf"]));

    let (route, _) = find(&t, Method::PUT, "/v1/books/b1/tags");
    let mut reply = DynamicMessage::new(route.method.output());
    reply.set_field_by_name("tags", Value::List(vec![Value::String("sf".into())]));
    let out: serde_json::Value =
        serde_json::from_slice(&response_json(route, &reply).expect("renders")).expect("json");
    assert_eq!(out, serde_json::json!(["sf"]));
}

#[test]
fn responses_use_camel_case_string_int64_enum_names_and_include_defaults() {
    let t = table();
    let (route, _) = find(&t, Method::POST, "/v1/shelves/s1/books");
    let output = route.method.output();
    let book_desc = output.get_field_by_name("book").expect("book field");
    let prost_reflect::Kind::Message(book_type) = book_desc.kind() else {
        panic!("book is a message")
    };
    let mut book = DynamicMessage::new(book_type);
    book.set_field_by_name("title", Value::String("Dune".into()));
    book.set_field_by_name("page_count", Value::I64(9_007_199_254_740_993));
    book.set_field_by_name("genre", Value::EnumNumber(1));
    let mut reply = DynamicMessage::new(output);
    reply.set_field_by_name("book", Value::Message(book));
    reply.set_field_by_name("operation", Value::String("op-1".into()));
    let out: serde_json::Value =
        serde_json::from_slice(&response_json(route, &reply).expect("renders")).expect("json");
    assert_eq!(out["title"], "Dune", "response_body unwraps the book");
    assert_eq!(out["pageCount"], "9007199254740993");
    assert_eq!(out["genre"], "GENRE_FICTION");
    assert_eq!(out["available"], false, "default values are present");
    assert!(out.get("operation").is_none());
    assert_eq!(reply.descriptor().name(), "CreateBookResponse");
}

#[test]
fn stream_bindings_are_served_or_refused_at_start_naming_the_method() {
    let pool = support::compile("agora/testing/streaming/v1/streaming.proto");
    for (service, method, reason) in [
        ("ChatterService", "Talk", "bidi-streaming"),
        ("UploadService", "Upload", "client-streaming"),
        ("PingService", "Ping", "only server- or bidi-streaming"),
    ] {
        let prefix = format!("agora.testing.streaming.v1.{service}");
        let err = RouteTable::from_pool(&pool, &prefix).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains(&format!("{prefix}.{method}")), "{text}");
        assert!(text.contains(reason), "{text}");
    }
    let table = RouteTable::from_pool(&pool, "agora.testing.streaming.v1.FeedService")
        .expect("server and bidi streams are served");
    let kinds: Vec<(RouteKind, &str)> =
        table.routes().iter().map(|r| (r.kind, &*r.label)).collect();
    assert!(
        kinds.contains(&(RouteKind::ServerStream, "/v1/feed/{text}")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(RouteKind::WebSocket, "/v1/feed/{text}/ws")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(RouteKind::WebSocket, "/v1/conversations/{text}/ws")),
        "{kinds:?}"
    );
    let Lookup::Found(route, values) = table.lookup(&Method::GET, "/v1/conversations/c1/ws") else {
        panic!("the WebSocket path routes");
    };
    assert_eq!(route.kind, RouteKind::WebSocket);
    assert_eq!(values, ["c1"]);
}

#[test]
fn merged_tables_replace_a_service_whole_and_refuse_a_path_bound_twice() {
    let library = table();
    let again = RouteTable::merge([library.clone(), library.clone()]).expect("same service");
    assert_eq!(again.routes().len(), library.routes().len());

    let clash = RouteTable::from_pool(
        &support::compile("agora/testing/clash/v1/clash.proto"),
        "agora.testing.clash.",
    )
    .expect("routes");
    let err = RouteTable::merge([library, clash]).expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("agora.testing.clash.v1.ShelfService.ListShelfBooks")
            && text.contains("GET /v1/books")
            && text.contains("/agora.testing.v1.LibraryService/SearchBooks"),
        "{text}"
    );
}
