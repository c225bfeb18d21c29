//! Go-style durations. Properties: no panic; a parsed duration formats as a string that parses
//! back to it; any duration of up to `u64::MAX` nanoseconds (the parser's range) formats as a
//! string that parses back to it.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use meshca_provider::{format_duration, parse_duration};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match parse_duration(text) {
            Ok(duration) => round_trip(duration),
            Err(error) => {
                let _ = error.to_string();
            }
        }
    }
    if let Some(bytes) = data.get(..8) {
        let nanos = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        round_trip(Duration::from_nanos(nanos));
    }
});

fn round_trip(duration: Duration) {
    let text = format_duration(duration);
    assert_eq!(
        parse_duration(&text),
        Ok(duration),
        "{duration:?} formatted as {text:?}"
    );
}
