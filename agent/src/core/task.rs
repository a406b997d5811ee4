//! What a capability's supervised task is handed, and how it fails.

use super::accounts::AccountsView;
use super::board::SharedBoard;
use super::clock::SharedClock;
use super::component::{ComponentId, ComponentState};
use super::paths::SystemPaths;
use super::shared::SharedState;
use crate::config::Settings;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why a capability task stopped before shutdown. The supervisor records it on
/// the board and starts the task again after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not finish within {}s", after.as_secs())]
    TimedOut { what: String, after: Duration },
    #[error("{0}")]
    Failed(String),
    #[error("the task panicked")]
    Panicked,
    #[error("the task was cancelled")]
    Cancelled,
}

pub type TaskResult = Result<(), TaskError>;

/// Everything a capability task may read or publish.
#[derive(Clone)]
pub struct TaskContext {
    pub id: ComponentId,
    pub board: SharedBoard,
    pub settings: watch::Receiver<Arc<Settings>>,
    pub paths: Arc<SystemPaths>,
    pub clock: SharedClock,
    pub accounts: AccountsView,
    /// News capabilities publish for each other (the share's mount, ...).
    pub shared: SharedState,
    pub shutdown: CancellationToken,
}

impl TaskContext {
    pub fn set(&self, state: ComponentState, detail: impl Into<Option<String>>) {
        self.board.set(self.id, state, detail.into());
    }

    pub fn set_error(&self, state: ComponentState, detail: impl Into<Option<String>>, error: String) {
        self.board.set_error(self.id, state, detail.into(), error);
    }

    /// Waits until shutdown; for capabilities with nothing left to do.
    pub async fn idle_until_shutdown(&self) {
        self.shutdown.cancelled().await;
    }

    /// The whole task of a capability not built in this version: say so, wait.
    pub async fn not_built(self, what: &str) -> TaskResult {
        self.set(ComponentState::NotImplemented, format!("{what} is not built in this version of pool-agent"));
        self.idle_until_shutdown().await;
        Ok(())
    }
}

#[cfg(test)]
impl TaskContext {
    /// A context for one capability's task in a sandbox under `root`, with a
    /// board of its own; the sender changes the settings the task sees.
    pub fn for_test(
        id: ComponentId,
        root: &std::path::Path,
        settings: Arc<Settings>,
    ) -> (Self, watch::Sender<Arc<Settings>>) {
        let clock = super::clock::system();
        let paths = SystemPaths::under(root);
        let (settings_tx, settings) = watch::channel(settings);
        let ctx = Self {
            id,
            board: Arc::new(super::board::StatusBoard::new(clock.clone(), &[], &[id])),
            settings,
            accounts: AccountsView::for_paths(&paths),
            paths: Arc::new(paths),
            clock,
            shared: SharedState::new(),
            shutdown: CancellationToken::new(),
        };
        (ctx, settings_tx)
    }
}

/// Runs filesystem work that may block (a path on a hung network mount) on a
/// blocking thread, under a deadline. A call stuck in the kernel keeps its
/// thread; the daemon abandons such threads at stop (see the daemon's
/// runtime shutdown), so it never holds the caller or SIGTERM.
pub async fn blocking<T, F>(what: &str, deadline: Duration, work: F) -> Result<T, TaskError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::time::timeout(deadline, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(join)) if join.is_panic() => Err(TaskError::Panicked),
        Ok(Err(_)) => Err(TaskError::Cancelled),
        Err(_) => Err(TaskError::TimedOut { what: what.to_string(), after: deadline }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blocking_work_answers_or_times_out_without_holding_the_caller() {
        assert_eq!(blocking("sum", Duration::from_secs(5), || 2 + 2).await.unwrap(), 4);
        let started = std::time::Instant::now();
        #[allow(clippy::disallowed_methods)] // a stand-in for a syscall stuck on a dead server
        let stuck = blocking("stat /dead", Duration::from_millis(100), || std::thread::sleep(Duration::from_secs(2)));
        let err = stuck.await.unwrap_err();
        assert!(matches!(err, TaskError::TimedOut { .. }), "{err}");
        assert!(err.to_string().contains("stat /dead"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
