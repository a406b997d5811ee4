//! `pool-agent users`: each registry account and where it stands on this VM
//! (created, present, locked, missing, a conflict and why), its keys.

use super::Call;
use crate::users::UsersReport;
use std::fmt::Write;

pub fn call() -> Call {
    Call::get("/v1/users").shown_by(|body| {
        serde_json::from_slice::<UsersReport>(body)
            .map(|report| summary(&report))
            .map_err(|err| format!("unexpected users answer: {err}"))
    })
}

pub fn summary(report: &UsersReport) -> String {
    let mut out = String::new();
    let managed = if report.manage { "managed" } else { "not managed (users.manage = false: nothing is changed)" };
    let _ = writeln!(out, "users: {} registry account(s), {managed}", report.accounts.len());
    if let Some(error) = &report.error {
        let _ = writeln!(out, "  error: {error}");
    }
    if !report.share_registry.is_empty() {
        let _ = writeln!(out, "  share registry: {}", report.share_registry);
    }
    if let Some(error) = &report.share_error {
        let _ = writeln!(out, "  share registry not used: {error}");
    }
    for note in &report.notes {
        let _ = writeln!(out, "  {note}");
    }
    for account in &report.accounts {
        let keys = if account.keys.is_empty() { String::new() } else { format!("; keys {}", account.keys) };
        let disabled = if account.enabled { "" } else { " (disabled)" };
        let _ =
            writeln!(out, "  {:<16} {}:{}{disabled}  {}{keys}", account.name, account.uid, account.gid, account.state);
        for note in &account.notes {
            let _ = writeln!(out, "      {note}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::AccountState;

    #[test]
    fn each_account_shows_its_ids_state_and_keys() {
        let report = UsersReport {
            manage: true,
            accounts: vec![
                AccountState {
                    name: "carol".into(),
                    uid: 2001,
                    gid: 2001,
                    enabled: true,
                    state: "created".into(),
                    keys: "installed".into(),
                    notes: vec!["add user carol (2001:2001)".into()],
                },
                AccountState {
                    name: "bob".into(),
                    uid: 3002,
                    gid: 3002,
                    enabled: true,
                    state: "conflict: local account bob has uid 1002".into(),
                    ..AccountState::default()
                },
            ],
            ..UsersReport::default()
        };
        let text = summary(&report);
        assert!(text.contains("carol") && text.contains("2001:2001") && text.contains("keys installed"), "{text}");
        assert!(text.contains("bob") && text.contains("conflict: local account bob has uid 1002"), "{text}");
    }
}
