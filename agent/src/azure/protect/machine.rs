//! The protection machine: what the agent believes of the instance's
//! scale-in protection, and what to do next. Pure — its inputs are the
//! verdict, the clock and how each write and read ended — so it is run over
//! simulated hours with lost, refused and throttled answers.
//!
//! Rules (issue #25):
//! - An outcome that does not prove the effect (no answer, a 5xx, a body that
//!   broke off, a 2xx without the model) leaves the belief `Unknown` until a read.
//! - With a verdict that is not idle now and a belief that is not
//!   `Protected`, a protect is sent at once, whatever read is pending; only the
//!   write's own failure (a 429's Retry-After, or backoff after a 5xx) delays
//!   the next write. The "write ignored" guard holds back releases only.
//! - The instance is read at start before any write, shortly after each write
//!   (to confirm it), and every 15-30 min while released or unknown.
//! - `Gone` only after the instance is absent on [`GONE_AFTER_READS`] reads
//!   with backoff; even then it is read again hourly.
//! - Every server-given delay is capped at an hour; no time arithmetic can panic.

use super::policy::{Policy, HOUR};
use std::time::{Duration, SystemTime};

/// A write is read back within this window (a Uniform instance has been
/// seen to accept a PUT and ignore a field).
const CONFIRM_AFTER: (u64, u64) = (30, 60);
/// While released or unknown the instance is read this often: autoscale,
/// an admin or a lost answer may have changed it.
const REFRESH_EVERY: (u64, u64) = (15 * 60, 30 * 60);
/// After a write the instance ignored, no release before this.
const IGNORED_WRITE_GUARD: Duration = Duration::from_secs(300);
/// Backoff for failed reads and writes (5xx, no answer, refusals): doubling, ±20 %.
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(300);
/// A 409 (a concurrent operation on the instance) is tried again after 5-15 s.
const CONFLICT_RETRY: (u64, u64) = (5, 15);
/// A 429 without Retry-After.
const THROTTLE_DEFAULT: Duration = Duration::from_secs(30);
/// Absent on this many reads in a row (with backoff between them): gone.
pub const GONE_AFTER_READS: u32 = 3;
/// Failing without a refusal for this long is worth an operator's look.
const FAILING_IS_A_PROBLEM_AFTER: Duration = Duration::from_secs(600);

/// What the agent believes of `protectFromScaleIn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Belief {
    /// Not read yet, or an answer was lost: only a read will tell.
    Unknown,
    /// Read, or written with the model in the answer.
    Protected {
        since: SystemTime,
    },
    Released {
        since: SystemTime,
    },
    /// Absent on repeated reads: the instance is being deleted.
    Gone {
        since: SystemTime,
    },
}

/// The verdict as the machine needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Made, idle and fresh.
    pub idle_now: bool,
    /// When this verdict turns stale if no new one comes (it then counts as
    /// not idle): the machine wakes then.
    pub stale_at: Option<SystemTime>,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Read,
    /// Write `protectFromScaleIn` (keeping `protectFromScaleSetActions`).
    Write {
        protect: bool,
        scale_set_actions: bool,
    },
    /// Nothing until then (None: until the verdict changes).
    Wait(Option<SystemTime>),
}

/// How a write or a read ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The answer carried the instance's model.
    Model { scale_in: bool, scale_set_actions: bool },
    /// A 2xx without the model (a 202): done or not, only a read will tell.
    Accepted,
    /// The instance is not there: a 404 on a read; on a write ARM's 400
    /// `InvalidParameter` "… is not an active Virtual Machine Scale Set VM instanceId."
    Absent(String),
    /// A 429: not done; the server's delay, if it gave one.
    Throttled(Option<Duration>, String),
    /// A 409: not done; another operation holds the instance.
    Conflict(String),
    /// A 400 or 403: not done, and waiting will not fix it.
    Refused(String),
    /// No answer, a 5xx, a body that broke off: done or not, unknown.
    NoAnswer(String),
}

#[derive(Debug, Clone)]
struct Failure {
    why: String,
    /// Waiting will not fix it (a 400 or 403).
    refused: bool,
    since: SystemTime,
}

#[derive(Debug, Clone)]
pub struct Machine {
    belief: Belief,
    policy: Policy,
    /// `protectFromScaleSetActions` as last read: written back unchanged.
    scale_set_actions: bool,
    /// The first read was made (whatever its outcome).
    started: bool,
    /// A read is wanted at or after this.
    read_at: Option<SystemTime>,
    /// The value a pending read is to confirm.
    confirm: Option<bool>,
    /// No protect before this: a protect's own failure (backoff), or a 429 on any write.
    protect_after: Option<SystemTime>,
    /// No release before this: a release's own failure, a release the
    /// instance ignored, or a 429 on any write. Never holds back a protect.
    release_after: Option<SystemTime>,
    /// The release being retried was counted already.
    release_counted: bool,
    absent_reads: u32,
    read_failures: u32,
    protect_failures: u32,
    release_failures: u32,
    /// The writes' and the reads' failures, apart: a read that works does
    /// not hide a write ARM refuses.
    write_failure: Option<Failure>,
    read_failure: Option<Failure>,
    writes: u64,
    rng: fastrand::Rng,
}

impl Machine {
    pub fn new(policy: Policy, rng: fastrand::Rng) -> Self {
        Self {
            belief: Belief::Unknown,
            policy,
            scale_set_actions: false,
            started: false,
            read_at: None,
            confirm: None,
            protect_after: None,
            release_after: None,
            release_counted: false,
            absent_reads: 0,
            read_failures: 0,
            protect_failures: 0,
            release_failures: 0,
            write_failure: None,
            read_failure: None,
            writes: 0,
            rng,
        }
    }

    pub fn belief(&self) -> Belief {
        self.belief
    }

    /// What to do now. A `Write` is counted as sent (and a release against
    /// the budget) when it is returned.
    pub fn next(&mut self, verdict: Verdict, now: SystemTime) -> Step {
        let due = |at: Option<SystemTime>| at.is_none_or(|at| now >= at);
        if verdict.idle_now {
            self.policy.idle(now);
        } else {
            self.policy.busy();
        }
        if let Belief::Gone { .. } = self.belief {
            return match due(self.read_at) {
                true => Step::Read,
                false => Step::Wait(self.read_at),
            };
        }
        if !self.started {
            return Step::Read;
        }
        let protected = matches!(self.belief, Belief::Protected { .. });
        if !verdict.idle_now && !protected && due(self.protect_after) {
            // A release that was retried is given up: the next one counts.
            self.release_counted = false;
            return self.write(true);
        }
        if self.read_at.is_some_and(|at| now >= at) {
            return Step::Read;
        }
        let release_due = verdict.idle_now && protected && due(self.release_after);
        if release_due && self.policy.may_release(now) {
            if !self.release_counted {
                self.policy.count_release(now);
                self.release_counted = true;
            }
            return self.write(false);
        }
        Step::Wait(self.wake(verdict, now))
    }

    fn write(&mut self, protect: bool) -> Step {
        self.writes += 1;
        Step::Write { protect, scale_set_actions: self.scale_set_actions }
    }

    /// When something is due if the verdict stays as it is.
    fn wake(&mut self, verdict: Verdict, now: SystemTime) -> Option<SystemTime> {
        let protected = matches!(self.belief, Belief::Protected { .. });
        let mut at = [self.read_at].into_iter().flatten().collect::<Vec<_>>();
        if !verdict.idle_now && !protected {
            at.extend(self.protect_after);
        }
        if verdict.idle_now {
            at.extend(verdict.stale_at);
            if protected {
                if let Some(release) = self.policy.next_release(now) {
                    at.push(self.release_after.map_or(release, |guard| guard.max(release)));
                }
            }
        }
        at.into_iter().min()
    }

    /// How the write `protect` ended.
    pub fn on_write(&mut self, protect: bool, outcome: Outcome, now: SystemTime) {
        match outcome {
            Outcome::Model { scale_in, scale_set_actions } => {
                self.scale_set_actions = scale_set_actions;
                self.believe(scale_in, now);
                self.reset_backoff(protect);
                self.confirm = Some(protect);
                self.read_at = Some(later(now, self.between(CONFIRM_AFTER)));
                self.write_failure = None;
                if scale_in != protect {
                    self.ignored(protect, scale_in, now);
                }
                if !scale_in {
                    self.release_counted = false;
                }
            }
            Outcome::Accepted => {
                self.belief = Belief::Unknown;
                self.reset_backoff(protect);
                self.read_at = Some(later(now, FIRST_RETRY));
            }
            Outcome::Absent(why) => {
                // Read to know: an instance that is gone needs no protection,
                // one that is not must not be given up on one answer.
                self.write_failed(why, false, now);
                let wait = self.backoff_write(protect);
                self.hold(protect, later(now, wait));
                self.read_at = Some(later(now, FIRST_RETRY));
            }
            Outcome::Throttled(after, why) => {
                // The server's budget is for every write: both kinds wait.
                self.write_failed(why, false, now);
                let until = later(now, after.unwrap_or(THROTTLE_DEFAULT));
                self.hold(true, until);
                self.hold(false, until);
            }
            Outcome::Conflict(why) => {
                self.write_failed(why, false, now);
                let wait = self.between(CONFLICT_RETRY);
                self.hold(protect, later(now, wait));
            }
            Outcome::Refused(why) => {
                self.write_failed(why, true, now);
                let wait = self.backoff_write(protect);
                self.hold(protect, later(now, wait));
            }
            Outcome::NoAnswer(why) => {
                // It may have been applied: believe nothing until a read. A
                // lost release holds back the next release only: a user who
                // comes now is protected at once.
                self.belief = Belief::Unknown;
                self.write_failed(why, false, now);
                let wait = self.backoff_write(protect);
                self.hold(protect, later(now, wait));
                let read = later(now, self.backoff_read_soon());
                self.read_at = Some(self.read_at.map_or(read, |at| at.min(read)));
            }
        }
    }

    /// No write of this kind (protect or release) before `until`.
    fn hold(&mut self, protect: bool, until: SystemTime) {
        let gate = if protect { &mut self.protect_after } else { &mut self.release_after };
        *gate = Some(gate.map_or(until, |at| at.max(until)));
    }

    fn reset_backoff(&mut self, protect: bool) {
        match protect {
            true => self.protect_failures = 0,
            false => self.release_failures = 0,
        }
    }

    /// How a read ended.
    pub fn on_read(&mut self, outcome: Outcome, now: SystemTime) {
        self.started = true;
        match outcome {
            Outcome::Model { scale_in, scale_set_actions } => {
                self.scale_set_actions = scale_set_actions;
                self.absent_reads = 0;
                self.read_failures = 0;
                self.read_failure = None;
                if let Some(wrote) = self.confirm.take() {
                    match wrote == scale_in {
                        true => self.write_failure = None,
                        false => self.ignored(wrote, scale_in, now),
                    }
                }
                self.believe(scale_in, now);
                if !scale_in {
                    self.release_counted = false;
                }
                self.read_at = match self.belief {
                    Belief::Released { .. } => Some(later(now, self.between(REFRESH_EVERY))),
                    _ => None,
                };
            }
            Outcome::Absent(why) => {
                self.absent_reads = self.absent_reads.saturating_add(1);
                if self.absent_reads >= GONE_AFTER_READS {
                    if !matches!(self.belief, Belief::Gone { .. }) {
                        self.belief = Belief::Gone { since: now };
                    }
                    self.read_failure = Some(Failure { why, refused: false, since: now });
                    self.read_at = Some(later(now, HOUR));
                } else {
                    self.read_failed(why, false, now);
                    let wait = self.backoff_read();
                    self.read_at = Some(later(now, wait));
                }
            }
            Outcome::Throttled(after, why) => {
                self.read_failed(why, false, now);
                self.read_at = Some(later(now, after.unwrap_or(THROTTLE_DEFAULT)));
            }
            Outcome::Refused(why) => {
                self.read_failed(why, true, now);
                let wait = self.backoff_read();
                self.read_at = Some(later(now, wait));
            }
            Outcome::Accepted | Outcome::Conflict(_) | Outcome::NoAnswer(_) => {
                let why = match outcome {
                    Outcome::Conflict(why) | Outcome::NoAnswer(why) => why,
                    _ => "the read answered without the instance's model".to_string(),
                };
                self.read_failed(why, false, now);
                let wait = self.backoff_read();
                self.read_at = Some(later(now, wait));
            }
        }
    }

    fn believe(&mut self, scale_in: bool, now: SystemTime) {
        self.belief = match (self.belief, scale_in) {
            (Belief::Protected { since }, true) => Belief::Protected { since },
            (Belief::Released { since }, false) => Belief::Released { since },
            (_, true) => Belief::Protected { since: now },
            (_, false) => Belief::Released { since: now },
        };
    }

    /// The instance took the write but reads otherwise.
    fn ignored(&mut self, wrote: bool, reads: bool, now: SystemTime) {
        let why = format!(
            "the instance accepted protectFromScaleIn = {wrote} but reads {reads}; the write was ignored, trying again later"
        );
        self.write_failed(why, false, now);
        if wrote {
            let wait = self.backoff_write(true);
            self.hold(true, later(now, wait));
        } else {
            // Not at once: a release the instance ignores must not loop.
            self.release_after = Some(later(now, IGNORED_WRITE_GUARD));
        }
    }

    fn write_failed(&mut self, why: String, refused: bool, now: SystemTime) {
        let since = self.write_failure.as_ref().map_or(now, |f| f.since);
        self.write_failure = Some(Failure { why, refused, since });
    }

    fn read_failed(&mut self, why: String, refused: bool, now: SystemTime) {
        let since = self.read_failure.as_ref().map_or(now, |f| f.since);
        self.read_failure = Some(Failure { why, refused, since });
    }

    fn backoff_write(&mut self, protect: bool) -> Duration {
        let failures = if protect { &mut self.protect_failures } else { &mut self.release_failures };
        *failures = failures.saturating_add(1);
        let failures = *failures;
        self.backoff(failures)
    }

    fn backoff_read(&mut self) -> Duration {
        self.read_failures = self.read_failures.saturating_add(1);
        self.backoff(self.read_failures)
    }

    /// A lost write's read-back: soon, but with the read backoff's jitter.
    fn backoff_read_soon(&mut self) -> Duration {
        self.backoff(1)
    }

    fn backoff(&mut self, failures: u32) -> Duration {
        let step = FIRST_RETRY.saturating_mul(1u32 << failures.saturating_sub(1).min(8)).min(MAX_RETRY);
        step.mul_f64(0.8 + self.rng.f64() * 0.4)
    }

    fn between(&mut self, (low, high): (u64, u64)) -> Duration {
        Duration::from_secs(self.rng.u64(low..=high))
    }

    /// Whether scale-in may take this VM as far as protection goes: released,
    /// as a read or a write's answer showed.
    pub fn removable(&self) -> bool {
        matches!(self.belief, Belief::Released { .. })
    }

    /// A failure an operator should see: a refusal at once, anything else
    /// after [`FAILING_IS_A_PROBLEM_AFTER`].
    pub fn problem(&self, now: SystemTime) -> Option<String> {
        if matches!(self.belief, Belief::Gone { .. }) {
            return None;
        }
        [&self.write_failure, &self.read_failure].into_iter().flatten().find_map(|failure| {
            let long = now.duration_since(failure.since).is_ok_and(|d| d >= FAILING_IS_A_PROBLEM_AFTER);
            (failure.refused || long).then(|| failure.why.clone())
        })
    }

    /// The last failure of a write, else of a read, for `pool-agent azure`.
    pub fn error(&self) -> Option<&str> {
        self.write_failure.as_ref().or(self.read_failure.as_ref()).map(|f| f.why.as_str())
    }

    pub fn writes(&self) -> u64 {
        self.writes
    }

    pub fn releases(&self) -> Vec<SystemTime> {
        self.policy.releases()
    }

    pub fn releases_in_the_last_hour(&self, now: SystemTime) -> usize {
        self.policy.releases_in_the_last_hour(now)
    }

    /// When a release would be sent if the VM stays idle (only while protected).
    pub fn next_release(&mut self, now: SystemTime) -> Option<SystemTime> {
        match self.belief {
            Belief::Protected { .. } => self.policy.next_release(now),
            _ => None,
        }
    }
}

/// `now + wait`, the wait capped at an hour (a server may ask for any delay).
fn later(now: SystemTime, wait: Duration) -> SystemTime {
    now.checked_add(wait.min(HOUR)).unwrap_or(now)
}
