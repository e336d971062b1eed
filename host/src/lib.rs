//! # ledge: a WebAssembly edge-function platform
//!
//! One `ledge` process per node accepts WebAssembly components over HTTP and runs every
//! request in a fresh sandboxed instance. The folders are the layers a request crosses, top
//! to bottom; a module may use the layers below it, never one above:
//!
//! - [`cli`]: the command line: arguments, `ledge serve` (wiring everything together), the
//!   client commands, `ledge compile`;
//! - [`http`]: the HTTP edge: server and TLS, the router, the admin and invoke handlers, and
//!   [`http::problem`], the one mapping from errors to problem+json responses;
//! - [`cluster`]: cluster mode: control state in etcd, membership and placement, each node's
//!   registry driven from it (beside the registry, which it calls);
//! - [`registry`]: deployed functions: the live map, the on-disk layout, the deploy pipeline,
//!   each function's effective policy;
//! - [`runtime`]: the wasm engine: profiles, validation, per-request invocation, guest state
//!   and limits, pre-initialization, guest output, outbound HTTP;
//! - [`guest_kv`]: the key-value capabilities guests get (`ledge:platform`, `wasi:keyvalue`)
//!   on the transactional engine (crate `ledge-kv`);
//! - [`access`]: who may do what and how often: tokens and caveats, rate limits, policies;
//! - [`storage`], [`metrics`] and [`logs`]: durable file writes, Prometheus metrics and the
//!   per-function live logs, used by every layer above;
//! - [`backup`]: the backup archive (written for `GET /v1/backup`, verified and restored by
//!   `ledge backup` and `ledge restore`), on the engine and plain files only.

pub mod access;
pub mod backup;
pub mod cli;
pub mod cluster;
#[doc(hidden)]
pub mod fuzzing;
pub mod guest_kv;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod record;
pub mod registry;
pub mod runtime;
pub mod storage;
