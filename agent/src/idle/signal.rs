//! What every activity source reports, and the seam the verdict samples them through.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignalState {
    Active,
    Idle,
    /// The source could not tell (an error, a timeout): counts as active.
    Unknown,
    /// Nothing to watch here (no GPU driver, no Jupyter configured): not counted.
    Absent,
}

impl SignalState {
    pub fn as_str(self) -> &'static str {
        match self {
            SignalState::Active => "active",
            SignalState::Idle => "idle",
            SignalState::Unknown => "unknown",
            SignalState::Absent => "absent",
        }
    }

    pub const ALL: [SignalState; 4] =
        [SignalState::Active, SignalState::Idle, SignalState::Unknown, SignalState::Absent];
}

/// One source's answer at one sample.
///
/// The contract every source keeps, and the verdict relies on:
/// - `Active` and `Unknown` mean active *now*. Whatever `last_activity` an
///   active sample carries is for humans; it never moves the idle count.
/// - `last_activity` moves the count only on an `Idle` sample: "when did this
///   signal last see activity" (a tty's last input, a kernel's last run).
/// - An error, a timeout, a file that cannot be read is `Unknown`, never
///   `Idle`: a source that cannot tell must not make a VM look idle.
/// - `Absent` is for what is not there to watch at all (no GPU driver).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub state: SignalState,
    /// On an `Idle` sample: when the source last saw activity, if it knows.
    pub last_activity: Option<SystemTime>,
    /// For humans: `ssh alice pts/3`, `kernel busy python3 (alice)`.
    pub reasons: Vec<String>,
    /// Figures for metrics and Azure: sessions, cpu_percent, ...
    pub figures: BTreeMap<String, f64>,
    /// On an `Active` sample that knows when it ends (a hold): active until
    /// then, so the VM can be idle no sooner than a timeout after it.
    pub active_until: Option<SystemTime>,
    /// Who holds a session here, and how many (the sessions signal): for
    /// the pool's record of where each user works.
    pub users: BTreeMap<String, u32>,
}

impl Sample {
    pub fn idle(reason: impl Into<String>) -> Self {
        Self {
            state: SignalState::Idle,
            last_activity: None,
            reasons: vec![reason.into()],
            figures: BTreeMap::new(),
            active_until: None,
            users: BTreeMap::new(),
        }
    }

    pub fn active(reasons: Vec<String>) -> Self {
        Self {
            state: SignalState::Active,
            last_activity: None,
            reasons,
            figures: BTreeMap::new(),
            active_until: None,
            users: BTreeMap::new(),
        }
    }

    pub fn unknown(why: impl Into<String>) -> Self {
        Self {
            state: SignalState::Unknown,
            last_activity: None,
            reasons: vec![why.into()],
            figures: BTreeMap::new(),
            active_until: None,
            users: BTreeMap::new(),
        }
    }

    pub fn absent(why: impl Into<String>) -> Self {
        Self {
            state: SignalState::Absent,
            last_activity: None,
            reasons: vec![why.into()],
            figures: BTreeMap::new(),
            active_until: None,
            users: BTreeMap::new(),
        }
    }

    pub fn with_figure(mut self, name: &str, value: f64) -> Self {
        self.figures.insert(name.to_string(), value);
        self
    }

    pub fn until(mut self, active_until: Option<SystemTime>) -> Self {
        self.active_until = active_until;
        self
    }

    pub fn at(mut self, last_activity: Option<SystemTime>) -> Self {
        self.last_activity = last_activity;
        self
    }
}

/// An activity source. `sample` is called once per `idle.interval`; a
/// source keeps what it needs between samples (byte and CPU counters).
pub trait Source: Send {
    fn name(&self) -> &'static str;
    fn sample(&mut self, now: SystemTime) -> BoxFuture<'_, Sample>;
}
