//! A fake Kubernetes API server for the cert-manager provider's tests, behind kube's `Client`
//! over a tower-test mock service.
//!
//! What is real: kube's `Client` and `Api` (URL building, query parameters, JSON, the watch
//! line protocol), the provider, and the certificates (a test CA made with rcgen signs the
//! CSR the provider sent, honouring its SANs and the requested duration). What is mocked: the
//! API server and cert-manager. The fake keeps one namespace's CertificateRequests: POST
//! stores the object (assigning a name from `generateName`, a uid, a resourceVersion and a
//! creationTimestamp), GET returns what is stored, DELETE removes it, LIST filters by label,
//! and each watch call plays the next [`Watch`] script as a streamed response body, one JSON
//! event per line, as the API server writes them.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::channel::mpsc;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody, combinators::BoxBody};
use kube::client::Body;
use serde_json::{Value, json};

pub const NAMESPACE: &str = "meshca-system";
pub const REQUESTS_PATH: &str =
    "/apis/cert-manager.io/v1/namespaces/meshca-system/certificaterequests";
pub const SECRET_PATH: &str = "/api/v1/namespaces/meshca-system/secrets/meshca-ca-bundle";

pub type MockBody = BoxBody<Bytes, Infallible>;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub body: Option<Value>,
}

impl Seen {
    pub fn is(&self, method: Method, path: &str) -> bool {
        self.method == method && self.path == path
    }
}

/// What one watch call answers.
#[derive(Debug, Clone)]
pub enum Watch {
    /// A 200 streamed body playing these steps.
    Stream(Vec<Step>),
    /// The watch request itself fails with this status code (e.g. 410 Gone).
    Status(u16),
}

/// One step of a watch stream.
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

/// The fake API server's state.
pub struct State {
    pub requests: BTreeMap<String, Value>,
    pub seen: Vec<Seen>,
    pub watches: VecDeque<Watch>,
    /// Played when `watches` is used up; `None` holds the watch open without events.
    pub default_watch: Option<Vec<Step>>,
    pub issuer: Issuer,
    pub secret: Option<Value>,
    /// Answers for POST to certificaterequests before the normal behaviour, in order.
    pub create_failures: VecDeque<(u16, Value)>,
    /// Streams kept open until the test ends.
    pub open: Vec<mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>>,
    resource_version: u64,
    counter: u64,
}

pub struct Fake {
    pub client: kube::Client,
    pub state: Arc<Mutex<State>>,
}

impl Fake {
    /// A fake API server whose issuer answers with `issuer`, holding `ca_bundle` (PEM) as the
    /// CA bundle Secret's `ca.crt` (no Secret when `None`). Watches with no script left stay
    /// open without events.
    pub fn new(issuer: Issuer, ca_bundle: Option<&str>, watches: Vec<Watch>) -> Self {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<MockBody>>();
        let client = kube::Client::new(service, "default");
        let state = Arc::new(Mutex::new(State {
            requests: BTreeMap::new(),
            seen: Vec::new(),
            watches: watches.into(),
            default_watch: None,
            issuer,
            secret: ca_bundle.map(secret_json),
            create_failures: VecDeque::new(),
            open: Vec::new(),
            resource_version: 1000,
            counter: 0,
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let seen = record(request).await;
                let response = answer(&shared, seen);
                send.send_response(response);
            }
        });
        Self { client, state }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Adds a request as if an earlier meshca had left it, created `age` ago.
    pub fn add_existing(&self, name: &str, age: Duration, labels: Value) {
        let created = rfc3339(SystemTime::now() - age);
        let mut state = self.state.lock().unwrap();
        state.resource_version += 1;
        let object = json!({
            "apiVersion": "cert-manager.io/v1",
            "kind": "CertificateRequest",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "uid": format!("0000-{name}"),
                "resourceVersion": state.resource_version.to_string(),
                "creationTimestamp": created,
                "labels": labels,
            },
            "spec": {
                "request": "",
                "issuerRef": { "name": "meshca-ca", "kind": "Issuer", "group": "cert-manager.io" },
            },
        });
        state.requests.insert(name.to_owned(), object);
    }
}

fn answer(shared: &Arc<Mutex<State>>, seen: Seen) -> Response<MockBody> {
    let mut state = shared.lock().unwrap();
    state.seen.push(seen.clone());
    let name = seen
        .path
        .strip_prefix(REQUESTS_PATH)
        .and_then(|rest| rest.strip_prefix('/'))
        .map(str::to_owned);
    match (&seen.method, seen.path.as_str(), name) {
        (&Method::GET, SECRET_PATH, _) => match &state.secret {
            Some(secret) => json_response(200, secret),
            None => json_response(
                404,
                &status_body(404, "NotFound", r#"secrets "meshca-ca-bundle" not found"#),
            ),
        },
        (&Method::POST, REQUESTS_PATH, None) => {
            if let Some((code, body)) = state.create_failures.pop_front() {
                return json_response(code, &body);
            }
            let mut object = seen.body.unwrap();
            state.counter += 1;
            state.resource_version += 1;
            let prefix = object["metadata"]["generateName"]
                .as_str()
                .unwrap_or("x-")
                .to_owned();
            let name = format!("{prefix}{:05x}", state.counter * 7919);
            let metadata = object["metadata"].as_object_mut().unwrap();
            metadata.insert("name".into(), json!(name));
            metadata.insert(
                "uid".into(),
                json!(format!("c0ffee00-{:04}", state.counter)),
            );
            metadata.insert(
                "resourceVersion".into(),
                json!(state.resource_version.to_string()),
            );
            metadata.insert(
                "creationTimestamp".into(),
                json!(rfc3339(SystemTime::now())),
            );
            metadata.insert("generation".into(), json!(1));
            // What cert-manager's webhook adds.
            object["spec"]["username"] = json!("system:serviceaccount:meshca-system:meshca");
            object["spec"]["uid"] = json!("a1b2c3");
            object["spec"]["groups"] = json!(["system:serviceaccounts", "system:authenticated"]);
            state.requests.insert(name, object.clone());
            json_response(201, &object)
        }
        (&Method::GET, REQUESTS_PATH, None)
            if seen.query.get("watch").is_some_and(|w| w == "true") =>
        {
            watch(&mut state, &seen)
        }
        (&Method::GET, REQUESTS_PATH, None) => {
            let selector = seen.query.get("labelSelector").cloned().unwrap_or_default();
            let items: Vec<Value> = state
                .requests
                .values()
                .filter(|item| matches_selector(item, &selector))
                .cloned()
                .collect();
            json_response(
                200,
                &json!({
                    "apiVersion": "cert-manager.io/v1",
                    "kind": "CertificateRequestList",
                    "metadata": { "resourceVersion": state.resource_version.to_string() },
                    "items": items,
                }),
            )
        }
        (&Method::GET, _, Some(name)) => match state.requests.get(&name) {
            Some(object) => json_response(200, object),
            None => json_response(404, &not_found(&name)),
        },
        (&Method::DELETE, _, Some(name)) => match state.requests.remove(&name) {
            Some(_) => json_response(
                200,
                &json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": { "name": name, "group": "cert-manager.io",
                                 "kind": "certificaterequests", "uid": "c0ffee00" },
                }),
            ),
            None => json_response(404, &not_found(&name)),
        },
        (method, path, _) => json_response(
            500,
            &status_body(
                500,
                "InternalError",
                &format!("the fake has no route for {method} {path}"),
            ),
        ),
    }
}

fn watch(state: &mut State, seen: &Seen) -> Response<MockBody> {
    // The field selector names one request.
    let name = seen
        .query
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name="))
        .unwrap_or_default()
        .to_owned();
    let script = state.watches.pop_front();
    let steps = match script {
        Some(Watch::Status(code)) => {
            let reason = if code == 410 {
                "Expired"
            } else {
                "InternalError"
            };
            return json_response(
                code,
                &status_body(code, reason, "too old resource version: 1001 (1042)"),
            );
        }
        Some(Watch::Stream(steps)) => steps,
        None => state.default_watch.clone().unwrap_or_default(),
    };
    let (sender, receiver) = mpsc::unbounded();
    let mut ended = false;
    for step in steps {
        let line = match step {
            Step::Pending => {
                let object = state.bump(&name, pending_status());
                Some(event("MODIFIED", &object))
            }
            Step::Outcome | Step::OutcomeSilently => {
                let current = state.requests.get(&name).cloned().unwrap_or(Value::Null);
                let status = (state.issuer)(&current);
                let object = state.bump(&name, status);
                (step == Step::Outcome).then(|| event("MODIFIED", &object))
            }
            Step::Gone => Some(json!({
                "type": "ERROR",
                "object": status_body(410, "Expired", "too old resource version: 1001 (1042)"),
            })),
            Step::Deleted => {
                let object = state.requests.remove(&name).unwrap_or(Value::Null);
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
            sender
                .unbounded_send(Ok(Frame::data(Bytes::from(bytes))))
                .unwrap();
        }
    }
    if !ended {
        state.open.push(sender);
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(StreamBody::new(receiver).boxed())
        .unwrap()
}

impl State {
    /// Sets a request's status, bumps its resourceVersion, returns the new object.
    fn bump(&mut self, name: &str, status: Value) -> Value {
        self.resource_version += 1;
        let version = self.resource_version.to_string();
        let object = self.requests.get_mut(name).expect("watched request exists");
        object["status"] = status;
        object["metadata"]["resourceVersion"] = json!(version);
        object.clone()
    }
}

fn event(kind: &str, object: &Value) -> Value {
    json!({ "type": kind, "object": object })
}

fn matches_selector(item: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (key, value) = term.split_once('=').unwrap();
        item["metadata"]["labels"][key] == json!(value)
    })
}

async fn record(request: Request<Body>) -> Seen {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap());
    Seen {
        method,
        path,
        query,
        body,
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

pub fn json_response(status: u16, body: &Value) -> Response<MockBody> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(
            http_body_util::Full::new(Bytes::from(serde_json::to_vec(body).unwrap()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

/// A `Status` as the API server sends it for a failed request.
pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": { "group": "cert-manager.io", "kind": "certificaterequests" },
        "code": code,
    })
}

fn not_found(name: &str) -> Value {
    status_body(
        404,
        "NotFound",
        &format!(r#"certificaterequests.cert-manager.io "{name}" not found"#),
    )
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
            "resourceVersion": "48213",
            "labels": { "app.kubernetes.io/managed-by": "meshca" },
        },
        "type": "Opaque",
        "data": { "ca.crt": base64(ca_pem.as_bytes()) },
    })
}

/// The status cert-manager writes while a request waits for its issuer.
pub fn pending_status() -> Value {
    json!({
        "conditions": [
            {
                "type": "Approved", "status": "True", "reason": "cert-manager.io",
                "message": "Certificate request has been approved by cert-manager.io",
                "lastTransitionTime": rfc3339(SystemTime::now()),
            },
            {
                "type": "Ready", "status": "False", "reason": "Pending",
                "message": "Waiting on certificate issuance from order meshca-system/meshca-ca",
                "lastTransitionTime": rfc3339(SystemTime::now()),
            },
        ],
    })
}

/// An issuer that denies every request, as an approver does.
pub fn denying_issuer() -> Issuer {
    Arc::new(|_| {
        json!({
            "conditions": [
                {
                    "type": "Denied", "status": "True", "reason": "policy.cert-manager.io",
                    "message": "No policy approved this request: [meshca-policy: spec.allowed.uris: Invalid value: spiffe://cluster.local/ns/bookstore/sa/bookstore-v2]",
                    "lastTransitionTime": rfc3339(SystemTime::now()),
                },
                {
                    "type": "Ready", "status": "False", "reason": "Denied",
                    "message": "The CertificateRequest was denied by an approval controller",
                    "lastTransitionTime": rfc3339(SystemTime::now()),
                },
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
                {
                    "type": "Approved", "status": "True", "reason": "cert-manager.io",
                    "message": "Certificate request has been approved by cert-manager.io",
                    "lastTransitionTime": rfc3339(SystemTime::now()),
                },
                {
                    "type": "Ready", "status": "False", "reason": "Failed",
                    "message": "Failed to sign certificate request: vault: 400 URI SANs are not allowed by this role",
                    "lastTransitionTime": rfc3339(SystemTime::now()),
                },
            ],
            "failureTime": rfc3339(SystemTime::now()),
        })
    })
}

/// A test CA: root → intermediate, signing CSRs like cert-manager's CA issuer.
pub struct TestCa {
    pub root_pem: String,
    pub intermediate_pem: String,
    intermediate: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Arc<Self> {
        let root_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} root"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let root = params.self_signed(&root_key).unwrap();
        let root_issuer = rcgen::Issuer::new(params, root_key);

        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} intermediate"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params.use_authority_key_identifier_extension = true;
        let intermediate = params.signed_by(&key, &root_issuer).unwrap();
        Arc::new(Self {
            root_pem: root.pem(),
            intermediate_pem: intermediate.pem(),
            intermediate: rcgen::Issuer::new(params, key),
        })
    }

    /// Signs the CSR in `request.spec.request` for `spec.duration`, as cert-manager's CA
    /// issuer does: SANs and subject from the CSR, usages serverAuth + clientAuth.
    pub fn sign(&self, request: &Value) -> String {
        let csr_pem =
            String::from_utf8(unbase64(request["spec"]["request"].as_str().unwrap())).unwrap();
        let der = pem::parse(&csr_pem).unwrap().into_contents();
        let mut csr = rcgen::CertificateSigningRequestParams::from_der(&der.into()).unwrap();
        let lifetime =
            meshca_provider::parse_duration(request["spec"]["duration"].as_str().unwrap_or("1h"))
                .unwrap();
        let now = time::OffsetDateTime::now_utc();
        csr.params.not_before = now;
        csr.params.not_after = now + lifetime;
        csr.params.is_ca = rcgen::IsCa::ExplicitNoCa;
        csr.params.use_authority_key_identifier_extension = true;
        csr.params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        csr.params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let serial =
            meshca_provider::x509::sha256(format!("{}{:?}", csr_pem, SystemTime::now()).as_bytes());
        let mut serial = serial[..16].to_vec();
        serial[0] &= 0x7f;
        serial[0] |= 0x01;
        csr.params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        csr.signed_by(&self.intermediate).unwrap().pem()
    }

    /// An issuer signing with this CA. `status.certificate` holds leaf, intermediate and root
    /// (as cert-manager's CA issuer does when the CA Secret carries its whole chain).
    pub fn issuer(self: &Arc<Self>) -> Issuer {
        let ca = self.clone();
        Arc::new(move |request| {
            let leaf = ca.sign(request);
            let chain = format!("{leaf}{}{}", ca.intermediate_pem, ca.root_pem);
            json!({
                "conditions": [
                    {
                        "type": "Approved", "status": "True", "reason": "cert-manager.io",
                        "message": "Certificate request has been approved by cert-manager.io",
                        "lastTransitionTime": rfc3339(SystemTime::now()),
                    },
                    {
                        "type": "Ready", "status": "True", "reason": "Issued",
                        "message": "Certificate fetched from issuer successfully",
                        "lastTransitionTime": rfc3339(SystemTime::now()),
                    },
                ],
                "certificate": base64(chain.as_bytes()),
                "ca": base64(ca.root_pem.as_bytes()),
            })
        })
    }
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
