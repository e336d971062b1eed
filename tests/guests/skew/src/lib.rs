//! The write-skew anomaly as two HTTP requests. Doctors `alice` and `bob` start on call; the
//! rule is that at least one stays on call. `POST /leave?doctor=alice&isolation=snapshot|serializable&pause_ms=N`
//! reads both, and if the other is still on call, takes this doctor off call. The pause sits
//! between the reads and the write so two concurrent requests overlap.
//! `POST /reset` puts both back on call; `GET /oncall` lists who is on call.
use ledge_sdk::http::{Request, Response};
use ledge_sdk::kv::{self, Isolation, Options};

fn pause(ms: u64) {
    ledge_sdk::__private::wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
}

fn handle(req: Request) -> Result<Response, kv::Error> {
    match req.path() {
        "/reset" => {
            kv::transaction(|tx| {
                tx.put("oncall/alice", "yes")?;
                tx.put("oncall/bob", "yes")
            })?;
            Ok(Response::text("reset\n"))
        }
        "/oncall" => {
            let on = kv::transaction(|tx| {
                let entries = tx.scan_prefix("oncall/", 10)?;
                Ok(entries
                    .into_iter()
                    .filter(|(_, v)| v == b"yes")
                    .map(|(k, _)| String::from_utf8_lossy(&k[7..]).into_owned())
                    .collect::<Vec<_>>())
            })?;
            Ok(Response::text(format!("{}\n", on.join(","))))
        }
        "/leave" => {
            let me = req.query_param("doctor").unwrap_or("alice").to_string();
            let other = if me == "alice" { "bob" } else { "alice" };
            let isolation = if req.query_param("isolation") == Some("snapshot") {
                Isolation::Snapshot
            } else {
                Isolation::Serializable
            };
            let pause_ms = req.query_param("pause_ms").and_then(|p| p.parse().ok()).unwrap_or(0);
            let left = kv::transaction_with(Options { isolation, ..Options::default() }, |tx| {
                let mine = tx.get_string(format!("oncall/{me}"))?;
                let theirs = tx.get_string(format!("oncall/{other}"))?;
                pause(pause_ms);
                if mine.as_deref() == Some("yes") && theirs.as_deref() == Some("yes") {
                    tx.put(format!("oncall/{me}"), "no")?;
                    return Ok(true);
                }
                Ok(false)
            })?;
            Ok(Response::text(if left { "left\n" } else { "must stay\n" }))
        }
        _ => Ok(Response::text("not found\n").with_status(404)),
    }
}

ledge_sdk::http_handler!(handle);
