//! The admin API under `/v1/`: function metadata, deploy, remove, policies, revocation.
//! Every route needs a token (`op deploy` for `PUT /v1/functions/{name}`, `op manage` for the
//! rest) and is rate limited per token.

use std::time::SystemTime;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Serialize;

use super::invoke::with_rate_headers;
use super::{App, Problem, ResponseBody, authorization, empty, json, method_not_allowed};
use crate::access::caveats::{self, Op};
use crate::access::rate::ADMIN_QUOTA;
use crate::access::tokens::{self, Caller};
use crate::registry::{DeployError, FunctionMeta, RegistryError};

impl App {
    pub(super) async fn admin(
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

    /// Checks the request's token for an admin operation.
    fn authorize(&self, request: &http::Request<Incoming>, op: Op, function: Option<&str>) -> Result<Caller, Problem> {
        let facts = caveats::Request {
            op,
            function,
            method: request.method().as_str(),
            path: request.uri().path(),
            now: SystemTime::now(),
        };
        Ok(self.authority.verify(authorization(request), &facts)?)
    }

    /// `POST /v1/tokens/revoke` with a token id (or a whole token) as the body.
    pub(super) async fn revoke(
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
            tokens::token_id_of(text.trim()).map_err(|reason| Problem::new(StatusCode::BAD_REQUEST, reason))?;
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
