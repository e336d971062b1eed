//! # ledge: a WebAssembly edge-function platform
//!
//! One `ledge` process per node accepts WebAssembly components over HTTP and runs every
//! request in a fresh sandboxed instance. The folders are the layers a request crosses, top
//! to bottom; a module may use the layers below it, never one above:
//!
//! - [`cli`]: the command line: arguments, `ledge serve` (wiring everything together), the
//!   client commands (`deploy`, `logs`, `backup`, `replay`, ...), `ledge compile`, `ledge dev`;
//! - [`http`]: the HTTP edge: server and TLS, the router, the admin and invoke handlers, and
//!   [`http::problem`], the one mapping from errors to problem+json responses;
//! - [`verify`]: deploy verification: recent real traffic of a function replayed against a new
//!   build and the live one, and what users would observe compared;
//! - [`cluster`]: cluster mode: control state in etcd, membership and placement, each node's
//!   registry driven from it;
//! - [`registry`]: deployed functions: the live map, the on-disk layout, the deploy pipeline,
//!   each function's effective policy, config and secrets, schedules;
//! - [`backup`]: the backup archive (written for `GET /v1/backup`, verified and restored by
//!   `ledge backup` and `ledge restore`), on the engine and plain files only;
//! - [`runtime`]: the wasm engine: profiles, validation, per-request invocation, guest state
//!   and limits, pre-initialization, guest output and the per-function live logs, outbound HTTP;
//! - [`guest_kv`]: the key-value capabilities guests get (`ledge:platform`, `wasi:keyvalue`)
//!   on the transactional engine (crate `ledge-kv`) or, for global stores, on etcd;
//! - [`record`]: record and replay: the tape every taped host call goes through, the trace
//!   format, kept traces;
//! - [`websocket`]: the WebSocket connections a node holds: whose each is, its tags (rooms),
//!   its bounded outbox (the HTTP layer holds the sockets and runs each event);
//! - [`queue`]: queues: messages kept in the engine's system keyspace until acknowledged, what
//!   to deliver next, retries and dead letters (the HTTP layer runs the deliveries);
//! - [`access`]: who may do what and how often: tokens and caveats, rate limits, policies;
//! - [`etcd`]: the etcd client of a node, with endpoint failover (cluster mode's only
//!   consensus, used by the cluster and by global transactions);
//! - [`telemetry`]: OpenTelemetry export over OTLP: the trace context a run carries through
//!   the layers above, the bounded export queues, the metrics and logs it sends;
//! - [`storage`], [`datadir`] and [`metrics`]: durable file writes, the data dir's format
//!   versions (`format.json`) and Prometheus metrics, used by every layer above.
//!
//! `ARCHITECTURE.md` at the repository's root is the map: the path of a request, where state
//! lives, the invariants every change keeps. `scripts/layers.py` (run by the test command)
//! checks that no module uses a layer above its own and that no file grows past 400 lines
//! before its tests.

pub mod access;
pub mod backup;
pub mod cli;
pub mod cluster;
pub mod datadir;
pub mod etcd;
pub mod guest_kv;
pub mod http;
pub mod metrics;
pub mod queue;
pub mod record;
pub mod registry;
pub mod runtime;
pub mod storage;
pub mod telemetry;
pub mod verify;
pub mod websocket;
