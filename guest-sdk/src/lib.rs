//! # ledge-sdk: write ledge edge functions in Rust
//!
//! A ledge function is a standard `wasi:http/proxy` component. This crate hides the WASI
//! plumbing behind plain request and response values and one macro:
//!
//! ```no_run
//! use ledge_sdk::http::{Request, Response};
//!
//! fn handle(req: Request) -> Response {
//!     Response::text(format!("hello from {}\n", req.path()))
//! }
//!
//! ledge_sdk::http_handler!(handle);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` and deploy the `.wasm` with
//! `ledge deploy NAME target/wasm32-wasip2/release/NAME.wasm`.
//!
//! The handler may also return `Result<Response, E>` for any `E: Display`: an `Err` becomes a
//! `500` with the error's text, so `?` works inside handlers.

pub mod http;

/// Re-exports the `http_handler!` macro needs; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use wasip2;
}
