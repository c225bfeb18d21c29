//! Writing the trust bundle ConfigMap of one namespace: create it when absent; replace it,
//! carrying the resourceVersion read, when it is meshca's and holds something else; leave it
//! alone when it is someone else's. A `409` (someone created or changed it meanwhile) reads it
//! again and decides afresh, a bounded number of times.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;

use super::{ConfigMapSettings, MANAGED_BY, MANAGED_BY_LABEL, is_owned, is_status};

/// How many times a write reads the ConfigMap again after a conflict before giving up (and
/// retrying later, like any failure).
const MAX_ATTEMPTS: usize = 4;

/// What a write found or did.
#[derive(Debug)]
pub(crate) enum Written {
    /// The ConfigMap was created; the API server's answer.
    Created(ConfigMap),
    /// The ConfigMap was replaced; the API server's answer.
    Updated(ConfigMap),
    /// It already held the bundle (someone — another replica — wrote it meanwhile).
    AlreadyCurrent(ConfigMap),
    /// It is not meshca's: left alone.
    NotOwned(ConfigMap),
    /// The namespace is gone or being deleted.
    NamespaceGone,
}

/// Whether `config_map` is meshca's and holds exactly `pem` under the configured key.
pub(crate) fn is_current(config_map: &ConfigMap, settings: &ConfigMapSettings, pem: &str) -> bool {
    is_owned(&config_map.metadata)
        && config_map
            .binary_data
            .as_ref()
            .is_none_or(BTreeMap::is_empty)
        && config_map.data.as_ref().is_some_and(|data| {
            data.len() == 1 && data.get(&settings.key).is_some_and(|held| held == pem)
        })
}

/// Makes the ConfigMap in `namespace` hold `pem`, starting from `current` (what the watch
/// last showed; `None`: absent).
pub(crate) async fn write(
    client: kube::Client,
    settings: &ConfigMapSettings,
    namespace: &str,
    pem: &str,
    mut current: Option<ConfigMap>,
) -> Result<Written, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let params = PostParams {
        field_manager: Some(MANAGED_BY.to_owned()),
        ..PostParams::default()
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = match &current {
            None => api
                .create(&params, &desired(settings, namespace, pem, None))
                .await
                .map(Written::Created),
            Some(found) if !is_owned(&found.metadata) => {
                return Ok(Written::NotOwned(found.clone()));
            }
            Some(found) if is_current(found, settings, pem) => {
                return Ok(Written::AlreadyCurrent(found.clone()));
            }
            Some(found) => api
                .replace(
                    &settings.name,
                    &params,
                    &desired(settings, namespace, pem, Some(found)),
                )
                .await
                .map(Written::Updated),
        };
        match result {
            Ok(written) => return Ok(written),
            // Created or changed by someone else since it was read: read it again.
            Err(error) if is_status(&error, 409) && attempt < MAX_ATTEMPTS => {
                current = api.get_opt(&settings.name).await?;
            }
            // Replaced while absent: create it.
            Err(error) if is_status(&error, 404) && current.is_some() => current = None,
            // Created in a namespace that is gone (404) or terminating (403, "because it is
            // being terminated").
            Err(error) if current.is_none() && is_namespace_gone(&error) => {
                return Ok(Written::NamespaceGone);
            }
            Err(error) => return Err(error),
        }
    }
}

/// The ConfigMap meshca wants: `found`'s metadata (labels and annotations others added are
/// kept, as is its resourceVersion for the update's check) with meshca's label, and only the
/// bundle as data.
fn desired(
    settings: &ConfigMapSettings,
    namespace: &str,
    pem: &str,
    found: Option<&ConfigMap>,
) -> ConfigMap {
    let mut metadata = found.map_or_else(ObjectMeta::default, |found| ObjectMeta {
        annotations: found.metadata.annotations.clone(),
        labels: found.metadata.labels.clone(),
        resource_version: found.metadata.resource_version.clone(),
        ..ObjectMeta::default()
    });
    metadata.name = Some(settings.name.clone());
    metadata.namespace = Some(namespace.to_owned());
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
    ConfigMap {
        metadata,
        data: Some(BTreeMap::from([(settings.key.clone(), pem.to_owned())])),
        ..ConfigMap::default()
    }
}

fn is_namespace_gone(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => {
            status.code == 404 || (status.code == 403 && status.message.contains("terminat"))
        }
        _ => false,
    }
}
