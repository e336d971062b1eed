//! Cluster mode: a request for a function this node does not host goes, in one hop, to a node
//! that does. The caller's token and headers (`x-request-id` included) travel unchanged; the
//! client's address, the scheme and the authority it used travel in the signed `ledge-peer`
//! header (see `cluster::peers`), so the host rate-limits and picks canaries by the real caller,
//! routes by the host the caller named, and its guest sees the request as this node would have.
//!
//! Invariants: a request that came from a peer is never proxied again (no loops); bodies
//! stream both ways (nothing is buffered here); hop-by-hop headers are not forwarded; the peer
//! header is taken off every request before it is routed ([`App::accept_peer`]), and what it
//! says is believed only when it verifies.

use std::net::{IpAddr, SocketAddr};

use futures::TryStreamExt;
use http::StatusCode;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::{Frame, Incoming};

use super::body::BoxError;
use super::{App, Problem, ResponseBody};
use crate::cluster::Cluster;
use crate::cluster::peers::{Origin, PEER_HEADER, Vouched};
use crate::registry::routes::rank;
use crate::telemetry::{TraceCx, names};
use opentelemetry::trace::SpanKind;

/// Headers that describe one connection, not the request (RFC 9110 §7.6.1), plus `host`.
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host"];

/// What a verified peer header said, kept on the request for the handlers.
#[derive(Debug, Clone, Copy)]
struct FromPeer {
    client: IpAddr,
    /// The first node's scheme, when the peer said.
    https: Option<bool>,
}

impl App {
    /// Takes the peer header off `request` (whoever sent it). When it verifies, the request
    /// becomes what the first node received: the authority it saw restored (as `Host`), and the
    /// client and scheme kept for [`App::client_of`] and [`App::tls_of`]; returns the vouched
    /// client. A header that does not verify changes nothing else.
    pub(super) fn accept_peer<B>(&self, request: &mut http::Request<B>) -> Option<IpAddr> {
        let header = request.headers_mut().remove(PEER_HEADER)?;
        let Vouched { client, origin } = self.cluster.as_ref()?.vouched(header.to_str().ok()?)?;
        if let Some(origin) = &origin {
            restore_authority(request, origin.authority.as_deref());
        }
        request.extensions_mut().insert(FromPeer { client, https: origin.map(|o| o.https) });
        Some(client)
    }

    /// The client's address: the one a peer vouched for, else the TCP peer's. The flag says
    /// whether the request came through a peer.
    pub(super) fn client_of<B>(&self, request: &mut http::Request<B>, peer: SocketAddr) -> (SocketAddr, bool) {
        if request.extensions().get::<FromPeer>().is_none() {
            self.accept_peer(request);
        }
        match request.extensions().get::<FromPeer>() {
            Some(from) => (SocketAddr::new(from.client, peer.port()), true),
            None => (peer, false),
        }
    }

    /// Whether the guest sees scheme `https`: as the first node received the request.
    pub(super) fn tls_of<B>(&self, request: &http::Request<B>) -> bool {
        request.extensions().get::<FromPeer>().and_then(|from| from.https).unwrap_or(self.tls)
    }

    /// The function a request to `host` and `path` (not one of ledge's own paths) is routed to:
    /// by the routes of the functions this node serves and, in cluster mode, also by those the
    /// cluster's records claim for functions it does not serve (proxied to a host). The more
    /// specific route wins; a tie goes to this node's.
    pub(super) fn route_for(&self, host: Option<&str>, path: &str) -> Option<String> {
        let local = self.registry.route_for(host, path);
        let Some(cluster) = &self.cluster else { return local };
        let local_rank = local
            .as_ref()
            .and_then(|name| self.registry.lookup(name))
            .and_then(|deployment| deployment.policy.routes.iter().filter_map(|route| rank(route, host, path)).max());
        match cluster.route_for(host, path, |name| self.registry.lookup(name).is_some()) {
            Some((remote, remote_rank)) if local_rank.is_none_or(|rank| remote_rank > rank) => Some(remote),
            _ => local,
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
        // The hop's span; the host's `ledge.request` continues the trace as its child.
        let span = TraceCx::start(Some(request.headers()), names::PROXY, SpanKind::Client, name, Vec::new);
        let forwarded = self.forward(cluster, request, name, replicas, client, &span).await;
        match &forwarded {
            Ok(response) => span.set("http.response.status_code", i64::from(response.status().as_u16())),
            Err(problem) => span.fail(&problem.detail),
        }
        span.end();
        forwarded
    }

    async fn forward(
        &self,
        cluster: &Cluster,
        request: http::Request<Incoming>,
        name: &str,
        replicas: u32,
        client: SocketAddr,
        span: &TraceCx,
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
        let authority = authority_of(&request)?;
        let vouched = Vouched { client: client.ip(), origin: Some(Origin { https: self.tls, authority }) };
        let (head, body) = request.into_parts();
        let mut forwarded = reqwest::header::HeaderMap::new();
        for (header, value) in head.headers.iter().filter(|(h, _)| !HOP_BY_HOP.contains(&h.as_str())) {
            forwarded.append(header.clone(), value.clone());
        }
        if let Some(vouch) = cluster.vouch(&vouched).and_then(|v| http::HeaderValue::from_str(&v).ok()) {
            forwarded.insert(PEER_HEADER, vouch);
        }
        if span.is_recording() {
            span.set("ledge.peer", host.name.clone());
        }
        span.inject(&mut forwarded);
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
                    // Without the URL: it holds the caller's query, and the peer's address.
                    format!("node `{}` that hosts `{name}` did not answer: {}", host.name, error.without_url()),
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

/// The authority the guest here would see: the URI's (HTTP/2), else `Host`; `None` without
/// either. One that is not a valid authority is refused, as the guest here would refuse it.
fn authority_of<B>(request: &http::Request<B>) -> Result<Option<String>, Problem> {
    let given = match request.uri().authority() {
        Some(authority) => return Ok(Some(authority.as_str().to_string())),
        None => request.headers().get(http::header::HOST),
    };
    let Some(given) = given else { return Ok(None) };
    given
        .to_str()
        .ok()
        .filter(|text| text.parse::<http::uri::Authority>().is_ok())
        .map(|text| Some(text.to_string()))
        .ok_or_else(|| Problem::new(StatusCode::BAD_REQUEST, "the Host header is not a valid authority"))
}

/// Makes `request` carry `authority` as a request over HTTP/1.1 to the first node did: in
/// `Host` (none when `None`), with a URI of path and query only.
fn restore_authority<B>(request: &mut http::Request<B>, authority: Option<&str>) {
    let mut parts = http::uri::Parts::default();
    parts.path_and_query =
        Some(request.uri().path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
    match authority.and_then(|authority| http::HeaderValue::from_str(authority).ok()) {
        Some(value) => request.headers_mut().insert(http::header::HOST, value),
        None => request.headers_mut().remove(http::header::HOST),
    };
}
