//! `--web-config FILE`: TLS and basic authentication for `/metrics`, read from a file
//! in the format of the Prometheus exporters (prometheus/exporter-toolkit's
//! `web-config.yml`), so that one file and one habit serve every exporter on a host:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: /etc/capstats/metrics.crt   # PEM; relative paths are taken from the
//!   key_file: /etc/capstats/metrics.key    # file's own directory, as the toolkit does
//! basic_auth_users:
//!   prometheus: $2y$10$...                 # bcrypt (htpasswd -nBC 10 prometheus)
//! ```
//!
//! Either part may be left out. What the toolkit has and capstats does not (client
//! certificates, cipher and version choices, `http_server_config`) is refused by name,
//! not ignored: a setting that is silently dropped would promise a protection that is
//! not there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
#[error("--web-config {path}: {message}")]
pub struct WebConfigError {
    path: String,
    message: String,
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

/// What the endpoint requires of a scraper.
#[derive(Clone, Default)]
pub struct WebConfig {
    /// TLS with this certificate and key; plain HTTP when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// User name to bcrypt hash; no authentication when empty.
    pub users: BTreeMap<String, String>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl WebConfig {
    /// Reads and checks `path`: the YAML, each hash, the certificate and key.
    ///
    /// # Errors
    /// Naming the file and what is wrong in it.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let error = |message: String| WebConfigError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        // An empty file is an empty map (no TLS, no users), as in the toolkit.
        let file: File = if text.trim().is_empty() {
            File {
                tls_server_config: None,
                basic_auth_users: None,
            }
        } else {
            serde_norway::from_str(&text).map_err(|e| error(e.to_string()))?
        };
        let users = file.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            if user.contains(':') {
                return Err(error(format!(
                    "basic_auth_users: user {user:?} has a ':', which basic authentication cannot send"
                )));
            }
            hash.parse::<bcrypt::HashParts>().map_err(|e| {
                error(format!(
                    "basic_auth_users: the password of {user:?} is not a bcrypt hash ({e}); \
                     make one with `htpasswd -nBC 10 {user}`"
                ))
            })?;
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let tls = file
            .tls_server_config
            .map(|tls| {
                let within = |file: Option<PathBuf>, key: &str| {
                    file.map(|f| dir.join(f))
                        .ok_or_else(|| error(format!("tls_server_config: {key} is missing")))
                };
                let cert = within(tls.cert_file, "cert_file")?;
                let key = within(tls.key_file, "key_file")?;
                server_config(&cert, &key).map_err(error)
            })
            .transpose()?;
        Ok(Self { tls, users })
    }
}

/// rustls's server configuration for `cert` (a PEM chain, the server's first) and
/// `key` (a PEM private key): TLS 1.2 and 1.3 with rustls's safe defaults, HTTP/1.1.
fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cert_file {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "cert_file {}: no certificate in it",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("key_file {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| {
            format!(
                "cert_file {} and key_file {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<WebConfig, String> {
        let dir = std::env::temp_dir().join(format!("capstats-webconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!(
            "{:x}.yml",
            text.len() * 7919 + text.bytes().map(usize::from).sum::<usize>()
        ));
        std::fs::write(&path, text).unwrap();
        let loaded = WebConfig::load(&path).map_err(|e| e.to_string());
        let _ = std::fs::remove_file(&path);
        loaded
    }

    #[test]
    fn users_with_bcrypt_hashes() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let config = load(&format!("basic_auth_users:\n  alice: '{hash}'\n")).unwrap();
        assert!(config.tls.is_none());
        assert_eq!(config.users.get("alice"), Some(&hash));
        assert!(load("").unwrap().users.is_empty());
    }

    #[test]
    fn what_is_not_understood_is_refused_by_name() {
        let err = load("basic_auth_users:\n  alice: secret\n").unwrap_err();
        assert!(err.contains("not a bcrypt hash"), "{err}");
        let err =
            load("tls_server_config:\n  cert_file: a.crt\n  client_ca_file: ca.crt\n").unwrap_err();
        assert!(err.contains("client_ca_file"), "{err}");
        let err = load("http_server_config:\n  http2: false\n").unwrap_err();
        assert!(err.contains("http_server_config"), "{err}");
        let err = load("tls_server_config:\n  cert_file: a.crt\n").unwrap_err();
        assert!(err.contains("key_file is missing"), "{err}");
        let err = load("tls_server_config:\n  cert_file: nowhere.crt\n  key_file: nowhere.key\n")
            .unwrap_err();
        assert!(err.contains("nowhere.crt"), "{err}");
        let err = load("basic_auth_users: [1, 2]\n").unwrap_err();
        assert!(err.contains("basic_auth_users"), "{err}");
    }
}
