//! A CA kept in a Kubernetes Secret: [`KubernetesSecretStore`].
//!
//! The Secret is of type `Opaque` with two keys, `ca.crt` (the certificate chain, PEM) and
//! `private.key` (the CA's PKCS#8 key, PEM), and is labelled as meshca's. Bootstrap only reads
//! it (GET) or creates it (POST): the API server's create is atomic and fails with
//! `409 AlreadyExists` when the Secret is there, which is what keeps two concurrent creators
//! from both storing a root.
//!
//! A root rotation adds `rotation.json` (the [`Rotation`] record, both roots and keys) and the
//! daemons' `rotation-acks.<replica>.json` reports to the same Secret. Those changes are
//! updates (PUT) carrying the `resourceVersion` that was read, so of two concurrent writers
//! one gets `409 Conflict`, re-reads, and finds the change made. The Secret is never deleted.
//!
//! One file per concern: this one holds the store and its [`CaStore`] implementation,
//! `schema.rs` the Secret's layout (what is read from and written to which key), `bundle.rs`
//! publishing a trust bundle alone, and `rotation.rs` the compare-and-swap updates a root
//! rotation makes.

mod bundle;
mod rotation;
mod schema;

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use meshca_tresor::{
    AckReport, AckReports, CaStore, Created, JwtKeysDigest, JwtKeysSwap, Rotation, RotationChange,
    StoreError, StoredCa, StoredJwtKeys, Swap,
};

/// A CA kept in one Kubernetes Secret (default `meshca-system/meshca-ca-bundle`).
///
/// meshca's ServiceAccount needs `get` and `create` on `secrets` in the namespace, and
/// `update` for root rotation.
#[derive(Clone)]
pub struct KubernetesSecretStore {
    client: kube::Client,
    namespace: String,
    name: String,
}

impl KubernetesSecretStore {
    /// The namespace used unless another is given.
    pub const DEFAULT_NAMESPACE: &'static str = "meshca-system";
    /// The Secret's name unless another is given (an existing `fsm-ca-bundle` can be adopted by
    /// naming it).
    pub const DEFAULT_NAME: &'static str = "meshca-ca-bundle";
    /// The Secret key holding the certificate chain.
    pub const CERTIFICATE_KEY: &'static str = "ca.crt";
    /// The Secret key holding the private key.
    pub const PRIVATE_KEY_KEY: &'static str = "private.key";
    /// The Secret key holding the root rotation in progress.
    pub const ROTATION_KEY: &'static str = "rotation.json";
    /// The Secret key holding the JWT-SVID signing keys.
    pub const JWT_KEYS_KEY: &'static str = "jwt-keys.json";
    /// The prefix of the Secret keys holding the daemons' acknowledgement reports.
    pub const ACKS_PREFIX: &'static str = "rotation-acks.";
    /// The label that marks the Secret as meshca's.
    pub const MANAGED_BY_LABEL: &'static str = "app.kubernetes.io/managed-by";

    /// A store in the default Secret, `meshca-system/meshca-ca-bundle`.
    pub fn new(client: kube::Client) -> Self {
        Self::with_secret(client, Self::DEFAULT_NAMESPACE, Self::DEFAULT_NAME)
    }

    /// A store in the Secret `namespace/name`.
    pub fn with_secret(
        client: kube::Client,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The Secret's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Secret's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kubectl pipeline that prints the stored root with openssl.
    pub fn show_root_command(&self) -> String {
        format!(
            "kubectl get secret {} -n {} -o jsonpath='{{.data.ca\\.crt}}' | base64 -d | openssl \
             x509 -text -noout",
            self.name, self.namespace
        )
    }

    fn api(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// `Secret <ns>/<name> key <key>`: where a part of the CA came from, for error messages.
    fn origin(&self, key: &str) -> String {
        format!("Secret {}/{} key {key}", self.namespace, self.name)
    }

    /// Reads the Secret; `None` when it does not exist.
    async fn read(&self) -> Result<Option<StoredCa>, StoreError> {
        let secret = self.get_secret().await?;
        secret.map(|secret| self.stored_ca(secret)).transpose()
    }

    async fn get_secret(&self) -> Result<Option<Secret>, StoreError> {
        self.api()
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_error("get", e))
    }

    /// Turns a failed `verb` (`get` or `create`) into an error that says what to check. Never
    /// includes the Secret's data: only the API server's status message or the transport error.
    fn api_error(&self, verb: &str, error: kube::Error) -> StoreError {
        let namespace = &self.namespace;
        let rbac = format!("meshca's ServiceAccount needs get/create on secrets in {namespace}");
        let reason = crate::kubernetes::explain_secret_error(verb, namespace, &rbac, error);
        StoreError::Backend {
            store: self.describe(),
            reason,
        }
    }
}

#[async_trait::async_trait]
impl CaStore for KubernetesSecretStore {
    async fn load(&self) -> Result<Option<StoredCa>, StoreError> {
        self.read().await
    }

    async fn create(&self, ca: &StoredCa) -> Result<Created, StoreError> {
        let secret = self.secret_for(ca);
        match self.api().create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(Created::Stored),
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                match self.read().await? {
                    Some(found) => Ok(Created::AlreadyExists(found)),
                    None => Err(StoreError::Vanished {
                        store: self.describe(),
                    }),
                }
            }
            Err(e) => Err(self.api_error("create", e)),
        }
    }

    fn describe(&self) -> String {
        format!("Kubernetes Secret {}/{}", self.namespace, self.name)
    }

    async fn load_rotation(&self) -> Result<Option<Rotation>, StoreError> {
        match self.get_secret().await? {
            Some(secret) => self.rotation_in(&secret.data.unwrap_or_default()),
            None => Ok(None),
        }
    }

    async fn load_state(&self) -> Result<(Option<Rotation>, Option<StoredCa>), StoreError> {
        let Some(secret) = self.get_secret().await? else {
            return Ok((None, None));
        };
        match self.rotation_in(secret.data.as_ref().unwrap_or(&BTreeMap::new()))? {
            Some(rotation) => Ok((Some(rotation), None)),
            None => Ok((None, Some(self.stored_ca(secret)?))),
        }
    }

    async fn change_rotation(
        &self,
        expected: Option<u64>,
        change: RotationChange,
    ) -> Result<Swap, StoreError> {
        let unchanged = self
            .update_data(|data| {
                let current = self.rotation_in(data)?;
                if current.as_ref().map(|r| r.revision) != expected {
                    return Ok(Some(current));
                }
                match &change {
                    RotationChange::Begin(record) | RotationChange::Update(record) => {
                        data.insert(
                            Self::ROTATION_KEY.to_owned(),
                            ByteString(record.to_json().to_vec()),
                        );
                    }
                    RotationChange::Finish => {
                        let Some(record) = current else {
                            return Ok(Some(None));
                        };
                        self.check_replaceable(data, &record)?;
                        data.insert(
                            Self::CERTIFICATE_KEY.to_owned(),
                            ByteString(record.new.certificate_pem().as_bytes().to_vec()),
                        );
                        data.insert(
                            Self::PRIVATE_KEY_KEY.to_owned(),
                            ByteString(record.new.key_pem().as_bytes().to_vec()),
                        );
                        Self::remove_rotation(data);
                    }
                    RotationChange::Abort => Self::remove_rotation(data),
                }
                Ok(None)
            })
            .await?;
        Ok(match unchanged {
            Some(current) => Swap::Stale(current.map(Box::new)),
            None => Swap::Applied,
        })
    }

    async fn report_acks(&self, report: &AckReport) -> Result<(), StoreError> {
        let key = format!(
            "{}{}.json",
            Self::ACKS_PREFIX,
            AckReport::key_safe(&report.replica)
        );
        let bytes = report.to_json();
        self.update_data(|data| -> Result<Option<()>, StoreError> {
            data.insert(key.clone(), ByteString(bytes.clone()));
            Ok(None)
        })
        .await?;
        Ok(())
    }

    async fn load_jwt_keys(&self) -> Result<Option<StoredJwtKeys>, StoreError> {
        let Some(secret) = self.get_secret().await? else {
            return Ok(None);
        };
        Ok(secret
            .data
            .unwrap_or_default()
            .remove(Self::JWT_KEYS_KEY)
            .map(|ByteString(bytes)| StoredJwtKeys {
                contents: zeroize::Zeroizing::new(bytes),
            }))
    }

    async fn swap_jwt_keys(
        &self,
        expected: Option<&JwtKeysDigest>,
        contents: &[u8],
    ) -> Result<JwtKeysSwap, StoreError> {
        let stale = self
            .update_data(|data| {
                let current = data
                    .get(Self::JWT_KEYS_KEY)
                    .map(|ByteString(bytes)| StoredJwtKeys {
                        contents: zeroize::Zeroizing::new(bytes.clone()),
                    });
                if current.as_ref().map(StoredJwtKeys::digest).as_ref() != expected {
                    return Ok(Some(current));
                }
                data.insert(Self::JWT_KEYS_KEY.to_owned(), ByteString(contents.to_vec()));
                Ok(None)
            })
            .await?;
        Ok(match stale {
            Some(current) => JwtKeysSwap::Stale(current),
            None => JwtKeysSwap::Stored,
        })
    }

    async fn ack_reports(&self) -> Result<AckReports, StoreError> {
        let mut reports = AckReports::default();
        let Some(secret) = self.get_secret().await? else {
            return Ok(reports);
        };
        for (key, ByteString(bytes)) in secret.data.unwrap_or_default() {
            if key.starts_with(Self::ACKS_PREFIX) {
                reports.push(&format!("{}/{}[{key}]", self.namespace, self.name), &bytes);
            }
        }
        Ok(reports)
    }
}

impl fmt::Debug for KubernetesSecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesSecretStore")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use zeroize::Zeroizing;

    use std::collections::VecDeque;
    use std::sync::Arc;

    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use meshca_provider::SystemClock;
    use meshca_tresor::{Outcome, RootOptions, SigningAuthority, bootstrap};
    use serde_json::{Value, json};
    use tokio::sync::Mutex;
    use tower_test::mock::Handle;

    const SECRET_PATH: &str = "/api/v1/namespaces/meshca-system/secrets/meshca-ca-bundle";
    const SECRETS_PATH: &str = "/api/v1/namespaces/meshca-system/secrets";

    /// A request the mock API server received.
    #[derive(Debug)]
    struct Seen {
        method: Method,
        path: String,
        body: Option<Value>,
    }

    /// A fake API server answering each request with the next scripted `(status, body)`; it
    /// answers anything beyond the script with a 500, so an unexpected request fails the test
    /// instead of hanging it. Returns everything it received once the client is dropped.
    fn scripted_server(
        script: Vec<(u16, Value)>,
    ) -> (kube::Client, tokio::task::JoinHandle<Vec<Seen>>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let server = tokio::spawn(async move {
            let mut script = VecDeque::from(script);
            let mut seen = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                seen.push(record(request).await);
                let (status, body) = script
                    .pop_front()
                    .unwrap_or((500, status_body(500, "InternalError", "not scripted")));
                send.send_response(json_response(status, &body));
            }
            seen
        });
        (client, server)
    }

    async fn record(request: Request<Body>) -> Seen {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap());
        Seen { method, path, body }
    }

    fn json_response(status: u16, body: &Value) -> Response<Body> {
        Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap()
    }

    /// A `Status` as the API server sends it for a failed request.
    fn status_body(code: u16, reason: &str, message: &str) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": { "name": "meshca-ca-bundle", "kind": "secrets" },
            "code": code,
        })
    }

    fn not_found() -> Value {
        status_body(404, "NotFound", r#"secrets "meshca-ca-bundle" not found"#)
    }

    fn already_exists() -> Value {
        status_body(
            409,
            "AlreadyExists",
            r#"secrets "meshca-ca-bundle" already exists"#,
        )
    }

    /// The Secret as the API server returns it: with server-set metadata, data base64.
    fn secret_json(certificate: &[u8], key: &[u8]) -> Value {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some("meshca-ca-bundle".into()),
                namespace: Some("meshca-system".into()),
                uid: Some("5b6d1f0e-7c1a-4a51-9d43-0d6f6f3f4c11".into()),
                resource_version: Some("48213".into()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".into(),
                    "meshca".into(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([
                ("ca.crt".into(), ByteString(certificate.to_vec())),
                ("private.key".into(), ByteString(key.to_vec())),
            ])),
            ..Secret::default()
        };
        let mut value = serde_json::to_value(secret).unwrap();
        value["kind"] = json!("Secret");
        value["apiVersion"] = json!("v1");
        value
    }

    fn new_root() -> StoredCa {
        SigningAuthority::generate_root(&RootOptions::default(), &SystemClock)
            .unwrap()
            .to_stored()
    }

    fn assert_get(seen: &Seen) {
        assert_eq!(seen.method, Method::GET);
        assert_eq!(seen.path, SECRET_PATH);
    }

    /// Finishes a test: drops the client so the server sees the end, returns what it received.
    async fn requests(
        store: KubernetesSecretStore,
        server: tokio::task::JoinHandle<Vec<Seen>>,
    ) -> Vec<Seen> {
        drop(store);
        server.await.unwrap()
    }

    #[tokio::test]
    async fn an_absent_secret_is_created_with_a_new_root() {
        let (client, server) = scripted_server(vec![
            (404, not_found()),
            // The API server echoes the created object; the store does not need it.
            (
                201,
                json!({ "kind": "Secret", "apiVersion": "v1", "metadata": {} }),
            ),
        ]);
        let store = KubernetesSecretStore::new(client);
        let (authority, outcome) = bootstrap(&store, &RootOptions::default(), &SystemClock)
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Created);
        let seen = requests(store, server).await;
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_get(&seen[0]);
        assert_eq!(seen[1].method, Method::POST);
        assert_eq!(seen[1].path, SECRETS_PATH);
        let body = seen[1].body.clone().unwrap();
        assert_eq!(body["metadata"]["name"], "meshca-ca-bundle");
        assert_eq!(body["metadata"]["namespace"], "meshca-system");
        assert_eq!(
            body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "meshca"
        );
        assert_eq!(body["type"], "Opaque");
        assert!(body["data"]["ca.crt"].is_string());
        assert!(body["data"]["private.key"].is_string());
        assert!(body.get("stringData").is_none());
        // What was POSTed is the CA bootstrap returned, and it loads back as the same root.
        let posted: Secret = serde_json::from_value(body).unwrap();
        let data = posted.data.unwrap();
        assert_eq!(
            data["ca.crt"].0,
            authority.certificate_chain_pem().as_bytes()
        );
        let stored = authority.to_stored();
        assert_eq!(data["private.key"].0, stored.key_pem().as_bytes());
        let reloaded = StoredCa::new(
            String::from_utf8(data["ca.crt"].0.clone()).unwrap(),
            Zeroizing::new(String::from_utf8(data["private.key"].0.clone()).unwrap()),
        );
        let reloaded = reloaded.authority(std::time::SystemTime::now()).unwrap();
        assert_eq!(reloaded.root(), authority.root());
    }

    #[tokio::test]
    async fn a_valid_secret_is_adopted_without_writing() {
        let existing = new_root();
        let (client, server) = scripted_server(vec![(
            200,
            secret_json(
                existing.certificate_pem().as_bytes(),
                existing.key_pem().as_bytes(),
            ),
        )]);
        let store = KubernetesSecretStore::new(client);
        let (authority, outcome) = bootstrap(&store, &RootOptions::default(), &SystemClock)
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Loaded);
        assert_eq!(
            authority.certificate_chain_pem(),
            existing.certificate_pem()
        );
        let seen = requests(store, server).await;
        assert_eq!(seen.len(), 1, "only a GET may be sent: {seen:?}");
        assert_get(&seen[0]);
    }

    #[tokio::test]
    async fn a_create_conflict_adopts_the_winners_ca() {
        let winner = new_root();
        let (client, server) = scripted_server(vec![
            (404, not_found()),
            (409, already_exists()),
            (
                200,
                secret_json(
                    winner.certificate_pem().as_bytes(),
                    winner.key_pem().as_bytes(),
                ),
            ),
        ]);
        let store = KubernetesSecretStore::new(client);
        let (authority, outcome) = bootstrap(&store, &RootOptions::default(), &SystemClock)
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Adopted);
        assert_eq!(authority.certificate_chain_pem(), winner.certificate_pem());
        let seen = requests(store, server).await;
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_get(&seen[0]);
        assert_eq!(seen[1].method, Method::POST);
        assert_get(&seen[2]);
    }

    #[tokio::test]
    async fn a_corrupt_certificate_is_refused_without_writing() {
        let existing = new_root();
        let (client, server) = scripted_server(vec![(
            200,
            secret_json(
                b"-----BEGIN CERTIFICATE-----\nnot base64!\n",
                existing.key_pem().as_bytes(),
            ),
        )]);
        let store = KubernetesSecretStore::new(client);
        let error = bootstrap(&store, &RootOptions::default(), &SystemClock)
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Invalid { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains("Secret meshca-system/meshca-ca-bundle key ca.crt"),
            "{message}"
        );
        assert!(!message.contains("PRIVATE KEY"), "{message}");
        let seen = requests(store, server).await;
        assert_eq!(seen.len(), 1, "only a GET may be sent: {seen:?}");
        assert_get(&seen[0]);
    }

    #[tokio::test]
    async fn half_a_ca_is_reported_incomplete() {
        let existing = new_root();
        let mut secret = secret_json(existing.certificate_pem().as_bytes(), b"");
        secret["data"]
            .as_object_mut()
            .unwrap()
            .remove("private.key");
        let (client, server) = scripted_server(vec![(200, secret)]);
        let store = KubernetesSecretStore::new(client);
        let error = bootstrap(&store, &RootOptions::default(), &SystemClock)
            .await
            .unwrap_err();
        match &error {
            StoreError::Incomplete { present, missing } => {
                assert_eq!(present, "Secret meshca-system/meshca-ca-bundle key ca.crt");
                assert_eq!(
                    missing,
                    "Secret meshca-system/meshca-ca-bundle key private.key"
                );
            }
            other => panic!("expected Incomplete, got {other:?}"),
        }
        assert_eq!(requests(store, server).await.len(), 1);
    }

    #[tokio::test]
    async fn forbidden_points_at_rbac() {
        let (client, server) = scripted_server(vec![(
            403,
            status_body(
                403,
                "Forbidden",
                r#"secrets "meshca-ca-bundle" is forbidden: User "system:serviceaccount:meshca-system:meshca" cannot get resource "secrets" in API group "" in the namespace "meshca-system""#,
            ),
        )]);
        let store = KubernetesSecretStore::new(client);
        let error = bootstrap(&store, &RootOptions::default(), &SystemClock)
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(message.contains("RBAC"), "{message}");
        assert!(
            message
                .contains("meshca's ServiceAccount needs get/create on secrets in meshca-system"),
            "{message}"
        );
        assert!(
            message.contains("Kubernetes Secret meshca-system/meshca-ca-bundle"),
            "{message}"
        );
        assert_eq!(requests(store, server).await.len(), 1);
    }

    #[tokio::test]
    async fn a_server_error_on_create_names_the_secret() {
        let (client, server) = scripted_server(vec![
            (404, not_found()),
            (
                500,
                status_body(500, "InternalError", "etcdserver: request timed out"),
            ),
        ]);
        let store = KubernetesSecretStore::new(client);
        let error = bootstrap(&store, &RootOptions::default(), &SystemClock)
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("meshca-system/meshca-ca-bundle"),
            "{message}"
        );
        assert!(message.contains("500"), "{message}");
        assert!(
            message.contains("etcdserver: request timed out"),
            "{message}"
        );
        assert!(!message.contains("PRIVATE KEY"), "{message}");
        assert_eq!(requests(store, server).await.len(), 2);
    }

    #[tokio::test]
    async fn an_unreachable_api_server_is_reported() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let mut handle: Handle<_, _> = handle;
        handle.send_error(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        let store = KubernetesSecretStore::new(kube::Client::new(service, "default"));
        let error = store.load().await.unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("meshca-system/meshca-ca-bundle"),
            "{message}"
        );
        assert!(message.contains("reachable"), "{message}");
    }

    #[tokio::test]
    async fn debug_shows_where_not_what() {
        let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let store = KubernetesSecretStore::with_secret(client, "mesh", "fsm-ca-bundle");
        let debug = format!("{store:?}");
        assert!(debug.contains("\"mesh\""), "{debug}");
        assert!(debug.contains("\"fsm-ca-bundle\""), "{debug}");
        assert_eq!(store.describe(), "Kubernetes Secret mesh/fsm-ca-bundle");
    }

    /// An API server with one namespace's Secrets: GET, and POST that fails with 409 when the
    /// Secret exists, as the real one does. Counts successful creates.
    fn stateful_server() -> (kube::Client, Arc<Mutex<usize>>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let creates = Arc::new(Mutex::new(0));
        let counter = creates.clone();
        tokio::spawn(async move {
            let mut stored: Option<Value> = None;
            while let Some((request, send)) = handle.next_request().await {
                let seen = record(request).await;
                let (status, body) = match (seen.method, seen.path.as_str(), &stored) {
                    (Method::GET, SECRET_PATH, None) => (404, not_found()),
                    (Method::GET, SECRET_PATH, Some(secret)) => (200, secret.clone()),
                    (Method::POST, SECRETS_PATH, None) => {
                        let secret = seen.body.unwrap();
                        stored = Some(secret.clone());
                        *counter.lock().await += 1;
                        (201, secret)
                    }
                    (Method::POST, SECRETS_PATH, Some(_)) => (409, already_exists()),
                    (method, path, _) => panic!("unexpected {method} {path}"),
                };
                send.send_response(json_response(status, &body));
            }
        });
        (client, creates)
    }

    #[tokio::test]
    async fn concurrent_bootstraps_share_one_root() {
        let (client, creates) = stateful_server();
        let store = KubernetesSecretStore::new(client);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    bootstrap(&store, &RootOptions::default(), &SystemClock)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut roots = Vec::new();
        let mut created = 0;
        for task in tasks {
            let (authority, outcome) = task.await.unwrap();
            created += usize::from(outcome == Outcome::Created);
            roots.push(authority.root().clone());
        }
        assert_eq!(*creates.lock().await, 1);
        assert_eq!(created, 1);
        assert!(roots.windows(2).all(|w| w[0] == w[1]), "roots differ");
    }
}
