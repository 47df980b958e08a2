//! Consul's wire types for the Connect-related HTTP API, with Consul's exact field names.
//!
//! JSON types follow what a Consul 1.4.5 agent sends: a root's `SerialNumber` is a number, a
//! leaf's is colon-hex text; `IntermediateCerts` may be `null`; times are RFC 3339. Fields a
//! Go struct would send as `null` are `Option`s here, so a value read and written again is the
//! same JSON.
//!
//! ```
//! use consul_connect_types::api::AuthorizeResponse;
//!
//! let body = r#"{"Authorized":true,"Reason":"ACLs disabled, access is allowed by default"}"#;
//! let resp: AuthorizeResponse = serde_json::from_str(body)?;
//! assert!(resp.authorized);
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

mod acl;
mod catalog;
mod config_entry;
mod query;
pub use acl::{AclPolicy, AclPolicyLink, AclToken};
pub use catalog::{
    AgentService, CatalogService, CheckDefinition, HealthCheck, Node, NodeService, ProxyConfig,
    ServiceConnect, ServiceEntry, ServiceRegistration, Upstream, Weights,
};
pub use config_entry::{
    ConfigEntry, IntentionHttpHeaderPermission, IntentionHttpPermission, IntentionPermission,
    ServiceDefaultsEntry, ServiceIntentionsEntry, SourceIntention, KIND_SERVICE_DEFAULTS,
    KIND_SERVICE_INTENTIONS,
};
pub use query::{PreparedQuery, PreparedQueryResult, ServiceQuery};

/// String-to-string metadata (`Meta`, `NodeMeta`, `TaggedAddresses`).
pub type Meta = BTreeMap<String, String>;

/// `GET /v1/agent/connect/ca/roots` and `GET /v1/connect/ca/roots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRootList {
    /// `ID` of the active root.
    #[serde(rename = "ActiveRootID")]
    pub active_root_id: String,
    /// The trust domain, `<cluster-id>.consul`.
    #[serde(rename = "TrustDomain")]
    pub trust_domain: String,
    /// All roots, active or rotated out, sorted by `ID`.
    #[serde(rename = "Roots")]
    pub roots: Vec<CaRoot>,
}

impl CaRootList {
    /// The active root, if the list names one that it holds.
    pub fn active(&self) -> Option<&CaRoot> {
        self.roots.iter().find(|r| r.id == self.active_root_id)
    }
}

/// One CA root certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CaRoot {
    /// Colon-hex SHA-1 fingerprint of the root's DER.
    #[serde(rename = "ID")]
    pub id: String,
    /// `Consul CA Root Cert` for the built-in provider.
    pub name: String,
    /// The certificate's serial number (a JSON number).
    pub serial_number: u64,
    /// Colon-hex key identifier that leaves signed by this root carry as AKI.
    #[serde(rename = "SigningKeyID")]
    pub signing_key_id: String,
    /// The cluster ID, without `.consul`.
    pub external_trust_domain: String,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// The root certificate, PEM.
    pub root_cert: String,
    /// Intermediates to present after a leaf (a cross-signed root after rotation), or `null`.
    pub intermediate_certs: Option<Vec<String>>,
    /// Whether this root signs new leaves.
    pub active: bool,
    /// The CA key's type, `ec` for the built-in CA (1.10+; absent before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_type: Option<String>,
    /// The CA key's size in bits, 256 for the built-in CA (1.10+; absent before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_bits: Option<u32>,
    /// Raft index of creation.
    pub create_index: u64,
    /// Raft index of last change.
    pub modify_index: u64,
}

/// `GET /v1/agent/connect/ca/leaf/:service`: a leaf certificate and its private key.
///
/// `Debug` leaves the private key out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LeafCert {
    /// Colon-hex serial, minimal big-endian bytes (`8` is `"08"`).
    pub serial_number: String,
    /// The leaf followed by any intermediates, PEM.
    #[serde(rename = "CertPEM")]
    pub cert_pem: String,
    /// The leaf's private key, PEM (`EC PRIVATE KEY`).
    #[serde(rename = "PrivateKeyPEM")]
    pub private_key_pem: String,
    /// The service name.
    pub service: String,
    /// The leaf's SPIFFE URI.
    #[serde(rename = "ServiceURI")]
    pub service_uri: String,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub valid_after: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub valid_before: OffsetDateTime,
    /// Raft index of issuance.
    pub create_index: u64,
    /// Raft index of issuance.
    pub modify_index: u64,
}

impl fmt::Debug for LeafCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafCert")
            .field("serial_number", &self.serial_number)
            .field("service", &self.service)
            .field("service_uri", &self.service_uri)
            .field("valid_after", &self.valid_after)
            .field("valid_before", &self.valid_before)
            .field("private_key_pem", &"<redacted>")
            .field("modify_index", &self.modify_index)
            .finish_non_exhaustive()
    }
}

/// `GET|PUT /v1/connect/ca/configuration`.
///
/// `Debug` masks a `PrivateKey` in `config`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CaConfiguration {
    /// `consul` for the built-in CA.
    pub provider: String,
    /// Provider settings as submitted (`LeafCertTTL`, `RotationPeriod`, `PrivateKey`, ...).
    pub config: BTreeMap<String, serde_json::Value>,
    /// Raft index of creation (absent in a PUT body).
    #[serde(default)]
    pub create_index: u64,
    /// Raft index of last change (absent in a PUT body).
    #[serde(default)]
    pub modify_index: u64,
}

impl fmt::Debug for CaConfiguration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config: BTreeMap<&str, &dyn fmt::Debug> = self
            .config
            .iter()
            .map(|(k, v)| {
                let shown: &dyn fmt::Debug = if is_private_key_field(k) {
                    &"<redacted>"
                } else {
                    v
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("CaConfiguration")
            .field("provider", &self.provider)
            .field("config", &config)
            .field("modify_index", &self.modify_index)
            .finish_non_exhaustive()
    }
}

/// Whether a CA `Config` key names the private key in any spelling Consul reads
/// (`PrivateKey`, `private_key`, any case).
pub fn is_private_key_field(key: &str) -> bool {
    let folded: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    folded == "privatekey"
}

/// `POST /v1/agent/connect/authorize` body. Missing fields decode as empty, as in Go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthorizeRequest {
    /// The destination service name (the server's own name).
    #[serde(rename = "Target")]
    pub target: String,
    /// The client certificate's SPIFFE URI.
    #[serde(rename = "ClientCertURI")]
    pub client_cert_uri: String,
    /// The client certificate's serial, colon hex.
    #[serde(rename = "ClientCertSerial")]
    pub client_cert_serial: String,
}

/// `POST /v1/agent/connect/authorize` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeResponse {
    /// Whether the connection may proceed.
    #[serde(rename = "Authorized")]
    pub authorized: bool,
    /// Why, in Consul's words.
    #[serde(rename = "Reason")]
    pub reason: String,
}

/// What an intention does to matching traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntentionAction {
    /// Let the connection through.
    Allow,
    /// Refuse the connection.
    Deny,
}

impl fmt::Display for IntentionAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IntentionAction::Allow => "allow",
            IntentionAction::Deny => "deny",
        })
    }
}

/// A Connect intention as Consul stores and returns it, from 1.4.5 on.
///
/// Request bodies may leave out any field; `Action` and `SourceType` stay strings so that an
/// invalid value can be reported with Consul's validation message rather than a decode error.
/// Modern agents (1.9+) answer intentions kept in `service-intentions` config entries: those
/// have no `ID` or timestamps, and an L7 intention has `Permissions` and no `Action`. An empty
/// `Action` never allows anything.
///
/// ```
/// use consul_connect_types::api::Intention;
///
/// let deny = Intention {
///     source_name: "web".into(),
///     destination_name: "db".into(),
///     action: "deny".into(),
///     ..Intention::default()
/// };
/// assert!(deny.permissions.is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Intention {
    /// UUID, assigned on create.
    #[serde(rename = "ID", default)]
    pub id: String,
    /// Free text, at most 512 bytes.
    #[serde(default)]
    pub description: String,
    /// Source namespace (`default` or `*`).
    #[serde(rename = "SourceNS", default)]
    pub source_ns: String,
    /// Source service name or `*`.
    #[serde(default)]
    pub source_name: String,
    /// Destination namespace (`default` or `*`).
    #[serde(rename = "DestinationNS", default)]
    pub destination_ns: String,
    /// Destination service name or `*`.
    #[serde(default)]
    pub destination_name: String,
    /// `consul`.
    #[serde(default)]
    pub source_type: String,
    /// `allow` or `deny`; empty for an L7 intention.
    #[serde(default)]
    pub action: String,
    /// 1.9+: L7 rules, which only a proxy can apply; such an intention never admits a plain
    /// TCP (L4) connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<IntentionPermission>>,
    /// 1.13+: the cluster peer the source lives in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_peer: Option<String>,
    /// Enterprise (1.11+): the source's partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_partition: Option<String>,
    /// Enterprise (1.11+): the destination's partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_partition: Option<String>,
    /// Unused by Consul 1.4.
    #[serde(default)]
    pub default_addr: String,
    /// Unused by Consul 1.4.
    #[serde(default)]
    pub default_port: u32,
    /// Opaque metadata (at most 64 keys).
    #[serde(default)]
    pub meta: Option<Meta>,
    /// Computed from the exact/wildcard shape of source and destination.
    #[serde(default)]
    pub precedence: i32,
    /// 1.9+: a hash of the intention's contents, set by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// When created (set by the server).
    #[serde(with = "time::serde::rfc3339", default = "unix_epoch")]
    pub created_at: OffsetDateTime,
    /// When last written (set by the server).
    #[serde(with = "time::serde::rfc3339", default = "unix_epoch")]
    pub updated_at: OffsetDateTime,
    /// Raft index of creation.
    #[serde(default)]
    pub create_index: u64,
    /// Raft index of last change.
    #[serde(default)]
    pub modify_index: u64,
}

impl Default for Intention {
    /// An intention with every field empty (timestamps at the Unix epoch), as a request body
    /// that leaves fields out decodes.
    fn default() -> Self {
        Intention {
            id: String::new(),
            description: String::new(),
            source_ns: String::new(),
            source_name: String::new(),
            destination_ns: String::new(),
            destination_name: String::new(),
            source_type: String::new(),
            action: String::new(),
            permissions: None,
            source_peer: None,
            source_partition: None,
            destination_partition: None,
            default_addr: String::new(),
            default_port: 0,
            meta: None,
            precedence: 0,
            hash: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
            create_index: 0,
            modify_index: 0,
        }
    }
}

impl Intention {
    /// The action, when it is one Consul knows.
    pub fn parsed_action(&self) -> Option<IntentionAction> {
        match self.action.as_str() {
            "allow" => Some(IntentionAction::Allow),
            "deny" => Some(IntentionAction::Deny),
            _ => None,
        }
    }
}

pub(crate) fn unix_epoch() -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH
}

/// `POST /v1/connect/intentions` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentionCreated {
    /// The new intention's UUID.
    #[serde(rename = "ID")]
    pub id: String,
}

/// `GET /v1/connect/intentions/check` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentionCheck {
    /// Whether the source may connect to the destination.
    #[serde(rename = "Allowed")]
    pub allowed: bool,
}

/// `GET /v1/connect/intentions/match`: matches per requested name, in evaluation order.
pub type IntentionMatches = BTreeMap<String, Option<Vec<Intention>>>;

/// The part of `GET /v1/agent/self` that SDKs read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSelf {
    /// The agent's configuration summary.
    #[serde(rename = "Config")]
    pub config: AgentSelfConfig,
}

/// `Config` of `GET /v1/agent/self`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentSelfConfig {
    /// The agent's datacenter.
    pub datacenter: String,
    /// The node name.
    pub node_name: String,
    /// The node UUID.
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// Source revision.
    pub revision: String,
    /// Whether the agent is a server.
    pub server: bool,
    /// Consul version.
    pub version: String,
}

/// Formats bytes the way Consul writes serials and key IDs: lowercase hex pairs joined by `:`.
///
/// ```
/// assert_eq!(consul_connect_types::api::colon_hex(&[0x01, 0x2c]), "01:2c");
/// ```
pub fn colon_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Formats a certificate serial as Consul does: minimal big-endian bytes, colon hex.
///
/// `serial` is the DER INTEGER content (possibly with a leading zero byte for sign).
///
/// ```
/// assert_eq!(consul_connect_types::api::serial_hex(&[0x08]), "08");
/// assert_eq!(consul_connect_types::api::serial_hex(&[0x00, 0x80]), "80");
/// ```
pub fn serial_hex(serial: &[u8]) -> String {
    let first = serial
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(serial.len().saturating_sub(1));
    colon_hex(&serial[first..])
}
