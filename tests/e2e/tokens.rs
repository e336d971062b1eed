//! Attenuable macaroon tokens gate deploy, invoke and key-value access.

use base64::Engine as _;
use libmacaroon::{Format, Macaroon, MacaroonKey};

use crate::harness::{Server, client, guest, problem};

/// A server with `misbehave` and `kv-wasi` deployed as private functions.
async fn private_server() -> Server {
    let server = Server::start();
    for (name, file) in [("private", "misbehave"), ("kv", "kv-wasi")] {
        server.deploy(name, &guest(file));
        let policy = server.admin().put(format!("{}/v1/functions/{name}/policy", server.url)).body("public = false\n");
        assert_eq!(policy.send().await.unwrap().status(), 204);
    }
    server
}

async fn call(url: String, method: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = client().request(method.parse().unwrap(), url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn body(response: reqwest::Response) -> (u16, String) {
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn missing_or_invalid_tokens_get_401_and_refusing_caveats_403() {
    let server = private_server().await;
    let missing = call(server.fn_url("private", "/fine"), "GET", None).await;
    assert_eq!(missing.headers()["www-authenticate"], "Bearer realm=\"ledge\"");
    assert!(problem(missing, 401).await["detail"].as_str().unwrap().contains("needs a token"));
    problem(call(server.fn_url("private", "/fine"), "GET", Some("garbage")).await, 401).await;
    problem(call(format!("{}/v1/functions", server.url), "GET", None).await, 401).await;
    let refused =
        problem(call(server.fn_url("private", "/fine"), "GET", Some(&server.mint(&["fn = other"]))).await, 403).await;
    let detail = refused["detail"].as_str().unwrap();
    assert!(detail.contains("`fn = other`") && detail.contains("`private` is not allowed"), "{detail}");
    assert_eq!(
        body(call(server.fn_url("private", "/fine"), "GET", Some(&server.admin_token)).await).await,
        (200, "fine\n".into())
    );
}

#[tokio::test]
async fn each_caveat_kind_allows_and_refuses() {
    let server = private_server().await;
    let cases: [(&str, &str, &str, u16); 13] = [
        ("fn in private,kv", "GET", "/fine", 200),
        ("fn = kv", "GET", "/fine", 403),
        ("op = invoke", "GET", "/fine", 200),
        ("op in deploy,manage", "GET", "/fine", 403),
        ("method in GET,HEAD", "GET", "/fine", 200),
        ("method = GET", "POST", "/fine", 403),
        ("path-prefix = /fine", "GET", "/fine", 200),
        // Whole segments: `/fi` is no prefix of `/fine`.
        ("path-prefix = /fi", "GET", "/fine", 403),
        ("path-prefix = /api/", "GET", "/fine", 403),
        ("time < 2999-01-01T00:00:00Z", "GET", "/fine", 200),
        ("time < 2001-01-01T00:00:00Z", "GET", "/fine", 403),
        ("colour = blue", "GET", "/fine", 403),
        ("fn", "GET", "/fine", 403),
    ];
    for (caveat, method, path, expected) in cases {
        // Added with libmacaroon directly: `ledge token mint` itself refuses unknown caveats.
        let mut token = Macaroon::deserialize(server.mint(&[])).unwrap();
        token.add_first_party_caveat(caveat).unwrap();
        let token = token.serialize(Format::V2).unwrap();
        let response = call(server.fn_url("private", path), method, Some(&token)).await;
        assert_eq!(response.status().as_u16(), expected, "caveat `{caveat}` with {method} {path}");
    }
    let typo = crate::harness::ledge()
        .args(["token", "mint", "--caveat", "colour = blue", "--data-dir"])
        .arg(&server.data_dir)
        .output();
    assert_eq!(typo.unwrap().status.code(), Some(1));
    // The admin API: `op` decides deploy versus manage.
    let deployer = server.mint(&["op = deploy", "fn = hello"]);
    let wasm = std::fs::read(guest("hello")).unwrap();
    let deploy = client().put(format!("{}/v1/functions/hello", server.url)).bearer_auth(&deployer).body(wasm.clone());
    assert_eq!(deploy.send().await.unwrap().status(), 201);
    let elsewhere = client().put(format!("{}/v1/functions/echo", server.url)).bearer_auth(&deployer).body(wasm);
    problem(elsewhere.send().await.unwrap(), 403).await;
    problem(call(format!("{}/v1/functions/hello", server.url), "DELETE", Some(&deployer)).await, 403).await;
    let expired = server.mint(&["time < 2001-01-01T00:00:00Z"]);
    let refused = problem(call(format!("{}/v1/functions", server.url), "GET", Some(&expired)).await, 403).await;
    assert!(refused["detail"].as_str().unwrap().contains("expired"));
}

#[tokio::test]
async fn kv_caveats_confine_the_guest() {
    let server = private_server().await;
    let user = server.mint(&["kv-prefix = user/42/"]);
    let kv = |route: &str, token: &str| {
        let url = server.fn_url("kv", route);
        let token = token.to_string();
        async move { body(call(url, "GET", Some(&token)).await).await }
    };
    assert_eq!(kv("/set?key=user/42/cart&value=3", &user).await, (200, "ok\n".into()));
    assert_eq!(kv("/get?key=user/42/cart", &user).await, (200, "3\n".into()));
    assert_eq!(kv("/set?key=user/43/cart&value=9", &user).await, (500, "Error::AccessDenied\n".into()));
    assert_eq!(kv("/get?key=user/43/cart", &user).await, (500, "Error::AccessDenied\n".into()));
    assert_eq!(kv("/set?key=user/43/cart&value=1", &server.admin_token).await, (200, "ok\n".into()));
    // Listing shows only the caller's own prefix.
    assert_eq!(kv("/list", &user).await, (200, "user/42/cart\n".into()));
    let reader = server.mint(&["kv = read"]);
    assert_eq!(kv("/get?key=user/43/cart", &reader).await, (200, "1\n".into()));
    assert_eq!(kv("/set?key=user/43/cart&value=2", &reader).await, (500, "Error::AccessDenied\n".into()));
}

#[tokio::test]
async fn the_guest_reads_the_verified_caller() {
    let server = private_server().await;
    let token = server.mint(&["kv-prefix = user/42/", "fn = private"]);
    let inspect = crate::harness::ledge().args(["token", "inspect", &token]).output().unwrap();
    let printed = String::from_utf8(inspect.stdout).unwrap();
    let id = printed.lines().find_map(|l| l.strip_prefix("token id: ")).unwrap().trim().to_string();
    let (status, whoami) = body(call(server.fn_url("private", "/whoami"), "GET", Some(&token)).await).await;
    assert_eq!(status, 200);
    assert_eq!(whoami, format!("id={id} kv-prefix=Some(\"user/42/\") caveats=kv-prefix = user/42/;fn = private\n"));
}

#[tokio::test]
async fn a_holder_attenuates_without_the_key_and_cannot_undo_it() {
    let server = private_server().await;
    let token = server.mint(&[]);
    let output =
        crate::harness::ledge().args(["token", "attenuate", &token, "--caveat", "method = POST"]).output().unwrap();
    assert!(output.status.success());
    let narrowed = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert!(!narrowed.contains('='), "base64url without padding");
    problem(call(server.fn_url("private", "/fine"), "GET", Some(&narrowed)).await, 403).await;
    assert_eq!(call(server.fn_url("private", "/fine"), "POST", Some(&narrowed)).await.status(), 200);
    let inspected = crate::harness::ledge().args(["token", "inspect", &narrowed]).output().unwrap();
    let inspected = String::from_utf8(inspected.stdout).unwrap();
    assert!(inspected.contains("method = POST") && inspected.contains("token id: "));
    let bad =
        crate::harness::ledge().args(["token", "attenuate", &token, "--caveat", "colour = blue"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
}

/// Splits a V2 binary macaroon into its header, caveat sections and trailer (the end of the
/// caveat list and the signature). Fields are `type, varint length, data`; every section ends
/// with a 0 byte; the fields here are all shorter than 128 bytes, so lengths are one byte.
fn sections(token: &str) -> (Vec<u8>, Vec<Vec<u8>>, Vec<u8>) {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).unwrap();
    let skip_section = |mut at: usize| {
        while bytes[at] != 0 {
            at += 2 + bytes[at + 1] as usize;
        }
        at + 1
    };
    let header_end = skip_section(1);
    let mut at = header_end;
    let mut caveats = Vec::new();
    while bytes[at] != 0 {
        let end = skip_section(at);
        caveats.push(bytes[at..end].to_vec());
        at = end;
    }
    (bytes[..header_end].to_vec(), caveats, bytes[at..].to_vec())
}

fn assemble(header: &[u8], caveats: &[Vec<u8>], trailer: &[u8]) -> String {
    let bytes = [header.to_vec(), caveats.concat(), trailer.to_vec()].concat();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn a_token_with_a_caveat_removed_or_reordered_fails() {
    let server = private_server().await;
    let token = server.mint(&["method = GET", "fn = private"]);
    assert_eq!(call(server.fn_url("private", "/fine"), "GET", Some(&token)).await.status(), 200);
    let (header, caveats, trailer) = sections(&token);
    assert_eq!(caveats.len(), 2);
    let removed = assemble(&header, &caveats[1..], &trailer);
    let reordered = assemble(&header, &[caveats[1].clone(), caveats[0].clone()], &trailer);
    assert_eq!(Macaroon::deserialize(&reordered).unwrap().caveats().len(), 2, "still a well-formed macaroon");
    for forged in [removed, reordered] {
        let detail = problem(call(server.fn_url("private", "/fine"), "GET", Some(&forged)).await, 401).await;
        assert!(detail["detail"].as_str().unwrap().contains("signature"), "{detail}");
    }
}

#[tokio::test]
async fn revoked_tokens_stay_revoked_across_restarts() {
    let mut server = private_server().await;
    let token = server.mint(&["fn = private"]);
    let attenuated = crate::harness::attenuate(&token, "method = GET");
    assert_eq!(call(server.fn_url("private", "/fine"), "GET", Some(&token)).await.status(), 200);
    let revoke = server.cli(&["token", "revoke", &token]);
    assert!(revoke.status.success(), "{}", String::from_utf8_lossy(&revoke.stderr));
    for revoked in [&token, &attenuated] {
        let detail = problem(call(server.fn_url("private", "/fine"), "GET", Some(revoked)).await, 401).await;
        assert!(detail["detail"].as_str().unwrap().contains("revoked"));
    }
    server.kill();
    server.restart();
    problem(call(server.fn_url("private", "/fine"), "GET", Some(&token)).await, 401).await;
    assert_eq!(call(server.fn_url("private", "/fine"), "GET", Some(&server.mint(&[]))).await.status(), 200);
}

#[tokio::test]
async fn third_party_caveats_need_a_bound_discharge() {
    let server = private_server().await;
    let caveat_key = MacaroonKey::generate(b"shared between ledge's user and the auth service");
    let mut macaroon = Macaroon::deserialize(server.mint(&["fn = private"])).unwrap();
    macaroon.add_third_party_caveat("https://auth.example", &caveat_key, "user = alice").unwrap();
    let discharge_with = |caveat: &str| {
        let mut discharge = Macaroon::create(Some("https://auth.example"), &caveat_key, "user = alice").unwrap();
        discharge.add_first_party_caveat(caveat.as_bytes()).unwrap();
        discharge
    };
    let mut discharge = discharge_with("time < 2999-01-01T00:00:00Z");
    let unbound = discharge.clone();
    macaroon.bind(&mut discharge);
    let encode = |m: &Macaroon| m.serialize(Format::V2).unwrap().trim_end_matches('=').to_string();
    let (token, bound, unbound) = (encode(&macaroon), encode(&discharge), encode(&unbound));

    let with_discharge = format!("{token},{bound}");
    assert_eq!(call(server.fn_url("private", "/fine"), "GET", Some(&with_discharge)).await.status(), 200);
    problem(call(server.fn_url("private", "/fine"), "GET", Some(&token)).await, 401).await;
    problem(call(server.fn_url("private", "/fine"), "GET", Some(&format!("{token},{unbound}"))).await, 401).await;
    // A discharge's own first-party caveats bind too: a properly bound discharge that allows
    // only POST verifies, and then refuses a GET by that caveat.
    let mut strict = discharge_with("method = POST");
    macaroon.bind(&mut strict);
    let strict = format!("{token},{}", encode(&strict));
    let refused = problem(call(server.fn_url("private", "/fine"), "GET", Some(&strict)).await, 403).await;
    assert!(refused["detail"].as_str().unwrap().contains("method = POST"), "{refused}");
    assert_eq!(call(server.fn_url("private", "/fine"), "POST", Some(&strict)).await.status(), 200);
}

#[tokio::test]
async fn tokens_interoperate_with_pymacaroons() {
    let server = private_server().await;
    let token = server.mint(&["fn = private", "method in GET,POST"]);
    let keys_dir = server.data_dir.join("keys");
    let key_file = std::fs::read_dir(&keys_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.file_name().unwrap().to_string_lossy().starts_with("root-"))
        .expect("a root key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(server.data_dir.join("admin.token")).unwrap().permissions().mode() & 0o777, 0o600);
    let secret = std::fs::read_to_string(&key_file).unwrap();

    // pymacaroons verifies a ledge token with the root secret and sees its caveats.
    let verified = crate::harness::pymacaroons(&["verify", secret.trim(), &token]);
    let lines: Vec<&str> = verified.lines().collect();
    assert!(lines[0].starts_with("ledge1 "), "{verified}");
    assert_eq!(&lines[1..], ["fn = private", "method in GET,POST"]);

    // A token attenuated by pymacaroons is accepted or refused by ledge as its caveats say.
    let narrowed = crate::harness::pymacaroons(&["attenuate", &token, "method = POST"]).trim().to_string();
    assert_eq!(call(server.fn_url("private", "/fine"), "POST", Some(&narrowed)).await.status(), 200);
    problem(call(server.fn_url("private", "/fine"), "GET", Some(&narrowed)).await, 403).await;
    // And pymacaroons verifies what ledge attenuated, the branch's `id` caveat last.
    let ours = crate::harness::attenuate(&narrowed, "path-prefix = /fine");
    let verified = crate::harness::pymacaroons(&["verify", secret.trim(), &ours]);
    let lines: Vec<&str> = verified.lines().collect();
    assert_eq!(lines.len(), 6, "{verified}");
    assert_eq!(lines[4], "path-prefix = /fine");
    let id = lines[5].strip_prefix("id = ").unwrap_or_else(|| panic!("no id caveat: {verified}"));
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{id}");
}

/// `ledge token revoke` of `token`, asserting success; the id it says it revoked.
fn revoke(server: &Server, token: &str) -> String {
    let output = server.cli(&["token", "revoke", token]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let said = String::from_utf8(output.stdout).unwrap();
    said.trim().strip_prefix("revoked ").unwrap_or_else(|| panic!("{said}")).to_string()
}

#[tokio::test]
async fn revoking_a_narrowed_token_leaves_its_parent_and_siblings_alone() {
    let server = private_server().await;
    let functions = format!("{}/v1/functions", server.url);
    let fine = || server.fn_url("private", "/fine");
    // The admin token narrowed for a CI job, and a sibling narrowed for someone else.
    let ci = crate::harness::attenuate(&server.admin_token, "fn = private");
    let sibling = crate::harness::attenuate(&server.admin_token, "method = GET");
    let below_ci = crate::harness::attenuate(&ci, "method = GET");
    for token in [&ci, &sibling, &below_ci] {
        assert_eq!(call(fine(), "GET", Some(token)).await.status(), 200);
    }
    let takes = crate::harness::inspect(&ci);
    let revoked = revoke(&server, &ci);
    assert!(takes.contains(&format!("revoke:   takes {revoked} (its last `id` caveat)")), "{takes}");
    for gone in [&ci, &below_ci] {
        let detail = problem(call(fine(), "GET", Some(gone)).await, 401).await;
        assert!(detail["detail"].as_str().unwrap().contains("revoked"), "{detail}");
    }
    assert_eq!(call(fine(), "GET", Some(&sibling)).await.status(), 200, "the sibling still works");
    assert_eq!(call(functions.clone(), "GET", Some(&server.admin_token)).await.status(), 200, "the parent still works");

    // A branch another library made with its own `id` caveat is revoked on its own too, by
    // token over HTTP.
    let foreign = crate::harness::pymacaroons(&["attenuate", &server.admin_token, "id = C0FFEE"]).trim().to_string();
    assert_eq!(call(functions.clone(), "GET", Some(&foreign)).await.status(), 200);
    let revoked =
        server.admin().post(format!("{}/v1/tokens/revoke", server.url)).body(foreign.clone()).send().await.unwrap();
    assert_eq!(revoked.json::<serde_json::Value>().await.unwrap()["revoked"], "c0ffee");
    problem(call(functions.clone(), "GET", Some(&foreign)).await, 401).await;
    assert_eq!(call(fine(), "GET", Some(&sibling)).await.status(), 200);

    // A token without any `id` caveat is its whole family: revoking it takes the root id.
    let root = server.mint(&["fn = private"]);
    let branch = crate::harness::attenuate(&root, "method = GET");
    assert!(crate::harness::inspect(&root).contains("(its root id: every token of the family)"));
    revoke(&server, &root);
    problem(call(fine(), "GET", Some(&branch)).await, 401).await;
    assert_eq!(call(fine(), "GET", Some(&sibling)).await.status(), 200);
}

#[tokio::test]
async fn branches_of_one_token_share_its_rate_limit() {
    let server = private_server().await;
    server.set_policy("private", "public = false\n[rate]\nquota = 4\nwindow = \"1h\"\n").await;
    let root = server.mint(&["fn = private"]);
    let mut statuses = Vec::new();
    for index in 0..8 {
        // A fresh branch for every request: more branches must never mean more quota.
        let branch = crate::harness::attenuate(&root, &format!("path-prefix = /{index}"));
        let response = call(server.fn_url("private", &format!("/{index}")), "GET", Some(&branch)).await;
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|&&status| status == 429).count(), 4, "{statuses:?}");
}

#[tokio::test]
async fn a_forged_key_id_is_refused_without_echoing_its_bytes() {
    let server = Server::start();
    server.deploy("hello", &guest("hello"));
    let key = MacaroonKey::generate(b"not this server's key");
    for key_id in ["00000000deadbeef", "\u{0}\u{0}<script>\u{1b}[31m"] {
        let forged = Macaroon::create(Some("ledge"), &key, format!("ledge1 {key_id} t1")).unwrap();
        let token = forged.serialize(Format::V2).unwrap();
        let response =
            client().get(server.fn_url("hello", "/")).bearer_auth(token.trim_end_matches('=')).send().await.unwrap();
        let detail = problem(response, 401).await["detail"].as_str().unwrap().to_string();
        assert!(detail.contains("not issued by this server"), "{detail}");
        let well_formed = key_id.len() == 16;
        assert_eq!(detail.contains(key_id), well_formed, "{detail}");
        assert!(!detail.contains('\u{0}') && !detail.contains("<script>"), "{detail}");
    }
}

/// The body of a GET.
async fn text(url: String) -> String {
    client().get(url).send().await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn a_revocation_holds_on_a_node_whose_engine_guests_filled() {
    let mut server = Server::start_with(&["--kv-max-bytes", "1048576"]);
    server.deploy("filler", &guest("misbehave"));
    server.set_policy("filler", "public = true\n[kv]\nmax_bytes = \"64MiB\"\n").await;
    let token = server.mint(&["op in manage"]);
    let functions = format!("{}/v1/functions", server.url);
    assert_eq!(call(functions.clone(), "GET", Some(&token)).await.status(), 200);
    let filled = text(server.fn_url("filler", "/kv-fill?kib=4")).await;
    assert!(filled.contains("budget"), "the guests filled the engine: {filled}");
    revoke(&server, &token);
    problem(call(functions.clone(), "GET", Some(&token)).await, 401).await;
    server.kill();
    server.restart();
    problem(call(format!("{}/v1/functions", server.url), "GET", Some(&token)).await, 401).await;
}

#[tokio::test]
async fn a_token_revoked_through_one_node_is_refused_on_a_node_whose_engine_is_full() {
    let etcd = crate::harness::Etcd::start();
    let endpoints = etcd.endpoints();
    let a = Server::start_with(&["--cluster", &endpoints, "--node-name", "a"]);
    let _b = Server::start_with(&["--cluster", &endpoints, "--node-name", "b"]);
    // C's engine is small, and its guests fill it.
    let c = Server::start_with(&["--cluster", &endpoints, "--node-name", "c", "--kv-max-bytes", "1048576"]);
    a.deploy("filler", &guest("misbehave"));
    a.set_policy("filler", "public = true\n[kv]\nmax_bytes = \"64MiB\"\n").await;
    let token = a.mint(&["op in manage"]);
    let on_c = format!("{}/v1/functions", c.url);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let filled = loop {
        // Until C has installed the function it proxies the fill to a node that has.
        let response = client().get(c.fn_url("filler", "/kv-fill?kib=4")).send().await.unwrap();
        let from_c = response.headers().get("ledge-node").is_some_and(|node| node == "c");
        let body = response.text().await.unwrap();
        if from_c || std::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(filled.contains("budget"), "the guests filled C's engine: {filled}");
    assert_eq!(call(on_c.clone(), "GET", Some(&token)).await.status(), 200);
    revoke(&a, &token);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while call(on_c.clone(), "GET", Some(&token)).await.status() != 401 {
        assert!(std::time::Instant::now() < deadline, "the revocation did not reach C within 2 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
