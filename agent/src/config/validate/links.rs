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
) -> Result<LinksSettings, ConfigError> {
    let mount_point = share.map(|(_, mount_point)| mount_point);
    let share = share.map(|(kind, _)| kind);
    let links = section.map(|s| s.value).unwrap_or_default();
    let users = match links.users {
        Some(Sourced { value: UserSelection::Named(names), origin }) => {
            for name in &names {
                if !is_account_name(name) {
                    return Err(invalid(&origin, "links.users", format!("{name:?} is not a valid user name")));
                }
            }
            UserSelection::Named(names)
        }
        Some(Sourced { value, .. }) => value,
        None => UserSelection::All,
    };
    let target = or_default(&links.target, DEFAULT_TARGET);
    contained_relative_path("links.target", &target)?;
    if !target.value.contains("{user}") {
        return Err(invalid(
            &target.origin,
            "links.target",
            format!("{:?} must contain {{user}}, or every user would share one folder", target.value),
        ));
    }
    let private = match links.private.as_ref().filter(|p| p.value) {
        Some(_) if share == Some(ShareKind::AzureFiles) => true,
        Some(private) => {
            return Err(invalid(
                &private.origin,
                "links.private",
                "private mounts are for share.kind = \"azure-files\", whose one mount cannot keep users apart; NFS and local shares keep real owners and mode 0700",
            ))
        }
        None => false,
    };
    let private_root_value = or_default(&links.private_root, DEFAULT_PRIVATE_ROOT);
    let private_root = absolute_path("links.private_root", &private_root_value)?;
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
        return Err(invalid(
            &private_root_value.origin,
            "links.private_root",
            format!(
                "{} {clash}; it must be a directory of its own, such as {DEFAULT_PRIVATE_ROOT}",
                private_root.display()
            ),
        ));
    }
    let min_uid = links.min_uid.map(|m| m.value).unwrap_or(DEFAULT_MIN_UID);
    let max_uid = match links.max_uid {
        Some(max) if max.value < min_uid => {
            return Err(invalid(
                &max.origin,
                "links.max_uid",
                format!("{} is below links.min_uid ({min_uid})", max.value),
            ))
        }
        Some(max) => max.value,
        None => DEFAULT_MAX_UID,
    };
    let resync_interval = match links.resync_interval {
        // Zero would re-read the users without a pause.
        Some(given) if given.value.0 < Duration::from_secs(1) => {
            return Err(invalid(&given.origin, "links.resync_interval", "must be at least 1s"))
        }
        Some(given) => given.value.0,
        None => DEFAULT_RESYNC_INTERVAL,
    };
    Ok(LinksSettings {
        users,
        min_uid,
        max_uid,
        link: contained_relative_path("links.link", &or_default(&links.link, DEFAULT_LINK))?,
        target: target.value,
        folder_mode: octal_mode("links.folder_mode", &or_default(&links.folder_mode, DEFAULT_FOLDER_MODE))?,
        move_conflicts: links.move_conflicts.is_some_and(|m| m.value),
        private,
        private_root,
        resync_interval,
    })
}
