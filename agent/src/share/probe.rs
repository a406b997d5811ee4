//! The health probe: stat the share root and read one entry, in a blocking
//! thread under a deadline, so a hung mount never blocks the runtime or the API.

use crate::core::stuck::{StuckError, StuckWork};
use futures_util::future::BoxFuture;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub enum ProbeOutcome {
    Healthy { latency: Duration },
    Failed { error: String },
    TimedOut { after: Duration },
}

pub trait Prober: Send + Sync + 'static {
    fn probe(&self, root: PathBuf, deadline: Duration) -> BoxFuture<'static, ProbeOutcome>;
}

/// Probes stuck in the kernel at once before probing stops: a probe on a dead
/// hard mount stays stuck until the server answers, and piling up threads
/// helps nobody. A few are allowed so a fresh mount still gets probed while
/// one on the old, lazily unmounted tree is still hanging.
const MAX_STUCK_PROBES: usize = 4;

/// Probes with real syscalls, each in a blocking thread under a deadline.
#[derive(Clone)]
pub struct SystemProber {
    in_flight: StuckWork,
}

impl Default for SystemProber {
    fn default() -> Self {
        Self { in_flight: StuckWork::new("share probes", MAX_STUCK_PROBES) }
    }
}

impl Prober for SystemProber {
    fn probe(&self, root: PathBuf, deadline: Duration) -> BoxFuture<'static, ProbeOutcome> {
        let in_flight = self.in_flight.clone();
        Box::pin(async move {
            let started = Instant::now();
            let result = in_flight
                .run(deadline, move || {
                    std::fs::metadata(&root).and_then(|_| std::fs::read_dir(&root)).and_then(|mut entries| {
                        // One entry forces a round trip to the server, not just the cached root.
                        entries.next().transpose().map(|_| ())
                    })
                })
                .await;
            match result {
                Ok(Ok(())) => ProbeOutcome::Healthy { latency: started.elapsed() },
                Ok(Err(err)) => ProbeOutcome::Failed { error: err.to_string() },
                Err(StuckError::TimedOut { .. }) => ProbeOutcome::TimedOut { after: deadline },
                Err(err) => ProbeOutcome::Failed { error: err.to_string() },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_readable_directory_is_healthy_and_a_missing_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let prober = SystemProber::default();
        assert!(matches!(
            prober.probe(dir.path().to_path_buf(), Duration::from_secs(5)).await,
            ProbeOutcome::Healthy { .. }
        ));
        let missing = prober.probe(dir.path().join("gone"), Duration::from_secs(5)).await;
        assert!(matches!(missing, ProbeOutcome::Failed { ref error } if error.contains("No such file")), "{missing:?}");
    }
}
