//! Reading one config file into a fragment: every error of the file (not
//! only serde's first), each with its line and dotted key, in the config's
//! words rather than Rust's types.

use super::fragment::ConfigFragment;
use super::source::{self, LineIndex};
use super::ConfigError;
use std::path::Path;
use std::sync::Arc;

/// How many errors of one file are reported at most.
const MAX_ERRORS_PER_FILE: usize = 20;

/// Parses one file; on errors, all of them (up to [`MAX_ERRORS_PER_FILE`]) in
/// line order.
pub(super) fn parse_fragment(file: &Path, text: &str) -> Result<ConfigFragment, ConfigError> {
    let (fragment, errors) = parse_partial(file, text);
    match (fragment, ConfigError::from_all(errors)) {
        (_, Some(error)) => Err(error),
        (Some(fragment), None) => Ok(fragment),
        (None, None) => Err(unreachable_no_error(file)),
    }
}

/// Parses one file: every error of it in line order, and what the file
/// says without the lines in error (`None` when that cannot be told).
/// serde stops at the first wrong value, so after each one the line it
/// named is blanked and the file parsed again; a blanked line that leaves
/// the file unparsable (a value over several lines, a table header) ends
/// the search, as what follows could be errors of the blanking's own.
pub(super) fn parse_partial(file: &Path, text: &str) -> (Option<ConfigFragment>, Vec<ConfigError>) {
    let first = match parse_once(file, text) {
        Ok(fragment) => return (Some(fragment), Vec::new()),
        Err(err) => err,
    };
    let mut errors = vec![first];
    let mut rest = None;
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    while errors.len() < MAX_ERRORS_PER_FILE {
        let last = &errors[errors.len() - 1];
        let ConfigError::Invalid { line, .. } = last else { break };
        let Some(content) = lines.get(line.wrapping_sub(1)) else { break };
        if *line == 0 || content.trim_start().starts_with('[') {
            break;
        }
        lines[line - 1] = "\n";
        match parse_once(file, &lines.concat()) {
            Ok(fragment) => {
                rest = Some(fragment);
                break;
            }
            // serde does not go in line order: any line not reported yet is progress.
            Err(err @ ConfigError::Invalid { .. }) if errors.iter().all(|e| e.line() != err.line()) => errors.push(err),
            Err(_) => break,
        }
    }
    errors.sort_by_key(|e| e.line());
    (rest, errors)
}

#[allow(clippy::panic)]
fn unreachable_no_error(file: &Path) -> ConfigError {
    panic!("no error kept for {}", file.display())
}

fn parse_once(file: &Path, text: &str) -> Result<ConfigFragment, ConfigError> {
    let index = Arc::new(LineIndex::new(file, text));
    let syntax_error = |err: &toml::de::Error| {
        let line = err.span().map(|span| index.line_of(span.start)).unwrap_or(0);
        let mut message = err.message().to_string();
        // toml says only "duplicate key"; the line says which.
        if message == "duplicate key" {
            let key = text.lines().nth(line.saturating_sub(1)).and_then(|l| l.split('=').next()).map(str::trim);
            if let Some(key) = key.filter(|k| !k.is_empty()) {
                message = format!("duplicate key `{key}`: set it once in a file (a later drop-in may set it again)");
            }
        }
        ConfigError::Syntax { file: file.to_path_buf(), line, message }
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|err| syntax_error(&err))?;
    source::with_file(index.clone(), || serde_path_to_error::deserialize(deserializer)).map_err(|err| {
        let key = dotted_key(err.path());
        let inner = err.into_inner();
        ConfigError::Invalid {
            file: file.to_path_buf(),
            line: inner.span().map(|span| index.line_of(span.start)).unwrap_or(0),
            key: if key.is_empty() { String::from("(top level)") } else { key },
            message: friendlier(inner.message()),
        }
    })
}

/// `share.options[2]`, leaving out the segments toml's span wrapper adds.
fn dotted_key(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Map { key: name } if name.starts_with("$__serde_spanned_private") => {}
            Segment::Map { key: name } | Segment::Enum { variant: name } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
            }
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Unknown => {}
        }
    }
    key
}

/// serde speaks of fields, variants and Rust types; admins write keys and values.
pub fn plain_serde_message(message: &str) -> String {
    friendlier(message)
}

fn friendlier(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((found, expected)) = message.strip_prefix(prefix).and_then(|rest| rest.split_once(", expected ")) {
            let wanted = match expected {
                "u8" => "a whole number from 0 to 255, without quotes",
                "u16" => "a whole number from 0 to 65535, without quotes",
                "u32" | "u64" | "usize" => "a whole number of 0 or more, without quotes",
                "i32" | "i64" => "a whole number, without quotes",
                "f32" | "f64" => "a number, without quotes",
                "a boolean" => "true or false, without quotes",
                "a string" => "a quoted string",
                "a sequence" => "a list, such as [\"a\", \"b\"]",
                other => other,
            };
            return format!("expected {wanted}, found {found}");
        }
    }
    for (prefix, what) in [("unknown field `", "key"), ("unknown variant `", "value")] {
        if let Some((given, rest)) = message.strip_prefix(prefix).and_then(|rest| rest.split_once('`')) {
            let choices: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
            return unknown_with_suggestion(what, given, &choices);
        }
    }
    match message.strip_prefix("missing field `") {
        Some(rest) => format!("`{}` is missing", rest.trim_end_matches('`')),
        None => message.replace("invalid digit found in string", "expected a whole number"),
    }
}

/// "unknown key `mount_pont`; did you mean `mount_point`?", or the choices
/// when none is close.
fn unknown_with_suggestion(what: &str, given: &str, choices: &[&str]) -> String {
    let closest = choices
        .iter()
        .map(|choice| (strsim::damerau_levenshtein(given, choice), *choice))
        .min()
        .filter(|(distance, choice)| *distance <= 2.max(choice.len() / 4));
    match (closest, choices) {
        (Some((_, choice)), _) => format!("unknown {what} `{given}`; did you mean `{choice}`?"),
        (None, []) => format!("unknown {what} `{given}`: this table takes no keys"),
        (None, _) => {
            let listed: Vec<String> = choices.iter().map(|c| format!("`{c}`")).collect();
            format!("unknown {what} `{given}`; expected one of {}", listed.join(", "))
        }
    }
}
