//! Policy files: limits and permissions per function (`policies/NAME.toml`, or uploaded with
//! `PUT /v1/functions/{name}/policy`), each field falling back to `policies/default.toml` and
//! then to the built-in defaults below.
//!
//! Invariants: parsing is strict (unknown fields and bad values are errors that name the field
//! and line), and a [`Policy`] is always complete, so the hot path never looks at fallbacks.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A policy as written in a file: every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub public: Option<bool>,
    pub rate: Option<RateSection>,
    pub limits: Option<LimitsSection>,
    pub outbound: Option<OutboundSection>,
    pub kv: Option<KvSection>,
    pub versions: Option<VersionsSection>,
    pub record: Option<RecordSection>,
    pub schedule: Option<Vec<ScheduleEntry>>,
    pub route: Option<Vec<RouteEntry>>,
    pub placement: Option<PlacementSection>,
}

/// `[[route]]`: requests for this host (exact, or `*.example.com` for any subdomain; omitted:
/// any host) under this path prefix are served by the function without `/fn/NAME/`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    pub host: Option<HostPattern>,
    pub path: Option<RoutePrefix>,
}

/// A host name, or `*.` and a domain.
#[derive(Debug, Clone, PartialEq)]
pub struct HostPattern(pub String);

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?.to_ascii_lowercase();
        let name = text.strip_prefix("*.").unwrap_or(&text);
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if valid {
            Ok(HostPattern(text))
        } else {
            Err(serde::de::Error::custom(format!("invalid route host `{text}`: a host name, or `*.` and a domain")))
        }
    }
}

/// A path prefix that leaves ledge's own routes alone.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePrefix(pub String);

/// Paths no route may take: ledge's own API and endpoints.
pub const RESERVED_PREFIXES: &[&str] = &["/fn", "/v1", "/healthz", "/readyz", "/metrics"];

impl<'de> Deserialize<'de> for RoutePrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let trimmed = if text.len() > 1 { text.trim_end_matches('/') } else { &text };
        if !text.starts_with('/') || text.len() > 1024 || text.contains(['?', '#']) {
            return Err(serde::de::Error::custom(format!("invalid route path `{text}`: an absolute path prefix")));
        }
        if let Some(reserved) =
            RESERVED_PREFIXES.iter().find(|r| path_under(trimmed, r) || path_under(r, trimmed) && trimmed != "/")
        {
            return Err(serde::de::Error::custom(format!("route path `{text}` would shadow ledge's own `{reserved}`")));
        }
        Ok(RoutePrefix(trimmed.to_string()))
    }
}

/// `path` is `prefix` or below it, by whole segments (`/api` covers `/api/x`, not `/apix`).
pub fn path_under(path: &str, prefix: &str) -> bool {
    prefix == "/" || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// A resolved route: host pattern (`None`: any) and path prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    pub host: Option<String>,
    pub path: String,
}

/// `[[schedule]]`: a synthetic `GET path` sent to the function on a cron schedule (UTC).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleEntry {
    pub cron: CronPattern,
    pub path: SchedulePath,
}

/// A cron pattern: the standard 5 fields (minute hour day month weekday), or 6 with seconds
/// first.
#[derive(Debug, Clone, PartialEq)]
pub struct CronPattern(pub String);

impl<'de> Deserialize<'de> for CronPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse::<croner::Cron>()
            .map(|_| CronPattern(text.clone()))
            .map_err(|e| serde::de::Error::custom(format!("invalid cron pattern `{text}`: {e}")))
    }
}

/// The path a scheduled run requests: absolute, at most 1 KiB.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulePath(pub String);

impl<'de> Deserialize<'de> for SchedulePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.starts_with('/') && text.len() <= 1024 && http::Uri::try_from(text.as_str()).is_ok() {
            Ok(SchedulePath(text))
        } else {
            Err(serde::de::Error::custom(format!(
                "invalid schedule path `{text}`: give an absolute path, e.g. \"/tasks/cleanup\""
            )))
        }
    }
}

/// Schedules one function may have.
pub const MAX_SCHEDULES: usize = 16;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionsSection {
    pub keep: Option<Positive>,
}

/// `[record]`: which runs are kept for replay, and how many per function.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSection {
    pub errors: Option<bool>,
    pub sample: Option<Fraction>,
    pub max_traces: Option<Positive>,
    pub max_trace_bytes: Option<ByteSize>,
}

/// A number from 0.0 to 1.0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fraction(pub f64);

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(d)?;
        if (0.0..=1.0).contains(&value) {
            Ok(Fraction(value))
        } else {
            Err(serde::de::Error::custom(format!("{value} is not a fraction from 0.0 to 1.0")))
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSection {
    pub quota: Option<Positive>,
    pub window: Option<HumanDuration>,
    pub burst: Option<Positive>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub timeout: Option<HumanDuration>,
    pub memory: Option<ByteSize>,
    pub max_body: Option<ByteSize>,
    pub max_concurrency: Option<Positive>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundSection {
    pub allow: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvSection {
    pub stores: Option<Vec<StoreName>>,
    pub max_bytes: Option<ByteSize>,
    pub scope: Option<KvScope>,
    pub global_stores: Option<Vec<StoreName>>,
}

/// Where a function's own keyspace lives (cluster mode): on each node, or in etcd.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvScope {
    #[default]
    Local,
    Global,
}

/// `[placement]` (cluster mode): how many nodes host the function; 0 = every node.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementSection {
    pub replicas: Option<u32>,
}

/// Most nodes a `[placement] replicas` may name (more is a typo, not a cluster).
pub const MAX_REPLICAS: u32 = 1000;

/// A complete, resolved policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub public: bool,
    pub rate: RateQuota,
    pub timeout: Duration,
    pub memory: u64,
    pub max_body: u64,
    pub max_concurrency: u32,
    pub outbound_allow: Vec<String>,
    pub kv_stores: Vec<String>,
    /// Storage quota of the function's keyspace, and of each shared store it writes to.
    pub kv_max_bytes: u64,
    /// Cluster mode: the function's own keyspace lives in etcd, shared by every node.
    pub kv_scope: KvScope,
    /// Cluster mode: shared stores granted that live in etcd.
    pub kv_global_stores: Vec<String>,
    /// Cluster mode: nodes hosting the function (0 = every node).
    pub replicas: u32,
    /// Deployed versions kept for rollback.
    pub versions_keep: u32,
    /// `(cron, path)`: synthetic requests on a schedule.
    pub schedules: Vec<(String, String)>,
    /// Hosts and paths served without the `/fn/NAME/` prefix.
    pub routes: Vec<Route>,
    /// Which runs are recorded for replay.
    pub record: RecordPolicy,
}

/// `[record]`, resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordPolicy {
    /// Keep every run that fails (5xx, trap, timeout).
    pub errors: bool,
    /// Keep this share of all runs.
    pub sample: f64,
    pub max_traces: u32,
    pub max_trace_bytes: u64,
}

impl Default for RecordPolicy {
    fn default() -> Self {
        RecordPolicy { errors: true, sample: 0.0, max_traces: 1000, max_trace_bytes: 64 << 20 }
    }
}

/// GCRA quota: `quota` requests per `window`, bursting up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateQuota {
    pub quota: u32,
    pub window: Duration,
    pub burst: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            public: false,
            rate: RateQuota { quota: 100, window: Duration::from_secs(60), burst: 100 },
            timeout: Duration::from_secs(10),
            memory: 64 << 20,
            max_body: 1 << 20,
            max_concurrency: 64,
            outbound_allow: Vec::new(),
            kv_stores: Vec::new(),
            kv_max_bytes: 64 << 20,
            kv_scope: KvScope::Local,
            kv_global_stores: Vec::new(),
            replicas: 0,
            versions_keep: 10,
            schedules: Vec::new(),
            routes: Vec::new(),
            record: RecordPolicy::default(),
        }
    }
}

impl PolicyFile {
    /// Parses TOML; the error names the field, line and column.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|error| error.to_string().trim_end().to_string())
    }

    /// Resolves this file over `base` (the default policy, already resolved).
    pub fn resolve(&self, base: &Policy) -> Policy {
        let rate = self.rate.clone().unwrap_or_default();
        let limits = self.limits.clone().unwrap_or_default();
        let quota = rate.quota.map_or(base.rate.quota, |q| q.0);
        // burst = quota unless set, so a file that raises the quota raises the burst with it.
        let burst = rate.burst.map(|b| b.0).or(rate.quota.map(|q| q.0)).unwrap_or(base.rate.burst);
        Policy {
            public: self.public.unwrap_or(base.public),
            rate: RateQuota { quota, window: rate.window.map_or(base.rate.window, |w| w.0), burst },
            timeout: limits.timeout.map_or(base.timeout, |t| t.0),
            memory: limits.memory.map_or(base.memory, |m| m.0),
            max_body: limits.max_body.map_or(base.max_body, |m| m.0),
            max_concurrency: limits.max_concurrency.map_or(base.max_concurrency, |c| c.0),
            outbound_allow: self
                .outbound
                .as_ref()
                .and_then(|o| o.allow.clone())
                .unwrap_or_else(|| base.outbound_allow.clone()),
            kv_stores: self
                .kv
                .as_ref()
                .and_then(|k| k.stores.as_ref())
                .map_or_else(|| base.kv_stores.clone(), |stores| stores.iter().map(|s| s.0.clone()).collect()),
            kv_max_bytes: self.kv.as_ref().and_then(|k| k.max_bytes).map_or(base.kv_max_bytes, |m| m.0),
            kv_scope: self.kv.as_ref().and_then(|k| k.scope).unwrap_or(base.kv_scope),
            kv_global_stores: self
                .kv
                .as_ref()
                .and_then(|k| k.global_stores.as_ref())
                .map_or_else(|| base.kv_global_stores.clone(), |stores| stores.iter().map(|s| s.0.clone()).collect()),
            replicas: self.placement.as_ref().and_then(|p| p.replicas).unwrap_or(base.replicas),
            versions_keep: self.versions.as_ref().and_then(|v| v.keep).map_or(base.versions_keep, |k| k.0),
            schedules: self.schedule.as_ref().map_or_else(
                || base.schedules.clone(),
                |entries| entries.iter().map(|e| (e.cron.0.clone(), e.path.0.clone())).collect(),
            ),
            record: {
                let section = self.record.clone().unwrap_or_default();
                RecordPolicy {
                    errors: section.errors.unwrap_or(base.record.errors),
                    sample: section.sample.map_or(base.record.sample, |f| f.0),
                    max_traces: section.max_traces.map_or(base.record.max_traces, |n| n.0),
                    max_trace_bytes: section.max_trace_bytes.map_or(base.record.max_trace_bytes, |b| b.0),
                }
            },
            routes: self.route.as_ref().map_or_else(
                || base.routes.clone(),
                |entries| {
                    entries
                        .iter()
                        .map(|e| Route {
                            host: e.host.as_ref().map(|h| h.0.clone()),
                            path: e.path.as_ref().map_or_else(|| "/".to_string(), |p| p.0.clone()),
                        })
                        .collect()
                },
            ),
        }
    }
}

/// Function and store names: 1 to 63 characters of `a-z`, `0-9` and `-`, starting with a letter
/// or digit. No name contains `/`, which is what keeps keyspaces apart (see `guest_kv`).
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    matches!(bytes.first(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && bytes.len() <= 63
        && bytes.iter().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
}

/// A shared store's name, held to the function-name rule.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreName(pub String);

impl<'de> Deserialize<'de> for StoreName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        if is_valid_name(&name) {
            Ok(StoreName(name))
        } else {
            Err(serde::de::Error::custom(format!(
                "invalid store name `{name}`: use 1 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit"
            )))
        }
    }
}

/// Server-wide ceilings no policy may exceed, whoever writes it (`ledge serve --max-timeout`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ceilings {
    /// The longest wall-clock time any request may run.
    pub max_timeout: Duration,
}

impl Default for Ceilings {
    fn default() -> Self {
        Ceilings { max_timeout: Duration::from_secs(300) }
    }
}

impl Policy {
    /// This policy with its built-in values brought under `ceilings` (the built-in 10 s timeout
    /// on a server started with `--max-timeout 2s` becomes 2 s): only values someone wrote are
    /// refused for exceeding a ceiling.
    pub fn within(mut self, ceilings: &Ceilings) -> Policy {
        self.timeout = self.timeout.min(ceilings.max_timeout);
        self
    }

    /// Refuses a policy past the server's ceilings; the message names the field and the flag.
    pub fn check_ceilings(&self, ceilings: &Ceilings) -> Result<(), String> {
        if self.schedules.len() > MAX_SCHEDULES {
            return Err(format!("schedule: at most {MAX_SCHEDULES} entries per function"));
        }
        if self.replicas > MAX_REPLICAS {
            return Err(format!("placement.replicas: at most {MAX_REPLICAS} (0 = every node)"));
        }
        if self.timeout > ceilings.max_timeout {
            return Err(format!(
                "limits.timeout of {:?} is above this server's ceiling of {:?} (ledge serve --max-timeout)",
                self.timeout, ceilings.max_timeout
            ));
        }
        Ok(())
    }

    /// The fields of `proposed` that let the function or its callers do more than `self`
    /// allows, as written in a policy file. Empty when `proposed` only tightens or keeps.
    pub fn widened_by(&self, proposed: &Policy) -> Vec<&'static str> {
        let sustained = |q: &RateQuota| (u128::from(q.quota), q.window.as_nanos().max(1));
        let (own, theirs) = (sustained(&self.rate), sustained(&proposed.rate));
        let checks: [(&'static str, bool); 14] = [
            ("route", proposed.routes.iter().any(|r| !self.routes.contains(r))),
            ("schedule", proposed.schedules.iter().any(|s| !self.schedules.contains(s))),
            ("public", proposed.public && !self.public),
            // quota / window compared without rounding: q' * w > q * w'.
            ("rate.quota", theirs.0 * own.1 > own.0 * theirs.1),
            ("rate.burst", proposed.rate.burst > self.rate.burst),
            ("limits.timeout", proposed.timeout > self.timeout),
            ("limits.memory", proposed.memory > self.memory),
            ("limits.max_body", proposed.max_body > self.max_body),
            ("limits.max_concurrency", proposed.max_concurrency > self.max_concurrency),
            ("outbound.allow", proposed.outbound_allow.iter().any(|h| !self.outbound_allow.contains(h))),
            ("kv.stores", proposed.kv_stores.iter().any(|s| !self.kv_stores.contains(s))),
            ("kv.max_bytes", proposed.kv_max_bytes > self.kv_max_bytes),
            ("kv.global_stores", proposed.kv_global_stores.iter().any(|s| !self.kv_global_stores.contains(s))),
            ("kv.scope", proposed.kv_scope != self.kv_scope),
        ];
        checks.into_iter().filter(|(_, widens)| *widens).map(|(field, _)| field).collect()
    }
}

/// A strictly positive integer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Positive(pub u32);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(d)?;
        match u32::try_from(value) {
            Ok(v) if v > 0 => Ok(Positive(v)),
            _ => Err(serde::de::Error::custom(format!("expected a positive integer, got {value}"))),
        }
    }
}

/// A duration written as `500ms`, `10s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(HumanDuration).map_err(serde::de::Error::custom)
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration `{text}`: expected a positive number with a unit, e.g. \"500ms\", \"10s\", \"5m\", \"1h\""
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    if duration.is_zero() { Err(bad()) } else { Ok(duration) }
}

/// A byte size written as `512KiB`, `64MiB`, `1GiB` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(0) => Err(serde::de::Error::custom("a size must be greater than zero")),
            Raw::Bytes(bytes) => Ok(ByteSize(bytes)),
            Raw::Text(text) => parse_size(&text).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("invalid size `{text}`: expected e.g. \"512KiB\", \"64MiB\", \"1GiB\"");
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let shift = match unit {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => return Err(bad()),
    };
    match number.checked_mul(1 << shift) {
        Some(bytes) if bytes > 0 => Ok(bytes),
        _ => Err(bad()),
    }
}

impl fmt::Display for RateQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} per {:?} (burst {})", self.quota, self.window, self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_fall_back_to_the_base_policy() {
        let base =
            PolicyFile::parse("public = true\n[limits]\ntimeout = \"2s\"\n").unwrap().resolve(&Policy::default());
        let own = PolicyFile::parse("[rate]\nquota = 5\nwindow = \"1s\"\n").unwrap().resolve(&base);
        assert!(own.public);
        assert_eq!(own.timeout, Duration::from_secs(2));
        assert_eq!(own.rate, RateQuota { quota: 5, window: Duration::from_secs(1), burst: 5 });
    }

    #[test]
    fn cluster_fields_resolve_and_bad_ones_are_named() {
        let text = "[kv]\nscope = \"global\"\nglobal_stores = [\"tally\"]\n[placement]\nreplicas = 2\n";
        let policy = PolicyFile::parse(text).unwrap().resolve(&Policy::default());
        assert_eq!(policy.kv_scope, KvScope::Global);
        assert_eq!(policy.kv_global_stores, ["tally"]);
        assert_eq!(policy.replicas, 2);
        assert_eq!(Policy::default().replicas, 0, "every node hosts every function by default");
        let scope = PolicyFile::parse("[kv]\nscope = \"planet\"\n").unwrap_err();
        assert!(scope.contains("scope") && scope.contains("planet"), "{scope}");
        let store = PolicyFile::parse("[kv]\nglobal_stores = [\"Bad/Name\"]\n").unwrap_err();
        assert!(store.contains("Bad/Name"), "{store}");
        let negative = PolicyFile::parse("[placement]\nreplicas = -1\n").unwrap_err();
        assert!(negative.contains("replicas"), "{negative}");
        let huge = PolicyFile::parse("[placement]\nreplicas = 5000\n").unwrap().resolve(&Policy::default());
        let ceilings = Ceilings { max_timeout: Duration::from_secs(300) };
        assert!(huge.check_ceilings(&ceilings).unwrap_err().contains("placement.replicas"));
        // A confined token cannot move a keyspace or grant a global store.
        let widened = Policy::default().widened_by(&policy);
        assert!(widened.contains(&"kv.scope") && widened.contains(&"kv.global_stores"), "{widened:?}");
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_field_and_line() {
        let unknown = PolicyFile::parse("public = true\n[limits]\ntimeuot = \"2s\"\n").unwrap_err();
        assert!(unknown.contains("timeuot") && unknown.contains("line 3"), "{unknown}");
        let bad = PolicyFile::parse("[limits]\nmemory = \"lots\"\n").unwrap_err();
        assert!(bad.contains("memory") && bad.contains("line 2") && bad.contains("lots"), "{bad}");
        let zero = PolicyFile::parse("[rate]\nquota = 0\n").unwrap_err();
        assert!(zero.contains("quota"), "{zero}");
    }

    #[test]
    fn the_record_section_defaults_to_failures_and_checks_its_fraction() {
        let resolved = PolicyFile::parse("").unwrap().resolve(&Policy::default());
        assert_eq!(
            resolved.record,
            RecordPolicy { errors: true, sample: 0.0, max_traces: 1000, max_trace_bytes: 64 << 20 }
        );
        let own = PolicyFile::parse("[record]\nsample = 0.25\nmax_traces = 5\n").unwrap().resolve(&resolved);
        assert_eq!((own.record.sample, own.record.max_traces, own.record.errors), (0.25, 5, true));
        let over = PolicyFile::parse("[record]\nsample = 1.5\n").unwrap_err();
        assert!(over.contains("sample") && over.contains("1.5"), "{over}");
        let unknown = PolicyFile::parse("[record]\nsamples = 0.5\n").unwrap_err();
        assert!(unknown.contains("samples"), "{unknown}");
    }

    #[test]
    fn sizes_and_durations_parse_with_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("1TB").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10").is_err());
    }
}
