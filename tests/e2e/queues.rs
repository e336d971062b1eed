//! Queues: a message sent inside a transaction is delivered if and only if it commits; failed
//! deliveries are retried with a doubling backoff and then dead-lettered (kept on the dead side,
//! or moved to another queue) until redriven; same-key messages go one at a time in send order
//! while others go in parallel up to the consumer's concurrency; delays hold; sends are denied
//! unless granted; bounds refuse; a crash loses nothing queued.
//!
//! Every test deploys `tests/guests/queue-worker`, which sends (`/send`, `/send-now`) and
//! consumes (`/jobs/...`), and lists every delivery it saw with its headers and times (`/seen`).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::harness::{Server, client, deploy_with_policy, guest, problem};

const WORKER: &str = "queue-worker";

/// The worker as a sender and a consumer of `jobs`: a 200 ms backoff, three attempts.
const JOBS: &str = r#"
[queues]
send = ["jobs"]
[[consumer]]
queue = "jobs"
path = "/jobs/x"
backoff = "200ms"
max_attempts = 3
concurrency = 4
"#;

/// Milliseconds since the epoch, on the clock the server and its guests read too.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A server (with `extra` serve arguments) with the worker deployed under `policy`, its
/// consumers already served (the dispatcher looks for new consumers at least every 500 ms, and
/// takes a consumer's bounds from it then).
async fn worker_server(extra: &[&str], policy: &str) -> Server {
    let server = Server::start_with(extra);
    deploy_with_policy(&server, WORKER, &guest(WORKER), policy).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    server
}

/// `POST /fn/queue-worker{path_and_query}` with `body`: the status and the text answered.
async fn post(server: &Server, path_and_query: &str, body: &str) -> (u16, String) {
    let response = client().post(server.fn_url(WORKER, path_and_query)).body(body.to_string()).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Sends `body` through the worker's transactional `/send` with `query` (e.g. `queue=jobs`),
/// asserting it committed: the message id.
async fn send(server: &Server, query: &str, body: &str) -> String {
    let (status, text) = post(server, &format!("/send?{query}"), body).await;
    assert_eq!(status, 200, "send {query} {body}: {text}");
    let id = text.trim().to_string();
    assert!(!id.is_empty(), "send answered no message id");
    id
}

/// `POST /v1/queues/{queue}/messages[?query]` with `token`.
async fn http_send(server: &Server, token: &str, queue: &str, query: &str, body: Vec<u8>) -> reqwest::Response {
    let url = format!("{}/v1/queues/{queue}/messages{query}", server.url);
    client().post(url).bearer_auth(token).body(body).send().await.unwrap()
}

/// Every delivery the worker saw, in the order they started.
async fn seen(server: &Server) -> Vec<Value> {
    let response = client().get(server.fn_url(WORKER, "/seen")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut records: Vec<Value> = response.json().await.unwrap();
    records.sort_by_key(|r| r["started_ms"].as_u64().unwrap());
    records
}

/// Polls `/seen` until `done` holds for it (at most `within`): the deliveries then.
async fn seen_until(server: &Server, within: Duration, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let records = seen(server).await;
        if done(&records) {
            return records;
        }
        assert!(Instant::now() < deadline, "waited {within:?} for {what}; deliveries seen:\n{records:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The deliveries of message `id`, in the order they started.
fn of_id<'a>(records: &'a [Value], id: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["id"] == id).collect()
}

/// The deliveries whose body is `body`.
fn of_body<'a>(records: &'a [Value], body: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["body"] == body).collect()
}

fn ms(record: &Value, field: &str) -> u64 {
    record[field].as_u64().unwrap_or_else(|| panic!("no `{field}` in {record}"))
}

/// `GET /v1/queues` with the admin token: the whole answer.
async fn queues(server: &Server) -> Value {
    let response = server.admin().get(format!("{}/v1/queues", server.url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// `queue`'s row in `GET /v1/queues` (all zeros when it is not listed).
async fn stats(server: &Server, queue: &str) -> Value {
    let listed = queues(server).await;
    let row = listed["queues"]
        .as_array()
        .unwrap_or_else(|| panic!("no `queues` array: {listed}"))
        .iter()
        .find(|q| q["name"] == queue);
    row.cloned().unwrap_or_else(|| serde_json::json!({"name": queue, "depth": 0, "in_flight": 0, "dead": 0}))
}

/// Polls `queue`'s row until `done` holds for it (at most `within`).
async fn stats_until(server: &Server, queue: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let row = stats(server, queue).await;
        if done(&row) {
            return row;
        }
        assert!(Instant::now() < deadline, "waited {within:?} on queue `{queue}`: {row}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /v1/queues/{queue}/messages[?dead=true]`: the messages shown.
async fn peek(server: &Server, queue: &str, dead: bool) -> Vec<Value> {
    let query = if dead { "?dead=true" } else { "" };
    let response =
        server.admin().get(format!("{}/v1/queues/{queue}/messages{query}", server.url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["dead"], dead, "{body}");
    body["messages"].as_array().unwrap_or_else(|| panic!("no `messages` array: {body}")).clone()
}

#[tokio::test]
async fn a_send_is_delivered_iff_its_transaction_commits_retried_with_backoff_and_never_early() {
    let server = worker_server(&[], JOBS).await;
    let sent_from = now_ms();
    // Rolled back: the transaction that sent it wrote nothing, so nothing is delivered.
    let (status, rolled_back) = post(&server, "/send?queue=jobs&commit=0", "rolled-back").await;
    assert_eq!(status, 409, "{rolled_back}");
    let rolled_back = rolled_back.trim().to_string();
    assert!(!rolled_back.is_empty());
    let committed = send(&server, "queue=jobs", "committed").await;
    assert_ne!(committed, rolled_back);
    let flaky = send(&server, "queue=jobs", "fail:2").await;
    let delayed_from = now_ms();
    let delayed = send(&server, "queue=jobs&delay_ms=1500", "delayed").await;

    seen_until(&server, Duration::from_secs(30), "every message delivered", |records| {
        !of_id(records, &committed).is_empty()
            && of_id(records, &flaky).len() >= 3
            && !of_id(records, &delayed).is_empty()
    })
    .await;
    // Past the delay and a few backoffs: nothing else comes.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let records = seen(&server).await;

    // The committed message: delivered once, with the id the send returned and ledge's headers.
    let delivered = of_id(&records, &committed);
    assert_eq!(delivered.len(), 1, "delivered exactly once: {delivered:#?}");
    let record = delivered[0];
    assert_eq!(record["body"], "committed");
    assert_eq!(record["queue"], "jobs");
    assert_eq!(record["attempt"], 1);
    assert_eq!(record["path"], "/jobs/x");
    assert_eq!(record["status"], 200);
    let sent_at = record["sent_at"].as_str().unwrap_or_else(|| panic!("no ledge-sent-at: {record}"));
    let sent_at = chrono::DateTime::parse_from_rfc3339(sent_at).unwrap_or_else(|e| panic!("`{sent_at}`: {e}"));
    let sent_at_ms = sent_at.timestamp_millis() as u64;
    assert!(sent_at_ms + 50 >= sent_from && sent_at_ms <= ms(record, "started_ms"), "sent at {sent_at}: {record}");

    // The rolled-back one: never delivered, not kept.
    assert!(of_id(&records, &rolled_back).is_empty() && of_body(&records, "rolled-back").is_empty(), "{records:#?}");
    assert!(!peek(&server, "jobs", false).await.iter().any(|m| m["id"] == rolled_back.as_str()));
    let jobs = stats(&server, "jobs").await;
    assert_eq!(
        (jobs["depth"].as_u64(), jobs["in_flight"].as_u64(), jobs["dead"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{jobs}"
    );

    // Failed twice, then acknowledged: attempts 1, 2, 3 of one id, each after the backoff
    // (200 ms, then 400 ms) counted from the end of the failed attempt.
    let attempts = of_id(&records, &flaky);
    let numbers: Vec<&Value> = attempts.iter().map(|r| &r["attempt"]).collect();
    assert_eq!(numbers, [1, 2, 3], "{attempts:#?}");
    let statuses: Vec<&Value> = attempts.iter().map(|r| &r["status"]).collect();
    assert_eq!(statuses, [500, 500, 200], "{attempts:#?}");
    assert!(attempts.iter().all(|r| r["body"] == "fail:2" && r["queue"] == "jobs"));
    let first_gap = ms(attempts[1], "started_ms") as i64 - ms(attempts[0], "ended_ms") as i64;
    let second_gap = ms(attempts[2], "started_ms") as i64 - ms(attempts[1], "ended_ms") as i64;
    assert!(first_gap >= 200, "the second attempt came {first_gap} ms after the first failed (backoff 200 ms)");
    assert!(second_gap >= 400, "the third attempt came {second_gap} ms after the second failed (doubled: 400 ms)");
    assert!(first_gap < 10_000 && second_gap < 10_000, "backoffs of {first_gap} and {second_gap} ms");
    // The same sent-at on every attempt: it is the message's, not the attempt's.
    assert!(attempts.iter().all(|r| r["sent_at"] == attempts[0]["sent_at"]), "{attempts:#?}");

    // The delayed message: not before its delay, then once.
    let delayed = of_id(&records, &delayed);
    assert_eq!(delayed.len(), 1, "{delayed:#?}");
    let started = ms(delayed[0], "started_ms");
    assert!(
        started + 50 >= delayed_from + 1500,
        "delivered {} ms after it was sent, asked 1500",
        started - delayed_from
    );
    let sent_at = chrono::DateTime::parse_from_rfc3339(delayed[0]["sent_at"].as_str().unwrap()).unwrap();
    assert!(started + 50 >= sent_at.timestamp_millis() as u64 + 1500, "{:?} vs sent at {sent_at}", delayed[0]);
}

#[tokio::test]
async fn only_granted_senders_send_and_callers_cannot_forge_deliveries() {
    let server = worker_server(&[], JOBS).await;
    // The guest: a queue its policy does not list is a denial, transactional or not.
    let (status, text) = post(&server, "/send?queue=other", "x").await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("other"), "the denial names the queue: {text}");
    let (status, text) = post(&server, "/send-now?queue=other", "x").await;
    assert_eq!(status, 403, "{text}");
    // Granted, on its own (no transaction): delivered.
    let (status, now_id) = post(&server, "/send-now?queue=jobs", "sent-now").await;
    assert_eq!(status, 200, "{now_id}");

    // Over HTTP: a token allowed `op = send` for another queue, one confined to a function, one
    // without a token, one that may send but not manage.
    let other = server.mint(&["op = send", "queue = other"]);
    let refused = problem(http_send(&server, &other, "jobs", "", b"no".to_vec()).await, 403).await;
    assert!(refused["detail"].as_str().unwrap().contains("jobs"), "{refused}");
    let confined = server.mint(&["fn = queue-worker"]);
    problem(http_send(&server, &confined, "jobs", "", b"no".to_vec()).await, 403).await;
    let invalid = http_send(&server, &server.admin_token, "Not_A_Name", "", b"no".to_vec()).await;
    assert!(problem(invalid, 400).await["detail"].as_str().unwrap().contains("Not_A_Name"));
    let unsigned = client().post(format!("{}/v1/queues/jobs/messages", server.url)).body("no").send().await.unwrap();
    problem(unsigned, 401).await;
    let sender = server.mint(&["op = send", "queue = jobs"]);
    let accepted = http_send(&server, &sender, "jobs", "", b"over-http".to_vec()).await;
    assert_eq!(accepted.status(), 202);
    let http_id = accepted.json::<Value>().await.unwrap()["id"].as_str().expect("an id").to_string();
    let listing = client().get(format!("{}/v1/queues", server.url)).bearer_auth(&sender).send().await.unwrap();
    problem(listing, 403).await;

    // A caller's ledge headers never reach the guest: a direct call of the consumer's path is
    // no delivery.
    let forged = client()
        .post(server.fn_url(WORKER, "/jobs/x"))
        .header("ledge-queue", "forged")
        .header("ledge-message-id", "forged-id")
        .header("ledge-attempt", "7")
        .header("ledge-sent-at", "2020-01-01T00:00:00Z")
        .body("direct")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 200);
    assert_eq!(forged.text().await.unwrap(), "attempt 0\n", "the guest saw no ledge-attempt");

    let records = seen_until(&server, Duration::from_secs(20), "both granted sends delivered", |records| {
        !of_id(records, &now_id).is_empty() && !of_id(records, &http_id).is_empty()
    })
    .await;
    let direct = of_body(&records, "direct");
    assert_eq!(direct.len(), 1, "{records:#?}");
    let direct = direct[0];
    assert!(direct["queue"].is_null() && direct["id"].is_null() && direct["sent_at"].is_null(), "{direct}");
    assert_eq!(direct["attempt"], 0, "{direct}");
    for (id, body) in [(&now_id, "sent-now"), (&http_id, "over-http")] {
        let delivered = of_id(&records, id);
        assert_eq!(delivered.len(), 1, "{delivered:#?}");
        assert_eq!((&delivered[0]["body"], &delivered[0]["queue"]), (&Value::from(body), &Value::from("jobs")));
    }
    // Nothing reached `other`, and the forged queue does not exist.
    let listed = queues(&server).await;
    let names: Vec<&Value> = listed["queues"].as_array().unwrap().iter().map(|q| &q["name"]).collect();
    assert!(!names.contains(&&Value::from("other")) && !names.contains(&&Value::from("forged")), "{listed}");
}

#[tokio::test]
async fn same_key_messages_go_one_at_a_time_in_order_and_others_in_parallel_up_to_the_concurrency() {
    let server = worker_server(&[], JOBS).await;
    let mut sent = Vec::new();
    // Interleaved, so that every key has messages waiting while the others run.
    for round in 1..=3 {
        for key in ["a", "b"] {
            let body = format!("slow:300:{key}{round}");
            sent.push(send(&server, &format!("queue=jobs&key={key}"), &body).await);
        }
        for n in 0..3 {
            sent.push(send(&server, "queue=jobs", &format!("slow:300:free{round}-{n}")).await);
        }
    }
    seen_until(&server, Duration::from_secs(60), "15 deliveries", |records| records.len() >= sent.len()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records = seen(&server).await;
    assert_eq!(records.len(), sent.len(), "each message once: {records:#?}");
    assert!(sent.iter().all(|id| of_id(&records, id).len() == 1), "each message once: {records:#?}");
    assert!(records.iter().all(|r| r["attempt"] == 1 && r["status"] == 200), "{records:#?}");
    let interval = |r: &Value| (ms(r, "started_ms"), ms(r, "ended_ms"));

    for key in ["a", "b"] {
        let keyed: Vec<&Value> = records
            .iter()
            .filter(|r| r["body"].as_str().unwrap().split(':').nth(2).unwrap().starts_with(key))
            .collect();
        let order: Vec<&str> = keyed.iter().map(|r| r["body"].as_str().unwrap()).collect();
        let expected: Vec<String> = (1..=3).map(|round| format!("slow:300:{key}{round}")).collect();
        assert_eq!(order, expected, "key {key} in send order");
        for pair in keyed.windows(2) {
            let ((_, ended), (started, _)) = (interval(pair[0]), interval(pair[1]));
            assert!(started >= ended, "key {key}: {} started before {} ended", pair[1]["body"], pair[0]["body"]);
        }
    }

    // How many ran at once: at least two (keys in parallel), never more than the concurrency.
    let mut edges: Vec<(u64, i32)> = records.iter().flat_map(|r| [(interval(r).0, 1), (interval(r).1, -1)]).collect();
    edges.sort();
    let (mut running, mut most) = (0, 0);
    for (_, change) in edges {
        running += change;
        most = most.max(running);
    }
    assert!(most >= 2, "deliveries never overlapped: {records:#?}");
    assert!(most <= 4, "{most} deliveries ran at once with concurrency = 4: {records:#?}");
}

#[tokio::test]
async fn failed_messages_are_dead_lettered_then_redriven_and_full_queues_refuse() {
    let policy = r#"
[queues]
send = ["jobs", "mail", "small"]
[[consumer]]
queue = "jobs"
path = "/jobs/x"
backoff = "100ms"
max_attempts = 2
[[consumer]]
queue = "mail"
path = "/jobs/mail"
backoff = "100ms"
max_attempts = 2
dead_letter = "mail-dlq"
[[consumer]]
queue = "small"
path = "/jobs/small"
max_depth = 3
"#;
    let server = worker_server(&["--queue-max-body", "1KiB"], policy).await;
    // The second `k` message waits until the first is dead-lettered.
    let dead = send(&server, "queue=jobs&key=k", "fail:99").await;
    let after = send(&server, "queue=jobs&key=k", "after-dead").await;
    let moved = send(&server, "queue=mail", "fail:99").await;

    // Two attempts each, then no more.
    let records = seen_until(&server, Duration::from_secs(20), "two attempts of each", |records| {
        of_id(records, &dead).len() >= 2 && of_id(records, &moved).len() >= 2 && !of_id(records, &after).is_empty()
    })
    .await;
    let last_failure = ms(of_id(&records, &dead)[1], "ended_ms");
    let next = of_id(&records, &after);
    assert!(
        ms(next[0], "started_ms") >= last_failure,
        "same key, delivered before the one before it was dead: {records:#?}"
    );
    // Settled after the consumer answered (which is after `/seen` shows the delivery).
    stats_until(&server, "jobs", Duration::from_secs(10), |row| row["dead"] == 1 && row["depth"] == 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let jobs = stats(&server, "jobs").await;
    assert_eq!(
        (jobs["depth"].as_u64(), jobs["in_flight"].as_u64(), jobs["dead"].as_u64()),
        (Some(0), Some(0), Some(1)),
        "{jobs}"
    );
    let records = seen(&server).await;
    let attempts: Vec<&Value> = of_id(&records, &dead).iter().map(|r| &r["attempt"]).collect();
    assert_eq!(attempts, [1, 2], "max_attempts = 2: {records:#?}");
    let attempts: Vec<&Value> = of_id(&records, &moved).iter().map(|r| &r["attempt"]).collect();
    assert_eq!(attempts, [1, 2], "max_attempts = 2: {records:#?}");
    assert!(of_id(&records, &moved).iter().all(|r| r["queue"] == "mail" && r["path"] == "/jobs/mail"));

    // Kept on the dead side of `jobs`, shown as text.
    let shown = peek(&server, "jobs", true).await;
    assert_eq!(shown.len(), 1, "{shown:#?}");
    assert_eq!(
        (&shown[0]["id"], &shown[0]["body"], &shown[0]["encoding"]),
        (&Value::from(dead.as_str()), &Value::from("fail:99"), &Value::from("utf-8"))
    );
    assert_eq!(shown[0]["key"], "k", "{shown:#?}");
    assert!(peek(&server, "jobs", false).await.is_empty());

    // Moved to `mail-dlq` (nobody consumes it), same id; nothing left on `mail`.
    stats_until(&server, "mail-dlq", Duration::from_secs(10), |row| row["depth"] == 1).await;
    let shown = peek(&server, "mail-dlq", false).await;
    assert_eq!(shown.len(), 1, "{shown:#?}");
    assert_eq!((&shown[0]["id"], &shown[0]["body"]), (&Value::from(moved.as_str()), &Value::from("fail:99")));
    let mail = stats(&server, "mail").await;
    assert_eq!((mail["depth"].as_u64(), mail["dead"].as_u64()), (Some(0), Some(0)), "{mail}");
    assert!(peek(&server, "mail", true).await.is_empty());

    // Redrive: back on `jobs`, delivered again from attempt 1, then dead again.
    let redriven = server.admin().post(format!("{}/v1/queues/jobs/redrive", server.url)).send().await.unwrap();
    assert_eq!(redriven.status(), 200);
    assert_eq!(redriven.json::<Value>().await.unwrap()["redriven"], 1);
    let records =
        seen_until(&server, Duration::from_secs(20), "the redriven message delivered twice more", |records| {
            of_id(records, &dead).len() >= 4
        })
        .await;
    let attempts: Vec<&Value> = of_id(&records, &dead).iter().map(|r| &r["attempt"]).collect();
    assert_eq!(attempts, [1, 2, 1, 2], "attempts restart at 1 after a redrive: {records:#?}");
    stats_until(&server, "jobs", Duration::from_secs(10), |row| row["dead"] == 1 && row["depth"] == 0).await;

    // Bounds: `small` keeps three messages (delayed, so they stay); the fourth is refused, from
    // a guest (`limit`) and over HTTP (429 naming the queue).
    for n in 1..=3 {
        send(&server, "queue=small&delay_ms=600000", &format!("kept-{n}")).await;
    }
    let (status, text) = post(&server, "/send?queue=small&delay_ms=600000", "one-too-many").await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("small"), "{text}");
    let refused = problem(http_send(&server, &server.admin_token, "small", "", b"over".to_vec()).await, 429).await;
    assert!(refused["detail"].as_str().unwrap().contains("`small`"), "{refused}");
    let small = stats(&server, "small").await;
    assert_eq!(small["depth"], 3, "{small}");
    // A body over --queue-max-body: 413 over HTTP, a `limit` from a guest.
    let big = vec![b'x'; 2048];
    let refused = problem(http_send(&server, &server.admin_token, "jobs", "", big.clone()).await, 413).await;
    assert!(refused["detail"].as_str().unwrap().contains("1024"), "{refused}");
    let (status, text) = post(&server, "/send?queue=jobs", std::str::from_utf8(&big).unwrap()).await;
    assert_eq!(status, 429, "{text}");
    // Purged, `small` takes messages again.
    let purged = server.admin().delete(format!("{}/v1/queues/small/messages", server.url)).send().await.unwrap();
    assert_eq!(purged.json::<Value>().await.unwrap()["purged"], 3);
    send(&server, "queue=small&delay_ms=600000", "room-again").await;
}

#[tokio::test]
async fn a_crash_loses_nothing_queued() {
    let mut server = worker_server(&[], JOBS).await;
    const DELAY_MS: u64 = 5000;
    let sent_from = now_ms();
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(send(&server, &format!("queue=jobs&delay_ms={DELAY_MS}"), &format!("durable-{n}")).await);
    }
    let query = format!("?delay_ms={DELAY_MS}");
    let accepted = http_send(&server, &server.admin_token, "jobs", &query, b"durable-http".to_vec()).await;
    assert_eq!(accepted.status(), 202);
    ids.push(accepted.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    let jobs = stats(&server, "jobs").await;
    assert_eq!(jobs["depth"], ids.len(), "{jobs}");
    assert!(["in_flight", "oldest_age_ms", "dead"].iter().all(|field| jobs[field].is_u64()), "{jobs}");
    assert!(seen(&server).await.is_empty(), "delivered before the crash");
    assert!(now_ms() < sent_from + DELAY_MS, "the sends took longer than the delay");

    server.kill();
    server.restart();
    if now_ms() + 200 < sent_from + DELAY_MS {
        // Not due yet: all still kept.
        assert_eq!(stats(&server, "jobs").await["depth"], ids.len());
    }
    let records =
        seen_until(&server, Duration::from_secs(60), "every message delivered after the restart", |records| {
            ids.iter().all(|id| !of_id(records, id).is_empty())
        })
        .await;
    assert!(records.iter().all(|r| ms(r, "started_ms") + 50 >= sent_from + DELAY_MS), "{records:#?}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let records = seen(&server).await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for record in &records {
        *counts.entry(record["id"].as_str().unwrap()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(counts.get(id.as_str()), Some(&1), "{id} delivered once: {records:#?}");
    }
    assert_eq!(records.len(), ids.len(), "{records:#?}");
    let jobs = stats(&server, "jobs").await;
    assert_eq!((jobs["depth"].as_u64(), jobs["dead"].as_u64()), (Some(0), Some(0)), "{jobs}");
    let count = client().get(server.fn_url(WORKER, "/count")).send().await.unwrap().text().await.unwrap();
    assert_eq!(count.trim(), ids.len().to_string());
}

#[tokio::test]
async fn a_failed_delivery_is_recorded_with_its_queue_headers_and_replays_the_same() {
    let server = worker_server(&[], &format!("public = true\n{JOBS}")).await;
    let id = send(&server, "queue=jobs", "fail:1").await;
    seen_until(&server, Duration::from_secs(10), "the retry acknowledged", |records| {
        of_id(records, &id).iter().any(|r| r["status"] == 200)
    })
    .await;
    // `[record] errors` is on by default: the failed first attempt was kept.
    let listed = server.cli_ok(&["traces", WORKER]);
    let trace = listed
        .lines()
        .skip(1)
        .find(|line| line.split_whitespace().nth(4) == Some("500"))
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_else(|| panic!("no recorded failed delivery in:\n{listed}"))
        .to_string();
    let output = server.cli(&["replay", &trace, "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    // The guest writes the attempt and message id it was given: the same writes on replay mean
    // the replay gave it the delivery's `ledge-*` headers as the run had them.
    assert_eq!(report["verdict"], "same", "{report}");
    assert_eq!(report["replayed"]["status"], 500);
}

#[tokio::test]
async fn send_tokens_name_their_queues_and_pay_their_rate_and_queues_stay_apart() {
    let server = worker_server(&["--queues-max-bytes", "2KiB"], &format!("public = true\n{JOBS}")).await;
    // A token that may send but not manage must name its queues: `op = send` alone sends nowhere.
    let anywhere = server.mint(&["op = send"]);
    let refused = problem(http_send(&server, &anywhere, "jobs", "", b"no".to_vec()).await, 403).await;
    assert!(refused["detail"].as_str().unwrap().contains("queue"), "{refused}");
    // Its `rate` caveat holds: the second send within the minute is refused.
    let slow = server.mint(&["op = send", "queue = jobs", "rate = 1/m"]);
    assert_eq!(http_send(&server, &slow, "jobs", "", b"first".to_vec()).await.status(), 202);
    problem(http_send(&server, &slow, "jobs", "", b"second".to_vec()).await, 429).await;
    // A purge of the wrong side is never guessed from a bad parameter.
    let admin = &server.admin_token;
    let bad = client().delete(format!("{}/v1/queues/jobs/messages?dead=yes", server.url)).bearer_auth(admin);
    assert!(problem(bad.send().await.unwrap(), 400).await["detail"].as_str().unwrap().contains("dead"));
    let unknown = http_send(&server, admin, "jobs", "?delay=5s", b"no".to_vec()).await;
    assert!(problem(unknown, 400).await["detail"].as_str().unwrap().contains("delay"));
    // The node's queues together hold 2 KiB: a queue filling it refuses the next send, naming
    // the flag.
    let filler = http_send(&server, admin, "parked", "?delay_ms=600000", vec![b'x'; 1500]).await;
    assert_eq!(filler.status(), 202);
    let full = problem(http_send(&server, admin, "other", "", vec![b'y'; 1000]).await, 429).await;
    assert!(full["detail"].as_str().unwrap().contains("--queues-max-bytes"), "{full}");
    // A caller holding a read-only token cannot make the function send.
    let reader = server.mint(&["kv = read"]);
    let response =
        client().post(server.fn_url(WORKER, "/send-now?queue=jobs")).bearer_auth(&reader).body("x").send().await;
    let response = response.unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.text().await.unwrap().contains("kv = read"));

    // A second function cannot consume `jobs`, nor name a queue global that the worker keeps on
    // the node.
    let thief = "[[consumer]]\nqueue = \"jobs\"\npath = \"/steal\"\n";
    let form = |policy: &str| {
        reqwest::multipart::Form::new()
            .part("component", reqwest::multipart::Part::bytes(std::fs::read(guest(WORKER)).unwrap()))
            .part("policy", reqwest::multipart::Part::text(policy.to_string()))
    };
    let deploy =
        |policy: &str| server.admin().put(format!("{}/v1/functions/thief", server.url)).multipart(form(policy));
    let stolen = problem(deploy(thief).send().await.unwrap(), 409).await;
    assert!(stolen["detail"].as_str().unwrap().contains("queue-worker"), "{stolen}");
    let split = "[queues]\nsend = [\"jobs\"]\nglobal = [\"jobs\"]\n";
    let split = problem(deploy(split).send().await.unwrap(), 409).await;
    assert!(split["detail"].as_str().unwrap().contains("global"), "{split}");
}

#[tokio::test]
async fn a_confined_token_cannot_add_a_consumer_or_a_queue_and_uploads_stay_under_the_ceilings() {
    let server = worker_server(&[], &format!("public = true\n{JOBS}")).await;
    let url = format!("{}/v1/functions/{WORKER}/policy", server.url);
    let upload = |token: String, policy: String| client().put(&url).bearer_auth(token).body(policy).send();
    let confined = server.mint(&["fn = queue-worker"]);
    // Sending to one more queue, and consuming one more, each widen the policy.
    let more_send = format!("public = true\n{}", JOBS.replace("send = [\"jobs\"]", "send = [\"jobs\", \"mail\"]"));
    let refused = problem(upload(confined.clone(), more_send).await.unwrap(), 403).await;
    assert!(refused["detail"].as_str().unwrap().contains("queues.send"), "{refused}");
    let more_consumers = format!("public = true\n{JOBS}[[consumer]]\nqueue = \"mail\"\npath = \"/jobs/m\"\n");
    let refused = problem(upload(confined.clone(), more_consumers).await.unwrap(), 403).await;
    assert!(refused["detail"].as_str().unwrap().contains("`consumer`"), "{refused}");
    // Narrowing its consumer is allowed to the same token.
    let narrower = format!("public = true\n{}", JOBS.replace("concurrency = 4", "concurrency = 2"));
    assert_eq!(upload(confined, narrower).await.unwrap().status(), 204);
    // Even the operator's token cannot upload a queue deeper than the node's ceiling.
    let deep = format!("public = true\n{JOBS}max_depth = 100001\n");
    let refused = problem(upload(server.admin_token.clone(), deep).await.unwrap(), 400).await;
    let detail = refused["detail"].as_str().unwrap();
    assert!(detail.contains("consumer.max_depth") && detail.contains("queue_max_depth"), "{refused}");
}
