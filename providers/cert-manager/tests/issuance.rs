//! The cert-manager provider against a fake API server (see `support/mod.rs` for what is real
//! and what is mocked): the request it creates, the watch, denial, failure, timeout, deletion,
//! garbage collection, chain verification and RBAC errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use meshca_cert_manager::{CertManagerProvider, CertManagerSettings};
use meshca_provider::{
    CertificateProvider, ChainError, CsrError, IssueRequest, KeyType, LeafKey, LeafSpec,
    ProviderError, SpiffeId, TrustBundle, TrustDomain, VerifiedCsr,
};
use meshca_test_support::csr::requested_sans;
use meshca_test_support::kube_api::cert_manager::{
    REQUESTS_PATH, SECRET_PATH, add_existing, base64, denying_issuer, failing_issuer, fake,
    signing_issuer, unbase64,
};
use meshca_test_support::kube_api::{MockKube, Recorded, Step, Watch, status_body};
use meshca_test_support::{PATIENCE, TestCa, eventually};
use serde_json::json;

fn workload() -> LeafSpec {
    let id = SpiffeId::from_short("bookstore/bookstore-v2", &TrustDomain::default()).unwrap();
    LeafSpec::workload(
        &id,
        &["bookstore-v2.bookstore.svc.cluster.local".parse().unwrap()],
        Duration::from_secs(3600),
    )
}

fn provider(fake: &MockKube, settings: CertManagerSettings) -> CertManagerProvider {
    CertManagerProvider::new(fake.in_process_client(), settings).unwrap()
}

async fn issue(
    provider: &CertManagerProvider,
    spec: &LeafSpec,
) -> (
    LeafKey,
    Result<meshca_provider::CertificateChain, ProviderError>,
) {
    let key = LeafKey::generate(KeyType::P256).unwrap();
    let result = provider.issue(&IssueRequest::generated(spec, &key)).await;
    (key, result)
}

fn request_path(name: &str) -> String {
    format!("{REQUESTS_PATH}/{name}")
}

/// The name the fake gave the (only) created request.
fn created_name(seen: &[Recorded]) -> String {
    let creates: Vec<_> = seen
        .iter()
        .filter(|s| s.is("POST", REQUESTS_PATH))
        .collect();
    assert_eq!(creates.len(), 1, "{seen:#?}");
    let prefix = creates[0].body.as_ref().unwrap()["metadata"]["generateName"]
        .as_str()
        .unwrap();
    let watch = seen
        .iter()
        .find(|s| s.params.contains_key("watch"))
        .expect("a watch was opened");
    let name = watch.params["fieldSelector"]
        .strip_prefix("metadata.name=")
        .unwrap()
        .to_owned();
    assert!(
        name.starts_with(prefix),
        "{name} does not start with {prefix}"
    );
    name
}

fn deletes(seen: &[Recorded]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.method == "DELETE")
        .map(|s| s.path.clone())
        .collect()
}

/// SANs of a PEM CSR: (URIs, DNS names).
fn csr_sans(pem_text: &str) -> (Vec<String>, Vec<String>) {
    let block = pem::parse(pem_text).unwrap();
    assert_eq!(block.tag(), "CERTIFICATE REQUEST");
    requested_sans(block.contents())
}

#[tokio::test]
async fn issues_through_a_certificate_request_and_deletes_it() {
    let ca = Arc::new(TestCa::new("mesh"));
    let fake = fake(
        signing_issuer(&ca),
        Some(&ca.root_pem()),
        vec![Watch::Stream(vec![Step::Pending, Step::Outcome])],
    )
    .await;
    let provider = provider(&fake, CertManagerSettings::default());
    let spec = workload();
    let (key, chain) = issue(&provider, &spec).await;
    let chain = chain.unwrap();

    let seen = fake.requests();
    let name = created_name(&seen);
    // Exactly: create, watch, delete. The chain is not verified here (the daemon verifies
    // every chain against trust_bundle()), so the CA bundle Secret is not read.
    let methods: Vec<_> = seen
        .iter()
        .map(|s| (s.method.clone(), s.path.clone()))
        .collect();
    assert_eq!(
        methods,
        vec![
            ("POST".to_owned(), REQUESTS_PATH.to_owned()),
            ("GET".to_owned(), REQUESTS_PATH.to_owned()),
            ("DELETE".to_owned(), request_path(&name)),
        ],
        "{seen:#?}"
    );

    // The request body.
    let body = seen[0].body.clone().unwrap();
    assert_eq!(body["apiVersion"], "cert-manager.io/v1");
    assert_eq!(body["kind"], "CertificateRequest");
    let metadata = &body["metadata"];
    assert_eq!(metadata["generateName"], "meshca-bookstore-v2-");
    assert_eq!(metadata["namespace"], "meshca-system");
    assert!(metadata.get("name").is_none());
    assert_eq!(
        metadata["labels"],
        json!({
            "app.kubernetes.io/managed-by": "meshca",
            "meshca.io/identity": "cluster.local_bookstore_bookstore-v2",
        })
    );
    assert_eq!(
        metadata["annotations"]["meshca.io/identity"],
        "spiffe://cluster.local/ns/bookstore/sa/bookstore-v2"
    );
    let request_spec = &body["spec"];
    assert_eq!(
        request_spec["usages"],
        json!([
            "digital signature",
            "key encipherment",
            "server auth",
            "client auth"
        ])
    );
    assert_eq!(
        request_spec["issuerRef"],
        json!({ "name": "meshca-ca", "kind": "Issuer", "group": "cert-manager.io" })
    );
    assert_eq!(request_spec["duration"], "1h");
    assert_eq!(request_spec["isCA"], false);
    let csr_pem = String::from_utf8(unbase64(request_spec["request"].as_str().unwrap())).unwrap();
    let (uris, dns) = csr_sans(&csr_pem);
    assert_eq!(
        uris,
        ["spiffe://cluster.local/ns/bookstore/sa/bookstore-v2"]
    );
    // The name asked for, and none derived from the identity.
    assert_eq!(dns, ["bookstore-v2.bookstore.svc.cluster.local"]);

    // The watch: that one object, from the resourceVersion the create returned.
    let watch = &seen[1];
    assert_eq!(watch.params["watch"], "true");
    assert_eq!(
        watch.params["fieldSelector"],
        format!("metadata.name={name}")
    );
    assert_eq!(watch.params["resourceVersion"], "1001");

    // The chain: leaf + intermediate (the root cert-manager returned is dropped), for our key,
    // verifying against the Secret's root.
    assert_eq!(chain.certificates().len(), 2);
    let leaf = chain.leaf_info().unwrap();
    assert_eq!(leaf.public_key, key.public_key());
    assert_eq!(leaf.uri_sans, uris);
    let bundle = provider.trust_bundle().await.unwrap();
    assert_eq!(bundle, TrustBundle::from_pem(&ca.root_pem()).unwrap());
    meshca_provider::verify_chain(&chain, &bundle, std::time::SystemTime::now()).unwrap();
    assert!(
        fake.names(REQUESTS_PATH).is_empty(),
        "the request was not deleted"
    );
}

#[tokio::test]
async fn a_denied_request_ends_the_wait_with_the_approvers_message() {
    let ca = Arc::new(TestCa::new("mesh"));
    let fake = fake(
        denying_issuer(),
        Some(&ca.root_pem()),
        vec![Watch::Stream(vec![Step::Outcome])],
    )
    .await;
    let provider = provider(&fake, CertManagerSettings::default());
    let error = issue(&provider, &workload()).await.1.unwrap_err();
    let seen = fake.requests();
    let name = created_name(&seen);
    assert!(matches!(error, ProviderError::Rejected { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("was denied"), "{message}");
    assert!(
        message.contains(&format!("meshca-system/{name}")),
        "{message}"
    );
    assert!(
        message.contains("No policy approved this request: [meshca-policy: spec.allowed.uris"),
        "{message}"
    );
    assert_eq!(deletes(&seen), [request_path(&name)]);
    assert!(!error.is_transient());
}

#[tokio::test]
async fn a_failed_request_ends_the_wait_with_the_issuers_message() {
    let ca = Arc::new(TestCa::new("mesh"));
    let fake = fake(
        failing_issuer(),
        Some(&ca.root_pem()),
        vec![Watch::Stream(vec![Step::Pending, Step::Outcome])],
    )
    .await;
    let provider = provider(&fake, CertManagerSettings::default());
    let error = issue(&provider, &workload()).await.1.unwrap_err();
    let seen = fake.requests();
    let name = created_name(&seen);
    let message = error.to_string();
    assert!(matches!(error, ProviderError::Rejected { .. }), "{error:?}");
    assert!(
        message.contains("failed at Issuer meshca-system/meshca-ca"),
        "{message}"
    );
    assert!(
        message.contains("vault: 400 URI SANs are not allowed by this role"),
        "{message}"
    );
    assert_eq!(deletes(&seen), [request_path(&name)]);
}

#[tokio::test(start_paused = true)]
async fn a_request_that_never_gets_ready_times_out_and_is_deleted() {
    let ca = Arc::new(TestCa::new("mesh"));
    // One pending event, then a watch that stays open with nothing more to say.
    let fake = fake(
        signing_issuer(&ca),
        Some(&ca.root_pem()),
        vec![Watch::Stream(vec![Step::Pending])],
    )
    .await;
    let settings = CertManagerSettings {
        timeout: Duration::from_secs(30),
        ..CertManagerSettings::default()
    };
    let provider = provider(&fake, settings);
    let error = issue(&provider, &workload()).await.1.unwrap_err();
    let seen = fake.requests();
    let name = created_name(&seen);
    let message = error.to_string();
    assert!(error.is_transient(), "{error:?}");
    assert!(
        message.contains(&format!(
            "CertificateRequest meshca-system/{name} was not Ready within 30s"
        )),
        "{message}"
    );
    assert!(
        message.contains("Issuer meshca-system/meshca-ca"),
        "{message}"
    );
    assert!(
        message.contains("Waiting on certificate issuance from order"),
        "the last condition should be in the message: {message}"
    );
    assert_eq!(deletes(&seen), [request_path(&name)]);
}

#[tokio::test]
async fn requests_are_kept_when_asked() {
    let ca = Arc::new(TestCa::new("mesh"));
    let fake = fake(
        signing_issuer(&ca),
        Some(&ca.root_pem()),
        vec![Watch::Stream(vec![Step::Outcome])],
    )
    .await;
    let settings = CertManagerSettings {
        preserve_certificate_requests: true,
        ..CertManagerSettings::default()
    };
    let provider = provider(&fake, settings);
    provider.start().await.unwrap();
    issue(&provider, &workload()).await.1.unwrap();
    fake.set_issuer(denying_issuer());
    fake.set_default_watch(Some(vec![Step::Outcome]));
    issue(&provider, &workload()).await.1.unwrap_err();
    let seen = fake.requests();
    assert!(deletes(&seen).is_empty(), "{seen:#?}");
    // No garbage collection either: nothing was listed.
    assert!(
        !seen
            .iter()
            .any(|s| s.is("GET", REQUESTS_PATH) && !s.params.contains_key("watch"))
    );
    assert_eq!(fake.names(REQUESTS_PATH).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_gone_or_closed_watch_resumes_from_a_fresh_read() {
    let ca = Arc::new(TestCa::new("mesh"));
    let fake = fake(
        signing_issuer(&ca),
        Some(&ca.root_pem()),
        vec![
            // History expired mid-stream: an ERROR event with 410.
            Watch::Stream(vec![Step::Pending, Step::Gone]),
            // The next watch is refused outright with 410.
            Watch::Status(410),
            // The API server closes the watch (its timeout).
            Watch::Stream(vec![Step::End]),
            // The issuer signs while nobody is watching; the closed stream sends nothing.
            Watch::Stream(vec![Step::OutcomeSilently, Step::End]),
        ],
    )
    .await;
    let provider = provider(&fake, CertManagerSettings::default());
    issue(&provider, &workload()).await.1.unwrap();
    let seen = fake.requests();
    let name = created_name(&seen);
    let object = request_path(&name);
    let kinds: Vec<&str> = seen
        .iter()
        .map(|s| match (s.method.as_str(), s.path.as_str()) {
            ("POST", _) => "create",
            ("GET", REQUESTS_PATH) => "watch",
            ("GET", p) if p == object => "get",
            ("DELETE", _) => "delete",
            ("GET", SECRET_PATH) => "secret",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "create", "watch", "get", "watch", "get", "watch", "get", "watch", "get", "delete"
        ],
        "{seen:#?}"
    );
    // Every re-watch starts from the resourceVersion the GET before it returned.
    let versions: Vec<&str> = seen
        .iter()
        .filter(|s| s.params.contains_key("watch"))
        .map(|s| s.params["resourceVersion"].as_str())
        .collect();
    assert_eq!(versions, ["1001", "1002", "1002", "1002"]);
}

#[tokio::test]
async fn a_request_deleted_by_someone_else_is_an_error() {
    let ca = Arc::new(TestCa::new("mesh"));
    let fake = fake(
        signing_issuer(&ca),
        Some(&ca.root_pem()),
        vec![Watch::Stream(vec![Step::Pending, Step::Deleted])],
    )
    .await;
    let provider = provider(&fake, CertManagerSettings::default());
    let error = issue(&provider, &workload()).await.1.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("was deleted before it was Ready"),
        "{error}"
    );
}

#[tokio::test]
async fn stale_requests_are_garbage_collected() {
    let ca = Arc::new(TestCa::new("mesh"));
    let fake = fake(signing_issuer(&ca), Some(&ca.root_pem()), vec![]).await;
    let managed = json!({ "app.kubernetes.io/managed-by": "meshca" });
    add_existing(
        &fake,
        "meshca-crashed-1",
        Duration::from_secs(2 * 3600),
        managed.clone(),
    );
    add_existing(
        &fake,
        "meshca-crashed-2",
        Duration::from_secs(20 * 60),
        managed.clone(),
    );
    add_existing(&fake, "meshca-in-flight", Duration::from_secs(10), managed);
    add_existing(
        &fake,
        "someone-elses",
        Duration::from_secs(2 * 3600),
        json!({ "app.kubernetes.io/managed-by": "Helm" }),
    );
    let provider = provider(&fake, CertManagerSettings::default());
    // start(): the CA bundle is read, then the sweep.
    provider.start().await.unwrap();
    let seen = fake.requests();
    assert!(seen[0].is("GET", SECRET_PATH), "{seen:#?}");
    assert!(seen[1].is("GET", REQUESTS_PATH));
    assert_eq!(
        seen[1].params["labelSelector"],
        "app.kubernetes.io/managed-by=meshca"
    );
    let mut deleted = deletes(&seen);
    deleted.sort();
    assert_eq!(
        deleted,
        [
            request_path("meshca-crashed-1"),
            request_path("meshca-crashed-2")
        ]
    );
    let left: Vec<String> = fake.names(REQUESTS_PATH);
    assert_eq!(left, ["meshca-in-flight", "someone-elses"]);
    // Nothing stale is left: a second sweep deletes nothing.
    assert_eq!(provider.collect_garbage().await.unwrap(), 0);
}

#[tokio::test]
async fn a_chain_is_left_for_the_daemon_to_verify_against_the_secrets_bundle() {
    // The daemon's issuance pipeline verifies every chain against trust_bundle() (and re-reads
    // it once when the issuer is unknown); the provider no longer does it a second time.
    let issuing = Arc::new(TestCa::new("mesh"));
    let other = Arc::new(TestCa::new("elsewhere"));
    let fake = fake(
        signing_issuer(&issuing),
        Some(&other.root_pem()),
        vec![Watch::Stream(vec![Step::Outcome])],
    )
    .await;
    let provider = provider(&fake, CertManagerSettings::default());
    let chain = issue(&provider, &workload()).await.1.unwrap();
    let seen = fake.requests();
    let name = created_name(&seen);
    assert_eq!(deletes(&seen), [request_path(&name)]);
    assert!(!seen.iter().any(|s| s.is("GET", SECRET_PATH)));
    // What the daemon then finds: the issuer is not in the bundle, read afresh from the Secret.
    let bundle = provider.trust_bundle().await.unwrap();
    assert_eq!(bundle, TrustBundle::from_pem(&other.root_pem()).unwrap());
    let error =
        meshca_provider::verify_chain(&chain, &bundle, std::time::SystemTime::now()).unwrap_err();
    assert!(
        matches!(
            error,
            ChainError::NotVerified {
                unknown_issuer: true,
                ..
            }
        ),
        "{error:?}"
    );
}

/// A caller's CSR for `key`, made with rcgen as a client would, asking for `uris`, `dns` and
/// a subject of `subject` attributes.
fn callers_csr(
    key: &LeafKey,
    uris: &[&str],
    dns: &[&str],
    subject: &[(rcgen::DnType, &str)],
) -> VerifiedCsr {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    for (kind, value) in subject {
        params.distinguished_name.push(kind.clone(), *value);
    }
    for uri in uris {
        params
            .subject_alt_names
            .push(rcgen::SanType::URI((*uri).try_into().unwrap()));
    }
    for name in dns {
        params
            .subject_alt_names
            .push(rcgen::SanType::DnsName((*name).try_into().unwrap()));
    }
    let csr = params
        .serialize_request(&key.signing_key().unwrap())
        .unwrap();
    VerifiedCsr::from_der(csr.der()).unwrap()
}

#[tokio::test]
async fn a_callers_csr_asking_for_exactly_its_names_is_forwarded_as_it_came() {
    let ca = Arc::new(TestCa::new("mesh"));
    let fake = fake(signing_issuer(&ca), Some(&ca.root_pem()), vec![]).await;
    fake.set_default_watch(Some(vec![Step::Outcome]));
    let provider = provider(&fake, CertManagerSettings::default());
    let spec = workload();
    for key_type in [KeyType::P256, KeyType::Rsa2048] {
        let key = LeafKey::generate(key_type).unwrap();
        // The names in another order and case: still exactly the spec's.
        let csr = callers_csr(
            &key,
            &["spiffe://cluster.local/ns/bookstore/sa/bookstore-v2"],
            &["Bookstore-v2.bookstore.svc.cluster.local"],
            &[],
        );
        let request = IssueRequest::for_caller(&spec, &csr);
        provider.capabilities().check(&request).unwrap();
        let chain = provider.issue(&request).await.unwrap();
        let created = fake
            .requests()
            .into_iter()
            .rev()
            .find(|s| s.is("POST", REQUESTS_PATH));
        let body = created.unwrap().body.unwrap();
        let sent = unbase64(body["spec"]["request"].as_str().unwrap());
        let sent = pem::parse(sent).unwrap();
        assert_eq!(
            sent.contents(),
            csr.der(),
            "the caller's own CSR, unchanged"
        );
        let leaf = chain.leaf_info().unwrap();
        assert_eq!(leaf.public_key, csr.public_key(), "{key_type}");
        assert_eq!(
            leaf.uri_sans,
            ["spiffe://cluster.local/ns/bookstore/sa/bookstore-v2"]
        );
        let bundle = provider.trust_bundle().await.unwrap();
        meshca_provider::verify_chain(&chain, &bundle, std::time::SystemTime::now()).unwrap();
    }
    assert!(fake.names(REQUESTS_PATH).is_empty());
}

#[tokio::test]
async fn a_callers_csr_asking_for_other_names_is_refused_before_anything_is_created() {
    let ca = Arc::new(TestCa::new("mesh"));
    let fake = fake(signing_issuer(&ca), Some(&ca.root_pem()), vec![]).await;
    fake.set_default_watch(Some(vec![Step::Outcome]));
    let provider = provider(&fake, CertManagerSettings::default());
    let spec = workload();
    let key = LeafKey::generate(KeyType::P256).unwrap();
    let mine = "spiffe://cluster.local/ns/bookstore/sa/bookstore-v2";
    let my_name = "bookstore-v2.bookstore.svc.cluster.local";
    for csr in [
        // Another workload's identity.
        callers_csr(
            &key,
            &["spiffe://cluster.local/ns/kube-system/sa/admin"],
            &[my_name],
            &[],
        ),
        // An extra DNS name.
        callers_csr(&key, &[mine], &[my_name, "evil.example"], &[]),
        // A subject.
        callers_csr(
            &key,
            &[mine],
            &[my_name],
            &[(rcgen::DnType::OrganizationName, "Not meshca")],
        ),
    ] {
        let request = IssueRequest::for_caller(&spec, &csr);
        let refused = provider.capabilities().check(&request).unwrap_err();
        assert!(
            matches!(refused, ProviderError::Csr(CsrError::NamesDiffer { .. })),
            "{refused:?}"
        );
        // Asked anyway, the provider refuses it too.
        let refused = provider.issue(&request).await.unwrap_err();
        assert!(
            matches!(refused, ProviderError::Csr(CsrError::NamesDiffer { .. })),
            "{refused:?}"
        );
    }
    let seen = fake.requests();
    assert!(
        seen.is_empty(),
        "nothing was created or even read: {seen:#?}"
    );
}

#[tokio::test]
async fn without_a_bundle_secret_status_ca_is_the_trust_bundle() {
    let ca = Arc::new(TestCa::new("mesh"));
    let fake = fake(
        signing_issuer(&ca),
        None,
        vec![Watch::Stream(vec![Step::Outcome])],
    )
    .await;
    let mut settings = CertManagerSettings::default();
    settings.ca_bundle_secret.name = String::new();
    let provider = provider(&fake, settings);
    assert!(provider.trust_bundle().await.unwrap().is_empty());
    let chain = issue(&provider, &workload()).await.1.unwrap();
    let bundle = provider.trust_bundle().await.unwrap();
    assert_eq!(bundle, TrustBundle::from_pem(&ca.root_pem()).unwrap());
    meshca_provider::verify_chain(&chain, &bundle, std::time::SystemTime::now()).unwrap();
    assert!(!fake.requests().iter().any(|s| s.path == SECRET_PATH));

    // An issuer whose status.ca does not sign its chain is refused.
    let other = Arc::new(TestCa::new("elsewhere"));
    let signing = ca.clone();
    fake.set_issuer(Arc::new(move |request| {
        let mut status = signing_issuer(&signing)(request);
        status["ca"] = json!(base64(other.root_pem().as_bytes()));
        status
    }));
    fake.set_default_watch(Some(vec![Step::Outcome]));
    let error = issue(&provider, &workload()).await.1.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("does not verify against its own status.ca"),
        "{error}"
    );
}

#[tokio::test]
async fn a_missing_bundle_secret_stops_the_start_with_a_hint() {
    let ca = Arc::new(TestCa::new("mesh"));
    let fake = fake(signing_issuer(&ca), None, vec![]).await;
    let provider = provider(&fake, CertManagerSettings::default());
    let error = provider.start().await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("the CA bundle Secret meshca-system/meshca-ca-bundle does not exist"),
        "{message}"
    );
    assert!(message.contains("meshca bootstrap"), "{message}");
}

#[tokio::test]
async fn forbidden_explains_the_rbac_needed() {
    let ca = Arc::new(TestCa::new("mesh"));
    let fake = fake(signing_issuer(&ca), Some(&ca.root_pem()), vec![]).await;
    fake.fail_with(
        Method::POST,
        REQUESTS_PATH,
        status_body(
            403,
            "Forbidden",
            r#"certificaterequests.cert-manager.io is forbidden: User "system:serviceaccount:meshca-system:meshca" cannot create resource "certificaterequests" in API group "cert-manager.io" in the namespace "meshca-system""#,
        ),
        1,
    );
    let provider = provider(&fake, CertManagerSettings::default());
    let error = issue(&provider, &workload()).await.1.unwrap_err();
    assert!(
        matches!(error, ProviderError::Unauthorized { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("RBAC forbids create on certificaterequests in namespace meshca-system"),
        "{message}"
    );
    assert!(
        message.contains(
            "needs create, get, list, watch and delete on certificaterequests.cert-manager.io"
        ),
        "{message}"
    );
    assert!(
        message.contains(r#"cannot create resource "certificaterequests""#),
        "{message}"
    );
    let seen = fake.requests();
    assert_eq!(seen.len(), 1, "nothing after a refused create: {seen:#?}");
}

#[tokio::test]
async fn a_server_error_is_transient() {
    let ca = Arc::new(TestCa::new("mesh"));
    let fake = fake(signing_issuer(&ca), Some(&ca.root_pem()), vec![]).await;
    fake.fail_with(
        Method::POST,
        REQUESTS_PATH,
        status_body(500, "InternalError", "etcdserver: request timed out"),
        1,
    );
    let provider = provider(&fake, CertManagerSettings::default());
    let error = issue(&provider, &workload()).await.1.unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    assert!(
        error.to_string().contains("etcdserver: request timed out"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_issuance_still_deletes_its_request() {
    let ca = Arc::new(TestCa::new("mesh"));
    // The watch stays open: the issuer never answers.
    let fake = fake(signing_issuer(&ca), Some(&ca.root_pem()), vec![]).await;
    let provider = provider(&fake, CertManagerSettings::default());
    let spec = workload();
    let key = LeafKey::generate(KeyType::P256).unwrap();
    // The daemon gives up first (its own issue timeout drops the future).
    let abandoned = tokio::time::timeout(
        Duration::from_secs(5),
        provider.issue(&IssueRequest::generated(&spec, &key)),
    )
    .await;
    assert!(abandoned.is_err());
    let seen = eventually(
        PATIENCE,
        "the abandoned request to be deleted",
        || async { fake.requests() },
        |seen| !deletes(seen).is_empty(),
    )
    .await;
    assert_eq!(deletes(&seen), [request_path(&created_name(&seen))]);
}
