//! The data dir's formats: `DATA_DIR/format.json` names the version of each on-disk format the
//! data dir holds, so that no build misreads, or quietly rewrites, a data dir another build
//! wrote.
//!
//! | key | what | version |
//! |---|---|---|
//! | `wal` | the engine's WAL segments (`kv/wal-*.log`) | [`ledge_kv::WAL_FORMAT`] (reads from [`ledge_kv::WAL_OLDEST_FORMAT`]) |
//! | `checkpoint` | the engine's checkpoints (`kv/ckpt-*.ckpt`) and backup images | [`ledge_kv::CHECKPOINT_FORMAT`] |
//! | `registry` | the files outside `kv/`: `functions/` (`registry::layout`), `keys/`, `tls/`, `admin.token`, `node.id` | [`REGISTRY`] |
//! | `traces` | kept traces in the engine's system keyspace (`record::trace`) | [`TRACES`] |
//!
//! The rule, checked by [`inspect`] before `ledge serve` (or `ledge dev`) writes anything:
//! - no data dir, or an empty one: a new one, whose marker is written before anything else;
//! - a marker naming a later version than this build writes, or a format it does not know:
//!   refused, it was written by a newer ledge;
//! - a version older than this build still reads ([`Format::reads_from`]): refused too;
//! - readable older versions, or no marker in a data dir that holds files (one written before
//!   versions were recorded, every format at its [`Format::unrecorded`] version): opened, and
//!   the marker is recorded with this build's versions; the marker is the only file written
//!   for it, nothing else is rewritten;
//! - a marker that does not parse: refused.
//!
//! A refusal names each format with the version found and the versions this build reads, and
//! what to do; the data dir stays untouched. The engine also refuses, on its own, a WAL
//! segment or checkpoint whose header names a later format ([`ledge_kv::Error::UnsupportedFormat`]),
//! and the trace decoder a trace of a later format.
//!
//! Changing a format is one constant here (or in `ledge-kv`), plus either code that still reads
//! the previous version (`reads_from` stays) or a refusal of it (`reads_from` moves up).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::storage::write_durably;

/// The marker's name in the data dir.
pub const MARKER: &str = "format.json";
/// The most a marker may hold: a few formats take a few hundred bytes.
const MAX_MARKER_BYTES: u64 = 64 << 10;
/// The layout of the data dir's files outside `kv/`.
pub const REGISTRY: u32 = 1;
/// The trace format (`record::trace`: the version in each trace's header). 2 added the
/// `corpus` reason ([`crate::record::trace::Reason::Corpus`]), which a format-1 reader cannot
/// decode; format-1 traces decode as they are.
pub const TRACES: u32 = 2;

/// One on-disk format of the data dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// Its name in the marker.
    pub key: &'static str,
    /// What it is, in messages.
    pub what: &'static str,
    /// The version this build writes.
    pub writes: u32,
    /// The oldest version this build reads.
    pub reads_from: u32,
    /// The version a data dir holds when its marker does not name this format: what builds
    /// wrote before versions were recorded.
    pub unrecorded: u32,
}

/// Every format of the data dir.
pub const FORMATS: [Format; 4] = [
    Format {
        key: "wal",
        what: "engine WAL",
        writes: ledge_kv::WAL_FORMAT,
        reads_from: ledge_kv::WAL_OLDEST_FORMAT,
        unrecorded: 1,
    },
    Format {
        key: "checkpoint",
        what: "engine checkpoint",
        writes: ledge_kv::CHECKPOINT_FORMAT,
        reads_from: 1,
        unrecorded: 1,
    },
    Format { key: "registry", what: "registry layout", writes: REGISTRY, reads_from: 1, unrecorded: 1 },
    Format { key: "traces", what: "trace", writes: TRACES, reads_from: 1, unrecorded: 1 },
];

/// A version of each format, by key.
pub type Versions = BTreeMap<String, u32>;

/// The versions this build writes.
pub fn current() -> Versions {
    FORMATS.iter().map(|format| (format.key.to_string(), format.writes)).collect()
}

/// `format.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Marker {
    formats: Versions,
    /// The ledge that recorded it (`X.Y.Z (COMMIT)`), for people and messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    recorded_by: Option<String>,
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// No data dir yet, or an empty folder.
    New,
    /// The marker names the versions this build writes.
    Current,
    /// A data dir with files and no marker: written before versions were recorded, readable.
    Unrecorded,
    /// The marker names older versions that this build reads.
    Older { found: Versions },
}

impl State {
    /// Whether [`record`] is due once the data dir exists.
    pub fn needs_record(&self) -> bool {
        *self != State::Current
    }
}

/// One format of a data dir this build cannot open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// A later version than this build writes.
    Newer { format: Format, found: u32 },
    /// An earlier version than this build reads.
    Older { format: Format, found: u32 },
    /// A format this build does not know of.
    Unknown { key: String, found: u32 },
}

#[derive(Debug, Error)]
pub enum FormatError {
    #[error("cannot read {}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error(
        "{} does not parse ({reason}): it names the versions of the data dir's formats and only ledge writes it. Restore the data dir from a backup (`ledge restore FILE --data-dir NEW_DIR`), or remove the file only if you know that a ledge from before format versions were recorded wrote this data dir. Nothing in the data dir was changed",
        path.display()
    )]
    Marker { path: PathBuf, reason: String },
    #[error("{}", describe(.dir, .found, .recorded))]
    Incompatible { dir: PathBuf, found: Vec<Mismatch>, recorded: bool },
}

/// What this build reads of `format`: `1` or `1 to 2`.
fn reads(format: &Format) -> String {
    match format.reads_from == format.writes {
        true => format.writes.to_string(),
        false => format!("{} to {}", format.reads_from, format.writes),
    }
}

/// The message of [`FormatError::Incompatible`]: each format, then what to do.
fn describe(dir: &Path, found: &[Mismatch], recorded: &bool) -> String {
    let items: Vec<String> = found
        .iter()
        .map(|mismatch| match mismatch {
            Mismatch::Newer { format, found } | Mismatch::Older { format, found } => {
                format!("{} format {found} (this build reads {})", format.what, reads(format))
            }
            Mismatch::Unknown { key, found } => format!("a `{key}` format {found}, unknown to this build"),
        })
        .collect();
    let origin = if *recorded { "" } else { " (it has no format.json: it was written before versions were recorded)" };
    let mut text = format!(
        "the data dir {} holds formats this ledge ({}) cannot read{origin}: {}.",
        dir.display(),
        env!("CARGO_PKG_VERSION"),
        items.join("; ")
    );
    if found.iter().any(|mismatch| !matches!(mismatch, Mismatch::Older { .. })) {
        text.push_str(
            " It was written by a newer ledge: run that ledge (or a later one) on it, or restore a backup \
             this ledge can read (one made with `ledge backup` before the upgrade) into a new data dir \
             with `ledge restore FILE --data-dir NEW_DIR`.",
        );
    }
    if found.iter().any(|mismatch| matches!(mismatch, Mismatch::Older { .. })) {
        text.push_str(
            " It was written by an older ledge whose format this one no longer reads: open it first with a \
             ledge release that reads both versions (it records the upgrade), or restore a backup into a \
             new data dir with `ledge restore FILE --data-dir NEW_DIR`.",
        );
    }
    text.push_str(" Nothing in the data dir was changed.");
    text
}

/// The formats of `found` that this build cannot read (none: it opens the data dir).
pub fn compare(found: &Versions) -> Vec<Mismatch> {
    let mut mismatches: Vec<Mismatch> = found
        .iter()
        .filter(|(key, _)| !FORMATS.iter().any(|format| format.key == key.as_str()))
        .map(|(key, &found)| Mismatch::Unknown { key: key.clone(), found })
        .collect();
    for format in FORMATS {
        let version = found.get(format.key).copied().unwrap_or(format.unrecorded);
        if version > format.writes {
            mismatches.push(Mismatch::Newer { format, found: version });
        } else if version < format.reads_from {
            mismatches.push(Mismatch::Older { format, found: version });
        }
    }
    mismatches
}

/// Reads the marker of `data_dir` and checks it against this build's formats. Writes nothing.
pub fn inspect(data_dir: &Path) -> Result<State, FormatError> {
    let path = data_dir.join(MARKER);
    let bytes = match read_marker(&path) {
        Ok(bytes) => Some(bytes),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(FormatError::Io { path, error }),
    };
    let Some(bytes) = bytes else {
        let empty = match std::fs::read_dir(data_dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => true,
            Err(error) => return Err(FormatError::Io { path: data_dir.into(), error }),
        };
        if empty {
            return Ok(State::New);
        }
        let found = compare(&Versions::new());
        if !found.is_empty() {
            return Err(FormatError::Incompatible { dir: data_dir.into(), found, recorded: false });
        }
        return Ok(State::Unrecorded);
    };
    let marker: Marker =
        serde_json::from_slice(&bytes).map_err(|error| FormatError::Marker { path, reason: error.to_string() })?;
    let found = compare(&marker.formats);
    if !found.is_empty() {
        return Err(FormatError::Incompatible { dir: data_dir.into(), found, recorded: true });
    }
    match marker.formats == current() {
        true => Ok(State::Current),
        false => Ok(State::Older { found: marker.formats }),
    }
}

/// The marker's bytes: a regular file (never followed through a link, never a FIFO that would
/// hang the start) of at most [`MAX_MARKER_BYTES`].
fn read_marker(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    if !std::fs::symlink_metadata(path)?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_MARKER_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_MARKER_BYTES {
        return Err(io::Error::other(format!("larger than {MAX_MARKER_BYTES} bytes")));
    }
    Ok(bytes)
}

/// Writes the marker of `data_dir` (which exists) with this build's versions, durably.
pub fn record(data_dir: &Path) -> io::Result<()> {
    let recorded_by = format!("{} ({})", env!("CARGO_PKG_VERSION"), env!("LEDGE_COMMIT"));
    let marker = Marker { formats: current(), recorded_by: Some(recorded_by) };
    let mut json = serde_json::to_vec_pretty(&marker).map_err(io::Error::other)?;
    json.push(b'\n');
    write_durably(&data_dir.join(MARKER), &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(pairs: &[(&str, u32)]) -> Versions {
        pairs.iter().map(|(key, version)| (key.to_string(), *version)).collect()
    }

    fn format(key: &str) -> Format {
        *FORMATS.iter().find(|format| format.key == key).unwrap()
    }

    fn write_marker(dir: &Path, json: &str) {
        std::fs::write(dir.join(MARKER), json).unwrap();
    }

    #[test]
    fn the_formats_this_build_writes_are_the_ones_it_reads_and_the_engine_writes() {
        assert_eq!(current(), versions(&[("checkpoint", 1), ("registry", 1), ("traces", 2), ("wal", 2)]));
        for format in FORMATS {
            assert!(format.reads_from <= format.unrecorded && format.unrecorded <= format.writes, "{format:?}");
        }
        assert!(compare(&current()).is_empty());
        assert!(compare(&Versions::new()).is_empty(), "a data dir from before versions were recorded opens");
    }

    #[test]
    fn later_unknown_and_too_old_versions_are_each_named() {
        let found = versions(&[("wal", 3), ("checkpoint", 1), ("registry", 0), ("traces", 1), ("queues", 1)]);
        let mismatches = compare(&found);
        assert_eq!(
            mismatches,
            [
                Mismatch::Unknown { key: "queues".into(), found: 1 },
                Mismatch::Newer { format: format("wal"), found: 3 },
                Mismatch::Older { format: format("registry"), found: 0 },
            ]
        );
        let text = describe(Path::new("/d"), &mismatches, &true);
        assert!(text.contains("the data dir /d holds formats this ledge"), "{text}");
        assert!(text.contains("engine WAL format 3 (this build reads 1 to 2)"), "{text}");
        assert!(text.contains("registry layout format 0 (this build reads 1)"), "{text}");
        assert!(text.contains("a `queues` format 1, unknown to this build"), "{text}");
        assert!(text.contains("written by a newer ledge") && text.contains("written by an older ledge"), "{text}");
        assert!(text.contains("ledge restore FILE --data-dir NEW_DIR") && text.ends_with("was changed."), "{text}");
    }

    #[test]
    fn a_new_a_current_an_unrecorded_and_an_older_data_dir_are_told_apart() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("data");
        assert_eq!(inspect(&dir).unwrap(), State::New, "no folder yet");
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(inspect(&dir).unwrap(), State::New, "an empty folder");
        std::fs::write(dir.join("admin.token"), "t").unwrap();
        assert_eq!(inspect(&dir).unwrap(), State::Unrecorded);
        record(&dir).unwrap();
        assert_eq!(inspect(&dir).unwrap(), State::Current);
        assert!(!State::Current.needs_record() && State::Unrecorded.needs_record());
        let recorded: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(MARKER)).unwrap()).unwrap();
        assert_eq!(recorded["formats"]["wal"], 2);
        assert!(recorded["recorded_by"].as_str().unwrap().starts_with(env!("CARGO_PKG_VERSION")));
        // An older WAL, which this build still reads: opened, the marker then recorded anew.
        write_marker(&dir, r#"{"formats": {"wal": 1, "checkpoint": 1, "registry": 1, "traces": 1}}"#);
        let older = inspect(&dir).unwrap();
        assert_eq!(
            older,
            State::Older { found: versions(&[("checkpoint", 1), ("registry", 1), ("traces", 1), ("wal", 1)]) }
        );
    }

    #[test]
    fn a_later_or_unparsable_marker_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_marker(dir.path(), r#"{"formats": {"wal": 2, "checkpoint": 1, "registry": 1, "traces": 3}}"#);
        let error = inspect(dir.path()).unwrap_err();
        assert!(matches!(&error, FormatError::Incompatible { recorded: true, .. }), "{error:?}");
        assert!(error.to_string().contains("trace format 3 (this build reads 1 to 2)"), "{error}");
        write_marker(dir.path(), "{\"formats\": {\"wal\": \"two\"}}");
        let error = inspect(dir.path()).unwrap_err();
        assert!(matches!(error, FormatError::Marker { .. }), "{error:?}");
        assert!(error.to_string().contains("format.json does not parse"), "{error}");
    }
}
