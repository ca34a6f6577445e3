//! A webhook_in request body (plain or gzip): every event is one JSON object
//! of the body, kept byte for byte, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    auditrelay::fuzzing::webhook_in_body(data);
});
