//! One simulated day of a pool: users arrive and ask the load balancer for a
//! VM that can take them (the readiness probe), autoscale runs on what the
//! VMs posted, and a user who finds nothing off-hours runs the wake command.

use super::autoscale::{Decision, Engine, Fixed, Store};
use super::template::Profile;
use super::users::{self, Visit};
use super::vm::{Activity, Agent, Clocks, Vm};
use std::time::{Duration, Instant, SystemTime};

const STEP: f64 = 15.0;
/// How long after a login the agent has asked for protection: its watch on
/// utmp and logind's records samples ~0.2 s after a login
/// (`idle::a_login_and_a_logout_show_in_the_verdict_at_once…`: 0.23 s), and
/// the write takes ARM about a second (assumed). It was one sample
/// (`idle.interval`, 10 s) before the watch.
const SEEN_AFTER: f64 = 1.5;

#[derive(Debug, Clone)]
pub struct Setup {
    pub users: usize,
    pub weekend: bool,
    pub seed: u64,
    pub profiles: Vec<Profile>,
    /// The template's per-profile headroom in force (working hours, off hours).
    pub headroom: (u32, u32),
    /// Working hours (seconds into the day) on weekdays.
    pub working: (f64, f64),
    pub agent: Agent,
    pub wake: Wake,
    /// A VM that turns ready goes to the user who has waited longest: every
    /// waiting user tries each step, the earliest arrival first. The load
    /// balancer keeps no queue, so this is the favourable case; off: any
    /// waiting user may take it, in a random order (`--waiters-random`).
    pub first_come: bool,
    /// The day's visits instead of the generator's (a scenario a test builds).
    pub visits: Option<Vec<Visit>>,
    /// Simulated seconds (a shortened day for the fast test).
    pub until: f64,
}

/// The way back from zero (contract): a user who finds no VM off hours
/// waits `patience`, then runs the `az monitor autoscale profile create`
/// command (`command` seconds) that adds a fixed-date profile `wake-<time>-<random>` and deletes the older
/// ones: one wake profile applies, the newest (once those made in the last 3
/// minutes are deleted, after its pause).
#[derive(Debug, Clone)]
pub struct Wake {
    pub patience: f64,
    pub command: f64,
    pub length: f64,
    /// The first command README gave: `--min-count 1`, the working-hours
    /// rules (`--copy-rules working-hours`), ending `length` later, even
    /// past the start of working hours.
    pub as_readme: bool,
    /// The command also reads the wake profile still running (`az monitor
    /// autoscale profile show`), so two users an autoscale run apart do not
    /// both ask for the same count. Off: the command before it (`--wake-reads-capacity-only`).
    pub reads_wake_profile: bool,
    /// The command looks again `WAKE_LOOKS_AGAIN_AFTER` later and, when a
    /// colleague's command read the pool before its own landed (so neither
    /// counted the other), runs once more. Off: the command before it (`--wake-once`).
    pub looks_again: bool,
}

/// Between the command's read (`az monitor autoscale profile show`) and its
/// write landing: two `az` calls.
pub const WAKE_READ_BEFORE_WRITE: f64 = 5.0;

/// The command's pause before it reads the wake profiles again (`sleep 60`).
pub const WAKE_LOOKS_AGAIN_AFTER: f64 = 60.0;

/// A wake profile made less than this long ago (its command may still be
/// looking) is deleted only after the pause, once ours is read first: till
/// then it stays first in the list, and autoscale applies it, not ours.
pub const WAKE_DELETED_AT_ONCE_AFTER: f64 = 180.0;

impl Wake {
    /// The longest a user can wait for it: patience, the command, one
    /// autoscale run (<= 60 s), the VM's boot to the agent (<= 270 s),
    /// the share (<= 30 s) and the blocking scripts (<= 120 s).
    pub fn figure(&self) -> f64 {
        self.patience + self.command + 60.0 + BOOT_TO_READY
    }

    /// The same for a user whose profile landed behind a wake made in the 3
    /// minutes before: it applies once her command's look deleted that one.
    pub fn figure_behind_recent(&self) -> f64 {
        self.figure() + WAKE_LOOKS_AGAIN_AFTER + WAKE_READ_BEFORE_WRITE
    }

    /// The same for a user whose command ran into a colleague's: the second
    /// pass lands after the pause and another run of the command, and applies
    /// once its own look (another pause) deleted the colleague's profile, made
    /// a minute before and still first in the list.
    pub fn figure_when_run_into(&self) -> f64 {
        self.figure_behind_recent() + WAKE_LOOKS_AGAIN_AFTER + self.command
    }
}

/// The longest from a VM's creation to "ready" in the model.
pub const BOOT_TO_READY: f64 = 270.0 + 30.0 + 120.0;

#[derive(Debug, Default, Clone)]
pub struct Minute {
    pub capacity: u32,
    pub in_use: u32,
    pub free: u32,
    /// Free VMs a user left less than idle timeout + release_after ago.
    pub free_after_use: u32,
    pub waiting: u32,
}

#[derive(Debug, Default, Clone)]
pub struct Report {
    pub vm_hours: f64,
    pub ideal_hours: f64,
    pub user_hours: f64,
    /// (arrival, wait seconds, off hours) for each visit served.
    pub waits: Vec<(f64, f64, bool)>,
    pub never_served: usize,
    pub added: u32,
    pub added_while_free: u32,
    pub removed: u32,
    pub in_use_removed: u32,
    /// Of those, removed before the agent's next sample saw the login (the
    /// race the readiness probe allows: a released VM still takes users).
    pub in_use_removed_unseen: u32,
    pub wakes: u32,
    pub minutes: Vec<Minute>,
    pub log: Vec<String>,
}

impl Report {
    pub fn longest_wait(&self, off_hours: bool) -> f64 {
        self.waits.iter().filter(|w| w.2 == off_hours).map(|w| w.1).fold(0.0, f64::max)
    }

    pub fn p95_wait(&self) -> f64 {
        let mut w: Vec<f64> = self.waits.iter().map(|w| w.1).collect();
        w.sort_by(f64::total_cmp);
        match w.len() {
            0 => 0.0,
            n => w[((n as f64 * 0.95).ceil() as usize).clamp(1, n) - 1],
        }
    }
}

enum State {
    Waiting { since_try: f64 },
    On(u32),
    Done,
}

pub fn run(setup: &Setup) -> Report {
    let weekday = if setup.weekend { 5 } else { 2 };
    let clocks = Clocks { base: Instant::now(), wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) };
    let mut rng = fastrand::Rng::with_seed(setup.seed ^ 0x5eed);
    let mut order_rng = fastrand::Rng::with_seed(setup.seed ^ 0x0de7);
    let mut login_rng = fastrand::Rng::with_seed(setup.seed ^ 0x10c1);
    let visits: Vec<Visit> = setup.visits.clone().unwrap_or_else(|| users::day(setup.users, setup.weekend, setup.seed));
    let mut state: Vec<State> = visits.iter().map(|_| State::Done).collect();
    let mut started = vec![false; visits.len()];
    let mut engine = Engine::new(setup.profiles.clone(), weekday);
    let mut store = Store::default();
    let mut vms: Vec<Vm> = Vec::new();
    let mut next_id = 0u32;
    let mut report = Report { user_hours: visits.iter().map(|v| v.length() / 3600.0).sum(), ..Report::default() };
    let mut next_eval = rng.f64() * 60.0;
    // Wake commands on their way (each user runs her own; two at once both
    // read the same count, as two real `az` runs would).
    let mut wake_at: Vec<f64> = Vec::new();
    let mut last_wake_landed = f64::NEG_INFINITY;
    // Wake profiles behind a newer one still first in the list: (applies at, profile).
    let mut behind: Vec<(f64, Fixed)> = Vec::new();
    let working = |t: f64| !setup.weekend && t >= setup.working.0 && t < setup.working.1;
    let headroom = |t: f64| if working(t) { setup.headroom.0 } else { setup.headroom.1 };
    let linger = (setup.agent.idle_timeout + setup.agent.release_after).as_secs_f64() + 300.0;
    let mut t = 0.0;
    while t < setup.until {
        // Users arrive, leave, and take a VM the probe says can take them.
        for (i, v) in visits.iter().enumerate() {
            if !started[i] && t >= v.arrive {
                started[i] = true;
                // Her own moment, not the step's: two users are simultaneous
                // only when they really are.
                state[i] = State::Waiting { since_try: v.arrive };
            }
            if started[i] && t >= v.leave {
                match state[i] {
                    State::On(id) => {
                        if let Some(vm) = vms.iter_mut().find(|vm| vm.id == id) {
                            vm.user = None;
                            vm.left_at = Some(t);
                        }
                    }
                    State::Waiting { .. } => {
                        report.never_served += 1;
                        report.log.push(format!("{} user {} gave up", hhmm(t), v.user));
                    }
                    State::Done => {}
                }
                state[i] = State::Done;
            }
        }
        let mut order: Vec<usize> = (0..visits.len()).collect();
        if !setup.first_come {
            order_rng.shuffle(&mut order);
        }
        for i in order {
            let v = &visits[i];
            let State::Waiting { since_try } = state[i] else { continue };
            if let Some(vm) = vms.iter_mut().filter(|vm| vm.user.is_none() && vm.ready()).min_by_key(|vm| vm.id) {
                vm.user = Some(i);
                // Her login falls anywhere in the step, not on its edge, so
                // an autoscale run at this step's end may or may not find it seen.
                vm.user_since = t - login_rng.f64() * STEP;
                state[i] = State::On(vm.id);
                report.waits.push((v.arrive, t - v.arrive, !working(v.arrive)));
                if t - v.arrive > setup.wake.figure() {
                    report.log.push(format!(
                        "{} user {i} came at {} and waited {:.1} min",
                        hhmm(t),
                        hhmm(v.arrive),
                        (t - v.arrive) / 60.0
                    ));
                }
                continue;
            }
            // Off hours, nothing for her after a while: she runs the wake
            // command (again only if the last run brought her nothing).
            if !working(t) && t - since_try >= setup.wake.patience {
                wake_at.push(since_try + setup.wake.patience + setup.wake.command);
                state[i] = State::Waiting { since_try: t + setup.wake.figure() - setup.wake.patience };
            }
        }
        // Its command looked again and deleted the one before it: ours applies.
        while behind.first().is_some_and(|(applies, _)| t >= *applies) {
            engine.fixed = Some(behind.remove(0).1);
        }
        let due: Vec<f64> = wake_at.iter().copied().filter(|at| t >= *at).collect();
        wake_at.retain(|at| t < *at);
        for at in due {
            // `--copy-rules off-hours`, or `working-hours` when it lands in
            // them (the command reads the laptop's clock as the pool's); README's
            // first command always the working hours'.
            let in_working_hours = setup.wake.as_readme || working(at);
            let copied = if in_working_hours { setup.working.0 } else { setup.working.1 };
            let source = setup
                .profiles
                .iter()
                .find(|p| p.recurrence.as_ref().is_some_and(|(_, start)| *start as f64 * 60.0 == copied))
                .cloned();
            if let Some(source) = source {
                let mut profile = source.clone();
                profile.name = "wake".into();
                // `--min-count` = one more than the VMs there now or than a
                // wake profile still running asks (a second user off hours
                // gets her own VM too, even before autoscale acted on the
                // first: the command reads that profile, a few seconds
                // before its own lands). A fixed 1 would not add one.
                let read_at = at - WAKE_READ_BEFORE_WRITE;
                let waking = engine
                    .fixed
                    .iter()
                    .chain(behind.iter().map(|(_, f)| f))
                    .filter(|f| f.from <= read_at && read_at < f.until && setup.wake.reads_wake_profile)
                    .map(|f| f.profile.min)
                    .max()
                    .unwrap_or(0);
                profile.min = match setup.wake.as_readme {
                    true => 1,
                    false => (vms.len() as u32).max(waking).saturating_add(1).min(profile.max),
                };
                profile.default = profile.min;
                profile.recurrence = None;
                // The command ends it at working hours' start on a weekday
                // (its laptop's clock taken for the pool's time zone): a
                // fixed-date profile would hold the working-hours rules back.
                let mut until = at + setup.wake.length;
                if !setup.weekend && at < setup.working.0 && !setup.wake.as_readme {
                    until = until.min(setup.working.0);
                }
                // Another command's profile landed after this one read: the
                // two asked without counting each other. One of them goes
                // again, reading both (a second pass of the command).
                if setup.wake.looks_again && last_wake_landed > read_at {
                    wake_at.push(at + WAKE_LOOKS_AGAIN_AFTER + setup.wake.command);
                    report.log.push(format!("{} two wake commands ran into each other: one goes again", hhmm(at)));
                }
                last_wake_landed = at;
                let made_lately = |first: &Option<Fixed>| {
                    first.as_ref().is_some_and(|f| at < f.until && at - f.from < WAKE_DELETED_AT_ONCE_AFTER)
                };
                // This command deletes the first one, made long enough ago, at
                // once: the next in the list applies now, not after its look.
                if setup.wake.looks_again && !made_lately(&engine.fixed) && !behind.is_empty() {
                    engine.fixed = Some(behind.remove(0).1);
                }
                let fixed = Fixed { from: at, until, profile };
                if setup.wake.looks_again && (made_lately(&engine.fixed) || !behind.is_empty()) {
                    behind.push((at + WAKE_LOOKS_AGAIN_AFTER + WAKE_READ_BEFORE_WRITE, fixed));
                    report.log.push(format!("{} wake behind one made lately: it applies after the look", hhmm(at)));
                } else {
                    engine.fixed = Some(fixed);
                }
                report.wakes += 1;
                report.log.push(format!("{} wake profile until {}", hhmm(at), hhmm(until)));
            }
        }
        // Each VM: the agent's verdict, protection, metrics.
        for vm in vms.iter_mut() {
            let a = activity(vm, &visits, t);
            for (name, minute, value) in vm.step(t, &a, &clocks) {
                let latency = 60.0 + rng.f64() * 120.0;
                store.post(name, minute, vm.id, value, (minute + 1) as f64 * 60.0 + latency);
            }
        }
        // Autoscale.
        if t >= next_eval {
            next_eval = t + 30.0 + rng.f64() * 30.0;
            let count = vms.len() as u32;
            if let Decision::Scale { to, why } = engine.run(t, count, &store) {
                report.log.push(format!("{} {count} -> {to}: {why}", hhmm(t)));
                if to > count {
                    let free = vms.iter().filter(|vm| vm.user.is_none() && vm.ready()).count() as u32;
                    for _ in count..to {
                        report.added += 1;
                        if free >= headroom(t) && free > 0 {
                            report.added_while_free += 1;
                        }
                        vms.push(Vm::new(next_id, t, setup.agent, setup.seed));
                        next_id += 1;
                    }
                } else {
                    // Highest instance id first, protected ones skipped.
                    let mut candidates: Vec<u32> = vms.iter().filter(|vm| !vm.protected).map(|vm| vm.id).collect();
                    candidates.sort_unstable_by(|a, b| b.cmp(a));
                    for id in candidates.into_iter().take((count - to) as usize) {
                        report.removed += 1;
                        if let Some(pos) = vms.iter().position(|vm| vm.id == id) {
                            let vm = vms.remove(pos);
                            if let Some(i) = vm.user {
                                report.in_use_removed += 1;
                                if t - vm.user_since < SEEN_AFTER {
                                    report.in_use_removed_unseen += 1;
                                }
                                state[i] = State::Waiting { since_try: t };
                                report.log.push(format!(
                                    "{} IN-USE VM {} REMOVED ({:.0} s after its user logged in)",
                                    hhmm(t),
                                    vm.id,
                                    t - vm.user_since
                                ));
                            }
                        }
                    }
                }
            }
        }
        store.prune((t / 60.0) as i64 - 120);
        report.vm_hours += vms.len() as f64 * STEP / 3600.0;
        if (t % 60.0) < STEP / 2.0 {
            let free: Vec<&Vm> = vms.iter().filter(|vm| vm.user.is_none() && vm.ready()).collect();
            report.minutes.push(Minute {
                capacity: vms.len() as u32,
                in_use: vms.iter().filter(|vm| vm.user.is_some()).count() as u32,
                free: free.len() as u32,
                free_after_use: free.iter().filter(|vm| vm.left_at.is_some_and(|l| t - l < linger)).count() as u32,
                waiting: state.iter().filter(|s| matches!(s, State::Waiting { .. })).count() as u32,
            });
        }
        t += STEP;
    }
    let working_hours = if setup.weekend { 0.0 } else { (setup.working.1.min(setup.until) - setup.working.0).max(0.0) };
    report.ideal_hours = report.user_hours
        + setup.headroom.0 as f64 * working_hours / 3600.0
        + setup.headroom.1 as f64 * (setup.until - working_hours) / 3600.0;
    report
}

/// What the agent's signals see at `t`: a user who logged in less than
/// `SEEN_AFTER` ago is not seen yet, so her new VM is still idle, released
/// and removable.
fn activity(vm: &Vm, visits: &[Visit], t: f64) -> Activity {
    match vm.user {
        Some(_) if t - vm.user_since < SEEN_AFTER => {
            Activity { sessions: 0, active: false, last_active: vm.left_at, hold_until: None }
        }
        Some(i) => {
            let (active, last) = visits[i].active(t);
            Activity { sessions: 1, active, last_active: Some(last), hold_until: visits[i].hold_until(t) }
        }
        None => Activity { sessions: 0, active: false, last_active: vm.left_at, hold_until: None },
    }
}

pub fn hhmm(t: f64) -> String {
    let m = (t / 60.0) as u64;
    format!("{:02}:{:02}", m / 60, m % 60)
}
