//! `/v1/peer/websocket/...` (see `peer_corpus.rs` for the table and the signature check, done
//! before anything here runs): a peer's host call on a WebSocket connection this node holds,
//! and the ids of a function's connections here with a tag (`cluster::sockets` asks).
//!
//! Invariants: only this node's own connections are acted on or listed (an id naming another
//! node is `no-such-connection`: nothing is forwarded again); the function is checked like any
//! name; the call's body is read only up to `MAX_CALL_BYTES`, and acted on only when it is the
//! body the peer signed.

use http::{Method, StatusCode};
use hyper::body::Incoming;

use super::admin::read_upload;
use super::body::full;
use super::{App, Problem, ResponseBody};
use crate::cluster::peers::Signed;
use crate::cluster::sockets::MAX_CALL_BYTES;
use crate::registry::validate_name;
use crate::websocket::{SocketError, SocketOp};

impl App {
    /// A signed peer request under `/v1/peer/websocket/` (`rest` follows it); `None` for a route
    /// that does not exist.
    pub(super) async fn peer_sockets(
        &self,
        request: http::Request<Incoming>,
        method: &Method,
        rest: &str,
        signed: &Signed,
    ) -> Option<Result<http::Response<ResponseBody>, Problem>> {
        let bad = |detail: String| Some(Err(Problem::new(StatusCode::BAD_REQUEST, detail)));
        let (function, id) = match rest.split_once('/') {
            Some((function, id)) => (function, Some(id)),
            None => (rest, None),
        };
        if let Err(error) = validate_name(function) {
            return bad(error.to_string());
        }
        let answer = match (method, id) {
            (&Method::POST, Some(id)) => {
                let body = match read_upload(request.into_body(), MAX_CALL_BYTES).await {
                    Ok(body) => body,
                    Err(error) => return bad(error.to_string()),
                };
                if !signed.covers(&body) {
                    return bad("the body is not the one the peer signed".into());
                }
                let Ok(op) = postcard::from_bytes::<SocketOp>(&body) else {
                    return bad("the body is not a WebSocket call".into());
                };
                // Held here, or by no one: a peer request is never passed on.
                let result = match id.split_once('@') {
                    Some((_, node)) if self.cluster.as_ref().is_some_and(|cluster| cluster.node == node) => {
                        self.websockets.apply_here(function, id, op)
                    }
                    _ => Err(SocketError::NoSuchConnection),
                };
                postcard::to_stdvec(&result)
            }
            (&Method::GET, None) => {
                let tag = form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
                    .find(|(name, _)| name == "tag")
                    .map(|(_, tag)| tag.into_owned());
                let Some(tag) = tag else { return bad("give tag=T".into()) };
                postcard::to_stdvec(&self.websockets.tagged(function, &tag))
            }
            _ => return None,
        };
        let answer = answer.expect("postcard encodes results and id lists");
        Some(Ok(full(StatusCode::OK, "application/octet-stream", answer)))
    }
}
