//! `google.api.http` path templates: parsing a template such as
//! `/v1/{name=shelves/*/books/*}:publish` into segments, variables and a verb,
//! and the percent-encoding rules that templates and request paths share.
//!
//! Everything here is a pure function over a string: no I/O, no descriptors.
//! Parsing checks every length (a template is at most [`MAX_TEMPLATE_LEN`]
//! bytes and [`MAX_SEGMENTS`] segments), never panics, and reports an error
//! as the byte offset where the input stopped making sense and what was
//! expected there: `at byte 19: expected "}"`.
//!
//! The grammar (from google/api/http.proto):
//!
//! ```text
//! Template  = "/" Segments [ Verb ] ;
//! Segments  = Segment { "/" Segment } ;
//! Segment   = "*" | "**" | LITERAL | Variable ;
//! Variable  = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb      = ":" LITERAL ;
//! ```
//!
//! `{field}` means `{field=*}`; `**` may only be the last segment (inside a
//! variable or not); variables do not nest and a field is bound at most once;
//! literals (and the verb) are unreserved URL characters and `%XX` escapes,
//! stored decoded.

use std::borrow::Cow;
use std::fmt;

/// The longest template accepted, in bytes.
pub(crate) const MAX_TEMPLATE_LEN: usize = 2048;
/// The most segments a template may have (variables' segments included).
pub(crate) const MAX_SEGMENTS: usize = 64;

/// A parsed path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PathTemplate {
    /// Every segment, variables' segments flattened in place.
    pub(crate) segments: Vec<Segment>,
    /// The `:verb` suffix, decoded.
    pub(crate) verb: Option<String>,
    /// The variables, in template order.
    pub(crate) variables: Vec<Variable>,
}

/// One segment of a template.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Segment {
    /// Matches exactly this (decoded) text.
    Literal(String),
    /// `*`: any one non-empty segment.
    Single,
    /// `**`: zero or more segments, the rest of the path.
    Multi,
}

/// `{field.path=segments}`: the request segments it covers fill a field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Variable {
    /// The field, one name per level: `["book", "name"]` for `{book.name}`.
    pub(crate) field_path: Vec<String>,
    /// Index of its first segment in [`PathTemplate::segments`].
    pub(crate) start: usize,
    /// Index just past its last segment; `None` when it ends with `**` and so
    /// runs through the end of the path.
    pub(crate) end: Option<usize>,
}

impl Variable {
    /// The field path joined with dots: `book.name`.
    pub(crate) fn field_name(&self) -> String {
        self.field_path.join(".")
    }

    /// Whether it covers exactly one segment (and so is fully percent-decoded).
    pub(crate) fn is_single_segment(&self) -> bool {
        self.end == Some(self.start + 1)
    }
}

/// Where a template stopped making sense, and what was expected there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: expected {expected}")]
pub(crate) struct TemplateError {
    /// Byte offset into the template.
    pub(crate) offset: usize,
    /// What would have been accepted at that offset.
    pub(crate) expected: Cow<'static, str>,
}

/// Parses a path template.
pub(crate) fn parse(template: &str) -> Result<PathTemplate, TemplateError> {
    if template.len() > MAX_TEMPLATE_LEN {
        return Err(error(
            MAX_TEMPLATE_LEN,
            format!("a template of at most {MAX_TEMPLATE_LEN} bytes"),
        ));
    }
    let mut parser = Parser {
        src: template,
        pos: 0,
        segments: Vec::new(),
        variables: Vec::new(),
        multi: false,
    };
    parser.expect(b'/', "\"/\"")?;
    parser.segments(false)?;
    let verb = if parser.peek() == Some(b':') {
        parser.pos += 1;
        Some(parser.literal("a verb after \":\"")?)
    } else {
        None
    };
    if parser.pos < template.len() {
        let expected = if verb.is_some() {
            "end of template"
        } else if parser.multi {
            "end of template or \":verb\" (\"**\" must be the last segment)"
        } else {
            "\"/\", \":verb\" or end of template"
        };
        return Err(error(parser.pos, expected));
    }
    Ok(PathTemplate {
        segments: parser.segments,
        verb,
        variables: parser.variables,
    })
}

fn error(offset: usize, expected: impl Into<Cow<'static, str>>) -> TemplateError {
    TemplateError {
        offset,
        expected: expected.into(),
    }
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    /// Whether `**` has been seen (nothing but the verb may follow it).
    multi: bool,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), TemplateError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(error(self.pos, what))
        }
    }

    /// `Segment { "/" Segment }`, stopping before anything else.
    fn segments(&mut self, in_variable: bool) -> Result<(), TemplateError> {
        loop {
            self.segment(in_variable)?;
            if self.peek() != Some(b'/') {
                return Ok(());
            }
            if self.multi {
                let expected = if in_variable {
                    "\"}\" (\"**\" must be the last segment)"
                } else {
                    "end of template or \":verb\" (\"**\" must be the last segment)"
                };
                return Err(error(self.pos, expected));
            }
            self.pos += 1;
        }
    }

    fn push(&mut self, segment: Segment, at: usize) -> Result<(), TemplateError> {
        if self.segments.len() >= MAX_SEGMENTS {
            return Err(error(at, format!("a template of at most {MAX_SEGMENTS} segments")));
        }
        if segment == Segment::Multi {
            self.multi = true;
        }
        self.segments.push(segment);
        Ok(())
    }

    fn segment(&mut self, in_variable: bool) -> Result<(), TemplateError> {
        let at = self.pos;
        match self.peek() {
            Some(b'*') => {
                if self.src.as_bytes().get(self.pos + 1) == Some(&b'*') {
                    self.pos += 2;
                    self.push(Segment::Multi, at)
                } else {
                    self.pos += 1;
                    self.push(Segment::Single, at)
                }
            }
            Some(b'{') if in_variable => Err(error(at, "a literal, \"*\" or \"**\" (variables cannot nest)")),
            Some(b'{') => self.variable(),
            Some(c) if is_unreserved(c) || c == b'%' => {
                let literal = self.literal("a literal")?;
                self.push(Segment::Literal(literal), at)
            }
            _ if in_variable => Err(error(at, "a literal, \"*\" or \"**\"")),
            _ => Err(error(at, "a segment (a literal, \"*\", \"**\" or \"{field}\")")),
        }
    }

    fn variable(&mut self) -> Result<(), TemplateError> {
        self.pos += 1; // '{'
        let name_at = self.pos;
        let mut field_path = vec![self.ident()?];
        while self.peek() == Some(b'.') {
            self.pos += 1;
            field_path.push(self.ident()?);
        }
        if self.variables.iter().any(|v| v.field_path == field_path) {
            return Err(error(name_at, "a field not already bound by this template"));
        }
        let start = self.segments.len();
        if self.peek() == Some(b'=') {
            self.pos += 1;
            self.segments(true)?;
        } else {
            self.push(Segment::Single, name_at)?;
        }
        self.expect(b'}', "\"}\"")?;
        let end = (!self.multi).then_some(self.segments.len());
        self.variables.push(Variable { field_path, start, end });
        Ok(())
    }

    /// `IDENT = letter { letter | digit }`, letters including `_`.
    fn ident(&mut self) -> Result<String, TemplateError> {
        let start = self.pos;
        match self.peek() {
            Some(c) if c.is_ascii_alphabetic() || c == b'_' => self.pos += 1,
            _ => return Err(error(start, "a field name")),
        }
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_') {
            self.pos += 1;
        }
        Ok(self.src[start..self.pos].to_string())
    }

    /// Unreserved characters and `%XX` escapes, at least one; returned decoded.
    fn literal(&mut self, what: &'static str) -> Result<String, TemplateError> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if is_unreserved(c) {
                self.pos += 1;
            } else if c == b'%' {
                let bytes = self.src.as_bytes();
                let hex = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(self.pos + 1) && hex(self.pos + 2)) {
                    return Err(error(self.pos, "two hex digits after \"%\""));
                }
                self.pos += 3;
            } else {
                break;
            }
        }
        if self.pos == start {
            return Err(error(start, what));
        }
        match decode(&self.src[start..self.pos], false) {
            Ok(text) => Ok(text.into_owned()),
            Err(NotUtf8) => Err(error(start, "escapes that decode to UTF-8")),
        }
    }
}

/// RFC 3986 unreserved characters: the only ones a literal may hold unescaped.
pub(crate) fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// Percent-decoded bytes were not UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NotUtf8;

/// The offset (within `text`) of the first `%` not followed by two hex digits.
pub(crate) fn invalid_escape(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let hex = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_hexdigit);
    bytes
        .iter()
        .enumerate()
        .find(|&(i, &b)| b == b'%' && !(hex(i + 1) && hex(i + 2)))
        .map(|(i, _)| i)
}

/// Percent-decodes `text`; with `keep_slash`, `%2F` and `%2f` stay encoded
/// (the rule for multi-segment variables). A `%` without two hex digits is
/// kept as it is (callers reject those first with [`invalid_escape`]).
pub(crate) fn decode(text: &str, keep_slash: bool) -> Result<Cow<'_, str>, NotUtf8> {
    if !text.contains('%') {
        return Ok(Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = match (b, bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) => hex_value(hi).zip(hex_value(lo)),
            _ => None,
        };
        match escaped {
            Some((hi, lo)) if !(keep_slash && hi == 2 && lo == 0xF) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map(Cow::Owned).map_err(|_| NotUtf8)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Writes `text` with every byte that is not unreserved as `%XX`.
fn write_encoded(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    for &b in text.as_bytes() {
        if is_unreserved(b) {
            write!(f, "{}", char::from(b))?;
        } else {
            write!(f, "%{b:02X}")?;
        }
    }
    Ok(())
}

/// The canonical form: every variable written `{field=segments}`, literals
/// re-encoded. Parsing it gives back an equal template.
impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut open: Option<&Variable> = None;
        for (i, segment) in self.segments.iter().enumerate() {
            f.write_str("/")?;
            if let Some(variable) = self.variables.iter().find(|v| v.start == i) {
                write!(f, "{{{}=", variable.field_name())?;
                open = Some(variable);
            }
            match segment {
                Segment::Literal(text) => write_encoded(f, text)?,
                Segment::Single => f.write_str("*")?,
                Segment::Multi => f.write_str("**")?,
            }
            if let Some(variable) = open {
                let closes = match variable.end {
                    Some(end) => end == i + 1,
                    None => i + 1 == self.segments.len(),
                };
                if closes {
                    f.write_str("}")?;
                    open = None;
                }
            }
        }
        if let Some(verb) = &self.verb {
            f.write_str(":")?;
            write_encoded(f, verb)?;
        }
        Ok(())
    }
}
