//! Sends and consumes queue messages for the queue tests, and keeps what it saw.
//!
//! - `POST /send?queue=Q[&key=K][&delay_ms=N][&commit=0]`: sends the body inside a transaction
//!   that also writes `order/<id>`; `commit=0` rolls it back instead. Answers the message id.
//! - `POST /send-now?queue=Q`: sends the body on its own (`queue::send`).
//! - `POST /jobs/...`: a delivery. It is kept in `seen/` with its headers and times. A body
//!   `fail:N` fails (500) while the attempt is at most N; `slow:MS[:tag]` takes MS milliseconds.
//! - `POST /ack/...`: a delivery acknowledged at once, nothing kept.
//! - `GET /seen[?from=N]`: the deliveries kept (at most 2,000 from the N-th), in the order they
//!   were kept, as a JSON array.
//! - `GET /count`: how many deliveries were acknowledged (for the torture and bench scripts).
use std::time::Duration;

use ledge_sdk::http::{Request, Response};
use ledge_sdk::{kv, queue};

fn now_ms() -> u64 {
    let now = ledge_sdk::__private::wasip2::clocks::wall_clock::now();
    now.seconds * 1000 + u64::from(now.nanoseconds / 1_000_000)
}

fn handle(req: Request) -> Result<Response, kv::Error> {
    let path = req.path().to_string();
    match (req.method(), path.as_str()) {
        ("POST", "/send") => send(&req),
        ("POST", "/send-now") => {
            let queue = req.query_param("queue").unwrap_or("jobs").to_string();
            match queue::send(&queue, req.body(), queue::SendOptions::default()) {
                Ok(id) => Ok(Response::text(id)),
                Err(error) => Ok(refusal(&error)),
            }
        }
        ("POST", jobs) if jobs.starts_with("/jobs/") => consume(&req),
        // A consumer that only acknowledges (the bench's: it measures the queue, not the guest).
        ("POST", ack) if ack.starts_with("/ack/") => Ok(Response::new(200)),
        ("GET", "/seen") => {
            let from: u64 = req.query_param("from").and_then(|n| n.parse().ok()).unwrap_or(0);
            let seen = kv::transaction(|tx| tx.scan(format!("seen/{from:08}"), "seen0", 2_000))?;
            let entries: Vec<serde_json::Value> =
                seen.iter().filter_map(|(_, value)| serde_json::from_slice(value).ok()).collect();
            Ok(Response::json(&entries))
        }
        ("GET", "/count") => {
            let count = kv::transaction(|tx| tx.get_u64("acked"))?.unwrap_or(0);
            Ok(Response::text(count.to_string()))
        }
        _ => Ok(Response::text("not found\n").with_status(404)),
    }
}

fn refusal(error: &kv::Error) -> Response {
    let status = match error {
        kv::Error::Denied(_) => 403,
        kv::Error::Limit(_) => 429,
        _ => 500,
    };
    Response::text(error.to_string()).with_status(status)
}

fn send(req: &Request) -> Result<Response, kv::Error> {
    let queue = req.query_param("queue").unwrap_or("jobs").to_string();
    let mut options = queue::SendOptions::default();
    if let Some(key) = req.query_param("key") {
        options = options.key(key);
    }
    if let Some(delay) = req.query_param("delay_ms").and_then(|ms| ms.parse().ok()) {
        options = options.delay(Duration::from_millis(delay));
    }
    let commit = req.query_param("commit") != Some("0");
    let sent = kv::transaction(|tx| {
        let id = tx.send(&queue, req.body(), options.clone())?;
        tx.put(format!("order/{id}"), "placed")?;
        if commit { Ok(id) } else { Err(kv::abort(id)) }
    });
    match sent {
        Ok(id) => Ok(Response::text(id)),
        Err(kv::Error::Aborted(id)) => Ok(Response::text(id).with_status(409)),
        Err(error) => Ok(refusal(&error)),
    }
}

fn consume(req: &Request) -> Result<Response, kv::Error> {
    let started = now_ms();
    let attempt: u32 = req.header("ledge-attempt").and_then(|a| a.parse().ok()).unwrap_or(0);
    let body = String::from_utf8_lossy(req.body()).into_owned();
    let mut status = 200;
    if let Some(times) = body.strip_prefix("fail:").and_then(|n| n.parse::<u32>().ok()) {
        if attempt <= times {
            status = 500;
        }
    }
    if let Some(ms) = body.strip_prefix("slow:").and_then(|rest| rest.split(':').next()?.parse::<u64>().ok()) {
        ledge_sdk::__private::wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
    }
    let record = serde_json::json!({
        "queue": req.header("ledge-queue"),
        "id": req.header("ledge-message-id"),
        "attempt": attempt,
        "sent_at": req.header("ledge-sent-at"),
        "path": req.path(),
        "body": body,
        "started_ms": started,
        "ended_ms": now_ms(),
        "status": status,
    });
    kv::transaction(|tx| {
        let n = tx.get_u64("seen-count")?.unwrap_or(0);
        tx.put("seen-count", n + 1)?;
        tx.put_json(format!("seen/{n:08}"), &record)?;
        if status == 200 {
            let acked = tx.get_u64("acked")?.unwrap_or(0);
            tx.put("acked", acked + 1)?;
        }
        Ok(())
    })?;
    Ok(Response::text(format!("attempt {attempt}\n")).with_status(status))
}

ledge_sdk::http_handler!(handle);
