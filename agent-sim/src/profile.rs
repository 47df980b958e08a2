//! What differs between the Consul versions agent-sim emulates, in one place.
//!
//! Handlers never ask "which version?"; they read the field of the [`Profile`] that covers
//! what they answer (a header, a text, a body shape). Adding a version is adding a profile,
//! checked against that version's captures (`tests/data/consul-<version>/`).
//!
//! ```
//! use agent_sim::profile::ConsulVersion;
//!
//! let v: ConsulVersion = "1.4.5".parse()?;
//! assert_eq!(v.profile().version, "1.4.5");
//! assert_eq!(ConsulVersion::default(), ConsulVersion::V1_10_9);
//! # Ok::<(), agent_sim::profile::UnknownVersion>(())
//! ```

use std::fmt;

use crate::acl_versions::AclRules;
use crate::ca::CertNames;
use std::str::FromStr;

use consul_connect_types::intentions::Wording;

/// A Consul version agent-sim emulates. The default is the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ConsulVersion {
    /// Consul 1.4.5: legacy intentions only, no config entries.
    V1_4_5,
    /// Consul 1.10.9: intentions live in `service-intentions` config entries.
    #[default]
    V1_10_9,
}

impl ConsulVersion {
    /// Every emulated version, oldest first.
    pub const ALL: [ConsulVersion; 2] = [ConsulVersion::V1_4_5, ConsulVersion::V1_10_9];

    /// What this version answers differently.
    pub fn profile(self) -> &'static Profile {
        match self {
            ConsulVersion::V1_4_5 => &CONSUL_1_4_5,
            ConsulVersion::V1_10_9 => &CONSUL_1_10_9,
        }
    }
}

impl fmt::Display for ConsulVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.profile().version)
    }
}

/// A version agent-sim does not emulate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported Consul version {given:?}: agent-sim emulates 1.4.5 and 1.10.9")]
pub struct UnknownVersion {
    /// What was asked for.
    pub given: String,
}

impl FromStr for ConsulVersion {
    type Err = UnknownVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().trim_start_matches('v');
        ConsulVersion::ALL
            .into_iter()
            .find(|v| v.profile().version == s)
            .ok_or_else(|| UnknownVersion {
                given: s.to_owned(),
            })
    }
}

/// How go-multierror formats a list of errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MultiError {
    /// go-multierror 0.x (Consul 1.4): `N error(s) occurred:\n\n* a\n* b`.
    V0,
    /// go-multierror 1.1 (Consul 1.10): `N error(s) occurred:\n\t* a\n\t* b\n\n`, with
    /// `1 error occurred` / `N errors occurred`.
    V1,
}

impl MultiError {
    /// `errors` in this format.
    pub fn format<I: IntoIterator<Item = String>>(self, errors: I) -> String {
        let errors: Vec<String> = errors.into_iter().collect();
        match self {
            MultiError::V0 => {
                let items: Vec<String> = errors.iter().map(|e| format!("* {e}")).collect();
                format!(
                    "{} error(s) occurred:\n\n{}",
                    errors.len(),
                    items.join("\n")
                )
            }
            MultiError::V1 => {
                let head = match errors.len() {
                    1 => "1 error occurred:".to_owned(),
                    n => format!("{n} errors occurred:"),
                };
                let items: String = errors.iter().map(|e| format!("\n\t* {e}")).collect();
                format!("{head}{items}\n\n")
            }
        }
    }
}

/// The shape of an intention in JSON answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntentionShape {
    /// 1.4: every field, `DefaultAddr`/`DefaultPort` included, `Meta` always (`{}`).
    Consul1_4,
    /// 1.9+: `CreatedAt`/`UpdatedAt` first and only when set, no `DefaultAddr`/`DefaultPort`,
    /// `ID`, `Description`, `Action`, `Meta` and `Hash` omitted when empty.
    Consul1_9,
}

/// The shape of service, catalog and health bodies (applied by `http::shapes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceShape {
    /// As the types crate writes them (`ProxyDestination`, no tagged service addresses).
    Consul1_4,
    /// 1.10: service `TaggedAddresses` (`lan_ipv4`/`wan_ipv4` from an IP address), node
    /// `lan_ipv4`/`wan_ipv4`, `Proxy` with `Mode`/`MeshGateway`/`Expose`, no
    /// `ProxyDestination`, check `Type`/`Interval`/`Timeout`/`ExposedPort`, agent services
    /// with `Datacenter`, catalog services with `ServiceSocketPath`.
    Consul1_10,
}

/// Everything that differs between two emulated versions: body shapes, texts, headers.
#[derive(Debug)]
#[non_exhaustive]
pub struct Profile {
    /// The version string (`/v1/agent/self` `Config.Version`).
    pub version: &'static str,
    /// Authorize reasons.
    pub wording: Wording,
    /// Validation error lists.
    pub multierror: MultiError,
    /// Intention JSON.
    pub intention_shape: IntentionShape,
    /// Service, catalog and health JSON.
    pub service_shape: ServiceShape,
    /// Intentions are stored as `service-intentions` config entries, and `/v1/config` and
    /// `/v1/connect/intentions/exact` serve them (1.9+).
    pub config_entries: bool,
    /// `X-Consul-Default-Acl-Policy` on every answer (1.9+).
    pub default_acl_policy_header: bool,
    /// `X-Consul-Query-Backend: blocking-query` wherever query meta is sent (1.10+).
    pub query_backend_header: bool,
    /// `intentions/match` sends query meta and `X-Consul-Effective-Consistency` (1.10).
    pub match_query_meta: bool,
    /// Leaf reads without `?index` revalidate: `X-Cache: MISS` every time (1.10).
    pub leaf_reads_revalidate: bool,
    /// The built-in CA: names, fields, defaults, texts.
    pub ca: CaProfile,
    /// The lookup named in the 400 for an intention ID that is not a UUID.
    pub intention_lookup: &'static str,
    /// 400 for an authorize `ClientCertURI` that is a SPIFFE ID but not a service's (1.4
    /// could not parse agent URIs, 1.10 can).
    pub authorize_not_service_uri: &'static str,
    /// 500 for `/v1/agent/connect/ca/leaf/` with no service name.
    pub leaf_without_name: &'static str,
    /// 500 prefix for deleting an unknown intention ID (the quoted ID follows).
    pub delete_missing_intention: &'static str,
    /// Namespaces are an Enterprise feature the OSS agent refuses: `?ns=` and
    /// `X-Consul-Namespace` on the endpoints that read them (400), a non-default namespace in
    /// an intention check (500) (1.7+; 1.4 ignores them).
    pub refuses_namespaces: bool,
    /// Intention update and CA configuration decode errors are typed bad requests, written
    /// `Bad request: Request decode failed: …` (1.10); 1.4 wrote them without the prefix.
    pub decode_errors_prefixed: bool,
    /// Health reads with `?cached` or `?index` use the streaming backend:
    /// `X-Consul-Query-Backend: streaming` and `X-Consul-KnownLeader: false` (1.10 dev agent).
    pub health_streaming: bool,
    /// A refused agent write (register, deregister, check update) names what is missing:
    /// `Permission denied: Missing service:write on web` (1.10); 1.4 said `Permission denied`.
    pub denials_name_permission: bool,
    /// `GET /v1/agent/self` as this version's dev agent answered it (`src/agent_self/`):
    /// agent-sim fills in its own node, datacenter, version and ACL settings.
    pub agent_self: &'static str,
    /// The ACL decisions that changed between versions.
    pub acl: AclRules,
}

/// What the built-in CA does differently between versions.
#[derive(Debug)]
#[non_exhaustive]
pub struct CaProfile {
    /// `Name` of a root made by the built-in CA.
    pub root_name: &'static str,
    /// Common names of roots, intermediates and leaves.
    pub cert_names: CertNames,
    /// Roots carry `PrivateKeyType` and `PrivateKeyBits` (1.10).
    pub root_key_fields: bool,
    /// The CA configuration carries `State` and `ForceWithoutCrossSigning` (1.10).
    pub config_state_fields: bool,
    /// The provider settings of a fresh agent.
    pub default_config: &'static [(&'static str, &'static str)],
    /// `GET /v1/connect/ca/configuration` shows a configured `PrivateKey` as is (1.10), not
    /// as `hidden` (1.4).
    pub private_key_shown: bool,
    /// 500 text for a `LeafCertTTL` under 1 h.
    pub leaf_ttl_too_short: &'static str,
    /// 500 text for a `LeafCertTTL` over a year.
    pub leaf_ttl_too_long: &'static str,
    /// `GET /v1/connect/ca/roots?pem=true` answers a PEM chain (1.10); 1.4 ignores `pem`.
    pub pem_roots: bool,
}

/// Consul 1.4.5, as `tests/data/consul-1.4.5` captured it.
pub static CONSUL_1_4_5: Profile = Profile {
    acl: AclRules::CONSUL_1_4_5,
    version: "1.4.5",
    wording: Wording::Consul1_4,
    multierror: MultiError::V0,
    intention_shape: IntentionShape::Consul1_4,
    service_shape: ServiceShape::Consul1_4,
    config_entries: false,
    default_acl_policy_header: false,
    query_backend_header: false,
    match_query_meta: false,
    leaf_reads_revalidate: false,
    ca: CaProfile {
        root_name: "Consul CA Root Cert",
        cert_names: CertNames::Consul1_4,
        root_key_fields: false,
        config_state_fields: false,
        default_config: &[("LeafCertTTL", "72h"), ("RotationPeriod", "2160h")],
        private_key_shown: false,
        leaf_ttl_too_short: "leaf cert TTL must be greater than 1h",
        leaf_ttl_too_long: "leaf cert TTL must be less than 1 year",
        pem_roots: false,
    },
    intention_lookup: "failed intention lookup",
    authorize_not_service_uri: "ClientCertURI not a valid Connect identifier",
    leaf_without_name: "SPIFFE ID is not in the expected format",
    delete_missing_intention: "Cannot modify non-existent intention",
    refuses_namespaces: false,
    decode_errors_prefixed: false,
    health_streaming: false,
    denials_name_permission: false,
    agent_self: include_str!("agent_self/consul-1.4.5.json"),
};

/// Consul 1.10.9, as `tests/data/consul-1.10.9` captured it.
pub static CONSUL_1_10_9: Profile = Profile {
    acl: AclRules::CONSUL_1_10_9,
    version: "1.10.9",
    wording: Wording::Consul1_9,
    multierror: MultiError::V1,
    intention_shape: IntentionShape::Consul1_9,
    service_shape: ServiceShape::Consul1_10,
    config_entries: true,
    default_acl_policy_header: true,
    query_backend_header: true,
    match_query_meta: true,
    leaf_reads_revalidate: true,
    ca: CaProfile {
        root_name: "Consul CA Primary Cert",
        cert_names: CertNames::Consul1_10,
        root_key_fields: true,
        config_state_fields: true,
        default_config: &[("IntermediateCertTTL", "8760h"), ("LeafCertTTL", "72h")],
        private_key_shown: true,
        leaf_ttl_too_short: "leaf cert TTL must be greater or equal than 1h0m0s",
        leaf_ttl_too_long: "leaf cert TTL must be less than 8760h0m0s",
        pem_roots: true,
    },
    intention_lookup: "failed config entry lookup",
    authorize_not_service_uri: "ClientCertURI not a valid Service identifier",
    leaf_without_name: "URI must be either service or agent",
    delete_missing_intention: "Cannot delete non-existent intention",
    refuses_namespaces: true,
    decode_errors_prefixed: true,
    health_streaming: true,
    denials_name_permission: true,
    agent_self: include_str!("agent_self/consul-1.10.9.json"),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_print() {
        for v in ConsulVersion::ALL {
            assert_eq!(v.to_string().parse::<ConsulVersion>(), Ok(v));
        }
        assert!("1.9.0".parse::<ConsulVersion>().is_err());
    }

    #[test]
    fn multierror_formats_as_captured() {
        let two = || {
            [
                "SourceName must be set".into(),
                "DestinationName must be set".into(),
            ]
        };
        assert_eq!(
            MultiError::V1.format(two()),
            "2 errors occurred:\n\t* SourceName must be set\n\t* DestinationName must be set\n\n"
        );
        assert_eq!(
            MultiError::V0.format(two()),
            "2 error(s) occurred:\n\n* SourceName must be set\n* DestinationName must be set"
        );
        assert_eq!(
            MultiError::V1.format(["x".to_owned()]),
            "1 error occurred:\n\t* x\n\n"
        );
    }
}
