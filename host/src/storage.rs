//! Durable file writes: nothing half-written is ever visible under its final name.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` atomically and durably: a temp file beside it, fsync, rename,
/// fsync of the directory. A crash leaves either the old file or the new one.
pub fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other("path has no parent directory"))?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|error| error.error)?;
    sync_dir(dir)
}

/// From now on, every file and directory this process creates is its owner's alone (umask
/// 077: files 0600, directories 0700), whoever writes it: the data dir holds every function's
/// components, data and secrets, whatever the mode of the folder an operator made for it.
/// Called by the commands that write a data dir (`serve`, `dev`, `restore`); inherited by
/// what they spawn.
pub fn keep_new_files_private() {
    // SAFETY: umask only swaps the process's file-creation mask; no memory is involved.
    unsafe { libc::umask(0o077) };
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and parents) with mode 0700: everything under the data dir is ledge's own.
/// Each directory it creates is made durable in its parent, so a crash cannot lose a folder
/// whose files were already fsynced.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut missing = Vec::new();
    let mut next = Some(dir);
    while let Some(path) = next.filter(|path| !path.as_os_str().is_empty() && !path.exists()) {
        missing.push(path);
        next = path.parent();
    }
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    for created in missing.iter().rev() {
        let parent = created.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        sync_dir(parent)?;
    }
    Ok(())
}
