//! Runs every source off the async workers: each sample on a blocking thread
//! (sources read `/proc`, NVML, NSS and files that can wait on the kernel),
//! all sources at once, each under the same deadline. A source whose sample
//! did not return is not asked again until it does, so at most one thread
//! per source is ever stuck in the kernel; meanwhile it answers `unknown`.
//! The bound is the core's [`StuckWork`], so a stuck read shows in status.

use super::signal::{Sample, Source};
use crate::core::clock::rfc3339;
use crate::core::stuck::{StuckError, StuckWork};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A source that takes longer than this is `unknown` for the sample.
pub const SOURCE_DEADLINE: Duration = Duration::from_secs(5);

pub struct Slot {
    name: &'static str,
    source: Arc<Mutex<Box<dyn Source>>>,
    /// The one read of this source that may be in flight.
    reads: StuckWork,
}

impl Slot {
    pub fn new(source: Box<dyn Source>) -> Self {
        let name = source.name();
        Self { name, source: Arc::new(Mutex::new(source)), reads: StuckWork::new_of("idle reads", name, 1) }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// One sample, on a blocking thread, within `deadline`.
    pub async fn sample(&self, now: SystemTime, deadline: Duration) -> Sample {
        let source = self.source.clone();
        let handle = tokio::runtime::Handle::current();
        let read = self.reads.run(deadline, move || {
            let mut source = source.lock().unwrap_or_else(|p| p.into_inner());
            handle.block_on(source.sample(now))
        });
        match read.await {
            Ok(sample) => sample,
            Err(StuckError::Full { oldest, .. }) => Sample::unknown(format!(
                "its sample started at {} has not returned (stuck in the kernel?)",
                rfc3339(now.checked_sub(oldest).unwrap_or(now))
            )),
            Err(StuckError::Panicked { .. }) => Sample::unknown("the source failed (panicked); see the journal"),
            Err(StuckError::TimedOut { after, .. }) => {
                Sample::unknown(format!("no answer within {}s", after.as_secs_f64()))
            }
        }
    }
}

/// Every slot's sample, asked at once.
pub async fn sample_all(slots: &[Slot], now: SystemTime, deadline: Duration) -> Vec<(&'static str, Sample)> {
    let asked = slots.iter().map(|slot| async move { (slot.name(), slot.sample(now, deadline).await) });
    futures_util::future::join_all(asked).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idle::signal::SignalState;
    use futures_util::future::BoxFuture;

    /// Its first sample blocks its thread in a system call (opening a FIFO
    /// nobody writes) until released; later ones answer at once.
    struct Stuck {
        fifo: Option<std::path::PathBuf>,
    }

    impl Source for Stuck {
        fn name(&self) -> &'static str {
            "stuck"
        }
        fn sample(&mut self, _now: SystemTime) -> BoxFuture<'_, Sample> {
            let fifo = self.fifo.take();
            Box::pin(async move {
                if let Some(fifo) = fifo {
                    let _ = std::fs::read(&fifo);
                }
                Sample::idle("answering")
            })
        }
    }

    struct Quick;

    impl Source for Quick {
        fn name(&self) -> &'static str {
            "quick"
        }
        fn sample(&mut self, _now: SystemTime) -> BoxFuture<'_, Sample> {
            Box::pin(async { Sample::idle("nothing") })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_source_stuck_in_a_system_call_is_unknown_holds_no_worker_and_is_not_asked_again() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let slots = vec![Slot::new(Box::new(Stuck { fifo: Some(fifo.clone()) })), Slot::new(Box::new(Quick))];
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let started = std::time::Instant::now();
        // The one async worker stays free: a timer on it still fires.
        let ticker = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            std::time::Instant::now()
        });
        let samples = sample_all(&slots, now, Duration::from_millis(500)).await;
        assert!(ticker.await.unwrap().duration_since(started) < Duration::from_millis(400), "a worker was held");
        assert_eq!(samples[0].1.state, SignalState::Unknown, "{samples:?}");
        assert_eq!(samples[0].1.reasons, vec!["no answer within 0.5s".to_string()]);
        assert_eq!(samples[1].1.state, SignalState::Idle, "the other source answered: {samples:?}");
        // Asked again: not another thread, an unknown at once that says since when.
        let again = sample_all(&slots, now, Duration::from_millis(500)).await;
        assert!(again[0].1.reasons[0].contains("has not returned"), "{again:?}");
        let listed = crate::core::stuck::stuck_now();
        let ours = listed.iter().find(|s| s.what == "idle reads" && s.of == Some("stuck"));
        assert!(ours.is_some_and(|s| s.count == 1 && s.limit == 1), "status can name it: {listed:?}");
        assert!(!listed.iter().any(|s| s.of == Some("quick")), "a source that answered is not listed: {listed:?}");
        assert!(started.elapsed() < Duration::from_millis(900), "the second ask did not wait");
        // The kernel lets go (a writer opens the FIFO): the source answers again.
        let writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        drop(writer);
        for _ in 0..50 {
            let samples = sample_all(&slots, now, Duration::from_millis(500)).await;
            if samples[0].1.state == SignalState::Idle {
                let listed = crate::core::stuck::stuck_now();
                assert!(!listed.iter().any(|s| s.of == Some("stuck")), "no longer listed: {listed:?}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the released source never answered again");
    }
}
