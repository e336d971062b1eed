//! What the crash tests expect: the commits that installed, which of them were acknowledged,
//! and the check that a recovered state is a prefix of them that keeps every acknowledged one.

use crate::{Db, Isolation};
use std::collections::BTreeMap;

/// Keys and values of a database.
pub(super) type State = BTreeMap<Vec<u8>, Vec<u8>>;
/// A transaction's writes (last write per key; `None` deletes).
pub(super) type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The model of one round: from a recovered state, the commits made since.
#[derive(Debug, Default)]
pub(super) struct Model {
    base: State,
    commits: BTreeMap<u64, Writes>,
    /// Every commit at or below this stamp was acknowledged and must survive.
    acked: u64,
}

impl Model {
    /// A commit installed with `stamp` (acknowledged or not).
    pub(super) fn committed(&mut self, stamp: u64, writes: Writes) {
        if !writes.is_empty() {
            self.commits.insert(stamp, writes);
        }
    }

    /// Every commit up to `stamp` is acknowledged. (Only a write commit's acknowledgement says
    /// so: a read-only one waits for its snapshot, not for its stamp.)
    pub(super) fn ack(&mut self, stamp: u64) {
        self.acked = self.acked.max(stamp);
    }

    /// The newest stamp handed out so far (a flush covers everything up to it).
    pub(super) fn newest(&self) -> u64 {
        self.commits.keys().next_back().copied().unwrap_or(0)
    }

    /// Checks that `recovered` is the state after a prefix of the commits (in stamp order) that
    /// includes every acknowledged one; then starts the next round from it.
    pub(super) fn check_and_rebase(&mut self, recovered: State) -> Result<(), String> {
        let required = self.commits.range(..=self.acked).next_back().map_or(0, |(s, _)| *s);
        let mut state = self.base.clone();
        let mut matched = required == 0 && state == recovered;
        for (&stamp, writes) in &self.commits {
            for (k, v) in writes {
                match v {
                    Some(v) => state.insert(k.clone(), v.clone()),
                    None => state.remove(k),
                };
            }
            matched |= stamp >= required && state == recovered;
        }
        if !matched {
            let lost: Vec<&u64> = self.commits.keys().filter(|s| **s <= self.acked).collect();
            return Err(format!(
                "the recovered state is no prefix of the commits that keeps the acknowledged ones \
                 (acknowledged up to stamp {}; commits {lost:?} of {}):\n  recovered {}\n  all commits {}",
                self.acked,
                self.commits.len(),
                show(&recovered),
                show(&state),
            ));
        }
        *self = Model { base: recovered, ..Model::default() };
        Ok(())
    }
}

fn show(state: &State) -> String {
    let entries: Vec<String> =
        state.iter().map(|(k, v)| format!("{}={}b", String::from_utf8_lossy(k), v.len())).collect();
    entries.join(" ")
}

/// Everything the database holds, read in one snapshot.
pub(super) fn read_all(db: &Db) -> State {
    let mut tx = db.begin(Isolation::Snapshot);
    tx.scan(b"", b"", usize::MAX).expect("a full scan of a small database").into_iter().collect()
}
