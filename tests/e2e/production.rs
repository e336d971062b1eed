//! Production serving: TLS with HTTP/2 and HTTP/1.1, certificate reload, guest limits, request
//! limits, graceful shutdown and metrics.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::harness::{Server, client, guest, problem, repo_root};

fn curl(args: &[&str]) -> (bool, String) {
    let output = Command::new("curl").args(["-sS", "--max-time", "20"]).args(args).output().expect("curl");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test]
async fn tls_serves_http2_and_http11_on_one_port() {
    let server = Server::start_with(&["--tls-self-signed"]);
    assert!(server.url.starts_with("https://"));
    server.deploy_insecure("hello", &guest("hello"));
    let cert = server.data_dir.join("tls/self-signed.pem");
    let cert = cert.to_str().unwrap();
    let url = server.fn_url("hello", "/tls");
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let (ok, out) = curl(&[flag, "--cacert", cert, "-w", "\n%{http_version}", &url]);
        assert!(ok, "curl {flag} failed");
        assert_eq!(out, format!("Hello from ledge! You asked for /tls\n\n{version}"));
    }
    // Plain HTTP to the TLS port is refused, not served.
    let (ok, _) = curl(&[&url.replace("https://", "http://")]);
    assert!(!ok);
}

fn certificate(name: &str) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

/// A TLS connection trusting only `ca_pem`.
fn tls_connect(
    address: &str,
    ca_pem: &str,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connection =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap().to_owned())
            .map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(connection, TcpStream::connect(address)?);
    stream.flush()?;
    stream.conn.complete_io(&mut stream.sock)?;
    Ok(stream)
}

fn healthz_over(stream: &mut impl ReadWrite) -> String {
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut buffer = [0u8; 512];
    let n = stream.read(&mut buffer).unwrap();
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[tokio::test]
async fn a_certificate_swap_is_picked_up_and_keeps_existing_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (first_cert, first_key) = certificate("first");
    std::fs::write(&cert_path, &first_cert).unwrap();
    std::fs::write(&key_path, &first_key).unwrap();
    let server =
        Server::start_with(&["--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap()]);
    let address = server.url.trim_start_matches("https://").to_string();
    let mut kept = tls_connect(&address, &first_cert).expect("first certificate served");
    assert!(healthz_over(&mut kept).starts_with("HTTP/1.1 200"));

    let (second_cert, second_key) = certificate("second");
    std::fs::write(&key_path, &second_key).unwrap();
    std::fs::write(&cert_path, &second_cert).unwrap();
    // SIGHUP reloads at once (the file watcher would within a second too).
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while tls_connect(&address, &second_cert).is_err() {
        assert!(Instant::now() < deadline, "the new certificate was not picked up");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(tls_connect(&address, &first_cert).is_err(), "new handshakes get the new certificate");
    assert!(healthz_over(&mut kept).starts_with("HTTP/1.1 200"), "the old connection still works");
}

#[tokio::test]
async fn an_infinite_loop_times_out_while_a_healthy_function_keeps_answering() {
    let server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    server.deploy("hello", &guest("hello"));
    server.set_policy("misbehave", "[limits]\ntimeout = \"1s\"\n").await;
    let spinners = join_all((0..4).map(|_| client().get(server.fn_url("misbehave", "/spin")).send()));
    let healthy = async {
        let started = Instant::now();
        let mut answered = 0;
        while started.elapsed() < Duration::from_millis(900) {
            let replies = join_all((0..8).map(|_| client().get(server.fn_url("hello", "/")).send())).await;
            for reply in replies {
                assert_eq!(reply.unwrap().status(), 200);
                answered += 1;
            }
        }
        answered
    };
    let (spun, answered) = tokio::join!(spinners, healthy);
    // Spinning guests yield at every epoch tick, so healthy requests keep being served while
    // they spin (a starved server would answer none before the spinners' 1 s timeout).
    assert!(answered >= 16, "only {answered} healthy answers while guests spun");
    for reply in spun {
        let body = problem(reply.unwrap(), 504).await;
        assert!(body["detail"].as_str().unwrap().contains("time limit of 1s"));
    }
}

#[tokio::test]
async fn a_memory_hog_fails_alone() {
    let server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    server.deploy("hello", &guest("hello"));
    server.set_policy("misbehave", "[limits]\nmemory = \"16MiB\"\n").await;
    let (hog, hello) = tokio::join!(
        client().get(server.fn_url("misbehave", "/hog")).send(),
        client().get(server.fn_url("hello", "/")).send()
    );
    let body = problem(hog.unwrap(), 500).await;
    assert!(body["detail"].as_str().unwrap().contains("memory limit of 16777216 bytes"), "{body}");
    assert_eq!(hello.unwrap().status(), 200);
    assert_eq!(client().get(server.fn_url("misbehave", "/fine")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn oversized_bodies_get_413_declared_or_streamed() {
    let server = Server::start();
    server.deploy("echo", &guest("echo"));
    server.set_policy("echo", "[limits]\nmax_body = \"1KiB\"\n").await;
    let declared = client().post(server.fn_url("echo", "/")).body(vec![b'x'; 2048]).send().await.unwrap();
    assert!(problem(declared, 413).await["detail"].as_str().unwrap().contains("1024 bytes"));
    let chunks = futures::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 600])));
    let streamed =
        client().post(server.fn_url("echo", "/")).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    problem(streamed, 413).await;
    let fits = client().post(server.fn_url("echo", "/")).body(vec![b'x'; 1000]).send().await.unwrap();
    assert_eq!(fits.text().await.unwrap().len(), 1000);
}

#[tokio::test]
async fn request_heads_are_bounded_in_size_count_and_time() {
    let server = Server::start_with(&["--header-timeout", "1"]);
    let mut request = client().get(format!("{}/healthz", server.url));
    for i in 0..150 {
        request = request.header(format!("x-h{i}"), "v");
    }
    let status = request.send().await.map(|r| r.status().as_u16());
    assert_eq!(status.ok(), Some(431), "150 header fields must be refused with 431");
    // A 100 KB header: the server answers 431 and closes, possibly before reading all of it,
    // so the client may see a reset instead of the answer; but never success, and never a
    // hang (a timeout is a failure here).
    let started = Instant::now();
    let huge = client().get(format!("{}/healthz", server.url)).header("x-big", "v".repeat(100_000)).send().await;
    match huge {
        Ok(response) => assert_eq!(response.status(), 431),
        Err(error) => assert!(!error.is_timeout() && error.is_request(), "{error:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));

    // A client that trickles its request head is cut off.
    let mut slow = TcpStream::connect(server.url.trim_start_matches("http://")).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(5), "slow client held the connection");
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_and_loses_no_committed_data() {
    let mut server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    let slow = tokio::spawn(client().get(server.fn_url("misbehave", "/slow-write?ms=1500")).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = server.pid();
    let terminated = tokio::task::spawn_blocking(move || {
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    });
    terminated.await.unwrap();
    let response = slow.await.unwrap().expect("the in-flight request finished");
    assert_eq!(response.text().await.unwrap(), "written\n");
    assert_eq!(server.wait_exit().code(), Some(0));
    assert!(server.log().contains("shutting down"));
    server.restart();
    let after = client().get(server.fn_url("misbehave", "/read-slow")).send().await.unwrap();
    assert_eq!(after.text().await.unwrap(), "Some(\"done\")\n");
}

#[tokio::test]
async fn metrics_parse_as_openmetrics_and_count_the_requests_made() {
    let server = Server::start();
    server.deploy("hello", &guest("hello"));
    server.deploy("misbehave", &guest("misbehave"));
    for _ in 0..5 {
        client().get(server.fn_url("hello", "/")).send().await.unwrap();
    }
    for _ in 0..2 {
        client().get(server.fn_url("misbehave", "/trap")).send().await.unwrap();
    }
    client().get(server.fn_url("misbehave", "/print")).send().await.unwrap();
    let output = Command::new(repo_root().join("target/pyenv/bin/python"))
        .arg(repo_root().join("tests/interop/parse_metrics.py"))
        .arg(format!("{}/metrics", server.url))
        .arg(&server.admin_token)
        .output()
        .expect("python");
    assert!(
        output.status.success(),
        "the reference parser refused /metrics: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let samples = String::from_utf8(output.stdout).unwrap();
    let value = |sample: &str| {
        samples.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')).map(|v| v.parse::<f64>().unwrap())
    };
    assert_eq!(value("ledge_requests_total{function=\"hello\",status=\"200\"}"), Some(5.0));
    assert_eq!(value("ledge_requests_total{function=\"misbehave\",status=\"500\"}"), Some(2.0));
    assert_eq!(value("ledge_request_duration_seconds_count{function=\"hello\"}"), Some(5.0));
    assert_eq!(value("ledge_instantiation_duration_seconds_count{function=\"hello\",start=\"warm\"}"), Some(4.0));
    assert_eq!(value("ledge_live_instances{}"), Some(0.0));
    assert!(value("ledge_kv_transactions_committed_total{}").is_some());
    // Guest output reaches the log with the function's name.
    let log = server.log();
    assert!(log.contains("hello from the guest's stdout") && log.contains("and from its stderr"));
    assert!(log.lines().any(|l| l.contains("misbehave") && l.contains("stdout")));
}
