//! Configuration: `/etc/pool-agent/config.toml` plus `config.d/*.toml` drop-ins.
//!
//! Three stages: each file is read into an all-optional [`fragment`], the
//! fragments are merged in name order (later wins, key by key), and the
//! result is validated once into [`Settings`]. Every error names the file,
//! the line and the key.

pub mod duration;
pub mod error;
pub mod fragment;
mod parse;
pub mod settings;
pub mod source;
pub mod user_data;
pub mod users;
mod validate;

pub use error::{io_text, ConfigError};
pub use fragment::{AzureEnabled, IdleAction, KeySourceKind, RunWhen, ShareKind, UserSelection};
pub use parse::plain_serde_message;
pub use settings::*;
pub use validate::{shown_url, Unsure};

use fragment::{ConfigFragment, MergeFrom};
use parse::parse_fragment;
use std::path::{Path, PathBuf};

/// Reads the main file and its drop-ins and returns the validated settings.
pub fn load(main_file: &Path) -> Result<Settings, ConfigError> {
    load_with(main_file, None)
}

/// The name the scale set's userData fragment goes by in errors and status.
pub const USER_DATA_SOURCE: &str = "<azure userData>";

/// Keys a fragment anyone on the VM can read must not set: they would make
/// the config lean on a secret that is not in a root-only file.
fn secret_looking(text: &str) -> Option<String> {
    let allowed = [
        "key_file",
        "key_source",
        "jupyter_token_file",
        "jupyterhub_token_file",
        "key_vault_secret",
        "key_fetch_spread",
    ];
    text.lines().enumerate().find_map(|(index, line)| {
        let key = line.split('=').next()?.trim().trim_matches('"').to_ascii_lowercase();
        let looks = ["password", "secret", "token", "key"].iter().any(|word| key.contains(word));
        (line.contains('=') && looks && !allowed.contains(&key.as_str())).then(|| format!("{}:{key}", index + 1))
    })
}

/// [`load`], plus the scale set's userData fragment as the last drop-in.
pub fn load_with(main_file: &Path, user_data: Option<&str>) -> Result<Settings, ConfigError> {
    let checked = check_with(main_file, user_data);
    match (checked.settings, ConfigError::from_all(checked.errors)) {
        (_, Some(error)) => Err(error),
        (Some(settings), None) => Ok(settings),
        (None, None) => Err(ConfigError::Read {
            file: main_file.to_path_buf(),
            source: std::io::Error::other("no settings and no error"),
        }),
    }
}

/// Everything one read of the config found (`--check-config`).
#[derive(Debug)]
pub struct Checked {
    /// The settings, with the default in each wrong value's place (for the
    /// checks against the system on the parts that are sure); `None` when
    /// the drop-in directory cannot be listed.
    pub settings: Option<Settings>,
    /// Every error of every file: file by file in the order read, line by line.
    pub errors: Vec<ConfigError>,
    /// The parts whose values are not all valid or not all read.
    pub unsure: Unsure,
}

/// Reads, merges and validates every file without stopping at an error.
pub fn check_with(main_file: &Path, user_data: Option<&str>) -> Checked {
    let mut files = vec![main_file.to_path_buf()];
    let (drop_ins, skipped) = match drop_in_files(&drop_in_dir(main_file)) {
        Ok(found) => found,
        Err(error) => return Checked { settings: None, errors: vec![error], unsure: Unsure::default() },
    };
    files.extend(drop_ins);
    let mut merged = ConfigFragment::default();
    // Every file is read and parsed, and what parsed of each merged, so one
    // check names every mistake of every file.
    let mut errors = Vec::new();
    let mut incomplete = false;
    // Whether the file was read whole, its lines in error left out.
    let read = |name: &Path, text: &str, merged: &mut ConfigFragment, errors: &mut Vec<ConfigError>| {
        let (fragment, found) = parse::parse_partial(name, text);
        errors.extend(found);
        fragment.map(|fragment| merged.merge_from(fragment)).is_some()
    };
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => incomplete |= !read(file, &text, &mut merged, &mut errors),
            Err(source) => {
                incomplete = true;
                errors.push(ConfigError::Read { file: file.clone(), source });
            }
        }
    }
    let mut user_data_refused = Vec::new();
    if let Some(text) = user_data.filter(|t| !t.trim().is_empty()) {
        let name = Path::new(USER_DATA_SOURCE);
        if let Some(at) = secret_looking(text) {
            let (line, key) = at.split_once(':').unwrap_or(("0", ""));
            incomplete = true;
            errors.push(ConfigError::Invalid {
                file: name.to_path_buf(),
                line: line.parse().unwrap_or(0),
                key: key.to_string(),
                message: "userData is readable by every process on the VM: no key that names a secret belongs there"
                    .to_string(),
            });
        } else {
            // Only what neither runs code nor widens access is applied.
            let widened = merged
                .azure
                .as_ref()
                .and_then(|a| a.value.user_data_keys.as_ref())
                .map(|k| k.value.clone())
                .unwrap_or_default();
            let (kept, refused) = match user_data::allow(text, &widened) {
                // Nothing refused: the text as written, so errors name its own lines.
                Some((_, refused)) if refused.is_empty() => (text.to_string(), refused),
                Some(filtered) => filtered,
                // Not TOML: parsed as is below, for the parse error.
                None => (text.to_string(), Vec::new()),
            };
            user_data_refused = refused.iter().map(|r| r.key.clone()).collect();
            merged.notes.extend(refused.iter().map(ToString::to_string));
            incomplete |= !read(name, &kept, &mut merged, &mut errors);
            files.push(name.to_path_buf());
        }
    }
    let notes = std::mem::take(&mut merged.notes);
    let validated = validate::validate_all(merged, files.clone(), &errors);
    errors.extend(validated.errors);
    // In the order an admin reads them: file by file, line by line.
    let rank = |error: &ConfigError| files.iter().position(|f| f == error.file()).unwrap_or(usize::MAX);
    errors.sort_by_key(|error| (rank(error), error.line()));
    let mut settings = validated.settings;
    settings.skipped = skipped.into_iter().chain(notes).chain(validated.notes).collect();
    settings.user_data_refused = user_data_refused;
    let mut unsure = validated.unsure;
    unsure.incomplete = incomplete;
    Checked { settings: Some(settings), errors, unsure }
}

/// Parses and validates one text as if it were the whole config (tests, tools).
pub fn load_str(file: &Path, text: &str) -> Result<Settings, ConfigError> {
    validate::validate(parse_fragment(file, text)?, vec![file.to_path_buf()])
}

/// The drop-in directory that belongs to a main config file:
/// `/etc/pool-agent/config.toml` → `/etc/pool-agent/config.d`.
pub fn drop_in_dir(config_file: &Path) -> PathBuf {
    config_file.parent().map(|dir| dir.join("config.d")).unwrap_or_else(|| PathBuf::from("config.d"))
}

/// `config.d/*.toml` in byte order of their names; a missing directory is no drop-ins.
/// The drop-ins, in name order, and a warning for each file that is not one.
/// Like every `.d` directory: only `*.toml` files count; an editor's backup
/// (`50-x.toml~`, `.50-x.toml.swp`), a package's (`*.dpkg-old`, `*.dpkg-new`,
/// `*.dpkg-dist`), a `*.bak`, a `*.disabled` or a README is skipped — and said
/// so, since a file skipped in silence is a config the admin thinks is in force.
fn drop_in_files(dir: &Path) -> Result<(Vec<PathBuf>, Vec<String>), ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(source) => return Err(ConfigError::DropInDir { dir: dir.to_path_buf(), source }),
    };
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConfigError::DropInDir { dir: dir.to_path_buf(), source })?;
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        let is_toml = path.extension().is_some_and(|ext| ext == "toml");
        if hidden || !is_toml {
            skipped.push(format!(
                "{}: not read (only *.toml files in config.d are; a backup or package file?)",
                path.display()
            ));
            continue;
        }
        files.push(path);
    }
    files.sort();
    skipped.sort();
    Ok((files, skipped))
}

/// The effective config as TOML, for `--check-config`. It holds no secret:
/// keys live in files the config only names.
pub fn render_effective_toml(settings: &Settings) -> String {
    let mut out = String::from("# effective pool-agent configuration, merged from:\n");
    for file in &settings.sources {
        out.push_str(&format!("#   {}\n", file.display()));
    }
    match toml::to_string_pretty(settings) {
        Ok(body) => out.push_str(&body),
        Err(err) => out.push_str(&format!("# cannot render: {err}\n")),
    }
    out
}

#[cfg(test)]
mod check_tests;
#[cfg(test)]
mod tests;
