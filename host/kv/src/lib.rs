//! `ledge-kv`: the transactional key-value engine of ledge.
//!
//! An in-memory multi-version store (a lock-free ordered skip list of keys, each with a short
//! version chain under a per-key lock), made durable by a write-ahead log with group commit and
//! periodic checkpoints.
//!
//! - [`Isolation::Snapshot`]: snapshot isolation with first-committer-wins.
//! - [`Isolation::Serializable`]: snapshot isolation certified by the Serial Safety Net (SSN) and
//!   scanned-range validation, so committed Serializable transactions are serializable
//!   (the `ssn` module documents the protocol and its invariants).
//!
//! ```no_run
//! use ledge_kv::{Db, Isolation};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let db = Db::open(std::path::Path::new("/tmp/ledge-kv-example"))?;
//! loop {
//!     let mut tx = db.begin(Isolation::Serializable);
//!     let n = tx.get(b"counter")?.map_or(0, |v| v[0]);
//!     tx.put(b"counter", &[n.wrapping_add(1)])?;
//!     match tx.commit() {
//!         Ok(_stamp) => break,
//!         Err(e) if e.is_retryable() => continue,
//!         Err(e) => return Err(e.into()),
//!     }
//! }
//! db.close()?;
//! # Ok(()) }
//! ```
//!
//! Durability: with [`Durability::Fsync`] (the default) [`Tx::commit`] returns once the commit's
//! WAL record is fsynced, concurrent committers sharing one fsync. Async callers (tokio tasks)
//! should use [`Tx::commit_async`] and await the [`CommitTicket`]: the conflict check happens
//! at once and only the fsync wait is asynchronous, so no executor thread blocks on the disk.
//!
//! On-disk formats: the WAL segment format this build writes is [`WAL_FORMAT`] (it also reads
//! back to [`WAL_OLDEST_FORMAT`]), the checkpoint (and backup image) format
//! [`CHECKPOINT_FORMAT`]. A file whose header names a later format refuses the open with
//! [`Error::UnsupportedFormat`] before anything in the directory changes.
//!
//! Module map: `db` (handle, threads, checkpoints), `tx` (operations; `tx::commit` the serial commit section), `mvcc` (versions),
//! `ssn` (certification), `wal` (the log shared by committers; `wal::flusher` its group-commit thread,
//! `wal::frame` the format, `wal::segment` the file it writes, preallocated ahead), `checkpoint`,
//! `recovery`, `gc`, `error`. Each module's docs state its invariants.
#![deny(missing_docs)]

mod checkpoint;
mod db;
mod error;
mod fs;
mod gc;
mod mvcc;
mod options;
mod recovery;
#[cfg(test)]
mod sim;
mod space;
mod ssn;
mod stats;
mod tx;
mod wal;

pub use checkpoint::FORMAT as CHECKPOINT_FORMAT;
pub use db::Db;
pub use error::{Error, TxError};
pub use options::{Durability, Isolation, Options};
pub use space::KeyspaceOf;
pub use stats::Stats;
pub use tx::{CommitTicket, KeyValue, Tx, prefix_end};
pub use wal::{FORMAT as WAL_FORMAT, OLDEST_FORMAT as WAL_OLDEST_FORMAT};

/// Entry points for the fuzz targets in `fuzz/` and the tests that replay their corpora. Not an
/// API: each takes arbitrary bytes and must return without panicking, whatever they hold.
/// Compiled only for tests and with the `fuzzing` feature, never into the release binary.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    /// Reads `bytes` as a WAL segment, as recovery does.
    pub fn wal_segment(bytes: &[u8]) {
        let scan = crate::wal::scan_segment(bytes, 0);
        assert!(scan.valid_len <= bytes.len(), "the valid prefix lies inside the segment");
    }

    /// Reads `bytes` as a checkpoint file, as recovery does.
    pub fn checkpoint(bytes: &[u8]) {
        let _ = crate::checkpoint::parse(bytes, Path::new("fuzz.ckpt"));
    }

    /// Runs every file of a saved corpus (`fuzz/corpus/<target>/`) through `run`; panics on a
    /// missing or empty corpus, so a test replaying it cannot pass by finding nothing.
    pub fn replay_corpus(dir: &Path, run: impl Fn(&[u8])) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
        let mut files = 0;
        for entry in entries {
            let path = entry.expect("a corpus entry").path();
            if path.is_file() {
                run(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
                files += 1;
            }
        }
        assert!(files > 0, "no corpus files in {}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}
    fn assert_send<T: Send + 'static>() {}

    #[test]
    fn handles_are_send_and_sync_and_tx_is_send() {
        assert_send_sync::<Db>();
        assert_send::<Tx>();
    }
}
