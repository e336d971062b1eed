//! Cluster mode keeps etcd within bounds: global key-value data is held to each function's
//! `[kv] max_bytes` and to the cluster's `--global-kv-max-bytes` through every node; listings
//! of function records are paged, so records past one reply's 4 MiB still reach a node that
//! restarts; and a removed function's record (its tombstone, holding nothing of its config)
//! leaves etcd once every live node has applied it, while a node that was away reconciles from
//! its next listing. Real `ledge serve` nodes on a real 3-member etcd.

use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::harness::{Etcd, Server, client, deploy_with_policy, guest};

/// A node of the cluster on `etcd`, named `name`, with `extra` serve arguments.
fn node(etcd: &Etcd, name: &str, extra: &[&str]) -> Server {
    let endpoints = etcd.endpoints();
    let mut args = vec!["--cluster", endpoints.as_str(), "--node-name", name];
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

/// Polls `check` every 50 ms until it holds. Fails after `limit`.
async fn within<F: AsyncFnMut() -> bool>(limit: Duration, what: &str, mut check: F) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `server` runs `function` itself (not by proxying to a node that has it).
async fn served_by_itself(server: &Server, function: &str, name: &str) {
    let url = server.fn_url(function, "/");
    within(Duration::from_secs(30), &format!("{function} installed on {name}"), async || {
        let response = client().get(&url).send().await.ok();
        response.is_some_and(|r| r.status() == 200 && r.headers()["ledge-node"] == name)
    })
    .await;
}

async fn text(url: String) -> String {
    let response = client().get(url).send().await.expect("request");
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// `committed N` of a `/kv-fill` answer, and the error that stopped it.
fn filled(answer: &str) -> (usize, &str) {
    let rest = answer.strip_prefix("committed ").unwrap_or_else(|| panic!("{answer}"));
    let (count, error) = rest.split_once(", then: ").unwrap_or_else(|| panic!("{answer}"));
    (count.parse().unwrap(), error.trim())
}

const OPEN: &str = "public = true\n[rate]\nquota = 1000000\nwindow = \"1s\"\n[limits]\ntimeout = \"5s\"\n";

#[tokio::test]
async fn global_data_is_held_to_the_function_quota_and_the_cluster_ceiling() {
    let etcd = Etcd::start();
    let ceiling = ["--global-kv-max-bytes", "256KiB"];
    let (a, b) = (node(&etcd, "a", &ceiling), node(&etcd, "b", &ceiling));
    let quota = format!("{OPEN}[kv]\nscope = \"global\"\nmax_bytes = \"40KiB\"\n");
    deploy_with_policy(&a, "quota", &guest("misbehave"), &quota).await;
    served_by_itself(&b, "quota", "b").await;

    // 8 KiB values: four entries (8206 bytes each, key included) fit the 40 KiB quota; the
    // fifth is refused with the guest's `limit` error naming the quota.
    let answer = text(a.fn_url("quota", "/kv-fill?kib=8")).await;
    let (count, error) = filled(&answer);
    println!("quota through a: {answer}");
    assert_eq!(count, 4, "{error}");
    assert!(error.starts_with("limit exceeded") && error.contains("its quota is 40960"), "{error}");
    // Through the other node the keyspace is just as full: same-size overwrites go through,
    // a new entry does not.
    let answer = text(b.fn_url("quota", "/kv-fill?kib=8")).await;
    let (count, error) = filled(&answer);
    assert_eq!(count, 4, "{error}");
    assert!(error.contains("its quota is 40960"), "{error}");
    // Deletes go through, and give the room back.
    assert_eq!(text(b.fn_url("quota", "/kv-drop")).await, "Ok(4)\n");
    assert_eq!(filled(&text(a.fn_url("quota", "/kv-fill?kib=8")).await).0, 4);

    // A function with the default quota (64 MiB) meets the cluster's ceiling instead: 256 KiB
    // for all global data, of which the first function holds a 64 KiB reservation.
    let hog = format!("{OPEN}[kv]\nscope = \"global\"\n");
    deploy_with_policy(&b, "hog", &guest("misbehave"), &hog).await;
    served_by_itself(&a, "hog", "a").await;
    let answer = text(a.fn_url("hog", "/kv-fill?kib=16")).await;
    let (count, error) = filled(&answer);
    println!("ceiling through a: {answer}");
    assert!((8..=12).contains(&count), "{answer}");
    assert!(error.contains("--global-kv-max-bytes") && error.contains("262144"), "{error}");
    let again = text(b.fn_url("hog", "/kv-fill?kib=16")).await;
    assert_eq!(filled(&again).0, count, "{again}");
    assert!(filled(&again).1.contains("--global-kv-max-bytes"), "{again}");
    // At the ceiling, deletes still go through, and a fill finds the same room again.
    assert_eq!(text(b.fn_url("hog", "/kv-drop")).await, format!("Ok({count})\n"));
    assert_eq!(filled(&text(a.fn_url("hog", "/kv-fill?kib=16")).await).0, count);
}

/// Every key under `prefix` in `etcd` with its value, read a few at a time (values of up to
/// 1 MiB; a client reply holds at most 4 MiB).
async fn etcd_entries(etcd: &Etcd, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let endpoints: Vec<String> = etcd.endpoints().split(',').map(str::to_string).collect();
    let mut etcd = etcd_client::Client::connect(endpoints, None).await.expect("etcd client");
    let end = format!("{}0", prefix.trim_end_matches('/'));
    let (mut start, mut entries) = (prefix.as_bytes().to_vec(), Vec::new());
    loop {
        let options = etcd_client::GetOptions::new().with_range(end.clone()).with_limit(2);
        let page = etcd.get(start.clone(), Some(options)).await.expect("etcd range");
        for kv in page.kvs() {
            entries.push((kv.key_str().unwrap().to_string(), kv.value().to_vec()));
        }
        match page.kvs().last() {
            Some(last) if page.more() => start = [last.key(), &[0]].concat(),
            _ => return entries,
        }
    }
}

#[tokio::test]
async fn records_past_one_reply_reach_a_restarted_node_and_removals_leave_etcd() {
    let etcd = Etcd::start();
    let (a, b, mut c) = (node(&etcd, "a", &[]), node(&etcd, "b", &[]), node(&etcd, "c", &[]));
    let hello = guest("hello");
    a.deploy("gone", &hello);
    a.cli_ok(&["config", "set", "gone", "PLAIN", "plain-value-of-gone"]);
    a.cli_ok(&["config", "set", "gone", "TOKEN", "secret-value-of-gone", "--secret"]);
    served_by_itself(&c, "gone", "c").await;

    // Removed while C is down (its lease, and so its say, lasts a few seconds more).
    c.kill();
    a.cli_ok(&["rm", "gone"]);
    let tombstone = etcd_entries(&etcd, "/ledge/fn/gone").await;
    let [(_, record)] = tombstone.as_slice() else { panic!("no tombstone while C may not have applied it") };
    let record: serde_json::Value = serde_json::from_slice(record).unwrap();
    assert!(record["removed"].is_object(), "{record}");
    for field in ["config", "policy", "canary"] {
        assert!(record.get(field).is_none(), "the tombstone keeps the function's {field}: {record}");
    }
    assert_eq!(record["versions"], serde_json::json!([]), "{record}");

    // Meanwhile: six functions whose records near the 1 MiB limit (15 config values of 64 KiB
    // each), more than 5 MiB of records in all, past what one etcd reply may carry.
    let big: Vec<String> = (0..6).map(|i| format!("big-{i}")).collect();
    for name in &big {
        a.deploy(name, &hello);
    }
    let value = "v".repeat(64 << 10);
    let sets = big.iter().enumerate().map(|(i, name)| {
        let (server, value) = (if i % 2 == 0 { &a } else { &b }, value.clone());
        async move {
            for key in 0..15 {
                let url = format!("{}/v1/functions/{name}/config/K{key:02}", server.url);
                let response = server.admin().put(url).body(value.clone()).send().await.expect("config set");
                assert!(response.status().is_success(), "{name} K{key}: {}", response.text().await.unwrap());
            }
        }
    });
    join_all(sets).await;
    let records = etcd_entries(&etcd, "/ledge/fn/").await;
    let bytes: usize = records.iter().map(|(_, value)| value.len()).sum();
    assert!(bytes > 5 << 20, "{bytes} bytes of records");

    // Once C's lease is gone, A and B have applied the removal: the tombstone leaves etcd, and
    // nothing of the function's config or secrets is left there.
    within(Duration::from_secs(30), "the tombstone leaves etcd", async || {
        etcd_entries(&etcd, "/ledge/fn/gone").await.is_empty()
    })
    .await;
    let everything = etcd_entries(&etcd, "/ledge/").await;
    let names: Vec<&str> = everything.iter().map(|(key, _)| key.as_str()).filter(|k| k.contains("gone")).collect();
    assert!(names.is_empty(), "{names:?}");
    let plain = b"plain-value-of-gone".as_slice();
    assert!(!everything.iter().any(|(_, value)| value.windows(plain.len()).any(|w| w == plain)));

    // C restarts: it lists every record (in pages), becomes ready, serves every function, and
    // no longer serves the one removed while it was away.
    c.restart();
    let ready = format!("{}/readyz", c.url);
    within(Duration::from_secs(60), "the restarted node is ready", async || {
        client().get(&ready).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    for name in &big {
        served_by_itself(&c, name, "c").await;
    }
    let config: serde_json::Value =
        c.admin().get(format!("{}/v1/functions/big-5/config", c.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(config.to_string().matches(&value).count(), 15, "big-5's config on the restarted node");
    assert_eq!(c.admin().get(c.fn_url("gone", "/")).send().await.unwrap().status(), 404);
    let listed = c.cli_ok(&["functions"]);
    assert!(!listed.contains("gone"), "{listed}");
}
