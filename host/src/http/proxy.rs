//! Cluster mode: a request for a function this node does not host goes, in one hop, to a node
//! that does. The caller's token and headers (`x-request-id` included) travel unchanged; the
//! client's address travels in the signed `ledge-peer` header (see `cluster::peers`), so the
//! host rate-limits and picks canaries by the real caller.
//!
//! Invariants: a request that came from a peer is never proxied again (no loops); bodies
//! stream both ways (nothing is buffered here); hop-by-hop headers are not forwarded.

use std::net::SocketAddr;

use futures::TryStreamExt;
use http::StatusCode;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::{Frame, Incoming};

use super::body::BoxError;
use super::{App, Problem, ResponseBody};
use crate::cluster::Cluster;
use crate::cluster::peers::PEER_HEADER;

/// Headers that describe one connection, not the request (RFC 9110 §7.6.1), plus `host`.
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host"];

impl App {
    /// The client's address: the one a peer vouched for (the header then removed), else the
    /// TCP peer's. The flag says whether the request came through a peer.
    pub(super) fn client_of<B>(&self, request: &mut http::Request<B>, peer: SocketAddr) -> (SocketAddr, bool) {
        let Some(header) = request.headers_mut().remove(PEER_HEADER) else { return (peer, false) };
        let vouched = self.cluster.as_ref().zip(header.to_str().ok()).and_then(|(c, h)| c.vouched_client(h));
        match vouched {
            Some(client) => (SocketAddr::new(client, peer.port()), true),
            None => (peer, false),
        }
    }

    /// Sends the request on to a node that hosts `name`.
    pub(super) async fn proxy(
        &self,
        cluster: &Cluster,
        request: http::Request<Incoming>,
        name: &str,
        replicas: u32,
        client: SocketAddr,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        let mut hosts = cluster.hosts_of(name, replicas);
        // This node may be a host that has not installed the function yet: not a target.
        hosts.retain(|node| node.name != cluster.node);
        // Spread a caller's requests over the hosts, the same caller on the same host.
        let pick = {
            let mut hasher = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&client.ip(), &mut hasher);
            std::hash::Hasher::finish(&hasher) as usize
        };
        let Some(host) = (!hosts.is_empty()).then(|| &hosts[pick % hosts.len()]) else {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no other live node serves `{name}` now; retry shortly"),
            ));
        };
        let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let url = format!("{}{target}", host.address);
        let (head, body) = request.into_parts();
        let mut forwarded = reqwest::header::HeaderMap::new();
        for (header, value) in head.headers.iter().filter(|(h, _)| !HOP_BY_HOP.contains(&h.as_str())) {
            forwarded.append(header.clone(), value.clone());
        }
        if let Some(vouch) = cluster.vouch(client.ip()).and_then(|v| http::HeaderValue::from_str(&v).ok()) {
            forwarded.insert(PEER_HEADER, vouch);
        }
        let body = BodyStream::new(body).try_filter_map(|frame| async move { Ok(frame.into_data().ok()) });
        let sent = cluster
            .peer_client()
            .request(head.method, &url)
            .headers(forwarded)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(|error| {
                Problem::new(
                    StatusCode::BAD_GATEWAY,
                    format!("node `{}` that hosts `{name}` did not answer: {error}", host.name),
                )
            })?;
        let mut response = http::Response::builder().status(sent.status());
        for (header, value) in sent.headers().iter().filter(|(h, _)| !HOP_BY_HOP.contains(&h.as_str())) {
            response = response.header(header, value);
        }
        let stream = sent.bytes_stream().map_ok(Frame::data).map_err(|error| Box::new(error) as BoxError);
        response
            .body(StreamBody::new(stream).boxed_unsync())
            .map_err(|error| Problem::new(StatusCode::BAD_GATEWAY, format!("the host's answer is malformed: {error}")))
    }
}
