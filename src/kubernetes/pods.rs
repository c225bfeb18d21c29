//! Pods as the API server reports them now: where node-agent impersonation (ztunnel asking for
//! the certificates of the workloads on its node) learns which pod a caller is and which
//! workloads run beside it.
//!
//! [`PodDirectory`] is the seam (the Istio CA's `NodeAuthorizer` is tested over a fake of it);
//! [`KubePodDirectory`] asks the API server on every call. Nothing is cached: an answer that
//! outlived a pod's deletion or rescheduling would hand its node's agent an identity that no
//! longer runs there, and the calls are few (one impersonation per workload certificate and
//! renewal, made only after the caller proved it is a trusted node agent).

use std::fmt;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

/// What node-agent impersonation needs to know of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID (`metadata.uid`).
    pub uid: Option<String>,
    /// The service account it runs as (`spec.serviceAccountName`).
    pub service_account: Option<String>,
    /// The node it is scheduled on (`spec.nodeName`); `None` until the scheduler placed it.
    pub node: Option<String>,
    /// `status.phase`: Pending, Running, Succeeded, Failed or Unknown.
    pub phase: Option<String>,
}

impl PodInfo {
    /// What `pod` says of itself.
    pub fn from_pod(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        Self {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone(),
            service_account: spec.and_then(|s| s.service_account_name.clone()),
            node: spec
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            phase: pod.status.as_ref().and_then(|s| s.phase.clone()),
        }
    }

    /// Succeeded or Failed: its containers will not run again, so it speaks for nobody.
    pub fn has_finished(&self) -> bool {
        matches!(self.phase.as_deref(), Some("Succeeded" | "Failed"))
    }
}

/// Why pods could not be looked up.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PodLookupError {
    /// The API server could not be asked, refused, or answered nonsense.
    #[error("{reason}")]
    Unavailable {
        /// What went wrong and what to check.
        reason: String,
    },
    /// More pods matched than meshca looks through in one check.
    #[error(
        "more than {looked_at} pods in namespace {namespace} on node {node} matched without one \
         running as the service account: meshca stops looking there"
    )]
    TooMany {
        /// The namespace listed.
        namespace: String,
        /// The node.
        node: String,
        /// How many pods were looked at.
        looked_at: usize,
    },
}

/// Looks pods up as the API server reports them now.
///
/// Obligations: MUST answer from the API server's current state (or a view at most a few
/// seconds old), never from what a caller said; MUST bound the work one call does.
#[async_trait]
pub trait PodDirectory: Send + Sync + 'static {
    /// The pod `namespace/name`, or `None` when there is none.
    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<PodInfo>, PodLookupError>;

    /// A pod of `namespace` running as `service_account`, scheduled on `node` and not finished,
    /// or `None` when there is none.
    async fn running_on_node(
        &self,
        namespace: &str,
        service_account: &str,
        node: &str,
    ) -> Result<Option<PodInfo>, PodLookupError>;
}

/// [`PodDirectory`] over the Kubernetes API: a GET for one pod, a field-selected LIST for the
/// pods on a node. meshca's ServiceAccount needs `get` and `list` on `pods` (a ClusterRole:
/// workloads live in every namespace).
#[derive(Clone)]
pub struct KubePodDirectory {
    client: kube::Client,
}

impl KubePodDirectory {
    /// Pods asked for per LIST page.
    pub const PAGE_SIZE: u32 = 100;
    /// LIST pages read at most per check: the API server filters by node, service account and
    /// phase, so the first page normally holds the answer; the cap only bounds a server that
    /// ignores the selector.
    pub const MAX_PAGES: usize = 10;

    /// Looks pods up with `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl fmt::Debug for KubePodDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubePodDirectory").finish_non_exhaustive()
    }
}

#[async_trait]
impl PodDirectory for KubePodDirectory {
    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<PodInfo>, PodLookupError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = api
            .get_opt(name)
            .await
            .map_err(|e| lookup_failed("get", namespace, e))?;
        Ok(pod.as_ref().map(PodInfo::from_pod))
    }

    async fn running_on_node(
        &self,
        namespace: &str,
        service_account: &str,
        node: &str,
    ) -> Result<Option<PodInfo>, PodLookupError> {
        if !selector_safe(service_account) || !selector_safe(node) {
            // Not object names: no pod has them.
            return Ok(None);
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        // The API server does the filtering; each pod is still checked here, so a server that
        // ignores part of the selector cannot make a wrong answer.
        let selector = format!(
            "spec.nodeName={node},spec.serviceAccountName={service_account},\
             status.phase!=Succeeded,status.phase!=Failed"
        );
        let mut params = ListParams::default()
            .fields(&selector)
            .limit(Self::PAGE_SIZE);
        let mut looked_at = 0;
        for _ in 0..Self::MAX_PAGES {
            let page = api
                .list(&params)
                .await
                .map_err(|e| lookup_failed("list", namespace, e))?;
            looked_at += page.items.len();
            let found = page.items.iter().map(PodInfo::from_pod).find(|pod| {
                pod.node.as_deref() == Some(node)
                    && pod.service_account.as_deref() == Some(service_account)
                    && !pod.has_finished()
            });
            if found.is_some() {
                return Ok(found);
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(None),
            }
        }
        Err(PodLookupError::TooMany {
            namespace: namespace.to_owned(),
            node: node.to_owned(),
            looked_at,
        })
    }
}

/// A value that can stand in a field selector as written: object names can; `,` `=` `!` `\`
/// would change the selector's meaning.
fn selector_safe(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Explains a failed pod lookup (`verb`: get, list) in `namespace`: what went wrong and what to
/// check. Carries only the API server's status message or the transport error.
fn lookup_failed(verb: &str, namespace: &str, error: kube::Error) -> PodLookupError {
    let reason = match error {
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => format!(
            "the API server refused to {verb} pods in namespace {namespace} ({} {}): meshca's \
             ServiceAccount needs get and list on pods (ClusterRole)",
            status.code, status.message
        ),
        kube::Error::Api(status) => format!(
            "the API server answered {} {} to {verb} pods in namespace {namespace} ({}): check \
             the API server's health",
            status.code, status.reason, status.message
        ),
        kube::Error::SerdeError(e) => format!(
            "the API server's answer to {verb} pods is not a pod (line {}, column {}): check that \
             meshca talks to a Kubernetes API server",
            e.line(),
            e.column()
        ),
        other => format!(
            "could not {verb} pods in namespace {namespace}: {other}: check that the Kubernetes \
             API server is reachable from meshca"
        ),
    };
    PodLookupError::Unavailable { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_go_into_a_field_selector() {
        assert!(selector_safe("node-1.example"));
        assert!(selector_safe("sa1"));
        for bad in ["", "a,b", "a=b", "a!=b", "a\\,b", "a b"] {
            assert!(!selector_safe(bad), "{bad:?}");
        }
    }

    #[test]
    fn finished_pods_are_succeeded_or_failed() {
        let phase = |p: Option<&str>| PodInfo {
            phase: p.map(str::to_owned),
            ..PodInfo::default()
        };
        assert!(phase(Some("Succeeded")).has_finished());
        assert!(phase(Some("Failed")).has_finished());
        for running in [Some("Running"), Some("Pending"), Some("Unknown"), None] {
            assert!(!phase(running).has_finished(), "{running:?}");
        }
    }
}
