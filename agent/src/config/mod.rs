//! Configuration: `/etc/pool-agent/config.toml` plus `config.d/*.toml` drop-ins.
//!
//! Three stages: each file is read into an all-optional [`fragment`], the
//! fragments are merged in name order (later wins, key by key), and the
//! result is validated once into [`Settings`]. Every error names the file,
//! the line and the key.

pub mod duration;
pub mod error;
pub mod fragment;
pub mod settings;
pub mod source;
pub mod user_data;
mod validate;

pub use error::{io_text, ConfigError};
pub use fragment::{AzureEnabled, IdleAction, KeySourceKind, RunWhen, ShareKind, UserSelection};
pub use settings::*;
pub use validate::shown_url;

use fragment::{ConfigFragment, MergeFrom};
use source::LineIndex;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    let mut files = vec![main_file.to_path_buf()];
    let (drop_ins, skipped) = drop_in_files(&drop_in_dir(main_file))?;
    files.extend(drop_ins);
    let mut merged = ConfigFragment::default();
    // Every file is read and parsed before any error is reported, so one
    // check names every mistake of every file.
    let mut errors = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => match parse_fragment(file, &text) {
                Ok(fragment) => merged.merge_from(fragment),
                Err(err) => errors.extend(err.into_each()),
            },
            Err(source) => errors.push(ConfigError::Read { file: file.clone(), source }),
        }
    }
    let mut user_data_refused = Vec::new();
    if let Some(text) = user_data.filter(|t| !t.trim().is_empty()) {
        let name = Path::new(USER_DATA_SOURCE);
        if let Some(at) = secret_looking(text) {
            let (line, key) = at.split_once(':').unwrap_or(("0", ""));
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
            match parse_fragment(name, &kept) {
                Ok(fragment) => merged.merge_from(fragment),
                Err(err) => errors.extend(err.into_each()),
            }
            files.push(name.to_path_buf());
        }
    }
    if let Some(err) = ConfigError::from_all(errors) {
        return Err(err);
    }
    let notes = std::mem::take(&mut merged.notes);
    let mut settings = validate::validate(merged, files)?;
    settings.skipped = skipped.into_iter().chain(notes).collect();
    settings.user_data_refused = user_data_refused;
    Ok(settings)
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

/// How many errors of one file are reported at most.
const MAX_ERRORS_PER_FILE: usize = 20;

/// Parses one file; on errors, all of them (up to [`MAX_ERRORS_PER_FILE`]) in
/// line order. serde stops at the first wrong value, so after each one the
/// line it named is blanked and the file parsed again; a blanked line that
/// leaves the file unparsable (a value over several lines, a table header)
/// ends the search, as what follows could be errors of the blanking's own.
fn parse_fragment(file: &Path, text: &str) -> Result<ConfigFragment, ConfigError> {
    let first = match parse_once(file, text) {
        Ok(fragment) => return Ok(fragment),
        Err(err) => err,
    };
    let mut errors = vec![first];
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
            Ok(_) => break,
            // serde does not go in line order: any line not reported yet is progress.
            Err(err @ ConfigError::Invalid { .. }) if errors.iter().all(|e| e.line() != err.line()) => errors.push(err),
            Err(_) => break,
        }
    }
    errors.sort_by_key(|e| e.line());
    Err(ConfigError::from_all(errors).unwrap_or_else(|| unreachable_no_error(file)))
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
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        load_str(Path::new("/etc/pool-agent/config.toml"), text)
    }

    fn expect_invalid(text: &str) -> (usize, String, String) {
        match parse(text) {
            Err(ConfigError::Invalid { line, key, message, .. }) => (line, key, message),
            other => panic!("expected an invalid-key error, got {other:?}"),
        }
    }

    #[test]
    fn drop_ins_sit_beside_the_main_file() {
        assert_eq!(drop_in_dir(Path::new("/etc/pool-agent/config.toml")), PathBuf::from("/etc/pool-agent/config.d"));
    }

    #[test]
    fn empty_config_gives_every_default() {
        let settings = parse("").unwrap();
        assert_eq!(settings.instance.local_user, "azureuser");
        assert!(settings.share.is_none());
        assert_eq!(settings.links.users, UserSelection::All);
        assert_eq!(settings.links.min_uid, 1000);
        assert_eq!(settings.links.link, PathBuf::from("notebooks/remote"));
        assert_eq!(settings.idle.interval, Duration::from_secs(10));
        assert_eq!(settings.idle.timeout, Duration::from_secs(1800));
        assert_eq!(settings.api.admin_group, "pool-agent-admin");
        assert_eq!(settings.azure.imds_endpoint, "http://169.254.169.254");
    }

    #[test]
    fn unknown_key_names_line_and_dotted_key() {
        let (line, key, message) = expect_invalid("[share]\nkind = \"local\"\npath = \"/srv\"\n\nbogus = 1\n");
        assert_eq!(line, 5);
        assert_eq!(key, "share.bogus");
        assert!(message.contains("unknown key `bogus`"), "{message}");
    }

    #[test]
    fn unknown_section_is_an_error() {
        let (line, key, _) = expect_invalid("[idle]\ninterval = \"10s\"\n[sahre]\n");
        assert_eq!((line, key.as_str()), (3, "sahre"));
    }

    #[test]
    fn bad_duration_names_the_key() {
        let (line, key, message) = expect_invalid("[idle]\n\ninterval = \"10x\"\n");
        assert_eq!((line, key.as_str()), (3, "idle.interval"));
        assert!(message.contains("30s, 15m, 2h, 1d"), "{message}");
    }

    #[test]
    fn bad_value_type_names_the_key() {
        let (line, key, _) = expect_invalid("[links]\nmin_uid = \"lots\"\n");
        assert_eq!((line, key.as_str()), (2, "links.min_uid"));
    }

    #[test]
    fn type_errors_and_duplicates_speak_the_config_s_words() {
        let (_, key, message) = expect_invalid("[links]\nmin_uid = \"1000\"\n");
        assert_eq!(key, "links.min_uid");
        assert_eq!(message, "expected a whole number of 0 or more, without quotes, found string \"1000\"");
        match parse("[links]\nmin_uid = 1000\nmin_uid = 1001\n") {
            Err(ConfigError::Syntax { line: 3, message, .. }) => assert!(message.contains("`min_uid`"), "{message}"),
            other => panic!("expected a duplicate key error, got {other:?}"),
        }
    }

    #[test]
    fn a_drop_in_that_changes_the_kind_drops_the_earlier_kind_s_keys_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        std::fs::write(
            &main,
            "[share]\nkind = \"azure-files\"\naccount = \"acct\"\nshare = \"notebooks\"\nprobe_interval = \"7s\"\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("config.d")).unwrap();
        std::fs::write(dir.path().join("config.d/50-nfs.toml"), "[share]\nkind = \"nfs\"\nsource = \"h:/x\"\n")
            .unwrap();
        let settings = load(&main).unwrap();
        let share = settings.share.unwrap();
        assert_eq!(share.source, ShareSource::Nfs { source: "h:/x".into(), vers: "4.1".into() });
        assert_eq!(share.probe_interval, std::time::Duration::from_secs(7), "keys of every kind are kept");
        assert_eq!(settings.skipped.len(), 1, "{:?}", settings.skipped);
        let note = &settings.skipped[0];
        assert!(note.contains("50-nfs.toml:2: share.kind = \"nfs\" replaces \"azure-files\""), "{note}");
        assert!(note.contains("config.toml:2") && note.contains("account, share are dropped"), "{note}");
        // A key of another kind in the file that sets the kind is still a mistake.
        std::fs::write(
            dir.path().join("config.d/50-nfs.toml"),
            "[share]\nkind = \"nfs\"\nsource = \"h:/x\"\naccount = \"acct\"\n",
        )
        .unwrap();
        let err = load(&main).unwrap_err();
        assert_eq!((err.line(), err.key()), (Some(4), Some("share.account")));
    }

    #[test]
    fn a_drop_in_that_moves_the_key_to_key_vault_drops_the_key_file_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        std::fs::write(
            &main,
            "[share]\nkind = \"azure-files\"\naccount = \"acct\"\nshare = \"notebooks\"\nkey_file = \"/etc/k\"\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("config.d")).unwrap();
        std::fs::write(
            dir.path().join("config.d/50-vault.toml"),
            "[share]\nkey_source = \"key-vault\"\nkey_vault_secret = \"https://kv.vault.azure.net/secrets/k\"\n",
        )
        .unwrap();
        let settings = load(&main).unwrap();
        match settings.share.unwrap().source {
            ShareSource::AzureFiles { key_source, key_file, .. } => {
                assert_eq!((key_source, key_file), (KeySourceKind::KeyVault, None));
            }
            other => panic!("{other:?}"),
        }
        let note = settings.skipped.join("\n");
        assert!(
            note.contains("50-vault.toml:2: share.key_source = \"key-vault\" drops the earlier key_file"),
            "{note}"
        );
    }

    #[test]
    fn user_data_is_the_last_drop_in_and_may_name_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        std::fs::write(&main, "[idle]\ntimeout = \"30m\"\n").unwrap();
        let settings = load_with(&main, Some("[idle]\ntimeout = \"45m\"\n")).unwrap();
        assert_eq!(settings.idle.timeout, std::time::Duration::from_secs(2700));
        assert_eq!(settings.sources.last().unwrap(), Path::new(USER_DATA_SOURCE));
        assert!(load_with(&main, Some("")).unwrap().sources.len() == 1, "empty userData is no drop-in");
        for secret in
            ["[share]\npassword = \"x\"\n", "[azure]\nclient_secret = \"x\"\n", "[idle]\njupyter_token = \"x\"\n"]
        {
            let err = load_with(&main, Some(secret)).unwrap_err();
            assert_eq!(err.file(), Path::new(USER_DATA_SOURCE), "{err}");
            assert_eq!(err.line(), Some(2), "{err}");
        }
        // Paths to root-only files are not secrets.
        let paths = "[idle]\njupyter_token_file = \"/etc/pool-agent/secrets/jupyter-token\"\n";
        assert!(load_with(&main, Some(paths)).is_ok());
    }

    #[test]
    fn a_samba_source_needs_no_azure_names_and_no_account_is_a_guest_mount() {
        let settings = parse("[share]\nkind = \"azure-files\"\nsource = \"//files.corp/Team Share\"\n");
        assert!(settings.is_err(), "a source with a space is refused");
        let settings =
            parse("[share]\nkind = \"azure-files\"\nsource = \"//files.corp/TeamShare\"\naccount = \"Pool_Store\"\n")
                .unwrap();
        match settings.share.unwrap().source {
            ShareSource::AzureFiles { account, share, key_file, .. } => {
                assert_eq!((account.as_deref(), share), (Some("Pool_Store"), None));
                assert!(key_file.is_some(), "a user has a key");
            }
            other => panic!("{other:?}"),
        }
        let guest = parse("[share]\nkind = \"azure-files\"\nsource = \"//files.corp/pub\"\n").unwrap();
        match guest.share.unwrap().source {
            ShareSource::AzureFiles { account: None, key_file: None, .. } => {}
            other => panic!("{other:?}"),
        }
        let (_, key, _) =
            expect_invalid("[share]\nkind = \"azure-files\"\nsource = \"//files.corp/pub\"\nkey_file = \"/k\"\n");
        assert_eq!(key, "share.key_file");
        let (_, key, _) = expect_invalid("[share]\nkind = \"azure-files\"\nshare = \"notebooks\"\n");
        assert_eq!(key, "share.account", "without a source it is Azure Files: the account is needed");
    }

    #[test]
    fn private_mounts_are_for_azure_files_only() {
        let (_, key, message) = expect_invalid("[share]\nkind = \"nfs\"\nsource = \"h:/x\"\n[links]\nprivate = true\n");
        assert_eq!(key, "links.private");
        assert!(message.contains("azure-files"), "{message}");
        let ok = parse(
            "[share]\nkind = \"azure-files\"\naccount = \"acct\"\nshare = \"notebooks\"\n[links]\nprivate = true\n",
        );
        let links = ok.unwrap().links;
        assert!(links.private);
        assert_eq!(links.private_root, PathBuf::from("/data/notebooks-private"));
    }

    #[test]
    fn bad_kind_lists_the_choices() {
        let (line, key, message) = expect_invalid("[share]\nkind = \"smb\"\n");
        assert_eq!((line, key.as_str()), (2, "share.kind"));
        assert!(message.contains("azure-files"), "{message}");
    }

    #[test]
    fn syntax_error_names_the_line() {
        match parse("[idle]\ninterval = \n") {
            Err(ConfigError::Syntax { line, .. }) => assert_eq!(line, 2),
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn missing_required_key_points_at_the_kind() {
        let (line, key, message) = expect_invalid("# nfs share\n[share]\nkind = \"nfs\"\n");
        assert_eq!((line, key.as_str()), (3, "share.source"));
        assert!(message.contains("required"), "{message}");
    }

    #[test]
    fn key_of_another_kind_is_named() {
        let (_, key, _) = expect_invalid("[share]\nkind = \"nfs\"\nsource = \"h:/x\"\naccount = \"abc\"\n");
        assert_eq!(key, "share.account");
    }

    #[test]
    fn azure_files_defaults_the_key_file_and_suffix() {
        let settings =
            parse("[share]\nkind = \"azure-files\"\naccount = \"mystorage\"\nshare = \"notebooks\"\n").unwrap();
        let share = settings.share.unwrap();
        assert_eq!(share.mount_point, PathBuf::from("/data/notebooks"));
        match share.source {
            ShareSource::AzureFiles { key_file, endpoint_suffix, key_source, .. } => {
                assert_eq!(key_file, Some(PathBuf::from("/etc/pool-agent/secrets/storage-key")));
                assert_eq!(endpoint_suffix, "core.windows.net");
                assert_eq!(key_source, KeySourceKind::File);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn azure_names_follow_azure_rules() {
        let (_, key, _) = expect_invalid("[share]\nkind = \"azure-files\"\naccount = \"My_Storage\"\nshare = \"nb\"\n");
        assert_eq!(key, "share.account");
        let (_, key, _) =
            expect_invalid("[share]\nkind = \"azure-files\"\naccount = \"mystorage\"\nshare = \"a--b\"\n");
        assert_eq!(key, "share.share");
    }

    #[test]
    fn secrets_in_mount_options_are_refused() {
        let (line, key, message) =
            expect_invalid("[share]\nkind = \"nfs\"\nsource = \"h:/x\"\noptions = [\"password=hunter2\"]\n");
        assert_eq!((line, key.as_str()), (4, "share.options"));
        assert!(!message.contains("hunter2"), "the error must not echo the secret: {message}");
    }

    #[test]
    fn options_the_agent_sets_itself_point_at_their_key() {
        let (_, key, message) =
            expect_invalid("[share]\nkind = \"nfs\"\nsource = \"h:/x\"\noptions = [\"nfsvers=3\"]\n");
        assert_eq!(key, "share.options");
        assert!(message.contains("share.vers"), "{message}");
        let (_, _, message) = expect_invalid(
            "[share]\nkind = \"azure-files\"\naccount = \"mystorage\"\nshare = \"team\"\noptions = [\"username=x\"]\n",
        );
        assert!(message.contains("share.account"), "{message}");
    }

    #[test]
    fn a_source_mount_could_read_as_an_option_is_refused() {
        for source in ["-oremount:/x", "-o:/export", ".hidden:/x"] {
            let text = format!("[share]\nkind = \"nfs\"\nsource = \"{source}\"\n");
            assert_eq!(expect_invalid(&text).1, "share.source", "{source}");
        }
        for source in ["nfs.example:/export", "10.0.0.4:/export", "[fd00::4]:/export"] {
            let text = format!("[share]\nkind = \"nfs\"\nsource = \"{source}\"\n");
            assert!(parse(&text).is_ok(), "{source}");
        }
        let text =
            "[share]\nkind = \"azure-files\"\naccount = \"acct\"\nshare = \"notebooks\"\nsource = \"//-oremount/x\"\n";
        assert_eq!(expect_invalid(text).1, "share.source");
    }

    #[test]
    fn relative_paths_and_escapes_are_refused() {
        assert_eq!(expect_invalid("[share]\nkind = \"local\"\npath = \"srv\"\n").1, "share.path");
        assert_eq!(expect_invalid("[links]\nlink = \"../../etc\"\n").1, "links.link");
        assert_eq!(expect_invalid("[links]\ntarget = \"notebooks/shared\"\n").1, "links.target");
    }

    #[test]
    fn a_private_root_that_would_sweep_other_mounts_is_refused() {
        let share = "[share]\nkind = \"local\"\npath = \"/srv/share\"\nmount_point = \"/data/notebooks\"\n";
        for (root, why) in [
            ("/", "system directory"),
            ("/home", "system directory"),
            ("/usr/local", "system directory"),
            ("/data", "holds share.mount_point"),
            ("/data/notebooks", "holds share.mount_point"),
            ("/data/notebooks/private", "inside share.mount_point"),
        ] {
            let (line, key, message) = expect_invalid(&format!("{share}[links]\nprivate_root = \"{root}\"\n"));
            assert_eq!((line, key.as_str()), (6, "links.private_root"), "{root}: {message}");
            assert!(message.contains(why), "{root}: {message}");
        }
        parse(&format!("{share}[links]\nprivate_root = \"/data/notebooks-private\"\n")).unwrap();
    }

    #[test]
    fn users_is_all_or_a_list() {
        assert_eq!(
            parse("[links]\nusers = [\"alice\", \"bob\"]\n").unwrap().links.users,
            UserSelection::Named(vec!["alice".into(), "bob".into()])
        );
        assert_eq!(expect_invalid("[links]\nusers = \"everyone\"\n").1, "links.users");
        assert_eq!(expect_invalid("[links]\nusers = [\"Bad Name\"]\n").1, "links.users");
    }

    #[test]
    fn scripts_get_defaults_and_unique_names() {
        let settings = parse(
            "[instance]\nlocal_user = \"dsadmin\"\n[[setup.scripts]]\nname = \"conda\"\npath = \"/opt/conda.sh\"\n",
        )
        .unwrap();
        let script = &settings.setup.scripts[0];
        assert_eq!(script.run_as, "dsadmin");
        assert_eq!(script.when, RunWhen::Once);
        assert_eq!(script.timeout, Duration::from_secs(900));
        let (line, key, _) = expect_invalid(
            "[[setup.scripts]]\nname = \"a\"\npath = \"/a\"\n[[setup.scripts]]\nname = \"a\"\npath = \"/b\"\n",
        );
        assert_eq!((line, key.as_str()), (5, "setup.scripts[1].name"));
    }

    #[test]
    fn script_env_names_and_values_are_checked() {
        let base = "[[setup.scripts]]\nname = \"a\"\npath = \"/a\"\n";
        let settings = parse(&format!("{base}env = {{ TOKEN_FILE = \"/etc/t\" }}\nblocking = false\n")).unwrap();
        assert_eq!(settings.setup.scripts[0].env["TOKEN_FILE"], "/etc/t");
        assert!(!settings.setup.scripts[0].blocking);
        assert_eq!(expect_invalid(&format!("{base}env = {{ \"1X\" = \"v\" }}\n")).1, "setup.scripts[0].env");
        let (_, key, message) = expect_invalid(&format!("{base}env = {{ X = \"a\\nb\" }}\n"));
        assert_eq!(key, "setup.scripts[0].env");
        assert!(message.contains("control character"), "{message}");
    }

    #[test]
    fn idle_keys_have_defaults_and_bounds() {
        let settings = parse("[idle]\ninterval = \"2s\"\ntimeout = \"1m\"\nboot_grace = \"0s\"\njupyterhub_url = \"http://127.0.0.1:8000/\"\n").unwrap();
        assert_eq!(settings.idle.boot_grace, Duration::ZERO);
        assert_eq!(settings.idle.watch_ports, [22, 8000, 8888, 8787, 3389]);
        assert_eq!(settings.idle.max_hold, Duration::from_secs(86_400));
        assert_eq!(settings.idle.jupyterhub_url, "http://127.0.0.1:8000");
        assert_eq!(expect_invalid("[idle]\ntimeout = \"30s\"\n").1, "idle.timeout");
        assert_eq!(expect_invalid("[idle]\ntimeout = \"4d\"\n").1, "idle.timeout");
        assert_eq!(expect_invalid("[idle]\njupyter_urls = [\"ftp://x\"]\n").1, "idle.jupyter_urls[0]");
        let (_, key, message) = expect_invalid("[idle]\njupyter_urls = [\"http://127.0.0.1:8888/?token=s3cret\"]\n");
        assert_eq!(key, "idle.jupyter_urls[0]");
        assert!(!message.contains("s3cret"), "the token is not echoed: {message}");
        assert_eq!(
            parse("[idle]\njupyter_urls = [\"https://127.0.0.1:8000\"]\n").unwrap().idle.jupyter_urls,
            ["https://127.0.0.1:8000"]
        );
        assert_eq!(expect_invalid("[idle]\nmax_unknown = \"10m\"\n").1, "idle.max_unknown");
        assert_eq!(expect_invalid("[links]\nresync_interval = \"0s\"\n").1, "links.resync_interval");
        assert_eq!(expect_invalid("[idle]\ncpu_services = [\"rstudio\"]\n").1, "idle.cpu_services[0]");
        assert_eq!(expect_invalid("[idle]\naction = \"delete\"\n").1, "idle.action");
    }

    #[test]
    fn idle_timeout_must_cover_the_interval() {
        assert_eq!(expect_invalid("[idle]\ninterval = \"1h\"\ntimeout = \"5m\"\n").1, "idle.timeout");
    }

    #[test]
    fn drop_ins_merge_in_name_order_and_later_wins() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        std::fs::write(&main, "[share]\nkind = \"local\"\npath = \"/srv/a\"\n[idle]\ntimeout = \"1h\"\n[[setup.scripts]]\nname = \"x\"\npath = \"/x1\"\n").unwrap();
        let drop_ins = dir.path().join("config.d");
        std::fs::create_dir(&drop_ins).unwrap();
        std::fs::write(drop_ins.join("20-late.toml"), "[share]\npath = \"/srv/late\"\n").unwrap();
        std::fs::write(drop_ins.join("10-early.toml"), "[share]\npath = \"/srv/early\"\nmount_point = \"/nb\"\n[[setup.scripts]]\nname = \"x\"\npath = \"/x2\"\n[[setup.scripts]]\nname = \"y\"\npath = \"/y\"\n").unwrap();
        std::fs::write(drop_ins.join(".30-hidden.toml.swp"), "not toml at all").unwrap();
        let settings = load(&main).unwrap();
        let share = settings.share.unwrap();
        assert_eq!(share.source, ShareSource::Local { path: "/srv/late".into() });
        assert_eq!(share.mount_point, PathBuf::from("/nb"));
        assert_eq!(settings.idle.timeout, Duration::from_secs(3600));
        let scripts: Vec<_> =
            settings.setup.scripts.iter().map(|s| (s.name.as_str(), s.path.to_str().unwrap())).collect();
        assert_eq!(scripts, [("x", "/x2"), ("y", "/y")]);
        assert_eq!(settings.sources.len(), 3);
    }

    #[test]
    fn backup_and_package_files_in_config_d_are_skipped_with_a_warning_never_a_broken_config() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        std::fs::write(&main, "[share]\nkind = \"local\"\npath = \"/srv/share\"\n").unwrap();
        let drop_ins = dir.path().join("config.d");
        std::fs::create_dir(&drop_ins).unwrap();
        std::fs::write(drop_ins.join("50-idle.toml"), "[idle]\ntimeout = \"2h\"\n").unwrap();
        // What editors, dpkg and admins leave beside it; some would not even parse.
        let leftovers = [
            "50-idle.toml~",
            ".50-idle.toml.swp",
            "50-idle.toml.bak",
            "50-idle.toml.dpkg-old",
            "50-idle.toml.dpkg-new",
            "50-idle.toml.dpkg-dist",
            "60-share.toml.disabled",
            "50-share.conf",
            "README",
        ];
        for name in leftovers {
            std::fs::write(drop_ins.join(name), "[share\nbroken = ").unwrap();
        }
        let settings = load(&main).unwrap();
        assert_eq!(settings.idle.timeout, std::time::Duration::from_secs(7200), "the real drop-in is read");
        assert!(settings.share.is_some(), "the base file is in force");
        assert_eq!(settings.skipped.len(), leftovers.len(), "{:#?}", settings.skipped);
        for name in leftovers {
            assert!(settings.skipped.iter().any(|w| w.contains(name) && w.contains("not read")), "{name}");
        }
    }

    #[test]
    fn system_directories_are_no_mount_points() {
        for point in ["/", "/etc", "/usr/local/nb", "/home", "/var", "/proc/x", "/etc/"] {
            let text = format!("[share]\nkind = \"nfs\"\nsource = \"h:/x\"\nmount_point = \"{point}\"\n");
            let (_, key, message) = expect_invalid(&text);
            assert_eq!(key, "share.mount_point", "{point}");
            assert!(message.contains("system directory"), "{point}: {message}");
        }
        for point in ["/data/notebooks", "/home/shared", "/srv/team"] {
            let text = format!("[share]\nkind = \"nfs\"\nsource = \"h:/x\"\nmount_point = \"{point}\"\n");
            assert!(parse(&text).is_ok(), "{point}");
        }
    }

    #[test]
    fn secret_options_are_refused_in_any_case() {
        let (_, key, message) =
            expect_invalid("[share]\nkind = \"nfs\"\nsource = \"h:/x\"\noptions = [\"PASSWORD=x\"]\n");
        assert_eq!(key, "share.options");
        assert!(message.contains("password"), "{message}");
    }

    #[test]
    fn a_key_from_azure_needs_its_url_over_tls_and_no_key_file() {
        const SMB: &str = "[share]\nkind = \"azure-files\"\naccount = \"poolstore\"\nshare = \"notebooks\"\n";
        let vault = parse(&format!(
            "{SMB}key_source = \"key-vault\"\nkey_vault_secret = \"https://team-kv.vault.azure.net/secrets/storage-key\"\n"
        ))
        .unwrap();
        match vault.share.unwrap().source {
            ShareSource::AzureFiles { key_source, key_file, key_vault_secret, key_fetch_spread, .. } => {
                assert_eq!(key_source, KeySourceKind::KeyVault);
                assert_eq!(key_file, None, "no key file is read");
                assert_eq!(key_vault_secret.as_deref(), Some("https://team-kv.vault.azure.net/secrets/storage-key"));
                assert_eq!(key_fetch_spread, settings::DEFAULT_KEY_FETCH_SPREAD);
            }
            other => panic!("{other:?}"),
        }
        // Loopback may be plain http (tests); nothing else may.
        let local = "http://127.0.0.1:8080/secrets/k";
        assert!(parse(&format!("{SMB}key_source = \"key-vault\"\nkey_vault_secret = \"{local}\"\n")).is_ok());
        let (line, key, message) = expect_invalid(&format!(
            "{SMB}key_source = \"key-vault\"\nkey_vault_secret = \"http://team-kv.vault.azure.net/secrets/k\"\n"
        ));
        assert_eq!((line, key.as_str()), (6, "share.key_vault_secret"));
        assert!(message.contains("https://"), "{message}");
        let (_, key, message) = expect_invalid(&format!(
            "{SMB}key_source = \"key-vault\"\nkey_vault_secret = \"https://team-kv.vault.azure.net/keys/k\"\n"
        ));
        assert_eq!(key, "share.key_vault_secret");
        assert!(message.contains("/secrets/<name>"), "{message}");
        let (_, key, _) = expect_invalid(&format!("{SMB}key_source = \"key-vault\"\n"));
        assert_eq!(key, "share.key_vault_secret", "key-vault without a secret");
        // A key file beside another source would be ignored: refused, where it stands.
        let (line, key, message) =
            expect_invalid(&format!("{SMB}key_source = \"storage-account\"\nkey_file = \"/etc/k\"\n"));
        assert_eq!((line, key.as_str()), (6, "share.key_file"));
        assert!(message.contains("key_source = \"file\""), "{message}");
        let (_, key, message) = expect_invalid(&format!(
            "{SMB}key_source = \"storage-account\"\nstorage_account_id = \"/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/disks/d\"\n"
        ));
        assert_eq!(key, "share.storage_account_id");
        assert!(message.contains("storageAccounts"), "{message}");
        let account = parse(&format!(
            "{SMB}key_source = \"storage-account\"\nstorage_account_id = \"/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/other\"\n"
        ));
        assert!(account.is_ok(), "{account:?}");
        // The key comes with the VM's identity: Azure may not be switched off.
        let (line, key, _) =
            expect_invalid(&format!("{SMB}key_source = \"storage-account\"\n[azure]\nenabled = false\n"));
        assert_eq!((line, key.as_str()), (7, "azure.enabled"));
        let (line, key, message) = expect_invalid("[azure]\narm_endpoint = \"http://management.example\"\n");
        assert_eq!((line, key.as_str()), (2, "azure.arm_endpoint"));
        assert!(message.contains("https://"), "{message}");
    }

    #[test]
    fn an_error_in_a_drop_in_names_that_file() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        std::fs::write(&main, "").unwrap();
        std::fs::create_dir(dir.path().join("config.d")).unwrap();
        std::fs::write(dir.path().join("config.d/50-bad.toml"), "\n[api]\nadmin_grup = \"x\"\n").unwrap();
        let err = load(&main).unwrap_err();
        assert!(err.file().ends_with("config.d/50-bad.toml"));
        assert_eq!(err.line(), Some(3));
        assert_eq!(err.key(), Some("api.admin_grup"));
        let text = err.to_string();
        assert!(text.contains("50-bad.toml:3: api.admin_grup: unknown key"), "{text}");
    }

    #[test]
    fn shipped_example_config_is_valid_and_complete() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let settings = load_str(&path, &text).unwrap();
        // The example shows every section, so a typo in it would fail here.
        assert!(settings.share.is_some());
        assert!(!settings.setup.scripts.is_empty());
        for section in
            ["[instance]", "[share]", "[links]", "[setup]", "[[setup.scripts]]", "[idle]", "[azure]", "[api]"]
        {
            assert!(text.contains(section), "example config lacks {section}");
        }
    }

    #[test]
    fn shipped_etc_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/etc-config.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        load_str(&path, &text).unwrap();
    }

    #[test]
    fn effective_config_of_every_share_kind_loads_again() {
        for share in [
            "[share]\nkind = \"local\"\npath = \"/srv/share\"\n",
            "[share]\nkind = \"azure-files\"\naccount = \"acct\"\nshare = \"notebooks\"\noptions = [\"cache=none\"]\ndefault_options = false\n",
            "[share]\nkind = \"nfs\"\nsource = \"h:/x\"\n",
        ] {
            let settings = parse(share).unwrap();
            let rendered = render_effective_toml(&settings);
            let again = load_str(Path::new("again.toml"), &rendered).unwrap_or_else(|err| panic!("{err}\n{rendered}"));
            assert_eq!(again.share, settings.share);
        }
    }

    #[test]
    fn effective_config_round_trips() {
        let settings = parse("[share]\nkind = \"nfs\"\nsource = \"nfs.example:/export\"\n[idle]\ntimeout = \"2h\"\n[[setup.scripts]]\nname = \"a\"\npath = \"/a\"\n").unwrap();
        let rendered = render_effective_toml(&settings);
        let again = load_str(Path::new("again.toml"), &rendered).unwrap();
        assert_eq!(again.share, settings.share);
        assert_eq!(again.idle, settings.idle);
        assert_eq!(again.setup, settings.setup);
        assert_eq!(again.links, settings.links);
    }
}
