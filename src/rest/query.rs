//! Query strings: split into parameters, percent-decoded (`+` is a space, as
//! in HTML forms), grouped by name in order of first appearance. Pure
//! functions over text.

/// One query parameter name with every value given for it, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Param {
    pub(crate) name: String,
    pub(crate) values: Vec<String>,
}

/// Parses `a=1&b=x%20y&a=2` into `[a: [1, 2], b: ["x y"]]`.
pub(crate) fn parse(query: &str) -> Result<Vec<Param>, String> {
    let mut params: Vec<Param> = Vec::new();
    let mut offset = 0;
    for pair in query.split('&') {
        let start = offset;
        offset += pair.len() + 1;
        if pair.is_empty() {
            continue;
        }
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name =
            decode(raw_name).map_err(|at| format!("invalid percent-encoding in the query at byte {}", start + at))?;
        let value = decode(raw_value).map_err(|at| {
            format!(
                "invalid percent-encoding in the query at byte {}",
                start + raw_name.len() + 1 + at
            )
        })?;
        match params.iter_mut().find(|p| p.name == name) {
            Some(param) => param.values.push(value),
            None => params.push(Param {
                name,
                values: vec![value],
            }),
        }
    }
    Ok(params)
}

/// Percent-decodes form text; `Err(offset)` at the first bad escape or non-UTF-8 result.
fn decode(text: &str) -> Result<String, usize> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|c| char::from(*c).to_digit(16));
                match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => return Err(i),
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    // The error is where the bad sequence starts in `text`, not in `out`:
    // escapes before it decoded three bytes into one.
    String::from_utf8(out).map_err(|e| input_offset(bytes, e.utf8_error().valid_up_to()))
}

/// Where in `text` (whose escapes all decode) the decoded byte `n` comes from.
fn input_offset(text: &[u8], n: usize) -> usize {
    let mut i = 0;
    for _ in 0..n {
        i += if text.get(i) == Some(&b'%') { 3 } else { 1 };
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, values: &[&str]) -> Param {
        Param {
            name: name.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn groups_repeated_names_in_order() {
        assert_eq!(
            parse("ids=1&name=x%20y+z&ids=2&&flag").unwrap(),
            vec![p("ids", &["1", "2"]), p("name", &["x y z"]), p("flag", &[""])]
        );
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("a.b.c=%E2%9C%93").unwrap(), vec![p("a.b.c", &["✓"])]);
    }

    #[test]
    fn bad_escapes_name_the_byte() {
        assert_eq!(
            parse("a=1&b=%zz").unwrap_err(),
            "invalid percent-encoding in the query at byte 6"
        );
        assert_eq!(
            parse("a=%4").unwrap_err(),
            "invalid percent-encoding in the query at byte 2"
        );
        assert!(parse("a=%ff").is_err(), "not UTF-8");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_named_in_the_query() {
        // Found by fuzzing (fuzz/fuzz_targets/query.rs): the offset was
        // counted in the decoded bytes, so escapes before the bad one moved it.
        assert_eq!(
            parse("a=%41%ff").unwrap_err(),
            "invalid percent-encoding in the query at byte 5"
        );
        assert_eq!(
            parse("x=1&n%C3%A9e=%E2%9C%93+%E2%9C&y").unwrap_err(),
            "invalid percent-encoding in the query at byte 23"
        );
        assert_eq!(
            parse("%C3%A9%C3=1").unwrap_err(),
            "invalid percent-encoding in the query at byte 6"
        );
        let fuzzed = "text=a\u{6}\0\0\0\0\0\0\0p%19T12:00:00\u{1f}\u{fffd}\u{fffd}\u{fffd}ap%80b&&mask=ep\0\0\0\0\0\0\0\u{4}er.+ig=7";
        let error = parse(fuzzed).unwrap_err();
        let at: usize = error.rsplit_once("at byte ").unwrap().1.parse().unwrap();
        assert_eq!(&fuzzed[at..at + 3], "%80", "{error}");
    }
}
