//! Writes: a user's processes writing files under users' homes or the share
//! are work (editing in JupyterLab without running a cell, saving from an
//! editor, a slow download into the user's folder). The kernel reports the
//! writes through fanotify ([`super::fanotify`], on its own threads); this
//! file keeps the ledger of who wrote and judges each window.
//!
//! - A write counts for a user when its process's uid is in the user range
//!   or it runs in that user's slice (as the CPU signal counts, `sudo` too).
//! - A forgotten writer (a process appending to a log for ever) keeps the VM
//!   awake for at most `idle.writes_max`: a process's writes count while it
//!   has written for less than that without a pause of `idle.timeout`.
//! - A full kernel queue (writes lost) makes the window `unknown`; without
//!   CAP_SYS_ADMIN (or `idle.writes = false`) the signal is `absent`, with why.

use super::signal::{Sample, Source};
pub use super::write_ledger::{Bounds, Ledger, Write};
use crate::core::accounts::AccountsView;
use futures_util::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// The writes signal: a watcher on its own threads, or why there is none.
pub struct Writes {
    watch: Result<super::fanotify::Watcher, String>,
    ledger: Arc<Mutex<Ledger>>,
    bounds: Bounds,
    accounts: AccountsView,
}

impl Writes {
    /// `roots`: the directories whose writes count (users' homes, the share),
    /// asked again at every re-mark (users come and go).
    pub fn new(
        enabled: bool,
        roots: super::fanotify::Roots,
        users: crate::core::user_uids::UserUids,
        bounds: Bounds,
        accounts: AccountsView,
    ) -> Self {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let watch = if enabled {
            super::fanotify::Watcher::start(roots, users, bounds.gap, ledger.clone())
        } else {
            Err("off (idle.writes = false)".to_string())
        };
        if let Err(why) = &watch {
            tracing::info!(component = "idle", "writes: not watched: {why}");
        }
        Self { watch, ledger, bounds, accounts }
    }
}

impl Source for Writes {
    fn name(&self) -> &'static str {
        "writes"
    }

    fn sample(&mut self, now: SystemTime) -> BoxFuture<'_, Sample> {
        let sample = match &self.watch {
            Err(why) => Sample::absent(format!("unavailable: {why}")),
            Ok(watch) => match watch.failed(super::sampler::SOURCE_DEADLINE) {
                Some(why) => Sample::unknown(format!("writes are not read: {why}")),
                None => {
                    let accounts = &self.accounts;
                    let name = |uid: u32| accounts.user_name(uid);
                    let mut sample = self.ledger.lock().unwrap_or_else(|p| p.into_inner()).judge(
                        Instant::now(),
                        now,
                        self.bounds,
                        &name,
                    );
                    sample.reasons.extend(watch.problems());
                    sample
                }
            },
        };
        Box::pin(async move { sample })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idle::signal::SignalState;
    use std::time::Duration;

    const MIN: Duration = Duration::from_secs(60);

    fn write(pid: u32, at: Instant) -> Write {
        Write { pid, uid: 1001, comm: "python3".into(), path: "/home/alice/notes.ipynb".into(), at }
    }

    fn name(uid: u32) -> String {
        if uid == 1001 {
            "alice".into()
        } else {
            uid.to_string()
        }
    }

    #[test]
    fn a_save_counts_in_its_window_and_a_quiet_window_counts_from_the_last_save() {
        let bounds = Bounds { gap: 30 * MIN, max: 120 * MIN };
        let start = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut ledger = Ledger::default();
        let quiet = ledger.judge(start, wall, bounds, &name);
        assert_eq!((quiet.state, quiet.last_activity), (SignalState::Idle, None), "{quiet:?}");
        ledger.record(write(42, start + Duration::from_secs(3)), bounds.gap);
        let saved = ledger.judge(start + Duration::from_secs(10), wall + Duration::from_secs(10), bounds, &name);
        assert_eq!(saved.state, SignalState::Active, "{saved:?}");
        assert_eq!(
            saved.reasons,
            vec!["alice wrote /home/alice/notes.ipynb (python3 pid 42, 1 write(s) this window)".to_string()]
        );
        let after = ledger.judge(start + Duration::from_secs(20), wall + Duration::from_secs(20), bounds, &name);
        assert_eq!(after.state, SignalState::Idle, "{after:?}");
        assert_eq!(after.last_activity, Some(wall + Duration::from_secs(3)), "the quiet count starts at the save");
    }

    #[test]
    fn a_lone_writer_counts_for_writes_max_then_no_more_and_a_pause_starts_a_new_run() {
        let bounds = Bounds { gap: 30 * MIN, max: 120 * MIN };
        let start = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut ledger = Ledger::default();
        // A log line every 20 s for 3 hours.
        let mut last_state = None;
        for n in 0..(3 * 180) {
            let at = start + Duration::from_secs(20 * n);
            ledger.record(write(7, at), bounds.gap);
            let sample =
                ledger.judge(at + Duration::from_secs(1), wall + Duration::from_secs(20 * n + 1), bounds, &name);
            let within = Duration::from_secs(20 * n) <= bounds.max;
            let expected = if within { SignalState::Active } else { SignalState::Idle };
            assert_eq!(sample.state, expected, "after {}s: {sample:?}", 20 * n);
            if !within {
                assert!(sample.reasons[1].contains("longer than idle.writes_max (2h): not counted"), "{sample:?}");
                // Counted up to the bound: the verdict's quiet count starts there, not at the last line.
                assert_eq!(sample.last_activity, Some(wall + bounds.max));
            }
            last_state = Some(sample.state);
        }
        assert_eq!(last_state, Some(SignalState::Idle));
        // It pauses for a whole timeout, then writes again: a new run, counted again.
        let back = start + Duration::from_secs(20 * 540) + bounds.gap;
        ledger.record(write(7, back), bounds.gap);
        let sample = ledger.judge(back + Duration::from_secs(1), wall, bounds, &name);
        assert_eq!(sample.state, SignalState::Active, "{sample:?}");
    }

    #[test]
    fn an_overflowed_queue_makes_the_window_unknown_not_idle() {
        let bounds = Bounds { gap: 30 * MIN, max: 120 * MIN };
        let start = Instant::now();
        let wall = SystemTime::UNIX_EPOCH;
        let mut ledger = Ledger::default();
        ledger.overflow();
        let lost = ledger.judge(start, wall, bounds, &name);
        assert_eq!(lost.state, SignalState::Unknown, "{lost:?}");
        assert_eq!(ledger.judge(start, wall, bounds, &name).state, SignalState::Idle, "for that window only");
    }
}
