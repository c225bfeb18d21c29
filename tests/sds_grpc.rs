//! The SDS server at the gRPC level: a tonic client against the real server over a socket.
#![allow(clippy::unwrap_used)]

use meshca_test_support as support;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use async_trait::async_trait;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use meshca::sds::{
    AuthMode, MtlsSettings, Purpose, SdsSettings, TokenAuthenticator, TokenError, UnixPeerMap,
};
use meshca_provider::{SpiffeId, TrustDomain};
use support::*;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const ALL_NAMES: [&str; 9] = [
    "default",
    "ROOTCA",
    "service-cert:ns/client",
    "service-cert-inbound:ns/client",
    "service-cert-outbound:ns/client",
    "root-cert-for-mtls-inbound",
    "root-cert-for-mtls-inbound:ns/client",
    "root-cert-for-mtls-outbound:ns/server",
    "spiffe://cluster.local/ns/ns/sa/client",
];

fn setup() -> Arc<TestSource> {
    TestSource::new(Arc::new(TestCa::new("grpc")))
}

#[tokio::test]
async fn every_resource_name_is_served() {
    let source = setup();
    let sds = RunningSds::start(dev_settings(), source.clone()).await;
    let mut stream = SotwClient::open(
        channel(&sds.url()).await,
        Some(node("ns/client")),
        &ALL_NAMES,
    )
    .await
    .unwrap();
    let response = stream.next().await.unwrap();
    assert_eq!(response.type_url, meshca::sds::convert::SECRET_TYPE_URL);
    assert!(!response.version_info.is_empty() && !response.nonce.is_empty());
    let secrets = secrets(&response.resources);
    let names: Vec<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ALL_NAMES, "one resource per name, in request order");

    let caller = id("ns/client");
    let bundle = source.ca().bundle();
    let serial = |name| check_certificate(secret_named(&secrets, name), &caller, &bundle).serial;
    let default = serial("default");
    assert_eq!(serial("service-cert:ns/client"), default);
    assert_eq!(serial("spiffe://cluster.local/ns/ns/sa/client"), default);
    let inbound = serial("service-cert-inbound:ns/client");
    let outbound = serial("service-cert-outbound:ns/client");
    let distinct: HashSet<_> = [&default, &inbound, &outbound].into_iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "default, inbound and outbound are separate certificates"
    );
    let keys: HashSet<Vec<u8>> = [
        "default",
        "service-cert-inbound:ns/client",
        "service-cert-outbound:ns/client",
    ]
    .iter()
    .map(|n| tls_of(secret_named(&secrets, n)).1.public_key_spki())
    .collect();
    assert_eq!(keys.len(), 3, "each purpose has its own key");

    for name in [
        "ROOTCA",
        "root-cert-for-mtls-inbound",
        "root-cert-for-mtls-inbound:ns/client",
    ] {
        let (served, context) = validation_of(secret_named(&secrets, name));
        assert_eq!(served, bundle, "{name}");
        assert!(context.match_typed_subject_alt_names.is_empty(), "{name}");
    }
    let (served, context) = validation_of(secret_named(
        &secrets,
        "root-cert-for-mtls-outbound:ns/server",
    ));
    assert_eq!(served, bundle);
    let [matcher] = context.match_typed_subject_alt_names.as_slice() else {
        panic!("one SAN matcher expected");
    };
    assert_eq!(matcher.san_type, SanType::Uri as i32);
    assert_eq!(
        matcher.matcher.as_ref().unwrap().match_pattern,
        Some(MatchPattern::Exact(
            "spiffe://cluster.local/ns/ns/sa/server".to_owned()
        ))
    );
    assert_eq!(source.issued(), 3, "one issuance per (identity, purpose)");
}

#[tokio::test]
async fn fetch_secrets_answers_once() {
    let source = setup();
    let sds = RunningSds::start(dev_settings(), source.clone()).await;
    let mut client = SecretDiscoveryServiceClient::new(channel(&sds.url()).await);
    let response = client
        .fetch_secrets(request(Some(node("ns/client")), &["default", "ROOTCA"]))
        .await
        .unwrap()
        .into_inner();
    let secrets = secrets(&response.resources);
    check_certificate(
        secret_named(&secrets, "default"),
        &id("ns/client"),
        &source.ca().bundle(),
    );
    assert_eq!(
        validation_of(secret_named(&secrets, "ROOTCA")).0,
        source.ca().bundle()
    );
    let again = client
        .fetch_secrets(request(Some(node("ns/client")), &["default", "ROOTCA"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.version_info, response.version_info,
        "same content, same version"
    );
}

#[tokio::test]
async fn ack_then_nack_is_counted_and_the_stream_stays_open() {
    let source = setup();
    let sds = RunningSds::start(dev_settings(), source.clone()).await;
    let mut stream = SotwClient::open(
        channel(&sds.url()).await,
        Some(node("ns/client")),
        &["default"],
    )
    .await
    .unwrap();
    let first = stream.next().await.unwrap();
    stream.ack(&first, &["default"]).await;
    // Requests are handled in order: the answer to this names change proves the ACK was seen.
    stream.ack(&first, &["default", "ROOTCA"]).await;
    let second = stream.next().await.unwrap();
    assert_eq!(secrets(&second.resources).len(), 2);
    assert_ne!(second.nonce, first.nonce);
    assert!(
        second.version_info.parse::<u64>().unwrap() > first.version_info.parse::<u64>().unwrap()
    );
    // A response is answered once: the names change carrying the same nonce is no second ACK.
    assert_eq!(sds.stats.snapshot().acks, 1);

    source.renew(&id("ns/client"), Purpose::Default);
    let pushed = stream.next().await.unwrap();
    stream
        .nack(&pushed, &["default", "ROOTCA"], "envoy: bad key")
        .await;
    stream.ack(&pushed, &["default"]).await;
    let after = stream.next().await.expect("the stream survives a NACK");
    assert_eq!(secrets(&after.resources).len(), 1);
    let stats = sds.stats.snapshot();
    assert_eq!(stats.nacks, 1);
    assert_eq!(
        stats.acks, 1,
        "a NACKed response is not ACKed by a later request"
    );
    assert_eq!(stats.pushes, 1);
    assert_eq!(stats.streams_open, 1);
}

#[tokio::test]
async fn stale_nonces_are_ignored() {
    let source = setup();
    let sds = RunningSds::start(dev_settings(), source.clone()).await;
    let mut stream = SotwClient::open(
        channel(&sds.url()).await,
        Some(node("ns/client")),
        &["default"],
    )
    .await
    .unwrap();
    let first = stream.next().await.unwrap();
    source.renew(&id("ns/client"), Purpose::Default);
    let second = stream.next().await.unwrap();
    // A names change carrying the old nonce is stale: no answer, no ACK counted.
    stream.ack(&first, &["default", "ROOTCA"]).await;
    stream
        .ack(
            &second,
            &["default", "ROOTCA", "root-cert-for-mtls-inbound"],
        )
        .await;
    let third = stream.next().await.unwrap();
    assert_eq!(
        secrets(&third.resources).len(),
        3,
        "the stale request was not answered"
    );
    assert_eq!(sds.stats.snapshot().acks, 1);
}

#[tokio::test]
async fn renewal_is_pushed_to_every_stream_holding_the_key() {
    let source = setup();
    let sds = RunningSds::start(dev_settings(), source.clone()).await;
    let ch = channel(&sds.url()).await;
    let name = "service-cert-inbound:ns/server";
    let mut a = SotwClient::open(ch.clone(), Some(node("ns/server")), &[name])
        .await
        .unwrap();
    let mut b = SotwClient::open(ch.clone(), Some(node("ns/server")), &[name])
        .await
        .unwrap();
    let before_a = tls_of(&secrets(&a.next().await.unwrap().resources)[0])
        .0
        .leaf_info()
        .unwrap();
    let before_b = tls_of(&secrets(&b.next().await.unwrap().resources)[0])
        .0
        .leaf_info()
        .unwrap();
    assert_eq!(before_a.serial, before_b.serial);

    let renewed = source.renew(&id("ns/server"), Purpose::Inbound);
    for stream in [&mut a, &mut b] {
        let pushed = stream.next().await.unwrap();
        let (chain, _) = tls_of(&secrets(&pushed.resources)[0]);
        let info = chain.leaf_info().unwrap();
        assert_eq!(info.serial, renewed.info.serial);
        assert_ne!(info.serial, before_a.serial);
    }
    assert_eq!(sds.stats.snapshot().pushes, 2);
}

#[tokio::test]
async fn bundle_rotation_is_pushed_and_acks_are_tracked() {
    let source = setup();
    let sds = RunningSds::start(dev_settings(), source.clone()).await;
    let mut stream = SotwClient::open(
        channel(&sds.url()).await,
        Some(node("ns/client")),
        &["ROOTCA"],
    )
    .await
    .unwrap();
    let first = stream.next().await.unwrap();
    let new_ca = TestCa::new("next");
    assert_eq!(sds.acks.missing(new_ca.root()), vec![id("ns/client")]);

    let mut both = source.ca().bundle();
    both.push(new_ca.root().clone());
    source.set_bundle(both.clone());
    let pushed = stream.next().await.unwrap();
    assert_eq!(validation_of(&secrets(&pushed.resources)[0]).0, both);
    assert_ne!(pushed.nonce, first.nonce);
    stream.ack(&pushed, &["ROOTCA"]).await;
    stream
        .ack(&pushed, &["ROOTCA", "root-cert-for-mtls-inbound"])
        .await;
    stream.next().await.unwrap();
    assert!(sds.acks.missing(new_ca.root()).is_empty());
    assert_eq!(sds.acks.streams(), 1);
}

#[tokio::test]
async fn no_credential_is_unauthenticated() {
    let source = setup();
    let sds = RunningSds::start(dev_settings(), source.clone()).await;
    let status = SotwClient::open(channel(&sds.url()).await, None, &["default"])
        .await
        .err()
        .expect("no node must be refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = SotwClient::open(
        channel(&sds.url()).await,
        Some(node("not-an-identity")),
        &["default"],
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("SERVICE_ACCOUNT"),
        "{}",
        status.message()
    );
    assert_eq!(
        source.issued(),
        0,
        "nothing is issued before authentication"
    );
    assert_eq!(sds.stats.snapshot().unauthenticated, 2);
}

#[tokio::test]
async fn node_metadata_names_the_caller_in_development_mode() {
    let source = setup();
    let sds = RunningSds::start(dev_settings(), source.clone()).await;
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let mut n = node("sidecar~10.1.2.3~pod.bookstore~bookstore.svc.cluster.local");
    n.metadata = Some(Struct {
        fields: [
            ("NAMESPACE".to_owned(), string("bookstore")),
            ("SERVICE_ACCOUNT".to_owned(), string("bookstore-v2")),
        ]
        .into_iter()
        .collect(),
    });
    let mut stream = SotwClient::open(channel(&sds.url()).await, Some(n), &["default"])
        .await
        .unwrap();
    let response = stream.next().await.unwrap();
    check_certificate(
        &secrets(&response.resources)[0],
        &id("bookstore/bookstore-v2"),
        &source.ca().bundle(),
    );
}

#[tokio::test]
async fn another_identitys_certificate_is_permission_denied() {
    let source = setup();
    let sds = RunningSds::start(dev_settings(), source.clone()).await;
    let ch = channel(&sds.url()).await;
    for name in [
        "service-cert:ns/server",
        "service-cert-inbound:ns/server",
        "spiffe://cluster.local/ns/ns/sa/server",
    ] {
        let status = SotwClient::open(ch.clone(), Some(node("ns/client")), &["ROOTCA", name])
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), Code::PermissionDenied, "{name}: {status:?}");
        assert!(status.message().contains(name));
    }
    let status = SecretDiscoveryServiceClient::new(ch.clone())
        .fetch_secrets(request(
            Some(node("ns/client")),
            &["service-cert-outbound:ns/server"],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // Mid-stream: the names change is refused and ends the stream.
    let mut stream = SotwClient::open(ch, Some(node("ns/client")), &["default"])
        .await
        .unwrap();
    let first = stream.next().await.unwrap();
    stream
        .ack(&first, &["default", "service-cert:ns/server"])
        .await;
    assert_eq!(
        stream.next().await.unwrap_err().code(),
        Code::PermissionDenied
    );

    assert!(source.current(&id("ns/server"), Purpose::Default).is_none());
    assert!(source.current(&id("ns/server"), Purpose::Inbound).is_none());
    assert!(
        source
            .current(&id("ns/server"), Purpose::Outbound)
            .is_none()
    );
    assert_eq!(sds.stats.snapshot().permission_denied, 5);
}

#[tokio::test]
async fn malformed_names_are_invalid_argument() {
    let source = setup();
    let sds = RunningSds::start(dev_settings(), source.clone()).await;
    for name in [
        "service-cert:ns",
        "certificate-please",
        "spiffe://cluster.local/x",
    ] {
        let status = SotwClient::open(
            channel(&sds.url()).await,
            Some(node("ns/client")),
            &["default", name],
        )
        .await
        .err()
        .unwrap();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}");
        assert!(status.message().contains(name), "{}", status.message());
        assert!(
            status
                .message()
                .contains("root-cert-for-mtls-outbound:<ns>/<sa>")
        );
    }
    let mut wrong_type = request(Some(node("ns/client")), &["default"]);
    wrong_type.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".to_owned();
    let status = SecretDiscoveryServiceClient::new(channel(&sds.url()).await)
        .fetch_secrets(wrong_type)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(source.issued(), 0, "a refused request issues nothing");
}

#[tokio::test]
async fn limits_are_enforced_with_clear_errors() {
    let source = setup();
    let mut settings = dev_settings();
    settings.limits.max_message_bytes = 4096;
    settings.limits.max_names_per_request = 3;
    settings.limits.max_streams = 1;
    let sds = RunningSds::start(settings, source.clone()).await;
    let ch = channel(&sds.url()).await;

    let mut big = node("ns/client");
    big.cluster = "x".repeat(10_000);
    let status = SecretDiscoveryServiceClient::new(ch.clone())
        .fetch_secrets(request(Some(big), &["default"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("4096"), "{}", status.message());

    let status = SotwClient::open(ch.clone(), Some(node("ns/client")), &ALL_NAMES[..4])
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("limit is 3"),
        "{}",
        status.message()
    );

    let mut held = SotwClient::open(ch.clone(), Some(node("ns/client")), &["default"])
        .await
        .unwrap();
    held.next().await.unwrap();
    let status = SotwClient::open(ch.clone(), Some(node("ns/client")), &["default"])
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("1 streams"),
        "{}",
        status.message()
    );
    drop(held);
}

#[tokio::test]
async fn delta_subscribe_and_unsubscribe() {
    let source = setup();
    let sds = RunningSds::start(dev_settings(), source.clone()).await;
    let ch = channel(&sds.url()).await;
    let mut delta = DeltaClient::open(ch, node("ns/server"), &["service-cert-inbound:ns/server"])
        .await
        .unwrap();
    let first = delta.next().await.unwrap();
    assert_eq!(first.resources.len(), 1);
    assert_eq!(first.resources[0].name, "service-cert-inbound:ns/server");
    assert!(!first.resources[0].version.is_empty());

    delta.send(Some(&first), &["ROOTCA"], &[]).await;
    let second = delta.next().await.unwrap();
    let names: Vec<&str> = second.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["ROOTCA"], "only the new resource is sent");

    // Unsubscribing has no answer of its own: subscribing to another name in the same request
    // gives one, which proves the unsubscribe was applied.
    delta
        .send(
            Some(&second),
            &["root-cert-for-mtls-inbound"],
            &["service-cert-inbound:ns/server"],
        )
        .await;
    let answer = delta.next().await.unwrap();
    let names: Vec<&str> = answer.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["root-cert-for-mtls-inbound"]);
    // No longer subscribed: this renewal is not pushed; a bundle change is.
    source.renew(&id("ns/server"), Purpose::Inbound);
    let mut bundle = source.ca().bundle();
    bundle.push(TestCa::new("other").root().clone());
    source.set_bundle(bundle);
    let third = delta.next().await.unwrap();
    let names: Vec<&str> = third.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["ROOTCA", "root-cert-for-mtls-inbound"]);

    delta
        .send(Some(&third), &["service-cert-inbound:ns/server"], &[])
        .await;
    let fourth = delta.next().await.unwrap();
    assert_eq!(fourth.resources[0].name, "service-cert-inbound:ns/server");
    assert_ne!(
        fourth.resources[0].version, first.resources[0].version,
        "the renewed certificate"
    );
    let secret = secrets(&[fourth.resources[0].resource.clone().unwrap()]);
    check_certificate(&secret[0], &id("ns/server"), &source.ca().bundle());
    assert_eq!(sds.stats.snapshot().acks, 3);

    delta
        .send(Some(&fourth), &["service-cert:ns/client"], &[])
        .await;
    assert_eq!(
        delta.next().await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn restart_then_reconnect_chains_to_the_same_root() {
    let source = setup();
    let sds = RunningSds::start(dev_settings(), source.clone()).await;
    let address = sds.tcp.unwrap();
    let ch = channel(&sds.url()).await;
    let mut stream = SotwClient::open(ch.clone(), Some(node("ns/client")), &["default"])
        .await
        .unwrap();
    let before = stream.next().await.unwrap();
    sds.stop().await.unwrap();
    let status = stream.next().await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "drain tells streams to reconnect: {status:?}"
    );

    // A new process: fresh cache (new source), same CA, same address.
    let restarted = TestSource::new(source.ca().clone());
    let mut settings = dev_settings();
    settings.tcp = Some(address);
    let _sds = RunningSds::start(settings, restarted.clone()).await;
    let mut stream = SotwClient::open(ch, Some(node("ns/client")), &["default"])
        .await
        .unwrap();
    let after = stream.next().await.unwrap();
    let old = tls_of(&secrets(&before.resources)[0]).0;
    let new = secrets(&after.resources);
    let info = check_certificate(&new[0], &id("ns/client"), &source.ca().bundle());
    assert_ne!(info.serial, old.leaf_info().unwrap().serial);
}

#[tokio::test]
async fn mtls_identity_comes_from_the_client_certificate() {
    let source = setup();
    let td = TrustDomain::default();
    let mut settings = SdsSettings::tcp(
        "127.0.0.1:0".parse().unwrap(),
        AuthMode::Mtls(MtlsSettings::new(&td)),
    );
    settings.limits.drain_timeout = std::time::Duration::from_secs(2);
    let sds = RunningSds::start(settings, source.clone()).await;
    let url = format!("https://{}", sds.tcp.unwrap());
    let client_cert = source
        .ca()
        .issue(&id("ns/client"), std::time::Duration::from_secs(600));
    let tls = |with_identity: bool| {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(source.ca().bundle().to_pem()))
            .domain_name("meshca.meshca-system.cluster.local");
        if with_identity {
            config.identity(Identity::from_pem(
                client_cert.chain.to_pem(),
                client_cert.key.private_key_pem().as_bytes(),
            ))
        } else {
            config
        }
    };
    let ch = Endpoint::from_shared(url.clone())
        .unwrap()
        .tls_config(tls(true))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // The node claims another identity: mTLS ignores it.
    let mut stream = SotwClient::open(ch.clone(), Some(node("ns/server")), &["default"])
        .await
        .unwrap();
    let response = stream.next().await.unwrap();
    check_certificate(
        &secrets(&response.resources)[0],
        &id("ns/client"),
        &source.ca().bundle(),
    );
    let status = SotwClient::open(ch, None, &["service-cert:ns/server"])
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied);

    // Without a client certificate, or with one from another CA, the handshake fails.
    let without = Endpoint::from_shared(url.clone())
        .unwrap()
        .tls_config(tls(false))
        .unwrap();
    let refused = async {
        match without.connect().await {
            Err(_) => true,
            Ok(ch) => SecretDiscoveryServiceClient::new(ch)
                .fetch_secrets(request(None, &["default"]))
                .await
                .is_err(),
        }
    };
    assert!(refused.await);
    let stranger =
        TestCa::new("stranger").issue(&id("ns/client"), std::time::Duration::from_secs(600));
    let foreign = Endpoint::from_shared(url)
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(source.ca().bundle().to_pem()))
                .domain_name("meshca.meshca-system.cluster.local")
                .identity(Identity::from_pem(
                    stranger.chain.to_pem(),
                    stranger.key.private_key_pem().as_bytes(),
                )),
        )
        .unwrap();
    let refused = match foreign.connect().await {
        Err(_) => true,
        Ok(ch) => SecretDiscoveryServiceClient::new(ch)
            .fetch_secrets(request(None, &["default"]))
            .await
            .is_err(),
    };
    assert!(
        refused,
        "a certificate from another CA must not authenticate"
    );
}

#[tokio::test]
async fn unix_socket_peer_credentials_map_to_identities() {
    let source = setup();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sds.sock");
    let my_uid = std::fs::metadata("/proc/self").unwrap().uid();
    let mut map = UnixPeerMap::default();
    map.insert(my_uid, id("ns/client"));
    let sds = RunningSds::start(
        SdsSettings::unix(&socket, AuthMode::UnixPeer(map)),
        source.clone(),
    )
    .await;
    let ch = unix_channel(&socket).await;
    let mut stream = SotwClient::open(ch.clone(), Some(node("ns/server")), &["default", "ROOTCA"])
        .await
        .unwrap();
    let response = stream.next().await.unwrap();
    check_certificate(
        &secrets(&response.resources)[0],
        &id("ns/client"),
        &source.ca().bundle(),
    );
    drop(stream);
    sds.stop().await.unwrap();
    assert!(!socket.exists(), "the socket file is removed on shutdown");

    let mut other = UnixPeerMap::default();
    other.insert(my_uid.wrapping_add(1), id("ns/client"));
    let sds = RunningSds::start(
        SdsSettings::unix(&socket, AuthMode::UnixPeer(other)),
        source.clone(),
    )
    .await;
    let status = SotwClient::open(
        unix_channel(&socket).await,
        Some(node("ns/client")),
        &["default"],
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains(&format!("uid {my_uid}")),
        "{}",
        status.message()
    );
    drop(sds);
}

struct OneToken;

#[async_trait]
impl TokenAuthenticator for OneToken {
    async fn authenticate(&self, token: &str) -> Result<SpiffeId, TokenError> {
        match token {
            "client-token" => Ok(id("ns/client")),
            _ => Err(TokenError::Rejected {
                reason: "not a known token".to_owned(),
            }),
        }
    }
}

#[tokio::test]
async fn bearer_tokens_go_through_the_token_authenticator() {
    let source = setup();
    let sds = RunningSds::start(
        SdsSettings::tcp(
            "127.0.0.1:0".parse().unwrap(),
            AuthMode::Token(Arc::new(OneToken)),
        ),
        source.clone(),
    )
    .await;
    let ch = channel(&sds.url()).await;
    let fetch = |token: Option<&'static str>| {
        let ch = ch.clone();
        async move {
            let mut req = tonic::Request::new(request(None, &["default"]));
            if let Some(token) = token {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
            }
            SecretDiscoveryServiceClient::new(ch)
                .fetch_secrets(req)
                .await
        }
    };
    let response = fetch(Some("client-token")).await.unwrap().into_inner();
    check_certificate(
        &secrets(&response.resources)[0],
        &id("ns/client"),
        &source.ca().bundle(),
    );
    assert_eq!(fetch(None).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(
        fetch(Some("forged")).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn development_mode_is_refused_off_loopback() {
    for address in ["0.0.0.0:0", "10.1.2.3:8443", "[::]:0"] {
        let settings = SdsSettings::tcp(address.parse().unwrap(), AuthMode::Development);
        let err = meshca::sds::SdsServer::new(settings).unwrap_err();
        assert!(
            matches!(err, meshca::sds::SdsError::DevelopmentModeExposed { .. }),
            "{address}: {err:?}"
        );
        assert!(err.to_string().contains("loopback"));
    }
    for address in ["127.0.0.1:0", "[::1]:0"] {
        meshca::sds::SdsServer::new(SdsSettings::tcp(
            address.parse().unwrap(),
            AuthMode::Development,
        ))
        .unwrap();
    }
    meshca::sds::SdsServer::new(SdsSettings::unix("/tmp/x.sock", AuthMode::Development)).unwrap();
    let mut both = SdsSettings::unix("/tmp/x.sock", AuthMode::UnixPeer(UnixPeerMap::default()));
    both.tcp = Some("127.0.0.1:0".parse().unwrap());
    assert!(
        meshca::sds::SdsServer::new(both).is_err(),
        "peer credentials do not exist on TCP"
    );
}

#[tokio::test]
async fn a_silent_stream_is_closed_after_the_first_request_timeout() {
    let source = setup();
    let mut settings = dev_settings();
    settings.limits.first_request_timeout = std::time::Duration::from_millis(200);
    settings.limits.max_streams = 1;
    let sds = RunningSds::start(settings, source).await;
    let ch = channel(&sds.url()).await;
    let (_keep_open, rx) = tokio::sync::mpsc::channel(1);
    let status = SecretDiscoveryServiceClient::new(ch.clone())
        .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // Its stream slot is free again.
    let mut stream = SotwClient::open(ch, Some(node("ns/client")), &["default"])
        .await
        .unwrap();
    stream.next().await.unwrap();
}

struct Broken;

#[async_trait]
impl meshca::sds::SecretSource for Broken {
    async fn certificate(
        &self,
        identity: &SpiffeId,
        _purpose: Purpose,
    ) -> Result<
        tokio::sync::watch::Receiver<Arc<meshca::sds::ServedCertificate>>,
        meshca::sds::SourceError,
    > {
        Err(meshca::sds::SourceError::Unavailable {
            identity: identity.to_string(),
            reason: "the CA at https://vault:8200 is unreachable".to_owned(),
        })
    }

    fn trust_bundle(&self) -> tokio::sync::watch::Receiver<Arc<meshca_provider::TrustBundle>> {
        tokio::sync::watch::Sender::new(Arc::new(TestCa::new("broken").bundle())).subscribe()
    }
}

#[tokio::test]
async fn source_failures_are_unavailable_so_proxies_retry() {
    let sds = RunningSds::start(dev_settings(), Arc::new(Broken)).await;
    let status = SotwClient::open(
        channel(&sds.url()).await,
        Some(node("ns/client")),
        &["default"],
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("vault:8200 is unreachable"),
        "{}",
        status.message()
    );
}

/// The serial of the certificate the SDS endpoint presents to a new TLS connection.
async fn presented_serial(
    address: std::net::SocketAddr,
    bundle: &meshca_provider::TrustBundle,
) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(bundle.roots().iter().cloned());
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(roots)));
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name =
        rustls_pki_types::ServerName::try_from("meshca.meshca-system.cluster.local").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    meshca_provider::CertificateInfo::parse(&leaf)
        .unwrap()
        .serial
}

#[tokio::test]
async fn mtls_follows_server_renewals_and_root_rotation() {
    let source = setup();
    let mtls = MtlsSettings::new(&TrustDomain::default());
    let server_identity = mtls.server_identity.clone();
    let sds = RunningSds::start(
        SdsSettings::tcp("127.0.0.1:0".parse().unwrap(), AuthMode::Mtls(mtls)),
        source.clone(),
    )
    .await;
    let address = sds.tcp.unwrap();
    let bundle = source.ca().bundle();
    let first = presented_serial(address, &bundle).await;
    assert_eq!(
        first,
        source
            .current(&server_identity, Purpose::Default)
            .unwrap()
            .info
            .serial
    );
    let renewed = source.renew(&server_identity, Purpose::Default);
    assert_eq!(
        presented_serial(address, &bundle).await,
        renewed.info.serial,
        "renewal without restart"
    );

    // A client from a new root is refused until the bundle carries that root.
    let next_ca = TestCa::new("next-root");
    let client = next_ca.issue(&id("ns/client"), std::time::Duration::from_secs(600));
    let fetch = || async {
        let endpoint = Endpoint::from_shared(format!("https://{address}"))
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(bundle.to_pem()))
                    .domain_name("meshca.meshca-system.cluster.local")
                    .identity(Identity::from_pem(
                        client.chain.to_pem(),
                        client.key.private_key_pem().as_bytes(),
                    )),
            )
            .unwrap();
        match endpoint.connect().await {
            Ok(ch) => SecretDiscoveryServiceClient::new(ch)
                .fetch_secrets(request(None, &["default"]))
                .await
                .is_ok(),
            Err(_) => false,
        }
    };
    assert!(!fetch().await, "an unknown root must not authenticate");
    let mut rotated = bundle.clone();
    rotated.push(next_ca.root().clone());
    source.set_bundle(rotated);
    assert!(fetch().await, "after rotation the new root authenticates");
}

/// Nonces that name no current response, through the path both protocols share: a
/// state-of-the-world stream answers a first request carrying a nonce from elsewhere (a proxy
/// reconnecting after a server restart) and counts no ACK for it; a delta request answering an
/// older response counts no ACK either, but its subscription changes apply.
#[tokio::test]
async fn nonces_that_name_no_current_response() {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    let source = setup();
    let sds = RunningSds::start(dev_settings(), source.clone()).await;

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DiscoveryRequest {
        version_info: "41".to_owned(),
        response_nonce: "41".to_owned(),
        ..request(Some(node("ns/client")), &["default"])
    })
    .await
    .unwrap();
    let mut sotw = SecretDiscoveryServiceClient::new(channel(&sds.url()).await)
        .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), sotw.message())
        .await
        .expect("the first request is answered")
        .unwrap()
        .unwrap();
    assert_eq!(secrets(&first.resources).len(), 1);
    assert_eq!(sds.stats.snapshot().acks, 0);

    let mut delta = DeltaClient::open(channel(&sds.url()).await, node("ns/server"), &["ROOTCA"])
        .await
        .unwrap();
    let older = delta.next().await.unwrap();
    delta
        .send(Some(&older), &["service-cert-inbound:ns/server"], &[])
        .await;
    let newer = delta.next().await.unwrap();
    assert_eq!(newer.resources[0].name, "service-cert-inbound:ns/server");
    assert_eq!(sds.stats.snapshot().acks, 1);
    // Answers `older` while `newer` is the last response: stale.
    delta
        .send(Some(&older), &["root-cert-for-mtls-inbound"], &["ROOTCA"])
        .await;
    let answer = delta.next().await.unwrap();
    let names: Vec<&str> = answer.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["root-cert-for-mtls-inbound"]);
    assert_eq!(sds.stats.snapshot().acks, 1, "a stale nonce is no ACK");
    // ROOTCA was unsubscribed: a bundle change reaches only the name still held.
    let mut bundle = source.ca().bundle();
    bundle.push(TestCa::new("other").root().clone());
    source.set_bundle(bundle);
    let pushed = delta.next().await.unwrap();
    let names: Vec<&str> = pushed.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["root-cert-for-mtls-inbound"]);
}

/// Every certificate in `secrets` is valid now.
fn assert_none_expired(
    secrets: &[envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret],
) {
    let now = std::time::SystemTime::now();
    for secret in secrets {
        if let Some(envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type::TlsCertificate(_)) = &secret.r#type {
            let info = tls_of(secret).0.leaf_info().unwrap();
            assert!(
                info.not_after > now,
                "{} carries a certificate that expired at {:?}",
                secret.name,
                info.not_after
            );
        }
    }
}

#[tokio::test]
async fn an_expired_certificate_is_never_sent_on_any_stream() {
    let source = setup();
    let sds = RunningSds::start(dev_settings(), source.clone()).await;
    let ch = channel(&sds.url()).await;
    let client = id("ns/client");

    // State of the world: the stream holds "default"; its certificate expires (renewals
    // failing) and the proxy then changes its set of names.
    let mut sotw = SotwClient::open(ch.clone(), Some(node("ns/client")), &["default"])
        .await
        .unwrap();
    let first = sotw.next().await.unwrap();
    assert_none_expired(&secrets(&first.resources));
    source.publish(
        &client,
        Purpose::Default,
        Arc::new(source.ca().issue_expired(&client)),
    );
    let names = ["default", "service-cert-inbound:ns/client", "ROOTCA"];
    sotw.ack(&first, &names).await;
    // The answer to the changed names is the next response: the expired certificate was not
    // pushed on its own either.
    let changed = sotw.next().await.unwrap();
    let served = secrets(&changed.resources);
    assert_none_expired(&served);
    let sent: Vec<&str> = served.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        sent,
        ["service-cert-inbound:ns/client", "ROOTCA"],
        "the expired certificate is left out, the rest is served"
    );

    // Delta: subscribing to more names does not bring the expired one either.
    let mut delta = DeltaClient::open(ch.clone(), node("ns/client"), &["ROOTCA"])
        .await
        .unwrap();
    let opened = delta.next().await.unwrap();
    delta
        .send(
            Some(&opened),
            &["default", "service-cert-outbound:ns/client"],
            &[],
        )
        .await;
    let added = delta.next().await.unwrap();
    let names: Vec<&str> = added.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["service-cert-outbound:ns/client"]);
    let added: Vec<_> = added
        .resources
        .iter()
        .map(|r| r.resource.clone().unwrap())
        .collect();
    assert_none_expired(&secrets(&added));

    // A fetch leaves it out too.
    let fetched = SecretDiscoveryServiceClient::new(ch.clone())
        .fetch_secrets(request(Some(node("ns/client")), &["default", "ROOTCA"]))
        .await
        .unwrap()
        .into_inner();
    let fetched = secrets(&fetched.resources);
    assert_none_expired(&fetched);
    assert_eq!(fetched.len(), 1, "only ROOTCA");

    // Counted once per certificate and stream that held it (SotW, delta, fetch).
    assert_eq!(sds.stats.snapshot().expired_withheld, 3);

    // A fresh certificate is pushed to both streams as soon as it exists.
    let renewed = source.renew(&client, Purpose::Default);
    let pushed = sotw.next().await.unwrap();
    let pushed = secrets(&pushed.resources);
    assert_none_expired(&pushed);
    let (chain, _) = tls_of(secret_named(&pushed, "default"));
    assert_eq!(chain.leaf_info().unwrap().serial, renewed.info.serial);
    let pushed = delta.next().await.unwrap();
    let names: Vec<&str> = pushed.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["default"]);
    let pushed: Vec<_> = pushed
        .resources
        .iter()
        .map(|r| r.resource.clone().unwrap())
        .collect();
    assert_none_expired(&secrets(&pushed));
    assert_eq!(sds.stats.snapshot().expired_withheld, 3);
}
