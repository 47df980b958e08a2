//! The HTTPS API's TLS, from Consul 1.10's agent settings: `cert_file`, `key_file`, `ca_file`,
//! `verify_incoming` / `verify_incoming_https`.
//!
//! As Consul's `tlsutil` (`IncomingHTTPSConfig`): ALPN `h2` and `http/1.1`; a client
//! certificate is asked for only when incoming connections are verified, and then it is
//! required and must chain to `ca_file`; verifying incoming connections without a CA or without
//! a certificate of our own is a start-up error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// The HTTPS API's certificate and client verification, as files.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// The server certificate chain, PEM (`cert_file`).
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM (`key_file`).
    pub key_file: Option<PathBuf>,
    /// CA certificates, PEM, that client certificates must chain to (`ca_file`).
    pub ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `ca_file` (`verify_incoming_https`, or
    /// `verify_incoming`).
    pub verify_incoming: bool,
}

/// Why the HTTPS API's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or does not hold what it should.
    #[error("{setting} {}: {message}", path.display())]
    File {
        /// Consul's name of the setting (`cert_file`, `key_file`, `ca_file`).
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The settings do not go together.
    #[error("{0}")]
    Settings(&'static str),
}

impl TlsFiles {
    /// Reads the files and builds the server configuration.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let (Some(cert_file), Some(key_file)) = (&self.cert_file, &self.key_file) else {
            return Err(TlsError::Settings(
                "the HTTPS API needs both cert_file and key_file",
            ));
        };
        let chain = read_certs("cert_file", cert_file)?;
        let key = read_key(key_file)?;
        let ca = self
            .ca_file
            .as_deref()
            .map(|path| read_certs("ca_file", path).map(|certs| (path, certs)))
            .transpose()?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|_| TlsError::Settings("no TLS protocol version available"))?;
        let builder = match (self.verify_incoming, ca) {
            (false, _) => builder.with_no_client_auth(),
            (true, None) => {
                return Err(TlsError::Settings(
                    "verify_incoming_https set, and no CA certificate provided (ca_file)",
                ))
            }
            (true, Some((path, certs))) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| file_error("ca_file", path, e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| file_error("ca_file", path, e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| file_error("key_file", key_file, e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn file_error(setting: &'static str, path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        setting,
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn read_certs(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| file_error(setting, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(setting, path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(setting, path, "no PEM certificate found"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| file_error("key_file", path, e))?;
    // The message names the file only: a parse error could quote the key.
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| file_error("key_file", path, "no PEM private key found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "agent-sim-tls-{}-{}-{name}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn pair() -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (
            temp("cert.pem", &cert.pem()),
            temp("key.pem", &key.serialize_pem()),
        )
    }

    #[test]
    fn good_files_make_a_config_with_consul_s_alpn() {
        let (cert, key) = pair();
        let files = TlsFiles {
            cert_file: Some(cert.clone()),
            key_file: Some(key),
            ca_file: Some(cert),
            verify_incoming: true,
        };
        let config = files.server_config().unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn errors_name_the_setting_and_the_file() {
        let (cert, key) = pair();
        let junk = temp("junk.pem", "hello\n");
        let with = |cert_file: &Path, key_file: &Path, ca: Option<&Path>, verify| TlsFiles {
            cert_file: Some(cert_file.to_owned()),
            key_file: Some(key_file.to_owned()),
            ca_file: ca.map(Path::to_owned),
            verify_incoming: verify,
        };
        let err = with(&junk, &key, None, false).server_config().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cert_file {}: no PEM certificate found", junk.display())
        );
        let err = with(&cert, &junk, None, false).server_config().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("key_file {}: no PEM private key found", junk.display())
        );
        let missing = Path::new("/nonexistent/ca.pem");
        let err = with(&cert, &key, Some(missing), false)
            .server_config()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("ca_file /nonexistent/ca.pem: No such file"),
            "{err}"
        );
        let err = with(&cert, &key, None, true).server_config().unwrap_err();
        assert!(err.to_string().contains("no CA certificate"), "{err}");
        // A key that is not the certificate's.
        let (_, other_key) = pair();
        let err = with(&cert, &other_key, None, false)
            .server_config()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("key_file {}: ", other_key.display())),
            "{err}"
        );
    }
}
