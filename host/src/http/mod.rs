//! The HTTP edge: the server (HTTP/1.1 and HTTP/2 on one port, TLS, graceful shutdown), the
//! router, the invoke and admin handlers (traces, logs and backups among them), proxying to
//! the hosting peer, the node-to-node routes (`peer_corpus`, `peer_sockets`: `/v1/peer/...`,
//! only for a request signed with the cluster's peer key), and [`problem`], the one place where errors become
//! responses. [`body`] is the one response body type; `audit` the audit log of admin changes;
//! [`dev_builds`] what `ledge dev` answers for a declared function not live yet. This file holds
//! [`App`], the state every handler shares, and the small response helpers.
//!
//! Layer: the top of the server; it may use every layer below (cluster, registry, backup,
//! runtime, record, access, storage, metrics), and nothing below imports from it.
//!
//! Invariants: every error leaves through [`problem::Problem`]; nothing here formats an error
//! response by hand. Every request is authorized (or the route is open by the spec) before any
//! body is read or any guest runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use crate::access::caveats;
use crate::access::rate::{AUTH_FAILURE_QUOTA, RateLimiter, client_key};
use crate::access::tokens::{Authority, Caller};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::runtime::Runtime;
use body::{ResponseBody, full};
use problem::Problem;

/// The version that answered, on every response a function's run made (parsed once: a name
/// given as a string is parsed on every use).
const LEDGE_VERSION: http::HeaderName = http::HeaderName::from_static("ledge-version");

mod admin;
mod audit;
mod backup;
pub mod body;
mod connections;
mod deliveries;
mod deploys;
pub mod dev_builds;
mod invoke;
mod logs;
mod path;
mod peer_corpus;
mod peer_sockets;
pub mod problem;
mod promote;
mod proxy;
mod queues;
mod recording;
pub mod router;
pub mod server;
mod socket_events;
mod socket_session;
pub mod tls;
mod traces;
pub mod websocket;

/// Shared state of the server.
pub struct App {
    /// Cluster mode: the control state in etcd.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    pub registry: Arc<Registry>,
    pub authority: Arc<Authority>,
    /// `None` when rate limiting is off (`--no-rate-limit`).
    pub limiter: Option<RateLimiter>,
    pub runtime: Arc<Runtime>,
    pub metrics: Arc<Metrics>,
    /// Largest component accepted by `PUT /v1/functions/{name}`.
    pub max_upload: u64,
    /// Failed authentications per client address ([`AUTH_FAILURE_QUOTA`]); on even when rate
    /// limiting is off, since it bounds the work forged tokens cost.
    pub auth_failures: RateLimiter,
    /// Requests arrive over TLS (guests see scheme `https`).
    pub tls: bool,
    /// `ledge dev`: invocations from this machine need no token (see [`App::is_local`]).
    pub dev: bool,
    /// `ledge dev`: declared functions not live yet (building, or their build failed); empty
    /// on any other server.
    pub dev_builds: dev_builds::DevBuilds,
    /// `--data-dir`: what `GET /v1/backup` copies (and where it stages the archive).
    pub data_dir: PathBuf,
    /// The engine, whose image `GET /v1/backup` takes.
    pub db: ledge_kv::Db,
    /// Recorded runs kept for replay.
    pub traces: Arc<crate::record::Traces>,
    /// Deploy verification against those runs (`?verify=N`, `POST .../verify`).
    pub verifier: Arc<crate::verify::Verifier>,
    /// The node's queues (`/v1/queues`, and deliveries to consumers).
    pub queues: Arc<crate::queue::Queues>,
    /// Cluster mode: the queues in etcd (`[queues] global`).
    pub global_queues: Option<Arc<crate::guest_kv::global_queues::GlobalQueues>>,
    /// Per global queue, the time (ms) before which it is not looked at in etcd again
    /// (`u64::MAX`: a look is going).
    pub global_polls: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Per global queue, its deliveries running on this node.
    pub global_in_flight: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// The WebSocket connections this node holds.
    pub websockets: Arc<crate::websocket::Hub>,
}

impl App {
    /// Verifies the request's token for `facts`. Each failure of a presented credential (a 401)
    /// is charged to the client's address; an address out of budget gets 429 before any
    /// signature is computed. A request without any credential costs nothing to refuse and is
    /// not charged.
    fn authenticate(
        &self,
        authorization: Option<&str>,
        facts: &caveats::Request<'_>,
        peer: SocketAddr,
    ) -> Result<Caller, Problem> {
        let address = client_key(peer.ip());
        if let Some(wait) = self.auth_failures.exhausted("auth", &address, AUTH_FAILURE_QUOTA) {
            return Err(too_many_failures(wait));
        }
        self.authority.verify(authorization, facts).map_err(|error| {
            if !error.is_forbidden() && authorization.is_some() {
                let charged = self.auth_failures.charge("auth", &address, AUTH_FAILURE_QUOTA);
                if !charged.allowed {
                    return too_many_failures(charged.reset_seconds);
                }
            }
            error.into()
        })
    }
}

impl App {
    /// A `ledge dev` request from this machine: the peer is loopback *and* the `Host` names a
    /// loopback address or `localhost`, so a web page cannot reach the dev server through a
    /// DNS name it controls (DNS rebinding) and act without a token.
    fn is_local<B>(&self, request: &http::Request<B>, peer: SocketAddr) -> bool {
        if !self.dev || !peer.ip().is_loopback() {
            return false;
        }
        let authority = request
            .uri()
            .authority()
            .map(|a| a.host().to_string())
            .or_else(|| request.headers().get(http::header::HOST)?.to_str().ok().map(str::to_string));
        let Some(authority) = authority else { return false };
        let host = match authority.parse::<http::uri::Authority>() {
            Ok(parsed) => parsed.host().to_string(),
            Err(_) => return false,
        };
        is_loopback_host(&host)
    }

    /// `ledge dev` refuses what a web page on another site sends it: such a page may POST (or
    /// GET) to 127.0.0.1, and [`App::is_local`] would let it invoke the author's functions
    /// without a token. A request with an `Origin` that is not loopback (`http://localhost:5173`,
    /// `https://127.0.0.1`, `http://[::1]:3000`; `null` is not) gets 403, whatever its method;
    /// without `Origin` (curl, a GET from the address bar), a browser's `Sec-Fetch-Site:
    /// cross-site` (a link, an image or a form GET from another site) gets 403 too.
    fn refuse_cross_site<B>(&self, request: &http::Request<B>) -> Result<(), Problem> {
        if !self.dev {
            return Ok(());
        }
        let headers = request.headers();
        let fetch_site = headers.get("sec-fetch-site").map(|site| site.as_bytes().to_ascii_lowercase());
        let mut origins = headers.get_all(http::header::ORIGIN).iter().peekable();
        let why = if origins.peek().is_some() {
            let foreign = origins.find(|origin| !origin.to_str().is_ok_and(is_loopback_origin));
            match foreign.map(|origin| origin.to_str().map(str::to_string)) {
                None => return Ok(()),
                Some(Ok(origin)) => format!("Origin `{origin}` is not this machine"),
                Some(Err(_)) => "its Origin is not this machine".to_string(),
            }
        } else if fetch_site.as_deref() == Some(b"cross-site") {
            "the browser says it comes from another site (Sec-Fetch-Site: cross-site)".to_string()
        } else {
            return Ok(());
        };
        Err(Problem::new(
            StatusCode::FORBIDDEN,
            format!(
                "the dev server refuses cross-site requests: {why}; call it from this machine \
                 without an Origin (curl) or from a page served on localhost or a loopback address"
            ),
        ))
    }
}

/// `localhost` or a loopback address (an IPv6 one in brackets or not).
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An `Origin` of a page on this machine: `http` or `https`, a loopback host, any port.
fn is_loopback_origin(origin: &str) -> bool {
    let Some(authority) = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) else {
        return false;
    };
    match authority.parse::<http::uri::Authority>() {
        Ok(parsed) => !authority.contains('@') && is_loopback_host(parsed.host()),
        Err(_) => false,
    }
}

fn too_many_failures(wait: u64) -> Problem {
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many failed authentications from this address; retry in {wait} s"),
    )
    .with_header("retry-after", wait.to_string())
}

/// The `Authorization` header, if it is text.
fn authorization<B>(request: &http::Request<B>) -> Option<&str> {
    request.headers().get(http::header::AUTHORIZATION).and_then(|value| value.to_str().ok())
}

/// The Prometheus text of `metrics`.
pub fn metrics_response(metrics: &Metrics) -> http::Response<ResponseBody> {
    full(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.render())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pages_on_this_machine_are_loopback_origins() {
        for origin in ["http://localhost:5173", "https://localhost", "http://127.0.0.1:8080", "http://[::1]:3000"] {
            assert!(is_loopback_origin(origin), "{origin}");
        }
        for origin in [
            "null",
            "http://evil.example",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example:80",
            "http://evil.example@localhost",
            "ftp://localhost",
            "localhost:5173",
            "http://localhost/",
            "",
        ] {
            assert!(!is_loopback_origin(origin), "{origin}");
        }
    }
}
