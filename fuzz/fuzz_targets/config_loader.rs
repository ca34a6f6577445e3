//! Any config text: the loader must answer a config or a list of problems
//! with key paths, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    auditrelay::fuzzing::config_text(data);
});
