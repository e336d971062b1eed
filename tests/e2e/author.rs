//! The function author's loop: `ledge new` in Rust, Python and JavaScript, `ledge dev` with live
//! reload, and `ledge deploy` from a project.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use crate::harness::{Server, client, guest, ledge, problem, repo_root};

/// PATH without the folders that hold componentize-py or componentize-js: a project finds its
/// tools in its own `.venv/bin` and `node_modules/.bin` (scripts/setup.sh installs them in
/// target/pyenv and target/node, which the tests link there).
fn path_without_tools() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    let tools = ["componentize-py", "componentize-js"];
    let kept: Vec<&str> =
        path.split(':').filter(|dir| !tools.iter().any(|tool| Path::new(dir).join(tool).exists())).collect();
    kept.join(":")
}

/// Links the tools scripts/setup.sh installed where a project's own would be: componentize-py's
/// virtual env as `.venv`, componentize-js's `node_modules`.
fn link_tools(project: &Path) {
    let root = repo_root();
    if project.join("package.json").exists() {
        std::os::unix::fs::symlink(root.join("target/node/node_modules"), project.join("node_modules")).unwrap();
    } else {
        std::os::unix::fs::symlink(root.join("target/pyenv"), project.join(".venv")).unwrap();
    }
}

fn new_project(dir: &Path, name: &str, lang: &str) -> PathBuf {
    let output = ledge().args(["new", name, "--lang", lang, "--dir"]).arg(dir).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("ledge dev"));
    dir.join(name)
}

/// A running `ledge dev`, its stdout line by line.
struct Dev {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    url: String,
}

impl Dev {
    fn start(projects: &[&Path]) -> Dev {
        let mut child = ledge()
            .arg("dev")
            .args(projects)
            .args(["--listen", "127.0.0.1:0"])
            .env("PATH", path_without_tools())
            .env("LEDGE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ledge dev");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let mut dev = Dev { child, lines, seen: Vec::new(), url: String::new() };
        let line = dev.wait_for(|l| l.starts_with("ledge dev listening on "), Duration::from_secs(60));
        dev.url = line.split_whitespace().nth(4).unwrap().to_string();
        dev
    }

    /// The next line matching `wanted`, failing with everything printed after `timeout`.
    fn wait_for(&mut self, wanted: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("ledge dev never printed the line expected; it printed:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Waits until each of `names` printed `NAME: version N live`, in any order.
    fn wait_for_live(&mut self, names: &[&str], version: u64, timeout: Duration) {
        let mut waiting: Vec<String> = names.iter().map(|name| format!("{name}: version {version} live")).collect();
        while !waiting.is_empty() {
            let line = self.wait_for(|l| waiting.iter().any(|w| l.starts_with(w.as_str())), timeout);
            waiting.retain(|w| !line.starts_with(w.as_str()));
        }
    }

    /// Everything printed since the last wait ended (for compiler messages).
    fn drain(&mut self) -> String {
        std::thread::sleep(Duration::from_millis(300));
        let mut text = String::new();
        while let Ok(line) = self.lines.try_recv() {
            text.push_str(&line);
            text.push('\n');
            self.seen.push(line);
        }
        text
    }

    async fn get(&self, name: &str) -> String {
        self.request(name).await.text().await.unwrap()
    }

    async fn request(&self, name: &str) -> reqwest::Response {
        client().get(format!("{}/fn/{name}/", self.url)).send().await.unwrap()
    }

    async fn post(&self, name: &str) -> String {
        client().post(format!("{}/fn/{name}/", self.url)).send().await.unwrap().text().await.unwrap()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces `from` with `to` in `file`; returns when the edit was saved.
fn edit(file: &Path, from: &str, to: &str) -> Instant {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", file.display());
    std::fs::write(file, text.replace(from, to)).unwrap();
    Instant::now()
}

/// Waits for `name`'s next version to go live, then for the first response that shows `text`;
/// returns (save → live, live → first new response).
async fn reloaded(dev: &mut Dev, name: &str, saved: Instant, text: &str) -> (Duration, Duration) {
    dev.wait_for(|l| l.starts_with(&format!("{name}: version ")) && l.contains("live"), Duration::from_secs(180));
    let live = Instant::now();
    loop {
        if dev.get(name).await.contains(text) {
            break;
        }
        assert!(live.elapsed() < Duration::from_secs(1), "the new build was not served within a second");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (live - saved, live.elapsed())
}

#[tokio::test]
async fn a_rust_project_reloads_on_save_survives_a_syntax_error_and_deploys_as_its_manifest_says() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_project(dir.path(), "hello-rs", "rust");
    let source = root.join("src/lib.rs");
    // The first build fails on a type error.
    edit(&source, "unwrap_or(0) + 1", "unwrap_or(0) + \"1\"");
    let mut dev = Dev::start(&[&root]);
    // Until then, the function says it is building: its first build compiles every dependency
    // and takes seconds, while this request comes right after the server starts listening.
    let building = dev.request("hello-rs").await;
    assert_eq!(building.headers()["retry-after"], "5");
    let building = problem(building, 503).await;
    assert!(building["detail"].as_str().unwrap().starts_with("building hello-rs (first build)"), "{building}");
    dev.wait_for(|l| l.starts_with("hello-rs: build failed; nothing deployed yet"), Duration::from_secs(300));
    // Nothing is live: the function answers with the compiler's first error, bounded.
    let failed = problem(dev.request("hello-rs").await, 500).await;
    let detail = failed["detail"].as_str().unwrap();
    let first_error = detail.split_once("the first error:\n").unwrap().1;
    assert!(first_error.starts_with("error[E0277]: cannot add") && first_error.contains("src/lib.rs"), "{detail}");
    assert!(detail.len() <= 4200, "{} bytes", detail.len());
    let saved = edit(&source, "unwrap_or(0) + \"1\"", "unwrap_or(0) + 1");
    let timing = reloaded(&mut dev, "hello-rs", saved, "Hello from hello-rs").await;
    println!("rust: fixed first build → live, live → served: {timing:?}");
    assert_eq!(dev.get("hello-rs").await, "Hello from hello-rs! You asked for /\n");
    assert_eq!(dev.post("hello-rs").await, "visit 1\n");
    assert_eq!(dev.post("hello-rs").await, "visit 2\n");

    let saved = edit(&source, "\"Hello from", "\"Hey from");
    let timing = reloaded(&mut dev, "hello-rs", saved, "Hey from hello-rs").await;
    println!("rust: save → live, live → served: {timing:?}");

    // A syntax error: the compiler's message is shown and the last good version keeps serving.
    edit(&source, "fn handle(", "fn handle((");
    dev.wait_for(|l| l.starts_with("hello-rs: build failed; still serving version 2"), Duration::from_secs(180));
    assert!(dev.drain().contains("error"), "the compiler's message was not shown");
    assert_eq!(dev.get("hello-rs").await, "Hey from hello-rs! You asked for /\n");
    let saved = edit(&source, "fn handle((", "fn handle(");
    reloaded(&mut dev, "hello-rs", saved, "Hey from hello-rs").await;
    // The data in .ledge/ outlives the dev server.
    drop(dev);
    let dev = Dev::start(&[&root]);
    assert_eq!(dev.post("hello-rs").await, "visit 3\n");
    drop(dev);

    // `ledge deploy` with no arguments deploys the project to a server, with its policy.
    let server = Server::start();
    let deployed = ledge()
        .arg("deploy")
        .current_dir(&root)
        .env("LEDGE_SERVER", &server.url)
        .env("LEDGE_TOKEN", &server.admin_token)
        .output()
        .unwrap();
    assert!(deployed.status.success(), "{}", String::from_utf8_lossy(&deployed.stderr));
    let greeting = client().get(server.fn_url("hello-rs", "/x")).send().await.unwrap().text().await.unwrap();
    assert_eq!(greeting, "Hey from hello-rs! You asked for /x\n");
}

#[tokio::test]
async fn python_and_javascript_projects_run_together_under_one_dev_server() {
    let dir = tempfile::tempdir().unwrap();
    let python = new_project(dir.path(), "hello-py", "python");
    let js = new_project(dir.path(), "hello-js", "js");
    // Each finds its build tool in the project (.venv/bin, node_modules/.bin), not on PATH.
    link_tools(&python);
    link_tools(&js);
    // The JavaScript one is private: only requests from this machine get through without a token.
    let manifest = js.join("ledge.toml");
    edit(&manifest, "public = true", "public = false");
    let mut dev = Dev::start(&[&python, &js]);
    dev.wait_for_live(&["hello-py", "hello-js"], 1, Duration::from_secs(300));
    assert_eq!(dev.get("hello-py").await, "Hello from hello-py! You asked for /\n");
    assert_eq!(dev.get("hello-js").await, "Hello from hello-js! You asked for /\n");
    for expected in ["visit 1\n", "visit 2\n"] {
        assert_eq!(dev.post("hello-py").await, expected);
        assert_eq!(dev.post("hello-js").await, expected);
    }
    // A page on another origin that resolves its own name to 127.0.0.1 sends its own Host.
    let rebinding =
        client().get(format!("{}/fn/hello-js/", dev.url)).header("host", "attacker.example").send().await.unwrap();
    assert_eq!(rebinding.status(), 401);

    // Both edited at once: both rebuild (in parallel) and each serves its new text.
    let saved = edit(&python.join("app.py"), "\"Hello from", "\"Howdy from");
    edit(&js.join("app.js"), "'Hello from", "'Howdy from");
    dev.wait_for_live(&["hello-py", "hello-js"], 2, Duration::from_secs(300));
    println!("python and javascript, both edited: save → both live in {:?}", saved.elapsed());
    assert_eq!(dev.get("hello-py").await, "Howdy from hello-py! You asked for /\n");
    assert_eq!(dev.get("hello-js").await, "Howdy from hello-js! You asked for /\n");
    assert_eq!(dev.post("hello-py").await, "visit 3\n");
}

/// A build that fails for want of its tool says which command installs it: `ledge deploy`
/// before it uploads anything, and the dev server to a request (nothing of it is live).
#[tokio::test]
async fn a_missing_build_tool_names_the_command_that_installs_it() {
    let dir = tempfile::tempdir().unwrap();
    let python = new_project(dir.path(), "tool-py", "python");
    let js = new_project(dir.path(), "tool-js", "js");
    for (project, command) in
        [(&python, "python3 -m venv .venv && .venv/bin/pip install componentize-py"), (&js, "npm install")]
    {
        let deployed = ledge()
            .arg("deploy")
            .current_dir(project)
            .env("PATH", path_without_tools())
            .env("LEDGE_SERVER", "http://127.0.0.1:9")
            .env("LEDGE_TOKEN", "unused")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&deployed.stderr);
        assert_eq!(deployed.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&format!("run `{command}` in {}", project.display())), "{stderr}");
    }
    let mut dev = Dev::start(&[&python]);
    dev.wait_for(|l| l.starts_with("tool-py: build failed; nothing deployed yet"), Duration::from_secs(60));
    let failed = problem(dev.request("tool-py").await, 500).await;
    let detail = failed["detail"].as_str().unwrap();
    assert!(detail.contains("componentize-py is not installed: run `python3 -m venv .venv"), "{detail}");
    assert!(detail.contains("componentize-py: not found"), "{detail}");
    // A name no project declares is missing, as on any server (this machine needs no token).
    problem(dev.request("nothing-here").await, 404).await;
}

/// A web page on another site can send requests to 127.0.0.1, and the dev server lets this
/// machine invoke without a token: it refuses any request with a foreign `Origin` (or one the
/// browser marks cross-site), on `/fn/` and on a route alike, whatever the method, while curl
/// and a frontend on another loopback port keep working.
#[tokio::test]
async fn the_dev_server_refuses_cross_site_requests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("misbehave"), dir.path().join("app.wasm")).unwrap();
    let manifest = "[[function]]\nname = \"app\"\nbuild = \"true\"\ncomponent = \"app.wasm\"\n\
                    [[function.policy.route]]\npath = \"/app\"\n";
    std::fs::write(dir.path().join("ledge.toml"), manifest).unwrap();
    let mut dev = Dev::start(&[dir.path()]);
    dev.wait_for_live(&["app"], 1, Duration::from_secs(120));
    let client = client();
    for url in [format!("{}/fn/app/", dev.url), format!("{}/app/x", dev.url)] {
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let send = |header: Option<(&'static str, &'static str)>| {
                let request = client.request(method.clone(), &url);
                match header {
                    Some((name, value)) => request.header(name, value),
                    None => request,
                }
                .send()
            };
            for origin in ["http://evil.example", "null", "http://localhost.evil.example"] {
                let refused = problem(send(Some(("origin", origin))).await.unwrap(), 403).await;
                let detail = refused["detail"].as_str().unwrap();
                assert!(detail.contains("the dev server refuses cross-site requests"), "{method} {url}: {detail}");
            }
            // A link, an image or a form GET from another site carries no Origin.
            problem(send(Some(("sec-fetch-site", "cross-site"))).await.unwrap(), 403).await;
            let curl_or_local_frontend =
                [None, Some(("origin", "http://localhost:5173")), Some(("origin", "http://127.0.0.1:3000"))];
            for allowed in curl_or_local_frontend {
                let response = send(allowed).await.unwrap();
                assert_eq!(response.status(), 200, "{method} {url} with {allowed:?}");
                assert_eq!(response.text().await.unwrap(), "fine\n");
            }
        }
    }
}

#[test]
fn a_project_manifest_that_is_wrong_is_refused_before_anything_is_built() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ledge.toml"),
        "[[function]]\nname = \"Bad Name\"\nbuild = \"true\"\ncomponent = \"x.wasm\"\n",
    )
    .unwrap();
    let output = ledge().arg("dev").arg(dir.path()).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid function name"));
    let none = Command::new(env!("CARGO_BIN_EXE_ledge")).arg("deploy").current_dir(std::env::temp_dir()).output();
    assert_eq!(none.unwrap().status.code(), Some(1));
}
