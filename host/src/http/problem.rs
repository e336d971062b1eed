//! RFC 9457 `application/problem+json` responses, and the one place where every operation's
//! error enum is mapped to a status and a detail.
//!
//! Invariant: a client error keeps its status and a detail a person can act on; an internal
//! error becomes a generic 500 whose detail never carries paths, keys or backtraces (the cause
//! is logged once, here, with the request's function name). The one 500 that carries what
//! went wrong is `ledge dev`'s failed first build ([`NotLiveYet`]): the author's own compiler
//! output, on the author's own machine.

use http::{HeaderName, StatusCode};
use serde::Serialize;

use super::body::{ResponseBody, full};
use super::dev_builds::NotLiveYet;
use crate::access::rate::RateDecision;
use crate::access::tokens::AuthError;
use crate::backup::BackupError;
use crate::cluster::ClusterError;
use crate::queue::QueueError;
use crate::registry::config::ConfigError;
use crate::registry::{DeployError, PolicyError, RegistryError};
use crate::runtime::InvokeError;
use crate::telemetry::logs::GUEST_RUN;

/// One problem document.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Headers the response carries besides the body (`WWW-Authenticate`, `Retry-After`, ...).
    #[serde(skip)]
    pub headers: Vec<(HeaderName, String)>,
    /// Extension members (RFC 9457 section 3.2), e.g. a refused verification's report.
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// A problem with `status`, its canonical reason as the title, and `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        let title = status.canonical_reason().unwrap_or("Error");
        Problem {
            kind: format!("https://ledge.dev/problems/{}", status.as_u16()),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            headers: Vec::new(),
            extensions: serde_json::Map::new(),
        }
    }

    /// Adds the members of `value` (a JSON object) to the problem.
    pub fn with_members(mut self, value: serde_json::Value) -> Self {
        if let serde_json::Value::Object(members) = value {
            self.extensions.extend(members);
        }
        self
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((HeaderName::from_static(name), value.into()));
        self
    }

    /// The HTTP response carrying this problem.
    pub fn into_response(self) -> http::Response<ResponseBody> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = full(status, "application/problem+json", serde_json::to_vec(&self).unwrap_or_default());
        for (name, value) in self.headers {
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                response.headers_mut().append(name, value);
            }
        }
        response
    }

    fn internal(context: &str, error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%context, error = %error, "internal error");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error while {context}; see the server log"))
    }
}

impl From<crate::verify::Refusal> for Problem {
    fn from(refusal: crate::verify::Refusal) -> Self {
        let status = match refusal {
            crate::verify::Refusal::Diverged { .. } => StatusCode::CONFLICT,
            crate::verify::Refusal::TimedOut { .. } | crate::verify::Refusal::NothingVerified { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let report = serde_json::to_value(refusal.report()).unwrap_or_default();
        Problem::new(status, refusal.to_string()).with_members(report)
    }
}

impl From<DeployError> for Problem {
    fn from(error: DeployError) -> Self {
        match error {
            DeployError::TooLarge { .. } => Problem::new(StatusCode::PAYLOAD_TOO_LARGE, error.to_string()),
            DeployError::Registry(registry) => registry.into(),
            DeployError::Policy(policy) => policy.into(),
            DeployError::Upload(_) | DeployError::Invalid(_) => {
                Problem::new(StatusCode::BAD_REQUEST, error.to_string())
            }
        }
    }
}

impl From<RegistryError> for Problem {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::NotFound(_) => Problem::new(StatusCode::NOT_FOUND, error.to_string()),
            RegistryError::InvalidName(_) => Problem::new(StatusCode::BAD_REQUEST, error.to_string()),
            RegistryError::Versions(_) => Problem::new(StatusCode::CONFLICT, error.to_string()),
            RegistryError::Io(io) => Problem::internal("updating the registry", &io),
        }
    }
}

impl From<PolicyError> for Problem {
    fn from(error: PolicyError) -> Self {
        match error {
            PolicyError::Registry(registry) => registry.into(),
            PolicyError::Invalid(_) => Problem::new(StatusCode::BAD_REQUEST, error.to_string()),
            PolicyError::Widens(_) => Problem::new(StatusCode::FORBIDDEN, error.to_string()),
            PolicyError::Conflict(_) => Problem::new(StatusCode::CONFLICT, error.to_string()),
        }
    }
}

impl From<ClusterError> for Problem {
    fn from(error: ClusterError) -> Self {
        match error {
            ClusterError::Deploy(deploy) => deploy.into(),
            ClusterError::Policy(policy) => policy.into(),
            ClusterError::Registry(registry) => registry.into(),
            ClusterError::Unavailable(_) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string()).with_header("retry-after", "5")
            }
            ClusterError::NotApplied(_) => Problem::new(StatusCode::GATEWAY_TIMEOUT, error.to_string()),
            ClusterError::Versions(_) => Problem::new(StatusCode::CONFLICT, error.to_string()),
            ClusterError::TooLarge(_) => Problem::new(StatusCode::PAYLOAD_TOO_LARGE, error.to_string()),
            ClusterError::Config(config) => config.into(),
        }
    }
}

impl From<ConfigError> for Problem {
    fn from(error: ConfigError) -> Self {
        match error {
            ConfigError::Registry(registry) => registry.into(),
            ConfigError::NoSuchKey { .. } => Problem::new(StatusCode::NOT_FOUND, error.to_string()),
            ConfigError::InvalidKey(_) | ConfigError::InvalidValue | ConfigError::TooManyKeys => {
                Problem::new(StatusCode::BAD_REQUEST, error.to_string())
            }
        }
    }
}

impl From<QueueError> for Problem {
    fn from(error: QueueError) -> Self {
        match error {
            QueueError::Full { .. } | QueueError::NodeFull { .. } | QueueError::Refused(_) => {
                Problem::new(StatusCode::TOO_MANY_REQUESTS, error.to_string())
            }
            QueueError::Conflict(_) | QueueError::Unavailable(_) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, format!("{error}; retry shortly"))
            }
            QueueError::TooLarge { .. } => Problem::new(StatusCode::PAYLOAD_TOO_LARGE, error.to_string()),
            QueueError::InvalidName(_) | QueueError::KeyTooLong | QueueError::DelayTooLong => {
                Problem::new(StatusCode::BAD_REQUEST, error.to_string())
            }
            QueueError::Engine(_) => Problem::internal("using a queue", &error),
        }
    }
}

impl From<BackupError> for Problem {
    fn from(error: BackupError) -> Self {
        // Every way writing a backup fails is the server's own (disk, engine).
        Problem::internal("writing the backup", &error)
    }
}

impl From<AuthError> for Problem {
    fn from(error: AuthError) -> Self {
        if error.is_forbidden() {
            Problem::new(StatusCode::FORBIDDEN, error.to_string())
        } else {
            Problem::new(StatusCode::UNAUTHORIZED, error.to_string())
                .with_header("www-authenticate", "Bearer realm=\"ledge\"")
        }
    }
}

impl From<InvokeError> for Problem {
    fn from(error: InvokeError) -> Self {
        let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match &error {
            InvokeError::Host(_) => Problem::internal("running the function", &error),
            InvokeError::NoHttpHandler => Problem::new(status, error.to_string()).with_header("upgrade", "websocket"),
            InvokeError::MemoryLimit { .. } | InvokeError::Trap(_) | InvokeError::NoResponse => {
                tracing::warn!(target: GUEST_RUN, error = %error, "guest failed");
                Problem::new(status, error.to_string())
            }
            _ => Problem::new(status, error.to_string()),
        }
    }
}

impl From<NotLiveYet> for Problem {
    fn from(error: NotLiveYet) -> Self {
        match error {
            NotLiveYet::Building(_) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string()).with_header("retry-after", "5")
            }
            NotLiveYet::BuildFailed { .. } => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
        }
    }
}

/// Adds the rate-limit headers (and `Retry-After` on refusals) to a problem response.
pub fn with_rate_headers(mut problem: Problem, decision: Option<&RateDecision>) -> Problem {
    problem.headers.extend(decision.iter().flat_map(|d| d.headers()));
    problem
}
