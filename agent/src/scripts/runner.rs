//! How a script's processes are started and stopped: the seam between the
//! scripts task and the system.
//!
//! - [`SystemdRunner`] (systemd is PID 1, not a sandbox): each run is a
//!   transient service made by `systemd-run --wait --pipe`, so it gets full
//!   root (not the agent's capability bounding set), its own cgroup (a
//!   timeout kills every descendant, whatever it did to detach), and the
//!   user's groups from PID 1's initgroups.
//! - [`DirectRunner`] (`--root` sandbox, or no systemd): a child of the agent
//!   in a session and process group of its own, supplementary groups, gid and
//!   uid set in that order before exec; a timeout signals the process group.

use super::record::{process_start, RunRecord};
use crate::core::accounts::Account;
use crate::core::credentials::PRIVATE_RUN_DIR;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::Duration;

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    /// The script as the agent reaches it.
    pub program: PathBuf,
    pub args: Vec<String>,
    pub workdir: PathBuf,
    pub env: Vec<(String, String)>,
    pub account: Account,
    /// Primary group first.
    pub groups: Vec<u32>,
    pub timeout: Duration,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
}

/// What to signal to reach everything a run started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handle {
    ProcessGroup(i32),
    Unit(String),
}

pub struct Launched {
    /// The script itself (direct) or `systemd-run`, which ends with the unit.
    pub child: tokio::process::Child,
    /// The read end of the one pipe both stdout and stderr write to.
    pub output: OwnedFd,
    pub handle: Handle,
    pub pid: Option<u32>,
    pub pid_start: Option<u64>,
}

pub trait ProcessRunner: Send + Sync {
    /// `systemd` or `direct`, for status.
    fn kind(&self) -> &'static str;
    /// Starts the job (blocking: call it off the async workers, inside the runtime).
    fn launch(&self, job: &Job) -> io::Result<Launched>;
    /// Sends `signal` to every process of the run.
    fn signal_all(&self, handle: &Handle, signal: Signal);
    /// Whether any process of the run is still there.
    fn any_left(&self, handle: &Handle) -> bool;
    /// Stops what is left of a run the agent lost track of (it died mid-run).
    fn stop_leftover(&self, record: &RunRecord);
    /// Cleans up after a run (files written for it).
    fn finished(&self, _job: &Job) {}
}

fn output_pipe() -> io::Result<(OwnedFd, Stdio, Stdio)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let second = write.try_clone()?;
    Ok((read, Stdio::from(write), Stdio::from(second)))
}

pub struct DirectRunner;

impl ProcessRunner for DirectRunner {
    fn kind(&self) -> &'static str {
        "direct"
    }

    fn launch(&self, job: &Job) -> io::Result<Launched> {
        let (output, stdout, stderr) = output_pipe()?;
        let mut command = tokio::process::Command::new(&job.program);
        command
            .args(&job.args)
            .env_clear()
            .envs(job.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&job.workdir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let switch = nix::unistd::geteuid().as_raw() != job.account.uid;
        let (uid, gid) = (job.account.uid, job.account.gid);
        let groups: Vec<libc::gid_t> = job.groups.clone();
        // SAFETY: between fork and exec only async-signal-safe calls (setsid,
        // setgroups, setgid, setuid), on data prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                if switch
                    && (libc::setgroups(groups.len(), groups.as_ptr()) == -1
                        || libc::setgid(gid) == -1
                        || libc::setuid(uid) == -1)
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        let pid = child.id().ok_or_else(|| io::Error::other("the script ended before it could be watched"))?;
        Ok(Launched {
            child,
            output,
            handle: Handle::ProcessGroup(pid as i32),
            pid: Some(pid),
            pid_start: process_start(pid),
        })
    }

    fn signal_all(&self, handle: &Handle, signal: Signal) {
        if let Handle::ProcessGroup(pgid) = handle {
            let _ = killpg(Pid::from_raw(*pgid), signal);
        }
    }

    fn any_left(&self, handle: &Handle) -> bool {
        match handle {
            Handle::ProcessGroup(pgid) => killpg(Pid::from_raw(*pgid), None).is_ok(),
            Handle::Unit(_) => false,
        }
    }

    fn stop_leftover(&self, record: &RunRecord) {
        // Only the very process the record names: a pid reused since is left alone.
        if let (Some(pid), Some(start)) = (record.pid, record.pid_start) {
            if process_start(pid) == Some(start) {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

pub struct SystemdRunner {
    /// Where the environment files go (root only).
    private_dir: PathBuf,
}

impl Default for SystemdRunner {
    fn default() -> Self {
        Self { private_dir: PathBuf::from(PRIVATE_RUN_DIR) }
    }
}

/// Whether systemd manages this boot (as sd_booted(3) decides) and its
/// D-Bus system bus is there: `systemd-run --wait --pipe` needs the bus, not
/// only systemd's private socket (a minimal image may lack dbus).
pub fn systemd_can_run_units() -> Result<(), &'static str> {
    if !Path::new("/run/systemd/system").is_dir() {
        return Err("systemd is not PID 1");
    }
    if !Path::new("/run/dbus/system_bus_socket").exists() {
        return Err("no D-Bus system bus (install dbus), which systemd-run --wait needs");
    }
    Ok(())
}

pub fn unit_name(script: &str) -> String {
    format!("pool-agent-script-{script}.service")
}

fn systemctl(args: &[&str]) -> Option<String> {
    // A clean environment: NOTIFY_SOCKET and the rest of the daemon's stay with it.
    let out = StdCommand::new("systemctl")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl SystemdRunner {
    fn env_file(&self, job: &Job) -> PathBuf {
        self.private_dir.join(format!("script-{}.env", job.name))
    }

    /// The script's environment for `EnvironmentFile=`: in a root-only file,
    /// not on systemd-run's command line, where every user could read it.
    fn write_env_file(&self, job: &Job) -> io::Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.private_dir)?;
        let path = self.env_file(job);
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        for (key, value) in job.env.iter().chain(&arg_variables(job)) {
            writeln!(file, "{key}=\"{}\"", env_file_quote(value))?;
        }
        file.sync_all()?;
        Ok(path)
    }
}

/// The script's arguments as variables of its environment file: `ps` shows
/// systemd-run's argv to every user, and arguments carry tokens as often as
/// environment values do.
fn arg_variables(job: &Job) -> Vec<(String, String)> {
    job.args.iter().enumerate().map(|(i, arg)| (format!("POOL_AGENT_ARG_{}", i + 1), arg.clone())).collect()
}

/// What follows systemd-run's `--`: the script, then `${POOL_AGENT_ARG_n}`
/// for each argument, which systemd replaces with the value as one word when
/// it starts the unit (a `$` in the path is doubled so it stays a `$`).
fn unit_command(job: &Job) -> Vec<String> {
    let mut argv = vec![job.program.display().to_string().replace('$', "$$")];
    argv.extend(arg_variables(job).into_iter().map(|(name, _)| format!("${{{name}}}")));
    argv
}

/// Double-quoted for systemd's EnvironmentFile=: backslash and quote escaped.
fn env_file_quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl ProcessRunner for SystemdRunner {
    fn kind(&self) -> &'static str {
        "systemd"
    }

    fn launch(&self, job: &Job) -> io::Result<Launched> {
        let unit = unit_name(&job.name);
        // A unit of this name left failed by an earlier run would block the new one.
        let _ = systemctl(&["reset-failed", &unit]);
        let env_file = self.write_env_file(job)?;
        // A launch that fails leaves no file of secrets behind.
        let forget = |err: io::Error| {
            let _ = std::fs::remove_file(&env_file);
            err
        };
        let (output, stdout, stderr) = output_pipe().map_err(forget)?;
        let backstop = job.timeout + job.grace + Duration::from_secs(60);
        let mut command = tokio::process::Command::new("systemd-run");
        command
            .arg(format!("--unit={unit}"))
            .arg(format!("--description=pool-agent setup script {}", job.name))
            .args(["--wait", "--pipe", "--collect", "--service-type=exec"])
            .arg(format!("--working-directory={}", job.workdir.display()))
            .arg(format!("--property=EnvironmentFile={}", env_file.display()))
            .arg(format!("--property=TimeoutStopSec={}ms", job.grace.as_millis()))
            // If the agent dies, systemd still ends a run that hangs.
            .arg(format!("--property=RuntimeMaxSec={}", backstop.as_secs()))
            .arg("--property=KillMode=control-group");
        if job.account.uid != 0 {
            command.arg(format!("--uid={}", job.account.name));
        }
        command
            .arg("--")
            .args(unit_command(job))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = command.spawn().map_err(forget)?;
        Ok(Launched { child, output, handle: Handle::Unit(unit), pid: None, pid_start: None })
    }

    fn signal_all(&self, handle: &Handle, signal: Signal) {
        if let Handle::Unit(unit) = handle {
            // `systemctl kill` reaches every process in the unit's cgroup.
            let _ = systemctl(&["kill", &format!("--signal={}", signal.as_str()), unit]);
        }
    }

    fn any_left(&self, handle: &Handle) -> bool {
        match handle {
            Handle::Unit(unit) => matches!(
                systemctl(&["show", "--property=ActiveState", "--value", unit]).as_deref(),
                Some("active" | "activating" | "deactivating" | "reloading")
            ),
            Handle::ProcessGroup(_) => false,
        }
    }

    fn stop_leftover(&self, record: &RunRecord) {
        if let Some(unit) = &record.unit {
            let _ = systemctl(&["stop", unit]);
            let _ = systemctl(&["reset-failed", unit]);
        }
    }

    fn finished(&self, job: &Job) {
        let _ = std::fs::remove_file(self.env_file(job));
    }
}

/// The unit's main pid while it runs (for status), from systemd.
pub fn unit_main_pid(unit: &str) -> Option<u32> {
    systemctl(&["show", "--property=MainPID", "--value", unit])?.parse().ok().filter(|pid| *pid != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_file_values_cannot_break_out_of_their_quotes() {
        assert_eq!(env_file_quote(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(env_file_quote("x\ny"), "x\\ny");
    }

    #[test]
    fn arguments_reach_the_unit_through_the_root_only_file_not_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let runner = SystemdRunner { private_dir: dir.path().join("private") };
        let job = Job {
            name: "fetch".into(),
            program: "/opt/setup/fetch$1.sh".into(),
            args: vec!["--token".into(), "s3cret value".into()],
            workdir: "/".into(),
            env: vec![("LANG".into(), "C.UTF-8".into())],
            account: crate::core::accounts::Account {
                name: "root".into(),
                uid: 0,
                gid: 0,
                home: "/root".into(),
                shell: "/bin/sh".into(),
            },
            groups: vec![0],
            timeout: Duration::from_secs(60),
            grace: Duration::from_secs(5),
        };
        let argv = unit_command(&job);
        assert_eq!(argv, ["/opt/setup/fetch$$1.sh", "${POOL_AGENT_ARG_1}", "${POOL_AGENT_ARG_2}"]);
        assert!(!argv.join(" ").contains("s3cret"));
        let file = runner.write_env_file(&job).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.lines().any(|l| l == "POOL_AGENT_ARG_2=\"s3cret value\""), "{text}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
