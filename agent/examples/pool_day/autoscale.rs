//! Azure autoscale's documented evaluation, as a pure model over the points
//! the VMs posted. Each assumption names the page it comes from.
//!
//! - Schema, profiles, `statistic` (how instances combine) and
//!   `timeAggregation` (how the window's grains combine), the default count
//!   used when metrics cannot be read, the evaluation of several rules:
//!   <https://learn.microsoft.com/en-us/azure/azure-monitor/autoscale/autoscale-understanding-settings>
//!   (scale-out when any scale-out rule is met, scale-in only when every
//!   scale-in rule is met; a profile's capacity bounds apply from the run
//!   after its start).
//! - The flapping check (projected value = metric x count / (count - n) for
//!   an average) and trying a smaller step when the full one would flap:
//!   <https://learn.microsoft.com/en-us/answers/questions/525145/what-is-flapping-in-app-service-autoscale>.
//!   How it projects a `Sum` of a custom metric is not published: modelled
//!   conservatively, as if every removed instance carried the largest
//!   per-instance value seen (a 0/1 flag: 1 each).
//! - Protected instances are skipped by autoscale's scale-in and the next
//!   candidate of the scale-in policy is taken (default policy: highest
//!   instance id once zones are balanced):
//!   <https://learn.microsoft.com/en-us/azure/virtual-machine-scale-sets/virtual-machine-scale-sets-instance-protection>,
//!   <https://docs.microsoft.com/en-us/azure/virtual-machine-scale-sets/virtual-machine-scale-sets-scale-in-policy>
//! - A cooldown counts from the last scale action in either direction (the
//!   brief's reading of the settings page; the stricter of the two readings).
//! - Each run queries the window back from now ("every time autoscale runs,
//!   it will query metrics for the past 10 minutes":
//!   <https://learn.microsoft.com/en-us/training/modules/configure-virtual-machine-availability/10-configure-autoscale>).
//!   How often it runs is not in the pages found: every 30-60 s, the
//!   figure the issue gives.
//! - Custom metrics' ingestion delay is not published for the REST path;
//!   modelled as 1-3 minutes per point, so the newest grains are partial.

use super::template::{Aggregation, Change, Profile, Rule, Statistic};
use std::collections::{BTreeMap, HashMap};

/// One posted point: the minute it describes, the instance, its value, and
/// when Azure has it readable.
#[derive(Debug, Clone, Copy)]
struct Point {
    vm: u32,
    value: f64,
    readable_at: f64,
}

#[derive(Debug, Default)]
pub struct Store {
    /// metric -> minute -> points.
    points: HashMap<String, BTreeMap<i64, Vec<Point>>>,
}

impl Store {
    pub fn post(&mut self, metric: &str, minute: i64, vm: u32, value: f64, readable_at: f64) {
        let by_minute = match self.points.get_mut(metric) {
            Some(m) => m,
            None => self.points.entry(metric.to_string()).or_default(),
        };
        by_minute.entry(minute).or_default().push(Point { vm, value, readable_at });
    }

    /// Forgets minutes no window reaches any more.
    pub fn prune(&mut self, before_minute: i64) {
        for by_minute in self.points.values_mut() {
            *by_minute = by_minute.split_off(&before_minute);
        }
    }

    /// The rule's value at `now` (seconds), None when no grain of the window has data.
    /// Also the largest single-instance value seen (for the flapping projection).
    pub fn value(&self, rule: &Rule, now: f64) -> Option<(f64, f64)> {
        let by_minute = self.points.get(&rule.metric)?;
        let end = (now / 60.0).floor() as i64; // only whole minutes
        let start = end - rule.window_min as i64;
        let grain = rule.grain_min.max(1) as i64;
        let mut grains: Vec<f64> = Vec::new();
        let mut peak: f64 = 0.0;
        let mut at = start;
        while at < end {
            // Per instance, the grain's points averaged; then the statistic across instances.
            let mut per_vm: BTreeMap<u32, (f64, u32)> = BTreeMap::new();
            for (_, points) in by_minute.range(at..(at + grain).min(end)) {
                for p in points.iter().filter(|p| p.readable_at <= now) {
                    let e = per_vm.entry(p.vm).or_insert((0.0, 0));
                    e.0 += p.value;
                    e.1 += 1;
                }
            }
            if !per_vm.is_empty() {
                let values: Vec<f64> = per_vm.values().map(|(s, n)| s / *n as f64).collect();
                peak = values.iter().copied().fold(peak, f64::max);
                grains.push(combine(rule.statistic, &values));
            }
            at += grain;
        }
        let last = *grains.last()?;
        let n = grains.len() as f64;
        let value = match rule.aggregation {
            Aggregation::Average => grains.iter().sum::<f64>() / n,
            Aggregation::Minimum => grains.iter().copied().fold(f64::INFINITY, f64::min),
            Aggregation::Maximum => grains.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Aggregation::Total => grains.iter().sum(),
            Aggregation::Count => n,
            Aggregation::Last => last,
        };
        Some((value, peak))
    }
}

fn combine(statistic: Statistic, values: &[f64]) -> f64 {
    match statistic {
        Statistic::Sum => values.iter().sum(),
        Statistic::Average => values.iter().sum::<f64>() / values.len() as f64,
        Statistic::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
        Statistic::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

/// A fixed-date profile (the way back from zero): it wins over recurring ones.
#[derive(Debug, Clone)]
pub struct Fixed {
    pub from: f64,
    pub until: f64,
    pub profile: Profile,
}

/// What one run decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Nothing(&'static str),
    /// To this many instances; `why` for the log.
    Scale {
        to: u32,
        why: String,
    },
}

#[derive(Debug)]
pub struct Engine {
    pub profiles: Vec<Profile>,
    pub fixed: Option<Fixed>,
    /// The weekday (0 = Monday) of the simulated day.
    pub weekday: u32,
    last_action: Option<(f64, u32)>,
}

impl Engine {
    pub fn new(profiles: Vec<Profile>, weekday: u32) -> Self {
        Self { profiles, fixed: None, weekday, last_action: None }
    }

    /// The profile in force at `now` (seconds into the day): a fixed-date
    /// profile covering it, else the recurring one that started last
    /// (looking back a week), else the one without a schedule.
    pub fn profile(&self, now: f64) -> Option<&Profile> {
        if let Some(f) = &self.fixed {
            if now >= f.from && now < f.until {
                return Some(&f.profile);
            }
        }
        self.scheduled(now)
    }

    /// The recurring (or default) profile in force at `now`, fixed-date ones aside.
    pub fn scheduled(&self, now: f64) -> Option<&Profile> {
        let minute_of_week = (self.weekday * 1440) as f64 + now / 60.0;
        let mut best: Option<(f64, &Profile)> = None;
        for p in &self.profiles {
            let Some((days, start)) = &p.recurrence else { continue };
            for d in days {
                let at = (d * 1440 + start) as f64;
                let ago = (minute_of_week - at).rem_euclid(7.0 * 1440.0);
                if best.is_none_or(|(b, _)| ago < b) {
                    best = Some((ago, p));
                }
            }
        }
        best.map(|(_, p)| p).or_else(|| self.profiles.iter().find(|p| p.recurrence.is_none()))
    }

    /// One run of the engine at `now` with `count` instances.
    pub fn run(&mut self, now: f64, count: u32, store: &Store) -> Decision {
        let Some(p) = self.profile(now).cloned() else { return Decision::Nothing("no profile") };
        // Bounds first: a new profile's minimum or maximum applies on this run.
        if count < p.min || count > p.max {
            let to = count.clamp(p.min, p.max);
            return self.act(now, to, 1, format!("profile {} bounds {}..{}", p.name, p.min, p.max));
        }
        let values: Vec<Option<(f64, f64)>> = p.rules.iter().map(|r| store.value(r, now)).collect();
        if values.iter().any(|v| v.is_none()) {
            // Metrics missing: the default count if below it, never a scale-in.
            if count < p.default {
                return self.act(now, p.default, 1, format!("metrics missing: default {}", p.default));
            }
            return Decision::Nothing("metrics missing");
        }
        if let Some((at, cooldown)) = self.last_action {
            if now < at + cooldown as f64 * 60.0 {
                return Decision::Nothing("cooldown");
            }
        }
        let met = |i: usize| values[i].is_some_and(|(v, _)| p.rules[i].operator.holds(v, p.rules[i].threshold));
        // Scale-out: any rule; the largest resulting count wins.
        let mut out: Option<(u32, u32, String)> = None;
        for (i, r) in p.rules.iter().enumerate() {
            if r.increase && met(i) {
                let to = apply(r.change, count, true).min(p.max);
                if to > count && out.as_ref().is_none_or(|(t, _, _)| to > *t) {
                    out = Some((
                        to,
                        r.cooldown_min,
                        format!("{} {:.2} {:?} {}", r.metric, value(&values[i]), r.operator, r.threshold),
                    ));
                }
            }
        }
        if let Some((to, cooldown, why)) = out {
            return self.act(now, to, cooldown, why);
        }
        // Scale-in: every scale-in rule must be met; the smallest step of them.
        let ins: Vec<usize> = (0..p.rules.len()).filter(|i| !p.rules[*i].increase).collect();
        if ins.is_empty() || !ins.iter().all(|i| met(*i)) {
            return Decision::Nothing("no rule met");
        }
        let target = ins.iter().map(|i| apply(p.rules[*i].change, count, false)).max().unwrap_or(count).max(p.min);
        let cooldown = ins.iter().map(|i| p.rules[*i].cooldown_min).max().unwrap_or(1);
        // The flapping check: the largest step between target and count that
        // would not make a scale-out rule fire at once.
        for to in target..count {
            let flaps = p.rules.iter().enumerate().any(|(i, r)| {
                r.increase && values[i].is_some_and(|v| r.operator.holds(project(r, v, count, to), r.threshold))
            });
            if !flaps {
                let why = format!("scale-in to {to} (every scale-in rule met)");
                return self.act(now, to, cooldown, why);
            }
        }
        Decision::Nothing("scale-in skipped: it would flap")
    }

    fn act(&mut self, now: f64, to: u32, cooldown: u32, why: String) -> Decision {
        self.last_action = Some((now, cooldown));
        Decision::Scale { to, why }
    }
}

fn value(v: &Option<(f64, f64)>) -> f64 {
    v.map(|(v, _)| v).unwrap_or(f64::NAN)
}

fn apply(change: Change, count: u32, up: bool) -> u32 {
    let step = match change {
        Change::Count(n) => n,
        // Rounded up, at least one (a percent of a small pool is still a step).
        Change::Percent(p) => ((count as f64 * p as f64 / 100.0).ceil() as u32).max(1),
        Change::Exact(n) => return n,
    };
    if up {
        count.saturating_add(step)
    } else {
        count.saturating_sub(step)
    }
}

/// A scale-out rule's value if the count went from `count` to `to`.
fn project(rule: &Rule, (value, peak): (f64, f64), count: u32, to: u32) -> f64 {
    let removed = (count - to) as f64;
    match rule.statistic {
        Statistic::Average if to > 0 => value * count as f64 / to as f64,
        Statistic::Average => value,
        // Not published for custom metrics: assume every removed instance
        // carried the most any instance did (the safe side).
        Statistic::Sum => value - removed * peak.max(1.0),
        Statistic::Min | Statistic::Max => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::template::{Operator, Profile};

    fn rule(metric: &str, aggregation: Aggregation, operator: Operator, threshold: f64, increase: bool) -> Rule {
        Rule {
            metric: metric.into(),
            statistic: Statistic::Sum,
            grain_min: 1,
            window_min: 5,
            aggregation,
            operator,
            threshold,
            increase,
            change: Change::Count(1),
            cooldown_min: if increase { 10 } else { 2 },
        }
    }

    fn pool(headroom: f64, default: u32) -> Profile {
        Profile {
            name: "working hours".into(),
            min: 0,
            max: 10,
            default,
            rules: vec![
                rule("Spare", Aggregation::Maximum, Operator::LessThan, headroom, true),
                rule("Removable", Aggregation::Maximum, Operator::GreaterThan, headroom, false),
            ],
            recurrence: Some(((0..5).collect(), 8 * 60)),
        }
    }

    /// Every VM in `vms` posts `value` of `metric` for minutes `from..to`, readable at once.
    fn post(store: &mut Store, metric: &str, vms: std::ops::Range<u32>, minutes: std::ops::Range<i64>, value: f64) {
        for vm in vms {
            for m in minutes.clone() {
                store.post(metric, m, vm, value, (m + 1) as f64 * 60.0);
            }
        }
    }

    #[test]
    fn missing_metrics_bring_the_default_count_and_never_a_scale_in() {
        let mut engine = Engine::new(vec![pool(1.0, 1)], 2);
        let at = 9.0 * 3600.0;
        assert_eq!(
            engine.run(at, 0, &Store::default()),
            Decision::Scale { to: 1, why: "metrics missing: default 1".into() }
        );
        // Three VMs, no point readable: nothing, though Removable would say so.
        let mut engine = Engine::new(vec![pool(1.0, 1)], 2);
        assert_eq!(engine.run(at, 3, &Store::default()), Decision::Nothing("metrics missing"));
        // Spare readable, Removable not: still no scale-in.
        let mut store = Store::default();
        post(&mut store, "Spare", 0..3, 530..540, 1.0);
        assert_eq!(engine.run(at, 3, &store), Decision::Nothing("metrics missing"));
    }

    #[test]
    fn a_partial_newest_minute_fools_last_and_not_maximum() {
        let mut store = Store::default();
        let now = 540.0 * 60.0 + 30.0;
        // Minutes 535..539: VM 0 spare throughout; its point of 539 is not readable yet,
        // VM 1's (not spare) is.
        for m in 535..539 {
            store.post("Spare", m, 0, 1.0, (m + 1) as f64 * 60.0);
        }
        store.post("Spare", 539, 0, 1.0, now + 60.0);
        store.post("Spare", 539, 1, 0.0, now - 1.0);
        let last = rule("Spare", Aggregation::Last, Operator::LessThan, 1.0, true);
        let max = rule("Spare", Aggregation::Maximum, Operator::LessThan, 1.0, true);
        assert_eq!(store.value(&last, now).map(|v| v.0), Some(0.0), "the partial minute reads as no spare");
        assert_eq!(store.value(&max, now).map(|v| v.0), Some(1.0));
    }

    #[test]
    fn a_cooldown_counts_from_the_last_action_in_either_direction() {
        let mut engine = Engine::new(vec![pool(1.0, 1)], 2);
        let mut store = Store::default();
        // Two spare and removable VMs beyond a headroom of 1: one goes.
        post(&mut store, "Spare", 0..3, 530..540, 1.0);
        post(&mut store, "Removable", 0..3, 530..540, 1.0);
        let at = 540.0 * 60.0;
        assert!(matches!(engine.run(at, 3, &store), Decision::Scale { to: 2, .. }));
        // A minute later the pool ran dry: the scale-in's 2-min cooldown holds the scale-out.
        let mut dry = Store::default();
        post(&mut dry, "Spare", 0..2, 536..541, 0.0);
        post(&mut dry, "Removable", 0..2, 536..541, 0.0);
        assert_eq!(engine.run(at + 60.0, 2, &dry), Decision::Nothing("cooldown"));
        assert!(matches!(engine.run(at + 121.0, 2, &dry), Decision::Scale { to: 3, .. }));
    }

    #[test]
    fn a_scale_in_that_would_take_the_headroom_is_skipped() {
        let mut engine = Engine::new(vec![pool(1.0, 1)], 2);
        let mut store = Store::default();
        // Two removable VMs (over a headroom of 1), but only one of them spare:
        // removing one could leave no spare, so the flapping check skips it.
        post(&mut store, "Removable", 0..2, 530..540, 1.0);
        post(&mut store, "Spare", 0..1, 530..540, 1.0);
        post(&mut store, "Spare", 1..3, 530..540, 0.0);
        assert_eq!(engine.run(540.0 * 60.0, 3, &store), Decision::Nothing("scale-in skipped: it would flap"));
    }

    #[test]
    fn the_profile_in_force_follows_the_week_and_a_fixed_date_one_wins() {
        let off = Profile { name: "off hours".into(), recurrence: Some(((0..5).collect(), 18 * 60)), ..pool(0.0, 0) };
        let wednesday = Engine::new(vec![pool(1.0, 1), off.clone()], 2);
        assert_eq!(wednesday.profile(7.0 * 3600.0 + 3540.0).map(|p| p.name.as_str()), Some("off hours"));
        assert_eq!(wednesday.profile(8.0 * 3600.0).map(|p| p.name.as_str()), Some("working hours"));
        assert_eq!(wednesday.profile(18.0 * 3600.0).map(|p| p.name.as_str()), Some("off hours"));
        // Saturday noon: Friday 18:00's profile still runs.
        let mut saturday = Engine::new(vec![pool(1.0, 1), off.clone()], 5);
        assert_eq!(saturday.profile(12.0 * 3600.0).map(|p| p.name.as_str()), Some("off hours"));
        let wake = Profile { name: "wake".into(), min: 1, recurrence: None, ..off };
        saturday.fixed = Some(Fixed { from: 11.0 * 3600.0, until: 12.5 * 3600.0, profile: wake });
        assert_eq!(saturday.profile(12.0 * 3600.0).map(|p| p.name.as_str()), Some("wake"));
        assert_eq!(saturday.profile(12.5 * 3600.0).map(|p| p.name.as_str()), Some("off hours"));
        // Its minimum applies on the next run, metrics or not.
        assert!(matches!(saturday.run(12.0 * 3600.0, 0, &Store::default()), Decision::Scale { to: 1, .. }));
    }
}
