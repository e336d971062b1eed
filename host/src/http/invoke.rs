//! `ANY /fn/{name}/{rest}`: authorize, rate-limit, take a concurrency permit, run the guest.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::server::BoxError;
use super::{App, Problem, ResponseBody, authorization};
use crate::access::caveats::{self, Op};
use crate::access::policy::RateQuota;
use crate::access::rate::RateDecision;
use crate::access::tokens::Caller;
use crate::registry::{Deployment, RegistryError};
use crate::runtime::Invocation;

impl App {
    /// `ANY /fn/{name}/{rest}`: the guest sees `/{rest}` plus the original query. Every
    /// outcome, refusals included, is counted by function and status.
    pub(super) async fn invoke(
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
        let facts = caveats::Request {
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
}

/// Adds the rate-limit headers (and `Retry-After` on refusals) to a problem response.
pub(super) fn with_rate_headers(mut problem: Problem, decision: Option<&RateDecision>) -> Problem {
    problem.headers.extend(decision.iter().flat_map(|d| d.headers()));
    problem
}
