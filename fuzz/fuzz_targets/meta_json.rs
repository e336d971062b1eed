//! A function's `meta.json` / `version.json`, read as the server reads them at start.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ledge::registry::fuzzing::meta_json(data));
