//! Writing a managed Secret: read first, then create or replace carrying the resourceVersion
//! read; and finding every managed Secret by label.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, PostParams};

use super::*;

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The Secret did not exist and was created.
    Created,
    /// The managed Secret was replaced.
    Replaced,
}

/// What [`TlsSecretWriter::replace_unchanged`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    /// The Secret was replaced: it had not changed since it was read.
    Replaced,
    /// It had changed or been deleted since it was read: nothing was written, and the writer
    /// now holds the Secret as read again (or none).
    Changed,
}

/// One managed TLS Secret to write: remembers what was last read of it, so that a replace
/// carries that resourceVersion.
pub struct TlsSecretWriter {
    api: Api<Secret>,
    target: SecretRef,
    /// The Secret as last read; `None` when it did not exist.
    current: Option<Secret>,
}

impl TlsSecretWriter {
    /// Reads `target` and checks that meshca may write it: absent, or a managed TLS Secret.
    /// Refuses anything else before a certificate is issued for it.
    pub async fn open(client: kube::Client, target: SecretRef) -> Result<Self, ManagedSecretError> {
        let api = Api::namespaced(client, &target.namespace);
        let mut writer = Self {
            api,
            target,
            current: None,
        };
        writer.reread().await?;
        Ok(writer)
    }

    /// The Secret written.
    pub fn target(&self) -> &SecretRef {
        &self.target
    }

    /// Whether the Secret existed when last read.
    pub fn exists(&self) -> bool {
        self.current.is_some()
    }

    /// What the existing Secret's annotations record, if it exists.
    pub fn recorded(&self) -> Option<Result<ManagedTlsSecret, ManagedSecretError>> {
        self.current.as_ref().map(ManagedTlsSecret::from_secret)
    }

    /// The Secret's `tls.crt` (the leaf then its intermediates, PEM) as last read, if it
    /// exists and has one.
    pub fn certificate_pem(&self) -> Option<&[u8]> {
        self.current
            .as_ref()
            .and_then(|secret| secret.data.as_ref())
            .and_then(|data| data.get(CERTIFICATE_KEY))
            .map(|bytes| bytes.0.as_slice())
    }

    /// The Secret's `tls.key` (PKCS#8 PEM) as last read, if it exists and has one. Secret
    /// data: never log it.
    pub fn private_key_pem(&self) -> Option<&[u8]> {
        self.current
            .as_ref()
            .and_then(|secret| secret.data.as_ref())
            .and_then(|data| data.get(PRIVATE_KEY_KEY))
            .map(|bytes| bytes.0.as_slice())
    }

    /// The Secret's resourceVersion as last read.
    pub fn resource_version(&self) -> Option<&str> {
        self.current
            .as_ref()
            .and_then(|secret| secret.metadata.resource_version.as_deref())
    }

    /// Replaces the Secret only if nobody changed it since it was read: one PUT carrying the
    /// resourceVersion that was read, no retry. This is how concurrent renewals agree on one
    /// winner: on `409 Conflict` (or `404`, deleted meanwhile) nothing is written, the Secret
    /// is read again — and checked again to be meshca's — and [`Replaced::Changed`] says the
    /// caller should look at it afresh ([`Self::exists`], [`Self::certificate_pem`]).
    pub async fn replace_unchanged(
        &mut self,
        record: &ManagedTlsSecret,
        material: &TlsMaterial,
    ) -> Result<Replaced, ManagedSecretError> {
        let Some(existing) = &self.current else {
            return Ok(Replaced::Changed);
        };
        let secret = self.secret_for(existing.metadata.clone(), record, material);
        match self
            .api
            .replace(&self.target.name, &PostParams::default(), &secret)
            .await
        {
            Ok(_) => Ok(Replaced::Replaced),
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_not_found() => {
                tracing::info!(
                    secret = %self.target,
                    reason = %status.reason,
                    "the Secret changed since it was read; nothing written, reading it again"
                );
                self.reread().await?;
                Ok(Replaced::Changed)
            }
            Err(error) => Err(api_error(&self.target, "update", error)),
        }
    }

    /// Writes `material` with the annotations of `record`: creates the Secret if it is absent,
    /// replaces it if meshca manages it. On a concurrent change (409) reads it again — and
    /// checks again that it is still meshca's — then retries, at most [`MAX_ATTEMPTS`] times.
    pub async fn write(
        &mut self,
        record: &ManagedTlsSecret,
        material: &TlsMaterial,
    ) -> Result<Written, ManagedSecretError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let result = match &self.current {
                None => {
                    let secret = self.secret_for(ObjectMeta::default(), record, material);
                    self.api
                        .create(&PostParams::default(), &secret)
                        .await
                        .map(|_| Written::Created)
                        .map_err(|e| (e, "create"))
                }
                Some(existing) => {
                    let secret = self.secret_for(existing.metadata.clone(), record, material);
                    self.api
                        .replace(&self.target.name, &PostParams::default(), &secret)
                        .await
                        .map(|_| Written::Replaced)
                        .map_err(|e| (e, "update"))
                }
            };
            match result {
                Ok(written) => return Ok(written),
                // Someone created it between our read and our create, it changed since our
                // read, or it was deleted since: read again and start over.
                Err((kube::Error::Api(status), _))
                    if status.is_already_exists()
                        || status.is_conflict()
                        || (status.is_not_found() && self.current.is_some()) =>
                {
                    if attempts >= MAX_ATTEMPTS {
                        return Err(ManagedSecretError::Conflict {
                            secret: self.target.clone(),
                            attempts,
                        });
                    }
                    tracing::info!(
                        secret = %self.target,
                        reason = %status.reason,
                        "the Secret changed while meshca wrote it; reading it again"
                    );
                    self.reread().await?;
                }
                Err((error, verb)) => return Err(api_error(&self.target, verb, error)),
            }
        }
    }

    async fn reread(&mut self) -> Result<(), ManagedSecretError> {
        let found = self
            .api
            .get_opt(&self.target.name)
            .await
            .map_err(|e| api_error(&self.target, "get", e))?;
        if let Some(secret) = &found {
            check_managed(secret, &self.target)?;
        }
        self.current = found;
        Ok(())
    }

    /// The Secret to send: `base` (the existing object's metadata, so its resourceVersion,
    /// other labels and annotations, and owner references survive a replace) with meshca's
    /// labels, annotations, type and data.
    fn secret_for(
        &self,
        mut meta: ObjectMeta,
        record: &ManagedTlsSecret,
        material: &TlsMaterial,
    ) -> Secret {
        meta.name = Some(self.target.name.clone());
        meta.namespace = Some(self.target.namespace.clone());
        meta.managed_fields = None;
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
        labels.insert(MANAGED_CERTIFICATE_LABEL.to_owned(), "true".to_owned());
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .extend(record.annotations());
        let data = BTreeMap::from([
            (
                CERTIFICATE_KEY.to_owned(),
                ByteString(material.chain_pem.as_bytes().to_vec()),
            ),
            (
                PRIVATE_KEY_KEY.to_owned(),
                ByteString(material.key_pem.as_bytes().to_vec()),
            ),
            (
                TRUST_BUNDLE_KEY.to_owned(),
                ByteString(material.trust_bundle_pem.as_bytes().to_vec()),
            ),
        ]);
        Secret {
            metadata: meta,
            type_: Some(SECRET_TYPE.to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }
}

impl fmt::Debug for TlsSecretWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSecretWriter")
            .field("target", &self.target)
            .field(
                "resource_version",
                &self
                    .current
                    .as_ref()
                    .and_then(|s| s.metadata.resource_version.as_deref()),
            )
            .finish_non_exhaustive()
    }
}

/// One managed Secret found by [`list_managed`].
#[derive(Debug)]
pub struct ListedSecret {
    /// What its annotations record, or why they cannot be read (the cron reports those).
    pub record: Result<ManagedTlsSecret, ManagedSecretError>,
    /// A writer holding the Secret as listed, ready to replace it.
    pub writer: TlsSecretWriter,
}

/// Every managed TLS Secret in `namespace`, or in all namespaces, found by label. Secrets that
/// carry the label but are not `kubernetes.io/tls` are skipped with a warning.
pub async fn list_managed(
    client: kube::Client,
    namespace: Option<&str>,
) -> Result<Vec<ListedSecret>, ManagedSecretError> {
    let api: Api<Secret> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let scope = SecretRef {
        namespace: namespace.unwrap_or("*").to_owned(),
        name: "*".to_owned(),
    };
    let list = api
        .list(&ListParams::default().labels(LABEL_SELECTOR))
        .await
        .map_err(|e| api_error(&scope, "list", e))?;
    let mut found = Vec::new();
    for secret in list.items {
        let target = secret_ref(&secret);
        if let Err(e) = check_managed(&secret, &target) {
            tracing::warn!(secret = %target, "skipping a labelled Secret: {e}");
            continue;
        }
        found.push(ListedSecret {
            record: ManagedTlsSecret::from_secret(&secret),
            writer: TlsSecretWriter {
                api: Api::namespaced(client.clone(), &target.namespace),
                target,
                current: Some(secret),
            },
        });
    }
    Ok(found)
}
