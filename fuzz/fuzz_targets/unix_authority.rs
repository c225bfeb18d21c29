//! The Workload API socket's `:authority` rewrite (`meshca::sds::transport::rewrite_client_bytes`)
//! on whatever a local client sends: the HTTP/2 preface, then frames whose header blocks are
//! decoded with HPACK, then passed on as they came or, from the first malformed `:authority`
//! on, encoded again. Properties: no panic (the HPACK decoder underneath
//! panics on malformed blocks unless they are refused first); what it passes on is stable —
//! rewriting its output again changes nothing, so every block it wrote decodes and carries a
//! valid authority.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshca::sds::transport::rewrite_client_bytes;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let input = [PREFACE, data].concat();
    let Ok(once) = rewrite_client_bytes(&input) else {
        return;
    };
    let twice = rewrite_client_bytes(&once).expect("its own output is accepted");
    assert_eq!(once, twice, "rewriting the output again changed it");
});
