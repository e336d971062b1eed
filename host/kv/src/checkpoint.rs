//! Checkpoints: a full image of the committed state as of one stamp.
//!
//! File `ckpt-<stamp>.ckpt`: `MAGIC | stamp: u64 | entries | END_MAGIC | count: u64 | crc: u32`,
//! each entry `cstamp: u64 | klen: u32 | key | vlen: u32 | value`, and `crc` is the CRC32C of
//! everything before it. Only live keys are written (tombstones are simply absent).
//!
//! Invariants:
//! - A checkpoint file is only ever seen complete: it is written to a temp name, fsynced, renamed,
//!   and the directory fsynced before any WAL segment it covers is deleted.
//! - The checkpoint at stamp S holds exactly the effects of commits with stamps <= S; WAL records
//!   with stamps <= S are skipped on replay, later ones applied.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::fs::Fs;

const MAGIC: &[u8; 8] = b"LKVCKPT1";
/// The checkpoint format this build writes and reads (the digit that ends [`MAGIC`]); a backup
/// image is in it too.
pub const FORMAT: u32 = 1;
/// What the magic of every checkpoint format starts with, the format's digit after it.
const MAGIC_PREFIX: &[u8; 7] = b"LKVCKPT";
const END_MAGIC: &[u8; 8] = b"LKVEND01";
const TRAILER: usize = 8 + 8 + 4;

/// Path of the checkpoint at `stamp`.
pub(crate) fn checkpoint_path(dir: &Path, stamp: u64) -> PathBuf {
    dir.join(format!("ckpt-{stamp:020}.ckpt"))
}

/// Parses a checkpoint file name back into its stamp.
pub(crate) fn parse_checkpoint_name(name: &str) -> Option<u64> {
    name.strip_prefix("ckpt-")?.strip_suffix(".ckpt")?.parse().ok()
}

/// Writes a CRC-covered stream.
struct CrcWriter<W: Write> {
    inner: W,
    crc: u32,
}

impl<W: Write> CrcWriter<W> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, b);
        self.inner.write_all(b)
    }
}

/// Writes the image of `entries` (key order, as of `stamp`) to `out`; returns `out`.
pub(crate) fn write_image<W: Write>(
    out: W,
    stamp: u64,
    entries: impl Iterator<Item = (u64, Vec<u8>, Box<[u8]>)>,
) -> io::Result<W> {
    let mut w = CrcWriter { inner: BufWriter::with_capacity(1 << 20, out), crc: 0 };
    w.put(MAGIC)?;
    w.put(&stamp.to_le_bytes())?;
    let mut count = 0u64;
    for (cstamp, k, v) in entries {
        w.put(&cstamp.to_le_bytes())?;
        w.put(&(k.len() as u32).to_le_bytes())?;
        w.put(&k)?;
        w.put(&(v.len() as u32).to_le_bytes())?;
        w.put(&v)?;
        count += 1;
    }
    w.put(END_MAGIC)?;
    w.put(&count.to_le_bytes())?;
    let crc = w.crc;
    w.inner.write_all(&crc.to_le_bytes())?;
    w.inner.into_inner().map_err(|e| e.into_error())
}

/// Writes a checkpoint of `entries` (key order, as of `stamp`) durably into `dir`. A failed
/// write leaves no temporary file behind (a full disk must not fill up further).
pub(crate) fn write(
    fs: &dyn Fs,
    dir: &Path,
    stamp: u64,
    entries: impl Iterator<Item = (u64, Vec<u8>, Box<[u8]>)>,
) -> io::Result<PathBuf> {
    let tmp = dir.join(format!("ckpt-{stamp:020}.tmp"));
    let path = checkpoint_path(dir, stamp);
    let written = fs.create(&tmp).and_then(|file| {
        let mut file = write_image(file, stamp, entries)?;
        file.sync()?;
        drop(file);
        fs.rename(&tmp, &path)?;
        fs.sync_dir(dir)
    });
    if let Err(e) = written {
        let _ = fs.remove(&tmp);
        return Err(e);
    }
    Ok(path)
}

/// Installs a checkpoint image as the only content of `dir`, durably (a restore).
pub(crate) fn install_image(fs: &dyn Fs, dir: &Path, stamp: u64, image: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("ckpt-{stamp:020}.tmp"));
    let mut file = fs.create(&tmp)?;
    file.write_all(image)?;
    file.sync()?;
    drop(file);
    fs.rename(&tmp, &checkpoint_path(dir, stamp))?;
    fs.sync_dir(dir)
}

/// Reads and verifies the checkpoint file at `path`.
pub(crate) fn load(fs: &dyn Fs, path: &Path) -> Result<Loaded, Error> {
    parse(&fs.read(path)?, path)
}

/// A loaded checkpoint.
pub(crate) struct Loaded {
    pub stamp: u64,
    pub entries: Vec<(u64, Vec<u8>, Vec<u8>)>,
}

/// Verifies and decodes a checkpoint image; `file` names it in errors.
pub(crate) fn parse(b: &[u8], file: &Path) -> Result<Loaded, Error> {
    let corrupt = |offset: usize, reason: &str| Error::Corrupt {
        file: file.to_path_buf(),
        offset: offset as u64,
        reason: reason.to_string(),
    };
    // A later format is refused as such, never misread; any other header is damage.
    if let Some(found) = b.get(..8).filter(|magic| magic.starts_with(MAGIC_PREFIX)).and_then(|magic| {
        let digit = magic[7];
        (digit.is_ascii_digit() && u32::from(digit - b'0') > FORMAT).then(|| char::from(digit).to_string())
    }) {
        let reads = FORMAT.to_string();
        return Err(Error::UnsupportedFormat { file: file.to_path_buf(), what: "checkpoint", found, reads });
    }
    if b.len() < 16 + TRAILER || &b[..8] != MAGIC {
        return Err(corrupt(0, "bad checkpoint header"));
    }
    let body_end = b.len() - 4;
    let want = u32::from_le_bytes([b[body_end], b[body_end + 1], b[body_end + 2], b[body_end + 3]]);
    if crc32c::crc32c(&b[..body_end]) != want {
        return Err(corrupt(body_end, "checkpoint checksum mismatch"));
    }
    let end = b.len() - TRAILER;
    if &b[end..end + 8] != END_MAGIC {
        return Err(corrupt(end, "bad checkpoint trailer"));
    }
    let rd_u64 = |at: usize| b.get(at..at + 8).map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])));
    let rd_u32 = |at: usize| b.get(at..at + 4).map(|s| u32::from_le_bytes(s.try_into().unwrap_or([0; 4])) as usize);
    let stamp = rd_u64(8).ok_or_else(|| corrupt(8, "short"))?;
    let count = rd_u64(end + 8).ok_or_else(|| corrupt(end + 8, "short"))?;
    let mut at = 16;
    let mut entries = Vec::new();
    while at < end {
        let bad = || corrupt(at, "malformed checkpoint entry");
        let cstamp = rd_u64(at).ok_or_else(bad)?;
        let klen = rd_u32(at + 8).ok_or_else(bad)?;
        let k = b.get(at + 12..at + 12 + klen).ok_or_else(bad)?.to_vec();
        let vat = at + 12 + klen;
        let vlen = rd_u32(vat).ok_or_else(bad)?;
        let v = b.get(vat + 4..vat + 4 + vlen).ok_or_else(bad)?.to_vec();
        at = vat + 4 + vlen;
        entries.push((cstamp, k, v));
    }
    if at != end || entries.len() as u64 != count {
        return Err(corrupt(at, "checkpoint entry count mismatch"));
    }
    Ok(Loaded { stamp, entries })
}
