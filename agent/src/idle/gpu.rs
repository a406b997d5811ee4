//! GPUs through NVML (libnvidia-ml, loaded at run time by nvml-wrapper):
//! utilisation is activity; a process holding GPU memory at 0% utilisation (a
//! model loaded in a notebook) is activity for `idle.gpu_memory_grace` after
//! the GPU was last busy, so a kernel someone forgot does not bill a GPU VM
//! all weekend. No driver means no GPU to watch: the signal is absent. An
//! NVML error on a GPU that is there is unknown, never idle.

use super::signal::{Sample, Source};
use crate::core::accounts::AccountsView;
use futures_util::future::BoxFuture;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;
use std::time::{Duration, Instant, SystemTime};

/// Utilisation at or above this (percent) is activity.
const BUSY_PERCENT: u32 = 5;
/// How often to try loading NVML again after it failed (a driver installed by a setup script).
const RETRY_LOAD: Duration = Duration::from_secs(300);

pub struct Gpu {
    nvml: Option<Nvml>,
    why_absent: String,
    tried: Option<Instant>,
    accounts: AccountsView,
    memory_grace: Duration,
    /// Per GPU: when it was last busy (the source's start before that).
    last_busy: std::collections::HashMap<u32, Instant>,
    started: Instant,
}

/// What the source reads of one GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuReading {
    pub index: u32,
    pub percent: u32,
    /// (pid, bytes) of each compute process.
    pub processes: Vec<(u32, u64)>,
}

impl Gpu {
    pub fn new(accounts: AccountsView, memory_grace: Duration) -> Self {
        Self {
            nvml: None,
            why_absent: String::new(),
            tried: None,
            accounts,
            memory_grace,
            last_busy: Default::default(),
            started: Instant::now(),
        }
    }

    fn load(&mut self) {
        if self.nvml.is_some() || self.tried.is_some_and(|at| at.elapsed() < RETRY_LOAD) {
            return;
        }
        self.tried = Some(Instant::now());
        match Nvml::init() {
            Ok(nvml) => self.nvml = Some(nvml),
            Err(err) => self.why_absent = format!("no NVIDIA driver (NVML: {err})"),
        }
    }

    fn owner(&self, pid: u32) -> String {
        let uid = std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok())
        });
        match uid {
            Some(uid) => self.accounts.user_name(uid),
            None => "gone".to_string(),
        }
    }

    fn look(&mut self) -> Sample {
        self.load();
        let Some(nvml) = &self.nvml else { return Sample::absent(self.why_absent.clone()) };
        let read = read_gpus(nvml);
        self.judge_read(read, Instant::now())
    }

    /// What NVML answered, judged: an error is unknown, never idle.
    fn judge_read(&mut self, read: Result<Vec<GpuReading>, String>, now: Instant) -> Sample {
        match read {
            Ok(readings) => self.judge(&readings, now),
            Err(why) => Sample::unknown(why),
        }
    }

    /// The sample from what NVML said, at `now`.
    pub fn judge(&mut self, readings: &[GpuReading], now: Instant) -> Sample {
        let mut reasons = Vec::new();
        let mut set_aside = Vec::new();
        let mut top_percent = 0u32;
        for gpu in readings {
            top_percent = top_percent.max(gpu.percent);
            let index = gpu.index;
            if gpu.percent >= BUSY_PERCENT {
                self.last_busy.insert(index, now);
                reasons.push(format!("gpu {index} at {}%", gpu.percent));
            }
            let last_busy = self.last_busy.get(&index).copied().unwrap_or(self.started);
            let quiet_for = now.duration_since(last_busy);
            for (pid, bytes) in &gpu.processes {
                let held = format!(
                    "gpu {index}: {:.1} GiB held by pid {pid} ({})",
                    *bytes as f64 / (1u64 << 30) as f64,
                    self.owner(*pid)
                );
                if gpu.percent >= BUSY_PERCENT || quiet_for < self.memory_grace {
                    reasons.push(held);
                } else {
                    set_aside.push(format!(
                        "{held} at 0% for {}m, longer than idle.gpu_memory_grace: not counted",
                        quiet_for.as_secs() / 60
                    ));
                }
            }
        }
        let count = readings.len();
        let sample = if reasons.is_empty() {
            let mut sample = Sample::idle(format!("{count} GPU(s) below {BUSY_PERCENT}%"));
            sample.reasons.extend(set_aside);
            sample
        } else {
            Sample::active(reasons)
        };
        sample.with_figure("gpu_percent", f64::from(top_percent)).with_figure("gpus", count as f64)
    }
}

/// Every GPU's utilisation and compute processes; any NVML error says why.
fn read_gpus(nvml: &Nvml) -> Result<Vec<GpuReading>, String> {
    let count = nvml.device_count().map_err(|err| format!("NVML: {err}"))?;
    let mut readings = Vec::new();
    for index in 0..count {
        let device = nvml.device_by_index(index).map_err(|err| format!("NVML: gpu {index}: {err}"))?;
        let rates = device.utilization_rates().map_err(|err| format!("NVML: gpu {index}: utilisation: {err}"))?;
        let processes = device
            .running_compute_processes()
            .map_err(|err| format!("NVML: gpu {index}: compute processes: {err}"))?
            .into_iter()
            .map(|process| {
                let bytes = match process.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => bytes,
                    UsedGpuMemory::Unavailable => 0,
                };
                (process.pid, bytes)
            })
            .collect();
        readings.push(GpuReading { index, percent: rates.gpu, processes });
    }
    Ok(readings)
}

impl Source for Gpu {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn sample(&mut self, _now: SystemTime) -> BoxFuture<'_, Sample> {
        Box::pin(async move { self.look() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idle::signal::SignalState;

    #[test]
    fn without_a_driver_the_gpu_signal_is_absent_not_an_error() {
        if std::path::Path::new("/dev/nvidiactl").exists() {
            eprintln!("SKIP without_a_driver_the_gpu_signal_is_absent_not_an_error: this machine has an NVIDIA driver");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let accounts = AccountsView::for_paths(&crate::core::paths::SystemPaths::under(tmp.path()));
        let sample = Gpu::new(accounts, Duration::from_secs(3600)).look();
        assert_eq!(sample.state, SignalState::Absent, "{sample:?}");
        assert!(sample.reasons[0].starts_with("no NVIDIA driver"), "{sample:?}");
    }

    #[test]
    fn memory_held_at_zero_percent_counts_for_the_grace_after_the_gpu_was_last_busy() {
        let tmp = tempfile::tempdir().unwrap();
        let accounts = AccountsView::for_paths(&crate::core::paths::SystemPaths::under(tmp.path()));
        let mut gpu = Gpu::new(accounts, Duration::from_secs(3600));
        let start = gpu.started;
        let reading = |percent| vec![GpuReading { index: 0, percent, processes: vec![(4242, 8 << 30)] }];
        assert_eq!(gpu.judge(&reading(90), start).state, SignalState::Active);
        let held = gpu.judge(&reading(0), start + Duration::from_secs(3000));
        assert_eq!(held.state, SignalState::Active, "within the grace: {held:?}");
        assert!(held.reasons[0].contains("8.0 GiB held by pid 4242"), "{held:?}");
        let forgotten = gpu.judge(&reading(0), start + Duration::from_secs(3700));
        assert_eq!(forgotten.state, SignalState::Idle, "{forgotten:?}");
        assert!(forgotten.reasons[1].contains("longer than idle.gpu_memory_grace"), "{forgotten:?}");
        // Busy again: counts again, and the grace starts over.
        assert_eq!(gpu.judge(&reading(40), start + Duration::from_secs(3800)).state, SignalState::Active);
        assert_eq!(gpu.judge(&reading(0), start + Duration::from_secs(4000)).state, SignalState::Active);
    }

    #[test]
    fn an_nvml_error_on_a_gpu_that_is_there_is_unknown_not_idle() {
        let tmp = tempfile::tempdir().unwrap();
        let accounts = AccountsView::for_paths(&crate::core::paths::SystemPaths::under(tmp.path()));
        let mut gpu = Gpu::new(accounts, Duration::from_secs(3600));
        let now = gpu.started;
        let sample = gpu.judge_read(Err("NVML: gpu 0: compute processes: GPU is lost".into()), now);
        assert_eq!(sample.state, SignalState::Unknown, "{sample:?}");
        assert_eq!(sample.reasons, vec!["NVML: gpu 0: compute processes: GPU is lost".to_string()]);
    }
}
