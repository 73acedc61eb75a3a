//! A strict parser for what `/metrics` serves: the Prometheus text format
//! 0.0.4 and OpenMetrics 1.0.0 text. It refuses anything it does not
//! understand instead of skipping it: a malformed line, a bad escape, a
//! sample whose family has no `# TYPE`, a family split in two groups, a
//! duplicate series, a counter named against the format's rule (text: the
//! family ends in `_total`; OpenMetrics: it does not, its samples do), and
//! for OpenMetrics a missing or misplaced `# EOF`.

use std::collections::{BTreeMap, HashMap, HashSet};

/// Which exposition format a scrape is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

/// Label name → value, sorted so equal sets compare equal.
pub type Labels = BTreeMap<String, String>;

/// One sample line.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
    /// The family (the `# TYPE` name) it belongs to.
    pub family: String,
}

/// A whole parsed scrape.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name → type.
    pub types: HashMap<String, String>,
    pub help: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Every sample named `name`.
    pub fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// The value of the series with exactly these labels, if present.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted = labels_of(labels);
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    /// The value of a series that must exist.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("expected a series {name}{labels:?} in /metrics; it is absent"))
    }
}

/// Builds a label set from pairs.
pub fn labels_of(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A sample value: a decimal float, `+Inf`, `-Inf` or `NaN` (nothing Rust alone would accept, like `inf`).
fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => return Ok(f64::INFINITY),
        "-Inf" => return Ok(f64::NEG_INFINITY),
        "NaN" => return Ok(f64::NAN),
        _ => {}
    }
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    match text.parse::<f64>() {
        Ok(v) if plain && !text.is_empty() => Ok(v),
        _ => Err(format!("bad sample value {text:?}")),
    }
}

/// Reads `{name="value",...}`; returns the labels and the rest of the line.
fn parse_labels(text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    let mut rest = text;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..].strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape in label value: {other:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} given twice"));
        }
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("labels not separated by ','".into());
        }
    }
}

/// The family a sample name belongs to, given the declared types.
fn family_of(name: &str, types: &HashMap<String, String>, format: Format) -> Option<String> {
    if let Some(kind) = types.get(name) {
        let plain = match format {
            Format::Text => !matches!(kind.as_str(), "histogram" | "summary"),
            Format::OpenMetrics => matches!(kind.as_str(), "gauge" | "unknown" | "stateset" | "summary"),
        };
        if plain {
            return Some(name.to_string());
        }
    }
    let suffixed: &[(&str, &[&str])] = match format {
        Format::Text => &[
            ("_bucket", &["histogram"]),
            ("_sum", &["histogram", "summary"]),
            ("_count", &["histogram", "summary"]),
        ],
        Format::OpenMetrics => &[
            ("_total", &["counter"]),
            ("_created", &["counter", "histogram", "summary"]),
            ("_info", &["info"]),
            ("_bucket", &["histogram", "gaugehistogram"]),
            ("_sum", &["histogram", "summary"]),
            ("_count", &["histogram", "summary"]),
            ("_gcount", &["gaugehistogram"]),
            ("_gsum", &["gaugehistogram"]),
        ],
    };
    suffixed.iter().find_map(|(suffix, kinds)| {
        let base = name.strip_suffix(suffix)?;
        let kind = types.get(base)?;
        kinds.contains(&kind.as_str()).then(|| base.to_string())
    })
}

/// Parses a whole scrape, or says which line is wrong and why.
pub fn parse(text: &str, format: Format) -> Result<Exposition, String> {
    let body = match format {
        Format::Text => text,
        Format::OpenMetrics => text
            .strip_suffix("# EOF\n")
            .or_else(|| text.strip_suffix("# EOF"))
            .ok_or("OpenMetrics must end with \"# EOF\"")?,
    };
    if !body.is_empty() && !body.ends_with('\n') {
        return Err("the exposition must end with a newline".into());
    }
    let kinds: &[&str] = match format {
        Format::Text => &["counter", "gauge", "histogram", "summary", "untyped"],
        Format::OpenMetrics => &[
            "counter",
            "gauge",
            "histogram",
            "gaugehistogram",
            "stateset",
            "info",
            "summary",
            "unknown",
        ],
    };
    let mut out = Exposition::default();
    let mut seen_series = HashSet::new();
    // Families whose samples have begun, and the one whose group is open.
    let mut begun = HashSet::new();
    let mut current: Option<String> = None;
    for (n, line) in body.lines().enumerate() {
        let fail = |why: String| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            if format == Format::OpenMetrics {
                return Err(fail("empty line".into()));
            }
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment
                .strip_prefix(' ')
                .ok_or_else(|| fail("bad comment".into()))?
                .splitn(3, ' ');
            let (keyword, name, rest) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next());
            if !is_metric_name(name) {
                return Err(fail(format!("bad metric name {name:?}")));
            }
            if begun.contains(name) {
                return Err(fail(format!("metadata for {name} after its samples")));
            }
            match (keyword, rest) {
                ("TYPE", Some(kind)) if kinds.contains(&kind) => {
                    let total = name.ends_with("_total");
                    if kind == "counter" && format == Format::Text && !total {
                        return Err(fail(format!("counter {name} does not end in _total")));
                    }
                    if kind == "counter" && format == Format::OpenMetrics && total {
                        return Err(fail(format!("OpenMetrics counter family {name} ends in _total")));
                    }
                    if out.types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(fail(format!("second TYPE for {name}")));
                    }
                }
                ("HELP", Some(help)) => {
                    let mut unescaped = String::new();
                    let mut chars = help.chars();
                    while let Some(c) = chars.next() {
                        match (c, format) {
                            ('\\', _) => match chars.next() {
                                Some('\\') => unescaped.push('\\'),
                                Some('n') => unescaped.push('\n'),
                                Some('"') if format == Format::OpenMetrics => unescaped.push('"'),
                                other => return Err(fail(format!("bad escape in HELP: {other:?}"))),
                            },
                            _ => unescaped.push(c),
                        }
                    }
                    if out.help.insert(name.to_string(), unescaped).is_some() {
                        return Err(fail(format!("second HELP for {name}")));
                    }
                }
                ("UNIT", Some(_)) if format == Format::OpenMetrics => {}
                _ => return Err(fail("unknown or malformed comment line".into())),
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| fail("sample without a value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(fail(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = match line[name_end..].strip_prefix('{') {
            Some(inner) => parse_labels(inner).map_err(&fail)?,
            None => (Labels::new(), &line[name_end..]),
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| fail("no space before the value".into()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(&fail)?;
        if let Some(timestamp) = fields.next()
            && timestamp.parse::<f64>().is_err()
        {
            return Err(fail(format!("bad timestamp {timestamp:?}")));
        }
        if fields.next().is_some() {
            return Err(fail("trailing fields".into()));
        }
        let family = family_of(name, &out.types, format).ok_or_else(|| fail(format!("{name} has no TYPE")))?;
        let kind = out.types[&family].as_str();
        if current.as_deref() != Some(family.as_str()) {
            if !begun.insert(family.clone()) {
                return Err(fail(format!("samples of {family} are not in one group")));
            }
            current = Some(family.clone());
        }
        if name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(fail("a bucket without le".into()));
        }
        if kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(fail("a counter below zero (or NaN)".into()));
        }
        if !seen_series.insert((name.to_string(), labels.clone())) {
            return Err(fail("duplicate series".into()));
        }
        out.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
            family,
        });
    }
    Ok(out)
}

/// Parses, failing the test with the whole scrape when the parser refuses it.
pub fn must_parse(text: &str, format: Format) -> Exposition {
    parse(text, format).unwrap_or_else(|e| panic!("expected a valid {format:?} exposition, got: {e}\n{text}"))
}

/// The parser accepts what it should and refuses what it must, so a scrape
/// it passes is known to be valid.
mod tests {
    use super::{Format, parse};

    const TEXT: &str = "\
# HELP calls_total Calls, \\\\ and a\\nnewline.
# TYPE calls_total counter
calls_total{code=\"OK\",path=\"a\\\"b\\\\c\\nd\"} 3
calls_total{code=\"NOT_FOUND\"} 1 1700000000000
# TYPE latency_seconds histogram
latency_seconds_bucket{le=\"0.1\"} 1
latency_seconds_bucket{le=\"+Inf\"} 2
latency_seconds_sum 0.35
latency_seconds_count 2
# TYPE up gauge
up -1.5e-3
";

    #[test]
    fn a_valid_text_exposition_parses_with_its_values_and_families() {
        let parsed = parse(TEXT, Format::Text).unwrap_or_else(|e| panic!("expected it to parse: {e}"));
        assert_eq!(parsed.types["calls_total"], "counter");
        assert_eq!(parsed.help["calls_total"], "Calls, \\ and a\nnewline.");
        assert_eq!(
            parsed.value("calls_total", &[("code", "OK"), ("path", "a\"b\\c\nd")]),
            3.0
        );
        assert_eq!(parsed.get("calls_total", &[("code", "NOT_FOUND")]), Some(1.0));
        assert_eq!(
            parsed.get("calls_total", &[]),
            None,
            "expected labels to be matched exactly"
        );
        assert_eq!(parsed.value("latency_seconds_bucket", &[("le", "+Inf")]), 2.0);
        assert_eq!(parsed.series("latency_seconds_count")[0].family, "latency_seconds");
        assert_eq!(parsed.value("up", &[]), -0.0015);
    }

    #[test]
    fn a_valid_open_metrics_exposition_parses() {
        let open = "\
# TYPE calls counter
# UNIT calls calls
calls_total{code=\"OK\"} 3
calls_created{code=\"OK\"} 1700000000.5
# TYPE build info
build_info{version=\"1\"} 1
# EOF
";
        let parsed = parse(open, Format::OpenMetrics).unwrap_or_else(|e| panic!("expected it to parse: {e}"));
        assert_eq!(parsed.series("calls_total")[0].family, "calls");
        assert_eq!(parsed.value("build_info", &[("version", "1")]), 1.0);
        assert_eq!(parsed.types["build"], "info");
    }

    /// Each case: what is wrong, a part of the error it must give, the format, and the text.
    const REFUSED: &[(&str, &str, Format, &str)] = &[
        (
            "a sample without a TYPE",
            "has no TYPE",
            Format::Text,
            "# TYPE a_total counter\nb 1\n",
        ),
        (
            "a text counter not ending in _total",
            "does not end in _total",
            Format::Text,
            "# TYPE calls counter\ncalls 1\n",
        ),
        (
            "an OpenMetrics counter family ending in _total",
            "ends in _total",
            Format::OpenMetrics,
            "# TYPE calls_total counter\ncalls_total 1\n# EOF\n",
        ),
        (
            "an OpenMetrics counter sample without _total",
            "has no TYPE",
            Format::OpenMetrics,
            "# TYPE calls counter\ncalls 1\n# EOF\n",
        ),
        (
            "OpenMetrics without # EOF",
            "# EOF",
            Format::OpenMetrics,
            "# TYPE up gauge\nup 1\n",
        ),
        (
            "OpenMetrics with an empty line",
            "empty line",
            Format::OpenMetrics,
            "# TYPE up gauge\n\nup 1\n# EOF\n",
        ),
        (
            "no newline at the end",
            "newline",
            Format::Text,
            "# TYPE up gauge\nup 1",
        ),
        (
            "a family in two groups",
            "not in one group",
            Format::Text,
            "# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na{x=\"y\"} 1\n",
        ),
        (
            "metadata after the samples",
            "after its samples",
            Format::Text,
            "# TYPE a gauge\na 1\n# HELP a late\n",
        ),
        (
            "a second TYPE",
            "second TYPE",
            Format::Text,
            "# TYPE a gauge\n# TYPE a gauge\n",
        ),
        (
            "a duplicate series",
            "duplicate series",
            Format::Text,
            "# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n",
        ),
        (
            "a label given twice",
            "given twice",
            Format::Text,
            "# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n",
        ),
        (
            "a bad escape in a label value",
            "bad escape",
            Format::Text,
            "# TYPE a gauge\na{x=\"\\t\"} 1\n",
        ),
        (
            "an unquoted label value",
            "not quoted",
            Format::Text,
            "# TYPE a gauge\na{x=1} 1\n",
        ),
        (
            "an unterminated label value",
            "unterminated",
            Format::Text,
            "# TYPE a gauge\na{x=\"1} 1\n",
        ),
        (
            "a bad label name",
            "bad label name",
            Format::Text,
            "# TYPE a gauge\na{1x=\"1\"} 1\n",
        ),
        (
            "a bad metric name",
            "bad metric name",
            Format::Text,
            "# TYPE 1a gauge\n",
        ),
        (
            "a value Rust alone would take",
            "bad sample value",
            Format::Text,
            "# TYPE a gauge\na inf\n",
        ),
        ("no value", "without a value", Format::Text, "# TYPE a gauge\na\n"),
        (
            "a bad timestamp",
            "bad timestamp",
            Format::Text,
            "# TYPE a gauge\na 1 soon\n",
        ),
        (
            "trailing fields",
            "trailing fields",
            Format::Text,
            "# TYPE a gauge\na 1 2 3\n",
        ),
        (
            "a bucket without le",
            "without le",
            Format::Text,
            "# TYPE h histogram\nh_bucket 1\n",
        ),
        (
            "a counter below zero",
            "below zero",
            Format::Text,
            "# TYPE a_total counter\na_total -1\n",
        ),
        (
            "an unknown type",
            "unknown or malformed",
            Format::Text,
            "# TYPE a info\n",
        ),
        (
            "an unknown comment",
            "unknown or malformed",
            Format::Text,
            "# NOTE a b\n",
        ),
    ];

    #[test]
    fn malformed_expositions_are_refused() {
        for (why, error, format, text) in REFUSED {
            match parse(text, *format) {
                Ok(_) => panic!("expected {why} to be refused: {text:?}"),
                Err(e) => assert!(e.contains(error), "expected {why} to be refused for it, got {e:?}"),
            }
        }
    }
}
