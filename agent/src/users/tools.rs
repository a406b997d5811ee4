//! The system's own tools for accounts (shadow-utils: `groupadd`, `useradd`,
//! `usermod`; logind's `loginctl`), so passwd, shadow and group are edited
//! under their locks exactly as an admin's commands would. Under `--root`
//! they get `--prefix <root>` and edit the sandbox's files.
//!
//! Only names and ids go on a command line; keys are written through
//! descriptors (see `keys`).

use super::plan::Change;
use std::path::Path;
use std::time::Duration;

/// One tool can wait on a lock (another useradd, a slow NSS module): it is
/// given this long and killed after.
pub const TOOL_DEADLINE: Duration = Duration::from_secs(20);

/// A command to run: program and arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub program: &'static str,
    pub args: Vec<String>,
}

/// The commands for one change. `prefix` is the sandbox root under `--root`.
/// A lock on a real system also ends the user's sessions; a sandbox has no
/// logind of its own, so there the lock alone is done.
pub fn calls_for(change: &Change, prefix: Option<&Path>) -> Vec<ToolCall> {
    let with_prefix = |program: &'static str, rest: Vec<String>| {
        let mut args = Vec::new();
        if let Some(root) = prefix {
            args.push("--prefix".to_string());
            args.push(root.display().to_string());
        }
        args.extend(rest);
        ToolCall { program, args }
    };
    let s = |text: &str| text.to_string();
    match change {
        Change::AddGroup { name, gid } => vec![with_prefix("groupadd", vec![s("-g"), gid.to_string(), name.clone()])],
        Change::AddUser { name, uid, gid, groups, shell } => {
            let mut args = vec![s("-u"), uid.to_string(), s("-g"), gid.to_string()];
            if !groups.is_empty() {
                args.extend([s("-G"), groups.join(",")]);
            }
            args.extend([s("-s"), shell.clone(), s("-m"), name.clone()]);
            vec![with_prefix("useradd", args)]
        }
        Change::SetShell { name, shell } => vec![with_prefix("usermod", vec![s("-s"), shell.clone(), name.clone()])],
        Change::JoinGroups { name, groups } => {
            vec![with_prefix("usermod", vec![s("-a"), s("-G"), groups.join(","), name.clone()])]
        }
        Change::Lock { name } => {
            let mut calls = vec![with_prefix("usermod", vec![s("-L"), s("-e"), s("1"), name.clone()])];
            if prefix.is_none() {
                calls.push(ToolCall { program: "loginctl", args: vec![s("terminate-user"), name.clone()] });
            }
            calls
        }
        // An empty expiry clears the lock's; the password stays as it was
        // (`!`, none: registry users log in with keys).
        Change::Unlock { name } => vec![with_prefix("usermod", vec![s("-e"), String::new(), name.clone()])],
    }
}

/// Runs one call with the deadline; the error names the tool, its exit and
/// its first line of complaint.
pub async fn run(call: &ToolCall) -> Result<(), String> {
    let mut command = tokio::process::Command::new(call.program);
    command
        .args(&call.args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().map_err(|err| format!("cannot run {}: {err}", call.program))?;
    match tokio::time::timeout(TOOL_DEADLINE, child.wait_with_output()).await {
        Err(_) => Err(format!("{} did not finish within {}s; killed", call.program, TOOL_DEADLINE.as_secs())),
        Ok(Err(err)) => Err(format!("{} failed: {err}", call.program)),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let said = String::from_utf8_lossy(&out.stderr);
            let first = said.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
            Err(format!("{} {} exited with {}: {first}", call.program, call.args.join(" "), out.status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_change_is_the_admin_s_own_command_with_the_sandbox_prefix_under_root() {
        let add = Change::AddUser {
            name: "carol".into(),
            uid: 2001,
            gid: 2001,
            groups: vec!["science".into(), "gpu".into()],
            shell: "/bin/bash".into(),
        };
        assert_eq!(
            calls_for(&add, None),
            [ToolCall {
                program: "useradd",
                args: "-u 2001 -g 2001 -G science,gpu -s /bin/bash -m carol".split(' ').map(String::from).collect()
            }]
        );
        let sandboxed = calls_for(&Change::AddGroup { name: "carol".into(), gid: 2001 }, Some(Path::new("/tmp/x")));
        assert_eq!(sandboxed[0].args, ["--prefix", "/tmp/x", "-g", "2001", "carol"]);
    }

    #[test]
    fn a_lock_ends_sessions_on_a_real_system_only() {
        let lock = Change::Lock { name: "dave".into() };
        let real = calls_for(&lock, None);
        assert_eq!(real.len(), 2);
        assert_eq!(real[0].args, ["-L", "-e", "1", "dave"]);
        assert_eq!((real[1].program, real[1].args.clone()), ("loginctl", vec!["terminate-user".into(), "dave".into()]));
        assert_eq!(calls_for(&lock, Some(Path::new("/tmp/x"))).len(), 1);
    }

    #[tokio::test]
    async fn a_failing_tool_says_what_it_complained_of() {
        let call = ToolCall { program: "sh", args: vec!["-c".into(), "echo 'no such user' >&2; exit 6".into()] };
        let err = run(&call).await.unwrap_err();
        assert!(err.contains("no such user") && err.contains('6'), "{err}");
        assert!(run(&ToolCall { program: "true", args: vec![] }).await.is_ok());
    }
}
