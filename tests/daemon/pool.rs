//! The pool's records on the share: this VM's (who has sessions here, with
//! the ids this VM gives them) and the others', read together for the login
//! note and the cross-VM id check. The other VM is played by its record, the
//! contract between agents.

// Black-box tests poll real processes from plain threads; sleeping is the point.
#![allow(clippy::disallowed_methods)]

use crate::harness::*;
use std::time::{Duration, SystemTime};

fn fresh() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[test]
fn a_session_here_is_recorded_on_the_share_and_another_vm_s_other_ids_and_sessions_are_named() {
    let test = "a_session_here_is_recorded_on_the_share_and_another_vm_s_other_ids_and_sessions_are_named";
    if !nix_is_root() {
        skip_note(&format!("SKIP {test}: the login note is asked as a user (CI runs as root)"));
        return;
    }
    let sandbox = Sandbox::new();
    let root = sandbox.root().to_path_buf();
    sandbox.write_config(&LOCAL_SHARE_CONFIG.replace("interval = \"10s\"", "interval = \"2s\""));
    // alice has a terminal session here (logind's record, input on its tty).
    let sessions = root.join("run/systemd/sessions");
    std::fs::create_dir_all(&sessions).unwrap();
    std::fs::create_dir_all(root.join("dev/pts")).unwrap();
    std::fs::write(root.join("dev/pts/4"), "").unwrap();
    std::fs::write(
        sessions.join("4"),
        format!(
            "UID={ADMIN_UID}\nUSER=alice\nTTY=pts/4\nREMOTE_HOST=10.0.0.9\nSERVICE=sshd\nCLASS=user\nSTATE=active\n"
        ),
    )
    .unwrap();
    let _daemon = sandbox.start();
    let record_file = root.join("srv/share/.pool-agent/vms/vm-test-0.json");
    let mine = eventually(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&record_file).ok()?;
        let record: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(record).filter(|r| r["users"].as_array().is_some_and(|u| !u.is_empty()))
    })
    .unwrap_or_else(|| panic!("no record with alice: {:?}", std::fs::read_to_string(&record_file)));
    assert_eq!(mine["instance"], "vm-test-0");
    assert_eq!(mine["users"][0]["name"], "alice", "{mine}");
    assert_eq!(mine["users"][0]["uid"], ADMIN_UID, "{mine}");
    assert_eq!(mine["users"][0]["sessions"], 1, "{mine}");
    let meta = std::fs::symlink_metadata(&record_file).unwrap();
    assert!(meta.file_type().is_file(), "a plain file, root's");

    // Another VM: alice works there too, under another uid; a gone VM's record is old.
    let other = serde_json::json!({"instance": "pool_7", "updated_at": fresh(),
        "users": [{"name": "alice", "uid": 2001, "gid": 2001, "sessions": 2}]});
    std::fs::write(root.join("srv/share/.pool-agent/vms/pool_7.json"), other.to_string()).unwrap();
    let gone = serde_json::json!({"instance": "pool_9", "updated_at": "2020-01-01T00:00:00Z",
        "users": [{"name": "alice", "uid": 3001, "gid": 3001, "sessions": 1}]});
    std::fs::write(root.join("srv/share/.pool-agent/vms/pool_9.json"), gone.to_string()).unwrap();

    // A read asked for reuses one up to 30 s old (the share is many VMs'): within 40 s.
    let vms = |pool: &serde_json::Value| -> Vec<String> {
        pool["view"]["vms"].as_array().unwrap().iter().map(|v| v["instance"].as_str().unwrap().to_string()).collect()
    };
    let pool = eventually(Duration::from_secs(40), || {
        Some(sandbox.cli_json(&["pool", "--json"])).filter(|p| vms(p).len() > 1)
    })
    .unwrap_or_else(|| panic!("the other VM never seen: {:#}", sandbox.cli_json(&["pool", "--json"])));
    assert_eq!(vms(&pool), ["pool_7", "vm-test-0"], "the gone VM is left out: {pool:#}");
    assert!(pool["view"]["ignored"].to_string().contains("pool_9"), "said why: {pool:#}");
    let conflict = pool["view"]["conflicts"][0].to_string();
    assert!(
        conflict.contains("alice") && conflict.contains("2001") && conflict.contains(&ADMIN_UID.to_string()),
        "{pool:#}"
    );
    // Status names it: files alice writes on one VM belong to someone else on the other.
    let status = sandbox.status_json();
    let row = status["components"].as_array().unwrap().iter().find(|c| c["name"] == "pool").cloned().unwrap();
    assert_eq!(row["state"], "degraded", "{row}");
    assert!(row["last_error"].as_str().unwrap().contains("pool_7 2001:2001"), "{row}");

    // alice's login note names her other VM; bob (no sessions elsewhere) gets nothing.
    let note = sandbox.cli_as(ADMIN_UID, &["pool", "--login-note"]);
    assert!(note.status.success(), "{}", stderr(&note));
    let text = stdout(&note);
    assert!(text.contains("this is vm-test-0") && text.contains("pool_7 (2 session(s))"), "{text}");
    let nobody = sandbox.cli_as(65534, &["pool", "--login-note"]);
    assert!(nobody.status.success() && stdout(&nobody).is_empty(), "{}", stdout(&nobody));

    // alice logs out here: the record follows within a sample or two.
    std::fs::remove_file(sessions.join("4")).unwrap();
    let emptied = eventually(Duration::from_secs(20), || {
        let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&record_file).ok()?).ok()?;
        Some(record).filter(|r| r["users"].as_array().is_some_and(|u| u.is_empty()))
    });
    assert!(emptied.is_some(), "{:?}", std::fs::read_to_string(&record_file));
}
