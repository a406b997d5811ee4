//! README's way back from zero, run as a team member runs it: the shell block
//! from README (the login note's is the same, `template_tests` checks) in
//! bash, against `tests/fake/az`, a stand-in for the Azure CLI that keeps a
//! scale set's capacity and an autoscale setting the way azure-cli writes
//! them (`profile create` appends, it never replaces a profile of one name).

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn readme_command() -> String {
    let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).unwrap();
    let block = readme.split("```sh\nn=$(az vmss show").nth(1).and_then(|b| b.split("```").next()).unwrap();
    format!("n=$(az vmss show{block}")
}

/// The clock the command reads: `date`, as on the team member's machine.
fn now() -> i64 {
    let out = Command::new("date").arg("+%s").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

fn at(seconds: i64) -> String {
    let out = Command::new("date").args(["-u", "-d", &format!("@{seconds}"), "+%Y-%m-%dT%H:%M:%S+00:00"]).output();
    String::from_utf8(out.unwrap().stdout).unwrap().trim().to_string()
}

fn off_hours_rules() -> Value {
    json!([{ "metricTrigger": { "metricName": "Removable" }, "scaleAction": { "direction": "Decrease" } }])
}

/// A fixed-date profile as ARM returns it, ending `ends_in` seconds from now.
fn wake(name: &str, minimum: u32, ends_in: i64) -> Value {
    json!({
        "name": name,
        "capacity": { "default": minimum.to_string(), "minimum": minimum.to_string(), "maximum": "10" },
        "rules": off_hours_rules(),
        "fixedDate": { "start": at(now() + ends_in - 1800), "end": at(now() + ends_in), "timeZone": "UTC" },
    })
}

struct Run {
    ok: bool,
    output: String,
    wakes: Vec<Value>,
    calls: Vec<String>,
}

/// The pool `pool` in `RG` with `capacity` VMs and these profiles beside the
/// template's recurring ones; README's block run once.
fn run(capacity: u32, wakes: Vec<Value>, fail: Option<&str>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let mut profiles = vec![
        json!({ "name": "working-hours", "capacity": { "default": "1", "minimum": "0", "maximum": "10" }, "rules": [],
                "recurrence": { "frequency": "Week" } }),
        json!({ "name": "off-hours", "capacity": { "default": "0", "minimum": "0", "maximum": "10" },
                "rules": off_hours_rules(), "recurrence": { "frequency": "Week" } }),
    ];
    profiles.extend(wakes);
    let setting = json!({ "name": "pool-autoscale", "profiles": profiles });
    let initial = json!({ "resource_group": "RG", "scale_set": "pool", "capacity": capacity, "autoscale": setting });
    std::fs::write(&state, initial.to_string()).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(Path::new(REPO).join("tests/fake/az"), bin.join("az")).unwrap();
    let mut command = Command::new("bash");
    command
        .args(["-c", &readme_command()])
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()))
        .env("FAKE_AZ_STATE", &state);
    if let Some(fail) = fail {
        command.env("FAKE_AZ_FAIL", fail);
    }
    let out = command.output().unwrap();
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        !output.contains("No module named"),
        "the stand-in needs python3 with jmespath (python3-jmespath): {output}"
    );
    let state: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let wakes = state["autoscale"]["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str().unwrap().starts_with("wake"))
        .cloned()
        .collect();
    let calls = std::fs::read_to_string(dir.path().join("state.json.calls")).unwrap_or_default();
    Run { ok: out.status.success(), output, wakes, calls: calls.lines().map(str::to_string).collect() }
}

fn only_wake(run: &Run) -> &Value {
    assert!(run.ok, "{}", run.output);
    assert_eq!(run.wakes.len(), 1, "one wake profile is left: {:#?}\n{}", run.wakes, run.output);
    &run.wakes[0]
}

fn minimum(profile: &Value) -> u32 {
    profile["capacity"]["minimum"].as_str().unwrap().parse().unwrap()
}

#[test]
fn an_empty_pool_asks_for_one_vm_for_30_minutes_with_the_off_hours_rules() {
    let before = now();
    let run = run(0, vec![], None);
    let profile = only_wake(&run);
    assert_eq!(minimum(profile), 1);
    assert_eq!(profile["capacity"]["default"], "1");
    assert_eq!(profile["capacity"]["maximum"], "10");
    assert_eq!(profile["rules"], off_hours_rules(), "the off-hours rules: nothing added beyond what is asked");
    let seconds = |field: &str| {
        let out = Command::new("date").args(["-d", profile["fixedDate"][field].as_str().unwrap(), "+%s"]).output();
        String::from_utf8(out.unwrap().stdout).unwrap().trim().parse::<i64>().unwrap()
    };
    assert_eq!(seconds("end") - seconds("start"), 1800);
    assert!((before - 60..=now()).contains(&seconds("start")), "starts now: {profile}");
}

#[test]
fn a_second_user_during_a_wake_asks_for_one_more_and_the_older_wake_is_replaced() {
    let run = run(2, vec![wake("wake-1", 3, 600)], None);
    let profile = only_wake(&run);
    assert_eq!(minimum(profile), 4, "one more than the running wake asks (3), not than the VMs there (2)");
    assert_ne!(profile["name"], "wake-1");
    // The new profile is written before the old one goes: the pool never
    // falls back to the off-hours profile (minimum 0) between the two.
    let create = run.calls.iter().position(|c| c.contains("profile create")).unwrap();
    let delete = run.calls.iter().position(|c| c.contains("profile delete")).unwrap();
    assert!(create < delete, "{:#?}", run.calls);
}

#[test]
fn more_vms_than_a_wake_asks_count_and_an_ended_wake_counts_for_nothing() {
    assert_eq!(minimum(only_wake(&run(6, vec![wake("wake-1", 3, 600)], None))), 7);
    assert_eq!(minimum(only_wake(&run(1, vec![wake("wake-1", 5, -300)], None))), 2);
}

#[test]
fn two_wake_profiles_the_first_command_appended_are_both_replaced() {
    // The command before this one created `wake` each time: az appended a
    // second, which autoscale ignored while the first applied.
    let run = run(1, vec![wake("wake", 2, 600), wake("wake", 3, 900)], None);
    assert_eq!(minimum(only_wake(&run)), 4);
}

#[test]
fn a_refused_create_leaves_the_running_wake_in_place() {
    let run = run(2, vec![wake("wake-1", 3, 600)], Some("create"));
    assert!(!run.ok, "the command fails: {}", run.output);
    assert_eq!(run.wakes.len(), 1);
    assert_eq!(run.wakes[0]["name"], "wake-1", "the running wake is not deleted when its successor was refused");
    assert!(!run.calls.iter().any(|c| c.contains("profile delete")), "{:#?}", run.calls);
}

#[test]
fn a_failed_read_creates_nothing() {
    let run = run(2, vec![wake("wake-1", 3, 600)], Some("list"));
    assert!(!run.ok);
    assert_eq!(run.wakes.len(), 1);
    assert_eq!(run.wakes[0]["name"], "wake-1");
    assert!(!run.calls.iter().any(|c| c.contains("profile create")), "{:#?}", run.calls);
}
