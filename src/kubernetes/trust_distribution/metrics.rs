//! [`DistributionMetrics`]: what the trust distribution did and whether it is current, exported
//! on `/metrics` (names prefixed `meshca_trust_distribution_`): objects written by kind and
//! action, failed writes by kind, the namespaces served and those behind, when each kind last
//! held the served bundle everywhere, and whether it does now. Plain atomics, set by the
//! publisher tasks and read at scrape time. docs/OPERATIONS.md lists them with the alerts.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// What is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The trust bundle ConfigMap of each namespace.
    ConfigMap,
    /// The ClusterTrustBundle.
    ClusterTrustBundle,
}

impl Kind {
    const ALL: [Self; 2] = [Self::ConfigMap, Self::ClusterTrustBundle];

    fn as_str(self) -> &'static str {
        match self {
            Self::ConfigMap => "config_map",
            Self::ClusterTrustBundle => "cluster_trust_bundle",
        }
    }
}

/// What a successful write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Created an object that was not there yet.
    Created,
    /// Replaced an object holding an older bundle (a bundle change, or one found out of date).
    Updated,
    /// Put back an object that held the current bundle until it was edited or deleted.
    Restored,
}

impl Action {
    const ALL: [Self; 3] = [Self::Created, Self::Updated, Self::Restored];

    fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Restored => "restored",
        }
    }

    /// A write that created (`created`) or replaced an object, `restoring` one that held the
    /// current bundle before.
    pub(crate) fn of_write(created: bool, restoring: bool) -> Self {
        match (restoring, created) {
            (true, _) => Self::Restored,
            (false, true) => Self::Created,
            (false, false) => Self::Updated,
        }
    }
}

/// The trust distribution's figures; one per [`super::Running`].
#[derive(Debug, Default)]
pub struct DistributionMetrics {
    config_map: KindFigures,
    cluster_trust_bundle: KindFigures,
    /// Namespaces that should hold the ConfigMap (not excluded, not terminating).
    namespaces: AtomicU64,
    /// Of those, the ones whose ConfigMap does not hold the served bundle.
    namespaces_behind: AtomicU64,
}

#[derive(Debug, Default)]
struct KindFigures {
    /// Exported only when this kind is enabled.
    enabled: AtomicBool,
    written: [AtomicU64; 3],
    write_failures: AtomicU64,
    current: AtomicBool,
    /// Unix seconds; 0: never.
    last_current: AtomicU64,
}

/// A copy of [`DistributionMetrics`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DistributionMetricsSnapshot {
    /// The ConfigMaps' figures, when they are enabled.
    pub config_map: Option<KindSnapshot>,
    /// The ClusterTrustBundle's figures, when it is enabled.
    pub cluster_trust_bundle: Option<KindSnapshot>,
    /// Namespaces that should hold the ConfigMap.
    pub namespaces: u64,
    /// Of those, the ones whose ConfigMap does not hold the served bundle.
    pub namespaces_behind: u64,
}

/// One kind's figures at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KindSnapshot {
    /// Objects created.
    pub created: u64,
    /// Objects replaced to hold a newer bundle.
    pub updated: u64,
    /// Objects put back after they were edited or deleted.
    pub restored: u64,
    /// Writes the API server refused or that did not reach it.
    pub write_failures: u64,
    /// Whether every object of this kind holds the served bundle now.
    pub current: bool,
    /// When a pass last found every object holding the served bundle (Unix seconds; 0: never).
    pub last_current_unix_seconds: u64,
}

impl DistributionMetrics {
    fn figures(&self, kind: Kind) -> &KindFigures {
        match kind {
            Kind::ConfigMap => &self.config_map,
            Kind::ClusterTrustBundle => &self.cluster_trust_bundle,
        }
    }

    pub(crate) fn enable(&self, kind: Kind) {
        self.figures(kind).enabled.store(true, Ordering::Relaxed);
    }

    pub(crate) fn written(&self, kind: Kind, action: Action) {
        let index = Action::ALL
            .iter()
            .position(|a| *a == action)
            .unwrap_or_default();
        self.figures(kind).written[index].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn write_failed(&self, kind: Kind) {
        self.figures(kind)
            .write_failures
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The outcome of a pass: whether every object of `kind` holds the served bundle. A pass
    /// that finds them all current also records the time.
    pub(crate) fn pass(&self, kind: Kind, current: bool) {
        let figures = self.figures(kind);
        figures.current.store(current, Ordering::Relaxed);
        if current {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            figures.last_current.store(now, Ordering::Relaxed);
        }
    }

    pub(crate) fn namespaces(&self, served: usize, behind: usize) {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        self.namespaces.store(count(served), Ordering::Relaxed);
        self.namespaces_behind
            .store(count(behind), Ordering::Relaxed);
    }

    /// Reads every figure.
    pub fn snapshot(&self) -> DistributionMetricsSnapshot {
        let kind = |kind: Kind| {
            let f = self.figures(kind);
            let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
            let [created, updated, restored] = f.written.each_ref().map(read);
            f.enabled.load(Ordering::Relaxed).then(|| KindSnapshot {
                created,
                updated,
                restored,
                write_failures: read(&f.write_failures),
                current: f.current.load(Ordering::Relaxed),
                last_current_unix_seconds: read(&f.last_current),
            })
        };
        DistributionMetricsSnapshot {
            config_map: kind(Kind::ConfigMap),
            cluster_trust_bundle: kind(Kind::ClusterTrustBundle),
            namespaces: self.namespaces.load(Ordering::Relaxed),
            namespaces_behind: self.namespaces_behind.load(Ordering::Relaxed),
        }
    }

    /// A Prometheus collector reading these figures at scrape time (for the admin listener's
    /// registry, whose prefix is `meshca`).
    pub fn collector(self: &Arc<Self>) -> Box<dyn Collector> {
        Box::new(Scrape(self.clone()))
    }
}

#[derive(Debug)]
struct Scrape(Arc<DistributionMetrics>);

type Labels = Vec<(&'static str, &'static str)>;

/// One metric family: its series, or nothing when there are none (a kind not enabled).
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, M)],
) -> fmt::Result {
    let Some((_, first)) = series.first() else {
        return Ok(());
    };
    let mut family = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, metric) in series {
        if labels.is_empty() {
            return metric.encode(family);
        }
        metric.encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = self.0.snapshot();
        let kinds: Vec<(Kind, KindSnapshot)> = Kind::ALL
            .into_iter()
            .zip([s.config_map, s.cluster_trust_bundle])
            .filter_map(|(kind, figures)| Some((kind, figures?)))
            .collect();
        let by_kind = |value: fn(&KindSnapshot) -> i64| -> Vec<(Labels, ConstGauge<i64>)> {
            kinds
                .iter()
                .map(|(kind, f)| (vec![("kind", kind.as_str())], ConstGauge::new(value(f))))
                .collect()
        };
        let e = &mut encoder;
        let writes: Vec<(Labels, ConstCounter<u64>)> = kinds
            .iter()
            .flat_map(|(kind, f)| {
                Action::ALL
                    .into_iter()
                    .zip([f.created, f.updated, f.restored])
                    .map(|(action, value)| {
                        (
                            vec![("kind", kind.as_str()), ("action", action.as_str())],
                            ConstCounter::new(value),
                        )
                    })
            })
            .collect();
        family(
            e,
            "trust_distribution_writes",
            "Trust bundle objects written, by kind and action (created, updated, restored).",
            &writes,
        )?;
        let failures: Vec<(Labels, ConstCounter<u64>)> = kinds
            .iter()
            .map(|(kind, f)| {
                (
                    vec![("kind", kind.as_str())],
                    ConstCounter::new(f.write_failures),
                )
            })
            .collect();
        family(
            e,
            "trust_distribution_write_failures",
            "Trust bundle object writes that failed (retried with backoff), by kind.",
            &failures,
        )?;
        family(
            e,
            "trust_distribution_current",
            "1 when every trust bundle object of the kind holds the bundle meshca serves now.",
            &by_kind(|f| i64::from(f.current)),
        )?;
        family(
            e,
            "trust_distribution_last_current_timestamp_seconds",
            "When a pass last found every object of the kind holding the served bundle (Unix \
             time; 0: never). Advances at least every trustDistribution.resyncInterval while \
             all is well.",
            &by_kind(|f| i64::try_from(f.last_current_unix_seconds).unwrap_or(i64::MAX)),
        )?;
        if s.config_map.is_some() {
            let gauge = |n: u64| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
            family(
                e,
                "trust_distribution_namespaces",
                "Namespaces that get the trust bundle ConfigMap (not excluded, not terminating).",
                &[(Vec::new(), gauge(s.namespaces))],
            )?;
            family(
                e,
                "trust_distribution_namespaces_behind",
                "Namespaces whose trust bundle ConfigMap does not hold the served bundle.",
                &[(Vec::new(), gauge(s.namespaces_behind))],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_write_that_puts_back_a_current_object_is_a_restore() {
        assert_eq!(Action::of_write(true, false), Action::Created);
        assert_eq!(Action::of_write(false, false), Action::Updated);
        assert_eq!(Action::of_write(true, true), Action::Restored);
        assert_eq!(Action::of_write(false, true), Action::Restored);
    }

    #[test]
    fn only_enabled_kinds_are_exported() {
        let metrics = Arc::new(DistributionMetrics::default());
        metrics.enable(Kind::ClusterTrustBundle);
        metrics.written(Kind::ClusterTrustBundle, Action::Created);
        metrics.write_failed(Kind::ClusterTrustBundle);
        metrics.pass(Kind::ClusterTrustBundle, true);
        let mut registry = prometheus_client::registry::Registry::with_prefix("meshca");
        registry.register_collector(metrics.collector());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "meshca_trust_distribution_writes_total{kind=\"cluster_trust_bundle\",action=\"created\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "meshca_trust_distribution_write_failures_total{kind=\"cluster_trust_bundle\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("meshca_trust_distribution_current{kind=\"cluster_trust_bundle\"} 1"),
            "{text}"
        );
        assert!(!text.contains("config_map"), "{text}");
        assert!(!text.contains("namespaces"), "{text}");
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.config_map, None);
        assert!(
            snapshot
                .cluster_trust_bundle
                .is_some_and(|f| f.last_current_unix_seconds > 0)
        );
    }
}
