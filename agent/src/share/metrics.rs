//! The share's metrics, read from its report at scrape time.

use super::{ShareHandle, ShareState};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

pub struct ShareMetrics(pub ShareHandle);

impl std::fmt::Debug for ShareMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShareMetrics")
    }
}

const STATES: [ShareState; 8] = [
    ShareState::NotConfigured,
    ShareState::NotImplemented,
    ShareState::Mounting,
    ShareState::Mounted,
    ShareState::Degraded,
    ShareState::Unmounted,
    ShareState::Conflict,
    ShareState::Stopped,
];

impl prometheus_client::collector::Collector for ShareMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let report = self.0.report();
        if report.state == ShareState::NotConfigured {
            return Ok(());
        }
        let mounted = ConstGauge::new(i64::from(report.state == ShareState::Mounted));
        mounted.encode(encoder.encode_descriptor(
            "share_mounted",
            "1 while the share is mounted and its last probe passed.",
            None,
            mounted.metric_type(),
        )?)?;

        let mut family = encoder.encode_descriptor(
            "share_state",
            "The share's current state (1 for the state it is in).",
            None,
            mounted.metric_type(),
        )?;
        for state in STATES {
            ConstGauge::new(i64::from(report.state == state))
                .encode(family.encode_family(&[("state", state.as_str())])?)?;
        }

        if let Some(latency_ms) = report.probe_latency_ms {
            let latency = ConstGauge::new(latency_ms / 1000.0);
            latency.encode(encoder.encode_descriptor(
                "share_probe_latency_seconds",
                "Latency of the last good health probe.",
                None,
                latency.metric_type(),
            )?)?;
        }

        let mounts = ConstCounter::new(report.mounts);
        mounts.encode(encoder.encode_descriptor(
            "share_mounts",
            "Mounts made by the agent.",
            None,
            mounts.metric_type(),
        )?)?;
        let failed = ConstCounter::new(report.failed_probes);
        failed.encode(encoder.encode_descriptor(
            "share_failed_probes",
            "Health probes that failed or hung.",
            None,
            failed.metric_type(),
        )?)?;
        Ok(())
    }
}
