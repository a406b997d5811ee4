//! GPUs through NVML (libnvidia-ml, loaded at run time by nvml-wrapper): a
//! process holding GPU memory is activity even at 0% utilisation (a model
//! loaded in a notebook), and so is utilisation itself. No driver means no
//! GPU to watch: the signal is absent, not an error.

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
}

impl Gpu {
    pub fn new(accounts: AccountsView) -> Self {
        Self { nvml: None, why_absent: String::new(), tried: None, accounts }
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
        let count = match nvml.device_count() {
            Ok(count) => count,
            Err(err) => return Sample::unknown(format!("NVML: {err}")),
        };
        let mut reasons = Vec::new();
        let mut top_percent = 0u32;
        let mut held = Vec::new();
        for index in 0..count {
            let device = match nvml.device_by_index(index) {
                Ok(device) => device,
                Err(err) => return Sample::unknown(format!("NVML: gpu {index}: {err}")),
            };
            if let Ok(rates) = device.utilization_rates() {
                top_percent = top_percent.max(rates.gpu);
                if rates.gpu >= BUSY_PERCENT {
                    reasons.push(format!("gpu {index} at {}%", rates.gpu));
                }
            }
            for process in device.running_compute_processes().unwrap_or_default() {
                let bytes = match process.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => bytes,
                    UsedGpuMemory::Unavailable => 0,
                };
                held.push((index, process.pid, bytes));
            }
        }
        for (index, pid, bytes) in held {
            let owner = self.owner(pid);
            reasons.push(format!(
                "gpu {index}: {:.1} GiB held by pid {pid} ({owner})",
                bytes as f64 / (1u64 << 30) as f64
            ));
        }
        let sample = if reasons.is_empty() {
            Sample::idle(format!("{count} GPU(s), no compute process, below {BUSY_PERCENT}%"))
        } else {
            Sample::active(reasons)
        };
        sample.with_figure("gpu_percent", f64::from(top_percent)).with_figure("gpus", f64::from(count))
    }
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
        let sample = Gpu::new(accounts).look();
        assert_eq!(sample.state, SignalState::Absent, "{sample:?}");
        assert!(sample.reasons[0].starts_with("no NVIDIA driver"), "{sample:?}");
    }
}
