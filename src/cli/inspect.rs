//! `meshca inspect FILE`: what a person needs to know about a certificate file.

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use meshca_provider::x509::certificates_from_pem;
use meshca_provider::{CertificateInfo, format_duration};
use rustls_pki_types::CertificateDer;

/// Prints every certificate in `path` (PEM, or a single DER certificate).
pub fn run(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let certificates = read_certificates(&bytes)
        .with_context(|| format!("{} holds no readable certificate", path.display()))?;
    crate::cli::print_stdout(&describe(&certificates, SystemTime::now())?)
}

fn read_certificates(bytes: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    if let Ok(text) = std::str::from_utf8(bytes)
        && text.contains("-----BEGIN")
    {
        let certificates = certificates_from_pem(text)?;
        if certificates.is_empty() {
            bail!("the PEM text has no CERTIFICATE block (is this a key file?)");
        }
        return Ok(certificates);
    }
    CertificateInfo::parse(bytes)?;
    Ok(vec![CertificateDer::from(bytes.to_vec())])
}

/// The report for a chain, leaf first.
pub fn describe(certificates: &[CertificateDer<'_>], now: SystemTime) -> anyhow::Result<String> {
    let mut out = String::new();
    for (index, der) in certificates.iter().enumerate() {
        let info = CertificateInfo::parse(der)
            .with_context(|| format!("certificate #{} is not valid X.509", index + 1))?;
        if certificates.len() > 1 {
            let role = match (index, info.is_ca) {
                (0, false) => "leaf",
                (_, true) if info.subject == info.issuer => "root",
                (_, true) => "intermediate",
                _ => "certificate",
            };
            let _ = writeln!(out, "Certificate #{} ({role})", index + 1);
        }
        write_info(&mut out, &info, now);
        out.push('\n');
    }
    Ok(out)
}

fn write_info(out: &mut String, info: &CertificateInfo, now: SystemTime) {
    let field = |out: &mut String, name: &str, value: &str| {
        let _ = writeln!(out, "  {:<14}{value}", format!("{name}:"));
    };
    field(out, "Subject", &info.subject);
    if let Some(spiffe) = info.uri_sans.iter().find(|u| u.starts_with("spiffe://")) {
        field(out, "SPIFFE ID", spiffe);
    }
    for uri in info.uri_sans.iter().filter(|u| !u.starts_with("spiffe://")) {
        field(out, "URI SAN", uri);
    }
    if !info.dns_sans.is_empty() {
        field(out, "DNS SANs", &info.dns_sans.join(", "));
    }
    field(out, "Issuer", &info.issuer);
    field(out, "Not before", &rfc3339(info.not_before));
    field(out, "Not after", &rfc3339(info.not_after));
    field(out, "Time left", &time_left(info, now));
    field(out, "Lifetime", &format_duration(info.lifetime()));
    field(out, "Serial", &info.serial_hex());
    field(out, "Key", &info.key_description);
    field(out, "CA", if info.is_ca { "yes" } else { "no" });
    field(out, "SHA-256", &info.sha256_fingerprint.to_string());
}

fn time_left(info: &CertificateInfo, now: SystemTime) -> String {
    if now < info.not_before {
        let wait = info.not_before.duration_since(now).unwrap_or_default();
        return format!("not yet valid (starts in {})", format_duration(round(wait)));
    }
    match info.not_after.duration_since(now) {
        Ok(left) => format_duration(round(left)),
        Err(past) => format!("EXPIRED {} ago", format_duration(round(past.duration()))),
    }
}

fn round(duration: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(duration.as_secs())
}

/// RFC 3339 in UTC.
pub fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{at:?}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn shows_the_spiffe_id_and_time_left() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["b.a.cluster.local".into()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://cluster.local/ns/a/sa/b".try_into().unwrap(),
        ));
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        params.not_before = start.into();
        params.not_after = (start + Duration::from_secs(86_400)).into();
        let cert = params.self_signed(&key).unwrap();
        let text = describe(&[cert.der().clone()], start + Duration::from_secs(3600)).unwrap();
        assert!(
            text.contains("SPIFFE ID:    spiffe://cluster.local/ns/a/sa/b"),
            "{text}"
        );
        assert!(text.contains("Time left:    23h"), "{text}");
        assert!(text.contains("Key:          ECDSA P-256"), "{text}");
        let later = describe(&[cert.der().clone()], start + Duration::from_secs(90_000)).unwrap();
        assert!(later.contains("EXPIRED 1h ago"), "{later}");
    }

    #[test]
    fn a_key_file_is_not_a_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let err = read_certificates(key.serialize_pem().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE block"), "{err}");
        assert!(read_certificates(b"\x30\x03junk").is_err());
    }
}
