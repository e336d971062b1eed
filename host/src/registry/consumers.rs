//! Queue consumers (policy `[[consumer]]`): which deployed function takes each queue's
//! messages; and which queues live in etcd (`[queues] global`).
//!
//! Invariants: a queue has at most one consumer on a node; a policy that would consume a queue
//! another deployed function consumes is refused (409), so no function can take another's
//! messages by naming its queue; and every function naming a queue agrees whether it is global.

use super::{PolicyError, Registry};
use crate::access::policy::{Consumer, Policy};

impl Registry {
    /// Every deployed function's consumers: `(function, consumer)`, by function name.
    pub fn consumers(&self) -> Vec<(String, Consumer)> {
        let live = self.live.read().expect("registry lock poisoned");
        let mut consumers: Vec<(String, Consumer)> = live
            .values()
            .flat_map(|deployment| {
                deployment.policy.consumers.iter().map(|consumer| (deployment.meta.name.clone(), consumer.clone()))
            })
            .collect();
        consumers.sort_by(|a, b| a.0.cmp(&b.0));
        consumers
    }

    /// The consumer of `queue`, if a deployed function consumes it (the first by name).
    pub fn consumer_of(&self, queue: &str) -> Option<(String, Consumer)> {
        let live = self.live.read().expect("registry lock poisoned");
        live.values()
            .flat_map(|deployment| {
                deployment.policy.consumers.iter().map(|consumer| (deployment.meta.name.clone(), consumer))
            })
            .filter(|(_, consumer)| consumer.queue == queue)
            .min_by(|a, b| a.0.cmp(&b.0))
            .map(|(name, consumer)| (name, consumer.clone()))
    }

    /// The queues a deployed function lists as global (`[queues] global`), by name.
    pub fn global_queues(&self) -> Vec<String> {
        let live = self.live.read().expect("registry lock poisoned");
        let mut names: Vec<String> =
            live.values().flat_map(|deployment| deployment.policy.queues_global.iter().cloned()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Refuses `policy` for `name` when another function consumes one of the queues it
    /// consumes, or names a queue it names as global (`[queues] global`) while this one does not,
    /// or the other way round: a queue lives in one place, and every sender and its consumer
    /// must agree where.
    pub(super) fn check_queues(&self, name: &str, policy: &Policy) -> Result<(), PolicyError> {
        for (holder, held) in self.consumers() {
            if holder != name && policy.consumers.iter().any(|consumer| consumer.queue == held.queue) {
                return Err(PolicyError::Conflict(format!(
                    "queue `{}` is consumed by function `{holder}`; remove its [[consumer]] there first",
                    held.queue
                )));
            }
        }
        let live = self.live.read().expect("registry lock poisoned");
        for other in live.values().filter(|deployment| deployment.meta.name != name) {
            let theirs = &other.policy;
            let shared = queues_named(policy).into_iter().find(|queue| {
                queues_named(theirs).contains(queue)
                    && policy.queues_global.contains(queue) != theirs.queues_global.contains(queue)
            });
            if let Some(queue) = shared {
                let (global, local) = match policy.queues_global.contains(&queue) {
                    true => ("this policy", format!("function `{}`'s", other.meta.name)),
                    false => (&*format!("function `{}`'s policy", other.meta.name), "this one's".to_string()),
                };
                return Err(PolicyError::Conflict(format!(
                    "queue `{queue}` is global ([queues] global) in {global} but not in {local}: a queue lives in one place, so list it the same way in both"
                )));
            }
        }
        Ok(())
    }
}

/// Every queue a policy sends to, consumes or dead-letters to.
fn queues_named(policy: &Policy) -> Vec<String> {
    let consumed = policy.consumers.iter().flat_map(|c| std::iter::once(c.queue.clone()).chain(c.dead_letter.clone()));
    policy.queues_send.iter().cloned().chain(consumed).collect()
}
