//! REST/JSON transcoding against a real backend that echoes what it received:
//! every HttpRule form, every query parameter type, every well-known type
//! both ways, print options, raw bodies, streams both ways, errors.

mod support;

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use support::raw_backend::RawBackend;
use support::rest_client::{self as http, HttpResponse, get, next_chunk, post_json, request};
use support::*;

fn rest_yaml(backend: std::net::SocketAddr, transcoding: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\ndescriptors:\n  - {}\n{transcoding}\nupstreams:\n  rest:\n    endpoints: [\"{backend}\"]\nroutes:\n  - match: testing.rest.v1.Rest\n    upstream: rest\n",
        root().join("descriptors/testing.binpb").display()
    )
}

async fn setup() -> (RawBackend, GatewayHandle) {
    setup_with("").await
}

async fn setup_with(transcoding: &str) -> (RawBackend, GatewayHandle) {
    let backend = RawBackend::start("raw").await;
    let gateway = start_gateway(&rest_yaml(backend.addr, transcoding)).await;
    (backend, gateway)
}

fn method_of(backend: &RawBackend) -> String {
    backend
        .last()
        .path
        .trim_start_matches("/testing.rest.v1.Rest/")
        .to_string()
}

#[tokio::test]
async fn every_http_rule_form_reaches_its_method() {
    let (backend, gw) = setup().await;
    let a = gw.addr;
    // (method, path, body, expected rpc, expected echoed JSON)
    let cases: Vec<(&str, &str, &str, &str, serde_json::Value)> = vec![
        (
            "GET",
            "/v1/shelves/s1/things/t1",
            "",
            "GetThing",
            json!({"name": "shelves/s1/things/t1"}),
        ),
        ("GET", "/v1/things/42", "", "GetThing", json!({"id": "42"})),
        (
            "GET",
            "/v2/shelves/s9/things/7",
            "",
            "GetThing",
            json!({"parent": "shelves/s9", "id": "7"}),
        ),
        ("GET", "/v1/things/latest", "", "GetLatest", json!({})),
        (
            "PATCH",
            "/v1/shelves/s1/things/t1",
            r#"{"title":"x"}"#,
            "UpdateThing",
            json!({"thing": {"name": "shelves/s1/things/t1", "title": "x"}}),
        ),
        (
            "PUT",
            "/v1/things/9",
            r#"{"title":"t","tags":["a","b"]}"#,
            "ReplaceThing",
            json!({"id": "9", "title": "t", "tags": ["a", "b"]}),
        ),
        (
            "POST",
            "/v1/shelves/s1/things",
            r#"{"title":"new"}"#,
            "CreateThing",
            json!({"parent": "shelves/s1", "thing": {"title": "new"}}),
        ),
        ("DELETE", "/v1/things/5", "", "DeleteThing", json!({"id": "5"})),
        (
            "GET",
            "/v1/files/a/b/c.txt",
            "",
            "GetFile",
            json!({"path": "a/b/c.txt"}),
        ),
        (
            "GET",
            "/v1/files/a%2Fb/c%20d",
            "",
            "GetFile",
            json!({"path": "a%2Fb/c d"}),
        ),
        ("GET", "/v1/things/a%20b%2Fc", "", "GetThing", json!({"id": "a b/c"})),
        ("POST", "/v1/things/7:archive", "{}", "ArchiveThing", json!({"id": "7"})),
        ("LOCK", "/v1/things/3", "", "LockThing", json!({"id": "3"})),
        (
            "POST",
            "/testing.rest.v1.Rest/Unannotated",
            r#"{"id":"u"}"#,
            "Unannotated",
            json!({"id": "u"}),
        ),
    ];
    for (verb, path, body, rpc, expected) in cases {
        let headers: &[(&str, &str)] = if body.is_empty() {
            &[]
        } else {
            &[("content-type", "application/json")]
        };
        let response = request(a, verb, path, headers, body.to_string()).await;
        assert_eq!(response.status, 200, "{verb} {path}: {}", response.text());
        assert_eq!(method_of(&backend), rpc, "{verb} {path}");
        assert_eq!(response.json(), expected, "{verb} {path}");
        assert_eq!(response.header("content-type"), Some("application/json"));
    }
}

#[tokio::test]
async fn response_body_selects_one_field() {
    let (_backend, gw) = setup().await;
    let response = get(gw.addr, "/v1/things/3/title?title=hello").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json(), json!("hello"));
    // A field at its default is still the body: an empty string, not null.
    assert_eq!(get(gw.addr, "/v1/things/3/title").await.json(), json!(""));
    // A message field prints as any message does: fields at their default
    // left out, as grpc-gateway and Envoy print it.
    let response = get(gw.addr, "/v1/things/3/inner?inner.note=hi").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json(), json!({"note": "hi"}));
    assert_eq!(get(gw.addr, "/v1/things/3/inner").await.json(), json!({}));
    // Repeated: the list, empty or not.
    assert_eq!(
        get(gw.addr, "/v1/things/3/tags?tags=a&tags=b").await.json(),
        json!(["a", "b"])
    );
    assert_eq!(get(gw.addr, "/v1/things/3/tags").await.json(), json!([]));
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_verbs_405_with_allow() {
    let (backend, gw) = setup().await;
    let response = get(gw.addr, "/v1/nothing/here").await;
    assert_eq!(response.status, 404);
    assert_eq!(response.json()["code"], 5);
    assert!(
        response.json()["message"]
            .as_str()
            .unwrap()
            .contains("/v1/nothing/here")
    );
    let response = request(
        gw.addr,
        "POST",
        "/v1/things/1",
        &[("content-type", "application/json")],
        "{}",
    )
    .await;
    assert_eq!(response.status, 405, "{}", response.text());
    let allow = response.header("allow").unwrap();
    for verb in ["GET", "PUT", "DELETE", "LOCK"] {
        assert!(allow.contains(verb), "Allow: {allow}");
    }
    assert_eq!(response.json()["code"], 12);
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn query_parameters_of_every_type() {
    let (_backend, gw) = setup().await;
    let query = [
        "d=1.5",
        "f=2.5",
        "i32=-3",
        "i64=-4000000000",
        "u32=5",
        "u64=18446744073709551615",
        "s32=-7",
        "s64=-8",
        "fx32=9",
        "fx64=10",
        "sfx32=-11",
        "sfx64=-12",
        "flag=true",
        "text=hi%20there+you",
        "raw=aGk",
        "color=GREEN",
        "ids=1",
        "ids=2",
        "names=a",
        "names=b",
        "colors=RED",
        "colors=2",
        "nested.label=L",
        "nested.deeper.big=99",
        "when=2024-05-01T12:00:00Z",
        "wait=1.5s",
        "mask=text,nested.label",
        "wI32=5",
        "w_text=x",
        "w_flag=false",
        "w_d=NaN",
        "w_raw=_-8",
        "pick_number=4",
        "maybe=",
        "w_u64=7",
    ]
    .join("&");
    let response = get(gw.addr, &format!("/v1/types?{query}")).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.json(),
        json!({
            "d": 1.5, "f": 2.5, "i32": -3, "i64": "-4000000000", "u32": 5, "u64": "18446744073709551615",
            "s32": -7, "s64": "-8", "fx32": 9, "fx64": "10", "sfx32": -11, "sfx64": "-12", "flag": true,
            "text": "hi there you", "raw": "aGk=", "color": "GREEN", "ids": [1, 2], "names": ["a", "b"],
            "colors": ["RED", "GREEN"], "nested": {"label": "L", "deeper": {"big": "99"}},
            "when": "2024-05-01T12:00:00Z", "wait": "1.500s", "mask": "text,nested.label", "wI32": 5,
            "wText": "x", "wFlag": false, "wD": "NaN", "wRaw": "/+8=", "pickNumber": 4, "maybe": "", "wU64": "7",
        })
    );
}

#[tokio::test]
async fn bad_query_parameters_are_400_with_the_field_named() {
    let (backend, gw) = setup().await;
    let cases = [
        ("nope=1", "nope", "unknown query parameter"),
        ("i32=12x", "i32", "expected a 32-bit integer"),
        ("u32=-1", "u32", "expected an unsigned 32-bit integer"),
        ("text=a&text=b", "text", "given 2 times"),
        ("color=PURPLE", "color", "not a value of testing.rest.v1.Color"),
        ("raw=%%%", "", "invalid percent-encoding"),
        ("raw=!!", "raw", "base64"),
        ("when=yesterday", "when", "RFC 3339"),
        ("wait=5", "wait", "duration"),
        ("counts.a=1", "counts.a", "not a message field"),
        ("items.label=x", "items.label", "not a message field"),
        ("nested=x", "nested", "cannot be given as text"),
        ("flag=yes", "flag", "true or false"),
        ("nested.nope=1", "nested.nope", "no field"),
    ];
    for (query, field, why) in cases {
        let response = get(gw.addr, &format!("/v1/types?{query}")).await;
        assert_eq!(response.status, 400, "{query}: {}", response.text());
        let body = response.json();
        assert_eq!(body["code"], 3);
        let detail = &body["details"][0];
        assert_eq!(detail["@type"], "type.googleapis.com/google.rpc.BadRequest", "{body}");
        let violation = &detail["fieldViolations"][0];
        assert_eq!(violation["field"].as_str().unwrap_or(""), field, "{query}: {body}");
        assert!(
            violation["description"].as_str().unwrap().contains(why),
            "{query}: {body}"
        );
    }
    assert_eq!(backend.count(), 0, "bad requests never reach the backend");
}

#[tokio::test]
async fn unknown_query_parameters_can_be_ignored() {
    let (_backend, gw) = setup_with("transcoding:\n  unknown_query_parameters: ignore").await;
    let response = get(gw.addr, "/v1/types?nope=1&text=x").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json(), json!({"text": "x"}));
}

#[tokio::test]
async fn every_well_known_type_round_trips_through_the_body() {
    let (_backend, gw) = setup().await;
    let sent = json!({
        "when": "2024-05-01T12:00:00.250Z", "wait": "-3.500s", "mask": "text,nested.deeper.big",
        "object": {"k": [1.0, "x", null, true], "o": {}}, "value": 5.0, "list": [1.0, "a", {"b": false}],
        "any": {"@type": "type.googleapis.com/testing.rest.v1.Inner", "note": "n", "count": 3},
        "empty": {}, "wI32": 7, "wText": "", "wFlag": true, "wD": "Infinity", "wI64": "-9", "wRaw": "AAE=",
        "wU32": 4, "wF": 1.5, "wU64": "8", "d": "-Infinity", "i64": "123", "color": "RED",
        "counts": {"a": 1, "b": -2}, "items": [{"label": "x"}, {"big": "5"}], "pickText": "p", "maybe": "",
    });
    let response = post_json(gw.addr, "/v1/types", &sent.to_string()).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json(), sent);
    // Numbers are accepted where the mapping prints strings, and proto names too.
    let response = post_json(
        gw.addr,
        "/v1/types",
        r#"{"i64": 5, "u64": 6, "w_i32": 1, "pick_text": "q", "raw": "_-8"}"#,
    )
    .await;
    assert_eq!(
        response.json(),
        json!({"i64": "5", "u64": "6", "wI32": 1, "pickText": "q", "raw": "/+8="})
    );
}

#[tokio::test]
async fn print_options_apply() {
    let (_backend, gw) =
        setup_with("transcoding:\n  json: {use_proto_names: true, emit_unpopulated: true, enums_as_ints: true}").await;
    let response = post_json(gw.addr, "/v1/types", r#"{"color": "GREEN", "wI32": 3}"#).await;
    let body = response.json();
    assert_eq!(body["color"], 2);
    assert_eq!(body["w_i32"], 3);
    assert_eq!(body["i64"], "0", "unpopulated fields are printed");
    assert_eq!(body["names"], json!([]));
}

/// Map entries (and `Struct` keys) print sorted by key, as grpc-gateway
/// prints them, so the same answer is the same bytes every time (caches,
/// ETags, diffs); a hash map's order would differ from call to call.
#[tokio::test]
async fn map_entries_print_sorted_by_key() {
    let (_backend, gw) = setup().await;
    let body = r#"{"counts": {"m": 13, "b": 2, "z": 26, "a": 1, "q": 17},
        "object": {"y": [true, null], "k": {"d": 1, "c": "x"}, "b": 0.5}}"#;
    for _ in 0..5 {
        let response = post_json(gw.addr, "/v1/types", body).await;
        assert_eq!(response.status, 200, "{}", response.text());
        let text = response.text();
        assert!(
            text.contains(r#""counts":{"a":1,"b":2,"m":13,"q":17,"z":26}"#),
            "{text}"
        );
        assert!(
            text.contains(r#""object":{"b":0.5,"k":{"c":"x","d":1.0},"y":[true,null]}"#),
            "{text}"
        );
    }
}

#[tokio::test]
async fn bad_bodies_are_400_with_the_field_path() {
    let (backend, gw) = setup().await;
    let cases: Vec<(String, &str, &str)> = vec![
        (r#"{"bogus": 1}"#.into(), "bogus", "unrecognized field name"),
        (
            r#"{"nested": {"deeper": {"big": "x"}}}"#.into(),
            "nested.deeper.big",
            "invalid",
        ),
        (r#"{"i32": "abc"}"#.into(), "i32", "invalid"),
        (r#"{"color": "PURPLE"}"#.into(), "color", "PURPLE"),
        (r#"{"raw": "!!!"}"#.into(), "raw", ""),
        (r#"{"when": "noon"}"#.into(), "when", ""),
        (r#"{"wait": "1 hour"}"#.into(), "wait", ""),
        (r#"{"text": 5}"#.into(), "text", "invalid type"),
        (r#"{"text": "a""#.into(), "", "malformed JSON"),
        ("{".repeat(10_000), "", ""),
        ("[1,2]".into(), "", "invalid type"),
    ];
    for (body, field, why) in cases {
        let response = post_json(gw.addr, "/v1/types", &body).await;
        assert_eq!(
            response.status,
            400,
            "{}: {}",
            &body[..body.len().min(40)],
            response.text()
        );
        let json = response.json();
        let violation = &json["details"][0]["fieldViolations"][0];
        assert_eq!(violation["field"].as_str().unwrap_or(""), field, "{json}");
        assert!(violation["description"].as_str().unwrap().contains(why), "{json}");
    }
    // Deep nesting inside a recursive message type as well.
    let deep = format!(
        "{}{}",
        r#"{"nested":{"deeper":"#.repeat(3000),
        "{}".to_string() + &"}}".repeat(3000)
    );
    assert_eq!(post_json(gw.addr, "/v1/types", &deep).await.status, 400);
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn unknown_body_fields_can_be_allowed() {
    let (_backend, gw) = setup_with("transcoding:\n  reject_unknown_fields: false").await;
    let response = post_json(gw.addr, "/v1/types", r#"{"bogus": 1, "text": "x"}"#).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json(), json!({"text": "x"}));
}

#[tokio::test]
async fn oversized_bodies_are_413_and_wrong_content_types_415() {
    let (backend, gw) = setup_with("transcoding:\n  max_request_body: 1KiB").await;
    let big = format!(r#"{{"text":"{}"}}"#, "x".repeat(2000));
    let response = post_json(gw.addr, "/v1/types", &big).await;
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(response.json()["code"], 8);
    let response = request(gw.addr, "POST", "/v1/types", &[("content-type", "text/plain")], "{}").await;
    assert_eq!(response.status, 415);
    assert!(
        response.json()["message"]
            .as_str()
            .unwrap()
            .contains("application/json")
    );
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn a_hundred_megabyte_body_is_refused_without_reading_it_all() {
    let (backend, gw) = setup().await;
    let body = Bytes::from(vec![b' '; 100 << 20]);
    let started = std::time::Instant::now();
    let response = request(
        gw.addr,
        "POST",
        "/v1/types",
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(response.status, 413);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn invalid_percent_encoding_in_the_path_is_400() {
    let (backend, gw) = setup().await;
    for path in ["/v1/things/%zz", "/v1/things/%4", "/v1/files/a/%ff%fe"] {
        let response = get(gw.addr, path).await;
        assert_eq!(response.status, 400, "{path}: {}", response.text());
        assert!(response.text().contains("byte"), "{}", response.text());
    }
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn raw_http_bodies_both_ways() {
    let (backend, gw) = setup().await;
    let png = Bytes::from_static(b"\x89PNG\r\n\x1a\n\x00\x01binary");
    let response = request(
        gw.addr,
        "POST",
        "/v1/blobs",
        &[("content-type", "image/png")],
        png.clone(),
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("image/png"));
    assert_eq!(response.body, png);
    let response = request(
        gw.addr,
        "POST",
        "/v1/blobs/n1",
        &[("content-type", "text/plain")],
        "hello",
    )
    .await;
    assert_eq!(
        response.json(),
        json!({"name": "n1", "body": {"contentType": "text/plain", "data": "aGVsbG8="}})
    );
    // `response_body` naming an HttpBody field: that field, raw.
    let response = request(
        gw.addr,
        "POST",
        "/v1/blobs/n1:raw",
        &[("content-type", "text/plain")],
        "hello",
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/plain"));
    assert_eq!(response.text(), "hello");
    assert_eq!(backend.count(), 3);
}

#[tokio::test]
async fn headers_become_metadata_and_metadata_comes_back_as_headers() {
    let (backend, gw) = setup().await;
    let response = request(
        gw.addr,
        "GET",
        "/v1/things/1",
        &[
            ("authorization", "Bearer t"),
            ("x-custom", "v"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "drop me"),
            ("x-trace-bin", "AAE"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(response.status, 200);
    let seen = backend.last().headers;
    assert_eq!(seen["authorization"], "Bearer t");
    assert_eq!(seen["x-custom"], "v");
    assert_eq!(seen["x-trace-bin"], "AAE");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["content-type"], "application/grpc");
    assert!(seen.get("x-hop").is_none() && seen.get("connection").is_none() && seen.get("host").is_none());
    assert_eq!(response.header("x-served-by"), Some("raw"));
    assert_eq!(
        response.header("x-trailer-note"),
        Some("done"),
        "unary trailers come back as headers"
    );
    assert!(response.header("grpc-status").is_none());
}

#[tokio::test]
async fn every_grpc_code_maps_to_its_http_status_with_a_status_body() {
    let (_backend, gw) = setup().await;
    let table = [
        (1, 499),
        (2, 500),
        (3, 400),
        (4, 504),
        (5, 404),
        (6, 409),
        (7, 403),
        (8, 429),
        (9, 400),
        (10, 409),
        (11, 400),
        (12, 501),
        (13, 500),
        (14, 503),
        (15, 500),
        (16, 401),
    ];
    for (code, http) in table {
        let code_text = code.to_string();
        let response = request(gw.addr, "GET", "/v1/things/1", &[("x-fail", &code_text)], Bytes::new()).await;
        assert_eq!(response.status.as_u16(), http, "code {code}");
        assert_eq!(
            response.json(),
            json!({"code": code, "message": "requested failure", "details": []})
        );
    }
    let response = request(
        gw.addr,
        "GET",
        "/v1/things/1",
        &[("x-fail", "9"), ("x-fail-details", "1")],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        response.json()["details"],
        json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "TEST_REASON", "domain": "test.example"}])
    );
}

#[tokio::test]
async fn ndjson_stream_arrives_message_by_message() {
    let (backend, gw) = setup().await;
    let (status, headers, mut body) = http::send(
        gw.addr,
        "GET",
        "/v1/things/1:watch",
        &[("x-repeat", "3"), ("x-hold", "1")],
        Bytes::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/x-ndjson");
    // The backend holds the second message until released: the first must arrive alone.
    let first = tokio::time::timeout(Duration::from_secs(5), next_chunk(&mut body))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, Bytes::from_static(b"{\"result\":{\"id\":\"1\"}}\n"));
    backend.release();
    let second = tokio::time::timeout(Duration::from_secs(5), next_chunk(&mut body))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second, first);
    backend.release();
    let mut rest = Vec::new();
    while let Some(chunk) = next_chunk(&mut body).await {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, first.to_vec());
}

#[tokio::test]
async fn a_stream_failure_after_the_first_message_is_a_last_error_line() {
    let (_backend, gw) = setup().await;
    let response = request(
        gw.addr,
        "GET",
        "/v1/things/1:watch",
        &[("x-repeat", "2"), ("x-fail", "14"), ("x-fail-after", "1")],
        Bytes::new(),
    )
    .await;
    assert_eq!(response.status, 200);
    let lines: Vec<serde_json::Value> = response
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", response.text());
    assert_eq!(lines[0], json!({"result": {"id": "1"}}));
    assert_eq!(
        lines[2],
        json!({"error": {"code": 14, "message": "requested failure", "details": []}})
    );
    // Failing before any message gets a real error status instead.
    let response = request(gw.addr, "GET", "/v1/things/1:watch", &[("x-fail", "5")], Bytes::new()).await;
    assert_eq!(response.status, 404);
    assert_eq!(response.json()["code"], 5);
}

#[tokio::test]
async fn server_sent_events_on_request() {
    let (_backend, gw) = setup().await;
    let response = request(
        gw.addr,
        "GET",
        "/v1/things/7:watch",
        &[
            ("accept", "text/event-stream"),
            ("x-repeat", "2"),
            ("x-fail", "13"),
            ("x-fail-after", "1"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        response.text(),
        "id: 0\ndata: {\"id\":\"7\"}\n\nid: 1\ndata: {\"id\":\"7\"}\n\nevent: error\ndata: {\"code\":13,\"message\":\"requested failure\",\"details\":[]}\n\n"
    );
}

#[tokio::test]
async fn client_streams_take_ndjson_or_a_json_array() {
    let (backend, gw) = setup().await;
    for body in [
        "{\"tags\":[\"a\"]}\n{\"tags\":[\"b\"],\"title\":\"t\"}\n",
        "[{\"tags\":[\"a\"]}, {\"tags\":[\"b\"],\"title\":\"t\"}]",
    ] {
        let response = post_json(gw.addr, "/v1/things:collect", body).await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json(), json!({"tags": ["a", "b"], "title": "t"}));
        assert_eq!(backend.last().messages.len(), 2, "sent as two messages");
    }
    let response = post_json(gw.addr, "/v1/things:collect", "{\"tags\":[\"a\"]}\n{\"bogus\":1}\n").await;
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(
        response.text().contains("message 1 of the stream"),
        "{}",
        response.text()
    );
}

#[tokio::test]
async fn raw_streams_both_ways() {
    let (backend, gw) = setup().await;
    let response = request(
        gw.addr,
        "POST",
        "/v1/chunks",
        &[("content-type", "application/octet-stream")],
        vec![7u8; 100_000],
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let received: usize = backend.last().messages.len();
    assert!(received >= 1);
    let response = request(
        gw.addr,
        "GET",
        "/v1/downloads?content_type=text/plain&data=aGVsbG8",
        &[("x-repeat", "3")],
        Bytes::new(),
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/plain"));
    assert_eq!(response.text(), "hellohellohello");
}

#[tokio::test]
async fn grpc_timeout_header_is_honoured() {
    let (_backend, gw) = setup().await;
    let response = request(
        gw.addr,
        "GET",
        "/v1/things/1",
        &[("grpc-timeout", "100m"), ("x-delay-ms", "2000")],
        Bytes::new(),
    )
    .await;
    assert_eq!(response.status, 504, "{}", response.text());
    assert_eq!(response.json()["code"], 4);
}

#[tokio::test]
async fn non_grpc_upstream_answers_map_to_codes() {
    let (_backend, gw) = setup().await;
    let response = request(gw.addr, "GET", "/v1/things/1", &[("x-reply-http", "503")], Bytes::new()).await;
    assert_eq!(response.status, 503);
    assert_eq!(response.json()["code"], 14);
}

#[allow(dead_code)]
fn _unused(_: HttpResponse) {}
