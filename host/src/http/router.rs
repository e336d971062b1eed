//! Routing (spec: "HTTP interface").
//!
//! | route | handler |
//! |---|---|
//! | `ANY /fn/{name}/{rest}` | invoke (`http/invoke.rs`); under `ledge dev`, cross-site requests are refused first |
//! | `GET /v1/functions` | list (`http/admin.rs`, as every route below but the open ones) |
//! | `GET`/`PUT`/`DELETE /v1/functions/{name}` | metadata, deploy, remove |
//! | `PUT /v1/functions/{name}/policy` | set the function's policy |
//! | `GET /v1/functions/{name}/config` | its config (secrets by name only) |
//! | `PUT`/`DELETE /v1/functions/{name}/config/{key}` | set (`?secret=true`: sealed) or remove one |
//! | `POST /v1/tokens/revoke` | revoke a token by id (or whole token) |
//! | `GET /v1/traces`, `GET /v1/traces/{id}[/component]` | recorded runs (`http/traces.rs`) |
//! | `/v1/queues`, `/v1/queues/{name}/messages`, `/v1/queues/{name}/redrive` | send, list, peek, purge, redrive (`http/queues.rs`) |
//! | `GET /v1/backup` | the node as a tar archive (`http/backup.rs`; a manage token without `fn` caveat) |
//! | `GET /v1/nodes` | cluster members (`http/admin.rs`; a manage token) |
//! | `GET /healthz`, `GET /readyz` | liveness, readiness (open; the start's code loads done; in cluster mode: in sync with etcd) |
//! | anything else matching a policy's `[[route]]` | that function, with the path as it came (in a cluster, a function another node hosts too: proxied, `http/proxy.rs`) |
//! | `GET /metrics` | Prometheus text (a manage token without `fn` caveat) |
//! | `/v1/peer/...` | node to node, not in the spec (`http/peer_corpus.rs`): only a request signed with the cluster's peer key; any other gets the 404 of a missing route |

use std::net::SocketAddr;

use http::{Method, StatusCode};
use hyper::body::Incoming;

use super::{App, Problem, ResponseBody, method_not_allowed, metrics_response, text};
use crate::access::caveats::Op;

/// The request's host name (lower case, no port): the URI's authority (HTTP/2) or `Host`.
fn request_host<B>(request: &http::Request<B>) -> Option<String> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.clone(),
        None => request.headers().get(http::header::HOST)?.to_str().ok()?.parse().ok()?,
    };
    Some(authority.host().trim_end_matches('.').to_ascii_lowercase())
}

impl App {
    pub async fn route(&self, request: http::Request<Incoming>, peer: SocketAddr) -> http::Response<ResponseBody> {
        let path = request.uri().path().to_string();
        let method = request.method().clone();
        let admin = path.strip_prefix("/v1/functions").filter(|rest| rest.is_empty() || rest.starts_with('/'));
        let result = if let Some(rest) = path.strip_prefix("/fn/") {
            async {
                self.refuse_cross_site(&request)?;
                self.invoke(request, rest, peer).await
            }
            .await
        } else if let Some(rest) = admin {
            self.admin(request, &method, rest, peer).await
        } else if path == "/v1/tokens/revoke" {
            self.revoke(request, &method, peer).await
        } else if let Some(rest) = path.strip_prefix("/v1/traces").filter(|r| r.is_empty() || r.starts_with('/')) {
            self.traces(request, &method, rest, peer).await
        } else if let Some(rest) = path.strip_prefix("/v1/queues").filter(|r| r.is_empty() || r.starts_with('/')) {
            self.queues(request, &method, rest, peer).await
        } else if path == "/v1/backup" {
            self.backup(request, &method, peer).await
        } else if path == "/v1/nodes" {
            self.nodes(request, &method, peer)
        } else if path.starts_with("/v1/peer/") {
            self.peer(request, &method, &path).await
        } else {
            match (method, path.as_str()) {
                (Method::GET | Method::HEAD, "/healthz") => Ok(text(StatusCode::OK, "ok\n")),
                // Metrics name every function: a manage token without `fn` caveat reads them here
                // (or anyone on `--metrics-listen`).
                (Method::GET, "/metrics") => {
                    self.authorize(&request, Op::Manage, None, peer).map(|_| metrics_response(&self.metrics))
                }
                // A node is ready once the code of every function it found at start is loaded
                // (it serves before, loading a function on its first request); a cluster node
                // also once it is in sync with etcd.
                (Method::GET | Method::HEAD, "/readyz") => match &self.cluster {
                    _ if self.registry.is_loading() => {
                        Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "still loading the deployed functions' code"))
                    }
                    Some(cluster) if !cluster.in_sync() => Err(Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not in sync with the cluster: {}", cluster.sync_state()),
                    )),
                    _ => Ok(text(StatusCode::OK, "ready\n")),
                },
                (_, "/healthz" | "/readyz" | "/metrics") => Err(method_not_allowed("GET")),
                _ => match self.route_for(request_host(&request).as_deref(), &path) {
                    Some(function) => {
                        async {
                            self.refuse_cross_site(&request)?;
                            self.invoke_function(request, &function, &path[1..], peer).await
                        }
                        .await
                    }
                    None => Err(Problem::new(StatusCode::NOT_FOUND, format!("no route for `{path}`"))),
                },
            }
        };
        result.unwrap_or_else(Problem::into_response)
    }
}
