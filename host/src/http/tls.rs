//! TLS with rustls: certificates from PEM files (reloaded without a restart) or a self-signed
//! development certificate; ALPN offers `h2` and `http/1.1`, so both protocols share one port.
//!
//! Invariant: a reload swaps the certificate new handshakes get; connections already
//! established keep theirs. A reload that fails (unreadable or mismatched files) keeps the old
//! certificate and logs why.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::storage::{create_private_dir, write_durably};

/// How often the certificate files are checked for changes (SIGHUP reloads at once).
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Where the certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Generated once into `<data-dir>/tls/` for `localhost` and `127.0.0.1`.
    SelfSigned {
        data_dir: PathBuf,
    },
}

/// The certificates handshakes get: one per host name from `--tls-dir`, else the default;
/// swapped on reload.
#[derive(Debug, Default)]
struct Certificates {
    default: RwLock<Option<Arc<CertifiedKey>>>,
    by_host: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            let by_host = self.by_host.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(certified) = by_host.get(&name.to_ascii_lowercase()) {
                return Some(certified.clone());
            }
        }
        self.default.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// A TLS acceptor whose certificates can be reloaded.
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<Certificates>,
    /// The default certificate and key files, if any.
    default: Option<(PathBuf, PathBuf)>,
    /// `--tls-dir`: `HOST.pem` with `HOST.key` per host name (SNI).
    dir: Option<PathBuf>,
}

impl Tls {
    /// TLS with the default certificate from `source` and per-host ones from `dir` (at least
    /// one of them).
    pub fn new(source: Option<&CertSource>, dir: Option<&Path>) -> anyhow::Result<Tls> {
        let default = match source {
            Some(CertSource::Files { cert, key }) => Some((cert.clone(), key.clone())),
            Some(CertSource::SelfSigned { data_dir }) => Some(self_signed(data_dir)?),
            None => None,
        };
        let current = Arc::new(Certificates::default());
        if let Some((cert, key)) = &default {
            *current.default.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(load(cert, key)?));
        }
        if let Some(dir) = dir {
            *current.by_host.write().unwrap_or_else(|p| p.into_inner()) = load_dir(dir)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tracing::info!(default = ?default.as_ref().map(|(cert, _)| cert), dir = ?dir, "TLS enabled (ALPN h2, http/1.1)");
        Ok(Tls { acceptor: TlsAcceptor::from(Arc::new(config)), current, default, dir: dir.map(Path::to_path_buf) })
    }

    /// The default certificate file (what clients pass to `--ca-cert` for a self-signed one).
    pub fn certificate(&self) -> Option<&Path> {
        self.default.as_ref().map(|(cert, _)| cert.as_path())
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Loads the files again; what fails to load keeps its current certificate.
    pub fn reload(&self) {
        if let Some((cert, key)) = &self.default {
            match load(cert, key) {
                Ok(certified) => {
                    *self.current.default.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(certified));
                    tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                }
                Err(error) => tracing::error!(%error, "TLS certificate reload failed; keeping the current one"),
            }
        }
        if let Some(dir) = &self.dir {
            match load_dir(dir) {
                Ok(by_host) => {
                    tracing::info!(dir = %dir.display(), hosts = by_host.len(), "TLS certificates per host reloaded");
                    *self.current.by_host.write().unwrap_or_else(|p| p.into_inner()) = by_host;
                }
                Err(error) => tracing::error!(%error, "TLS certificate reload failed; keeping the current ones"),
            }
        }
    }

    /// Reloads on SIGHUP and whenever the files' modification times change.
    pub fn spawn_reloader(self: &Arc<Self>) {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut seen = tls.modified();
            loop {
                let signalled = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await.is_some(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    true = signalled => tls.reload(),
                    () = tokio::time::sleep(WATCH_INTERVAL) => {
                        let now = tls.modified();
                        if now != seen {
                            seen = now;
                            tls.reload();
                        }
                    }
                }
            }
        });
    }

    fn modified(&self) -> Vec<(PathBuf, Option<SystemTime>)> {
        let mtime = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut files: Vec<PathBuf> = self.default.iter().flat_map(|(c, k)| [c.clone(), k.clone()]).collect();
        if let Some(dir) = &self.dir {
            files.extend(std::fs::read_dir(dir).into_iter().flatten().flatten().map(|entry| entry.path()));
        }
        files.sort();
        files.into_iter().map(|path| (path.clone(), mtime(&path))).collect()
    }
}

/// Every `HOST.pem` in `dir` with its `HOST.key`, by lower-case host name.
fn load_dir(dir: &Path) -> anyhow::Result<HashMap<String, Arc<CertifiedKey>>> {
    let mut by_host = HashMap::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("cannot read --tls-dir {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(host) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".pem")) else {
            continue;
        };
        let key = dir.join(format!("{host}.key"));
        by_host.insert(host.to_ascii_lowercase(), Arc::new(load(&path, &key)?));
    }
    Ok(by_host)
}

fn load(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("cannot read certificates from {}: {e}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("cannot read the private key from {}: {e}", key.display()))?;
    let signing_key = any_supported_type(&key_der)
        .map_err(|e| anyhow::anyhow!("unsupported private key in {}: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| anyhow::anyhow!("{} does not match {}: {e}", key.display(), cert.display()))?;
    Ok(certified)
}

/// Creates (once) a self-signed certificate for development; the key file is mode 0600.
fn self_signed(data_dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let dir = data_dir.join("tls");
    let (cert, key) = (dir.join("self-signed.pem"), dir.join("self-signed.key"));
    if !cert.exists() || !key.exists() {
        create_private_dir(&dir)?;
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(io::Error::other)?;
        write_durably(&key, generated.signing_key.serialize_pem().as_bytes())?;
        write_durably(&cert, generated.cert.pem().as_bytes())?;
        tracing::info!(cert = %cert.display(), "generated a self-signed development certificate");
    }
    Ok((cert, key))
}
