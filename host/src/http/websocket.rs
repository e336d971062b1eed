//! WebSocket upgrades (spec "WebSockets"): an HTTP/1.1 `Upgrade: websocket` request or an
//! HTTP/2 extended CONNECT (RFC 8441) to a path under a `[[websocket]]` entry becomes a
//! connection the node holds ([`crate::websocket::Hub`]), whose events run the function
//! (`socket_session.rs`).
//!
//! Invariants: an upgrade passes the same authentication and rate limit as any invocation of
//! the function before anything here runs (the invoke handler calls [`App::accept_websocket`]
//! after both); a browser's token, sent as the subprotocol `ledge-token.<token>`, is moved
//! into `Authorization` before authentication and never echoed back or shown to the guest;
//! the entry's `max_connections` is held per node, and a refused upgrade costs no instance.

use std::net::SocketAddr;

use http::{HeaderValue, StatusCode, header};
use hyper::body::Incoming;

use super::body::empty;
use super::connections::UpgradeHold;
use super::recording;
use super::socket_events::Session;
use super::socket_session::OpenRequest;
use super::{App, Problem, ResponseBody};
use crate::access::policy::WebSocket;
use crate::access::tokens::Caller;
use crate::registry::{Deployment, RegistryError};
use crate::runtime::request::remove_ledge_headers;
use crate::websocket::OpenError;

/// The subprotocol prefix a browser, which cannot set `Authorization`, sends its token with.
const TOKEN_PROTOCOL: &str = "ledge-token.";

/// The request asks to become a WebSocket: HTTP/1.1 `GET` with `Upgrade: websocket`, or an
/// HTTP/2 `CONNECT` with the `:protocol` `websocket`.
pub fn is_upgrade<B>(request: &http::Request<B>) -> bool {
    if request.method() == http::Method::CONNECT {
        return request.extensions().get::<hyper::ext::Protocol>().is_some_and(|p| p.as_str() == "websocket");
    }
    request.method() == http::Method::GET
        && request
            .headers()
            .get(header::UPGRADE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket")))
}

/// The subprotocols the client offered, in order.
fn offered(request: &http::Request<Incoming>) -> Vec<String> {
    request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|protocol| protocol.trim().to_string())
        .filter(|protocol| !protocol.is_empty())
        .collect()
}

/// Moves a browser's `ledge-token.<token>` subprotocol of an upgrade into `Authorization`
/// (unless the request has one), and takes it out of `Sec-WebSocket-Protocol` either way.
pub fn token_from_subprotocol(request: &mut http::Request<Incoming>) {
    let protocols = offered(request);
    let Some(token) = protocols.iter().find_map(|p| p.strip_prefix(TOKEN_PROTOCOL)) else { return };
    if !request.headers().contains_key(header::AUTHORIZATION)
        && let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}"))
    {
        request.headers_mut().insert(header::AUTHORIZATION, value);
    }
    let others: Vec<&String> = protocols.iter().filter(|p| !p.starts_with(TOKEN_PROTOCOL)).collect();
    request.headers_mut().remove(header::SEC_WEBSOCKET_PROTOCOL);
    if !others.is_empty() {
        let joined = others.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ");
        if let Ok(value) = HeaderValue::from_str(&joined) {
            request.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, value);
        }
    }
}

/// What an accepted upgrade needs from the invoke handler.
pub struct Upgrade<'a> {
    pub name: &'a str,
    pub deployment: &'a Deployment,
    pub entry: &'a WebSocket,
    pub caller: Caller,
    /// The ledge token it came with, checked again before each event.
    pub token: Option<String>,
    pub caller_key: String,
    /// The path the function sees, and with the query.
    pub guest_path: &'a str,
    pub path_with_query: String,
    pub peer: SocketAddr,
}

impl App {
    /// Accepts `request` as a WebSocket under `upgrade.entry`: the handshake's answer, and the
    /// connection's session spawned to run once the protocol switches.
    pub(super) fn accept_websocket(
        &self,
        mut request: http::Request<Incoming>,
        upgrade: Upgrade<'_>,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        let http2 = request.method() == http::Method::CONNECT;
        let version = request.headers().get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok());
        if version != Some("13") {
            return Err(Problem::new(StatusCode::UPGRADE_REQUIRED, "this server speaks WebSocket version 13")
                .with_header("sec-websocket-version", "13"));
        }
        let key = request.headers().get(header::SEC_WEBSOCKET_KEY).map(|key| key.as_bytes().to_vec());
        if !http2 && key.is_none() {
            return Err(Problem::new(StatusCode::BAD_REQUEST, "a WebSocket upgrade needs Sec-WebSocket-Key"));
        }
        let Some(chosen) = upgrade.deployment.choose(&upgrade.caller_key) else {
            return Err(RegistryError::NotFound(upgrade.deployment.meta.name.clone()).into());
        };
        if chosen.pre.websocket_handler().is_none() {
            return Err(Problem::new(
                StatusCode::NOT_IMPLEMENTED,
                format!(
                    "`{}` has a [[websocket]] entry but its build does not export ledge:platform/websocket-handler",
                    upgrade.name
                ),
            ));
        }
        let origin = request.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
        let origin_allowed =
            upgrade.entry.origins.is_empty() || origin.as_ref().is_some_and(|o| upgrade.entry.origins.contains(o));
        let entry = upgrade.entry;
        let (opened, outbox) = self
            .websockets
            .open(upgrade.name, &entry.path, entry.max_connections, entry.max_buffer)
            .map_err(|error| match error {
                OpenError::Full { .. } => Problem::new(StatusCode::TOO_MANY_REQUESTS, error.to_string()),
                OpenError::GoingAway => Problem::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string()),
            })?;
        // Held for the connection's life: its server connection slot (an HTTP/2 stream took one of
        // its own), which the server did not find for this one.
        let hold = request.extensions_mut().remove::<UpgradeHold>().ok_or_else(|| {
            Problem::new(StatusCode::TOO_MANY_REQUESTS, "too many connections from this address")
                .with_header("retry-after", "10")
        })?;
        let protocol = offered(&request).into_iter().next();
        let record_requested =
            recording::asked(&request) && self.may_read_traces(upgrade.token.as_deref(), upgrade.name);
        let on_upgrade = hyper::upgrade::on(&mut request);
        // As for a request: a ledge token is gone already, and headers ledge sets for guests
        // never come from the caller.
        remove_ledge_headers(request.headers_mut());
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .filter_map(|(name, value)| Some((name.as_str().to_string(), value.to_str().ok()?.to_string())))
            .collect();
        let session = Session {
            registry: self.registry.clone(),
            runtime: self.runtime.clone(),
            authority: self.authority.clone(),
            function: upgrade.name.to_string(),
            entry: entry.clone(),
            caller: upgrade.caller,
            token: upgrade.token,
            method: request.method().as_str().to_string(),
            path: upgrade.guest_path.to_string(),
            caller_key: upgrade.caller_key,
            tls: self.tls_of(&request),
            peer: upgrade.peer,
            traces: self.traces.clone(),
            record_requested,
        };
        let open = OpenRequest { path_with_query: upgrade.path_with_query, headers, origin_allowed };
        tokio::spawn(session.run(on_upgrade, (opened, outbox), hold, open));

        let mut response = http::Response::new(empty());
        if http2 {
            *response.status_mut() = StatusCode::OK;
        } else {
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key.unwrap_or_default());
            let headers = response.headers_mut();
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            if let Ok(accept) = HeaderValue::from_str(&accept) {
                headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
            }
        }
        if let Some(protocol) = protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
            response.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        response.headers_mut().insert(super::LEDGE_VERSION, HeaderValue::from(chosen.version));
        Ok(response)
    }
}
