//! What an etcd cluster sustains for one counter's compare-and-put transactions from a plain
//! client, for `scripts/bench-cluster.sh`: the ceiling ledge's global counter is measured
//! against. Each of CONNECTIONS tasks (spread over the endpoints, one client per endpoint)
//! reads the key, then commits `value + 1` in a transaction that requires the key's
//! `mod_revision` to be what it read, and starts over on a failed compare, for SECONDS.
//!
//! `cargo run --release --example etcd-cas -- ENDPOINTS KEY CONNECTIONS SECONDS`
//! (ENDPOINTS comma-separated). Prints committed transactions per second and the conflicts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

#[tokio::main]
async fn main() -> Result<(), etcd_client::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoints, key, connections, seconds] = &args[..] else {
        eprintln!("usage: etcd-cas ENDPOINTS KEY CONNECTIONS SECONDS");
        std::process::exit(2);
    };
    let connections: usize = connections.parse().expect("CONNECTIONS is a number");
    let seconds: u64 = seconds.parse().expect("SECONDS is a number");
    let mut clients = Vec::new();
    for endpoint in endpoints.split(',') {
        clients.push(Client::connect([endpoint], None).await?);
    }
    let (committed, conflicts) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for n in 0..connections {
        let mut client = clients[n % clients.len()].clone();
        let (key, committed, conflicts) = (key.clone(), committed.clone(), conflicts.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let read = client.get(key.as_str(), None).await?;
                let (value, revision) = match read.kvs().first() {
                    Some(kv) => (String::from_utf8_lossy(kv.value()).parse::<u64>().unwrap_or(0), kv.mod_revision()),
                    None => (0, 0),
                };
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, revision)])
                    .and_then([TxnOp::put(key.as_str(), (value + 1).to_string(), None)]);
                let counter = if client.txn(txn).await?.succeeded() { &committed } else { &conflicts };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, etcd_client::Error>(())
        }));
    }
    for task in tasks {
        task.await.expect("a task panicked")?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (committed, conflicts) = (committed.load(Ordering::Relaxed), conflicts.load(Ordering::Relaxed));
    println!("{:.0} {conflicts}", committed as f64 / elapsed);
    Ok(())
}
