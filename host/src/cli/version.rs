//! What `ledge --version` prints after `ledge `: `X.Y.Z (COMMIT) wasmtime A.B.C TRIPLE`, one
//! line, so that an operator (and a rolling upgrade's checks) can tell builds apart. The parts
//! besides the crate's version come from `host/build.rs`.

pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("LEDGE_COMMIT"),
    ") wasmtime ",
    env!("LEDGE_WASMTIME"),
    " ",
    env!("LEDGE_TARGET")
);
