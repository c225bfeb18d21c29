//! cert-manager on the fake API server: what its webhook adds to a CertificateRequest, the
//! watch scripts that play a request's life, issuers that sign, deny or fail, and the CA
//! bundle Secret the cert-manager provider reads.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::Response;
use futures::channel::mpsc;
use serde_json::{Value, json};

use super::{MockKube, Store, respond, status_body};
use crate::TestCa;

pub const NAMESPACE: &str = "meshca-system";
pub const REQUESTS_PATH: &str =
    "/apis/cert-manager.io/v1/namespaces/meshca-system/certificaterequests";
pub const SECRET_PATH: &str = "/api/v1/namespaces/meshca-system/secrets/meshca-ca-bundle";

/// What one watch call answers.
#[derive(Debug, Clone)]
pub enum Watch {
    /// A 200 streamed body playing these steps.
    Stream(Vec<Step>),
    /// The watch request itself fails with this status code (e.g. 410 Gone).
    Status(u16),
}

/// One step of a watch stream on the request named by the watch's field selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// MODIFIED: approved, waiting for the issuer.
    Pending,
    /// MODIFIED: the issuer's outcome (signed, denied, failed …).
    Outcome,
    /// The outcome happens without an event on this stream (seen only by a later GET).
    OutcomeSilently,
    /// An ERROR event with a 410 Gone Status, as the API server sends when history is gone.
    Gone,
    /// DELETED.
    Deleted,
    /// The body ends (the API server closed the watch).
    End,
}

/// What the issuer (cert-manager) does with a request: returns its new `status`.
pub type Issuer = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

/// A fake API server for the cert-manager provider: `issuer` decides each request, the CA
/// bundle Secret holds `ca_bundle` (PEM) as `ca.crt` (no Secret when `None`), the next watch
/// calls play `watches` (then stay open without events), and the first change gets
/// resourceVersion 1001.
pub async fn fake(issuer: Issuer, ca_bundle: Option<&str>, watches: Vec<Watch>) -> MockKube {
    let kube = MockKube::start().await;
    if let Some(pem) = ca_bundle {
        kube.put_object(SECRET_PATH, secret_json(pem));
    }
    kube.set_issuer(issuer);
    kube.push_watches(watches);
    kube.set_resource_version(1000);
    kube
}

/// Adds a request as if an earlier meshca had left it, created `age` ago.
pub fn add_existing(kube: &MockKube, name: &str, age: Duration, labels: Value) {
    kube.put_object(
        &format!("{REQUESTS_PATH}/{name}"),
        json!({
            "apiVersion": "cert-manager.io/v1",
            "kind": "CertificateRequest",
            "metadata": {
                "uid": format!("0000-{name}"),
                "creationTimestamp": rfc3339(SystemTime::now() - age),
                "labels": labels,
            },
            "spec": {
                "request": "",
                "issuerRef": { "name": "meshca-ca", "kind": "Issuer", "group": "cert-manager.io" },
            },
        }),
    );
}

/// What cert-manager's webhook adds to a CertificateRequest being created.
pub(super) fn as_the_webhook_does(object: &mut Value) {
    object["metadata"]["generation"] = json!(1);
    object["spec"]["username"] = json!("system:serviceaccount:meshca-system:meshca");
    object["spec"]["uid"] = json!("a1b2c3");
    object["spec"]["groups"] = json!(["system:serviceaccounts", "system:authenticated"]);
}

/// `GET <collection>?watch=true&fieldSelector=metadata.name=<name>`: plays the next script.
pub(super) fn watch(
    store: &mut Store,
    collection: &str,
    params: &std::collections::BTreeMap<String, String>,
) -> Response {
    let name = params
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name="))
        .unwrap_or_default()
        .to_owned();
    let steps = match store.watches.pop_front() {
        Some(Watch::Status(code)) => {
            let reason = if code == 410 {
                "Expired"
            } else {
                "InternalError"
            };
            return respond(
                code,
                status_body(code, reason, "too old resource version: 1001 (1042)"),
            );
        }
        Some(Watch::Stream(steps)) => steps,
        None => store.default_watch.clone().unwrap_or_default(),
    };
    let (sender, receiver) = mpsc::unbounded();
    let mut ended = false;
    for step in steps {
        let line = match step {
            Step::Pending => {
                let object = bump(store, collection, &name, pending_status());
                Some(event("MODIFIED", &object))
            }
            Step::Outcome | Step::OutcomeSilently => {
                let current = store
                    .objects
                    .get(collection)
                    .and_then(|c| c.get(&name))
                    .cloned()
                    .unwrap_or(Value::Null);
                let issuer = store
                    .issuer
                    .clone()
                    .expect("a watch script plays an outcome: set_issuer first");
                let object = bump(store, collection, &name, issuer(&current));
                (step == Step::Outcome).then(|| event("MODIFIED", &object))
            }
            Step::Gone => Some(json!({
                "type": "ERROR",
                "object": status_body(410, "Expired", "too old resource version: 1001 (1042)"),
            })),
            Step::Deleted => {
                let object = store
                    .objects
                    .get_mut(collection)
                    .and_then(|c| c.remove(&name))
                    .unwrap_or(Value::Null);
                Some(event("DELETED", &object))
            }
            Step::End => {
                ended = true;
                break;
            }
        };
        if let Some(line) = line {
            let mut bytes = serde_json::to_vec(&line).unwrap();
            bytes.push(b'\n');
            sender.unbounded_send(Ok(Bytes::from(bytes))).unwrap();
        }
    }
    if !ended {
        store.open.push(sender);
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(receiver))
        .unwrap()
}

/// Sets a request's status, bumps its resourceVersion, returns the new object.
fn bump(store: &mut Store, collection: &str, name: &str, status: Value) -> Value {
    store.next_version += 1;
    let version = store.next_version.to_string();
    let object = store
        .objects
        .get_mut(collection)
        .and_then(|c| c.get_mut(name))
        .expect("watched request exists");
    object["status"] = status;
    object["metadata"]["resourceVersion"] = json!(version);
    object.clone()
}

fn event(kind: &str, object: &Value) -> Value {
    json!({ "type": kind, "object": object })
}

/// The CA bundle Secret as the API server returns it.
pub fn secret_json(ca_pem: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "meshca-ca-bundle",
            "namespace": NAMESPACE,
            "uid": "5b6d1f0e-7c1a-4a51-9d43-0d6f6f3f4c11",
            "labels": { "app.kubernetes.io/managed-by": "meshca" },
        },
        "type": "Opaque",
        "data": { "ca.crt": base64(ca_pem.as_bytes()) },
    })
}

/// One entry of a CertificateRequest's `status.conditions`, as of now.
fn condition(kind: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": kind, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": rfc3339(SystemTime::now()),
    })
}

/// cert-manager's own approval.
fn approved() -> Value {
    condition(
        "Approved",
        "True",
        "cert-manager.io",
        "Certificate request has been approved by cert-manager.io",
    )
}

/// The status cert-manager writes while a request waits for its issuer.
pub fn pending_status() -> Value {
    json!({
        "conditions": [
            approved(),
            condition(
                "Ready",
                "False",
                "Pending",
                "Waiting on certificate issuance from order meshca-system/meshca-ca",
            ),
        ],
    })
}

/// An issuer that denies every request, as an approver does.
pub fn denying_issuer() -> Issuer {
    Arc::new(|_| {
        json!({
            "conditions": [
                condition(
                    "Denied",
                    "True",
                    "policy.cert-manager.io",
                    "No policy approved this request: [meshca-policy: spec.allowed.uris: Invalid value: spiffe://cluster.local/ns/bookstore/sa/bookstore-v2]",
                ),
                condition(
                    "Ready",
                    "False",
                    "Denied",
                    "The CertificateRequest was denied by an approval controller",
                ),
            ],
            "failureTime": rfc3339(SystemTime::now()),
        })
    })
}

/// An issuer that fails every request.
pub fn failing_issuer() -> Issuer {
    Arc::new(|_| {
        json!({
            "conditions": [
                approved(),
                condition(
                    "Ready",
                    "False",
                    "Failed",
                    "Failed to sign certificate request: vault: 400 URI SANs are not allowed by this role",
                ),
            ],
            "failureTime": rfc3339(SystemTime::now()),
        })
    })
}

/// An issuer signing with `ca` as cert-manager's CA issuer does: the CSR in `spec.request`
/// for `spec.duration` (default 1h). `status.certificate` holds leaf, intermediate and root (as
/// when the CA Secret carries its whole chain), `status.ca` the root.
pub fn signing_issuer(ca: &Arc<TestCa>) -> Issuer {
    let ca = ca.clone();
    Arc::new(move |request| {
        let csr_pem =
            String::from_utf8(unbase64(request["spec"]["request"].as_str().unwrap())).unwrap();
        let csr_der = pem::parse(&csr_pem).unwrap().into_contents();
        let lifetime =
            meshca_provider::parse_duration(request["spec"]["duration"].as_str().unwrap_or("1h"))
                .unwrap();
        let leaf = ca.sign_csr(&csr_der, lifetime);
        let chain = format!("{leaf}{}{}", ca.intermediate_pem(), ca.root_pem());
        json!({
            "conditions": [
                approved(),
                condition(
                    "Ready",
                    "True",
                    "Issued",
                    "Certificate fetched from issuer successfully",
                ),
            ],
            "certificate": base64(chain.as_bytes()),
            "ca": base64(ca.root_pem().as_bytes()),
        })
    })
}

/// RFC 3339 in UTC with seconds, as the API server writes timestamps.
pub fn rfc3339(at: SystemTime) -> String {
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let at = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap();
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Base64 as the API server writes `[]byte` fields (through k8s-openapi's `ByteString`).
pub fn base64(bytes: &[u8]) -> String {
    serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec()))
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

pub fn unbase64(text: &str) -> Vec<u8> {
    serde_json::from_value::<k8s_openapi::ByteString>(json!(text))
        .unwrap()
        .0
}
