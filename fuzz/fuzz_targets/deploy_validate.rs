//! Uploaded components, validated as a deploy validates them before storing anything.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ledge::registry::fuzzing::deploy_validate(data));
