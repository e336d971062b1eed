//! Deploys, and deploys that prove themselves first (spec: `PUT /v1/functions/{name}` with
//! `?canary=P`, `?verify=N`, `&accept=ID,...|all`, `&verify_timeout=S`; `POST
//! /v1/functions/{name}/verify`): the new build is compiled once, replayed against the
//! function's recent real traffic beside the live build (`crate::verify`), and installed only
//! if nothing a user would observe changed, or the change was accepted.
//!
//! Invariants: a refused deploy installs nothing; divergence details (request lines and
//! differences hold users' data) reach only a token allowed `op manage` on the function (any
//! other gets trace ids and counts); every accepted divergence is in the audit log; an unknown
//! or malformed parameter is a 400 naming it, never ignored.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use hyper::body::Incoming;
use serde::Serialize;

use super::admin::{Upload, read_upload};
use super::audit::audit;
use super::{App, Problem, ResponseBody, json};
use crate::access::caveats::Op;
use crate::access::tokens::Caller;
use crate::record::store::is_valid_id;
use crate::registry::{FunctionMeta, PolicyChange};
use crate::verify::{Accept, DEFAULT_TIMEOUT, DEFAULT_TRACES, MAX_TIMEOUT, MAX_TRACES, Report, report};

/// What a deploy's query asks for.
#[derive(Debug, Default, PartialEq)]
struct DeployQuery {
    canary: Option<u8>,
    verify: Option<Verification>,
}

/// `verify=N` and what goes with it.
#[derive(Debug, PartialEq)]
struct Verification {
    traces: usize,
    timeout: Duration,
    accept: Accept,
}

/// A deploy's reply: the version's metadata and, when it was verified, what verification found.
#[derive(Serialize)]
struct Deployed<'a> {
    #[serde(flatten)]
    meta: &'a FunctionMeta,
    #[serde(skip_serializing_if = "Option::is_none")]
    verification: Option<Report>,
}

impl App {
    /// `PUT /v1/functions/{name}`.
    pub(super) async fn deploy(
        &self,
        request: http::Request<Incoming>,
        name: &str,
        caller: &Caller,
        who: PolicyChange,
        peer: SocketAddr,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        let query = deploy_query(request.uri().query())?;
        let details = self.authorize(&request, Op::Manage, Some(name), peer).is_ok();
        let content_type = request.headers().get(http::header::CONTENT_TYPE).cloned();
        let bytes = read_upload(request.into_body(), self.max_upload).await?;
        let upload = Upload::parse(content_type.as_ref(), bytes).await?;
        let verification = match &query.verify {
            Some(asked) => Some(self.verify_first(name, &upload.component, asked, caller, details).await?),
            None => None,
        };
        let policy = upload.policy.as_deref();
        let outcome = match &self.cluster {
            Some(cluster) => cluster.deploy(name, upload.component, policy, who, query.canary).await,
            None => self.registry.deploy(name, upload.component, policy, who, query.canary).await.map_err(Into::into),
        };
        audit("deploy", name, caller, outcome.as_ref().map(|d| format!("version {}", d.meta.version)));
        let deployed = outcome?;
        let status = if deployed.created { StatusCode::CREATED } else { StatusCode::OK };
        Ok(json(status, &Deployed { meta: &deployed.meta, verification }))
    }

    /// Verifies `component` before its deploy: the report when the deploy may go on.
    async fn verify_first(
        &self,
        name: &str,
        component: &[u8],
        asked: &Verification,
        caller: &Caller,
        details: bool,
    ) -> Result<Report, Problem> {
        let mut report = self.run_verification(name, component, asked.traces, asked.timeout).await?;
        if !details {
            report.redact();
        }
        match report::judge(&report, &asked.accept) {
            Ok(accepted) => {
                if !accepted.is_empty() {
                    let accepted = format!("deployed despite divergences on traces {}", accepted.join(", "));
                    audit("verify-accepted", name, caller, Ok::<_, String>(accepted));
                }
                Ok(report)
            }
            Err(refusal) => {
                // The audit log gets trace ids and counts, never what the requests held.
                let mut told = refusal.report().clone();
                told.redact();
                let why = format!("verification refused it: {}", told.summary());
                audit("deploy", name, caller, Err::<String, _>(why));
                Err(refusal.into())
            }
        }
    }

    /// `POST /v1/functions/{name}/verify`: the check alone (a manage token on the function).
    pub(super) async fn verify_only(
        &self,
        request: http::Request<Incoming>,
        name: &str,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        let query = Query::parse(request.uri().query(), &["traces", "verify_timeout"])?;
        let traces = query.traces()?;
        let timeout = query.timeout()?;
        let component = read_upload(request.into_body(), self.max_upload).await?;
        let report = self.run_verification(name, &component, traces, timeout).await?;
        Ok(json(StatusCode::OK, &report))
    }

    async fn run_verification(
        &self,
        name: &str,
        component: &[u8],
        traces: usize,
        timeout: Duration,
    ) -> Result<Report, Problem> {
        // The node's one slot first: compiling is the costly part, and it is done once, in it.
        let slot = self.verifier.try_start().ok_or_else(|| {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "another verification is running on this node; retry shortly")
                .with_header("retry-after", "10")
        })?;
        let candidate = self.registry.check_component(component.to_vec()).await?;
        self.verifier.verify(&slot, name, &candidate, traces, timeout).await.map_err(|error| {
            tracing::error!(function = name, error = %format!("{error:#}"), "verification failed");
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error while verifying; see the server log")
        })
    }
}

/// A deploy's parameters: `canary`, and `verify` with `accept` and `verify_timeout`.
fn deploy_query(query: Option<&str>) -> Result<DeployQuery, Problem> {
    let parsed = Query::parse(query, &["canary", "verify", "accept", "verify_timeout"])?;
    let canary = parsed.canary.as_deref().map(canary_percent).transpose()?;
    if parsed.verify.is_none() && (parsed.accept.is_some() || parsed.timeout.is_some()) {
        return Err(bad("accept and verify_timeout go with verify=N"));
    }
    let verify = match &parsed.verify {
        None => None,
        Some(_) => {
            Some(Verification { traces: parsed.traces()?, timeout: parsed.timeout()?, accept: parsed.accept()? })
        }
    };
    Ok(DeployQuery { canary, verify })
}

/// A query's parameters, each at most once, of those a route takes.
#[derive(Default)]
struct Query {
    canary: Option<String>,
    verify: Option<String>,
    accept: Option<String>,
    timeout: Option<String>,
}

impl Query {
    fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Query, Problem> {
        let mut parsed = Query::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if !allowed.contains(&name.as_ref()) {
                return Err(bad(&format!("unknown parameter `{name}` (this route takes {})", allowed.join(", "))));
            }
            let slot = match name.as_ref() {
                "canary" => &mut parsed.canary,
                "verify" | "traces" => &mut parsed.verify,
                "accept" => &mut parsed.accept,
                _ => &mut parsed.timeout,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(bad(&format!("`{name}` is given twice")));
            }
        }
        Ok(parsed)
    }

    /// `verify=N` (or `traces=N`): how many traces; bare `verify` is the default.
    fn traces(&self) -> Result<usize, Problem> {
        match self.verify.as_deref() {
            None | Some("") => Ok(DEFAULT_TRACES),
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_TRACES).contains(n))
                .ok_or_else(|| bad(&format!("verify=`{text}`: give a number of traces from 1 to {MAX_TRACES}"))),
        }
    }

    /// `verify_timeout=S` (seconds, or with a unit: `90s`, `2m`).
    fn timeout(&self) -> Result<Duration, Problem> {
        let Some(text) = self.timeout.as_deref() else { return Ok(DEFAULT_TIMEOUT) };
        let parsed = match text.parse::<u64>() {
            Ok(seconds) => Some(Duration::from_secs(seconds)),
            Err(_) => humantime::parse_duration(text).ok(),
        };
        parsed.filter(|t| !t.is_zero() && *t <= MAX_TIMEOUT).ok_or_else(|| {
            bad(&format!("verify_timeout=`{text}`: give a duration up to {} s, e.g. 60s", MAX_TIMEOUT.as_secs()))
        })
    }

    /// `accept=all` or `accept=ID,ID,...`.
    fn accept(&self) -> Result<Accept, Problem> {
        match self.accept.as_deref() {
            None => Ok(Accept::Nothing),
            Some("all") => Ok(Accept::All),
            Some(list) => {
                let ids: Vec<String> = list.split(',').map(str::to_string).collect();
                if let Some(bad_id) = ids.iter().find(|id| !is_valid_id(id)) {
                    return Err(bad(&format!("accept: `{bad_id}` is not a trace id (21 hexadecimal digits) or `all`")));
                }
                Ok(Accept::These(ids))
            }
        }
    }
}

/// `canary=P` (or `P%`): the share of callers the new version serves.
fn canary_percent(value: &str) -> Result<u8, Problem> {
    let number = value.trim_end_matches('%');
    match number.parse::<u8>() {
        Ok(percent) if (1..=99).contains(&percent) => Ok(percent),
        _ => Err(bad(&format!("canary `{value}`: give a share from 1% to 99%"))),
    }
}

fn bad(detail: &str) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deploy_query_is_read_strictly() {
        assert_eq!(deploy_query(None).unwrap(), DeployQuery::default());
        assert_eq!(deploy_query(Some("canary=10%25")).unwrap().canary, Some(10));
        let verify = deploy_query(Some("verify&accept=all&verify_timeout=2m")).unwrap().verify.unwrap();
        assert_eq!((verify.traces, verify.timeout, verify.accept), (50, Duration::from_secs(120), Accept::All));
        let id = "0123456789abcdef01234";
        let accepted = deploy_query(Some(&format!("verify=5&accept={id}"))).unwrap().verify.unwrap();
        assert_eq!((accepted.traces, accepted.accept), (5, Accept::These(vec![id.into()])));
        for refused in [
            "verify=0",
            "verify=1000",
            "accept=all",
            "verify&accept=nope",
            "verify&verify_timeout=1h",
            "verfy=3",
            "verify&verify",
        ] {
            assert_eq!(deploy_query(Some(refused)).unwrap_err().status, 400, "{refused}");
        }
    }
}
