//! The scripts' metrics.

use super::api::with_elapsed;
use super::report::ScriptState;
use super::Scripts;

pub(super) struct ScriptsMetrics(pub(super) Scripts);

impl std::fmt::Debug for ScriptsMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScriptsMetrics")
    }
}

impl prometheus_client::collector::Collector for ScriptsMetrics {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        let report = with_elapsed(self.0.report(), self.0.clock.now());
        let scripts = ConstGauge::new(0i64);
        let mut family =
            encoder.encode_descriptor("setup_scripts", "Setup scripts by their state.", None, scripts.metric_type())?;
        for state in ScriptState::ALL {
            let count = report.scripts.iter().filter(|s| s.state == state).count() as i64;
            ConstGauge::new(count).encode(family.encode_family(&[("state", state.as_str())])?)?;
        }
        let took = ConstGauge::new(0.0f64);
        let mut family = encoder.encode_descriptor(
            "setup_script_duration_seconds",
            "How long each script's last run took (so far, while it runs).",
            None,
            took.metric_type(),
        )?;
        for script in &report.scripts {
            if let Some(seconds) = script.duration_seconds {
                ConstGauge::new(seconds).encode(family.encode_family(&[("script", script.name.as_str())])?)?;
            }
        }
        Ok(())
    }
}
