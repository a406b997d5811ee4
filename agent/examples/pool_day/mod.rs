//! The simulated day (issue #27): the shipped template's autoscale rules,
//! Azure autoscale's documented evaluation, and VMs driven by the agent's
//! own verdict, protection and metric code. Run by the `pool_day` example
//! and checked by `tests/pool_day.rs`.

pub mod autoscale;
pub mod svg;
pub mod template;
pub mod users;
pub mod vm;
pub mod world;

use serde_json::Value;
use std::collections::BTreeMap;
use world::{Report, Setup, Wake};

/// The template the simulation reads: the shipped one.
pub const TEMPLATE: &str = include_str!("../../../packaging/azure/pool.json");

/// The template's text to simulate and where it came from.
pub fn template() -> (&'static str, &'static str) {
    (TEMPLATE, "packaging/azure/pool.json")
}

/// A pool's headroom per profile, as its parameters file would set it.
pub fn headroom(users: usize) -> (u32, u32) {
    match users {
        0..=1 => (1, 0),
        2..=9 => (2, 0),
        _ => (10, 0),
    }
}

/// The scenario for a pool of `users` on a weekday or a weekend day.
pub fn setup(users: usize, weekend: bool, seed: u64, until: f64) -> Result<Setup, String> {
    setup_from(template().0, users, weekend, seed, until)
}

/// The same from another template's text (`--template` to try other rules).
pub fn setup_from(text: &str, users: usize, weekend: bool, seed: u64, until: f64) -> Result<Setup, String> {
    let headroom = headroom(users);
    let overrides: BTreeMap<String, Value> = [
        ("headroomWorkingHours".to_string(), Value::from(headroom.0)),
        ("headroomOffHours".to_string(), Value::from(headroom.1)),
        ("maxInstances".to_string(), Value::from(100)),
    ]
    .into_iter()
    .collect();
    let profiles = template::profiles(text, &overrides)?;
    // Working hours: from the recurring profile that starts first in the day
    // to the next one's start.
    let mut starts: Vec<f64> =
        profiles.iter().filter_map(|p| p.recurrence.as_ref()).map(|(_, s)| *s as f64 * 60.0).collect();
    starts.sort_by(f64::total_cmp);
    let (working, end) = match starts.as_slice() {
        [first, second, ..] => (*first, *second),
        _ => return Err("the template needs a working-hours and an off-hours recurring profile".into()),
    };
    Ok(Setup {
        users,
        weekend,
        seed,
        profiles,
        headroom,
        working: (working, end),
        agent: agent_from_template(text)?,
        wake: Wake {
            patience: 120.0,
            command: 60.0,
            length: 30.0 * 60.0,
            as_readme: false,
            reads_wake_profile: true,
            looks_again: true,
        },
        first_come: true,
        visits: None,
        until,
    })
}

/// The agent's timings as the template's config sets them (`configExtra`'s
/// default), the rest at the agent's defaults.
fn agent_from_template(text: &str) -> Result<vm::Agent, String> {
    let template: Value = serde_json::from_str(text).map_err(|e| format!("the template: {e}"))?;
    let extra = template["parameters"]["configExtra"]["defaultValue"].as_str().ok_or("no configExtra default")?;
    let config: toml::Value = toml::from_str(extra).map_err(|e| format!("configExtra: {e}"))?;
    let duration = |section: &str, key: &str| -> Result<Option<std::time::Duration>, String> {
        match config.get(section).and_then(|s| s.get(key)).and_then(|v| v.as_str()) {
            Some(text) => pool_agent::config::duration::parse(text).map(Some),
            None => Ok(None),
        }
    };
    let mut agent = vm::Agent::default();
    if let Some(timeout) = duration("idle", "timeout")? {
        agent.idle_timeout = timeout;
    }
    if let Some(release_after) = duration("azure", "release_after")? {
        agent.release_after = release_after;
    }
    Ok(agent)
}

/// One line of the figures table.
pub fn row(setup: &Setup, r: &Report) -> String {
    let free_after_hour = max_free(setup, r, false);
    let off_hours = r.waits.iter().filter(|w| w.2).count();
    let past_way_back = r.waits.iter().filter(|w| w.2 && w.1 > setup.wake.figure()).count();
    format!(
        "| {:>2} | {:<7} | {:>6.1} | {:>6.1} | {:>4.2} | {:>5.1} | {:>5.1} | {:>5.1} | {:>2} / {:>2} | {:>2} | {:>2} ({} unseen) | {} | {} / {} |",
        setup.users,
        if setup.weekend { "weekend" } else { "weekday" },
        r.vm_hours,
        r.ideal_hours,
        r.vm_hours / r.ideal_hours.max(0.01),
        r.longest_wait(false) / 60.0,
        r.longest_wait(true) / 60.0,
        r.p95_wait() / 60.0,
        free_after_hour,
        max_free(setup, r, true),
        r.added_while_free,
        r.in_use_removed,
        r.in_use_removed_unseen,
        r.wakes,
        past_way_back,
        off_hours,
    )
}

pub const HEADER: &str = "| users | day | VM-h | ideal VM-h | ratio | longest wait, working h (min) | longest wait, off h (min) | p95 wait (min) | max free after 1st h: all / not after use | added while free | in-use removed (before the agent saw the login) | wakes | off-h arrivals past the way back / all |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// The most VMs free at a minute after the first hour of the day (working
/// hours' first hour on a weekday, 01:00 on a weekend); `not_after_use`:
/// without those a user left less than idle timeout + release_after ago.
pub fn max_free(setup: &Setup, r: &Report, not_after_use: bool) -> u32 {
    let from = if setup.weekend { 60 } else { (setup.working.0 / 60.0) as usize + 60 };
    r.minutes
        .iter()
        .skip(from)
        .map(|m| if not_after_use { m.free - m.free_after_use } else { m.free })
        .max()
        .unwrap_or(0)
}
