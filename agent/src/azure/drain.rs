//! When a Scheduled Event for this VM is approved: a pure function of the
//! event, the idle verdict and the clock, so every ambiguous case is tested
//! without IMDS.
//!
//! A `Terminate`/`Preempt` gives users the notification window (10 minutes
//! in the shipped template) to save their work; approving early throws it
//! away. So the approval goes early only on a fresh idle verdict; otherwise
//! the users are told and it goes when the verdict turns idle or at
//! `NotBefore - 30 s`, whichever comes first. Not approving never holds
//! Azure back: it proceeds at `NotBefore` on its own
//! (https://learn.microsoft.com/en-us/azure/virtual-machines/linux/scheduled-events),
//! so every doubt waits.

use crate::core::shared::{IdleNews, STALE_AFTER_INTERVALS};
use std::time::{Duration, SystemTime};

/// Approved at the latest this long before `NotBefore`.
pub const APPROVE_BEFORE: Duration = Duration::from_secs(30);

/// What the decision reads of one event.
#[derive(Debug, Clone)]
pub struct EventFacts<'a> {
    pub kind: &'a str,
    pub status: &'a str,
    pub resources: &'a [String],
    /// `None`: missing or unreadable.
    pub not_before: Option<SystemTime>,
}

/// What to do with the event now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// It names only other VMs: never touched.
    NotOurs,
    /// No longer `Scheduled` (Started): approving means nothing, or worse.
    Started,
    /// Ours, but not a type that drains: `azure.approve` decides.
    NoDrain,
    /// Ours and other VMs' too: drained, never approved (an approval covers
    /// every VM named).
    DrainOnly { others: Vec<String> },
    /// Drained; approval waits for an idle verdict or `deadline` (`None`:
    /// no `NotBefore` to count from, so only an idle verdict approves).
    Wait { deadline: Option<SystemTime>, why: String },
    /// Drained; approved now.
    Approve { why: String },
}

/// Whether the verdict says idle and is fresh at `now`: made, sampled no
/// more than three intervals ago, and not ahead of the clock by more than an
/// interval (the clock stepped back: the sample's age is unknown).
pub fn fresh_idle(verdict: &IdleNews, now: SystemTime) -> bool {
    let Some(sampled_at) = verdict.sampled_at else { return false };
    let interval = verdict.interval.max(Duration::from_secs(1));
    let age_ok = match now.duration_since(sampled_at) {
        Ok(age) => age <= interval.saturating_mul(STALE_AFTER_INTERVALS),
        Err(ahead) => ahead.duration() <= interval,
    };
    verdict.known && verdict.idle && age_ok
}

/// The step for one event at `now`.
pub fn decide(event: &EventFacts<'_>, vm_name: &str, verdict: &IdleNews, now: SystemTime) -> Step {
    if !event.resources.iter().any(|r| r == vm_name) {
        return Step::NotOurs;
    }
    if event.status != "Scheduled" {
        return Step::Started;
    }
    if !matches!(event.kind, "Terminate" | "Preempt") {
        return Step::NoDrain;
    }
    let others: Vec<String> = event.resources.iter().filter(|r| *r != vm_name).cloned().collect();
    if !others.is_empty() {
        return Step::DrainOnly { others };
    }
    let deadline = event.not_before.map(|at| at.checked_sub(APPROVE_BEFORE).unwrap_or(at));
    if fresh_idle(verdict, now) {
        return Step::Approve { why: "nobody is working (fresh idle verdict)".into() };
    }
    let why = match (verdict.known, verdict.sampled_at) {
        (false, _) | (_, None) => "no verdict yet".to_string(),
        _ if !verdict.idle => {
            format!("in use: {}", verdict.reasons.first().map(String::as_str).unwrap_or("active"))
        }
        _ => "the verdict is stale".to_string(),
    };
    match deadline {
        Some(at) if now >= at => Step::Approve { why: format!("NotBefore - 30 s reached ({why})") },
        deadline => Step::Wait { deadline, why },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = "pool_3";

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn verdict(idle: bool, sampled_at: Option<SystemTime>) -> IdleNews {
        IdleNews {
            known: true,
            idle,
            sampled_at,
            interval: Duration::from_secs(10),
            reasons: vec![if idle { "idle".into() } else { "alice: session on pts/0".into() }],
            ..IdleNews::default()
        }
    }

    fn terminate(resources: &[String], not_before: Option<SystemTime>) -> EventFacts<'_> {
        EventFacts { kind: "Terminate", status: "Scheduled", resources, not_before }
    }

    fn ours() -> Vec<String> {
        vec![VM.to_string()]
    }

    #[test]
    fn a_user_at_work_holds_the_approval_until_not_before_minus_30_s() {
        let names = ours();
        let event = terminate(&names, Some(t(300)));
        let active = verdict(false, Some(t(0)));
        let step = decide(&event, VM, &active, t(0));
        assert_eq!(step, Step::Wait { deadline: Some(t(270)), why: "in use: alice: session on pts/0".into() });
        let active = verdict(false, Some(t(265)));
        assert!(matches!(decide(&event, VM, &active, t(269)), Step::Wait { .. }));
        assert!(matches!(decide(&event, VM, &verdict(false, Some(t(268))), t(270)), Step::Approve { .. }));
    }

    #[test]
    fn a_fresh_idle_verdict_approves_at_once_and_a_turn_to_idle_approves_mid_wait() {
        let names = ours();
        let event = terminate(&names, Some(t(600)));
        assert!(matches!(decide(&event, VM, &verdict(true, Some(t(0))), t(5)), Step::Approve { .. }));
        // Waiting, then the verdict turns idle long before the deadline.
        assert!(matches!(decide(&event, VM, &verdict(false, Some(t(100))), t(101)), Step::Wait { .. }));
        assert!(matches!(decide(&event, VM, &verdict(true, Some(t(110))), t(111)), Step::Approve { .. }));
    }

    #[test]
    fn a_stale_unknown_or_missing_verdict_is_not_idle() {
        let names = ours();
        let event = terminate(&names, Some(t(600)));
        // Idle, but sampled 31 s ago at a 10 s interval: the idle task may have stopped.
        let stale = verdict(true, Some(t(0)));
        assert_eq!(
            decide(&event, VM, &stale, t(31)),
            Step::Wait { deadline: Some(t(570)), why: "the verdict is stale".into() }
        );
        assert!(matches!(decide(&event, VM, &stale, t(30)), Step::Approve { .. }), "30 s is three intervals");
        let unknown = IdleNews { known: false, ..verdict(true, Some(t(0))) };
        assert!(matches!(decide(&event, VM, &unknown, t(1)), Step::Wait { .. }));
        assert!(matches!(decide(&event, VM, &verdict(true, None), t(1)), Step::Wait { .. }));
        assert!(matches!(decide(&event, VM, &IdleNews::default(), t(1)), Step::Wait { .. }));
    }

    #[test]
    fn without_not_before_only_an_idle_verdict_approves() {
        let names = ours();
        let event = terminate(&names, None);
        let active = verdict(false, Some(t(10_000)));
        assert_eq!(
            decide(&event, VM, &active, t(10_000)),
            Step::Wait { deadline: None, why: "in use: alice: session on pts/0".into() }
        );
        assert!(matches!(decide(&event, VM, &verdict(true, Some(t(10_000))), t(10_001)), Step::Approve { .. }));
    }

    #[test]
    fn a_not_before_already_past_approves_now_even_in_use() {
        let names = ours();
        let event = terminate(&names, Some(t(100)));
        let step = decide(&event, VM, &verdict(false, Some(t(200))), t(200));
        assert!(matches!(step, Step::Approve { ref why } if why.contains("NotBefore")), "{step:?}");
        // A NotBefore so early that minus 30 s underflows is no panic.
        let epoch = terminate(&names, Some(SystemTime::UNIX_EPOCH));
        assert!(matches!(decide(&epoch, VM, &verdict(false, Some(t(0))), t(0)), Step::Approve { .. }));
    }

    #[test]
    fn clock_jumps_are_judged_on_the_clock_as_it_reads_now() {
        let names = ours();
        let event = terminate(&names, Some(t(300)));
        // Forward past the deadline: the platform's NotBefore is wall-clock, so the window is over.
        assert!(matches!(decide(&event, VM, &verdict(false, Some(t(0))), t(1000)), Step::Approve { .. }));
        // Back by a minute: an idle sample "from the future" has an unknown age: not idle.
        let ahead = verdict(true, Some(t(100)));
        assert!(matches!(decide(&event, VM, &ahead, t(40)), Step::Wait { .. }));
        // Within one interval ahead is ordinary jitter between two clock reads.
        assert!(matches!(decide(&event, VM, &ahead, t(95)), Step::Approve { .. }));
    }

    #[test]
    fn an_event_naming_two_vms_is_drained_never_approved_and_another_s_is_not_touched() {
        let both = vec!["pool_7".to_string(), VM.to_string()];
        let idle = verdict(true, Some(t(0)));
        let step = decide(&terminate(&both, Some(t(10))), VM, &idle, t(1000));
        assert_eq!(step, Step::DrainOnly { others: vec!["pool_7".into()] });
        let other = vec!["pool_7".to_string()];
        assert_eq!(decide(&terminate(&other, Some(t(10))), VM, &idle, t(1000)), Step::NotOurs);
        let named_like = vec!["pool_33".to_string()];
        assert_eq!(decide(&terminate(&named_like, Some(t(10))), VM, &idle, t(1)), Step::NotOurs);
    }

    #[test]
    fn started_events_and_other_types_are_not_drained() {
        let names = ours();
        let idle = verdict(true, Some(t(0)));
        let started = EventFacts { status: "Started", ..terminate(&names, None) };
        assert_eq!(decide(&started, VM, &idle, t(1)), Step::Started);
        let freeze = EventFacts { kind: "Freeze", ..terminate(&names, Some(t(60))) };
        assert_eq!(decide(&freeze, VM, &idle, t(1)), Step::NoDrain);
        let preempt = EventFacts { kind: "Preempt", ..terminate(&names, Some(t(30))) };
        // A Preempt's 30 s leave nothing to wait for.
        assert!(matches!(decide(&preempt, VM, &verdict(false, Some(t(0))), t(0)), Step::Approve { .. }));
    }
}
