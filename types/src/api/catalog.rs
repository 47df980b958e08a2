//! Registration, catalog and health: what services are, where they run, how healthy.

use serde::{Deserialize, Serialize};

use super::Meta;

/// Load-balancing weights of a service instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    /// Weight while passing.
    pub passing: u32,
    /// Weight while warning.
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            passing: 1,
            warning: 1,
        }
    }
}

/// A service's `Connect` block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceConnect {
    /// The service speaks Connect itself (no sidecar).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub native: bool,
    /// A sidecar proxy to register with the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_service: Option<Box<ServiceRegistration>>,
}

/// An upstream of a Connect proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Upstream {
    /// `service` or `prepared_query`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination_type: String,
    /// Namespace of the destination.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination_namespace: String,
    /// Name of the destination.
    #[serde(default)]
    pub destination_name: String,
    /// Datacenter of the destination.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub datacenter: String,
    /// Local bind address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_bind_address: String,
    /// Local bind port.
    #[serde(default)]
    pub local_bind_port: u16,
    /// Opaque proxy configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A Connect proxy's configuration (`Proxy` on a `connect-proxy` service).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProxyConfig {
    /// The service this proxy fronts.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination_service_name: String,
    /// The instance this proxy fronts.
    #[serde(
        rename = "DestinationServiceID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub destination_service_id: String,
    /// Address of the local instance.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_service_address: String,
    /// Port of the local instance.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub local_service_port: u16,
    /// Opaque proxy configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Map<String, serde_json::Value>>,
    /// Upstreams.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<Upstream>,
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}

/// A health check definition in a registration (TTL, HTTP, TCP...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckDefinition {
    /// Check ID (default `service:<id>`).
    #[serde(rename = "CheckID", default, skip_serializing_if = "String::is_empty")]
    pub check_id: String,
    /// Check name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// TTL as a Go duration (`10s`).
    #[serde(rename = "TTL", default, skip_serializing_if = "String::is_empty")]
    pub ttl: String,
    /// HTTP URL to probe.
    #[serde(rename = "HTTP", default, skip_serializing_if = "String::is_empty")]
    pub http: String,
    /// TCP address to probe.
    #[serde(rename = "TCP", default, skip_serializing_if = "String::is_empty")]
    pub tcp: String,
    /// Probe interval.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interval: String,
    /// Initial status (`passing`, `warning`, `critical`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// Notes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notes: String,
    /// Deregister the service after critical this long.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub deregister_critical_service_after: String,
}

/// `PUT /v1/agent/service/register` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRegistration {
    /// `""` for a typical service, `connect-proxy` for a proxy.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Instance ID (defaults to the name).
    #[serde(rename = "ID", default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Service name.
    #[serde(default)]
    pub name: String,
    /// Tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Port.
    #[serde(default)]
    pub port: u16,
    /// Address (empty means the node's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Meta>,
    /// Weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Weights>,
    /// Whether tags may be changed from the catalog.
    #[serde(default)]
    pub enable_tag_override: bool,
    /// The proxy configuration of a `connect-proxy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyConfig>,
    /// Connect settings (`Native`, `SidecarService`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ServiceConnect>,
    /// One check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckDefinition>,
    /// More checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<CheckDefinition>>,
}

/// A service instance as `GET /v1/agent/services` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentService {
    /// `connect-proxy` for proxies; absent for typical services.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Instance ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub service: String,
    /// Tags.
    pub tags: Option<Vec<String>>,
    /// Metadata.
    pub meta: Option<Meta>,
    /// Port.
    pub port: u16,
    /// Address.
    pub address: String,
    /// Weights.
    pub weights: Weights,
    /// Tag override flag.
    pub enable_tag_override: bool,
    /// Proxy configuration (proxies only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyConfig>,
    /// Connect settings (native services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ServiceConnect>,
}

/// A catalog node as health endpoints return it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    /// Node UUID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Node name.
    pub node: String,
    /// Node address.
    pub address: String,
    /// Datacenter.
    pub datacenter: String,
    /// `lan` and `wan` addresses.
    pub tagged_addresses: Option<Meta>,
    /// Node metadata.
    pub meta: Option<Meta>,
    /// Raft index of creation.
    pub create_index: u64,
    /// Raft index of last change.
    pub modify_index: u64,
}

/// A service instance inside a health entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeService {
    /// `connect-proxy` for proxies; absent for typical services.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Instance ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub service: String,
    /// Tags.
    pub tags: Option<Vec<String>>,
    /// Address (empty means the node's).
    pub address: String,
    /// Metadata.
    pub meta: Option<Meta>,
    /// Port.
    pub port: u16,
    /// Weights.
    pub weights: Weights,
    /// Tag override flag.
    pub enable_tag_override: bool,
    /// Enterprise: the instance's namespace (absent from OSS answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Enterprise (1.11+): the instance's admin partition (absent from OSS answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Deprecated proxy destination: `""` in 1.4 answers, gone from 1.10's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_destination: Option<String>,
    /// Proxy configuration (`{}` for typical services).
    pub proxy: ProxyConfig,
    /// Connect settings.
    pub connect: ServiceConnect,
    /// Raft index of creation.
    pub create_index: u64,
    /// Raft index of last change.
    pub modify_index: u64,
}

/// A health check's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthCheck {
    /// Node name.
    pub node: String,
    /// Check ID.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Check name.
    pub name: String,
    /// `passing`, `warning` or `critical`.
    pub status: String,
    /// Notes.
    pub notes: String,
    /// Last output.
    pub output: String,
    /// Service instance ID (empty for node checks).
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// Service name (empty for node checks).
    pub service_name: String,
    /// Service tags.
    pub service_tags: Option<Vec<String>>,
    /// Definition (`{}` in 1.4 answers).
    pub definition: serde_json::Map<String, serde_json::Value>,
    /// Raft index of creation.
    pub create_index: u64,
    /// Raft index of last change.
    pub modify_index: u64,
}

/// One item of `GET /v1/health/service/:s` and `GET /v1/health/connect/:s`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    /// The node.
    pub node: Node,
    /// The service instance.
    pub service: NodeService,
    /// Node and service checks.
    #[serde(default)]
    pub checks: Vec<HealthCheck>,
}

/// One item of `GET /v1/catalog/service/:s` and `GET /v1/catalog/connect/:s`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CatalogService {
    /// Node UUID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Node name.
    pub node: String,
    /// Node address.
    pub address: String,
    /// Datacenter.
    pub datacenter: String,
    /// Node `lan`/`wan` addresses.
    pub tagged_addresses: Option<Meta>,
    /// Node metadata.
    pub node_meta: Option<Meta>,
    /// `""` or `connect-proxy`.
    pub service_kind: String,
    /// Instance ID.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// Service name.
    pub service_name: String,
    /// Tags.
    pub service_tags: Option<Vec<String>>,
    /// Service address.
    pub service_address: String,
    /// Weights.
    pub service_weights: Weights,
    /// Service metadata.
    pub service_meta: Option<Meta>,
    /// Port.
    pub service_port: u16,
    /// Tag override flag.
    pub service_enable_tag_override: bool,
    /// Deprecated proxy destination: `""` in 1.4 answers, gone from 1.10's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_proxy_destination: Option<String>,
    /// Proxy configuration.
    pub service_proxy: ProxyConfig,
    /// Connect settings.
    pub service_connect: ServiceConnect,
    /// Raft index of creation.
    pub create_index: u64,
    /// Raft index of last change.
    pub modify_index: u64,
}
