//! SPIFFE IDs, trust domains and `<ns>/<sa>` identities from arbitrary text. Properties: no
//! panic; whatever parses displays as exactly the input and parses back to the same value; the
//! parts rebuild the same identity.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshca_provider::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.parse::<SpiffeId>() {
        Ok(id) => {
            assert_eq!(id.to_string(), text);
            assert_eq!(id.as_uri(), text);
            same_identity(&id);
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
    match TrustDomain::new(text) {
        Ok(trust_domain) => {
            assert_eq!(trust_domain.as_str(), text);
            assert_eq!(text.parse::<TrustDomain>().ok(), Some(trust_domain));
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
    match SpiffeId::from_short(text, &TrustDomain::default()) {
        Ok(id) => {
            assert_eq!(id.short(), text);
            same_identity(&id);
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
});

fn same_identity(id: &SpiffeId) {
    let reparsed: SpiffeId = id.to_string().parse().expect("a displayed ID parses");
    assert_eq!(&reparsed, id);
    let rebuilt = SpiffeId::new(
        id.trust_domain().clone(),
        id.namespace(),
        id.service_account(),
    )
    .expect("the parts of a valid ID are valid");
    assert_eq!(&rebuilt, id);
    let short =
        SpiffeId::from_short(&id.short(), id.trust_domain()).expect("the short form parses");
    assert_eq!(&short, id);
}
