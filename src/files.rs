//! Identity sources apart from the Consul agent: certificate files.
//!
//! A [`ConnectService`](crate::ConnectService) normally takes its roots and leaf from the
//! local agent. With [`CertificateFiles`] it takes them from three PEM files instead (a CA
//! bundle, the leaf chain, its key), as Go's `connect.NewDevServiceFromCertFiles` does, and
//! re-reads them while it runs, so a rotation done by rewriting the files needs no restart.
//! See [`ConnectServiceBuilder::certificate_files`](crate::service::ConnectServiceBuilder::certificate_files).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::UnixTime;

use crate::tls::{Material, TlsError};

/// How often [`CertificateFiles`] are checked for changes unless told otherwise.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Where a service's TLS material lives on disk: a PEM bundle of the CA certificates to trust,
/// the leaf certificate (followed by any intermediates to present) and its private key.
///
/// The files are read once when the service is built (bad files fail the build) and then
/// every [`poll_interval`](Self::poll_interval). A change is verified as a whole before it is
/// published: a reload that does not verify (a half-written file, a key that does not match,
/// an expired leaf) keeps the last good material and is reported in
/// [`ConnectService::status`](crate::ConnectService::status) until the files are good again.
/// Unchanged files are not published again.
///
/// Trust domains come from the CA certificates' SPIFFE signing-ID URI SANs; a CA that names
/// none stands for the leaf's own trust domain (see [`Material::from_pem`]).
///
/// ```
/// use consul_connect::files::CertificateFiles;
/// use std::time::Duration;
///
/// let files = CertificateFiles::new("/etc/web/ca.pem", "/etc/web/cert.pem", "/etc/web/key.pem")
///     .poll_interval(Duration::from_secs(5));
/// assert_eq!(files.cert_file(), std::path::Path::new("/etc/web/cert.pem"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    poll_interval: Duration,
}

impl CertificateFiles {
    /// The CA bundle, leaf chain and key files, polled every [`DEFAULT_POLL_INTERVAL`].
    pub fn new(
        ca_file: impl Into<PathBuf>,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            ca_file: ca_file.into(),
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }

    /// How often the files are read and compared with what was last read.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// The CA bundle file.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The leaf certificate (chain) file.
    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }

    /// The private key file.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// The interval between two reads.
    pub fn interval(&self) -> Duration {
        self.poll_interval
    }

    /// Reads the three files and builds the material they describe, verified at `now`.
    pub fn load(&self, now: UnixTime) -> Result<Material, FilesError> {
        self.read()?.material(self, now)
    }

    /// The current contents of the three files (blocking I/O).
    pub(crate) fn read(&self) -> Result<Contents, FilesError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| FilesError::Read {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        };
        Ok(Contents {
            ca: read(&self.ca_file)?,
            cert: read(&self.cert_file)?,
            key: read(&self.key_file)?,
        })
    }
}

/// Why certificate files could not be used. Never carries key material.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FilesError {
    /// A file could not be read.
    #[error("cannot read {path:?}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The files were read but do not make valid material.
    #[error("certificate files {cert_file:?} (key {key_file:?}, CA {ca_file:?}): {source}")]
    Invalid {
        /// The CA bundle file.
        ca_file: PathBuf,
        /// The leaf certificate file.
        cert_file: PathBuf,
        /// The key file.
        key_file: PathBuf,
        /// What failed (boxed to keep the error small).
        #[source]
        source: Box<TlsError>,
    },
    /// The leaf is valid but not the service's own (another service or datacenter).
    #[error("certificate file {cert_file:?}: {reason}")]
    NotThisService {
        /// The leaf certificate file.
        cert_file: PathBuf,
        /// Whose leaf it is instead.
        reason: String,
    },
}

/// What the three files held at one read. `Debug` omits the key.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Contents {
    ca: String,
    cert: String,
    key: String,
}

impl Contents {
    /// The material these contents describe, verified at `now`.
    pub(crate) fn material(
        &self,
        files: &CertificateFiles,
        now: UnixTime,
    ) -> Result<Material, FilesError> {
        Material::from_pem(&self.ca, &self.cert, &self.key, now).map_err(|source| {
            FilesError::Invalid {
                ca_file: files.ca_file.clone(),
                cert_file: files.cert_file.clone(),
                key_file: files.key_file.clone(),
                source: Box::new(source),
            }
        })
    }
}

impl fmt::Debug for Contents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Contents")
            .field("ca_len", &self.ca.len())
            .field("cert_len", &self.cert.len())
            .finish_non_exhaustive()
    }
}
