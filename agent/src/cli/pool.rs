//! `pool-agent pool`: the VMs whose records are on the share, where users
//! have sessions, and users whose ids differ between VMs; `--login-note`
//! prints only the caller's other VMs (the login script shows it).

use super::Call;
use crate::pool::{record, PoolReport};
use std::fmt::Write;

pub fn call(login_note: bool) -> Call {
    let call = Call::get("/v1/pool");
    if login_note {
        return call.shown_by(|body| {
            let report =
                serde_json::from_slice::<PoolReport>(body).map_err(|err| format!("unexpected pool answer: {err}"))?;
            Ok(note(&report, &report.you))
        });
    }
    call.shown_by(|body| {
        serde_json::from_slice::<PoolReport>(body)
            .map(|report| summary(&report))
            .map_err(|err| format!("unexpected pool answer: {err}"))
    })
}

/// The caller's sessions on other VMs, one line, or nothing.
pub fn note(report: &PoolReport, user: &str) -> String {
    let others = record::elsewhere(&report.view, user, &report.here);
    if user.is_empty() || others.is_empty() {
        return String::new();
    }
    let listed: Vec<String> = others.iter().map(|(vm, n)| format!("{vm} ({n} session(s))")).collect();
    format!(
        "pool-agent: this is {}; you still have sessions on {} — reach it with `ssh` through the pool's NAT port for that VM (ask your admin), or save your work there first.\n",
        report.here,
        listed.join(", ")
    )
}

pub fn summary(report: &PoolReport) -> String {
    let mut out = String::new();
    let _ =
        writeln!(out, "pool: {} (this VM: {})", report.state, if report.here.is_empty() { "-" } else { &report.here });
    if let Some(error) = &report.error {
        let _ = writeln!(out, "  error: {error}");
    }
    for vm in &report.view.vms {
        let users: Vec<String> =
            vm.users.iter().filter(|u| u.sessions > 0).map(|u| format!("{} ({})", u.name, u.sessions)).collect();
        let who = if users.is_empty() { "nobody".to_string() } else { users.join(", ") };
        let _ = writeln!(out, "  {:<16} {who}  (record of {})", vm.instance, vm.updated_at);
    }
    for conflict in &report.view.conflicts {
        let _ = writeln!(
            out,
            "  ids differ: {conflict}: files one writes on the share belong to someone else on the other"
        );
    }
    for ignored in &report.view.ignored {
        let _ = writeln!(out, "  ignored: {ignored}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::record::{PoolView, UserSeen, VmRecord};

    #[test]
    fn the_note_names_the_other_vms_with_the_caller_s_sessions_and_is_empty_otherwise() {
        let vm = |name: &str, sessions: u32| VmRecord {
            instance: name.into(),
            updated_at: "2026-12-03T10:00:00Z".into(),
            users: vec![UserSeen { name: "alice".into(), uid: 1001, gid: 1001, sessions }],
        };
        let report = PoolReport {
            here: "pool_3".into(),
            view: PoolView { vms: vec![vm("pool_3", 1), vm("pool_7", 2)], ..PoolView::default() },
            ..PoolReport::default()
        };
        let note = note(&report, "alice");
        assert!(note.contains("this is pool_3") && note.contains("pool_7 (2 session(s))"), "{note}");
        assert_eq!(super::note(&report, "bob"), "");
        let summary = summary(&report);
        assert!(summary.contains("pool_7") && summary.contains("alice (2)"), "{summary}");
    }
}
