//! A guest that misbehaves on request, to show the host survives it:
//! `/trap` panics, `/count-then-trap` commits an increment and then panics, `/spin` never returns, `/hog` allocates without end,
//! `/outbound?url=...` makes an outgoing request and reports what happened,
//! `/print` writes to stdout and stderr, `/escapes` prints terminal escape sequences,
//! `/flood` writes 128 KiB of 4,000-byte lines to stdout,
//! `/slow-write?ms=N` sleeps then commits a write,
//! `/whoami` reports the caller's token, `/leak-tx` leaves a transaction open, `/other-store?store=s` tries a store it was not granted,
//! `/kv-hog` buffers 1 MiB writes in one transaction until refused, `/kv-fill?kib=N` commits
//! N KiB values one transaction each until refused, `/kv-reads?n=N` reads N absent keys in one
//! transaction, `/kv-scan?limit=N` scans its keyspace, `/kv-drop` deletes what `/kv-fill` wrote,
//! `/config?key=K` reports K from wasi:config and from the environment, `/claim?cap=N&id=X`
//! takes seat X in one serializable transaction only if fewer than N seats are taken (a scan
//! then an insert: the phantom a serializable store must prevent), `/kv-hold?kib=N&id=X` buffers
//! N KiB across open transactions (a new one every MiB) and, given an id, commits `held/X` and
//! keeps them open until `/kv-release`; `/kv-held` counts the `held/` keys, anything else
//! answers `fine`.
use ledge_sdk::http::{Request, Response};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, OutgoingRequest, Scheme};

fn handle(req: Request) -> Response {
    match req.path() {
        "/trap" => panic!("asked to trap"),
        "/count-then-trap" => {
            let hits = ledge_sdk::kv::transaction(|tx| {
                let n = tx.get_u64("hits")?.unwrap_or(0) + 1;
                tx.put("hits", n)?;
                Ok(n)
            })
            .unwrap();
            panic!("trapped after counting to {hits}");
        }
        "/spin" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "/hog" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "/leak-tx" => {
            // Opens a transaction, writes, and never commits nor drops it.
            let mut tx = ledge_sdk::kv::begin(ledge_sdk::kv::Isolation::Serializable, None).unwrap();
            tx.put("leaked", "uncommitted").unwrap();
            std::mem::forget(tx);
            Response::text("leaked\n")
        }
        "/read-leaked" => {
            let value = ledge_sdk::kv::transaction(|tx| tx.get_string("leaked")).unwrap();
            Response::text(format!("{value:?}\n"))
        }
        "/other-store" => match ledge_sdk::kv::begin(
            ledge_sdk::kv::Isolation::Serializable,
            Some(req.query_param("store").unwrap_or("x")),
        ) {
            Ok(_) => Response::text("opened\n"),
            Err(error) => Response::text(format!("{error}\n")).with_status(403),
        },
        "/print" => {
            println!("hello from the guest's stdout");
            eprintln!("and from its stderr");
            Response::text("printed\n")
        }
        "/escapes" => {
            // What a hostile guest prints to take over the operator's terminal: an OSC 52 write
            // to the clipboard, cursor movement, a carriage return hiding what came before, a
            // C1 CSI, DEL, and a tab and a backslash.
            println!("clip\x1b]52;c;bGVkZ2U=\x07 up\x1b[2A hidden\rshown \u{9b}31mred\x7f tab\tback\\slash");
            Response::text("escaped\n")
        }
        "/flood" => {
            let line = "x".repeat(4000);
            for _ in 0..32 {
                println!("{line}");
            }
            Response::text("flooded\n")
        }
        "/slow-write" => {
            // Sleeps, then commits a write: a request in flight when the server is told to stop.
            let ms: u64 = req.query_param("ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
            wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
            ledge_sdk::kv::transaction(|tx| tx.put("slow", "done")).unwrap();
            Response::text("written\n")
        }
        "/read-slow" => {
            let value = ledge_sdk::kv::transaction(|tx| tx.get_string("slow")).unwrap();
            Response::text(format!("{value:?}\n"))
        }
        "/claim" => {
            let cap: usize = req.query_param("cap").and_then(|v| v.parse().ok()).unwrap_or(1);
            let seat = format!("seat/{}", req.query_param("id").unwrap_or("anonymous"));
            let claimed = ledge_sdk::kv::transaction(|tx| {
                let taken = tx.scan_prefix("seat/", cap as u32 + 1)?.len();
                if taken >= cap {
                    return Ok(format!("full {taken}"));
                }
                tx.put(&seat, "taken")?;
                Ok(format!("seated {}", taken + 1))
            });
            match claimed {
                Ok(outcome) => Response::text(format!("{outcome}\n")),
                Err(error) => Response::text(format!("{error}\n")).with_status(500),
            }
        }
        "/whoami" => match ledge_sdk::caller::token() {
            Some(token) => Response::text(format!(
                "id={} kv-prefix={:?} caveats={}\n",
                token.id,
                token.caveat("kv-prefix"),
                token.caveats.join(";")
            )),
            None => Response::text("anonymous\n"),
        },
        "/kv-hog" => {
            let mut tx = ledge_sdk::kv::begin(ledge_sdk::kv::Isolation::Serializable, None).unwrap();
            let value = vec![7u8; 1 << 20];
            let mut written = 0;
            let error = loop {
                if let Err(error) = tx.put(format!("hog/{written}"), value.as_slice()) {
                    break error;
                }
                written += 1;
            };
            Response::text(format!("buffered {written} MiB, then: {error}\n"))
        }
        "/kv-fill" => {
            let kib: usize = req.query_param("kib").and_then(|v| v.parse().ok()).unwrap_or(64);
            let value = vec![1u8; kib << 10];
            let mut committed = 0;
            let error = loop {
                let outcome = ledge_sdk::kv::transaction(|tx| tx.put(format!("fill/{committed}"), value.as_slice()));
                if let Err(error) = outcome {
                    break error;
                }
                committed += 1;
            };
            Response::text(format!("committed {committed}, then: {error}\n"))
        }
        "/kv-drop" => {
            let dropped = ledge_sdk::kv::transaction(|tx| {
                let keys = tx.scan_prefix("fill/", 1000)?;
                for (key, _) in &keys {
                    tx.delete(key)?;
                }
                Ok(keys.len())
            });
            Response::text(format!("{dropped:?}\n"))
        }
        "/kv-reads" => {
            let n: u32 = req.query_param("n").and_then(|v| v.parse().ok()).unwrap_or(1000);
            let mut tx = ledge_sdk::kv::begin(ledge_sdk::kv::Isolation::Serializable, None).unwrap();
            let outcome = (0..n).try_for_each(|i| tx.get(format!("absent/{i}")).map(drop));
            Response::text(format!("{outcome:?}\n"))
        }
        "/kv-scan" => {
            let limit: u32 = req.query_param("limit").and_then(|v| v.parse().ok()).unwrap_or(100);
            let outcome = ledge_sdk::kv::transaction(|tx| tx.scan_prefix("", limit).map(|entries| entries.len()));
            Response::text(format!("{outcome:?}\n"))
        }
        "/kv-hold" => {
            let kib: usize = req.query_param("kib").and_then(|v| v.parse().ok()).unwrap_or(1024);
            // The transactions stay open (and their writes buffered) until this answers.
            let (held, open, refused) = hold_writes(kib);
            let held = format!("held {held} KiB in {} transactions", open.len());
            if let Some(error) = refused {
                return Response::text(format!("{held}, then: {error}\n"));
            }
            if let Some(id) = req.query_param("id") {
                ledge_sdk::kv::transaction(|tx| tx.put(format!("held/{id}"), "1")).unwrap();
                // Bounded: the test releases the holders within seconds.
                for _ in 0..400 {
                    if ledge_sdk::kv::transaction(|tx| tx.get("release")).unwrap().is_some() {
                        break;
                    }
                    wasip2::clocks::monotonic_clock::subscribe_duration(20_000_000).block();
                }
            }
            Response::text(format!("{held}\n"))
        }
        "/kv-held" => {
            let held = ledge_sdk::kv::transaction(|tx| tx.scan_prefix("held/", 1000).map(|keys| keys.len()));
            Response::text(format!("{held:?}\n"))
        }
        "/kv-release" => {
            ledge_sdk::kv::transaction(|tx| tx.put("release", "1")).unwrap();
            Response::text("released\n")
        }
        "/config" => {
            let key = req.query_param("key").unwrap_or("GREETING");
            Response::text(format!("wasi:config={:?} env={:?}\n", ledge_sdk::config::get(key), std::env::var(key).ok()))
        }
        "/outbound" => {
            outbound(req.query_param("authority").unwrap_or("example.com"), req.query_param("path").unwrap_or("/"))
        }
        _ => Response::text("fine\n"),
    }
}

/// Buffers `kib` KiB of 64 KiB values in transactions it hands back open, a new one every MiB;
/// returns the KiB buffered, the transactions, and the error that stopped it.
fn hold_writes(kib: usize) -> (usize, Vec<ledge_sdk::kv::Tx>, Option<ledge_sdk::kv::Error>) {
    let value = vec![3u8; 64 << 10];
    let mut open: Vec<ledge_sdk::kv::Tx> = Vec::new();
    let mut held = 0;
    while held < kib {
        if held % 1024 == 0 {
            match ledge_sdk::kv::begin(ledge_sdk::kv::Isolation::Serializable, None) {
                Ok(tx) => open.push(tx),
                Err(error) => return (held, open, Some(error)),
            }
        }
        let tx = open.last_mut().expect("one is open");
        if let Err(error) = tx.put(format!("hold/{held}"), value.as_slice()) {
            return (held, open, Some(error));
        }
        held += 64;
    }
    (held, open, None)
}

fn outbound(authority: &str, path: &str) -> Response {
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    match outgoing_handler::handle(request, None) {
        Err(code) => Response::text(format!("refused: {code:?}\n")),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => Response::text(format!("status {}\n", response.status())),
                Some(Ok(Err(code))) => Response::text(format!("refused: {code:?}\n")),
                other => Response::text(format!("failed: {other:?}\n")),
            }
        }
    }
}

ledge_sdk::http_handler!(handle);
