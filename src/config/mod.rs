//! Configuration: the YAML schema (`schema`), human units (`units`), loading
//! with errors that name the file, the key path and what was expected, and the
//! cross-field `validate()` pass.
//!
//! This module only reads and checks; it opens no sockets and loads no
//! descriptors. Relative paths in the file are resolved against the file's
//! directory once, here, so nothing downstream has to know where the file was.

mod schema;
mod units;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use schema::*;
pub use units::{ByteSize, Duration};

/// A configuration problem: which file, which key, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in (absent for configs built in code).
    pub file: Option<PathBuf>,
    /// Dotted key path, e.g. `upstreams.library.pool.max_streams_per_connection`; empty for the root.
    pub key: String,
    /// What was wrong, and what was expected.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: None,
            key: key.into(),
            message: message.into(),
        }
    }

    fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_path_buf());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one configuration (validation reports them all, not just the first).
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

impl Config {
    /// Reads, parses, resolves and validates a configuration file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigErrors> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("", format!("cannot read the configuration: {e}")).in_file(path))?;
        let mut config =
            Self::from_yaml(&text).map_err(|e| ConfigErrors(e.0.into_iter().map(|e| e.in_file(path)).collect()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Parses and validates YAML text. Relative paths stay as written.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigErrors> {
        let config = parse_yaml(text)?;
        let mut errors = validate::require_routes(&config);
        if let Err(more) = config.validate() {
            errors.extend(more.0);
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Resolves every relative file path against `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for source in &mut self.descriptors {
            match source {
                DescriptorSource::Set(path) => resolve(path),
                DescriptorSource::Proto { proto, include } => {
                    resolve(proto);
                    include.iter_mut().for_each(resolve);
                }
            }
        }
        if let Some(tls) = &mut self.tls {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
            if let Some(ca) = &mut tls.client_ca {
                resolve(ca);
            }
        }
        for upstream in self.upstreams.values_mut() {
            if let Some(tls) = &mut upstream.tls {
                for p in [&mut tls.ca, &mut tls.cert, &mut tls.key].into_iter().flatten() {
                    resolve(p);
                }
            }
        }
    }

    /// Checks the rules that span fields, reporting every problem found.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let errors = validate::validate(self);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// How much work aliases and merge keys (`<<: *defaults`) may add to a
/// configuration, counted in YAML events replayed from anchors. A gateway
/// file that shares a block of defaults across hundreds of upstreams stays
/// far below it; an alias bomb (anchors aliased inside anchors, each level
/// multiplying the last) hits it after a few milliseconds of work instead of
/// the parser's own general-purpose cap of a million events, which took
/// seconds to reach through `Config`'s maps.
const MAX_ALIAS_REPLAYED_EVENTS: usize = 50_000;

/// Merge keys (`<<`) in one file, replayed ones included.
const MAX_MERGE_KEYS: usize = 2_000;

/// Parser options: the default budget, with aliases and merge keys held to
/// what a configuration file needs.
fn yaml_options() -> serde_saphyr::Options {
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = MAX_ALIAS_REPLAYED_EVENTS;
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_merge_keys: MAX_MERGE_KEYS,
            // The default wants an anchor per 10 aliases once there are 100,
            // which refuses hundreds of upstreams sharing one `&defaults`. The
            // replay and merge-key caps above already bound what aliases cost.
            enforce_alias_anchor_ratio: false,
        },
        alias_limits: alias_limits,
    }
}

/// Deserializes YAML, recording the key path of the first error.
fn parse_yaml(text: &str) -> Result<Config, ConfigError> {
    let mut failed_at: Option<String> = None;
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, yaml_options(), |de| {
        serde_path_to_error::deserialize::<_, Config>(de).map_err(|e| {
            failed_at = Some(e.path().to_string());
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let key = failed_at
            .map(|p| p.trim_end_matches(".?").trim_end_matches('?').to_string())
            .filter(|p| p != ".")
            .unwrap_or_default();
        let raw = e.without_snippet().to_string();
        // The parser prefixes "error: line L column C: "; the location is kept separately.
        let message = match raw.strip_prefix("error: ") {
            Some(rest) if rest.starts_with("line ") => rest.split_once(": ").map_or(rest, |(_, m)| m).to_string(),
            _ => raw,
        };
        let mut error = ConfigError::new(key, rewrite_message(strip_location(&message)));
        if let Some(at) = e.location() {
            error
                .message
                .push_str(&format!(" (line {}, column {})", at.line(), at.column()));
        }
        error
    })
}

/// Drops the parser's " at line L, column C" suffix (the location is reported once, at the end).
fn strip_location(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(", column ") => &message[..i],
        _ => message,
    }
}

/// Rewrites serde's wording (`invalid type: string "ten", expected u32`) into
/// the gateway's (`expected a non-negative integer, got "ten"`).
fn rewrite_message(message: &str) -> String {
    if message.starts_with("alias replay limit exceeded") || message.starts_with("budget breached") {
        return format!(
            "the file is too large or expands to too much through aliases (*name) or merge keys (<<): {message}"
        );
    }
    if message == "invalid socket address syntax" {
        return "expected an address such as 0.0.0.0:8080 or [::]:8080".into();
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(body) = message.strip_prefix(prefix)
            && let Some((got, expected)) = body.split_once(", expected ")
        {
            return format!("expected {}, got {}", friendly_expected(expected), friendly_got(got));
        }
    }
    if let Some(body) = message.strip_prefix("unknown field `")
        && let Some((field, rest)) = body.split_once('`')
    {
        let known = list_after(rest, ", expected one of ");
        let mut text = String::from("unknown key");
        if let Some(best) = did_you_mean(field, known.iter().copied()) {
            text.push_str(&format!(" (did you mean \"{best}\"?)"));
        } else if !known.is_empty() {
            text.push_str(&format!(" (expected one of: {})", known.join(", ")));
        }
        return text;
    }
    if let Some(body) = message.strip_prefix("unknown variant `")
        && let Some((variant, rest)) = body.split_once('`')
    {
        let known = list_after(rest, ", expected one of ");
        let known = if known.is_empty() {
            list_after(rest, ", expected ")
        } else {
            known
        };
        return format!("expected one of {}, got \"{variant}\"", known.join(", "));
    }
    if let Some(body) = message.strip_prefix("duplicate mapping key: ") {
        let key = body.split(',').next().unwrap_or(body);
        return format!("key \"{key}\" is defined twice");
    }
    if let Some(body) = message.strip_prefix("missing field `")
        && let Some((field, _)) = body.split_once('`')
    {
        return format!("missing required key \"{field}\"");
    }
    message.to_string()
}

/// The names listed after `marker` in a serde message, with or without backticks.
fn list_after<'a>(rest: &'a str, marker: &str) -> Vec<&'a str> {
    rest.split_once(marker)
        .map(|(_, list)| {
            list.split(", ")
                .flat_map(|item| item.split(" or "))
                .map(|item| item.trim_matches('`'))
                .filter(|item| !item.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn friendly_expected(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer".into(),
        "i32" | "i64" => "an integer".into(),
        "a boolean" | "bool" => "true or false".into(),
        "a string" => "a string".into(),
        "socket address" => "an address such as 0.0.0.0:8080".into(),
        other => other.to_string(),
    }
}

fn friendly_got(got: &str) -> String {
    if let Some(s) = got.strip_prefix("string ") {
        return s.to_string();
    }
    for prefix in ["integer `", "floating point `"] {
        if let Some(s) = got.strip_prefix(prefix) {
            return s.trim_end_matches('`').to_string();
        }
    }
    got.to_string()
}

/// The closest known name to `wrong`, if it is close enough to be a typo.
pub(crate) fn did_you_mean<'a>(wrong: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (edit_distance(wrong, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let next = (row[j + 1] + 1).min(row[j] + 1).min(prev + cost);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests;
