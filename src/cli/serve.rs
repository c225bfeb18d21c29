//! `meshca serve`: the daemon.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use std::path::PathBuf;

use meshca_provider::{Clock, SpiffeId};

use crate::admin::{AdminSettings, AdminState, ProviderHealth, spawn_health_checks};
use crate::cache::{CacheSettings, CertificateCache};
use crate::config::{Config, SdsAuth};
use crate::issuance::Pipeline;
use crate::istio::{
    IstioCaServer, IstioMetrics, IstioSettings, NodeAuthorizer, RunningIstioCaServer,
    ServingSettings,
};
use crate::jwt_svid::JwtAuthority;
use crate::kubernetes::trust_distribution::{Running, TrustDistribution};
use crate::kubernetes::{KubePodDirectory, TokenReviewAuthenticator};
use crate::providers::BackendHandle;
use crate::rotation::{AckReporter, RotationFollower};
use crate::sds::{AuthMode, MtlsSettings, SdsServer, SdsSettings, SecretSource, UnixPeerMap};
use crate::stores::ConfiguredStore;
use crate::time::TokioClock;
use crate::vault_rotation::VaultIssuerFollower;
use crate::workload_api::{
    Attestor, Attestors, KubeNodePods, KubernetesAttestor, RunningWorkloadApiServer, UnixAttestor,
    WorkloadApiMetrics, WorkloadApiServer, WorkloadApiSettings,
};

/// `meshca serve` options (everything else is configuration).
#[derive(Debug, Args)]
pub struct ServeArgs {}

/// Runs until SIGTERM or Ctrl-C.
pub async fn run(config: Config, _args: ServeArgs) -> anyhow::Result<()> {
    // Listen for SIGTERM before anything else: a signal during startup must drain, not kill.
    let shutdown = shutdown_signal()?;
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let (provider, backend) = crate::providers::build_with_handle(&config, clock.clone()).await?;
    announce_extra_roots(&config, clock.now())?;
    // One pipeline for the cache (SDS) and the Istio CA API: the same policy, timeouts,
    // validation, trust bundle and metrics whichever way a certificate is asked for.
    let pipeline = Arc::new(Pipeline::new(
        provider.clone(),
        config.pipeline_settings()?,
        clock.clone(),
    ));
    let cache = Arc::new(CertificateCache::with_pipeline(
        pipeline.clone(),
        cache_settings(&config),
        clock.clone(),
    ));
    cache
        .refresh_trust_bundle()
        .await
        .context("cannot read the provider's trust bundle")?;
    let distribution =
        TrustDistribution::start(&config.trust_distribution, cache.trust_bundle()).await?;
    // Every listener drains on the one signal.
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let jwt_svid = match config.jwt_svid.enabled {
        true => Some(start_jwt_svid(&config, clock.clone()).await?),
        false => None,
    };
    let istio = match config.istio.enabled {
        true => Some(start_istio(&config, pipeline.clone(), clock.clone(), &stop).await?),
        false => None,
    };
    let workload_api = match config.workload_api.enabled {
        true => Some(
            start_workload_api(
                &config,
                cache.clone(),
                jwt_svid.as_ref().map(|(authority, _)| authority.clone()),
                &stop,
            )
            .await?,
        ),
        false => None,
    };
    let sds = SdsServer::new(sds_settings(&config).await?)
        .context("cannot start the SDS server")?
        .bind()
        .await
        .context("cannot open the SDS listener")?;
    tracing::info!(
        provider = config.certificate_provider.kind.as_str(),
        trust_domain = %config.trust_domain,
        sds_tcp = ?sds.tcp_address(),
        sds_unix = ?sds.unix_path(),
        sds_auth = config.sds.auth.as_str(),
        istio = ?istio.as_ref().map(|(running, _)| running.address()),
        workload_api = ?config.workload_api.enabled.then(|| config.workload_api.socket_path()),
        "meshca is serving; stop it with SIGTERM or Ctrl-C"
    );
    // Tresor follows root rotation stages from its store; Vault follows its PKI mount's
    // default issuer, reporting its proxies' acknowledgements to the CA store as Tresor does;
    // cert-manager's roots are rotated outside meshca.
    let rotation = match backend {
        Some(BackendHandle::Tresor(handle)) => Some(tokio::spawn(
            RotationFollower {
                store: handle.store,
                tresor: handle.tresor,
                cache: cache.clone(),
                acks: sds.bundle_acks(),
                distribution: distribution.as_ref().and_then(Running::status),
                replica: config.replica_name(),
                poll_interval: config.rotation.poll_interval,
                clock,
            }
            .run(),
        )),
        Some(BackendHandle::Vault(vault)) => {
            let store = ConfiguredStore::open(&config).await.context(
                "cannot open the CA store (tresor.store), where each replica reports which of \
                 its proxies trust a new Vault root",
            )?;
            Some(tokio::spawn(
                VaultIssuerFollower {
                    vault,
                    cache: cache.clone(),
                    acks: sds.bundle_acks(),
                    reporter: AckReporter::new(
                        Arc::new(store),
                        sds.bundle_acks(),
                        distribution.as_ref().and_then(Running::status),
                        config.replica_name(),
                        config.rotation.poll_interval,
                        clock.clone(),
                    ),
                    report_freshness: config.rotation_policy().report_freshness,
                    poll_interval: config.rotation.poll_interval,
                    ack_deadline: config.rotation.ack_deadline,
                    clock,
                }
                .run(),
            ))
        }
        None => None,
    };
    let health = Arc::new(ProviderHealth::default());
    let health_checks = spawn_health_checks(
        cache.clone(),
        health.clone(),
        HEALTH_CHECK_INTERVAL,
        HEALTH_CHECK_TIMEOUT,
    );
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = match config.admin_listen() {
        Some(address) => {
            let settings = AdminSettings::from_config(&config);
            let token = settings.check()?;
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| {
                    format!("cannot open the admin listener on {address} (admin.listen)")
                })?;
            match &token {
                Some(fingerprint) => tracing::info!(
                    address = %listener.local_addr()?,
                    token = %fingerprint,
                    "admin: /healthz /readyz /metrics; POST /rotate/leaves with the admin.tokenFile bearer token"
                ),
                None => tracing::info!(
                    address = %listener.local_addr()?,
                    "admin: /healthz /readyz /metrics; POST /rotate/leaves disabled (no admin.tokenFile)"
                ),
            }
            let collectors = istio
                .iter()
                .map(|(_, metrics)| metrics.collector())
                .chain(
                    distribution
                        .iter()
                        .map(|running| running.metrics().collector()),
                )
                .chain(workload_api.iter().map(|(_, metrics)| metrics.collector()))
                .collect();
            let state = AdminState::with_collectors(
                cache.clone(),
                config.trust_domain(),
                sds.stats(),
                health,
                settings,
                collectors,
            );
            let mut routes = crate::admin::router(state);
            if let Some((authority, _)) = &jwt_svid {
                routes = routes.merge(crate::jwt_svid::http::router(
                    authority.clone(),
                    config.jwt_svid.issuer(),
                    config.jwt_svid.key_refresh_interval,
                ));
            }
            Some(tokio::spawn(crate::admin::serve_router(
                listener,
                routes,
                async {
                    let _ = admin_stopped.await;
                },
            )))
        }
        None => {
            if jwt_svid.is_some() {
                tracing::warn!(
                    "jwtSvid.enabled, but admin.listen is off: the JWT-SVID keys (JWKS, OIDC \
                     discovery) are not published, so verifiers cannot check the tokens"
                );
            }
            None
        }
    };
    let source: Arc<dyn SecretSource> = cache;
    let served = sds
        .serve(source, async {
            stop.cancelled().await;
            tracing::info!("shutting down: draining SDS streams");
        })
        .await;
    // SDS returns once drained, or at once if it failed: the Istio CA API and the Workload
    // API stop with it.
    stop.cancel();
    let istio_served = match istio {
        Some((running, _)) => running.stopped().await,
        None => Ok(()),
    };
    let workload_api_served = match workload_api {
        Some((running, _)) => running.stopped().await,
        None => Ok(()),
    };
    health_checks.abort();
    if let Some((_, refresh)) = jwt_svid {
        refresh.abort();
    }
    drop(distribution);
    if let Some(rotation) = rotation {
        rotation.abort();
    }
    let _ = stop_admin.send(());
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    served.context("the SDS server stopped")?;
    istio_served.context("the Istio CA API server stopped")?;
    workload_api_served.context("the Workload API server stopped")?;
    Ok(())
}

/// Reads (or makes, on first use) the JWT-SVID signing keys in the CA store (`jwtSvid.*`,
/// `tresor.store`), then re-reads them every `jwtSvid.keyRefreshInterval` to follow the key
/// schedule and other replicas. Keys that cannot be read or made stop the start.
async fn start_jwt_svid(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<(Arc<JwtAuthority>, tokio::task::JoinHandle<()>)> {
    let store = crate::stores::ConfiguredStore::open(config)
        .await
        .context("cannot open the CA store that keeps the JWT-SVID keys (jwtSvid.enabled)")?
        .into_shared();
    let described = store.describe();
    let authority = Arc::new(JwtAuthority::new(store, config.jwt_svid.key_policy()));
    authority.refresh(clock.now()).await.with_context(|| {
        format!("cannot read or make the JWT-SVID signing keys in {described} (jwtSvid.enabled)")
    })?;
    tracing::info!(
        store = %described,
        keys = authority.keys().keys().len(),
        issuer = config.jwt_svid.issuer().unwrap_or("(none)"),
        "JWT-SVID signing keys loaded"
    );
    let interval = config.jwt_svid.key_refresh_interval;
    let refresh = tokio::spawn({
        let authority = authority.clone();
        async move {
            // Warn when a refresh starts failing and when it recovers, not on every attempt.
            let mut failing = false;
            loop {
                tokio::time::sleep(interval).await;
                match authority.refresh(clock.now()).await {
                    Ok(_) if failing => {
                        failing = false;
                        tracing::info!("JWT-SVID signing keys read again");
                    }
                    Ok(_) => {}
                    Err(error) if !failing => {
                        failing = true;
                        tracing::warn!(
                            %error,
                            "cannot refresh the JWT-SVID signing keys; signing with the keys held"
                        );
                    }
                    Err(_) => {}
                }
            }
        }
    });
    Ok((authority, refresh))
}

/// Starts the SPIFFE Workload API (`workloadApi.*`) on the cache (and, with `jwtSvid.enabled`,
/// the JWT-SVID keys): creates its socket (an error when it cannot) and serves until `stop`.
async fn start_workload_api(
    config: &Config,
    cache: Arc<CertificateCache>,
    jwt_svids: Option<Arc<JwtAuthority>>,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<(RunningWorkloadApiServer, Arc<WorkloadApiMetrics>)> {
    let trust_domain = config.trust_domain();
    let section = &config.workload_api;
    let entries = section.entries(&trust_domain)?;
    let mut attestors: Vec<Arc<dyn Attestor>> = Vec::new();
    if section.attests_unix() {
        attestors.push(Arc::new(UnixAttestor::for_entries(&entries)));
    }
    if section.attests_kubernetes() {
        let client = crate::kubernetes::connect()
            .await
            .context("workloadApi.attestors has k8s, which looks callers' pods up")?;
        let node = section.node_name.trim().to_owned();
        tracing::info!(
            node = %node,
            "Workload API: callers in this node's pods are attested by their pod (k8s:ns, k8s:sa, \
             k8s:pod-uid, k8s:pod-name)"
        );
        attestors.push(Arc::new(KubernetesAttestor::new(
            "/proc",
            Arc::new(KubeNodePods::new(client, node)),
        )));
    }
    let settings = WorkloadApiSettings {
        socket_path: section.socket_path(),
        socket_mode: section.socket_mode()?,
        socket_group: section.socket_group()?,
        entries,
        trust_domain,
        limits: section.limits(),
    };
    let source: Arc<dyn SecretSource> = cache;
    let mut server = WorkloadApiServer::new(settings, source)
        .context("cannot start the SPIFFE Workload API")?
        .with_attestor(Arc::new(Attestors(attestors)));
    if let Some(authority) = jwt_svids {
        server = server.with_jwt_svids(
            authority,
            config.jwt_svid.ttl,
            config.jwt_svid.issuer().map(str::to_owned),
        );
    }
    let metrics = server.metrics();
    let running = server.bind().await?.start(stop.clone().cancelled_owned());
    Ok((running, metrics))
}

/// Starts the Istio CA API (`istio.*`) on `pipeline`: binds its listener, issues its
/// certificate (an error when it cannot: the daemon does not start half-configured), and
/// serves until `stop`. Tokens are accepted when a Kubernetes API is configured to review them;
/// otherwise client certificates only (said in the log).
async fn start_istio(
    config: &Config,
    pipeline: Arc<Pipeline>,
    clock: Arc<dyn Clock>,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<(RunningIstioCaServer, Arc<IstioMetrics>)> {
    let trust_domain = config.trust_domain();
    let provider = &config.certificate_provider;
    let settings = IstioSettings {
        listen: config
            .istio
            .listen_address()
            .context("istio.listen is not an address")?,
        dns_names: config.istio.dns_names()?,
        trust_domain: trust_domain.clone(),
        default_lifetime: config.certificate_provider.service_cert_validity_duration,
        serving: ServingSettings {
            key_type: config.certificate_provider.key_type,
            // A server certificate: within its own maximum too.
            lifetime: provider
                .service_cert_validity_duration
                .min(provider.max_server_cert_validity_duration),
            renew: config.cache_settings().renew_policy(),
            backoff: config.cache_settings().backoff(),
        },
        limits: config.istio.limits(),
    };
    let mut server =
        IstioCaServer::new(settings, pipeline, clock).context("cannot start the Istio CA API")?;
    match crate::kubernetes::connect().await {
        Ok(client) => {
            let node_agents = config.istio.trusted_node_agents(&trust_domain)?;
            server = server.with_token_authenticator(Arc::new(
                TokenReviewAuthenticator::new(
                    client.clone(),
                    config.istio.token_audiences(),
                    trust_domain,
                )
                .with_audience_setting("istio.tokenAudiences"),
            ));
            // Without node agents, nobody may impersonate: the server's default refusal.
            if !node_agents.is_empty() {
                tracing::info!(
                    node_agents = %node_agents.iter().map(SpiffeId::short).collect::<Vec<_>>().join(","),
                    "Istio CA API: node agents may ask for the certificates of the workloads on \
                     their own node (istio.trustedNodeAgents)"
                );
                server = server.with_impersonation(Arc::new(NodeAuthorizer::new(
                    node_agents,
                    Arc::new(KubePodDirectory::new(client)),
                )));
            }
        }
        Err(error) => tracing::info!(
            reason = %format!("{error:#}"),
            "Istio CA API: no Kubernetes API to review service-account tokens with; callers \
             authenticate with meshca client certificates only"
        ),
    }
    let metrics = server.metrics();
    let running = server
        .bind()
        .await?
        .start(stop.clone().cancelled_owned())
        .await?;
    Ok((running, metrics))
}

/// How often the provider's health is checked for `/readyz` and the metrics.
const HEALTH_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// How long one health check may take before it counts as failed.
const HEALTH_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The SDS server settings from `sds.*`.
pub async fn sds_settings(config: &Config) -> anyhow::Result<SdsSettings> {
    let trust_domain = config.trust_domain();
    let auth = match config.sds.auth {
        SdsAuth::Development => AuthMode::Development,
        SdsAuth::UnixPeer => AuthMode::UnixPeer(UnixPeerMap::new(config.unix_peers()?)),
        SdsAuth::Token => AuthMode::Token(Arc::new(TokenReviewAuthenticator::new(
            crate::kubernetes::connect().await?,
            config.token_audiences(),
            trust_domain.clone(),
        ))),
        SdsAuth::Mtls => {
            let mut mtls = MtlsSettings::new(&trust_domain);
            mtls.server_identity =
                SpiffeId::from_short(&config.sds.server_identity, &trust_domain)?;
            AuthMode::Mtls(mtls)
        }
    };
    let limits = config.sds.limits();
    let default_access = crate::sds::UnixSocketAccess::default_for(&auth);
    let unix_access = crate::sds::UnixSocketAccess {
        mode: config.unix_socket_mode()?.unwrap_or(default_access.mode),
        group: config.unix_socket_group()?,
    };
    Ok(SdsSettings {
        tcp: config.sds_listen(),
        unix: Some(PathBuf::from(&config.sds.unix_socket)).filter(|p| !p.as_os_str().is_empty()),
        unix_access: Some(unix_access),
        auth,
        trust_domain,
        limits,
    })
}

/// The cache settings from `certificateProvider.*` and `renewal.*`.
pub fn cache_settings(config: &Config) -> CacheSettings {
    config.cache_settings()
}

/// Announces `extraTrustedRoots` in the log (an expired one is kept but warned about: it
/// verifies nothing). The pipeline merges them into every bundle.
fn announce_extra_roots(config: &Config, now: std::time::SystemTime) -> anyhow::Result<()> {
    let roots = config.extra_trusted_roots()?;
    if roots.is_empty() {
        return Ok(());
    }
    for root in roots.roots() {
        if let Ok(info) = meshca_provider::CertificateInfo::parse(root)
            && info.not_after <= now
        {
            // The subject comes from a file an operator listed; escaped like every certificate text
            // meshca prints, so a hostile root cannot write control sequences into a text log.
            tracing::warn!(subject = %super::inspect::printable(&info.subject), fingerprint = %meshca_provider::x509::Fingerprint::of(root), "an extra trusted root has expired: remove it from extraTrustedRoots");
        }
    }
    tracing::info!(
        count = roots.roots().len(),
        fingerprints = %roots.fingerprints().join(","),
        "trusting extra roots (extraTrustedRoots) in every published trust bundle"
    );
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now; the returned future resolves on either.
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
