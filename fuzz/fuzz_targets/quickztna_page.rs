//! A QuickZTNA export or audit answer, whatever its bytes: the JSON export,
//! the audit query and the CSV export must read it without a panic, every
//! event being one JSON value (cut from the body for JSON).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    auditrelay::fuzzing::quickztna_page(data);
});
