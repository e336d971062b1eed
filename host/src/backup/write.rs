//! Writing an archive (`GET /v1/backup`): the image first, then the control state file by
//! file, then the manifest with every entry's size and SHA-256.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::time::SystemTime;

use super::{
    BLOCK, BackupError, CACHES, CONTROL, FORMAT, Hashing, KV_IMAGE, MANIFEST, MAX_DEPTH, Manifest, ManifestFile,
    io_error,
};

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
