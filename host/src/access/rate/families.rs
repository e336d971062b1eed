//! Which caveat limiters each token family keeps busy, so that one family cannot hold more than
//! [`MAX_FAMILY_CAVEATS`] of them (and with them the table that every family's caveats share).
//! The design is in the parent module's docs.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Mutex;

use super::bucket::KeyHasher;
use super::{MAX_FAMILY_CAVEATS, lock};

/// Shards of the table (each behind its own mutex).
const SHARDS: usize = 16;

/// (caveat quota's id, until when the family keeps its limiter busy), both as the table keeps
/// them: a hash, and nanoseconds since the limiter started.
pub(super) type Held = (u64, u64);

/// Family (a hash of the caller: the token's root id) → the caveat limiters it keeps busy.
type Map = HashMap<u64, Vec<Held>, BuildHasherDefault<KeyHasher>>;

/// Every token family's busy caveat limiters. Memory: at most `per_shard` families a shard,
/// each with at most [`MAX_FAMILY_CAVEATS`] entries.
pub(super) struct Families {
    maps: Box<[Mutex<Map>]>,
    per_shard: usize,
}

/// Why [`Families::hold`] refused: the family already keeps [`MAX_FAMILY_CAVEATS`] other caveat
/// limiters busy; `wait` nanoseconds from now the first of them is free again.
pub(super) struct TooMany {
    pub(super) wait: u64,
}

impl Families {
    /// A table of at most about `max_families` families (at least one a shard).
    pub(super) fn new(max_families: usize) -> Self {
        Families {
            maps: (0..SHARDS).map(|_| Mutex::new(Map::default())).collect(),
            per_shard: max_families.div_ceil(SHARDS).max(1),
        }
    }

    /// Runs `charge` (which charges the caveat limiters `wanted` and says until when each is
    /// busy for the family) if, with `wanted`, the family keeps at most
    /// [`MAX_FAMILY_CAVEATS`] limiters busy, and notes what it returned; refuses otherwise,
    /// charging nothing. Atomic per family: two requests of one family cannot both squeeze
    /// in under the bound.
    pub(super) fn hold<R>(
        &self,
        family: u64,
        now: u64,
        wanted: &[u64],
        charge: impl FnOnce() -> (R, Vec<Held>),
    ) -> Result<R, TooMany> {
        let mut map = lock(&self.maps[(family >> 60) as usize % self.maps.len()]);
        let held = map.get_mut(&family);
        let (busy, added) = match held {
            Some(held) => {
                held.retain(|&(_, until)| until > now);
                (held.len(), wanted.iter().filter(|id| !held.iter().any(|(h, _)| h == *id)).count())
            }
            None => (0, wanted.len()),
        };
        if busy + added > MAX_FAMILY_CAVEATS {
            let soonest = map.get(&family).and_then(|held| held.iter().map(|&(_, until)| until).min());
            return Err(TooMany { wait: soonest.unwrap_or(now).saturating_sub(now) });
        }
        let (result, charged) = charge();
        let mut held = map.remove(&family).unwrap_or_default();
        for (id, until) in charged {
            match held.iter_mut().find(|(h, _)| *h == id) {
                Some(entry) => entry.1 = entry.1.max(until),
                None => held.push((id, until)),
            }
        }
        held.retain(|&(_, until)| until > now);
        if !held.is_empty() {
            if map.len() >= self.per_shard {
                map.retain(|_, held| held.iter().any(|&(_, until)| until > now));
            }
            // A full shard of busy families forgets this one: its limits still hold, only
            // its share of the caveat table goes unwatched until room is made.
            if map.len() < self.per_shard {
                map.insert(family, held);
            }
        }
        Ok(result)
    }

    /// Families with a busy caveat limiter (for tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.maps.iter().map(|map| lock(map).len()).sum()
    }
}
