//! Write budgets: the bytes open transactions buffer for writing live in host memory, outside
//! the guest's `[limits] memory`, so they are held to two budgets: one per instance (all of its
//! open transactions together, [`INSTANCE_WRITE_BUDGET`]) and one per node (all instances
//! together, `ledge serve --kv-write-buffers`). Past either a write is a guest-visible `limit`
//! error that names the budget.
//!
//! Invariants:
//! - a write is charged to both budgets before it is buffered; a refused one takes nothing;
//! - a [`Charge`] belongs to one transaction and gives back all it holds when dropped, which is
//!   when the transaction commits, rolls back, or goes away with its instance (trap, timeout);
//! - the counters are atomics: instances on other threads charge the node's budget at once,
//!   and it never goes past its limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes the open transactions of one instance may buffer together: the engine's bound for
/// one transaction, so one transaction may still use it whole.
pub const INSTANCE_WRITE_BUDGET: u64 = 16 << 20;

/// A budget of bytes, shared by whoever charges it.
#[derive(Debug)]
pub struct Pool {
    used: AtomicU64,
    limit: u64,
}

impl Pool {
    pub fn new(limit: u64) -> Arc<Pool> {
        Arc::new(Pool { used: AtomicU64::new(0), limit })
    }

    /// Bytes charged now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Takes `bytes` unless that would pass the limit.
    fn take(&self, bytes: u64) -> bool {
        let grown = |used: u64| used.checked_add(bytes).filter(|&total| total <= self.limit);
        self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, grown).is_ok()
    }

    fn give(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// The budgets one instance's transactions draw on: its own, and the node's.
#[derive(Debug, Clone)]
pub struct WriteBudget {
    instance: Arc<Pool>,
    node: Arc<Pool>,
}

impl WriteBudget {
    /// A fresh instance's budget, drawing on the node's `node`.
    pub fn for_instance(node: &Arc<Pool>) -> Self {
        WriteBudget { instance: Pool::new(INSTANCE_WRITE_BUDGET), node: node.clone() }
    }

    /// What one transaction holds of it: nothing yet.
    pub fn charge(&self) -> Charge {
        Charge { budget: self.clone(), bytes: 0 }
    }
}

/// The bytes one transaction holds of its instance's and its node's budgets.
#[derive(Debug)]
pub struct Charge {
    budget: WriteBudget,
    bytes: u64,
}

impl Charge {
    /// Grows what this transaction holds to `bytes`, or says which budget refused (and then
    /// holds what it held before).
    pub fn grow_to(&mut self, bytes: u64) -> Result<(), String> {
        let Some(more) = bytes.checked_sub(self.bytes).filter(|&more| more > 0) else { return Ok(()) };
        let WriteBudget { instance, node } = &self.budget;
        if !instance.take(more) {
            return Err(format!(
                "the open transactions of one instance may buffer at most {} of writes in all (the per-instance \
                 write budget); commit or roll back some first",
                show_size(instance.limit)
            ));
        }
        if !node.take(more) {
            instance.give(more);
            return Err(format!(
                "the node's write buffers are full: the open transactions of all instances may buffer at most {} \
                 (ledge serve --kv-write-buffers); try again later",
                show_size(node.limit)
            ));
        }
        self.bytes = bytes;
        Ok(())
    }

    /// Gives back what this transaction holds beyond `bytes`.
    pub fn shrink_to(&mut self, bytes: u64) {
        if let Some(less) = self.bytes.checked_sub(bytes).filter(|&less| less > 0) {
            self.budget.instance.give(less);
            self.budget.node.give(less);
            self.bytes = bytes;
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

/// `bytes` for a person: in MiB or KiB where it is a whole number of them.
fn show_size(bytes: u64) -> String {
    match bytes {
        0 => "0 bytes".into(),
        b if b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_instances_transactions_share_its_budget_and_give_it_back() {
        let node = Pool::new(64 << 20);
        let budget = WriteBudget::for_instance(&node);
        let (mut first, mut second) = (budget.charge(), budget.charge());
        first.grow_to(10 << 20).unwrap();
        let refused = second.grow_to(7 << 20).unwrap_err();
        assert!(refused.contains("per-instance") && refused.contains("16 MiB"), "{refused}");
        second.grow_to(6 << 20).unwrap();
        assert_eq!(node.used(), 16 << 20);
        // A transaction that buffers less (an overwrite) gives the difference back.
        first.shrink_to(4 << 20);
        assert_eq!(node.used(), 10 << 20);
        drop(first);
        second.grow_to(16 << 20).unwrap();
        drop(second);
        assert_eq!(node.used(), 0);
        assert_eq!(budget.instance.used(), 0);
    }

    #[test]
    fn the_node_bounds_all_instances_together() {
        let node = Pool::new(20 << 20);
        let (one, two) = (WriteBudget::for_instance(&node), WriteBudget::for_instance(&node));
        let mut held = one.charge();
        held.grow_to(15 << 20).unwrap();
        let mut refused = two.charge();
        let why = refused.grow_to(6 << 20).unwrap_err();
        assert!(why.contains("--kv-write-buffers") && why.contains("20 MiB"), "{why}");
        // The refusal took nothing from the instance's own budget.
        assert_eq!((two.instance.used(), node.used()), (0, 15 << 20));
        refused.grow_to(5 << 20).unwrap();
        drop(held);
        drop(refused);
        assert_eq!(node.used(), 0);
    }

    #[test]
    fn sizes_show_in_whole_units() {
        assert_eq!(show_size(256 << 20), "256 MiB");
        assert_eq!(show_size(1000), "1000 bytes");
    }
}
