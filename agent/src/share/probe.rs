//! The health probe: stat the share root and read one entry, in a blocking
//! thread under a deadline, so a hung mount never blocks the runtime or the API.

use futures_util::future::BoxFuture;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
#[derive(Debug, Default, Clone)]
pub struct SystemProber {
    in_flight: Arc<AtomicUsize>,
}

impl Prober for SystemProber {
    fn probe(&self, root: PathBuf, deadline: Duration) -> BoxFuture<'static, ProbeOutcome> {
        let in_flight = self.in_flight.clone();
        Box::pin(async move {
            if in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_STUCK_PROBES {
                in_flight.fetch_sub(1, Ordering::SeqCst);
                let error = format!("{MAX_STUCK_PROBES} earlier probes are still hung in the kernel");
                return ProbeOutcome::Failed { error };
            }
            let flag = in_flight.clone();
            let started = Instant::now();
            let task = tokio::task::spawn_blocking(move || {
                let result = std::fs::metadata(&root).and_then(|_| std::fs::read_dir(&root)).and_then(|mut entries| {
                    // One entry forces a round trip to the server, not just the cached root.
                    entries.next().transpose().map(|_| ())
                });
                flag.fetch_sub(1, Ordering::SeqCst);
                result
            });
            match tokio::time::timeout(deadline, task).await {
                Ok(Ok(Ok(()))) => ProbeOutcome::Healthy { latency: started.elapsed() },
                Ok(Ok(Err(err))) => ProbeOutcome::Failed { error: err.to_string() },
                Ok(Err(join)) => ProbeOutcome::Failed { error: format!("probe thread failed: {join}") },
                Err(_) => ProbeOutcome::TimedOut { after: deadline },
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
