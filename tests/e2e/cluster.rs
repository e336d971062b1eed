//! Cluster mode: three real `ledge serve` nodes on a real 3-member etcd cluster (Debian's
//! etcd-server) on loopback. Deploys, policies and revocations made through one node hold on
//! all; global stores stay exact under concurrency through every node and through the loss of
//! an etcd member; an etcd outage leaves nodes serving and refusing control writes; placement
//! puts a function on one node and moves it when that node leaves; config, secrets and
//! canaries set through one node hold on all; a proxied request reaches its guest as the first
//! node received it (host, scheme, path), and one client's connections through a proxy count
//! for that client, not for the proxy; a node whose copy of a function cannot be loaded at
//! start installs it again from the cluster.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::harness::{
    Etcd, Server, build_version, client, damage, deploy_with_policy, get_from, guest, problem, python_guest,
    version_from,
};

/// A node of the cluster on `etcd`, named `name`.
fn node(etcd: &Etcd, name: &str) -> Server {
    Server::start_with(&["--cluster", &etcd.endpoints(), "--node-name", name])
}

/// Polls `check` every 20 ms until it holds; returns how long that took. Fails after `limit`.
async fn within<F: AsyncFnMut() -> bool>(limit: Duration, what: &str, mut check: F) -> Duration {
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.map_or(0, |r| r.status().as_u16())
}

const OPEN: &str = "public = true\n[rate]\nquota = 1000000\nwindow = \"1s\"\n[limits]\nmax_concurrency = 250\n";

#[tokio::test]
async fn a_deploy_policy_and_revocation_through_one_node_hold_on_every_node() {
    let etcd = Etcd::start();
    let (a, b, c) = (node(&etcd, "a"), node(&etcd, "b"), node(&etcd, "c"));

    // Deploy on A; B and C serve it, each saying which node ran the guest.
    let started = Instant::now();
    a.deploy("hello", &guest("hello"));
    for (server, name) in [(&b, "b"), (&c, "c")] {
        // Until a node has compiled it, it proxies to one that has: wait for its own answer.
        served_by_itself(server, "hello", name).await;
        let response = client().get(server.fn_url("hello", "/")).send().await.unwrap();
        assert_eq!(response.headers()["ledge-version"], "1");
    }
    println!("deploy on a -> served on b and c: {:?}", started.elapsed());

    // Tokens: the root key ring is the cluster's, so a token minted from B's data dir works on C.
    let minted_on_b = b.mint(&["op in invoke,manage"]);
    let functions = client().get(format!("{}/v1/functions", c.url)).bearer_auth(&minted_on_b);
    assert_eq!(status(functions).await, 200);

    // A policy change made through B applies on A.
    b.set_policy("hello", "public = false\n").await;
    let on_a = a.fn_url("hello", "/");
    let took =
        within(Duration::from_secs(2), "policy reaches a", async || status(client().get(&on_a)).await == 401).await;
    println!("policy on b -> in force on a: {took:?}");
    assert_eq!(status(client().get(&on_a).bearer_auth(&minted_on_b)).await, 200);

    // Revoked through C, refused on A within a second.
    let revoke = c.cli(&["token", "revoke", &minted_on_b]);
    assert!(revoke.status.success(), "{}", String::from_utf8_lossy(&revoke.stderr));
    let took = within(Duration::from_secs(1), "revocation reaches a", async || {
        status(client().get(&on_a).bearer_auth(&minted_on_b)).await == 401
    })
    .await;
    println!("revocation on c -> refused on a: {took:?}");

    // A second version through A, rolled back through C: B runs version 1 again.
    a.deploy("hello", &guest("hello"));
    let version_on_b = async || {
        let response = client().get(b.fn_url("hello", "/")).bearer_auth(&a.admin_token).send().await.ok()?;
        let header = |name: &str| response.headers().get(name)?.to_str().ok().map(str::to_string);
        Some((header("ledge-version")?, header("ledge-node")?))
    };
    let is = |version: &str| Some((version.to_string(), "b".to_string()));
    within(Duration::from_secs(10), "version 2 on b", async || version_on_b().await == is("2")).await;
    let rollback = c.cli(&["rollback", "hello", "1"]);
    assert!(rollback.status.success(), "{}", String::from_utf8_lossy(&rollback.stderr));
    within(Duration::from_secs(10), "rollback reaches b", async || version_on_b().await == is("1")).await;

    // Every node lists the three members.
    let nodes = b.cli(&["nodes", "--json"]);
    assert!(nodes.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&nodes.stdout).unwrap();
    let names: Vec<&str> = listed["nodes"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(listed["in_sync"], true);
    assert_eq!(listed["nodes"][0]["address"], a.url.as_str());
    // Each names the ledge it runs, as `ledge --version` does: a rolling upgrade shows who runs what.
    let (version, commit) = build_version();
    for node in listed["nodes"].as_array().unwrap() {
        assert_eq!((node["version"].as_str(), node["commit"].as_str()), (Some(&*version), Some(&*commit)), "{node}");
    }
    let table = b.cli_ok(&["nodes"]);
    assert!(table.lines().next().is_some_and(|head| head.contains("VERSION") && head.contains("COMMIT")), "{table}");
    let naming = table.lines().filter(|line| line.contains(&format!(" {version} ")) && line.contains(&commit));
    assert_eq!(naming.count(), 3, "{table}");

    // A node started late catches up from etcd and serves everything.
    let d = node(&etcd, "d");
    let on_d = d.fn_url("hello", "/");
    within(Duration::from_secs(10), "late node serves", async || {
        status(client().get(&on_d).bearer_auth(&a.admin_token)).await == 200
    })
    .await;
    assert_eq!(status(client().get(&on_d)).await, 401, "the cluster's policy holds on the late node too");
    let ready = d.url.clone() + "/readyz";
    within(Duration::from_secs(5), "late node ready", async || status(client().get(&ready)).await == 200).await;
    // A removal through D removes it everywhere.
    let removed = d.cli(&["rm", "hello"]);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    let on_b = b.fn_url("hello", "/");
    within(Duration::from_secs(2), "removal reaches b", async || {
        status(client().get(&on_b).bearer_auth(&a.admin_token)).await == 404
    })
    .await;
}

#[tokio::test]
async fn global_stores_stay_exact_across_nodes_and_through_an_etcd_member_loss() {
    let mut etcd = Etcd::start();
    let nodes = [node(&etcd, "a"), node(&etcd, "b"), node(&etcd, "c")];
    let global = format!("{OPEN}[kv]\nscope = \"global\"\n");
    deploy_with_policy(&nodes[0], "counter", &guest("counter"), &global).await;
    deploy_with_policy(&nodes[1], "bank", &guest("bank"), &global).await;
    for server in &nodes {
        let url = server.fn_url("bank", "/total");
        within(Duration::from_secs(10), "bank on every node", async || status(client().get(&url)).await == 200).await;
    }

    // 3 nodes x 40 increments at once, while one etcd member is killed: none fails, the count
    // is exact (no acknowledged commit lost, none applied twice).
    let increments = nodes.iter().flat_map(|server| (0..40).map(move |_| server.fn_url("counter", "/")));
    let load = join_all(increments.map(|url| async move {
        let response = client().post(url).send().await.expect("increment");
        (response.status().as_u16(), response.text().await.unwrap_or_default())
    }));
    let kill = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        etcd.kill(0);
    };
    let (replies, ()) = futures::join!(load, kill);
    for (status, body) in &replies {
        assert_eq!(*status, 200, "an increment failed while an etcd member died: {body}");
    }
    let mut counts: Vec<u64> = replies.iter().map(|(_, body)| body.trim().parse().unwrap()).collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..=120).collect::<Vec<u64>>(), "every increment saw a distinct count");
    for server in &nodes {
        let peek = client().get(server.fn_url("counter", "/peek")).send().await.unwrap().text().await.unwrap();
        assert_eq!(peek, "120\n");
    }

    // wasi:keyvalue on a global store: increments through all three nodes, each a distinct count.
    let tally = format!("{OPEN}[kv]\nglobal_stores = [\"tally\"]\n");
    deploy_with_policy(&nodes[2], "tally", &guest("kv-wasi"), &tally).await;
    for server in &nodes {
        let url = server.fn_url("tally", "/get?key=n&bucket=tally");
        within(Duration::from_secs(10), "tally on every node", async || status(client().get(&url)).await == 200).await;
    }
    let increments =
        nodes.iter().flat_map(|server| (0..20).map(move |_| server.fn_url("tally", "/incr?key=n&bucket=tally")));
    let replies = join_all(increments.map(|url| async move {
        let response = client().post(url).send().await.expect("increment");
        assert_eq!(response.status(), 200);
        response.text().await.unwrap().trim().parse::<u64>().unwrap()
    }))
    .await;
    let mut counts = replies;
    counts.sort_unstable();
    assert_eq!(counts, (1..=60).collect::<Vec<u64>>(), "wasi:keyvalue increments are serializable across nodes");
    for server in &nodes {
        let value = client().get(server.fn_url("tally", "/get?key=n&bucket=tally")).send().await.unwrap();
        assert_eq!(value.text().await.unwrap(), "60\n");
    }
    // Listing a global bucket pages through it (a page stays under etcd's compare limit).
    let sets = (0..130).map(|i| nodes[i % 3].fn_url("tally", &format!("/set?key=k{i:03}&value=v&bucket=tally")));
    let statuses = join_all(sets.map(|url| status(client().post(url)))).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let listed = client().get(nodes[1].fn_url("tally", "/list?bucket=tally")).send().await.unwrap();
    assert_eq!(listed.status(), 200);
    let keys: Vec<String> = listed.text().await.unwrap().trim().split(',').map(str::to_string).collect();
    let expected: Vec<String> = (0..130).map(|i| format!("k{i:03}")).chain(["n".to_string()]).collect();
    assert_eq!(keys, expected);

    // A scan then an insert, concurrently through all three nodes: no phantom gets past the
    // scan, so exactly `cap` seats are taken.
    deploy_with_policy(&nodes[0], "seats", &guest("misbehave"), &global).await;
    for (server, name) in nodes.iter().zip(["a", "b", "c"]) {
        served_by_itself(server, "seats", name).await;
    }
    let claims = (0..24).map(|i| nodes[i % 3].fn_url("seats", &format!("/claim?cap=4&id=guest{i}")));
    let outcomes = join_all(claims.map(|url| async move {
        let response = client().get(url).send().await.expect("claim");
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }))
    .await;
    let mut seated: Vec<&str> = outcomes.iter().filter(|o| o.starts_with("seated")).map(|o| o.trim()).collect();
    seated.sort_unstable();
    assert_eq!(seated, ["seated 1", "seated 2", "seated 3", "seated 4"], "{outcomes:?}");
    for server in &nodes {
        let late = client().get(server.fn_url("seats", "/claim?cap=4&id=late")).send().await.unwrap();
        assert_eq!(late.text().await.unwrap(), "full 4\n");
    }

    // Bank transfers through all three nodes keep the total.
    for account in ["a", "b", "c", "d"] {
        let url = nodes[0].fn_url("bank", &format!("/accounts/{account}?balance=100"));
        assert_eq!(status(client().put(url)).await, 201);
    }
    let transfers = (0..60).map(|i| {
        let (from, to) = (["a", "b", "c", "d"][i % 4], ["b", "c", "d", "a"][(i / 4) % 4]);
        nodes[i % 3].fn_url("bank", &format!("/transfer?from={from}&to={to}&amount={}", 10 + i % 30))
    });
    let statuses = join_all(transfers.map(|url| status(client().post(url)))).await;
    assert!(statuses.iter().all(|s| *s == 200 || *s == 409 || *s == 400), "{statuses:?}");
    assert!(statuses.iter().filter(|s| **s == 200).count() >= 30, "{statuses:?}");
    for server in &nodes {
        let total: serde_json::Value =
            client().get(server.fn_url("bank", "/total")).send().await.unwrap().json().await.unwrap();
        assert_eq!(total["total"], 400);
        assert_eq!(total["accounts"], 4);
    }
}

#[tokio::test]
async fn nodes_serve_through_an_etcd_outage_and_refuse_control_writes() {
    let mut etcd = Etcd::start();
    let (a, b) = (node(&etcd, "a"), node(&etcd, "b"));
    a.deploy("hello", &guest("hello"));
    let on_b = b.fn_url("hello", "/");
    within(Duration::from_secs(10), "deploy reaches b", async || status(client().get(&on_b)).await == 200).await;

    etcd.kill_all();
    let ready = a.url.clone() + "/readyz";
    within(Duration::from_secs(10), "readiness drops", async || status(client().get(&ready)).await == 503).await;
    assert_eq!(status(client().get(a.url.clone() + "/healthz")).await, 200);
    for server in [&a, &b] {
        assert_eq!(status(client().get(server.fn_url("hello", "/"))).await, 200, "deployed functions keep serving");
    }
    let refused = a.admin().put(format!("{}/v1/functions/other", a.url)).body(std::fs::read(guest("echo")).unwrap());
    let body = problem(refused.send().await.unwrap(), 503).await;
    assert!(body["detail"].as_str().unwrap().contains("etcd"), "{body}");
    let refused = b.admin().put(format!("{}/v1/functions/hello/policy", b.url)).body("public = false\n");
    problem(refused.send().await.unwrap(), 503).await;

    etcd.restart_stopped();
    within(Duration::from_secs(20), "in sync again", async || status(client().get(&ready)).await == 200).await;
    a.deploy("echo", &guest("echo"));
    let echo_on_b = b.fn_url("echo", "/");
    within(Duration::from_secs(10), "a deploy after the outage", async || {
        status(client().post(&echo_on_b).body("x")).await == 200
    })
    .await;
}

/// A node whose copy of a function's code cannot be loaded at its start (the precompiled code
/// and the component both damaged) installs the function again from the cluster's record once
/// the start's loads are over, instead of leaving it missing. The Python build's precompiled
/// code is damaged too, so the loads run for seconds: the node applies its first etcd listing
/// while the broken function still counts as live, and only the end of the loads removes it.
#[tokio::test]
async fn a_function_whose_code_cannot_be_loaded_at_start_is_installed_again_from_the_cluster() {
    let etcd = Etcd::start();
    let mut a = node(&etcd, "a");
    a.deploy("hello", &guest("hello"));
    a.deploy("py", &python_guest());
    assert_eq!(a.terminate().code(), Some(0));
    let hello = a.data_dir.join("functions/hello/v1");
    for file in ["code.cwasm", "component.wasm", "snapshot.wasm"] {
        if hello.join(file).exists() {
            std::fs::write(hello.join(file), b"damaged").unwrap();
        }
    }
    damage(&a.data_dir.join("functions/py/v1/code.cwasm"));
    a.restart();
    let on_a = a.fn_url("hello", "/again");
    within(Duration::from_secs(30), "installed again from the cluster", async || {
        status(client().get(&on_a)).await == 200
    })
    .await;
    let log = a.log();
    assert!(log.contains("cannot load function; redeploy it"), "{log}");
    assert!(log.contains("installing again from the cluster"), "{log}");
    let response = client().get(&on_a).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "Hello from ledge! You asked for /again\n");
    assert_eq!(status(client().get(a.fn_url("py", "/"))).await, 200);
}

#[tokio::test]
async fn one_replica_is_placed_on_one_node_and_moves_when_it_leaves() {
    let etcd = Etcd::start();
    let mut nodes = vec![node(&etcd, "a"), node(&etcd, "b"), node(&etcd, "c")];
    deploy_with_policy(&nodes[0], "solo", &guest("echo"), &format!("{OPEN}[placement]\nreplicas = 1\n")).await;
    let ran_on = async |server: &Server| {
        let response = client().get(server.fn_url("solo", "/")).send().await.ok()?;
        (response.status() == 200).then(|| response.headers()["ledge-node"].to_str().unwrap().to_string())
    };
    let mut hosts = Vec::new();
    for server in &nodes {
        within(Duration::from_secs(10), "solo served", async || ran_on(server).await.is_some()).await;
        hosts.push(ran_on(server).await.unwrap());
    }
    assert!(hosts.iter().all(|h| *h == hosts[0]), "one node runs it, the others proxy: {hosts:?}");
    let host = ["a", "b", "c"].iter().position(|n| *n == hosts[0]).unwrap();
    let others: Vec<usize> = (0..3).filter(|i| *i != host).collect();
    // Only the host has it installed: the others list it from the cluster but hold no copy.
    for &other in &others {
        assert!(!nodes[other].data_dir.join("functions/solo/meta.json").exists());
    }
    assert!(nodes[host].data_dir.join("functions/solo/meta.json").exists());

    // Through a proxying node: the caller's request id reaches the guest, the signed peer
    // header does not, and a forged one from a client is dropped (the request still proxied).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let forged = format!("x;{now};203.0.113.7;{}", "00".repeat(32));
    let response = client()
        .get(nodes[others[0]].fn_url("solo", "/"))
        .header("x-request-id", "trace-42")
        .header("ledge-peer", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["ledge-node"], hosts[0].as_str());
    assert_eq!(response.headers()["x-echo-header-x-request-id"], "trace-42");
    assert_eq!(response.headers()["x-request-id"], "trace-42");
    assert!(response.headers().get("x-echo-header-ledge-peer").is_none(), "the guest saw the peer header");

    // Rate limits on the host count the caller the proxying node vouches for, not that node:
    // two callers through the same proxy each get their own quota.
    let limited = "public = true\n[rate]\nquota = 2\nwindow = \"1m\"\n[placement]\nreplicas = 1\n";
    deploy_with_policy(&nodes[0], "limited", &guest("echo"), limited).await;
    let path = "/fn/limited/";
    let served_by =
        |headers: &[String]| headers.iter().find_map(|h| h.strip_prefix("ledge-node: ").map(str::to_string));
    let mut limited_host = None;
    within(Duration::from_secs(10), "limited placed", async || {
        let (status, headers) = get_from(&nodes[0], path, IpAddr::from([127, 3, 9, 9])).await;
        limited_host = served_by(&headers);
        status == 200 && limited_host.is_some()
    })
    .await;
    let limited_host = limited_host.unwrap();
    let proxy = ["a", "b", "c"].iter().position(|n| *n != limited_host).unwrap();
    for caller in [IpAddr::from([127, 3, 0, 1]), IpAddr::from([127, 3, 0, 2])] {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let (status, headers) = get_from(&nodes[proxy], path, caller).await;
            if status == 200 {
                assert_eq!(served_by(&headers).as_deref(), Some(limited_host.as_str()), "proxied to the host");
            }
            statuses.push(status);
        }
        assert_eq!(statuses, [200, 200, 429], "caller {caller} through {}", ["a", "b", "c"][proxy]);
    }

    // A schedule runs once per cluster, not once per node: a global counter ticked every
    // second grows by about one a second with three nodes up.
    let ticking = format!("{OPEN}[kv]\nscope = \"global\"\n[[schedule]]\ncron = \"* * * * * *\"\npath = \"/tick\"\n");
    deploy_with_policy(&nodes[0], "ticker", &guest("counter"), &ticking).await;
    let peek = async || {
        let response = client().get(nodes[1].fn_url("ticker", "/peek")).send().await.ok()?;
        response.text().await.ok()?.trim().parse::<u64>().ok()
    };
    within(Duration::from_secs(10), "the schedule runs", async || peek().await.is_some_and(|n| n >= 1)).await;
    let before = peek().await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ticks = peek().await.unwrap() - before;
    assert!((2..=6).contains(&ticks), "{ticks} runs in 4 s: once per node would be about 12");

    // The host leaves: once its lease expires another node takes the function over.
    nodes[host].kill();
    let survivor = &nodes[others[0]];
    let mut new_host = String::new();
    let took = within(Duration::from_secs(20), "another node takes over", async || match ran_on(survivor).await {
        Some(node) if node != hosts[0] => {
            new_host = node;
            true
        }
        _ => false,
    })
    .await;
    println!("placement moved from {} to {new_host} in {took:?}", hosts[0]);
    assert_eq!(ran_on(&nodes[others[1]]).await.as_deref(), Some(new_host.as_str()));
    nodes.clear();
}

/// Waits until `server` (named `name`) runs `function` itself rather than proxying it.
async fn served_by_itself(server: &Server, function: &str, name: &str) {
    let url = server.fn_url(function, "/");
    within(Duration::from_secs(10), "installed on the node", async || {
        let response = client().get(&url).send().await.ok();
        response.is_some_and(|r| r.status() == 200 && r.headers()["ledge-node"] == name)
    })
    .await;
}

/// The version of `app` each of `callers` gets on `server`.
async fn versions_for(server: &Server, callers: &[IpAddr]) -> Vec<u64> {
    let mut versions = Vec::with_capacity(callers.len());
    for &caller in callers {
        versions.push(version_from(server, "app", caller).await);
    }
    versions
}

const SECRET: &str = "sk-cluster-9f8e7d6c5b4a";

/// What `misbehave` on `server` reads for config `key`.
async fn config_seen(server: &Server, key: &str) -> String {
    let url = server.fn_url("misbehave", &format!("/config?key={key}"));
    client().get(url).send().await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn config_secrets_canaries_and_the_component_budget_hold_across_nodes() {
    let mut etcd = Etcd::start();
    let (a, mut b) = (node(&etcd, "a"), node(&etcd, "b"));

    // Config and a secret set through A: B's guests see them; the secret is never in clear.
    a.deploy("misbehave", &guest("misbehave"));
    served_by_itself(&b, "misbehave", "b").await;
    a.cli_ok(&["config", "set", "misbehave", "GREETING", "hi"]);
    a.cli_ok(&["config", "set", "misbehave", "API_KEY", SECRET, "--secret"]);
    let took = within(Duration::from_secs(1), "config reaches b", async || {
        config_seen(&b, "API_KEY").await == format!("wasi:config=Some(\"{SECRET}\") env=Some(\"{SECRET}\")\n")
    })
    .await;
    println!("config on a -> seen on b: {took:?}");
    assert_eq!(config_seen(&b, "GREETING").await, "wasi:config=Some(\"hi\") env=Some(\"hi\")\n");
    let listed = b.cli_ok(&["config", "list", "misbehave"]);
    assert!(listed.contains("API_KEY=(secret)") && listed.contains("GREETING=hi"), "{listed}");
    assert!(!listed.contains(SECRET));
    // Both nodes seal with the cluster's key, cached privately beside their own.
    use std::os::unix::fs::PermissionsExt;
    let cached = |server: &Server| server.data_dir.join("keys/cluster-secrets.key");
    assert_eq!(std::fs::read(cached(&a)).unwrap(), std::fs::read(cached(&b)).unwrap());
    assert_ne!(std::fs::read(cached(&b)).unwrap(), std::fs::read(b.data_dir.join("keys/secrets.key")).unwrap());
    assert_eq!(std::fs::metadata(cached(&b)).unwrap().permissions().mode() & 0o777, 0o600);
    for (path, bytes) in crate::config::all_bytes(&b.data_dir) {
        assert!(!bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()), "{} holds the secret", path.display());
    }
    b.cli_ok(&["config", "rm", "misbehave", "GREETING"]);
    let removed = async || config_seen(&a, "GREETING").await == "wasi:config=None env=None\n";
    within(Duration::from_secs(1), "config removal reaches a", removed).await;

    // A canary deployed through B splits callers on A too, each caller on the same version on
    // every node; promoted through A, B runs it for everyone.
    deploy_with_policy(&a, "app", &guest("hello"), OPEN).await;
    served_by_itself(&b, "app", "b").await;
    b.cli_ok(&["deploy", "app", guest("echo").to_str().unwrap(), "--canary", "50%"]);
    let callers: Vec<IpAddr> = (1..=40u8).map(|i| IpAddr::from([127, 2, 0, i])).collect();
    within(Duration::from_secs(10), "canary on a", async || versions_for(&a, &callers).await.contains(&2)).await;
    let mut on_canary = 0;
    for &caller in &callers {
        let on_a = version_from(&a, "app", caller).await;
        assert_eq!(version_from(&a, "app", caller).await, on_a, "caller {caller} switched versions");
        assert_eq!(version_from(&b, "app", caller).await, on_a, "caller {caller} got another version on b");
        on_canary += usize::from(on_a == 2);
    }
    assert!((1..40).contains(&on_canary), "a 50% canary served {on_canary} of 40 callers");
    assert!(a.cli_ok(&["versions", "app"]).contains("canary 50%"));
    a.cli_ok(&["promote", "app"]);
    let promoted = async || versions_for(&b, &callers[..10]).await.iter().all(|v| *v == 2);
    within(Duration::from_secs(10), "promotion reaches b", promoted).await;

    // Another canary, rolled back through B: every node drops it and keeps version 2.
    a.cli_ok(&["deploy", "app", guest("hello").to_str().unwrap(), "--canary", "50%"]);
    let second = async || versions_for(&b, &callers).await.contains(&3);
    within(Duration::from_secs(10), "the second canary on b", second).await;
    b.cli_ok(&["rollback", "app"]);
    let dropped = async || versions_for(&a, &callers).await.iter().all(|v| *v == 2);
    within(Duration::from_secs(10), "the canary dropped on a", dropped).await;

    // A node whose component budget is nearly spent: the same bytes again cost nothing, new
    // bytes past the budget are refused with the reason.
    let stored: u64 = ["misbehave", "hello", "echo"].iter().map(|g| std::fs::metadata(guest(g)).unwrap().len()).sum();
    let budget = (stored + 1000).to_string();
    let c = Server::start_with(&[
        "--cluster",
        &etcd.endpoints(),
        "--node-name",
        "c",
        "--cluster-max-artifact-bytes",
        &budget,
    ]);
    within(Duration::from_secs(10), "c knows the functions", async || {
        let listed = c.cli(&["functions"]);
        let text = String::from_utf8_lossy(&listed.stdout).into_owned();
        text.contains("misbehave") && text.contains("app")
    })
    .await;
    c.deploy("again", &guest("hello"));
    let over = c.admin().put(format!("{}/v1/functions/other", c.url)).body(std::fs::read(guest("kv-wasi")).unwrap());
    let body = problem(over.send().await.unwrap(), 413).await;
    assert!(body["detail"].as_str().unwrap().contains("--cluster-max-artifact-bytes"), "{body}");

    // A record stays under etcd's request limit: config values count toward it.
    let mut accepted = 0;
    let refusal = loop {
        let url = format!("{}/v1/functions/app/config/BIG_{accepted}", a.url);
        let put = a.admin().put(url).body(vec![b'x'; 65_000]).send().await.unwrap();
        if put.status() != 204 {
            break put;
        }
        accepted += 1;
        assert!(accepted < 20, "config grew the record past etcd's limit unrefused");
    };
    let body = problem(refusal, 413).await;
    assert!(body["detail"].as_str().unwrap().contains("1048576"), "{body}");
    assert!(accepted >= 15, "refused after {accepted} values");

    // B restarted while etcd is away opens its secrets with its cached key.
    etcd.kill_all();
    b.restart();
    assert!(config_seen(&b, "API_KEY").await.contains(SECRET), "the secret after a restart without etcd");
}

#[tokio::test]
async fn nodes_reach_etcd_over_tls_with_a_client_certificate() {
    let etcd = Etcd::start_tls();
    let tls = etcd.tls.as_ref().unwrap();
    let (ca, cert, key) =
        (tls.ca.to_str().unwrap(), tls.client_cert.to_str().unwrap(), tls.client_key.to_str().unwrap());
    let endpoints = etcd.endpoints();
    let with_cert = ["--cluster", &endpoints, "--etcd-ca", ca, "--etcd-cert", cert, "--etcd-key", key];
    let a = Server::start_with(&[&with_cert[..], &["--node-name", "a"]].concat());
    let b = Server::start_with(&[&with_cert[..], &["--node-name", "b"]].concat());
    a.deploy("hello", &guest("hello"));
    served_by_itself(&b, "hello", "b").await;
    let ready = b.url.clone() + "/readyz";
    within(Duration::from_secs(10), "b in sync over TLS", async || status(client().get(&ready)).await == 200).await;

    // Without a client certificate etcd refuses the node: it starts, but never gets in sync.
    let stranger = Server::start_with(&["--cluster", &endpoints, "--etcd-ca", ca, "--node-name", "s"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let body = problem(client().get(stranger.url.clone() + "/readyz").send().await.unwrap(), 503).await;
    assert!(body["detail"].as_str().unwrap().contains("etcd"), "{body}");
    let refused = stranger
        .admin()
        .put(format!("{}/v1/functions/other", stranger.url))
        .body(std::fs::read(guest("echo")).unwrap());
    problem(refused.send().await.unwrap(), 503).await;
}

/// `curl -sS -k -D -` with `args` (a TLS node's certificate is self-signed): the response head
/// and body, lower-cased.
fn curl(args: &[&str]) -> String {
    let output = std::process::Command::new("curl")
        .args(["-sS", "-k", "-D", "-", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&output.stdout).to_ascii_lowercase()
}

/// A `ledge-peer` header with a signature no node made, saying `scheme` and `authority`.
fn forged_peer_header(scheme: &str, authority: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    format!("b;{now};203.0.113.7;{scheme};{authority};{}", "00".repeat(32))
}

#[tokio::test]
async fn a_proxied_request_reaches_its_guest_with_the_host_scheme_and_path_it_came_with() {
    let etcd = Etcd::start();
    // `t` serves TLS; `site` ranks `b` first of the three (rendezvous hashing is the same on
    // every build), so `a` and `t` proxy it to `b`. plain-wasi answers with the authority and
    // scheme its guest saw (`x-authority`, `x-scheme`) and the path in its body.
    let (a, b) = (node(&etcd, "a"), node(&etcd, "b"));
    let t = Server::start_with(&["--cluster", &etcd.endpoints(), "--node-name", "t", "--tls-self-signed"]);
    let routed = format!("{OPEN}[placement]\nreplicas = 1\n[[route]]\nhost = \"api.a.test\"\n");
    deploy_with_policy(&a, "site", &guest("plain-wasi"), &routed).await;

    // Over HTTP/1.1 to `a`, which does not host `site`: routed by the Host the caller named,
    // run on `b`, whose guest sees that authority, the path and the query.
    let on_a = || client().get(format!("{}/v2/items?q=1", a.url)).header("host", "api.a.test");
    let mut seen = None;
    within(Duration::from_secs(20), "a routes api.a.test to b", async || {
        let Ok(response) = on_a().send().await else { return false };
        if response.status() != 203 || response.headers()["ledge-node"] != "b" {
            return false;
        }
        let headers = response.headers().clone();
        seen = Some((headers, response.text().await.unwrap_or_default()));
        true
    })
    .await;
    let (headers, body) = seen.unwrap();
    assert_eq!(headers["x-authority"], "api.a.test", "the guest saw the proxying node's address");
    assert_eq!(headers["x-scheme"], "http");
    assert_eq!(body, "plain wasi saw /v2/items?q=1\n");

    // Over TLS (HTTP/2: the authority in `:authority`) to `t`: the same, and the guest on `b`,
    // which serves plain HTTP, sees scheme https, as a guest on `t` would.
    let t_site = format!("{}/v2/items?q=2", t.url);
    let mut answer = String::new();
    within(Duration::from_secs(20), "t routes api.a.test to b", async || {
        answer = curl(&["--http2", "-H", "host: api.a.test", &t_site]);
        answer.contains("ledge-node: b")
    })
    .await;
    assert!(answer.starts_with("http/2 203"), "{answer}");
    for expected in ["x-authority: api.a.test", "x-scheme: https", "plain wasi saw /v2/items?q=2"] {
        assert!(answer.contains(expected), "no `{expected}` in {answer}");
    }
    // Without a route, by `/fn/site/`: the guest sees the authority `t` was asked by.
    let t_address = t.url.trim_start_matches("https://").to_string();
    let answer = curl(&["--http1.1", &t.fn_url("site", "/seen?x=1")]);
    assert!(answer.contains("ledge-node: b"), "{answer}");
    for expected in [format!("x-authority: {t_address}"), "x-scheme: https".into(), "plain wasi saw /seen?x=1".into()] {
        assert!(answer.contains(&expected), "no `{expected}` in {answer}");
    }

    // A caller's own `ledge-peer` header, claiming another authority and scheme, changes nothing:
    // not on the host...
    let b_address = b.url.trim_start_matches("http://").to_string();
    let forged = client()
        .get(b.fn_url("site", "/x"))
        .header("ledge-peer", forged_peer_header("https", "api.a.test"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 203);
    assert_eq!(forged.headers()["x-authority"], b_address.as_str(), "a forged authority reached the guest");
    assert_eq!(forged.headers()["x-scheme"], "http", "a forged scheme reached the guest");
    let unrouted = client()
        .get(format!("{}/v2/items", b.url))
        .header("host", "other.test")
        .header("ledge-peer", forged_peer_header("http", "api.a.test"))
        .send()
        .await
        .unwrap();
    assert_eq!(unrouted.status(), 404, "a forged authority routed the request");
    // ...nor through a node that proxies: it sends its own.
    let through_a = on_a().header("ledge-peer", forged_peer_header("https", "evil.test")).send().await.unwrap();
    assert_eq!(through_a.status(), 203);
    assert_eq!(through_a.headers()["ledge-node"], "b");
    assert_eq!(through_a.headers()["x-authority"], "api.a.test");
    assert_eq!(through_a.headers()["x-scheme"], "http");
}

/// A GET of `path` on `server` from `source` (see [`get_from`]): `None` when the server closes
/// the connection without an answer (refused at accept).
async fn try_get_from(server: &Server, path: &str, source: IpAddr) -> Option<(u16, Vec<String>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address: std::net::SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket.connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let head = response.split("\r\n\r\n").next()?;
    let status = head.get(9..12)?.parse().ok()?;
    Some((status, head.lines().skip(1).map(str::to_ascii_lowercase).collect()))
}

#[tokio::test]
async fn one_client_holding_its_connections_through_a_proxy_does_not_block_others() {
    let etcd = Etcd::start();
    // Four connections per client address, so that one client fills its share with four slow
    // requests.
    let capped = |name| {
        Server::start_with(&["--cluster", &etcd.endpoints(), "--node-name", name, "--max-connections-per-ip", "4"])
    };
    let nodes = [capped("a"), capped("b")];
    deploy_with_policy(&nodes[0], "slow", &guest("misbehave"), &format!("{OPEN}[placement]\nreplicas = 1\n")).await;
    let (greedy, other) = (IpAddr::from([127, 7, 0, 1]), IpAddr::from([127, 7, 0, 2]));
    let served_by =
        |headers: &[String]| headers.iter().find_map(|h| h.strip_prefix("ledge-node: ").map(str::to_string));
    let mut host = None;
    within(Duration::from_secs(20), "slow placed", async || {
        let answer = try_get_from(&nodes[0], "/fn/slow/fine", other).await;
        host = answer.filter(|(status, _)| *status == 200).and_then(|(_, headers)| served_by(&headers));
        host.is_some()
    })
    .await;
    let host = ["a", "b"].iter().position(|n| Some(n.to_string()) == host).unwrap();
    let (proxy, hosting) = (&nodes[1 - host], &nodes[host]);
    // Through the proxy, until it is proxying (not still serving a copy of its own).
    within(Duration::from_secs(20), "proxied", async || {
        let answer = try_get_from(proxy, "/fn/slow/fine", other).await;
        answer.is_some_and(|(status, headers)| status == 200 && served_by(&headers) == host_name(host))
    })
    .await;

    // The greedy client holds four slow requests through the proxy: its whole share there, and
    // on the host (the proxy's connections count for it, not for the proxy).
    let slow = join_all((0..4).map(|_| try_get_from(proxy, "/fn/slow/slow-write?ms=4000", greedy)));
    let meanwhile = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let started = Instant::now();
        let through_proxy = try_get_from(proxy, "/fn/slow/fine", other).await;
        let took = started.elapsed();
        let greedy_direct = try_get_from(hosting, "/fn/slow/fine", greedy).await;
        let other_direct = try_get_from(hosting, "/fn/slow/fine", other).await;
        (through_proxy, took, greedy_direct, other_direct)
    };
    let (slow, (through_proxy, took, greedy_direct, other_direct)) = tokio::join!(slow, meanwhile);
    let (status, headers) = through_proxy.expect("another client's request through the proxy was refused");
    assert_eq!(status, 200, "{headers:?}");
    assert_eq!(served_by(&headers), host_name(host), "{headers:?}");
    assert!(took < Duration::from_secs(2), "another client waited {took:?} behind the greedy one");
    assert_eq!(other_direct.map(|(status, _)| status), Some(200));
    assert!(
        greedy_direct.as_ref().is_none_or(|(status, _)| *status == 503),
        "the greedy client got a fifth connection on the host: {greedy_direct:?}"
    );
    for answer in slow {
        let (status, headers) = answer.expect("a slow request was refused");
        assert_eq!((status, served_by(&headers)), (200, host_name(host)), "{headers:?}");
    }
}

fn host_name(index: usize) -> Option<String> {
    Some(["a", "b"][index].to_string())
}
