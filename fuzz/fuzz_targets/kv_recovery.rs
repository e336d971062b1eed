//! A whole recovery: a few WAL segments and checkpoints (see `ledge_fuzz::kv_recovery` for the
//! input format) written into a fresh directory, then `Db::open` on it.
#![no_main]

use ledge_fuzz::kv_recovery::DataDir;

libfuzzer_sys::fuzz_target!(|input: DataDir| ledge_fuzz::kv_recovery::run(&input));
