//! One supervisor, one cancellation token, a named task per capability.
//! A task that fails or panics is recorded on the status board and started
//! again after a capped backoff; the others keep running.

use crate::api::types::ComponentState;
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::paths::SystemPaths;
use crate::status::SharedBoard;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What a capability task is handed.
#[derive(Clone)]
pub struct ComponentContext {
    pub name: &'static str,
    pub board: SharedBoard,
    pub settings: watch::Receiver<Arc<Settings>>,
    pub paths: Arc<SystemPaths>,
    pub clock: SharedClock,
    pub shutdown: CancellationToken,
}

impl ComponentContext {
    pub fn set(&self, state: ComponentState, detail: impl Into<Option<String>>) {
        self.board.set(self.name, state, detail.into());
    }

    /// Waits until shutdown; for capabilities with nothing left to do.
    pub async fn idle_until_shutdown(&self) {
        self.shutdown.cancelled().await;
    }
}

pub type TaskResult = Result<(), String>;
type TaskFuture = Pin<Box<dyn Future<Output = TaskResult> + Send>>;
type TaskFactory = Box<dyn Fn(ComponentContext) -> TaskFuture + Send + Sync>;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

pub struct Supervisor {
    tasks: JoinSet<&'static str>,
    shutdown: CancellationToken,
}

impl Supervisor {
    pub fn new(shutdown: CancellationToken) -> Self {
        Self { tasks: JoinSet::new(), shutdown }
    }

    /// Starts a capability task and keeps it running until shutdown.
    pub fn spawn<F, Fut>(&mut self, ctx: ComponentContext, task: F)
    where
        F: Fn(ComponentContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        let factory: TaskFactory = Box::new(move |ctx| Box::pin(task(ctx)));
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            let name = ctx.name;
            let mut backoff = FIRST_BACKOFF;
            loop {
                // Run each attempt in its own task so a panic is caught, not fatal.
                let attempt = tokio::spawn(factory(ctx.clone()));
                let outcome = match attempt.await {
                    Ok(Ok(())) => None,
                    Ok(Err(message)) => Some(message),
                    Err(join) if join.is_panic() => Some("the task panicked".to_string()),
                    Err(join) => Some(join.to_string()),
                };
                if shutdown.is_cancelled() {
                    break;
                }
                let Some(message) = outcome else { break };
                tracing::error!(component = name, "failed: {message}; restarting in {backoff:?}");
                ctx.board.set_error(
                    name,
                    ComponentState::Failed,
                    Some(format!("restarting in {}s", backoff.as_secs())),
                    message,
                );
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            name
        });
    }

    /// Cancels every task and waits for them up to `deadline`; stragglers are aborted.
    pub async fn shutdown(mut self, deadline: Duration) {
        self.shutdown.cancel();
        let drained = tokio::time::timeout(deadline, async {
            while let Some(finished) = self.tasks.join_next().await {
                if let Ok(name) = finished {
                    tracing::debug!(component = name, "stopped");
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("some tasks did not stop within {deadline:?}; aborting them");
            self.tasks.abort_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::StatusBoard;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn context(shutdown: CancellationToken) -> ComponentContext {
        let clock = crate::clock::system();
        let settings = Arc::new(crate::config::load_str(std::path::Path::new("c.toml"), "").unwrap());
        ComponentContext {
            name: "links",
            board: Arc::new(StatusBoard::new(clock.clone(), &[])),
            settings: watch::channel(settings).1,
            paths: Arc::new(SystemPaths::under("/nonexistent")),
            clock,
            shutdown,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_task_is_reported_and_restarted() {
        let shutdown = CancellationToken::new();
        let ctx = context(shutdown.clone());
        let board = ctx.board.clone();
        let attempts = Arc::new(AtomicU32::new(0));
        let counter = attempts.clone();
        let mut supervisor = Supervisor::new(shutdown.clone());
        supervisor.spawn(ctx, move |ctx| {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Err("boom".to_string());
                }
                ctx.set(ComponentState::Ready, None);
                ctx.idle_until_shutdown().await;
                Ok(())
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(board.state_of("links"), Some(ComponentState::Failed));
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
        assert_eq!(board.state_of("links"), Some(ComponentState::Ready));
        let last_error = board.components().into_iter().find(|c| c.name == "links").unwrap().last_error;
        assert_eq!(last_error.as_deref(), Some("boom"));
        supervisor.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_does_not_take_the_daemon_down() {
        let shutdown = CancellationToken::new();
        let ctx = context(shutdown.clone());
        let board = ctx.board.clone();
        let mut supervisor = Supervisor::new(shutdown.clone());
        supervisor.spawn(ctx, |_ctx| async move {
            #[allow(clippy::panic)]
            if true {
                panic!("bug");
            }
            Ok(())
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(board.state_of("links"), Some(ComponentState::Failed));
        supervisor.shutdown(Duration::from_secs(1)).await;
    }
}
