//! Reading an archive: [`verify`] checks every entry against the manifest without writing
//! anything; [`restore`] checks the same, then builds the data dir beside its destination and
//! renames it into place.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    BackupError, FORMAT, Hashing, KV_IMAGE, MANIFEST, MAX_DEPTH, MAX_MANIFEST, Manifest, ManifestFile, damaged,
    io_error,
};
use crate::storage::{create_private_dir, sync_dir};

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
    // The archive's format stands for the formats of what it holds: the new data dir is in
    // this build's (`datadir`), and says so from the start.
    crate::datadir::record(staging.path())
        .map_err(io_error(format!("writing {}", staging.path().join(crate::datadir::MARKER).display())))?;
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
        let target = dest.join(&path);
        let failed = || io_error(format!("writing {}", target.display()));
        if let Some(parent) = target.parent() {
            create_private_dir(parent).map_err(failed())?;
        }
        // Every restored file is private (0600), as the node writes them, whatever the archive says.
        let mut out = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&target).map_err(failed())?;
        let mut hashing = Hashing::new(&mut entry);
        io::copy(&mut hashing, &mut out).map_err(read_error(archive))?;
        if hashing.finish() != (listed.size, listed.sha256.clone()) {
            return Err(changed());
        }
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
