//! The HTTP edge: the server (HTTP/1.1 and HTTP/2 on one port, TLS, graceful shutdown), the
//! router, the invoke and admin handlers, and [`problem`], the one place where errors become
//! responses.
//!
//! Layer: the top of the server; it may use every layer below (registry, runtime, access,
//! storage, metrics), and nothing below imports from it.
//!
//! Invariants: every error leaves through [`problem::Problem`]; nothing here formats an error
//! response by hand. Every request is authorized (or the route is open by the spec) before any
//! body is read or any guest runs.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use crate::access::rate::RateLimiter;
use crate::access::tokens::Authority;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::runtime::Runtime;
use problem::Problem;
use server::{ResponseBody, full};

mod admin;
mod invoke;
pub mod problem;
pub mod router;
pub mod server;
pub mod tls;

/// Shared state of the server.
pub struct App {
    pub registry: Arc<Registry>,
    pub authority: Arc<Authority>,
    /// `None` when rate limiting is off (`--no-rate-limit`).
    pub limiter: Option<RateLimiter>,
    pub runtime: Arc<Runtime>,
    pub metrics: Arc<Metrics>,
    /// Largest component accepted by `PUT /v1/functions/{name}`.
    pub max_upload: u64,
}

/// The `Authorization` header, if it is text.
fn authorization<B>(request: &http::Request<B>) -> Option<&str> {
    request.headers().get(http::header::AUTHORIZATION).and_then(|value| value.to_str().ok())
}

fn method_not_allowed(allow: &'static str) -> Problem {
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, format!("this route accepts {allow}"))
}

fn text(status: StatusCode, body: &'static str) -> http::Response<ResponseBody> {
    full(status, "text/plain; charset=utf-8", body)
}

fn json(status: StatusCode, value: &impl Serialize) -> http::Response<ResponseBody> {
    full(status, "application/json", serde_json::to_vec_pretty(value).unwrap_or_default())
}

fn empty(status: StatusCode) -> http::Response<ResponseBody> {
    let mut response = http::Response::new(Full::new(Bytes::new()).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response
}
