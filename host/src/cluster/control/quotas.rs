//! The quotas of global keyspaces, whose bytes `guest_kv::global` counts in etcd: a function's
//! own keyspace (`f/NAME/`) is held to its effective `[kv] max_bytes` on this node, as its
//! local keyspace is; a global shared store (`s/STORE/`) to the largest `max_bytes` among the
//! functions here whose policy grants it (any of them may write to it); a global queue
//! (`q/QUEUE/`) to its consumer's `max_bytes` when its consumer is here, else to the default
//! bound. Any other keyspace that no function here owns or is granted may not grow.

use std::sync::{Arc, Weak};

use crate::guest_kv::global::GlobalStore;
use crate::registry::Registry;

/// Gives `store` its keyspaces' quotas from the effective policies in `registry`.
pub fn serve_quotas(store: &GlobalStore, registry: &Arc<Registry>) {
    let registry = Arc::downgrade(registry);
    store.set_quotas(move |keyspace| quota_of(&registry, keyspace));
}

fn quota_of(registry: &Weak<Registry>, keyspace: &[u8]) -> u64 {
    let Some(registry) = registry.upgrade() else { return 0 };
    let Some((kind, name)) = std::str::from_utf8(keyspace).ok().and_then(|k| k.strip_suffix('/')?.split_once('/'))
    else {
        return 0;
    };
    match kind {
        "f" => registry.lookup(name).map_or(0, |deployment| deployment.policy.kv_max_bytes),
        "s" => registry
            .list()
            .iter()
            .filter_map(|meta| registry.lookup(&meta.name))
            .filter(|deployment| deployment.policy.kv_global_stores.iter().any(|granted| granted == name))
            .map(|deployment| deployment.policy.kv_max_bytes)
            .max()
            .unwrap_or(0),
        // Only queues some function lists as global are ever written (guests send to the queues
        // their policy lists; HTTP sends go to etcd only for those): the consumer's bound when it
        // is here, else the default.
        "q" => registry
            .consumer_of(name)
            .map_or_else(|| crate::queue::Bounds::default().max_bytes, |(_, consumer)| consumer.max_bytes),
        _ => 0,
    }
}
