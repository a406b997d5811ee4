//! What this VM offers the pool: for autoscale, whether it is in use, booting
//! or free (the demand metrics); for the load balancer, whether it can take a
//! new session (the readiness probe). Pure, from the news the capabilities
//! publish, so the metrics, the probe and the pool simulation read one answer.
//!
//! `Busy` stays the safe side for what removes VMs; these say what adding
//! VMs needs: a VM in boot grace or just restarted is not demand, and a VM
//! nobody uses but that can take the next user is headroom.

use crate::core::component::ComponentState;
use crate::core::shared::{IdleNews, ShareNews};
use std::time::SystemTime;

/// What the offer is judged from.
#[derive(Debug, Clone)]
pub struct Situation<'a> {
    pub idle: &'a IdleNews,
    pub share: &'a ShareNews,
    /// The scripts row of the status board (`Starting` while a blocking
    /// script runs or waits, `Failed` when one did not succeed); `None`: no row.
    pub scripts: Option<ComponentState>,
    /// Why the VM is going away (a Terminate or Preempt pending, a
    /// self-delete under way); `None`: it is staying.
    pub going_away: Option<String>,
    /// The Application Health answer (an unhealthy VM is repaired, not used).
    pub healthy: bool,
    /// `pool.max_sessions`.
    pub max_sessions: Option<u32>,
    pub now: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// A signal is active now: someone works here.
    pub in_use: bool,
    /// Boot grace, blocking scripts not yet done, or the share not yet known.
    pub booting: bool,
    /// Ready for the next user and nobody on it.
    pub free: bool,
    /// Can the VM take a new session? `Err`: why not (for `pool-agent azure`;
    /// the probe itself says only yes or no).
    pub ready: Result<(), String>,
}

impl Offer {
    /// Headroom autoscale counts: free now, or soon (booting) unless a user
    /// already took it during its boot grace (the simulated day showed a
    /// 50-user morning queue hidden that way: 292 min waits instead of ~20).
    pub fn spare(&self) -> bool {
        self.free || (self.booting && !self.in_use)
    }
}

pub fn judge(at: &Situation) -> Offer {
    let idle = at.idle;
    let fresh = idle.known && !idle.is_stale(at.now);
    let sessions = idle.figures.get("sessions").copied().unwrap_or(0.0);
    let ready = readiness(at, sessions);
    let in_use = fresh && idle.in_use;
    // A VM going away is no headroom, booting or not.
    let booting = at.going_away.is_none()
        && (!idle.known
            || (fresh && idle.in_grace)
            || at.scripts == Some(ComponentState::Starting)
            || matches!(at.share, ShareNews::NotYetKnown));
    let free = ready.is_ok() && fresh && !in_use && !idle.unknown && !booting && at.healthy && sessions < 1.0;
    Offer { in_use, booting, free, ready }
}

fn readiness(at: &Situation, sessions: f64) -> Result<(), String> {
    match at.share {
        ShareNews::Mounted { .. } | ShareNews::NotConfigured => {}
        ShareNews::NotYetKnown => return Err("the share has not been mounted yet".into()),
        ShareNews::Down { why } => return Err(format!("the share is not mounted: {why}")),
    }
    match at.scripts {
        Some(ComponentState::Starting) => return Err("blocking setup scripts have not finished".into()),
        Some(ComponentState::Failed) => return Err("a blocking setup script did not succeed".into()),
        _ => {}
    }
    if let Some(why) = &at.going_away {
        return Err(format!("going away: {why}"));
    }
    if let Some(max) = at.max_sessions {
        if sessions >= f64::from(max) {
            return Err(format!("{sessions} session(s), pool.max_sessions is {max}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn quiet() -> IdleNews {
        IdleNews { known: true, sampled_at: Some(now()), interval: Duration::from_secs(10), ..IdleNews::default() }
    }

    fn mounted() -> ShareNews {
        ShareNews::Mounted { root: PathBuf::from("/data/notebooks"), identity: (1, 2), smb: None }
    }

    fn situation<'a>(idle: &'a IdleNews, share: &'a ShareNews) -> Situation<'a> {
        Situation {
            idle,
            share,
            scripts: Some(ComponentState::Ready),
            going_away: None,
            healthy: true,
            max_sessions: None,
            now: now(),
        }
    }

    #[test]
    fn a_ready_vm_nobody_uses_is_free_and_spare_and_takes_sessions() {
        let (idle, share) = (quiet(), mounted());
        let offer = judge(&situation(&idle, &share));
        assert_eq!(offer, Offer { in_use: false, booting: false, free: true, ready: Ok(()) });
        assert!(offer.spare());
    }

    #[test]
    fn boot_grace_and_running_scripts_are_booting_not_demand() {
        let share = mounted();
        let grace = IdleNews { in_grace: true, ..quiet() };
        let offer = judge(&situation(&grace, &share));
        assert!(offer.booting && !offer.in_use && !offer.free && offer.spare(), "{offer:?}");
        assert!(offer.ready.is_ok(), "grace alone does not refuse a session: {offer:?}");
        let idle = quiet();
        let scripts = Situation { scripts: Some(ComponentState::Starting), ..situation(&idle, &share) };
        let offer = judge(&scripts);
        assert!(offer.booting && !offer.free, "{offer:?}");
        assert!(offer.ready.unwrap_err().contains("blocking setup scripts"));
        let unknown_verdict = IdleNews::default();
        let offer = judge(&situation(&unknown_verdict, &share));
        assert!(offer.booting && !offer.in_use && !offer.free, "no verdict yet: {offer:?}");
    }

    #[test]
    fn an_active_signal_is_in_use_and_never_free() {
        let share = mounted();
        let working = IdleNews { in_use: true, figures: [("sessions".to_string(), 1.0)].into(), ..quiet() };
        let offer = judge(&situation(&working, &share));
        assert!(offer.in_use && !offer.free && !offer.booting && !offer.spare(), "{offer:?}");
        let taken_while_booting = IdleNews { in_grace: true, ..working.clone() };
        let offer = judge(&situation(&taken_while_booting, &share));
        assert!(offer.booting && offer.in_use && !offer.spare(), "a VM a user took is no headroom: {offer:?}");
        assert!(offer.ready.is_ok(), "a VM in use still takes more sessions without a limit");
    }

    #[test]
    fn unknown_stale_or_unhealthy_is_neither_in_use_nor_free() {
        let share = mounted();
        let unknown = IdleNews { unknown: true, ..quiet() };
        let offer = judge(&situation(&unknown, &share));
        assert!(!offer.in_use && !offer.free, "an unknown signal may be a user: {offer:?}");
        let stale = IdleNews { in_use: true, sampled_at: Some(now() - Duration::from_secs(3600)), ..quiet() };
        let offer = judge(&situation(&stale, &share));
        assert!(!offer.in_use && !offer.free && !offer.booting, "{offer:?}");
        let idle = quiet();
        let sick = Situation { healthy: false, ..situation(&idle, &share) };
        assert!(!judge(&sick).free);
    }

    #[test]
    fn each_reason_to_refuse_a_session_is_named_and_clears() {
        let idle = IdleNews { figures: [("sessions".to_string(), 2.0)].into(), in_use: true, ..quiet() };
        let share = mounted();
        let down = ShareNews::Down { why: "mount error(113)".into() };
        let cases: Vec<(Situation, &str)> = vec![
            (situation(&idle, &down), "mount error(113)"),
            (Situation { scripts: Some(ComponentState::Failed), ..situation(&idle, &share) }, "did not succeed"),
            (Situation { going_away: Some("Terminate pending".into()), ..situation(&idle, &share) }, "Terminate"),
            (Situation { max_sessions: Some(2), ..situation(&idle, &share) }, "pool.max_sessions is 2"),
        ];
        for (at, words) in cases {
            let why = judge(&at).ready.unwrap_err();
            assert!(why.contains(words), "{why:?} should say {words:?}");
        }
        let grace = IdleNews { in_grace: true, ..quiet() };
        let leaving = Situation { going_away: Some("Preempt pending".into()), ..situation(&grace, &share) };
        assert!(!judge(&leaving).spare(), "a VM going away is no headroom, even in its boot grace");
        let below = Situation { max_sessions: Some(3), ..situation(&idle, &share) };
        assert!(judge(&below).ready.is_ok());
        let no_share = ShareNews::NotConfigured;
        assert!(judge(&situation(&idle, &no_share)).ready.is_ok(), "no share configured: nothing to wait for");
    }
}
