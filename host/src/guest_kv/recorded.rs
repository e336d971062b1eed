//! What a recorded run read from the engine, as engine entries: deploy verification seeds a
//! scratch engine with them, so that another build reading the same keys sees what the recorded
//! run saw (a key it never read stays absent).
//!
//! The keys come back from the calls' taped arguments, which `transactions.rs` and
//! `keyvalue.rs` write (`show_bytes` for `ledge:platform` keys, `{:?}` for `wasi:keyvalue`
//! ones), or from their results where those carry keys (scans, `get-many`). A key too long to
//! be taped whole (`show_bytes` keeps the start, the length and a checksum) cannot be recovered
//! and stays absent. The keyspace of a read is the one the run opened last (`begin`,
//! `begin-in`, `store.open`): exact unless it interleaved transactions on two stores.
//!
//! Invariant: the first value read for a key wins, and a key the run wrote before it read it is
//! not seeded (that read saw the run's own write, not what the engine held).

use std::collections::{BTreeMap, BTreeSet};

use super::taped::RecordedError;
use crate::record::trace::Event;

/// `(engine key, value)` for every key `events` read a value of.
pub fn reads(function: &str, events: &[Event]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let own = format!("f/{function}/").into_bytes();
    let mut prefix = own.clone();
    let mut seen: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut written: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut found = |written: &BTreeSet<Vec<u8>>, prefix: &[u8], key: &[u8], value: Vec<u8>| {
        let key = [prefix, key].concat();
        if !written.contains(&key) {
            seen.entry(key).or_insert(value);
        }
    };
    for event in events {
        let decoded = |event: &Event| postcard::from_bytes::<Result<Option<Vec<u8>>, RecordedError>>(&event.result);
        match event.call.as_str() {
            "ledge:platform/transactions.begin" => prefix = own.clone(),
            "ledge:platform/transactions.begin-in" | "wasi:keyvalue/store.open" => {
                prefix = match unquote(&event.args) {
                    Some((store, _)) if !store.is_empty() && store != b"default" => {
                        [b"s/".as_slice(), &store, b"/"].concat()
                    }
                    _ => own.clone(),
                };
            }
            "ledge:platform/transactions.get" | "wasi:keyvalue/store.bucket.get" => {
                if let (Some((key, "")), Ok(Ok(Some(value)))) = (unquote(&event.args), decoded(event)) {
                    found(&written, &prefix, &key, value);
                }
            }
            "ledge:platform/transactions.scan" => {
                if let Ok(Ok(entries)) =
                    postcard::from_bytes::<Result<Vec<(Vec<u8>, Vec<u8>)>, RecordedError>>(&event.result)
                {
                    for (key, value) in entries {
                        found(&written, &prefix, &key, value);
                    }
                }
            }
            "wasi:keyvalue/batch.get-many" => {
                if let Ok(Ok(entries)) =
                    postcard::from_bytes::<Result<Vec<(String, Option<Vec<u8>>)>, RecordedError>>(&event.result)
                {
                    for (key, value) in entries {
                        if let Some(value) = value {
                            found(&written, &prefix, key.as_bytes(), value);
                        }
                    }
                }
            }
            "ledge:platform/transactions.put"
            | "ledge:platform/transactions.delete"
            | "wasi:keyvalue/store.bucket.set"
            | "wasi:keyvalue/store.bucket.delete" => {
                if let Some((key, _)) = unquote(&event.args) {
                    written.insert([prefix.as_slice(), &key].concat());
                }
            }
            _ => {}
        }
    }
    seen.into_iter().collect()
}

/// The bytes of the quoted string `text` starts with, and what follows it: a string as
/// `show_bytes` (`escape_ascii`) or `{:?}` writes it. `None` for one `show_bytes` cut short
/// (`"…"…(N bytes, crc32c …)`), whose bytes are not all there.
fn unquote(text: &str) -> Option<(Vec<u8>, &str)> {
    let mut chars = text.strip_prefix('"')?.char_indices();
    let mut bytes = Vec::new();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => {
                let rest = &text[at + 2..];
                return (!rest.starts_with('…')).then_some((bytes, rest));
            }
            '\\' => match chars.next()?.1 {
                'n' => bytes.push(b'\n'),
                'r' => bytes.push(b'\r'),
                't' => bytes.push(b'\t'),
                '0' => bytes.push(0),
                'x' => {
                    let high = chars.next()?.1.to_digit(16)?;
                    let low = chars.next()?.1.to_digit(16)?;
                    bytes.push((high * 16 + low) as u8);
                }
                'u' => {
                    chars.next().filter(|(_, c)| *c == '{')?;
                    let mut code = 0u32;
                    loop {
                        match chars.next()?.1 {
                            '}' => break,
                            digit => code = code.checked_mul(16)?.checked_add(digit.to_digit(16)?)?,
                        }
                    }
                    let mut buffer = [0u8; 4];
                    bytes.extend_from_slice(char::from_u32(code)?.encode_utf8(&mut buffer).as_bytes());
                }
                other => {
                    let mut buffer = [0u8; 4];
                    bytes.extend_from_slice(other.encode_utf8(&mut buffer).as_bytes());
                }
            },
            c => {
                let mut buffer = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tape::show_bytes;

    #[test]
    fn keys_come_back_from_both_ways_of_taping_them() {
        for key in [&b"plain"[..], b"tab\there \"quoted\" \\ \x01\xff", b""] {
            assert_eq!(unquote(&show_bytes(key)), Some((key.to_vec(), "")), "{key:?}");
        }
        for key in ["caf\u{e9} \u{1f600}", "line\nbreak\u{7}", "q\"uote'"] {
            assert_eq!(unquote(&format!("{key:?}, 5")), Some((key.as_bytes().to_vec(), ", 5")), "{key:?}");
        }
        assert_eq!(unquote(&show_bytes(&[b'k'; 100])), None, "a key taped in part is not guessed");
    }

    fn event<T: serde::Serialize>(call: &str, args: String, result: &T) -> Event {
        let result = postcard::to_stdvec(result).unwrap();
        Event { call: call.into(), args, result, summary: String::new(), body: Vec::new() }
    }

    type Got = Result<Option<Vec<u8>>, RecordedError>;
    type Scanned = Result<Vec<(Vec<u8>, Vec<u8>)>, RecordedError>;

    #[test]
    fn the_first_value_read_wins_in_the_keyspace_opened_last() {
        let found: Got = Ok(Some(b"5".to_vec()));
        let later: Got = Ok(Some(b"6".to_vec()));
        let scanned: Scanned = Ok(vec![(b"a".to_vec(), b"1".to_vec())]);
        let events = [
            event("ledge:platform/transactions.begin", "Serializable".into(), &()),
            event("ledge:platform/transactions.get", show_bytes(b"count"), &found),
            event("ledge:platform/transactions.get", show_bytes(b"count"), &later),
            event("ledge:platform/transactions.begin-in", "\"shared\", Snapshot".into(), &()),
            event(
                "ledge:platform/transactions.scan",
                format!("{}, {}, 10", show_bytes(b""), show_bytes(b"")),
                &scanned,
            ),
            // Written before it is read: the read saw the run's own write, not a seed.
            event("ledge:platform/transactions.put", format!("{}, {}", show_bytes(b"mine"), show_bytes(b"1")), &()),
            event("ledge:platform/transactions.get", show_bytes(b"mine"), &found),
        ];
        assert_eq!(
            reads("shop", &events),
            [(b"f/shop/count".to_vec(), b"5".to_vec()), (b"s/shared/a".to_vec(), b"1".to_vec())]
        );
    }
}
