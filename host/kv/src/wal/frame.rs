//! The on-disk WAL format: frames, records and segment files.
//!
//! A WAL is a sequence of segment files `wal-<seq>.log`, each a sequence of frames:
//! `len: u32 LE | crc32c(payload): u32 LE | payload`, where the payload is one committed
//! transaction: `cstamp: u64 | n: u32 | n × (tag: u8 | klen: u32 | key | [vlen: u32 | value])`
//! (tag 0 = put, 1 = delete; deletes carry no value). Stamps strictly increase along the log.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

const HEADER: usize = 8;
/// Smallest payload: a stamp and an op count. Also rules out a run of zero bytes parsing as a frame.
const MIN_PAYLOAD: usize = 12;
/// Largest accepted frame payload; larger lengths are treated as damage.
pub(crate) const MAX_PAYLOAD: usize = 1 << 30;
const TAG_PUT: u8 = 0;
const TAG_DEL: u8 = 1;

/// One logged write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Op {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// A decoded WAL record: one committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub cstamp: u64,
    pub ops: Vec<Op>,
}

/// Appends the frame for a commit to `buf`.
pub(crate) fn encode<'a>(
    buf: &mut Vec<u8>,
    cstamp: u64,
    ops: impl ExactSizeIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; HEADER]);
    buf.extend_from_slice(&cstamp.to_le_bytes());
    buf.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for (k, v) in ops {
        buf.push(if v.is_some() { TAG_PUT } else { TAG_DEL });
        buf.extend_from_slice(&(k.len() as u32).to_le_bytes());
        buf.extend_from_slice(k);
        if let Some(v) = v {
            buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
            buf.extend_from_slice(v);
        }
    }
    let payload_len = buf.len() - start - HEADER;
    let crc = crc32c::crc32c(&buf[start + HEADER..]);
    buf[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn decode_payload(p: &[u8]) -> Option<Record> {
    let cstamp = u64_at(p, 0)?;
    let n = u32_at(p, 8)? as usize;
    let mut at = 12;
    let mut ops = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let tag = *p.get(at)?;
        let klen = u32_at(p, at + 1)? as usize;
        at += 5;
        let key = p.get(at..at.checked_add(klen)?)?.to_vec();
        at += klen;
        let value = match tag {
            TAG_PUT => {
                let vlen = u32_at(p, at)? as usize;
                at += 4;
                let v = p.get(at..at.checked_add(vlen)?)?.to_vec();
                at += vlen;
                Some(v)
            }
            TAG_DEL => None,
            _ => return None,
        };
        ops.push(Op { key, value });
    }
    (at == p.len()).then_some(Record { cstamp, ops })
}

/// Parses the frame at `at`, if a complete, checksummed, well-formed one is there.
fn frame_at(b: &[u8], at: usize, after_stamp: u64) -> Option<(Record, usize)> {
    let len = u32_at(b, at)? as usize;
    if !(MIN_PAYLOAD..=MAX_PAYLOAD).contains(&len) {
        return None;
    }
    let crc = u32_at(b, at + 4)?;
    let payload = b.get(at + HEADER..(at + HEADER).checked_add(len)?)?;
    if crc32c::crc32c(payload) != crc {
        return None;
    }
    let rec = decode_payload(payload)?;
    (rec.cstamp > after_stamp).then_some((rec, at + HEADER + len))
}

/// What reading one segment found.
#[derive(Debug)]
pub(crate) struct SegmentScan {
    pub records: Vec<Record>,
    /// Length of the valid prefix; anything after it is a torn tail to truncate.
    pub valid_len: usize,
    /// Set when a bad frame is followed by a valid one: damage, not a torn tail.
    pub corrupt_at: Option<(usize, &'static str)>,
}

/// Reads all frames of a segment, stopping at the first bad one. A bad frame counts as a torn
/// tail only if no valid frame can be found anywhere after it.
pub(crate) fn scan_segment(b: &[u8], mut last_stamp: u64) -> SegmentScan {
    let mut records = Vec::new();
    let mut at = 0;
    while at < b.len() {
        match frame_at(b, at, last_stamp) {
            Some((rec, next)) => {
                last_stamp = rec.cstamp;
                records.push(rec);
                at = next;
            }
            None => {
                // A crash can only tear the end of the file. Search byte by byte for any later
                // valid frame (the length field itself may be the damaged part).
                let later = (at + 1..b.len().saturating_sub(HEADER + MIN_PAYLOAD - 1))
                    .any(|q| frame_at(b, q, last_stamp).is_some());
                let reason = if later { "bad frame followed by a valid one" } else { "" };
                return SegmentScan { records, valid_len: at, corrupt_at: later.then_some((at, reason)) };
            }
        }
    }
    SegmentScan { records, valid_len: at, corrupt_at: None }
}

/// Path of WAL segment `seq` in `dir`.
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal-{seq:020}.log"))
}

/// Parses a segment file name back into its sequence number.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?.strip_suffix(".log")?.parse().ok()
}

/// Fsyncs a directory so that creates, renames and deletes in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates a new, empty segment and makes its directory entry durable.
pub(crate) fn create_segment(dir: &Path, seq: u64) -> io::Result<File> {
    let f = OpenOptions::new().create_new(true).append(true).open(segment_path(dir, seq))?;
    sync_dir(dir)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: u64) -> Vec<u8> {
        let mut b = Vec::new();
        for s in 1..=n {
            let k = format!("k{s}");
            encode(&mut b, s, [(k.as_bytes(), Some(&b"value"[..])), (&b"gone"[..], None)].into_iter());
        }
        b
    }

    #[test]
    fn a_clean_log_scans_completely() {
        let b = log(5);
        let scan = scan_segment(&b, 0);
        assert_eq!(scan.records.len(), 5);
        assert_eq!(scan.valid_len, b.len());
        assert!(scan.corrupt_at.is_none());
        assert_eq!(scan.records[4].ops[1], Op { key: b"gone".to_vec(), value: None });
    }

    #[test]
    fn a_cut_or_zero_filled_tail_is_torn_not_corrupt() {
        let b = log(5);
        let one = log(1).len();
        for cut in [1, 7, 8, 20] {
            let scan = scan_segment(&b[..b.len() - cut], 0);
            assert_eq!(scan.records.len(), 4);
            assert_eq!(scan.valid_len, 4 * one);
            assert!(scan.corrupt_at.is_none());
        }
        let mut z = b.clone();
        z.extend_from_slice(&[0u8; 4096]);
        let scan = scan_segment(&z, 0);
        assert_eq!((scan.records.len(), scan.valid_len), (5, b.len()));
        assert!(scan.corrupt_at.is_none());
    }

    #[test]
    fn damage_followed_by_a_valid_frame_is_corrupt() {
        let one = log(1).len();
        for at in [0, 3, 5, 9, one - 1] {
            let mut b = log(5);
            b[one + at] ^= 0x10;
            let scan = scan_segment(&b, 0);
            assert_eq!(scan.records.len(), 1, "flip at {at}");
            assert_eq!(scan.corrupt_at.map(|c| c.0), Some(one));
        }
    }

    #[test]
    fn stamps_must_increase() {
        let mut b = log(2);
        let again = log(1);
        b.extend_from_slice(&again);
        let scan = scan_segment(&b, 0);
        assert_eq!(scan.records.len(), 2);
        assert!(scan.corrupt_at.is_none(), "a replayed old frame at the tail is not a valid successor");
    }
}
