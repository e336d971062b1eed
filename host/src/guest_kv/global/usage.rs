//! Storage accounting of global data: a function's `[kv] max_bytes` holds for its keyspaces in
//! etcd as it holds in the engine, and `--global-kv-max-bytes` bounds all global data, so that
//! no guest can fill etcd's own quota (past which etcd refuses every write: deploys and
//! revocations included).
//!
//! Beside the data, etcd keeps one usage key per keyspace (`/ledge/kv-usage/f/NAME/`,
//! `/ledge/kv-usage/s/STORE/`): the bytes the keyspace holds (key plus value per entry, as the
//! engine counts them), and the bytes it has reserved of the ceiling; and the sum of every
//! reservation (`/ledge/kv-usage/total`). A commit that changes a keyspace's bytes rewrites its
//! usage key in the same etcd transaction, compared on the `mod_revision` it was read at, so
//! usage is exact whatever commits race. Reservations grow and shrink by [`RESERVE_CHUNK`]s, so
//! the total changes (and is compared) only when one does: commits to different keyspaces do
//! not contend on it.
//!
//! Invariants: a commit that grows a keyspace past its quota, or the reservations past the
//! ceiling, is refused with a `limit` error naming the bound, decided on usage read from etcd
//! for that commit; one that shrinks a keyspace or keeps its size always goes through; one that
//! changes no keyspace's bytes (a same-size overwrite) touches no usage key. Data written before
//! a keyspace's usage key existed is not counted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::OnceLock;

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse, TxnResponse};
use serde::{Deserialize, Serialize};

use super::{GlobalError, GlobalStore, GlobalTx, conflict, entry_bytes, etcd_key, keyspace};
use crate::etcd::Retry;

/// Where usage keys live: this prefix, then the keyspace (`f/NAME/`, `s/STORE/`).
const USAGE_PREFIX: &str = "/ledge/kv-usage/";

/// The sum of every keyspace's reservation (no keyspace is named `total`: they end in `/`).
const TOTAL_KEY: &str = "/ledge/kv-usage/total";

/// Reservations are whole chunks of this many bytes (with one chunk of headroom when there is
/// room), and given back a chunk at a time.
const RESERVE_CHUNK: u64 = 64 << 10;

/// Keyspaces one transaction may write to (one in practice: the keyspace it began on).
const MAX_KEYSPACES: usize = 4;

/// Usage keys remembered at most (more: the memory starts over).
const REMEMBERED: usize = 4096;

/// A keyspace's usage key (the total's too: then `bytes` is unused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Usage {
    bytes: u64,
    reserved: u64,
}

type QuotaOf = Box<dyn Fn(&[u8]) -> u64 + Send + Sync>;

/// The node's side of the accounting.
pub(super) struct Accounts {
    max_total: u64,
    quota_of: OnceLock<QuotaOf>,
    /// Usage keys as last read or written, with their `mod_revision` (0: absent). A commit is
    /// planned on these; a stale one fails the commit's compare and is read back.
    seen: parking_lot::Mutex<HashMap<Vec<u8>, (Usage, i64)>>,
}

/// A commit's part in the accounting, nested in its etcd transaction.
#[derive(Default)]
pub(super) struct Plan {
    pub(super) compares: Vec<Compare>,
    pub(super) puts: Vec<TxnOp>,
    /// Reads of the usage keys involved, run when a compare fails.
    pub(super) rereads: Vec<TxnOp>,
    pub(super) reread_keys: Vec<Vec<u8>>,
    /// The usage keys the commit writes, with their new values.
    written: Vec<(Vec<u8>, Usage)>,
}

/// What a commit stands on: the revision its compares check against, and by how many bytes it
/// changes each keyspace it writes to.
pub(super) struct Before {
    pub(super) base: i64,
    /// The base was fixed at commit (the transaction read nothing).
    pub(super) blind: bool,
    pub(super) deltas: BTreeMap<Vec<u8>, i64>,
    /// The `mod_revision` (0: absent) of each written key the transaction had not read, as read
    /// here: the commit requires it unchanged, so that the bytes it replaces are those counted.
    pub(super) seen: BTreeMap<Vec<u8>, i64>,
}

fn usage_key(keyspace: &[u8]) -> Vec<u8> {
    [USAGE_PREFIX.as_bytes(), keyspace].concat()
}

/// The first key-value of each `get` in a transaction's answer: its value and `mod_revision`.
fn gets(response: &TxnResponse) -> Vec<Option<(Vec<u8>, i64)>> {
    let ops = response.op_responses().into_iter();
    ops.filter_map(|op| match op {
        TxnOpResponse::Get(get) => Some(get.kvs().first().map(|kv| (kv.value().to_vec(), kv.mod_revision()))),
        _ => None,
    })
    .collect()
}

impl GlobalTx {
    /// Reads what the commit needs and the transaction did not read: the bytes of each key it
    /// writes as of its base (fixing the base of a transaction that read nothing), with the
    /// usage of its keyspaces in the same read.
    pub(super) async fn prepare(&self) -> Result<Before, GlobalError> {
        let keyspaces: BTreeSet<&[u8]> = self.writes.keys().map(|key| keyspace(key)).collect();
        if keyspaces.len() > MAX_KEYSPACES {
            return Err(GlobalError::Limit(format!(
                "a global transaction writes to at most {MAX_KEYSPACES} keyspaces"
            )));
        }
        let mut sizes: BTreeMap<&[u8], u64> = BTreeMap::new();
        let mut unknown = Vec::new();
        for key in self.writes.keys() {
            match self.sizes.get(key).filter(|_| self.base.is_some()) {
                Some(size) => _ = sizes.insert(key, *size),
                None => unknown.push(key.as_slice()),
            }
        }
        let (mut base, mut seen) = (self.base, BTreeMap::new());
        if !unknown.is_empty() {
            let usage_keys: Vec<Vec<u8>> =
                keyspaces.iter().map(|k| usage_key(k)).chain([TOTAL_KEY.as_bytes().to_vec()]).collect();
            let reads = unknown.iter().map(|key| etcd_key(key)).chain(usage_keys.iter().cloned());
            let txn = Txn::new().and_then(reads.map(|key| TxnOp::get(key, None)).collect::<Vec<_>>());
            let response = self.store.etcd.txn(Retry::Any, txn).await?;
            let at = *base.get_or_insert(response.header().map_or(0, |h| h.revision()));
            let found = gets(&response);
            for (key, kv) in unknown.iter().zip(&found) {
                if kv.as_ref().is_some_and(|(_, mod_revision)| *mod_revision > at) {
                    return Err(conflict());
                }
                sizes.insert(key, entry_bytes(key, kv.as_ref().map(|(value, _)| value.as_slice())));
                seen.insert(key.to_vec(), kv.as_ref().map_or(0, |(_, mod_revision)| *mod_revision));
            }
            self.store.accounts.note(&usage_keys, &found[unknown.len().min(found.len())..]);
        }
        let mut deltas: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
        for (key, value) in &self.writes {
            let after = entry_bytes(key, value.as_deref()) as i64;
            let before = sizes.get(key.as_slice()).copied().unwrap_or(0) as i64;
            *deltas.entry(keyspace(key).to_vec()).or_default() += after - before;
        }
        Ok(Before { base: base.unwrap_or(0), blind: self.base.is_none(), deltas, seen })
    }
}

impl GlobalStore {
    /// Reads the usage of the keyspaces `deltas` changes, and the total, from etcd.
    pub(super) async fn reread(&self, deltas: &BTreeMap<Vec<u8>, i64>) -> Result<(), GlobalError> {
        let changed = deltas.iter().filter(|(_, delta)| **delta != 0).map(|(keyspace, _)| usage_key(keyspace));
        let keys: Vec<Vec<u8>> = changed.chain([TOTAL_KEY.as_bytes().to_vec()]).collect();
        let txn = Txn::new().and_then(keys.iter().map(|key| TxnOp::get(key.clone(), None)).collect::<Vec<_>>());
        let response = self.etcd.txn(Retry::Any, txn).await?;
        self.accounts.note(&keys, &gets(&response));
        Ok(())
    }
}

impl Accounts {
    pub(super) fn new(max_total: u64) -> Accounts {
        Accounts { max_total, quota_of: OnceLock::new(), seen: Default::default() }
    }

    pub(super) fn set_quotas(&self, quota_of: QuotaOf) {
        if self.quota_of.set(quota_of).is_err() {
            tracing::warn!("the quotas of global keyspaces were set twice; the first holds");
        }
    }

    /// Plans the accounting of a commit that changes each keyspace by `deltas` bytes, on the
    /// usage last seen; refuses one that grows a keyspace past its quota or the reservations
    /// past the ceiling.
    pub(super) fn plan(&self, deltas: &BTreeMap<Vec<u8>, i64>) -> Result<Plan, GlobalError> {
        let seen = self.seen.lock();
        let (total, total_revision) = seen.get(TOTAL_KEY.as_bytes()).copied().unwrap_or_default();
        let mut reserved = total.reserved;
        let mut plan = Plan::default();
        for (keyspace, delta) in deltas.iter().filter(|(_, delta)| **delta != 0) {
            let key = usage_key(keyspace);
            let (usage, revision) = seen.get(&key).copied().unwrap_or_default();
            let quota = self.quota_of.get().map_or(0, |quota_of| quota_of(keyspace));
            let next = settle(usage, *delta, quota, &mut reserved, self.max_total).map_err(|refusal| {
                GlobalError::Limit(match refusal {
                    Refusal::Quota { would_hold, max } => format!(
                        "keyspace {} would hold {would_hold} bytes; its quota is {max} ([kv] max_bytes)",
                        String::from_utf8_lossy(keyspace)
                    ),
                    Refusal::Ceiling { would_hold, max } => format!(
                        "the cluster's global key-value data would take {would_hold} bytes of etcd; its ceiling is {max} (ledge serve --global-kv-max-bytes)"
                    ),
                })
            })?;
            plan.stage(key, next, revision);
        }
        if plan.written.is_empty() {
            return Ok(plan);
        }
        if reserved != total.reserved {
            plan.stage(TOTAL_KEY.as_bytes().to_vec(), Usage { bytes: 0, reserved }, total_revision);
        } else {
            // Not written, but read back with the others when they fail.
            plan.rereads.push(TxnOp::get(TOTAL_KEY, None));
            plan.reread_keys.push(TOTAL_KEY.as_bytes().to_vec());
        }
        Ok(plan)
    }

    /// Remembers what a commit wrote, at the revision it committed at.
    pub(super) fn committed(&self, plan: &Plan, revision: i64) {
        let mut seen = self.seen.lock();
        for (key, usage) in &plan.written {
            seen.insert(key.clone(), (*usage, revision));
        }
    }

    /// Forgets what a commit whose outcome is unknown may have written.
    pub(super) fn forget(&self, plan: &Plan) {
        let mut seen = self.seen.lock();
        for (key, _) in &plan.written {
            seen.remove(key);
        }
    }

    /// Remembers the usage keys a failed commit read back.
    pub(super) fn note_reads(&self, keys: &[Vec<u8>], response: &TxnResponse) {
        self.note(keys, &gets(response));
    }

    /// Remembers usage keys as read (`None`: absent).
    fn note(&self, keys: &[Vec<u8>], found: &[Option<(Vec<u8>, i64)>]) {
        let mut seen = self.seen.lock();
        if seen.len() > REMEMBERED {
            seen.clear();
        }
        for (key, kv) in keys.iter().zip(found) {
            let entry = match kv {
                // An unreadable value is overwritten by the next commit (its revision is right).
                Some((value, revision)) => (serde_json::from_slice(value).unwrap_or_default(), *revision),
                None => (Usage::default(), 0),
            };
            seen.insert(key.clone(), entry);
        }
    }
}

impl Plan {
    /// Writes `key` with `usage`, if it is still at `revision`.
    fn stage(&mut self, key: Vec<u8>, usage: Usage, revision: i64) {
        let value = serde_json::to_vec(&usage).expect("two numbers serialize");
        self.compares.push(Compare::mod_revision(key.clone(), CompareOp::Equal, revision));
        self.puts.push(TxnOp::put(key.clone(), value, None));
        self.rereads.push(TxnOp::get(key.clone(), None));
        self.reread_keys.push(key.clone());
        self.written.push((key, usage));
    }
}

#[derive(Debug, PartialEq)]
enum Refusal {
    Quota { would_hold: u64, max: u64 },
    Ceiling { would_hold: u64, max: u64 },
}

/// A keyspace's usage after a commit changes it by `delta` bytes, holding it to `quota` and
/// the reservations of all keyspaces (`total`, updated) to `max_total`. Growth past the
/// reservation reserves whole chunks with one chunk of headroom, or just what is needed when
/// that is all the ceiling leaves; shrinking gives back all but that headroom once more than a
/// chunk beyond it is reserved. Only growth is ever refused.
fn settle(usage: Usage, delta: i64, quota: u64, total: &mut u64, max_total: u64) -> Result<Usage, Refusal> {
    let bytes = usage.bytes.saturating_add_signed(delta);
    let roomy = (bytes / RESERVE_CHUNK + 1) * RESERVE_CHUNK;
    let others = total.saturating_sub(usage.reserved);
    let reserved = if delta > 0 {
        if bytes > quota {
            return Err(Refusal::Quota { would_hold: bytes, max: quota });
        }
        match bytes <= usage.reserved {
            true => usage.reserved,
            false if others.saturating_add(roomy) <= max_total => roomy,
            false if others.saturating_add(bytes) <= max_total => bytes,
            false => return Err(Refusal::Ceiling { would_hold: others.saturating_add(bytes), max: max_total }),
        }
    } else if usage.reserved > roomy + RESERVE_CHUNK {
        roomy
    } else {
        usage.reserved
    };
    *total = others.saturating_add(reserved);
    Ok(Usage { bytes, reserved })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u64 = RESERVE_CHUNK;

    #[test]
    fn growth_is_held_to_the_quota_and_shrinking_never_is() {
        let mut total = 0;
        let usage = settle(Usage::default(), 1000, 4096, &mut total, 1 << 30).unwrap();
        assert_eq!(usage, Usage { bytes: 1000, reserved: CHUNK });
        assert_eq!(total, CHUNK);
        let refused = settle(usage, 3097, 4096, &mut total, 1 << 30).unwrap_err();
        assert_eq!(refused, Refusal::Quota { would_hold: 4097, max: 4096 });
        // A keyspace over a quota lowered since may still shrink, and keep its size.
        let over = Usage { bytes: 10_000, reserved: CHUNK };
        assert_eq!(settle(over, -10, 4096, &mut total, 1 << 30).unwrap().bytes, 9_990);
        assert_eq!(settle(over, 0, 4096, &mut total, 1 << 30).unwrap(), over);
        // Far below its reservation, a keyspace gives chunks back to the total.
        let mut total = 10 * CHUNK;
        let big = Usage { bytes: 9 * CHUNK, reserved: 10 * CHUNK };
        let shrunk = settle(big, -(9 * CHUNK as i64) + 10, 1 << 30, &mut total, 1 << 30).unwrap();
        assert_eq!(shrunk, Usage { bytes: 10, reserved: CHUNK });
        assert_eq!(total, CHUNK);
    }

    #[test]
    fn reservations_are_held_to_the_ceiling() {
        // Others hold 3 chunks of a 4-chunk ceiling: the last chunk, then exactly what is left.
        let mut total = 3 * CHUNK;
        let usage = settle(Usage::default(), (CHUNK / 2) as i64, u64::MAX, &mut total, 4 * CHUNK).unwrap();
        assert_eq!((usage.reserved, total), (CHUNK, 4 * CHUNK));
        let usage = settle(usage, (CHUNK / 2) as i64, u64::MAX, &mut total, 4 * CHUNK).unwrap();
        assert_eq!((usage.reserved, total), (CHUNK, 4 * CHUNK), "a full chunk fits its reservation");
        let refused = settle(usage, 1, u64::MAX, &mut total, 4 * CHUNK).unwrap_err();
        assert_eq!(refused, Refusal::Ceiling { would_hold: 4 * CHUNK + 1, max: 4 * CHUNK });
        // Below a full chunk of headroom, growth takes just what it needs.
        let mut total = 3 * CHUNK;
        let tight = settle(Usage { bytes: 0, reserved: 0 }, (CHUNK - 5) as i64, u64::MAX, &mut total, 4 * CHUNK - 1);
        assert_eq!(tight.unwrap().reserved, CHUNK - 5);
        assert_eq!(total, 4 * CHUNK - 5);
    }

    #[test]
    fn a_plan_touches_only_the_keyspaces_whose_size_changes() {
        let accounts = Accounts::new(1 << 30);
        accounts.set_quotas(Box::new(|_| 1 << 20));
        let same_size = BTreeMap::from([(b"f/app/".to_vec(), 0)]);
        let plan = accounts.plan(&same_size).unwrap();
        assert!(plan.compares.is_empty() && plan.puts.is_empty());
        let grows = BTreeMap::from([(b"f/app/".to_vec(), 100)]);
        let plan = accounts.plan(&grows).unwrap();
        assert_eq!(plan.puts.len(), 2, "the keyspace's usage and the total (a first reservation)");
        accounts.committed(&plan, 7);
        let plan = accounts.plan(&grows).unwrap();
        assert_eq!(plan.puts.len(), 1, "within its reservation: the keyspace's usage alone");
        let Err(refused) = accounts.plan(&BTreeMap::from([(b"f/app/".to_vec(), 2 << 20)])) else {
            panic!("not refused")
        };
        assert!(matches!(&refused, GlobalError::Limit(why) if why.contains("f/app/") && why.contains("max_bytes")));
    }

    #[test]
    fn without_quotas_no_keyspace_grows() {
        let accounts = Accounts::new(1 << 30);
        assert!(accounts.plan(&BTreeMap::from([(b"f/app/".to_vec(), 1)])).is_err());
        assert!(accounts.plan(&BTreeMap::from([(b"f/app/".to_vec(), -1)])).is_ok());
    }
}
