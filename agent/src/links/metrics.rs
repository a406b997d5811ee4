//! The links' Prometheus metrics: users by the state of their link, and how
//! long the last pass took.

use super::report::LinkState;
use super::Links;

pub(super) struct LinksMetrics(pub(super) Links);

impl std::fmt::Debug for LinksMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinksMetrics")
    }
}

impl prometheus_client::collector::Collector for LinksMetrics {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        let report = self.0.report();
        let users = ConstGauge::new(0i64);
        let mut family =
            encoder.encode_descriptor("links_users", "Users by the state of their link.", None, users.metric_type())?;
        for state in LinkState::ALL {
            ConstGauge::new(report.count(state) as i64).encode(family.encode_family(&[("state", state.as_str())])?)?;
        }
        let took = ConstGauge::new(report.last_sync_ms / 1000.0);
        took.encode(encoder.encode_descriptor(
            "links_last_sync_duration_seconds",
            "How long the last pass over every user took.",
            None,
            took.metric_type(),
        )?)?;
        Ok(())
    }
}
