//! On-disk formats: a WAL segment, checkpoint or backup image whose header names a later format
//! than this build reads refuses the open with an error naming that format and the ones this
//! build reads, and the directory stays exactly as it was (no torn-tail cut, no cleanup).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use ledge_kv::{CHECKPOINT_FORMAT, Db, Error, Isolation, WAL_FORMAT, WAL_OLDEST_FORMAT};

/// Every file of `dir` with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (entry.file_name().into_string().unwrap(), fs::read(entry.path()).unwrap())
        })
        .collect()
}

/// The names in `dir` that start with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<String> {
    files(dir).into_keys().filter(|name| name.starts_with(prefix)).collect()
}

fn commit(db: &Db, key: &str) {
    let mut tx = db.begin(Isolation::Snapshot);
    tx.put(key.as_bytes(), b"v").unwrap();
    tx.commit().unwrap();
}

#[test]
fn the_formats_are_the_ones_the_headers_carry() {
    assert_eq!((WAL_OLDEST_FORMAT, WAL_FORMAT, CHECKPOINT_FORMAT), (1, 2, 1));
}

#[test]
fn a_wal_segment_of_a_later_format_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    for key in ["a", "b", "c"] {
        commit(&db, key);
    }
    db.close().unwrap();
    // The last segment (the one a torn tail would be cut from) now names format 3, and an
    // unfinished checkpoint lies beside it (debris an open would otherwise remove).
    let last = named(dir.path(), "wal-").pop().expect("a segment");
    let path = dir.path().join(&last);
    let mut bytes = fs::read(&path).unwrap();
    bytes[6..8].copy_from_slice(b"03");
    fs::write(&path, &bytes).unwrap();
    fs::write(dir.path().join("ckpt-00000000000000000009.tmp"), b"half").unwrap();
    let before = files(dir.path());

    let Err(error) = Db::open(dir.path()) else { panic!("a later WAL format was opened") };
    match &error {
        Error::UnsupportedFormat { file, what, found, reads } => {
            assert_eq!(
                (file.as_path(), *what, found.as_str(), reads.as_str()),
                (path.as_path(), "WAL segment", "3", "1 to 2")
            );
        }
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("WAL segment format 3") && message.contains("reads WAL segment format 1 to 2"),
        "{message}"
    );
    assert_eq!(files(dir.path()), before, "a refused open changes nothing");
}

#[test]
fn a_checkpoint_or_backup_image_of_a_later_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    commit(&db, "a");
    db.checkpoint().unwrap();
    let mut image = Vec::new();
    db.backup(&mut image).unwrap();
    db.close().unwrap();
    let path = dir.path().join(named(dir.path(), "ckpt-").pop().expect("a checkpoint"));
    let mut bytes = fs::read(&path).unwrap();
    bytes[7] = b'2';
    fs::write(&path, &bytes).unwrap();
    let before = files(dir.path());
    match Db::open(dir.path()) {
        Err(Error::UnsupportedFormat { what: "checkpoint", found, reads, .. }) => {
            assert_eq!((found.as_str(), reads.as_str()), ("2", "1"));
        }
        Err(other) => panic!("expected UnsupportedFormat, got {other:?}"),
        Ok(_) => panic!("a later checkpoint format was opened"),
    }
    assert_eq!(files(dir.path()), before);

    // A backup image is a checkpoint image: a later one is refused before anything is written.
    image[7] = b'2';
    let target = dir.path().join("restored");
    match Db::restore(&target, &image) {
        Err(Error::UnsupportedFormat { what: "checkpoint", found, .. }) => assert_eq!(found, "2"),
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
    assert!(!target.exists());
}

/// A crash while a new segment's header is written leaves a header that names no format: the
/// next open cuts it as a torn tail, as before headers had versions, and keeps every commit.
#[test]
fn a_segment_header_torn_mid_write_is_a_torn_tail_not_a_format() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    for key in ["a", "b"] {
        commit(&db, key);
    }
    db.close().unwrap();
    let last = named(dir.path(), "wal-").pop().expect("a segment");
    let next = last.replace(&last[4..24], &format!("{:020}", last[4..24].parse::<u64>().unwrap() + 1));
    fs::write(dir.path().join(next), b"LKVWAL0\0\x07\x07").unwrap();

    let db = Db::open(dir.path()).expect("a torn header does not stop the open");
    let mut tx = db.begin(Isolation::Snapshot);
    for key in ["a", "b"] {
        assert_eq!(tx.get(key.as_bytes()).unwrap().as_deref(), Some(&b"v"[..]), "{key}");
    }
}
