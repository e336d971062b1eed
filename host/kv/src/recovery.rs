//! Recovery: latest checkpoint + WAL replay.
//!
//! Rules:
//! - Leftover `*.tmp` files are unfinished checkpoints from a crash; they are deleted.
//! - The newest checkpoint must verify; if it does not, opening fails (the WAL it covered may
//!   already be gone, so falling back to an older one could lose acknowledged commits).
//! - Segments are replayed in sequence order; stamps must strictly increase along the whole log.
//!   Records at or below the checkpoint stamp are skipped (a crash between writing a checkpoint
//!   and deleting the segments it covers leaves them behind).
//! - A bad batch (format 1: frame) with no valid one after it, in the last segment, is a torn tail
//!   from a crash: it was never acknowledged (its fsync did not finish), so it is truncated away,
//!   durably, before anything new is written, and so are the zeros the flusher preallocated
//!   past the last batch. Any other bad batch or frame is [`Error::Corrupt`].
//! - Segments that never got a record (empty, or a header alone) are removed wherever they are
//!   (a header and allocated zeros, as a crash may leave the last, too).
//! - A checkpoint or segment whose header names a later format than this build reads is
//!   [`Error::UnsupportedFormat`], found before anything is removed or truncated.

use std::path::Path;

use crate::checkpoint;
use crate::error::Error;
use crate::fs::Fs;
use crate::mvcc::{Store, Version};
use crate::wal;

/// State rebuilt from disk.
pub(crate) struct Recovered {
    pub store: Store,
    /// Stamp of the last recovered commit (0 for a new database).
    pub last_stamp: u64,
    /// Sequence number for the WAL segment this run writes to.
    pub next_segment: u64,
    /// Torn tail bytes dropped from the last segment.
    pub truncated_bytes: u64,
    /// WAL bytes replayed (every segment kept since the last checkpoint) and their segments.
    pub wal_bytes: u64,
    pub wal_segments: usize,
    /// Commits past the checkpoint replayed from the WAL.
    pub wal_commits: u64,
}

pub(crate) fn recover(fs: &dyn Fs, dir: &Path) -> Result<Recovered, Error> {
    let mut ckpts = Vec::new();
    let mut segs = Vec::new();
    let mut unfinished = Vec::new();
    for name in fs.list(dir)? {
        if let Some(s) = checkpoint::parse_checkpoint_name(&name) {
            ckpts.push(s);
        } else if let Some(s) = wal::parse_segment_name(&name) {
            segs.push(s);
        } else if name.starts_with("ckpt-") && name.ends_with(".tmp") {
            unfinished.push(dir.join(name));
        }
    }
    ckpts.sort_unstable();
    segs.sort_unstable();

    // Everything is read, and every header's format checked, before anything is removed or cut:
    // a file in a format this build does not read refuses the open with the directory as it was.
    let loaded = match ckpts.last() {
        Some(&s) => Some(checkpoint::load(fs, &checkpoint::checkpoint_path(dir, s))?),
        None => None,
    };
    let mut segments = Vec::with_capacity(segs.len());
    for &seq in &segs {
        let path = wal::segment_path(dir, seq);
        let bytes = fs.read(&path)?;
        if let Some(found) = wal::unsupported_format(&bytes) {
            let reads = format!("{} to {}", wal::OLDEST_FORMAT, wal::FORMAT);
            return Err(Error::UnsupportedFormat { file: path, what: "WAL segment", found: found.to_string(), reads });
        }
        segments.push((path, bytes));
    }
    for path in unfinished {
        fs.remove(&path)?;
    }

    let store = Store::default();
    let mut ckpt_stamp = 0;
    if let Some(loaded) = loaded {
        ckpt_stamp = loaded.stamp;
        for (cstamp, k, v) in loaded.entries {
            store.install(None, &k, Version::new(cstamp, Some(v.into_boxed_slice())), cstamp);
        }
    }

    // Every open starts a fresh segment; ones that never got a record are noise. Drop them so
    // that "the last segment" below means the last one written to.
    let next_segment = segs.last().map_or(1, |s| s + 1);
    let mut written = Vec::with_capacity(segments.len());
    for (path, bytes) in segments {
        if wal::never_written(&bytes) {
            fs.remove(&path)?;
        } else {
            written.push((path, bytes));
        }
    }

    let mut last_stamp = ckpt_stamp;
    let mut log_stamp = 0;
    let mut truncated_bytes = 0;
    let mut wal_commits = 0;
    let segments = written.len();
    let mut wal_bytes = 0;
    for (i, (path, bytes)) in written.into_iter().enumerate() {
        let scan = wal::scan_segment(&bytes, log_stamp);
        if let Some((offset, reason)) = scan.corrupt_at {
            return Err(Error::Corrupt { file: path, offset: offset as u64, reason: reason.to_string() });
        }
        if scan.valid_len < bytes.len() {
            if i + 1 != segments {
                return Err(Error::Corrupt {
                    file: path,
                    offset: scan.valid_len as u64,
                    reason: "bad frame at the end of a segment that is not the last".into(),
                });
            }
            // Torn tail: drop it so the next run never sees a half record. Zeros past it are
            // space the flusher preallocated, not a tear.
            fs.truncate(&path, scan.valid_len as u64)?;
            truncated_bytes = wal::data_end(&bytes).saturating_sub(scan.valid_len) as u64;
            if wal::never_written(&bytes[..scan.valid_len]) {
                // A header and the zeros allocated after it: never got a record either.
                fs.remove(&path)?;
            }
        }
        wal_bytes += scan.valid_len as u64;
        for rec in scan.records {
            log_stamp = rec.cstamp;
            if rec.cstamp <= ckpt_stamp {
                continue;
            }
            for op in rec.ops {
                let v = Version::new(rec.cstamp, op.value.map(Vec::into_boxed_slice));
                store.install(None, &op.key, v, rec.cstamp);
            }
            last_stamp = rec.cstamp;
            wal_commits += 1;
        }
    }

    // Deleted keys need no tombstone once nothing older than them can be read.
    let dead: Vec<Vec<u8>> = store
        .iter()
        .filter(|e| e.value().latest().is_some_and(|v| v.value.is_none()))
        .map(|e| e.key().clone())
        .collect();
    for k in dead {
        store.remove_if_dead(&k, last_stamp);
    }

    Ok(Recovered { store, last_stamp, next_segment, truncated_bytes, wal_bytes, wal_segments: segments, wal_commits })
}
