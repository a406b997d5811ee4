//! Getting the share mounted: adopting a mount already in place, refusing a
//! foreign one, preparing the mount point, gathering the key, the mount and
//! unmount calls, and publishing the result.

use super::report::ShareState;
use super::spec::{self, MountKind, MountPlan};
use super::{Next, Worker, DISK_DEADLINE, UNMOUNT_TIMEOUT};
use crate::config::{KeySourceKind, ShareSettings, ShareSource};
use crate::core::credentials;
use crate::core::mount::{self, MountCall};
use crate::core::mountinfo;
use crate::core::shared::KeyRef;
use crate::core::task;
use std::path::{Path, PathBuf};

impl Worker {
    /// Makes sure the configured share is mounted; says what to do next.
    pub(super) async fn ensure(&mut self, config: Option<&ShareSettings>) -> Next {
        let Some(share) = config else {
            if let Some(previous) = self.current.take() {
                self.unmount(&previous).await;
            }
            self.share.update(|r| {
                r.kind = None;
                r.source = None;
                r.mount_point = None;
                r.fstype = None;
                r.options.clear();
            });
            self.set_state(ShareState::NotConfigured, Some("no [share] in the config".to_string()));
            return Next::Wait;
        };
        // The accounts view may ask NSS and the parent of the mount point is
        // resolved on disk: both off the async workers.
        let (accounts, paths, config) = (self.ctx.accounts.clone(), self.ctx.paths.clone(), share.clone());
        // Private links: users reach only their own mounts, never the main one.
        let private = self.ctx.settings.borrow().links.private;
        let planned = task::blocking("planning the mount", DISK_DEADLINE, move || {
            let snapshot = accounts.snapshot();
            spec::plan(&config, &paths, &snapshot.users, &snapshot.groups, private).map(|mut plan| {
                // The mount table lists real paths: a symlink among the parents would
                // hide an existing mount from the lookup and lead to stacking.
                plan.target = real_mount_point(&plan.target);
                plan
            })
        })
        .await;
        let plan = match planned {
            Ok(Ok(plan)) => plan,
            Ok(Err(error)) => {
                self.record_error(self.failure_state(), error);
                return self.retry();
            }
            Err(error) => {
                self.record_error(self.failure_state(), error.to_string());
                return self.retry();
            }
        };
        // A changed config that moves the share: let go of the old mount first.
        if let Some(previous) = self.current.clone() {
            if previous != plan {
                self.unmount(&previous).await;
                self.current = None;
            }
        }
        let shown_options: Vec<String> = plan
            .options
            .iter()
            .cloned()
            .chain(plan.username.as_ref().map(|_| {
                format!("credentials={}", credentials::CredentialsFile::path_in(&self.credentials_dir()).display())
            }))
            .collect();
        self.describe(share, &plan, &shown_options);
        self.smb = match (&plan.username, &share.source) {
            (Some(username), ShareSource::AzureFiles { key_file, key_source, .. }) => {
                let key = match (key_source, key_file) {
                    (KeySourceKind::File, Some(key_file)) => Some(KeyRef::File {
                        path: self.ctx.paths.resolve(key_file),
                        owner: if self.ctx.paths.is_sandbox() { nix::unistd::geteuid().as_raw() } else { 0 },
                    }),
                    (KeySourceKind::File, None) => None,
                    _ => Some(KeyRef::Fetched),
                };
                key.map(|key| crate::core::shared::SmbMount {
                    source: plan.source.clone(),
                    options: plan.options.clone(),
                    username: username.clone(),
                    key,
                })
            }
            _ => None,
        };

        if plan.kind == MountKind::Bind {
            let source = PathBuf::from(&plan.source);
            let probe_source = source.clone();
            let is_dir =
                task::blocking("looking at the local share", DISK_DEADLINE, move || probe_source.is_dir()).await;
            if !matches!(is_dir, Ok(true)) {
                self.record_error(self.failure_state(), format!("local share {} is not a directory", source.display()));
                return self.retry();
            }
            if used_in_place(&plan) {
                let why = if running_as_root() { "it is the mount point itself" } else { "not root, so no bind mount" };
                self.current = Some(plan.clone());
                self.share.update(|r| r.fstype = Some("none (in place)".to_string()));
                self.mounted(false, Some(format!("local share {} used in place ({why})", source.display()))).await;
                return Next::ProbeSoon;
            }
        }

        match self.existing_mount(&plan).await {
            Existing::Ours => {
                let adopted = self.current.as_ref() != Some(&plan);
                self.current = Some(plan.clone());
                self.mounted(adopted, None).await;
                return Next::ProbeSoon;
            }
            Existing::Foreign(what) => {
                self.record_error(
                    ShareState::Conflict,
                    format!(
                        "{what} is already mounted at {}; the agent will not mount on top of it",
                        plan.target.display()
                    ),
                );
                return self.retry();
            }
            Existing::None => {}
        }

        let (target, force) = (plan.target.clone(), share.force);
        let prepared =
            task::blocking("preparing the mount point", DISK_DEADLINE, move || prepare_mount_point(&target, force))
                .await
                .unwrap_or_else(|err| Err(err.to_string()));
        if let Err(error) = prepared {
            self.record_error(self.failure_state(), error);
            return self.retry();
        }
        // Retries keep showing why the share is down; only a first attempt shows 'mounting'.
        let retrying =
            matches!(self.share.report().state, ShareState::Unmounted | ShareState::Conflict | ShareState::Degraded);
        if !retrying {
            self.set_state(
                ShareState::Mounting,
                Some(format!("mounting {} at {}", plan.source, plan.target.display())),
            );
        }
        match self.mount(share, &plan).await {
            Ok(()) => match self.existing_mount(&plan).await {
                Existing::Ours => {
                    self.current = Some(plan.clone());
                    self.share.update(|r| {
                        r.mounts += 1;
                        r.adopted = false;
                    });
                    tracing::info!(source = %plan.source, target = %plan.target.display(), "share mounted");
                    self.mounted(false, None).await;
                    Next::ProbeSoon
                }
                _ => {
                    self.record_error(
                        self.failure_state(),
                        "mount reported success but the share is not in the mount table".to_string(),
                    );
                    self.retry()
                }
            },
            Err(error) => {
                self.record_error(self.failure_state(), error);
                self.retry()
            }
        }
    }

    pub(super) async fn mounted(&mut self, adopted: bool, detail: Option<String>) {
        // Who the share's root is (device and inode), so others can tell it from
        // the empty directory under it should the mount go away unseen.
        self.root_identity = match self.reachable_root() {
            Some(root) => task::blocking("identifying the share root", DISK_DEADLINE, move || {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(&root).ok().map(|m| (m.dev(), m.ino()))
            })
            .await
            .ok()
            .flatten(),
            None => None,
        };
        self.backoff.reset();
        self.outage = false;
        self.failed_in_a_row = 0;
        if adopted {
            self.share.update(|r| r.adopted = true);
        }
        let detail = detail.or_else(|| {
            let report = self.share.report();
            Some(format!(
                "{} {} at {}{}",
                report.fstype.unwrap_or_default(),
                report.source.unwrap_or_default(),
                report.mount_point.unwrap_or_default(),
                if adopted { " (adopted)" } else { "" }
            ))
        });
        self.set_state(ShareState::Mounted, detail);
    }

    pub(super) fn credentials_dir(&self) -> PathBuf {
        self.ctx.paths.resolve(credentials::PRIVATE_RUN_DIR)
    }

    pub(super) async fn existing_mount(&self, plan: &MountPlan) -> Existing {
        let table = match mount::table_off_workers(self.share.mounter.clone()).await {
            Ok(table) => table,
            Err(err) => return Existing::Foreign(format!("(cannot read the mount table: {err})")),
        };
        let Some(top) = mountinfo::top_mount_at(&table, &plan.target) else {
            return Existing::None;
        };
        let ours = match plan.kind {
            // Comparing inodes stats the mount point: off the async workers.
            MountKind::Bind => {
                let (target, source) = (plan.target.clone(), PathBuf::from(&plan.source));
                task::blocking("comparing the bind mount", DISK_DEADLINE, move || {
                    mount::same_directory(&target, &source)
                })
                .await
                .unwrap_or(false)
            }
            _ => plan.matches(&top.fstype, &top.source),
        };
        if ours {
            Existing::Ours
        } else {
            Existing::Foreign(format!("{} {}", top.fstype, top.source))
        }
    }

    pub(super) async fn mount(&self, share: &ShareSettings, plan: &MountPlan) -> Result<(), String> {
        let mut options = plan.options.clone();
        // Held until the mount call returns, then removed.
        let mut _credentials = None;
        let mut fetched_generation = None;
        if let (Some(username), ShareSource::AzureFiles { key_file, key_source, .. }) = (&plan.username, &share.source)
        {
            let (dir, username) = (self.credentials_dir(), username.clone());
            let key = match (key_source, key_file) {
                (KeySourceKind::File, Some(key_file)) => {
                    let expected_owner = if self.ctx.paths.is_sandbox() { nix::unistd::geteuid().as_raw() } else { 0 };
                    KeyInHand::File(self.ctx.paths.resolve(key_file), expected_owner)
                }
                (KeySourceKind::File, None) => KeyInHand::None,
                (source, _) => {
                    let news = self.ctx.shared.storage_key();
                    match news.key {
                        Some(key) => {
                            fetched_generation = Some(news.generation);
                            KeyInHand::Fetched(key)
                        }
                        None => {
                            return Err(format!(
                                "waiting for the storage key from Azure (share.key_source = \"{}\"): {}",
                                source.as_str(),
                                news.error.unwrap_or_else(|| "not fetched yet".to_string())
                            ))
                        }
                    }
                }
            };
            if !matches!(key, KeyInHand::None) {
                let file = task::blocking("writing the credentials file", DISK_DEADLINE, move || {
                    let key = match key {
                        KeyInHand::File(path, owner) => {
                            credentials::read_key_file(&path, owner).map_err(|err| err.to_string())?
                        }
                        KeyInHand::Fetched(key) => key,
                        KeyInHand::None => return Err("no key".to_string()),
                    };
                    credentials::CredentialsFile::write(&dir, &username, &key)
                        .map_err(|err| format!("cannot write the credentials file in {}: {err}", dir.display()))
                })
                .await
                .map_err(|err| err.to_string())??;
                options.push(format!("credentials={}", file.path().display()));
                _credentials = Some(file);
            }
        }
        let call = MountCall {
            fstype: match plan.kind {
                MountKind::Bind => None,
                _ => Some(plan.fstype().to_string()),
            },
            source: plan.source.clone(),
            target: plan.target.clone(),
            options,
        };
        match self.share.mounter.mount(call, share.mount_timeout).await {
            Ok(()) => Ok(()),
            // Keys get rotated: a fetched key the server refuses is fetched again.
            Err(err) => match fetched_generation {
                Some(generation) if err.is_authentication_failure() => {
                    self.ctx.shared.ask_fresh_key(generation);
                    Err(format!("{err}; the key from Azure was refused, so it is fetched again"))
                }
                _ => Err(err.to_string()),
            },
        }
    }

    pub(super) async fn unmount(&self, plan: &MountPlan) {
        if used_in_place(plan) {
            return;
        }
        if let Err(err) = self.share.mounter.unmount_lazy(plan.target.clone(), UNMOUNT_TIMEOUT).await {
            tracing::warn!(component = "share", "lazy unmount of {} failed: {err}", plan.target.display());
        }
    }
}

/// Makes sure the mount point is a real, empty directory (or `force` is set).
/// Blocking: run it off the async workers.
fn prepare_mount_point(target: &Path, force: bool) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if std::fs::symlink_metadata(target).is_ok_and(|meta| meta.file_type().is_symlink()) {
        return Err(format!(
            "mount point {} is a symlink; point share.mount_point at a real directory",
            target.display()
        ));
    }
    if !target.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(target)
            .map_err(|err| format!("cannot create mount point {}: {err}", target.display()))?;
    }
    if !target.is_dir() {
        return Err(format!("mount point {} is not a directory", target.display()));
    }
    let entries = std::fs::read_dir(target)
        .map_err(|err| format!("cannot read mount point {}: {err}", target.display()))?
        .count();
    if entries > 0 && !force {
        return Err(format!(
            "mount point {} is not empty ({entries} entries) and mounting would hide them; move them away or set share.force = true",
            target.display()
        ));
    }
    Ok(())
}

/// The mount point with its parent resolved (the parent is on a local disk, so
/// this should not hang, yet it runs off the async workers); the last component
/// is left alone, it may be a dead mount.
fn real_mount_point(target: &Path) -> std::path::PathBuf {
    match (target.parent(), target.file_name()) {
        (Some(parent), Some(name)) => {
            std::fs::canonicalize(parent).map(|p| p.join(name)).unwrap_or_else(|_| target.to_path_buf())
        }
        _ => target.to_path_buf(),
    }
}

/// A local share that is not bind-mounted: not root, or it is the mount point itself.
pub(super) fn used_in_place(plan: &MountPlan) -> bool {
    plan.kind == MountKind::Bind && (!running_as_root() || Path::new(&plan.source) == plan.target)
}

pub(super) enum Existing {
    None,
    Ours,
    Foreign(String),
}

/// The key a mount call uses, gathered before the blocking part.
enum KeyInHand {
    None,
    /// A key file and the uid that must own it.
    File(PathBuf, u32),
    Fetched(credentials::StorageKey),
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}
