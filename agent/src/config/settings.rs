//! Validated settings: merged fragments checked once, with every default named.

use super::duration::{self, ConfigDuration};
use super::error::ConfigError;
use super::fragment::*;
use super::source::{Origin, Sourced};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LOCAL_USER: &str = "azureuser";
pub const DEFAULT_MOUNT_POINT: &str = "/data/notebooks";
pub const DEFAULT_KEY_FILE: &str = "/etc/pool-agent/secrets/storage-key";
pub const DEFAULT_ENDPOINT_SUFFIX: &str = "core.windows.net";
pub const DEFAULT_SMB_VERSION: &str = "3.1.1";
pub const DEFAULT_NFS_VERSION: &str = "4.1";
/// Owner of everything on an SMB mount (SMB has no per-file POSIX owners).
pub const DEFAULT_SHARE_UID: &str = "root";
/// Group of everything on an SMB mount: users in it may write.
pub const DEFAULT_SHARE_GID: &str = "users";
pub const DEFAULT_DIR_MODE: &str = "0775";
pub const DEFAULT_FILE_MODE: &str = "0664";
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MIN_UID: u32 = 1000;
/// Debian's UID_MAX: above it live system and special accounts (nobody is 65534).
pub const DEFAULT_MAX_UID: u32 = 60000;
pub const DEFAULT_FOLDER_MODE: &str = "0700";
pub const DEFAULT_PRIVATE_ROOT: &str = "/data/notebooks-private";
/// Catches users that only NSS knows of (sssd, LDAP), whose changes touch no file.
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_LINK: &str = "notebooks/remote";
pub const DEFAULT_TARGET: &str = "notebooks/{user}";
pub const DEFAULT_SETUP_DIR: &str = "/etc/pool-agent/setup.d";
pub const DEFAULT_SHARE_WAIT: Duration = Duration::from_secs(300);
pub const DEFAULT_SCRIPT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_IDLE_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
pub const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(3 * 86_400);
pub const DEFAULT_BOOT_GRACE: Duration = Duration::from_secs(10 * 60);
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(86_400);
/// SSH, JupyterHub, Jupyter, RStudio Server, xrdp.
pub const DEFAULT_WATCH_PORTS: [u16; 5] = [22, 8000, 8888, 8787, 3389];
pub const DEFAULT_CONNECTION_BYTES_PER_MINUTE: u64 = 16 * 1024;
pub const DEFAULT_CPU_PERCENT: f64 = 10.0;
pub const DEFAULT_CPU_WINDOW: Duration = Duration::from_secs(60);
/// A signal that cannot tell for longer than this stops keeping the VM awake.
pub const DEFAULT_MAX_UNKNOWN: Duration = Duration::from_secs(12 * 3600);
/// GPU memory held at 0% utilisation counts this long after the last utilisation.
pub const DEFAULT_GPU_MEMORY_GRACE: Duration = Duration::from_secs(3600);
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
pub const DEFAULT_ADMIN_GROUP: &str = "pool-agent-admin";

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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// The files read, main file first.
    #[serde(skip)]
    pub sources: Vec<PathBuf>,
    /// Where the keys that name things on the system (files, users, groups)
    /// were set, so a check against the system can name file and line too.
    #[serde(skip)]
    pub origins: KeyOrigins,
    pub instance: InstanceSettings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share: Option<ShareSettings>,
    pub links: LinksSettings,
    pub setup: SetupSettings,
    pub idle: IdleSettings,
    pub azure: AzureSettings,
    pub api: ApiSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceSettings {
    /// Empty: IMDS compute.name, else the hostname.
    pub name: String,
    pub local_user: String,
    /// For scripts written for Azure ML compute instances (`CI_RESOURCE_GROUP`,
    /// `CI_WORKSPACE`); empty when not set.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource_group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub workspace: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShareSettings {
    pub kind: ShareKind,
    pub mount_point: PathBuf,
    #[serde(flatten)]
    pub source: ShareSource,
    /// Extra mount options; one with the same name as a default replaces it.
    /// Left out when empty, so a local share's effective config loads again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// Whether the kind's recommended options are used (see share/spec.rs).
    #[serde(skip_serializing_if = "is_true")]
    pub default_options: bool,
    #[serde(serialize_with = "duration::serialize")]
    pub probe_interval: Duration,
    #[serde(serialize_with = "duration::serialize")]
    pub probe_timeout: Duration,
    #[serde(serialize_with = "duration::serialize")]
    pub mount_timeout: Duration,
    pub allow_mnt: bool,
    /// Mount over a non-empty mount point (hiding what is there).
    pub force: bool,
    pub unmount_on_stop: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ShareSource {
    AzureFiles {
        account: String,
        share: String,
        endpoint_suffix: String,
        /// `//server/share` instead of `//<account>.file.<suffix>/<share>`.
        #[serde(skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        key_source: KeySourceKind,
        #[serde(skip_serializing_if = "Option::is_none")]
        key_file: Option<PathBuf>,
        vers: String,
        uid: String,
        gid: String,
        dir_mode: String,
        file_mode: String,
    },
    Nfs {
        source: String,
        vers: String,
    },
    Local {
        path: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinksSettings {
    pub users: UserSelection,
    pub min_uid: u32,
    pub max_uid: u32,
    /// Under each home.
    pub link: PathBuf,
    /// Under the share root; `{user}` is the user's name.
    pub target: String,
    /// Mode of a user's folder the agent creates on the share.
    pub folder_mode: String,
    /// Move a real file or directory at the link path aside (timestamped) instead of only reporting it.
    pub move_conflicts: bool,
    /// azure-files: each user's folder mounted on its own with that user's
    /// uid/gid and 0700, under `private_root`; links point there.
    pub private: bool,
    pub private_root: PathBuf,
    #[serde(serialize_with = "duration::serialize")]
    pub resync_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SetupSettings {
    pub dir: PathBuf,
    /// How long scripts wait for a configured share before running without it.
    #[serde(serialize_with = "duration::serialize")]
    pub share_wait: Duration,
    /// Scripts stored on the share may run (as non-root users only). Off by
    /// default: every user of the pool, on every VM, and anyone with the
    /// storage key can change what is on the share.
    pub trust_share: bool,
    pub scripts: Vec<ScriptSettings>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScriptSettings {
    pub name: String,
    pub path: PathBuf,
    pub run_as: String,
    pub when: RunWhen,
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
    #[serde(serialize_with = "duration::serialize")]
    pub timeout: Duration,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// While it runs the VM is not ready; when it fails the VM is unhealthy.
    pub blocking: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdleSettings {
    #[serde(serialize_with = "duration::serialize")]
    pub interval: Duration,
    #[serde(serialize_with = "duration::serialize")]
    pub timeout: Duration,
    /// After boot the VM counts as active this long (users are still arriving).
    #[serde(serialize_with = "duration::serialize")]
    pub boot_grace: Duration,
    pub action: IdleAction,
    /// The longest keep-awake hold a user may take.
    #[serde(serialize_with = "duration::serialize")]
    pub max_hold: Duration,
    /// Inbound TCP connections to these local ports count while they carry traffic.
    pub watch_ports: Vec<u16>,
    /// Bytes a connection must receive per minute to count (keep-alives stay below).
    pub connection_bytes_per_minute: u64,
    /// User CPU above this (percent of one core, averaged over `cpu_window`) is activity.
    pub cpu_percent: f64,
    #[serde(serialize_with = "duration::serialize")]
    pub cpu_window: Duration,
    /// Single-user Jupyter servers to ask for kernels and terminals.
    pub jupyter_urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jupyter_token_file: Option<PathBuf>,
    /// A JupyterHub whose users' servers are asked, through the hub.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub jupyterhub_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jupyterhub_token_file: Option<PathBuf>,
    /// A signal unknown for longer than this no longer keeps the VM awake.
    #[serde(serialize_with = "duration::serialize")]
    pub max_unknown: Duration,
    /// GPU memory held at 0% utilisation counts this long after the last utilisation.
    #[serde(serialize_with = "duration::serialize")]
    pub gpu_memory_grace: Duration,
    /// System units whose CPU counts whatever the uid (`rstudio-server.service`).
    pub cpu_services: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AzureSettings {
    pub imds_endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiSettings {
    pub admin_group: String,
}

/// Key (`share.key_file`) to where it was set; a default has no entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyOrigins(std::collections::BTreeMap<&'static str, Origin>);

impl KeyOrigins {
    fn record(&mut self, key: &'static str, value: &Sourced<String>) {
        if value.origin.line > 0 {
            self.0.insert(key, value.origin.clone());
        }
    }

    /// Whether the config sets `key` (rather than leaving it at its default).
    pub fn is_set(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// An error about `key` at the place it was set, or at the main file
    /// (line 0) when it holds its default.
    pub fn error(&self, main_file: &Path, key: &str, message: impl Into<String>) -> ConfigError {
        match self.0.get(key) {
            Some(origin) => invalid(origin, key, message),
            None => ConfigError::Invalid {
                file: main_file.to_path_buf(),
                line: 0,
                key: key.to_string(),
                message: format!("{} (the default value)", message.into()),
            },
        }
    }
}

fn is_true(value: &bool) -> bool {
    *value
}

fn invalid(origin: &Origin, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        file: origin.file.to_path_buf(),
        line: origin.line,
        key: key.to_string(),
        message: message.into(),
    }
}

fn absolute_path(key: &str, value: &Sourced<String>) -> Result<PathBuf, ConfigError> {
    let path = Path::new(&value.value);
    if !path.is_absolute() {
        return Err(invalid(&value.origin, key, format!("{:?} must be an absolute path", value.value)));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(&value.origin, key, format!("{:?} must not contain `..`", value.value)));
    }
    Ok(path.to_path_buf())
}

/// A path under a home or the share root: relative, and unable to climb out.
fn contained_relative_path(key: &str, value: &Sourced<String>) -> Result<PathBuf, ConfigError> {
    let path = Path::new(&value.value);
    let climbs = path.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if value.value.is_empty() || climbs {
        return Err(invalid(&value.origin, key, format!("{:?} must be a relative path without `..`", value.value)));
    }
    Ok(path.to_path_buf())
}

/// POSIX-portable account names, as useradd accepts them by default.
fn is_account_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_');
    first_ok
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'))
}

fn account_name(key: &str, value: &Sourced<String>) -> Result<String, ConfigError> {
    if is_account_name(&value.value) {
        Ok(value.value.clone())
    } else {
        Err(invalid(&value.origin, key, format!("{:?} is not a valid user or group name", value.value)))
    }
}

fn required<'a, T>(
    value: &'a Option<Sourced<T>>,
    section: &Origin,
    key: &str,
    why: &str,
) -> Result<&'a Sourced<T>, ConfigError> {
    value.as_ref().ok_or_else(|| invalid(section, key, format!("required {why}")))
}

fn or_default(value: &Option<Sourced<String>>, default: &str) -> Sourced<String> {
    value
        .clone()
        .unwrap_or_else(|| Sourced { value: default.to_string(), origin: Origin::new(Path::new("<default>"), 0) })
}

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

    let azure = AzureSettings {
        imds_endpoint: match merged.azure.and_then(|a| a.value.imds_endpoint) {
            Some(endpoint) => http_endpoint("azure.imds_endpoint", &endpoint)?,
            None => DEFAULT_IMDS_ENDPOINT.to_string(),
        },
    };
    let api = ApiSettings {
        admin_group: match merged.api.and_then(|a| a.value.admin_group) {
            Some(group) => {
                origins.record("api.admin_group", &group);
                account_name("api.admin_group", &group)?
            }
            None => DEFAULT_ADMIN_GROUP.to_string(),
        },
    };

    Ok(Settings { sources, origins, instance, share, links, setup, idle, azure, api })
}

/// A DNS name, an IPv4 address or a bracketed IPv6 address; never something
/// a command line could read as an option.
fn is_host(host: &str) -> bool {
    let bracketed_v6 = host.starts_with('[')
        && host.ends_with(']')
        && host.len() > 2
        && host[1..host.len() - 1].chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
    let name = !host.is_empty()
        && !host.starts_with(['-', '.'])
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    bracketed_v6 || name
}

fn http_endpoint(key: &str, value: &Sourced<String>) -> Result<String, ConfigError> {
    let text = value.value.trim_end_matches('/');
    let rest = text.strip_prefix("http://").or_else(|| text.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => Ok(text.to_string()),
        _ => Err(invalid(&value.origin, key, format!("{:?} must be an http:// or https:// URL", value.value))),
    }
}

const SMB_VERSIONS: &[&str] = &["3", "3.0", "3.02", "3.1.1"];
const NFS_VERSIONS: &[&str] = &["3", "4", "4.0", "4.1", "4.2"];

fn one_of(key: &str, value: &Sourced<String>, allowed: &[&str]) -> Result<String, ConfigError> {
    if allowed.contains(&value.value.as_str()) {
        Ok(value.value.clone())
    } else {
        Err(invalid(&value.origin, key, format!("{:?} is not one of {}", value.value, allowed.join(", "))))
    }
}

/// A user or group for mount options: a name or a number.
fn owner(key: &str, value: &Sourced<String>) -> Result<String, ConfigError> {
    if value.value.parse::<u32>().is_ok() || is_account_name(&value.value) {
        Ok(value.value.clone())
    } else {
        Err(invalid(&value.origin, key, format!("{:?} is neither a name nor a number", value.value)))
    }
}

fn octal_mode(key: &str, value: &Sourced<String>) -> Result<String, ConfigError> {
    let digits = value.value.trim_start_matches('0');
    let ok = (3..=4).contains(&value.value.len())
        && digits.len() <= 3
        && value.value.chars().all(|c| ('0'..='7').contains(&c));
    if ok {
        Ok(format!("0{:0>3}", digits))
    } else {
        Err(invalid(&value.origin, key, format!("{:?} is not an octal mode such as \"0775\"", value.value)))
    }
}

fn duration_or(
    value: &Option<Sourced<super::duration::ConfigDuration>>,
    default: Duration,
    key: &str,
) -> Result<Duration, ConfigError> {
    match value {
        Some(given) if given.value.0.is_zero() => Err(invalid(&given.origin, key, "must be longer than 0s")),
        Some(given) => Ok(given.value.0),
        None => Ok(default),
    }
}

/// A system directory or one of the top directories that hold others: never
/// a place for the agent's mounts.
fn is_system_dir(path: &Path) -> bool {
    let normalized: PathBuf = path.components().collect();
    SYSTEM_TOP_DIRS.iter().any(|dir| normalized == Path::new(dir))
        || SYSTEM_DIRS.iter().any(|dir| normalized.starts_with(dir))
}

/// Places a share must never be mounted over: the system itself.
const SYSTEM_DIRS: &[&str] =
    &["/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin", "/sys", "/usr"];
/// Top-level directories that may hold a mount point below them, but are not one.
const SYSTEM_TOP_DIRS: &[&str] =
    &["/", "/home", "/root", "/srv", "/opt", "/tmp", "/var", "/var/lib", "/var/log", "/media"];

fn validate_share(section: Sourced<ShareFragment>, origins: &mut KeyOrigins) -> Result<ShareSettings, ConfigError> {
    let origin = section.origin;
    let share = section.value;
    let kind = required(&share.kind, &origin, "share.kind", "in [share]: \"azure-files\", \"nfs\" or \"local\"")?;

    let mount_point_value = or_default(&share.mount_point, DEFAULT_MOUNT_POINT);
    let mount_point = absolute_path("share.mount_point", &mount_point_value)?;
    origins.record("share.mount_point", &mount_point_value);
    if is_system_dir(&mount_point) {
        return Err(invalid(
            &mount_point_value.origin,
            "share.mount_point",
            format!(
                "{} is a system directory; mounting there would hide what the VM needs. Use a directory of its own such as {DEFAULT_MOUNT_POINT}",
                mount_point.display()
            ),
        ));
    }
    let allow_mnt = share.allow_mnt.as_ref().is_some_and(|a| a.value);
    if mount_point.starts_with("/mnt") && !allow_mnt {
        return Err(invalid(
            &mount_point_value.origin,
            "share.mount_point",
            format!(
                "{} is on Azure's temporary resource disk (/mnt), which is wiped on redeploy; pick another place or set share.allow_mnt = true",
                mount_point.display()
            ),
        ));
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
    if let Some((key, Some(set_at))) = foreign.iter().find(|(_, set_at)| set_at.is_some()) {
        let kind_at = format!("{}:{}", kind.origin.file.display(), kind.origin.line);
        return Err(invalid(
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
            let account = required(&share.account, &kind.origin, "share.account", "when share.kind = \"azure-files\"")?;
            if !(3..=24).contains(&account.value.len())
                || !account.value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            {
                return Err(invalid(
                    &account.origin,
                    "share.account",
                    format!("{:?} is not a storage account name (3-24 lowercase letters and digits)", account.value),
                ));
            }
            let share_name = required(&share.share, &kind.origin, "share.share", "when share.kind = \"azure-files\"")?;
            let name = &share_name.value;
            if !(3..=63).contains(&name.len())
                || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                || name.starts_with('-')
                || name.ends_with('-')
                || name.contains("--")
            {
                return Err(invalid(
                    &share_name.origin,
                    "share.share",
                    format!("{name:?} is not a file share name (3-63 lowercase letters, digits and single hyphens)"),
                ));
            }
            let key_source = share.key_source.as_ref().map(|k| k.value).unwrap_or(KeySourceKind::File);
            let key_file = match key_source {
                KeySourceKind::File => {
                    let key_file = or_default(&share.key_file, DEFAULT_KEY_FILE);
                    origins.record("share.key_file", &key_file);
                    Some(absolute_path("share.key_file", &key_file)?)
                }
                KeySourceKind::ManagedIdentity => {
                    // Not built yet: choosing it must fail the check, never look healthy.
                    let chosen = share.key_source.as_ref().map(|k| k.origin.clone()).unwrap_or(kind.origin.clone());
                    return Err(invalid(
                        &chosen,
                        "share.key_source",
                        "\"managed-identity\" is not built in this version of pool-agent; use key_source = \"file\" with share.key_file",
                    ));
                }
            };
            let endpoint_suffix = or_default(&share.endpoint_suffix, DEFAULT_ENDPOINT_SUFFIX);
            if endpoint_suffix.value.is_empty()
                || !endpoint_suffix.value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
            {
                return Err(invalid(
                    &endpoint_suffix.origin,
                    "share.endpoint_suffix",
                    "must be a DNS suffix such as core.windows.net",
                ));
            }
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
                        return Err(invalid(
                            &source.origin,
                            "share.source",
                            format!("{:?} is not //server/share", source.value),
                        ));
                    }
                    Some(source.value.clone())
                }
                None => None,
            };
            ShareSource::AzureFiles {
                account: account.value.clone(),
                share: name.clone(),
                endpoint_suffix: endpoint_suffix.value,
                source,
                key_source,
                key_file,
                vers: one_of("share.vers", &or_default(&share.vers, DEFAULT_SMB_VERSION), SMB_VERSIONS)?,
                uid: {
                    let uid = or_default(&share.uid, DEFAULT_SHARE_UID);
                    origins.record("share.uid", &uid);
                    owner("share.uid", &uid)?
                },
                gid: {
                    let gid = or_default(&share.gid, DEFAULT_SHARE_GID);
                    origins.record("share.gid", &gid);
                    owner("share.gid", &gid)?
                },
                dir_mode: octal_mode("share.dir_mode", &or_default(&share.dir_mode, DEFAULT_DIR_MODE))?,
                file_mode: octal_mode("share.file_mode", &or_default(&share.file_mode, DEFAULT_FILE_MODE))?,
            }
        }
        ShareKind::Nfs => {
            let source =
                required(&share.source, &kind.origin, "share.source", "when share.kind = \"nfs\" (host:/export)")?;
            // The host must look like a host: `-oremount:/x` would otherwise
            // reach mount(8) as an option.
            match source.value.split_once(":/") {
                Some((host, _))
                    if is_host(host) && !source.value.contains(char::is_whitespace) && !source.value.contains(',') => {}
                _ => {
                    return Err(invalid(
                        &source.origin,
                        "share.source",
                        format!("{:?} is not host:/export", source.value),
                    ));
                }
            }
            ShareSource::Nfs {
                source: source.value.clone(),
                vers: one_of("share.vers", &or_default(&share.vers, DEFAULT_NFS_VERSION), NFS_VERSIONS)?,
            }
        }
        ShareKind::Local => {
            let path = required(&share.path, &kind.origin, "share.path", "when share.kind = \"local\"")?;
            ShareSource::Local { path: absolute_path("share.path", path)? }
        }
    };

    let options = match &share.options {
        Some(options) => {
            for option in &options.value {
                // mount.cifs and mount.nfs read option names in any case.
                let name = option.split('=').next().unwrap_or_default().to_ascii_lowercase();
                let name = name.as_str();
                if option.is_empty() || option.contains(',') || option.contains(char::is_whitespace) {
                    return Err(invalid(
                        &options.origin,
                        "share.options",
                        format!("{option:?}: give one mount option per list entry"),
                    ));
                }
                if SECRET_MOUNT_OPTIONS.contains(&name) {
                    return Err(invalid(
                        &options.origin,
                        "share.options",
                        format!("`{name}=` does not belong in the config: the key is read from share.key_file"),
                    ));
                }
                if let Some((_, key)) = MANAGED_MOUNT_OPTIONS.iter().find(|(option, _)| *option == name) {
                    return Err(invalid(
                        &options.origin,
                        "share.options",
                        format!("`{name}` is set by the agent from {key}, not in options"),
                    ));
                }
            }
            options.value.clone()
        }
        None => Vec::new(),
    };

    let probe_interval = duration_or(&share.probe_interval, DEFAULT_PROBE_INTERVAL, "share.probe_interval")?;
    let probe_timeout = duration_or(&share.probe_timeout, DEFAULT_PROBE_TIMEOUT, "share.probe_timeout")?;
    let mount_timeout = duration_or(&share.mount_timeout, DEFAULT_MOUNT_TIMEOUT, "share.mount_timeout")?;
    if probe_timeout > probe_interval {
        let at =
            share.probe_timeout.as_ref().or(share.probe_interval.as_ref()).map(|v| v.origin.clone()).unwrap_or(origin);
        return Err(invalid(&at, "share.probe_timeout", "must not be longer than share.probe_interval"));
    }

    Ok(ShareSettings {
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

fn validate_links(
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

fn validate_setup(section: Option<Sourced<SetupFragment>>, local_user: &str) -> Result<SetupSettings, ConfigError> {
    let setup = section.map(|s| s.value).unwrap_or_default();
    let dir = absolute_path("setup.dir", &or_default(&setup.dir, DEFAULT_SETUP_DIR))?;
    let mut seen = HashSet::new();
    let mut scripts = Vec::new();
    for (index, script) in setup.scripts.unwrap_or_default().into_iter().enumerate() {
        let origin = script.origin;
        let script = script.value;
        let key = |field: &str| format!("setup.scripts[{index}].{field}");
        let name = required(&script.name, &origin, &key("name"), "for every [[setup.scripts]]")?;
        let name_ok = !name.value.is_empty()
            && name.value.len() <= 64
            && name.value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && !name.value.starts_with('.');
        if !name_ok {
            return Err(invalid(
                &name.origin,
                &key("name"),
                format!("{:?}: use letters, digits, '.', '_' and '-'", name.value),
            ));
        }
        if !seen.insert(name.value.clone()) {
            return Err(invalid(&name.origin, &key("name"), format!("{:?} is used by two scripts", name.value)));
        }
        let path =
            absolute_path(&key("path"), required(&script.path, &origin, &key("path"), "for every [[setup.scripts]]")?)?;
        let run_as = match &script.run_as {
            Some(user) => account_name(&key("run_as"), user)?,
            None => local_user.to_string(),
        };
        let timeout = script.timeout.as_ref().map(|t| t.value.0).unwrap_or(DEFAULT_SCRIPT_TIMEOUT);
        if timeout.is_zero() {
            return Err(invalid(&origin, &key("timeout"), "must be longer than 0s"));
        }
        let env = script.env.as_ref().map(|e| e.value.clone()).unwrap_or_default();
        let env_origin = script.env.as_ref().map(|e| e.origin.clone()).unwrap_or(origin.clone());
        if let Some(bad) = env.keys().find(|k| !env_name_ok(k)) {
            return Err(invalid(
                &env_origin,
                &key("env"),
                format!("{bad:?} is not a variable name (letters, digits, '_')"),
            ));
        }
        if let Some((name, _)) = env.iter().find(|(_, v)| v.chars().any(char::is_control)) {
            return Err(invalid(
                &env_origin,
                &key("env"),
                format!("the value of {name} holds a control character (a newline?)"),
            ));
        }
        scripts.push(ScriptSettings {
            name: name.value.clone(),
            path,
            run_as,
            when: script.when.as_ref().map(|w| w.value).unwrap_or(RunWhen::Once),
            args: script.args.as_ref().map(|a| a.value.clone()).unwrap_or_default(),
            workdir: script.workdir.as_ref().map(|w| absolute_path(&key("workdir"), w)).transpose()?,
            timeout,
            env,
            blocking: script.blocking.as_ref().is_none_or(|b| b.value),
        });
    }
    let share_wait = setup.share_wait.as_ref().map(|w| w.value.0).unwrap_or(DEFAULT_SHARE_WAIT);
    let trust_share = setup.trust_share.as_ref().is_some_and(|t| t.value);
    Ok(SetupSettings { dir, share_wait, trust_share, scripts })
}

fn env_name_ok(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn validate_idle(section: Option<Sourced<IdleFragment>>) -> Result<IdleSettings, ConfigError> {
    let idle = section.map(|s| s.value).unwrap_or_default();
    let interval = idle.interval.as_ref().map(|i| i.value.0).unwrap_or(DEFAULT_IDLE_INTERVAL);
    let timeout = idle.timeout.as_ref().map(|t| t.value.0).unwrap_or(DEFAULT_IDLE_TIMEOUT);
    if interval.is_zero() {
        if let Some(given) = &idle.interval {
            return Err(invalid(&given.origin, "idle.interval", "must be longer than 0s"));
        }
    }
    if timeout < interval {
        let origin = idle
            .timeout
            .as_ref()
            .or(idle.interval.as_ref())
            .map(|v| v.origin.clone())
            .unwrap_or_else(|| Origin::new(Path::new("<default>"), 0));
        return Err(invalid(
            &origin,
            "idle.timeout",
            format!("{} is shorter than idle.interval ({})", duration::format(timeout), duration::format(interval)),
        ));
    }
    let given_timeout = idle.timeout.as_ref();
    if let Some(given) = given_timeout {
        if !(MIN_IDLE_TIMEOUT..=MAX_IDLE_TIMEOUT).contains(&given.value.0) {
            return Err(invalid(&given.origin, "idle.timeout", "must be between 1m and 3d"));
        }
    }
    let duration_or =
        |value: &Value<ConfigDuration>, default: Duration| value.as_ref().map(|v| v.value.0).unwrap_or(default);
    let cpu_percent = idle.cpu_percent.as_ref().map(|v| v.value).unwrap_or(DEFAULT_CPU_PERCENT);
    if let Some(given) = &idle.cpu_percent {
        if !(given.value > 0.0 && given.value <= 6400.0) {
            return Err(invalid(&given.origin, "idle.cpu_percent", "must be above 0 (percent of one core)"));
        }
    }
    let cpu_window = duration_or(&idle.cpu_window, DEFAULT_CPU_WINDOW);
    if cpu_window < interval {
        let origin = idle
            .cpu_window
            .as_ref()
            .map(|v| v.origin.clone())
            .unwrap_or_else(|| Origin::new(Path::new("<default>"), 0));
        return Err(invalid(&origin, "idle.cpu_window", "must be at least idle.interval"));
    }
    let max_hold = duration_or(&idle.max_hold, DEFAULT_MAX_HOLD);
    if max_hold.is_zero() {
        if let Some(given) = &idle.max_hold {
            return Err(invalid(&given.origin, "idle.max_hold", "must be longer than 0s"));
        }
    }
    let mut jupyter_urls = Vec::new();
    if let Some(urls) = &idle.jupyter_urls {
        for (n, url) in urls.value.iter().enumerate() {
            jupyter_urls.push(http_url(&urls.origin, &format!("idle.jupyter_urls[{n}]"), url)?);
        }
    }
    let jupyterhub_url = match &idle.jupyterhub_url {
        Some(url) if !url.value.is_empty() => http_url(&url.origin, "idle.jupyterhub_url", &url.value)?,
        _ => String::new(),
    };
    let token_file = |value: &Value<String>, key: &str| value.as_ref().map(|v| absolute_path(key, v)).transpose();
    let max_unknown = duration_or(&idle.max_unknown, DEFAULT_MAX_UNKNOWN);
    if let Some(given) = &idle.max_unknown {
        if max_unknown < timeout {
            return Err(invalid(&given.origin, "idle.max_unknown", "must be at least idle.timeout"));
        }
    }
    let mut cpu_services = Vec::new();
    if let Some(units) = &idle.cpu_services {
        for (n, unit) in units.value.iter().enumerate() {
            let known = [".service", ".scope", ".slice"].iter().any(|s| unit.ends_with(s));
            if !known || unit.contains('/') || unit.chars().any(char::is_whitespace) {
                return Err(invalid(
                    &units.origin,
                    &format!("idle.cpu_services[{n}]"),
                    format!("{unit:?}: name a systemd unit, such as \"rstudio-server.service\""),
                ));
            }
            cpu_services.push(unit.clone());
        }
    }
    Ok(IdleSettings {
        interval,
        timeout,
        boot_grace: duration_or(&idle.boot_grace, DEFAULT_BOOT_GRACE),
        action: idle.action.as_ref().map(|a| a.value).unwrap_or(IdleAction::Report),
        max_hold,
        watch_ports: idle.watch_ports.as_ref().map(|p| p.value.clone()).unwrap_or_else(|| DEFAULT_WATCH_PORTS.to_vec()),
        connection_bytes_per_minute: idle
            .connection_bytes_per_minute
            .as_ref()
            .map(|v| v.value)
            .unwrap_or(DEFAULT_CONNECTION_BYTES_PER_MINUTE),
        cpu_percent,
        cpu_window,
        jupyter_urls,
        jupyter_token_file: token_file(&idle.jupyter_token_file, "idle.jupyter_token_file")?,
        jupyterhub_url,
        jupyterhub_token_file: token_file(&idle.jupyterhub_token_file, "idle.jupyterhub_token_file")?,
        max_unknown,
        gpu_memory_grace: duration_or(&idle.gpu_memory_grace, DEFAULT_GPU_MEMORY_GRACE),
        cpu_services,
    })
}

/// An `http://` or `https://host:port[/path]` URL (https on loopback accepts
/// the server's own certificate). Messages never echo a query (`?token=`).
fn http_url(origin: &Origin, key: &str, url: &str) -> Result<String, ConfigError> {
    let shown = shown_url(url);
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| invalid(origin, key, format!("{shown:?}: use http://host:port or https://host:port")))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid(origin, key, format!("{shown:?} names no host")));
    }
    if url.contains('?') {
        return Err(invalid(origin, key, format!("{shown:?}: put the token in the token file, not in the URL")));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// A URL as it may be shown: without its query (`?token=…`) or user info.
pub fn shown_url(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or("");
    let Some((scheme, rest)) = without_query.split_once("://") else { return without_query.to_string() };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}{path}")
}
