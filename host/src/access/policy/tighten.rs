//! The tighten check: which fields of a proposed policy would let the function or its callers
//! do more than the current one ([`Policy::widened_by`]), for confined tokens that may only
//! tighten a policy.
//!
//! Invariants: every field is compared (a new field must join the list: its length is fixed),
//! and a rate is compared as quota per window without rounding, so a change that widens
//! anything is never reported as tightening. Claiming a route, adding a schedule, a consumer
//! or a WebSocket entry, or raising a consumer's or an entry's bounds widens.

use super::{Consumer, Policy, RateQuota};

impl Policy {
    /// The fields of `proposed` that let the function or its callers do more than `self`
    /// allows, as written in a policy file. Empty when `proposed` only tightens or keeps.
    pub fn widened_by(&self, proposed: &Policy) -> Vec<&'static str> {
        let sustained = |q: &RateQuota| (u128::from(q.quota), q.window.as_nanos().max(1));
        let (own, theirs) = (sustained(&self.rate), sustained(&proposed.rate));
        // 0 replicas is every node: the most a placement can ask for.
        let nodes = |replicas: u32| if replicas == 0 { u32::MAX } else { replicas };
        let checks: [(&'static str, bool); 26] = [
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
            // Recording and keeping runs and versions costs the node memory and disk.
            ("record.errors", proposed.record.errors && !self.record.errors),
            ("record.sample", proposed.record.sample > self.record.sample),
            ("record.max_traces", proposed.record.max_traces > self.record.max_traces),
            ("record.max_trace_bytes", proposed.record.max_trace_bytes > self.record.max_trace_bytes),
            // A larger corpus keeps more users' requests.
            ("record.keep_sample", proposed.record.keep_sample > self.record.keep_sample),
            ("versions.keep", proposed.versions_keep > self.versions_keep),
            ("versions.max_bytes", proposed.versions_max_bytes > self.versions_max_bytes),
            ("placement.replicas", nodes(proposed.replicas) > nodes(self.replicas)),
            ("queues.send", proposed.queues_send.iter().any(|q| !self.queues_send.contains(q))),
            // Moving a queue between the node and etcd changes where its messages live.
            ("queues.global", proposed.queues_global != self.queues_global),
            // A consumer takes messages, runs the function and sizes its queue: a new one widens,
            // and so does raising any of its bounds or moving where its messages go.
            ("consumer", proposed.consumers.iter().any(|c| !self.consumers.iter().any(|own| c.within(own)))),
            // A WebSocket entry holds connections open on the node and runs the function per
            // message: a new one widens, and so does raising any of its bounds.
            ("websocket", proposed.websockets.iter().any(|w| !self.websockets.iter().any(|own| w.within(own)))),
        ];
        checks.into_iter().filter(|(_, widens)| *widens).map(|(field, _)| field).collect()
    }
}

impl Consumer {
    /// Whether this consumer asks for no more than `own`: the same queue, path and dead-letter
    /// queue, no more attempts, deliveries at once or room, and no shorter backoff.
    fn within(&self, own: &Consumer) -> bool {
        self.queue == own.queue
            && self.path == own.path
            && self.dead_letter == own.dead_letter
            && self.max_attempts <= own.max_attempts
            && self.backoff >= own.backoff
            && self.concurrency <= own.concurrency
            && self.max_depth <= own.max_depth
            && self.max_bytes <= own.max_bytes
    }
}
