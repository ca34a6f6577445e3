//! A Veza audit list page (the backfill source): every event is one JSON
//! value cut from the body, the next token is never empty, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    auditrelay::fuzzing::veza_list_page(data);
});
