//! Each VM's small record on the share (`.pool-agent/vms/<instance>.json`):
//! who has sessions on it, with the uid and gid this VM gives them. Read
//! together, the records say where a user still works (the login note) and
//! whether the pool gives one user different ids (files written on one VM
//! would belong to someone else on the next). Pure: the I/O is in `mod.rs`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// Where the records live, relative to the share root.
pub const DIR: &str = ".pool-agent/vms";
/// A record not renewed for this long is a VM gone (scaled in, or its agent stopped).
pub const STALE_AFTER: Duration = Duration::from_secs(15 * 60);
/// A record larger than this is not one of ours.
pub const MAX_BYTES: u64 = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSeen {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub sessions: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub instance: String,
    /// RFC 3339.
    pub updated_at: String,
    #[serde(default)]
    pub users: Vec<UserSeen>,
}

/// The file name of an instance's record (a name with `/` or a leading dot cannot be one).
pub fn file_name(instance: &str) -> Option<String> {
    let plain = !instance.is_empty()
        && !instance.starts_with('.')
        && instance.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    plain.then(|| format!("{instance}.json"))
}

/// One user whose ids differ between VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdConflict {
    pub user: String,
    /// (instance, uid, gid), one per VM.
    pub seen: Vec<(String, u32, u32)>,
}

impl std::fmt::Display for IdConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seen: Vec<String> = self.seen.iter().map(|(vm, uid, gid)| format!("{vm} {uid}:{gid}")).collect();
        write!(f, "{} has different ids across the pool ({})", self.user, seen.join(", "))
    }
}

/// The pool as the records on the share show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    /// Fresh records, this VM's included, by instance name.
    pub vms: Vec<VmRecord>,
    pub conflicts: Vec<IdConflict>,
    /// Records left out, with why (stale, unreadable, another name than the file's).
    #[serde(default)]
    pub ignored: Vec<String>,
}

/// Parses the records read from the share (file name, bytes) as of `now`.
pub fn view(files: &[(String, Vec<u8>)], now: SystemTime) -> PoolView {
    let mut view = PoolView::default();
    for (name, bytes) in files {
        let record: VmRecord = match serde_json::from_slice(bytes) {
            Ok(record) => record,
            Err(err) => {
                view.ignored.push(format!("{name}: not a record ({err})"));
                continue;
            }
        };
        if file_name(&record.instance).as_deref() != Some(name.as_str()) {
            view.ignored.push(format!("{name}: names another instance ({})", record.instance));
            continue;
        }
        let age =
            humantime::parse_rfc3339(&record.updated_at).ok().map(|at| now.duration_since(at).unwrap_or_default());
        match age {
            Some(age) if age <= STALE_AFTER => view.vms.push(record),
            Some(age) => view.ignored.push(format!("{name}: not renewed for {}m (a VM gone)", age.as_secs() / 60)),
            None => view.ignored.push(format!("{name}: no time")),
        }
    }
    view.vms.sort_by(|a, b| a.instance.cmp(&b.instance));
    view.conflicts = conflicts(&view.vms);
    view
}

fn conflicts(vms: &[VmRecord]) -> Vec<IdConflict> {
    let mut by_user: BTreeMap<&str, Vec<(String, u32, u32)>> = BTreeMap::new();
    for vm in vms {
        for user in &vm.users {
            by_user.entry(&user.name).or_default().push((vm.instance.clone(), user.uid, user.gid));
        }
    }
    by_user
        .into_iter()
        .filter(|(_, seen)| seen.iter().any(|(_, uid, gid)| (*uid, *gid) != (seen[0].1, seen[0].2)))
        .map(|(user, seen)| IdConflict { user: user.to_string(), seen })
        .collect()
}

/// The VMs other than `here` where `user` has sessions, with how many.
pub fn elsewhere<'a>(view: &'a PoolView, user: &str, here: &str) -> Vec<(&'a str, u32)> {
    view.vms
        .iter()
        .filter(|vm| vm.instance != here)
        .filter_map(|vm| {
            let seen = vm.users.iter().find(|u| u.name == user && u.sessions > 0)?;
            Some((vm.instance.as_str(), seen.sessions))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn record(instance: &str, minutes_ago: u64, users: &[(&str, u32, u32)]) -> (String, Vec<u8>) {
        let record = VmRecord {
            instance: instance.into(),
            updated_at: crate::core::clock::rfc3339(now() - Duration::from_secs(60 * minutes_ago)),
            users: users
                .iter()
                .map(|(n, uid, s)| UserSeen { name: (*n).into(), uid: *uid, gid: *uid, sessions: *s })
                .collect(),
        };
        (format!("{instance}.json"), serde_json::to_vec(&record).unwrap())
    }

    #[test]
    fn a_user_with_other_ids_on_another_vm_is_named_with_both_vms_and_ids() {
        let files = [
            record("pool_3", 0, &[("alice", 1001, 1), ("bob", 1002, 0)]),
            record("pool_7", 1, &[("alice", 1005, 2), ("bob", 1002, 1)]),
        ];
        let view = view(&files, now());
        assert_eq!(view.vms.len(), 2);
        assert_eq!(view.conflicts.len(), 1, "{view:?}");
        assert_eq!(
            view.conflicts[0].to_string(),
            "alice has different ids across the pool (pool_3 1001:1001, pool_7 1005:1005)"
        );
    }

    #[test]
    fn stale_forged_and_broken_records_are_left_out_and_said() {
        let mut forged = record("pool_9", 0, &[("alice", 1, 1)]);
        forged.0 = "pool_4.json".into();
        let files = [
            record("pool_3", 0, &[("alice", 1001, 1)]),
            record("pool_5", 30, &[("alice", 2002, 1)]),
            forged,
            ("pool_6.json".to_string(), b"{not json".to_vec()),
        ];
        let view = view(&files, now());
        assert_eq!(view.vms.iter().map(|v| v.instance.as_str()).collect::<Vec<_>>(), ["pool_3"]);
        assert!(view.conflicts.is_empty(), "a gone VM's ids are no conflict: {view:?}");
        assert_eq!(view.ignored.len(), 3, "{:?}", view.ignored);
    }

    #[test]
    fn elsewhere_names_the_other_vms_where_the_user_still_has_sessions() {
        let files = [
            record("pool_3", 0, &[("alice", 1001, 1)]),
            record("pool_7", 0, &[("alice", 1001, 2), ("bob", 1002, 1)]),
            record("pool_8", 0, &[("alice", 1001, 0)]),
        ];
        let view = view(&files, now());
        assert_eq!(elsewhere(&view, "alice", "pool_3"), [("pool_7", 2)]);
        assert!(elsewhere(&view, "carol", "pool_3").is_empty());
    }

    #[test]
    fn only_plain_instance_names_make_file_names() {
        assert_eq!(file_name("pool_3").as_deref(), Some("pool_3.json"));
        for bad in ["", "../x", "a/b", ".hidden"] {
            assert_eq!(file_name(bad), None, "{bad:?}");
        }
    }
}
