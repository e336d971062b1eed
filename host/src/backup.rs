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
//!   (debris of interrupted writes, removed at start), and `kv/` itself (the image stands for
//!   it);
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

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::storage::{create_private_dir, sync_dir};

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

/// A tar header for a regular file of `size` bytes (the path is set by the caller).
fn file_header(size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(mode);
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    header.set_mtime(now);
    header
}

/// Writes the archive of the node whose data dir is `data_dir` and whose engine is `db` into
/// `out` (a new, empty file), and returns it rewound with the manifest (blocking). Call it
/// while registry changes are held off: function files are copied as they are.
pub fn write(out: File, data_dir: &Path, db: &ledge_kv::Db) -> Result<(File, Manifest), BackupError> {
    let failed = io_error("writing the backup archive");
    let mut builder = tar::Builder::new(BufWriter::with_capacity(1 << 20, out));
    let mut files = Vec::new();
    let kv_stamp = append_image(&mut builder, db, &mut files)?;
    for name in CONTROL {
        append_tree(&mut builder, data_dir, Path::new(name), 1, &mut files)?;
    }
    let manifest = Manifest {
        format: FORMAT,
        ledge_version: env!("CARGO_PKG_VERSION").to_string(),
        created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        kv_stamp,
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| failed(io::Error::other(e)))?;
    let mut header = file_header(json.len() as u64, 0o600);
    builder.append_data(&mut header, MANIFEST, json.as_slice()).map_err(io_error("writing the backup archive"))?;
    let buffered = builder.into_inner().map_err(io_error("writing the backup archive"))?;
    let mut out = buffered.into_inner().map_err(|error| io_error("writing the backup archive")(error.into_error()))?;
    out.seek(SeekFrom::Start(0)).map_err(io_error("rewinding the backup archive"))?;
    Ok((out, manifest))
}

/// Streams the engine's image straight into the archive: a placeholder header first, the
/// image, then the real header written over the placeholder once the size is known.
fn append_image(
    builder: &mut tar::Builder<BufWriter<File>>,
    db: &ledge_kv::Db,
    files: &mut Vec<ManifestFile>,
) -> Result<u64, BackupError> {
    let failed = || io_error("writing the key-value image into the archive");
    let out = builder.get_mut();
    let start = out.stream_position().map_err(failed())?;
    out.write_all(&[0; BLOCK]).map_err(failed())?;
    let mut hashing = Hashing::new(&mut *out);
    let stamp = db.backup(&mut hashing).map_err(BackupError::Image)?;
    let (size, sha256) = hashing.finish();
    let padding = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
    out.write_all(&[0; BLOCK][..padding]).map_err(failed())?;
    out.flush().map_err(failed())?;
    let mut header = file_header(size, 0o600);
    header.set_path(KV_IMAGE).map_err(failed())?;
    header.set_cksum();
    out.get_ref().write_all_at(header.as_bytes(), start).map_err(failed())?;
    files.push(ManifestFile { path: KV_IMAGE.to_string(), size, sha256 });
    Ok(stamp)
}

/// Appends the file or folder `relative` (under `data_dir`), if it exists, recursively.
fn append_tree(
    builder: &mut tar::Builder<BufWriter<File>>,
    data_dir: &Path,
    relative: &Path,
    depth: usize,
    files: &mut Vec<ManifestFile>,
) -> Result<(), BackupError> {
    let path = data_dir.join(relative);
    let metadata = match fs::symlink_metadata(&path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(io_error(format!("reading {}", path.display()))(error)),
    };
    if metadata.is_dir() && depth < MAX_DEPTH {
        let mut names: Vec<String> = Vec::new();
        for entry in fs::read_dir(&path).map_err(io_error(format!("listing {}", path.display())))? {
            let entry = entry.map_err(io_error(format!("listing {}", path.display())))?;
            match entry.file_name().into_string() {
                Ok(name) => names.push(name),
                Err(name) => tracing::warn!(?name, dir = %path.display(), "not backed up: the name is not UTF-8"),
            }
        }
        names.sort();
        for name in names {
            if name.starts_with('.') || name.ends_with(".staging") || CACHES.contains(&name.as_str()) {
                continue;
            }
            append_tree(builder, data_dir, &relative.join(name), depth + 1, files)?;
        }
    } else if metadata.is_file() {
        let failed = || io_error(format!("copying {} into the archive", path.display()));
        let mut file = File::open(&path).map_err(failed())?;
        let metadata = file.metadata().map_err(failed())?;
        let size = metadata.len();
        let mut header = file_header(size, metadata.permissions().mode() & 0o777);
        let mut hashing = Hashing::new((&mut file).take(size));
        builder.append_data(&mut header, relative, &mut hashing).map_err(failed())?;
        let (copied, sha256) = hashing.finish();
        if copied != size {
            let error = io::Error::other(format!("it changed size while being copied ({copied} of {size} bytes)"));
            return Err(failed()(error));
        }
        let path = relative.to_str().expect("names are UTF-8").to_string();
        files.push(ManifestFile { path, size, sha256 });
    } else {
        // ledge makes no links or special files in its data dir.
        tracing::warn!(path = %path.display(), "not backed up: not a regular file or folder");
    }
    Ok(())
}

/// Whether `path` may be an entry of an archive: relative, plain components only, under one of
/// the names a data dir's control state has (or the image, or the manifest).
fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > 1024 {
        return Err("an entry has an empty or overlong name".into());
    }
    if path.starts_with('/') {
        return Err(format!("the entry `{}` has an absolute path", path.escape_debug()));
    }
    let parts: Vec<&str> = path.split('/').collect();
    let plain = |part: &&str| !part.is_empty() && *part != "." && *part != ".." && !part.contains(['\0', '\\']);
    if !parts.iter().all(plain) {
        return Err(format!(
            "the entry `{}` is not a plain relative path (`..`, `.` or empty parts)",
            path.escape_debug()
        ));
    }
    match parts.as_slice() {
        _ if parts.len() > MAX_DEPTH => Err(format!("the entry `{}` is nested too deep", path.escape_debug())),
        [MANIFEST] | [KV_IMAGE] | ["admin.token"] => Ok(()),
        ["keys" | "tls" | "functions", _, ..] => Ok(()),
        _ => Err(format!("the entry `{}` is not part of a ledge data dir", path.escape_debug())),
    }
}

/// The entry's path, checked (a regular file at an allowed path).
fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, BackupError> {
    let bytes = entry.path_bytes();
    let path = std::str::from_utf8(&bytes).map_err(|_| damaged("an entry's name is not UTF-8"))?.to_string();
    check_path(&path).map_err(damaged)?;
    let kind = entry.header().entry_type();
    if kind != tar::EntryType::Regular {
        return Err(damaged(format!(
            "the entry `{path}` is not a regular file ({kind:?}): a ledge backup holds files only"
        )));
    }
    Ok(path)
}

/// A read error while going through the archive: almost always an archive cut short, or a
/// file that is no tar at all. The tar parser's message may quote the bytes it choked on: only
/// its first line, shortened, is kept.
fn read_error(archive: &Path) -> impl FnOnce(io::Error) -> BackupError {
    let name = archive.display().to_string();
    move |error| {
        let text = error.to_string();
        let first_line = text.lines().next().unwrap_or_default();
        let brief: String = first_line.chars().take(80).collect();
        damaged(format!("reading {name} failed ({}): the file is truncated or not a tar archive", brief.escape_debug()))
    }
}

/// Reads the whole archive at `archive` and checks it: every entry's name and kind, the
/// manifest's format, and that the entries are exactly the manifest's files with their sizes
/// and digests. Returns the manifest. Writes nothing.
pub fn verify(archive: &Path) -> Result<Manifest, BackupError> {
    let file = File::open(archive).map_err(io_error(format!("cannot open {}", archive.display())))?;
    let mut tar = tar::Archive::new(BufReader::with_capacity(1 << 20, file));
    let mut seen: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut manifest = None;
    for entry in tar.entries().map_err(read_error(archive))? {
        let mut entry = entry.map_err(read_error(archive))?;
        let path = entry_path(&entry)?;
        let size = entry.size();
        if path == MANIFEST {
            if manifest.is_some() {
                return Err(damaged(format!("it holds two {MANIFEST}")));
            }
            if size > MAX_MANIFEST {
                return Err(damaged(format!("its {MANIFEST} is larger than {MAX_MANIFEST} bytes")));
            }
            let mut bytes = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut bytes).map_err(read_error(archive))?;
            if bytes.len() as u64 != size {
                return Err(damaged(format!("{MANIFEST} is cut short: the file is truncated")));
            }
            manifest = Some(parse_manifest(&bytes)?);
            continue;
        }
        let mut hashing = Hashing::new(&mut entry);
        io::copy(&mut hashing, &mut io::sink()).map_err(read_error(archive))?;
        let (read, sha256) = hashing.finish();
        if read != size {
            return Err(damaged(format!("`{path}` is cut short ({read} of {size} bytes): the file is truncated")));
        }
        if seen.insert(path.clone(), (size, sha256)).is_some() {
            return Err(damaged(format!("it holds `{path}` twice")));
        }
    }
    let manifest = manifest
        .ok_or_else(|| damaged(format!("it has no {MANIFEST} (not a ledge backup, or the file is truncated)")))?;
    for file in &manifest.files {
        match seen.remove(&file.path) {
            None => return Err(damaged(format!("`{}` is in the manifest but not in the archive", file.path))),
            Some((size, _)) if size != file.size => {
                return Err(damaged(format!("`{}` is {size} bytes, the manifest says {}", file.path, file.size)));
            }
            Some((_, sha256)) if sha256 != file.sha256 => {
                return Err(damaged(format!(
                    "`{}` does not match its SHA-256 in the manifest: it is damaged",
                    file.path
                )));
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = seen.keys().next() {
        return Err(damaged(format!("`{extra}` is in the archive but not in its manifest")));
    }
    Ok(manifest)
}

/// Parses and checks the manifest: the format first (a later format may look different), then
/// its list of files (valid names, each once, the image among them).
fn parse_manifest(bytes: &[u8]) -> Result<Manifest, BackupError> {
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let format: Format =
        serde_json::from_slice(bytes).map_err(|e| damaged(format!("{MANIFEST} does not parse: {e}")))?;
    if format.format != FORMAT {
        return Err(damaged(format!(
            "it is in backup format {}; this ledge reads format {FORMAT}: restore it with the ledge that made it",
            format.format
        )));
    }
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(|e| damaged(format!("{MANIFEST} does not parse: {e}")))?;
    let mut names = std::collections::HashSet::new();
    for file in &manifest.files {
        check_path(&file.path).map_err(|reason| damaged(format!("{MANIFEST}: {reason}")))?;
        if file.path == MANIFEST || !names.insert(file.path.as_str()) {
            return Err(damaged(format!("{MANIFEST} lists `{}` more than once or lists itself", file.path)));
        }
    }
    if !names.contains(KV_IMAGE) {
        return Err(damaged(format!("{MANIFEST} lists no {KV_IMAGE}")));
    }
    Ok(manifest)
}

/// Makes `data_dir` a new data dir holding what the archive at `archive` holds (blocking; no
/// server needed). Refuses a `data_dir` that exists and is not an empty folder. The archive is
/// verified whole first; then everything is written and fsynced under a temporary name beside
/// `data_dir` and renamed into place. On any failure nothing is left behind.
pub fn restore(archive: &Path, data_dir: &Path) -> Result<Manifest, BackupError> {
    refuse_existing(data_dir)?;
    let name = data_dir
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| BackupError::Target(format!("{}: name a new folder to restore into", data_dir.display())))?;
    let manifest = verify(archive)?;
    let parent = match data_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    create_private_dir(&parent).map_err(io_error(format!("cannot create {}", parent.display())))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}.restore-"))
        .tempdir_in(&parent)
        .map_err(io_error(format!("cannot create a temporary folder in {}", parent.display())))?;
    fs::set_permissions(staging.path(), Permissions::from_mode(0o700))
        .map_err(io_error(format!("setting the mode of {}", staging.path().display())))?;
    extract(archive, staging.path(), &manifest)?;
    sync_tree(staging.path()).map_err(io_error(format!("syncing {}", staging.path().display())))?;
    fs::rename(staging.path(), data_dir).map_err(|error| match error.kind() {
        io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::AlreadyExists => BackupError::NotEmpty(data_dir.into()),
        _ => io_error(format!("cannot rename the restored data dir to {}", data_dir.display()))(error),
    })?;
    // Renamed: nothing left to clean up.
    let _ = staging.keep();
    sync_dir(&parent).map_err(io_error(format!("syncing {}", parent.display())))?;
    Ok(manifest)
}

/// Refuses a target that exists, unless it is an empty folder.
fn refuse_existing(data_dir: &Path) -> Result<(), BackupError> {
    match fs::symlink_metadata(data_dir) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error(format!("cannot inspect {}", data_dir.display()))(error)),
        Ok(metadata) if !metadata.is_dir() => {
            Err(BackupError::Target(format!("{} exists and is not a folder", data_dir.display())))
        }
        Ok(_) => {
            let mut entries =
                fs::read_dir(data_dir).map_err(io_error(format!("cannot list {}", data_dir.display())))?;
            if entries.next().is_some() { Err(BackupError::NotEmpty(data_dir.into())) } else { Ok(()) }
        }
    }
}

/// Writes every entry under `dest` (checked again against the verified manifest as it goes),
/// then makes `dest/kv` a database from the image.
fn extract(archive: &Path, dest: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    let expected: BTreeMap<&str, &ManifestFile> = manifest.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let file = File::open(archive).map_err(io_error(format!("cannot open {}", archive.display())))?;
    let mut tar = tar::Archive::new(BufReader::with_capacity(1 << 20, file));
    let mut image = None;
    for entry in tar.entries().map_err(read_error(archive))? {
        let mut entry = entry.map_err(read_error(archive))?;
        let path = entry_path(&entry)?;
        if path == MANIFEST {
            continue;
        }
        let listed = expected.get(path.as_str()).ok_or_else(|| damaged(format!("`{path}` is not in the manifest")))?;
        let changed = || damaged(format!("`{path}` changed since it was verified"));
        if path == KV_IMAGE {
            let mut bytes = Vec::new();
            let mut hashing = Hashing::new(&mut entry);
            hashing.read_to_end(&mut bytes).map_err(read_error(archive))?;
            if hashing.finish() != (listed.size, listed.sha256.clone()) {
                return Err(changed());
            }
            image = Some(bytes);
            continue;
        }
        let mode = restored_mode(&path, entry.header().mode().unwrap_or(0o600));
        let target = dest.join(&path);
        let failed = || io_error(format!("writing {}", target.display()));
        if let Some(parent) = target.parent() {
            create_private_dir(parent).map_err(failed())?;
        }
        let mut out = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&target).map_err(failed())?;
        let mut hashing = Hashing::new(&mut entry);
        io::copy(&mut hashing, &mut out).map_err(read_error(archive))?;
        if hashing.finish() != (listed.size, listed.sha256.clone()) {
            return Err(changed());
        }
        out.set_permissions(Permissions::from_mode(mode)).map_err(failed())?;
        out.sync_all().map_err(failed())?;
    }
    let image = image.ok_or_else(|| damaged(format!("{KV_IMAGE} is missing")))?;
    let kv = dest.join("kv");
    let stamp = ledge_kv::Db::restore(&kv, &image).map_err(BackupError::Restore)?;
    fs::set_permissions(&kv, Permissions::from_mode(0o700))
        .map_err(io_error(format!("setting the mode of {}", kv.display())))?;
    if stamp != manifest.kv_stamp {
        return Err(damaged(format!("the image holds stamp {stamp}, the manifest says {}", manifest.kv_stamp)));
    }
    Ok(())
}

/// The mode a restored file gets: as archived but never executable or writable by others,
/// and keys, tokens and configuration (which may hold secrets) always 0600.
fn restored_mode(path: &str, archived: u32) -> u32 {
    let secret = path.starts_with("keys/")
        || path == "admin.token"
        || (path.starts_with("tls/") && path.ends_with(".key"))
        || (path.starts_with("functions/") && path.ends_with("/config.json"));
    if secret { 0o600 } else { (archived & 0o644) | 0o600 }
}

/// Fsyncs every folder under `dir` (and `dir`), deepest first; files are synced as written.
fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_of_a_data_dir_are_entries() {
        for good in ["kv.image", "ledge-backup.json", "admin.token", "keys/root-1.key", "functions/a/v1/component.wasm"]
        {
            assert_eq!(check_path(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "functions/../../x",
            "functions/./a",
            "functions//a",
            "functions/a/",
            "keys",
            "kv/wal-1",
            "other.txt",
            "functions/a/b/c/d/e/f/g/h",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_are_restored_private_and_nothing_executable() {
        assert_eq!(restored_mode("keys/secrets.key", 0o644), 0o600);
        assert_eq!(restored_mode("admin.token", 0o777), 0o600);
        assert_eq!(restored_mode("functions/a/config.json", 0o644), 0o600);
        assert_eq!(restored_mode("functions/a/v1/component.wasm", 0o777), 0o644);
        assert_eq!(restored_mode("functions/a/meta.json", 0o600), 0o600);
    }

    #[test]
    fn a_manifest_names_its_functions_and_must_list_the_image() {
        let file = |path: &str| ManifestFile { path: path.into(), size: 1, sha256: String::new() };
        let manifest = Manifest {
            format: FORMAT,
            ledge_version: "0".into(),
            created_at: String::new(),
            kv_stamp: 1,
            files: vec![file("kv.image"), file("functions/a/meta.json"), file("functions/a/v1/version.json")],
        };
        assert_eq!(manifest.functions(), ["a"]);
        let json = serde_json::to_vec(&manifest).unwrap();
        assert!(parse_manifest(&json).is_ok());
        let without_image = Manifest { files: vec![file("admin.token")], ..manifest.clone() };
        assert!(parse_manifest(&serde_json::to_vec(&without_image).unwrap()).is_err());
        let future = Manifest { format: 2, ..manifest };
        let error = parse_manifest(&serde_json::to_vec(&future).unwrap()).unwrap_err().to_string();
        assert!(error.contains("format 2"), "{error}");
    }
}
