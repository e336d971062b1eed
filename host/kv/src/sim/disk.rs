//! A simulated disk with a page cache: what the real disk keeps and loses at a power failure.
//!
//! Each file has a live content (what reads see) and a durable one (what survives a crash),
//! and each directory a live and a durable set of names. The model:
//! - a write changes only the live content; [`FsFile::sync`] makes the whole live content
//!   durable; [`Fs::truncate`] is durable when it returns; [`FsFile::allocate`] is a write of
//!   zeros past the end (so a crash may keep any length of them), cut short at the capacity;
//! - a create, rename or remove changes only the live names; [`Fs::sync_dir`] makes the
//!   directory's live names durable;
//! - at a crash every write since the file's last sync is independently lost, kept, cut at any
//!   byte, or kept sector by sector in any subset (out of order, the gaps read as zeros);
//! - the disk has a capacity: a write past it is cut short and then fails with ENOSPC, as a
//!   full file system does; a sync can be made to fail with ENOSPC once.
//!
//! Every mutating operation is counted; a crash can be scheduled at any count. From that
//! operation on, everything fails (the "process" is gone) and [`SimDisk::crash_image`] holds
//! the durable state as the model tears it. Every choice comes from one seeded generator, and
//! every operation is logged, so a run is reproducible from its seed (and its log shows the
//! interleaving where threads raced).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::Error;
use crate::fs::{DirLock, Fs, FsFile};

/// Sector size: the unit a torn write is kept or lost in, when not cut at a byte.
const SECTOR: usize = 512;
/// How many operations the log keeps (the tail is what explains a failure).
const LOG_KEEP: usize = 64;

/// File contents by path: what a disk holds after a crash.
pub(crate) type Image = BTreeMap<PathBuf, Vec<u8>>;

#[derive(Debug, Default)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Writes since the last sync: (offset, length).
    unsynced: Vec<(usize, usize)>,
}

#[derive(Debug)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    live: BTreeMap<PathBuf, u64>,
    durable: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    ops: u64,
    crash_at: Option<u64>,
    crashed: Option<Image>,
    capacity: usize,
    fail_next_sync: bool,
    rng: StdRng,
    log: Vec<String>,
}

/// The simulated disk; clones share it.
#[derive(Debug, Clone)]
pub(crate) struct SimDisk(Arc<Mutex<State>>);

fn crashed() -> io::Error {
    io::Error::other("simulated power failure: the process is gone")
}

fn out_of_space() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

impl State {
    /// Counts one mutating operation; fails once the crash has happened (or happens now).
    fn tick(&mut self, what: impl FnOnce() -> String) -> io::Result<()> {
        if self.crashed.is_some() {
            return Err(crashed());
        }
        self.ops += 1;
        if self.log.len() == LOG_KEEP {
            self.log.remove(0);
        }
        self.log.push(format!("#{} {}", self.ops, what()));
        if self.crash_at == Some(self.ops) {
            self.crash();
            return Err(crashed());
        }
        Ok(())
    }

    fn crash(&mut self) {
        let mut image = Image::new();
        let durable: Vec<(PathBuf, u64)> = self.durable.iter().map(|(p, i)| (p.clone(), *i)).collect();
        for (path, ino) in durable {
            let inode = &self.inodes[&ino];
            let mut bytes = inode.durable.clone();
            for &(offset, len) in &inode.unsynced {
                let Some(written) = inode.live.get(offset..offset + len) else { continue };
                let kept: Vec<(usize, usize)> = match self.rng.random_range(0..4) {
                    0 => vec![],
                    1 => vec![(0, len)],
                    2 => vec![(0, self.rng.random_range(0..=len))],
                    _ => (0..len)
                        .step_by(SECTOR)
                        .filter(|_| self.rng.random_bool(0.5))
                        .map(|at| (at, (at + SECTOR).min(len)))
                        .collect(),
                };
                for (from, to) in kept {
                    if bytes.len() < offset + to {
                        bytes.resize(offset + to, 0);
                    }
                    bytes[offset + from..offset + to].copy_from_slice(&written[from..to]);
                }
            }
            image.insert(path, bytes);
        }
        self.crashed = Some(image);
    }

    fn used(&self) -> usize {
        self.live.values().collect::<BTreeSet<_>>().iter().map(|ino| self.inodes[ino].live.len()).sum()
    }

    fn new_inode(&mut self) -> u64 {
        self.next_inode += 1;
        self.inodes.insert(self.next_inode, Inode::default());
        self.next_inode
    }
}

impl SimDisk {
    /// A disk holding `image`, all of it durable.
    pub(crate) fn new(seed: u64, image: &Image) -> SimDisk {
        let mut st = State {
            inodes: HashMap::new(),
            next_inode: 0,
            live: BTreeMap::new(),
            durable: BTreeMap::new(),
            dirs: BTreeSet::new(),
            ops: 0,
            crash_at: None,
            crashed: None,
            capacity: usize::MAX,
            fail_next_sync: false,
            rng: StdRng::seed_from_u64(seed),
            log: Vec::new(),
        };
        for (path, bytes) in image {
            let ino = st.new_inode();
            let inode = st.inodes.get_mut(&ino).expect("just made");
            inode.live = bytes.clone();
            inode.durable = bytes.clone();
            st.live.insert(path.clone(), ino);
            st.durable.insert(path.clone(), ino);
            if let Some(dir) = path.parent() {
                st.dirs.insert(dir.to_path_buf());
            }
        }
        SimDisk(Arc::new(Mutex::new(st)))
    }

    /// Crashes when the operation count reaches `op`.
    pub(crate) fn crash_at(&self, op: u64) {
        self.0.lock().crash_at = Some(op);
    }

    /// Crashes now, unless a crash happened already.
    pub(crate) fn crash_now(&self) {
        let mut st = self.0.lock();
        if st.crashed.is_none() {
            let ops = st.ops;
            st.log.push(format!("#{ops} crash at the end of the workload"));
            st.crash();
        }
    }

    /// What survived the crash, once it happened.
    pub(crate) fn crash_image(&self) -> Option<Image> {
        self.0.lock().crashed.clone()
    }

    /// The names of the files there are now.
    pub(crate) fn names(&self) -> Vec<String> {
        self.0.lock().live.keys().map(|p| p.display().to_string()).collect()
    }

    /// The last operations, oldest first.
    pub(crate) fn log(&self) -> Vec<String> {
        self.0.lock().log.clone()
    }

    /// Limits the bytes all files may hold together.
    pub(crate) fn set_capacity(&self, bytes: usize) {
        self.0.lock().capacity = bytes;
    }

    /// Bytes all files hold now.
    pub(crate) fn used(&self) -> usize {
        self.0.lock().used()
    }

    /// Makes the next sync fail with ENOSPC (as a file system that allocates at writeback does).
    pub(crate) fn fail_next_sync(&self) {
        self.0.lock().fail_next_sync = true;
    }
}

/// An open file on the simulated disk, on the inode it was opened on.
struct SimFile {
    disk: SimDisk,
    ino: u64,
    path: PathBuf,
}

impl SimFile {
    /// Writes what fits of `buf` at `offset` (at the end when `None`), as one operation; the
    /// bytes past the file's end count against the capacity.
    fn write_part(&mut self, buf: &[u8], offset: Option<usize>) -> io::Result<usize> {
        let mut st = self.disk.0.lock();
        let at = offset.map_or_else(String::new, |offset| format!(" at {offset}"));
        st.tick(|| format!("write {}{at} +{}", self.path.display(), buf.len()))?;
        let room = st.capacity.saturating_sub(st.used());
        let inode = &st.inodes[&self.ino];
        let offset = offset.unwrap_or(inode.live.len());
        let inside = inode.live.len().saturating_sub(offset).min(buf.len());
        let n = buf.len().min(inside + room);
        if n == 0 && !buf.is_empty() {
            return Err(out_of_space());
        }
        let inode = st.inodes.get_mut(&self.ino).expect("open files keep their inode");
        if inode.live.len() < offset + n {
            inode.live.resize(offset + n, 0);
        }
        inode.live[offset..offset + n].copy_from_slice(&buf[..n]);
        inode.unsynced.push((offset, n));
        Ok(n)
    }
}

impl Write for SimFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_part(buf, None)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FsFile for SimFile {
    fn write_all_at(&mut self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.write_part(buf, Some(offset as usize))?;
            buf = &buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    fn allocate(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let mut st = self.disk.0.lock();
        st.tick(|| format!("allocate {} +{len} at {offset}", self.path.display()))?;
        let end = (offset + len) as usize;
        let room = st.capacity.saturating_sub(st.used());
        let inode = st.inodes.get_mut(&self.ino).expect("open files keep their inode");
        let grows = end.saturating_sub(inode.live.len());
        // Past the capacity it allocates what fits and fails, as a file system does that grows
        // the file chunk by chunk.
        let fits = grows.min(room);
        if fits > 0 {
            inode.unsynced.push((inode.live.len(), fits));
            let len = inode.live.len() + fits;
            inode.live.resize(len, 0);
        }
        if fits < grows { Err(out_of_space()) } else { Ok(()) }
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut st = self.disk.0.lock();
        st.tick(|| format!("fdatasync {}", self.path.display()))?;
        if std::mem::take(&mut st.fail_next_sync) {
            return Err(out_of_space());
        }
        let inode = st.inodes.get_mut(&self.ino).expect("open files keep their inode");
        inode.durable = inode.live.clone();
        inode.unsynced.clear();
        Ok(())
    }
}

impl Fs for SimDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.0.lock().dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn lock(&self, _dir: &Path) -> Result<DirLock, Error> {
        Ok(Box::new(()))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.0.lock();
        if st.crashed.is_some() {
            return Err(crashed());
        }
        let names = st.live.keys().filter(|p| p.parent() == Some(dir));
        Ok(names.filter_map(|p| p.file_name()?.to_str().map(str::to_string)).collect())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = self.0.lock();
        if st.crashed.is_some() {
            return Err(crashed());
        }
        let ino = st.live.get(path).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(st.inodes[ino].live.clone())
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut st = self.0.lock();
        st.tick(|| format!("create_new {}", path.display()))?;
        if st.live.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let ino = st.new_inode();
        st.live.insert(path.to_path_buf(), ino);
        Ok(Box::new(SimFile { disk: self.clone(), ino, path: path.to_path_buf() }))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut st = self.0.lock();
        st.tick(|| format!("create {}", path.display()))?;
        let ino = match st.live.get(path) {
            Some(&ino) => {
                let inode = st.inodes.get_mut(&ino).expect("named inodes exist");
                inode.live.clear();
                inode.unsynced.clear();
                ino
            }
            None => {
                let ino = st.new_inode();
                st.live.insert(path.to_path_buf(), ino);
                ino
            }
        };
        Ok(Box::new(SimFile { disk: self.clone(), ino, path: path.to_path_buf() }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut st = self.0.lock();
        st.tick(|| format!("truncate {} to {len}", path.display()))?;
        let ino = *st.live.get(path).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let inode = st.inodes.get_mut(&ino).expect("named inodes exist");
        inode.live.truncate(len as usize);
        inode.durable = inode.live.clone();
        inode.unsynced.clear();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.0.lock();
        st.tick(|| format!("rename {} -> {}", from.display(), to.display()))?;
        let ino = st.live.remove(from).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        st.live.insert(to.to_path_buf(), ino);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.0.lock();
        st.tick(|| format!("remove {}", path.display()))?;
        st.live.remove(path).map(drop).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.0.lock();
        st.tick(|| format!("sync_dir {}", dir.display()))?;
        st.durable.retain(|p, _| p.parent() != Some(dir));
        let names: Vec<(PathBuf, u64)> =
            st.live.iter().filter(|(p, _)| p.parent() == Some(dir)).map(|(p, i)| (p.clone(), *i)).collect();
        st.durable.extend(names);
        Ok(())
    }
}
