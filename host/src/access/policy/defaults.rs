//! The built-in defaults: what every policy field falls back to when neither the function's
//! policy file nor `policies/default.toml` sets it.
//!
//! Invariants: the defaults are a complete, valid policy within the default [`super::Ceilings`],
//! private (`public: false`) and granting nothing (no outbound hosts, no shared stores).

use std::time::Duration;

use super::{KvScope, Policy, RateQuota, RecordPolicy};

impl Default for RecordPolicy {
    fn default() -> Self {
        RecordPolicy { errors: true, sample: 0.0, max_traces: 1000, max_trace_bytes: 64 << 20, keep_sample: 20 }
    }
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
            // Ten versions of an 18 MB Python component fit.
            versions_max_bytes: 256 << 20,
            schedules: Vec::new(),
            routes: Vec::new(),
            record: RecordPolicy::default(),
            queues_send: Vec::new(),
            queues_global: Vec::new(),
            consumers: Vec::new(),
            websockets: Vec::new(),
        }
    }
}
