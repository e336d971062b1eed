//! The policy as written in a file ([`PolicyFile`], every field optional) and its sections,
//! parsed strictly and resolved over a base policy into a complete [`Policy`].
//!
//! Invariants: unknown fields are errors (`deny_unknown_fields` on every section), and every
//! value is checked as it is parsed (the types in `values.rs`), so resolving cannot fail: a
//! field left out takes the base's value.

use serde::Deserialize;

use super::{
    ByteSize, CeilingsSection, Consumer, Count, CronPattern, Fraction, HostPattern, HumanDuration, KvScope, Policy,
    Positive, QueueName, RateQuota, RecordPolicy, Route, RoutePrefix, SchedulePath, StoreName, WebSocketEntry,
};

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
    pub queues: Option<QueuesSection>,
    pub consumer: Option<Vec<ConsumerEntry>>,
    pub websocket: Option<Vec<WebSocketEntry>>,
    /// Only in the operator's `policies/default.toml`: what uploaded policies may set at most.
    pub ceilings: Option<CeilingsSection>,
}

/// `[[route]]`: requests for this host (exact, or `*.example.com` for any subdomain; omitted:
/// any host) under this path prefix are served by the function without `/fn/NAME/`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    pub host: Option<HostPattern>,
    pub path: Option<RoutePrefix>,
}

/// `[[schedule]]`: a synthetic `GET path` sent to the function on a cron schedule (UTC).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleEntry {
    pub cron: CronPattern,
    pub path: SchedulePath,
}

/// `[queues]`: the queues the function may send to, and which of them live in etcd.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuesSection {
    pub send: Option<Vec<QueueName>>,
    pub global: Option<Vec<QueueName>>,
}

/// `[[consumer]]`: the function takes the messages of `queue`, each as a `POST path`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerEntry {
    pub queue: QueueName,
    pub path: SchedulePath,
    pub max_attempts: Option<Positive>,
    pub backoff: Option<HumanDuration>,
    pub dead_letter: Option<QueueName>,
    pub concurrency: Option<Positive>,
    pub max_depth: Option<Positive>,
    pub max_bytes: Option<ByteSize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionsSection {
    pub keep: Option<Positive>,
    pub max_bytes: Option<ByteSize>,
}

/// `[record]`: which runs are kept for replay, and how many per function.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSection {
    pub errors: Option<bool>,
    pub sample: Option<Fraction>,
    pub max_traces: Option<Positive>,
    pub max_trace_bytes: Option<ByteSize>,
    pub keep_sample: Option<Count>,
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

/// `[placement]` (cluster mode): how many nodes host the function; 0 = every node.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementSection {
    pub replicas: Option<u32>,
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
            versions_max_bytes: self
                .versions
                .as_ref()
                .and_then(|v| v.max_bytes)
                .map_or(base.versions_max_bytes, |b| b.0),
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
                    keep_sample: section.keep_sample.map_or(base.record.keep_sample, |n| n.0),
                }
            },
            queues_send: names_or(self.queues.as_ref().and_then(|q| q.send.as_ref()), &base.queues_send),
            queues_global: names_or(self.queues.as_ref().and_then(|q| q.global.as_ref()), &base.queues_global),
            consumers: self
                .consumer
                .as_ref()
                .map_or_else(|| base.consumers.clone(), |entries| entries.iter().map(ConsumerEntry::resolve).collect()),
            websockets: self.websocket.as_ref().map_or_else(
                || base.websockets.clone(),
                |entries| entries.iter().map(WebSocketEntry::resolve).collect(),
            ),
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

/// The names a section lists, or the base's when it lists none.
fn names_or(names: Option<&Vec<QueueName>>, base: &[String]) -> Vec<String> {
    names.map_or_else(|| base.to_vec(), |names| names.iter().map(|name| name.0.clone()).collect())
}

impl ConsumerEntry {
    fn resolve(&self) -> Consumer {
        let defaults = Consumer::defaults(&self.queue.0, &self.path.0);
        Consumer {
            max_attempts: self.max_attempts.map_or(defaults.max_attempts, |n| n.0),
            backoff: self.backoff.map_or(defaults.backoff, |d| d.0),
            dead_letter: self.dead_letter.as_ref().map(|name| name.0.clone()),
            concurrency: self.concurrency.map_or(defaults.concurrency, |n| n.0),
            max_depth: self.max_depth.map_or(defaults.max_depth, |n| n.0),
            max_bytes: self.max_bytes.map_or(defaults.max_bytes, |b| b.0),
            ..defaults
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::access::policy::Ceilings;

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
            RecordPolicy { errors: true, sample: 0.0, max_traces: 1000, max_trace_bytes: 64 << 20, keep_sample: 20 }
        );
        let own = PolicyFile::parse("[record]\nsample = 0.25\nmax_traces = 5\n").unwrap().resolve(&resolved);
        assert_eq!((own.record.sample, own.record.max_traces, own.record.errors), (0.25, 5, true));
        let over = PolicyFile::parse("[record]\nsample = 1.5\n").unwrap_err();
        assert!(over.contains("sample") && over.contains("1.5"), "{over}");
        let unknown = PolicyFile::parse("[record]\nsamples = 0.5\n").unwrap_err();
        assert!(unknown.contains("samples"), "{unknown}");
        // keep_sample: 0 keeps no corpus; a negative count names the field.
        let none = PolicyFile::parse("[record]\nkeep_sample = 0\n").unwrap().resolve(&resolved);
        assert_eq!((none.record.keep_sample, none.record.max_traces), (0, 1000));
        let negative = PolicyFile::parse("[record]\nkeep_sample = -1\n").unwrap_err();
        assert!(negative.contains("keep_sample") && negative.contains("-1"), "{negative}");
    }

    #[test]
    fn keep_sample_widens_when_raised_and_is_held_to_its_ceiling() {
        let base = Policy::default();
        let more = PolicyFile::parse("[record]\nkeep_sample = 50\n").unwrap().resolve(&base);
        assert_eq!(base.widened_by(&more), ["record.keep_sample"], "a larger corpus keeps more users' data");
        let fewer = PolicyFile::parse("[record]\nkeep_sample = 0\n").unwrap().resolve(&base);
        assert!(base.widened_by(&fewer).is_empty(), "keeping fewer only tightens");
        assert_eq!(fewer.widened_by(&base), ["record.keep_sample"]);
        // The built-in ceiling (200) takes the default and refuses more, naming the key.
        let ceilings = crate::access::policy::UploadCeilings::default();
        assert!(base.check_upload_ceilings(&ceilings).is_ok());
        let over = PolicyFile::parse("[record]\nkeep_sample = 201\n").unwrap().resolve(&base);
        let error = over.check_upload_ceilings(&ceilings).unwrap_err();
        assert!(
            error.contains("record.keep_sample = 201") && error.contains("[ceilings] record_keep_sample"),
            "{error}"
        );
        // An operator may allow no corpus at all in uploads.
        let none =
            PolicyFile::parse("[ceilings]\nrecord_keep_sample = 0\n").unwrap().ceilings.unwrap().resolve().unwrap();
        assert_eq!(none.record_keep_sample, 0);
        assert!(fewer.check_upload_ceilings(&none).is_ok() && base.check_upload_ceilings(&none).is_err());
    }

    #[test]
    fn queues_and_consumers_resolve_with_defaults_and_widen_when_added() {
        let text = "[queues]\nsend = [\"orders\"]\n[[consumer]]\nqueue = \"orders\"\npath = \"/jobs/order\"\nbackoff = \"2s\"\ndead_letter = \"orders-dlq\"\n";
        let policy = PolicyFile::parse(text).unwrap().resolve(&Policy::default());
        assert_eq!(policy.queues_send, ["orders"]);
        let consumer = &policy.consumers[0];
        assert_eq!((consumer.max_attempts, consumer.concurrency, consumer.max_depth), (5, 4, 10_000));
        assert_eq!(consumer.dead_letter.as_deref(), Some("orders-dlq"));
        assert_eq!(consumer.backoff_after(1), Duration::from_secs(2));
        assert_eq!(consumer.backoff_after(3), Duration::from_secs(8));
        assert_eq!(consumer.backoff_after(40), Duration::from_secs(600), "capped at ten minutes");
        let widened = Policy::default().widened_by(&policy);
        assert!(widened.contains(&"queues.send") && widened.contains(&"consumer"), "{widened:?}");
        // Dropping a consumer or a queue only tightens; raising a consumer's bounds widens.
        assert!(policy.widened_by(&Policy::default()).is_empty());
        let mut faster = policy.clone();
        faster.consumers[0].concurrency = 64;
        assert_eq!(policy.widened_by(&faster), ["consumer"]);
        let mut sooner = policy.clone();
        sooner.consumers[0].backoff = Duration::from_millis(100);
        assert_eq!(policy.widened_by(&sooner), ["consumer"]);
        let mut elsewhere = policy.clone();
        elsewhere.consumers[0].dead_letter = None;
        assert_eq!(policy.widened_by(&elsewhere), ["consumer"]);
        let mut narrower = policy.clone();
        narrower.consumers[0].concurrency = 1;
        narrower.consumers[0].max_attempts = 2;
        assert!(policy.widened_by(&narrower).is_empty(), "lowering a consumer's bounds only tightens");
        let bad = PolicyFile::parse("[[consumer]]\nqueue = \"Orders\"\npath = \"/x\"\n").unwrap_err();
        assert!(bad.contains("Orders"), "{bad}");
        let no_path = PolicyFile::parse("[[consumer]]\nqueue = \"orders\"\n").unwrap_err();
        assert!(no_path.contains("path"), "{no_path}");
    }

    #[test]
    fn consumers_are_held_to_the_ceilings() {
        let ceilings = Ceilings { max_timeout: Duration::from_secs(300) };
        let twice = "[[consumer]]\nqueue = \"a\"\npath = \"/x\"\n[[consumer]]\nqueue = \"a\"\npath = \"/y\"\n";
        let error =
            PolicyFile::parse(twice).unwrap().resolve(&Policy::default()).check_ceilings(&ceilings).unwrap_err();
        assert!(error.contains("consumed twice"), "{error}");
        let itself = "[[consumer]]\nqueue = \"a\"\npath = \"/x\"\ndead_letter = \"a\"\n";
        let error =
            PolicyFile::parse(itself).unwrap().resolve(&Policy::default()).check_ceilings(&ceilings).unwrap_err();
        assert!(error.contains("dead_letter"), "{error}");
        let deep = "[[consumer]]\nqueue = \"a\"\npath = \"/x\"\nmax_depth = 100001\n";
        let policy = PolicyFile::parse(deep).unwrap().resolve(&Policy::default());
        let error = policy.check_upload_ceilings(&crate::access::policy::UploadCeilings::default()).unwrap_err();
        assert!(error.contains("consumer.max_depth") && error.contains("queue_max_depth"), "{error}");
    }
}
