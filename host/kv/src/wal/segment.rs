//! The segment file the flusher writes: created with its header, written batch by batch at its
//! durable length into space allocated ahead, and cut back to its last batch when it is left.
//!
//! Invariants: `durable_len` bytes (the header and every batch whose fsync returned) are on disk;
//! past them the file holds only zeros it allocated (`allocated` long) or, after a failed write,
//! nothing: a failure cuts the file back to `durable_len` before it returns.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io;
use std::path::{Path, PathBuf};

use super::frame::{SEGMENT_HEADER, segment_header, segment_path};
use crate::fs::{Fs, FsFile};

/// The segment the flusher writes.
pub(crate) struct Segment {
    file: Box<dyn FsFile>,
    path: PathBuf,
    pub salt: u64,
    /// Bytes known durable: the header and every batch whose fsync returned.
    pub durable_len: u64,
    /// The file's length: past `durable_len`, zeros allocated for the batches to come.
    allocated: u64,
    /// Whether to allocate ahead: cleared for the rest of the segment when allocating failed.
    preallocate: bool,
}

/// Creates segment `seq` with its header, both durable. A failed creation leaves nothing behind
/// that a retry would trip over.
pub(crate) fn create_segment(fs: &dyn Fs, dir: &Path, seq: u64) -> io::Result<Segment> {
    let path = segment_path(dir, seq);
    // Not for secrecy, only unpredictable to guests: std's per-process random hash keys.
    let salt = RandomState::new().hash_one(seq);
    let made = fs.create_new(&path).and_then(|mut file| {
        file.write_all_at(&segment_header(salt), 0)?;
        file.sync()?;
        fs.sync_dir(dir)?;
        Ok(file)
    });
    match made {
        Ok(file) => {
            let len = SEGMENT_HEADER as u64;
            Ok(Segment { file, path, salt, durable_len: len, allocated: len, preallocate: true })
        }
        Err(e) => {
            let _ = fs.remove(&path);
            Err(e)
        }
    }
}

impl Segment {
    /// Writes a batch (its header, then its frames) at the durable length and fsyncs it, having
    /// allocated space `ahead` bytes past the durable length when the batch did not fit in what
    /// was (0: never). On failure the file is cut back to its durable length, so that a retry
    /// rewrites the batch from memory rather than trusting whatever the failed write or fsync
    /// left in the file.
    pub(crate) fn write_batch(&mut self, fs: &dyn Fs, header: &[u8], frames: &[u8], ahead: u64) -> io::Result<()> {
        let at = self.durable_len;
        let end = at + (header.len() + frames.len()) as u64;
        if ahead > 0 && self.preallocate && end > self.allocated {
            self.allocate(fs, end.max(at + ahead))?;
        }
        let written = self
            .file
            .write_all_at(header, at)
            .and_then(|()| self.file.write_all_at(frames, at + header.len() as u64))
            .and_then(|()| self.file.sync());
        if let Err(e) = written {
            self.cut(fs)?;
            return Err(e);
        }
        self.durable_len = end;
        self.allocated = self.allocated.max(end);
        Ok(())
    }

    /// Allocates the file up to `len`. Allocation is only for speed: when it fails (a full disk,
    /// a file system without it), the segment goes on without it.
    fn allocate(&mut self, fs: &dyn Fs, len: u64) -> io::Result<()> {
        match self.file.allocate(len) {
            Ok(()) => self.allocated = len,
            Err(_) => {
                // It may have left any length behind: cut whatever `allocated` says.
                self.preallocate = false;
                self.cut(fs)?;
            }
        }
        Ok(())
    }

    /// Cuts the zeros allocated past the last batch, durably (before the segment is left: only
    /// the segment in use may end in zeros).
    pub(crate) fn trim(&mut self, fs: &dyn Fs) -> io::Result<()> {
        if self.allocated > self.durable_len { self.cut(fs) } else { Ok(()) }
    }

    /// Cuts the file to its durable length, durably.
    fn cut(&mut self, fs: &dyn Fs) -> io::Result<()> {
        fs.truncate(&self.path, self.durable_len)?;
        self.allocated = self.durable_len;
        Ok(())
    }
}
