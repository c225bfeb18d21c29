//! Connecting to the Kubernetes API server, for everything meshca keeps or asks there (the CA
//! bundle Secret, managed TLS Secrets, TokenReviews, CertificateRequests).

pub mod managed_secret;
mod token_review;
mod vault_token;

pub use managed_secret::{
    ListedSecret, ManagedSecretError, ManagedTlsSecret, SecretRef, TlsMaterial, TlsSecretWriter,
    Written, list_managed,
};
pub use token_review::TokenReviewAuthenticator;
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
