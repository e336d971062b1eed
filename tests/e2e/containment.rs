//! A guest can only hurt itself, and a client only its own share: key-value writes, reads and
//! handles are bounded, storage has quotas, components cannot take the pool, time is capped,
//! connections are capped and reaped, and outbound requests stay out of the node's network.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{Server, client, guest, metric, problem};

async fn text(url: String) -> String {
    let response = client().get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn a_guest_cannot_grow_host_memory_through_the_store() {
    let server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    // One transaction buffers at most 16 MiB; the guest gets a `limit` error, not a trap.
    let hog = text(server.fn_url("misbehave", "/kv-hog")).await;
    assert!(hog.starts_with("buffered 15 MiB, then: limit exceeded:"), "{hog}");
    // The read set of one serializable transaction is bounded.
    let reads = text(server.fn_url("misbehave", "/kv-reads?n=150000")).await;
    assert!(reads.starts_with("Err(Limit(") && reads.contains("at most 100000"), "{reads}");
    // So are the bytes one scan returns: 5 values of 1 MiB are more than 4 MiB.
    server.set_policy("misbehave", "[kv]\nmax_bytes = \"8MiB\"\n").await;
    let filled = text(server.fn_url("misbehave", "/kv-fill?kib=1000")).await;
    assert!(filled.starts_with("committed 8, then: limit exceeded:"), "{filled}");
    let scan = text(server.fn_url("misbehave", "/kv-scan?limit=100")).await;
    assert!(scan.starts_with("Err(Limit(") && scan.contains("ask for fewer"), "{scan}");
    assert_eq!(text(server.fn_url("misbehave", "/kv-scan?limit=3")).await, "Ok(3)\n");
    // Nothing of the refused transactions stayed: the keyspace holds what was committed.
    let bytes = metric(&server, "ledge_kv_keyspace_bytes{keyspace=\"f/misbehave/\"}").await;
    assert!((8.0 * 1000.0 * 1024.0..=8.0 * 1024.0 * 1024.0).contains(&bytes), "{bytes}");
}

#[tokio::test]
async fn keyspaces_have_quotas_and_the_node_a_budget() {
    let server = Server::start_with(&["--kv-max-bytes", "3145728"]);
    server.deploy("misbehave", &guest("misbehave"));
    server.set_policy("misbehave", "[kv]\nmax_bytes = \"1MiB\"\n").await;
    let filled = text(server.fn_url("misbehave", "/kv-fill?kib=64")).await;
    assert!(filled.starts_with("committed 15, then: limit exceeded:") && filled.contains("quota"), "{filled}");
    assert!(metric(&server, "ledge_kv_keyspace_bytes{keyspace=\"f/misbehave/\"}").await <= 1048576.0);
    // Deleting makes room again: a quota refuses growth, never a cleanup.
    assert_eq!(text(server.fn_url("misbehave", "/kv-drop")).await, "Ok(15)\n");
    assert!(text(server.fn_url("misbehave", "/kv-fill?kib=64")).await.starts_with("committed 15,"));

    // The node's budget (3 MiB here) holds whatever the policies allow.
    server.deploy("other", &guest("misbehave"));
    server.set_policy("other", "[kv]\nmax_bytes = \"64MiB\"\n").await;
    let budget = text(server.fn_url("other", "/kv-fill?kib=256")).await;
    assert!(budget.contains("limit exceeded") && budget.contains("budget"), "{budget}");
    assert!(metric(&server, "ledge_kv_live_bytes").await <= 3145728.0);
}

#[tokio::test]
async fn every_open_key_value_handle_counts_against_the_instance_limit() {
    let server = Server::start();
    server.deploy("kv", &guest("kv-wasi"));
    let held = text(server.fn_url("kv", "/cas-hog?key=k")).await;
    // The bucket takes one of the 32 handles; 31 CAS handles (each a transaction) fit.
    assert!(held.starts_with("held 31, then: Error::Other(") && held.contains("at most 32"), "{held}");
    // The instance is gone with its handles: nothing stays open.
    settles_to_zero(&server, "ledge_kv_active_transactions").await;
}

#[tokio::test]
async fn the_open_transactions_of_an_instance_share_one_write_budget() {
    let server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    // 20 transactions of 1 MiB each: 16 MiB in all, not 16 MiB each, outside the guest's memory.
    let hold = || text(server.fn_url("misbehave", "/kv-hold?kib=20480"));
    let held = hold().await;
    assert!(held.starts_with("held 16320 KiB in 16 transactions, then: limit exceeded:"), "{held}");
    assert!(held.contains("per-instance write budget"), "{held}");
    // The node is fine, and the next instance has its own budget whole again.
    assert_eq!(client().get(format!("{}/healthz", server.url)).send().await.unwrap().status(), 200);
    assert_eq!(hold().await, held);
    settles_to_zero(&server, "ledge_kv_active_transactions").await;
}

#[tokio::test]
async fn the_node_bounds_the_writes_all_instances_buffer_and_gets_them_back() {
    let server = Server::start_with(&["--kv-write-buffers", "8MiB"]);
    server.deploy("misbehave", &guest("misbehave"));
    // Two instances hold 3 MiB each in open transactions until released.
    let holders: Vec<_> = ["a", "b"]
        .iter()
        .map(|id| tokio::spawn(text(server.fn_url("misbehave", &format!("/kv-hold?kib=3072&id={id}")))))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while text(server.fn_url("misbehave", "/kv-held")).await != "Ok(2)\n" {
        assert!(Instant::now() < deadline, "the holders never held their writes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A third gets what is left of the node's 8 MiB, then a `limit` error naming the flag.
    let third = text(server.fn_url("misbehave", "/kv-hold?kib=3072")).await;
    assert!(third.starts_with("held 1984 KiB in 2 transactions, then: limit exceeded:"), "{third}");
    assert!(third.contains("--kv-write-buffers") && third.contains("8 MiB"), "{third}");
    // The holders kept theirs; once they are done, the node's whole budget is free again.
    assert_eq!(text(server.fn_url("misbehave", "/kv-release")).await, "released\n");
    for holder in holders {
        assert_eq!(holder.await.unwrap(), "held 3072 KiB in 3 transactions\n");
    }
    assert_eq!(text(server.fn_url("misbehave", "/kv-hold?kib=8128")).await, "held 8128 KiB in 8 transactions\n");
    assert_eq!(client().get(format!("{}/healthz", server.url)).send().await.unwrap().status(), 200);
}

/// A component binary with `instances` instances of the core module `module` (sections of
/// fewer than 128 bytes, so each length is one LEB128 byte).
fn component(module: &[u8], instances: u8) -> Vec<u8> {
    let mut bytes = vec![0, b'a', b's', b'm', 0x0d, 0, 1, 0, 1, module.len() as u8];
    bytes.extend(module);
    let section: Vec<u8> = std::iter::once(instances).chain((0..instances).flat_map(|_| [0u8, 0, 0])).collect();
    bytes.extend([2, section.len() as u8]);
    bytes.extend(section);
    bytes
}

/// A core module that defines one memory, and one that defines nothing.
const WITH_MEMORY: &[u8] = &[0, b'a', b's', b'm', 1, 0, 0, 0, 5, 3, 1, 0, 1];
const EMPTY: &[u8] = &[0, b'a', b's', b'm', 1, 0, 0, 0];

#[tokio::test]
async fn a_component_that_would_take_the_pool_is_refused_at_deploy_naming_the_limit() {
    for server in [Server::start(), Server::start_with(&["--no-pooling"])] {
        let put = |body: Vec<u8>| server.admin().put(format!("{}/v1/functions/crafted", server.url)).body(body).send();
        let memories = problem(put(component(WITH_MEMORY, 3)).await.unwrap(), 400).await;
        let detail = memories["detail"].as_str().unwrap();
        assert!(detail.contains("linear memories") && detail.contains('2'), "{detail}");
        problem(server.admin().get(format!("{}/v1/functions/crafted", server.url)).send().await.unwrap(), 404).await;
    }
    let pooled = Server::start();
    // 40 instances of an empty module: more core instances than one component may have.
    let many = component(EMPTY, 40);
    let response = pooled.admin().put(format!("{}/v1/functions/crafted", pooled.url)).body(many).send().await.unwrap();
    let detail = problem(response, 400).await["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("core module instances") && detail.contains("32"), "{detail}");
}

#[tokio::test]
async fn timeouts_have_a_server_ceiling_and_no_transaction_outlives_its_request() {
    let server = Server::start_with(&["--max-timeout", "2s"]);
    server.deploy("misbehave", &guest("misbehave"));
    let put = |policy: &'static str| {
        server.admin().put(format!("{}/v1/functions/misbehave/policy", server.url)).body(policy).send()
    };
    let refused = problem(put("[limits]\ntimeout = \"1000h\"\n").await.unwrap(), 400).await;
    assert!(refused["detail"].as_str().unwrap().contains("--max-timeout"), "{refused}");
    problem(put("[limits]\ntimeout = \"3s\"\n").await.unwrap(), 400).await;
    assert_eq!(put("[limits]\ntimeout = \"2s\"\n").await.unwrap().status(), 204);
    // The default ceiling refuses an absurd policy too.
    let default = Server::start();
    default.deploy("misbehave", &guest("misbehave"));
    let absurd = default
        .admin()
        .put(format!("{}/v1/functions/misbehave/policy", default.url))
        .body("[limits]\ntimeout = \"1000h\"\n")
        .send()
        .await
        .unwrap();
    problem(absurd, 400).await;

    assert_eq!(text(server.fn_url("misbehave", "/leak-tx")).await, "leaked\n");
    settles_to_zero(&server, "ledge_kv_active_transactions").await;
}

/// Opens a TCP connection from `source` (a loopback address) to the server.
async fn connect_from(server: &Server, source: &str) -> TcpStream {
    let address: std::net::SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(address).await.unwrap().into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
}

/// Waits (bounded) until a gauge reads 0: instances are torn down just after their response.
async fn settles_to_zero(server: &Server, sample: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(server, sample).await != 0.0 {
        assert!(Instant::now() < deadline, "{sample} stayed above 0");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the server closed `stream` within `wait` (a read returns end of stream or reset).
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => !matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

#[tokio::test]
async fn connections_are_capped_in_all_and_per_address_and_idle_ones_are_closed() {
    let server =
        Server::start_with(&["--max-connections", "6", "--max-connections-per-ip", "4", "--idle-timeout", "2"]);
    let mut first = Vec::new();
    for _ in 0..4 {
        first.push(connect_from(&server, "127.0.0.1").await);
    }
    let mut over = connect_from(&server, "127.0.0.1").await;
    assert!(closed_within(&mut over, Duration::from_secs(1)), "a fifth connection from one address was kept");
    let mut second = Vec::new();
    for _ in 0..2 {
        second.push(connect_from(&server, "127.0.0.2").await);
    }
    let mut full = connect_from(&server, "127.0.0.3").await;
    assert!(closed_within(&mut full, Duration::from_secs(1)), "a seventh connection was kept");
    // The admitted ones stay open until idle for 2 s, then the server closes them.
    let started = Instant::now();
    for stream in first.iter_mut().chain(second.iter_mut()) {
        assert!(closed_within(stream, Duration::from_secs(6)), "an idle connection was kept");
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1000), "closed too early: {waited:?}");
    // Slots are free again; a keep-alive connection in use is not idle.
    let mut again = connect_from(&server, "127.0.0.1").await;
    for _ in 0..3 {
        again.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buffer = [0u8; 512];
        again.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = again.read(&mut buffer).unwrap();
        assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
        std::thread::sleep(Duration::from_millis(1200));
    }
}

#[tokio::test]
async fn a_slowloris_client_cannot_starve_real_callers() {
    let server = Server::start_with(&["--max-connections-per-ip", "16", "--header-timeout", "3"]);
    server.deploy("hello", &guest("hello"));
    // 16 connections from one address trickle a request head, one byte at a time.
    let mut trickling = Vec::new();
    for _ in 0..16 {
        trickling.push(connect_from(&server, "127.0.0.1").await);
    }
    let trickle = std::thread::spawn(move || {
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n".iter().take(10) {
            for stream in &mut trickling {
                let _ = stream.write_all(&[*byte]);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        trickling
    });
    let mut refused = connect_from(&server, "127.0.0.1").await;
    assert!(closed_within(&mut refused, Duration::from_secs(1)), "the attacker got a 17th connection");
    // A caller from another address is served at once, every time.
    let real =
        reqwest::Client::builder().local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap()).build().unwrap();
    let started = Instant::now();
    for _ in 0..20 {
        let response = real.get(server.fn_url("hello", "/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert!(started.elapsed() < Duration::from_secs(5), "real callers waited {:?}", started.elapsed());
    // The trickling heads never complete: the header timeout closes them.
    let mut trickling = trickle.join().unwrap();
    for stream in &mut trickling {
        assert!(closed_within(stream, Duration::from_secs(5)));
    }
}

#[tokio::test]
async fn outbound_requests_never_reach_the_nodes_own_network_unless_named_by_address() {
    let server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let call =
        |authority: String| text(server.fn_url("misbehave", &format!("/outbound?authority={authority}&path=/healthz")));
    // `localhost` is listed by name, but it resolves to loopback: refused.
    server.set_policy("misbehave", "[outbound]\nallow = [\"localhost\"]\n").await;
    assert_eq!(call(format!("localhost:{port}")).await, "refused: ErrorCode::DestinationIpProhibited\n");
    // The link-local metadata address, and an unlisted one, are refused too.
    assert_eq!(call("169.254.169.254".into()).await, "refused: ErrorCode::HttpRequestDenied\n");
    // Named by address, the operator's explicit choice goes through.
    server.set_policy("misbehave", "[outbound]\nallow = [\"127.0.0.1\"]\n").await;
    assert_eq!(call(format!("127.0.0.1:{port}")).await, "status 200\n");
}
