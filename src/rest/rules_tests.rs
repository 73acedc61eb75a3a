//! Tests for building the route table from descriptors: every HttpRule form,
//! the fallback for methods without one, every validation error, and the
//! demo service's real descriptors.

use bytes::Bytes;
use http::Method;

use super::router::{BodyRule, Lookup, RestRouter};
use crate::descriptors::{Descriptors, PoolBuilder};

const HEADER: &str = r#"syntax = "proto3";
package library.v1;
import "google/api/annotations.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/field_mask.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

enum Genre { GENRE_UNSPECIFIED = 0; FICTION = 1; }
message Author { string id = 1; }
message Book {
  string name = 1;
  repeated string tags = 2;
  map<string, string> labels = 3;
  Author author = 4;
  google.protobuf.Timestamp publish_time = 5;
  google.protobuf.Int64Value edition = 6;
  Genre genre = 7;
}
message GetBookRequest { string name = 1; }
message UpdateBookRequest { Book book = 1; google.protobuf.FieldMask update_mask = 2; }
message ListBooksRequest { string parent = 1; int32 page_size = 2; }
message ListBooksResponse { repeated Book books = 1; string next_page_token = 2; }
"#;

/// Compiles `HEADER` plus `service` into descriptors, the way the gateway does.
fn descriptors(service: &str) -> Descriptors {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("library.proto");
    std::fs::write(&file, format!("{HEADER}\n{service}\n")).unwrap();
    let mut builder = PoolBuilder::new();
    builder
        .add_proto_file(&file, &[dir.path().to_path_buf()], "library.proto")
        .unwrap();
    builder.build().unwrap()
}

fn build(service: &str) -> Result<RestRouter, String> {
    let descriptors = descriptors(service);
    RestRouter::new(descriptors.registry(), descriptors.pool())
}

fn routes(router: &RestRouter) -> Vec<String> {
    router
        .bindings()
        .map(|b| format!("{} {} -> {}", b.http_method, b.pattern, b.method_name()))
        .collect()
}

fn found(router: &RestRouter, method: &str, path: &str) -> (String, Vec<(String, String)>) {
    match router.lookup(&Method::from_bytes(method.as_bytes()).unwrap(), path) {
        Lookup::Found { binding, variables } => (binding.method_name().to_string(), variables),
        other => panic!("{method} {path}: {other:?}"),
    }
}

#[test]
fn every_binding_of_every_method_is_served() {
    let router = build(
        r#"service Library {
  rpc GetBook(GetBookRequest) returns (Book) {
    option (google.api.http) = {
      get: "/v1/{name=shelves/*/books/*}"
      additional_bindings { get: "/v1/books/{name}" }
      additional_bindings { custom { kind: "HEAD" path: "/v1/{name=shelves/*/books/*}" } }
    };
  }
  rpc UpdateBook(UpdateBookRequest) returns (Book) {
    option (google.api.http) = { patch: "/v1/{book.name=shelves/*/books/*}" body: "book" };
  }
  rpc ListBooks(ListBooksRequest) returns (ListBooksResponse) {
    option (google.api.http) = { get: "/v1/{parent=shelves/*}/books" response_body: "books" };
  }
  rpc DeleteBook(GetBookRequest) returns (google.protobuf.Empty) {
    option (google.api.http) = { delete: "/v1/{name=shelves/*/books/*}" };
  }
  rpc Find(Book) returns (Book) {
    option (google.api.http) = { get: "/v1/published/{publish_time}/{edition}/{genre}/{author.id}" };
  }
  rpc Replace(Book) returns (Book) {
    option (google.api.http) = { put: "/v1/{name=books/*}" body: "*" };
  }
  rpc Chat(stream Book) returns (stream Book);
}"#,
    )
    .unwrap();
    assert_eq!(
        routes(&router),
        [
            "POST /library.v1.Library/Chat -> library.v1.Library/Chat",
            "GET /v1/books/{name} -> library.v1.Library/GetBook",
            "GET /v1/published/{publish_time}/{edition}/{genre}/{author.id} -> library.v1.Library/Find",
            "PATCH /v1/{book.name=shelves/*/books/*} -> library.v1.Library/UpdateBook",
            "PUT /v1/{name=books/*} -> library.v1.Library/Replace",
            "GET /v1/{name=shelves/*/books/*} -> library.v1.Library/GetBook",
            "DELETE /v1/{name=shelves/*/books/*} -> library.v1.Library/DeleteBook",
            "HEAD /v1/{name=shelves/*/books/*} -> library.v1.Library/GetBook",
            "GET /v1/{parent=shelves/*}/books -> library.v1.Library/ListBooks",
        ]
    );
    let bodies: Vec<(String, BodyRule, Option<String>)> = router
        .bindings()
        .map(|b| (b.method_name().to_string(), b.body.clone(), b.response_body.clone()))
        .collect();
    assert_eq!(bodies[0].1, BodyRule::Whole);
    assert_eq!(bodies[1].1, BodyRule::None);
    assert_eq!(bodies[3].1, BodyRule::Field("book".into()));
    assert_eq!(bodies[4].1, BodyRule::Whole);
    assert_eq!(bodies[8].2.as_deref(), Some("books"));

    let name = |v: &str| vec![("name".to_string(), v.to_string())];
    assert_eq!(
        found(&router, "GET", "/v1/shelves/1/books/2"),
        ("library.v1.Library/GetBook".into(), name("shelves/1/books/2"))
    );
    assert_eq!(
        found(&router, "HEAD", "/v1/shelves/1/books/2").0,
        "library.v1.Library/GetBook"
    );
    assert_eq!(
        found(&router, "GET", "/v1/books/2"),
        ("library.v1.Library/GetBook".into(), name("2"))
    );
    assert_eq!(
        found(&router, "PATCH", "/v1/shelves/1/books/2"),
        (
            "library.v1.Library/UpdateBook".into(),
            vec![("book.name".to_string(), "shelves/1/books/2".to_string())]
        )
    );
    assert_eq!(
        found(&router, "POST", "/library.v1.Library/Chat").0,
        "library.v1.Library/Chat"
    );
    assert!(matches!(
        router.lookup(&Method::PUT, "/v1/shelves/1/books/2"),
        Lookup::MethodNotAllowed { allowed } if allowed == [Method::GET, Method::DELETE, Method::PATCH, Method::from_bytes(b"HEAD").unwrap()]
    ));
}

/// One method with the given option body, and the error building it gives.
fn error_for(option: &str) -> String {
    build(&format!(
        "service Library {{ rpc GetBook(Book) returns (Book) {{ option (google.api.http) = {{ {option} }}; }} }}"
    ))
    .unwrap_err()
}

#[test]
fn validation_errors_name_the_method_and_what_is_wrong() {
    let cases = [
        (
            r#"get: "/v1/{name=shelves/*""#,
            r#"library.v1.Library/GetBook: GET /v1/{name=shelves/*: bad path template: at byte 19: expected "}""#,
        ),
        (
            r#"get: """#,
            r#"library.v1.Library/GetBook: GET : bad path template: at byte 0: expected "/""#,
        ),
        (
            r#"get: "/v1/{nme}""#,
            r#"library.v1.Library/GetBook: GET /v1/{nme}: path variable "nme": no field "nme" in library.v1.Book"#,
        ),
        (
            r#"get: "/v1/{tags}""#,
            r#"path variable "tags": library.v1.Book.tags is repeated"#,
        ),
        (
            r#"get: "/v1/{labels}""#,
            r#"path variable "labels": library.v1.Book.labels is a map"#,
        ),
        (
            r#"get: "/v1/{author}""#,
            r#"path variable "author": library.v1.Book.author is a message (library.v1.Author)"#,
        ),
        (
            r#"get: "/v1/{name.x}""#,
            r#"path variable "name.x": library.v1.Book.name is not a message, so it has no field "x""#,
        ),
        (
            r#"get: "/v1/{author.nope}""#,
            r#"path variable "author.nope": no field "nope" in library.v1.Author"#,
        ),
        (
            r#"post: "/v1/books" body: "nope""#,
            r#"POST /v1/books: body "nope": no field "nope" in library.v1.Book"#,
        ),
        (
            r#"post: "/v1/books" body: "author.id""#,
            r#"body "author.id": must name a top-level field of library.v1.Book"#,
        ),
        (
            r#"post: "/v1/books" body: "*" response_body: "nope""#,
            r#"response_body "nope": no field "nope" in library.v1.Book"#,
        ),
        (
            r#"get: "/v1/books" body: "*""#,
            r#"GET /v1/books: a GET binding cannot have a body (body: "*")"#,
        ),
        (
            r#"delete: "/v1/{name}" body: "author""#,
            r#"DELETE /v1/{name}: a DELETE binding cannot have a body (body: "author")"#,
        ),
        (
            r#"custom { kind: "NOT A METHOD" path: "/v1/x" }"#,
            r#"library.v1.Library/GetBook: google.api.http custom kind "NOT A METHOD" is not an HTTP method"#,
        ),
        (
            r#"custom { kind: "" path: "/v1/x" }"#,
            r#"custom kind "" is not an HTTP method"#,
        ),
        (
            r#"body: "*""#,
            r#"library.v1.Library/GetBook: google.api.http sets no pattern (get, put, post, delete, patch or custom)"#,
        ),
        (
            r#"get: "/v1/a" additional_bindings { get: "/v1/b" additional_bindings { get: "/v1/c" } }"#,
            r#"GET /v1/b: additional_bindings may not have additional_bindings of their own"#,
        ),
        (
            r#"get: "/v1/a" additional_bindings { get: "/v1/{zz}" }"#,
            r#"library.v1.Library/GetBook: GET /v1/{zz}: path variable "zz": no field "zz""#,
        ),
    ];
    for (option, expected) in cases {
        let err = error_for(option);
        assert!(err.contains(expected), "{option}\n  got: {err}\n want: {expected}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn string_form_messages_enums_and_bytes_may_fill_path_variables() {
    for field in ["publish_time", "edition", "genre", "author.id"] {
        build(&format!(
            "service Library {{ rpc GetBook(Book) returns (Book) {{ option (google.api.http) = {{ get: \"/v1/{{{field}}}\" }}; }} }}"
        ))
        .unwrap_or_else(|e| panic!("{field}: {e}"));
    }
    build(r#"service Library { rpc Update(UpdateBookRequest) returns (Book) { option (google.api.http) = { patch: "/v1/{update_mask}/{book.name=**}" body: "book" }; } }"#).unwrap();
}

#[test]
fn every_problem_is_listed_and_conflicts_name_both_methods() {
    let err = build(
        r#"service Library {
  rpc GetBook(GetBookRequest) returns (Book) { option (google.api.http) = { get: "/v1/{name=books/*}" }; }
  rpc FetchBook(GetBookRequest) returns (Book) { option (google.api.http) = { get: "/v1/{name=books/*}" }; }
  rpc Broken(GetBookRequest) returns (Book) { option (google.api.http) = { get: "/v1/{nope}" }; }
  rpc Chat(stream Book) returns (stream Book);
  rpc Squat(Book) returns (Book) { option (google.api.http) = { post: "/library.v1.Library/Chat" body: "*" }; }
}"#,
    )
    .unwrap_err();
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            r#"library.v1.Library/Broken: GET /v1/{nope}: path variable "nope": no field "nope" in library.v1.GetBookRequest"#,
            "GET /v1/{name=books/*}: bound by library.v1.Library/GetBook and library.v1.Library/FetchBook",
            "POST /library.v1.Library/Chat: bound by library.v1.Library/Chat and library.v1.Library/Squat",
        ]
    );
}

#[test]
fn the_demo_service() {
    let mut builder = PoolBuilder::new();
    builder
        .add_file_descriptor_set(
            Bytes::from_static(include_bytes!("../../descriptors/demo.binpb")),
            "demo",
        )
        .unwrap();
    let descriptors = builder.build().unwrap();
    let router = RestRouter::new(descriptors.registry(), descriptors.pool()).unwrap();
    assert_eq!(
        routes(&router),
        [
            "POST /demo.v1.OrderService/Chat -> demo.v1.OrderService/Chat",
            "GET /v1/orders -> demo.v1.OrderService/ListOrders",
            "POST /v1/orders -> demo.v1.OrderService/CreateOrder",
            "POST /v1/orders:import -> demo.v1.OrderService/ImportOrders",
            "GET /v1/{name=orders/*} -> demo.v1.OrderService/GetOrder",
            "GET /v1/{name=orders/*}:watch -> demo.v1.OrderService/WatchOrder",
            "PATCH /v1/{order.name=orders/*} -> demo.v1.OrderService/UpdateOrder",
        ]
    );
    let name = |v: &str| vec![("name".to_string(), v.to_string())];
    let cases = [
        ("GET", "/v1/orders/42", "GetOrder", name("orders/42")),
        ("GET", "/v1/orders/42:watch", "WatchOrder", name("orders/42")),
        ("GET", "/v1/orders?state=PLACED", "ListOrders", vec![]),
        ("POST", "/v1/orders", "CreateOrder", vec![]),
        (
            "PATCH",
            "/v1/orders/42",
            "UpdateOrder",
            vec![("order.name".to_string(), "orders/42".to_string())],
        ),
        ("POST", "/v1/orders:import", "ImportOrders", vec![]),
        ("POST", "/demo.v1.OrderService/Chat", "Chat", vec![]),
    ];
    for (method, path, rpc, vars) in cases {
        assert_eq!(
            found(&router, method, path),
            (format!("demo.v1.OrderService/{rpc}"), vars),
            "{method} {path}"
        );
    }
    match router.lookup(&Method::POST, "/v1/orders") {
        Lookup::Found { binding, .. } => assert_eq!(binding.body, BodyRule::Field("order".into())),
        other => panic!("{other:?}"),
    }
    match router.lookup(&Method::PATCH, "/v1/orders/42") {
        Lookup::Found { binding, .. } => assert_eq!(binding.body, BodyRule::Field("order".into())),
        other => panic!("{other:?}"),
    }
    match router.lookup(&Method::POST, "/v1/orders:import") {
        Lookup::Found { binding, .. } => assert_eq!(binding.body, BodyRule::Whole),
        other => panic!("{other:?}"),
    }
    for (method, path, allowed) in [
        (Method::DELETE, "/v1/orders", vec![Method::GET, Method::POST]),
        (Method::GET, "/demo.v1.OrderService/Chat", vec![Method::POST]),
        (Method::GET, "/v1/orders:import", vec![Method::POST]),
    ] {
        assert!(
            matches!(router.lookup(&method, path), Lookup::MethodNotAllowed { allowed: ref a } if *a == allowed),
            "{method} {path}"
        );
    }
    assert!(matches!(
        router.lookup(&Method::GET, "/v1/orders/42/x"),
        Lookup::NotFound
    ));
}

#[test]
fn methods_without_annotations_are_served_at_their_grpc_path() {
    let mut builder = PoolBuilder::new();
    builder
        .add_file_descriptor_set(
            Bytes::from_static(include_bytes!("../../descriptors/testing.binpb")),
            "testing",
        )
        .unwrap();
    let descriptors = builder.build().unwrap();
    let router = RestRouter::new(descriptors.registry(), descriptors.pool()).unwrap();
    // Only Echo: other services in that set have annotations of their own.
    let echo: Vec<String> = routes(&router)
        .into_iter()
        .filter(|r| r.contains("testing.v1.Echo/"))
        .collect();
    assert_eq!(
        echo,
        [
            "POST /testing.v1.Echo/Bidi -> testing.v1.Echo/Bidi",
            "POST /testing.v1.Echo/ClientStream -> testing.v1.Echo/ClientStream",
            "POST /testing.v1.Echo/ServerStream -> testing.v1.Echo/ServerStream",
            "POST /testing.v1.Echo/Unary -> testing.v1.Echo/Unary",
        ]
    );
    assert!(
        router
            .bindings()
            .filter(|b| b.method_name().starts_with("testing.v1.Echo/"))
            .all(|b| b.body == BodyRule::Whole && b.response_body.is_none())
    );
}
