//! [`DistributionStatus`]: which roots every namespace's ConfigMap holds, as last seen through
//! the API server (a write's answer or a watch event), never as merely intended. The root
//! rotation's gate reads it: a new root may sign only once every namespace holds it.

use std::collections::BTreeMap;
use std::sync::Arc;

/// What the trust bundle ConfigMaps hold, namespace by namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DistributionStatus {
    /// Whether namespaces and ConfigMaps have been listed at least once; until then nothing is
    /// known and [`DistributionStatus::behind`] answers for no namespace.
    pub synced: bool,
    /// Every namespace that should hold the ConfigMap (not excluded, not terminating), with the
    /// SHA-256 fingerprints of the roots its ConfigMap holds (none when it has no ConfigMap or
    /// an unreadable one).
    pub namespaces: BTreeMap<String, Arc<[String]>>,
}

impl DistributionStatus {
    /// The namespaces whose ConfigMap does not hold the root with this fingerprint, in name
    /// order.
    pub fn behind(&self, root_fingerprint: &str) -> Vec<&str> {
        self.namespaces
            .iter()
            .filter(|(_, held)| !held.iter().any(|f| f == root_fingerprint))
            .map(|(namespace, _)| namespace.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_without_the_root_are_behind() {
        let status = DistributionStatus {
            synced: true,
            namespaces: BTreeMap::from([
                (
                    "a".to_owned(),
                    Arc::from(["old".to_owned(), "new".to_owned()]),
                ),
                ("b".to_owned(), Arc::from(["old".to_owned()])),
                ("c".to_owned(), Arc::from([])),
            ]),
        };
        assert_eq!(status.behind("new"), ["b", "c"]);
        assert_eq!(status.behind("old"), ["c"]);
    }
}
