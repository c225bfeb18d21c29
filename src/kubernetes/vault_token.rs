//! The Vault token kept in a Kubernetes Secret (`vault.secret.name` / `vault.secret.key`), read
//! for the Vault provider, which re-reads it every few seconds and whenever Vault refuses the
//! token in use — so rotating the token is `kubectl apply` of the Secret, no restart.

use std::fmt;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::api::Api;
use meshca_vault::{Secret, TokenSource};

/// Reads one key of one Secret.
pub struct SecretTokenSource {
    client: kube::Client,
    namespace: String,
    name: String,
    key: String,
}

impl SecretTokenSource {
    /// The token in key `key` of Secret `namespace/name`.
    pub fn new(
        client: kube::Client,
        namespace: impl Into<String>,
        name: impl Into<String>,
        key: impl Into<String>,
    ) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            name: name.into(),
            key: key.into(),
        }
    }
}

#[async_trait]
impl TokenSource for SecretTokenSource {
    async fn read(&self) -> Result<Secret, String> {
        let api: Api<KubeSecret> = Api::namespaced(self.client.clone(), &self.namespace);
        let secret = api.get_opt(&self.name).await.map_err(|e| match e {
            kube::Error::Api(status) if status.code == 403 => format!(
                "the API server forbade reading it ({}): meshca's ServiceAccount needs get on \
                 secrets in {}",
                status.message, self.namespace
            ),
            kube::Error::Api(status) => format!(
                "the API server answered {} {} ({})",
                status.code, status.reason, status.message
            ),
            other => format!("the Kubernetes API server is not reachable: {other}"),
        })?;
        let secret = secret.ok_or_else(|| {
            format!(
                "the Secret does not exist: create it (kubectl create secret generic {} -n {} \
                 --from-literal={}=<vault token>) or fix vault.secret.name",
                self.name, self.namespace, self.key
            )
        })?;
        let value = secret
            .data
            .unwrap_or_default()
            .remove(&self.key)
            .ok_or_else(|| {
                format!(
                    "the Secret has no key {:?}: fix vault.secret.key or add the key",
                    self.key
                )
            })?;
        let text = String::from_utf8(value.0).map_err(|_| "the value is not text".to_owned())?;
        Ok(Secret::new(text.trim()))
    }

    fn describe(&self) -> String {
        format!("Secret {}/{} key {}", self.namespace, self.name, self.key)
    }
}

impl fmt::Debug for SecretTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretTokenSource")
            .field("secret", &self.describe())
            .finish_non_exhaustive()
    }
}
