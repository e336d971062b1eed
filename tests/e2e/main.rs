//! End-to-end tests: a real `ledge serve` on loopback, real components, a real HTTP client.

mod harness;

mod access;
mod author;
mod backup;
mod cli_flags;
mod cluster;
mod cluster_state;
mod config;
mod containment;
mod corpus;
mod deploy;
mod durability;
mod edge;
mod formats;
mod invoke;
mod kv;
mod lifecycle;
mod logs;
mod otel;
mod otlp;
mod packaging;
mod policies;
mod preinit;
mod production;
mod queue_cli;
mod queues;
mod queues_cluster;
mod rate;
mod replay;
mod routes;
mod schedule;
mod tokens;
mod verify;
mod verify_cluster;
mod versions;
