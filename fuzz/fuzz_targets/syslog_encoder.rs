//! Any event bytes, names and fields through the syslog encoder (RFC 5424 /
//! RFC 3164, JSON / CEF / LEEF, octet counting / LF / none, size limits):
//! every frame must read back as a valid frame holding what went in.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    auditrelay::fuzzing::syslog_encoder(data);
});
