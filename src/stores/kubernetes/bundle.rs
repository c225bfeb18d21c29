//! Publishing a trust bundle alone (`ca.crt`, no key), for providers that hold the CA
//! elsewhere (Vault, cert-manager).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use meshca_provider::TrustBundle;
use meshca_tresor::{CaProblem, CaStore, Outcome, StoreError};

use super::KubernetesSecretStore;

impl KubernetesSecretStore {
    /// Publishes a trust bundle alone (`ca.crt`, no key): what `meshca bootstrap` writes when
    /// Vault or cert-manager holds the CA. Same rules as the CA itself: read first, create only
    /// when absent, adopt on a create conflict, never overwrite. A Secret that already holds
    /// other roots is refused — replacing a trust bundle is a root rotation, not a bootstrap.
    pub async fn publish_trust_bundle(&self, bundle: &TrustBundle) -> Result<Outcome, StoreError> {
        if let Some(secret) = self.get_secret().await? {
            return self
                .compare_bundle(secret, bundle)
                .map(|()| Outcome::Loaded);
        }
        let secret = self.secret_with(BTreeMap::from([(
            Self::CERTIFICATE_KEY.to_owned(),
            ByteString(bundle.to_pem().into_bytes()),
        )]));
        match self.api().create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(Outcome::Created),
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                let secret = self
                    .get_secret()
                    .await?
                    .ok_or_else(|| StoreError::Vanished {
                        store: self.describe(),
                    })?;
                self.compare_bundle(secret, bundle)
                    .map(|()| Outcome::Adopted)
            }
            Err(e) => Err(self.api_error("create", e)),
        }
    }

    /// Checks that an existing Secret's `ca.crt` holds exactly the roots of `bundle`.
    fn compare_bundle(&self, secret: Secret, bundle: &TrustBundle) -> Result<(), StoreError> {
        let location = self.origin(Self::CERTIFICATE_KEY);
        let found = secret
            .data
            .unwrap_or_default()
            .remove(Self::CERTIFICATE_KEY)
            .ok_or_else(|| StoreError::Backend {
                store: self.describe(),
                reason: format!(
                    "the Secret exists but has no {} key. Nothing was changed: point meshca at \
                     another Secret (--name), or delete this one if nothing uses it",
                    Self::CERTIFICATE_KEY
                ),
            })?;
        let found = String::from_utf8(found.0)
            .ok()
            .and_then(|text| TrustBundle::from_pem(&text).ok())
            .filter(|found| !found.is_empty())
            .ok_or_else(|| StoreError::Invalid {
                location: location.clone(),
                problem: CaProblem::Unreadable {
                    reason: "it holds no PEM certificate".into(),
                },
            })?;
        let mut want = bundle.fingerprints();
        let mut have = found.fingerprints();
        want.sort();
        have.sort();
        if want == have {
            return Ok(());
        }
        Err(StoreError::Backend {
            store: self.describe(),
            reason: format!(
                "the Secret already holds other roots (SHA-256 {}) than the provider's ({}). \
                 Nothing was changed: if the provider's root was replaced on purpose, rotate \
                 the bundle (`meshca rotate`) or delete the Secret and run `meshca bootstrap` \
                 again; otherwise check that meshca points at the right Vault or issuer",
                have.join(", "),
                want.join(", ")
            ),
        })
    }
}
