//! One section of any registered source or sink type: read and validated
//! into a config or problems under its key path, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    auditrelay::fuzzing::component_section(data);
});
