//! SPIFFE identities as Consul Connect uses them.
//!
//! Consul gives each service the URI `spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>`
//! (from 1.11, `/ap/<partition>` comes first when the partition is not `default`) and its CA the
//! signing URI `spiffe://<trust-domain>`. Modern Consul also issues identities that are not
//! services: client agents (`/agent/client/dc/<dc>/id/<node-id>`, 1.10+), servers
//! (`/agent/server/dc/<dc>`, 1.13+) and mesh gateways (`/gateway/mesh/dc/<dc>`, 1.13+). Each has
//! its own [`SpiffeId`] variant, so that none of them can pass where a service is expected. The
//! types here can only hold a valid identity: parse once at the edge, then pass [`ServiceId`] or
//! [`SpiffeId`] around.
//!
//! The grammar is the SPIFFE one, stricter than Consul 1.4.5's Go parser: no percent-encoding,
//! no port, user info, query or fragment, and path segments of `A-Z a-z 0-9 - . _ ~` only.
//!
//! ```
//! use consul_connect_types::spiffe::{ServiceId, SpiffeId};
//!
//! let id: SpiffeId = "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web"
//!     .parse()?;
//! let service = id.as_service().expect("a service identity");
//! assert_eq!(service.service(), "web");
//! assert_eq!(service.datacenter(), "dc1");
//! assert_eq!(id.to_string(), service.to_string());
//! # Ok::<(), consul_connect_types::spiffe::SpiffeIdError>(())
//! ```

use std::fmt;
use std::str::FromStr;

/// Why a string is not a SPIFFE identity Consul could have issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The URI does not start with `spiffe://`.
    #[error("SPIFFE ID must have 'spiffe' scheme: {uri:?}")]
    Scheme {
        /// The input.
        uri: String,
    },
    /// The trust domain (URI host) is empty.
    #[error("SPIFFE ID has an empty trust domain: {uri:?}")]
    EmptyTrustDomain {
        /// The input.
        uri: String,
    },
    /// The trust domain holds a character outside `a-z A-Z 0-9 . - _`, or a port or user info.
    #[error("SPIFFE ID trust domain {trust_domain:?} has the invalid character {ch:?}")]
    TrustDomainChar {
        /// The trust domain as given.
        trust_domain: String,
        /// The first offending character.
        ch: char,
    },
    /// A query (`?`) or fragment (`#`) is present.
    #[error("SPIFFE ID must not have a query or fragment: {uri:?}")]
    QueryOrFragment {
        /// The input.
        uri: String,
    },
    /// Percent-encoding is not allowed in SPIFFE IDs.
    #[error("SPIFFE ID must not be percent-encoded: {uri:?}")]
    PercentEncoded {
        /// The input.
        uri: String,
    },
    /// The path is none of the forms Consul issues: empty (signing ID),
    /// `[/ap/<partition>]/ns/<ns>/dc/<dc>/svc/<service>`,
    /// `[/ap/<partition>]/agent/client/dc/<dc>/id/<node-id>`, `/agent/server/dc/<dc>` or
    /// `[/ap/<partition>]/gateway/mesh/dc/<dc>`.
    #[error("SPIFFE ID is not in the expected format: {uri:?}")]
    Format {
        /// The input.
        uri: String,
    },
    /// A valid SPIFFE ID of another kind where a service identity was required.
    #[error("SPIFFE ID {uri:?} is a {kind} identity, not a service identity")]
    NotAService {
        /// The input.
        uri: String,
        /// What it identifies: `agent`, `server`, `mesh gateway` or `CA signing`.
        kind: &'static str,
    },
    /// One of the partition, namespace, datacenter, service or node-ID segments is empty.
    #[error("SPIFFE ID has an empty {segment}: {uri:?}")]
    EmptySegment {
        /// `partition`, `namespace`, `datacenter`, `service` or `node ID`.
        segment: &'static str,
        /// The input.
        uri: String,
    },
    /// A segment holds a character SPIFFE does not allow, or is `.` / `..`.
    #[error("SPIFFE ID {segment} {value:?} is invalid")]
    SegmentChar {
        /// `partition`, `namespace`, `datacenter`, `service` or `node ID`.
        segment: &'static str,
        /// The segment's value.
        value: String,
    },
    /// A signing ID's trust domain has no dot (Consul's form is `<cluster-id>.<domain>`).
    #[error("SPIFFE signing ID needs a trust domain of the form <cluster-id>.<domain>: {uri:?}")]
    SigningTrustDomain {
        /// The input.
        uri: String,
    },
}

/// A trust domain, such as `11111111-2222-3333-4444-555555555555.consul`.
///
/// Compared case-insensitively, as Consul lowercases the host it signs for.
#[derive(Clone)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Checks `s` as a trust domain (non-empty, `a-z A-Z 0-9 . - _`).
    ///
    /// ```
    /// use consul_connect_types::spiffe::TrustDomain;
    /// let td = TrustDomain::new("ABC.consul")?;
    /// assert_eq!(td, TrustDomain::new("abc.consul")?);
    /// # Ok::<(), consul_connect_types::spiffe::SpiffeIdError>(())
    /// ```
    pub fn new(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain { uri: String::new() });
        }
        if let Some(ch) = s.chars().find(|c| !is_trust_domain_char(*c)) {
            return Err(SpiffeIdError::TrustDomainChar {
                trust_domain: s.to_owned(),
                ch,
            });
        }
        Ok(Self(s.to_owned()))
    }

    /// The trust domain as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq for TrustDomain {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}
impl Eq for TrustDomain {}

impl std::hash::Hash for TrustDomain {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for b in self.0.bytes() {
            state.write_u8(b.to_ascii_lowercase());
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({:?})", self.0)
    }
}

/// The partition every Consul OSS identity is in, and the one Consul leaves out of URIs.
pub const DEFAULT_PARTITION: &str = "default";

/// A service identity: `spiffe://<trust-domain>[/ap/<partition>]/ns/<ns>/dc/<dc>/svc/<service>`.
///
/// `/ap/default/` and no `/ap/` segment are the same identity, written without it, as Consul
/// writes it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ServiceId {
    trust_domain: TrustDomain,
    // Boxed strings keep the identity (and the errors that carry one) small.
    /// `None` for the default partition.
    partition: Option<Box<str>>,
    namespace: Box<str>,
    datacenter: Box<str>,
    service: Box<str>,
}

impl ServiceId {
    /// Builds a service identity from its parts, checking each.
    ///
    /// ```
    /// use consul_connect_types::spiffe::{ServiceId, TrustDomain};
    /// let td = TrustDomain::new("abc.consul")?;
    /// let id = ServiceId::new(td, "default", "dc1", "db")?;
    /// assert_eq!(id.to_string(), "spiffe://abc.consul/ns/default/dc/dc1/svc/db");
    /// # Ok::<(), consul_connect_types::spiffe::SpiffeIdError>(())
    /// ```
    pub fn new(
        trust_domain: TrustDomain,
        namespace: &str,
        datacenter: &str,
        service: &str,
    ) -> Result<Self, SpiffeIdError> {
        let uri =
            || format!("spiffe://{trust_domain}/ns/{namespace}/dc/{datacenter}/svc/{service}");
        check_segment("namespace", namespace, uri)?;
        check_segment("datacenter", datacenter, uri)?;
        check_segment("service", service, uri)?;
        Ok(Self {
            trust_domain,
            partition: None,
            namespace: namespace.into(),
            datacenter: datacenter.into(),
            service: service.into(),
        })
    }

    /// The same identity in an admin partition (Consul Enterprise 1.11+); `default` means no
    /// partition segment.
    ///
    /// ```
    /// use consul_connect_types::spiffe::{ServiceId, TrustDomain};
    /// let id = ServiceId::new(TrustDomain::new("abc.consul")?, "default", "dc1", "db")?
    ///     .with_partition("eu")?;
    /// assert_eq!(id.to_string(), "spiffe://abc.consul/ap/eu/ns/default/dc/dc1/svc/db");
    /// assert_eq!(id.partition(), "eu");
    /// # Ok::<(), consul_connect_types::spiffe::SpiffeIdError>(())
    /// ```
    pub fn with_partition(mut self, partition: &str) -> Result<Self, SpiffeIdError> {
        check_segment("partition", partition, || {
            format!(
                "spiffe://{}/ap/{partition}/ns/{}/dc/{}/svc/{}",
                self.trust_domain, self.namespace, self.datacenter, self.service
            )
        })?;
        self.partition = (partition != DEFAULT_PARTITION).then(|| partition.into());
        Ok(self)
    }

    /// The trust domain (URI host).
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The admin partition: `default` unless the URI names another.
    pub fn partition(&self) -> &str {
        self.partition.as_deref().unwrap_or(DEFAULT_PARTITION)
    }

    /// The namespace (`default` in Consul OSS).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The datacenter the identity was issued in.
    pub fn datacenter(&self) -> &str {
        &self.datacenter
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.trust_domain)?;
        write_partition(f, self.partition.as_deref())?;
        write!(
            f,
            "/ns/{}/dc/{}/svc/{}",
            self.namespace, self.datacenter, self.service
        )
    }
}

impl fmt::Debug for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceId({self})")
    }
}

impl FromStr for ServiceId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<SpiffeId>()? {
            SpiffeId::Service(id) => Ok(id),
            other => Err(SpiffeIdError::NotAService {
                uri: s.to_owned(),
                kind: other.kind(),
            }),
        }
    }
}

/// The CA's signing identity: `spiffe://<cluster-id>.<domain>`, with an empty path.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SigningId {
    trust_domain: TrustDomain,
}

impl SigningId {
    /// The signing ID of a trust domain, which must contain a dot after its first character.
    pub fn new(trust_domain: TrustDomain) -> Result<Self, SpiffeIdError> {
        match trust_domain.as_str().find('.') {
            Some(i) if i > 0 => Ok(Self { trust_domain }),
            _ => Err(SpiffeIdError::SigningTrustDomain {
                uri: format!("spiffe://{trust_domain}"),
            }),
        }
    }

    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The cluster ID: the trust domain up to its first dot.
    pub fn cluster_id(&self) -> &str {
        let td = self.trust_domain.as_str();
        td.split_once('.').map_or(td, |(id, _)| id)
    }
}

impl fmt::Display for SigningId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.trust_domain)
    }
}

impl fmt::Debug for SigningId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningId({self})")
    }
}

/// A client agent's identity (Consul 1.10+, for the agent's own TLS to servers):
/// `spiffe://<trust-domain>[/ap/<partition>]/agent/client/dc/<dc>/id/<node-id>`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct AgentId {
    trust_domain: TrustDomain,
    partition: Option<String>,
    datacenter: String,
    node_id: String,
}

impl AgentId {
    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The admin partition (`default` unless the URI names another).
    pub fn partition(&self) -> &str {
        self.partition.as_deref().unwrap_or(DEFAULT_PARTITION)
    }

    /// The agent's datacenter.
    pub fn datacenter(&self) -> &str {
        &self.datacenter
    }

    /// The agent's node ID.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.trust_domain)?;
        write_partition(f, self.partition.as_deref())?;
        write!(
            f,
            "/agent/client/dc/{}/id/{}",
            self.datacenter, self.node_id
        )
    }
}

/// A Consul server's identity (1.13+, for peering):
/// `spiffe://<trust-domain>/agent/server/dc/<dc>`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ServerId {
    trust_domain: TrustDomain,
    datacenter: String,
}

impl ServerId {
    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The server's datacenter.
    pub fn datacenter(&self) -> &str {
        &self.datacenter
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/agent/server/dc/{}",
            self.trust_domain, self.datacenter
        )
    }
}

/// A mesh gateway's identity (1.13+):
/// `spiffe://<trust-domain>[/ap/<partition>]/gateway/mesh/dc/<dc>`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct MeshGatewayId {
    trust_domain: TrustDomain,
    partition: Option<String>,
    datacenter: String,
}

impl MeshGatewayId {
    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The admin partition (`default` unless the URI names another).
    pub fn partition(&self) -> &str {
        self.partition.as_deref().unwrap_or(DEFAULT_PARTITION)
    }

    /// The gateway's datacenter.
    pub fn datacenter(&self) -> &str {
        &self.datacenter
    }
}

impl fmt::Display for MeshGatewayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.trust_domain)?;
        write_partition(f, self.partition.as_deref())?;
        write!(f, "/gateway/mesh/dc/{}", self.datacenter)
    }
}

/// Any identity Consul's CA issues. Only [`SpiffeId::Service`] may ever be a Connect caller or
/// a dialed server; the SDK refuses the others in both places.
#[derive(Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SpiffeId {
    /// A service leaf identity.
    Service(ServiceId),
    /// The CA's signing identity.
    Signing(SigningId),
    /// A client agent.
    Agent(AgentId),
    /// A Consul server.
    Server(ServerId),
    /// A mesh gateway.
    MeshGateway(MeshGatewayId),
}

impl SpiffeId {
    /// The service identity, if this is one.
    pub fn as_service(&self) -> Option<&ServiceId> {
        match self {
            SpiffeId::Service(id) => Some(id),
            _ => None,
        }
    }

    /// The trust domain of any kind.
    pub fn trust_domain(&self) -> &TrustDomain {
        match self {
            SpiffeId::Service(id) => id.trust_domain(),
            SpiffeId::Signing(id) => id.trust_domain(),
            SpiffeId::Agent(id) => id.trust_domain(),
            SpiffeId::Server(id) => id.trust_domain(),
            SpiffeId::MeshGateway(id) => id.trust_domain(),
        }
    }

    /// What the identity names: `service`, `CA signing`, `agent`, `server` or `mesh gateway`.
    pub fn kind(&self) -> &'static str {
        match self {
            SpiffeId::Service(_) => "service",
            SpiffeId::Signing(_) => "CA signing",
            SpiffeId::Agent(_) => "agent",
            SpiffeId::Server(_) => "server",
            SpiffeId::MeshGateway(_) => "mesh gateway",
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpiffeId::Service(id) => id.fmt(f),
            SpiffeId::Signing(id) => id.fmt(f),
            SpiffeId::Agent(id) => id.fmt(f),
            SpiffeId::Server(id) => id.fmt(f),
            SpiffeId::MeshGateway(id) => id.fmt(f),
        }
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpiffeId::Service(id) => fmt::Debug::fmt(id, f),
            SpiffeId::Signing(id) => fmt::Debug::fmt(id, f),
            other => write!(f, "SpiffeId({other})"),
        }
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let err_uri = || uri.to_owned();
        let rest = strip_scheme(uri).ok_or_else(|| SpiffeIdError::Scheme { uri: err_uri() })?;
        if rest.contains(['?', '#']) {
            return Err(SpiffeIdError::QueryOrFragment { uri: err_uri() });
        }
        if rest.contains('%') {
            return Err(SpiffeIdError::PercentEncoded { uri: err_uri() });
        }
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if host.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain { uri: err_uri() });
        }
        let trust_domain = TrustDomain::new(host)?;
        if path.is_empty() {
            return SigningId::new(trust_domain)
                .map(SpiffeId::Signing)
                .map_err(|_| SpiffeIdError::SigningTrustDomain { uri: err_uri() });
        }
        let segments: Vec<&str> = path[1..].split('/').collect();
        // `/ap/<partition>` may lead every form but the server's.
        let (partition, rest) = match segments.as_slice() {
            ["ap", partition, rest @ ..] => {
                check_segment("partition", partition, err_uri)?;
                let partition = (*partition != DEFAULT_PARTITION).then(|| partition.to_string());
                (Some(partition), rest)
            }
            rest => (None, rest),
        };
        match (rest, partition) {
            (["ns", ns, "dc", dc, "svc", svc], partition) => {
                let mut id = ServiceId::new(trust_domain, ns, dc, svc)?;
                id.partition = partition.flatten().map(String::into_boxed_str);
                Ok(SpiffeId::Service(id))
            }
            (["agent", "client", "dc", dc, "id", node_id], partition) => {
                check_segment("datacenter", dc, err_uri)?;
                check_segment("node ID", node_id, err_uri)?;
                Ok(SpiffeId::Agent(AgentId {
                    trust_domain,
                    partition: partition.flatten(),
                    datacenter: dc.to_string(),
                    node_id: node_id.to_string(),
                }))
            }
            (["agent", "server", "dc", dc], None) => {
                check_segment("datacenter", dc, err_uri)?;
                Ok(SpiffeId::Server(ServerId {
                    trust_domain,
                    datacenter: dc.to_string(),
                }))
            }
            (["gateway", "mesh", "dc", dc], partition) => {
                check_segment("datacenter", dc, err_uri)?;
                Ok(SpiffeId::MeshGateway(MeshGatewayId {
                    trust_domain,
                    partition: partition.flatten(),
                    datacenter: dc.to_string(),
                }))
            }
            _ => Err(SpiffeIdError::Format { uri: err_uri() }),
        }
    }
}

impl serde::Serialize for ServiceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ServiceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Writes `/ap/<partition>` for a partition other than the default.
fn write_partition(f: &mut fmt::Formatter<'_>, partition: Option<&str>) -> fmt::Result {
    match partition {
        Some(p) => write!(f, "/ap/{p}"),
        None => Ok(()),
    }
}

/// The scheme is case-insensitive (RFC 3986), the rest is not.
fn strip_scheme(uri: &str) -> Option<&str> {
    let scheme = uri.get(..9)?;
    scheme.eq_ignore_ascii_case("spiffe://").then(|| &uri[9..])
}

fn is_trust_domain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

fn check_segment(
    segment: &'static str,
    value: &str,
    uri: impl Fn() -> String,
) -> Result<(), SpiffeIdError> {
    if value.is_empty() {
        return Err(SpiffeIdError::EmptySegment {
            segment,
            uri: uri(),
        });
    }
    let valid_chars = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~'));
    if !valid_chars || value == "." || value == ".." {
        return Err(SpiffeIdError::SegmentChar {
            segment,
            value: value.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

    #[test]
    fn good_inputs_round_trip() {
        let cases = [
            format!("spiffe://{TD}/ns/default/dc/dc1/svc/web"),
            format!("spiffe://{TD}/ns/default/dc/dc1/svc/my-service_v2.x~"),
            format!("spiffe://{TD}"),
            "spiffe://Mixed.Case.consul/ns/default/dc/dc1/svc/web".to_owned(),
            "spiffe://a.b/ns/n/dc/d/svc/s".to_owned(),
        ];
        for uri in cases {
            let id: SpiffeId = uri.parse().unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert_eq!(id.to_string(), uri);
        }
    }

    #[test]
    fn uppercase_scheme_is_accepted_and_normalised() {
        let id: SpiffeId = format!("SPIFFE://{TD}/ns/default/dc/dc1/svc/web")
            .parse()
            .unwrap();
        assert_eq!(
            id.to_string(),
            format!("spiffe://{TD}/ns/default/dc/dc1/svc/web")
        );
    }

    #[test]
    fn parts_are_exposed() {
        let id: ServiceId = format!("spiffe://{TD}/ns/default/dc/dc2/svc/db")
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain().as_str(), TD);
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.datacenter(), "dc2");
        assert_eq!(id.service(), "db");
        let signing: SpiffeId = format!("spiffe://{TD}").parse().unwrap();
        match signing {
            SpiffeId::Signing(s) => {
                assert_eq!(s.cluster_id(), "11111111-2222-3333-4444-555555555555")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn trust_domain_compares_case_insensitively() {
        let a: ServiceId = "spiffe://ABC.consul/ns/default/dc/dc1/svc/web"
            .parse()
            .unwrap();
        let b: ServiceId = "spiffe://abc.consul/ns/default/dc/dc1/svc/web"
            .parse()
            .unwrap();
        assert_eq!(a.trust_domain(), b.trust_domain());
        assert_eq!(a, b);
        let c: ServiceId = "spiffe://abc.consul/ns/default/dc/dc1/svc/WEB"
            .parse()
            .unwrap();
        assert_ne!(a, c, "service names are case-sensitive");
    }

    #[test]
    fn bad_inputs_are_rejected_with_the_reason() {
        use SpiffeIdError as E;
        let svc = "/ns/default/dc/dc1/svc/web";
        let cases: Vec<(String, fn(&SpiffeIdError) -> bool)> = vec![
            ("".into(), |e| matches!(e, E::Scheme { .. })),
            (format!("https://{TD}{svc}"), |e| {
                matches!(e, E::Scheme { .. })
            }),
            (format!("spiffe:/{TD}{svc}"), |e| {
                matches!(e, E::Scheme { .. })
            }),
            (format!("spiffe{TD}"), |e| matches!(e, E::Scheme { .. })),
            ("spiffe:///ns/default/dc/dc1/svc/web".to_owned(), |e| {
                matches!(e, E::EmptyTrustDomain { .. })
            }),
            ("spiffe://".into(), |e| {
                matches!(e, E::EmptyTrustDomain { .. })
            }),
            (format!("spiffe://{TD}:8080{svc}"), |e| {
                matches!(e, E::TrustDomainChar { ch: ':', .. })
            }),
            (format!("spiffe://user@{TD}{svc}"), |e| {
                matches!(e, E::TrustDomainChar { ch: '@', .. })
            }),
            (format!("spiffe://{TD}{svc}?x=1"), |e| {
                matches!(e, E::QueryOrFragment { .. })
            }),
            (format!("spiffe://{TD}{svc}#frag"), |e| {
                matches!(e, E::QueryOrFragment { .. })
            }),
            (format!("spiffe://{TD}/ns/default/dc/dc1/svc/w%65b"), |e| {
                matches!(e, E::PercentEncoded { .. })
            }),
            (format!("spiffe://{TD}{svc}/"), |e| {
                matches!(e, E::Format { .. })
            }),
            (format!("spiffe://{TD}/"), |e| matches!(e, E::Format { .. })),
            (format!("spiffe://{TD}/ns/default/dc/dc1/svc"), |e| {
                matches!(e, E::Format { .. })
            }),
            (format!("spiffe://{TD}/ns/default/dc/dc1"), |e| {
                matches!(e, E::Format { .. })
            }),
            (format!("spiffe://{TD}/ns/default/svc/web"), |e| {
                matches!(e, E::Format { .. })
            }),
            (format!("spiffe://{TD}/dc/dc1/ns/default/svc/web"), |e| {
                matches!(e, E::Format { .. })
            }),
            (format!("spiffe://{TD}/agent/client/dc/dc1/id"), |e| {
                matches!(e, E::Format { .. })
            }),
            (format!("spiffe://{TD}/ap/eu/agent/server/dc/dc1"), |e| {
                matches!(e, E::Format { .. })
            }),
            (format!("spiffe://{TD}/ap/eu"), |e| {
                matches!(e, E::Format { .. })
            }),
            (
                format!("spiffe://{TD}/ap//ns/default/dc/dc1/svc/web"),
                |e| {
                    matches!(
                        e,
                        E::EmptySegment {
                            segment: "partition",
                            ..
                        }
                    )
                },
            ),
            (format!("spiffe://{TD}/agent/client/dc/dc1/id/a:b"), |e| {
                matches!(
                    e,
                    E::SegmentChar {
                        segment: "node ID",
                        ..
                    }
                )
            }),
            (format!("spiffe://{TD}/ns/default/dc/dc1/svc/"), |e| {
                matches!(
                    e,
                    E::EmptySegment {
                        segment: "service",
                        ..
                    }
                )
            }),
            (format!("spiffe://{TD}/ns//dc/dc1/svc/web"), |e| {
                matches!(
                    e,
                    E::EmptySegment {
                        segment: "namespace",
                        ..
                    }
                )
            }),
            (format!("spiffe://{TD}/ns/default/dc//svc/web"), |e| {
                matches!(
                    e,
                    E::EmptySegment {
                        segment: "datacenter",
                        ..
                    }
                )
            }),
            (format!("spiffe://{TD}/ns/default/dc/dc1/svc/.."), |e| {
                matches!(
                    e,
                    E::SegmentChar {
                        segment: "service",
                        ..
                    }
                )
            }),
            (format!("spiffe://{TD}/ns/default/dc/dc1/svc/we b"), |e| {
                matches!(
                    e,
                    E::SegmentChar {
                        segment: "service",
                        ..
                    }
                )
            }),
            (format!("spiffe://{TD}/ns/default/dc/d*c/svc/web"), |e| {
                matches!(
                    e,
                    E::SegmentChar {
                        segment: "datacenter",
                        ..
                    }
                )
            }),
            ("spiffe://nodot".into(), |e| {
                matches!(e, E::SigningTrustDomain { .. })
            }),
            ("spiffe://.consul".into(), |e| {
                matches!(e, E::SigningTrustDomain { .. })
            }),
        ];
        for (input, expected) in cases {
            match input.parse::<SpiffeId>() {
                Ok(id) => panic!("{input:?} parsed as {id:?}"),
                Err(e) => assert!(expected(&e), "{input:?} gave {e:?}"),
            }
        }
    }

    #[test]
    fn signing_id_is_not_a_service_id() {
        let err = format!("spiffe://{TD}").parse::<ServiceId>().unwrap_err();
        assert!(matches!(
            err,
            SpiffeIdError::NotAService {
                kind: "CA signing",
                ..
            }
        ));
    }

    #[test]
    fn modern_identities_parse_into_their_own_kinds() {
        let node = "0ab1c2d3-0000-4000-8000-000000000001";
        let cases = [
            (
                format!("spiffe://{TD}/agent/client/dc/dc1/id/{node}"),
                "agent",
            ),
            (
                format!("spiffe://{TD}/ap/eu/agent/client/dc/dc1/id/{node}"),
                "agent",
            ),
            (format!("spiffe://{TD}/agent/server/dc/dc1"), "server"),
            (format!("spiffe://{TD}/gateway/mesh/dc/dc2"), "mesh gateway"),
            (
                format!("spiffe://{TD}/ap/eu/gateway/mesh/dc/dc2"),
                "mesh gateway",
            ),
        ];
        for (uri, kind) in cases {
            let id: SpiffeId = uri.parse().unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert_eq!(id.kind(), kind, "{uri}");
            assert_eq!(id.to_string(), uri);
            assert!(id.as_service().is_none());
            let err = uri.parse::<ServiceId>().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("SPIFFE ID {uri:?} is a {kind} identity, not a service identity")
            );
        }
        let SpiffeId::Agent(agent) = format!("spiffe://{TD}/ap/eu/agent/client/dc/dc1/id/{node}")
            .parse()
            .unwrap()
        else {
            panic!("not an agent")
        };
        assert_eq!((agent.partition(), agent.datacenter()), ("eu", "dc1"));
        assert_eq!(agent.node_id(), node);
    }

    #[test]
    fn partitions_of_service_identities() {
        let eu: ServiceId = format!("spiffe://{TD}/ap/eu/ns/default/dc/dc1/svc/db")
            .parse()
            .unwrap();
        assert_eq!(eu.partition(), "eu");
        assert_eq!(
            eu.to_string(),
            format!("spiffe://{TD}/ap/eu/ns/default/dc/dc1/svc/db")
        );
        let plain: ServiceId = format!("spiffe://{TD}/ns/default/dc/dc1/svc/db")
            .parse()
            .unwrap();
        assert_eq!(plain.partition(), "default");
        assert_ne!(eu, plain, "another partition is another identity");
        // `/ap/default/` is the default partition, which Consul leaves out of the URI.
        let explicit: ServiceId = format!("spiffe://{TD}/ap/default/ns/default/dc/dc1/svc/db")
            .parse()
            .unwrap();
        assert_eq!(explicit, plain);
        assert_eq!(explicit.to_string(), plain.to_string());
        assert_eq!(plain.clone().with_partition("eu").unwrap(), eu);
        assert_eq!(eu.with_partition("default").unwrap(), plain);
    }

    #[test]
    fn errors_name_the_input() {
        let err = "http://x.consul".parse::<SpiffeId>().unwrap_err();
        assert!(err.to_string().contains("http://x.consul"), "{err}");
    }
}
