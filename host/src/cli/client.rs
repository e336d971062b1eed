//! Client commands: `ledge deploy`, `functions`, `rm`, `backup`, ... talk to a server over HTTP.

use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

use super::ServerArgs;
use super::verification::VerifyArgs;
use crate::registry::FunctionMeta;
use crate::registry::config::ConfigListing;
use crate::registry::versions::Versions;

#[derive(Deserialize)]
struct ProblemReply {
    detail: String,
}

#[derive(Deserialize)]
struct ListReply {
    functions: Vec<FunctionMeta>,
}

/// An HTTP client for `server`: HTTPS trusts the system's roots plus `--ca-cert`.
fn client(server: &ServerArgs) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().use_rustls_tls();
    if let Some(path) = &server.ca_cert {
        let pem = std::fs::read(path).with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
        anyhow::ensure!(!certificates.is_empty(), "{} holds no PEM certificate", path.display());
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().context("cannot set up the HTTP client")
}

pub(super) fn request(
    server: &ServerArgs,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<reqwest::RequestBuilder> {
    let url = format!("{}{path}", server.server.trim_end_matches('/'));
    let builder = client(server)?.request(method, url);
    Ok(match &server.token {
        Some(token) => builder.bearer_auth(token),
        None => builder,
    })
}

/// Sends the request; a non-2xx answer becomes an error carrying the problem's detail.
pub(super) async fn send(builder: reqwest::RequestBuilder, server: &ServerArgs) -> anyhow::Result<reqwest::Response> {
    let response = builder.send().await.map_err(|error| {
        // reqwest's top-level message hides the cause (an untrusted certificate, a refused
        // connection): say all of it.
        let mut message = format!("cannot reach the ledge server at {}", server.server);
        let mut cause: Option<&dyn std::error::Error> = Some(&error);
        while let Some(error) = cause {
            message.push_str(&format!(": {error}"));
            cause = error.source();
        }
        anyhow::anyhow!(message)
    })?;
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    match serde_json::from_str::<ProblemReply>(&body) {
        Ok(problem) => bail!("{status}: {}", problem.detail),
        Err(_) => bail!("{status}: {}", body.trim()),
    }
}

/// `GET path`; a non-2xx answer becomes an error carrying the problem's detail.
pub async fn get(server: &ServerArgs, path: &str) -> anyhow::Result<reqwest::Response> {
    send(request(server, reqwest::Method::GET, path)?, server).await
}

/// Deploys `file`; with a policy, both go in one multipart request that the server applies
/// together or not at all.
pub async fn deploy(
    server: &ServerArgs,
    name: &str,
    file: &Path,
    policy: Option<&Path>,
    canary: Option<&str>,
    verify: &VerifyArgs,
) -> anyhow::Result<()> {
    let bytes = tokio::fs::read(file).await.with_context(|| format!("cannot read {}", file.display()))?;
    let policy = match policy {
        Some(path) => {
            Some(tokio::fs::read_to_string(path).await.with_context(|| format!("cannot read {}", path.display()))?)
        }
        None => None,
    };
    let canary = match canary {
        Some(share) => Some(
            share
                .trim_end_matches('%')
                .parse::<u8>()
                .ok()
                .filter(|p| (1..=99).contains(p))
                .ok_or_else(|| anyhow::anyhow!("--canary {share}: give a share from 1% to 99%"))?,
        ),
        None => None,
    };
    deploy_bytes(server, name, bytes, policy, canary, verify).await
}

/// Deploys every function of the project in `dir`, building those whose component is stale.
pub async fn deploy_project(server: &ServerArgs, dir: &Path, verify: &VerifyArgs) -> anyhow::Result<()> {
    let project = super::project::Project::load(dir)?;
    for spec in &project.functions {
        if project.is_stale(spec) {
            println!("building {}: {}", spec.name, spec.build);
            let (builder, spec_owned) = (project.clone(), spec.clone());
            tokio::task::spawn_blocking(move || builder.build(&spec_owned)).await?.map_err(anyhow::Error::msg)?;
        }
        let path = project.component(spec);
        let bytes = tokio::fs::read(&path).await.with_context(|| format!("cannot read {}", path.display()))?;
        deploy_bytes(server, &spec.name, bytes, spec.policy_text(), None, verify).await?;
    }
    Ok(())
}

async fn deploy_bytes(
    server: &ServerArgs,
    name: &str,
    bytes: Vec<u8>,
    policy: Option<String>,
    canary: Option<u8>,
    verify: &VerifyArgs,
) -> anyhow::Result<()> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(percent) = canary {
        query.append_pair("canary", &percent.to_string());
    }
    for (name, value) in verify.query() {
        query.append_pair(name, &value);
    }
    let query = query.finish();
    let path = if query.is_empty() { format!("/v1/functions/{name}") } else { format!("/v1/functions/{name}?{query}") };
    let builder = request(server, reqwest::Method::PUT, &path)?;
    let builder = match policy {
        Some(text) => {
            let form = reqwest::multipart::Form::new()
                .part("component", reqwest::multipart::Part::bytes(bytes).mime_str("application/wasm")?)
                .part("policy", reqwest::multipart::Part::text(text).mime_str("application/toml")?);
            builder.multipart(form)
        }
        None => builder.header("content-type", "application/wasm").body(bytes),
    };
    #[derive(serde::Deserialize)]
    struct Deployed {
        #[serde(flatten)]
        meta: FunctionMeta,
        verification: Option<crate::verify::Report>,
    }
    let Deployed { meta, verification } = send(builder, server).await?.json().await?;
    if let Some(report) = &verification {
        super::verification::print_report(report);
    }
    println!("deployed {} version {} ({} bytes, sha256 {})", meta.name, meta.version, meta.size, meta.sha256);
    Ok(())
}

pub async fn functions(server: &ServerArgs) -> anyhow::Result<()> {
    let reply: ListReply = send(request(server, reqwest::Method::GET, "/v1/functions")?, server).await?.json().await?;
    println!("{:<24} {:>8} {:>10}  {:<20}  SHA256", "NAME", "VERSION", "SIZE", "DEPLOYED");
    for meta in reply.functions {
        println!(
            "{:<24} {:>8} {:>10}  {:<20}  {}",
            meta.name,
            meta.version,
            meta.size,
            meta.deployed_at,
            &meta.sha256[..12.min(meta.sha256.len())]
        );
    }
    Ok(())
}

/// Lists the cluster's live nodes (`GET /v1/nodes`).
pub async fn nodes(server: &ServerArgs, json: bool) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Reply {
        nodes: Vec<crate::cluster::NodeInfo>,
        in_sync: bool,
    }
    let response = send(request(server, reqwest::Method::GET, "/v1/nodes")?, server).await?;
    if json {
        println!("{}", response.text().await?);
        return Ok(());
    }
    let reply: Reply = response.json().await?;
    println!(
        "{:<20} {:<32} {:<9} {:<12} {:>9} {:>6}  STARTED",
        "NAME", "ADDRESS", "VERSION", "COMMIT", "FUNCTIONS", "LOAD"
    );
    for node in &reply.nodes {
        // A node from before commits were published names none.
        let commit = if node.commit.is_empty() { "-" } else { node.commit.as_str() };
        println!(
            "{:<20} {:<32} {:<9} {:<12} {:>9} {:>6}  {}",
            node.name, node.address, node.version, commit, node.functions, node.load, node.started_at
        );
    }
    if !reply.in_sync {
        eprintln!("note: the node answering is not in sync with etcd; this list may be stale");
    }
    Ok(())
}

/// Removes a function and, unless `keep_data`, its keyspace.
pub async fn remove(server: &ServerArgs, name: &str, keep_data: bool) -> anyhow::Result<()> {
    let query = if keep_data { "?keep-data=true" } else { "" };
    send(request(server, reqwest::Method::DELETE, &format!("/v1/functions/{name}{query}"))?, server).await?;
    if keep_data {
        println!("removed {name}; its key-value data was kept and a function deployed as {name} later will see it");
    } else {
        println!("removed {name} and its key-value data");
    }
    Ok(())
}

/// Prints function `name`'s log lines (JSON as sent, or one readable line each), guest control
/// characters escaped unless `raw` (`log_text`).
pub async fn logs(
    server: &ServerArgs,
    name: &str,
    follow: bool,
    since: Option<&str>,
    json: bool,
    raw: bool,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let mut query = vec![];
    if follow {
        query.push("follow=true".to_string());
    }
    if let Some(since) = since {
        query.push(format!("since={since}"));
    }
    let path = format!("/v1/functions/{name}/logs?{}", query.join("&"));
    let response = send(request(server, reqwest::Method::GET, &path)?, server).await?;
    let mut body = response.bytes_stream();
    let mut pending = Vec::new();
    while let Some(chunk) = body.next().await {
        pending.extend_from_slice(&chunk.context("the log stream broke off")?);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line).trim().to_string();
            if !line.is_empty() {
                println!("{}", super::log_text::shown(&line, json, raw));
            }
        }
    }
    Ok(())
}

pub async fn versions(server: &ServerArgs, name: &str) -> anyhow::Result<()> {
    let path = format!("/v1/functions/{name}/versions");
    let versions: Versions = send(request(server, reqwest::Method::GET, &path)?, server).await?.json().await?;
    print_versions(&versions);
    Ok(())
}

/// `rollback`, then the resulting versions (`promote.rs` has `ledge promote`).
pub async fn change_version(server: &ServerArgs, name: &str, action: &str, version: Option<u64>) -> anyhow::Result<()> {
    let body = version.map(|v| v.to_string()).unwrap_or_default();
    let path = format!("/v1/functions/{name}/{action}");
    let versions: Versions =
        send(request(server, reqwest::Method::POST, &path)?.body(body), server).await?.json().await?;
    print_versions(&versions);
    Ok(())
}

pub(super) fn print_versions(versions: &Versions) {
    println!("{:>8}  {:<20}  {:>10}  STATE", "VERSION", "DEPLOYED", "SIZE");
    for meta in &versions.kept {
        let state = match versions.canary {
            _ if meta.version == versions.live => "live".to_string(),
            Some(canary) if canary.version == meta.version => format!("canary {}%", canary.percent),
            _ => String::new(),
        };
        println!("{:>8}  {:<20}  {:>10}  {state}", meta.version, meta.deployed_at, meta.size);
    }
}

pub async fn set_config(
    server: &ServerArgs,
    function: &str,
    key: &str,
    value: String,
    secret: bool,
) -> anyhow::Result<()> {
    let query = if secret { "?secret=true" } else { "" };
    let path = format!("/v1/functions/{function}/config/{key}{query}");
    send(request(server, reqwest::Method::PUT, &path)?.body(value), server).await?;
    println!("{function}: {key} set{}", if secret { " (secret)" } else { "" });
    Ok(())
}

pub async fn list_config(server: &ServerArgs, function: &str) -> anyhow::Result<()> {
    let path = format!("/v1/functions/{function}/config");
    let listing: ConfigListing = send(request(server, reqwest::Method::GET, &path)?, server).await?.json().await?;
    for (key, value) in &listing.values {
        println!("{key}={value}");
    }
    for key in &listing.secrets {
        println!("{key}=(secret)");
    }
    Ok(())
}

pub async fn remove_config(server: &ServerArgs, function: &str, key: &str) -> anyhow::Result<()> {
    send(request(server, reqwest::Method::DELETE, &format!("/v1/functions/{function}/config/{key}"))?, server).await?;
    println!("{function}: {key} removed");
    Ok(())
}

pub async fn revoke(server: &ServerArgs, token_id: &str) -> anyhow::Result<()> {
    send(request(server, reqwest::Method::POST, "/v1/tokens/revoke")?.body(token_id.to_string()), server).await?;
    Ok(())
}

/// Removes a file when dropped, unless disarmed: a download that fails (or is interrupted)
/// leaves nothing behind.
struct RemoveOnDrop(Option<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `ledge backup --out FILE`: downloads `GET /v1/backup` into `FILE.partial` beside it (mode
/// 0600: the archive holds the root key and the secrets key), verifies it, fsyncs it and
/// renames it to `FILE`. On any failure, or Ctrl-C, the partial file is removed.
pub async fn backup(server: &ServerArgs, out: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use tokio::io::AsyncWriteExt;

    let name = out.file_name().ok_or_else(|| anyhow::anyhow!("--out {}: name a file", out.display()))?;
    let partial = out.with_file_name(format!("{}.partial", name.to_string_lossy()));
    // A partial file of an earlier, interrupted run is ours to replace.
    match std::fs::remove_file(&partial) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            bail!("cannot replace {}: {error}", partial.display())
        }
        _ => {}
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut cleanup = RemoveOnDrop(Some(partial.clone()));
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", partial.display()))?;
    let mut file = tokio::fs::File::from_std(file);
    let download = async {
        let mut response = send(request(server, reqwest::Method::GET, "/v1/backup")?, server).await?;
        while let Some(chunk) = response.chunk().await.context("the download broke off")? {
            file.write_all(&chunk).await.with_context(|| format!("cannot write {}", partial.display()))?;
        }
        file.flush().await?;
        file.sync_all().await.with_context(|| format!("cannot sync {}", partial.display()))?;
        anyhow::Ok(())
    };
    tokio::select! {
        result = download => result?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; {} removed", partial.display()),
    }
    let checked = partial.clone();
    let manifest = tokio::task::spawn_blocking(move || crate::backup::verify(&checked))
        .await?
        .map_err(|error| anyhow::anyhow!("the downloaded backup does not verify: {error}"))?;
    std::fs::rename(&partial, out)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), out.display()))?;
    cleanup.0 = None;
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    crate::storage::sync_dir(dir).with_context(|| format!("cannot sync {}", dir.display()))?;
    let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or_default();
    println!(
        "backup written to {}: kv stamp {}, {} functions, {size} bytes (mode 0600: it holds the node's keys)",
        out.display(),
        manifest.kv_stamp,
        manifest.functions().len()
    );
    if !manifest.has_secrets_key() {
        println!("note: the node keeps its secrets key outside its data dir (--secrets-key): back that file up too");
    }
    Ok(())
}
