//! What the Azure keepers (metrics, protection, self-delete, the share's
//! key) cannot do, on the status board's azure row: a failure that persists
//! makes the row `degraded` with its reason, so `pool-agent status` exits 1
//! and says why. And the keepers themselves run supervised: one that
//! panics (or is cancelled) is shown and started again; one that returns has
//! finished its work.

use crate::core::board::SharedBoard;
use crate::core::component::{ComponentId, ComponentState};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A keeper that ended is started again after this.
const RESTART_AFTER: Duration = Duration::from_secs(5);

#[derive(Clone, Default)]
pub struct Problems(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// Set when the capability starts; until then nothing is rendered.
    board: std::sync::OnceLock<SharedBoard>,
    /// By keeper: what is wrong.
    list: Mutex<BTreeMap<String, String>>,
    /// The row's detail while nothing is wrong (None: not running yet, the row is left alone).
    ready: Mutex<Option<String>>,
}

impl Problems {
    pub fn attach(&self, board: SharedBoard) {
        let _ = self.0.board.set(board);
    }

    /// Sets (Some) or clears (None) what `keeper` cannot do.
    pub fn set(&self, keeper: &str, problem: Option<String>) {
        let changed = {
            let mut list = self.0.list.lock().unwrap_or_else(|p| p.into_inner());
            match problem {
                Some(why) => list.insert(keeper.to_string(), why.clone()).as_ref() != Some(&why),
                None => list.remove(keeper).is_some(),
            }
        };
        if changed {
            self.render();
        }
    }

    /// The capability runs: its row says `detail` while nothing is wrong.
    pub fn ready(&self, detail: String) {
        *self.0.ready.lock().unwrap_or_else(|p| p.into_inner()) = Some(detail);
        self.render();
    }

    /// Starting again (new settings): nothing known yet.
    pub fn clear(&self) {
        self.0.list.lock().unwrap_or_else(|p| p.into_inner()).clear();
        *self.0.ready.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn list(&self) -> Vec<String> {
        let list = self.0.list.lock().unwrap_or_else(|p| p.into_inner());
        list.iter().map(|(keeper, why)| format!("{keeper}: {why}")).collect()
    }

    fn render(&self) {
        let Some(board) = self.0.board.get() else { return };
        let problems = self.list();
        if problems.is_empty() {
            if let Some(detail) = self.0.ready.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                board.set(ComponentId::Azure, ComponentState::Ready, Some(detail));
                board.clear_error(ComponentId::Azure);
            }
            return;
        }
        let joined = problems.join("; ");
        board.set_error(
            ComponentId::Azure,
            ComponentState::Degraded,
            Some(format!("azure degraded: {joined}")),
            joined,
        );
    }
}

/// Runs `keeper` until shutdown or until it returns (its work is over);
/// one that panics is a problem on the board and is started again (a
/// panic's message is not shown: it may hold anything).
pub async fn supervise<F, Fut>(name: &'static str, problems: Problems, shutdown: CancellationToken, keeper: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(keeper()));
        let ended = tokio::select! {
            _ = shutdown.cancelled() => return,
            ended = task => ended,
        };
        if shutdown.is_cancelled() {
            return;
        }
        let why = match ended {
            // A keeper returns when its work is over (self-delete done, not a scale set's VM).
            Ok(()) => return,
            Err(err) if err.is_panic() => format!("the {name} keeper panicked; starting it again"),
            Err(_) => format!("the {name} keeper was stopped; starting it again"),
        };
        tracing::error!(component = "azure", "{why}");
        // Shown until the agent restarts: a keeper that ended is a bug to report.
        problems.set(&format!("{name} keeper"), Some(why));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RESTART_AFTER) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::board::StatusBoard;

    fn board() -> SharedBoard {
        let clock: crate::core::clock::SharedClock = Arc::new(crate::core::clock::SystemClock);
        Arc::new(StatusBoard::new(clock, &[], &[ComponentId::Azure]))
    }

    fn row(board: &SharedBoard) -> (ComponentState, String) {
        let row = board.components().into_iter().find(|c| c.name == ComponentId::Azure.to_string()).unwrap();
        (row.state, row.detail.unwrap_or_default())
    }

    #[test]
    fn a_problem_degrades_the_row_until_every_one_clears() {
        let board = board();
        let problems = Problems::default();
        problems.attach(board.clone());
        problems.ready("posting the verdict".into());
        assert_eq!(row(&board).0, ComponentState::Ready);
        problems.set("protection", Some("the VM's identity needs the role …".into()));
        problems.set("self-delete", Some("409".into()));
        let (state, detail) = row(&board);
        assert_eq!(state, ComponentState::Degraded);
        assert!(detail.starts_with("azure degraded: protection: the VM's identity needs the role"), "{detail}");
        problems.set("protection", None);
        assert_eq!(row(&board).0, ComponentState::Degraded, "self-delete still fails");
        problems.set("self-delete", None);
        assert_eq!(row(&board), (ComponentState::Ready, "posting the verdict".into()));
    }

    #[tokio::test]
    async fn a_keeper_that_panics_is_shown_and_started_again() {
        tokio::time::pause();
        let board = board();
        let problems = Problems::default();
        problems.attach(board.clone());
        let starts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let shutdown = CancellationToken::new();
        let counted = starts.clone();
        let supervised = tokio::spawn(supervise("events", problems.clone(), shutdown.clone(), move || {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n == 0 {
                    panic!("first run fails");
                }
                std::future::pending::<()>().await
            }
        }));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(problems.list(), ["events keeper: the events keeper panicked; starting it again"]);
        tokio::time::sleep(RESTART_AFTER + Duration::from_secs(1)).await;
        assert_eq!(starts.load(std::sync::atomic::Ordering::SeqCst), 2);
        shutdown.cancel();
        supervised.await.unwrap();
    }
}
