//! Arbitrary bytes read as a checkpoint file, as recovery reads one.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ledge_kv::fuzzing::checkpoint(data));
