//! Backups of a node (`GET /v1/backup`, `ledge backup`, `ledge restore`): one tar archive
//! holding the key-value engine's image at one stamp and the data dir's control state.
//!
//! Archive format 1, a plain tar of regular files only, in this order:
//! - `kv.image`: what [`ledge_kv::Db::backup`] wrote, every durable commit up to one stamp;
//! - the control state, file by file: `admin.token`, `keys/**` (the root key ring and
//!   `secrets.key`), `tls/**` (the self-signed certificate) and `functions/**` (each kept
//!   version's component and snapshot, `meta.json`, `version.json`, `policy.toml`,
//!   `config.json`). Left out: the precompiled code (`code.cwasm`), a cache that a start
//!   rebuilds from the component (`registry::layout`), hidden files and `*.staging` folders
//!   (debris of interrupted writes, removed at start), `kv/` itself (the image stands for
//!   it) and `format.json` (restore writes the restoring build's: a change to a format the
//!   archive holds changes the archive's format too);
//! - `ledge-backup.json`, the [`Manifest`]: format, ledge version, creation time, kv stamp and
//!   every other entry with its size and SHA-256. It comes last because only then are the
//!   image's size and digest known.
//!
//! Invariants: the writer copies function files only while registry changes are held off
//! (the caller's job, see `Registry::while_unchanged`), and every other file it copies is
//! only ever replaced by a rename, so an open file never changes under it. A reader treats the
//! archive as untrusted: only regular files, only relative paths of plain components under the
//! names above, each in the manifest exactly once with its size and digest. [`restore`] checks
//! all of that before it writes anything, builds the new data dir under a temporary name
//! beside it, and renames it into place: the directory appears whole or not at all.
//!
//! [`write`] makes an archive; [`verify`] and [`restore`] read one.
//!
//! Layer: below the HTTP edge and the command line (which call it), on the engine and plain
//! files only: it never imports from the registry (whose lock the caller holds) or above.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

mod restore;
mod write;

pub use restore::{restore, verify};
pub use write::write;

/// The archive format this build writes and reads.
pub const FORMAT: u32 = 1;
/// The manifest's name in the archive.
pub const MANIFEST: &str = "ledge-backup.json";
/// The key-value image's name in the archive.
pub const KV_IMAGE: &str = "kv.image";

/// What the archive holds of the data dir besides the image: files and folders.
const CONTROL: [&str; 4] = ["admin.token", "keys", "tls", "functions"];
/// Rebuilt at start from what is kept (a recompile at start): not backed up.
const CACHES: [&str; 1] = ["code.cwasm"];
/// The largest manifest a reader accepts (about 100,000 files).
const MAX_MANIFEST: u64 = 16 << 20;
/// Folders deeper than this are not part of a data dir.
const MAX_DEPTH: usize = 8;
const BLOCK: usize = 512;

/// `ledge-backup.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    /// The ledge that wrote the archive.
    pub ledge_version: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// The stamp of the key-value image: it holds every commit up to this one.
    pub kv_stamp: u64,
    /// Every entry but the manifest, in archive order.
    pub files: Vec<ManifestFile>,
}

/// One entry of the archive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

impl Manifest {
    /// The functions in the archive (those with a commit point, `functions/NAME/meta.json`).
    pub fn functions(&self) -> Vec<&str> {
        self.files
            .iter()
            .filter_map(|file| file.path.strip_prefix("functions/")?.strip_suffix("/meta.json"))
            .filter(|name| !name.contains('/'))
            .collect()
    }

    /// Bytes of every entry together.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|file| file.size).sum()
    }

    /// Whether the archive holds the key that seals the functions' secrets (not when the node
    /// ran with `--secrets-key` outside its data dir).
    pub fn has_secrets_key(&self) -> bool {
        self.files.iter().any(|file| file.path == "keys/secrets.key")
    }
}

#[derive(Debug, Error)]
pub enum BackupError {
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("the key-value engine could not write its image: {0}")]
    Image(ledge_kv::Error),
    #[error("the archive is not a usable ledge backup: {0}")]
    Damaged(String),
    #[error("{} already exists and is not empty: restore makes a new data dir, so name one that does not exist (or is empty)", .0.display())]
    NotEmpty(PathBuf),
    #[error("{0}")]
    Target(String),
    #[error("the key-value image does not restore: {0}")]
    Restore(ledge_kv::Error),
}

/// Wraps an I/O error with what was being done.
fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> BackupError {
    let context = context.into();
    move |source| BackupError::Io { context, source }
}

fn damaged(reason: impl Into<String>) -> BackupError {
    BackupError::Damaged(reason.into())
}

/// A reader or writer that counts and hashes what passes through it.
struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    bytes: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Hashing { inner, hasher: Sha256::new(), bytes: 0 }
    }

    /// Bytes seen and their SHA-256, hex.
    fn finish(self) -> (u64, String) {
        (self.bytes, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        self.bytes += read as u64;
        Ok(read)
    }
}
