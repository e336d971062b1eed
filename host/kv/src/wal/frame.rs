//! The on-disk WAL format: frames, batches, records and segment files.
//!
//! A WAL is a sequence of segment files `wal-<seq>.log`. A frame is one committed transaction:
//! `len: u32 LE | crc32c(payload): u32 LE | payload`, the payload
//! `cstamp: u64 | n: u32 | n × (tag: u8 | klen: u32 | key | [vlen: u32 | value])`
//! (tag 0 = put, 1 = delete; deletes carry no value). Stamps strictly increase along the log.
//!
//! Format 2 (every segment written now): `"LKVWAL02" | salt: u64 LE | crc32c(magic | salt): u32 LE`,
//! then batches, each `len: u32 LE | crc32c(salt | len | frames): u32 LE |
//! crc32c(salt | len | that crc): u32 LE | frames`. A batch is what the flusher
//! writes with one write and makes durable with one fsync before it writes the next, so a
//! crash can damage only the last batch of the last segment, in any way (lost, cut, or with
//! sectors persisted out of order). Recovery therefore drops a bad last batch as a torn tail and
//! calls any other bad batch damage. The per-segment random salt keeps a batch-shaped run of
//! bytes inside a key or value (which guests choose) from ever passing for a batch. The header's
//! own checksum lets recovery look for a valid batch after a damaged one in linear time: only a
//! position whose 12 header bytes check out costs a pass over the frames.
//!
//! The flusher preallocates a segment's space ahead of its batches, so a segment may end in
//! zeros after its last batch (a crash leaves them; a clean stop cuts them): they are where the
//! log ends, and recovery cuts them like a torn tail. Earlier versions read them as one too.
//!
//! Format 1 (segments written by earlier versions): frames with no segment header or batches;
//! still read, never written.

use std::path::{Path, PathBuf};

const HEADER: usize = 8;
/// Smallest payload: a stamp and an op count. Also rules out a run of zero bytes parsing as a frame.
const MIN_PAYLOAD: usize = 12;
/// Largest accepted frame payload; larger lengths are treated as damage.
pub(crate) const MAX_PAYLOAD: usize = 1 << 30;
const SEGMENT_MAGIC: &[u8; 8] = b"LKVWAL02";
/// The WAL format this build writes (the digits that end [`SEGMENT_MAGIC`]).
pub const FORMAT: u32 = 2;
/// The oldest WAL format this build still reads.
pub const OLDEST_FORMAT: u32 = 1;
/// What the magic of every segment of format 2 or later starts with, two digits naming the
/// format after it. A format-1 segment never starts with it: its first frame's length would be
/// past [`MAX_PAYLOAD`].
const MAGIC_PREFIX: &[u8; 6] = b"LKVWAL";
const _: () = assert!(u32::from_le_bytes(*b"LKVW") as usize > MAX_PAYLOAD);
/// Bytes before the first batch of a format-2 segment.
pub(crate) const SEGMENT_HEADER: usize = 20;
/// A batch's length, its checksum, and the header's own checksum.
pub(crate) const BATCH_HEADER: usize = 12;
/// The flusher splits a larger buffer (at frame boundaries) into batches of at most this many
/// bytes, each synced before the next is written. A single larger frame is a batch of its own.
pub(crate) const MAX_BATCH: usize = 64 << 20;
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

/// Reads a segment of either format (see the module docs).
pub(crate) fn scan_segment(b: &[u8], last_stamp: u64) -> SegmentScan {
    if !b.starts_with(SEGMENT_MAGIC) {
        return scan_frames(b, last_stamp, true);
    }
    // The header was synced before any batch was written: a bad one is damage, not a tear.
    match segment_salt(b) {
        Some(salt) => scan_batches(b, salt, last_stamp),
        None => SegmentScan { records: Vec::new(), valid_len: 0, corrupt_at: Some((0, "bad segment header")) },
    }
}

/// The format a segment's header names when it is a later one than this build reads (past
/// [`FORMAT`]): `Some(3)` for `LKVWAL03`. Recovery refuses such a segment rather than take its
/// header for a torn format-1 frame and cut it away. Anything else, a header torn mid-write
/// (`LKVWAL0\0`) included, is for the usual rules: a crash may leave one, and must not stop
/// the next start.
pub(crate) fn unsupported_format(b: &[u8]) -> Option<u32> {
    let magic = b.get(..SEGMENT_MAGIC.len())?;
    let digits = magic.strip_prefix(MAGIC_PREFIX.as_slice())?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number: u32 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    (number > FORMAT).then_some(number)
}

/// The salt of a format-2 segment whose header verifies.
fn segment_salt(b: &[u8]) -> Option<u64> {
    let crc = u32_at(b, 16)?;
    (crc32c::crc32c(&b[..16]) == crc).then(|| u64_at(b, 8)).flatten()
}

/// True for a segment that never got a record: empty, or (part of) a format-2 header alone.
pub(crate) fn never_written(b: &[u8]) -> bool {
    let magic = b.len().min(SEGMENT_MAGIC.len());
    b.len() <= SEGMENT_HEADER && b[..magic] == SEGMENT_MAGIC[..magic]
}

/// CRC32C of the salt and the length, then of `rest`.
fn salted_crc(salt: u64, len: u32, rest: &[u8]) -> u32 {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&salt.to_le_bytes()), &len.to_le_bytes());
    crc32c::crc32c_append(crc, rest)
}

/// The header of the batch holding `frames`.
pub(crate) fn batch_header(salt: u64, frames: &[u8]) -> [u8; BATCH_HEADER] {
    let len = frames.len() as u32;
    let crc = salted_crc(salt, len, frames).to_le_bytes();
    let mut h = [0u8; BATCH_HEADER];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&crc);
    h[8..].copy_from_slice(&salted_crc(salt, len, &crc).to_le_bytes());
    h
}

/// The frames of the batch at `at` and where the next batch starts, if a complete batch with
/// a matching checksum is there.
fn batch_at(b: &[u8], at: usize, salt: u64) -> Option<(&[u8], usize)> {
    let len = u32_at(b, at)?;
    let crc = b.get(at + 4..at + 8)?;
    if (len as usize) < HEADER + MIN_PAYLOAD || u32_at(b, at + 8)? != salted_crc(salt, len, crc) {
        return None;
    }
    let start = at + BATCH_HEADER;
    let frames = b.get(start..start.checked_add(len as usize)?)?;
    (salted_crc(salt, len, frames) == u32_at(crc, 0)?).then_some((frames, start + len as usize))
}

fn scan_batches(b: &[u8], salt: u64, mut last_stamp: u64) -> SegmentScan {
    let mut records = Vec::new();
    let mut at = SEGMENT_HEADER;
    while at < b.len() {
        let Some((frames, next)) = batch_at(b, at, salt) else {
            // Only the last batch can be torn by a crash: any valid batch after this one means
            // the damage hit data that had been made durable. A batch's 4-byte length is at
            // least 20, so none can start at or past the last nonzero byte: in the zeros
            // allocated past the last batch.
            let later = (at + 1..data_end(b)).any(|q| batch_at(b, q, salt).is_some());
            let corrupt_at = later.then_some((at, "damaged batch followed by a valid one"));
            return SegmentScan { records, valid_len: at, corrupt_at };
        };
        let inner = scan_frames(frames, last_stamp, false);
        if inner.valid_len != frames.len() {
            let corrupt_at = Some((at, "a batch with a valid checksum holds a malformed record"));
            return SegmentScan { records, valid_len: at, corrupt_at };
        }
        last_stamp = inner.records.last().map_or(last_stamp, |r| r.cstamp);
        records.extend(inner.records);
        at = next;
    }
    SegmentScan { records, valid_len: at, corrupt_at: None }
}

/// Where the bytes end that are not the zeros a segment's preallocated space holds.
pub(crate) fn data_end(b: &[u8]) -> usize {
    b.iter().rposition(|&byte| byte != 0).map_or(0, |last| last + 1)
}

/// Reads frames, stopping at the first bad one. With `search_later` (format 1), a bad frame counts
/// as a torn tail only if no valid frame can be found anywhere after it; without (inside a
/// batch whose checksum matched), the caller treats any bad frame as damage.
fn scan_frames(b: &[u8], mut last_stamp: u64, search_later: bool) -> SegmentScan {
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
                let later = search_later
                    && (at + 1..b.len().saturating_sub(HEADER + MIN_PAYLOAD - 1))
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

/// The header of a segment salted with `salt`.
pub(crate) fn segment_header(salt: u64) -> [u8; SEGMENT_HEADER] {
    let mut header = [0u8; SEGMENT_HEADER];
    header[..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..16].copy_from_slice(&salt.to_le_bytes());
    let crc = crc32c::crc32c(&header[..16]);
    header[16..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Splits a buffer of whole frames into batches of at most [`MAX_BATCH`] bytes.
pub(crate) fn batches(mut frames: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if frames.is_empty() {
            return None;
        }
        let mut end = 0;
        while end < frames.len() {
            let len = HEADER + u32_at(frames, end).map_or(frames.len(), |l| l as usize);
            if end > 0 && end + len > MAX_BATCH {
                break;
            }
            end = (end + len).min(frames.len());
        }
        let (batch, rest) = frames.split_at(end);
        frames = rest;
        Some(batch)
    })
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

    /// A format-2 segment: the header, then one batch per group of commits.
    fn segment(salt: u64, groups: &[&[u64]], value: &[u8]) -> Vec<u8> {
        let mut b = SEGMENT_MAGIC.to_vec();
        b.extend_from_slice(&salt.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        for stamps in groups {
            let mut frames = Vec::new();
            for &s in *stamps {
                encode(&mut frames, s, [(&b"key"[..], Some(value))].into_iter());
            }
            b.extend_from_slice(&batch_header(salt, &frames));
            b.extend_from_slice(&frames);
        }
        b
    }

    #[test]
    fn a_torn_last_batch_is_a_tail_even_with_whole_frames_after_the_tear() {
        let whole = segment(7, &[&[1], &[2, 3, 4]], b"v");
        let first = segment(7, &[&[1]], b"v").len();
        // The last batch's sectors persisted out of order: its start lost, later frames intact.
        let mut b = whole.clone();
        b[first..first + 12].fill(0);
        let scan = scan_segment(&b, 0);
        assert!(scan.corrupt_at.is_none(), "only the unsynced last batch can be damaged by a crash");
        assert_eq!((scan.records.len(), scan.valid_len), (1, first));
        // Damage in a batch that has a valid one after it is real damage.
        let mut b = whole;
        b[SEGMENT_HEADER + 9] ^= 1;
        assert_eq!(scan_segment(&b, 0).corrupt_at.map(|c| c.0), Some(SEGMENT_HEADER));
    }

    #[test]
    fn zeros_preallocated_past_the_last_batch_end_the_log_and_hide_no_damage() {
        let whole = segment(9, &[&[1], &[2, 3]], b"value");
        let first = segment(9, &[&[1]], b"value").len();
        let zeros = vec![0u8; 1 << 20];
        // A crash after the last batch's fsync: its zeros follow.
        let b = [whole.as_slice(), &zeros].concat();
        let scan = scan_segment(&b, 0);
        assert!(scan.corrupt_at.is_none());
        assert_eq!((scan.records.len(), scan.valid_len), (3, whole.len()));
        assert_eq!(data_end(&b), whole.len());
        // The last batch torn mid-write into its preallocated space: a tail.
        let b = [&whole[..whole.len() - 3], &zeros[..]].concat();
        let scan = scan_segment(&b, 0);
        assert!(scan.corrupt_at.is_none());
        assert_eq!((scan.records.len(), scan.valid_len), (1, first));
        // A durable batch zeroed, with a valid one after it: damage, however many zeros follow.
        let mut b = [whole.as_slice(), &zeros].concat();
        b[SEGMENT_HEADER..first].fill(0);
        assert_eq!(scan_segment(&b, 0).corrupt_at.map(|c| c.0), Some(SEGMENT_HEADER));
    }

    #[test]
    fn a_batch_forged_inside_a_value_never_counts() {
        // A guest stores a value that is a complete, well-formed batch (it cannot know the salt,
        // so it guesses one); the batch holding it is then torn by a crash.
        let forged = segment(1, &[&[99]], b"forged");
        let mut b = segment(2, &[&[1], &[2]], &forged[SEGMENT_HEADER..]);
        let cut = b.len() - 3;
        b.truncate(cut);
        let scan = scan_segment(&b, 0);
        assert!(scan.corrupt_at.is_none(), "a torn tail, not damage followed by a valid batch");
        assert_eq!(scan.records.len(), 1);
    }

    #[test]
    fn a_damaged_segment_header_is_corruption_and_a_bare_one_was_never_written() {
        let mut b = segment(3, &[&[1]], b"v");
        b[12] ^= 1;
        assert_eq!(scan_segment(&b, 0).corrupt_at.map(|c| c.0), Some(0));
        assert!(never_written(&segment(3, &[], b"")));
        assert!(never_written(&SEGMENT_MAGIC[..5]));
        assert!(!never_written(&segment(3, &[&[1]], b"v")));
    }

    #[test]
    fn a_later_format_is_named_and_neither_earlier_one_is_taken_for_it() {
        let mut later = segment(3, &[&[1]], b"v");
        later[6..8].copy_from_slice(b"03");
        assert_eq!(unsupported_format(&later), Some(3));
        // Damage or a header torn mid-write is not a format: the usual rules handle it.
        for torn in [b"x!", b"0\0", b"01", b"00"] {
            later[6..8].copy_from_slice(torn);
            assert_eq!(unsupported_format(&later), None, "{torn:?}");
        }
        assert_eq!(unsupported_format(&segment(3, &[&[1]], b"v")), None);
        assert_eq!(unsupported_format(&log(3)), None, "format 1 has no header");
        assert_eq!(unsupported_format(&SEGMENT_MAGIC[..5]), None);
    }

    #[test]
    fn large_buffers_split_into_batches_at_frame_boundaries() {
        let mut frames = Vec::new();
        let value = vec![0u8; MAX_BATCH / 3];
        for s in 1..=4 {
            encode(&mut frames, s, [(&b"k"[..], Some(value.as_slice()))].into_iter());
        }
        let parts: Vec<&[u8]> = batches(&frames).collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.len() <= MAX_BATCH && scan_frames(p, 0, false).valid_len == p.len()));
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
