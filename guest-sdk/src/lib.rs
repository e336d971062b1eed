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

//!
//! ## Transactions
//!
//! [`kv::transaction`] gives a function serializable transactions on its own keyspace, retried
//! automatically on conflict; see [`kv`].
//!
//! ## Queues
//!
//! [`queue::send`] hands work to a consumer function, retried until it acknowledges;
//! [`kv::Tx::send`] sends only if the transaction commits; see [`queue`].
//!
//! ## WebSockets
//!
//! [`websocket_handler!`] exports a [`ws::Handler`]: each event of a connection runs in a
//! fresh instance; [`ws::send`], [`ws::tag`] and [`ws::connections`] reach the function's
//! connections from any run; see [`ws`].
//!
//! ## Pre-initialization
//!
//! Expensive setup (building tables, parsing embedded data) can run once, at deploy, instead
//! of on every request: export it with [`init!`]. ledge runs it at deploy and snapshots the
//! result; every request starts from that state.
//!
//! ```no_run
//! use std::sync::OnceLock;
//! static SQUARES: OnceLock<Vec<u64>> = OnceLock::new();
//!
//! fn build() {
//!     SQUARES.get_or_init(|| (0..100_000).map(|n| n * n).collect());
//! }
//! ledge_sdk::init!(build);
//! ```

pub mod http;
pub mod kv;
pub mod queue;
pub mod ws;

/// The verified token the request came with: its id and caveats, e.g. to know which user a
/// request acts for from its `kv-prefix` caveat.
pub mod caller {
    use crate::__private::platform::ledge::platform::caller as wit;

    /// A verified caller token.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Token {
        pub id: String,
        /// First-party caveats as written, e.g. `kv-prefix = user/42/`.
        pub caveats: Vec<String>,
    }

    impl Token {
        /// The value of the first caveat `key = value` with this key, e.g.
        /// `token.caveat("kv-prefix")` → `Some("user/42/")`.
        pub fn caveat(&self, key: &str) -> Option<&str> {
            self.caveats.iter().find_map(|c| c.strip_prefix(key)?.trim_start().strip_prefix('=').map(str::trim))
        }
    }

    /// The caller's token; `None` for an anonymous call to a public function.
    pub fn token() -> Option<Token> {
        wit::get_token().map(|t| Token { id: t.id, caveats: t.caveats })
    }
}

/// 64 random bits from the host's cryptographically secure source.
pub fn random_u64() -> u64 {
    wasip2::random::random::get_random_u64()
}

/// The function's configuration (`ledge config set FUNCTION KEY VALUE`), secrets included:
/// read through `wasi:config/store`, current as of the request.
pub mod config {
    use crate::__private::platform::wasi::config::store;

    /// The value of `key`, if the function has one.
    pub fn get(key: &str) -> Option<String> {
        store::get(key).ok().flatten()
    }

    /// Every key and value.
    pub fn all() -> Vec<(String, String)> {
        store::get_all().unwrap_or_default()
    }
}

/// Re-exports the macros need; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use wasip2;

    pub mod platform {
        wit_bindgen::generate!({ path: "wit", world: "ledge:platform/platform-imports", generate_all });
    }

    pub mod ws_bindings {
        wit_bindgen::generate!({
            path: "wit",
            world: "ledge:platform/websocket-events",
            pub_export_macro: true,
            export_macro_name: "__export_websocket_events",
            default_bindings_module: "ledge_sdk::__private::ws_bindings",
        });
    }

    pub mod init_bindings {
        wit_bindgen::generate!({
            path: "wit",
            world: "ledge:platform/preinit",
            pub_export_macro: true,
            export_macro_name: "__export_preinit",
            default_bindings_module: "ledge_sdk::__private::init_bindings",
        });
    }
}

/// Exports a [`ws::Handler`] as the component's WebSocket event handlers
/// (`ledge:platform/websocket-handler`; see [`ws`]).
#[macro_export]
macro_rules! websocket_handler {
    ($handler:ty) => {
        struct __LedgeWebSocket;

        impl $crate::ws::__export::Guest for __LedgeWebSocket {
            fn on_open(
                conn: String,
                request: $crate::__private::ws_bindings::ledge::platform::websocket::RequestInfo,
            ) -> Result<(), $crate::__private::ws_bindings::ledge::platform::websocket::CloseReason> {
                $crate::ws::__export::on_open::<$handler>(conn, request)
            }

            fn on_message(conn: String, message: $crate::__private::ws_bindings::ledge::platform::websocket::Message) {
                $crate::ws::__export::on_message::<$handler>(conn, message)
            }

            fn on_close(conn: String, code: u16, reason: String) {
                $crate::ws::__export::on_close::<$handler>(conn, code, reason)
            }
        }

        $crate::__private::ws_bindings::__export_websocket_events!(__LedgeWebSocket with_types_in $crate::__private::ws_bindings);
    };
}

/// Exports `init` (a `fn()`) as the component's pre-initialization function: ledge runs it
/// once at deploy and snapshots the state it leaves (see the crate docs).
#[macro_export]
macro_rules! init {
    ($init:path) => {
        struct __LedgeInit;

        impl $crate::__private::init_bindings::Guest for __LedgeInit {
            fn init() {
                $init()
            }
        }

        $crate::__private::init_bindings::__export_preinit!(__LedgeInit with_types_in $crate::__private::init_bindings);
    };
}
