//! `[users]`: the pool's own registry of accounts, for teams without a
//! directory service. As written (every key optional) and as validated.

use super::source::Sourced;
use serde::{Deserialize, Serialize};

/// `[users]` as written in one file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFragment {
    pub manage: Option<Sourced<bool>>,
    pub trust_share: Option<Sourced<bool>>,
    /// A later file that lists accounts replaces the earlier list whole:
    /// merging two lists entry by entry would hide which file says what.
    pub accounts: Option<Sourced<Vec<Sourced<AccountFragment>>>>,
}

/// One `[[users.accounts]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountFragment {
    pub name: Sourced<String>,
    pub uid: Sourced<i64>,
    /// Default: the uid (a private group named after the user).
    pub gid: Option<Sourced<i64>>,
    pub groups: Option<Sourced<Vec<String>>>,
    pub shell: Option<Sourced<String>>,
    pub ssh_keys: Option<Sourced<Vec<String>>>,
    pub enabled: Option<Sourced<bool>>,
}

/// `[users]` validated.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsersSettings {
    /// Off by default: the agent creates nothing unless asked, and only
    /// reports what it would do.
    pub manage: bool,
    /// Accept `<share>/.pool-agent/users.toml` whoever owns it and whatever
    /// its mode (default: only a root-owned file nobody else can write).
    pub trust_share: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<UserAccount>,
}

/// One registry account: the same name and ids on every VM of the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAccount {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, by name.
    #[serde(default)]
    pub groups: Vec<String>,
    pub shell: String,
    /// `authorized_keys` lines (public keys, not secrets).
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    pub enabled: bool,
    /// Where the config gives it (`--check-config` names the line); none for
    /// the share's file.
    #[serde(skip)]
    pub origin: Option<crate::config::source::Origin>,
}

pub const DEFAULT_SHELL: &str = "/bin/bash";
/// The ids useradd gives regular users by default (Debian's login.defs
/// UID_MIN..UID_MAX): below are system accounts, above are left to
/// directory services' id ranges.
pub const MIN_ID: u32 = 1000;
pub const MAX_ID: u32 = 60000;
