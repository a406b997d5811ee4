//! Scale-in against the fake Azure: Scheduled Events drained and approved
//! only when the work allows, and self-delete that retries, follows its
//! operation and keeps the pool's floor with a lease on the scale set.

// Black-box tests poll real processes from plain threads; sleeping is the point.
#![allow(clippy::disallowed_methods)]

use crate::azure::{azure_config, azure_json, protection_config, FakeAzure};
use crate::harness::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SCALE_SET: &str = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-pool/providers/Microsoft.Compute/virtualMachineScaleSets/pool";

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Idle a minute after the last activity, sampled every 2 s.
fn quick_idle(config: &str) -> String {
    config.replace("interval = \"10s\"\ntimeout = \"30m\"", "interval = \"2s\"\ntimeout = \"1m\"\nboot_grace = \"0s\"")
}

fn events_json(sandbox: &Sandbox) -> serde_json::Value {
    sandbox.cli_json(&["events", "--json"])
}

fn handling_of(report: &serde_json::Value, id: &str) -> String {
    report["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["id"] == id))
        .and_then(|e| e["handling"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn nologin(sandbox: &Sandbox) -> Option<String> {
    std::fs::read_to_string(sandbox.root().join("run/nologin")).ok()
}

fn one_terminate(incarnation: u64, id: &str, vm: &str, not_before: SystemTime) -> serde_json::Value {
    let not_before = httpdate::fmt_http_date(not_before);
    serde_json::json!({"scheduled_events": {"DocumentIncarnation": incarnation, "Events": [
        event(id, "Terminate", "Scheduled", &[vm], &not_before)]}})
}

fn no_events(incarnation: u64) -> serde_json::Value {
    serde_json::json!({"scheduled_events": {"DocumentIncarnation": incarnation, "Events": []}})
}

#[test]
fn a_terminate_waits_for_a_user_at_work_until_not_before_minus_30_s_and_nologin_goes_with_the_event() {
    if !nix_is_root() {
        skip_note("SKIP a_terminate_waits…: a hold needs a user-range uid or an admin; root is one (CI runs as root)");
        return;
    }
    let Some(fake) = FakeAzure::start() else { return };
    let sandbox = Sandbox::new();
    sandbox.write_config(&quick_idle(&azure_config(&fake, "")));
    let _daemon = sandbox.start();
    eventually(Duration::from_secs(20), || Some(()).filter(|_| events_json(&sandbox)["state"] == "watching"))
        .unwrap_or_else(|| panic!("events not watched: {:#}", events_json(&sandbox)));
    // She is at work: a hold, as a user keeps her VM.
    let held = sandbox.cli_json(&["--json", "hold", "1h", "--reason", "typing in a notebook"]);
    assert!(held["id"].is_string(), "{held:#}");
    // NotBefore 50 s away (the rule is the same at 300 s; the test is faster).
    let set_at = unix_now();
    let not_before = UNIX_EPOCH + Duration::from_secs(set_at as u64 + 50);
    fake.configure(one_terminate(1, "T-WORK", "pool_3", not_before));
    let deadline = not_before.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() - 30.0;
    // Told at once, not approved while she works.
    let told = eventually(Duration::from_secs(10), || {
        let report = events_json(&sandbox);
        handling_of(&report, "T-WORK").starts_with("draining: in use").then_some(report)
    });
    assert!(told.is_some(), "not draining: {:#}", events_json(&sandbox));
    assert!(nologin(&sandbox).is_some_and(|n| n.contains("Save your work")), "{:?}", nologin(&sandbox));
    while unix_now() < deadline - 1.5 {
        assert!(fake.read("approvals").is_empty(), "approved {:.1} s before NotBefore - 30 s", deadline - unix_now());
        std::thread::sleep(Duration::from_millis(500));
    }
    let approved = eventually(Duration::from_secs(10), || Some(fake.read("approvals")).filter(|a| !a.is_empty()))
        .unwrap_or_else(|| panic!("never approved: {:#}", events_json(&sandbox)));
    let at = approved[0]["time"].as_f64().unwrap();
    println!("approved {:.1} s after the event came, {:.1} s after NotBefore - 30 s", at - set_at, at - deadline);
    assert!(at >= deadline - 1.0 && at <= deadline + 4.0, "approved at {:.1} s from NotBefore - 30 s", at - deadline);
    assert_eq!(approved.len(), 1);
    assert_eq!(handling_of(&events_json(&sandbox), "T-WORK"), "approved");
    // The event leaves the document and the VM still runs: logins welcome again.
    fake.configure(no_events(2));
    let gone = eventually(Duration::from_secs(10), || Some(()).filter(|_| nologin(&sandbox).is_none()));
    assert!(gone.is_some(), "nologin left behind: {:?}", nologin(&sandbox));
    // An admin's own nologin is not the agent's to remove.
    std::fs::write(sandbox.root().join("run/nologin"), "maintenance until 18:00\n").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(nologin(&sandbox).as_deref(), Some("maintenance until 18:00\n"));
}

#[test]
fn a_terminate_waiting_for_a_user_is_approved_when_the_verdict_turns_idle_not_at_the_deadline() {
    if !nix_is_root() {
        skip_note("SKIP a_terminate_waiting_for_a_user…: a hold needs a user-range uid or an admin; root is one");
        return;
    }
    let Some(fake) = FakeAzure::start() else { return };
    let sandbox = Sandbox::new();
    sandbox.write_config(&quick_idle(&azure_config(&fake, "")));
    let _daemon = sandbox.start();
    let held = sandbox.cli_json(&["--json", "hold", "1h", "--reason", "training"]);
    let id = held["id"].as_str().unwrap().to_string();
    let not_before = SystemTime::now() + Duration::from_secs(240);
    fake.configure(one_terminate(1, "T-LEAVES", "pool_3", not_before));
    let waiting = eventually(Duration::from_secs(15), || {
        Some(events_json(&sandbox)).filter(|r| handling_of(r, "T-LEAVES").starts_with("draining: in use"))
    });
    assert!(waiting.is_some(), "{:#}", events_json(&sandbox));
    // She is done: the hold goes, the verdict turns idle a minute later, and the approval follows it.
    assert!(sandbox.cli(&["hold", "release", &id]).status.success());
    let mut idle_at = None;
    let approved = eventually(Duration::from_secs(120), || {
        if idle_at.is_none() && sandbox.cli_json(&["idle", "--json"])["verdict"] == "idle" {
            idle_at = Some(unix_now());
        }
        Some(fake.read("approvals")).filter(|a| !a.is_empty())
    })
    .unwrap_or_else(|| panic!("never approved: {:#}", events_json(&sandbox)));
    let at = approved[0]["time"].as_f64().unwrap();
    let idle_at = idle_at.expect("the verdict turned idle before the approval");
    let deadline = not_before.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() - 30.0;
    println!(
        "approved {:.1} s after the verdict turned idle, {:.0} s before the deadline",
        at - idle_at,
        deadline - at
    );
    // When she left, not at the deadline minutes later (loose for a loaded host; the figure is printed).
    assert!(at - idle_at <= 20.0, "approved {:.1} s after the verdict turned idle", at - idle_at);
    assert!(deadline - at > 60.0, "approved at the deadline, not when she left");
}

#[test]
fn a_terminate_on_a_vm_nobody_uses_is_approved_within_one_sample() {
    let Some(fake) = FakeAzure::start() else { return };
    let sandbox = Sandbox::new();
    sandbox.write_config(&quick_idle(&azure_config(&fake, "")));
    let _daemon = sandbox.start();
    let idle = eventually(Duration::from_secs(100), || {
        Some(sandbox.cli_json(&["idle", "--json"])).filter(|v| v["verdict"] == "idle")
    });
    assert!(idle.is_some(), "never idle: {:#}", sandbox.cli_json(&["idle", "--json"]));
    let set_at = unix_now();
    fake.configure(one_terminate(1, "T-IDLE", "pool_3", SystemTime::now() + Duration::from_secs(600)));
    let approved = eventually(Duration::from_secs(15), || Some(fake.read("approvals")).filter(|a| !a.is_empty()))
        .unwrap_or_else(|| panic!("not approved: {:#}", events_json(&sandbox)));
    let took = approved[0]["time"].as_f64().unwrap() - set_at;
    println!("approved {took:.2} s after the event came (interval 2 s, poll 1 s)");
    // One sample (2 s), the once-a-second poll and the drain itself.
    assert!(took <= 20.0, "approved {took:.1} s after the event, NotBefore 600 s away");
    let report = events_json(&sandbox);
    assert!(report["last_drain"].as_str().unwrap_or_default().contains("synced"), "drained first: {report:#}");
    fake.configure(no_events(2));
    let gone = eventually(Duration::from_secs(10), || Some(()).filter(|_| nologin(&sandbox).is_none()));
    assert!(gone.is_some(), "nologin left behind: {:?}", nologin(&sandbox));
}
fn event(id: &str, kind: &str, status: &str, resources: &[&str], not_before: &str) -> serde_json::Value {
    serde_json::json!({"EventId": id, "EventType": kind, "ResourceType": "VirtualMachine", "Resources": resources,
        "EventStatus": status, "NotBefore": not_before, "Description": "", "EventSource": "Platform", "DurationInSeconds": -1})
}

fn approved_ids(fake: &FakeAzure) -> Vec<String> {
    fake.read("approvals")
        .iter()
        .flat_map(|a| a["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect::<Vec<_>>())
        .collect()
}

#[test]
fn a_terminate_for_this_vm_is_drained_then_approved_once_and_no_other_vm_s_event_is_ever_approved() {
    let Some(fake) = FakeAzure::start() else { return };
    // The VM is in use (its idle timeout is 30 min): T-OURS waits for NotBefore - 30 s, 15 s away.
    let not_before = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(45));
    let events = |incarnation: u64| {
        serde_json::json!({"scheduled_events": {"DocumentIncarnation": incarnation, "Events": [
            event("T-OURS", "Terminate", "Scheduled", &["pool_3"], &not_before),
            // Events reach every VM of a placement group; an approval covers every name listed.
            event("T-OTHER", "Terminate", "Scheduled", &["pool_7"], &not_before),
            event("T-BOTH", "Terminate", "Scheduled", &["pool_3", "pool_7"], &not_before),
            event("R-STARTED", "Reboot", "Started", &["pool_3"], ""),
            event("F-OURS", "Freeze", "Scheduled", &["pool_3"], &not_before),
            event("D-OURS", "Redeploy", "Scheduled", &["pool_3"], &not_before),
        ]}})
    };
    fake.configure(events(1));
    // A scale set without a terminate notification profile: said in the report.
    fake.configure(serde_json::json!({"scale_set": {"capacity": 3, "provisioningState": "Succeeded", "terminateNotification": false}}));
    let sandbox = Sandbox::new();
    sandbox.write_config(&azure_config(&fake, ""));
    // As a crash in the middle of draining T-OURS leaves it: drained again, approved once.
    let state = sandbox.root().join("var/lib/pool-agent");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("scheduled-events.json"), r#"{"events": {"T-OURS": "draining"}}"#).unwrap();
    let daemon = sandbox.start();
    let approved = eventually(Duration::from_secs(30), || Some(approved_ids(&fake)).filter(|ids| ids.len() >= 2))
        .unwrap_or_else(|| panic!("not approved: {:#}", sandbox.cli_json(&["events", "--json"])));
    std::thread::sleep(Duration::from_secs(3));
    let mut approved_sorted = approved_ids(&fake);
    approved_sorted.sort();
    assert_eq!(approved_sorted, ["F-OURS", "T-OURS"], "first seen: {approved:?}");
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("scheduled-events.json")).unwrap()).unwrap();
    assert_eq!(kept["events"]["T-OURS"], "approved", "the record a restart reads: {kept}");
    // Drained before it was approved: new logins refused with a message that says why.
    let nologin = std::fs::read_to_string(sandbox.root().join("run/nologin")).unwrap_or_default();
    assert!(nologin.contains("Terminate") && nologin.contains("Save your work"), "{nologin:?}");
    let report = sandbox.cli_json(&["events", "--json"]);
    let handling = |id: &str| {
        report["events"].as_array().unwrap().iter().find(|e| e["id"] == id).unwrap()["handling"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(handling("T-OTHER").starts_with("not ours"), "{report:#}");
    assert!(handling("T-BOTH").contains("names other VMs too (pool_7)"), "{report:#}");
    assert_eq!(handling("R-STARTED"), "already started");
    assert!(handling("D-OURS").starts_with("waiting for NotBefore"), "Redeploy is not in azure.approve: {report:#}");
    assert!(report["last_drain"].as_str().unwrap_or_default().contains("synced"), "{report:#}");
    assert!(report["warning"].as_str().unwrap_or_default().contains("no terminate notification profile"), "{report:#}");
    let human = stdout(&sandbox.cli(&["events"]));
    assert!(human.contains("Terminate T-OURS [Scheduled] for pool_3") && human.contains("approved"), "{human}");
    // A restart and a new incarnation of the same events: nothing is approved twice.
    drop(daemon);
    fake.configure(events(2));
    let _daemon = sandbox.start();
    let seen = eventually(Duration::from_secs(20), || {
        Some(sandbox.cli_json(&["events", "--json"])).filter(|r| r["incarnation"] == 2)
    });
    assert!(seen.is_some(), "{:#}", sandbox.cli_json(&["events", "--json"]));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(approved_ids(&fake).len(), 2, "approved again after a restart: {:?}", approved_ids(&fake));
}

/// A VM idle a minute after start, protection released 10 s later, and
/// `delete-self` keeping 2 instances.
fn delete_self_config(fake: &FakeAzure) -> String {
    protection_config(fake, "10s")
        .replace("boot_grace = \"0s\"", "boot_grace = \"0s\"\naction = \"delete-self\"\nmin_instances = 2")
        + "delete_wait = \"3s\"\n"
}

#[test]
fn self_delete_fires_once_and_never_while_active_updating_at_the_floor_or_with_a_terminate_pending() {
    // Four VMs side by side, each against its own fake scale set.
    let not_before = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(900));
    let cases: [(&str, serde_json::Value); 4] = [
        ("goes", serde_json::json!({"scale_set": {"capacity": 3, "provisioningState": "Succeeded"}})),
        ("updating", serde_json::json!({"scale_set": {"capacity": 3, "provisioningState": "Updating"}})),
        ("at the floor", serde_json::json!({"scale_set": {"capacity": 2, "provisioningState": "Succeeded"}})),
        (
            "terminate pending",
            serde_json::json!({"scale_set": {"capacity": 3, "provisioningState": "Succeeded"},
                "scheduled_events": {"DocumentIncarnation": 1, "Events": [
                    event("T-1", "Terminate", "Scheduled", &["pool_3", "pool_4"], &not_before)]}}),
        ),
    ];
    let mut running = Vec::new();
    for (name, setup) in cases {
        let Some(fake) = FakeAzure::start() else { return };
        fake.configure(setup);
        let sandbox = Sandbox::new();
        sandbox.write_config(&delete_self_config(&fake));
        let daemon = sandbox.start();
        running.push((name, fake, sandbox, daemon));
    }
    // In use at first (the idle timeout has not passed): no VM goes, and each says why.
    std::thread::sleep(Duration::from_secs(5));
    for (name, fake, sandbox, _) in &running {
        let view = azure_json(sandbox);
        let why = view["self_delete"]["why"].as_str().unwrap_or_default().to_string();
        assert!(why.starts_with("not idle") || why.contains("protection not confirmed off"), "{name}: {view:#}");
        assert!(fake.read("deletes").is_empty(), "{name}");
    }
    // Idle after a minute, released 10 s later and confirmed 30-60 s after that.
    let goes = &running[0];
    let deleted = eventually(Duration::from_secs(180), || Some(goes.1.read("deletes")).filter(|d| !d.is_empty()))
        .unwrap_or_else(|| panic!("never deleted: {:#}", azure_json(&goes.2)));
    assert_eq!(deleted[0]["instanceIds"], serde_json::json!(["3"]));
    let requested = azure_json(&goes.2);
    let state = requested["self_delete"]["state"].as_str().unwrap_or_default();
    assert!(["requested", "deleted"].contains(&state), "{requested:#}");
    assert_eq!(requested["protection"]["protected"], "no", "deleted only with protection confirmed off");
    // The others were just as idle and released, and stayed.
    for (name, fake, sandbox, _) in &running[1..] {
        let expected = match *name {
            "updating" => "Updating",
            "at the floor" => "min_instances = 2",
            _ => "a Terminate is pending",
        };
        // Each got past protection (its read-back comes 30-60 s after the release) to its own reason.
        let held = eventually(Duration::from_secs(90), || {
            let view = azure_json(sandbox);
            view["self_delete"]["why"].as_str().is_some_and(|why| why.contains(expected)).then_some(view)
        });
        assert!(held.is_some(), "{name}: {:#}", azure_json(sandbox));
        assert!(fake.read("deletes").is_empty(), "{name} was deleted: {:#}", azure_json(sandbox));
    }
    // Asked once: a restart does not ask again.
    let (_, fake, sandbox, daemon) = running.swap_remove(0);
    drop(daemon);
    let _daemon = sandbox.start();
    // Its own record, and the instance gone: followed to the end, not asked again.
    let followed = eventually(Duration::from_secs(20), || {
        Some(azure_json(&sandbox)).filter(|a| a["self_delete"]["state"] == "deleted")
    });
    assert!(followed.is_some(), "{:#}", azure_json(&sandbox));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(fake.read("deletes").len(), 1, "{:#}", azure_json(&sandbox));
}

#[test]
fn self_delete_triggered_again_during_its_wait_still_asks_once() {
    let Some(fake) = FakeAzure::start() else { return };
    let sandbox = Sandbox::new();
    // No floor: a second request would not be held back by the capacity the first one took.
    let config = delete_self_config(&fake)
        .replace("delete_wait = \"3s\"", "delete_wait = \"20s\"")
        .replace("min_instances = 2", "min_instances = 0");
    sandbox.write_config(&config);
    let daemon = sandbox.start();
    // Every check passed: the VM is in its random wait before deleting.
    let deciding = eventually(Duration::from_secs(180), || {
        Some(azure_json(&sandbox)).filter(|a| a["self_delete"]["state"] == "deciding")
    });
    assert!(deciding.is_some(), "{:#}", azure_json(&sandbox));
    // A reload that changes [azure] starts the capability again: a second trigger, racing the first.
    sandbox.write_config(&config.replace("delete_wait = \"20s\"", "delete_wait = \"2s\""));
    daemon.signal("HUP");
    let deleted = eventually(Duration::from_secs(150), || Some(fake.read("deletes")).filter(|d| !d.is_empty()));
    assert!(deleted.is_some(), "never deleted: {:#}", azure_json(&sandbox));
    // The first trigger's wait (up to 20 s) has passed too: still one request.
    std::thread::sleep(Duration::from_secs(22));
    assert_eq!(fake.read("deletes").len(), 1, "{:?}", fake.read("deletes"));
}

/// The five VMs `1`..`5` of one scale set, all served by one fake: each
/// agent's IMDS answers as its own instance (`/vm/<id>`).
fn pool_member_config(fake: &FakeAzure, id: u32, min_instances: u32, delete_wait: &str) -> String {
    let config = quick_idle(LOCAL_SHARE_CONFIG).replace(
        "timeout = \"1m\"",
        &format!("timeout = \"1m\"\naction = \"delete-self\"\nmin_instances = {min_instances}"),
    );
    format!(
        "{config}\n[azure]\nenabled = true\nimds_endpoint = \"{url}/vm/{id}\"\nmonitoring_endpoint = \"{url}\"\narm_endpoint = \"{url}\"\nprotect = false\nmetrics_interval = \"5s\"\nhealth_listen = \"\"\ndelete_wait = \"{delete_wait}\"\n",
        url = fake.url()
    )
}

fn unprotected(ids: &[&str]) -> serde_json::Value {
    let instances: serde_json::Map<String, serde_json::Value> = ids
        .iter()
        .map(|id| {
            (id.to_string(), serde_json::json!({"protectFromScaleIn": false, "protectFromScaleSetActions": false}))
        })
        .collect();
    serde_json::Value::Object(instances)
}

#[test]
fn five_idle_vms_at_the_floor_plus_one_delete_exactly_one() {
    let Some(fake) = FakeAzure::start() else { return };
    fake.configure(serde_json::json!({
        "instances": unprotected(&["1", "2", "3", "4", "5"]),
        "scale_set": {"capacity": 6, "provisioningState": "Succeeded"},
        "scale_set_tags": {"team": "data-science"},
    }));
    // ARM takes its time to accept a delete (and to lower the capacity): for
    // those 5 s every other VM still reads capacity 6. Only the lease keeps
    // them from all going in that window.
    fake.fault(serde_json::json!({"path": format!("{SCALE_SET}/delete"), "method": "POST", "delay": 5, "count": 5}));
    // The first lease write is slow too: a VM that reads meanwhile writes on the same etag, and one of them gets 412.
    fake.fault(serde_json::json!({"path": SCALE_SET, "method": "PATCH", "delay": 3, "count": 1}));
    let pool: Vec<(Sandbox, Daemon)> = (1..=5)
        .map(|id| {
            let sandbox = Sandbox::new();
            sandbox.write_config(&pool_member_config(&fake, id, 5, "2s"));
            let daemon = sandbox.start();
            (sandbox, daemon)
        })
        .collect();
    // All idle a minute after start, within a second or two of each other.
    let first = eventually(Duration::from_secs(150), || Some(fake.read("deletes")).filter(|d| !d.is_empty()))
        .unwrap_or_else(|| panic!("nobody deleted: {:#}", azure_json(&pool[0].0)));
    // Every other VM has passed its checks since (its wait is at most 2 s, a re-check every 30 s).
    std::thread::sleep(Duration::from_secs(35));
    let deletes = fake.read("deletes");
    assert_eq!(deletes.len(), 1, "the floor of 5 broken: {deletes:?}");
    let gone = first[0]["instanceIds"][0].as_str().unwrap().to_string();
    let writes = fake.read("scale_set_writes");
    let conflicts = fake.read("requests").into_iter().filter(|r| r["path"] == SCALE_SET && r["status"] == 412).count();
    println!("instance {gone} deleted; {} lease writes, {conflicts} answered 412", writes.len());
    for write in &writes {
        // Only tags, and every other tag kept: never the model (instances would go outdated).
        let body = write["body"].as_object().unwrap();
        assert_eq!(body.keys().collect::<Vec<_>>(), ["tags"], "{write}");
        assert_eq!(body["tags"]["team"], "data-science", "{write}");
        assert!(write["if_match"].is_string(), "a lease written without If-Match: {write}");
    }
    for (sandbox, _) in &pool {
        let view = azure_json(sandbox);
        let name = view["compute"]["name"].as_str().unwrap_or_default().to_string();
        let state = view["self_delete"]["state"].as_str().unwrap_or_default().to_string();
        if name == format!("pool_{gone}") {
            assert!(["requested", "deleted"].contains(&state.as_str()), "{view:#}");
            continue;
        }
        let why = view["self_delete"]["why"].as_str().unwrap_or_default();
        assert!(
            why.contains("min_instances = 5") || why.contains("holds the pool's delete lease") || state == "retrying",
            "{name}: {view:#}"
        );
    }
}

#[test]
fn a_delete_unanswered_then_answered_429_is_sent_again_and_its_202_followed_and_a_baked_record_is_ignored() {
    let Some(fake) = FakeAzure::start() else { return };
    let delete_path = format!("{SCALE_SET}/delete");
    fake.configure(serde_json::json!({
        "instances": unprotected(&["3"]),
        "scale_set": {"capacity": 3, "provisioningState": "Succeeded", "delete_seconds": 3},
    }));
    // First no answer at all (the connection dropped after the request), then a 429, then the 202.
    fake.fault(serde_json::json!({"path": delete_path, "method": "POST", "drop": true, "count": 1}));
    fake.fault(serde_json::json!({"path": delete_path, "method": "POST", "status": 429, "count": 1, "retry_after": 4,
        "body": {"error": {"code": "TooManyRequests", "message": "The request is being throttled."}}}));
    let sandbox = Sandbox::new();
    // An image baked on a VM that had asked: its record names another VM id.
    let state = sandbox.root().join("var/lib/pool-agent");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("delete-requested.json"),
        r#"{"at": "2026-01-01T00:00:00Z", "instance": "3", "vm_id": "0f5c3a52-7d1e-4c7c-9b1a-6d2f0000ffff"}"#,
    )
    .unwrap();
    sandbox.write_config(&pool_member_config(&fake, 3, 1, "1s"));
    let _daemon = sandbox.start();
    let deleted = eventually(Duration::from_secs(150), || {
        Some(azure_json(&sandbox)).filter(|a| a["self_delete"]["state"] == "deleted")
    })
    .unwrap_or_else(|| panic!("never followed to the end: {:#}", azure_json(&sandbox)));
    let asked: Vec<_> = fake.requests_to(&delete_path).into_iter().filter(|r| r["method"] == "POST").collect();
    let statuses: Vec<u64> = asked.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [429, 202], "{asked:?}");
    let gap = asked[1]["time"].as_f64().unwrap() - asked[0]["time"].as_f64().unwrap();
    println!("sent again {gap:.1} s after a 429 with Retry-After: 4");
    assert!(gap >= 4.0, "sent again {gap:.1} s after Retry-After: 4");
    // Followed: the operation polled until it succeeded, after the 202.
    let polls: Vec<_> =
        fake.read("requests").into_iter().filter(|r| r["path"].as_str().unwrap().contains("/operations/")).collect();
    assert!(polls.len() >= 2, "the operation was not followed: {polls:?}");
    assert!(polls.iter().all(|p| p["time"].as_f64() > asked[1]["time"].as_f64()));
    assert!(deleted["self_delete"]["why"].as_str().unwrap_or_default().contains("succeeded"), "{deleted:#}");
    // The unanswered one, the 429 and the 202: each after every check again.
    assert_eq!(deleted["self_delete"]["attempts"], 3, "{deleted:#}");
    assert_eq!(fake.read("deletes").len(), 1);
    // The record now names this VM (its vmId), not the baked one.
    let record = std::fs::read_to_string(state.join("delete-requested.json")).unwrap();
    assert!(record.contains("0f5c3a52-7d1e-4c7c-9b1a-000000000003"), "{record}");
}

/// A share writer plants symlinks where the drain copies script logs as
/// root: the file name pointing at a root file, then the `drain` folder
/// pointing elsewhere. Neither is followed; the other logs still land and
/// `pool-agent events` says what was refused.
#[test]
fn the_drain_never_writes_through_a_symlink_planted_in_the_share_s_log_folder() {
    let Some(fake) = FakeAzure::start() else { return };
    let sandbox = Sandbox::new();
    sandbox.write_config(&azure_config(&fake, ""));
    let root = sandbox.root();
    let logs = root.join("var/log/pool-agent/scripts");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("10-a.log"), "t token=abc\n").unwrap();
    std::fs::write(logs.join("20-b.log"), "t done\n").unwrap();
    let drain_dir = root.join("srv/share/Logs/vm-test-0/drain");
    std::fs::create_dir_all(&drain_dir).unwrap();
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("shadow"), "root:secret\n").unwrap();
    std::os::unix::fs::symlink(outside.join("shadow"), drain_dir.join("10-a.log")).unwrap();
    let _daemon = sandbox.start();
    eventually(Duration::from_secs(20), || Some(()).filter(|_| events_json(&sandbox)["state"] == "watching"))
        .unwrap_or_else(|| panic!("not watching: {:#}", events_json(&sandbox)));
    // In use (idle timeout 30 min): drained and approved at NotBefore - 30 s.
    fake.configure(one_terminate(1, "T-1", "pool_3", SystemTime::now() + Duration::from_secs(33)));
    eventually(Duration::from_secs(30), || Some(()).filter(|_| approved_ids(&fake).len() == 1))
        .unwrap_or_else(|| panic!("not approved: {:#}", events_json(&sandbox)));
    let drained = events_json(&sandbox)["last_drain"].as_str().unwrap_or_default().to_string();
    assert!(drained.contains("1 script log(s) copied") && drained.contains("10-a.log"), "{drained}");
    assert!(drained.contains("symlink"), "the refusal says why: {drained}");
    assert_eq!(std::fs::read_to_string(outside.join("shadow")).unwrap(), "root:secret\n");
    assert!(std::fs::symlink_metadata(drain_dir.join("10-a.log")).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(drain_dir.join("20-b.log")).unwrap(), "t done\n");
    // Now the folder itself points elsewhere.
    std::fs::rename(&drain_dir, root.join("srv/share/Logs/vm-test-0/old")).unwrap();
    std::os::unix::fs::symlink(&outside, &drain_dir).unwrap();
    fake.configure(no_events(2));
    std::thread::sleep(Duration::from_secs(2));
    fake.configure(one_terminate(3, "T-2", "pool_3", SystemTime::now() + Duration::from_secs(33)));
    eventually(Duration::from_secs(30), || Some(()).filter(|_| approved_ids(&fake).len() == 2))
        .unwrap_or_else(|| panic!("not approved: {:#}", events_json(&sandbox)));
    let drained = events_json(&sandbox)["last_drain"].as_str().unwrap_or_default().to_string();
    assert!(drained.contains("0 script log(s) copied") && drained.contains("drain is a symlink"), "{drained}");
    let mut left: Vec<_> =
        std::fs::read_dir(&outside).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["shadow"], "nothing written behind the planted folder");
}
