//! What to mount: the source, the filesystem type and the options, derived
//! from the config. Pure logic, so every rule is tested without mounting.

use crate::config::{ShareSettings, ShareSource};
use crate::core::accounts::{Account, Group};
use crate::core::paths::SystemPaths;
use std::path::PathBuf;

/// Recommended for Azure Files: stable inode numbers, one TCP session per
/// mount (so one share's outage cannot stall another), 30 s attribute cache,
/// and symlinks stored as Minshall+French files since SMB has none.
pub const SMB_DEFAULT_OPTIONS: &[&str] = &["serverino", "nosharesock", "actimeo=30", "mfsymlinks"];
/// Hard mounts with a 60 s timeout: programs wait out a server blip instead of
/// getting I/O errors in the middle of a notebook save.
pub const NFS_DEFAULT_OPTIONS: &[&str] = &["sec=sys", "hard", "timeo=600", "retrans=2"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    Cifs,
    Nfs,
    /// A local directory bind-mounted at the mount point.
    Bind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    pub kind: MountKind,
    /// `//server/share`, `host:/export`, or the local directory (resolved under the root).
    pub source: String,
    /// The mount point, resolved under the root.
    pub target: PathBuf,
    /// Options for `mount -o`, without credentials (added at mount time).
    pub options: Vec<String>,
    /// The storage account name that goes in the credentials file (cifs only).
    pub username: Option<String>,
}

impl MountPlan {
    pub fn fstype(&self) -> &'static str {
        match self.kind {
            MountKind::Cifs => "cifs",
            MountKind::Nfs => "nfs",
            MountKind::Bind => "bind",
        }
    }

    /// Whether an existing mount is this share (so it is adopted, not stacked).
    pub fn matches(&self, fstype: &str, source: &str) -> bool {
        match self.kind {
            MountKind::Cifs => matches!(fstype, "cifs" | "smb3") && source.eq_ignore_ascii_case(&self.source),
            MountKind::Nfs => {
                fstype.starts_with("nfs") && source.trim_end_matches('/') == self.source.trim_end_matches('/')
            }
            MountKind::Bind => false, // bind mounts are recognised by inode, see mod.rs
        }
    }
}

fn option_name(option: &str) -> &str {
    option.split('=').next().unwrap_or(option)
}

/// Defaults first, then the admin's options; an admin option with the same name replaces the default.
fn merge_options(mut base: Vec<String>, defaults: &[&str], use_defaults: bool, extra: &[String]) -> Vec<String> {
    if use_defaults {
        base.extend(defaults.iter().map(|o| o.to_string()));
    }
    for option in extra {
        base.retain(|existing| option_name(existing) != option_name(option));
        base.push(option.clone());
    }
    base
}

fn resolve_id(name: &str, what: &str, ids: impl Iterator<Item = (String, u32)>) -> Result<u32, String> {
    if let Ok(number) = name.parse::<u32>() {
        return Ok(number);
    }
    ids.into_iter().find(|(candidate, _)| candidate == name).map(|(_, id)| id).ok_or_else(|| {
        format!("share.{what}: `{name}` is not a known {}", if what == "uid" { "user" } else { "group" })
    })
}

/// `private`: links.private is on, so users reach only their own mounts and
/// the main mount is root's alone (0700/0600, owner and group root), whatever
/// `share.uid`, `gid` and modes say.
pub fn plan(
    share: &ShareSettings,
    paths: &SystemPaths,
    accounts: &[Account],
    groups: &[Group],
    private: bool,
) -> Result<MountPlan, String> {
    let target = paths.resolve(&share.mount_point);
    match &share.source {
        ShareSource::AzureFiles {
            account,
            share: name,
            endpoint_suffix,
            source,
            vers,
            uid,
            gid,
            dir_mode,
            file_mode,
            ..
        } => {
            let mut uid = resolve_id(uid, "uid", accounts.iter().map(|a| (a.name.clone(), a.uid)))?;
            let mut gid = resolve_id(gid, "gid", groups.iter().map(|g| (g.name.clone(), g.gid)))?;
            let (mut dir_mode, mut file_mode) = (dir_mode.as_str(), file_mode.as_str());
            if private {
                (uid, gid, dir_mode, file_mode) = (0, 0, "0700", "0600");
            }
            let mut base = vec![
                format!("vers={vers}"),
                format!("uid={uid}"),
                format!("gid={gid}"),
                format!("dir_mode={dir_mode}"),
                format!("file_mode={file_mode}"),
            ];
            // Without an account (a server that lets guests in) nothing is sent but `guest`.
            if account.is_none() {
                base.push("guest".to_string());
            }
            let azure_source = || {
                format!(
                    "//{}.file.{endpoint_suffix}/{}",
                    account.as_deref().unwrap_or_default(),
                    name.as_deref().unwrap_or_default()
                )
            };
            Ok(MountPlan {
                kind: MountKind::Cifs,
                source: source.clone().unwrap_or_else(azure_source),
                target,
                options: merge_options(base, SMB_DEFAULT_OPTIONS, share.default_options, &share.options),
                username: account.clone(),
            })
        }
        ShareSource::Nfs { source, vers } => Ok(MountPlan {
            kind: MountKind::Nfs,
            source: source.clone(),
            target,
            options: merge_options(
                vec![format!("vers={vers}")],
                NFS_DEFAULT_OPTIONS,
                share.default_options,
                &share.options,
            ),
            username: None,
        }),
        ShareSource::Local { path } => Ok(MountPlan {
            kind: MountKind::Bind,
            source: paths.resolve(path).display().to_string(),
            target,
            options: Vec::new(),
            username: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::accounts::{parse_group, parse_passwd};
    use std::path::Path;

    fn share(text: &str) -> ShareSettings {
        crate::config::load_str(Path::new("c.toml"), text).unwrap().share.unwrap()
    }

    fn plan_of(text: &str) -> MountPlan {
        let accounts = parse_passwd("root:x:0:0::/root:/bin/bash\nazureuser:x:1000:1000::/home/azureuser:/bin/bash\n");
        let groups = parse_group("root:x:0:\nusers:x:100:\n");
        plan(&share(text), &SystemPaths::system(), &accounts, &groups, false).unwrap()
    }

    #[test]
    fn in_private_mode_the_main_mount_is_root_s_alone() {
        let accounts = parse_passwd("root:x:0:0::/root:/bin/bash\n");
        let groups = parse_group("root:x:0:\nusers:x:100:\n");
        let text = "[share]\nkind = \"azure-files\"\naccount = \"mystorage\"\nshare = \"notebooks\"\n";
        let private = plan(&share(text), &SystemPaths::system(), &accounts, &groups, true).unwrap();
        assert_eq!(private.options[..5], ["vers=3.1.1", "uid=0", "gid=0", "dir_mode=0700", "file_mode=0600"]);
    }

    #[test]
    fn a_samba_source_without_an_account_is_a_guest_mount_with_no_credentials() {
        let plan = plan_of("[share]\nkind = \"azure-files\"\nsource = \"//files.corp/pub\"\n");
        assert_eq!((plan.source.as_str(), plan.username.as_deref()), ("//files.corp/pub", None));
        assert!(plan.options.iter().any(|o| o == "guest"), "{:?}", plan.options);
        let plan =
            plan_of("[share]\nkind = \"azure-files\"\nsource = \"//files.corp/pub\"\naccount = \"Pool_Store\"\n");
        assert_eq!(plan.username.as_deref(), Some("Pool_Store"));
        assert!(!plan.options.iter().any(|o| o == "guest"), "{:?}", plan.options);
    }

    #[test]
    fn azure_files_gets_the_storage_endpoint_smb_3_1_1_and_safe_modes() {
        let plan = plan_of("[share]\nkind = \"azure-files\"\naccount = \"mystorage\"\nshare = \"notebooks\"\n");
        assert_eq!(plan.kind, MountKind::Cifs);
        assert_eq!(plan.source, "//mystorage.file.core.windows.net/notebooks");
        assert_eq!(plan.target, PathBuf::from("/data/notebooks"));
        assert_eq!(
            plan.options,
            [
                "vers=3.1.1",
                "uid=0",
                "gid=100",
                "dir_mode=0775",
                "file_mode=0664",
                "serverino",
                "nosharesock",
                "actimeo=30",
                "mfsymlinks"
            ]
        );
        assert!(!plan.options.iter().any(|o| o.contains("0777")));
        assert_eq!(plan.username.as_deref(), Some("mystorage"));
    }

    #[test]
    fn sovereign_suffix_source_override_and_option_overrides() {
        let plan = plan_of(
            "[share]\nkind = \"azure-files\"\naccount = \"mystorage\"\nshare = \"team\"\nendpoint_suffix = \"core.chinacloudapi.cn\"\nvers = \"3.0\"\nuid = \"azureuser\"\ngid = \"100\"\noptions = [\"actimeo=5\", \"cache=none\"]\n",
        );
        assert_eq!(plan.source, "//mystorage.file.core.chinacloudapi.cn/team");
        assert!(plan.options.contains(&"vers=3.0".to_string()));
        assert!(plan.options.contains(&"uid=1000".to_string()));
        assert!(plan.options.contains(&"actimeo=5".to_string()));
        assert!(!plan.options.contains(&"actimeo=30".to_string()));
        assert!(plan.options.contains(&"cache=none".to_string()));

        let other = plan_of("[share]\nkind = \"azure-files\"\naccount = \"mystorage\"\nshare = \"team\"\nsource = \"//127.0.0.1/notebooks\"\ndefault_options = false\n");
        assert_eq!(other.source, "//127.0.0.1/notebooks");
        assert!(!other.options.contains(&"mfsymlinks".to_string()));
    }

    #[test]
    fn nfs_defaults_to_4_1_sec_sys_and_allows_v3() {
        let plan = plan_of("[share]\nkind = \"nfs\"\nsource = \"nfs.example:/export\"\n");
        assert_eq!(plan.fstype(), "nfs");
        assert_eq!(plan.options, ["vers=4.1", "sec=sys", "hard", "timeo=600", "retrans=2"]);
        let v3 = plan_of(
            "[share]\nkind = \"nfs\"\nsource = \"nfs.example:/export\"\nvers = \"3\"\noptions = [\"nolock\"]\n",
        );
        assert_eq!(v3.options[0], "vers=3");
        assert!(v3.options.contains(&"nolock".to_string()));
    }

    #[test]
    fn unknown_owner_is_a_clear_error() {
        let accounts = parse_passwd("root:x:0:0::/root:/bin/bash\n");
        let err = plan(
            &share("[share]\nkind = \"azure-files\"\naccount = \"mystorage\"\nshare = \"team\"\n"),
            &SystemPaths::system(),
            &accounts,
            &[],
            false,
        )
        .unwrap_err();
        assert!(err.contains("share.gid") && err.contains("users"), "{err}");
    }

    #[test]
    fn existing_mounts_are_recognised() {
        let plan = plan_of("[share]\nkind = \"azure-files\"\naccount = \"mystorage\"\nshare = \"team\"\nsource = \"//127.0.0.1/notebooks\"\n");
        assert!(plan.matches("cifs", "//127.0.0.1/notebooks"));
        assert!(!plan.matches("cifs", "//127.0.0.1/other"));
        assert!(!plan.matches("tmpfs", "//127.0.0.1/notebooks"));
        let nfs = plan_of("[share]\nkind = \"nfs\"\nsource = \"10.0.0.4:/export\"\n");
        assert!(nfs.matches("nfs4", "10.0.0.4:/export"));
        assert!(nfs.matches("nfs", "10.0.0.4:/export/"));
    }
}
