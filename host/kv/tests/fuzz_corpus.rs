//! The saved fuzz corpora of the engine's parsers (`fuzz/corpus/kv_*`), replayed as plain tests
//! through the same entry points the fuzz targets call: every input that ever found new
//! coverage, and every crash ever fixed, runs on each `cargo test` without a fuzzer.

use std::fs;
use std::path::{Path, PathBuf};

// The kv_recovery target's input format and body, shared with the fuzz crate (not a copy).
#[path = "../../../fuzz/src/kv_recovery.rs"]
mod kv_recovery;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target)
}

/// Runs every file of `target`'s corpus through `run`; fails on an empty or missing corpus.
fn replay(target: &str, run: impl Fn(&[u8])) {
    ledge_kv::fuzzing::replay_corpus(&corpus_dir(target), run);
}

#[test]
fn wal_segment_corpus_replays_without_panicking() {
    replay("kv_wal_segment", ledge_kv::fuzzing::wal_segment);
}

#[test]
fn checkpoint_corpus_replays_without_panicking() {
    replay("kv_checkpoint", ledge_kv::fuzzing::checkpoint);
}

#[test]
fn recovery_corpus_replays_without_panicking() {
    replay("kv_recovery", |data| kv_recovery::run(&kv_recovery::decode(data)));
}

#[test]
fn recovery_inputs_decode_to_what_was_encoded() {
    use kv_recovery::{DataDir, File, Kind};
    let dir = DataDir {
        files: vec![
            File { kind: Kind::Checkpoint, seq: 2, bytes: b"LKVCKPT1".to_vec() },
            File { kind: Kind::WalSegment, seq: 5, bytes: Vec::new() },
            File { kind: Kind::CheckpointTmp, seq: 1, bytes: vec![0; 300] },
        ],
    };
    assert_eq!(kv_recovery::decode(&dir.encode()), dir);
    assert_eq!(kv_recovery::decode(&[]), DataDir::default());
}

/// Writes seed corpora from real data directories the engine wrote (`cargo test -p ledge-kv
/// --test fuzz_corpus write_seed_corpora -- --ignored`): segments and checkpoints on their own
/// for the byte parsers, whole directories (including a torn tail, a leftover temporary
/// checkpoint and a header-only segment) for recovery.
#[test]
#[ignore = "writes fuzz/corpus seeds; run by hand"]
fn write_seed_corpora() {
    use kv_recovery::{DataDir, File, Kind};
    use ledge_kv::{Db, Isolation, Options};

    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    };
    let commit = |db: &Db, n: u32| {
        for i in 0..n {
            let mut tx = db.begin(Isolation::Serializable);
            tx.put(format!("fn/hello/k{i}").as_bytes(), format!("value {i}").as_bytes()).unwrap();
            if i % 3 == 0 {
                tx.delete(format!("fn/hello/k{}", i / 2).as_bytes()).unwrap();
            }
            tx.commit().unwrap();
        }
    };

    // A log only; a log over a checkpoint; several segments (reopened in between).
    let only_log = tempfile::tempdir().unwrap();
    let db = Db::open(only_log.path()).unwrap();
    commit(&db, 6);
    db.close().unwrap();
    drop(db);

    let checkpointed = tempfile::tempdir().unwrap();
    let db = Db::open(checkpointed.path()).unwrap();
    commit(&db, 5);
    db.checkpoint().unwrap();
    commit(&db, 3);
    db.close().unwrap();
    drop(db);

    let segments = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let mut opts = Options::default();
        opts.checkpoint_wal_bytes = 0;
        let db = Db::open_with(segments.path(), opts).unwrap();
        commit(&db, 2 + round);
        db.close().unwrap();
    }

    let mut dirs = Vec::new();
    for (name, dir) in [("log", &only_log), ("checkpointed", &checkpointed), ("segments", &segments)] {
        let data = DataDir::read(dir.path()).unwrap();
        assert!(!data.files.is_empty(), "{name}: the engine wrote files");
        for (i, file) in data.files.iter().enumerate() {
            match file.kind {
                Kind::WalSegment if file.bytes.len() > 20 => {
                    write("kv_wal_segment", &format!("{name}-{i}"), &file.bytes)
                }
                Kind::Checkpoint => write("kv_checkpoint", &format!("{name}-{i}"), &file.bytes),
                _ => {}
            }
        }
        write("kv_recovery", name, &data.encode());
        dirs.push((name, data));
    }

    // Format 1, still read (frames with no segment header or batches): the frames of the first
    // batch of a format-2 segment (`magic | salt | crc`, then `len | crc | header crc | frames`).
    let (_, log) = &dirs[0];
    let segment = log.files.iter().find(|f| f.kind == Kind::WalSegment && f.bytes.len() > 40).unwrap();
    let len = u32::from_le_bytes(segment.bytes[20..24].try_into().unwrap()) as usize;
    let frames = segment.bytes[32..32 + len].to_vec();
    write("kv_wal_segment", "format1", &frames);
    let format1 = DataDir { files: vec![File { kind: Kind::WalSegment, seq: 1, bytes: frames }] };
    write("kv_recovery", "format1", &format1.encode());

    // Damaged variants: a torn tail, a flipped byte in the middle, debris of a crash.
    let (_, log) = &dirs[0];
    let mut torn = log.clone();
    let last = torn.files.iter_mut().rev().find(|f| f.kind == Kind::WalSegment && f.bytes.len() > 40).unwrap();
    last.bytes.truncate(last.bytes.len() - 7);
    write("kv_recovery", "torn-tail", &torn.encode());
    let mut flipped = log.clone();
    let first = flipped.files.iter_mut().find(|f| f.kind == Kind::WalSegment && f.bytes.len() > 40).unwrap();
    let middle = first.bytes.len() / 2;
    first.bytes[middle] ^= 0x40;
    write("kv_recovery", "flipped", &flipped.encode());
    let (_, checkpointed) = &dirs[1];
    let mut debris = checkpointed.clone();
    debris.files.push(File { kind: Kind::CheckpointTmp, seq: 5, bytes: b"LKVCKPT1 half".to_vec() });
    debris.files.push(File { kind: Kind::WalSegment, seq: 5, bytes: b"LKVWAL02".to_vec() });
    write("kv_recovery", "debris", &debris.encode());
}
