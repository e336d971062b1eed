//! Arbitrary bytes read as a WAL segment, as recovery reads one.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ledge_kv::fuzzing::wal_segment(data));
