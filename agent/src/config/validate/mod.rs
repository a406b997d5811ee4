//! From the merged fragments to [`Settings`]: each section validated in a
//! file of its own, the shared checks in [`checks`], the checks across
//! sections in [`cross`]. Validation does not stop at an error: every one
//! is collected, and a wrong value's place holds its default, so one check
//! names every mistake and the system checks can run on what is valid.

mod azure;
mod checks;
mod cross;
mod idle;
mod links;
mod setup;
mod share;
mod users;

pub use checks::shown_url;

use crate::config::error::ConfigError;
use crate::config::fragment::ConfigFragment;
use crate::config::settings::*;
use azure::validate_azure;
use checks::{account_name, Found};
use idle::validate_idle;
use links::validate_links;
use setup::validate_setup;
use share::validate_share;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// Parts of the config whose values were not all valid or not all read
/// (`share`, `setup`, ...): a check against the system leaves them out
/// rather than check a default standing in a wrong value's place.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Unsure {
    sections: BTreeSet<String>,
    /// A file could not be read even in part: nothing is sure.
    pub incomplete: bool,
}

impl Unsure {
    /// Whether `section` (`share`, `setup`, ...) is to be left out.
    pub fn section(&self, section: &str) -> bool {
        self.incomplete || self.sections.contains(section)
    }

    pub(in crate::config) fn mark(&mut self, section: &str) {
        self.sections.insert(section.to_string());
    }

    pub fn is_empty(&self) -> bool {
        !self.incomplete && self.sections.is_empty()
    }

    pub fn sections(&self) -> impl Iterator<Item = &str> {
        self.sections.iter().map(String::as_str)
    }
}

/// Everything validation found.
pub(in crate::config) struct Validated {
    pub settings: Settings,
    pub errors: Vec<ConfigError>,
    /// Warnings: keys that have no effect as the rest is set.
    pub notes: Vec<String>,
    pub unsure: Unsure,
}

/// Validates as a whole, for [`crate::config::load_str`].
pub(super) fn validate(merged: ConfigFragment, sources: Vec<PathBuf>) -> Result<Settings, ConfigError> {
    let mut validated = validate_all(merged, sources, &[]);
    validated.errors.sort_by_key(|error| error.line());
    match ConfigError::from_all(validated.errors) {
        Some(error) => Err(error),
        None => Ok(Settings { skipped: validated.notes, ..validated.settings }),
    }
}

/// Validates every section. `parse_errors`: what reading the files found;
/// the sections (and script entries) they are in are marked unsure, and a
/// value error about a key that did not parse is not said twice.
pub(super) fn validate_all(merged: ConfigFragment, sources: Vec<PathBuf>, parse_errors: &[ConfigError]) -> Validated {
    let mut found = Found::default();
    let mut unsure = Unsure::default();
    let mut origins = KeyOrigins::default();
    let tainted_scripts = cross::tainted_scripts(&merged, parse_errors);
    for section in parse_errors.iter().filter_map(|e| e.key()).filter_map(section_of) {
        unsure.mark(section);
    }
    for (name, origin) in merged.section_origins() {
        origins.record_section(name, origin);
    }
    let inputs = cross::Inputs::of(&merged);
    // Each section on its own: an error in one leaves only that one unsure.
    let mut seen = 0;
    let mut grew = |found: &Found| {
        let grew = found.len() > seen;
        seen = found.len();
        grew
    };

    let mut instance = InstanceSettings {
        name: String::new(),
        local_user: DEFAULT_LOCAL_USER.to_string(),
        resource_group: String::new(),
        workspace: String::new(),
    };
    if let Some(fragment) = merged.instance {
        let fragment = fragment.value;
        instance.name = fragment.name.map(|n| n.value).unwrap_or_default();
        instance.resource_group = fragment.resource_group.map(|n| n.value).unwrap_or_default();
        instance.workspace = fragment.workspace.map(|n| n.value).unwrap_or_default();
        if let Some(user) = &fragment.local_user {
            origins.record("instance.local_user", user);
            if let Some(user) = found.ok(account_name("instance.local_user", user)) {
                instance.local_user = user;
            }
        }
    }
    if grew(&found) {
        unsure.mark("instance");
    }

    let share = merged.share.and_then(|section| validate_share(section, &mut origins, &mut found));
    if grew(&found) {
        unsure.mark("share");
    }
    // The kind as written, even when another share key is wrong, so links
    // are not told there is no share.
    let share_kind = inputs.share_kind.or(share.as_ref().map(|s| s.kind));
    let mount_point = share.as_ref().map(|s| s.mount_point.as_path());
    let links = validate_links(merged.links, share_kind.zip(mount_point), &mut found);
    if grew(&found) {
        unsure.mark("links");
    }
    let (mut setup, dir_ok) = validate_setup(merged.setup, &instance.local_user, &mut found);
    // Entries with a wrong value are left out already; so are those a parse
    // error was in. Only a wrong setup.dir leaves the whole section unsure.
    setup.scripts.retain(|script| !tainted_scripts.contains(&script.name));
    grew(&found);
    if !dir_ok {
        unsure.mark("setup");
    }
    let idle = validate_idle(merged.idle, &mut found);
    if grew(&found) {
        unsure.mark("idle");
    }
    let azure = validate_azure(merged.azure.map(|a| a.value).unwrap_or_default(), &mut found);
    if grew(&found) {
        unsure.mark("azure");
    }
    let mut api = ApiSettings { admin_group: DEFAULT_ADMIN_GROUP.to_string() };
    if let Some(group) = merged.api.and_then(|a| a.value.admin_group) {
        origins.record("api.admin_group", &group);
        if let Some(group) = found.ok(account_name("api.admin_group", &group)) {
            api.admin_group = group;
        }
    }
    if grew(&found) {
        unsure.mark("api");
    }

    let mut pool = PoolSettings::default();
    if let Some(max) = merged.pool.and_then(|p| p.value.max_sessions) {
        if max.value == 0 {
            found.push(checks::invalid(
                &max.origin,
                "pool.max_sessions",
                "must be 1 or more (leave it out for no limit)",
            ));
        } else {
            pool.max_sessions = Some(max.value);
        }
    }
    if grew(&found) {
        unsure.mark("pool");
    }

    // One error at a time within [users] (its own validator), with the rest collected.
    let users = match users::validate_users(merged.users) {
        Ok(users) => users,
        Err(error) => {
            found.push(error);
            Default::default()
        }
    };
    if grew(&found) {
        unsure.mark("users");
    }

    let settings = Settings {
        sources,
        skipped: Vec::new(),
        user_data_refused: Vec::new(),
        origins,
        stand_in: false,
        instance,
        share,
        links,
        setup,
        idle,
        azure,
        api,
        pool,
        users,
    };
    for (section, error) in cross::check(&inputs, &settings) {
        unsure.mark(section);
        found.push(error);
    }
    let notes = cross::unused(&inputs, &settings);
    // A key that did not parse is named once, by the parse error; so is a
    // key "missing" beside a misspelt one (`knd` for `kind`).
    let unparsed: BTreeSet<&str> = parse_errors.iter().filter_map(|e| e.key()).collect();
    let unparsed_tables: BTreeSet<&str> = unparsed.iter().filter_map(|k| k.rsplit_once('.')).map(|(t, _)| t).collect();
    let said_before = |error: &ConfigError| {
        let Some(key) = error.key() else { return false };
        let missing = matches!(error, ConfigError::Invalid { message, .. } if message.starts_with("required"));
        unparsed.contains(key) || (missing && key.rsplit_once('.').is_some_and(|(t, _)| unparsed_tables.contains(t)))
    };
    let errors = found.0.into_iter().filter(|e| !said_before(e)).collect();
    Validated { settings, errors, notes, unsure }
}

/// The section a dotted key is in (`idle.timeout` → `idle`); a key in a
/// script entry is the entry's business, not the section's.
fn section_of(key: &str) -> Option<&str> {
    if key.starts_with("setup.scripts") {
        return None;
    }
    let section = key.split(['.', '[']).next()?;
    ["instance", "share", "links", "setup", "idle", "azure", "api", "pool", "users"]
        .contains(&section)
        .then_some(section)
}
