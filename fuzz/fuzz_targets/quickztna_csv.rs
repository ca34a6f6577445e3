//! CSV text as the QuickZTNA export sends it: one JSON object of strings or
//! nulls per row, the same alone and inside an export answer, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    auditrelay::fuzzing::quickztna_csv(data);
});
