//! Certificates as DER: `CertificateInfo::parse`, whose fast path is a hand-written DER walker
//! that falls back to x509-parser. Properties: no panic; whenever the walker accepts a
//! certificate, x509-parser accepts it too and reads the same information.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshca_provider::CertificateInfo;

fuzz_target!(|data: &[u8]| {
    match CertificateInfo::parse(data) {
        Ok(info) => {
            let _ = (
                info.lifetime(),
                info.serial_hex(),
                meshca_provider::x509::Fingerprint::of(data).to_string(),
            );
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
    if let Some(fast) = CertificateInfo::parse_fast(data) {
        let full = CertificateInfo::parse_full(data);
        assert_eq!(
            full.as_ref(),
            Ok(&fast),
            "the DER walker and x509-parser disagree"
        );
    }
});
