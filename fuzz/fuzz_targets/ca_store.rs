//! What the CA stores load from files and Kubernetes Secrets: `ca.crt` + `private.key` PEM
//! (checked into a signing authority, and through `import`), trust bundle and chain PEM, leaf
//! keys, and the rotation and acknowledgement records. The first byte picks the loader; for the
//! certificate + key pair, a NUL byte separates the two texts. Property: no panic, whatever
//! the bytes.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use meshca_provider::x509::certificates_from_pem;
use meshca_provider::{CertificateChain, LeafKey, TrustBundle};
use meshca_tresor::{AckReport, Rotation, StoredCa};
use zeroize::Zeroizing;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    // A fixed "now" inside the validity of the seed certificates, so runs are reproducible.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    match selector % 4 {
        0 => {
            let (certificate, key) = match bytes.iter().position(|b| *b == 0) {
                Some(at) => (&bytes[..at], &bytes[at + 1..]),
                None => (bytes, &[][..]),
            };
            let certificate = String::from_utf8_lossy(certificate).into_owned();
            let key = Zeroizing::new(String::from_utf8_lossy(key).into_owned());
            if let Ok(authority) = StoredCa::import(&certificate, &key, now) {
                let _ = (authority.certificate_pem(), format!("{authority:?}"));
            }
            match StoredCa::new(certificate, key).authority(now) {
                Ok(authority) => {
                    let _ = authority.to_stored();
                    let _ = authority.certificate_chain_pem();
                }
                Err(error) => {
                    let _ = error.to_string();
                }
            }
        }
        1 => {
            let text = String::from_utf8_lossy(bytes);
            let _ = certificates_from_pem(&text);
            if let Ok(bundle) = TrustBundle::from_pem(&text) {
                let _ = (
                    bundle.issuer_names(),
                    bundle.fingerprints(),
                    bundle.to_pem(),
                );
            }
            if let Ok(chain) = CertificateChain::from_pem(&text) {
                let _ = chain.leaf_info();
            }
        }
        2 => {
            if let Ok(key) = LeafKey::from_pem(&String::from_utf8_lossy(bytes)) {
                let _ = (key.public_key_spki(), format!("{key:?}"));
            }
            if let Ok(key) = LeafKey::from_pkcs8_der(bytes) {
                let _ = key.public_key_spki();
            }
        }
        _ => {
            if let Ok(rotation) = Rotation::from_json(bytes, "rotation.json") {
                let _ = (rotation.to_json(), rotation.authorities(now));
            }
            if let Some(report) = AckReport::from_json(bytes) {
                let _ = report.to_json();
            }
        }
    }
});
