//! The agent client's settings, as Go's `api.DefaultConfig()` reads them from `CONSUL_*`
//! variables, and the builder that turns them into an [`AgentClient`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::transport::{AgentConnector, AgentTls, DangerousAcceptAnyAgentCertificate, Dial};
use super::{AgentClient, AgentError, ClientInner, Token, DEFAULT_ADDR, DEFAULT_IDLE_TIMEOUT};

/// `CONSUL_HTTP_ADDR`: `host:port`, `http://host:port[/prefix]`, `https://…` or `unix:///path`.
pub const HTTP_ADDR_ENV: &str = "CONSUL_HTTP_ADDR";
/// `CONSUL_HTTP_TOKEN`: the ACL token.
pub const HTTP_TOKEN_ENV: &str = "CONSUL_HTTP_TOKEN";
/// `CONSUL_HTTP_TOKEN_FILE`: a file holding the ACL token; when it is set and not empty it wins
/// over `CONSUL_HTTP_TOKEN`, as in Go's `api.NewClient`.
pub const HTTP_TOKEN_FILE_ENV: &str = "CONSUL_HTTP_TOKEN_FILE";
/// `CONSUL_HTTP_AUTH`: HTTP basic auth, `user` or `user:password`.
pub const HTTP_AUTH_ENV: &str = "CONSUL_HTTP_AUTH";
/// `CONSUL_HTTP_SSL`: `true` switches the scheme to https.
pub const HTTP_SSL_ENV: &str = "CONSUL_HTTP_SSL";
/// `CONSUL_HTTP_SSL_VERIFY`: `false` turns verification of the agent's certificate off.
pub const HTTP_SSL_VERIFY_ENV: &str = "CONSUL_HTTP_SSL_VERIFY";
/// `CONSUL_CACERT`: a PEM file of CA certificates to verify the agent with.
pub const CACERT_ENV: &str = "CONSUL_CACERT";
/// `CONSUL_CAPATH`: a directory of PEM CA certificates to verify the agent with.
pub const CAPATH_ENV: &str = "CONSUL_CAPATH";
/// `CONSUL_CLIENT_CERT`: the client certificate (PEM) for mutual TLS with the agent.
pub const CLIENT_CERT_ENV: &str = "CONSUL_CLIENT_CERT";
/// `CONSUL_CLIENT_KEY`: the client certificate's private key (PEM).
pub const CLIENT_KEY_ENV: &str = "CONSUL_CLIENT_KEY";
/// `CONSUL_TLS_SERVER_NAME`: the name to verify the agent's certificate for (default: the
/// address's host).
pub const TLS_SERVER_NAME_ENV: &str = "CONSUL_TLS_SERVER_NAME";
/// `CONSUL_NAMESPACE`: sent as `?ns=` on every request.
pub const NAMESPACE_ENV: &str = "CONSUL_NAMESPACE";
/// `CONSUL_PARTITION`: sent as `?partition=` on every request.
pub const PARTITION_ENV: &str = "CONSUL_PARTITION";

/// Configures an [`AgentClient`]: start from the defaults ([`AgentClient::builder`]) or from the
/// environment ([`AgentClientBuilder::from_env`]), change what you need, then
/// [`build`](Self::build). Files (token, CA, client certificate) are read by `build`.
///
/// Errors name the setting by its environment variable, whether it came from there or from a
/// builder method.
///
/// ```no_run
/// use consul_connect::agent::{AgentClientBuilder, Token};
///
/// let agent = AgentClientBuilder::from_env()?
///     .address("https://consul.example:8501")
///     .ca_file("/etc/consul/ca.pem")
///     .client_cert("/etc/consul/client.pem", "/etc/consul/client-key.pem")
///     .token(Token::new("…"))
///     .build()?;
/// # Ok::<(), consul_connect::agent::AgentError>(())
/// ```
#[derive(Clone)]
pub struct AgentClientBuilder {
    address: String,
    ssl: bool,
    token: Option<Token>,
    token_file: Option<PathBuf>,
    basic_auth: Option<(String, Option<String>)>,
    ca_file: Option<PathBuf>,
    ca_path: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    client_cert_half: Option<&'static str>,
    tls_server_name: Option<String>,
    skip_verify: bool,
    namespace: Option<String>,
    partition: Option<String>,
    idle_timeout: Duration,
}

impl fmt::Debug for AgentClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentClientBuilder")
            .field("address", &self.address)
            .field("ssl", &self.ssl)
            .field("token", &self.token)
            .field("token_file", &self.token_file)
            .field(
                "basic_auth_user",
                &self.basic_auth.as_ref().map(|(user, _)| user),
            )
            .field("ca_file", &self.ca_file)
            .field("ca_path", &self.ca_path)
            .field("client_cert", &self.client_cert)
            .field("tls_server_name", &self.tls_server_name)
            .field("skip_verify", &self.skip_verify)
            .field("namespace", &self.namespace)
            .field("partition", &self.partition)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl Default for AgentClientBuilder {
    fn default() -> Self {
        Self {
            address: DEFAULT_ADDR.to_owned(),
            ssl: false,
            token: None,
            token_file: None,
            basic_auth: None,
            ca_file: None,
            ca_path: None,
            client_cert: None,
            client_cert_half: None,
            tls_server_name: None,
            skip_verify: false,
            namespace: None,
            partition: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl AgentClientBuilder {
    /// The settings from the process environment (the `CONSUL_*` constants of this module), as
    /// Go's `api.DefaultConfig()` reads them. An unset or empty variable keeps the default.
    pub fn from_env() -> Result<Self, AgentError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`from_env`](Self::from_env), with the variables read through `lookup`.
    ///
    /// ```
    /// use consul_connect::agent::AgentClientBuilder;
    /// let vars = [("CONSUL_HTTP_ADDR", "10.0.0.1:8501"), ("CONSUL_HTTP_SSL", "true")];
    /// let lookup = |name: &str| {
    ///     vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    /// };
    /// let builder = AgentClientBuilder::from_lookup(lookup)?;
    /// assert!(format!("{builder:?}").contains("ssl: true"));
    /// # Ok::<(), consul_connect::agent::AgentError>(())
    /// ```
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, AgentError> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let mut b = Self::default();
        if let Some(addr) = get(HTTP_ADDR_ENV) {
            b.address = addr;
        }
        b.token_file = get(HTTP_TOKEN_FILE_ENV).map(PathBuf::from);
        b.token = get(HTTP_TOKEN_ENV).map(Token::new);
        if let Some(auth) = get(HTTP_AUTH_ENV) {
            b.basic_auth = Some(match auth.split_once(':') {
                Some((user, pass)) => (user.to_owned(), Some(pass.to_owned())),
                None => (auth, None),
            });
        }
        if let Some(v) = get(HTTP_SSL_ENV) {
            b.ssl = parse_bool(HTTP_SSL_ENV, &v)?;
        }
        b.tls_server_name = get(TLS_SERVER_NAME_ENV);
        b.ca_file = get(CACERT_ENV).map(PathBuf::from);
        b.ca_path = get(CAPATH_ENV).map(PathBuf::from);
        let cert = get(CLIENT_CERT_ENV).map(PathBuf::from);
        let key = get(CLIENT_KEY_ENV).map(PathBuf::from);
        match (cert, key) {
            (Some(cert), Some(key)) => b.client_cert = Some((cert, key)),
            (Some(_), None) => b.client_cert_half = Some(CLIENT_CERT_ENV),
            (None, Some(_)) => b.client_cert_half = Some(CLIENT_KEY_ENV),
            (None, None) => {}
        }
        if let Some(v) = get(HTTP_SSL_VERIFY_ENV) {
            b.skip_verify = !parse_bool(HTTP_SSL_VERIFY_ENV, &v)?;
        }
        b.namespace = get(NAMESPACE_ENV);
        b.partition = get(PARTITION_ENV);
        Ok(b)
    }

    /// The agent's address (`CONSUL_HTTP_ADDR`): `host:port`, `http://host:port[/prefix]`,
    /// `https://host:port[/prefix]` or `unix:///path/to/socket`.
    pub fn address(mut self, addr: impl Into<String>) -> Self {
        self.address = addr.into();
        self
    }

    /// Use https even for a `host:port` or `http://` address (`CONSUL_HTTP_SSL`).
    pub fn ssl(mut self, https: bool) -> Self {
        self.ssl = https;
        self
    }

    /// The ACL token (`CONSUL_HTTP_TOKEN`).
    pub fn token(mut self, token: Token) -> Self {
        self.token = Some(token);
        self
    }

    /// A file holding the ACL token (`CONSUL_HTTP_TOKEN_FILE`), read once by `build`; a
    /// non-empty file wins over [`token`](Self::token), as in Go.
    pub fn token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token_file = Some(path.into());
        self
    }

    /// HTTP basic auth (`CONSUL_HTTP_AUTH`), for an agent behind a proxy that asks for it.
    pub fn basic_auth(mut self, user: impl Into<String>, password: Option<String>) -> Self {
        self.basic_auth = Some((user.into(), password));
        self
    }

    /// A PEM file of CA certificates to verify the agent with (`CONSUL_CACERT`). Without it
    /// nor [`ca_path`](Self::ca_path), the system's CA bundle is used.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// A directory of PEM CA certificates (`CONSUL_CAPATH`); [`ca_file`](Self::ca_file) wins
    /// when both are set, as in Go's `rootcerts`.
    pub fn ca_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_path = Some(path.into());
        self
    }

    /// A client certificate and its key, both PEM, for agents that verify incoming HTTPS
    /// (`CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`).
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self.client_cert_half = None;
        self
    }

    /// The name the agent's certificate must hold (`CONSUL_TLS_SERVER_NAME`); a `:port` is
    /// dropped. Default: the address's host.
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls_server_name = Some(name.into());
        self
    }

    /// **Dangerous**: accept any certificate from the agent (`CONSUL_HTTP_SSL_VERIFY=false`,
    /// Go's `InsecureSkipVerify`). Anyone able to intercept the connection can then pose as
    /// the agent, read the ACL token and hand out certificates and authorization decisions.
    pub fn dangerous_skip_verify(mut self, skip: bool) -> Self {
        self.skip_verify = skip;
        self
    }

    /// The namespace sent as `?ns=` on every request (`CONSUL_NAMESPACE`, Consul Enterprise).
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// The admin partition sent as `?partition=` on every request (`CONSUL_PARTITION`).
    pub fn partition(mut self, partition: impl Into<String>) -> Self {
        self.partition = Some(partition.into());
        self
    }

    /// How long a pooled connection may stay idle (default [`DEFAULT_IDLE_TIMEOUT`]).
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Reads the files and builds the client. Nothing is dialed yet.
    pub fn build(self) -> Result<AgentClient, AgentError> {
        let target = Target::parse(&self.address, self.ssl)?;
        let mut token = self.token.clone();
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| config_error(HTTP_TOKEN_FILE_ENV, cannot_read(path, &e)))?;
            let text = text.trim();
            if !text.is_empty() {
                token = Some(Token::new(text));
            }
        }
        let tls = match target.https {
            true => Some(self.agent_tls(&target)?),
            false => None,
        };
        let basic_auth = self.basic_auth.as_ref().map(|(user, pass)| {
            use base64::Engine as _;
            let raw = format!("{user}:{}", pass.as_deref().unwrap_or(""));
            let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
            // Base64 is always a valid header value.
            let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
            value.set_sensitive(true);
            value
        });
        let connector = AgentConnector::new(target.dial.clone(), tls);
        Ok(AgentClient {
            inner: Arc::new(ClientInner {
                http: super::pooled_client(connector.clone(), self.idle_timeout),
                connector,
                base: target.base,
                display: target.display,
                token,
                basic_auth,
                namespace: self.namespace,
                partition: self.partition,
                idle_timeout: self.idle_timeout,
            }),
        })
    }

    fn agent_tls(&self, target: &Target) -> Result<AgentTls, AgentError> {
        let provider = crate::tls::provider().clone();
        let tls_error = |setting, e: rustls::Error| config_error(setting, e.to_string());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(HTTP_SSL_ENV, e))?;
        let builder = if self.skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(DangerousAcceptAnyAgentCertificate(
                    provider,
                )))
        } else {
            builder.with_root_certificates(self.root_store()?)
        };
        if let Some(half) = self.client_cert_half {
            return Err(config_error(
                half,
                format!("both {CLIENT_CERT_ENV} and {CLIENT_KEY_ENV} must be set"),
            ));
        }
        let mut config = match &self.client_cert {
            Some((cert, key_file)) => {
                let chain = read_certs(CLIENT_CERT_ENV, cert)?;
                let key = read_key(key_file)?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    let (cert, key) = (cert.display(), key_file.display());
                    config_error(CLIENT_CERT_ENV, format!("{cert} with key {key}: {e}"))
                })?
            }
            None => builder.with_no_client_auth(),
        };
        // As Go's client: no resumption to worry about, plain HTTP/1.1 to the agent.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = match &self.tls_server_name {
            Some(name) => strip_port(name).to_owned(),
            None => target.host.clone().ok_or_else(|| {
                config_error(
                    TLS_SERVER_NAME_ENV,
                    "must be set for https over a unix socket".to_owned(),
                )
            })?,
        };
        let server_name = ServerName::try_from(name.trim_matches(['[', ']']).to_owned())
            .map_err(|_| config_error(TLS_SERVER_NAME_ENV, format!("invalid name {name:?}")))?;
        Ok(AgentTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The CAs to verify the agent with: the CA file, else the CA directory, else the system's
    /// bundle (where Go's `crypto/x509` looks on Linux).
    fn root_store(&self) -> Result<rustls::RootCertStore, AgentError> {
        let mut roots = rustls::RootCertStore::empty();
        let mut add = |setting, certs: Vec<CertificateDer<'static>>, from: &Path| {
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| config_error(setting, format!("{}: {e}", from.display())))?;
            }
            Ok::<_, AgentError>(())
        };
        if let Some(file) = &self.ca_file {
            add(CACERT_ENV, read_certs(CACERT_ENV, file)?, file)?;
        } else if let Some(dir) = &self.ca_path {
            let entries = std::fs::read_dir(dir)
                .map_err(|e| config_error(CAPATH_ENV, cannot_read(dir, &e)))?;
            for entry in entries {
                let path = entry
                    .map_err(|e| config_error(CAPATH_ENV, cannot_read(dir, &e)))?
                    .path();
                if path.is_file() {
                    add(CAPATH_ENV, read_certs(CAPATH_ENV, &path)?, &path)?;
                }
            }
        } else {
            let bundle = std::env::var_os("SSL_CERT_FILE")
                .map(PathBuf::from)
                .into_iter()
                .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
                .find(|p| p.is_file());
            let Some(bundle) = bundle else {
                return Err(config_error(
                    CACERT_ENV,
                    "no CA given and no system CA bundle found".to_owned(),
                ));
            };
            add(CACERT_ENV, read_certs(CACERT_ENV, &bundle)?, &bundle)?;
        }
        Ok(roots)
    }
}

/// Where Go's `crypto/x509` finds the system's CA bundle on Linux.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The parsed address: how to dial, what to put before each request path, how to show it.
struct Target {
    dial: Dial,
    https: bool,
    /// `http(s)://authority[/prefix]` (the authority is `localhost` for a unix socket).
    base: String,
    /// `host:port` for plain HTTP over TCP, the full URL otherwise.
    display: String,
    /// The host to verify the agent's certificate for (none for a unix socket).
    host: Option<String>,
}

impl Target {
    fn parse(addr: &str, ssl: bool) -> Result<Self, AgentError> {
        let invalid = |reason| AgentError::InvalidAddress {
            addr: addr.to_owned(),
            reason,
        };
        // As Go's `api.NewClient`: `http://` with CONSUL_HTTP_SSL=true stays https ("never
        // revert to http if TLS was explicitly requested").
        let (https, rest) = match addr.split_once("://") {
            // Go takes a path prefix only after a scheme.
            None if addr.contains('/') => return Err(invalid("expected host:port")),
            None => (ssl, addr),
            Some(("http", rest)) => (ssl, rest),
            Some(("https", rest)) => (true, rest),
            Some(("unix", path)) => {
                if path.is_empty() {
                    return Err(invalid("expected unix:///path/to/socket"));
                }
                let scheme = if ssl { "https" } else { "http" };
                return Ok(Self {
                    dial: Dial::Unix(PathBuf::from(path)),
                    https: ssl,
                    base: format!("{scheme}://localhost"),
                    display: addr.to_owned(),
                    host: None,
                });
            }
            Some(_) => return Err(invalid("the scheme must be http, https or unix")),
        };
        let (authority, prefix) = match rest.split_once('/') {
            Some((authority, prefix)) => (authority, prefix.trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty()
            || authority.contains(['?', '#', '@'])
            || prefix.contains(['?', '#'])
        {
            return Err(invalid("expected host:port"));
        }
        let scheme = if https { "https" } else { "http" };
        let uri = format!("{scheme}://{authority}")
            .parse::<http::Uri>()
            .map_err(|_| invalid("expected host:port"))?;
        let host = uri.host().map(str::to_owned);
        let mut base = format!("{scheme}://{authority}");
        if !prefix.is_empty() {
            base.push('/');
            base.push_str(prefix);
        }
        let display = if https {
            base.clone()
        } else {
            base.trim_start_matches("http://").to_owned()
        };
        Ok(Self {
            dial: Dial::Tcp,
            https,
            base,
            display,
            host,
        })
    }
}

/// Go's `strconv.ParseBool`.
fn parse_bool(setting: &'static str, value: &str) -> Result<bool, AgentError> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(config_error(setting, format!("invalid boolean {value:?}"))),
    }
}

fn strip_port(name: &str) -> &str {
    // `host:port` or `[v6]:port`; a bare IPv6 address has more than one colon.
    match name.rsplit_once(':') {
        Some((host, port))
            if port.bytes().all(|b| b.is_ascii_digit())
                && (host.ends_with(']') || !host.contains(':')) =>
        {
            host
        }
        _ => name,
    }
}

fn config_error(setting: &'static str, message: String) -> AgentError {
    AgentError::Config { setting, message }
}

fn cannot_read(path: &Path, e: &std::io::Error) -> String {
    format!("cannot read {}: {e}", path.display())
}

fn read_certs(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, AgentError> {
    let pem = std::fs::read(path).map_err(|e| config_error(setting, cannot_read(path, &e)))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(setting, format!("{}: invalid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(config_error(
            setting,
            format!("{}: no PEM certificate found", path.display()),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, AgentError> {
    let pem =
        std::fs::read(path).map_err(|e| config_error(CLIENT_KEY_ENV, cannot_read(path, &e)))?;
    // The error names the file only: it may quote the key's text.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        config_error(
            CLIENT_KEY_ENV,
            format!("{}: no PEM private key found", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<AgentClientBuilder, AgentError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AgentClientBuilder::from_lookup(move |name| map.get(name).cloned())
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "consul-connect-agent-config-{}-{}-{name}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults_are_go_s() {
        let client = env(&[]).unwrap().build().unwrap();
        assert_eq!(client.address(), "127.0.0.1:8500");
        assert_eq!(client.inner.base, "http://127.0.0.1:8500");
        assert!(client.inner.token.is_none());
        assert!(client.inner.namespace.is_none() && client.inner.partition.is_none());
    }

    #[test]
    fn schemes_and_ssl_follow_go() {
        let base = |vars: &[(&str, &str)]| env(vars).unwrap().build().unwrap().inner.base.clone();
        assert_eq!(
            base(&[("CONSUL_HTTP_ADDR", "10.1.2.3:8500")]),
            "http://10.1.2.3:8500"
        );
        let https = [("CONSUL_HTTP_SSL_VERIFY", "false")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = https.to_vec();
            v.extend_from_slice(extra);
            base(&v)
        };
        assert_eq!(
            with(&[("CONSUL_HTTP_ADDR", "https://consul:8501")]),
            "https://consul:8501"
        );
        // CONSUL_HTTP_SSL=true switches a bare or http:// address to https.
        assert_eq!(
            with(&[
                ("CONSUL_HTTP_ADDR", "consul:8501"),
                ("CONSUL_HTTP_SSL", "1")
            ]),
            "https://consul:8501"
        );
        assert_eq!(
            with(&[
                ("CONSUL_HTTP_ADDR", "http://consul:8501"),
                ("CONSUL_HTTP_SSL", "true")
            ]),
            "https://consul:8501"
        );
        // A path is a reverse proxy's prefix.
        assert_eq!(
            base(&[("CONSUL_HTTP_ADDR", "http://gw:80/consul/")]),
            "http://gw:80/consul"
        );
        let unix = env(&[("CONSUL_HTTP_ADDR", "unix:///run/consul.sock")])
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(unix.address(), "unix:///run/consul.sock");
        assert!(
            matches!(&unix.inner.connector_dial(), Dial::Unix(p) if p == Path::new("/run/consul.sock"))
        );
        for bad in ["ftp://x:1", "http://", "unix://", "http://u@x:1"] {
            let err = env(&[("CONSUL_HTTP_ADDR", bad)])
                .unwrap()
                .build()
                .unwrap_err();
            assert!(
                matches!(err, AgentError::InvalidAddress { ref addr, .. } if addr == bad),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn bad_booleans_name_the_variable() {
        let err = env(&[("CONSUL_HTTP_SSL_VERIFY", "maybe")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CONSUL_HTTP_SSL_VERIFY: invalid boolean \"maybe\""
        );
        let err = env(&[("CONSUL_HTTP_SSL", "yes")]).unwrap_err();
        assert_eq!(err.to_string(), "CONSUL_HTTP_SSL: invalid boolean \"yes\"");
        assert!(env(&[("CONSUL_HTTP_SSL_VERIFY", "F")]).unwrap().skip_verify);
        assert!(
            !env(&[("CONSUL_HTTP_SSL_VERIFY", "TRUE")])
                .unwrap()
                .skip_verify
        );
    }

    #[test]
    fn token_file_wins_over_token_unless_empty() {
        let file = temp_file("token", "  from-file\n");
        let path = file.to_str().unwrap();
        let client = env(&[
            ("CONSUL_HTTP_TOKEN", "from-env"),
            ("CONSUL_HTTP_TOKEN_FILE", path),
        ])
        .unwrap()
        .build()
        .unwrap();
        assert_eq!(client.inner.token, Some(Token::new("from-file")));
        std::fs::write(&file, "\n").unwrap();
        let client = env(&[
            ("CONSUL_HTTP_TOKEN", "from-env"),
            ("CONSUL_HTTP_TOKEN_FILE", path),
        ])
        .unwrap()
        .build()
        .unwrap();
        assert_eq!(client.inner.token, Some(Token::new("from-env")));
        std::fs::remove_file(&file).unwrap();
        let err = env(&[("CONSUL_HTTP_TOKEN_FILE", path)])
            .unwrap()
            .build()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("CONSUL_HTTP_TOKEN_FILE: cannot read {path}: ")),
            "{text}"
        );
    }

    #[test]
    fn basic_auth_user_and_password() {
        let client = env(&[("CONSUL_HTTP_AUTH", "admin:pa:ss")])
            .unwrap()
            .build()
            .unwrap();
        // base64("admin:pa:ss")
        assert_eq!(
            client.inner.basic_auth.as_ref().unwrap(),
            "Basic YWRtaW46cGE6c3M="
        );
        let client = env(&[("CONSUL_HTTP_AUTH", "admin")])
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(client.inner.basic_auth.as_ref().unwrap(), "Basic YWRtaW46");
        let builder = env(&[("CONSUL_HTTP_AUTH", "admin:hunter2")]).unwrap();
        assert!(!format!("{builder:?}").contains("hunter2"));
        let client = builder.build().unwrap();
        assert!(!format!("{client:?}").contains("hunter2"));
    }

    #[test]
    fn namespace_and_partition_only_when_set() {
        let client = env(&[("CONSUL_NAMESPACE", "team-a"), ("CONSUL_PARTITION", "p1")])
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(client.inner.namespace.as_deref(), Some("team-a"));
        assert_eq!(client.inner.partition.as_deref(), Some("p1"));
        assert_eq!(
            client.inner.path_with_scope("/v1/x?index=3"),
            "/v1/x?index=3&ns=team-a&partition=p1"
        );
        assert_eq!(
            client.inner.path_with_scope("/v1/x"),
            "/v1/x?ns=team-a&partition=p1"
        );
        let plain = env(&[]).unwrap().build().unwrap();
        assert_eq!(plain.inner.path_with_scope("/v1/x"), "/v1/x");
    }

    #[test]
    fn tls_files_errors_name_variable_and_file() {
        let https = ("CONSUL_HTTP_ADDR", "https://127.0.0.1:8501");
        let err = env(&[https, ("CONSUL_CACERT", "/nonexistent/ca.pem")])
            .unwrap()
            .build()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("CONSUL_CACERT: cannot read /nonexistent/ca.pem: "),
            "{err}"
        );
        let junk = temp_file("junk.pem", "not a certificate\n");
        let junk = junk.to_str().unwrap();
        let err = env(&[https, ("CONSUL_CACERT", junk)])
            .unwrap()
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("CONSUL_CACERT: {junk}: no PEM certificate found")
        );
        let err = env(&[
            https,
            ("CONSUL_HTTP_SSL_VERIFY", "false"),
            ("CONSUL_CLIENT_CERT", junk),
        ])
        .unwrap()
        .build()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "CONSUL_CLIENT_CERT: both CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY must be set"
        );
        let err = env(&[https, ("CONSUL_CAPATH", "/nonexistent-dir")])
            .unwrap()
            .build()
            .unwrap_err();
        assert!(err
            .to_string()
            .starts_with("CONSUL_CAPATH: cannot read /nonexistent-dir"));
        // Plain http reads no TLS file at all, as Go builds its TLS config only for https.
        assert!(env(&[("CONSUL_CACERT", "/nonexistent/ca.pem")])
            .unwrap()
            .build()
            .is_ok());
    }

    #[test]
    fn server_name_defaults_to_the_host_and_drops_a_port() {
        let name = |vars: &[(&str, &str)]| {
            let b = env(vars).unwrap().dangerous_skip_verify(true);
            let target = Target::parse(&b.address, b.ssl).unwrap();
            b.agent_tls(&target)
                .unwrap()
                .server_name
                .to_str()
                .into_owned()
        };
        assert_eq!(
            name(&[("CONSUL_HTTP_ADDR", "https://consul.local:8501")]),
            "consul.local"
        );
        assert_eq!(name(&[("CONSUL_HTTP_ADDR", "https://[::1]:8501")]), "::1");
        assert_eq!(
            name(&[
                ("CONSUL_HTTP_ADDR", "https://127.0.0.1:8501"),
                ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul:8501")
            ]),
            "server.dc1.consul"
        );
        let b = env(&[
            ("CONSUL_HTTP_ADDR", "unix:///s"),
            ("CONSUL_HTTP_SSL", "true"),
        ])
        .unwrap()
        .dangerous_skip_verify(true);
        let err = b.build().unwrap_err();
        assert_eq!(
            err.to_string(),
            "CONSUL_TLS_SERVER_NAME: must be set for https over a unix socket"
        );
    }
}
