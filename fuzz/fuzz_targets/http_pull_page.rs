//! An http_pull answer (config pick, headers, body): every event is one JSON
//! value cut from the body and the next cursor is what the pagination mode
//! says, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    auditrelay::fuzzing::http_pull_page(data);
});
