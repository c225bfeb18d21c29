//! SDS load tool: N concurrent state-of-the-world streams, each a distinct identity (the way N
//! single-secret Envoys would connect), against an in-process SDS server in development mode
//! over loopback TCP, with the test CA of `tests/support` as the certificate source.
//!
//! Reports the time until every stream has its first certificate, the time to push a renewal
//! of every certificate to every stream (issuance excluded: the new certificates are made first,
//! then published at once), and resident memory per stream (VmRSS before/after opening the
//! streams; client and server share this process, so it is an upper bound for the server).
//!
//! `cargo run --example sds_load -- --streams 2000 --connections 100`
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use meshca::sds::{Purpose, SecretSource};
use support::{
    RunningSds, SotwClient, TestCa, TestSource, channel, dev_settings, id, node, secrets, tls_of,
};
use tokio::sync::{mpsc, watch};

#[derive(Debug, Parser)]
struct Args {
    /// Concurrent streams, one identity each.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// HTTP/2 connections the streams are spread over.
    #[arg(long, default_value_t = 100)]
    connections: usize,
}

enum Event {
    First { stream: usize, latency: Duration },
    Renewed { stream: usize, serial: Vec<u8> },
    Failed { stream: usize, error: String },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.streams;
    anyhow::ensure!(
        n > 0 && args.connections > 0,
        "--streams and --connections must be at least 1"
    );
    let source = TestSource::new(Arc::new(TestCa::new("load")));
    let identities: Vec<_> = (0..n).map(|i| id(&format!("load/sa-{i}"))).collect();

    let started = Instant::now();
    for identity in &identities {
        source.certificate(identity, Purpose::Default).await?;
    }
    let issuance = started.elapsed();

    let mut settings = dev_settings();
    settings.limits.max_streams = n + 16;
    let sds = RunningSds::start(settings, source.clone()).await;
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        channels.push(channel(&sds.url()).await);
    }
    let rss_before = vm_rss_kib()?;

    let (events, mut received) = mpsc::unbounded_channel();
    let (stop, stopped) = watch::channel(false);
    let opened = Instant::now();
    for (stream, identity) in identities.iter().enumerate() {
        let ch = channels[stream % channels.len()].clone();
        let events = events.clone();
        let mut stopped = stopped.clone();
        let short = identity.short();
        tokio::spawn(async move {
            let begin = Instant::now();
            let run = async {
                let mut client = SotwClient::open(ch, Some(node(&short)), &["default"]).await?;
                let first = client.next().await?;
                let _ = events.send(Event::First {
                    stream,
                    latency: begin.elapsed(),
                });
                client.ack(&first, &["default"]).await;
                let renewed = client.next().await?;
                let (chain, _) = tls_of(&secrets(&renewed.resources)[0]);
                let _ = events.send(Event::Renewed {
                    stream,
                    serial: chain.leaf_info().unwrap().serial,
                });
                client.ack(&renewed, &["default"]).await;
                let _ = stopped.wait_for(|s| *s).await;
                Ok::<_, tonic::Status>(())
            };
            if let Err(status) = run.await {
                let _ = events.send(Event::Failed {
                    stream,
                    error: status.to_string(),
                });
            }
        });
    }

    let mut latencies = Vec::with_capacity(n);
    while latencies.len() < n {
        match received.recv().await.expect("stream tasks hold senders") {
            Event::First { latency, .. } => latencies.push(latency),
            Event::Failed { stream, error } => anyhow::bail!("stream {stream} failed: {error}"),
            Event::Renewed { stream, .. } => anyhow::bail!("stream {stream} renewed too early"),
        }
    }
    let all_first = opened.elapsed();
    let rss_after = vm_rss_kib()?;

    let fresh: Vec<_> = identities
        .iter()
        .map(|identity| Arc::new(source.ca().issue(identity, Duration::from_secs(600))))
        .collect();
    let pushed = Instant::now();
    for (identity, certificate) in identities.iter().zip(&fresh) {
        source.publish(identity, Purpose::Default, certificate.clone());
    }
    let mut renewed = 0;
    while renewed < n {
        match received.recv().await.expect("stream tasks hold senders") {
            Event::Renewed { stream, serial } => {
                anyhow::ensure!(
                    serial == fresh[stream].info.serial,
                    "stream {stream} got a stale certificate"
                );
                renewed += 1;
            }
            Event::Failed { stream, error } => anyhow::bail!("stream {stream} failed: {error}"),
            Event::First { .. } => anyhow::bail!("duplicate first response"),
        }
    }
    let all_pushed = pushed.elapsed();
    let stats = sds.stats.snapshot();
    let _ = stop.send(true);

    latencies.sort();
    let percentile = |p: usize| latencies[(latencies.len() - 1) * p / 100];
    let per_stream = (rss_after.saturating_sub(rss_before)) as f64 / n as f64;
    println!(
        "| streams | connections | first cert, all streams | per stream p50 / p99 | renewal pushed to all | RSS per stream |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {n} | {} | {:.0} ms | {:.1} / {:.1} ms | {:.0} ms | {per_stream:.1} KiB |",
        args.connections,
        all_first.as_secs_f64() * 1e3,
        percentile(50).as_secs_f64() * 1e3,
        percentile(99).as_secs_f64() * 1e3,
        all_pushed.as_secs_f64() * 1e3,
    );
    println!(
        "\n(test-CA issuance of the {n} initial certificates, not included above: {:.0} ms; server counters: {} responses, {} pushes, {} ACKs, {} NACKs; RSS {rss_before} → {rss_after} KiB)",
        issuance.as_secs_f64() * 1e3,
        stats.responses,
        stats.pushes,
        stats.acks,
        stats.nacks
    );
    Ok(())
}

/// Resident set size of this process, from /proc/self/status.
fn vm_rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/self/status"))
}
