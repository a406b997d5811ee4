//! One supervisor, one cancellation token, a named task per capability.
//! A task that fails or panics is recorded on the status board and started
//! again after the one jittered backoff; the backoff starts over once a run
//! has lasted [`STABLE_RUN`]. The others keep running.

use crate::core::backoff::Backoff;
use crate::core::capability::Capability;
use crate::core::component::{ComponentId, ComponentState};
use crate::core::task::{TaskContext, TaskError};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run that lasted this long was healthy: the next failure backs off from the start.
const STABLE_RUN: Duration = Duration::from_secs(120);

pub struct Supervisor {
    tasks: JoinSet<ComponentId>,
    shutdown: CancellationToken,
}

impl Supervisor {
    pub fn new(shutdown: CancellationToken) -> Self {
        Self { tasks: JoinSet::new(), shutdown }
    }

    /// Starts a capability's task and keeps it running until shutdown.
    pub fn spawn(&mut self, capability: Arc<dyn Capability>, ctx: TaskContext) {
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            let id = ctx.id;
            let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
            loop {
                let started = ctx.clock.monotonic();
                // Run each attempt in its own task so a panic is caught, not fatal.
                let attempt = tokio::spawn(capability.run(ctx.clone()));
                let outcome = match attempt.await {
                    Ok(Ok(())) => None,
                    Ok(Err(error)) => Some(error),
                    Err(join) if join.is_panic() => Some(TaskError::Panicked),
                    Err(_) => Some(TaskError::Cancelled),
                };
                if shutdown.is_cancelled() {
                    break;
                }
                let Some(error) = outcome else { break };
                if ctx.clock.monotonic().duration_since(started) >= STABLE_RUN {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::error!(component = %id, "failed: {error}; restarting in {delay:?}");
                ctx.set_error(
                    ComponentState::Failed,
                    format!("restarting in {}s", delay.as_secs().max(1)),
                    error.to_string(),
                );
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            id
        });
    }

    /// Cancels every task and waits for them up to `deadline`; stragglers are aborted.
    pub async fn shutdown(mut self, deadline: Duration) {
        self.shutdown.cancel();
        let drained = tokio::time::timeout(deadline, async {
            while let Some(finished) = self.tasks.join_next().await {
                if let Ok(id) = finished {
                    tracing::debug!(component = %id, "stopped");
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
    use crate::core::http::Route;
    use crate::core::task::TaskResult;
    use futures_util::future::BoxFuture;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn context(shutdown: CancellationToken) -> TaskContext {
        let settings = Arc::new(crate::config::load_str(std::path::Path::new("c.toml"), "").unwrap());
        let (ctx, _) = TaskContext::for_test(ComponentId::Links, std::path::Path::new("/nonexistent"), settings);
        TaskContext { shutdown, ..ctx }
    }

    /// A capability whose first `failures` runs fail, then it stays up.
    struct Flaky {
        attempts: Arc<AtomicU32>,
        failures: u32,
        panic: bool,
    }

    impl Capability for Flaky {
        fn id(&self) -> ComponentId {
            ComponentId::Links
        }
        fn run(&self, ctx: TaskContext) -> BoxFuture<'static, TaskResult> {
            let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
            let (failures, panic) = (self.failures, self.panic);
            Box::pin(async move {
                if attempt < failures {
                    #[allow(clippy::panic)]
                    if panic {
                        panic!("bug");
                    }
                    return Err(TaskError::Failed("boom".to_string()));
                }
                ctx.set(ComponentState::Ready, None);
                ctx.idle_until_shutdown().await;
                Ok(())
            })
        }
        fn routes(&self) -> Vec<Route> {
            Vec::new()
        }
        fn config_section(&self) -> &'static str {
            "links"
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_task_is_reported_and_restarted_with_backoff() {
        let shutdown = CancellationToken::new();
        let ctx = context(shutdown.clone());
        let board = ctx.board.clone();
        let attempts = Arc::new(AtomicU32::new(0));
        let mut supervisor = Supervisor::new(shutdown.clone());
        supervisor.spawn(Arc::new(Flaky { attempts: attempts.clone(), failures: 2, panic: false }), ctx);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(board.state_of(ComponentId::Links), Some(ComponentState::Failed));
        // Backoff: about 1 s, then about 2 s (±20 %).
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 1, "not restarted before the first backoff");
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
        assert_eq!(board.state_of(ComponentId::Links), Some(ComponentState::Ready));
        let last_error = board.components().into_iter().find(|c| c.name == "links").unwrap().last_error;
        assert_eq!(last_error.as_deref(), Some("boom"));
        supervisor.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_does_not_take_the_daemon_down() {
        let shutdown = CancellationToken::new();
        let ctx = context(shutdown.clone());
        let board = ctx.board.clone();
        let attempts = Arc::new(AtomicU32::new(0));
        let mut supervisor = Supervisor::new(shutdown.clone());
        supervisor.spawn(Arc::new(Flaky { attempts, failures: 1, panic: true }), ctx);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(board.state_of(ComponentId::Links), Some(ComponentState::Failed));
        let error = board.components().into_iter().find(|c| c.name == "links").unwrap().last_error;
        assert_eq!(error.as_deref(), Some("the task panicked"));
        supervisor.shutdown(Duration::from_secs(1)).await;
    }
}
