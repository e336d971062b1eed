//! Policies only narrow unless a full manage token widens them: a deploy-only CI token and a
//! function-scoped one may only tighten, through either route, every field compared (the cluster
//! compares with the record in etcd on every node); uploads stay under the node's `[ceilings]`;
//! kept versions are pruned by their bytes as well as their count.

use std::time::Duration;

use crate::harness::{Etcd, Server, client, guest, problem};

/// `PUT /v1/functions/{name}` with a component and a policy (multipart), with `token`.
async fn deploy_with(server: &Server, token: &str, name: &str, file: &str, policy: &str) -> reqwest::Response {
    let form = reqwest::multipart::Form::new()
        .part("component", reqwest::multipart::Part::bytes(std::fs::read(guest(file)).unwrap()))
        .part("policy", reqwest::multipart::Part::text(policy.to_string()));
    let url = format!("{}/v1/functions/{name}", server.url);
    client().put(url).bearer_auth(token).multipart(form).send().await.unwrap()
}

async fn put_policy(server: &Server, token: &str, name: &str, policy: &str) -> reqwest::Response {
    let url = format!("{}/v1/functions/{name}/policy", server.url);
    client().put(url).bearer_auth(token).body(policy.to_string()).send().await.unwrap()
}

#[tokio::test]
async fn a_deploy_only_token_may_only_tighten_the_policy_it_deploys_with() {
    let server = Server::start();
    let ci = server.mint(&["op = deploy"]);
    // A new function: compared with the default policy (the tests' default is public).
    let widening = [
        ("public = true\n[outbound]\nallow = [\"169.254.169.254\"]\n", "`outbound.allow`"),
        ("[kv]\nstores = [\"payments\"]\n", "`kv.stores`"),
        ("[record]\nsample = 1.0\n", "`record.sample`"),
    ];
    for (policy, field) in widening {
        let refused = problem(deploy_with(&server, &ci, "app", "hello", policy).await, 403).await;
        assert!(refused["detail"].as_str().unwrap().contains(field), "{policy}: {refused}");
    }
    let listed: serde_json::Value =
        server.admin().get(format!("{}/v1/functions", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["functions"].as_array().unwrap().len(), 0, "nothing was deployed: {listed}");
    let tighter = "public = false\n[limits]\ntimeout = \"2s\"\n";
    assert_eq!(deploy_with(&server, &ci, "app", "hello", tighter).await.status(), 201);
    // Now private: the same token cannot make it public again, nor open it up by redeploying.
    let refused = problem(deploy_with(&server, &ci, "app", "hello", "public = true\n").await, 403).await;
    assert!(refused["detail"].as_str().unwrap().contains("`public`"), "{refused}");
    assert_eq!(client().get(server.fn_url("app", "/")).send().await.unwrap().status(), 401);
    // A manage token without `fn` caveat (here with `op` naming manage) may widen.
    let manager = server.mint(&["op in deploy,manage"]);
    assert_eq!(deploy_with(&server, &manager, "app", "hello", "public = true\n").await.status(), 200);
    assert_eq!(client().get(server.fn_url("app", "/")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn every_field_takes_part_in_the_tighten_check() {
    let server = Server::start();
    server.deploy("hello", &guest("hello"));
    let base = "public = true\n[rate]\nquota = 1000000\nwindow = \"1s\"\n[limits]\nmax_concurrency = 250\n";
    server.set_policy("hello", &format!("{base}[placement]\nreplicas = 2\n")).await;
    let confined = server.mint(&["fn = hello"]);
    for (added, field) in [
        ("[record]\nsample = 0.5\n", "`record.sample`"),
        ("[record]\nmax_traces = 5000\n", "`record.max_traces`"),
        ("[record]\nmax_trace_bytes = \"512MiB\"\n", "`record.max_trace_bytes`"),
        ("[record]\nkeep_sample = 50\n", "`record.keep_sample`"),
        ("[versions]\nkeep = 50\n", "`versions.keep`"),
        ("[versions]\nmax_bytes = \"1GiB\"\n", "`versions.max_bytes`"),
        ("[placement]\nreplicas = 3\n", "`placement.replicas`"),
        ("[placement]\nreplicas = 0\n", "`placement.replicas`"),
        ("[placement]\nreplicas = 2\n[[route]]\nhost = \"api.a.test\"\n", "`route`"),
        ("[placement]\nreplicas = 2\n[[schedule]]\ncron = \"* * * * *\"\npath = \"/tick\"\n", "`schedule`"),
    ] {
        let refused = problem(put_policy(&server, &confined, "hello", &format!("{base}{added}")).await, 403).await;
        assert!(refused["detail"].as_str().unwrap().contains(field), "{added}: {refused}");
    }
    let tighter = format!("{base}[placement]\nreplicas = 1\n[record]\nerrors = false\n[versions]\nkeep = 2\n");
    assert_eq!(put_policy(&server, &confined, "hello", &tighter).await.status(), 204);
    let refused = problem(put_policy(&server, &confined, "hello", &format!("{base}[versions]\nkeep = 2\n")).await, 403);
    let refused = refused.await;
    assert!(refused["detail"].as_str().unwrap().contains("`record.errors`"), "{refused}");
}

#[tokio::test]
async fn uploads_stay_under_the_nodes_ceilings_and_the_operators_own_files_do_not() {
    let server = Server::start_prepared(&[], |data_dir| {
        let policies = data_dir.with_file_name("policies");
        std::fs::create_dir_all(&policies).unwrap();
        let default = "public = true\n[rate]\nquota = 1000000\nwindow = \"1s\"\n\n[ceilings]\nrecord_sample = 0.5\nrate = \"2000000/s\"\nversions_keep = 20\n";
        std::fs::write(policies.join("default.toml"), default).unwrap();
        // The operator's own file may go past the ceilings.
        std::fs::write(policies.join("ops.toml"), "public = true\n[record]\nsample = 1.0\n").unwrap();
    });
    server.deploy("hello", &guest("hello"));
    server.deploy("ops", &guest("hello"));
    let admin = server.admin_token.clone();
    for (policy, field, ceiling) in [
        ("[record]\nsample = 0.75\n", "record.sample = 0.75", "ceiling of 0.5 ([ceilings] record_sample"),
        ("[rate]\nquota = 3000000\nwindow = \"1s\"\n", "rate.quota", "[ceilings] rate"),
        ("[versions]\nkeep = 21\n", "versions.keep = 21", "ceiling of 20"),
        ("[record]\nmax_traces = 20000\n", "record.max_traces = 20000", "ceiling of 10000"),
        ("[limits]\nmemory = \"8GiB\"\n", "limits.memory", "[ceilings] memory"),
        ("[record]\nmax_trace_bytes = \"2GiB\"\n", "record.max_trace_bytes", "[ceilings] record_max_trace_bytes"),
        ("[record]\nkeep_sample = 201\n", "record.keep_sample = 201", "ceiling of 200 ([ceilings] record_keep_sample"),
    ] {
        let refused = problem(put_policy(&server, &admin, "hello", policy).await, 400).await;
        let detail = refused["detail"].as_str().unwrap();
        assert!(detail.contains(field) && detail.contains(ceiling), "{policy}: {detail}");
    }
    let refused = problem(put_policy(&server, &admin, "hello", "[ceilings]\nmemory = \"8GiB\"\n").await, 400).await;
    assert!(refused["detail"].as_str().unwrap().contains("policies/default.toml"), "{refused}");
    assert_eq!(put_policy(&server, &admin, "hello", "[record]\nsample = 0.5\n").await.status(), 204);
    // `ops.toml` (sample 1.0) is in force: every run is recorded.
    let response = client().get(server.fn_url("ops", "/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let traces = format!("{}/v1/traces?function=ops", server.url);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let listed: serde_json::Value = server.admin().get(&traces).send().await.unwrap().json().await.unwrap();
        if !listed["traces"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the operator's sample = 1.0 recorded nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /v1/functions/{name}/versions`, and the kept version numbers in it.
async fn kept_versions(server: &Server, name: &str) -> (serde_json::Value, Vec<u64>) {
    let url = format!("{}/v1/functions/{name}/versions", server.url);
    let versions: serde_json::Value = server.admin().get(url).send().await.unwrap().json().await.unwrap();
    let kept = versions["kept"].as_array().unwrap().iter().map(|v| v["version"].as_u64().unwrap()).collect();
    (versions, kept)
}

#[tokio::test]
async fn kept_versions_are_pruned_by_their_bytes_never_the_live_one() {
    let server = Server::start();
    let size = std::fs::metadata(guest("hello")).unwrap().len();
    server.deploy("hello", &guest("hello"));
    // Room for three versions of this component.
    let budget = size * 3 + size / 2;
    server.set_policy("hello", &format!("public = true\n[versions]\nkeep = 10\nmax_bytes = {budget}\n")).await;
    for _ in 0..5 {
        server.deploy("hello", &guest("hello"));
    }
    let (versions, kept) = kept_versions(&server, "hello").await;
    assert_eq!(kept, [4, 5, 6], "{versions}");
    assert_eq!(versions["live"], 6);
    let dirs = std::fs::read_dir(server.data_dir.join("functions/hello")).unwrap();
    let mut on_disk: Vec<String> = dirs
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('v'))
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, ["v4", "v5", "v6"]);
    // Rolled back to the oldest kept, then a tighter budget: the live version stays, however
    // little room is left (the unit test of `versions_to_prune` covers canaries too).
    assert!(server.cli(&["rollback", "hello", "4"]).status.success());
    server.set_policy("hello", &format!("public = true\n[versions]\nkeep = 10\nmax_bytes = {}\n", size * 2)).await;
    let canary = server.cli(&["deploy", "hello", guest("hello").to_str().unwrap(), "--canary", "10%"]);
    assert!(canary.status.success(), "{}", String::from_utf8_lossy(&canary.stderr));
    let (versions, kept) = kept_versions(&server, "hello").await;
    // Live 4 and canary 7 stay although they fill the budget; 5 and 6 go.
    assert_eq!(kept, [4, 7], "{versions}");
    assert_eq!(versions["live"], 4);
    assert_eq!(versions["canary"]["version"], 7);
}

#[tokio::test]
async fn in_a_cluster_every_node_compares_with_the_functions_record() {
    let etcd = Etcd::start();
    let node = |name: &str| Server::start_with(&["--cluster", &etcd.endpoints(), "--node-name", name]);
    let nodes = [node("a"), node("b"), node("c")];
    let restricted = "public = false\n[rate]\nquota = 10\nwindow = \"60s\"\n[placement]\nreplicas = 1\n";
    let admin = nodes[0].admin_token.clone();
    assert!(deploy_with(&nodes[0], &admin, "solo", "hello", restricted).await.status().is_success());
    let confined = nodes[0].mint(&["fn = solo", "op in manage,deploy"]);
    let raised = "public = false\n[rate]\nquota = 100\nwindow = \"60s\"\n[placement]\nreplicas = 1\n";
    // The function lives on one node; the upload through each of them, hosting or not, is
    // compared with its record.
    for server in &nodes {
        let refused = problem(put_policy(server, &confined, "solo", raised).await, 403).await;
        assert!(refused["detail"].as_str().unwrap().contains("`rate.quota`"), "{}: {refused}", server.url);
        let refused = problem(deploy_with(server, &confined, "solo", "hello", raised).await, 403).await;
        assert!(refused["detail"].as_str().unwrap().contains("`rate.quota`"), "{}: {refused}", server.url);
    }
    let lower = "public = false\n[rate]\nquota = 5\nwindow = \"60s\"\n[placement]\nreplicas = 1\n";
    assert_eq!(put_policy(&nodes[2], &confined, "solo", lower).await.status(), 204);
    // And the lowered quota is what the next comparison starts from, on every node.
    let back = "public = false\n[rate]\nquota = 10\nwindow = \"60s\"\n[placement]\nreplicas = 1\n";
    for server in &nodes {
        problem(put_policy(server, &confined, "solo", back).await, 403).await;
    }
}
