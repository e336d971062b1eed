//! What every end-to-end test stands on: guests built once per run for wasm32-wasip2, and a
//! real `ledge serve` process on an ephemeral loopback port with its own data dir.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const LEDGE: &str = env!("CARGO_BIN_EXE_ledge");

/// A command running the `ledge` binary; under `LEDGE_RUNNER` (e.g. `qemu-aarch64 -L
/// /usr/aarch64-linux-gnu`) when the binary is for another architecture than the machine.
pub fn ledge() -> Command {
    let mut command = match std::env::var("LEDGE_RUNNER").ok().filter(|r| !r.trim().is_empty()) {
        Some(runner) => {
            let mut parts = runner.split_whitespace();
            let mut command = Command::new(parts.next().expect("runner program"));
            command.args(parts).arg(LEDGE);
            command
        }
        None => Command::new(LEDGE),
    };
    // `ledge replay` caches compiled code: in the build folder, not the user's home.
    command.env("XDG_CACHE_HOME", Path::new(LEDGE).with_file_name("ledge-test-cache"));
    command
}

/// The version and commit `ledge --version` names (`ledge X.Y.Z (COMMIT) wasmtime ...`).
pub fn build_version() -> (String, String) {
    let output = ledge().arg("--version").output().expect("ledge --version");
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let words: Vec<&str> = text.split_whitespace().collect();
    let commit = words.get(2).and_then(|c| c.strip_prefix('(')?.strip_suffix(')'));
    match (words.get(1), commit) {
        (Some(version), Some(commit)) => (version.to_string(), commit.to_string()),
        _ => panic!("not `ledge X.Y.Z (COMMIT) ...`: {text}"),
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_path_buf()
}

/// Builds a guest workspace for wasm32-wasip2 (once per test run; cargo makes reruns cheap).
fn build_workspace(dir: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet"])
        .current_dir(dir)
        // The host build's flags are not the guests'.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("running cargo for the guests");
    assert!(status.success(), "building the guests in {} failed", dir.display());
    dir.join("target/wasm32-wasip2/release")
}

/// The path of a compiled guest: an example from `functions/` or a test guest from
/// `tests/guests/` (crate name with `-` as `_`).
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    let (examples, test_guests) = BUILT.get_or_init(|| {
        (build_workspace(&repo_root().join("functions")), build_workspace(&repo_root().join("tests/guests")))
    });
    let file = format!("{}.wasm", name.replace('-', "_"));
    [examples, test_guests]
        .iter()
        .map(|dir| dir.join(&file))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("no guest named {name}"))
}

/// The Python component, built with componentize-py (installed by scripts/test.sh).
pub fn python_guest() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let source = repo_root().join("tests/guests/py-hello");
            let output = repo_root().join("tests/guests/target/py-hello.wasm");
            let venv_tool = repo_root().join("target/pyenv/bin/componentize-py");
            let tool = if venv_tool.exists() { venv_tool } else { PathBuf::from("componentize-py") };
            let status = Command::new(&tool)
                .args(["-d", "wit", "-w", "hello", "componentize", "app", "-o"])
                .arg(&output)
                .current_dir(&source)
                .status()
                .unwrap_or_else(|e| panic!("running {} (scripts/test.sh installs it): {e}", tool.display()));
            assert!(status.success(), "componentize-py failed");
            output
        })
        .clone()
}

/// A running `ledge serve`. Killed (SIGKILL) on drop.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub data_dir: PathBuf,
    log: PathBuf,
    extra: Vec<String>,
    /// Extra environment variables for `ledge serve`.
    env: Vec<(String, String)>,
    /// The admin token the server wrote on first start.
    pub admin_token: String,
    /// Every line the server printed on stdout.
    printed: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Send stderr to a pipe the test reads (or leaves unread) instead of the log file.
    stderr_piped: bool,
    stderr: Option<ChildStderr>,
    _temp: Option<tempfile::TempDir>,
}

impl Server {
    /// A server on a fresh data dir.
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// A server on a fresh data dir with extra `ledge serve` arguments.
    pub fn start_with(extra: &[&str]) -> Server {
        Self::start_prepared(extra, |_| {})
    }

    /// A server on a data dir that `prepare` makes first (e.g. `ledge restore` into it; the
    /// folder does not exist when it is called), with extra `ledge serve` arguments.
    pub fn start_prepared(extra: &[&str], prepare: impl FnOnce(&Path)) -> Server {
        Self::start_full(extra, prepare, false, &[])
    }

    /// A server on a fresh data dir with extra `ledge serve` arguments and extra environment
    /// variables (e.g. the standard `OTEL_*` ones).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_full(extra, |_| {}, false, env)
    }

    /// A server on a fresh data dir whose stderr is a pipe: [`Server::take_stderr`] hands it
    /// to the test, and nothing reads it until the test does ([`Server::log`] stays empty).
    pub fn start_with_piped_stderr() -> Server {
        Self::start_full(&[], |_| {}, true, &[])
    }

    fn start_full(extra: &[&str], prepare: impl FnOnce(&Path), stderr_piped: bool, env: &[(&str, &str)]) -> Server {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path().join("data");
        prepare(&data_dir);
        let mut server = Server {
            child: None,
            url: String::new(),
            log: temp.path().join("ledge.log"),
            data_dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect(),
            admin_token: String::new(),
            printed: Default::default(),
            stderr_piped,
            stderr: None,
            _temp: Some(temp),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        self.spawn_then(true);
    }

    /// Starts the server; with `wait_for_loads`, returns only once it has loaded its functions.
    fn spawn_then(&mut self, wait_for_loads: bool) {
        let loads_before = self.loads_logged();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let policies = self.data_dir.with_file_name("policies");
        std::fs::create_dir_all(&policies).expect("policies dir");
        // Functions are public in these tests unless a test says otherwise; the token tests
        // make theirs private with a policy.
        let default_policy = policies.join("default.toml");
        if !default_policy.exists() {
            // Load tests must not meet the rate limiter; the rate tests set their own quotas.
            let policy = "public = true\n[rate]\nquota = 1000000\nwindow = \"1s\"\n[limits]\nmax_concurrency = 250\n";
            std::fs::write(&default_policy, policy).expect("default policy");
        }
        let mut child = ledge()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir)
            .arg("--policies")
            .arg(&policies)
            .args(&self.extra)
            // Extra arguments for every server of a run, e.g. `--profile small` under emulation.
            .args(std::env::var("LEDGE_TEST_SERVE_ARGS").unwrap_or_default().split_whitespace())
            .env("LEDGE_LOG", "info")
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::piped())
            .stderr(if self.stderr_piped { Stdio::piped() } else { Stdio::from(log) })
            .spawn()
            .expect("spawning ledge serve");
        self.stderr = child.stderr.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        let printed = self.printed.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(url) = line.strip_prefix("ledge listening on ") {
                    let _ = sender.send(url.to_string());
                }
                printed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(line);
            }
        });
        // Generous: under qemu-user on a loaded 2-core machine one start took over 60 s.
        self.url = receiver.recv_timeout(Duration::from_secs(180)).unwrap_or_else(|_| {
            panic!("ledge did not start; log:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default())
        });
        self.child = Some(child);
        if wait_for_loads && !self.stderr_piped {
            self.wait_for_loads(loads_before);
        }
        let token = std::fs::read_to_string(self.data_dir.join("admin.token")).expect("admin.token written at start");
        self.admin_token = token.trim().to_string();
    }

    /// How many times the log says the start's loads ended ("functions loaded").
    fn loads_logged(&self) -> usize {
        std::fs::read_to_string(&self.log).map_or(0, |log| log.matches("functions loaded").count())
    }

    /// Waits until the server has loaded the code of the functions it found at start (it
    /// listens before): tests then see every function, its load counted and logged, as a
    /// start used to leave them.
    fn wait_for_loads(&self, before: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        while self.loads_logged() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "ledge did not load its functions; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `ledge token mint` from this server's data dir with `caveats`, asserting success.
    pub fn mint(&self, caveats: &[&str]) -> String {
        let mut command = ledge();
        command.args(["token", "mint", "--data-dir"]).arg(&self.data_dir);
        for caveat in caveats {
            command.args(["--caveat", caveat]);
        }
        let output = command.output().expect("ledge token mint");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("utf-8").trim().to_string()
    }

    /// An HTTP client that sends the admin token.
    pub fn admin(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        let value = format!("Bearer {}", self.admin_token);
        headers.insert(reqwest::header::AUTHORIZATION, value.parse().expect("header value"));
        reqwest::Client::builder().default_headers(headers).timeout(Duration::from_secs(60)).build().expect("client")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// Waits for the server to exit by itself (after a signal the test sent).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server is running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("waiting for ledge") {
                return status;
            }
            assert!(Instant::now() < deadline, "ledge did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `PUT /v1/functions/{name}/policy`, asserting it is accepted.
    pub async fn set_policy(&self, name: &str, policy: &str) {
        let response =
            self.admin().put(format!("{}/v1/functions/{name}/policy", self.url)).body(policy.to_string()).send().await;
        assert_eq!(response.expect("policy upload").status(), 204);
    }

    /// `ledge deploy` against a TLS server with a self-signed certificate (the CLI trusts
    /// nothing it was not told to, so this deploys over the API with verification off).
    pub fn deploy_insecure(&self, name: &str, file: &Path) {
        let output = Command::new("curl")
            .args(["-sSf", "-k", "-X", "PUT", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .args(["-H", &format!("authorization: Bearer {}", self.admin_token)])
            .arg(format!("{}/v1/functions/{name}", self.url))
            .output()
            .expect("curl");
        assert!(output.status.success(), "deploy over TLS failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Everything the server printed on stdout so far.
    pub fn printed(&self) -> Vec<String> {
        self.printed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The server's stderr, from a server started with [`Server::start_with_piped_stderr`].
    pub fn take_stderr(&mut self) -> ChildStderr {
        self.stderr.take().expect("a server started with piped stderr")
    }

    /// Everything the server logged so far. A thread writes the server's log behind it in
    /// batches (every 20 ms), so this first waits until the file has not grown for 60 ms (at
    /// most a second).
    pub fn log(&self) -> String {
        let (mut last, mut unchanged) = (None, 0);
        for _ in 0..100 {
            let size = std::fs::metadata(&self.log).map(|m| m.len()).ok();
            unchanged = if size.is_some() && size == last { unchanged + 1 } else { 0 };
            if unchanged == 6 {
                break;
            }
            last = size;
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: a crash, no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        self.wait_exit()
    }

    /// Starts the server again on the same data dir (after `kill` or `terminate`).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts the server again, returning as soon as it listens: the code of its functions may
    /// still be loading.
    pub fn restart_listening(&mut self) {
        self.kill();
        self.spawn_then(false);
    }

    /// Runs a client command of the `ledge` CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        ledge()
            .args(args)
            .env("LEDGE_SERVER", &self.url)
            .env("LEDGE_TOKEN", &self.admin_token)
            .output()
            .expect("running the ledge CLI")
    }

    /// A client command that must succeed; its standard output.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("utf-8 output")
    }

    /// `ledge deploy NAME FILE`, asserting success.
    pub fn deploy(&self, name: &str, file: &Path) {
        let output = self.cli(&["deploy", name, file.to_str().expect("utf-8 path")]);
        assert!(output.status.success(), "deploy {name} failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    pub fn fn_url(&self, name: &str, rest: &str) -> String {
        format!("{}/fn/{name}{rest}", self.url)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A GET of `path` on `server` from source address `source` (a loopback address: callers told
/// apart by address, as rate limits and canaries tell them): the status and the lowercased
/// header lines.
pub async fn get_from(server: &Server, path: &str, source: std::net::IpAddr) -> (u16, Vec<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address: std::net::SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket.connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let head = response.split("\r\n\r\n").next().unwrap_or_default();
    let status = head.get(9..12).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("{response}"));
    (status, head.lines().skip(1).map(str::to_ascii_lowercase).collect())
}

/// The version of `function` that served a GET of its `/` from `source` (see [`get_from`]).
pub async fn version_from(server: &Server, function: &str, source: std::net::IpAddr) -> u64 {
    let (status, headers) = get_from(server, &format!("/fn/{function}/"), source).await;
    assert_eq!(status, 200, "{headers:?}");
    let version = headers.iter().find_map(|line| line.strip_prefix("ledge-version: ").map(str::to_string));
    version.unwrap_or_else(|| panic!("no ledge-version in {headers:?}")).trim().parse().unwrap()
}

/// `POST` to `function` at `path` with the admin token, asking for the run to be recorded
/// (`ledge-record: 1`): the reply names the kept trace in `ledge-trace`.
pub async fn recorded_post(server: &Server, function: &str, path: &str) -> reqwest::Response {
    client()
        .post(server.fn_url(function, path))
        .bearer_auth(&server.admin_token)
        .header("ledge-record", "1")
        .send()
        .await
        .expect("recorded request")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("http client")
}

/// Parses a problem+json response, checking its content type and status field.
pub async fn problem(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status);
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert_eq!(content_type, "application/problem+json");
    let body: serde_json::Value = response.json().await.expect("problem+json body");
    assert_eq!(body["status"], status);
    assert!(body["title"].is_string() && body["type"].is_string());
    body
}

/// The value of one sample in the server's `/metrics` (read with the admin token), e.g.
/// `metric(&server, "ledge_artifact_loads_total{outcome=\"recompiled\"}")`. A series that is
/// not there fails the test: a metric that disappeared must not read as zero.
pub async fn metric(server: &Server, sample: &str) -> f64 {
    let response = server.admin().get(format!("{}/metrics", server.url)).send().await.unwrap();
    assert_eq!(response.status(), 200, "/metrics with the admin token");
    let text = response.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample `{sample}` in /metrics:\n{text}"))
        .trim()
        .parse()
        .expect("numeric sample")
}

/// One HTTP/1.1 request written byte for byte (no client-side normalisation of the path, as a
/// URL library would do): returns the status and the whole response as text.
pub fn raw_request(server: &Server, method: &str, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use std::io::{Read, Write};
    let address = server.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut request = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {address}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("{text}"));
    (status, text)
}

/// `ledge token attenuate TOKEN --caveat CAVEAT`.
pub fn attenuate(token: &str, caveat: &str) -> String {
    let output = ledge().args(["token", "attenuate", token, "--caveat", caveat]).output().expect("ledge");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8").trim().to_string()
}

/// Deploys `file` as `name` through `server` with `policy` (multipart), asserting success.
pub async fn deploy_with_policy(server: &Server, name: &str, file: &Path, policy: &str) {
    let form = reqwest::multipart::Form::new()
        .part("component", reqwest::multipart::Part::bytes(std::fs::read(file).unwrap()))
        .part("policy", reqwest::multipart::Part::text(policy.to_string()));
    let response = server.admin().put(format!("{}/v1/functions/{name}", server.url)).multipart(form).send().await;
    let response = response.expect("deploy");
    assert!(response.status().is_success(), "deploy {name}: {}", response.text().await.unwrap_or_default());
}

/// `ledge token inspect TOKEN`'s output.
pub fn inspect(token: &str) -> String {
    let output = ledge().args(["token", "inspect", token]).output().expect("ledge");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8")
}

/// Runs tests/interop/pymacaroons_peer.py with the virtualenv's python (scripts/setup.sh).
pub fn pymacaroons(args: &[&str]) -> String {
    let python = repo_root().join("target/pyenv/bin/python");
    let output = Command::new(python)
        .arg(repo_root().join("tests/interop/pymacaroons_peer.py"))
        .args(args)
        .output()
        .expect("running pymacaroons (scripts/setup.sh installs it)");
    assert!(output.status.success(), "pymacaroons failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8")
}

/// A real 3-member etcd cluster (Debian's `etcd-server`, installed by scripts/setup.sh) on
/// loopback ports, with its data in a temp dir. Killed on drop.
pub struct Etcd {
    members: Vec<EtcdMember>,
    initial_cluster: String,
    /// Client TLS with client certificates required (see [`Etcd::start_tls`]).
    pub tls: Option<EtcdTlsFiles>,
    _temp: tempfile::TempDir,
}

/// PEM files of an etcd that speaks TLS to clients: the CA, the server's pair, a client's pair.
pub struct EtcdTlsFiles {
    pub ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTlsFiles {
    /// A fresh CA, and a server (127.0.0.1) and a client certificate it signed, under `dir`.
    fn generate(dir: &Path) -> EtcdTlsFiles {
        use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose as Usage, IsCa, Issuer, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: a leaf named like its issuer looks self-signed to a verifier.
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "ledge test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, usages: Vec<Usage>, name: &str| {
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = usages;
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
            std::fs::write(&cert_path, cert.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            (cert_path, key_path)
        };
        let (server_cert, server_key) =
            leaf(vec!["127.0.0.1".into()], vec![Usage::ServerAuth, Usage::ClientAuth], "server");
        let (client_cert, client_key) = leaf(vec!["ledge".into()], vec![Usage::ClientAuth], "client");
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        EtcdTlsFiles { ca: ca_path, server_cert, server_key, client_cert, client_key }
    }
}

struct EtcdMember {
    name: String,
    client_url: String,
    peer_url: String,
    dir: PathBuf,
    child: Option<Child>,
}

/// Why an etcd cluster did not come up: `exited` when a member stopped (a port taken under it).
struct EtcdStartFailure {
    exited: bool,
    reason: String,
}

/// A free loopback port (bound then released; the caller binds it again at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

impl Etcd {
    /// Starts three members and waits until the cluster answers.
    pub fn start() -> Etcd {
        Etcd::start_with(false)
    }

    /// Starts three members that serve clients over TLS only, each client presenting a
    /// certificate the test CA signed.
    pub fn start_tls() -> Etcd {
        Etcd::start_with(true)
    }

    fn start_with(tls: bool) -> Etcd {
        // A port found free may be taken by another test's server before etcd binds it; a
        // member that exits at start is retried on fresh ports, a bounded number of times.
        for attempt in 1..=5 {
            let mut etcd = Etcd::spawn_all(tls);
            match etcd.wait_until_healthy() {
                Ok(()) => return etcd,
                Err(failure) if failure.exited && attempt < 5 => eprintln!("etcd start retried: {}", failure.reason),
                Err(failure) => panic!("{}", failure.reason),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn_all(tls: bool) -> Etcd {
        let temp = tempfile::tempdir().expect("temp dir");
        let tls = tls.then(|| EtcdTlsFiles::generate(temp.path()));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let members: Vec<EtcdMember> = (0..3)
            .map(|i| EtcdMember {
                name: format!("e{i}"),
                client_url: format!("{scheme}://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                dir: temp.path().join(format!("e{i}")),
                child: None,
            })
            .collect();
        let initial_cluster =
            members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",");
        let mut etcd = Etcd { members, initial_cluster, tls, _temp: temp };
        for index in 0..3 {
            etcd.spawn(index);
        }
        etcd
    }

    fn spawn(&mut self, index: usize) {
        let member = &mut self.members[index];
        let log = std::fs::File::create(member.dir.with_extension("log")).expect("etcd log");
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command.arg("--cert-file").arg(&tls.server_cert).arg("--key-file").arg(&tls.server_key);
            command.arg("--trusted-ca-file").arg(&tls.ca).arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", &member.name, "--data-dir"])
            .arg(&member.dir)
            .args(["--listen-client-urls", &member.client_url, "--advertise-client-urls", &member.client_url])
            .args(["--listen-peer-urls", &member.peer_url, "--initial-advertise-peer-urls", &member.peer_url])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "ledge-test", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd (scripts/setup.sh installs Debian's etcd-server)");
        member.child = Some(child);
    }

    /// Waits until every running member reports itself healthy (it has a leader).
    pub fn wait_healthy(&mut self) {
        if let Err(failure) = self.wait_until_healthy() {
            panic!("{}", failure.reason);
        }
    }

    fn wait_until_healthy(&mut self) -> Result<(), EtcdStartFailure> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let tls = self.tls.as_ref();
        for member in self.members.iter_mut().filter(|m| m.child.is_some()) {
            loop {
                let mut curl = Command::new("curl");
                if let Some(tls) = tls {
                    curl.arg("--cacert").arg(&tls.ca).arg("--cert").arg(&tls.client_cert);
                    curl.arg("--key").arg(&tls.client_key);
                }
                let health = curl
                    .args(["-sS", "--max-time", "1", &format!("{}/health", member.client_url)])
                    .output()
                    .expect("curl");
                if String::from_utf8_lossy(&health.stdout).contains("\"health\":\"true\"") {
                    break;
                }
                let exited = member.child.as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(Some(_))));
                if exited || Instant::now() > deadline {
                    let log = std::fs::read_to_string(member.dir.with_extension("log")).unwrap_or_default();
                    let asked = String::from_utf8_lossy(&health.stderr);
                    let state = if exited { "exited" } else { "did not become healthy" };
                    let reason = format!("etcd member {} {state} ({asked}); its log:\n{log}", member.name);
                    return Err(EtcdStartFailure { exited, reason });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The client endpoints, as `--cluster` takes them.
    pub fn endpoints(&self) -> String {
        self.members.iter().map(|m| m.client_url.clone()).collect::<Vec<_>>().join(",")
    }

    /// SIGKILL one member.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL every member.
    pub fn kill_all(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }

    /// Starts again every member that is down (same data dirs) and waits until healthy.
    pub fn restart_stopped(&mut self) {
        for index in 0..self.members.len() {
            if self.members[index].child.is_none() {
                self.spawn(index);
            }
        }
        self.wait_healthy();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Flips one byte in the middle of `file` (precompiled code whose digest then no longer matches).
pub fn damage(file: &std::path::Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(file, bytes).unwrap();
}
