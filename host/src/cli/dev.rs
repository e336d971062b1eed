//! `ledge dev [DIR...]`: builds each project's functions, serves them from an embedded node
//! (data in the first project's `.ledge/`, kept across runs), and rebuilds and redeploys a
//! function whenever its sources change.
//!
//! Invariants: a build that fails is printed and changes nothing (the last good version keeps
//! serving); a deploy replaces the live version atomically, so the first request after
//! "version N live" is served by version N; only requests from this machine skip tokens
//! ([`crate::http::App`]'s dev rule). Until a function's first version is live, a request for
//! it says why (`App::dev_builds`): 503 with `Retry-After` while it builds, 500 with the first
//! error while its last build has failed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::project::{FunctionSpec, Project, first_error};
use super::serve::{init_logging, start};
use super::serve_args::{LogFormat, ServeArgs};
use crate::http::App;
use crate::http::dev_builds::Pending;
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
    // Before the first request can arrive: what is not deployed yet is building.
    for spec in projects.iter().flat_map(|project| &project.functions) {
        if node.app.registry.lookup(&spec.name).is_none() {
            node.app.dev_builds.set(&spec.name, Pending::Building);
        }
    }
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

/// A failed build's error stays what requests get while the next build runs: it is the last
/// thing known until a build succeeds.
async fn rebuild(app: &App, project: &Arc<Project>, spec: &FunctionSpec) {
    let started = Instant::now();
    let built = {
        let (project, spec) = (project.clone(), spec.clone());
        tokio::task::spawn_blocking(move || project.build(&spec)).await
    };
    match built {
        Ok(Ok(())) => {}
        Ok(Err(failure)) => return report_failure(app, spec, "build", &failure.to_string(), failure.first_error()),
        Err(join) => return report_failure(app, spec, "build", &join.to_string(), join.to_string()),
    }
    let build_time = started.elapsed();
    let bytes = match std::fs::read(project.component(spec)) {
        Ok(bytes) => bytes,
        Err(error) => {
            let detail = format!("the build did not write {}: {error}", project.component(spec).display());
            return report_failure(app, spec, "build", &detail, detail.clone());
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
            return report_failure(app, spec, "policy", &error.to_string(), error.to_string());
        }
        app.dev_builds.clear(&spec.name);
        println!("{}: version {} live (unchanged)", spec.name, live.meta.version);
        return;
    }
    let deploy_started = Instant::now();
    match app.registry.deploy(&spec.name, bytes, policy.as_deref(), PolicyChange::Any, None).await {
        Ok(deployed) => {
            app.dev_builds.clear(&spec.name);
            println!(
                "{}: version {} live (build {:.1} s, deploy {} ms)",
                spec.name,
                deployed.meta.version,
                build_time.as_secs_f64(),
                deploy_started.elapsed().as_millis()
            )
        }
        Err(error) => report_failure(app, spec, "deploy", &error.to_string(), first_error(&error.to_string())),
    }
}

/// Prints what failed; while nothing is live, requests for the function answer with `first`
/// (the first error, bounded) until a build succeeds.
fn report_failure(app: &App, spec: &FunctionSpec, what: &str, detail: &str, first: String) {
    let serving = match app.registry.lookup(&spec.name) {
        Some(live) => {
            app.dev_builds.clear(&spec.name);
            format!("still serving version {}", live.meta.version)
        }
        None => {
            app.dev_builds.set(&spec.name, Pending::Failed(first));
            "nothing deployed yet".to_string()
        }
    };
    println!("{}: {what} failed; {serving}\n{}", spec.name, detail.trim_end());
}
