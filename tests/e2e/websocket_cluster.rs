//! WebSockets across a cluster: two real `ledge serve` nodes on a real 3-member etcd. The chat
//! example with a global kv scope relays a room's messages to its clients on both nodes (a send
//! to a connection another node holds goes there in one hop, and a room's members are listed
//! on every node); a node that does not host a function refuses its upgrades with 421.

use std::time::{Duration, Instant};

use crate::harness::{Etcd, Server, client, deploy_with_policy, guest};
use crate::websocket::{Socket, chat_policy, connect, next_text, refused_status, send, silent, until_relayed, ws_url};

fn node(etcd: &Etcd, name: &str) -> Server {
    Server::start_with(&["--cluster", &etcd.endpoints(), "--node-name", name])
}

/// Waits (bounded) until `server` serves `function` itself.
async fn served_by(server: &Server, function: &str, node: &str) {
    let started = Instant::now();
    loop {
        let response = client().get(server.fn_url(function, "/")).send().await;
        let serving = response.as_ref().ok().and_then(|r| r.headers().get("ledge-node")).map(|v| v.as_bytes().to_vec());
        if response.as_ref().is_ok_and(|r| r.status() == 200) && serving.as_deref() == Some(node.as_bytes()) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "`{function}` never ran on node {node}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_room_spans_both_nodes_and_a_node_not_hosting_a_function_refuses_its_upgrades() {
    let etcd = Etcd::start();
    let (a, b) = (node(&etcd, "a"), node(&etcd, "b"));
    let policy = format!("{}\n[kv]\nscope = \"global\"\n", chat_policy());
    deploy_with_policy(&a, "chat", &guest("chat"), &policy).await;
    served_by(&a, "chat", "a").await;
    served_by(&b, "chat", "b").await;

    let mut on_a: Socket = connect(&ws_url(&a, "chat", "/?room=tea")).await;
    let mut on_b = connect(&ws_url(&b, "chat", "/?room=tea")).await;
    let mut elsewhere = connect(&ws_url(&b, "chat", "/?room=coffee")).await;
    until_relayed(&mut on_a, &mut on_b).await;
    until_relayed(&mut on_b, &mut on_a).await;

    let text = "from node a — {\"intact\": true}";
    send(&mut on_a, text).await;
    assert_eq!(next_text(&mut on_b).await, text, "a message reaches the room's client on the other node");
    send(&mut on_b, "and back from b").await;
    assert_eq!(next_text(&mut on_a).await, "and back from b");
    silent(&mut elsewhere, Duration::from_millis(500)).await;
    silent(&mut on_a, Duration::from_millis(100)).await;

    // A function hosted by one node only: the other refuses its upgrades, naming why.
    let one = format!("{}\n[placement]\nreplicas = 1\n", chat_policy());
    deploy_with_policy(&a, "chat-one", &guest("chat"), &one).await;
    let started = Instant::now();
    let host = loop {
        let response = client().get(a.fn_url("chat-one", "/")).send().await.unwrap();
        if response.status() == 200 {
            break response.headers()["ledge-node"].to_str().unwrap().to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "chat-one never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (hosting, other) = if host == "a" { (&a, &b) } else { (&b, &a) };
    served_by(hosting, "chat-one", &host).await;
    assert_eq!(refused_status(&ws_url(other, "chat-one", "/?room=x")).await, 421);
    let mut direct = connect(&ws_url(hosting, "chat-one", "/?room=x")).await;
    send(&mut direct, "alone").await;
    silent(&mut direct, Duration::from_millis(200)).await;

    // A private function's existence is not told to a caller who may not invoke it.
    let private = "[[websocket]]\npath = \"/\"\n[placement]\nreplicas = 1\n";
    deploy_with_policy(&a, "private-ws", &guest("ws-echo"), private).await;
    let started = Instant::now();
    let hosts_private = |server: &Server| server.data_dir.join("functions/private-ws/meta.json").exists();
    while !(hosts_private(&a) ^ hosts_private(&b)) {
        assert!(started.elapsed() < Duration::from_secs(20), "private-ws never placed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let other = if hosts_private(&a) { &b } else { &a };
    assert_eq!(refused_status(&ws_url(other, "private-ws", "/")).await, 401);

    // The node-to-node routes answer only a signed request: anything else is a missing route.
    let forged = client().post(format!("{}/v1/peer/websocket/chat/{}@a", b.url, "0".repeat(32))).body("x");
    assert_eq!(forged.send().await.unwrap().status(), 404);
    let listed = client().get(format!("{}/v1/peer/websocket/chat?tag=room:tea", a.url)).send().await.unwrap();
    assert_eq!(listed.status(), 404);
}
