//! DNS names meshca puts in certificates (`DnsName`, from `--dns`, configuration, managed
//! Secret annotations). Properties: no panic; an accepted name is the input in lowercase, at
//! most 253 bytes of LDH labels of 1 to 63 characters (a `*` only as the whole leftmost label,
//! and only where wildcards are allowed), not an IP address, and parses back to itself; what is
//! accepted without wildcards is accepted the same with them.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use meshca_provider::DnsName;
use meshca_provider::dns::dedup;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let plain = DnsName::new(text);
    let wildcard = DnsName::with_wildcard(text);
    if let Ok(name) = &plain {
        assert!(
            !name.is_wildcard(),
            "{name:?} is a wildcard without being allowed one"
        );
        assert_eq!(wildcard.as_ref(), Ok(name));
    }
    match &wildcard {
        Ok(name) => {
            let shown = name.as_str();
            assert_eq!(shown, text.to_ascii_lowercase());
            assert!(shown.len() <= 253, "{shown:?}");
            assert!(
                shown.parse::<IpAddr>().is_err(),
                "{shown:?} is an IP address"
            );
            for (i, label) in shown.split('.').enumerate() {
                assert!(
                    (1..=63).contains(&label.len()),
                    "{shown:?}: label {label:?}"
                );
                let ldh = label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                assert!(
                    ldh || (i == 0 && label == "*"),
                    "{shown:?}: label {label:?}"
                );
            }
            assert_eq!(DnsName::with_wildcard(shown).as_ref(), Ok(name));
            let _ = dedup([name.clone(), name.clone()]);
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
});
