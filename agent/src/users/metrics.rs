//! The registry's Prometheus metric: accounts by their state here, so an
//! alert can fire on a conflict on any VM of the pool.

use super::Users;

pub(super) struct UsersMetrics(pub(super) Users);

impl std::fmt::Debug for UsersMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UsersMetrics")
    }
}

/// The states counted, as the metric's `state` label.
pub(super) const STATES: [&str; 6] = ["created", "present", "locked", "missing", "conflict", "error"];

/// The label an account's state counts under.
pub(super) fn label(state: &str) -> &'static str {
    STATES.into_iter().find(|s| state == *s || state.starts_with(&format!("{s}:"))).unwrap_or("error")
}

impl prometheus_client::collector::Collector for UsersMetrics {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        let report = self.0.report();
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "users_accounts",
            "Registry accounts by their state on this VM.",
            None,
            gauge.metric_type(),
        )?;
        for state in STATES {
            let count = report.accounts.iter().filter(|a| label(&a.state) == state).count();
            ConstGauge::new(count as i64).encode(family.encode_family(&[("state", state)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_shown_counts_under_one_label() {
        assert_eq!(label("created"), "created");
        assert_eq!(label("conflict: local account bob has uid 1002"), "conflict");
        assert_eq!(label("error: useradd exited with 4"), "error");
        assert_eq!(label("locked"), "locked");
        assert_eq!(label("something new"), "error");
    }
}
