//! The load tool's mTLS mode (`--tls`), the shape of a real mesh: every simulated proxy holds
//! its own bootstrap client certificate, issued beforehand through `meshca issue`'s own path
//! ([`meshca::cli::issue::issue_validated`]) from the CA store the server then serves, and
//! opens its own connection: TCP, a TLS 1.3 handshake in which the server verifies the client
//! certificate, HTTP/2, one SDS stream.
//!
//! The floor a run compares `meshca serve` with is made of two parts measured apart: the cache
//! alone issuing the N certificates (phase A, `main.rs`), and [`handshake_floor`]: a raw
//! tokio-rustls server (ring, the same server certificate and key type that the SDS endpoint
//! presents, client certificates verified by the SDS endpoint's own rustls `WebPkiClientVerifier`
//! ([`meshca::sds::webpki_verifier`]) against the same root, ALPN h2) doing the same N handshakes
//! and nothing else. The proxies verify the server as the integration tests do
//! ([`meshca_test_support::verify::SpiffeServerVerifier`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use meshca::cache::{CertKey, Purpose};
use meshca::config::{Config, SdsAuth};
use meshca::issuance::Pipeline;
use meshca_provider::{Clock, LeafSpec, SpiffeId, SystemClock, TrustBundle, TrustDomain};
use meshca_test_support::verify::SpiffeServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::http2;

/// The name the proxies send (SNI). The endpoint's certificate carries only the server
/// identity's SPIFFE ID ([`SERVER_SPIFFE_ID`]), which [`SpiffeServerVerifier`] checks after the
/// chain, as Envoy's `match_typed_subject_alt_names` does.
pub(crate) const SERVER_NAME: &str = "meshca.meshca-system.cluster.local";

/// The SDS endpoint's identity: `sds.serverIdentity`'s default in the default trust domain.
const SERVER_SPIFFE_ID: &str = "spiffe://cluster.local/ns/meshca-system/sa/meshca";

/// What the floor server writes once a handshake is complete, so that the client knows the
/// server has verified its certificate (in TLS 1.3 the client finishes first).
const HANDSHAKE_DONE: u8 = b'!';

/// Raises this process's open-files limit (inherited by the server processes it starts) to
/// its hard limit, which must allow `needed` descriptors: one connection per proxy means N
/// sockets on each side. Returns the limit now in force.
pub(crate) fn raise_open_files(needed: u64) -> anyhow::Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum;
    if limit.current != hard {
        limit.current = hard;
        setrlimit(Resource::Nofile, limit)
            .context("cannot raise the open-files limit (RLIMIT_NOFILE) to its hard limit")?;
    }
    let hard = hard.unwrap_or(u64::MAX);
    ensure!(
        hard >= needed,
        "the open-files hard limit is {hard}, and one connection per proxy needs about \
         {needed}: raise it (ulimit -Hn, LimitNOFILE, /etc/security/limits.conf) or use fewer \
         --streams"
    );
    Ok(hard)
}

/// `meshca serve`'s mTLS configuration over `config` (the load's development configuration):
/// client certificates required, on loopback TCP.
pub(crate) fn mtls_config(mut config: Config) -> Config {
    config.sds.auth = SdsAuth::Mtls;
    config.sds.listen = "127.0.0.1:0".to_owned();
    config.sds.unix_socket = String::new();
    config
}

/// Issues a bootstrap client certificate for each of the `n` proxies (identity `load/sa-<i>`)
/// from `config`'s CA store, as `meshca issue --identity` would, and returns each proxy's
/// rustls client configuration: its certificate and key, the CA's roots, ALPN h2; and the CA's
/// trust bundle.
pub(crate) async fn bootstrap_clients(
    config: &Config,
    n: usize,
) -> anyhow::Result<(Vec<Arc<ClientConfig>>, TrustBundle)> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let provider = meshca::providers::build(config, clock.clone()).await?;
    let pipeline = Pipeline::new(provider, config.pipeline_settings()?, clock);
    let key_type = config.certificate_provider.key_type;
    let lifetime = config.certificate_provider.service_cert_validity_duration;
    let domain = TrustDomain::default();
    let mut clients = Vec::with_capacity(n);
    let mut bundle = None;
    for proxy in 0..n {
        let identity = SpiffeId::from_short(&crate::short_name(proxy), &domain)?;
        let issued = meshca::cli::issue::issue_validated(
            &pipeline,
            LeafSpec::workload(&identity, &[], lifetime),
            key_type,
        )
        .await
        .with_context(|| format!("bootstrap certificate of {identity}"))?;
        let key = PrivateKeyDer::Pkcs8(issued.key.pkcs8_der().clone_key());
        let verifier = SpiffeServerVerifier {
            expected: SERVER_SPIFFE_ID.to_owned(),
            root: issued.bundle.clone(),
            provider: ring_provider(),
        };
        let config = ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(issued.chain.certificates().to_vec(), key)?;
        clients.push(Arc::new(with_h2(config)));
        bundle.get_or_insert(issued.bundle);
    }
    Ok((clients, bundle.context("no proxy")?))
}

fn with_h2(mut config: ClientConfig) -> ClientConfig {
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TCP connection to `address` and a TLS handshake as the proxy `client` configures, the
/// server's certificate checked for [`SERVER_NAME`].
pub(crate) async fn tls_connect(
    address: &str,
    client: Arc<ClientConfig>,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot connect to the server at {address}"))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(SERVER_NAME)?;
    TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .with_context(|| format!("the TLS handshake with {address} failed"))
}

/// A proxy's connection to the SDS server: TCP, TLS with its client certificate, HTTP/2.
pub(crate) async fn connect(
    address: &str,
    client: Arc<ClientConfig>,
    protocol: Arc<dyn http2::Protocol>,
) -> anyhow::Result<http2::Connection> {
    let tls = tls_connect(address, client).await?;
    http2::Connection::handshake(Box::new(tls), protocol)
        .await
        .with_context(|| format!("HTTP/2 with the server at {address} failed"))
}

/// A floor client: the handshake, then the server's one byte saying it verified the client.
/// The connection is returned open, so that the server's memory per connection can be read.
pub(crate) async fn floor_handshake(
    address: &str,
    client: Arc<ClientConfig>,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut tls = tls_connect(address, client).await?;
    let mut done = [0u8; 1];
    tls.read_exact(&mut done)
        .await
        .context("the floor server closed the connection after the handshake")?;
    ensure!(
        done[0] == HANDSHAKE_DONE,
        "an unexpected byte from the floor"
    );
    Ok(tls)
}

/// The floor server process (`--handshake-only`): presents the certificate the SDS endpoint
/// would (the cache's for the server identity, over the same CA store), requires client
/// certificates chaining to the CA's roots, completes handshakes, writes one byte on each and
/// holds the connection until the client closes it. Prints `ready <address>`, then waits for
/// `quit` on stdin.
pub(crate) async fn handshake_floor(config: &Config) -> anyhow::Result<()> {
    let cache = crate::daemon_cache(config).await?;
    let server_identity =
        SpiffeId::from_short(&config.sds.server_identity, &TrustDomain::default())?;
    let served = cache
        .subscribe(CertKey::new(server_identity, Purpose::Default))
        .await?
        .borrow()
        .clone();
    let bundle = cache.trust_bundle().borrow().clone();
    let provider = ring_provider();
    let verifier = meshca::sds::webpki_verifier(&bundle, &provider)?;
    let chain: Vec<CertificateDer<'static>> = served.chain.certificates().to_vec();
    let key = PrivateKeyDer::Pkcs8(served.key.pkcs8_der().clone_key());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("ready {}", listener.local_addr()?);

    let accepting = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                // Out of descriptors or similar: the run's clients report what they miss.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if tls.write_all(&[HANDSHAKE_DONE]).await.is_err() {
                    return;
                }
                let mut rest = [0u8; 16];
                // Held until the client closes.
                while matches!(tls.read(&mut rest).await, Ok(read) if read > 0) {}
            });
        }
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim() == "quit" {
            break;
        }
    }
    accepting.abort();
    Ok(())
}
