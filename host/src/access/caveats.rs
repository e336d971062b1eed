//! First-party caveats: the language tokens are narrowed with (spec: "Tokens").
//!
//! A caveat is `key op value`. Parsing is strict and fails closed: an unknown key, operator or
//! malformed value is an error, and a token carrying it refuses every request. A caveat either
//! decides whether a request may run at all ([`Caveat::check`]) or narrows what it may do once
//! running (key prefixes, read-only, rates: collected into the verified
//! [`Caller`](super::tokens::Caller)).

use std::time::{Duration, SystemTime};

use crate::access::policy::{RateQuota, path_under};

/// What a request asks to do; `op` caveats name these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Deploy,
    Invoke,
    Manage,
    /// Sending a message to a queue over HTTP; a token allowed `manage` may send too.
    Send,
}

impl Op {
    fn parse(text: &str) -> Option<Op> {
        match text {
            "deploy" => Some(Op::Deploy),
            "invoke" => Some(Op::Invoke),
            "manage" => Some(Op::Manage),
            "send" => Some(Op::Send),
            _ => None,
        }
    }
}

/// The facts caveats are evaluated against.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub op: Op,
    /// The function the request is about, if any (`GET /v1/functions` has none).
    pub function: Option<&'a str>,
    /// The queue the request is about, if any.
    pub queue: Option<&'a str>,
    pub method: &'a str,
    /// For invocations the path the function sees; else the request path.
    pub path: &'a str,
    pub now: SystemTime,
}

/// One parsed first-party caveat.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Caveat {
    TimeBefore(SystemTime),
    Functions(Vec<String>),
    Ops(Vec<Op>),
    Methods(Vec<String>),
    PathPrefix(String),
    KvPrefix(String),
    KvRead,
    Rate(RateQuota),
    /// `queue = NAME` / `queue in A,B`: the queues a request may be about.
    Queues(Vec<String>),
    /// `id = HEX`: names a revocable branch of a token family (lowercase, 1 to 64 hex digits).
    Id(String),
}

/// Parses `key op value`; `=` and `in` (comma-separated list) both work for list caveats.
pub(crate) fn parse_caveat(text: &str) -> Result<Caveat, String> {
    let mut parts = text.trim().splitn(3, ' ');
    let (Some(key), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("expected `key operator value`".into());
    };
    let value = value.trim();
    let list = || value.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect::<Vec<_>>();
    let is_list_op = op == "=" || op == "in";
    match (key, op) {
        ("time", "<") => humantime::parse_rfc3339(value)
            .map(Caveat::TimeBefore)
            .map_err(|e| format!("`{value}` is not an RFC 3339 time: {e}")),
        ("fn", _) if is_list_op => Ok(Caveat::Functions(list())),
        ("op", _) if is_list_op => list()
            .iter()
            .map(|op| Op::parse(op).ok_or_else(|| format!("unknown operation `{op}` (deploy, invoke, manage, send)")))
            .collect::<Result<_, _>>()
            .map(Caveat::Ops),
        ("queue", _) if is_list_op => Ok(Caveat::Queues(list())),
        ("method", _) if is_list_op => {
            Ok(Caveat::Methods(list().into_iter().map(|m| m.to_ascii_uppercase()).collect()))
        }
        ("path-prefix", "=") if value.starts_with('/') => Ok(Caveat::PathPrefix(value.to_string())),
        ("kv-prefix", "=") => Ok(Caveat::KvPrefix(value.to_string())),
        ("kv", "=") if value == "read" => Ok(Caveat::KvRead),
        ("rate", "=") => parse_rate(value).map(Caveat::Rate),
        ("id", "=") => parse_branch_id(value).map(Caveat::Id),
        _ => Err("unknown caveat".into()),
    }
}

impl Caveat {
    /// Whether this caveat allows `request`; the reason when it does not.
    pub(crate) fn check(&self, request: &Request<'_>) -> Result<(), String> {
        match self {
            Caveat::TimeBefore(deadline) if request.now < *deadline => Ok(()),
            Caveat::TimeBefore(_) => Err("the token has expired".into()),
            Caveat::Functions(names) => match request.function {
                Some(function) if names.iter().any(|n| n == function) => Ok(()),
                Some(function) => Err(format!("function `{function}` is not allowed")),
                None => Err("the request is not about one function".into()),
            },
            Caveat::Ops(ops) if ops.contains(&request.op) => Ok(()),
            Caveat::Ops(ops) if request.op == Op::Send && ops.contains(&Op::Manage) => Ok(()),
            Caveat::Ops(_) => Err(format!("operation `{:?}` is not allowed", request.op).to_lowercase()),
            Caveat::Queues(names) => match request.queue {
                Some(queue) if names.iter().any(|n| n == queue) => Ok(()),
                Some(queue) => Err(format!("queue `{queue}` is not allowed")),
                None => Err("the request is not about one queue".into()),
            },
            Caveat::Methods(methods) if methods.iter().any(|m| m == request.method) => Ok(()),
            Caveat::Methods(_) => Err(format!("method {} is not allowed", request.method)),
            Caveat::PathPrefix(_) if may_hide_a_separator(request.path) => Err(format!(
                "path `{}` holds an encoded slash or a backslash (%2F, %5C, \\), which a guest may read as a separator: refused under a path-prefix",
                request.path
            )),
            Caveat::PathPrefix(prefix) if under_path_prefix(request.path, prefix) => Ok(()),
            Caveat::PathPrefix(_) => Err(format!("path `{}` is outside the allowed prefix", request.path)),
            // Key-value and rate caveats narrow what the request may do, not whether it runs; an
            // `id` only names the branch for revocation (checked by the verifier).
            Caveat::KvPrefix(_) | Caveat::KvRead | Caveat::Rate(_) | Caveat::Id(_) => Ok(()),
        }
    }
}

/// Whether `path` lies under a `path-prefix`, by whole segments: `/api/` takes `/api/` and
/// everything below it, `/api` also `/api` itself; neither takes `/apix`.
fn under_path_prefix(path: &str, prefix: &str) -> bool {
    if prefix.ends_with('/') { path.starts_with(prefix) } else { path_under(path, prefix) }
}

/// `%2F` or `%5C` in any case, or a literal `\`: a separator to a guest that decodes before it
/// routes, or that parses URLs as browsers do (`\` is `/` there), but plain text to the prefix
/// check, so the two could disagree on where the path leads.
fn may_hide_a_separator(path: &str) -> bool {
    path.contains('\\')
        || path
            .as_bytes()
            .windows(3)
            .any(|w| w[0] == b'%' && matches!((w[1], w[2].to_ascii_uppercase()), (b'2', b'F') | (b'5', b'C')))
}

/// The value of an `id` caveat: 1 to 64 hex digits (ledge writes 32), kept lowercase so that
/// one branch has one revocation key whoever wrote the caveat.
pub fn parse_branch_id(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{value}` is not a branch id: expected 1 to 64 hex digits"));
    }
    Ok(value.to_ascii_lowercase())
}

/// Parses a token `rate` caveat value "N/s" | "N/m" | "N/h" into a RateQuota (burst = N).
pub fn parse_rate(text: &str) -> Result<RateQuota, String> {
    let bad = || format!("invalid rate `{text}`: expected N/s, N/m or N/h with N a positive integer, e.g. \"10/s\"");
    let (number, unit) = text.split_once('/').ok_or_else(bad)?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let quota: u32 = number.parse().map_err(|_| bad())?;
    let window = match unit {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    if quota == 0 {
        return Err(bad());
    }
    Ok(RateQuota { quota, window, burst: quota })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(op: Op, function: Option<&'static str>, method: &'static str, path: &'static str) -> Request<'static> {
        Request { op, function, queue: None, method, path, now: SystemTime::now() }
    }

    #[test]
    fn caveats_parse_or_refuse() {
        assert_eq!(parse_caveat("fn = hello"), Ok(Caveat::Functions(vec!["hello".into()])));
        assert_eq!(parse_caveat("op in deploy, invoke"), Ok(Caveat::Ops(vec![Op::Deploy, Op::Invoke])));
        assert_eq!(parse_caveat("method in get,HEAD"), Ok(Caveat::Methods(vec!["GET".into(), "HEAD".into()])));
        assert_eq!(parse_caveat("kv = read"), Ok(Caveat::KvRead));
        assert!(parse_caveat("colour = blue").is_err());
        assert!(parse_caveat("op in fly").is_err());
        assert!(parse_caveat("time < tomorrow").is_err());
        assert!(parse_caveat("path-prefix = api").is_err());
        assert!(parse_caveat("kv = write").is_err());
    }

    #[test]
    fn a_path_prefix_takes_whole_segments_and_no_encoded_slash() {
        let at = |path: &'static str| request(Op::Invoke, Some("echo"), "GET", path);
        let api = parse_caveat("path-prefix = /api").unwrap();
        let api_dir = parse_caveat("path-prefix = /api/").unwrap();
        for (path, under_api, under_api_dir) in [
            ("/api", true, false),
            ("/api/", true, true),
            ("/api/x", true, true),
            ("/apix", false, false),
            ("/", false, false),
        ] {
            assert_eq!(api.check(&at(path)).is_ok(), under_api, "/api vs {path}");
            assert_eq!(api_dir.check(&at(path)).is_ok(), under_api_dir, "/api/ vs {path}");
        }
        for encoded in ["/api/a%2Fb", "/api/a%2fb", "/api/a%5cb", "/api/..\\admin"] {
            assert!(api.check(&at(encoded)).unwrap_err().contains("encoded slash"), "{encoded}");
        }
        assert!(parse_caveat("path-prefix = /").unwrap().check(&at("/anything")).is_ok());
    }

    #[test]
    fn caveats_check_the_request() {
        let invoke = request(Op::Invoke, Some("hello"), "GET", "/api/x");
        assert!(parse_caveat("fn in echo,hello").unwrap().check(&invoke).is_ok());
        assert!(parse_caveat("fn = echo").unwrap().check(&invoke).is_err());
        assert!(parse_caveat("op = deploy").unwrap().check(&invoke).is_err());
        assert!(parse_caveat("path-prefix = /api/").unwrap().check(&invoke).is_ok());
        assert!(parse_caveat("path-prefix = /admin/").unwrap().check(&invoke).is_err());
        assert!(parse_caveat("method = POST").unwrap().check(&invoke).is_err());
        assert!(parse_caveat("time < 2000-01-01T00:00:00Z").unwrap().check(&invoke).is_err());
        assert!(parse_caveat("time < 2999-01-01T00:00:00Z").unwrap().check(&invoke).is_ok());
    }

    #[test]
    fn queue_caveats_name_the_queues_a_sender_may_reach() {
        let send = |queue: Option<&'static str>| Request { queue, ..request(Op::Send, None, "POST", "/v1/queues") };
        let orders = parse_caveat("queue = orders").unwrap();
        assert!(orders.check(&send(Some("orders"))).is_ok());
        assert!(orders.check(&send(Some("emails"))).unwrap_err().contains("emails"));
        assert!(orders.check(&send(None)).is_err(), "a queue caveat refuses what is not about one queue");
        assert!(parse_caveat("queue in a, orders").unwrap().check(&send(Some("orders"))).is_ok());
        // A manage token may send; a send token may do nothing else.
        assert!(parse_caveat("op = manage").unwrap().check(&send(Some("orders"))).is_ok());
        assert!(parse_caveat("op = send").unwrap().check(&request(Op::Manage, None, "GET", "/v1/queues")).is_err());
        assert!(parse_caveat("op = invoke").unwrap().check(&send(Some("orders"))).is_err());
        assert!(parse_caveat("fn = hello").unwrap().check(&send(Some("orders"))).is_err(), "a function token");
    }
}
