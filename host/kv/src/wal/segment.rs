//! The segment file the flusher writes: created with its header, written batch by batch at its
//! durable length into space allocated ahead, and cut back to its last batch when it is left.
//!
//! Invariants: `durable_len` bytes (the header and every batch whose fsync returned) are on
//! disk, and the file is at most `allocated` long: `allocated` grows before anything that may
//! lengthen the file, so a cut to `durable_len` whenever it is larger removes everything past
//! the last batch (zeros allocated ahead, or what a failed write left). Only the segment in use
//! may end past its last batch: a rotation cuts the old one first, a clean stop the last.
//!
//! The allocation is for speed: written into allocated space, a batch changes no file size,
//! so its fdatasync need not commit one (on ext4 and xfs it may still commit an extent's
//! conversion to written, once per block, which small batches share).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Wal;
use super::frame::{self, SEGMENT_HEADER, segment_header, segment_path};
use crate::fs::{Fs, FsFile};
use crate::stats::Counters;

/// The segment the flusher writes.
pub(crate) struct Segment {
    file: Box<dyn FsFile>,
    path: PathBuf,
    salt: u64,
    /// Bytes known durable: the header and every batch whose fsync returned.
    durable_len: u64,
    /// The most the file may hold: past `durable_len`, zeros allocated for the batches to come.
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
    fn write_batch(
        &mut self,
        fs: &dyn Fs,
        header: &[u8],
        frames: &[u8],
        ahead: u64,
        counters: &Counters,
    ) -> io::Result<()> {
        let at = self.durable_len;
        let end = at + (header.len() + frames.len()) as u64;
        if ahead > 0 && self.preallocate && end > self.allocated {
            let len = end.max(at.saturating_add(ahead));
            let from = self.allocated;
            self.allocated = len;
            if self.file.allocate(from, len - from).is_err() {
                // Only slower without it: go on growing the file, from the last batch (a failed
                // allocation may have left any length behind).
                Counters::bump(&counters.wal_allocation_failures, 1);
                self.preallocate = false;
                self.trim(fs)?;
            }
        }
        self.allocated = self.allocated.max(end);
        let written = self
            .file
            .write_all_at(header, at)
            .and_then(|()| self.file.write_all_at(frames, at + header.len() as u64))
            .and_then(|()| self.file.sync());
        if let Err(e) = written {
            self.trim(fs)?;
            return Err(e);
        }
        self.durable_len = end;
        Ok(())
    }

    /// Cuts the file back to its last batch, durably, unless it may hold nothing past it.
    pub(crate) fn trim(&mut self, fs: &dyn Fs) -> io::Result<()> {
        if self.allocated > self.durable_len {
            fs.truncate(&self.path, self.durable_len)?;
            self.allocated = self.durable_len;
        }
        Ok(())
    }
}

/// How far a [`Wal::flush`] got: bytes of the old and the new segment's part made durable.
#[derive(Debug, Default)]
pub(super) struct Progress {
    old: usize,
    rotated: bool,
    new: usize,
}

impl Wal {
    /// Writes the flusher's buffer, the part before `rotate`'s cut to the current segment and the
    /// rest to a new one. Resumable: `progress` records what is durable, so a retry after a full
    /// disk continues where the failure stopped.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn flush(
        &self,
        fs: &dyn Fs,
        dir: &Path,
        segment: &mut Segment,
        buffer: &[u8],
        rotate: Option<(usize, u64)>,
        progress: &mut Progress,
        counters: &Counters,
    ) -> io::Result<()> {
        let cut = rotate.map_or(buffer.len(), |(cut, _)| cut.min(buffer.len()));
        let (old, new) = buffer.split_at(cut);
        self.write_batches(fs, segment, old, &mut progress.old, counters)?;
        if let Some((_, seq)) = rotate {
            if !progress.rotated {
                // The old segment ends at its last batch: only the last may end in zeros.
                segment.trim(fs)?;
                *segment = create_segment(fs, dir, seq)?;
                progress.rotated = true;
            }
            self.write_batches(fs, segment, new, &mut progress.new, counters)?;
        }
        Ok(())
    }

    /// Appends `frames[*done..]` as batches, each written and fsynced before the next.
    fn write_batches(
        &self,
        fs: &dyn Fs,
        segment: &mut Segment,
        frames: &[u8],
        done: &mut usize,
        counters: &Counters,
    ) -> io::Result<()> {
        for batch in frame::batches(&frames[*done..]) {
            let header = frame::batch_header(segment.salt, batch);
            let bytes = (header.len() + batch.len()) as u64;
            let t = Instant::now();
            segment.write_batch(fs, &header, batch, self.preallocate, counters)?;
            *done += batch.len();
            Counters::bump(&counters.wal_fsync_nanos, t.elapsed().as_nanos() as u64);
            Counters::bump(&counters.wal_fsyncs, 1);
            Counters::bump(&counters.wal_bytes, bytes);
            self.bytes_since_checkpoint.fetch_add(bytes, Ordering::Relaxed);
        }
        Ok(())
    }
}
