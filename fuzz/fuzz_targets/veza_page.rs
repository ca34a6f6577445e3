//! A Veza export response, whatever its bytes: parsing it into events must
//! never panic, and every event's bytes must be the item exactly as sent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    auditrelay::fuzzing::veza_page(data);
});
