//! Client commands: `ledge deploy`, `functions`, `rm` talk to a server over HTTP.

use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

use super::ServerArgs;
use crate::registry::FunctionMeta;

#[derive(Deserialize)]
struct ProblemReply {
    detail: String,
}

#[derive(Deserialize)]
struct ListReply {
    functions: Vec<FunctionMeta>,
}

fn request(server: &ServerArgs, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    let url = format!("{}{path}", server.server.trim_end_matches('/'));
    let builder = reqwest::Client::new().request(method, url);
    match &server.token {
        Some(token) => builder.bearer_auth(token),
        None => builder,
    }
}

/// Sends the request; a non-2xx answer becomes an error carrying the problem's detail.
async fn send(builder: reqwest::RequestBuilder, server: &ServerArgs) -> anyhow::Result<reqwest::Response> {
    let response =
        builder.send().await.with_context(|| format!("cannot reach the ledge server at {}", server.server))?;
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

pub async fn deploy(server: &ServerArgs, name: &str, file: &Path, policy: Option<&Path>) -> anyhow::Result<()> {
    let bytes = tokio::fs::read(file).await.with_context(|| format!("cannot read {}", file.display()))?;
    if let Some(policy) = policy {
        let text = tokio::fs::read(policy).await.with_context(|| format!("cannot read {}", policy.display()))?;
        send(request(server, reqwest::Method::PUT, &format!("/v1/functions/{name}/policy")).body(text), server)
            .await
            .context("the policy was refused")?;
    }
    let response = send(
        request(server, reqwest::Method::PUT, &format!("/v1/functions/{name}"))
            .header("content-type", "application/wasm")
            .body(bytes),
        server,
    )
    .await?;
    let meta: FunctionMeta = response.json().await?;
    println!("deployed {} version {} ({} bytes, sha256 {})", meta.name, meta.version, meta.size, meta.sha256);
    Ok(())
}

pub async fn functions(server: &ServerArgs) -> anyhow::Result<()> {
    let reply: ListReply = send(request(server, reqwest::Method::GET, "/v1/functions"), server).await?.json().await?;
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

pub async fn remove(server: &ServerArgs, name: &str) -> anyhow::Result<()> {
    send(request(server, reqwest::Method::DELETE, &format!("/v1/functions/{name}")), server).await?;
    println!("removed {name}");
    Ok(())
}

pub async fn revoke(server: &ServerArgs, token_id: &str) -> anyhow::Result<()> {
    send(request(server, reqwest::Method::POST, "/v1/tokens/revoke").body(token_id.to_string()), server).await?;
    Ok(())
}
