//! The verdict and each signal as Prometheus gauges.

use super::signal::SignalState;
use super::Idle;

pub(super) struct IdleMetrics(pub(super) Idle);

impl std::fmt::Debug for IdleMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdleMetrics")
    }
}

impl prometheus_client::collector::Collector for IdleMetrics {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        let report = self.0.report();
        let idle = ConstGauge::new(i64::from(report.verdict == "idle"));
        idle.encode(encoder.encode_descriptor(
            "idle",
            "1 when the verdict is idle (0 while it is stale).",
            None,
            idle.metric_type(),
        )?)?;
        if let Some(age) = report.verdict_age_seconds {
            let age = ConstGauge::new(age);
            age.encode(encoder.encode_descriptor(
                "idle_verdict_age_seconds",
                "Seconds since the samples behind the verdict; older than three intervals is stale.",
                None,
                age.metric_type(),
            )?)?;
        }
        let signal = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "idle_signal_active",
            "1 for each signal that keeps the VM active now (unknown counts).",
            None,
            signal.metric_type(),
        )?;
        for row in &report.signals {
            let active = matches!(row.state, SignalState::Active | SignalState::Unknown);
            ConstGauge::new(i64::from(active)).encode(family.encode_family(&[("signal", row.name.as_str())])?)?;
        }
        let figure = ConstGauge::new(0.0f64);
        let mut family = encoder.encode_descriptor(
            "idle_signal_value",
            "Each signal's figures: sessions, connections, kernels, cpu_percent, holds, writers.",
            None,
            figure.metric_type(),
        )?;
        for row in &report.signals {
            for (name, value) in &row.figures {
                ConstGauge::new(*value)
                    .encode(family.encode_family(&[("signal", row.name.as_str()), ("figure", name.as_str())])?)?;
            }
        }
        Ok(())
    }
}
