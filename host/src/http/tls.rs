//! TLS with rustls: certificates from PEM files (reloaded without a restart) or a self-signed
//! development certificate; ALPN offers `h2` and `http/1.1`, so both protocols share one port.
//!
//! Invariant: a reload swaps the certificate new handshakes get; connections already
//! established keep theirs. A reload that fails (unreadable or mismatched files) keeps the old
//! certificate and logs why.

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

/// The certificate handshakes get; swapped on reload.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone())
    }
}

/// A TLS acceptor whose certificate can be reloaded.
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<CurrentCert>,
    cert: PathBuf,
    key: PathBuf,
}

impl Tls {
    pub fn new(source: &CertSource) -> anyhow::Result<Tls> {
        let (cert, key) = match source {
            CertSource::Files { cert, key } => (cert.clone(), key.clone()),
            CertSource::SelfSigned { data_dir } => self_signed(data_dir)?,
        };
        let current = Arc::new(CurrentCert(RwLock::new(Arc::new(load(&cert, &key)?))));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tracing::info!(cert = %cert.display(), "TLS enabled (ALPN h2, http/1.1)");
        Ok(Tls { acceptor: TlsAcceptor::from(Arc::new(config)), current, cert, key })
    }

    /// The certificate file (what clients pass to `--ca-cert` for a self-signed one).
    pub fn certificate(&self) -> &Path {
        &self.cert
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Loads the files again; on failure the old certificate stays.
    pub fn reload(&self) {
        match load(&self.cert, &self.key) {
            Ok(certified) => {
                *self.current.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(certified);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(error) => tracing::error!(%error, "TLS certificate reload failed; keeping the current one"),
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

    fn modified(&self) -> (Option<SystemTime>, Option<SystemTime>) {
        let mtime = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        (mtime(&self.cert), mtime(&self.key))
    }
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
