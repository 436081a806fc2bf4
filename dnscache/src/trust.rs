//! Whom TLS connections trust, and the client certificate they present.
//!
//! RabbitMQ and Redis in Kubernetes usually present certificates from a
//! private CA (cert-manager, the RabbitMQ operator), which no public root
//! store holds; Discord presents public ones. So a process has two client
//! configurations, built once at start-up from `[tls]`:
//!
//! - **services** (`amqps://`, `rediss://`): the CA bundle of `tls.ca_file`
//!   when it is set, and only it (a certificate from any public CA would
//!   otherwise pass for the broker); the public webpki roots when it is not.
//!   The client certificate of `tls.client_cert_file`, if any, for mTLS.
//! - **discord** (API, gateway): the public roots, plus the bundle when
//!   `tls.ca_for_discord` is set (an egress proxy that re-signs TLS).
//!
//! The files are read and parsed in [`Trust::load`], so a missing file, a
//! file without a certificate or a key that does not parse is an error at
//! start-up naming the file, the key and the endpoints that would use it.
//! A handshake that later fails names the host and the trust it used
//! ([`Trust::describe`]).

use config::TlsConfig;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Why `[tls]` could not be loaded; each names the key, the file and what
/// would have used it.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The file could not be read.
    #[error(
        "cannot read {key} {path}: {source} (used for {uses}); mount the file there or fix {key}"
    )]
    Read {
        key: &'static str,
        path: PathBuf,
        uses: String,
        #[source]
        source: std::io::Error,
    },
    /// The file has no usable PEM certificate, or one rustls rejects.
    #[error("{key} {path} is not a PEM certificate bundle: {reason} (used for {uses})")]
    Certificate {
        key: &'static str,
        path: PathBuf,
        uses: String,
        reason: String,
    },
    /// The key file has no usable PEM private key, or it does not go with
    /// the certificate.
    #[error("{key} {path} is not a usable PEM private key: {reason} (used for {uses})")]
    Key {
        key: &'static str,
        path: PathBuf,
        uses: String,
        reason: String,
    },
}

/// The two client configurations and what they were built from.
pub struct Trust {
    ca_file: Option<PathBuf>,
    ca_pem: Option<Vec<u8>>,
    client_pem: Option<(Vec<u8>, Vec<u8>)>,
    pub(crate) services: Arc<rustls::ClientConfig>,
    pub(crate) discord: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client key never reaches a log.
        f.debug_struct("Trust")
            .field("ca_file", &self.ca_file)
            .field("client_certificate", &self.client_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl Trust {
    /// Public roots everywhere, no client certificate: what a process
    /// without `[tls]` uses.
    pub fn public() -> Arc<Self> {
        static PUBLIC: OnceLock<Arc<Trust>> = OnceLock::new();
        PUBLIC
            .get_or_init(|| {
                Arc::new(Self {
                    ca_file: None,
                    ca_pem: None,
                    client_pem: None,
                    services: build(webpki_roots(), None, false),
                    discord: crate::tls::default_client_config(),
                })
            })
            .clone()
    }

    /// Reads and checks the files of `cfg`. `endpoints` are the URLs the
    /// process will dial (broker, Redis); the `amqps://` and `rediss://`
    /// ones are named, without credentials, in errors.
    pub fn load(cfg: &TlsConfig, endpoints: &[&str]) -> Result<Arc<Self>, TrustError> {
        if !cfg.any() {
            return Ok(Self::public());
        }
        let uses = tls_endpoints(endpoints);
        let read = |key: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TrustError::Read {
                key,
                path: path.to_path_buf(),
                uses: uses.clone(),
                source,
            })
        };
        let cert_error = |key: &'static str, path: &Path, reason: String| TrustError::Certificate {
            key,
            path: path.to_path_buf(),
            uses: uses.clone(),
            reason,
        };
        let mut ca_roots = None;
        let mut ca_pem = None;
        if let Some(path) = &cfg.ca_file {
            let pem = read("tls.ca_file", path)?;
            let certs =
                certificates(&pem).map_err(|reason| cert_error("tls.ca_file", path, reason))?;
            let mut roots = RootCertStore::empty();
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| cert_error("tls.ca_file", path, e.to_string()))?;
            }
            ca_roots = Some(roots);
            ca_pem = Some(pem);
        }
        let mut client = None;
        let mut client_pem = None;
        if let (Some(cert_path), Some(key_path)) = (&cfg.client_cert_file, &cfg.client_key_file) {
            let cert_pem = read("tls.client_cert_file", cert_path)?;
            let key_pem = read("tls.client_key_file", key_path)?;
            let chain = certificates(&cert_pem)
                .map_err(|reason| cert_error("tls.client_cert_file", cert_path, reason))?;
            let key_error = |reason: String| TrustError::Key {
                key: "tls.client_key_file",
                path: key_path.clone(),
                uses: uses.clone(),
                reason,
            };
            let key =
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| key_error(e.to_string()))?;
            // Builds once here so that a key that does not go with the
            // certificate is a start-up error, not a handshake failure.
            provider_builder()
                .with_root_certificates(RootCertStore::empty())
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| key_error(e.to_string()))?;
            client = Some((chain, key));
            client_pem = Some((cert_pem, key_pem));
        }
        let services_roots = ca_roots.clone().unwrap_or_else(webpki_roots);
        let discord = match (&ca_roots, cfg.ca_for_discord) {
            (Some(extra), true) => {
                let mut roots = webpki_roots();
                roots.roots.extend(extra.roots.iter().cloned());
                build(roots, None, true)
            }
            _ => crate::tls::default_client_config(),
        };
        Ok(Arc::new(Self {
            ca_file: cfg.ca_file.clone(),
            ca_pem,
            client_pem,
            services: build(services_roots, client, false),
            discord,
        }))
    }

    /// What a failed handshake to the broker or Redis was checked against,
    /// for its error message.
    pub fn describe(&self) -> String {
        match &self.ca_file {
            Some(path) => format!(
                "its certificate must chain to a CA in {} (tls.ca_file)",
                path.display()
            ),
            None => "only public CAs are trusted; for a private CA set tls.ca_file to its \
                     PEM bundle"
                .to_owned(),
        }
    }

    /// The CA bundle and client certificate as PEM, for clients that build
    /// their own rustls configuration (redis).
    pub(crate) fn redis_certificates(&self) -> Option<redis::TlsCertificates> {
        if self.ca_pem.is_none() && self.client_pem.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self
                .client_pem
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca_pem.clone(),
        })
    }
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no \"BEGIN CERTIFICATE\" block".to_owned());
    }
    Ok(certs)
}

pub(crate) fn webpki_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

fn provider_builder() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| crate::tls::unreachable_builder())
}

pub(crate) fn build(
    roots: RootCertStore,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    http: bool,
) -> Arc<rustls::ClientConfig> {
    let builder = provider_builder().with_root_certificates(roots);
    let mut config = match client {
        // Checked in `load`, so this cannot fail here; fall back to no
        // client certificate rather than panic, and say so.
        Some((chain, key)) => builder
            .clone()
            .with_client_auth_cert(chain, key)
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "tls: client certificate rejected; connecting without it");
                builder.with_no_client_auth()
            }),
        None => builder.with_no_client_auth(),
    };
    if http {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Arc::new(config)
}

/// `amqps://host:port, rediss://host:port` of `urls`, without credentials.
fn tls_endpoints(urls: &[&str]) -> String {
    let named: Vec<String> = urls
        .iter()
        .filter_map(|url| {
            let (scheme, rest) = url.split_once("://")?;
            if scheme != "amqps" && scheme != "rediss" {
                return None;
            }
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            Some(format!("{scheme}://{host}"))
        })
        .collect();
    if named.is_empty() {
        "no amqps:// or rediss:// URL yet".to_owned()
    } else {
        named.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_lose_their_credentials() {
        assert_eq!(
            tls_endpoints(&[
                "amqps://u:hunter2@rabbit.bulwark.svc:5671/%2f",
                "redis://:pw@plain:6379",
                "rediss://:pw@redis:6380/0?x=1",
            ]),
            "amqps://rabbit.bulwark.svc:5671, rediss://redis:6380"
        );
        assert_eq!(tls_endpoints(&[]), "no amqps:// or rediss:// URL yet");
    }

    #[test]
    fn missing_and_bad_files_name_key_file_and_endpoint() {
        let dir = std::env::temp_dir().join(format!("bulwark-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("nope.crt");
        let cfg = TlsConfig {
            ca_file: Some(missing.clone()),
            ..TlsConfig::default()
        };
        let e = Trust::load(&cfg, &["amqps://u:secret@rabbit:5671/%2f"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.ca_file") && e.contains("nope.crt"), "{e}");
        assert!(
            e.contains("amqps://rabbit:5671") && !e.contains("secret"),
            "{e}"
        );
        let junk = dir.join("junk.crt");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let cfg = TlsConfig {
            ca_file: Some(junk),
            ..TlsConfig::default()
        };
        let e = Trust::load(&cfg, &["rediss://r:6380"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("junk.crt") && e.contains("BEGIN CERTIFICATE"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn without_files_the_public_roots_are_shared() {
        let t = Trust::load(&TlsConfig::default(), &[]).unwrap();
        assert!(Arc::ptr_eq(&t, &Trust::public()));
        assert!(t.redis_certificates().is_none());
        assert!(t.describe().contains("tls.ca_file"));
    }
}
