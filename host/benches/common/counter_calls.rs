//! The counter's four key-value calls (`begin`, `get`, `put`, `commit`) on a tape, each through
//! `guest_kv::taped` with the arguments and summaries `guest_kv::transactions` writes for it;
//! each call's live result is a constant, so the engine is not involved. Shared by the benches
//! that tape a counter run (`tape`, `trace_writer`).

use std::hint::black_box;

use futures::executor::block_on;
use ledge::guest_kv::bindings::ledge::platform::transactions::Error;
use ledge::guest_kv::taped::{described, observed, taped};
use ledge::record::Tape;
use ledge::record::tape::{show_all, show_bytes};

/// Tapes one counter run's calls: it read `value` at `key`, wrote it back, and committed at
/// `stamp`.
pub fn tape_counter_calls(tape: &Tape, key: &[u8], value: &[u8], stamp: u64) {
    let tape = Some(tape);
    let begun: Result<(), Error> = Ok(());
    observed(tape, "ledge:platform/transactions.begin", || "Serializable".to_string(), &begun).unwrap();
    let args = described(tape, || show_bytes(key));
    let got = block_on(taped(tape, "ledge:platform/transactions.get", args, async {
        Ok(Ok::<_, Error>(Some(value.to_vec())))
    }));
    black_box(got.unwrap().ok());
    let args = described(tape, || show_all(&[key, value]));
    let put = block_on(taped(tape, "ledge:platform/transactions.put", args, async { Ok(Ok::<_, Error>(())) }));
    black_box(put.unwrap().ok());
    let committed =
        block_on(taped(tape, "ledge:platform/transactions.commit", String::new(), async { Ok(Ok::<_, Error>(stamp)) }));
    black_box(committed.unwrap().ok());
}
