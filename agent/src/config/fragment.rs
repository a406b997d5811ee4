//! One config file as written: every key optional, nothing validated yet.
//! Files are merged fragment by fragment (later wins), then validated once
//! in `settings.rs`.

use super::duration::ConfigDuration;
use super::source::Sourced;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

pub(super) type Value<T> = Option<Sourced<T>>;

/// Copies every `Some` field of `later` over `self`.
macro_rules! later_wins {
    ($self:ident, $later:ident; $($field:ident),* $(,)?) => {
        $( if $later.$field.is_some() { $self.$field = $later.$field; } )*
    };
}

/// Merges a section present in both files field by field.
fn merge_section<T: MergeFrom>(base: &mut Option<Sourced<T>>, later: Option<Sourced<T>>) {
    match (base.as_mut(), later) {
        (Some(base), Some(later)) => {
            base.value.merge_from(later.value);
            base.origin = later.origin;
        }
        (None, Some(later)) => *base = Some(later),
        (_, None) => {}
    }
}

pub trait MergeFrom {
    fn merge_from(&mut self, later: Self);
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFragment {
    pub instance: Value<InstanceFragment>,
    pub share: Value<ShareFragment>,
    pub links: Value<LinksFragment>,
    pub setup: Value<SetupFragment>,
    pub idle: Value<IdleFragment>,
    pub azure: Value<AzureFragment>,
    pub api: Value<ApiFragment>,
    pub pool: Value<PoolFragment>,
    pub users: Value<super::users::UsersFragment>,
    /// What merging changed that an admin should hear of (printed as warnings).
    #[serde(skip)]
    pub notes: Vec<String>,
}

impl ConfigFragment {
    /// Where each section present was set: the `[section]` of the last file
    /// that has one (errors about a key left at its default point there).
    pub fn section_origins(&self) -> Vec<(&'static str, &super::source::Origin)> {
        [
            ("instance", self.instance.as_ref().map(|s| &s.origin)),
            ("share", self.share.as_ref().map(|s| &s.origin)),
            ("links", self.links.as_ref().map(|s| &s.origin)),
            ("setup", self.setup.as_ref().map(|s| &s.origin)),
            ("idle", self.idle.as_ref().map(|s| &s.origin)),
            ("azure", self.azure.as_ref().map(|s| &s.origin)),
            ("api", self.api.as_ref().map(|s| &s.origin)),
            ("pool", self.pool.as_ref().map(|s| &s.origin)),
            ("users", self.users.as_ref().map(|s| &s.origin)),
        ]
        .into_iter()
        .filter_map(|(name, origin)| origin.map(|origin| (name, origin)))
        .collect()
    }
}

impl MergeFrom for ConfigFragment {
    fn merge_from(&mut self, mut later: Self) {
        merge_section(&mut self.instance, later.instance);
        if let (Some(base), Some(next)) = (self.share.as_mut(), later.share.as_mut()) {
            if let Some(note) = base.value.forget_other_kind(&next.value) {
                self.notes.push(note);
            }
            if let Some(note) = base.value.forget_other_key_source(&next.value) {
                self.notes.push(note);
            }
        }
        self.notes.append(&mut later.notes);
        merge_section(&mut self.share, later.share);
        merge_section(&mut self.links, later.links);
        merge_section(&mut self.setup, later.setup);
        merge_section(&mut self.idle, later.idle);
        merge_section(&mut self.azure, later.azure);
        merge_section(&mut self.api, later.api);
        merge_section(&mut self.pool, later.pool);
        merge_section(&mut self.users, later.users);
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceFragment {
    pub name: Value<String>,
    pub local_user: Value<String>,
    pub resource_group: Value<String>,
    pub workspace: Value<String>,
}

impl MergeFrom for InstanceFragment {
    fn merge_from(&mut self, later: Self) {
        later_wins!(self, later; name, local_user, resource_group, workspace);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShareKind {
    AzureFiles,
    Nfs,
    Local,
}

impl ShareKind {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ShareKind::AzureFiles => "azure-files",
            ShareKind::Nfs => "nfs",
            ShareKind::Local => "local",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeySourceKind {
    /// `share.key_file`, a root-only file baked or dropped on the VM.
    File,
    /// A Key Vault secret (`share.key_vault_secret`), read with the VM's identity.
    KeyVault,
    /// The storage account's own keys (ARM `listKeys`), read with the VM's identity.
    StorageAccount,
}

impl KeySourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeySourceKind::File => "file",
            KeySourceKind::KeyVault => "key-vault",
            KeySourceKind::StorageAccount => "storage-account",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareFragment {
    pub kind: Value<ShareKind>,
    pub mount_point: Value<String>,
    pub account: Value<String>,
    pub share: Value<String>,
    pub endpoint_suffix: Value<String>,
    pub key_file: Value<String>,
    pub key_source: Value<KeySourceKind>,
    pub key_vault_secret: Value<String>,
    pub storage_account_id: Value<String>,
    pub key_fetch_spread: Value<ConfigDuration>,
    pub source: Value<String>,
    pub path: Value<String>,
    pub vers: Value<String>,
    pub uid: Value<String>,
    pub gid: Value<String>,
    pub dir_mode: Value<String>,
    pub file_mode: Value<String>,
    pub options: Value<Vec<String>>,
    pub default_options: Value<bool>,
    pub probe_interval: Value<ConfigDuration>,
    pub probe_timeout: Value<ConfigDuration>,
    pub mount_timeout: Value<ConfigDuration>,
    pub allow_mnt: Value<bool>,
    pub force: Value<bool>,
    pub unmount_on_stop: Value<bool>,
}

impl ShareFragment {
    /// A later file that sets another `kind` switches the share: the keys
    /// of the earlier kind are dropped (later files win), and said so.
    fn forget_other_kind(&mut self, later: &ShareFragment) -> Option<String> {
        let (Some(kind), Some(next)) = (&self.kind, &later.kind) else { return None };
        if kind.value == next.value {
            return None;
        }
        let mut dropped = Vec::new();
        macro_rules! forget {
            ($($field:ident),*) => {
                $( if self.$field.take().is_some() { dropped.push(stringify!($field)); } )*
            };
        }
        forget!(
            account,
            share,
            endpoint_suffix,
            key_file,
            key_source,
            key_vault_secret,
            storage_account_id,
            key_fetch_spread,
            source,
            path,
            vers,
            uid,
            gid,
            dir_mode,
            file_mode,
            options,
            default_options
        );
        let note = format!(
            "{}:{}: share.kind = \"{}\" replaces \"{}\" of {}:{}",
            next.origin.file.display(),
            next.origin.line,
            next.value.as_str(),
            kind.value.as_str(),
            kind.origin.file.display(),
            kind.origin.line
        );
        Some(match dropped.is_empty() {
            true => note,
            false => format!("{note}; its keys {} are dropped", dropped.join(", ")),
        })
    }
}

impl ShareFragment {
    /// A later file that sets `key_source` (a userData fragment moving a
    /// pool to Key Vault, say) drops the earlier files' keys of the other
    /// sources, and says so; within one file they stay an error.
    fn forget_other_key_source(&mut self, later: &ShareFragment) -> Option<String> {
        let next = later.key_source.as_ref()?;
        let mut dropped = Vec::new();
        if next.value != KeySourceKind::File && self.key_file.take().is_some() {
            dropped.push("key_file");
        }
        if next.value != KeySourceKind::KeyVault && self.key_vault_secret.take().is_some() {
            dropped.push("key_vault_secret");
        }
        if next.value != KeySourceKind::StorageAccount && self.storage_account_id.take().is_some() {
            dropped.push("storage_account_id");
        }
        (!dropped.is_empty()).then(|| {
            format!(
                "{}:{}: share.key_source = \"{}\" drops the earlier {}",
                next.origin.file.display(),
                next.origin.line,
                next.value.as_str(),
                dropped.join(", ")
            )
        })
    }
}

impl MergeFrom for ShareFragment {
    fn merge_from(&mut self, later: Self) {
        later_wins!(self, later; kind, mount_point, account, share, endpoint_suffix,
            key_file, key_source, key_vault_secret, storage_account_id, key_fetch_spread, source, path, vers, uid, gid, dir_mode, file_mode, options,
            default_options, probe_interval, probe_timeout, mount_timeout, allow_mnt, force,
            unmount_on_stop);
    }
}

/// `users = "all"` or `users = ["alice", "bob"]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum UserSelection {
    #[serde(serialize_with = "serialize_all")]
    All,
    Named(Vec<String>),
}

fn serialize_all<S: serde::Serializer>(serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("all")
}

impl<'de> Deserialize<'de> for UserSelection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SelectionVisitor;
        impl<'de> Visitor<'de> for SelectionVisitor {
            type Value = UserSelection;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"all\" or a list of user names")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<UserSelection, E> {
                if text == "all" {
                    Ok(UserSelection::All)
                } else {
                    Err(E::custom(format!("expected \"all\" or a list of user names, found {text:?}")))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UserSelection, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(UserSelection::Named(names))
            }
        }
        deserializer.deserialize_any(SelectionVisitor)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinksFragment {
    pub users: Value<UserSelection>,
    pub min_uid: Value<u32>,
    pub max_uid: Value<u32>,
    pub link: Value<String>,
    pub target: Value<String>,
    pub folder_mode: Value<String>,
    pub move_conflicts: Value<bool>,
    pub private: Value<bool>,
    pub private_root: Value<String>,
    pub resync_interval: Value<ConfigDuration>,
}

impl MergeFrom for LinksFragment {
    fn merge_from(&mut self, later: Self) {
        later_wins!(self, later; users, min_uid, max_uid, link, target, folder_mode, move_conflicts, private,
            private_root, resync_interval);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunWhen {
    Once,
    EveryBoot,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupFragment {
    pub dir: Value<String>,
    pub share_wait: Value<ConfigDuration>,
    pub trust_share: Value<bool>,
    pub log_to_share: Value<bool>,
    pub scripts: Option<Vec<Sourced<ScriptFragment>>>,
}

impl MergeFrom for SetupFragment {
    /// Scripts merge by name: a later file's script replaces the one of the
    /// same name in place, new names are appended in file order.
    fn merge_from(&mut self, later: Self) {
        later_wins!(self, later; dir, share_wait, trust_share, log_to_share);
        let Some(later_scripts) = later.scripts else {
            return;
        };
        let scripts = self.scripts.get_or_insert_with(Vec::new);
        for script in later_scripts {
            let name = script.value.name.as_ref().map(|n| n.value.clone());
            let same = scripts
                .iter_mut()
                .find(|existing| name.is_some() && existing.value.name.as_ref().map(|n| &n.value) == name.as_ref());
            match same {
                Some(existing) => *existing = script,
                None => scripts.push(script),
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptFragment {
    pub name: Value<String>,
    pub path: Value<String>,
    pub run_as: Value<String>,
    pub when: Value<RunWhen>,
    pub args: Value<Vec<String>>,
    pub workdir: Value<String>,
    pub timeout: Value<ConfigDuration>,
    pub env: Value<std::collections::BTreeMap<String, String>>,
    pub blocking: Value<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdleFragment {
    pub interval: Value<ConfigDuration>,
    pub timeout: Value<ConfigDuration>,
    pub boot_grace: Value<ConfigDuration>,
    pub action: Value<IdleAction>,
    pub max_hold: Value<ConfigDuration>,
    pub watch_ports: Value<Vec<u16>>,
    pub connection_bytes_per_minute: Value<u64>,
    pub cpu_percent: Value<f64>,
    pub cpu_window: Value<ConfigDuration>,
    pub jupyter_urls: Value<Vec<String>>,
    pub jupyter_token_file: Value<String>,
    pub jupyterhub_url: Value<String>,
    pub jupyterhub_token_file: Value<String>,
    pub max_unknown: Value<ConfigDuration>,
    pub gpu_memory_grace: Value<ConfigDuration>,
    pub cpu_services: Value<Vec<String>>,
    pub min_instances: Value<u32>,
    pub writes: Value<bool>,
    pub writes_max: Value<ConfigDuration>,
}

impl MergeFrom for IdleFragment {
    fn merge_from(&mut self, later: Self) {
        later_wins!(self, later; interval, timeout, boot_grace, action, max_hold, watch_ports,
            connection_bytes_per_minute, cpu_percent, cpu_window, jupyter_urls, jupyter_token_file,
            jupyterhub_url, jupyterhub_token_file, max_unknown, gpu_memory_grace, cpu_services, min_instances,
            writes, writes_max);
    }
}

/// What the agent does with an idle verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdleAction {
    /// Shadow mode: compute and record "would have scaled in at T", nothing more.
    Report,
    /// For pools without autoscale: the VM asks its scale set to delete it
    /// (guarded: see the Azure capability).
    DeleteSelf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureFragment {
    pub enabled: Value<AzureEnabled>,
    pub imds_endpoint: Value<String>,
    pub client_id: Value<String>,
    pub monitoring_endpoint: Value<String>,
    pub metrics_namespace: Value<String>,
    pub metrics_interval: Value<ConfigDuration>,
    pub instance_dimension: Value<bool>,
    pub health_listen: Value<String>,
    pub readiness_listen: Value<String>,
    pub unhealthy_after: Value<ConfigDuration>,
    pub arm_endpoint: Value<String>,
    pub protect: Value<bool>,
    pub release_after: Value<ConfigDuration>,
    pub max_releases_per_hour: Value<u32>,
    pub scheduled_events: Value<bool>,
    pub approve: Value<Vec<String>>,
    pub delete_wait: Value<ConfigDuration>,
    pub imds_access: Value<ImdsAccess>,
    /// userData keys (`section.key`) or sections a root-owned file allows on purpose.
    pub user_data_keys: Value<Vec<String>>,
}

impl MergeFrom for AzureFragment {
    fn merge_from(&mut self, later: Self) {
        later_wins!(self, later; enabled, imds_endpoint, client_id, monitoring_endpoint, metrics_namespace,
            metrics_interval, instance_dimension, health_listen, readiness_listen, unhealthy_after, arm_endpoint, protect, release_after, max_releases_per_hour, scheduled_events, approve, delete_wait, imds_access, user_data_keys);
    }
}

/// `azure.enabled`: `"auto"` (on when IMDS answers), `true` or `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum AzureEnabled {
    Auto,
    On,
    Off,
}

impl<'de> Deserialize<'de> for AzureEnabled {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Either;
        impl Visitor<'_> for Either {
            type Value = AzureEnabled;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"auto\", true or false")
            }
            fn visit_bool<E: de::Error>(self, on: bool) -> Result<AzureEnabled, E> {
                Ok(if on { AzureEnabled::On } else { AzureEnabled::Off })
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<AzureEnabled, E> {
                match text {
                    "auto" => Ok(AzureEnabled::Auto),
                    other => Err(E::custom(format!("{other:?}: use \"auto\", true or false"))),
                }
            }
        }
        deserializer.deserialize_any(Either)
    }
}

/// `azure.imds_access`: who may reach IMDS (the VM's managed identity):
/// `"root"`, `"everyone"`, or a list of groups (root always may).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImdsAccess {
    Root,
    Everyone,
    Groups(Vec<String>),
}

impl serde::Serialize for ImdsAccess {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ImdsAccess::Root => serializer.serialize_str("root"),
            ImdsAccess::Everyone => serializer.serialize_str("everyone"),
            ImdsAccess::Groups(groups) => groups.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for ImdsAccess {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = ImdsAccess;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"root\", \"everyone\" or a list of group names")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<ImdsAccess, E> {
                match text {
                    "root" => Ok(ImdsAccess::Root),
                    "everyone" => Ok(ImdsAccess::Everyone),
                    other => Err(E::custom(format!(
                        "{other:?}: use \"root\", \"everyone\" or a list of groups such as [\"datasci\"]"
                    ))),
                }
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<ImdsAccess, A::Error> {
                let mut groups = Vec::new();
                while let Some(group) = seq.next_element::<String>()? {
                    groups.push(group);
                }
                Ok(ImdsAccess::Groups(groups))
            }
        }
        deserializer.deserialize_any(Either)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiFragment {
    pub admin_group: Value<String>,
}

impl MergeFrom for ApiFragment {
    fn merge_from(&mut self, later: Self) {
        later_wins!(self, later; admin_group);
    }
}

/// `[pool]`: what this VM offers the pool's users.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFragment {
    pub max_sessions: Value<u32>,
}

impl MergeFrom for PoolFragment {
    fn merge_from(&mut self, later: Self) {
        later_wins!(self, later; max_sessions);
    }
}

impl MergeFrom for super::users::UsersFragment {
    fn merge_from(&mut self, later: Self) {
        later_wins!(self, later; manage, trust_share, accounts);
    }
}
