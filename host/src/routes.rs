//! Routing and the handlers of the HTTP API (spec: "HTTP interface").
//!
//! | route | handler |
//! |---|---|
//! | `ANY /fn/{name}/{rest}` | [`App::invoke`] |
//! | `GET /v1/functions` | list |
//! | `GET`/`PUT`/`DELETE /v1/functions/{name}` | metadata, deploy, remove |
//! | `PUT /v1/functions/{name}/policy` | set the function's policy |
//! | `GET /healthz`, `GET /metrics` | liveness, Prometheus text |
//!
//! Every error leaves through [`Problem`]; nothing here formats an error response by hand.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::Serialize;

use crate::auth::{self, Authority, Op};
use crate::kv::Caller;
use crate::limits::{RateDecision, RateLimiter};
use crate::metrics::Metrics;
use crate::policy::RateQuota;
use crate::problem::Problem;
use crate::registry::{DeployError, Deployment, FunctionMeta, Registry, RegistryError};
use crate::runtime::{Invocation, Runtime};
use crate::server::{BoxError, ResponseBody, full};

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

impl App {
    pub async fn route(&self, request: http::Request<Incoming>, peer: SocketAddr) -> http::Response<ResponseBody> {
        let path = request.uri().path().to_string();
        let method = request.method().clone();
        let result = if let Some(rest) = path.strip_prefix("/fn/") {
            self.invoke(request, rest, peer).await
        } else if let Some(rest) = path.strip_prefix("/v1/functions") {
            self.admin(request, &method, rest).await
        } else if path == "/v1/tokens/revoke" {
            self.revoke(request, &method).await
        } else {
            match (method, path.as_str()) {
                (Method::GET | Method::HEAD, "/healthz") => Ok(text(StatusCode::OK, "ok\n")),
                (Method::GET, "/metrics") => Ok(full(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    self.metrics.render(),
                )),
                (_, "/healthz" | "/metrics") => Err(method_not_allowed("GET")),
                _ => Err(Problem::new(StatusCode::NOT_FOUND, format!("no route for `{path}`"))),
            }
        };
        result.unwrap_or_else(Problem::into_response)
    }

    /// `ANY /fn/{name}/{rest}`: the guest sees `/{rest}` plus the original query. Every
    /// outcome, refusals included, is counted by function and status.
    async fn invoke(
        &self,
        request: http::Request<Incoming>,
        after_prefix: &str,
        peer: SocketAddr,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        let (name, rest) = after_prefix.split_once('/').unwrap_or((after_prefix, ""));
        let Some(deployment) = self.registry.lookup(name) else {
            return Err(RegistryError::NotFound(name.to_string()).into());
        };
        let started = Instant::now();
        let result = self.invoke_deployed(request, name, rest, &deployment, peer).await;
        let status = result.as_ref().map_or_else(|problem| problem.status, |response| response.status().as_u16());
        self.metrics.observe_request(name, status, started.elapsed());
        result
    }

    async fn invoke_deployed(
        &self,
        request: http::Request<Incoming>,
        name: &str,
        rest: &str,
        deployment: &Deployment,
        peer: SocketAddr,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        let guest_path = format!("/{rest}");
        let facts = auth::Request {
            op: Op::Invoke,
            function: Some(name),
            method: request.method().as_str(),
            path: &guest_path,
            now: SystemTime::now(),
        };
        let authorization = authorization(&request);
        let caller = match authorization {
            // A public function needs no token; a token sent anyway is verified and binds.
            None if deployment.policy.public => Caller::default(),
            _ => self.authority.verify(authorization, &facts)?,
        };

        // Rate: keyed by function and caller (token id, else client address); the policy's
        // quota and the token's `rate` caveats apply together, the stricter wins.
        let caller_key = caller.token_id.clone().unwrap_or_else(|| peer.ip().to_string());
        let quotas: Vec<RateQuota> =
            std::iter::once(deployment.policy.rate).chain(caller.rates.iter().copied()).collect();
        let decision = self.limiter.as_ref().map(|limiter| limiter.check(name, &caller_key, &quotas));
        if let Some(decision) = decision.as_ref().filter(|d| !d.allowed) {
            let problem = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("rate limit of {} reached; retry later", decision.quota),
            );
            return Err(with_rate_headers(problem, Some(decision)));
        }
        let Ok(permit) = deployment.concurrency.clone().try_acquire_owned() else {
            let detail =
                format!("all {} instances of `{name}` are busy; retry shortly", deployment.policy.max_concurrency);
            return Err(with_rate_headers(Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail), decision.as_ref()));
        };

        let path_and_query = match request.uri().query() {
            Some(query) => format!("{guest_path}?{query}"),
            None => guest_path.clone(),
        };
        let invocation = Invocation {
            function: name,
            pre: &deployment.pre,
            policy: &deployment.policy,
            cold: deployment.take_cold_start(),
            caller,
            permit,
        };
        let result = self.runtime.invoke(invocation, request, &path_and_query).await;
        match result {
            Ok(response) => {
                let mut response =
                    response.map(|body| body.map_err(|error| Box::new(error) as BoxError).boxed_unsync());
                for (header, value) in decision.iter().flat_map(RateDecision::headers) {
                    if let Ok(value) = http::HeaderValue::from_str(&value) {
                        response.headers_mut().insert(header, value);
                    }
                }
                Ok(response)
            }
            Err(error) => Err(with_rate_headers(Problem::from(error), decision.as_ref())),
        }
    }

    async fn admin(
        &self,
        request: http::Request<Incoming>,
        method: &Method,
        rest: &str,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let (op, function) = match (method, segments.as_slice()) {
            (_, [""]) => (Op::Manage, None),
            (&Method::PUT, [name]) => (Op::Deploy, Some(*name)),
            (_, [name, ..]) => (Op::Manage, Some(*name)),
            _ => (Op::Manage, None),
        };
        let caller = self.authorize(&request, op, function)?;
        let caller_key = caller.token_id.unwrap_or_default();
        let decision = self.limiter.as_ref().map(|limiter| limiter.check("admin", &caller_key, &[ADMIN_QUOTA]));
        if let Some(decision) = decision.filter(|d| !d.allowed) {
            let problem = Problem::new(StatusCode::TOO_MANY_REQUESTS, "admin API rate limit reached; retry later");
            return Err(with_rate_headers(problem, Some(&decision)));
        }
        match (method, segments.as_slice()) {
            (&Method::GET, [""]) => Ok(json(StatusCode::OK, &ListReply { functions: self.registry.list() })),
            (_, [""]) => Err(method_not_allowed("GET")),
            (&Method::GET, [name]) => {
                let deployment = self.registry.lookup(name).ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
                Ok(json(StatusCode::OK, &deployment.meta))
            }
            (&Method::PUT, [name]) => {
                let bytes = read_upload(request.into_body(), self.max_upload).await?;
                let deployed = self.registry.deploy(name, bytes).await?;
                let status = if deployed.created { StatusCode::CREATED } else { StatusCode::OK };
                Ok(json(status, &deployed.meta))
            }
            (&Method::DELETE, [name]) => {
                self.registry.remove(name).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            (_, [_]) => Err(method_not_allowed("GET, PUT, DELETE")),
            (&Method::PUT, [name, "policy"]) => {
                let bytes = read_upload(request.into_body(), MAX_POLICY_BYTES).await?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "the policy is not UTF-8 text"))?;
                self.registry.set_policy(name, &text).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            (_, [_, "policy"]) => Err(method_not_allowed("PUT")),
            _ => Err(Problem::new(StatusCode::NOT_FOUND, format!("no route for `/v1/functions{rest}`"))),
        }
    }
}

impl App {
    /// Checks the request's token for an admin operation.
    fn authorize(&self, request: &http::Request<Incoming>, op: Op, function: Option<&str>) -> Result<Caller, Problem> {
        let facts = auth::Request {
            op,
            function,
            method: request.method().as_str(),
            path: request.uri().path(),
            now: SystemTime::now(),
        };
        Ok(self.authority.verify(authorization(request), &facts)?)
    }

    /// `POST /v1/tokens/revoke` with a token id (or a whole token) as the body.
    async fn revoke(
        &self,
        request: http::Request<Incoming>,
        method: &Method,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        if method != Method::POST {
            return Err(method_not_allowed("POST"));
        }
        self.authorize(&request, Op::Manage, None)?;
        let bytes = read_upload(request.into_body(), MAX_POLICY_BYTES).await?;
        let text = String::from_utf8_lossy(&bytes);
        let token_id =
            auth::token_id_of(text.trim()).map_err(|reason| Problem::new(StatusCode::BAD_REQUEST, reason))?;
        let authority = self.authority.clone();
        let id = token_id.clone();
        // The revocation commit waits for its fsync.
        tokio::task::spawn_blocking(move || authority.revoke(&id))
            .await
            .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|reason| Problem::new(StatusCode::BAD_REQUEST, reason))?;
        tracing::info!(token_id = %token_id, "token revoked");
        Ok(json(StatusCode::OK, &serde_json::json!({ "revoked": token_id })))
    }
}

/// What one token may do to the admin API: generous for deploy scripts, bounded for a leaked
/// token in a loop.
const ADMIN_QUOTA: RateQuota = RateQuota { quota: 50, window: std::time::Duration::from_secs(1), burst: 100 };

/// Adds the rate-limit headers (and `Retry-After` on refusals) to a problem response.
fn with_rate_headers(mut problem: Problem, decision: Option<&RateDecision>) -> Problem {
    problem.headers.extend(decision.iter().flat_map(|d| d.headers()));
    problem
}

/// The `Authorization` header, if it is text.
fn authorization<B>(request: &http::Request<B>) -> Option<&str> {
    request.headers().get(http::header::AUTHORIZATION).and_then(|value| value.to_str().ok())
}

/// Policies are small text files; anything larger is a mistake.
const MAX_POLICY_BYTES: u64 = 64 << 10;

#[derive(Serialize)]
struct ListReply {
    functions: Vec<FunctionMeta>,
}

/// Reads a request body, refusing it (without buffering the rest) once it passes `limit`.
async fn read_upload(mut body: Incoming, limit: u64) -> Result<Vec<u8>, DeployError> {
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
