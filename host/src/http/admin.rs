//! The admin API under `/v1/`: function metadata, deploy, remove, policies, revocation (the
//! backup is in `backup.rs`).
//! Every route needs a token (`op deploy` for `PUT /v1/functions/{name}`, `op manage` for the
//! rest) and is rate limited per token.
//!
//! Invariants: every change (deploy, removal, policy, revocation) is written to the audit log
//! (target `ledge::audit`) with the token's id, never the token, and its outcome; a token
//! confined to some functions (`fn` caveat) may tighten their policies but not widen them; a
//! deploy with a policy applies both or neither.

use std::net::SocketAddr;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Serialize;

use super::audit::audit;
use super::problem::with_rate_headers;
use super::{App, Problem, ResponseBody, authorization, empty, json, method_not_allowed};
use crate::access::caveats::{self, Op};
use crate::access::keyless;
use crate::access::rate::ADMIN_QUOTA;
use crate::access::tokens::{self, Caller};
use crate::cluster::ClusterError;
use crate::registry::{DeployError, FunctionMeta, PolicyChange, RegistryError};

impl App {
    /// `/v1/functions` and below; `rest` is what follows `/v1/functions` (empty or `/...`).
    pub(super) async fn admin(
        &self,
        request: http::Request<Incoming>,
        method: &Method,
        rest: &str,
        peer: SocketAddr,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let (op, function) = match (method, segments.as_slice()) {
            (_, [""]) => (Op::Manage, None),
            (&Method::PUT, [name]) => (Op::Deploy, Some(*name)),
            (_, [name, ..]) => (Op::Manage, Some(*name)),
            _ => (Op::Manage, None),
        };
        let caller = self.authorize(&request, op, function, peer)?;
        self.charge_admin(&caller)?;
        // Only a manage token without `fn` caveat may widen a policy, through either route.
        let who = if caller.manages && !caller.function_scoped { PolicyChange::Any } else { PolicyChange::OnlyTighten };
        match (method, segments.as_slice()) {
            (&Method::GET, [""]) => {
                let functions = match &self.cluster {
                    Some(cluster) => cluster.list(),
                    None => self.registry.list(),
                };
                Ok(json(StatusCode::OK, &ListReply { functions }))
            }
            (_, [""]) => Err(method_not_allowed("GET")),
            (&Method::GET, [name]) => {
                let deployment = self.registry.lookup(name);
                let local = deployment.as_ref().map(|deployment| deployment.meta.clone());
                let placed = || self.cluster.as_ref().and_then(|c| c.meta(name));
                let meta = local.or_else(placed).ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
                let mut shown = serde_json::to_value(&meta).expect("function metadata is JSON");
                // A function that accepts WebSockets: what this node holds of them.
                if deployment.is_some_and(|deployment| !deployment.policy.websockets.is_empty()) {
                    let (connections, messages_in, messages_out) = self.websockets.stats(name);
                    shown["websockets"] = serde_json::json!({
                        "connections": connections,
                        "messages_in": messages_in,
                        "messages_out": messages_out,
                    });
                }
                Ok(json(StatusCode::OK, &shown))
            }
            (&Method::PUT, [name]) => self.deploy(request, name, &caller, who, peer).await,
            (&Method::DELETE, [name]) => {
                let keep_data = request.uri().query().is_some_and(|q| q.split('&').any(|p| p == "keep-data=true"));
                let outcome = match &self.cluster {
                    // Every node deletes its own copy when it applies the removal.
                    Some(cluster) => cluster.remove(name, keep_data).await.map(|()| 0),
                    None => self.registry.remove(name, keep_data).await.map_err(ClusterError::from),
                };
                if outcome.is_ok() {
                    self.runtime.logs().forget(name);
                    self.websockets.forget(name);
                    self.traces.forget(name).await;
                }
                audit(
                    "remove",
                    name,
                    &caller,
                    outcome.as_ref().map(|keys| format!("{keys} keys deleted, keep-data={keep_data}")),
                );
                outcome?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            (_, [_]) => Err(method_not_allowed("GET, PUT, DELETE")),
            (&Method::PUT, [name, "policy"]) => {
                let bytes = read_upload(request.into_body(), MAX_POLICY_BYTES).await?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "the policy is not UTF-8 text"))?;
                let outcome = match &self.cluster {
                    Some(cluster) => cluster.set_policy(name, &text, who).await,
                    None => self.registry.set_policy(name, &text, who).await.map(drop).map_err(Into::into),
                };
                audit("policy", name, &caller, outcome.as_ref().map(|_| "applied".to_string()));
                outcome?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            (_, [_, "policy"]) => Err(method_not_allowed("PUT")),
            (&Method::GET, [name, "logs"]) => {
                self.registry.lookup(name).ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
                self.logs_response(name, request.uri().query())
            }
            (_, [_, "logs"]) => Err(method_not_allowed("GET")),
            (&Method::GET, [name, "versions"]) => match &self.cluster {
                Some(cluster) => Ok(json(StatusCode::OK, &cluster.versions(name)?)),
                None => Ok(json(StatusCode::OK, &self.registry.versions(name)?)),
            },
            (&Method::POST, [name, "rollback"]) => {
                let bytes = read_upload(request.into_body(), 64).await?;
                let text = String::from_utf8_lossy(&bytes).trim().to_string();
                let version = match text.as_str() {
                    "" => None,
                    number => Some(number.parse::<u64>().map_err(|_| {
                        Problem::new(StatusCode::BAD_REQUEST, format!("`{number}` is not a version number"))
                    })?),
                };
                let outcome = match &self.cluster {
                    Some(cluster) => cluster.rollback(name, version).await,
                    None => self.registry.rollback(name, version).await.map_err(Into::into),
                };
                audit("rollback", name, &caller, outcome.as_ref().map(|v| format!("version {} live", v.live)));
                Ok(json(StatusCode::OK, &outcome?))
            }
            (&Method::POST, [name, "promote"]) => self.promote(request.uri().query(), name, &caller).await,
            (&Method::POST, [name, "verify"]) => self.verify_only(request, name).await,
            (_, [_, "versions"]) => Err(method_not_allowed("GET")),
            (_, [_, "rollback" | "promote" | "verify"]) => Err(method_not_allowed("POST")),
            (&Method::GET, [name, "config"]) => match &self.cluster {
                Some(cluster) => Ok(json(StatusCode::OK, &cluster.list_config(name)?)),
                None => Ok(json(StatusCode::OK, &self.registry.list_config(name)?)),
            },
            (_, [_, "config"]) => Err(method_not_allowed("GET")),
            (&Method::PUT, [name, "config", key]) => {
                let secret = request.uri().query().is_some_and(|q| q.split('&').any(|p| p == "secret=true"));
                let bytes = read_upload(request.into_body(), MAX_CONFIG_VALUE_BYTES).await?;
                let value = String::from_utf8(bytes)
                    .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "a config value must be UTF-8 text"))?;
                let outcome = match &self.cluster {
                    Some(cluster) => cluster.set_config(name, key, &value, secret).await,
                    None => self.registry.set_config(name, key, &value, secret).await.map_err(Into::into),
                };
                // The key and whether it is secret, never the value.
                let what = format!("config {key} set{}", if secret { " (secret)" } else { "" });
                audit("config", name, &caller, outcome.as_ref().map(|()| what));
                outcome?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            (&Method::DELETE, [name, "config", key]) => {
                let outcome = match &self.cluster {
                    Some(cluster) => cluster.remove_config(name, key).await,
                    None => self.registry.remove_config(name, key).await.map_err(Into::into),
                };
                audit("config", name, &caller, outcome.as_ref().map(|()| format!("config {key} removed")));
                outcome?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            (_, [_, "config", _]) => Err(method_not_allowed("PUT, DELETE")),
            _ => Err(Problem::new(StatusCode::NOT_FOUND, format!("no route for `/v1/functions{rest}`"))),
        }
    }

    /// Charges an admin request to its token's admin quota (429 past it).
    pub(super) fn charge_admin(&self, caller: &Caller) -> Result<(), Problem> {
        self.charge_quota("admin", caller)
    }

    /// Charges a request to its token family's quota in `bucket` (`admin`; `send` for messages
    /// sent over HTTP, so that a delegated sender never uses up the operator's admin API) and
    /// to the token's `rate` caveats (429 past any).
    pub(super) fn charge_quota(&self, bucket: &'static str, caller: &Caller) -> Result<(), Problem> {
        let decision = self.limiter.as_ref().map(|limiter| {
            limiter.check(bucket, caller.token_id.as_deref().unwrap_or_default(), ADMIN_QUOTA, &caller.rates)
        });
        if let Some(decision) = decision.filter(|d| !d.allowed) {
            let problem =
                Problem::new(StatusCode::TOO_MANY_REQUESTS, format!("{bucket} API rate limit reached; retry later"));
            return Err(with_rate_headers(problem, Some(&decision)));
        }
        Ok(())
    }

    /// For node-wide admin routes (`/v1/nodes`, `/v1/backup`, `/v1/tokens/revoke`): the one
    /// method the route takes, a manage token without `fn` caveat, charged to the admin quota.
    pub(super) fn authorize_manage<B>(
        &self,
        request: &http::Request<B>,
        method: &Method,
        allowed: &'static str,
        peer: SocketAddr,
    ) -> Result<Caller, Problem> {
        if method.as_str() != allowed {
            return Err(method_not_allowed(allowed));
        }
        let caller = self.authorize(request, Op::Manage, None, peer)?;
        self.charge_admin(&caller)?;
        Ok(caller)
    }

    /// Checks the request's token for an admin operation.
    pub(super) fn authorize<B>(
        &self,
        request: &http::Request<B>,
        op: Op,
        function: Option<&str>,
        peer: SocketAddr,
    ) -> Result<Caller, Problem> {
        self.authorize_about(request, op, function, None, peer)
    }

    /// Checks the request's token for `op` on what the request is about: a function, a queue,
    /// or neither (the whole node).
    pub(super) fn authorize_about<B>(
        &self,
        request: &http::Request<B>,
        op: Op,
        function: Option<&str>,
        queue: Option<&str>,
        peer: SocketAddr,
    ) -> Result<Caller, Problem> {
        let facts = caveats::Request {
            op,
            function,
            queue,
            method: request.method().as_str(),
            path: request.uri().path(),
            now: SystemTime::now(),
        };
        self.authenticate(authorization(request), &facts, peer)
    }

    /// `POST /v1/tokens/revoke` with a token id (or a whole token) as the body.
    pub(super) async fn revoke(
        &self,
        request: http::Request<Incoming>,
        method: &Method,
        peer: SocketAddr,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        let caller = self.authorize_manage(&request, method, "POST", peer)?;
        let bytes = read_upload(request.into_body(), MAX_POLICY_BYTES).await?;
        let text = String::from_utf8_lossy(&bytes);
        let token_id =
            keyless::revocation_id_of(text.trim()).map_err(|reason| Problem::new(StatusCode::BAD_REQUEST, reason))?;
        if let Some(cluster) = &self.cluster {
            tokens::check_token_id(&token_id).map_err(|reason| Problem::new(StatusCode::BAD_REQUEST, reason))?;
            let outcome = cluster.revoke(&token_id).await;
            audit("revoke", &token_id, &caller, outcome.as_ref().map(|()| "revoked in the cluster".to_string()));
            outcome?;
            return Ok(json(StatusCode::OK, &serde_json::json!({ "revoked": token_id })));
        }
        let authority = self.authority.clone();
        let id = token_id.clone();
        // The revocation commit waits for its fsync.
        let outcome = tokio::task::spawn_blocking(move || authority.revoke(&id))
            .await
            .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        audit("revoke", &token_id, &caller, outcome.as_ref().map(|()| "revoked".to_string()));
        outcome.map_err(|reason| Problem::new(StatusCode::BAD_REQUEST, reason))?;
        Ok(json(StatusCode::OK, &serde_json::json!({ "revoked": token_id })))
    }
}

impl App {
    /// `GET /v1/nodes`: the cluster's live nodes (a manage token).
    pub(super) fn nodes<B>(
        &self,
        request: http::Request<B>,
        method: &Method,
        peer: SocketAddr,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        self.authorize_manage(&request, method, "GET", peer)?;
        let Some(cluster) = &self.cluster else {
            return Err(Problem::new(StatusCode::NOT_FOUND, "this node is not in a cluster (ledge serve --cluster)"));
        };
        Ok(json(StatusCode::OK, &serde_json::json!({ "nodes": cluster.nodes(), "in_sync": cluster.in_sync() })))
    }
}

/// Policies are small text files; anything larger is a mistake.
const MAX_POLICY_BYTES: u64 = 64 << 10;

/// The largest config value (the registry refuses more too).
const MAX_CONFIG_VALUE_BYTES: u64 = crate::registry::config::MAX_VALUE as u64;

#[derive(Serialize)]
struct ListReply {
    functions: Vec<FunctionMeta>,
}

/// A deploy's body: the component alone, or `multipart/form-data` with parts `component` and
/// `policy` (spec: applied together or not at all).
pub(super) struct Upload {
    pub(super) component: Vec<u8>,
    pub(super) policy: Option<String>,
}

impl Upload {
    pub(super) async fn parse(content_type: Option<&http::HeaderValue>, bytes: Vec<u8>) -> Result<Upload, DeployError> {
        let multipart = content_type.and_then(|v| v.to_str().ok()).and_then(|v| multer::parse_boundary(v).ok());
        let Some(boundary) = multipart else {
            return Ok(Upload { component: bytes, policy: None });
        };
        let body = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(Bytes::from(bytes)) });
        let mut form = multer::Multipart::new(body, boundary);
        let (mut component, mut policy) = (None, None);
        let bad = |error: multer::Error| DeployError::Upload(format!("the multipart body is malformed: {error}"));
        while let Some(field) = form.next_field().await.map_err(bad)? {
            match field.name() {
                Some("component") if component.is_none() => {
                    component = Some(field.bytes().await.map_err(bad)?.to_vec())
                }
                Some("policy") if policy.is_none() => {
                    let text = field.text().await.map_err(bad)?;
                    policy = Some(text);
                }
                other => {
                    return Err(DeployError::Upload(format!(
                        "unexpected or repeated part {other:?}: a deploy takes one `component` and at most one `policy`"
                    )));
                }
            }
        }
        let component =
            component.ok_or_else(|| DeployError::Upload("the multipart body has no `component` part".into()))?;
        Ok(Upload { component, policy })
    }
}

/// Reads a request body, refusing it (without buffering the rest) once it passes `limit`.
pub(super) async fn read_upload(mut body: Incoming, limit: u64) -> Result<Vec<u8>, DeployError> {
    use http_body::Body;
    if body.size_hint().lower() > limit {
        drain_briefly(body).await;
        return Err(DeployError::TooLarge { limit });
    }
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| DeployError::Upload(error.to_string()))?;
        if let Some(data) = frame.data_ref() {
            if bytes.len() as u64 + data.len() as u64 > limit {
                drain_briefly(body).await;
                return Err(DeployError::TooLarge { limit });
            }
            bytes.extend_from_slice(data);
        }
    }
    Ok(bytes)
}

/// Reads and discards a little more of a refused body, so that closing the connection with
/// unread data (which makes the kernel send a reset) does not destroy the 413 in flight for
/// a client that overshot by a little. Bounded in bytes and time; nothing is kept.
async fn drain_briefly(mut body: Incoming) {
    const DRAIN_BYTES: usize = 1 << 20;
    let drain = async {
        let mut drained = 0;
        while let Some(Ok(frame)) = body.frame().await {
            drained += frame.data_ref().map_or(0, |data| data.len());
            if drained > DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), drain).await;
}
