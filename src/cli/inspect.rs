//! `meshca inspect FILE`: what a person needs to know about a certificate file.
//!
//! Everything taken from a certificate goes through [`printable`] before it reaches a terminal:
//! a subject, a SAN or an issuer may hold any bytes, and an escape sequence in one could
//! otherwise rewrite what the person reading sees (move the cursor, recolour, retitle, hide).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use meshca_provider::x509::{Fingerprint, certificates_from_pem};
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
        write_info(&mut out, der, &info, now);
        out.push('\n');
    }
    Ok(out)
}

fn write_info(out: &mut String, der: &[u8], info: &CertificateInfo, now: SystemTime) {
    let field = |out: &mut String, name: &str, value: &str| {
        let _ = writeln!(out, "  {:<14}{}", format!("{name}:"), printable(value));
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
    field(out, "SHA-256", &Fingerprint::of(der).to_string());
}

/// `text` with everything that is not plainly printable escaped, for a terminal: control
/// characters (C0 such as ESC, CR, BEL; DEL; C1 such as CSI U+009B) as `\x1b`, invisible
/// formatting characters that reorder or hide text (bidirectional overrides and isolates,
/// zero-width characters, line and paragraph separators, the byte-order mark) as `\u{202e}`,
/// and the backslash itself as `\\` so an escape cannot be forged. Other text, non-ASCII
/// letters included, is left as it is.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if needs_escape(c) && u32::from(c) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`printable`] for messages meshca writes itself (errors quoting certificate data): the same
/// escapes, except that a backslash is left alone (messages quote names with `{:?}`, whose
/// own escapes use it).
pub fn printable_message(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c != '\\' && needs_escape(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for part in text.split_inclusive('\\') {
        match part.strip_suffix('\\') {
            Some(before) => {
                out.push_str(&printable(before));
                out.push('\\');
            }
            None => out.push_str(&printable(part)),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
        )
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

pub use meshca_provider::rfc3339;

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

    /// A certificate whose CN, DNS SAN, URI SAN and issuer hold terminal escape sequences:
    /// clear screen, a window title ending in BEL, a CSI in its one-character C1 form, a
    /// carriage return that would overwrite the line, DEL, and a right-to-left override.
    #[test]
    fn control_characters_from_a_certificate_never_reach_the_terminal() {
        let hostile = "evil\u{1b}[2J\u{1b}]0;owned\u{7}\r\u{9b}31m\u{7f}\u{202e}gro.elpmaxe";
        let issuer_key = rcgen::KeyPair::generate().unwrap();
        let mut issuer_params = rcgen::CertificateParams::default();
        issuer_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("issuer {hostile}"));
        issuer_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer_cert = issuer_params.self_signed(&issuer_key).unwrap();
        let issuer = rcgen::Issuer::new(issuer_params, issuer_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, hostile);
        // rcgen checks IA5String only for ASCII: C0 controls and DEL get through, as they would
        // in a certificate from anywhere.
        params.subject_alt_names = vec![
            rcgen::SanType::DnsName("a\u{1b}[2J.example".try_into().unwrap()),
            rcgen::SanType::URI("spiffe://td/\u{1b}]0;x\u{7}".try_into().unwrap()),
        ];
        let leaf = params.signed_by(&key, &issuer).unwrap();
        let text = describe(
            &[leaf.der().clone(), issuer_cert.der().clone()],
            SystemTime::now(),
        )
        .unwrap();
        let raw: Vec<char> = text
            .chars()
            .filter(|c| *c != '\n' && needs_escape(*c) && *c != '\\')
            .collect();
        assert!(raw.is_empty(), "unescaped {raw:?} in {text:?}");
        assert!(text.contains("\\x1b[2J"), "{text}");
        assert!(text.contains("\\x9b31m"), "{text}");
        assert!(text.contains("\\u{202e}"), "{text}");
        assert!(text.contains("issuer evil"), "{text}");
        assert!(text.contains("a\\x1b[2J.example"), "{text}");
    }

    #[test]
    fn printable_text_is_left_alone_and_escapes_cannot_be_forged() {
        assert!(matches!(
            printable("spiffe://cluster.local/ns/a/sa/b"),
            Cow::Borrowed(_)
        ));
        assert_eq!(printable("Bücher GmbH"), "Bücher GmbH");
        assert_eq!(printable("a\\x1b"), "a\\\\x1b");
        assert_eq!(printable("a\u{1b}b\tc\u{85}"), "a\\x1bb\\x09c\\x85");
        assert_eq!(
            printable_message("\"x\\u{1b}\" from CN=a\u{1b}[2J"),
            "\"x\\u{1b}\" from CN=a\\x1b[2J"
        );
        assert!(matches!(printable_message("C:\\dir"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_key_file_is_not_a_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let err = read_certificates(key.serialize_pem().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE block"), "{err}");
        assert!(read_certificates(b"\x30\x03junk").is_err());
    }
}
