//! The one fake Kubernetes API server of the tests: stateful, on loopback over plain HTTP and,
//! for tests on paused time, in process through kube's `Client` over a tower service — both
//! answering from the same objects.
//!
//! No API server can run on these machines, so the tests that drive meshca as a user would
//! (the `meshca` binary, `kubectl`, OpenBao's Kubernetes auth method, the cert-manager
//! provider) talk to this instead, through a kubeconfig it writes or [`MockKube::in_process_client`].
//! It keeps objects like the API server does — create fails with `409 AlreadyExists`, a stale
//! `resourceVersion` on update with `409 Conflict`, a missing object is a `404` with a Status
//! body — records every request (method, path, query, body, bearer token) for the tests to
//! assert on, answers TokenReviews from a table of tokens the test registers, and can be told
//! to fail the next matching requests.
//!
//! cert-manager ([`cert_manager`]): a created CertificateRequest gets what cert-manager's
//! webhook adds, and each watch call plays the next [`Watch`] script as a streamed response
//! body, one JSON event per line as the API server writes them, in which the issuer set with
//! [`MockKube::set_issuer`] (for example a [`TestCa`](crate::TestCa) signing the CSR) decides
//! the request's outcome.
//!
//! What it is not: there is no admission, no RBAC (every bearer token is accepted), no watch
//! beyond the scripts, and label selectors support only `key=value` terms. Lists across all
//! namespaces (`GET /api/v1/secrets`) are answered; a concurrent writer can be simulated with
//! [`MockKube::touch_after_read`], and concurrent readers made to meet with
//! [`MockKube::hold_reads`].

pub mod cert_manager;
mod live;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::channel::mpsc;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

pub use cert_manager::{Issuer, Step, Watch};

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// The query's parameters, percent-decoded.
    pub params: BTreeMap<String, String>,
    pub body: Option<Value>,
    pub bearer: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
}

impl Recorded {
    /// True for requests that change state.
    pub fn is_write(&self) -> bool {
        !matches!(self.method.as_str(), "GET" | "HEAD")
    }

    /// True for `method path`.
    pub fn is(&self, method: &str, path: &str) -> bool {
        self.method == method && self.path == path
    }
}

/// Who a service-account token belongs to, for TokenReview.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    pub namespace: String,
    pub service_account: String,
    /// The audiences the token was issued for.
    pub audiences: Vec<String>,
}

/// The pod a token is bound to (a projected token), as the TokenReview reports it in
/// `status.user.extra`.
#[derive(Debug, Clone)]
pub struct TokenPod {
    pub name: String,
    pub uid: Option<String>,
    pub node: Option<String>,
}

#[derive(Debug)]
struct Fault {
    method: Method,
    path: String,
    status: u16,
    /// The Status body answered.
    body: Value,
    remaining: usize,
}

#[derive(Default)]
struct Store {
    /// Objects by collection path (`/api/v1/namespaces/ns/secrets`) and name.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    next_version: u64,
    requests: Vec<Recorded>,
    faults: Vec<Fault>,
    tokens: HashMap<String, TokenOwner>,
    /// Pods tokens are bound to; a token not here is reported bound to a pod `pod-1` with no
    /// UID or node.
    token_pods: HashMap<String, TokenPod>,
    /// Object paths whose next GETs are followed by a change, as if another client wrote the
    /// object right after the reader read it: (path, remaining).
    touches: Vec<(String, usize)>,
    /// Paths whose next GETs wait for each other before being answered: (path, barrier,
    /// remaining).
    holds: Vec<(String, Arc<tokio::sync::Barrier>, usize)>,
    /// Scripts the next watch calls play, in order.
    watches: VecDeque<Watch>,
    /// Played when `watches` is used up; `None` holds the watch open without events.
    default_watch: Option<Vec<Step>>,
    /// What the issuer (cert-manager) makes of a CertificateRequest: its new `status`.
    issuer: Option<Issuer>,
    /// Watch streams kept open until the server stops.
    open: Vec<mpsc::UnboundedSender<Result<Bytes, Infallible>>>,
    /// The change history and the live watches ([`live`]).
    live: live::Live,
}

type Shared = Arc<Mutex<Store>>;

impl Store {
    /// Stores `object` as `collection/name` with a new resourceVersion and the fields the API
    /// server owns; returns what was stored.
    fn write(&mut self, collection: &str, name: &str, mut object: Value) -> Value {
        self.next_version += 1;
        let version = self.next_version.to_string();
        stamp(&mut object, collection, name, &version);
        let existed = self
            .objects
            .entry(collection.to_owned())
            .or_default()
            .insert(name.to_owned(), object.clone())
            .is_some();
        let kind = if existed { "MODIFIED" } else { "ADDED" };
        live::record(self, collection, name, kind, &object);
        object
    }
}

/// A running mock API server; stops when dropped.
pub struct MockKube {
    pub addr: SocketAddr,
    store: Shared,
    task: JoinHandle<()>,
    dir: tempfile::TempDir,
}

impl MockKube {
    /// The bearer token in the kubeconfig [`MockKube::kubeconfig`] writes.
    pub const ADMIN_TOKEN: &'static str = "mock-admin-token";

    /// Starts on a free loopback port.
    pub async fn start() -> Self {
        let store: Shared = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().fallback(handle).with_state(store.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let mock = Self {
            addr,
            store,
            task,
            dir,
        };
        std::fs::write(mock.kubeconfig(), mock.kubeconfig_yaml()).unwrap();
        mock
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig file pointing at this server (for `KUBECONFIG`, `kubectl --kubeconfig`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster:\n    server: {}\n\
             users:\n- name: admin\n  user:\n    token: {}\ncontexts:\n- name: mock\n  context:\n    \
             cluster: mock\n    user: admin\n    namespace: default\ncurrent-context: mock\n",
            self.url(),
            Self::ADMIN_TOKEN
        )
    }

    /// A kube `Client` for this server.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// Runs the `meshca` binary against this server (through `KUBECONFIG`), outside a cluster,
    /// with its Tresor CA directory `tresor_dir` and no configuration or namespace from the
    /// environment.
    pub async fn meshca(&self, tresor_dir: &Path, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(crate::meshca_binary())
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("MESHCA_TRESOR_DIRECTORY", tresor_dir)
            .env_remove("MESHCA_CONFIG")
            .env_remove("MESHCA_NAMESPACE")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("NO_COLOR", "1")
            .output()
            .await
            .expect("the meshca binary runs")
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.store.lock().unwrap().requests.clone()
    }

    /// Requests that changed (or tried to change) state.
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(Recorded::is_write)
            .collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.store.lock().unwrap().requests.clear();
    }

    /// The stored object at `path` (`/api/v1/namespaces/ns/secrets/name`).
    pub fn object(&self, path: &str) -> Option<Value> {
        let (collection, name) = path.rsplit_once('/').unwrap();
        let store = self.store.lock().unwrap();
        store.objects.get(collection)?.get(name).cloned()
    }

    /// Stores `object` at `path` directly, as if someone else had created it.
    pub fn put_object(&self, path: &str, object: Value) {
        let (collection, name) = path.rsplit_once('/').unwrap();
        self.store.lock().unwrap().write(collection, name, object);
    }

    /// A Secret with `data` (values given as bytes) at `namespace/name`.
    pub fn put_secret(&self, namespace: &str, name: &str, data: &[(&str, &[u8])]) {
        use base64::Engine as _;
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(key, value)| {
                let encoded = base64::engine::general_purpose::STANDARD.encode(value);
                ((*key).to_owned(), Value::String(encoded))
            })
            .collect();
        self.put_object(
            &format!("/api/v1/namespaces/{namespace}/secrets/{name}"),
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": data}),
        );
    }

    /// Registers a service-account token for TokenReview.
    pub fn add_token(
        &self,
        token: &str,
        namespace: &str,
        service_account: &str,
        audiences: &[&str],
    ) {
        self.store.lock().unwrap().tokens.insert(
            token.to_owned(),
            TokenOwner {
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
                audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            },
        );
    }

    /// Binds a registered token to a pod: its TokenReview names the pod, and its UID and node
    /// when given (`authentication.kubernetes.io/pod-name`, `…/pod-uid`, `…/node-name`).
    pub fn bind_token_to_pod(&self, token: &str, pod: TokenPod) {
        self.store
            .lock()
            .unwrap()
            .token_pods
            .insert(token.to_owned(), pod);
    }

    /// Stores a running pod `namespace/name` of `service_account` on `node` with the UID
    /// `uid-<name>`; returns its path.
    pub fn put_pod(
        &self,
        namespace: &str,
        name: &str,
        service_account: &str,
        node: &str,
    ) -> String {
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
        self.put_object(&path, pod_object(name, service_account, node, "Running"));
        path
    }

    /// Makes the next `times` requests `method path` fail with `status` and a Status body.
    pub fn fail(
        &self,
        method: Method,
        path: &str,
        status: u16,
        reason: &str,
        message: &str,
        times: usize,
    ) {
        self.fail_with(method, path, status_body(status, reason, message), times);
    }

    /// Makes the next `times` requests `method path` fail with `body` (a Status) and its code.
    pub fn fail_with(&self, method: Method, path: &str, body: Value, times: usize) {
        let status = body["code"]
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .expect("a Status body has a code");
        self.store.lock().unwrap().faults.push(Fault {
            method,
            path: path.to_owned(),
            status,
            body,
            remaining: times,
        });
    }

    /// Makes each of the next `times` successful GETs of `path` be followed, once answered, by
    /// a change of the stored object (a new resourceVersion and a `meshca.test/touched`
    /// annotation), as if another client had updated it: an update carrying the version the
    /// reader saw then fails with `409 Conflict`, as it would on a real API server.
    pub fn touch_after_read(&self, path: &str, times: usize) {
        self.store
            .lock()
            .unwrap()
            .touches
            .push((path.to_owned(), times));
    }

    /// Makes the next `readers` GETs of `path` (an object or a list) wait until all of them
    /// have arrived, then answers them together from the same state: concurrent clients are
    /// made to read the same resourceVersion, without timing. A reader that never comes is
    /// waited for at most a minute, after which the others are answered anyway (so a broken
    /// test fails on its assertions rather than hanging).
    pub fn hold_reads(&self, path: &str, readers: usize) {
        self.store.lock().unwrap().holds.push((
            path.to_owned(),
            Arc::new(tokio::sync::Barrier::new(readers)),
            readers,
        ));
    }

    /// Where the kubeconfig and other files of this mock live.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A kube `Client` answered in process by this server (no socket): for tests on paused
    /// time, where waiting on real I/O would let tokio jump the clock.
    pub fn in_process_client(&self) -> kube::Client {
        let store = self.store.clone();
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let store = store.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect_bytes().await?;
                Ok::<_, kube::Error>(
                    answer(&store, parts.method, &parts.uri, &parts.headers, body).await,
                )
            }
        });
        kube::Client::new(service, "default")
    }

    /// The names of the objects stored in `collection` (`/api/v1/namespaces/ns/secrets`).
    pub fn names(&self, collection: &str) -> Vec<String> {
        let store = self.store.lock().unwrap();
        store
            .objects
            .get(collection)
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Sets the last resourceVersion handed out: the next change gets `version + 1`.
    pub fn set_resource_version(&self, version: u64) {
        self.store.lock().unwrap().next_version = version;
    }

    /// Scripts for the next watch calls, played in order.
    pub fn push_watches(&self, watches: impl IntoIterator<Item = Watch>) {
        self.store.lock().unwrap().watches.extend(watches);
    }

    /// What a watch call plays once the scripts are used up (`None`: stays open, silent).
    pub fn set_default_watch(&self, steps: Option<Vec<Step>>) {
        self.store.lock().unwrap().default_watch = steps;
    }

    /// What cert-manager makes of a CertificateRequest when a script plays its outcome.
    pub fn set_issuer(&self, issuer: Issuer) {
        self.store.lock().unwrap().issuer = Some(issuer);
    }
}

impl Drop for MockKube {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `data` of a Secret as JSON (a request body or a stored object), decoded.
pub fn secret_data(secret: &Value) -> BTreeMap<String, Vec<u8>> {
    use base64::Engine as _;
    secret["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap();
            (k.clone(), bytes)
        })
        .collect()
}

/// A Kubernetes `Status` failure body.
pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

pub(crate) fn respond(code: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap();
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn failure(code: u16, reason: &str, message: &str) -> Response {
    respond(code, status_body(code, reason, message))
}

/// Sets the fields the API server owns.
fn stamp(object: &mut Value, collection: &str, name: &str, version: &str) {
    let namespace = collection
        .split('/')
        .skip_while(|s| *s != "namespaces")
        .nth(1)
        .map(str::to_owned);
    let meta = object
        .as_object_mut()
        .unwrap()
        .entry("metadata")
        .or_insert_with(|| json!({}));
    let meta = meta.as_object_mut().unwrap();
    meta.insert("name".into(), json!(name));
    if let Some(namespace) = namespace {
        meta.insert("namespace".into(), json!(namespace));
    }
    meta.insert("resourceVersion".into(), json!(version));
    meta.entry("uid")
        .or_insert_with(|| json!(format!("uid-{name}-{version}")));
    meta.entry("creationTimestamp")
        .or_insert_with(|| json!(cert_manager::rfc3339(std::time::SystemTime::now())));
}

async fn handle(
    State(store): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(&store, method, &uri, &headers, body).await
}

/// Answers one request, whichever way it came.
async fn answer(
    store: &Shared,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/').to_owned();
    let query = uri.query().map(str::to_owned);
    let params = query.as_deref().map(query_params).unwrap_or_default();
    let body: Option<Value> = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(value) => Some(value),
            Err(e) => return failure(400, "BadRequest", &format!("body is not JSON: {e}")),
        }
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    if method == Method::GET {
        let barrier = {
            let mut store = store.lock().unwrap();
            store
                .holds
                .iter_mut()
                .find(|(p, _, remaining)| *p == path && *remaining > 0)
                .map(|(_, barrier, remaining)| {
                    *remaining -= 1;
                    barrier.clone()
                })
        };
        if let Some(barrier) = barrier {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(60), barrier.wait()).await;
        }
    }
    let mut store = store.lock().unwrap();
    let index = store.requests.len();
    store.requests.push(Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        params: params.clone(),
        body: body.clone(),
        bearer,
        status: 0,
    });
    let response = match store
        .faults
        .iter_mut()
        .find(|f| f.remaining > 0 && f.method == method && f.path == path)
    {
        Some(fault) => {
            fault.remaining -= 1;
            respond(fault.status, fault.body.clone())
        }
        None => {
            let response = route(&mut store, &method, &path, query.as_deref(), &params, body);
            if method == Method::GET && response.status() == StatusCode::OK {
                touch(&mut store, &path);
            }
            response
        }
    };
    store.requests[index].status = response.status().as_u16();
    response
}

/// Changes the object at `path` if a test asked for it with [`MockKube::touch_after_read`].
fn touch(store: &mut Store, path: &str) {
    let Some(entry) = store
        .touches
        .iter_mut()
        .find(|(p, remaining)| p == path && *remaining > 0)
    else {
        return;
    };
    entry.1 -= 1;
    let Some((collection, name)) = path.rsplit_once('/') else {
        return;
    };
    store.next_version += 1;
    let version = store.next_version.to_string();
    if let Some(object) = store
        .objects
        .get_mut(collection)
        .and_then(|c| c.get_mut(name))
    {
        object["metadata"]["resourceVersion"] = json!(version);
        object["metadata"]["annotations"]["meshca.test/touched"] = json!(version);
    }
}

fn route(
    store: &mut Store,
    method: &Method,
    path: &str,
    query: Option<&str>,
    params: &BTreeMap<String, String>,
    body: Option<Value>,
) -> Response {
    match path {
        "/api" => {
            return respond(
                200,
                json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            );
        }
        "/apis" => {
            return respond(
                200,
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
            );
        }
        "/api/v1" => {
            return respond(
                200,
                json!({
            "kind": "APIResourceList", "groupVersion": "v1",
            "resources": [{"name": "secrets", "singularName": "secret", "namespaced": true,
                "kind": "Secret", "verbs": ["create", "delete", "get", "list", "update", "watch"]}]}),
            );
        }
        "/version" => {
            return respond(
                200,
                json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-mock"}),
            );
        }
        "/apis/authentication.k8s.io/v1/tokenreviews" if method == Method::POST => {
            return token_review(store, body.unwrap_or_default());
        }
        _ => {}
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // /api/v1/namespaces/{ns}/{plural}[/{name}] or /apis/{group}/{version}/namespaces/…
    let namespaced_at = match segments.first() {
        Some(&"api") => 2,
        Some(&"apis") => 3,
        _ => {
            return failure(
                404,
                "NotFound",
                &format!("the server could not find {path}"),
            );
        }
    };
    // Cluster-scoped objects (live.rs): /api/v1/namespaces[/{name}],
    // /apis/{group}/{version}/clustertrustbundles[/{name}].
    if segments.len() <= namespaced_at + 2
        && segments
            .get(namespaced_at)
            .is_some_and(|plural| live::CLUSTER_SCOPED.contains(plural))
    {
        let plural = segments[namespaced_at];
        let collection = format!("/{}", segments[..=namespaced_at].join("/"));
        let name = segments.get(namespaced_at + 1).copied();
        return crud(
            store,
            method,
            path,
            &collection,
            plural,
            name,
            query,
            params,
            body,
        );
    }
    // A list across all namespaces: /api/v1/{plural} or /apis/{group}/{version}/{plural}.
    if method == Method::GET
        && segments.len() == namespaced_at + 1
        && segments[namespaced_at] != "namespaces"
    {
        if params.get("watch").is_some_and(|w| w == "true") {
            let plural = segments[namespaced_at];
            let prefix = path
                .trim_end_matches(plural)
                .trim_end_matches('/')
                .to_owned()
                + "/namespaces/";
            let wanted = live::Wanted::new(
                live::Collections::Across {
                    prefix,
                    suffix: format!("/{plural}"),
                },
                params.get("fieldSelector"),
            );
            return live::watch(store, wanted, params);
        }
        return list_all(store, path, segments[namespaced_at], query);
    }
    if segments.get(namespaced_at) != Some(&"namespaces") || segments.len() < namespaced_at + 3 {
        return failure(
            404,
            "NotFound",
            &format!("the server could not find {path}"),
        );
    }
    let plural = segments[namespaced_at + 2];
    let collection = segments[..namespaced_at + 3].join("/");
    let collection = format!("/{collection}");
    let name = segments.get(namespaced_at + 3).copied();
    crud(
        store,
        method,
        path,
        &collection,
        plural,
        name,
        query,
        params,
        body,
    )
}

/// Reads and writes of one collection's objects.
#[allow(clippy::too_many_arguments)]
fn crud(
    store: &mut Store,
    method: &Method,
    path: &str,
    collection: &str,
    plural: &str,
    name: Option<&str>,
    query: Option<&str>,
    params: &BTreeMap<String, String>,
    body: Option<Value>,
) -> Response {
    let collection = collection.to_owned();
    match (method.clone(), name) {
        (Method::GET, None)
            if params.get("watch").is_some_and(|w| w == "true")
                && plural == "certificaterequests" =>
        {
            cert_manager::watch(store, &collection, params)
        }
        (Method::GET, None) if params.get("watch").is_some_and(|w| w == "true") => {
            let wanted = live::Wanted::new(
                live::Collections::Exact(collection.clone()),
                params.get("fieldSelector"),
            );
            live::watch(store, wanted, params)
        }
        (Method::GET, None) => list(store, &collection, plural, query),
        (Method::POST, None) => create(store, &collection, plural, body.unwrap_or_default()),
        (Method::GET, Some(name)) => match store.objects.get(&collection).and_then(|c| c.get(name))
        {
            Some(object) => respond(200, object.clone()),
            None => not_found(plural, name),
        },
        (Method::PUT, Some(name)) => {
            replace(store, &collection, plural, name, body.unwrap_or_default())
        }
        (Method::DELETE, Some(name)) => match live::delete(store, &collection, name) {
            Some(object) => respond(200, object),
            None => not_found(plural, name),
        },
        _ => failure(
            405,
            "MethodNotAllowed",
            &format!("{method} is not supported on {path}"),
        ),
    }
}

fn not_found(plural: &str, name: &str) -> Response {
    failure(404, "NotFound", &format!("{plural} \"{name}\" not found"))
}

fn list(store: &Store, collection: &str, plural: &str, query: Option<&str>) -> Response {
    list_collections(store, plural, query, |c| c == collection)
}

/// `GET /api/v1/secrets`: every namespace's objects of that kind.
fn list_all(store: &Store, path: &str, plural: &str, query: Option<&str>) -> Response {
    let prefix = path
        .trim_end_matches(plural)
        .trim_end_matches('/')
        .to_owned()
        + "/namespaces/";
    let suffix = format!("/{plural}");
    list_collections(store, plural, query, |c| {
        c.starts_with(&prefix) && c.ends_with(&suffix)
    })
}

fn list_collections(
    store: &Store,
    plural: &str,
    query: Option<&str>,
    wanted: impl Fn(&str) -> bool,
) -> Response {
    let fields = live::Wanted::new(
        live::Collections::Exact(String::new()),
        query_params(query.unwrap_or_default()).get("fieldSelector"),
    );
    let selector: Vec<(String, String)> = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| pair.strip_prefix("labelSelector="))
        .flat_map(|s| {
            let s = percent_decode(s);
            s.split(',')
                .filter_map(|term| {
                    term.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|(collection, _)| wanted(collection))
        .flat_map(|(_, c)| c.values())
        .filter(|object| fields.object_matches(object))
        .filter(|object| {
            selector.iter().all(|(key, value)| {
                object["metadata"]["labels"][key.as_str()].as_str() == Some(value.as_str())
            })
        })
        .filter(|object| field_selector_matches(object, query))
        .cloned()
        .collect();
    respond(
        200,
        json!({
            "kind": format!("{}List", kind_of(plural)), "apiVersion": api_version_of(plural),
            "metadata": {"resourceVersion": store.next_version.to_string()},
            "items": items,
        }),
    )
}

fn create(store: &mut Store, collection: &str, plural: &str, mut object: Value) -> Response {
    let name = match object["metadata"]["name"].as_str() {
        Some(name) => name.to_owned(),
        None => match object["metadata"]["generateName"].as_str() {
            Some(prefix) => format!("{prefix}{:05x}", store.next_version + 1),
            None => return failure(422, "Invalid", "metadata.name: Required value"),
        },
    };
    if let Some(refused) = live::refuse_in_terminating_namespace(store, collection) {
        return refused;
    }
    if store
        .objects
        .get(collection)
        .is_some_and(|c| c.contains_key(&name))
    {
        return failure(
            409,
            "AlreadyExists",
            &format!("{plural} \"{name}\" already exists"),
        );
    }
    if plural == "certificaterequests" {
        cert_manager::as_the_webhook_does(&mut object);
    }
    respond(201, store.write(collection, &name, object))
}

fn replace(
    store: &mut Store,
    collection: &str,
    plural: &str,
    name: &str,
    object: Value,
) -> Response {
    let Some(current) = store.objects.get(collection).and_then(|c| c.get(name)) else {
        return not_found(plural, name);
    };
    let current_version = current["metadata"]["resourceVersion"].clone();
    let offered = &object["metadata"]["resourceVersion"];
    if !offered.is_null() && *offered != current_version {
        return failure(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {plural} \"{name}\": the object has been \
                 modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    respond(200, store.write(collection, name, object))
}

fn token_review(store: &Store, review: Value) -> Response {
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let asked: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let status = match store.tokens.get(token) {
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
        Some(owner) => {
            let granted: Vec<&String> = if asked.is_empty() {
                owner.audiences.iter().collect()
            } else {
                asked
                    .iter()
                    .filter(|a| owner.audiences.contains(a))
                    .collect()
            };
            if granted.is_empty() {
                json!({"authenticated": false,
                    "error": "invalid bearer token, token audiences is invalid for the target audiences"})
            } else {
                json!({
                    "authenticated": true,
                    "user": {
                        "username": format!("system:serviceaccount:{}:{}", owner.namespace, owner.service_account),
                        "uid": format!("uid-{}-{}", owner.namespace, owner.service_account),
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", owner.namespace), "system:authenticated"],
                        "extra": token_extra(store, token),
                    },
                    "audiences": granted,
                })
            }
        }
    };
    respond(
        201,
        json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "metadata": {"creationTimestamp": null},
            "spec": review["spec"], "status": status,
        }),
    )
}

/// A pod object as the API server stores it (UID `uid-<name>`).
pub fn pod_object(name: &str, service_account: &str, node: &str, phase: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "uid": format!("uid-{name}")},
        "spec": {"serviceAccountName": service_account, "nodeName": node,
            "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": phase},
    })
}

/// The TokenReview's `status.user.extra` for `token`: the pod it is bound to.
fn token_extra(store: &Store, token: &str) -> Value {
    let Some(pod) = store.token_pods.get(token) else {
        return json!({"authentication.kubernetes.io/pod-name": ["pod-1"]});
    };
    let mut extra = json!({"authentication.kubernetes.io/pod-name": [pod.name]});
    if let Some(uid) = &pod.uid {
        extra["authentication.kubernetes.io/pod-uid"] = json!([uid]);
    }
    if let Some(node) = &pod.node {
        extra["authentication.kubernetes.io/node-name"] = json!([node]);
    }
    extra
}

/// Whether `object` matches the query's `fieldSelector` (`a.b=v`, `a.b==v`, `a.b!=v` terms,
/// comma-separated, on any dotted path; a missing field is the empty string), as the API
/// server filters pods by `spec.nodeName`, `spec.serviceAccountName` and `status.phase`.
fn field_selector_matches(object: &Value, query: Option<&str>) -> bool {
    let Some(selector) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("fieldSelector="))
    else {
        return true;
    };
    let selector = percent_decode(selector);
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (path, want, equal) = if let Some((p, v)) = term.split_once("!=") {
            (p, v, false)
        } else if let Some((p, v)) = term.split_once("==") {
            (p, v, true)
        } else if let Some((p, v)) = term.split_once('=') {
            (p, v, true)
        } else {
            return false;
        };
        let have = path
            .split('.')
            .fold(object, |value, key| &value[key])
            .as_str()
            .unwrap_or_default();
        (have == want) == equal
    })
}

fn api_version_of(plural: &str) -> &'static str {
    match plural {
        "certificaterequests" => "cert-manager.io/v1",
        "leases" => "coordination.k8s.io/v1",
        "clustertrustbundles" => "certificates.k8s.io/v1",
        _ => "v1",
    }
}

fn kind_of(plural: &str) -> &'static str {
    match plural {
        "secrets" => "Secret",
        "leases" => "Lease",
        "certificaterequests" => "CertificateRequest",
        "namespaces" => "Namespace",
        "configmaps" => "ConfigMap",
        "clustertrustbundles" => "ClusterTrustBundle",
        _ => "Object",
    }
}

/// `a=b&c=d`, percent-decoded.
fn query_params(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
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
    String::from_utf8_lossy(&out).into_owned()
}
