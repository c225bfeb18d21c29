//! Connecting to the Kubernetes API server, for everything meshca keeps or asks there (the CA
//! bundle Secret, managed TLS Secrets, TokenReviews, CertificateRequests, the pods node-agent
//! impersonation checks).

pub mod managed_secret;
mod pods;
mod token_review;
pub mod trust_distribution;
mod vault_token;

pub use managed_secret::{
    ListedSecret, ManagedSecretError, ManagedTlsSecret, Replaced, SecretRef, TlsMaterial,
    TlsSecretWriter, Written, list_managed,
};
pub use pods::{KubePodDirectory, PodDirectory, PodInfo, PodLookupError};
pub use token_review::TokenReviewAuthenticator;
pub use trust_distribution::TrustDistribution;
pub use vault_token::SecretTokenSource;

use anyhow::Context as _;

/// A client for the API server meshca runs against: the pod's ServiceAccount when running in
/// a cluster, otherwise `$KUBECONFIG` or `~/.kube/config` (its current context).
pub async fn connect() -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer().await.context(
        "cannot find Kubernetes credentials: in a pod meshca uses its ServiceAccount; elsewhere \
         set KUBECONFIG or create ~/.kube/config (kubectl must work with the same settings)",
    )?;
    let server = config.cluster_url.to_string();
    kube::Client::try_from(config)
        .with_context(|| format!("cannot set up a client for the Kubernetes API at {server}"))
}

/// Explains a failed request (`verb`: get, create, update…) on Secrets in `namespace`: what went
/// wrong and what to check, `rbac` saying which permissions meshca needs there. Carries only the
/// API server's status message or the transport error, never a Secret's data.
pub(crate) fn explain_secret_error(
    verb: &str,
    namespace: &str,
    rbac: &str,
    error: kube::Error,
) -> String {
    match error {
        kube::Error::Api(status) => match status.code {
            401 => format!(
                "the API server rejected meshca's credentials on {verb} ({}): check the \
                 ServiceAccount token mounted into the pod, or the kubeconfig",
                status.message
            ),
            403 => format!(
                "the API server forbade {verb} ({}): check RBAC: {rbac}",
                status.message
            ),
            404 => format!(
                "the API server answered 404 to {verb} ({}): check that namespace {namespace} \
                 exists",
                status.message
            ),
            code => format!(
                "the API server answered {code} {} to {verb} ({}): check the API server's \
                 health and retry; {rbac}",
                status.reason, status.message
            ),
        },
        kube::Error::SerdeError(e) => format!(
            "the API server's answer to {verb} is not a Secret (line {}, column {}): check that \
             meshca talks to a Kubernetes API server",
            e.line(),
            e.column()
        ),
        other => format!(
            "could not {verb} the Secret: {other}: check that the Kubernetes API server is \
             reachable from meshca (address, network policy, TLS)"
        ),
    }
}
