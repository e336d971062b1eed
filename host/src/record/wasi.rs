//! `wasi:clocks` and `wasi:random` through the tape: these shadow wasmtime-wasi's own
//! bindings in the linker and delegate to them, so a guest run without a tape pays one branch,
//! and a recorded run's clock readings and random bytes come back on replay.
//!
//! Resolutions are constants and pollables (`subscribe-*`) are timers, so they pass straight
//! through: what a guest computes never depends on them beyond when it wakes.

use wasmtime::component::{HasData, Linker};
use wasmtime_wasi::clocks::WasiClocksCtxView;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::clocks::{monotonic_clock, wall_clock};
use wasmtime_wasi::p2::bindings::random::{insecure, insecure_seed, random};
use wasmtime_wasi::random::WasiRandomCtx;

use super::tape::Tape;

/// A live WASI view and the run's tape, if it has one.
pub struct Taped<'a, V> {
    pub live: V,
    pub tape: Option<&'a Tape>,
}

pub struct TapedClocks;

impl HasData for TapedClocks {
    type Data<'a> = Taped<'a, WasiClocksCtxView<'a>>;
}

pub struct TapedRandom;

impl HasData for TapedRandom {
    type Data<'a> = Taped<'a, &'a mut WasiRandomCtx>;
}

/// Replaces wasmtime-wasi's clocks and random in `linker` (which must allow shadowing).
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    clocks: fn(&mut T) -> Taped<'_, WasiClocksCtxView<'_>>,
    randomness: fn(&mut T) -> Taped<'_, &mut WasiRandomCtx>,
) -> wasmtime::Result<()> {
    wall_clock::add_to_linker::<T, TapedClocks>(linker, clocks)?;
    monotonic_clock::add_to_linker::<T, TapedClocks>(linker, clocks)?;
    random::add_to_linker::<T, TapedRandom>(linker, randomness)?;
    insecure::add_to_linker::<T, TapedRandom>(linker, randomness)?;
    insecure_seed::add_to_linker::<T, TapedRandom>(linker, randomness)?;
    Ok(())
}

fn no_args() -> String {
    String::new()
}

fn length(len: u64) -> impl FnOnce() -> String {
    move || format!("len={len}")
}

/// Summarizes random bytes (the closure form the tape takes).
#[allow(clippy::ptr_arg)] // the tape summarizes a `Vec<u8>` result through `Fn(&Vec<u8>)`
fn bytes(bytes: &Vec<u8>) -> String {
    super::tape::show_bytes(bytes.as_slice())
}

fn number(n: &u64) -> String {
    n.to_string()
}

impl wall_clock::Host for Taped<'_, WasiClocksCtxView<'_>> {
    fn now(&mut self) -> wasmtime::Result<wall_clock::Datetime> {
        let Some(tape) = self.tape else { return self.live.now() };
        let live = &mut self.live;
        let summarize = |(seconds, nanos): &(u64, u32)| {
            chrono::DateTime::from_timestamp(*seconds as i64, *nanos)
                .map_or_else(|| format!("{seconds}.{nanos:09}"), |t| t.to_rfc3339())
        };
        let (seconds, nanoseconds) = tape.call("wasi:clocks/wall-clock.now", no_args, summarize, || {
            live.now().map(|now| (now.seconds, now.nanoseconds))
        })?;
        Ok(wall_clock::Datetime { seconds, nanoseconds })
    }

    fn resolution(&mut self) -> wasmtime::Result<wall_clock::Datetime> {
        self.live.resolution()
    }
}

impl monotonic_clock::Host for Taped<'_, WasiClocksCtxView<'_>> {
    fn now(&mut self) -> wasmtime::Result<u64> {
        let Some(tape) = self.tape else { return monotonic_clock::Host::now(&mut self.live) };
        let live = &mut self.live;
        tape.call("wasi:clocks/monotonic-clock.now", no_args, number, || monotonic_clock::Host::now(live))
    }

    fn resolution(&mut self) -> wasmtime::Result<u64> {
        monotonic_clock::Host::resolution(&mut self.live)
    }

    fn subscribe_instant(&mut self, when: u64) -> wasmtime::Result<wasmtime::component::Resource<DynPollable>> {
        self.live.subscribe_instant(when)
    }

    fn subscribe_duration(&mut self, duration: u64) -> wasmtime::Result<wasmtime::component::Resource<DynPollable>> {
        self.live.subscribe_duration(duration)
    }
}

impl random::Host for Taped<'_, &mut WasiRandomCtx> {
    fn get_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        let Some(tape) = self.tape else { return random::Host::get_random_bytes(self.live, len) };
        let live = &mut *self.live;
        tape.call("wasi:random/random.get-random-bytes", length(len), bytes, || {
            random::Host::get_random_bytes(live, len)
        })
    }

    fn get_random_u64(&mut self) -> wasmtime::Result<u64> {
        let Some(tape) = self.tape else { return random::Host::get_random_u64(self.live) };
        let live = &mut *self.live;
        tape.call("wasi:random/random.get-random-u64", no_args, number, || random::Host::get_random_u64(live))
    }
}

impl insecure::Host for Taped<'_, &mut WasiRandomCtx> {
    fn get_insecure_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        let Some(tape) = self.tape else { return insecure::Host::get_insecure_random_bytes(self.live, len) };
        let live = &mut *self.live;
        tape.call("wasi:random/insecure.get-insecure-random-bytes", length(len), bytes, || {
            insecure::Host::get_insecure_random_bytes(live, len)
        })
    }

    fn get_insecure_random_u64(&mut self) -> wasmtime::Result<u64> {
        let Some(tape) = self.tape else { return insecure::Host::get_insecure_random_u64(self.live) };
        let live = &mut *self.live;
        tape.call("wasi:random/insecure.get-insecure-random-u64", no_args, number, || {
            insecure::Host::get_insecure_random_u64(live)
        })
    }
}

impl insecure_seed::Host for Taped<'_, &mut WasiRandomCtx> {
    fn insecure_seed(&mut self) -> wasmtime::Result<(u64, u64)> {
        let Some(tape) = self.tape else { return insecure_seed::Host::insecure_seed(self.live) };
        let live = &mut *self.live;
        tape.call(
            "wasi:random/insecure-seed.insecure-seed",
            no_args,
            |(low, high): &(u64, u64)| format!("({low}, {high})"),
            || insecure_seed::Host::insecure_seed(live),
        )
    }
}
