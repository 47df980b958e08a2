//! Config entries (`/v1/config`, Consul 1.5+): the kinds a Connect integration reads,
//! `service-intentions` (1.9+) and `service-defaults`.
//!
//! These are the shapes Consul answers with (PascalCase keys). Consul also *accepts* keys in
//! any case and in snake_case on writes; that leniency is the server's (agent-sim's) to apply
//! before decoding.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Meta;

/// One config entry, tagged by its `Kind`.
///
/// ```
/// use consul_connect_types::api::ConfigEntry;
///
/// let entry: ConfigEntry = serde_json::from_str(
///     r#"{"Kind":"service-intentions","Name":"db",
///         "Sources":[{"Name":"web","Action":"deny","Precedence":9,"Type":"consul"}]}"#,
/// )?;
/// let ConfigEntry::ServiceIntentions(db) = entry else { panic!("kind") };
/// assert_eq!(db.sources[0].name, "web");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "Kind")]
#[non_exhaustive]
pub enum ConfigEntry {
    /// `service-intentions`: who may call one destination service.
    #[serde(rename = "service-intentions")]
    ServiceIntentions(ServiceIntentionsEntry),
    /// `service-defaults`: a service's protocol and proxy defaults.
    #[serde(rename = "service-defaults")]
    ServiceDefaults(ServiceDefaultsEntry),
}

impl ConfigEntry {
    /// The entry's `Kind`, as Consul spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigEntry::ServiceIntentions(_) => KIND_SERVICE_INTENTIONS,
            ConfigEntry::ServiceDefaults(_) => KIND_SERVICE_DEFAULTS,
        }
    }

    /// The entry's `Name`.
    pub fn name(&self) -> &str {
        match self {
            ConfigEntry::ServiceIntentions(e) => &e.name,
            ConfigEntry::ServiceDefaults(e) => &e.name,
        }
    }
}

/// `Kind` of [`ServiceIntentionsEntry`].
pub const KIND_SERVICE_INTENTIONS: &str = "service-intentions";
/// `Kind` of [`ServiceDefaultsEntry`].
pub const KIND_SERVICE_DEFAULTS: &str = "service-defaults";

/// The intentions of one destination (`Name`, or `*` for every destination).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceIntentionsEntry {
    /// The destination service.
    pub name: String,
    /// Enterprise: the destination's partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Enterprise: the destination's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The sources, as written (Consul sorts them by precedence).
    #[serde(default)]
    pub sources: Vec<SourceIntention>,
    /// Opaque metadata of the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Meta>,
    /// Raft index of creation.
    #[serde(default)]
    pub create_index: u64,
    /// Raft index of last change.
    #[serde(default)]
    pub modify_index: u64,
}

/// One source of a `service-intentions` entry: an L4 `Action`, or L7 `Permissions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SourceIntention {
    /// The source service, or `*`.
    pub name: String,
    /// Enterprise: the source's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Enterprise (1.11+): the source's partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// 1.13+: the cluster peer the source lives in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// `allow` or `deny`; absent when `Permissions` are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// L7 rules, evaluated by a proxy; absent for an L4 source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<IntentionPermission>>,
    /// Computed by the server.
    #[serde(default)]
    pub precedence: i32,
    /// The UUID of the legacy intention this source was migrated from or written as.
    #[serde(rename = "LegacyID", default, skip_serializing_if = "Option::is_none")]
    pub legacy_id: Option<String>,
    /// `consul`.
    #[serde(rename = "Type", default)]
    pub source_type: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The legacy intention's `Meta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_meta: Option<Meta>,
    /// The legacy intention's `CreatedAt`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub legacy_create_time: Option<OffsetDateTime>,
    /// The legacy intention's `UpdatedAt`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub legacy_update_time: Option<OffsetDateTime>,
}

/// One L7 rule of an intention: an action for the requests its `HTTP` clause matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IntentionPermission {
    /// `allow` or `deny`.
    pub action: String,
    /// Which HTTP requests the rule matches.
    #[serde(rename = "HTTP", default, skip_serializing_if = "Option::is_none")]
    pub http: Option<IntentionHttpPermission>,
}

/// The HTTP request match of an L7 rule; at most one path form is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IntentionHttpPermission {
    /// The path, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_exact: Option<String>,
    /// A path prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// A path regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Header conditions, all of which must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<Vec<IntentionHttpHeaderPermission>>,
    /// Methods, any of which matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
}

/// One header condition of an L7 rule; exactly one match form is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IntentionHttpHeaderPermission {
    /// The header name.
    pub name: String,
    /// The header is present.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub present: bool,
    /// The value, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// A value prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A value suffix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// A value regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// The condition is inverted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

/// A service's defaults. Only what Connect needs is typed; the rest (proxy mode, mesh gateway,
/// expose paths, upstream config, ...) is kept as JSON so that nothing is lost on a write-back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceDefaultsEntry {
    /// The service.
    pub name: String,
    /// Enterprise: the service's partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Enterprise: the service's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `tcp` (the default when empty), `http`, `http2` or `grpc`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Opaque metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Meta>,
    /// Raft index of creation.
    #[serde(default)]
    pub create_index: u64,
    /// Raft index of last change.
    #[serde(default)]
    pub modify_index: u64,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}
