//! Global queues (`[queues] global`): two real `ledge serve` nodes on a real 3-member etcd. Messages
//! sent inside global transactions through either node are delivered once per cluster, by
//! whichever node claims them; a node killed in the middle of deliveries loses nothing: its
//! claims expire and the other node delivers what it held.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::harness::{Etcd, Server, client, deploy_with_policy, guest, metric};

const POLICY: &str = r#"public = true
[rate]
quota = 1000000
window = "1s"
[kv]
scope = "global"
[queues]
send = ["gjobs"]
global = ["gjobs"]
[[consumer]]
queue = "gjobs"
path = "/jobs/g"
concurrency = 4
backoff = "200ms"
"#;

fn node(etcd: &Etcd, name: &str) -> Server {
    Server::start_with(&["--cluster", &etcd.endpoints(), "--node-name", name])
}

/// The deliveries the worker recorded (in its global keyspace), by message id.
async fn seen(server: &Server) -> HashMap<String, Vec<serde_json::Value>> {
    let response = client().get(server.fn_url("queue-worker", "/seen")).send().await.expect("seen");
    assert_eq!(response.status(), 200);
    let records: Vec<serde_json::Value> = response.json().await.expect("json");
    let mut by_id: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    for record in records {
        let id = record["id"].as_str().expect("a delivery carries its message id").to_string();
        by_id.entry(id).or_default().push(record);
    }
    by_id
}

/// Sends `body` through `server`; the message id, and the node that ran the sender.
async fn send(server: &Server, body: &str) -> (String, String) {
    let response = client().post(server.fn_url("queue-worker", "/send?queue=gjobs")).body(body.to_string()).send();
    let response = response.await.expect("send");
    assert_eq!(response.status(), 200, "a transactional send to a global queue");
    let node = response.headers()["ledge-node"].to_str().unwrap().to_string();
    (response.text().await.unwrap(), node)
}

/// Waits until every id in `ids` was acknowledged at least once; returns the deliveries.
async fn delivered(server: &Server, ids: &[String], limit: Duration) -> HashMap<String, Vec<serde_json::Value>> {
    let started = Instant::now();
    loop {
        let seen = seen(server).await;
        let acknowledged = |id: &String| seen.get(id).is_some_and(|runs| runs.iter().any(|run| run["status"] == 200));
        if ids.iter().all(acknowledged) {
            return seen;
        }
        assert!(started.elapsed() < limit, "not every message was delivered within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_global_queue_is_delivered_once_per_cluster_and_survives_a_node_loss() {
    let etcd = Etcd::start();
    let (a, mut b) = (node(&etcd, "a"), node(&etcd, "b"));
    deploy_with_policy(&a, "queue-worker", &guest("queue-worker"), POLICY).await;
    let started = Instant::now();
    while client().get(b.fn_url("queue-worker", "/count")).send().await.map_or(0, |r| r.status().as_u16()) != 200 {
        assert!(started.elapsed() < Duration::from_secs(10), "the worker reached node b");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 24 messages through both nodes at once, each taking 300 ms to consume: both nodes claim
    // some, and without failures each is delivered exactly once.
    let sends = (0..24).map(|i| {
        let server = if i % 2 == 0 { &a } else { &b };
        send(server, "slow:300")
    });
    let sent: Vec<(String, String)> = join_all(sends).await;
    let sends_on_b = sent.iter().filter(|(_, node)| node == "b").count() as f64;
    let ids: Vec<String> = sent.into_iter().map(|(id, _)| id).collect();
    let seen = delivered(&a, &ids, Duration::from_secs(60)).await;
    for id in &ids {
        let runs = &seen[id];
        assert_eq!(runs.len(), 1, "message {id} delivered {} times without a failure", runs.len());
        assert_eq!(runs[0]["queue"], "gjobs");
        assert_eq!(runs[0]["attempt"], 1);
    }
    // Beyond the sends it ran, node b's runs are deliveries.
    let on_b = metric(&b, "ledge_requests_total{function=\"queue-worker\",status=\"200\"}").await;
    assert!(on_b > sends_on_b, "node b delivered none of the messages ({on_b} runs, {sends_on_b} sends)");

    // Eight messages that take 3 s each: with 4 deliveries at once per node, both nodes hold
    // four. Node b is killed holding them: every message is still delivered, the ones b held
    // once its claims expire with its lease.
    let sent = join_all((0..8).map(|_| send(&a, "slow:3000"))).await;
    let ids: Vec<String> = sent.into_iter().map(|(id, _)| id).collect();
    let started = Instant::now();
    loop {
        let listed: serde_json::Value =
            a.admin().get(format!("{}/v1/queues", a.url)).send().await.unwrap().json().await.unwrap();
        let gjobs = listed["queues"].as_array().unwrap().iter().find(|q| q["name"] == "gjobs").cloned();
        if gjobs.is_some_and(|q| q["in_flight"] == 8) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "both nodes hold deliveries: {listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.kill();
    let seen = delivered(&a, &ids, Duration::from_secs(90)).await;
    for id in &ids {
        assert!(seen[id].iter().any(|run| run["status"] == 200), "message {id} was lost with node b");
    }
}
