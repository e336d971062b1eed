//! Functions get serializable transactions: through the SDK, through plain wasi:keyvalue, under
//! concurrency, across restarts and crashes, each function in its own keyspace.

use std::collections::BTreeSet;

use futures::future::join_all;

use crate::harness::{Server, client, guest};

async fn text(url: String) -> (u16, String) {
    let response = client().post(url).send().await.expect("request");
    (response.status().as_u16(), response.text().await.expect("body"))
}

#[tokio::test]
async fn two_hundred_concurrent_increments_count_exactly_two_hundred() {
    let server = Server::start();
    server.deploy("counter", &guest("counter"));
    let url = server.fn_url("counter", "/");
    let replies = join_all((0..200).map(|_| text(url.clone()))).await;
    let mut seen = BTreeSet::new();
    for (status, body) in replies {
        assert_eq!(status, 200, "{body}");
        seen.insert(body.trim().parse::<u64>().unwrap());
    }
    // Every increment saw a distinct count: no update was lost, none applied twice.
    assert_eq!(seen, (1..=200).collect::<BTreeSet<u64>>());
    assert_eq!(text(server.fn_url("counter", "/peek")).await.1, "200\n");
}

#[tokio::test]
async fn concurrent_random_transfers_keep_the_total_and_never_overdraw() {
    let server = Server::start();
    server.deploy("bank", &guest("bank"));
    let http = server.admin();
    let accounts = ["a", "b", "c", "d", "e"];
    for account in accounts {
        let created =
            http.put(server.fn_url("bank", &format!("/accounts/{account}?balance=100"))).send().await.unwrap();
        assert_eq!(created.status(), 201);
    }
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut transfers = Vec::new();
    for _ in 0..300 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let from = accounts[(seed % 5) as usize];
        let to = accounts[((seed >> 8) % 5) as usize];
        let amount = 1 + (seed >> 16) % 80;
        if from != to {
            transfers.push(server.fn_url("bank", &format!("/transfer?from={from}&to={to}&amount={amount}")));
        }
    }
    let (mut moved, mut refused) = (0, 0);
    for chunk in transfers.chunks(32) {
        for (status, body) in join_all(chunk.iter().cloned().map(text)).await {
            match status {
                200 => moved += 1,
                409 => refused += 1,
                other => panic!("transfer failed with {other}: {body}"),
            }
        }
    }
    assert!(moved > 0 && refused > 0, "moved {moved}, refused {refused}");
    let total: serde_json::Value =
        http.get(server.fn_url("bank", "/total")).send().await.unwrap().json().await.unwrap();
    assert_eq!(total["total"], 500);
    assert_eq!(total["accounts"], 5);
    for account in accounts {
        let balance = http.get(server.fn_url("bank", &format!("/accounts/{account}"))).send().await.unwrap();
        let balance: i64 = balance.text().await.unwrap().trim().parse().unwrap();
        assert!(balance >= 0, "{account} overdrawn: {balance}");
    }
}

async fn leave_concurrently(server: &Server, isolation: &str) -> (Vec<String>, String) {
    assert_eq!(text(server.fn_url("skew", "/reset")).await.0, 200);
    let leave =
        |doctor: &str| server.fn_url("skew", &format!("/leave?doctor={doctor}&isolation={isolation}&pause_ms=300"));
    let (alice, bob) = tokio::join!(text(leave("alice")), text(leave("bob")));
    let outcomes = vec![alice.1.trim().to_string(), bob.1.trim().to_string()];
    let on_call = text(server.fn_url("skew", "/oncall")).await.1.trim().to_string();
    (outcomes, on_call)
}

#[tokio::test]
async fn write_skew_cannot_break_the_invariant_under_the_default_isolation() {
    let server = Server::start();
    server.deploy("skew", &guest("skew"));
    // Snapshot isolation admits the anomaly: both read "the other is on call", both leave.
    let (outcomes, on_call) = leave_concurrently(&server, "snapshot").await;
    assert_eq!(outcomes, ["left", "left"]);
    assert_eq!(on_call, "");
    // Serializable (the default) aborts one of them; its retry sees the other left and stays.
    let (mut outcomes, on_call) = leave_concurrently(&server, "serializable").await;
    outcomes.sort();
    assert_eq!(outcomes, ["left", "must stay"]);
    assert!(on_call == "alice" || on_call == "bob", "{on_call}");
}

#[tokio::test]
async fn acknowledged_commits_survive_a_restart_and_a_sigkill() {
    let mut server = Server::start();
    server.deploy("counter", &guest("counter"));
    for expected in 1..=20 {
        assert_eq!(text(server.fn_url("counter", "/")).await.1, format!("{expected}\n"));
    }
    assert_eq!(server.terminate().code(), Some(0));
    server.restart();
    assert_eq!(text(server.fn_url("counter", "/peek")).await.1, "20\n");

    // Kill the server while increments are in flight: every acknowledged one must be there.
    let url = server.fn_url("counter", "/");
    let in_flight = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        for chunk in 0..40 {
            let replies = join_all((0..8).map(|_| async {
                let response = client().post(&url).send().await.ok()?;
                if response.status() != 200 {
                    return None;
                }
                response.text().await.ok()?.trim().parse::<u64>().ok()
            }))
            .await;
            acknowledged.extend(replies.into_iter().flatten());
            if chunk == 39 {
                break;
            }
        }
        acknowledged
    });
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    server.kill();
    let acknowledged = in_flight.await.unwrap();
    server.restart();
    let after: u64 = text(server.fn_url("counter", "/peek")).await.1.trim().parse().unwrap();
    let highest = acknowledged.iter().copied().max().unwrap_or(20);
    assert!(after >= highest, "acknowledged count {highest} lost: after restart {after}");
    assert!(after >= 20 + acknowledged.len() as u64, "{} acknowledged, count {after}", acknowledged.len());
}

#[tokio::test]
async fn one_function_cannot_read_another_functions_keys() {
    let server = Server::start();
    server.deploy("first", &guest("counter"));
    server.deploy("second", &guest("counter"));
    server.deploy("misbehave", &guest("misbehave"));
    for _ in 0..3 {
        text(server.fn_url("first", "/")).await;
    }
    assert_eq!(text(server.fn_url("first", "/peek")).await.1, "3\n");
    assert_eq!(text(server.fn_url("second", "/peek")).await.1, "0\n");
    let (status, body) = text(server.fn_url("misbehave", "/other-store?store=first")).await;
    assert_eq!(status, 403);
    assert!(body.contains("does not grant store `first`"), "{body}");
}

#[tokio::test]
async fn shared_stores_are_shared_only_where_the_policy_grants_them() {
    let server = Server::start();
    server.deploy("writer", &guest("kv-wasi"));
    server.deploy("reader", &guest("kv-wasi"));
    let policy = "[kv]\nstores = [\"shared\"]\n";
    for name in ["writer", "reader"] {
        let response =
            server.admin().put(format!("{}/v1/functions/{name}/policy", server.url)).body(policy).send().await.unwrap();
        assert_eq!(response.status(), 204);
    }
    assert_eq!(text(server.fn_url("writer", "/set?bucket=shared&key=k&value=v")).await.1, "ok\n");
    assert_eq!(text(server.fn_url("reader", "/get?bucket=shared&key=k")).await.1, "v\n");
    assert_eq!(text(server.fn_url("reader", "/get?key=k")).await.1, "none\n");
    let (status, body) = text(server.fn_url("reader", "/get?bucket=secret&key=k")).await;
    assert_eq!((status, body.as_str()), (500, "open: Error::AccessDenied\n"));
}

#[tokio::test]
async fn a_transaction_left_open_is_rolled_back_when_the_request_ends() {
    let server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    for _ in 0..20 {
        assert_eq!(text(server.fn_url("misbehave", "/leak-tx")).await.1, "leaked\n");
    }
    assert_eq!(text(server.fn_url("misbehave", "/read-leaked")).await.1, "None\n");
    let metrics = server.admin().get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
    let active = metrics
        .lines()
        .find_map(|line| line.strip_prefix("ledge_kv_active_transactions "))
        .expect("active transactions gauge");
    assert_eq!(active.trim(), "0");
}

#[tokio::test]
async fn a_guest_written_only_against_wasi_keyvalue_works() {
    let server = Server::start();
    server.deploy("kv", &guest("kv-wasi"));
    let call = |route: &str| text(server.fn_url("kv", route));
    assert_eq!(call("/get?key=greeting").await.1, "none\n");
    assert_eq!(call("/set?key=greeting&value=hi").await.1, "ok\n");
    assert_eq!(call("/get?key=greeting").await.1, "hi\n");
    assert_eq!(call("/incr?key=n&by=5").await.1, "5\n");
    assert_eq!(call("/incr?key=n&by=-2").await.1, "3\n");
    assert_eq!(call("/cas?key=greeting&from=hi&to=hello").await.1, "swapped\n");
    assert_eq!(call("/cas?key=greeting&from=hi&to=again").await.1, "mismatch\n");
    assert_eq!(call("/get?key=greeting").await.1, "hello\n");
    assert_eq!(
        call("/batch").await.1,
        "[(\"b1\", Some([111, 110, 101])), (\"b2\", Some([116, 119, 111])), (\"b3\", None)] b1-exists-after-delete=false\n"
    );
    assert_eq!(call("/list").await.1, "b2,greeting,n\n");
    // 24 at once: within the small profile's 32 instance slots too.
    let increments = join_all((0..24).map(|_| call("/incr?key=hits&by=1"))).await;
    assert!(increments.iter().all(|(status, _)| *status == 200), "{increments:?}");
    assert_eq!(call("/get?key=hits").await.1, "24\n");
}
