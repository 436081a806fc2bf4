//! TLS endpoints with a private CA made in the test, for the `[tls]`
//! tests: what an operator's cert-manager issuer and a TLS-only broker and
//! Redis look like, on loopback.
//!
//! - [`TestCa`]: a CA certificate and key (rcgen), which issues server
//!   certificates for `localhost` and client certificates for mTLS, all
//!   written as PEM files into a [`TempDir`].
//! - [`TlsTerminator`]: a TLS listener in front of a plain TCP service
//!   (RabbitMQ here, as a TLS-terminating proxy in front of a broker does),
//!   optionally requiring a client certificate from the CA.
//! - [`RedisTls`]: Debian's `redis-server` with its own TLS listener only
//!   (no plain port), requiring client certificates; killed on drop.

use crate::TempDir;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a TLS fixture could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsFixtureError {
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("redis-server with TLS did not listen on {port} within 10 s; its log:\n{log}")]
    RedisNotListening { port: u16, log: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TlsFixtureError {
    let what = what.into();
    move |source| TlsFixtureError::Io { what, source }
}

fn cert_err(e: impl std::fmt::Display) -> TlsFixtureError {
    TlsFixtureError::Certificate(e.to_string())
}

/// A private CA whose files live in a temporary directory.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    dir: TempDir,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct IssuedFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA named `name`, its certificate at [`TestCa::ca_file`].
    pub fn new(name: &str) -> Result<Self, TlsFixtureError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = params.self_signed(&key).map_err(cert_err)?;
        let dir = TempDir::new(&format!("tls-{name}")).map_err(io("creating a temp dir"))?;
        let ca_pem = cert.pem();
        std::fs::write(dir.path().join("ca.crt"), &ca_pem).map_err(io("writing ca.crt"))?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            ca_pem,
            dir,
        })
    }

    /// The CA certificate (PEM file), what `tls.ca_file` points at.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The CA certificate as PEM text.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A server certificate for the host `name`, `localhost` and 127.0.0.1.
    pub fn server(&self, name: &str) -> Result<IssuedFiles, TlsFixtureError> {
        let mut params = CertificateParams::new(vec![
            name.to_owned(),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .map_err(cert_err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(name, params)
    }

    /// A client certificate (mTLS) with common name `name`.
    pub fn client(&self, name: &str) -> Result<IssuedFiles, TlsFixtureError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(name, params)
    }

    fn issue(&self, name: &str, params: CertificateParams) -> Result<IssuedFiles, TlsFixtureError> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_err)?;
        let files = IssuedFiles {
            cert: self.dir.path().join(format!("{name}.crt")),
            key: self.dir.path().join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).map_err(io("writing a certificate"))?;
        std::fs::write(&files.key, key.serialize_pem()).map_err(io("writing a key"))?;
        Ok(files)
    }
}

fn server_config(
    server: &IssuedFiles,
    client_ca: Option<&TestCa>,
) -> Result<rustls::ServerConfig, TlsFixtureError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_file_iter(&server.cert)
        .map_err(cert_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(cert_err)?;
    let key = PrivateKeyDer::from_pem_file(&server.key).map_err(cert_err)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(cert_err)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.ca_pem().as_bytes()) {
                roots.add(cert.map_err(cert_err)?).map_err(cert_err)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(cert_err)?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder.with_single_cert(chain, key).map_err(cert_err)
}

/// A TLS listener on 127.0.0.1 forwarding each connection, decrypted, to
/// `upstream`. Handshake failures are counted, not forwarded.
pub struct TlsTerminator {
    addr: SocketAddr,
    refused: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsTerminator {
    /// Serves `server`'s certificate; with `client_ca`, only clients with a
    /// certificate from it get through.
    pub async fn start(
        upstream: SocketAddr,
        server: &IssuedFiles,
        client_ca: Option<&TestCa>,
    ) -> Result<Self, TlsFixtureError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(server, client_ca)?));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io("binding the TLS listener"))?;
        let addr = listener.local_addr().map_err(io("reading its address"))?;
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = refused.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    };
                    if let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            refused,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Handshakes that failed (wrong CA on either side, no client
    /// certificate).
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `redis-server` listening only with TLS, on a free loopback port.
pub struct RedisTls {
    child: Child,
    port: u16,
}

impl RedisTls {
    /// Starts it with `server`'s certificate, requiring client certificates
    /// from `ca` when `require_client_cert`; returns once the port accepts.
    pub fn start(
        ca: &TestCa,
        server: &IssuedFiles,
        require_client_cert: bool,
    ) -> Result<Self, TlsFixtureError> {
        let port = crate::dnsmasq::free_port()
            .map_err(|e| TlsFixtureError::Certificate(format!("no free port: {e}")))?;
        let log = ca.dir.path().join(format!("redis-{port}.log"));
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&server.cert)
            .arg("--tls-key-file")
            .arg(&server.key)
            .arg("--tls-ca-cert-file")
            .arg(ca.ca_file())
            .args([
                "--tls-auth-clients",
                if require_client_cert { "yes" } else { "no" },
            ])
            .arg("--logfile")
            .arg(&log)
            .arg("--dir")
            .arg(ca.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("starting redis-server (Debian's redis-server package)"))?;
        let mut redis = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || matches!(redis.child.try_wait(), Ok(Some(_))) {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                redis.stop();
                return Err(TlsFixtureError::RedisNotListening { port, log });
            }
            // Polling the port of a process we started: a readiness probe.
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(redis)
    }

    /// The TLS port.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisTls {
    fn drop(&mut self) {
        self.stop();
    }
}
