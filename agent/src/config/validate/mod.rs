//! From the merged fragments to [`Settings`]: each section validated in a
//! file of its own, the shared checks in [`checks`].

mod azure;
mod checks;
mod idle;
mod links;
mod setup;
mod share;
mod users;

pub use checks::shown_url;

use crate::config::error::ConfigError;
use crate::config::fragment::{AzureEnabled, ConfigFragment, KeySourceKind};
use crate::config::settings::*;
use azure::validate_azure;
use checks::{account_name, invalid};
use idle::validate_idle;
use links::validate_links;
use setup::validate_setup;
use share::validate_share;
use std::path::PathBuf;

pub(super) fn validate(merged: ConfigFragment, sources: Vec<PathBuf>) -> Result<Settings, ConfigError> {
    let mut origins = KeyOrigins::default();
    let instance = match merged.instance {
        Some(section) => {
            let section = section.value;
            InstanceSettings {
                name: section.name.map(|n| n.value).unwrap_or_default(),
                resource_group: section.resource_group.map(|n| n.value).unwrap_or_default(),
                workspace: section.workspace.map(|n| n.value).unwrap_or_default(),
                local_user: match section.local_user {
                    Some(user) => {
                        origins.record("instance.local_user", &user);
                        account_name("instance.local_user", &user)?
                    }
                    None => DEFAULT_LOCAL_USER.to_string(),
                },
            }
        }
        None => InstanceSettings {
            name: String::new(),
            local_user: DEFAULT_LOCAL_USER.to_string(),
            resource_group: String::new(),
            workspace: String::new(),
        },
    };

    let share = merged.share.map(|section| validate_share(section, &mut origins)).transpose()?;
    let links = validate_links(merged.links, share.as_ref().map(|s| (s.kind, s.mount_point.as_path())))?;
    let setup = validate_setup(merged.setup, &instance.local_user)?;
    let idle = validate_idle(merged.idle)?;

    let enabled_at = merged.azure.as_ref().and_then(|a| a.value.enabled.as_ref().map(|e| e.origin.clone()));
    let azure = validate_azure(merged.azure.map(|a| a.value).unwrap_or_default())?;
    // A key fetched with the VM's identity needs the Azure capability.
    if let (Some(ShareSource::AzureFiles { key_source, .. }), Some(enabled_at)) =
        (share.as_ref().map(|s| &s.source), enabled_at)
    {
        if *key_source != KeySourceKind::File && azure.enabled == AzureEnabled::Off {
            return Err(invalid(
                &enabled_at,
                "azure.enabled",
                format!(
                    "is false, but share.key_source = \"{}\" fetches the key from Azure with the VM's identity",
                    key_source.as_str()
                ),
            ));
        }
    }
    let api = ApiSettings {
        admin_group: match merged.api.and_then(|a| a.value.admin_group) {
            Some(group) => {
                origins.record("api.admin_group", &group);
                account_name("api.admin_group", &group)?
            }
            None => DEFAULT_ADMIN_GROUP.to_string(),
        },
    };

    let pool = PoolSettings {
        max_sessions: match merged.pool.and_then(|p| p.value.max_sessions) {
            Some(max) if max.value == 0 => {
                return Err(invalid(&max.origin, "pool.max_sessions", "must be 1 or more (leave it out for no limit)"))
            }
            Some(max) => Some(max.value),
            None => None,
        },
    };

    Ok(Settings {
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
        users: users::validate_users(merged.users)?,
    })
}
