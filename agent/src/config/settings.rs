//! The validated settings: their types and every default, named. `validate/`
//! builds them from the merged fragments, one section per file.

use super::duration;
use super::error::ConfigError;
use super::fragment::*;
use super::source::{Origin, Sourced};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
/// The longest one process writing without a pause keeps a VM awake by its writes alone.
pub const DEFAULT_WRITES_MAX: Duration = Duration::from_secs(2 * 3600);
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
pub const DEFAULT_ARM_ENDPOINT: &str = "https://management.azure.com";
pub const DEFAULT_RELEASE_AFTER: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_MAX_RELEASES_PER_HOUR: u32 = 4;
/// `share.key_fetch_spread`: 200 VMs booting at once ask listKeys about
/// 3 times a second, well under the storage provider's 800 reads in 5 minutes.
pub const DEFAULT_KEY_FETCH_SPREAD: Duration = Duration::from_secs(60);
pub const DEFAULT_METRICS_NAMESPACE: &str = "pool-agent";
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_HEALTH_LISTEN: &str = "127.0.0.1:8765";
/// The load balancer's probe arrives on the VM's own address (from
/// 168.63.129.16). The default with the real IMDS only (see `validate`).
pub const DEFAULT_READINESS_LISTEN: &str = "0.0.0.0:8766";
/// The readiness probe's one path.
pub const READINESS_PATH: &str = "/ready";
pub const DEFAULT_UNHEALTHY_AFTER: Duration = Duration::from_secs(600);
pub const DEFAULT_ADMIN_GROUP: &str = "pool-agent-admin";
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// The files read, main file first.
    #[serde(skip)]
    pub sources: Vec<PathBuf>,
    /// Files in config.d that were not read, each with why (warnings).
    #[serde(skip)]
    pub skipped: Vec<String>,
    /// Keys of the scale set's userData that were refused (warnings, also in `pool-agent azure`).
    #[serde(skip)]
    pub user_data_refused: Vec<String>,
    /// Where the keys that name things on the system (files, users, groups)
    /// were set, so a check against the system can name file and line too.
    #[serde(skip)]
    pub origins: KeyOrigins,
    /// The built-in defaults stand in for a config that did not load (and
    /// no valid one was kept): nothing that acts on the VM should run.
    #[serde(skip)]
    pub stand_in: bool,
    pub instance: InstanceSettings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share: Option<ShareSettings>,
    pub links: LinksSettings,
    pub setup: SetupSettings,
    pub idle: IdleSettings,
    pub azure: AzureSettings,
    pub api: ApiSettings,
    pub pool: PoolSettings,
    pub users: super::users::UsersSettings,
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

// One value per config: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ShareSource {
    AzureFiles {
        /// The user the key belongs to: the storage account on Azure; with
        /// `source`, optional (none: a guest mount).
        #[serde(skip_serializing_if = "Option::is_none")]
        account: Option<String>,
        /// Optional with `source`, which names the share itself.
        #[serde(skip_serializing_if = "Option::is_none")]
        share: Option<String>,
        endpoint_suffix: String,
        /// `//server/share` instead of `//<account>.file.<suffix>/<share>`.
        #[serde(skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        key_source: KeySourceKind,
        #[serde(skip_serializing_if = "Option::is_none")]
        key_file: Option<PathBuf>,
        /// `key-vault`: `https://<vault>.vault.azure.net/secrets/<name>`.
        #[serde(skip_serializing_if = "Option::is_none")]
        key_vault_secret: Option<String>,
        /// `storage-account`: the account's resource id; none: the account
        /// in the VM's own subscription and resource group.
        #[serde(skip_serializing_if = "Option::is_none")]
        storage_account_id: Option<String>,
        /// The first fetch from Azure waits a random part of this, so a pool
        /// booting at once does not ask all in the same second.
        #[serde(serialize_with = "duration::serialize")]
        key_fetch_spread: Duration,
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
    /// Copy each run's log to `Logs/<instance>/` on the share (0600 where the
    /// share keeps modes). Off: logs stay on the VM only.
    pub log_to_share: bool,
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
    /// Where a `[[setup.scripts]]` entry was written (none for a script found
    /// in `setup.dir`), for errors that name file, line and key.
    #[serde(skip)]
    pub entry: Option<ScriptEntry>,
}

#[derive(Debug, Clone)]
pub struct ScriptEntry {
    /// Its place among `[[setup.scripts]]`: `setup.scripts[index]`.
    pub index: usize,
    pub path: crate::config::source::Origin,
    pub run_as: Option<crate::config::source::Origin>,
}

/// Where a script was written says nothing of what it is: moving an entry
/// to another line or file is no change of config.
impl PartialEq for ScriptEntry {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
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
    /// `delete-self` leaves at least this many instances in the scale set.
    pub min_instances: u32,
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
    /// Users' writes under their homes and the share count (fanotify; needs CAP_SYS_ADMIN).
    pub writes: bool,
    /// One process writing without a pause of `timeout` counts this long, then no more.
    #[serde(serialize_with = "duration::serialize")]
    pub writes_max: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AzureSettings {
    #[serde(serialize_with = "serialize_enabled")]
    pub enabled: crate::config::fragment::AzureEnabled,
    pub imds_endpoint: String,
    /// A user-assigned identity's client id; empty: the system-assigned one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    /// Empty: `https://{location}.monitoring.azure.com`, from IMDS.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub monitoring_endpoint: String,
    pub metrics_namespace: String,
    /// How often the verdict is published (one bucket per interval).
    #[serde(serialize_with = "duration::serialize")]
    pub metrics_interval: Duration,
    /// A per-instance dimension on every metric (under ~100 instances).
    pub instance_dimension: bool,
    /// `host:port` of the Application Health endpoint; empty: none.
    pub health_listen: String,
    /// `host:port` of the load balancer's readiness probe ("can this VM take
    /// a new session?"); empty: none.
    pub readiness_listen: String,
    #[serde(serialize_with = "duration::serialize")]
    pub unhealthy_after: Duration,
    /// Azure Resource Manager (`https://management.azure.com`).
    pub arm_endpoint: String,
    /// Scale-in protection follows the verdict.
    pub protect: bool,
    /// Continuous idle before protection is released.
    #[serde(serialize_with = "duration::serialize")]
    pub release_after: Duration,
    pub max_releases_per_hour: u32,
    /// Scheduled Events are watched and handled.
    pub scheduled_events: bool,
    /// Event types approved early besides Terminate and Preempt (which are drained, then approved).
    pub approve: Vec<String>,
    /// `idle.action = "delete-self"` waits a random part of this, then checks again, before deleting.
    #[serde(serialize_with = "duration::serialize")]
    pub delete_wait: Duration,
    /// Who may reach IMDS (the managed identity): root by default.
    pub imds_access: crate::config::fragment::ImdsAccess,
}

fn serialize_enabled<S: serde::Serializer>(
    enabled: &crate::config::fragment::AzureEnabled,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use crate::config::fragment::AzureEnabled;
    match enabled {
        AzureEnabled::Auto => serializer.serialize_str("auto"),
        AzureEnabled::On => serializer.serialize_bool(true),
        AzureEnabled::Off => serializer.serialize_bool(false),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiSettings {
    pub admin_group: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PoolSettings {
    /// Sessions at which the VM takes no new one (the readiness probe says no).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u32>,
}

/// Key (`share.key_file`) to where it was set; a default has no entry.
/// Also where each section was set, for errors about a default in it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyOrigins {
    keys: std::collections::BTreeMap<&'static str, Origin>,
    sections: std::collections::BTreeMap<&'static str, Origin>,
}

impl KeyOrigins {
    pub(super) fn record(&mut self, key: &'static str, value: &Sourced<String>) {
        if value.origin.line > 0 {
            self.keys.insert(key, value.origin.clone());
        }
    }

    pub(super) fn record_section(&mut self, section: &'static str, origin: &Origin) {
        self.sections.insert(section, origin.clone());
    }

    /// Whether the config sets `key` (rather than leaving it at its default).
    pub fn is_set(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// An error about `key` at the place it was set. A key left at its
    /// default has no line: the error names the file and line of its
    /// `[section]` (the last file that has one), or says no file sets the
    /// section, and how to set the key instead.
    pub fn error(&self, main_file: &Path, key: &str, message: impl Into<String>) -> ConfigError {
        if let Some(origin) = self.keys.get(key) {
            return ConfigError::at(origin, key, message);
        }
        let message = message.into();
        let section = key.split('.').next().unwrap_or(key);
        match self.sections.get(section) {
            Some(origin) => ConfigError::Invalid {
                file: origin.file.to_path_buf(),
                line: origin.line,
                key: key.to_string(),
                message: format!(
                    "{message}; {key} is not set in this [{section}], so it is the built-in default: set {key} here to change it"
                ),
            },
            None => ConfigError::Invalid {
                file: PathBuf::from(BUILT_IN_DEFAULT),
                line: 0,
                key: key.to_string(),
                message: format!(
                    "{message}; no file sets [{section}], so {key} is the built-in default: set it under [{section}] in {} or a drop-in to change it",
                    main_file.display()
                ),
            },
        }
    }
}

/// The place named by an error about a default no file touches.
pub const BUILT_IN_DEFAULT: &str = "built-in default";

fn is_true(value: &bool) -> bool {
    *value
}
