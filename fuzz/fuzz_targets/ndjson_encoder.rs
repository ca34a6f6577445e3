//! Any event bytes: NDJSON output must hold exactly one line per event and
//! the JSON array output must hold every event.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    auditrelay::fuzzing::encoders(data);
});
