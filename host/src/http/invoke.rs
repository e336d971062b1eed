//! `ANY /fn/{name}/{rest}`: authenticate, rate-limit, take a concurrency permit, run the guest.
//!
//! Invariants: the guest never sees a ledge token (the `Authorization` header carrying one is
//! removed; a header that is not a ledge token reaches a public function untouched); a caller
//! without a valid token cannot tell a private function from a missing one (both ask for a
//! token), except from this machine under `ledge dev`, where a declared function not live yet
//! says why (503 while it builds, 500 with the first error when its build failed); the path the
//! token's `path-prefix` is checked against is the path the guest gets.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::BoxError;
use super::path::guest_path;
use super::problem::with_rate_headers;
use super::recording::TRACE_HEADER;
use super::{App, LEDGE_VERSION, Problem, ResponseBody, authorization};
use crate::access::caveats::{self, Op};
use crate::access::rate::{RateDecision, client_key};
use crate::access::tokens::{Caller, is_ledge_token};
use crate::registry::{Deployment, RegistryError};
use crate::runtime::Invocation;
use crate::runtime::request::remove_ledge_headers;
use crate::telemetry::{TraceCx, names};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

impl App {
    /// `ANY /fn/{name}/{rest}`: the guest sees `/{rest}` (dot segments resolved) plus the
    /// original query. Every outcome for a deployed function, refusals included, is counted by
    /// function and status.
    pub(super) async fn invoke(
        &self,
        request: http::Request<Incoming>,
        after_prefix: &str,
        peer: SocketAddr,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        let (name, rest) = after_prefix.split_once('/').unwrap_or((after_prefix, ""));
        self.invoke_function(request, name, rest, peer).await
    }

    /// Invokes function `name` for a request whose path for the guest is `/{rest}`: the part
    /// after `/fn/NAME/`, or the whole path when a `[[route]]` matched.
    pub(super) async fn invoke_function(
        &self,
        mut request: http::Request<Incoming>,
        name: &str,
        rest: &str,
        peer: SocketAddr,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        let (peer, from_peer) = self.client_of(&mut request, peer);
        let upgrade = super::websocket::is_upgrade(&request);
        // A browser's token comes as a WebSocket subprotocol; from here it is `Authorization`.
        if upgrade {
            super::websocket::token_from_subprotocol(&mut request);
        }
        let guest_path = guest_path(rest);
        let Some(deployment) = self.registry.lookup(name) else {
            if let Some(cluster) = self.cluster.as_ref().filter(|_| !from_peer)
                && let Some(replicas) = cluster.replicas_of(name)
            {
                if upgrade {
                    // A proxied answer cannot carry the switched protocol: the client connects
                    // where the function runs. Only a caller that may invoke it learns that it
                    // exists (anyone, for a public function).
                    if !cluster.uploaded_public(name) {
                        let facts = invoke_facts(&request, name, &guest_path);
                        self.authenticate(authorization(&request), &facts, peer)?;
                    }
                    let detail = format!("`{name}` runs on other nodes: open WebSockets to one of them");
                    return Err(Problem::new(StatusCode::MISDIRECTED_REQUEST, detail));
                }
                return self.proxy(cluster, request, name, replicas, peer).await;
            }
            // Answer exactly as a private function would until the caller proves it may know.
            // Under `ledge dev` this machine may know everything, its builds' state and errors
            // included; no other caller ever learns them, whatever its token.
            if self.is_local(&request, peer) {
                if let Some(pending) = self.dev_builds.not_live_yet(name) {
                    return Err(pending.into());
                }
            } else {
                self.authenticate(authorization(&request), &invoke_facts(&request, name, &guest_path), peer)?;
            }
            return Err(RegistryError::NotFound(name.to_string()).into());
        };
        let started = Instant::now();
        let mut result = self.invoke_deployed(request, name, &guest_path, &deployment, peer, upgrade).await;
        if let (Some(cluster), Ok(response)) = (&self.cluster, &mut result) {
            response.headers_mut().insert("ledge-node", cluster.node_header.clone());
        }
        let status = result.as_ref().map_or_else(|problem| problem.status, |response| response.status().as_u16());
        self.metrics.observe_request(name, status, started.elapsed());
        result
    }

    async fn invoke_deployed(
        &self,
        mut request: http::Request<Incoming>,
        name: &str,
        guest_path: &str,
        deployment: &Deployment,
        peer: SocketAddr,
        upgrade: bool,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        let authorization = authorization(&request);
        let ledge_token = authorization.is_some_and(is_ledge_token);
        let caller = if (deployment.policy.public || self.is_local(&request, peer)) && !ledge_token {
            // No token of ours (on a public function, or from this machine under `ledge dev`): an
            // anonymous caller; its own `Authorization` (a JWT, a webhook signature) is the
            // guest's business.
            Caller::default()
        } else {
            self.authenticate(authorization, &invoke_facts(&request, name, guest_path), peer)?
        };
        // Kept only while it may decide who reads a trace of this run.
        let token = ledge_token.then(|| authorization.map(str::to_string)).flatten();
        if ledge_token {
            request.headers_mut().remove(http::header::AUTHORIZATION);
        }

        // Rate: keyed by function and caller (token id, else client address); the policy's
        // quota and each of the token's `rate` caveats are all charged.
        let caller_key = caller.token_id.clone().unwrap_or_else(|| client_key(peer.ip()));
        let decision = self
            .limiter
            .as_ref()
            .map(|limiter| limiter.check(name, &caller_key, deployment.policy.rate, &caller.rates));
        if let Some(decision) = decision.as_ref().filter(|d| !d.allowed) {
            let problem = Problem::new(StatusCode::TOO_MANY_REQUESTS, decision.problem_detail());
            return Err(with_rate_headers(problem, Some(decision)));
        }
        // A start loads the code after the node listens: this request may be first to need it.
        deployment.load_code().await;
        if upgrade && let Some(entry) = deployment.policy.websockets.iter().find(|entry| entry.covers(guest_path)) {
            let path_with_query = match request.uri().query() {
                Some(query) => format!("{guest_path}?{query}"),
                None => guest_path.to_string(),
            };
            let upgrade = super::websocket::Upgrade {
                name,
                deployment,
                entry,
                caller,
                token,
                caller_key,
                guest_path,
                path_with_query,
                peer,
            };
            return self
                .accept_websocket(request, upgrade)
                .map_err(|problem| with_rate_headers(problem, decision.as_ref()));
        }
        let Some(permit) = deployment.concurrency.try_acquire() else {
            let detail =
                format!("all {} instances of `{name}` are busy; retry shortly", deployment.concurrency.limit());
            return Err(with_rate_headers(Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail), decision.as_ref()));
        };

        let path_and_query = match request.uri().query() {
            Some(query) => format!("{guest_path}?{query}"),
            None => guest_path.to_string(),
        };
        let Some(chosen) = deployment.choose(&caller_key) else {
            return Err(RegistryError::NotFound(name.to_string()).into());
        };
        let version = chosen.version;
        // The run's span, from here on (a refusal above is in the metrics and the access log,
        // and costs no trace): a child of the caller's `traceparent` if it sent one. The
        // runtime finds it among the request's extensions.
        let span = TraceCx::start(Some(request.headers()), names::REQUEST, SpanKind::Server, name, || {
            let mut attributes = vec![
                KeyValue::new("http.request.method", request.method().as_str().to_string()),
                KeyValue::new("url.path", guest_path.to_string()),
                KeyValue::new("ledge.version", version as i64),
            ];
            attributes.extend(caller.token_id.clone().map(|id| KeyValue::new("ledge.token.id", id)));
            attributes
        });
        if !span.is_off() {
            request.extensions_mut().insert(span.clone());
        }
        // The guest's parent is ledge's span, not the caller's; set before the recording reads
        // the request, so a replay gives the guest the same `traceparent`.
        span.inject(request.headers_mut());
        let recording = self.recording(&request, deployment, &chosen, &caller, token.as_deref(), &path_and_query);
        // Those a caller may send (`ledge-record`) have been read by now; those ledge sets for
        // guests (`ledge-schedule`, ...) must come from ledge alone, so a guest can trust them.
        remove_ledge_headers(request.headers_mut());
        let invocation = Invocation {
            function: name,
            pre: chosen.pre,
            policy: &deployment.policy,
            cold: chosen.cold,
            caller,
            permit,
            tls: self.tls_of(&request),
            config: deployment.config.clone(),
            tape: recording.as_ref().map(|recording| recording.tape.clone()),
        };
        let result = self.runtime.invoke(invocation, request, &path_and_query).await;
        let kept = recording.as_ref().filter(|r| span.is_recording() && r.tape.keeps());
        if let Some(id) = kept.and_then(|recording| recording.tape.trace_id()) {
            span.set("ledge.trace", id);
        }
        let trace = recording.and_then(|recording| self.trace_header(&recording, token.as_deref(), name));
        let outcome = match result {
            Ok(response) => {
                let mut response =
                    response.map(|body| body.map_err(|error| Box::new(error) as BoxError).boxed_unsync());
                for (header, value) in decision.iter().flat_map(RateDecision::headers) {
                    if let Ok(value) = http::HeaderValue::try_from(value) {
                        response.headers_mut().insert(header, value);
                    }
                }
                response.headers_mut().insert(LEDGE_VERSION, http::HeaderValue::from(version));
                if let Some(id) = trace.and_then(|id| http::HeaderValue::from_str(&id).ok()) {
                    response.headers_mut().insert(http::HeaderName::from_static(TRACE_HEADER), id);
                }
                Ok(response)
            }
            Err(error) => {
                let mut problem = Problem::from(error).with_header("ledge-version", version.to_string());
                if let Some(id) = trace {
                    problem = problem.with_header(TRACE_HEADER, id);
                }
                Err(with_rate_headers(problem, decision.as_ref()))
            }
        };
        let status = outcome.as_ref().map_or_else(|problem| problem.status, |response| response.status().as_u16());
        self.metrics.observe_version(name, version, status);
        // The canary's record, which `ledge promote` judges (a 5xx is a failure).
        chosen.observe(status);
        span.set("http.response.status_code", i64::from(status));
        if status >= 500 {
            span.fail(format_args!("status {status}"));
        }
        // Ends with the response head; a body still streaming is not in the span's time.
        span.end();
        outcome
    }
}

/// What an invocation's caveats are checked against.
fn invoke_facts<'a, B>(request: &'a http::Request<B>, name: &'a str, guest_path: &'a str) -> caveats::Request<'a> {
    caveats::Request {
        op: Op::Invoke,
        function: Some(name),
        queue: None,
        method: request.method().as_str(),
        path: guest_path,
        now: SystemTime::now(),
    }
}
