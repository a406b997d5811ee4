//! CPU wherever users work: every process is read from `/proc` (its owner,
//! its CPU time, its cgroup), and its CPU counts for
//! - the user whose slice (`user.slice/user-<uid>.slice`) it runs in,
//!   whatever its own uid (`sudo python train.py` in alice's session);
//! - its user, when its uid is in the user range (`links.min_uid` to
//!   `links.max_uid`), wherever its cgroup is: a login session, a job cron
//!   started, a JupyterHub-spawned server inside `jupyterhub.service`, a
//!   `systemd-run --uid` unit, a shell left behind in `ssh.service`;
//! - its container, for docker, containerd and podman scopes, whatever the uid;
//! - a system unit named in `idle.cpu_services`, whatever the uid.
//!
//! Everything else (the agent itself, waagent, extensions, system services)
//! never counts. One is busy while its CPU, averaged over `idle.cpu_window`,
//! is at or above `idle.cpu_percent` of one core. Reasons name the user or
//! container and the unit: `alice in jupyterhub.service at 95% of a core`.
//! A hand-written pass: one `stat` and one read of `/proc/<pid>/stat` per
//! process, the cgroup read only for a process that used CPU and was not seen
//! before. Measured against the sysinfo crate it is 1.2-1.3x faster and
//! smaller (README, Performance), and sysinfo does not give cgroups.

use super::signal::{Sample, Source};
use crate::core::accounts::AccountsView;
use futures_util::future::BoxFuture;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// Where the cgroup v2 hierarchy is: `/sys/fs/cgroup` (unified) or
/// `/sys/fs/cgroup/unified` (hybrid), if either.
pub fn cgroup2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
}

/// Whose a process's CPU is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    User(u32),
    Container { runtime: &'static str, id: String },
    Service(String),
}

/// Container runtimes' scope names: (prefix, runtime).
const CONTAINER_SCOPES: [(&str, &str); 4] =
    [("docker-", "docker"), ("cri-containerd-", "containerd"), ("libpod-", "podman"), ("crio-", "cri-o")];

/// Whose CPU a process with `uid` in cgroup `path` is, and the unit to name;
/// None when it does not count.
pub fn classify(
    path: &str,
    uid: u32,
    users: &crate::core::user_uids::UserUids,
    services: &[String],
) -> Option<(Owner, String)> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (index, part) in parts.iter().enumerate() {
        for (prefix, runtime) in CONTAINER_SCOPES {
            if let Some(id) = part.strip_prefix(prefix).and_then(|p| p.strip_suffix(".scope")) {
                return Some((Owner::Container { runtime, id: id.chars().take(12).collect() }, part.to_string()));
            }
        }
        // cgroupfs-driver layouts: /docker/<id>, /kubepods/.../<id>.
        if (*part == "docker" || *part == "libpod_parent") && index + 1 < parts.len() {
            let id: String = parts[index + 1].chars().take(12).collect();
            return Some((Owner::Container { runtime: "docker", id }, parts[index + 1].to_string()));
        }
    }
    // A process inside a user's slice is that user's work whatever its own
    // uid: `sudo python train.py` runs as root in alice's session scope.
    let slice_uid = parts.iter().find_map(|p| p.strip_prefix("user-")?.strip_suffix(".slice")?.parse::<u32>().ok());
    let uid = match slice_uid {
        Some(owner) if users.contains(&owner) => owner,
        _ => uid,
    };
    let unit = parts
        .iter()
        .rev()
        .find(|p| p.ends_with(".service") || p.ends_with(".scope"))
        .map_or_else(|| parts.last().copied().unwrap_or("/").to_string(), |p| p.to_string());
    if let Some(allowed) = parts.iter().find(|p| services.iter().any(|s| s == *p)) {
        return Some((Owner::Service(allowed.to_string()), unit));
    }
    users.contains(&uid).then_some((Owner::User(uid), unit))
}

/// One process as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessCpu {
    pub pid: u32,
    pub uid: u32,
    /// Start time (clock ticks since boot): a reused pid is another process.
    pub start: u64,
    /// utime + stime, in µs.
    pub used_us: u64,
}

/// Every process but the agent itself. Err only when `/proc` cannot be listed.
pub fn processes(proc_root: &std::path::Path) -> std::io::Result<Vec<ProcessCpu>> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir(proc_root)?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        // A process that ends between the listing and the read is simply gone.
        let Ok(meta) = std::fs::metadata(entry.path()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(after) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else { continue };
        let fields: Vec<&str> = after.split_whitespace().collect();
        // After the name: utime and stime are fields 11 and 12, starttime 19.
        let field = |n: usize| fields.get(n).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let used_us = (field(11) + field(12)) * 1_000_000 / ticks;
        found.push(ProcessCpu { pid, uid: std::os::unix::fs::MetadataExt::uid(&meta), start: field(19), used_us });
    }
    Ok(found)
}

pub fn cgroup_of(proc_root: &std::path::Path, pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    // cgroup v2's line (`0::/path`); on a hybrid system the systemd (name=) one.
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or_else(|| text.lines().find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p)))
        .map(str::to_string)
}

struct Seen {
    start: u64,
    used_us: u64,
    /// Whose, once the cgroup was read (None: does not count).
    owner: Option<Option<(Owner, String)>>,
}

pub struct Cpu {
    proc_root: PathBuf,
    users: crate::core::user_uids::UserUids,
    services: Vec<String>,
    percent: f64,
    window: Duration,
    accounts: AccountsView,
    processes: HashMap<u32, Seen>,
    /// Per owner: its CPU so far (µs, counted since the source started), over the window.
    history: HashMap<Owner, VecDeque<(Instant, u64)>>,
    totals: HashMap<Owner, u64>,
    /// Per owner: the unit its busiest process ran in, at the last sample.
    units: HashMap<Owner, String>,
    first: bool,
    last_sample: Option<Instant>,
}

impl Cpu {
    /// `accounts`: to name users in reasons.
    pub fn new(
        users: crate::core::user_uids::UserUids,
        services: Vec<String>,
        percent: f64,
        window: Duration,
        accounts: AccountsView,
    ) -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            users,
            services,
            percent,
            window,
            accounts,
            processes: HashMap::new(),
            history: HashMap::new(),
            totals: HashMap::new(),
            units: HashMap::new(),
            first: true,
            last_sample: None,
        }
    }

    fn look(&mut self) -> Sample {
        let now = Instant::now();
        let listed = match processes(&self.proc_root) {
            Ok(listed) => listed,
            Err(err) => return Sample::unknown(format!("cannot list {}: {err}", self.proc_root.display())),
        };
        let mut used: HashMap<Owner, (u64, u64, String)> = HashMap::new();
        let mut next = HashMap::with_capacity(listed.len());
        for process in listed {
            let before = self.processes.remove(&process.pid).filter(|s| s.start == process.start);
            // A process born since the last sample spent all its CPU since then.
            let delta = match &before {
                Some(seen) => process.used_us.saturating_sub(seen.used_us),
                None if self.first => 0,
                None => process.used_us,
            };
            let mut owner = before.and_then(|s| s.owner);
            if delta > 0 && owner.is_none() {
                owner = Some(
                    cgroup_of(&self.proc_root, process.pid)
                        .and_then(|path| classify(&path, process.uid, &self.users, &self.services)),
                );
            }
            if let Some(Some((who, unit))) = &owner {
                let entry = used.entry(who.clone()).or_insert((0, 0, unit.clone()));
                entry.0 += delta;
                if delta > entry.1 {
                    entry.1 = delta;
                    entry.2 = unit.clone();
                }
            }
            next.insert(process.pid, Seen { start: process.start, used_us: process.used_us, owner });
        }
        self.processes = next;
        self.first = false;
        for (who, (delta, _, unit)) in used {
            *self.totals.entry(who.clone()).or_default() += delta;
            self.units.insert(who, unit);
        }
        let sample = self.judge(now);
        self.last_sample = Some(now);
        sample
    }

    /// Each owner's average over the window, from the running totals.
    fn judge(&mut self, now: Instant) -> Sample {
        let mut reasons = Vec::new();
        let mut total_percent = 0.0;
        for (who, total) in &self.totals {
            let history = self.history.entry(who.clone()).or_default();
            // An owner seen for the first time had used nothing at the last sample.
            if let (true, Some(before)) = (history.is_empty(), self.last_sample) {
                history.push_back((before, 0));
            }
            history.push_back((now, *total));
            while history.len() > 2 && history.get(1).is_some_and(|(at, _)| now.duration_since(*at) >= self.window) {
                history.pop_front();
            }
        }
        // Owners with no CPU for a whole window are forgotten (a container gone, a user logged out).
        let window = self.window;
        let quiet: Vec<Owner> = self
            .history
            .iter()
            .filter(|(_, h)| match (h.front(), h.back()) {
                (Some((first_at, first)), Some((last_at, last))) => {
                    first == last && last_at.duration_since(*first_at) >= window
                }
                _ => false,
            })
            .map(|(who, _)| who.clone())
            .collect();
        for who in quiet {
            self.history.remove(&who);
            self.totals.remove(&who);
            self.units.remove(&who);
        }
        let mut rows: BTreeMap<Owner, f64> = BTreeMap::new();
        for (who, history) in &self.history {
            let (Some((first_at, first)), Some((last_at, last))) = (history.front(), history.back()) else { continue };
            let span = last_at.duration_since(*first_at);
            if span.is_zero() {
                continue;
            }
            let percent = last.saturating_sub(*first) as f64 / span.as_micros() as f64 * 100.0;
            total_percent += percent;
            rows.insert(who.clone(), percent);
        }
        for (who, percent) in rows.into_iter().filter(|(_, p)| *p >= self.percent) {
            let unit = self.units.get(&who).cloned().unwrap_or_default();
            let span = self.window.as_secs();
            reasons.push(match &who {
                Owner::User(uid) => {
                    format!("{} in {unit} at {percent:.0}% of a core (over {span}s)", self.accounts.user_name(*uid))
                }
                Owner::Container { runtime, id } => {
                    format!("container {id} ({runtime}) at {percent:.0}% of a core (over {span}s)")
                }
                Owner::Service(name) => format!("{name} at {percent:.0}% of a core (over {span}s; idle.cpu_services)"),
            });
        }
        let sample = if reasons.is_empty() {
            Sample::idle(format!("users' and containers' CPU below {}% of a core", self.percent))
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
    use crate::core::user_uids::UserUids;
    use crate::idle::signal::SignalState;

    #[test]
    fn with_a_directory_s_wide_range_a_directory_user_counts_and_nobody_or_a_dynamic_service_user_does_not() {
        // links.max_uid raised for Entra ID login (uids in the millions).
        let wide = UserUids::new(1000, u32::MAX - 1);
        let entra = classify("/user.slice/user-3197663.slice/session-4.scope", 3_197_663, &wide, &[]);
        assert_eq!(entra, Some((Owner::User(3_197_663), "session-4.scope".to_string())));
        assert_eq!(classify("/system.slice/nfs-idmapd.service", 65534, &wide, &[]), None, "nobody is not at work");
        assert_eq!(classify("/system.slice/systemd-journal-upload.service", 61200, &wide, &[]), None, "DynamicUser=");
        assert_eq!(classify("/user.slice/user-65534.slice/session-1.scope", 65534, &wide, &[]), None);
    }

    #[test]
    fn cpu_is_owned_by_the_user_wherever_it_runs_by_the_container_or_by_an_allowed_service() {
        let users = UserUids::new(1000, 60000);
        let services = vec!["rstudio-server.service".to_string()];
        let user = |unit: &str| Some((Owner::User(1001), unit.to_string()));
        assert_eq!(classify("/user.slice/user-1001.slice/session-3.scope", 1001, &users, &[]), user("session-3.scope"));
        assert_eq!(classify("/system.slice/jupyterhub.service", 1001, &users, &[]), user("jupyterhub.service"));
        assert_eq!(classify("/system.slice/cron.service", 1001, &users, &[]), user("cron.service"));
        assert_eq!(classify("/system.slice/ssh.service", 1001, &users, &[]), user("ssh.service"));
        assert_eq!(classify("/system.slice/run-u42.service", 1001, &users, &[]), user("run-u42.service"));
        assert_eq!(classify("/system.slice/ssh.service", 0, &users, &[]), None, "root's own work does not count");
        assert_eq!(
            classify("/user.slice/user-1001.slice/session-3.scope", 0, &users, &[]),
            user("session-3.scope"),
            "sudo in alice's session is alice's work"
        );
        assert_eq!(classify("/user.slice/user-0.slice/session-9.scope", 0, &users, &[]), None, "root's own login");
        assert_eq!(classify("/system.slice/pool-agentd.service", 0, &users, &[]), None);
        let docker = classify("/system.slice/docker-3f2a9c81d0e4b6a7c5d2e1f0.scope", 0, &users, &[]);
        assert_eq!(docker.map(|d| d.0), Some(Owner::Container { runtime: "docker", id: "3f2a9c81d0e4".into() }));
        let podman =
            classify("/user.slice/user-1001.slice/user@1001.service/libpod-0123456789abcdef.scope", 1001, &users, &[]);
        assert_eq!(podman.map(|p| p.0), Some(Owner::Container { runtime: "podman", id: "0123456789ab".into() }));
        assert_eq!(
            classify("/docker/3f2a9c81d0e4b6a7", 0, &users, &[]).map(|d| d.0),
            Some(Owner::Container { runtime: "docker", id: "3f2a9c81d0e4".into() })
        );
        assert_eq!(classify("/system.slice/rstudio-server.service", 998, &users, &[]), None);
        assert_eq!(
            classify("/system.slice/rstudio-server.service", 998, &users, &services),
            Some((Owner::Service("rstudio-server.service".into()), "rstudio-server.service".into()))
        );
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // real time must pass while a real process works
    fn a_busy_process_of_a_user_range_uid_is_active_and_named() {
        let tmp = tempfile::tempdir().unwrap();
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        let passwd = tmp.path().join("passwd");
        std::fs::write(&passwd, format!("tester:x:{me}:{me}::/home/tester:/bin/bash\n")).unwrap();
        let accounts = AccountsView::new(AccountSource::Files { passwd, group: tmp.path().join("group") });
        // The test's own uid stands for a user-range one.
        let mut cpu = Cpu::new(UserUids::new(me, me), vec![], 10.0, Duration::from_secs(60), accounts);
        assert_eq!(cpu.look().state, SignalState::Idle, "the first pass is the baseline");
        let mut busy = std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(600));
        let sample = cpu.look();
        busy.kill().unwrap();
        busy.wait().unwrap();
        assert_eq!(sample.state, SignalState::Active, "{sample:?}");
        assert!(sample.reasons[0].starts_with("tester in "), "{:?}", sample.reasons);
        assert!(sample.figures["cpu_percent"] > 10.0, "{sample:?}");
    }

    #[test]
    fn without_proc_the_signal_is_unknown_not_idle() {
        let tmp = tempfile::tempdir().unwrap();
        let accounts = AccountsView::new(AccountSource::Files {
            passwd: tmp.path().join("passwd"),
            group: tmp.path().join("group"),
        });
        let mut cpu = Cpu::new(UserUids::new(1000, 60000), vec![], 10.0, Duration::from_secs(60), accounts);
        cpu.proc_root = tmp.path().join("no-proc");
        let sample = cpu.look();
        assert_eq!(sample.state, SignalState::Unknown, "{sample:?}");
    }

    /// A fake `/proc` entry: `pid` with `used` clock ticks of CPU in cgroup `path`.
    fn fake_process(proc_root: &std::path::Path, pid: u32, used: u64, path: &str) {
        let dir = proc_root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let stat = format!("{pid} (python3) R 1 1 1 0 -1 0 0 0 0 0 {used} 0 0 0 20 0 1 0 777 0 0");
        std::fs::write(dir.join("stat"), stat).unwrap();
        std::fs::write(dir.join("cgroup"), format!("0::{path}\n")).unwrap();
    }

    #[test]
    fn a_process_of_another_uid_in_a_user_s_slice_counts_for_that_user() {
        let tmp = tempfile::tempdir().unwrap();
        let passwd = tmp.path().join("passwd");
        std::fs::write(&passwd, "alice:x:100001:100001::/home/alice:/bin/bash\n").unwrap();
        let accounts = AccountsView::new(AccountSource::Files { passwd, group: tmp.path().join("group") });
        // The fake /proc's entries belong to whoever runs the test (root in CI), never a user-range uid here.
        let mut cpu = Cpu::new(UserUids::new(100000, 100010), vec![], 10.0, Duration::from_secs(60), accounts);
        cpu.proc_root = tmp.path().join("proc");
        let scope = "/user.slice/user-100001.slice/session-4.scope";
        fake_process(&cpu.proc_root, 4242, 100, scope);
        fake_process(&cpu.proc_root, 4243, 100, "/system.slice/cron.service");
        assert_eq!(cpu.look().state, SignalState::Idle, "the first pass is the baseline");
        // Root's cron job works too: it is nobody's, only the sudo job in alice's session counts.
        fake_process(&cpu.proc_root, 4243, 100_000, "/system.slice/cron.service");
        let sample = cpu.look();
        assert_eq!(sample.state, SignalState::Idle, "root outside users' slices: {sample:?}");
        fake_process(&cpu.proc_root, 4242, 100_000, scope);
        let sample = cpu.look();
        assert_eq!(sample.state, SignalState::Active, "{sample:?}");
        assert!(sample.reasons[0].starts_with("alice in session-4.scope at "), "{:?}", sample.reasons);
    }
}
