//! The mount seam: the real `mount`/`umount` helpers, under a timeout, with a
//! clean environment. Tests substitute a fake.

use futures_util::future::BoxFuture;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// One `mount` call. Carries no secret: cifs credentials go by file path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountCall {
    /// `cifs`, `nfs`; `None` for a bind mount.
    pub fstype: Option<String>,
    pub source: String,
    pub target: PathBuf,
    pub options: Vec<String>,
}

impl MountCall {
    pub fn argv(&self) -> Vec<String> {
        let mut argv = Vec::new();
        match &self.fstype {
            Some(fstype) => argv.extend(["-t".to_string(), fstype.clone()]),
            None => argv.push("--bind".to_string()),
        }
        if !self.options.is_empty() {
            argv.extend(["-o".to_string(), self.options.join(",")]);
        }
        // Whatever the source and target hold, mount(8) reads them as operands.
        argv.push("--".to_string());
        argv.push(self.source.clone());
        argv.push(self.target.display().to_string());
        argv
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum MountError {
    #[error("`{command}` failed ({status}): {output}")]
    Failed { command: String, status: String, output: String },
    #[error("`{command}` did not finish within {}", crate::config::duration::format_rounded(*after))]
    TimedOut { command: String, after: Duration },
    #[error("cannot run `{command}`: {reason}")]
    Spawn { command: String, reason: String },
}

impl MountError {
    /// The server refused the credentials: mount.cifs reports the kernel's
    /// EACCES as `mount error(13)`.
    pub fn is_authentication_failure(&self) -> bool {
        matches!(self, MountError::Failed { output, .. } if output.contains("mount error(13)"))
    }
}

pub trait Mounter: Send + Sync + 'static {
    fn mount(&self, call: MountCall, timeout: Duration) -> BoxFuture<'static, Result<(), MountError>>;
    /// Detaches the mount now; open files keep working on the detached tree.
    fn unmount_lazy(&self, target: PathBuf, timeout: Duration) -> BoxFuture<'static, Result<(), MountError>>;
    /// What is mounted where (the kernel's mount table for the real thing).
    fn table(&self) -> std::io::Result<Vec<crate::core::mountinfo::MountEntry>>;
}

/// Runs `/bin/mount` and `/bin/umount`, which pick the `mount.cifs`/`mount.nfs` helpers.
#[derive(Debug, Default, Clone)]
pub struct SystemMounter;

async fn run(program: &str, args: Vec<String>, timeout: Duration) -> Result<(), MountError> {
    let command = format!("{program} {}", args.join(" "));
    let child = Command::new(program)
        .args(&args)
        // A clean environment: nothing of the daemon's (NOTIFY_SOCKET, ...) leaks into helpers.
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| MountError::Spawn { command: command.clone(), reason: err.to_string() })?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(err)) => return Err(MountError::Spawn { command, reason: err.to_string() }),
        Err(_) => return Err(MountError::TimedOut { command, after: timeout }),
    };
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if text.is_empty() {
        text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    }
    // Helpers can be chatty; the last lines say what went wrong.
    let tail: Vec<&str> = text.lines().rev().take(3).collect();
    let output_text = tail.into_iter().rev().collect::<Vec<_>>().join(" / ");
    Err(MountError::Failed { command, status: output.status.to_string(), output: output_text })
}

impl Mounter for SystemMounter {
    fn mount(&self, call: MountCall, timeout: Duration) -> BoxFuture<'static, Result<(), MountError>> {
        Box::pin(run("mount", call.argv(), timeout))
    }

    fn unmount_lazy(&self, target: PathBuf, timeout: Duration) -> BoxFuture<'static, Result<(), MountError>> {
        // --no-canonicalize: resolving the path would stat a mount whose
        // server hangs, and the lazy detach itself never needs the server.
        let args =
            vec!["-l".to_string(), "--no-canonicalize".to_string(), "--".to_string(), target.display().to_string()];
        Box::pin(run("umount", args, timeout))
    }

    fn table(&self) -> std::io::Result<Vec<crate::core::mountinfo::MountEntry>> {
        crate::core::mountinfo::read()
    }
}

/// The mount table, read off the async workers: the kernel formats every
/// mount's options as it is read, and a network filesystem's may wait on a
/// server that hangs. A read that does not finish in time is an error.
pub async fn table_off_workers(
    mounter: std::sync::Arc<dyn Mounter>,
) -> std::io::Result<Vec<crate::core::mountinfo::MountEntry>> {
    const TABLE_DEADLINE: Duration = Duration::from_secs(5);
    crate::core::task::blocking("reading the mount table", TABLE_DEADLINE, move || mounter.table())
        .await
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::TimedOut, err.to_string()))?
}

/// True when `path` and `other` are the same directory (a bind mount of one on the other).
pub fn same_directory(path: &Path, other: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), std::fs::metadata(other)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_carries_type_options_source_and_target() {
        let call = MountCall {
            fstype: Some("cifs".into()),
            source: "//srv/share".into(),
            target: "/data/notebooks".into(),
            options: vec!["vers=3.1.1".into(), "credentials=/run/pool-agent/share.credentials".into()],
        };
        assert_eq!(
            call.argv(),
            [
                "-t",
                "cifs",
                "-o",
                "vers=3.1.1,credentials=/run/pool-agent/share.credentials",
                "--",
                "//srv/share",
                "/data/notebooks"
            ]
        );
        let bind = MountCall { fstype: None, source: "/srv/a".into(), target: "/data/b".into(), options: vec![] };
        assert_eq!(bind.argv(), ["--bind", "--", "/srv/a", "/data/b"]);
    }

    #[tokio::test]
    async fn a_failing_helper_reports_its_last_words() {
        let err = run(
            "sh",
            vec!["-c".into(), "echo first >&2; echo 'mount error(13): Permission denied' >&2; exit 32".into()],
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("Permission denied") && text.contains("32"), "{text}");
    }

    #[tokio::test]
    async fn a_hung_helper_is_killed_at_the_timeout() {
        let started = std::time::Instant::now();
        let err = run("sleep", vec!["30".into()], Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, MountError::TimedOut { .. }));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
