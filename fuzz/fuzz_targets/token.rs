//! `Authorization` values and caveats, verified as the HTTP edge verifies them (see
//! `ledge::registry::fuzzing::token` for the input format).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ledge::registry::fuzzing::token(data));
