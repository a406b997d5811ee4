//! `[share]`: kind, source, mount point, options, probes.

use super::checks::*;
use crate::config::error::ConfigError;
use crate::config::fragment::*;
use crate::config::settings::*;
use crate::config::source::{Origin, Sourced};

/// Mount options that carry or point at a secret; the agent writes its own
/// credentials file, so none of these may come from the config.
const SECRET_MOUNT_OPTIONS: &[&str] = &["password", "pass", "password2", "credentials", "cred"];

/// Mount options that have keys of their own in [share].
/// Mount options the agent sets from other keys: (option, the key that sets it).
const MANAGED_MOUNT_OPTIONS: &[(&str, &str)] = &[
    ("vers", "share.vers"),
    ("nfsvers", "share.vers"),
    ("uid", "share.uid"),
    ("gid", "share.gid"),
    ("dir_mode", "share.dir_mode"),
    ("file_mode", "share.file_mode"),
    ("username", "share.account"),
    ("user", "share.account"),
];

pub(super) fn validate_share(
    section: Sourced<ShareFragment>,
    origins: &mut KeyOrigins,
    found: &mut Found,
) -> Option<ShareSettings> {
    let origin = section.origin;
    let share = section.value;
    // Without a kind nothing else of the section can be read.
    let kind =
        found.ok(required(&share.kind, &origin, "share.kind", "in [share]: \"azure-files\", \"nfs\" or \"local\""))?;

    let mount_point_value = or_default(&share.mount_point, DEFAULT_MOUNT_POINT);
    let mut mount_point =
        found.or(absolute_path("share.mount_point", &mount_point_value), std::path::PathBuf::from(DEFAULT_MOUNT_POINT));
    origins.record("share.mount_point", &mount_point_value);
    if is_system_dir(&mount_point) {
        found.push(invalid(
            &mount_point_value.origin,
            "share.mount_point",
            format!(
                "{} is a system directory; mounting there would hide what the VM needs. Use a directory of its own such as {DEFAULT_MOUNT_POINT}",
                mount_point.display()
            ),
        ));
    }
    let allow_mnt = share.allow_mnt.as_ref().is_some_and(|a| a.value);
    let on_resource_disk = mount_point.starts_with("/mnt") && !allow_mnt;
    if on_resource_disk {
        found.push(invalid(
            &mount_point_value.origin,
            "share.mount_point",
            format!(
                "{} is on Azure's temporary resource disk (/mnt), which is wiped on redeploy; pick another place or set share.allow_mnt = true",
                mount_point.display()
            ),
        ));
    }
    if is_system_dir(&mount_point) || on_resource_disk {
        // Named above; the default stands in so the checks that follow do not trip on it again.
        mount_point = std::path::PathBuf::from(DEFAULT_MOUNT_POINT);
    }

    // Keys that belong to another kind are a mistake worth naming, not ignoring.
    // Keys that belong to another kind are a mistake worth naming, not ignoring;
    // the error stands where the key was set and names where the kind was.
    fn at<T>(value: &Option<Sourced<T>>) -> Option<Origin> {
        value.as_ref().map(|v| v.origin.clone())
    }
    let smb_only = [
        ("account", at(&share.account)),
        ("share", at(&share.share)),
        ("endpoint_suffix", at(&share.endpoint_suffix)),
        ("key_file", at(&share.key_file)),
        ("key_source", at(&share.key_source)),
        ("key_vault_secret", at(&share.key_vault_secret)),
        ("storage_account_id", at(&share.storage_account_id)),
        ("key_fetch_spread", at(&share.key_fetch_spread)),
        ("uid", at(&share.uid)),
        ("gid", at(&share.gid)),
        ("dir_mode", at(&share.dir_mode)),
        ("file_mode", at(&share.file_mode)),
    ];
    let foreign: Vec<(&str, Option<Origin>)> = match kind.value {
        ShareKind::AzureFiles => vec![("path", at(&share.path))],
        ShareKind::Nfs => smb_only.iter().cloned().chain([("path", at(&share.path))]).collect(),
        ShareKind::Local => smb_only
            .iter()
            .cloned()
            .chain([
                ("source", at(&share.source)),
                ("vers", at(&share.vers)),
                ("options", at(&share.options)),
                ("default_options", at(&share.default_options)),
            ])
            .collect(),
    };
    for (key, set_at) in &foreign {
        let Some(set_at) = set_at else { continue };
        let kind_at = format!("{}:{}", kind.origin.file.display(), kind.origin.line);
        found.push(invalid(
            set_at,
            &format!("share.{key}"),
            format!(
                "not used when share.kind = \"{}\" (set at {kind_at}); remove it from this file",
                kind.value.as_str()
            ),
        ));
    }

    let source = match kind.value {
        ShareKind::AzureFiles => {
            // `source = "//server/share"`: any SMB server (Samba, Windows), whose
            // user names and share names are not Azure's; account and share
            // are then optional (no account: a guest mount, no key).
            let source = match &share.source {
                Some(source) => {
                    let rest = source.value.strip_prefix("//").unwrap_or_default();
                    let well_formed = rest.split_once('/').is_some_and(|(host, path)| {
                        is_host(host)
                            && !path.is_empty()
                            && !source.value.contains(char::is_whitespace)
                            && !source.value.contains(',')
                    });
                    if !well_formed {
                        found.push(invalid(
                            &source.origin,
                            "share.source",
                            format!("{:?} is not //server/share", source.value),
                        ));
                    }
                    well_formed.then(|| source.value.clone())
                }
                None => None,
            };
            let (account, name) = if share.source.is_some() {
                if let Some(account) = &share.account {
                    let fits = !account.value.is_empty()
                        && account.value.len() <= 64
                        && !account.value.contains(|c: char| c.is_whitespace() || c.is_control() || c == ',');
                    if !fits {
                        found.push(invalid(
                            &account.origin,
                            "share.account",
                            format!(
                                "{:?} is not a user name the server could know (no spaces or commas)",
                                account.value
                            ),
                        ));
                    }
                }
                (share.account.as_ref().map(|a| a.value.clone()), share.share.as_ref().map(|s| s.value.clone()))
            } else {
                let account = found.ok(required(
                    &share.account,
                    &kind.origin,
                    "share.account",
                    "when share.kind = \"azure-files\"",
                ));
                if let Some(account) = account.filter(|a| !is_storage_account_name(&a.value)) {
                    found.push(invalid(
                        &account.origin,
                        "share.account",
                        format!(
                            "{:?} is not a storage account name (3-24 lowercase letters and digits)",
                            account.value
                        ),
                    ));
                }
                let share_name =
                    found.ok(required(&share.share, &kind.origin, "share.share", "when share.kind = \"azure-files\""));
                if let Some(share_name) = share_name {
                    let name = &share_name.value;
                    if !(3..=63).contains(&name.len())
                        || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                        || name.starts_with('-')
                        || name.ends_with('-')
                        || name.contains("--")
                    {
                        found.push(invalid(
                            &share_name.origin,
                            "share.share",
                            format!(
                                "{name:?} is not a file share name (3-63 lowercase letters, digits and single hyphens)"
                            ),
                        ));
                    }
                }
                (account.map(|a| a.value.clone()), share_name.map(|s| s.value.clone()))
            };
            // With a source, no account is a guest mount; on Azure it is an error named above.
            if account.is_none() && share.source.is_some() {
                if let Some(key_file) = &share.key_file {
                    found.push(invalid(
                        &key_file.origin,
                        "share.key_file",
                        "needs share.account, the user the key belongs to (without one the mount is a guest's)",
                    ));
                }
            }
            let key_source = share.key_source.as_ref().map(|k| k.value).unwrap_or(KeySourceKind::File);
            // Each key source has its keys; one set for another source is a mistake.
            let belongs = [
                ("share.key_file", at(&share.key_file), KeySourceKind::File),
                ("share.key_vault_secret", at(&share.key_vault_secret), KeySourceKind::KeyVault),
                ("share.storage_account_id", at(&share.storage_account_id), KeySourceKind::StorageAccount),
            ];
            for (key, set_at, wanted) in belongs {
                if let (Some(set_at), true) = (set_at, key_source != wanted) {
                    found.push(invalid(
                        &set_at,
                        key,
                        format!(
                            "is read only with share.key_source = \"{}\" (this share's key comes from \"{}\")",
                            wanted.as_str(),
                            key_source.as_str()
                        ),
                    ));
                }
            }
            let chosen = share.key_source.as_ref().map(|k| k.origin.clone()).unwrap_or(kind.origin.clone());
            if key_source != KeySourceKind::File && account.is_none() && share.source.is_some() {
                found.push(invalid(
                    &chosen,
                    "share.key_source",
                    "needs share.account, the storage account the key belongs to",
                ));
            }
            let key_file = match key_source {
                // A guest mount reads no key.
                KeySourceKind::File if account.is_none() => None,
                KeySourceKind::File => {
                    let key_file = or_default(&share.key_file, DEFAULT_KEY_FILE);
                    origins.record("share.key_file", &key_file);
                    found.ok(absolute_path("share.key_file", &key_file))
                }
                KeySourceKind::KeyVault | KeySourceKind::StorageAccount => None,
            };
            let key_vault_secret = match (key_source, &share.key_vault_secret) {
                (KeySourceKind::KeyVault, None) => {
                    found.push(invalid(
                        &chosen,
                        "share.key_vault_secret",
                        "is needed with key_source = \"key-vault\": https://<vault>.vault.azure.net/secrets/<name>",
                    ));
                    None
                }
                (_, Some(url)) => found.ok(key_vault_secret_url(url)),
                (_, None) => None,
            };
            let storage_account_id = match &share.storage_account_id {
                Some(id) => found.ok(storage_account_resource_id(id)),
                None => None,
            };
            // listKeys without an id asks for the account of that name in the VM's resource group.
            if let (KeySourceKind::StorageAccount, None, Some(name)) = (key_source, &storage_account_id, &account) {
                if !is_storage_account_name(name) && share.source.is_some() {
                    found.push(invalid(
                        &chosen,
                        "share.storage_account_id",
                        format!("is needed: share.account {name:?} is not a storage account name to look up"),
                    ));
                }
            }
            let mut key_fetch_spread =
                share.key_fetch_spread.as_ref().map(|s| s.value.0).unwrap_or(DEFAULT_KEY_FETCH_SPREAD);
            if let Some(spread) = &share.key_fetch_spread {
                if spread.value.0 > std::time::Duration::from_secs(900) {
                    found.push(invalid(&spread.origin, "share.key_fetch_spread", "must be from 0s to 15m"));
                    key_fetch_spread = DEFAULT_KEY_FETCH_SPREAD;
                }
            }
            let mut endpoint_suffix = or_default(&share.endpoint_suffix, DEFAULT_ENDPOINT_SUFFIX);
            if endpoint_suffix.value.is_empty()
                || !endpoint_suffix.value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
            {
                found.push(invalid(
                    &endpoint_suffix.origin,
                    "share.endpoint_suffix",
                    "must be a DNS suffix such as core.windows.net",
                ));
                endpoint_suffix.value = DEFAULT_ENDPOINT_SUFFIX.to_string();
            }
            ShareSource::AzureFiles {
                account,
                share: name,
                endpoint_suffix: endpoint_suffix.value,
                source,
                key_source,
                key_file,
                key_vault_secret,
                storage_account_id,
                key_fetch_spread,
                vers: found.or(
                    one_of("share.vers", &or_default(&share.vers, DEFAULT_SMB_VERSION), SMB_VERSIONS),
                    DEFAULT_SMB_VERSION.to_string(),
                ),
                uid: {
                    let uid = or_default(&share.uid, DEFAULT_SHARE_UID);
                    origins.record("share.uid", &uid);
                    found.or(owner("share.uid", &uid), DEFAULT_SHARE_UID.to_string())
                },
                gid: {
                    let gid = or_default(&share.gid, DEFAULT_SHARE_GID);
                    origins.record("share.gid", &gid);
                    found.or(owner("share.gid", &gid), DEFAULT_SHARE_GID.to_string())
                },
                dir_mode: found.or(
                    octal_mode("share.dir_mode", &or_default(&share.dir_mode, DEFAULT_DIR_MODE)),
                    DEFAULT_DIR_MODE.to_string(),
                ),
                file_mode: found.or(
                    octal_mode("share.file_mode", &or_default(&share.file_mode, DEFAULT_FILE_MODE)),
                    DEFAULT_FILE_MODE.to_string(),
                ),
            }
        }
        ShareKind::Nfs => {
            let source = found.ok(required(
                &share.source,
                &kind.origin,
                "share.source",
                "when share.kind = \"nfs\" (host:/export)",
            ));
            // The host must look like a host: `-oremount:/x` would otherwise
            // reach mount(8) as an option.
            let source = source.and_then(|source| match source.value.split_once(":/") {
                Some((host, _))
                    if is_host(host) && !source.value.contains(char::is_whitespace) && !source.value.contains(',') =>
                {
                    Some(source.value.clone())
                }
                _ => {
                    found.push(invalid(
                        &source.origin,
                        "share.source",
                        format!("{:?} is not host:/export", source.value),
                    ));
                    None
                }
            });
            ShareSource::Nfs {
                // Empty only with an error named: the section is not used then.
                source: source.unwrap_or_default(),
                vers: found.or(
                    one_of("share.vers", &or_default(&share.vers, DEFAULT_NFS_VERSION), NFS_VERSIONS),
                    DEFAULT_NFS_VERSION.to_string(),
                ),
            }
        }
        ShareKind::Local => {
            let path = found.ok(required(&share.path, &kind.origin, "share.path", "when share.kind = \"local\""));
            // Empty only with an error named: the section is not used then.
            ShareSource::Local {
                path: path.and_then(|path| found.ok(absolute_path("share.path", path))).unwrap_or_default(),
            }
        }
    };

    let options = match &share.options {
        Some(options) => {
            let mut kept = Vec::new();
            for option in &options.value {
                // mount.cifs and mount.nfs read option names in any case.
                let name = option.split('=').next().unwrap_or_default().to_ascii_lowercase();
                let name = name.as_str();
                let wrong = if option.is_empty() || option.contains(',') || option.contains(char::is_whitespace) {
                    Some(format!("{option:?}: give one mount option per list entry"))
                } else if SECRET_MOUNT_OPTIONS.contains(&name) {
                    Some(format!("`{name}=` does not belong in the config: the key is read from share.key_file"))
                } else {
                    MANAGED_MOUNT_OPTIONS
                        .iter()
                        .find(|(option, _)| *option == name)
                        .map(|(_, key)| format!("`{name}` is set by the agent from {key}, not in options"))
                };
                match wrong {
                    Some(message) => found.push(invalid(&options.origin, "share.options", message)),
                    None => kept.push(option.clone()),
                }
            }
            kept
        }
        None => Vec::new(),
    };

    let probe_interval = found
        .or(duration_or(&share.probe_interval, DEFAULT_PROBE_INTERVAL, "share.probe_interval"), DEFAULT_PROBE_INTERVAL);
    let probe_timeout = found
        .or(duration_or(&share.probe_timeout, DEFAULT_PROBE_TIMEOUT, "share.probe_timeout"), DEFAULT_PROBE_TIMEOUT);
    let mount_timeout = found
        .or(duration_or(&share.mount_timeout, DEFAULT_MOUNT_TIMEOUT, "share.mount_timeout"), DEFAULT_MOUNT_TIMEOUT);
    if probe_timeout > probe_interval {
        let at =
            share.probe_timeout.as_ref().or(share.probe_interval.as_ref()).map(|v| v.origin.clone()).unwrap_or(origin);
        found.push(invalid(&at, "share.probe_timeout", "must not be longer than share.probe_interval"));
    }

    Some(ShareSettings {
        kind: kind.value,
        mount_point,
        source,
        options,
        default_options: share.default_options.as_ref().is_none_or(|d| d.value),
        probe_interval,
        probe_timeout,
        mount_timeout,
        allow_mnt,
        force: share.force.as_ref().is_some_and(|f| f.value),
        unmount_on_stop: share.unmount_on_stop.as_ref().is_some_and(|u| u.value),
    })
}

/// `share.key_vault_secret`: `https://<vault>.vault.azure.net/secrets/<name>`
/// (a version may follow). The bearer token travels with the request: only
/// TLS, or plain http on loopback (tests).
fn key_vault_secret_url(value: &Sourced<String>) -> Result<String, ConfigError> {
    let text = value.value.trim_end_matches('/');
    let wrong = |why: &str| invalid(&value.origin, "share.key_vault_secret", format!("{text:?} {why}"));
    let (scheme, rest) = text.split_once("://").ok_or_else(|| wrong("is not a URL"))?;
    let (host, path) = rest.split_once('/').ok_or_else(|| wrong("names no secret (…/secrets/<name>)"))?;
    match scheme {
        "https" => {}
        "http" if is_loopback_host(host) => {}
        "http" => return Err(wrong("must be https:// (http:// only on loopback)")),
        _ => return Err(wrong("is not an https:// URL")),
    }
    let parts: Vec<&str> = path.split('/').collect();
    let name_ok =
        |name: &str| (1..=127).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    match parts.as_slice() {
        ["secrets", name] | ["secrets", name, _] if name_ok(name) && !host.is_empty() => Ok(text.to_string()),
        _ => Err(wrong("is not a Key Vault secret URL: https://<vault>.vault.azure.net/secrets/<name>")),
    }
}

/// `share.storage_account_id`: the account's ARM resource id.
fn storage_account_resource_id(value: &Sourced<String>) -> Result<String, ConfigError> {
    let parts: Vec<&str> = value.value.trim_end_matches('/').split('/').collect();
    let shape_ok = match parts.as_slice() {
        ["", subscriptions, _, groups, _, providers, namespace, accounts, name] => {
            subscriptions.eq_ignore_ascii_case("subscriptions")
                && groups.eq_ignore_ascii_case("resourceGroups")
                && providers.eq_ignore_ascii_case("providers")
                && namespace.eq_ignore_ascii_case("Microsoft.Storage")
                && accounts.eq_ignore_ascii_case("storageAccounts")
                && is_storage_account_name(name)
                && parts.iter().skip(1).all(|p| !p.is_empty() && !p.contains(['?', '#', ' ']))
        }
        _ => false,
    };
    if shape_ok {
        Ok(value.value.trim_end_matches('/').to_string())
    } else {
        Err(invalid(
            &value.origin,
            "share.storage_account_id",
            format!(
                "{:?} is not a storage account's resource id (/subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.Storage/storageAccounts/<name>)",
                value.value
            ),
        ))
    }
}
