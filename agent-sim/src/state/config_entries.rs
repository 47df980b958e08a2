//! Config entries (`/v1/config`, Consul 1.9+ for `service-intentions`): where a modern Consul
//! keeps every intention, those written through the legacy UUID API included (as sources
//! carrying `LegacyID`, `LegacyMeta` and timestamps).
//!
//! The intentions table is derived from these entries: after each write the destination's
//! intentions are rebuilt with [`entry_intentions`].

use std::collections::BTreeMap;

use consul_connect_types::api::{
    ConfigEntry, Intention, ServiceIntentionsEntry, SourceIntention, KIND_SERVICE_DEFAULTS,
    KIND_SERVICE_INTENTIONS,
};
use consul_connect_types::intentions::{
    precedence, DEFAULT_NAMESPACE, SOURCE_TYPE_CONSUL, WILDCARD,
};
use time::OffsetDateTime;

/// A refused config-entry write; Consul answers 500 with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigEntryError(pub String);

/// The stored entries, by (kind, name).
#[derive(Debug, Default, Clone)]
pub struct ConfigEntries {
    entries: BTreeMap<(String, String), ConfigEntry>,
}

impl ConfigEntries {
    /// Entries restored from `--data-dir`.
    pub(super) fn restore(saved: Vec<ConfigEntry>) -> Self {
        let entries = saved
            .into_iter()
            .map(|e| ((e.kind().to_owned(), e.name().to_owned()), e))
            .collect();
        Self { entries }
    }

    /// Every entry, for saving.
    pub fn all(&self) -> impl Iterator<Item = &ConfigEntry> + '_ {
        self.entries.values()
    }

    /// One entry.
    pub fn get(&self, kind: &str, name: &str) -> Option<&ConfigEntry> {
        self.entries.get(&(kind.to_owned(), name.to_owned()))
    }

    /// The entries of one kind, by name.
    pub fn list(&self, kind: &str) -> Vec<&ConfigEntry> {
        self.entries
            .iter()
            .filter(|((k, _), _)| k == kind)
            .map(|(_, e)| e)
            .collect()
    }

    /// The `service-intentions` entry of a destination.
    pub fn intentions(&self, destination: &str) -> Option<&ServiceIntentionsEntry> {
        match self.get(KIND_SERVICE_INTENTIONS, destination) {
            Some(ConfigEntry::ServiceIntentions(e)) => Some(e),
            _ => None,
        }
    }

    /// A service's protocol from its `service-defaults` (`tcp` without one).
    pub fn protocol(&self, service: &str) -> String {
        match self.get(KIND_SERVICE_DEFAULTS, service) {
            Some(ConfigEntry::ServiceDefaults(d)) if !d.protocol.is_empty() => {
                d.protocol.to_lowercase()
            }
            _ => "tcp".to_owned(),
        }
    }

    /// Writes an entry as `PUT /v1/config` does (legacy fields dropped, precedence and type
    /// computed). With `cas`, writes only if the stored `ModifyIndex` is `cas` (0: absent);
    /// returns whether it wrote.
    pub fn put(
        &mut self,
        mut entry: ConfigEntry,
        cas: Option<u64>,
        index: u64,
    ) -> Result<bool, ConfigEntryError> {
        let key = (entry.kind().to_owned(), entry.name().to_owned());
        let existing = self.entries.get(&key);
        if let Some(cas) = cas {
            if existing.map_or(0, modify_index) != cas {
                return Ok(false);
            }
        }
        match &mut entry {
            ConfigEntry::ServiceIntentions(e) => {
                for (i, s) in e.sources.iter_mut().enumerate() {
                    // Consul's normalize clears the legacy ID and times of a config write
                    // (m26a, m26g) and keeps `LegacyMeta`, which validation then refuses
                    // unless empty (m26).
                    if s.legacy_meta.as_ref().is_some_and(|m| !m.is_empty()) {
                        return Err(ConfigEntryError(format!(
                            "Sources[{i}].LegacyMeta must be omitted"
                        )));
                    }
                    s.legacy_meta = None;
                    s.legacy_id = None;
                    s.legacy_create_time = None;
                    s.legacy_update_time = None;
                }
                self.validate_intentions(e)?;
            }
            ConfigEntry::ServiceDefaults(d) => {
                let protocol = if d.protocol.is_empty() {
                    "tcp"
                } else {
                    &d.protocol
                };
                self.check_protocol_change(&d.name, protocol)?;
            }
            _ => {}
        }
        self.store(entry, index);
        Ok(true)
    }

    /// Deletes an entry (absent is fine, as in Consul); a `service-defaults` that L7
    /// intentions depend on is kept.
    pub fn delete(&mut self, kind: &str, name: &str) -> Result<bool, ConfigEntryError> {
        if kind == KIND_SERVICE_DEFAULTS {
            self.check_protocol_change(name, "tcp")?;
        }
        Ok(self
            .entries
            .remove(&(kind.to_owned(), name.to_owned()))
            .is_some())
    }

    /// Stores a `service-intentions` entry written by the intention APIs (already validated
    /// except for the entry-wide rules), or deletes it when it has no source left.
    pub fn put_intentions(
        &mut self,
        mut entry: ServiceIntentionsEntry,
        index: u64,
    ) -> Result<(), ConfigEntryError> {
        if entry.sources.is_empty() {
            self.entries
                .remove(&(KIND_SERVICE_INTENTIONS.to_owned(), entry.name.clone()));
            return Ok(());
        }
        self.validate_intentions(&mut entry)?;
        self.store(ConfigEntry::ServiceIntentions(entry), index);
        Ok(())
    }

    /// The entry and position of the source written by the legacy API with this ID.
    pub fn find_legacy(&self, id: &str) -> Option<(&ServiceIntentionsEntry, usize)> {
        self.entries.values().find_map(|e| match e {
            ConfigEntry::ServiceIntentions(e) => e
                .sources
                .iter()
                .position(|s| s.legacy_id.as_deref() == Some(id))
                .map(|at| (e, at)),
            _ => None,
        })
    }

    fn store(&mut self, mut entry: ConfigEntry, index: u64) {
        let key = (entry.kind().to_owned(), entry.name().to_owned());
        let create = self.entries.get(&key).map_or(index, create_index);
        match &mut entry {
            ConfigEntry::ServiceIntentions(e) => (e.create_index, e.modify_index) = (create, index),
            ConfigEntry::ServiceDefaults(e) => (e.create_index, e.modify_index) = (create, index),
            _ => {}
        }
        self.entries.insert(key, entry);
    }

    /// Consul's `ServiceIntentionsConfigEntry.Validate` (the OSS part), filling each source's
    /// `Precedence` and `Type`.
    fn validate_intentions(&self, e: &mut ServiceIntentionsEntry) -> Result<(), ConfigEntryError> {
        let err = |m: String| Err(ConfigEntryError(m));
        if e.name.is_empty() {
            return err("Name is required".into());
        }
        if e.name != WILDCARD && e.name.contains(WILDCARD) {
            return err("Name: wildcard character '*' cannot be used with partial values".into());
        }
        if e.sources.is_empty() {
            return err("At least one source is required".into());
        }
        // Consul's normalize computes each source's precedence and sorts the sources by it
        // (stable) before validating: error indexes and the stored order are the sorted ones
        // (m39b, m48c2).
        let name = e.name.clone();
        for s in &mut e.sources {
            s.precedence = precedence(&source_intention(&name, s, None));
        }
        e.sources.sort_by_key(|s| std::cmp::Reverse(s.precedence));
        let mut seen = std::collections::HashSet::new();
        let mut has_l7 = false;
        for (i, s) in e.sources.iter_mut().enumerate() {
            if s.name.is_empty() {
                return err(format!("Sources[{i}].Name is required"));
            }
            if s.name != WILDCARD && s.name.contains(WILDCARD) {
                return err(format!(
                    "Sources[{i}].Name: wildcard character '*' cannot be used with partial values"
                ));
            }
            if !seen.insert(s.name.clone()) {
                return err(format!("Sources[{i}] defines {:?} more than once", s.name));
            }
            if s.description.as_ref().is_some_and(|d| d.len() > 512) {
                return err(format!(
                    "Sources[{i}].Description exceeds maximum length 512"
                ));
            }
            match (&s.action, &s.permissions) {
                (Some(_), Some(p)) if !p.is_empty() => {
                    return err(format!(
                        "Sources[{i}].Action must be omitted if Permissions are specified"
                    ))
                }
                (_, Some(p)) if !p.is_empty() => {
                    if e.name == WILDCARD {
                        return err(format!("Sources[{i}].Permissions cannot be specified on intentions with wildcarded destinations"));
                    }
                    for (j, perm) in p.iter().enumerate() {
                        if !matches!(perm.action.as_str(), "allow" | "deny") {
                            return err(format!("Sources[{i}].Permissions[{j}].Action must be set to 'allow' or 'deny'"));
                        }
                        if perm.http.is_none() {
                            return err(format!("Sources[{i}].Permissions[{j}].HTTP is required"));
                        }
                    }
                    has_l7 = true;
                }
                (Some(a), _) if matches!(a.as_str(), "allow" | "deny") => {}
                _ => {
                    return err(format!(
                        "Sources[{i}].Action must be set to 'allow' or 'deny'"
                    ))
                }
            }
            if s.source_type.is_empty() {
                s.source_type = SOURCE_TYPE_CONSUL.to_owned();
            } else if s.source_type != SOURCE_TYPE_CONSUL {
                return err(format!("Sources[{i}].Type must be set to 'consul'"));
            }
        }
        if has_l7 {
            let protocol = self.protocol(&e.name);
            if !is_http_like(&protocol) {
                return err(l7_protocol_error(&e.name, &protocol));
            }
        }
        Ok(())
    }

    /// Refuses a protocol that the service's L7 intentions cannot work with.
    fn check_protocol_change(&self, service: &str, protocol: &str) -> Result<(), ConfigEntryError> {
        let uses_l7 = self.intentions(service).is_some_and(|e| {
            e.sources
                .iter()
                .any(|s| s.permissions.as_ref().is_some_and(|p| !p.is_empty()))
        });
        if uses_l7 && !is_http_like(&protocol.to_lowercase()) {
            return Err(ConfigEntryError(l7_protocol_error(service, protocol)));
        }
        Ok(())
    }
}

fn is_http_like(protocol: &str) -> bool {
    matches!(protocol, "http" | "http2" | "grpc")
}

fn l7_protocol_error(service: &str, protocol: &str) -> String {
    format!("service {service:?} has protocol {protocol:?}, which is incompatible with L7 intentions permissions")
}

fn modify_index(e: &ConfigEntry) -> u64 {
    match e {
        ConfigEntry::ServiceIntentions(e) => e.modify_index,
        ConfigEntry::ServiceDefaults(e) => e.modify_index,
        _ => 0,
    }
}

fn create_index(e: &ConfigEntry) -> u64 {
    match e {
        ConfigEntry::ServiceIntentions(e) => e.create_index,
        ConfigEntry::ServiceDefaults(e) => e.create_index,
        _ => 0,
    }
}

/// The intentions of a `service-intentions` entry, as the legacy endpoints list them: legacy
/// sources keep their ID, `Meta` and timestamps (and get a `Hash`); the others have none of
/// these and carry the entry's `Meta`.
pub fn entry_intentions(e: &ServiceIntentionsEntry) -> Vec<Intention> {
    e.sources
        .iter()
        .map(|s| source_intention(&e.name, s, Some(e)))
        .collect()
}

/// One source as an intention; with `entry`, its indexes and `Meta` too.
fn source_intention(
    destination: &str,
    s: &SourceIntention,
    entry: Option<&ServiceIntentionsEntry>,
) -> Intention {
    let legacy = s.legacy_id.is_some();
    let mut ixn = Intention {
        id: s.legacy_id.clone().unwrap_or_default(),
        description: s.description.clone().unwrap_or_default(),
        source_ns: DEFAULT_NAMESPACE.to_owned(),
        source_name: s.name.clone(),
        destination_ns: DEFAULT_NAMESPACE.to_owned(),
        destination_name: destination.to_owned(),
        source_type: s.source_type.clone(),
        action: s.action.clone().unwrap_or_default(),
        permissions: s.permissions.clone().filter(|p| !p.is_empty()),
        meta: if legacy {
            s.legacy_meta.clone()
        } else {
            entry.and_then(|e| e.meta.clone())
        },
        created_at: s.legacy_create_time.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        updated_at: s.legacy_update_time.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        create_index: entry.map_or(0, |e| e.create_index),
        modify_index: entry.map_or(0, |e| e.modify_index),
        ..Intention::default()
    };
    ixn.precedence = precedence(&ixn);
    if legacy {
        ixn.hash = Some(intention_hash(&ixn));
    }
    ixn
}

/// A legacy intention's `Hash`: base64 of a SHA-256 over its contents (Consul hashes its
/// fields with the same purpose: telling two versions of an intention apart).
fn intention_hash(ixn: &Intention) -> String {
    use base64::Engine;
    let text = format!(
        "{}\0{}\0{}\0{}\0{}\0{}\0{}\0{:?}\0{:?}",
        ixn.id,
        ixn.description,
        ixn.source_ns,
        ixn.source_name,
        ixn.destination_ns,
        ixn.destination_name,
        ixn.action,
        ixn.meta,
        ixn.permissions
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// A legacy intention as the source the legacy API writes for it.
pub fn legacy_source(ixn: &Intention) -> SourceIntention {
    SourceIntention {
        name: ixn.source_name.clone(),
        namespace: None,
        partition: None,
        peer: None,
        action: Some(ixn.action.clone()),
        permissions: None,
        precedence: 0,
        legacy_id: Some(ixn.id.clone()),
        source_type: ixn.source_type.clone(),
        description: (!ixn.description.is_empty()).then(|| ixn.description.clone()),
        // Consul keeps an empty map, which its JSON omits.
        legacy_meta: ixn.meta.clone().filter(|m| !m.is_empty()),
        legacy_create_time: Some(ixn.created_at),
        legacy_update_time: Some(ixn.updated_at),
    }
}

/// Whether the legacy API may edit a destination's entry: only one every source of which it
/// wrote.
pub fn legacy_editable(e: &ServiceIntentionsEntry) -> bool {
    e.sources.iter().all(|s| s.legacy_id.is_some())
}

/// Consul's refusal when the legacy API meets an entry written through `/v1/config`.
pub fn legacy_refusal(destination: &str) -> ConfigEntryError {
    ConfigEntryError(format!("cannot use legacy intention API to edit intentions with a destination of {destination:?} after editing them via a service-intentions config entry"))
}
