//! When a release is allowed: after `azure.release_after` of continuous idle,
//! at most `azure.max_releases_per_hour` times an hour. The budget is counted
//! before a release is sent and kept on disk, so a crash loop cannot reset it.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

pub const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct Policy {
    release_after: Duration,
    max_releases_per_hour: u32,
    /// Since when the verdict has been idle without a break, as seen here.
    idle_seen_since: Option<SystemTime>,
    /// Releases sent in the last hour (kept across restarts).
    releases: VecDeque<SystemTime>,
}

impl Policy {
    /// `releases`: stamps kept from before a restart. Stamps later than
    /// `now` (written under a clock that ran ahead) are dropped: they would
    /// hold every release back for as long as the clock was ahead.
    pub fn new(
        release_after: Duration,
        max_releases_per_hour: u32,
        releases: Vec<SystemTime>,
        now: SystemTime,
    ) -> Self {
        let mut releases: Vec<SystemTime> = releases.into_iter().filter(|at| *at <= now).collect();
        releases.sort();
        Self { release_after, max_releases_per_hour, idle_seen_since: None, releases: releases.into() }
    }

    /// The verdict is not idle now: the idle stretch starts again.
    pub fn busy(&mut self) {
        self.idle_seen_since = None;
    }

    /// The verdict is idle now. A clock that went back restarts the stretch
    /// (the safe side: a release waits longer, never less).
    pub fn idle(&mut self, now: SystemTime) {
        match self.idle_seen_since {
            Some(since) if since <= now => {}
            _ => self.idle_seen_since = Some(now),
        }
    }

    /// Whether a release may be sent now (idle long enough, budget left).
    pub fn may_release(&mut self, now: SystemTime) -> bool {
        self.next_release(now).is_some_and(|at| at <= now)
    }

    /// Counts a release before it is sent: a crash after the write must not give it back.
    pub fn count_release(&mut self, at: SystemTime) {
        self.releases.push_back(at);
    }

    pub fn releases(&self) -> Vec<SystemTime> {
        self.releases.iter().copied().collect()
    }

    pub fn releases_in_the_last_hour(&self, now: SystemTime) -> usize {
        self.releases.iter().filter(|at| within_the_hour(**at, now)).count()
    }

    /// When a release would be allowed: after `release_after` of idle, and
    /// when the hour's budget has room again. None while not idle.
    pub fn next_release(&mut self, now: SystemTime) -> Option<SystemTime> {
        while self.releases.front().is_some_and(|at| !within_the_hour(*at, now)) {
            self.releases.pop_front();
        }
        let after_idle = self.idle_seen_since?.checked_add(self.release_after)?;
        let budget = match self.releases.len() >= self.max_releases_per_hour as usize {
            true => self.releases.front().and_then(|oldest| oldest.checked_add(HOUR)).unwrap_or(now),
            false => now,
        };
        Some(after_idle.max(budget))
    }
}

/// A stamp within the hour before `now` (one in the future counts: the
/// clock may have stepped back after it was written).
fn within_the_hour(at: SystemTime, now: SystemTime) -> bool {
    now.duration_since(at).map_or(true, |age| age < HOUR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    #[test]
    fn release_waits_for_continuous_idle() {
        let mut policy = Policy::new(Duration::from_secs(900), 4, Vec::new(), t(0));
        policy.idle(t(0));
        assert!(!policy.may_release(t(840)));
        policy.busy();
        policy.idle(t(900));
        assert!(!policy.may_release(t(1740)));
        assert!(policy.may_release(t(1800)));
    }

    #[test]
    fn releases_counted_before_a_restart_still_count_and_future_stamps_are_dropped() {
        let earlier: Vec<SystemTime> = (0..4).map(|i| t(i * 60)).collect();
        let mut policy = Policy::new(Duration::from_secs(60), 4, earlier, t(600));
        policy.idle(t(600));
        assert!(!policy.may_release(t(1200)), "budget spent");
        assert!(policy.may_release(t(3600)), "an hour later");
        // A clock that ran a day ahead wrote four stamps: they do not block now.
        let ahead: Vec<SystemTime> = (0..4).map(|i| t(86_400 + i)).collect();
        let mut policy = Policy::new(Duration::from_secs(60), 4, ahead, t(0));
        policy.idle(t(0));
        assert!(policy.may_release(t(60)));
    }

    #[test]
    fn a_clock_stepped_back_restarts_the_idle_stretch() {
        let mut policy = Policy::new(Duration::from_secs(60), 4, Vec::new(), t(1000));
        policy.idle(t(1000));
        policy.idle(t(500));
        assert!(!policy.may_release(t(550)));
        assert!(policy.may_release(t(560)));
    }
}
