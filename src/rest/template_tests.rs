//! Tests for path template parsing and the percent-encoding helpers: every
//! template form, every error with its offset, and inputs meant to break it.

use super::template::{
    MAX_SEGMENTS, MAX_TEMPLATE_LEN, NotUtf8, PathTemplate, Segment, Variable, decode, invalid_escape, parse,
};

fn lit(text: &str) -> Segment {
    Segment::Literal(text.to_string())
}

fn var(path: &[&str], start: usize, end: Option<usize>) -> Variable {
    Variable {
        field_path: path.iter().map(|s| s.to_string()).collect(),
        start,
        end,
    }
}

#[test]
fn every_template_form_parses() {
    use Segment::{Multi, Single};
    let cases: Vec<(&str, PathTemplate)> = vec![
        (
            "/v1/books",
            PathTemplate {
                segments: vec![lit("v1"), lit("books")],
                verb: None,
                variables: vec![],
            },
        ),
        (
            "/v1/{name}",
            PathTemplate {
                segments: vec![lit("v1"), Single],
                verb: None,
                variables: vec![var(&["name"], 1, Some(2))],
            },
        ),
        (
            "/v1/{name=shelves/*/books/*}",
            PathTemplate {
                segments: vec![lit("v1"), lit("shelves"), Single, lit("books"), Single],
                verb: None,
                variables: vec![var(&["name"], 1, Some(5))],
            },
        ),
        (
            "/v1/{book.name=shelves/*}:publish",
            PathTemplate {
                segments: vec![lit("v1"), lit("shelves"), Single],
                verb: Some("publish".into()),
                variables: vec![var(&["book", "name"], 1, Some(3))],
            },
        ),
        (
            "/v1/{a}/x/{b.c=**}",
            PathTemplate {
                segments: vec![lit("v1"), Single, lit("x"), Multi],
                verb: None,
                variables: vec![var(&["a"], 1, Some(2)), var(&["b", "c"], 3, None)],
            },
        ),
        (
            "/v1/{name=files/**}:download",
            PathTemplate {
                segments: vec![lit("v1"), lit("files"), Multi],
                verb: Some("download".into()),
                variables: vec![var(&["name"], 1, None)],
            },
        ),
        (
            "/static/**",
            PathTemplate {
                segments: vec![lit("static"), Multi],
                verb: None,
                variables: vec![],
            },
        ),
        (
            "/*/*:v",
            PathTemplate {
                segments: vec![Single, Single],
                verb: Some("v".into()),
                variables: vec![],
            },
        ),
        (
            "/{kind=fixed}",
            PathTemplate {
                segments: vec![lit("fixed")],
                verb: None,
                variables: vec![var(&["kind"], 0, Some(1))],
            },
        ),
        (
            "/a-b.c_d~e/%7Ex%2Fy:go%21",
            PathTemplate {
                segments: vec![lit("a-b.c_d~e"), lit("~x/y")],
                verb: Some("go!".into()),
                variables: vec![],
            },
        ),
        (
            "/pkg.v1.Service/Method",
            PathTemplate {
                segments: vec![lit("pkg.v1.Service"), lit("Method")],
                verb: None,
                variables: vec![],
            },
        ),
    ];
    for (text, expected) in cases {
        let parsed = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(parsed, expected, "{text}");
        let canonical = parsed.to_string();
        assert_eq!(parse(&canonical).as_ref(), Ok(&parsed), "{text} → {canonical}");
    }
}

#[test]
fn canonical_form_spells_out_variables() {
    for (text, canonical) in [
        ("/v1/{name}", "/v1/{name=*}"),
        ("/v1/{a.b=x/*}/y:v", "/v1/{a.b=x/*}/y:v"),
        ("/v1/%7e/{p=**}", "/v1/~/{p=**}"),
        ("/a%2fb", "/a%2Fb"),
    ] {
        assert_eq!(parse(text).unwrap().to_string(), canonical, "{text}");
    }
}

#[test]
fn errors_name_the_offset_and_what_was_expected() {
    let cases: &[(&str, usize, &str)] = &[
        ("", 0, "\"/\""),
        ("v1/x", 0, "\"/\""),
        ("{a}", 0, "\"/\""),
        ("/", 1, "a segment"),
        ("//", 1, "a segment"),
        ("/v1//x", 4, "a segment"),
        ("/v1/", 4, "a segment"),
        ("/v1/{name=shelves/*", 19, "\"}\""),
        ("/v1/{name", 9, "\"}\""),
        ("/{", 2, "a field name"),
        ("/{a", 3, "\"}\""),
        ("/{a=", 4, "a literal, \"*\" or \"**\""),
        ("/v1/{name}}", 10, "\"/\", \":verb\" or end of template"),
        ("/v1/}", 4, "a segment"),
        ("/v1/{}", 5, "a field name"),
        ("/v1/{1a}", 5, "a field name"),
        ("/v1/{a.}", 7, "a field name"),
        ("/v1/{a-b}", 6, "\"}\""),
        ("/v1/{a=}", 7, "a literal, \"*\" or \"**\""),
        ("/v1/{a={b}}", 7, "variables cannot nest"),
        ("/v1/{a=x/{b}}", 9, "variables cannot nest"),
        ("/v1/**/x", 6, "\"**\" must be the last segment"),
        ("/v1/{a=**}/x", 10, "\"**\" must be the last segment"),
        ("/v1/{a=**/x}", 9, "\"}\" (\"**\" must be the last segment)"),
        ("/**/{a}", 3, "\"**\" must be the last segment"),
        ("/v1/***", 6, "\"**\" must be the last segment"),
        ("/v1/*a", 5, "\"/\", \":verb\" or end of template"),
        ("/v1/x:", 6, "a verb after \":\""),
        ("/v1/x:a:b", 7, "end of template"),
        ("/v1/x:a/b", 7, "end of template"),
        ("/v1/x%zz", 5, "two hex digits after \"%\""),
        ("/v1/x%4", 5, "two hex digits after \"%\""),
        ("/v1/x%", 5, "two hex digits after \"%\""),
        ("/v1/%FF", 4, "escapes that decode to UTF-8"),
        ("/v1/a b", 5, "\"/\", \":verb\" or end of template"),
        ("/v1/é", 4, "a segment"),
        ("/v1/x?y", 5, "\"/\", \":verb\" or end of template"),
        ("/v1/{a}/{a}", 9, "a field not already bound"),
        ("/v1/{a.b}/{a.b=**}", 11, "a field not already bound"),
    ];
    for &(text, offset, expected) in cases {
        let err = parse(text).expect_err(text);
        assert_eq!(err.offset, offset, "{text}: {err}");
        assert!(err.expected.contains(expected), "{text}: {err}");
        assert!(err.to_string().starts_with(&format!("at byte {offset}: expected ")));
    }
}

#[test]
fn the_documented_example_error() {
    assert_eq!(
        parse("/v1/{name=shelves/*").unwrap_err().to_string(),
        "at byte 19: expected \"}\""
    );
}

#[test]
fn lengths_are_limited() {
    let long = "/a".repeat(MAX_TEMPLATE_LEN);
    let err = parse(&long).unwrap_err();
    assert_eq!(err.offset, MAX_TEMPLATE_LEN, "{err}");
    let huge = format!("/{}", "x".repeat(10_000_000));
    assert_eq!(parse(&huge).unwrap_err().offset, MAX_TEMPLATE_LEN);

    let just_enough = "/a".repeat(MAX_SEGMENTS);
    assert_eq!(parse(&just_enough).unwrap().segments.len(), MAX_SEGMENTS);
    let too_many = "/a".repeat(MAX_SEGMENTS + 1);
    let err = parse(&too_many).unwrap_err();
    assert_eq!(err.offset, MAX_SEGMENTS * 2 + 1, "{err}");
    assert!(err.expected.contains("segments"), "{err}");

    let deep = format!("/{}", "{a=".repeat(500));
    assert!(parse(&deep).is_err());
    let braces = "/{".repeat(1000) + &"}".repeat(1000);
    assert!(parse(&braces).is_err());
}

#[test]
fn random_input_never_panics_and_round_trips() {
    const ALPHABET: &[u8] = b"/{}=*.:%a1_F~-?";
    let mut rng = fastrand::Rng::with_seed(7);
    let mut parsed = 0;
    for _ in 0..50_000 {
        let len = rng.usize(0..24);
        let text: String = (0..len)
            .map(|_| char::from(ALPHABET[rng.usize(0..ALPHABET.len())]))
            .collect();
        if let Ok(template) = parse(&text) {
            parsed += 1;
            let canonical = template.to_string();
            assert_eq!(parse(&canonical).as_ref(), Ok(&template), "{text}");
        }
    }
    assert!(parsed > 100, "only {parsed} random templates parsed");
    for bytes in [&b"\xff\xfe/"[..], b"/\x00", b"/%00", b"/\xc3"] {
        let _ = parse(&String::from_utf8_lossy(bytes));
    }
}

#[test]
fn percent_decoding_rules() {
    assert_eq!(decode("plain", false).unwrap(), "plain");
    assert_eq!(decode("a%20b", false).unwrap(), "a b");
    assert_eq!(decode("a%2Fb%2fc", false).unwrap(), "a/b/c");
    assert_eq!(decode("a%2Fb%2fc%20", true).unwrap(), "a%2Fb%2fc ");
    assert_eq!(decode("%C3%A9", false).unwrap(), "é");
    assert_eq!(decode("%FF", false), Err(NotUtf8));
    assert_eq!(decode("%C3", true), Err(NotUtf8));
    assert_eq!(decode("%zz%4", false).unwrap(), "%zz%4");
    assert_eq!(invalid_escape("ok%41"), None);
    assert_eq!(invalid_escape("%zz"), Some(0));
    assert_eq!(invalid_escape("ab%4"), Some(2));
    assert_eq!(invalid_escape("ab%"), Some(2));
    assert_eq!(invalid_escape("%41%g1"), Some(3));
}
