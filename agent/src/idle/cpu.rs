//! Users' CPU: per user, from cgroup v2 `user.slice/user-<uid>.slice/cpu.stat`
//! (`usage_usec`), where systemd-logind puts every login's processes; the
//! agent, waagent and extensions live in `system.slice` and never count.
//! Without such a hierarchy, each process's CPU from `/proc`, by owner, for
//! uids from `links.min_uid` up (not the agent's own process). A user counts
//! while their CPU, averaged over `idle.cpu_window`, is above
//! `idle.cpu_percent` of one core.

use super::signal::{Sample, Source};
use crate::core::accounts::AccountsView;
use futures_util::future::BoxFuture;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Where the cgroup v2 hierarchy is: `/sys/fs/cgroup` (unified) or
/// `/sys/fs/cgroup/unified` (hybrid), if either.
pub fn cgroup2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
}

/// CPU time used so far (µs) per uid, from `user.slice`.
pub fn user_slices(root: &Path) -> Option<BTreeMap<u32, u64>> {
    let slice = root.join("user.slice");
    let entries = std::fs::read_dir(&slice).ok()?;
    let mut usage = BTreeMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(uid) = name.strip_prefix("user-").and_then(|n| n.strip_suffix(".slice")).and_then(|n| n.parse().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("cpu.stat")).unwrap_or_default();
        if let Some(used) = stat.lines().find_map(|l| l.strip_prefix("usage_usec ")).and_then(|v| v.trim().parse().ok())
        {
            usage.insert(uid, used);
        }
    }
    Some(usage)
}

/// CPU time used so far (µs) per uid ≥ `min_uid`, from every process but the agent.
pub fn processes(min_uid: u32) -> BTreeMap<u32, u64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let me = std::process::id();
    let mut usage = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return usage };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(meta) = std::fs::metadata(entry.path()) else { continue };
        let uid = std::os::unix::fs::MetadataExt::uid(&meta);
        if uid < min_uid {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime: fields 14 and 15 of stat, 11 and 12 after the name.
        let used: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
        *usage.entry(uid).or_default() += used * 1_000_000 / ticks;
    }
    usage
}

pub struct Cpu {
    cgroup_root: Option<PathBuf>,
    min_uid: u32,
    percent: f64,
    window: Duration,
    accounts: AccountsView,
    history: HashMap<u32, VecDeque<(Instant, u64)>>,
}

impl Cpu {
    /// `accounts`: to name users in reasons.
    pub fn new(
        cgroup_root: Option<PathBuf>,
        min_uid: u32,
        percent: f64,
        window: Duration,
        accounts: AccountsView,
    ) -> Self {
        Self { cgroup_root, min_uid, percent, window, accounts, history: HashMap::new() }
    }

    fn look(&mut self) -> Sample {
        let now = Instant::now();
        let (usage, source) = match self.cgroup_root.as_deref().and_then(user_slices) {
            Some(usage) => (usage, "user slices"),
            None => (processes(self.min_uid), "processes"),
        };
        let mut reasons = Vec::new();
        let mut total_percent = 0.0;
        self.history.retain(|uid, _| usage.contains_key(uid));
        for (uid, used) in &usage {
            let history = self.history.entry(*uid).or_default();
            history.push_back((now, *used));
            while history.len() > 2 && history.front().is_some_and(|(at, _)| now.duration_since(*at) > self.window) {
                history.pop_front();
            }
            let (Some((first_at, first)), Some((last_at, last))) = (history.front(), history.back()) else { continue };
            let span = last_at.duration_since(*first_at);
            if span.is_zero() {
                continue;
            }
            let percent = last.saturating_sub(*first) as f64 / span.as_micros() as f64 * 100.0;
            total_percent += percent;
            if percent >= self.percent {
                let who = self.accounts.user_name(*uid);
                reasons.push(format!("{who} at {percent:.0}% of a core (over {}s)", span.as_secs()));
            }
        }
        let sample = if reasons.is_empty() {
            Sample::idle(format!("users' CPU below {}% of a core ({source})", self.percent))
        } else {
            Sample::active(reasons)
        };
        sample.with_figure("cpu_percent", (total_percent * 10.0).round() / 10.0)
    }
}

impl Source for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn sample(&mut self, _now: SystemTime) -> BoxFuture<'_, Sample> {
        Box::pin(async move { self.look() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::accounts::AccountSource;
    use crate::idle::signal::SignalState;

    #[test]
    #[allow(clippy::disallowed_methods)] // real time must pass between two readings
    fn a_user_slice_above_the_threshold_over_the_window_is_active() {
        let tmp = tempfile::tempdir().unwrap();
        let slice = tmp.path().join("user.slice/user-1001.slice");
        std::fs::create_dir_all(&slice).unwrap();
        std::fs::write(slice.join("cpu.stat"), "usage_usec 1000000\nuser_usec 1\n").unwrap();
        let passwd = tmp.path().join("passwd");
        std::fs::write(&passwd, "").unwrap();
        let accounts =
            AccountsView::new(AccountSource::Files { passwd: passwd.clone(), group: tmp.path().join("group") });
        let mut cpu = Cpu::new(Some(tmp.path().to_path_buf()), 1000, 10.0, Duration::from_secs(60), accounts);
        assert_eq!(cpu.look().state, SignalState::Idle, "one reading says nothing yet");
        // Half a core for the next 200 ms.
        std::thread::sleep(Duration::from_millis(200));
        std::fs::write(slice.join("cpu.stat"), "usage_usec 1100000\n").unwrap();
        let sample = cpu.look();
        assert_eq!(sample.state, SignalState::Active, "{sample:?}");
        assert!(sample.reasons[0].starts_with("uid 1001 at"), "a uid nobody knows: {:?}", sample.reasons);
        std::thread::sleep(Duration::from_millis(200));
        let sample = cpu.look();
        assert!(sample.figures["cpu_percent"] < 40.0, "averaged over the window: {sample:?}");
        // alice is added after the source was made: she is named from then on
        // (the view looks at the files' stamps once a second).
        std::fs::write(&passwd, "alice:x:1001:1001::/home/alice:/bin/bash\n").unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(slice.join("cpu.stat"), "usage_usec 3000000\n").unwrap();
        let sample = cpu.look();
        assert!(sample.reasons[0].starts_with("alice at"), "{:?}", sample.reasons);
    }
}
