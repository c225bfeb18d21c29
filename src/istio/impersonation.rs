//! Node-agent impersonation: ztunnel asks for the certificates of the workloads on its node
//! (request metadata `ImpersonatedIdentity: spiffe://…/ns/<ns>/sa/<sa>`), and [`NodeAuthorizer`]
//! lets it only for identities that run on that node now.
//!
//! The rules, in the order they are checked (the first that fails is the reason given):
//! 1. the caller is one of `istio.trustedNodeAgents` (default `istio-system/ztunnel`);
//! 2. it authenticated with a service-account token, not a client certificate: only the
//!    token's review names the caller's pod;
//! 3. the token is bound to a pod (a projected token: the TokenReview's extra fields);
//! 4. the identity asked for is in the caller's trust domain;
//! 5. that pod exists now, with the token's UID (when the token names one), runs as the
//!    caller's service account, is scheduled on a node — the token's node when the token names
//!    one — and has not finished;
//! 6. a pod of the identity asked for (its namespace and service account) is scheduled on that
//!    same node and has not finished.
//!
//! Pods are looked up through [`PodDirectory`] on every check, nothing cached (see
//! `crate::kubernetes::KubePodDirectory` for why); the lookups of one check are bounded in
//! time ([`NodeAuthorizer::LOOKUP_TIMEOUT`]) and in number across checks
//! ([`NodeAuthorizer::MAX_CONCURRENT_CHECKS`]).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use meshca_provider::SpiffeId;

use super::caller::{Caller, CallerKind, ImpersonationCheck, ImpersonationDenied};
use crate::kubernetes::{PodDirectory, PodLookupError};

/// How many impersonations were allowed and denied since start: for the Istio CA metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImpersonationStats {
    /// Checks that allowed the certificate.
    pub allowed: u64,
    /// Checks that refused it.
    pub denied: u64,
}

/// The [`ImpersonationCheck`] for node agents: see the module documentation for the rules.
pub struct NodeAuthorizer {
    trusted: Vec<SpiffeId>,
    pods: Arc<dyn PodDirectory>,
    checks: tokio::sync::Semaphore,
    lookup_timeout: Duration,
    allowed: AtomicU64,
    denied: AtomicU64,
}

impl NodeAuthorizer {
    /// The pod lookups of one check must finish within this, or it is refused.
    pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
    /// Checks looking pods up at once; further ones wait (within their timeout).
    pub const MAX_CONCURRENT_CHECKS: usize = 16;

    /// Lets the node agents `trusted` (`istio.trustedNodeAgents`) impersonate identities that
    /// `pods` says run on their node.
    pub fn new(trusted: Vec<SpiffeId>, pods: Arc<dyn PodDirectory>) -> Self {
        Self {
            trusted,
            pods,
            checks: tokio::sync::Semaphore::new(Self::MAX_CONCURRENT_CHECKS),
            lookup_timeout: Self::LOOKUP_TIMEOUT,
            allowed: AtomicU64::new(0),
            denied: AtomicU64::new(0),
        }
    }

    /// Changes how long the pod lookups of one check may take.
    #[must_use]
    pub fn with_lookup_timeout(mut self, timeout: Duration) -> Self {
        self.lookup_timeout = timeout;
        self
    }

    /// Impersonations allowed and denied so far.
    pub fn stats(&self) -> ImpersonationStats {
        ImpersonationStats {
            allowed: self.allowed.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
        }
    }

    /// `Ok` when `caller` may have `target`'s certificate, else the reason.
    async fn check(&self, caller: &Caller, target: &SpiffeId) -> Result<(), String> {
        if !self.trusted.contains(&caller.identity) {
            return Err(format!(
                "{} is not a trusted node agent: only the identities listed in \
                 istio.trustedNodeAgents may ask for another identity's certificate (add it \
                 there if it is a node agent such as ztunnel)",
                caller.identity.short()
            ));
        }
        if caller.kind != CallerKind::Token {
            return Err(format!(
                "a caller authenticated by {} cannot impersonate: a certificate names no pod or \
                 node; a node agent must authenticate with its projected service-account token, \
                 as ztunnel does",
                caller.kind.as_str()
            ));
        }
        let Some(binding) = &caller.pod else {
            return Err(
                "the token is not bound to a pod: use a projected service-account token \
                        (a serviceAccountToken volume), which the API server binds to the pod it \
                        is mounted in"
                    .to_owned(),
            );
        };
        if target.trust_domain() != caller.identity.trust_domain() {
            return Err(format!(
                "{target} is outside trust domain {}: a node agent may only ask for identities \
                 of its own trust domain",
                caller.identity.trust_domain()
            ));
        }
        let lookups = async {
            #[allow(
                clippy::expect_used,
                reason = "acquire fails only on a closed semaphore, and nothing closes this one"
            )]
            let _slot = self
                .checks
                .acquire()
                .await
                .expect("the check semaphore is never closed");
            let node = self.caller_node(&caller.identity, binding).await?;
            let found = self
                .pods
                .running_on_node(target.namespace(), target.service_account(), &node)
                .await
                .map_err(unavailable)?;
            match found {
                Some(_) => Ok(()),
                None => Err(format!(
                    "no running pod of service account {} is scheduled on node {node}, the \
                     caller's node: a node agent may only ask for the identities of workloads on \
                     its own node (if the pod was just scheduled there, retry)",
                    target.short()
                )),
            }
        };
        match tokio::time::timeout(self.lookup_timeout, lookups).await {
            Ok(answer) => answer,
            Err(_) => Err(format!(
                "the Kubernetes API did not answer the pod lookups within {:?}: check the API \
                 server's health and meshca's connection to it; retry",
                self.lookup_timeout
            )),
        }
    }

    /// The node of the caller's own pod, after checking that pod is the token's, runs as the
    /// caller and is still running somewhere.
    async fn caller_node(
        &self,
        caller: &SpiffeId,
        binding: &super::caller::PodBinding,
    ) -> Result<String, String> {
        let namespace = caller.namespace();
        let name = &binding.name;
        let pod = self
            .pods
            .pod(namespace, name)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                format!(
                    "the token is bound to pod {namespace}/{name}, which does not exist: the token \
                     belongs to a deleted pod; use the token mounted in the current pod"
                )
            })?;
        if let (Some(want), Some(have)) = (&binding.uid, &pod.uid)
            && want != have
        {
            return Err(format!(
                "the token is bound to pod {namespace}/{name} with UID {want}, but that pod now \
                 has UID {have}: it was re-created; use the token mounted in the current pod"
            ));
        }
        if binding.uid.is_some() && pod.uid.is_none() {
            return Err(format!(
                "pod {namespace}/{name} has no UID to compare with the token's: check the API \
                 server"
            ));
        }
        if pod.service_account.as_deref() != Some(caller.service_account()) {
            return Err(format!(
                "pod {namespace}/{name} runs as service account {}, not {}: the token does not \
                 speak for it",
                pod.service_account.as_deref().unwrap_or("(none)"),
                caller.service_account()
            ));
        }
        if pod.has_finished() {
            return Err(format!(
                "pod {namespace}/{name} has finished ({}): it no longer speaks for a node",
                pod.phase.as_deref().unwrap_or_default()
            ));
        }
        let Some(node) = pod.node else {
            return Err(format!(
                "pod {namespace}/{name} is not scheduled on a node yet: retry once it runs"
            ));
        };
        if let Some(token_node) = &binding.node
            && *token_node != node
        {
            return Err(format!(
                "the token names node {token_node}, but pod {namespace}/{name} is on node {node}: \
                 use the token mounted in the current pod"
            ));
        }
        Ok(node)
    }
}

/// A lookup that could not be made: the impersonation is refused (never allowed on doubt).
fn unavailable(error: PodLookupError) -> String {
    format!("the caller's node could not be checked: {error}; retry")
}

#[async_trait]
impl ImpersonationCheck for NodeAuthorizer {
    async fn authorize(
        &self,
        caller: &Caller,
        target: &SpiffeId,
    ) -> Result<(), ImpersonationDenied> {
        match self.check(caller, target).await {
            Ok(()) => {
                self.allowed.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(reason) => {
                self.denied.fetch_add(1, Ordering::Relaxed);
                Err(ImpersonationDenied {
                    caller: caller.identity.to_string(),
                    target: target.to_string(),
                    reason,
                })
            }
        }
    }
}

impl fmt::Debug for NodeAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeAuthorizer")
            .field("trusted", &self.trusted)
            .field("lookup_timeout", &self.lookup_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use meshca_provider::TrustDomain;

    use super::super::caller::PodBinding;
    use super::*;
    use crate::kubernetes::PodInfo;

    /// Pods by namespace/name; `fail` makes every lookup fail; `hang` never answers.
    #[derive(Default)]
    struct FakePods {
        pods: Mutex<HashMap<(String, String), PodInfo>>,
        fail: bool,
        hang: bool,
    }

    impl FakePods {
        fn with(pods: &[PodInfo]) -> Self {
            let fake = Self::default();
            for pod in pods {
                fake.put(pod.clone());
            }
            fake
        }

        fn put(&self, pod: PodInfo) {
            self.pods
                .lock()
                .unwrap()
                .insert((pod.namespace.clone(), pod.name.clone()), pod);
        }

        async fn misbehave(&self) -> Result<(), PodLookupError> {
            if self.hang {
                std::future::pending::<()>().await;
            }
            if self.fail {
                return Err(PodLookupError::Unavailable {
                    reason: "could not get pods: connection refused".into(),
                });
            }
            Ok(())
        }
    }

    #[async_trait]
    impl PodDirectory for FakePods {
        async fn pod(
            &self,
            namespace: &str,
            name: &str,
        ) -> Result<Option<PodInfo>, PodLookupError> {
            self.misbehave().await?;
            let pods = self.pods.lock().unwrap();
            Ok(pods.get(&(namespace.to_owned(), name.to_owned())).cloned())
        }

        async fn running_on_node(
            &self,
            namespace: &str,
            service_account: &str,
            node: &str,
        ) -> Result<Option<PodInfo>, PodLookupError> {
            self.misbehave().await?;
            let pods = self.pods.lock().unwrap();
            Ok(pods
                .values()
                .find(|p| {
                    p.namespace == namespace
                        && p.service_account.as_deref() == Some(service_account)
                        && p.node.as_deref() == Some(node)
                        && !p.has_finished()
                })
                .cloned())
        }
    }

    fn id(short: &str) -> SpiffeId {
        SpiffeId::from_short(short, &TrustDomain::default()).unwrap()
    }

    fn pod(namespace: &str, name: &str, service_account: &str, node: &str) -> PodInfo {
        PodInfo {
            namespace: namespace.into(),
            name: name.into(),
            uid: Some(format!("uid-{name}")),
            service_account: Some(service_account.into()),
            node: Some(node.into()),
            phase: Some("Running".into()),
        }
    }

    fn ztunnel_pod() -> PodInfo {
        pod("istio-system", "ztunnel-abc", "ztunnel", "node-1")
    }

    /// ztunnel's token, bound to its pod on node-1.
    fn ztunnel() -> Caller {
        Caller {
            identity: id("istio-system/ztunnel"),
            kind: CallerKind::Token,
            pod: Some(PodBinding {
                name: "ztunnel-abc".into(),
                uid: Some("uid-ztunnel-abc".into()),
                node: Some("node-1".into()),
            }),
        }
    }

    fn authorizer(pods: FakePods) -> NodeAuthorizer {
        NodeAuthorizer::new(vec![id("istio-system/ztunnel")], Arc::new(pods))
    }

    /// The reason `caller` is refused `target`, with the standard pods (ztunnel on node-1, a
    /// pod of ns1/sa1 on node-1, one of ns2/sa2 on node-2) plus `extra`.
    async fn refusal(caller: &Caller, target: &str, extra: &[PodInfo]) -> String {
        let pods = FakePods::with(&[
            ztunnel_pod(),
            pod("ns1", "app-1", "sa1", "node-1"),
            pod("ns2", "app-2", "sa2", "node-2"),
        ]);
        for pod in extra {
            pods.put(pod.clone());
        }
        let authorizer = authorizer(pods);
        let target = target.parse().unwrap();
        let denied = authorizer.authorize(caller, &target).await.unwrap_err();
        assert_eq!(denied.caller, caller.identity.to_string());
        assert_eq!(denied.target, target.to_string());
        assert_eq!(authorizer.stats().denied, 1);
        assert_eq!(authorizer.stats().allowed, 0);
        denied.reason
    }

    const SA1: &str = "spiffe://cluster.local/ns/ns1/sa/sa1";

    #[tokio::test]
    async fn a_node_agent_gets_an_identity_running_on_its_node() {
        let authorizer = authorizer(FakePods::with(&[
            ztunnel_pod(),
            pod("ns1", "app-1", "sa1", "node-1"),
        ]));
        authorizer
            .authorize(&ztunnel(), &SA1.parse().unwrap())
            .await
            .unwrap();
        // A token without UID or node (older API servers) is checked against the pod alone.
        let mut unbound_details = ztunnel();
        unbound_details.pod = Some(PodBinding {
            name: "ztunnel-abc".into(),
            uid: None,
            node: None,
        });
        authorizer
            .authorize(&unbound_details, &SA1.parse().unwrap())
            .await
            .unwrap();
        assert_eq!(
            authorizer.stats(),
            ImpersonationStats {
                allowed: 2,
                denied: 0
            }
        );
    }

    #[tokio::test]
    async fn an_identity_on_another_node_is_refused() {
        let reason = refusal(&ztunnel(), "spiffe://cluster.local/ns/ns2/sa/sa2", &[]).await;
        assert!(
            reason.contains("no running pod of service account ns2/sa2")
                && reason.contains("node node-1"),
            "{reason}"
        );
        // A finished pod of the identity on the node does not count.
        let mut done = pod("ns2", "job-2", "sa2", "node-1");
        done.phase = Some("Succeeded".into());
        let reason = refusal(&ztunnel(), "spiffe://cluster.local/ns/ns2/sa/sa2", &[done]).await;
        assert!(reason.contains("no running pod"), "{reason}");
        // Nor does a pod of the same service account name in another namespace.
        let reason = refusal(&ztunnel(), "spiffe://cluster.local/ns/ns3/sa/sa1", &[]).await;
        assert!(reason.contains("ns3/sa1"), "{reason}");
    }

    #[tokio::test]
    async fn an_untrusted_caller_is_refused_naming_the_setting() {
        let mut caller = ztunnel();
        caller.identity = id("ns1/sa1");
        let reason = refusal(&caller, SA1, &[]).await;
        assert!(
            reason.contains("ns1/sa1 is not a trusted node agent")
                && reason.contains("istio.trustedNodeAgents"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_client_certificate_caller_cannot_impersonate() {
        let caller = Caller {
            identity: id("istio-system/ztunnel"),
            kind: CallerKind::ClientCertificate,
            pod: None,
        };
        let reason = refusal(&caller, SA1, &[]).await;
        assert!(
            reason.contains("client-certificate cannot impersonate")
                && reason.contains("projected service-account token"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_token_bound_to_no_pod_is_refused() {
        let mut caller = ztunnel();
        caller.pod = None;
        let reason = refusal(&caller, SA1, &[]).await;
        assert!(
            reason
                .contains("the token is not bound to a pod: use a projected service-account token"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn another_trust_domain_is_refused() {
        let reason = refusal(&ztunnel(), "spiffe://evil.example/ns/ns1/sa/sa1", &[]).await;
        assert!(
            reason.contains("outside trust domain cluster.local"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn the_callers_pod_must_be_the_tokens_and_running_on_a_node() {
        let binding = |uid: Option<&str>, node: Option<&str>| PodBinding {
            name: "ztunnel-abc".into(),
            uid: uid.map(str::to_owned),
            node: node.map(str::to_owned),
        };
        let with = |binding: PodBinding| Caller {
            pod: Some(binding),
            ..ztunnel()
        };
        // Gone: bound to a pod that no longer exists.
        let mut gone = ztunnel();
        gone.pod = Some(PodBinding {
            name: "ztunnel-old".into(),
            ..binding(None, None)
        });
        let reason = refusal(&gone, SA1, &[]).await;
        assert!(
            reason.contains("istio-system/ztunnel-old, which does not exist"),
            "{reason}"
        );
        // Re-created under the same name: the UID differs.
        let reason = refusal(&with(binding(Some("uid-old"), None)), SA1, &[]).await;
        assert!(
            reason.contains("UID uid-old") && reason.contains("re-created"),
            "{reason}"
        );
        // The pod runs as another service account.
        let mut impostor = ztunnel_pod();
        impostor.service_account = Some("default".into());
        let reason = refusal(&ztunnel(), SA1, &[impostor]).await;
        assert!(
            reason.contains("runs as service account default, not ztunnel"),
            "{reason}"
        );
        // Not scheduled yet.
        let mut pending = ztunnel_pod();
        pending.node = None;
        pending.phase = Some("Pending".into());
        let reason = refusal(&with(binding(None, None)), SA1, &[pending]).await;
        assert!(reason.contains("not scheduled on a node yet"), "{reason}");
        // Finished.
        let mut failed = ztunnel_pod();
        failed.phase = Some("Failed".into());
        let reason = refusal(&ztunnel(), SA1, &[failed]).await;
        assert!(reason.contains("has finished (Failed)"), "{reason}");
        // The token's node is not the pod's.
        let reason = refusal(&with(binding(None, Some("node-2"))), SA1, &[]).await;
        assert!(
            reason.contains("the token names node node-2") && reason.contains("on node node-1"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_api_denies_with_that_reason() {
        let pods = FakePods {
            fail: true,
            ..FakePods::default()
        };
        let denied = authorizer(pods)
            .authorize(&ztunnel(), &SA1.parse().unwrap())
            .await
            .unwrap_err();
        assert!(
            denied.reason.contains("could not be checked")
                && denied.reason.contains("connection refused"),
            "{}",
            denied.reason
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_api_that_does_not_answer_denies_after_the_timeout() {
        let pods = FakePods {
            hang: true,
            ..FakePods::default()
        };
        let denied = authorizer(pods)
            .authorize(&ztunnel(), &SA1.parse().unwrap())
            .await
            .unwrap_err();
        assert!(
            denied
                .reason
                .contains("did not answer the pod lookups within 5s"),
            "{}",
            denied.reason
        );
    }
}
