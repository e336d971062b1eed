//! `ledge dev [DIR...]`: builds each project's functions, serves them from an embedded node
//! (data in the first project's `.ledge/`, kept across runs), and rebuilds and redeploys a
//! function whenever its sources change.
//!
//! Invariants: a build that fails is printed and changes nothing (the last good version keeps
//! serving); a deploy replaces the live version atomically, so the first request after
//! "version N live" is served by version N; only requests from this machine skip tokens
//! ([`crate::http::App`]'s dev rule).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::project::{FunctionSpec, Project};
use super::serve::{init_logging, start};
use super::serve_args::{LogFormat, ServeArgs};
use crate::http::App;
use crate::registry::{PolicyChange, sha256_hex};

/// How often sources are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

pub async fn dev(dirs: Vec<PathBuf>, listen: SocketAddr) -> anyhow::Result<()> {
    let dirs = if dirs.is_empty() { vec![PathBuf::from(".")] } else { dirs };
    let projects = dirs.iter().map(|dir| Project::load(dir)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut names: Vec<&str> = projects.iter().flat_map(|p| p.functions.iter().map(|f| f.name.as_str())).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
        bail!("two projects define a function named `{}`", pair[0]);
    }
    let data_dir = projects[0].dir.join(".ledge");
    // `OTEL_EXPORTER_OTLP_ENDPOINT` turns export on here too, as for `ledge serve`.
    let args = ServeArgs::defaults(listen, &data_dir);
    let _log_writer = init_logging(LogFormat::Human, args.otlp_endpoint.is_some());
    let node = start(args, true).await?;
    println!("ledge dev listening on http://{} (data in {})", node.address, data_dir.display());
    for name in &names {
        println!("  {name}: http://{}/fn/{name}/", node.address);
    }
    for project in projects {
        for spec in project.functions.clone() {
            tokio::spawn(watch(node.app.clone(), Arc::new(project.clone()), spec));
        }
    }
    node.run(crate::http::server::shutdown_signal()).await
}

/// Builds and deploys `spec` now and after every change to its sources.
async fn watch(app: Arc<App>, project: Arc<Project>, spec: FunctionSpec) {
    let mut seen = None;
    loop {
        let sources = {
            let (project, spec) = (project.clone(), spec.clone());
            tokio::task::spawn_blocking(move || project.sources(&spec)).await.unwrap_or_default()
        };
        if seen.as_ref() != Some(&sources) {
            if seen.is_some() {
                println!("{}: change seen, rebuilding", spec.name);
            }
            seen = Some(sources);
            rebuild(&app, &project, &spec).await;
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

async fn rebuild(app: &App, project: &Arc<Project>, spec: &FunctionSpec) {
    let started = Instant::now();
    let built = {
        let (project, spec) = (project.clone(), spec.clone());
        tokio::task::spawn_blocking(move || project.build(&spec)).await
    };
    match built {
        Ok(Ok(())) => {}
        Ok(Err(output)) => return report_failure(app, spec, "build", &output),
        Err(join) => return report_failure(app, spec, "build", &join.to_string()),
    }
    let build_time = started.elapsed();
    let bytes = match std::fs::read(project.component(spec)) {
        Ok(bytes) => bytes,
        Err(error) => {
            let detail = format!("the build did not write {}: {error}", project.component(spec).display());
            return report_failure(app, spec, "build", &detail);
        }
    };
    let policy = spec.policy_text();
    if let Some(live) = app.registry.lookup(&spec.name)
        && live.meta.sha256 == sha256_hex(&bytes)
    {
        // Unchanged component (a restart of `ledge dev`): keep the version, apply the policy.
        if let Some(policy) = &policy
            && let Err(error) = app.registry.set_policy(&spec.name, policy, PolicyChange::Any).await
        {
            return report_failure(app, spec, "policy", &error.to_string());
        }
        println!("{}: version {} live (unchanged)", spec.name, live.meta.version);
        return;
    }
    let deploy_started = Instant::now();
    match app.registry.deploy(&spec.name, bytes, policy.as_deref(), PolicyChange::Any, None).await {
        Ok(deployed) => println!(
            "{}: version {} live (build {:.1} s, deploy {} ms)",
            spec.name,
            deployed.meta.version,
            build_time.as_secs_f64(),
            deploy_started.elapsed().as_millis()
        ),
        Err(error) => report_failure(app, spec, "deploy", &error.to_string()),
    }
}

fn report_failure(app: &App, spec: &FunctionSpec, what: &str, detail: &str) {
    let serving = match app.registry.lookup(&spec.name) {
        Some(live) => format!("still serving version {}", live.meta.version),
        None => "nothing deployed yet".to_string(),
    };
    println!("{}: {what} failed; {serving}\n{}", spec.name, detail.trim_end());
}
