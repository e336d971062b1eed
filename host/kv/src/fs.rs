//! The engine's file operations, behind one small trait so that tests can run the engine on a
//! simulated disk that loses what a power failure loses (the `sim` test module).
//!
//! The contract the engine relies on, which the real disk gives and the simulation enforces:
//! - bytes written to a file are durable only once [`FsFile::sync`] returned after them;
//! - a created, renamed or removed name is durable only once [`Fs::sync_dir`] of its directory
//!   returned after it;
//! - [`Fs::truncate`] returns only when the new length is durable;
//! - [`FsFile::allocate`] reserves space and extends the file with zeros, durable (as any write)
//!   once a sync returned after it; a crash before that may keep any length in between;
//! - a crash may keep, drop or tear any write that was not synced, in any order.
//!
//! Every file the engine creates is private to its owner (0600) and every directory 0700: the
//! WAL and checkpoints hold every function's data, whatever the mode of the folder around them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// The mode of every file the engine creates.
const PRIVATE_FILE: u32 = 0o600;
/// The mode of every directory the engine creates.
const PRIVATE_DIR: u32 = 0o700;

use crate::error::Error;

/// Held while a database has its directory open; dropping it releases the directory.
pub(crate) type DirLock = Box<dyn std::any::Any + Send + Sync>;

/// What the engine does to its directory.
pub(crate) trait Fs: Send + Sync + std::fmt::Debug {
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Takes the directory's exclusive lock, held until the returned guard drops.
    fn lock(&self, dir: &Path) -> Result<DirLock, Error>;
    /// Names of the entries of `dir` (non-UTF-8 names are left out: the engine never makes them).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// The whole content of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates a file that must not exist yet, written at explicit offsets ([`FsFile::write_all_at`]).
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Creates a file, or empties an existing one.
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Cuts a file to `len` bytes, durably.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the creates, renames and removes in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file the engine writes.
pub(crate) trait FsFile: Write + Send {
    /// Writes all of `buf` at `offset`, extending the file if it ends before.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Reserves disk space for the `len` bytes at `offset`, the file growing to their end if it
    /// is shorter, with zeros: writes there later change no file size (the WAL's segments, see
    /// `wal::segment`).
    fn allocate(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes everything written so far durable (fdatasync: the length counts as data).
    fn sync(&mut self) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default)]
pub(crate) struct RealFs;

/// A file holding a `flock`, released explicitly when dropped. Closing our descriptor is not
/// enough: a child process forked by another thread at that moment holds a duplicate of it
/// until it execs, and the lock belongs to the open file, so a reopen in this process would
/// find the directory still locked.
struct FlockedFile(File);

impl Drop for FlockedFile {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a valid, open descriptor owned by `self.0`; no memory is involved.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl FsFile for File {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, offset)
    }

    fn allocate(&mut self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let off_t = |n: u64| libc::off_t::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
        // SAFETY: posix_fallocate on a valid, open descriptor owned by `self`; no memory is
        // involved. It returns the error number rather than setting errno.
        match unsafe { libc::posix_fallocate(self.as_raw_fd(), off_t(offset)?, off_t(len)?) } {
            0 => Ok(()),
            error => Err(io::Error::from_raw_os_error(error)),
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

impl Fs for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::DirBuilder::new().recursive(true).mode(PRIVATE_DIR).create(dir)
    }

    fn lock(&self, dir: &Path) -> Result<DirLock, Error> {
        use std::os::fd::AsRawFd;
        let f =
            OpenOptions::new().create(true).truncate(false).write(true).mode(PRIVATE_FILE).open(dir.join("LOCK"))?;
        // SAFETY: flock on a valid, open descriptor owned by `f`; no memory is involved.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(Error::Locked(dir.to_path_buf()));
        }
        Ok(Box::new(FlockedFile(f)))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(OpenOptions::new().create_new(true).write(true).mode(PRIVATE_FILE).open(path)?))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(OpenOptions::new().create(true).truncate(true).write(true).mode(PRIVATE_FILE).open(path)?))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// True for the errors a full disk gives: the write can be retried once space returns.
pub(crate) fn is_out_of_space(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.kind() == io::ErrorKind::QuotaExceeded
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn a_released_lock_is_free_even_while_a_duplicate_of_its_descriptor_lives() {
        let dir = tempfile::tempdir().unwrap();
        let lock = RealFs.lock(dir.path()).unwrap();
        assert!(matches!(RealFs.lock(dir.path()), Err(Error::Locked(_))), "held while the guard lives");
        // What a child forked by another thread holds until it execs.
        let file = &lock.downcast_ref::<FlockedFile>().expect("the real lock").0;
        // SAFETY: dup of a valid descriptor; the duplicate is closed below.
        let duplicate = unsafe { libc::dup(file.as_raw_fd()) };
        assert!(duplicate >= 0);
        drop(lock);
        let again = RealFs.lock(dir.path());
        // SAFETY: closing the descriptor dup returned above, once.
        unsafe { libc::close(duplicate) };
        assert!(again.is_ok(), "the directory stays locked after close: {:?}", again.err());
    }
}
