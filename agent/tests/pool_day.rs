//! The simulated day's bounds (issue #27 "Must show"), on the shipped
//! template's autoscale rules (`packaging/azure/pool.json`), the agent's own
//! verdict, protection, demand and metric code, seeded. A whole day of each pool runs in about a second in
//! a debug build.
//!
//! Waiting users get a VM that turns ready in the order they came (`Setup::first_come`);
//! README gives the figures for a random order too (`--waiters-random`).

#[path = "../examples/pool_day/mod.rs"]
#[allow(dead_code)]
mod sim;

use pool_agent::azure::monitor::METRIC_NAMES;
use sim::world::{Report, Setup, BOOT_TO_READY};
use std::collections::BTreeMap;

const SEED: u64 = 27;
const DAY: f64 = 86_400.0;

/// Each day is run once and shared by the tests (about 1 s each in debug).
fn every_day() -> &'static [(Setup, Report)] {
    static DAYS: std::sync::OnceLock<Vec<(Setup, Report)>> = std::sync::OnceLock::new();
    DAYS.get_or_init(|| {
        let runs: Vec<_> = [1, 5, 50]
            .iter()
            .flat_map(|u| [false, true].map(|weekend| sim::setup(*u, weekend, SEED, DAY).unwrap()))
            .map(|setup| std::thread::spawn(move || (sim::world::run(&setup), setup)))
            .collect();
        runs.into_iter().map(|h| h.join().unwrap()).map(|(r, s)| (s, r)).collect()
    })
}

fn day(users: usize, weekend: bool) -> (&'static Setup, &'static Report) {
    let found = every_day().iter().find(|(s, _)| s.users == users && s.weekend == weekend).unwrap();
    (&found.0, &found.1)
}

fn name(s: &Setup) -> String {
    format!("{} users, {}", s.users, if s.weekend { "weekend" } else { "weekday" })
}

#[test]
fn the_template_s_rules_name_only_metrics_the_agent_posts() {
    let (text, from) = sim::template();
    let profiles = sim::template::profiles(text, &BTreeMap::new()).unwrap();
    assert!(profiles.iter().any(|p| p.rules.iter().any(|r| r.increase)), "{from}: no scale-out rule");
    for rule in profiles.iter().flat_map(|p| &p.rules) {
        assert!(METRIC_NAMES.contains(&rule.metric.as_str()), "{from}: a rule reads {}, never posted", rule.metric);
        assert_ne!(rule.metric, "Busy", "{from}: Busy is the safe side, never demand");
    }
    // And the check can fail: a rule on a metric nobody posts.
    let wrong = text.replace("\"Removable\"", "\"Removeable\"");
    let profiles = sim::template::profiles(&wrong, &BTreeMap::new()).unwrap();
    assert!(profiles.iter().flat_map(|p| &p.rules).any(|r| !METRIC_NAMES.contains(&r.metric.as_str())));
}

#[test]
fn no_in_use_vm_is_ever_removed() {
    for (s, r) in every_day() {
        assert_eq!(r.in_use_removed, 0, "{}: {:#?}", name(s), r.log);
        assert!(r.removed > 0 || s.weekend, "{}: the pool never shrank, nothing was tested", name(s));
    }
}

#[test]
fn no_vm_is_removed_once_the_agent_has_seen_its_user_whatever_the_seed() {
    // Other seeds of the busiest day. A login and a scale-in in the same
    // moment, before the agent's next sample, is a race the design allows
    // (a released VM still takes users): counted apart, reported in README.
    let runs: Vec<_> = (1..=4)
        .map(|seed| sim::setup(50, false, seed, DAY).unwrap())
        .map(|setup| std::thread::spawn(move || (sim::world::run(&setup), setup.seed)))
        .collect();
    for run in runs {
        let (r, seed) = run.join().unwrap();
        assert_eq!(r.in_use_removed - r.in_use_removed_unseen, 0, "seed {seed}: {:#?}", r.log);
        assert!(r.removed > 10, "seed {seed}: the evening never drained");
    }
}

#[test]
fn no_more_than_headroom_plus_one_vms_stand_free_after_the_first_hour() {
    // Free VMs a user left less than idle.timeout + release_after (+5 min)
    // ago are the agent's guard for work just done, not autoscale's
    // overshoot: counted apart (README gives both).
    for (s, r) in every_day() {
        let headroom = if s.weekend { s.headroom.1 } else { s.headroom.0 };
        let most = sim::max_free(s, r, true);
        assert!(most <= headroom + 1, "{}: {most} VMs free with headroom {headroom}", name(s));
    }
}

#[test]
fn weekday_vm_hours_stay_within_1_3_times_the_ideal() {
    for users in [1, 5, 50] {
        let (s, r) = day(users, false);
        let ratio = r.vm_hours / r.ideal_hours;
        assert!(ratio <= 1.3, "{}: {:.1} VM-h for {:.1} ideal ({ratio:.2}x)", name(s), r.vm_hours, r.ideal_hours);
    }
}

#[test]
fn weekend_vm_hours_stay_within_1_3_times_the_ideal() {
    for users in [1, 5, 50] {
        let (s, r) = day(users, true);
        let ratio = r.vm_hours / r.ideal_hours;
        assert!(ratio <= 1.3, "{}: {:.1} VM-h for {:.1} ideal ({ratio:.2}x)", name(s), r.vm_hours, r.ideal_hours);
    }
}

#[test]
fn working_hours_arrivals_in_pools_of_1_and_5_get_a_vm_within_boot_time_plus_2_minutes() {
    for users in [1, 5] {
        let (s, r) = day(users, false);
        let longest = r.longest_wait(false);
        assert!(longest <= BOOT_TO_READY + 120.0, "{}: waited {longest:.0} s", name(s));
        assert!(
            r.waits.iter().filter(|w| !w.2).count() >= users.div_ceil(2),
            "{}: too few working-hours arrivals",
            name(s)
        );
    }
}

#[test]
fn working_hours_arrivals_in_a_pool_of_50_get_a_vm_within_boot_time_plus_2_minutes() {
    // The morning ramp (~25 arrivals an hour) is followed because the
    // working-hours rules add what is missing up to the headroom (1, 2, 3, 4,
    // 6 or a headroom's worth), not one VM per cooldown: that gave 16.6 min.
    let (s, r) = day(50, false);
    let longest = r.longest_wait(false);
    assert!(longest <= BOOT_TO_READY + 120.0, "{}: waited {:.1} min", name(s), longest / 60.0);
}

#[test]
fn off_hours_arrivals_in_pools_of_1_and_5_get_a_vm_within_the_way_back_figure() {
    for users in [1, 5] {
        for weekend in [false, true] {
            let (s, r) = day(users, weekend);
            let figure = s.wake.figure();
            assert!(r.waits.iter().any(|w| w.2), "{}: no off-hours arrival", name(s));
            let longest = r.longest_wait(true);
            assert!(longest <= figure, "{}: waited {longest:.0} s, the way back says {figure:.0} s", name(s));
            // On a Saturday the pool starts at zero: only the way back brings a VM.
            assert!(r.wakes >= 1 || !weekend, "{}: nobody needed the way back", name(s));
            assert_eq!(r.never_served, 0, "{}", name(s));
        }
    }
}

#[test]
fn off_hours_arrivals_in_a_pool_of_50_get_a_vm_within_the_way_back_figure() {
    for weekend in [false, true] {
        let (s, r) = day(50, weekend);
        let longest = r.longest_wait(true);
        assert!(r.waits.iter().filter(|w| w.2).count() >= 5, "{}: few off-hours arrivals", name(s));
        assert!(longest <= s.wake.figure(), "{}: waited {:.1} min: {:#?}", name(s), longest / 60.0, r.log);
    }
}

#[test]
fn two_wake_commands_run_into_each_other_bring_two_vms_once_one_looks_again() {
    // Seed 42's weekday: two users run the command within seconds at 07:45,
    // both read the same pool. Run once each, one VM came for the two and
    // the second waited for the next user's command.
    let mut setup = sim::setup(50, false, 42, DAY).unwrap();
    let r = sim::world::run(&setup);
    let longest = r.longest_wait(true);
    assert!(r.log.iter().any(|l| l.contains("ran into each other")), "{:#?}", r.log);
    assert!(longest <= setup.wake.figure_when_run_into(), "{:.1} min: {:#?}", longest / 60.0, r.log);
    setup.wake.looks_again = false;
    let once = sim::world::run(&setup).longest_wait(true);
    assert!(once > setup.wake.figure_when_run_into() + 300.0, "{:.1} min", once / 60.0);
}

#[test]
fn when_a_newcomer_may_take_the_vm_another_user_woke_off_hours_waits_pass_the_way_back() {
    // The bound above holds when a VM that turns ready goes to whoever waited
    // longest; with any waiting user taking it, the one who woke it waits for
    // the next. Kept as a figure (README), and so the model can tell them apart.
    let mut setup = sim::setup(50, false, SEED, DAY).unwrap();
    setup.first_come = false;
    let r = sim::world::run(&setup);
    assert!(r.longest_wait(true) > setup.wake.figure(), "{:.1} min", r.longest_wait(true) / 60.0);
}

#[test]
fn rules_that_overshoot_fail_these_bounds() {
    // The contract's first guess: Sum(Spare) Minimum over 5 min, cooldown 3 min.
    // A new VM posts nothing while it boots, so each run adds another.
    let (text, _) = sim::template();
    let mut doc: serde_json::Value = serde_json::from_str(text).unwrap();
    let resources = doc["resources"].as_array_mut().unwrap();
    let autoscale = resources.iter_mut().find(|r| r["type"] == "Microsoft.Insights/autoscalesettings").unwrap();
    for profile in autoscale["properties"]["profiles"].as_array_mut().unwrap() {
        for rule in profile["rules"].as_array_mut().unwrap() {
            if rule["scaleAction"]["direction"] == "Increase" {
                rule["metricTrigger"]["timeAggregation"] = "Minimum".into();
                rule["scaleAction"]["cooldown"] = "PT3M".into();
            }
        }
    }
    let setup = sim::setup_from(&doc.to_string(), 1, false, SEED, DAY).unwrap();
    let r = sim::world::run(&setup);
    assert!(r.vm_hours / r.ideal_hours > 1.3, "{:.1} VM-h for {:.1}", r.vm_hours, r.ideal_hours);
    assert!(r.added_while_free > 0 && sim::max_free(&setup, &r, true) > setup.headroom.0 + 1);
}

#[test]
fn a_wake_behind_one_made_minutes_before_applies_after_its_look_and_both_users_get_a_vm() {
    // Saturday, two users 2 min apart, each running the command: the second
    // profile lands behind the first, made 2 min before, which the command
    // deletes only after its pause (so two commands deleting at once never
    // leave the pool with no wake). She waits that minute more, no longer.
    use sim::users::Visit;
    let mut setup = sim::setup(5, true, SEED, DAY).unwrap();
    let at = |h: f64| h * 3600.0;
    let visits = [(0, at(11.0)), (1, at(11.0) + 120.0)].map(|(user, arrive)| Visit {
        user,
        arrive,
        leave: at(13.0),
        breaks: vec![],
    });
    setup.visits = Some(visits.to_vec());
    let r = sim::world::run(&setup);
    assert!(r.log.iter().any(|l| l.contains("wake behind one made lately")), "{:#?}", r.log);
    assert_eq!(r.waits.len(), 2, "{:#?}", r.log);
    let second = r.waits.iter().find(|w| w.0 > at(11.0)).unwrap().1;
    println!("waits: {:?} min", r.waits.iter().map(|w| (w.1 / 6.0).round() / 10.0).collect::<Vec<_>>());
    assert!(second <= setup.wake.figure_behind_recent(), "{:.1} min: {:#?}", second / 60.0, r.log);
    assert_eq!(r.in_use_removed, 0);
}

/// 50 users work 08:30-`leave` on a weekday and all leave then: minutes
/// from their leaving until the pool has no VM, and in-use VMs removed.
fn drain(text: &str, leave: f64) -> (f64, u32) {
    use sim::users::Visit;
    let mut setup = sim::setup_from(text, 50, false, SEED, DAY).unwrap();
    let visits = (0..50).map(|user| Visit { user, arrive: 8.5 * 3600.0 + user as f64 * 30.0, leave, breaks: vec![] });
    setup.visits = Some(visits.collect());
    let r = sim::world::run(&setup);
    let empty = r.minutes.iter().enumerate().skip((leave / 60.0) as usize).find(|(_, m)| m.capacity == 0);
    (empty.map_or(f64::INFINITY, |(minute, _)| minute as f64 - leave / 60.0), r.in_use_removed)
}

#[test]
fn an_evening_pool_whose_users_all_left_is_gone_within_an_hour() {
    // The agent's idle timeout and release take 35 of those minutes.
    let (text, _) = sim::template();
    for leave in [17.5 * 3600.0, 18.5 * 3600.0] {
        let (minutes, removed) = drain(text, leave);
        println!("all left at {}: no VM {minutes:.0} min later", sim::world::hhmm(leave));
        assert!(minutes <= 60.0 && removed == 0, "{minutes:.0} min, {removed} in-use VMs removed");
    }
    // One VM a scale-in, as the template had it: over two hours.
    let mut doc: serde_json::Value = serde_json::from_str(text).unwrap();
    let step = &mut doc["parameters"]["scaleInStepOffHours"]["defaultValue"];
    *step = 1.into();
    let (minutes, _) = drain(&doc.to_string(), 17.5 * 3600.0);
    println!("one VM a scale-in: no VM {minutes:.0} min later");
    assert!(minutes > 120.0, "{minutes:.0} min with one VM a scale-in");
}
