//! One VM of the pool, run through the agent's own code: the idle verdict
//! (`idle::verdict::VerdictMachine`: boot grace, timeout, holds), scale-in
//! protection (`azure::protect::machine::Machine` with its release policy),
//! what it offers the pool (`azure::demand::judge`: the readiness probe's
//! answer and the demand flags) and the metrics it posts
//! (`azure::monitor::bucket`). Only the world around them is modelled:
//! boot, the share, setup scripts, ARM's answers.

use pool_agent::azure::demand::{self, Offer, Situation};
use pool_agent::azure::monitor;
use pool_agent::azure::protect::machine::{Belief, Machine, Outcome, Step, Verdict as PVerdict};
use pool_agent::azure::protect::policy::Policy;
use pool_agent::core::component::ComponentState;
use pool_agent::core::shared::{IdleNews, ShareNews};
use pool_agent::idle::signal::Sample;
use pool_agent::idle::verdict::{Limits, Verdict, VerdictMachine};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// The agent's settings the model runs with (the shipped defaults).
#[derive(Debug, Clone, Copy)]
pub struct Agent {
    pub idle_timeout: Duration,
    pub boot_grace: Duration,
    pub release_after: Duration,
    pub max_releases_per_hour: u32,
    /// `pool.max_sessions`: one user per VM in this pool.
    pub max_sessions: u32,
}

impl Default for Agent {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30 * 60),
            boot_grace: Duration::from_secs(10 * 60),
            release_after: Duration::from_secs(15 * 60),
            max_releases_per_hour: 4,
            max_sessions: 1,
        }
    }
}

/// What the VM's user is doing now, as the signals would see it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Activity {
    /// Sessions open on the VM.
    pub sessions: u32,
    /// Someone types, runs, computes now.
    pub active: bool,
    /// When activity was last seen (seconds), for an idle session's sample.
    pub last_active: Option<f64>,
    /// A keep-awake hold's end (seconds).
    pub hold_until: Option<f64>,
}

pub struct Vm {
    pub id: u32,
    pub agent_at: f64,
    kernel_at: f64,
    share_at: f64,
    pub scripts_done_at: f64,
    agent: Agent,
    verdict_machine: Option<VerdictMachine>,
    verdict: Option<Verdict>,
    /// The agent's last judgement of what the VM offers (None before it starts).
    offer: Option<Offer>,
    machine: Machine,
    /// ARM's truth: `protectFromScaleIn`.
    pub protected: bool,
    next_minute: i64,
    pub user: Option<usize>,
    /// When the current user logged in (seconds).
    pub user_since: f64,
    /// When its last user left (for the report of free VMs after use).
    pub left_at: Option<f64>,
    rng: fastrand::Rng,
}

/// The simulated day's clocks: seconds since 00:00 as wall and monotonic time.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    pub base: Instant,
    pub wall: SystemTime,
}

impl Clocks {
    pub fn mono(&self, t: f64) -> Instant {
        self.base + Duration::from_secs_f64(t.max(0.0))
    }
    pub fn wall(&self, t: f64) -> SystemTime {
        self.wall + Duration::from_secs_f64(t.max(0.0))
    }
}

impl Vm {
    /// A VM the scale set creates at `t`: the OS boots in ~4 min to the
    /// agent's start, the share mounts within seconds, blocking setup
    /// scripts take 1-2 min.
    pub fn new(id: u32, t: f64, agent: Agent, seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed ^ (id as u64) << 20);
        let agent_at = t + 210.0 + rng.f64() * 60.0;
        let kernel_at = t + 60.0;
        let share_at = agent_at + 5.0 + rng.f64() * 25.0;
        let scripts_done_at = share_at + 60.0 + rng.f64() * 60.0;
        let policy = Policy::new(agent.release_after, agent.max_releases_per_hour, Vec::new(), SystemTime::UNIX_EPOCH);
        Self {
            id,
            agent_at,
            kernel_at,
            share_at,
            scripts_done_at,
            agent,
            verdict_machine: None,
            verdict: None,
            offer: None,
            machine: Machine::new(policy, fastrand::Rng::with_seed(seed ^ id as u64)),
            protected: false,
            next_minute: (agent_at / 60.0).ceil() as i64,
            user: None,
            user_since: 0.0,
            left_at: None,
            rng,
        }
    }

    pub fn started(&self, t: f64) -> bool {
        t >= self.agent_at
    }

    /// The readiness probe's answer, as the agent last judged it.
    pub fn ready(&self) -> bool {
        self.offer.as_ref().is_some_and(|o| o.ready.is_ok())
    }

    /// The agent's news at `t`: the verdict and the share as the metrics read them.
    fn news(&self, t: f64, a: &Activity, clocks: &Clocks) -> Option<(IdleNews, ShareNews)> {
        let v = self.verdict.as_ref()?;
        let idle = IdleNews {
            known: true,
            idle: v.idle,
            idle_since: Some(v.idle_since),
            idle_at: Some(v.idle_at),
            reasons: Vec::new(),
            figures: [("sessions".to_string(), a.sessions as f64)].into_iter().collect(),
            sampled_at: Some(clocks.wall(t)),
            interval: Duration::from_secs(10),
            in_use: v.in_use,
            in_grace: v.in_grace,
            unknown: v.unknown,
            // The rest (who is logged in, for the login note) does not move autoscale.
            ..IdleNews::default()
        };
        let share = match t >= self.share_at {
            true => ShareNews::Mounted { root: PathBuf::from("/data/notebooks"), identity: (1, 1), smb: None },
            false => ShareNews::NotYetKnown,
        };
        Some((idle, share))
    }

    fn samples(&self, t: f64, a: &Activity, clocks: &Clocks) -> Vec<(&'static str, Sample)> {
        let sessions = match (a.active, a.last_active) {
            (true, _) => Sample::active(vec!["ssh user pts/0".into()]),
            (false, Some(at)) if a.sessions > 0 => Sample::idle("ssh user pts/0, no input").at(Some(clocks.wall(at))),
            (false, Some(at)) => Sample::idle("no sessions").at(Some(clocks.wall(at))),
            (false, None) => Sample::idle("no sessions"),
        }
        .with_figure("sessions", a.sessions as f64);
        let scripts = match t < self.scripts_done_at {
            true => Sample::active(vec!["setup script 10-conda running".into()]),
            false => Sample::idle("no setup script running"),
        };
        let holds = match a.hold_until {
            Some(until) if until > t => Sample::active(vec!["hold by user".into()]).until(Some(clocks.wall(until))),
            _ => Sample::idle("no holds"),
        };
        vec![("sessions", sessions), ("scripts", scripts), ("holds", holds)]
    }

    /// One step at `t`: the verdict, protection (with ARM's answers, some
    /// lost or throttled), and the metrics of a minute that just ended.
    /// Returns the points to post: (metric, minute, value).
    pub fn step(&mut self, t: f64, a: &Activity, clocks: &Clocks) -> Vec<(&'static str, i64, f64)> {
        if !self.started(t) {
            return Vec::new();
        }
        let limits = Limits { timeout: self.agent.idle_timeout, max_unknown: Duration::from_secs(12 * 3600) };
        let samples = self.samples(t, a, clocks);
        let (grace, timeout) = (clocks.mono(self.kernel_at) + self.agent.boot_grace, self.agent.idle_timeout);
        let machine = self.verdict_machine.get_or_insert_with(|| VerdictMachine::new(clocks.mono(t), grace, timeout));
        let named: Vec<(&str, &Sample)> = samples.iter().map(|(n, s)| (*n, s)).collect();
        let verdict = machine.step(clocks.mono(t), clocks.wall(t), limits, &named);
        let idle_now = verdict.idle;
        self.verdict = Some(verdict);
        self.protect(idle_now, t, clocks);
        if let Some((idle, share)) = self.news(t, a, clocks) {
            let scripts = match t < self.scripts_done_at {
                true => ComponentState::Starting,
                false => ComponentState::Ready,
            };
            let at = Situation {
                idle: &idle,
                share: &share,
                scripts: Some(scripts),
                going_away: None,
                healthy: true,
                max_sessions: Some(self.agent.max_sessions),
                now: clocks.wall(t),
            };
            self.offer = Some(demand::judge(&at));
        }
        let mut points = Vec::new();
        while (self.next_minute as f64 + 1.0) * 60.0 <= t {
            let minute = self.next_minute;
            for (name, value) in self.metrics(minute, t, a, clocks) {
                points.push((name, minute, value));
            }
            self.next_minute += 1;
        }
        points
    }

    fn protect(&mut self, idle_now: bool, t: f64, clocks: &Clocks) {
        let now = clocks.wall(t);
        let verdict = PVerdict { idle_now, stale_at: Some(now + Duration::from_secs(30)) };
        for _ in 0..4 {
            match self.machine.next(verdict, now) {
                Step::Wait(_) => return,
                Step::Read => {
                    let model = Outcome::Model { scale_in: self.protected, scale_set_actions: false };
                    self.machine.on_read(model, now);
                }
                Step::Write { protect, .. } => {
                    // ARM as it may answer: mostly applied with the model;
                    // 5 % applied with the answer lost; 3 % throttled (not applied).
                    let roll = self.rng.u32(0..100);
                    let outcome = if roll < 5 {
                        self.protected = protect;
                        Outcome::NoAnswer("connection reset".into())
                    } else if roll < 8 {
                        Outcome::Throttled(Some(Duration::from_secs(20)), "429".into())
                    } else {
                        self.protected = protect;
                        Outcome::Model { scale_in: protect, scale_set_actions: false }
                    };
                    self.machine.on_write(protect, outcome, now);
                }
            }
        }
    }

    fn metrics(&self, minute: i64, t: f64, a: &Activity, clocks: &Clocks) -> Vec<(&'static str, f64)> {
        let (Some((idle, share)), Some(offer)) = (self.news(t, a, clocks), self.offer.as_ref()) else {
            return Vec::new();
        };
        // As the agent's publisher maps its belief: only a proven release is "not protected".
        let protected = match self.machine.belief() {
            Belief::Released { .. } => Some(false),
            Belief::Gone { .. } => None,
            _ => Some(true),
        };
        let at = clocks.wall(minute as f64 * 60.0);
        monitor::bucket(at, clocks.wall(t), &idle, &share, protected, offer).values
    }
}
