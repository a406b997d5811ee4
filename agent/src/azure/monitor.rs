//! The verdict as Azure Monitor custom metrics, for autoscale rules: one
//! bucket per interval, posted at least once. Autoscale reads the `Max` and
//! `Min` statistics, so a bucket posted twice cannot make a VM look more idle
//! than it was. Buckets wait in a bounded backlog while the endpoint fails
//! and are dropped (counted) only once Azure would refuse them as too old.

use crate::core::shared::{IdleNews, ShareNews};
use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

/// Azure takes points up to 20 minutes back; a margin for clocks and the trip.
pub const MAX_AGE: Duration = Duration::from_secs(19 * 60);

#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// The start of the interval the values describe.
    pub time: SystemTime,
    pub values: Vec<(&'static str, f64)>,
}

/// Every metric a bucket carries, in its order.
pub const METRIC_NAMES: [&str; 13] = [
    "Idle",
    "Busy",
    "Removable",
    "InUse",
    "Booting",
    "Free",
    "Spare",
    "ActiveUsers",
    "IdleMinutes",
    "CpuPercent",
    "GpuPercent",
    "ShareHealthy",
    "VerdictAgeSeconds",
];

/// The metrics of one interval, from the verdict and the share as they are now.
/// `protected`: whether scale-in protection holds the instance (`None`:
/// protection is not kept by the agent). A protected VM is never removable.
/// `offer`: what the VM offers the pool ([`super::demand`]), for the rules
/// that add VMs.
pub fn bucket(
    time: SystemTime,
    now: SystemTime,
    idle: &IdleNews,
    share: &ShareNews,
    protected: Option<bool>,
    offer: &super::demand::Offer,
) -> Bucket {
    let idle_now = idle.known && idle.idle_now(now);
    let figure = |name: &str| idle.figures.get(name).copied().unwrap_or(0.0);
    let idle_minutes = match (idle_now, idle.idle_since) {
        (true, Some(since)) => now.duration_since(since).unwrap_or_default().as_secs_f64() / 60.0,
        _ => 0.0,
    };
    let age = idle.sampled_at.map(|at| now.duration_since(at).unwrap_or_default().as_secs_f64());
    let share_healthy = matches!(share, ShareNews::Mounted { .. } | ShareNews::NotConfigured);
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    Bucket {
        time,
        values: vec![
            ("Idle", flag(idle_now)),
            // Active, unknown, stale or not yet known: busy, the safe side.
            ("Busy", flag(!idle_now)),
            // Idle and not held by scale-in protection (a release confirmed, or none kept).
            ("Removable", flag(idle_now && protected != Some(true))),
            // Demand: someone works here now (not grace, not the agent's start, not unknown).
            ("InUse", flag(offer.in_use)),
            ("Booting", flag(offer.booting)),
            ("Free", flag(offer.free)),
            // One metric for one rule: `Sum(Spare) < headroom` adds a VM.
            ("Spare", flag(offer.spare())),
            ("ActiveUsers", figure("sessions")),
            ("IdleMinutes", (idle_minutes * 10.0).round() / 10.0),
            ("CpuPercent", figure("cpu_percent")),
            ("GpuPercent", figure("gpu_percent")),
            ("ShareHealthy", flag(share_healthy)),
            // No verdict yet: as old as it can be said to be.
            ("VerdictAgeSeconds", age.map(|a| a.round()).unwrap_or(MAX_AGE.as_secs_f64())),
        ],
    }
}

/// One line per metric (`application/x-ndjson`), each in Azure's shape.
pub fn body(bucket: &Bucket, namespace: &str, instance: Option<&str>) -> String {
    let (dim_names, dim_values): (Vec<&str>, Vec<&str>) = match instance {
        Some(name) => (vec!["Instance"], vec![name]),
        None => (Vec::new(), Vec::new()),
    };
    let time = humantime::format_rfc3339_seconds(bucket.time).to_string();
    let mut out = String::new();
    for (metric, value) in &bucket.values {
        let line = serde_json::json!({
            "time": time,
            "data": {"baseData": {
                "metric": metric,
                "namespace": namespace,
                "dimNames": dim_names,
                "series": [{"dimValues": dim_values, "min": value, "max": value, "sum": value, "count": 1}],
            }},
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

/// Buckets not yet accepted, oldest first.
#[derive(Debug, Default)]
pub struct Backlog {
    buckets: VecDeque<Bucket>,
    pub dropped_too_old: u64,
    pub dropped_rejected: u64,
}

impl Backlog {
    pub fn push(&mut self, bucket: Bucket, capacity: usize) {
        self.buckets.push_back(bucket);
        while self.buckets.len() > capacity.max(1) {
            self.buckets.pop_front();
            self.dropped_too_old += 1;
        }
    }

    /// Drops (and counts) what Azure would no longer take; returns how many.
    pub fn expire(&mut self, now: SystemTime) -> u64 {
        let before = self.buckets.len();
        self.buckets.retain(|b| now.duration_since(b.time).unwrap_or_default() <= MAX_AGE);
        let gone = (before - self.buckets.len()) as u64;
        self.dropped_too_old += gone;
        gone
    }

    pub fn oldest(&self) -> Option<&Bucket> {
        self.buckets.front()
    }

    pub fn accepted(&mut self) {
        self.buckets.pop_front();
    }

    pub fn rejected(&mut self) {
        self.buckets.pop_front();
        self.dropped_rejected += 1;
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn news(idle: bool, at: SystemTime) -> IdleNews {
        IdleNews {
            known: true,
            idle,
            idle_since: Some(at - Duration::from_secs(600)),
            sampled_at: Some(at - Duration::from_secs(3)),
            interval: Duration::from_secs(10),
            figures: [("sessions".to_string(), 2.0), ("cpu_percent".to_string(), 4.5)].into_iter().collect(),
            ..IdleNews::default()
        }
    }

    fn quiet_offer() -> super::super::demand::Offer {
        super::super::demand::Offer { in_use: false, booting: false, free: false, ready: Ok(()) }
    }

    fn bucket(
        time: SystemTime,
        now: SystemTime,
        idle: &IdleNews,
        share: &ShareNews,
        protected: Option<bool>,
    ) -> Bucket {
        super::bucket(time, now, idle, share, protected, &quiet_offer())
    }

    #[test]
    fn the_demand_metrics_follow_the_offer_and_spare_is_free_or_booting() {
        use super::super::demand::Offer;
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let value = |b: &Bucket, name: &str| b.values.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).unwrap();
        let of = |offer: Offer| super::bucket(now, now, &news(false, now), &ShareNews::NotConfigured, None, &offer);
        let booting = of(Offer { booting: true, ..quiet_offer() });
        assert_eq!(["InUse", "Booting", "Free", "Spare"].map(|n| value(&booting, n)), [0.0, 1.0, 0.0, 1.0]);
        assert_eq!(value(&booting, "Busy"), 1.0, "Busy stays the safe side");
        let free = of(Offer { free: true, ..quiet_offer() });
        assert_eq!(["InUse", "Booting", "Free", "Spare"].map(|n| value(&free, n)), [0.0, 0.0, 1.0, 1.0]);
        let working = of(Offer { in_use: true, ..quiet_offer() });
        assert_eq!(["InUse", "Booting", "Free", "Spare"].map(|n| value(&working, n)), [1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn a_bucket_says_busy_unless_the_verdict_is_idle_and_fresh() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let value = |b: &Bucket, name: &str| b.values.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).unwrap();
        let idle = bucket(now, now, &news(true, now), &ShareNews::NotConfigured, None);
        assert_eq!((value(&idle, "Idle"), value(&idle, "Busy"), value(&idle, "Removable")), (1.0, 0.0, 1.0));
        // Idle but still protected (release_after not over): not removable yet.
        let protected = bucket(now, now, &news(true, now), &ShareNews::NotConfigured, Some(true));
        assert_eq!((value(&protected, "Idle"), value(&protected, "Removable")), (1.0, 0.0));
        assert_eq!(value(&idle, "IdleMinutes"), 10.0);
        assert_eq!(value(&idle, "VerdictAgeSeconds"), 3.0);
        let active = bucket(now, now, &news(false, now), &ShareNews::Down { why: "x".into() }, None);
        assert_eq!((value(&active, "Idle"), value(&active, "Busy"), value(&active, "ShareHealthy")), (0.0, 1.0, 0.0));
        let stale = bucket(now, now + Duration::from_secs(3600), &news(true, now), &ShareNews::NotConfigured, None);
        assert_eq!(value(&stale, "Busy"), 1.0, "a stale verdict is not idle");
        let unknown = bucket(now, now, &IdleNews::default(), &ShareNews::NotYetKnown, None);
        assert_eq!(value(&unknown, "Busy"), 1.0);
    }

    #[test]
    fn the_body_has_one_line_per_metric_with_matching_dimensions() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let b = bucket(now, now, &news(true, now), &ShareNews::NotConfigured, None);
        let text = body(&b, "pool-agent", Some("vm-3"));
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), METRIC_NAMES.len());
        let names: Vec<&str> = lines.iter().map(|l| l["data"]["baseData"]["metric"].as_str().unwrap()).collect();
        assert_eq!(names, METRIC_NAMES);
        let base = &lines[0]["data"]["baseData"];
        assert_eq!(base["metric"], "Idle");
        assert_eq!(base["dimNames"], serde_json::json!(["Instance"]));
        assert_eq!(base["series"][0]["dimValues"], serde_json::json!(["vm-3"]));
        assert_eq!(lines[0]["time"], "2027-01-15T08:00:00Z");
        let plain = body(&b, "pool-agent", None);
        assert!(plain.contains("\"dimNames\":[]") && plain.contains("\"dimValues\":[]"), "{plain}");
    }

    #[test]
    fn the_backlog_keeps_order_and_drops_only_what_azure_would_refuse() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut backlog = Backlog::default();
        for minutes_ago in (0..25).rev() {
            backlog.push(Bucket { time: now - Duration::from_secs(60 * minutes_ago), values: vec![] }, 100);
        }
        assert_eq!(backlog.expire(now), 5, "older than 19 minutes: 24..=20");
        assert_eq!(backlog.len(), 20);
        assert_eq!(backlog.oldest().unwrap().time, now - Duration::from_secs(60 * 19));
        backlog.rejected();
        assert_eq!((backlog.dropped_too_old, backlog.dropped_rejected, backlog.len()), (5, 1, 19));
    }
}
