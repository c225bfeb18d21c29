//! PKCS#10 requests: `VerifiedCsr::from_der` and `from_pem`. Properties: no panic; an accepted
//! request's SubjectPublicKeyInfo and public key are consistent with its key type; the PEM form
//! of accepted DER is accepted as the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshca_provider::x509::pem_block;
use meshca_provider::{KeyType, MAX_CSR_LEN, VerifiedCsr};

fuzz_target!(|data: &[u8]| {
    match VerifiedCsr::from_der(data) {
        Ok(csr) => {
            assert!(data.len() <= MAX_CSR_LEN);
            let spki = csr.subject_public_key_info();
            assert!(spki.ends_with(csr.public_key()));
            match csr.key_type() {
                KeyType::P256 => assert_eq!(csr.public_key().len(), 65),
                KeyType::P384 => assert_eq!(csr.public_key().len(), 97),
                _ => {}
            }
            let pem = pem_block("CERTIFICATE REQUEST", data);
            assert_eq!(VerifiedCsr::from_pem(&pem).as_ref(), Ok(&csr));
            let _ = format!("{csr:?}");
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = VerifiedCsr::from_pem(text);
    }
});
