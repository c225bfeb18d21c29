//! The Secret's layout: the CA in `ca.crt` and `private.key`, the rotation record in
//! `rotation.json`, the daemons' reports in `rotation-acks.*`, and meshca's label.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meshca_tresor::{CaProblem, CaStore, Rotation, StoreError, StoredCa};
use zeroize::{Zeroize, Zeroizing};

use super::KubernetesSecretStore;

impl KubernetesSecretStore {
    /// Takes the CA out of a Secret read from the API server.
    pub(super) fn stored_ca(&self, secret: Secret) -> Result<StoredCa, StoreError> {
        let mut data = secret.data.unwrap_or_default();
        let certificate = data.remove(Self::CERTIFICATE_KEY);
        let key = data
            .remove(Self::PRIVATE_KEY_KEY)
            .map(|ByteString(bytes)| Zeroizing::new(bytes));
        let (certificate, mut key) = match (certificate, key) {
            (Some(ByteString(certificate)), Some(key)) => (certificate, key),
            (Some(_), None) => {
                return Err(StoreError::Incomplete {
                    present: self.origin(Self::CERTIFICATE_KEY),
                    missing: self.origin(Self::PRIVATE_KEY_KEY),
                });
            }
            (None, Some(_)) => {
                return Err(StoreError::Incomplete {
                    present: self.origin(Self::PRIVATE_KEY_KEY),
                    missing: self.origin(Self::CERTIFICATE_KEY),
                });
            }
            (None, None) => {
                // Reporting "nothing stored" would make bootstrap try to create it, fail with a
                // conflict and then report a vanished CA; say what is actually wrong instead.
                return Err(StoreError::Backend {
                    store: self.describe(),
                    reason: format!(
                        "the Secret exists but has neither a {} nor a {} key. Nothing was \
                         changed: point meshca at another Secret, or delete this one if it is \
                         not in use to let meshca create a new root",
                        Self::CERTIFICATE_KEY,
                        Self::PRIVATE_KEY_KEY
                    ),
                });
            }
        };
        let certificate_pem = String::from_utf8(certificate).map_err(|_| StoreError::Invalid {
            location: self.origin(Self::CERTIFICATE_KEY),
            problem: CaProblem::Unreadable {
                reason: "the value is not text".into(),
            },
        })?;
        let key_pem = match String::from_utf8(std::mem::take(&mut *key)) {
            Ok(text) => Zeroizing::new(text),
            Err(e) => {
                e.into_bytes().zeroize();
                return Err(StoreError::Invalid {
                    location: self.origin(Self::PRIVATE_KEY_KEY),
                    problem: CaProblem::UnreadableKey {
                        reason: "the value is not text".into(),
                    },
                });
            }
        };
        Ok(StoredCa::new(certificate_pem, key_pem).with_origins(
            self.origin(Self::CERTIFICATE_KEY),
            self.origin(Self::PRIVATE_KEY_KEY),
        ))
    }

    /// The Secret to POST for `ca`.
    pub(super) fn secret_for(&self, ca: &StoredCa) -> Secret {
        let data = BTreeMap::from([
            (
                Self::CERTIFICATE_KEY.to_owned(),
                ByteString(ca.certificate_pem().as_bytes().to_vec()),
            ),
            (
                Self::PRIVATE_KEY_KEY.to_owned(),
                ByteString(ca.key_pem().as_bytes().to_vec()),
            ),
        ]);
        self.secret_with(data)
    }

    /// An Opaque Secret with meshca's label and `data`.
    pub(super) fn secret_with(&self, data: BTreeMap<String, ByteString>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    Self::MANAGED_BY_LABEL.to_owned(),
                    "meshca".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// The rotation record in a Secret read from the API server.
    pub(super) fn rotation_in(
        &self,
        data: &BTreeMap<String, ByteString>,
    ) -> Result<Option<Rotation>, StoreError> {
        data.get(Self::ROTATION_KEY)
            .map(|ByteString(bytes)| Rotation::from_json(bytes, &self.origin(Self::ROTATION_KEY)))
            .transpose()
    }

    /// Takes the rotation record and every acknowledgement report out of the Secret's data.
    pub(super) fn remove_rotation(data: &mut BTreeMap<String, ByteString>) {
        data.remove(Self::ROTATION_KEY);
        data.retain(|key, _| !key.starts_with(Self::ACKS_PREFIX));
    }
}
