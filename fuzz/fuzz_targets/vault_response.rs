//! Vault/OpenBao HTTP answers: the body (and a status picked by the first byte) read as the
//! answer to every call meshca makes, through the provider's own decoding down to certificates,
//! token leases and refusal hints. Property: no panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let status = match selector % 8 {
        0 => 204,
        1 => 400,
        2 => 403,
        3 => 404,
        4 => 500,
        _ => 200,
    };
    meshca_vault::fuzzing::read_answers(status, body);
});
