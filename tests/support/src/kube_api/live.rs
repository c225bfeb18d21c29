//! Live watches, cluster-scoped objects and namespaces, for the trust distribution's tests (and
//! anything else that follows objects with list+watch).
//!
//! Every change the mock makes to an object (create, replace, delete, [`MockKube::put_object`])
//! is kept in a history with its resourceVersion, and sent to the open watches it matches, one
//! JSON event per line as the API server writes them. A watch (`?watch=true`) on any collection
//! but cert-manager's CertificateRequests (which play their scripts, see `cert_manager`) is
//! live: it first replays the history after the resourceVersion asked for, then streams. A
//! version older than the history kept ([`MockKube::compact_history`]) gets the API server's
//! `410 Gone` ERROR event. Field selectors `metadata.name=` and `metadata.namespace=` are honoured
//! by lists and watches.
//!
//! Cluster-scoped collections: `/api/v1/namespaces` and
//! `/apis/certificates.k8s.io/{v1,v1beta1}/clustertrustbundles` (one store per path, so the
//! two versions do not share objects). A create in a namespace whose Namespace object is
//! terminating is refused with `403 Forbidden`, as the API server does.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::Response;
use futures::channel::mpsc;
use serde_json::{Value, json};

use super::{MockKube, Store, failure};

/// The cluster-scoped kinds the mock serves, by plural.
pub(super) const CLUSTER_SCOPED: &[&str] = &["namespaces", "clustertrustbundles"];

/// Changes made so far and the watches open.
#[derive(Default)]
pub(super) struct Live {
    /// (resourceVersion, collection, name, event).
    history: Vec<(u64, String, String, Value)>,
    /// Versions at or below this are forgotten.
    compacted: u64,
    watches: Vec<LiveWatch>,
}

struct LiveWatch {
    wanted: Wanted,
    sender: mpsc::UnboundedSender<Result<Bytes, Infallible>>,
}

/// Which collections and objects a list or watch is about.
#[derive(Clone)]
pub(super) struct Wanted {
    /// An exact collection, or (for lists across namespaces) a prefix and a suffix.
    pub(super) collection: Collections,
    /// `fieldSelector` terms.
    pub(super) name: Option<String>,
    pub(super) namespace: Option<String>,
}

#[derive(Clone)]
pub(super) enum Collections {
    Exact(String),
    Across { prefix: String, suffix: String },
}

impl Wanted {
    pub(super) fn new(collection: Collections, field_selector: Option<&String>) -> Self {
        let mut wanted = Self {
            collection,
            name: None,
            namespace: None,
        };
        for term in field_selector.into_iter().flat_map(|s| s.split(',')) {
            if let Some(name) = term.strip_prefix("metadata.name=") {
                wanted.name = Some(name.to_owned());
            } else if let Some(namespace) = term.strip_prefix("metadata.namespace=") {
                wanted.namespace = Some(namespace.to_owned());
            }
        }
        wanted
    }

    pub(super) fn collection_matches(&self, collection: &str) -> bool {
        match &self.collection {
            Collections::Exact(exact) => collection == exact,
            Collections::Across { prefix, suffix } => {
                collection.starts_with(prefix) && collection.ends_with(suffix)
            }
        }
    }

    pub(super) fn object_matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        self.name
            .as_deref()
            .is_none_or(|name| meta["name"].as_str() == Some(name))
            && self
                .namespace
                .as_deref()
                .is_none_or(|namespace| meta["namespace"].as_str() == Some(namespace))
    }

    fn matches(&self, collection: &str, object: &Value) -> bool {
        self.collection_matches(collection) && self.object_matches(object)
    }
}

/// Records a change of `collection/name` at `version` and sends it to the matching watches.
pub(super) fn record(store: &mut Store, collection: &str, name: &str, kind: &str, object: &Value) {
    let version = store.next_version;
    let event = json!({"type": kind, "object": object});
    let live = &mut store.live;
    live.history.push((
        version,
        collection.to_owned(),
        name.to_owned(),
        event.clone(),
    ));
    let line = line(&event);
    live.watches.retain(|watch| {
        !watch.wanted.matches(collection, object)
            || watch.sender.unbounded_send(Ok(line.clone())).is_ok()
    });
}

/// Removes `collection/name`, answering the object with a new resourceVersion, and records the
/// deletion; `None` when there is no such object.
pub(super) fn delete(store: &mut Store, collection: &str, name: &str) -> Option<Value> {
    let mut object = store.objects.get_mut(collection)?.remove(name)?;
    store.next_version += 1;
    object["metadata"]["resourceVersion"] = json!(store.next_version.to_string());
    record(store, collection, name, "DELETED", &object);
    Some(object)
}

/// `GET …?watch=true` on a live collection: the history after `resourceVersion`, then changes
/// as they happen.
pub(super) fn watch(
    store: &mut Store,
    wanted: Wanted,
    params: &std::collections::BTreeMap<String, String>,
) -> Response {
    let from: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(store.next_version);
    let (sender, receiver) = mpsc::unbounded();
    if from < store.live.compacted {
        let expired = json!({"type": "ERROR", "object": super::status_body(
            410, "Expired",
            &format!("too old resource version: {from} ({})", store.live.compacted),
        )});
        let _ = sender.unbounded_send(Ok(line(&expired)));
    } else {
        for (version, collection, _, event) in &store.live.history {
            if *version > from && wanted.matches(collection, &event["object"]) {
                let _ = sender.unbounded_send(Ok(line(event)));
            }
        }
        store.live.watches.push(LiveWatch { wanted, sender });
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(receiver))
        .unwrap()
}

/// A create in a terminating namespace is refused, as the API server refuses it.
pub(super) fn refuse_in_terminating_namespace(store: &Store, collection: &str) -> Option<Response> {
    let namespace = collection
        .split('/')
        .skip_while(|s| *s != "namespaces")
        .nth(1)?;
    let phase =
        store.objects.get("/api/v1/namespaces")?.get(namespace)?["status"]["phase"].as_str()?;
    (phase == "Terminating").then(|| {
        failure(
            403,
            "Forbidden",
            &format!(
                "unable to create new content in namespace {namespace} because it is being \
                 terminated"
            ),
        )
    })
}

fn line(event: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(event).unwrap();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

impl MockKube {
    /// Creates (or replaces) an active Namespace `name`.
    pub fn create_namespace(&self, name: &str) {
        self.put_object(
            &format!("/api/v1/namespaces/{name}"),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
        );
    }

    /// Marks Namespace `name` as being deleted (phase Terminating, a deletionTimestamp), as
    /// the API server does while its objects are removed.
    pub fn terminate_namespace(&self, name: &str) {
        self.put_object(
            &format!("/api/v1/namespaces/{name}"),
            json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "deletionTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Terminating"}}),
        );
    }

    /// Deletes the object at `path` (`/api/v1/namespaces/ns/configmaps/name`), as someone else
    /// would; watches see it. Returns whether there was one.
    pub fn delete_object(&self, path: &str) -> bool {
        let (collection, name) = path.rsplit_once('/').unwrap();
        delete(&mut self.store.lock().unwrap(), collection, name).is_some()
    }

    /// Stores `object` at `path` without telling any watch, as if the event had been lost:
    /// only a fresh list shows it.
    pub fn put_object_unwatched(&self, path: &str, mut object: Value) {
        let (collection, name) = path.rsplit_once('/').unwrap();
        let mut store = self.store.lock().unwrap();
        store.next_version += 1;
        let version = store.next_version.to_string();
        super::stamp(&mut object, collection, name, &version);
        store
            .objects
            .entry(collection.to_owned())
            .or_default()
            .insert(name.to_owned(), object);
    }

    /// Drops every fault set with [`MockKube::fail`] that has not been used up.
    pub fn clear_faults(&self) {
        self.store.lock().unwrap().faults.clear();
    }

    /// Forgets the change history: a watch from any version before now gets `410 Gone`, as
    /// after the API server's compaction.
    pub fn compact_history(&self) {
        let mut store = self.store.lock().unwrap();
        store.live.compacted = store.next_version;
        store.live.history.clear();
    }

    /// Ends every open live watch, as the API server does at a watch's timeout (clients resume
    /// from the last version they saw).
    pub fn end_watches(&self) {
        self.store.lock().unwrap().live.watches.clear();
    }

    /// How many live watches are open on collections of `plural`.
    pub fn open_watches(&self, plural: &str) -> usize {
        let suffix = format!("/{plural}");
        let mut store = self.store.lock().unwrap();
        store.live.watches.retain(|w| !w.sender.is_closed());
        store
            .live
            .watches
            .iter()
            .filter(|w| match &w.wanted.collection {
                Collections::Exact(c) => c.ends_with(&suffix),
                Collections::Across { suffix: s, .. } => *s == suffix,
            })
            .count()
    }

    /// Stops answering `path` (an API's collection, e.g.
    /// `/apis/certificates.k8s.io/v1/clustertrustbundles`): every request there gets `404`, as
    /// from a cluster that does not serve that API.
    pub fn not_served(&self, path: &str) {
        self.fail(
            axum::http::Method::GET,
            path,
            404,
            "NotFound",
            "the server could not find the requested resource",
            usize::MAX,
        );
    }
}
