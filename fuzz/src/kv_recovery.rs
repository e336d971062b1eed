//! The `kv_recovery` fuzz input: a few files of a ledge-kv data directory, and what the target
//! does with them (write them into a fresh directory, open the engine there, read everything).
//!
//! Shared, not copied: the fuzz target uses it through `ledge_fuzz::kv_recovery`, and
//! `host/kv/tests/fuzz_corpus.rs` includes this file (`#[path]`) to replay the saved corpus and
//! to write the seed corpus, so every input decodes the same way in both.
//!
//! Input format, decoded with `arbitrary`'s [`Unstructured`] (short data reads as zeros, so every
//! byte string is some directory): up to [`MAX_FILES`] files, each
//! `tag: u8 | len: u32 LE | min(len, rest) bytes`, where `tag % 3` is the [`Kind`] and
//! `(tag / 3) % 5 + 1` the sequence number (or checkpoint stamp). A later file with the same
//! name replaces an earlier one.

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};

/// Most files one input names.
pub const MAX_FILES: usize = 8;

/// What a file of the data directory is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `wal-{seq:020}.log`
    WalSegment,
    /// `ckpt-{stamp:020}.ckpt`
    Checkpoint,
    /// `ckpt-{stamp:020}.tmp`: an unfinished checkpoint.
    CheckpointTmp,
}

const KINDS: [Kind; 3] = [Kind::WalSegment, Kind::Checkpoint, Kind::CheckpointTmp];

/// One file: its kind, its sequence number (1 to 5) and its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub kind: Kind,
    pub seq: u64,
    pub bytes: Vec<u8>,
}

impl File {
    /// The file's name, as the engine spells it.
    pub fn name(&self) -> String {
        let seq = self.seq;
        match self.kind {
            Kind::WalSegment => format!("wal-{seq:020}.log"),
            Kind::Checkpoint => format!("ckpt-{seq:020}.ckpt"),
            Kind::CheckpointTmp => format!("ckpt-{seq:020}.tmp"),
        }
    }

    /// The file a data-directory entry named `name` is, if it is one of the engine's (and its
    /// number is within the input's range).
    pub fn from_name(name: &str, bytes: Vec<u8>) -> Option<File> {
        let (kind, number) = if let Some(rest) = name.strip_prefix("wal-") {
            (Kind::WalSegment, rest.strip_suffix(".log")?)
        } else if let Some(rest) = name.strip_prefix("ckpt-") {
            match rest.strip_suffix(".ckpt") {
                Some(number) => (Kind::Checkpoint, number),
                None => (Kind::CheckpointTmp, rest.strip_suffix(".tmp")?),
            }
        } else {
            return None;
        };
        let seq = number.parse().ok().filter(|seq| (1..=5).contains(seq))?;
        Some(File { kind, seq, bytes })
    }
}

/// The files of one data directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataDir {
    pub files: Vec<File>,
}

impl<'a> Arbitrary<'a> for DataDir {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut files = Vec::new();
        while files.len() < MAX_FILES && !u.is_empty() {
            let tag: u8 = u.arbitrary()?;
            let len: u32 = u.arbitrary()?;
            let bytes = u.bytes((len as usize).min(u.len()))?.to_vec();
            let kind = KINDS[usize::from(tag % 3)];
            files.push(File { kind, seq: u64::from(tag / 3 % 5) + 1, bytes });
        }
        Ok(DataDir { files })
    }
}

impl DataDir {
    /// The input that decodes to this directory (for writing seeds).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for file in self.files.iter().take(MAX_FILES) {
            let kind = KINDS.iter().position(|k| *k == file.kind).unwrap_or(0) as u8;
            out.push(kind + 3 * ((file.seq.clamp(1, 5) - 1) as u8));
            out.extend_from_slice(&(file.bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&file.bytes);
        }
        out
    }

    /// Reads the engine's files in `dir` (for writing seeds from a real data directory).
    pub fn read(dir: &Path) -> std::io::Result<DataDir> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(file) = File::from_name(&name, std::fs::read(entry.path())?) {
                files.push(file);
            }
        }
        files.sort_by_key(File::name);
        Ok(DataDir { files })
    }

    /// Writes the files into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        for file in &self.files {
            std::fs::write(dir.join(file.name()), &file.bytes)?;
        }
        Ok(())
    }
}

/// Decodes `data` as [`arbitrary`] (and libFuzzer's `fuzz_target!`) would.
pub fn decode(data: &[u8]) -> DataDir {
    DataDir::arbitrary_take_rest(Unstructured::new(data)).unwrap_or_default()
}

/// Every key and value a fresh snapshot sees; `None` when the scan is refused (too large).
fn read_all(db: &ledge_kv::Db) -> Option<Vec<ledge_kv::KeyValue>> {
    db.begin(ledge_kv::Isolation::Snapshot).scan(b"", b"", usize::MAX).ok()
}

/// The target: writes the directory, opens the engine on it (failing is fine: damage is
/// reported as an error), and if it opened, reads every key, closes, and opens again, which must
/// succeed with the same contents: what one recovery accepted (after truncating a torn tail and
/// removing debris) the next one accepts too.
pub fn run(input: &DataDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    input.write(dir.path()).expect("writing the input files");
    let Ok(db) = ledge_kv::Db::open(dir.path()) else { return };
    let seen = read_all(&db);
    let _ = db.close();
    drop(db);
    let again = ledge_kv::Db::open(dir.path()).expect("a directory that opened once opens again");
    assert_eq!(read_all(&again), seen, "a second recovery sees what the first one did");
    let _ = again.close();
}
