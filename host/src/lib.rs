//! # ledge: a WebAssembly edge-function platform
//!
//! One `ledge` process per node accepts WebAssembly components over HTTP and runs every
//! request in a fresh sandboxed instance. The modules, one per capability:
//!
//! - [`auth`]: macaroon tokens: minting, verification, revocation;
//! - [`runtime`]: wasmtime engine, validation, per-request instantiation and guest limits;
//! - [`kv`] and [`keyvalue`]: guest access to the transactional store (`ledge:platform`,
//!   `wasi:keyvalue`);
//! - [`guestlog`]: guest stdout/stderr into the log;
//! - [`outbound`]: the outbound HTTP allow-list;
//! - [`registry`]: deployed functions, durable in the data dir, swapped atomically;
//! - [`preinit`]: pre-initialized snapshots of components that export `init`;
//! - [`metrics`]: Prometheus metrics;
//! - [`policy`]: policy files;
//! - [`routes`] and [`server`]: the HTTP API and the server around it;
//! - [`problem`]: the single mapping from errors to problem+json responses;
//! - [`cli`] and [`client`]: the command line.

pub mod auth;
pub mod cli;
pub mod client;
pub mod guestlog;
pub mod keyvalue;
pub mod kv;
pub mod limits;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod preinit;
pub mod problem;
pub mod registry;
pub mod routes;
pub mod runtime;
pub mod server;
pub mod storage;
pub mod tls;
