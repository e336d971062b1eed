//! Error types, one per kind of operation.
//!
//! [`Error`] is what opening, closing and maintaining a database can fail with. [`TxError`] is what
//! a transaction's operations can fail with; its retryable variants ([`TxError::is_retryable`]) are
//! the expected outcomes of optimistic concurrency, not faults: an immediate retry does not meet
//! the same conflict, because SI and SSN only abort a transaction for a conflict with one that has
//! already committed.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Errors from opening, closing, checkpointing or recovering a database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on the database directory, the WAL or a checkpoint.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// A record that fails its checksum is followed by a valid one, so this is not a torn tail
    /// from a crash but damage in the middle of the log (or a damaged checkpoint). Opening refuses
    /// rather than silently dropping acknowledged commits.
    #[error("corrupt {file}: at byte {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the damaged record.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// Another process (or another `Db` in this one) has the directory open.
    #[error("database directory {0} is locked by another open database")]
    Locked(PathBuf),
    /// The database was closed, or its WAL writer failed earlier.
    #[error("database is closed")]
    Closed,
    /// The WAL writer failed (for example an fsync error); the database refuses further commits
    /// because it can no longer tell what is durable.
    #[error("WAL writer failed: {0}")]
    WalFailed(Arc<io::Error>),
    /// A file of the database is in a format this build does not read: one written by a newer
    /// build (its header names a later WAL or checkpoint format). Opening refuses before it
    /// changes anything in the directory, rather than misread the file or drop it as damage.
    #[error(
        "{} is in {what} format {found}; this build reads {what} format {reads}: open the database with the newer build that wrote it",
        file.display()
    )]
    UnsupportedFormat {
        /// The file.
        file: PathBuf,
        /// What kind of file: `WAL segment` or `checkpoint`.
        what: &'static str,
        /// The format its header names.
        found: String,
        /// The formats this build reads, e.g. `1 to 2`.
        reads: String,
    },
    /// A restore was pointed at a directory that already holds a database.
    #[error("{0} already holds a database; restore into a new, empty directory")]
    NotEmpty(PathBuf),
}

/// Errors from a transaction's operations and its commit.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TxError {
    /// Another transaction committed a write to `key` after this one's snapshot was taken
    /// (first-committer-wins). Retryable.
    #[error("write-write conflict on key {key:?}")]
    WriteConflict {
        /// The contended key.
        key: Vec<u8>,
    },
    /// The Serial Safety Net exclusion test failed (`sstamp <= pstamp`): committing could close a
    /// dependency cycle. Retryable.
    #[error("serialization failure (SSN: sstamp {sstamp} <= pstamp {pstamp})")]
    Unserializable {
        /// π(T): the smallest commit stamp of a successor that committed first.
        sstamp: u64,
        /// η(T): the largest commit stamp of a predecessor.
        pstamp: u64,
    },
    /// A range this transaction scanned gained or lost a key through a transaction that committed
    /// after this one's snapshot. Retryable.
    #[error("phantom in scanned range starting at {start:?}")]
    Phantom {
        /// Start of the scanned range that changed.
        start: Vec<u8>,
    },
    /// The key is empty or longer than [`crate::Options::max_key_len`].
    #[error("key of {len} bytes is empty or longer than the limit of {max}")]
    KeyTooLarge {
        /// Length of the key.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The value is longer than [`crate::Options::max_value_len`].
    #[error("value of {len} bytes is longer than the limit of {max}")]
    ValueTooLarge {
        /// Length of the value.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The transaction's writes are more than [`crate::Options::max_tx_bytes`] (or would make a
    /// WAL record larger than the format allows).
    #[error("transaction writes {bytes} bytes; a commit may write at most {max}")]
    TooLarge {
        /// Encoded size of the writes.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The transaction's read set is full ([`crate::Options::max_tx_reads`]).
    #[error("a transaction may read at most {max} keys and ranges")]
    TooManyReads {
        /// The limit.
        max: usize,
    },
    /// One scan would return more bytes than [`crate::Options::max_scan_bytes`].
    #[error("the scan would return more than {max} bytes; ask for fewer entries")]
    ScanTooLarge {
        /// The limit.
        max: usize,
    },
    /// The commit would grow a keyspace past the quota set with [`crate::Tx::limit_keyspace`].
    #[error("keyspace {} would hold {would_hold} bytes; its quota is {max}", String::from_utf8_lossy(keyspace))]
    QuotaExceeded {
        /// The keyspace prefix.
        keyspace: Vec<u8>,
        /// Its live bytes had the commit gone through.
        would_hold: u64,
        /// Its quota.
        max: u64,
    },
    /// The commit would grow the database's live data past [`crate::Options::max_live_bytes`].
    #[error("the store would hold {would_hold} bytes of live data; its budget is {max}")]
    OutOfSpace {
        /// Live bytes had the commit gone through.
        would_hold: u64,
        /// The budget.
        max: u64,
    },
    /// The database was closed before this transaction committed.
    #[error("database is closed")]
    Closed,
    /// The commit's WAL record could not be made durable; the outcome is unknown to the caller
    /// only in the sense that the database has stopped accepting commits.
    #[error("WAL write failed: {0}")]
    Wal(Arc<io::Error>),
    /// The disk holding the WAL is full: the commit was refused before it changed anything.
    /// Commits are accepted again as soon as the WAL can be written.
    #[error("the disk is full ({0}); commits are refused until the WAL can be written again")]
    DiskFull(Arc<io::Error>),
}

impl TxError {
    /// True for conflicts and certification failures: running the transaction again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, TxError::WriteConflict { .. } | TxError::Unserializable { .. } | TxError::Phantom { .. })
    }

    /// A short stable name for the abort reason, for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            TxError::WriteConflict { .. } => "write_conflict",
            TxError::Unserializable { .. } => "ssn",
            TxError::Phantom { .. } => "phantom",
            TxError::KeyTooLarge { .. } => "key_too_large",
            TxError::ValueTooLarge { .. } => "value_too_large",
            TxError::TooLarge { .. } => "tx_too_large",
            TxError::TooManyReads { .. } => "too_many_reads",
            TxError::ScanTooLarge { .. } => "scan_too_large",
            TxError::QuotaExceeded { .. } => "quota",
            TxError::OutOfSpace { .. } => "out_of_space",
            TxError::Closed => "closed",
            TxError::Wal(_) => "wal",
            TxError::DiskFull(_) => "disk_full",
        }
    }
}
