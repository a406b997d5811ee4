//! The protection machine over simulated hours, with every write and read
//! ending as ARM may end it: applied, applied with the answer lost, a 5xx,
//! 429 on reads, 429 on writes, a 404 once and then found. A second of
//! simulated time a step; the verdict is sampled every [`SAMPLE`] like the
//! idle task does, and may stall.

use super::machine::{Machine, Outcome, Step, Verdict};
use super::policy::Policy;
use std::time::{Duration, SystemTime};

const SAMPLE: u64 = 10;
/// The idle timeout behind the verdict in the model.
const TIMEOUT: u64 = 60;
/// A request's time, at most.
const LATENCY: u64 = 3;
const BUDGET: u32 = 4;
/// The most a write's own failure may hold back the next protect: the
/// backoff cap (5 min, +20 % jitter) or a Retry-After drawn below 120 s.
const FAILED_WRITE_EXCUSE: u64 = 360;

#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Out of 100: applied with its answer, applied with the answer lost, a
    /// 5xx (not applied), 429 on a read, 429 on a write; the rest applied.
    pub lost: u32,
    pub server_error: u32,
    pub throttled_read: u32,
    pub throttled_write: u32,
    /// The instance reads 404 once (a lagging replica), then is found again.
    pub absent_once: bool,
}

pub const EVERY_FAULT: Mix =
    Mix { lost: 15, server_error: 15, throttled_read: 10, throttled_write: 10, absent_once: true };

#[derive(Debug, Default)]
pub struct Report {
    pub writes: u32,
    pub releases: u32,
    pub protects: u32,
    /// Seconds the instance was unprotected while someone worked, the longest stretch.
    pub longest_unprotected_while_busy: u64,
}

struct World {
    rng: fastrand::Rng,
    mix: Mix,
    protected: bool,
    absent_left: bool,
}

impl World {
    fn roll(&mut self) -> u32 {
        self.rng.u32(0..100)
    }

    /// A write: whether it took effect, and the outcome the agent sees.
    fn write(&mut self, protect: bool) -> Outcome {
        let roll = self.roll();
        let m = self.mix;
        if roll < m.lost {
            self.protected = protect;
            Outcome::NoAnswer("no answer".into())
        } else if roll < m.lost + m.server_error {
            Outcome::NoAnswer("ARM answered 503".into())
        } else if roll < m.lost + m.server_error + m.throttled_write {
            Outcome::Throttled(Some(Duration::from_secs(self.rng.u64(1..120))), "429".into())
        } else {
            self.protected = protect;
            Outcome::Model { scale_in: protect, scale_set_actions: false }
        }
    }

    fn read(&mut self) -> Outcome {
        if self.mix.absent_once && self.absent_left && self.rng.bool() {
            self.absent_left = false;
            return Outcome::Absent("404".into());
        }
        let roll = self.roll();
        let m = self.mix;
        if roll < m.server_error {
            Outcome::NoAnswer("ARM answered 500".into())
        } else if roll < m.server_error + m.throttled_read {
            Outcome::Throttled(Some(Duration::from_secs(self.rng.u64(1..120))), "429".into())
        } else {
            Outcome::Model { scale_in: self.protected, scale_set_actions: false }
        }
    }
}

/// Someone works on the VM: `(start, end)` seconds, sorted.
pub fn activity(rng: &mut fastrand::Rng, seconds: u64) -> Vec<(u64, u64)> {
    let mut spans = Vec::new();
    let mut t = rng.u64(0..600);
    while t < seconds {
        let on = rng.u64(1..900);
        spans.push((t, t + on));
        t += on + rng.u64(1..1800);
    }
    spans
}

/// Runs the machine for `seconds` against `spans` of activity, the idle
/// task stalling (publishing nothing) during `stalls`. Panics when an
/// invariant breaks, naming the second.
pub fn run(seed: u64, mix: Mix, spans: &[(u64, u64)], stalls: &[(u64, u64)], seconds: u64) -> Report {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let at = |t: u64| start + Duration::from_secs(t);
    let policy = Policy::new(Duration::from_secs(120), BUDGET, Vec::new(), start);
    let mut machine = Machine::new(policy, fastrand::Rng::with_seed(seed));
    let mut world = World { rng: fastrand::Rng::with_seed(seed ^ 0x5eed), mix, protected: false, absent_left: true };
    let worked = |t: u64| spans.iter().any(|(a, b)| *a <= t && t < *b);
    // Not idle now: someone worked within the timeout.
    let busy = |t: u64| (t.saturating_sub(TIMEOUT)..=t).any(worked);
    let stalled = |t: u64| stalls.iter().any(|(a, b)| *a <= t && t < *b);
    let mut report = Report::default();
    // The published verdict: (idle, sampled at).
    let mut published: Option<(bool, u64)> = None;
    // A request in flight: what it was, when it ends, how it ends.
    let mut in_flight: Option<(Step, u64, Outcome)> = None;
    let mut wake_at: Option<u64> = Some(0);
    let mut releases_sent: Vec<u64> = Vec::new();
    // Invariant bookkeeping.
    let mut stretch: Option<u64> = None;
    let mut seen_busy_at: Option<u64> = None;
    let mut excuse_until: u64 = 0;
    for t in 0..seconds {
        let mut woken = wake_at.is_some_and(|w| t >= w);
        if t % SAMPLE == 0 && !stalled(t) {
            published = Some((!busy(t), t));
            woken = true;
        }
        let verdict = match published {
            Some((idle, sampled)) => Verdict {
                idle_now: idle && t - sampled <= 3 * SAMPLE,
                stale_at: Some(at(sampled) + Duration::from_secs(3 * SAMPLE) + Duration::from_millis(1)),
            },
            None => Verdict { idle_now: false, stale_at: None },
        };
        if let Some((step, done, _)) = &in_flight {
            if *done == t {
                let step = *step;
                let Some((_, _, outcome)) = in_flight.take() else { unreachable!() };
                match step {
                    Step::Read => machine.on_read(outcome, at(t)),
                    Step::Write { protect, .. } => {
                        let failed = !matches!(outcome, Outcome::Model { .. }) && world.protected != protect;
                        if protect && failed {
                            excuse_until = t + FAILED_WRITE_EXCUSE;
                        }
                        machine.on_write(protect, outcome, at(t));
                    }
                    Step::Wait(_) => unreachable!(),
                }
                woken = true;
            }
        }
        if in_flight.is_none() && woken {
            match machine.next(verdict, at(t)) {
                Step::Wait(until) => {
                    wake_at = until.map(|u| u.duration_since(start).unwrap_or_default().as_secs().max(t + 1));
                    if let Some(u) = until {
                        assert!(
                            u.duration_since(at(t)).unwrap_or_default() <= Duration::from_secs(3600),
                            "seed {seed}: a wait over an hour at {t}"
                        );
                    }
                }
                step => {
                    let latency = world.rng.u64(1..=LATENCY);
                    let outcome = match step {
                        Step::Read => world.read(),
                        Step::Write { protect, .. } => {
                            report.writes += 1;
                            if protect {
                                report.protects += 1;
                            } else {
                                assert!(verdict.idle_now, "seed {seed}: a release sent at {t} while not idle now");
                            }
                            let was_protected = world.protected;
                            let outcome = world.write(protect);
                            // Releases that took effect, within the budget each hour (a
                            // release retried after a 5xx or 429 is the same release).
                            if !protect && was_protected && !world.protected {
                                report.releases += 1;
                                releases_sent.push(t);
                                let in_hour = releases_sent.iter().filter(|r| t - **r < 3600).count();
                                assert!(
                                    in_hour <= BUDGET as usize,
                                    "seed {seed}: {in_hour} releases in the hour before {t}"
                                );
                            }
                            outcome
                        }
                        Step::Wait(_) => unreachable!(),
                    };
                    in_flight = Some((step, t + latency, outcome));
                }
            }
        }
        // Removable only when the instance really is released.
        // (A protect in flight has already changed the instance here.)
        let protecting = matches!(in_flight, Some((Step::Write { protect: true, .. }, _, _)));
        assert!(
            !machine.removable() || !world.protected || protecting,
            "seed {seed}: removable at {t} while protected"
        );
        // While someone works and the instance is unprotected, the agent
        // protects within one write of seeing it, held back only by a
        // failed write's own wait.
        if busy(t) && !world.protected {
            let began = *stretch.get_or_insert(t);
            if !verdict.idle_now && seen_busy_at.is_none() {
                seen_busy_at = Some(t);
                let lag = t - began;
                let bound = if stalls.iter().any(|(a, b)| *a <= t && began < *b) { 3 * SAMPLE + 1 } else { SAMPLE };
                assert!(lag <= bound, "seed {seed}: the verdict showed the work {lag} s late at {t}");
            }
            if let Some(seen) = seen_busy_at {
                // One request in flight when it was seen, then the protect itself.
                let deadline = seen.max(excuse_until) + 2 * LATENCY + 1;
                assert!(
                    t <= deadline,
                    "seed {seed}: unprotected while busy since {began} (seen {seen}), no protect by {t}"
                );
            }
            report.longest_unprotected_while_busy = report.longest_unprotected_while_busy.max(t - began + 1);
        } else {
            stretch = None;
            seen_busy_at = None;
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_HOURS: u64 = 2 * 3600;

    #[test]
    fn two_hours_of_every_fault_never_leave_a_busy_vm_unprotected_past_the_bound() {
        for seed in 0..200 {
            let spans = activity(&mut fastrand::Rng::with_seed(seed), TWO_HOURS);
            let report = run(seed, EVERY_FAULT, &spans, &[], TWO_HOURS);
            assert!(report.protects >= 1, "seed {seed}: {report:?}");
        }
    }

    #[test]
    fn with_every_answer_applied_the_vm_is_unprotected_for_at_most_a_sample_and_a_write() {
        let clean = Mix { lost: 0, server_error: 0, throttled_read: 0, throttled_write: 0, absent_once: false };
        for seed in 0..50 {
            let spans = activity(&mut fastrand::Rng::with_seed(seed), TWO_HOURS);
            let report = run(seed, clean, &spans, &[], TWO_HOURS);
            assert!(report.longest_unprotected_while_busy <= SAMPLE + LATENCY + 1, "seed {seed}: {report:?}");
            assert!(report.writes <= 2 * report.releases + 1, "seed {seed}: {report:?}");
        }
    }

    #[test]
    fn a_release_whose_answer_is_lost_then_a_login_is_protected_again() {
        // Every write applied, every answer lost: the belief stays unknown
        // until a read, and a login is protected at once all the same.
        let lossy = Mix { lost: 100, server_error: 0, throttled_read: 0, throttled_write: 0, absent_once: false };
        let spans = [(0, 30), (1000, 1300), (3000, 3100)];
        let report = run(7, lossy, &spans, &[], 4000);
        assert!(report.releases >= 1 && report.protects >= 2, "{report:?}");
        assert!(report.longest_unprotected_while_busy <= SAMPLE + 2 * LATENCY + 1, "{report:?}");
    }

    #[test]
    fn reads_throttled_do_not_hold_back_a_protect() {
        let throttled = Mix { lost: 0, server_error: 0, throttled_read: 100, throttled_write: 0, absent_once: false };
        let spans = [(2000, 2300)];
        let report = run(3, throttled, &spans, &[], 3000);
        assert!(report.protects >= 1);
        assert!(report.longest_unprotected_while_busy <= SAMPLE + LATENCY + 1, "{report:?}");
    }

    #[test]
    fn an_idle_task_that_stops_publishing_is_protected_within_three_intervals() {
        let clean = Mix { lost: 0, server_error: 0, throttled_read: 0, throttled_write: 0, absent_once: false };
        // Idle and released by 1000 s; the sampler stalls at 1500 and
        // someone starts working at 1510 — the verdict never says so.
        let report = run(11, clean, &[(0, 20), (1510, 1700)], &[(1500, 4000)], 2500);
        assert!(report.releases >= 1, "{report:?}");
        assert!(report.longest_unprotected_while_busy <= 3 * SAMPLE + LATENCY + 1, "{report:?}");
    }

    #[test]
    fn a_restart_mid_release_reads_first_and_a_busy_verdict_protects_even_with_the_read_throttled() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let t = t0 + Duration::from_secs(10);
        // The release was counted (on disk) and sent; the agent died before its answer.
        let policy = Policy::new(Duration::from_secs(120), BUDGET, vec![t0], t);
        let mut machine = Machine::new(policy, fastrand::Rng::with_seed(1));
        let busy = Verdict { idle_now: false, stale_at: None };
        assert_eq!(machine.next(busy, t), Step::Read, "a restart reads before any write");
        machine.on_read(Outcome::Throttled(Some(Duration::from_secs(120)), "429".into()), t);
        assert!(
            matches!(machine.next(busy, t), Step::Write { protect: true, .. }),
            "the throttled read holds nothing back"
        );
        assert!(!machine.removable());
        assert_eq!(machine.releases_in_the_last_hour(t), 1, "the release counted before the crash still counts");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn the_invariants_hold_for_any_mix_of_faults(
            seed in 0u64..1_000_000,
            lost in 0u32..30, server_error in 0u32..30, throttled_read in 0u32..20, throttled_write in 0u32..20,
            absent_once: bool, stall_at in 0u64..3600,
        ) {
            let mix = Mix { lost, server_error, throttled_read, throttled_write, absent_once };
            let spans = activity(&mut fastrand::Rng::with_seed(seed), 3600);
            run(seed, mix, &spans, &[(stall_at, stall_at + 300)], 3600);
        }
    }
}
