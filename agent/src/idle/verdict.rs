//! The idle verdict from the signals' samples: pure logic over a monotonic
//! clock, so it is tested with a fake one.
//!
//! - The VM is idle when no signal has been active for `idle.timeout`; a
//!   signal that could not tell (`unknown`) counts as active.
//! - Entering idle takes the whole timeout of quiet; one active sample ends
//!   it (a blip of activity restarts the count).
//! - Within `idle.boot_grace` after boot the VM is active.
//! - Shortening the timeout restarts the count, so it never makes a VM idle
//!   at once; lengthening it may make an idle VM active again (the safe side).
//! - The contract of a sample (see [`super::signal::Sample`]): `Active` and
//!   `Unknown` mean active *now*; only an `Idle` sample's `last_activity` (a
//!   tty's last input, a kernel's last execution) moves the count, from when
//!   it happened, not from when it was seen.
//! - A signal unknown for longer than `idle.max_unknown` stops keeping the VM
//!   awake (a Jupyter that is gone for good must not bill a VM for ever).

use super::signal::{Sample, SignalState};
use std::time::{Duration, Instant, SystemTime};

/// How the verdict's reason starts when nothing is active.
pub const QUIET: &str = "nothing active since ";

#[derive(Debug, Clone)]
pub struct VerdictMachine {
    timeout: Duration,
    grace_until: Instant,
    last_active: Instant,
    /// When the timeout was last shortened: the count starts again there.
    floor: Instant,
    idle: bool,
    /// Per signal: since when it has been unknown without a break.
    unknown_since: std::collections::HashMap<String, Instant>,
    /// Signals given up on (unknown past `max_unknown`) and warned of.
    warned: std::collections::HashSet<String>,
}

/// The bounds a step judges by (from `[idle]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub timeout: Duration,
    pub max_unknown: Duration,
}

/// One verdict, for status, metrics and the core's shared state.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub idle: bool,
    /// The last moment something was active.
    pub idle_since: SystemTime,
    /// When the VM turns idle if nothing happens (past while idle).
    pub idle_at: SystemTime,
    /// Set on the sample where the VM turned idle.
    pub turned_idle: bool,
    /// A signal is active now (not grace, not start, not unknown).
    pub in_use: bool,
    pub in_grace: bool,
    /// A signal is unknown and still counts as active.
    pub unknown: bool,
    pub reasons: Vec<String>,
    /// Signals that, on this step, became unknown for longer than
    /// `max_unknown` and stopped counting (said once, as a warning).
    pub gave_up: Vec<String>,
}

impl VerdictMachine {
    /// `started`: now (the agent's start counts as activity, so a fresh
    /// agent never calls a VM idle before a whole timeout has passed);
    /// `grace_until`: boot time plus the boot grace.
    pub fn new(started: Instant, grace_until: Instant, timeout: Duration) -> Self {
        Self {
            timeout,
            grace_until,
            last_active: started,
            floor: started,
            idle: false,
            unknown_since: Default::default(),
            warned: Default::default(),
        }
    }

    pub fn set_grace_until(&mut self, grace_until: Instant) {
        self.grace_until = grace_until;
    }

    pub fn step(&mut self, now: Instant, wall: SystemTime, limits: Limits, samples: &[(&str, &Sample)]) -> Verdict {
        let timeout = limits.timeout;
        if timeout < self.timeout {
            self.floor = now;
        }
        self.timeout = timeout;
        let to_wall = |at: Instant| {
            if at >= now {
                wall + at.duration_since(now)
            } else {
                wall.checked_sub(now.duration_since(at)).unwrap_or(wall)
            }
        };
        let to_mono = |at: SystemTime| {
            let ago = wall.duration_since(at).unwrap_or_default();
            now.checked_sub(ago).unwrap_or(now)
        };
        let to_mono_ahead = |at: SystemTime| now + at.duration_since(wall).unwrap_or_default();
        let mut reasons = Vec::new();
        let mut gave_up = Vec::new();
        let mut active_now = false;
        let mut in_use = false;
        let mut unknown = false;
        // The latest end an active signal announces (a hold): never idle before it plus a timeout.
        let mut known_active_until: Option<Instant> = None;
        let still_unknown = |name: &String| samples.iter().any(|(n, s)| n == name && s.state == SignalState::Unknown);
        self.unknown_since.retain(|name, _| still_unknown(name));
        self.warned.retain(still_unknown);
        for (name, sample) in samples {
            let seen = match sample.state {
                // Active now, whatever the source says it last saw: its
                // `last_activity` may be an older part of it (a terminal
                // last typed in, next to a desktop in use).
                SignalState::Active => {
                    active_now = true;
                    in_use = true;
                    if let Some(until) = sample.active_until {
                        known_active_until = known_active_until.max(Some(to_mono_ahead(until)));
                    }
                    reasons.extend(sample.reasons.iter().map(|r| format!("{name}: {r}")));
                    Some(now)
                }
                SignalState::Unknown => {
                    let since = *self.unknown_since.entry(name.to_string()).or_insert(now);
                    let why = sample.reasons.join("; ");
                    if now.duration_since(since) > limits.max_unknown {
                        if self.warned.insert(name.to_string()) {
                            gave_up.push(name.to_string());
                        }
                        reasons.push(format!(
                            "{name}: unknown since {}, longer than idle.max_unknown ({}): no longer keeps the VM awake: {why}",
                            crate::core::clock::rfc3339(to_wall(since)),
                            crate::config::duration::format(limits.max_unknown)
                        ));
                        None
                    } else {
                        active_now = true;
                        unknown = true;
                        reasons.push(format!("{name}: unknown, counts as active: {why}"));
                        Some(now)
                    }
                }
                SignalState::Idle => sample.last_activity.map(to_mono),
                SignalState::Absent => None,
            };
            if let Some(seen) = seen {
                self.last_active = self.last_active.max(seen.min(now));
            }
        }
        let quiet_from = self.last_active.max(self.floor);
        let idle_at_mono =
            (quiet_from.max(known_active_until.unwrap_or(quiet_from)) + self.timeout).max(self.grace_until);
        let in_grace = now < self.grace_until;
        let was_idle = self.idle;
        self.idle = !active_now && !in_grace && now >= idle_at_mono;
        if in_grace {
            reasons.push(format!("grace after boot until {}", crate::core::clock::rfc3339(to_wall(self.grace_until))));
        }
        if !active_now && !self.idle && !in_grace {
            reasons.push(format!(
                "{QUIET}{}; idle at {} (timeout {})",
                crate::core::clock::rfc3339(to_wall(self.last_active)),
                crate::core::clock::rfc3339(to_wall(idle_at_mono)),
                crate::config::duration::format(self.timeout)
            ));
        }
        if self.idle {
            reasons.push(format!(
                "{QUIET}{} (timeout {})",
                crate::core::clock::rfc3339(to_wall(self.last_active)),
                crate::config::duration::format(self.timeout)
            ));
        }
        Verdict {
            idle: self.idle,
            idle_since: to_wall(self.last_active),
            idle_at: to_wall(idle_at_mono),
            turned_idle: self.idle && !was_idle,
            in_use,
            in_grace,
            unknown,
            reasons,
            gave_up,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::fake::FakeClock;
    use crate::core::clock::Clock;

    const MIN: Duration = Duration::from_secs(60);

    struct Rig {
        clock: std::sync::Arc<FakeClock>,
        machine: VerdictMachine,
    }

    impl Rig {
        fn new(grace: Duration, timeout: Duration) -> Self {
            let clock = FakeClock::at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
            let now = clock.monotonic();
            Self { machine: VerdictMachine::new(now, now + grace, timeout), clock }
        }

        fn step(&mut self, timeout: Duration, samples: &[(&str, &Sample)]) -> Verdict {
            let limits = Limits { timeout, max_unknown: 12 * 60 * MIN };
            self.machine.step(self.clock.monotonic(), self.clock.now(), limits, samples)
        }

        /// Advances by `by` in 10 s samples, all answering `sample`; the last verdict.
        fn run(&mut self, by: Duration, timeout: Duration, sample: &Sample) -> Verdict {
            let mut verdict = self.step(timeout, &[("sessions", sample)]);
            let mut left = by;
            while !left.is_zero() {
                let step = left.min(Duration::from_secs(10));
                self.clock.advance(step);
                left -= step;
                verdict = self.step(timeout, &[("sessions", sample)]);
            }
            verdict
        }
    }

    fn quiet() -> Sample {
        Sample::idle("no sessions")
    }

    #[test]
    fn idle_only_after_a_whole_timeout_of_quiet_and_a_blip_restarts_the_count() {
        let mut rig = Rig::new(Duration::ZERO, 30 * MIN);
        assert!(!rig.run(29 * MIN, 30 * MIN, &quiet()).idle, "the agent's start counts as activity");
        let active = Sample::active(vec!["ssh alice pts/0".into()]);
        let verdict = rig.run(Duration::ZERO, 30 * MIN, &active);
        assert!(!verdict.idle);
        assert!(verdict.reasons.iter().any(|r| r == "sessions: ssh alice pts/0"), "{verdict:?}");
        assert!(!rig.run(29 * MIN, 30 * MIN, &quiet()).idle, "the blip restarted the count");
        let verdict = rig.run(2 * MIN, 30 * MIN, &quiet());
        assert!(verdict.idle, "{verdict:?}");
        assert!(verdict.reasons[0].starts_with("nothing active since"), "{verdict:?}");
        // One active sample ends idle at once.
        assert!(!rig.run(Duration::ZERO, 30 * MIN, &active).idle);
    }

    #[test]
    fn the_turn_to_idle_is_reported_once() {
        let mut rig = Rig::new(Duration::ZERO, MIN);
        let turned: Vec<bool> = (0..12)
            .map(|_| {
                rig.clock.advance(Duration::from_secs(10));
                rig.step(MIN, &[("sessions", &quiet())]).turned_idle
            })
            .collect();
        assert_eq!(turned.iter().filter(|t| **t).count(), 1, "{turned:?}");
    }

    #[test]
    fn unknown_counts_as_active_and_says_why() {
        let mut rig = Rig::new(Duration::ZERO, MIN);
        let unknown = Sample::unknown("cannot reach http://127.0.0.1:8888: connection refused");
        let verdict = rig.run(10 * MIN, MIN, &unknown);
        assert!(!verdict.idle);
        assert!(verdict.reasons[0].contains("unknown, counts as active") && verdict.reasons[0].contains("8888"));
    }

    #[test]
    fn within_the_boot_grace_the_vm_is_active() {
        let mut rig = Rig::new(15 * MIN, MIN);
        let verdict = rig.run(14 * MIN, MIN, &quiet());
        assert!(!verdict.idle);
        assert!(verdict.reasons.iter().any(|r| r.starts_with("grace after boot until")), "{verdict:?}");
        assert!(rig.run(2 * MIN, MIN, &quiet()).idle, "idle once the grace is over and the timeout passed");
    }

    #[test]
    fn shortening_the_timeout_never_makes_the_vm_idle_at_once() {
        let mut rig = Rig::new(Duration::ZERO, 30 * MIN);
        assert!(!rig.run(20 * MIN, 30 * MIN, &quiet()).idle);
        let verdict = rig.run(Duration::ZERO, 5 * MIN, &quiet());
        assert!(!verdict.idle, "20 min quiet, timeout now 5 min: the count starts again");
        assert!(!rig.run(4 * MIN, 5 * MIN, &quiet()).idle);
        assert!(rig.run(MIN + Duration::from_secs(10), 5 * MIN, &quiet()).idle);
        // Lengthening it makes the VM active again: the safe side.
        assert!(!rig.run(Duration::ZERO, 60 * MIN, &quiet()).idle);
    }

    #[test]
    fn idle_at_counts_a_hold_s_end() {
        let mut rig = Rig::new(Duration::ZERO, 30 * MIN);
        let held = Sample::active(vec!["hold by alice".into()]).until(Some(rig.clock.now() + 120 * MIN));
        let verdict = rig.step(30 * MIN, &[("holds", &held)]);
        assert!(!verdict.idle);
        assert_eq!(verdict.idle_at, rig.clock.now() + 150 * MIN, "the hold's end plus the timeout");
        assert!(verdict.reasons.iter().any(|r| r.contains("hold by alice")), "{:?}", verdict.reasons);
        // Released early: the count starts from the last sample that saw it.
        rig.clock.advance(10 * MIN);
        rig.step(30 * MIN, &[("holds", &held)]);
        let verdict = rig.step(30 * MIN, &[("holds", &Sample::idle("no holds"))]);
        assert_eq!(verdict.idle_at, rig.clock.now() + 30 * MIN);
    }

    #[test]
    fn a_signal_s_own_last_activity_counts_from_when_it_happened() {
        let mut rig = Rig::new(Duration::ZERO, 30 * MIN);
        rig.clock.advance(40 * MIN);
        // The agent started 40 minutes ago; a tty had input 25 minutes ago and none since.
        let now = rig.clock.monotonic();
        rig.machine = VerdictMachine::new(now - 40 * MIN, now - 40 * MIN, 30 * MIN);
        let tty = Sample::idle("ssh alice pts/0").at(Some(rig.clock.now() - 25 * MIN));
        let verdict = rig.step(30 * MIN, &[("sessions", &tty)]);
        assert!(!verdict.idle);
        assert_eq!(verdict.idle_at, rig.clock.now() + 5 * MIN);
        rig.clock.advance(5 * MIN);
        assert!(rig.step(30 * MIN, &[("sessions", &tty)]).idle);
    }

    /// Steps every 10 s for `by`, each step answering `samples(now)`.
    fn run_with(
        rig: &mut Rig,
        by: Duration,
        timeout: Duration,
        samples: &dyn Fn(SystemTime) -> Vec<(&'static str, Sample)>,
    ) -> Verdict {
        let mut left = by;
        loop {
            let answered = samples(rig.clock.now());
            let named: Vec<(&str, &Sample)> = answered.iter().map(|(n, s)| (*n, s)).collect();
            let verdict = rig.step(timeout, &named);
            if left.is_zero() {
                return verdict;
            }
            let step = left.min(Duration::from_secs(10));
            rig.clock.advance(step);
            left -= step;
        }
    }

    #[test]
    fn an_active_sessions_sample_counts_now_whatever_its_oldest_terminal_says() {
        // Two hours of a tty-less VS Code session at work, next to a terminal
        // last typed in 45 minutes before they began: the sessions source
        // answers Active with the terminal's old input as last_activity.
        let mut rig = Rig::new(Duration::ZERO, 30 * MIN);
        let started = rig.clock.now();
        let working = |_now: SystemTime| {
            vec![(
                "sessions",
                Sample::active(vec!["sshd bob (no terminal), working at 80% of a core".into()])
                    .at(Some(started - 45 * MIN)),
            )]
        };
        assert!(!run_with(&mut rig, 120 * MIN, 30 * MIN, &working).idle);
        // The work stops: the first quiet sample must not be idle at once.
        let quiet_since_terminal = |_now: SystemTime| {
            vec![("sessions", Sample::idle("sshd alice pts/0, no input for 165m").at(Some(started - 45 * MIN)))]
        };
        let verdict = run_with(&mut rig, Duration::ZERO, 30 * MIN, &quiet_since_terminal);
        assert!(!verdict.idle, "{verdict:?}");
        assert!(!run_with(&mut rig, 29 * MIN, 30 * MIN, &quiet_since_terminal).idle, "a whole timeout of quiet first");
        assert!(run_with(&mut rig, 2 * MIN, 30 * MIN, &quiet_since_terminal).idle);
    }

    #[test]
    fn a_desktop_in_use_beside_an_old_terminal_keeps_the_count_at_now() {
        let mut rig = Rig::new(Duration::ZERO, 30 * MIN);
        let old = rig.clock.now();
        let desktop = |_now: SystemTime| {
            vec![
                ("sessions", Sample::active(vec!["xrdp-sesman carol (x11), in use".into()]).at(Some(old))),
                ("cpu", Sample::idle("users' CPU below 10%")),
            ]
        };
        run_with(&mut rig, 60 * MIN, 30 * MIN, &desktop);
        let left = rig.clock.now();
        let quiet = |_now: SystemTime| vec![("sessions", Sample::idle("carol idle").at(Some(old)))];
        let verdict = run_with(&mut rig, 10 * MIN, 30 * MIN, &quiet);
        assert!(!verdict.idle);
        assert_eq!(verdict.idle_since, left, "the count starts when the desktop was last in use");
    }

    #[test]
    fn a_cpu_active_tty_less_session_beside_an_old_terminal_moves_the_count() {
        let mut rig = Rig::new(Duration::ZERO, 30 * MIN);
        let long_ago = rig.clock.now();
        rig.clock.advance(60 * MIN);
        let busy = Sample::active(vec!["sshd bob (no terminal), working at 50% of a core".into()]);
        let verdict = rig.step(30 * MIN, &[("sessions", &busy.at(Some(long_ago)))]);
        assert_eq!(verdict.idle_since, rig.clock.now());
        rig.clock.advance(Duration::from_secs(10));
        let verdict = rig.step(30 * MIN, &[("sessions", &Sample::idle("quiet").at(Some(long_ago)))]);
        assert!(!verdict.idle, "{verdict:?}");
        assert_eq!(verdict.idle_at, rig.clock.now() - Duration::from_secs(10) + 30 * MIN);
    }

    #[test]
    fn an_unknown_signal_stops_keeping_the_vm_awake_after_max_unknown_and_says_so_once() {
        let mut rig = Rig::new(Duration::ZERO, 30 * MIN);
        let limits = Limits { timeout: 30 * MIN, max_unknown: 60 * MIN };
        let gone = Sample::unknown("cannot reach http://127.0.0.1:8888: connection reset");
        let mut warnings = 0;
        let mut idle_at_minute = None;
        for minute in 1..=120 {
            rig.clock.advance(MIN);
            let verdict = rig.machine.step(rig.clock.monotonic(), rig.clock.now(), limits, &[("jupyter", &gone)]);
            warnings += verdict.gave_up.len();
            if minute <= 60 {
                assert!(!verdict.idle, "unknown counts as active for max_unknown (minute {minute})");
            }
            if verdict.idle && idle_at_minute.is_none() {
                idle_at_minute = Some(minute);
                assert!(verdict.reasons.iter().any(|r| r.contains("longer than idle.max_unknown (1h)")), "{verdict:?}");
            }
        }
        assert_eq!(warnings, 1, "said once");
        assert_eq!(idle_at_minute, Some(91), "idle a whole timeout after the unknown stopped counting");
        // It answers again, then goes unknown again: it counts once more.
        rig.clock.advance(MIN);
        rig.machine.step(rig.clock.monotonic(), rig.clock.now(), limits, &[("jupyter", &quiet())]);
        rig.clock.advance(MIN);
        let verdict = rig.machine.step(rig.clock.monotonic(), rig.clock.now(), limits, &[("jupyter", &gone)]);
        assert!(!verdict.idle);
    }
}
