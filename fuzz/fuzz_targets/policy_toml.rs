//! Policy files, parsed and checked as an upload is.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ledge::registry::fuzzing::policy_toml(data));
