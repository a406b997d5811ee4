//! `[links]`: whose homes get a link, where it points, private mounts.

use super::checks::*;
use crate::config::error::ConfigError;
use crate::config::fragment::*;
use crate::config::settings::*;
use crate::config::source::Sourced;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(super) fn validate_links(
    section: Option<Sourced<LinksFragment>>,
    share: Option<(ShareKind, &Path)>,
    found: &mut Found,
) -> LinksSettings {
    let mount_point = share.map(|(_, mount_point)| mount_point);
    let share = share.map(|(kind, _)| kind);
    let section_at = section.as_ref().map(|s| s.origin.clone());
    let links = section.map(|s| s.value).unwrap_or_default();
    let users = match links.users {
        Some(Sourced { value: UserSelection::Named(names), origin }) => {
            for name in names.iter().filter(|name| !is_account_name(name)) {
                found.push(invalid(&origin, "links.users", format!("{name:?} is not a valid user name")));
            }
            // Only valid names: a wrong one must not make a link for someone else.
            UserSelection::Named(names.into_iter().filter(|name| is_account_name(name)).collect())
        }
        Some(Sourced { value, .. }) => value,
        None => UserSelection::All,
    };
    let mut target = or_default(&links.target, DEFAULT_TARGET);
    let target_ok = found.ok(contained_relative_path("links.target", &target)).is_some();
    if target_ok && !target.value.contains("{user}") {
        found.push(invalid(
            &target.origin,
            "links.target",
            format!("{:?} must contain {{user}}, or every user would share one folder", target.value),
        ));
    }
    if !target_ok || !target.value.contains("{user}") {
        target.value = DEFAULT_TARGET.to_string();
    }
    let private = match links.private.as_ref().filter(|p| p.value) {
        Some(_) if share == Some(ShareKind::AzureFiles) => true,
        Some(private) => {
            found.push(invalid(
                &private.origin,
                "links.private",
                "private mounts are for share.kind = \"azure-files\", whose one mount cannot keep users apart; NFS and local shares keep real owners and mode 0700",
            ));
            false
        }
        None => false,
    };
    let private_root_value = or_default(&links.private_root, DEFAULT_PRIVATE_ROOT);
    let private_root =
        found.or(absolute_path("links.private_root", &private_root_value), PathBuf::from(DEFAULT_PRIVATE_ROOT));
    // The sweep unmounts what is below it: it must hold nothing but the agent's own mounts.
    let normalized_root: PathBuf = private_root.components().collect();
    let clash = if is_system_dir(&private_root) {
        Some("is a system directory".to_string())
    } else {
        mount_point.map(|m| m.components().collect::<PathBuf>()).and_then(|m| {
            if m.starts_with(&normalized_root) {
                Some(format!("holds share.mount_point ({})", m.display()))
            } else if normalized_root.starts_with(&m) {
                Some(format!("is inside share.mount_point ({})", m.display()))
            } else {
                None
            }
        })
    };
    if let Some(clash) = clash {
        // Left at its default, the error stands at [links] (or says no file sets it).
        let (origin, default) = match (&links.private_root, section_at) {
            (Some(given), _) => (given.origin.clone(), ""),
            (None, Some(section)) => (section, " (the built-in default)"),
            (None, None) => (private_root_value.origin.clone(), " (the built-in default)"),
        };
        found.push(invalid(
            &origin,
            "links.private_root",
            format!(
                "{}{default} {clash}; set links.private_root to a directory of its own, such as {}",
                private_root.display(),
                if default.is_empty() { DEFAULT_PRIVATE_ROOT } else { "/srv/notebooks-private" }
            ),
        ));
    }
    let min_uid = links.min_uid.as_ref().map(|m| m.value).unwrap_or(DEFAULT_MIN_UID);
    let max_uid = links.max_uid.as_ref().map(|m| m.value).unwrap_or(DEFAULT_MAX_UID);
    if let Some(error) = uid_range_error(links.min_uid.as_ref(), links.max_uid.as_ref()) {
        found.push(error);
    }
    let resync_interval = match links.resync_interval {
        // Zero would re-read the users without a pause.
        Some(given) if given.value.0 < Duration::from_secs(1) => {
            found.push(invalid(&given.origin, "links.resync_interval", "must be at least 1s"));
            DEFAULT_RESYNC_INTERVAL
        }
        Some(given) => given.value.0,
        None => DEFAULT_RESYNC_INTERVAL,
    };
    LinksSettings {
        users,
        min_uid,
        max_uid,
        link: found.or(
            contained_relative_path("links.link", &or_default(&links.link, DEFAULT_LINK)),
            PathBuf::from(DEFAULT_LINK),
        ),
        target: target.value,
        folder_mode: found.or(
            octal_mode("links.folder_mode", &or_default(&links.folder_mode, DEFAULT_FOLDER_MODE)),
            DEFAULT_FOLDER_MODE.to_string(),
        ),
        move_conflicts: links.move_conflicts.is_some_and(|m| m.value),
        private,
        private_root,
        resync_interval,
    }
}

/// `min_uid > max_uid` links no user at all, whichever of the two was set:
/// the error stands at the key written (at `max_uid` when both are).
pub(super) fn uid_range_error(min: Option<&Sourced<u32>>, max: Option<&Sourced<u32>>) -> Option<ConfigError> {
    let min_uid = min.map(|m| m.value).unwrap_or(DEFAULT_MIN_UID);
    let max_uid = max.map(|m| m.value).unwrap_or(DEFAULT_MAX_UID);
    if min_uid <= max_uid {
        return None;
    }
    let fix = "no user would get a link; make links.min_uid at most links.max_uid";
    let (origin, key, message) = match (min, max) {
        (Some(min), None) => (
            &min.origin,
            "links.min_uid",
            format!("{min_uid} is above links.max_uid ({max_uid}, the built-in default): {fix}"),
        ),
        (None, Some(max)) => (
            &max.origin,
            "links.max_uid",
            format!("{max_uid} is below links.min_uid ({min_uid}, the built-in default): {fix}"),
        ),
        (Some(min), Some(max)) => (
            &max.origin,
            "links.max_uid",
            format!("{max_uid} is below links.min_uid ({min_uid}, set at {}): {fix}", place(&min.origin)),
        ),
        // The defaults are in order (the build checks it, below).
        (None, None) => return None,
    };
    Some(invalid(origin, key, message))
}

const _: () = assert!(DEFAULT_MIN_UID <= DEFAULT_MAX_UID);

/// `file:line` of a value, for a message that names where another key was set.
fn place(origin: &crate::config::source::Origin) -> String {
    format!("{}:{}", origin.file.display(), origin.line)
}
