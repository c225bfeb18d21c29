//! The root rotation's updates: read, edit, and write back with the `resourceVersion` that
//! was read (compare-and-swap), and the check that finishing one replaces only its own root.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use kube::api::PostParams;
use meshca_provider::TrustBundle;
use meshca_tresor::{CaProblem, CaStore, Rotation, StoreError};

use super::KubernetesSecretStore;

impl KubernetesSecretStore {
    /// Reads the Secret, lets `edit` change its data, and writes it back with the
    /// resourceVersion that was read, re-reading after a conflict. When `edit` returns
    /// `Some(value)` nothing is written and the value is returned; `None` means written.
    pub(super) async fn update_data<T>(
        &self,
        mut edit: impl FnMut(&mut BTreeMap<String, ByteString>) -> Result<Option<T>, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        const ATTEMPTS: usize = 8;
        for _ in 0..ATTEMPTS {
            let Some(mut secret) = self.get_secret().await? else {
                return Err(StoreError::Backend {
                    store: self.describe(),
                    reason: "the Secret does not exist: run `meshca bootstrap` first".into(),
                });
            };
            let mut data = secret.data.take().unwrap_or_default();
            if let Some(outcome) = edit(&mut data)? {
                return Ok(Some(outcome));
            }
            secret.data = Some(data);
            match self
                .api()
                .replace(&self.name, &PostParams::default(), &secret)
                .await
            {
                Ok(_) => return Ok(None),
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    tracing::debug!(secret = %self.describe(), "update conflict; re-reading");
                }
                Err(e) => return Err(self.api_error("update", e)),
            }
        }
        Err(StoreError::Backend {
            store: self.describe(),
            reason: format!(
                "the Secret changed under every one of {ATTEMPTS} attempts to update it: retry"
            ),
        })
    }

    /// Finishing a rotation replaces `ca.crt` only when it holds the rotation's old or new
    /// root — never material someone else put there.
    pub(super) fn check_replaceable(
        &self,
        data: &BTreeMap<String, ByteString>,
        record: &Rotation,
    ) -> Result<(), StoreError> {
        let stored = data
            .get(Self::CERTIFICATE_KEY)
            .and_then(|ByteString(bytes)| std::str::from_utf8(bytes).ok())
            .and_then(|text| TrustBundle::from_pem(text).ok());
        let ours = |pem: &str| {
            TrustBundle::from_pem(pem)
                .ok()
                .zip(stored.as_ref())
                .is_some_and(|(a, b)| a.roots() == b.roots())
        };
        if ours(record.old.certificate_pem()) || ours(record.new.certificate_pem()) {
            return Ok(());
        }
        Err(StoreError::Invalid {
            location: self.origin(Self::CERTIFICATE_KEY),
            problem: CaProblem::Unreadable {
                reason: "it is neither the old nor the new root of the rotation in progress, so \
                         finishing the rotation will not replace it"
                    .into(),
            },
        })
    }
}
