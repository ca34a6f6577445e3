//! A CertifyClouds entries page, whatever its bytes: every event is one JSON
//! value cut from the body, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    auditrelay::fuzzing::certifyclouds_page(data);
});
