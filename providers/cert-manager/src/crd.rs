//! cert-manager's `CertificateRequest` (cert-manager.io/v1), only the fields meshca writes or
//! reads. Written by hand with kube's [`Resource`] trait; unknown fields are ignored, so newer
//! cert-manager versions parse.

use std::borrow::Cow;

use k8s_openapi::ByteString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Serialize};

/// A `CertificateRequest`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CertificateRequest {
    /// Always `cert-manager.io/v1` when sent; list items may omit it.
    #[serde(default)]
    pub api_version: String,
    /// Always `CertificateRequest` when sent.
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: CertificateRequestSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CertificateRequestStatus>,
}

/// `spec`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CertificateRequestSpec {
    /// The PKCS#10 CSR, PEM (base64 again in JSON).
    #[serde(default)]
    pub request: ByteString,
    #[serde(default)]
    pub issuer_ref: IssuerRef,
    /// Requested lifetime, a Go duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, rename = "isCA")]
    pub is_ca: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usages: Vec<String>,
}

/// `spec.issuerRef`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IssuerRef {
    pub name: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub group: String,
}

/// `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CertificateRequestStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The signed chain, PEM (leaf first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<ByteString>,
    /// The issuer's CA, PEM, when it reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<ByteString>,
    /// Set when the issuer gave up on the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_time: Option<String>,
}

/// One entry of `status.conditions`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl CertificateRequest {
    pub(crate) const API_VERSION: &'static str = "cert-manager.io/v1";
    pub(crate) const KIND: &'static str = "CertificateRequest";

    /// The condition of type `type_`, if present.
    pub(crate) fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }
}

impl Condition {
    pub(crate) fn is_true(&self) -> bool {
        self.status == "True"
    }

    /// `reason: message`, or whichever of them is set.
    pub(crate) fn describe(&self) -> String {
        match (self.reason.as_deref(), self.message.as_deref()) {
            (Some(reason), Some(message)) if !message.is_empty() => format!("{reason}: {message}"),
            (Some(reason), _) => reason.to_owned(),
            (None, Some(message)) => message.to_owned(),
            (None, None) => "no reason given".to_owned(),
        }
    }
}

impl Resource for CertificateRequest {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(Self::KIND)
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("cert-manager.io")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("certificaterequests")
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
