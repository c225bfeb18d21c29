//! The fast path of [`CertificateInfo::parse`]: a strict DER walker over the fields it reads.
//! Returns `None` for anything outside what it knows, so the full parser decides.

use super::{CertificateInfo, KeyPurposes, to_system_time};

/// One DER element: tag, contents, and what follows it.
fn take(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    // Multi-byte tags are not used by anything read here.
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 3 || rest.len() < count {
            return None;
        }
        let (octets, rest) = rest.split_at(count);
        // DER: no leading zero octet, and the long form only when needed.
        if octets[0] == 0 {
            return None;
        }
        let len = octets
            .iter()
            .fold(0usize, |n, b| (n << 8) | usize::from(*b));
        if len < 0x80 {
            return None;
        }
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, content, rest) = take(input)?;
    (found == tag).then_some((content, rest))
}

/// The most extensions the fast path reads; more go to x509-parser.
const MAX_EXTENSIONS: usize = 16;

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_SKI: &[u8] = &[0x55, 0x1d, 0x0e];
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
const OID_AKI: &[u8] = &[0x55, 0x1d, 0x23];
const OID_EKU: &[u8] = &[0x55, 0x1d, 0x25];
const OID_ANY_EKU: &[u8] = &[0x55, 0x1d, 0x25, 0x00];
const OID_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
const OID_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

pub(super) fn parse(der: &[u8]) -> Option<CertificateInfo> {
    let (certificate, _) = expect(der, SEQUENCE)?;
    let (tbs, rest) = expect(certificate, SEQUENCE)?;
    let (algorithm, rest) = expect(rest, SEQUENCE)?;
    let (signature, rest) = expect(rest, 0x03)?;
    if !rest.is_empty() || !known_signature_algorithm(algorithm) {
        return None;
    }
    // A signature is whole bytes: no unused bits (x509-parser checks the count).
    if signature.first() != Some(&0) {
        return None;
    }
    // Version: v3 only.
    let (version, rest) = expect(tbs, 0xa0)?;
    if version != [0x02, 0x01, 0x02] {
        return None;
    }
    let (serial, rest) = expect(rest, 0x02)?;
    let (algorithm, rest) = expect(rest, SEQUENCE)?;
    if !known_signature_algorithm(algorithm) {
        return None;
    }
    let (issuer, rest) = expect(rest, SEQUENCE)?;
    let (validity, rest) = expect(rest, SEQUENCE)?;
    let (subject, rest) = expect(rest, SEQUENCE)?;
    let (spki, rest) = expect(rest, SEQUENCE)?;

    let (not_before, after) = time(validity)?;
    let (not_after, after) = time(after)?;
    if !after.is_empty() {
        return None;
    }
    let (subject_text, common_name) = name(subject)?;
    let (issuer_text, _) = name(issuer)?;
    let (key_description, public_key) = ec_key(spki)?;

    // Optional issuerUniqueID [1] and subjectUniqueID [2] are not expected: extensions
    // [3] must follow directly, and be all that is left.
    let (extensions, after) = expect(rest, 0xa3)?;
    if !after.is_empty() {
        return None;
    }
    let (mut list, after) = expect(extensions, SEQUENCE)?;
    if !after.is_empty() {
        return None;
    }
    let mut info = CertificateInfo {
        subject: subject_text,
        common_name,
        issuer: issuer_text,
        not_before: to_system_time(not_before),
        not_after: to_system_time(not_after),
        serial: serial.to_vec(),
        uri_sans: Vec::new(),
        dns_sans: Vec::new(),
        is_ca: false,
        key_description: key_description.into(),
        subject_key_id: None,
        authority_key_id: None,
        public_key: public_key.to_vec(),
        extended_key_usage: None,
    };
    // The OIDs met so far, on the stack: a certificate with more extensions than this (none
    // of meshca's or of the common CAs') goes to the full parser.
    let mut seen: [&[u8]; MAX_EXTENSIONS] = [&[]; MAX_EXTENSIONS];
    let mut count = 0;
    while !list.is_empty() {
        let (extension, rest) = expect(list, SEQUENCE)?;
        list = rest;
        let (oid, rest) = expect(extension, OID)?;
        // x509-parser refuses duplicate extensions: let it say so.
        if seen[..count].contains(&oid) {
            return None;
        }
        *seen.get_mut(count)? = oid;
        count += 1;
        let rest = match take(rest)? {
            (0x01, [0xff], rest) => rest,
            (0x01, _, _) => return None,
            _ => rest,
        };
        let (value, rest) = expect(rest, 0x04)?;
        if !rest.is_empty() {
            return None;
        }
        extension_value(&mut info, oid, value)?;
    }
    Some(info)
}

/// The contents of an AlgorithmIdentifier meshca's and common CAs' certificates are
/// signed with, encoded exactly so: ECDSA with SHA-256/384 (no parameters), RSA PKCS#1 v1.5
/// with SHA-256/384/512 (NULL parameters). Anything else goes to x509-parser.
fn known_signature_algorithm(contents: &[u8]) -> bool {
    const ECDSA: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const RSA: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    match contents {
        [prefix @ .., 0x02 | 0x03] if prefix == ECDSA => true,
        [prefix @ .., 0x0b..=0x0d, 0x05, 0x00] if prefix == RSA => true,
        _ => false,
    }
}

fn whole<'a>((content, rest): (&'a [u8], &'a [u8])) -> Option<&'a [u8]> {
    rest.is_empty().then_some(content)
}

fn extension_value(info: &mut CertificateInfo, oid: &[u8], value: &[u8]) -> Option<()> {
    match oid {
        OID_SAN => {
            let mut names = whole(expect(value, SEQUENCE)?)?;
            while !names.is_empty() {
                let (tag, content, rest) = take(names)?;
                names = rest;
                match tag {
                    0x82 => info.dns_sans.push(ia5(content)?),
                    0x86 => info.uri_sans.push(ia5(content)?),
                    // Other kinds of names (IP addresses, e-mail, …): the full parser.
                    _ => return None,
                }
            }
        }
        OID_SKI => info.subject_key_id = Some(whole(expect(value, 0x04)?)?.to_vec()),
        OID_AKI => {
            let content = whole(expect(value, SEQUENCE)?)?;
            let (key_id, rest) = expect(content, 0x80)?;
            if !rest.is_empty() {
                return None;
            }
            info.authority_key_id = Some(key_id.to_vec());
        }
        OID_BASIC_CONSTRAINTS => {
            let content = whole(expect(value, SEQUENCE)?)?;
            info.is_ca = match content {
                [] => false,
                [0x01, 0x01, 0xff, rest @ ..] => match rest {
                    [] => true,
                    [0x02, 0x01, n] if *n < 0x80 => true,
                    _ => return None,
                },
                _ => return None,
            };
        }
        OID_EKU => {
            let mut purposes = whole(expect(value, SEQUENCE)?)?;
            let mut eku = KeyPurposes {
                any: false,
                server_auth: false,
                client_auth: false,
            };
            while !purposes.is_empty() {
                let (oid, rest) = expect(purposes, OID)?;
                purposes = rest;
                match oid {
                    OID_ANY_EKU => eku.any = true,
                    OID_SERVER_AUTH => eku.server_auth = true,
                    OID_CLIENT_AUTH => eku.client_auth = true,
                    _ => return None,
                }
            }
            info.extended_key_usage = Some(eku);
        }
        // keyUsage and anything else: not read here. Unknown extensions are fine for
        // x509-parser too, unless it knows and refuses them — leave those to it.
        [0x55, 0x1d, 0x0f] => {}
        _ => return None,
    }
    Some(())
}

fn ia5(content: &[u8]) -> Option<String> {
    content
        .is_ascii()
        .then(|| String::from_utf8(content.to_vec()).ok())
        .flatten()
}

/// An EC P-256/P-384 SubjectPublicKeyInfo with an uncompressed point.
fn ec_key(spki: &[u8]) -> Option<(&'static str, &[u8])> {
    let (algorithm, rest) = expect(spki, SEQUENCE)?;
    let (bits, rest) = expect(rest, 0x03)?;
    if !rest.is_empty() {
        return None;
    }
    let (oid, params) = expect(algorithm, OID)?;
    if oid != OID_EC_PUBLIC_KEY {
        return None;
    }
    let (curve, rest) = expect(params, OID)?;
    if !rest.is_empty() {
        return None;
    }
    let (description, point_len) = match curve {
        OID_P256 => ("ECDSA P-256", 65),
        OID_P384 => ("ECDSA P-384", 97),
        _ => return None,
    };
    match bits {
        [0, point @ ..] if point.len() == point_len && point[0] == 0x04 => {
            Some((description, point))
        }
        _ => None,
    }
}

/// A Name as x509-parser shows it (`O=meshca, CN=meshca root CA`), and its first CN.
fn name(mut rdns: &[u8]) -> Option<(String, Option<String>)> {
    let mut text = String::with_capacity(rdns.len());
    let mut common_name = None;
    while !rdns.is_empty() {
        let (set, rest) = expect(rdns, SET)?;
        rdns = rest;
        if !text.is_empty() {
            text.push_str(", ");
        }
        let (attribute, rest) = expect(set, SEQUENCE)?;
        // Multi-valued RDNs: the full parser.
        if !rest.is_empty() {
            return None;
        }
        let (oid, rest) = expect(attribute, OID)?;
        let (tag, value, rest) = take(rest)?;
        if !rest.is_empty() {
            return None;
        }
        // PrintableString, UTF8String, IA5String.
        if !matches!(tag, 0x13 | 0x0c | 0x16) {
            return None;
        }
        let value = std::str::from_utf8(value).ok()?;
        let label = match oid {
            [0x55, 0x04, 0x03] => "CN",
            [0x55, 0x04, 0x06] => "C",
            [0x55, 0x04, 0x07] => "L",
            [0x55, 0x04, 0x08] => "ST",
            [0x55, 0x04, 0x0a] => "O",
            [0x55, 0x04, 0x0b] => "OU",
            _ => return None,
        };
        if label == "CN" && common_name.is_none() {
            common_name = Some(value.to_owned());
        }
        text.push_str(label);
        text.push('=');
        text.push_str(value);
    }
    Some((text, common_name))
}

/// UTCTime or GeneralizedTime, `Z` only, whole seconds, as Unix seconds.
fn time(input: &[u8]) -> Option<(i64, &[u8])> {
    let (tag, content, rest) = take(input)?;
    let (year, digits) = match (tag, content.len()) {
        (0x17, 13) => {
            let yy = number(&content[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &content[2..])
        }
        (0x18, 15) => (number(&content[..4])?, &content[4..]),
        _ => return None,
    };
    if digits.last() != Some(&b'Z') {
        return None;
    }
    let month = number(&digits[0..2])?;
    let day = number(&digits[2..4])?;
    let hour = number(&digits[4..6])?;
    let minute = number(&digits[6..8])?;
    let second = number(&digits[8..10])?;
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some((days * 86_400 + hour * 3600 + minute * 60 + second, rest))
}

fn number(digits: &[u8]) -> Option<i64> {
    digits.iter().try_fold(0i64, |n, d| {
        d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
    })
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::info::fast;
    use crate::x509::testing::self_signed;

    /// Certificates of the shapes meshca meets: CAs with and without a path length, leaves
    /// with key identifiers and usages, P-256/P-384/RSA keys, dates on both sides of 2050.
    fn assorted() -> Vec<Vec<u8>> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose, SanType,
        };
        let mut out = Vec::new();
        let algorithms = [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
        ];
        for (i, alg) in algorithms.into_iter().enumerate() {
            let ca_key = KeyPair::generate_for(alg).unwrap();
            let mut ca = CertificateParams::default();
            ca.distinguished_name
                .push(DnType::OrganizationName, "Example Org");
            ca.distinguished_name
                .push(DnType::CommonName, "Example Root");
            ca.distinguished_name.push(DnType::CountryName, "DE");
            ca.is_ca = IsCa::Ca(if i == 0 {
                BasicConstraints::Unconstrained
            } else {
                BasicConstraints::Constrained(0)
            });
            ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            ca.not_after = time::macros::datetime!(2060-02-29 23:59:58 UTC);
            let ca_cert = ca.self_signed(&ca_key).unwrap();
            out.push(ca_cert.der().to_vec());
            let issuer = Issuer::new(ca, ca_key);
            for with_cn in [true, false] {
                let key = KeyPair::generate_for(alg).unwrap();
                let mut leaf = CertificateParams::new(vec!["a.example".to_owned()]).unwrap();
                leaf.distinguished_name = rcgen::DistinguishedName::new();
                if with_cn {
                    leaf.distinguished_name
                        .push(DnType::CommonName, "a.example");
                }
                leaf.subject_alt_names.push(SanType::URI(
                    "spiffe://cluster.local/ns/a/sa/b".try_into().unwrap(),
                ));
                leaf.is_ca = IsCa::ExplicitNoCa;
                leaf.use_authority_key_identifier_extension = true;
                leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                leaf.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
                out.push(leaf.signed_by(&key, &issuer).unwrap().der().to_vec());
                // Something the walker leaves to x509-parser: an IP address SAN.
                leaf.subject_alt_names
                    .push(SanType::IpAddress([127, 0, 0, 1].into()));
                out.push(leaf.signed_by(&key, &issuer).unwrap().der().to_vec());
            }
        }
        out.push(self_signed().0.der().to_vec());
        out
    }

    #[test]
    fn the_fast_path_reads_what_x509_parser_reads() {
        let certificates = assorted();
        let mut fast_reads = 0;
        for der in &certificates {
            let full = CertificateInfo::parse_full(der).unwrap();
            if let Some(fast) = fast::parse(der) {
                assert_eq!(fast, full);
                fast_reads += 1;
            }
            assert_eq!(CertificateInfo::parse(der).unwrap(), full);
            // Truncated or damaged input never reads as something else.
            for cut in [1, 10, der.len() / 2, der.len() - 1] {
                if let Some(fast) = fast::parse(&der[..cut]) {
                    panic!("read a truncated certificate: {fast:?}");
                }
            }
        }
        // All but the IP-address leaves.
        assert_eq!(fast_reads, certificates.len() - 4);
    }

    /// Inputs the x509_der fuzz target found where the DER walker accepted what x509-parser
    /// refuses (`fuzz/`): both must now give x509-parser's answer.
    #[test]
    fn the_fast_path_refuses_what_x509_parser_refuses() {
        // A meshca root whose signature BIT STRING claims 0xe7 unused bits.
        let crashes: [&[u8]; 1] = [include_bytes!(
            "../../../testdata/x509/signature-unused-bits.der"
        )];
        for der in crashes {
            let full = CertificateInfo::parse_full(der);
            assert!(full.is_err(), "{full:?}");
            assert_eq!(fast::parse(der), None);
            assert_eq!(CertificateInfo::parse(der), full);
        }
    }
}
