//! WebSocket connections across nodes (`crate::websocket::Peers`): a host call on a connection
//! another node holds goes to that node (`POST /v1/peer/websocket/{function}/{id}`, the call
//! as postcard bytes, answered with its result), and `connections(tag)` of a function whose kv
//! scope is global asks every other node hosting it (`GET /v1/peer/websocket/{function}?tag=T`,
//! answered with its ids). Served by `http::peer_sockets`; every request is signed with
//! [`PEER_REQUEST_HEADER`].
//!
//! Invariants: one hop, to the node the id names, and only when that node is live and hosts the
//! function (a node that left took its connections with it: `no-such-connection`); a call's
//! signature covers its body; a function has at most [`CALLS_PER_FUNCTION`] calls on other
//! nodes in flight and the node [`CALLS_PER_NODE`] (so one function's runs cannot hold every
//! connection to a peer, nor the peer's slots for this node's address); each request waits at
//! most [`SOCKET_PEER_TIMEOUT`], and a node that does not answer in time is `unavailable` (for
//! a call) or left out (for a listing); no answer is read past [`MAX_ANSWER_BYTES`].

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;

use super::Cluster;
use super::members::NodeInfo;
use super::peers::PEER_REQUEST_HEADER;
use crate::websocket::{MAX_REMOTE_MESSAGE, Peers, SocketError, SocketOp};

/// Where a node serves its connections to its peers (then the function's name).
pub const PATH: &str = "/v1/peer/websocket/";
/// How long a node waits for a peer to act on one of its connections, or list them.
pub const SOCKET_PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// The most bytes of an answer read (a listing of a node's connections with a tag).
pub const MAX_ANSWER_BYTES: usize = 4 << 20;
/// The most bytes of a call sent (a message, at most the largest send buffer a policy may set).
pub const MAX_CALL_BYTES: u64 = MAX_REMOTE_MESSAGE as u64 + 4096;
/// Calls on other nodes' connections one function may have in flight.
pub const CALLS_PER_FUNCTION: usize = 16;
/// Calls on other nodes' connections this node may have in flight, all functions together.
pub const CALLS_PER_NODE: usize = 128;

/// Calls on other nodes' connections in flight, by function.
#[derive(Default)]
pub(super) struct InFlight(Mutex<HashMap<String, usize>>);

/// One call in flight; it leaves the count when dropped.
struct Entered<'a> {
    in_flight: &'a InFlight,
    function: String,
}

impl InFlight {
    /// Counts a call of `function`, unless it or the node is at its bound.
    fn enter(&self, function: &str) -> Result<Entered<'_>, SocketError> {
        let mut counts = self.0.lock();
        let total: usize = counts.values().sum();
        let mine = counts.get(function).copied().unwrap_or(0);
        if mine >= CALLS_PER_FUNCTION {
            return Err(SocketError::Limit(format!(
                "a function has at most {CALLS_PER_FUNCTION} calls on other nodes' connections in flight"
            )));
        }
        if total >= CALLS_PER_NODE {
            return Err(SocketError::Unavailable("this node has too many calls on other nodes in flight".into()));
        }
        counts.insert(function.to_string(), mine + 1);
        Ok(Entered { in_flight: self, function: function.to_string() })
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let mut counts = self.in_flight.0.lock();
        if let Some(count) = counts.get_mut(&self.function) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.function);
            }
        }
    }
}

impl Cluster {
    /// The other live nodes hosting `function`.
    fn other_hosts(&self, function: &str) -> Vec<NodeInfo> {
        let Some(replicas) = self.replicas_of(function) else { return Vec::new() };
        self.hosts_of(function, replicas).into_iter().filter(|node| node.name != self.node).collect()
    }

    /// A signed request of `method` to `path_and_query` on `peer`, with `body` if any.
    fn peer_request(
        &self,
        method: reqwest::Method,
        peer: &NodeInfo,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        let url = reqwest::Url::parse(&format!("{}{path_and_query}", peer.address))?;
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        let signed = self
            .sign_request(method.as_str(), &target, &peer.name, body.as_deref())
            .ok_or_else(|| anyhow::anyhow!("this node has no peer key yet"))?;
        let request =
            self.peer_client.request(method, url).header(PEER_REQUEST_HEADER, signed).timeout(SOCKET_PEER_TIMEOUT);
        Ok(match body {
            Some(body) => request.body(body),
            None => request,
        })
    }

    async fn apply_on(&self, peer: &NodeInfo, function: &str, id: &str, op: SocketOp) -> anyhow::Result<Vec<u8>> {
        let body = postcard::to_stdvec(&op)?;
        let request = self.peer_request(reqwest::Method::POST, peer, &format!("{PATH}{function}/{id}"), Some(body))?;
        let response = request.send().await.map_err(|e| e.without_url())?;
        read_answer(response).await
    }

    async fn tagged_on(&self, peer: &NodeInfo, function: &str, tag: &str) -> anyhow::Result<Vec<String>> {
        let query: String = form_urlencoded::Serializer::new(String::new()).append_pair("tag", tag).finish();
        let request = self.peer_request(reqwest::Method::GET, peer, &format!("{PATH}{function}?{query}"), None)?;
        let response = request.send().await.map_err(|e| e.without_url())?;
        let ids: Vec<String> = postcard::from_bytes(&read_answer(response).await?)?;
        // A node lists only its own connections.
        let own = format!("@{}", peer.name);
        Ok(ids.into_iter().filter(|id| id.ends_with(&own)).collect())
    }
}

/// A peer's answer, whole, if it is a success within [`MAX_ANSWER_BYTES`].
async fn read_answer(mut response: reqwest::Response) -> anyhow::Result<Vec<u8>> {
    if !response.status().is_success() {
        anyhow::bail!("it answered {}", response.status());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.without_url())? {
        anyhow::ensure!(body.len() + chunk.len() <= MAX_ANSWER_BYTES, "its answer is over {MAX_ANSWER_BYTES} bytes");
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl Peers for Cluster {
    fn apply<'a>(
        &'a self,
        node: &'a str,
        function: &'a str,
        id: &'a str,
        op: SocketOp,
    ) -> BoxFuture<'a, Result<(), SocketError>> {
        Box::pin(async move {
            let hosts = self.other_hosts(function);
            let Some(peer) = hosts.iter().find(|host| host.name == node) else {
                return Err(SocketError::NoSuchConnection);
            };
            let _entered = self.socket_calls.enter(function)?;
            let answer = self.apply_on(peer, function, id, op).await.map_err(|error| {
                tracing::warn!(function, peer = %peer.name, error = %format!("{error:#}"), "WebSocket call on a peer failed");
                SocketError::Unavailable(format!("node {} holding the connection did not answer", peer.name))
            })?;
            postcard::from_bytes::<Result<(), SocketError>>(&answer)
                .unwrap_or_else(|_| Err(SocketError::Unavailable(format!("node {} answered nonsense", peer.name))))
        })
    }

    fn tagged<'a>(&'a self, function: &'a str, tag: &'a str) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move {
            let peers = self.other_hosts(function);
            let asked = peers.iter().map(|peer| async move {
                let listed = match self.socket_calls.enter(function) {
                    Ok(_entered) => self.tagged_on(peer, function, tag).await,
                    Err(error) => Err(anyhow::anyhow!("{error}")),
                };
                listed.unwrap_or_else(|error| {
                    tracing::warn!(function, peer = %peer.name, error = %format!("{error:#}"), "a peer did not list its WebSocket connections");
                    Vec::new()
                })
            });
            futures::future::join_all(asked).await.into_iter().flatten().collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_in_flight_are_bounded_per_function_and_per_node() {
        let in_flight = InFlight::default();
        let mut held: Vec<Entered<'_>> = (0..CALLS_PER_FUNCTION).map(|_| in_flight.enter("chat").unwrap()).collect();
        assert!(matches!(in_flight.enter("chat"), Err(SocketError::Limit(_))), "the function's bound");
        let other = in_flight.enter("other").expect("another function is not held back by this one");
        held.pop();
        let again = in_flight.enter("chat").expect("a finished call frees its place");
        drop(other);
        let mut many = Vec::new();
        let refused = loop {
            match in_flight.enter(&format!("f{}", many.len())) {
                Ok(entered) => many.push(entered),
                Err(error) => break error,
            }
        };
        assert!(matches!(refused, SocketError::Unavailable(_)), "{refused:?}");
        assert_eq!(in_flight.0.lock().values().sum::<usize>(), CALLS_PER_NODE, "the node's bound");
        drop(many);
        drop(again);
        assert_eq!(in_flight.0.lock().get("chat"), Some(&(CALLS_PER_FUNCTION - 1)));
        drop(held);
        assert!(in_flight.0.lock().is_empty(), "every call left the count");
    }
}
