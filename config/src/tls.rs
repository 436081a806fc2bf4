//! `[tls]`: whom the binaries trust, and who they are, on TLS connections.
//!
//! In Kubernetes, RabbitMQ and Redis usually present certificates from a
//! private CA (cert-manager, the RabbitMQ operator's TLS), which no public
//! root store contains. So `amqps://` and `rediss://` trust the operator's
//! CA bundle when one is given, and only it: a broker certificate from any
//! public CA would otherwise pass. Discord's API and gateway keep the public
//! roots; `ca_for_discord` adds the bundle to them for an egress proxy that
//! re-signs TLS. The files are read at start-up (see `dnscache::Trust`), so a
//! missing or unreadable file is an error before any connection is made.

use crate::ConfigError;
use serde::Deserialize;
use std::path::PathBuf;

/// Certificate files for the broker, Redis and (optionally) Discord.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM bundle of CA certificates trusted for `amqps://` and `rediss://`
    /// instead of the public roots, e.g. a mounted Secret's `ca.crt`.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) presented to the broker and Redis
    /// (mTLS); needs `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// Also trust `ca_file` for Discord's API and gateway (on top of the
    /// public roots), for an egress proxy that re-signs TLS.
    pub ca_for_discord: bool,
}

impl TlsConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (key, path) in [
            ("tls.ca_file", &self.ca_file),
            ("tls.client_cert_file", &self.client_cert_file),
            ("tls.client_key_file", &self.client_key_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(ConfigError::invalid(
                    key,
                    "is empty; remove the key or give the path of a PEM file",
                ));
            }
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) => Err(ConfigError::invalid(
                "tls.client_key_file",
                "is missing: tls.client_cert_file needs its private key",
            )),
            (None, Some(_)) => Err(ConfigError::invalid(
                "tls.client_cert_file",
                "is missing: tls.client_key_file needs its certificate",
            )),
            _ => Ok(()),
        }?;
        if self.ca_for_discord && self.ca_file.is_none() {
            return Err(ConfigError::invalid(
                "tls.ca_for_discord",
                "is true but tls.ca_file is not set; give the CA bundle to add",
            ));
        }
        Ok(())
    }

    /// True when any file is configured.
    pub fn any(&self) -> bool {
        self.ca_file.is_some() || self.client_cert_file.is_some()
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn keys_parse_and_pairs_are_checked() {
        let c = Config::from_toml_str(
            "[tls]\nca_file = \"/etc/bulwark/tls/ca.crt\"\n",
            "t",
            vec![("BULWARK_TLS__CA_FOR_DISCORD".into(), "true".into())],
        )
        .unwrap();
        assert_eq!(
            c.tls.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/bulwark/tls/ca.crt"))
        );
        assert!(c.tls.ca_for_discord && c.tls.any());
        assert!(!Config::default().tls.any());
        for (text, key) in [
            (
                "[tls]\nclient_cert_file = \"c.pem\"\n",
                "tls.client_key_file",
            ),
            (
                "[tls]\nclient_key_file = \"k.pem\"\n",
                "tls.client_cert_file",
            ),
            ("[tls]\nca_for_discord = true\n", "tls.ca_for_discord"),
            ("[tls]\nca_file = \"\"\n", "tls.ca_file"),
            ("[tls]\ncafile = \"x\"\n", "cafile"),
        ] {
            let e = Config::from_toml_str(text, "t", Vec::new())
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text} -> {e}");
        }
    }
}
