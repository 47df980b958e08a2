//! The node, its services and their checks, and the views Consul's catalog, health and agent
//! endpoints give of them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use consul_connect_types::api::{
    AgentService, CatalogService, CheckDefinition, HealthCheck, Meta, Node, NodeService,
    ProxyConfig, ServiceConnect, ServiceEntry, ServiceRegistration, Weights,
};
use time::OffsetDateTime;

use super::StoreSettings;

/// First port given to sidecar proxies registered through `Connect.SidecarService`.
const SIDECAR_MIN_PORT: u16 = 21000;
const SIDECAR_MAX_PORT: u16 = 21255;

/// The simulated node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Node UUID.
    pub id: String,
    /// Node name.
    pub name: String,
    /// Node address.
    pub address: String,
    /// Datacenter.
    pub datacenter: String,
    /// Index of registration.
    pub index: u64,
}

/// A check's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// Healthy.
    Passing,
    /// Degraded.
    Warning,
    /// Failing.
    Critical,
}

impl CheckStatus {
    /// Consul's word for the status.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "passing" => Some(CheckStatus::Passing),
            "warning" => Some(CheckStatus::Warning),
            "critical" => Some(CheckStatus::Critical),
            _ => None,
        }
    }
}

/// A service check's state.
#[derive(Debug, Clone)]
pub struct CheckState {
    /// Check ID.
    pub id: String,
    /// Check name.
    pub name: String,
    /// Status as last set.
    pub status: CheckStatus,
    /// Notes from the definition.
    pub notes: String,
    /// Last output.
    pub output: String,
    /// TTL, for TTL checks.
    pub ttl: Option<Duration>,
    /// When a TTL check turns critical unless updated.
    pub expires_at: Option<OffsetDateTime>,
    /// Index of creation.
    pub create_index: u64,
    /// Index of last change.
    pub modify_index: u64,
}

impl CheckState {
    /// The status at `now`: a TTL check past its deadline is critical, with Consul's output,
    /// even before [`Catalog::expire_ttl_checks`] has recorded it.
    pub fn status_at(&self, now: OffsetDateTime) -> (CheckStatus, Cow<'_, str>) {
        if self.expired_at(now) {
            (CheckStatus::Critical, Cow::Owned(self.expired_output()))
        } else {
            (self.status, Cow::Borrowed(&self.output))
        }
    }

    fn expired_at(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|deadline| now >= deadline)
    }

    /// What Consul's agent writes when a TTL check misses its deadline (`CheckTTL`'s
    /// `getExpiredOutput`): the last output is kept after a fixed prefix.
    fn expired_output(&self) -> String {
        if self.output.is_empty() {
            "TTL expired".into()
        } else {
            format!(
                "TTL expired (last output before timeout follows): {}",
                self.output
            )
        }
    }
}

/// A registered service instance.
#[derive(Debug, Clone)]
pub struct ServiceInstance {
    /// The registration, with defaults filled in (ID, weights, tags).
    pub reg: ServiceRegistration,
    /// Its checks.
    pub checks: Vec<CheckState>,
    /// Index of creation.
    pub create_index: u64,
    /// Index of last change.
    pub modify_index: u64,
}

impl ServiceInstance {
    /// Whether this instance serves Connect for `name`: a native service of that name or a
    /// proxy for it (case-insensitive, as Consul's catalog compares names).
    pub fn connect_capable_for(&self, name: &str) -> bool {
        let native = self.reg.connect.as_ref().is_some_and(|c| c.native);
        if self.reg.kind == "connect-proxy" {
            return self
                .reg
                .proxy
                .as_ref()
                .is_some_and(|p| p.destination_service_name.eq_ignore_ascii_case(name));
        }
        native && self.reg.name.eq_ignore_ascii_case(name)
    }

    fn has_tag(&self, tag: &str) -> bool {
        self.reg
            .tags
            .iter()
            .flatten()
            .any(|t| t.eq_ignore_ascii_case(tag))
    }
}

/// Why a registration or check update was refused, in Consul's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// 400 with this text.
    #[error("{0}")]
    BadRequest(String),
    /// 500 with this text.
    #[error("{0}")]
    Internal(String),
}

/// Node, services and checks.
#[derive(Debug)]
pub struct Catalog {
    node: NodeInfo,
    services: BTreeMap<String, ServiceInstance>,
    /// No TTL check expires before this: kept on every arming, exact after each expiry scan,
    /// so finding the next deadline never walks the catalog.
    ttl_horizon: Option<OffsetDateTime>,
}

/// Filters for the catalog and health service listings.
#[derive(Debug, Default, Clone)]
pub struct ServiceFilter {
    /// Only instances with this tag.
    pub tag: Option<String>,
    /// Only instances whose checks all pass (health endpoints).
    pub passing: bool,
    /// Only Connect-capable instances for the name (the `/connect/` endpoints).
    pub connect: bool,
    /// Only if the node has all these meta pairs.
    pub node_meta: Vec<(String, String)>,
}

impl Catalog {
    pub(super) fn new(settings: &StoreSettings, index: u64) -> Self {
        Self {
            node: NodeInfo {
                id: settings.node_id.clone(),
                name: settings.node_name.clone(),
                address: settings.node_address.clone(),
                datacenter: settings.datacenter.clone(),
                index,
            },
            services: BTreeMap::new(),
            ttl_horizon: None,
        }
    }

    /// What `--data-dir` keeps: the registrations, and the state of TTL checks still armed
    /// (other checks start afresh, as in Consul).
    pub fn snapshot(&self) -> Vec<super::persist::ServiceSnapshot> {
        self.services
            .values()
            .map(|s| super::persist::ServiceSnapshot {
                registration: s.reg.clone(),
                create_index: s.create_index,
                modify_index: s.modify_index,
                checks: s
                    .checks
                    .iter()
                    .filter_map(|c| {
                        Some(super::persist::CheckSnapshot {
                            id: c.id.clone(),
                            status: c.status.as_str().to_owned(),
                            output: c.output.clone(),
                            expires_at: c.ttl.and(c.expires_at)?,
                        })
                    })
                    .collect(),
            })
            .collect()
    }

    /// Registers saved services again.
    pub(super) fn restore(
        &mut self,
        saved: Vec<super::persist::ServiceSnapshot>,
        now: OffsetDateTime,
    ) {
        for s in saved {
            let id = s.registration.id.clone();
            match self.insert(s.registration, s.modify_index, now) {
                Ok(()) => {
                    if let Some(instance) = self.services.get_mut(&id) {
                        instance.create_index = s.create_index;
                        restore_ttl_states(&mut instance.checks, &s.checks, now);
                    }
                }
                Err(e) => tracing::warn!(service = %id, error = %e, "saved service not restored"),
            }
        }
    }

    /// The node.
    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// Registers (or replaces) a service, and its sidecar if it asks for one.
    pub fn register(
        &mut self,
        mut reg: ServiceRegistration,
        index: u64,
        now: OffsetDateTime,
    ) -> Result<(), CatalogError> {
        validate_registration(&reg)?;
        fill_defaults(&mut reg);
        let sidecar = reg
            .connect
            .as_mut()
            .and_then(|c| c.sidecar_service.take())
            .map(|s| self.sidecar_for(&reg, *s));
        if let Some(sidecar) = &sidecar {
            validate_registration(sidecar)?;
        }
        self.insert(reg, index, now)?;
        if let Some(sidecar) = sidecar {
            self.insert(sidecar, index, now)?;
        }
        Ok(())
    }

    /// Removes a service by ID; false when it was not registered.
    pub fn deregister(&mut self, id: &str) -> bool {
        self.services.remove(id).is_some()
    }

    /// Sets a TTL check's status.
    pub fn update_check(
        &mut self,
        check_id: &str,
        status: &str,
        output: &str,
        index: u64,
        now: OffsetDateTime,
    ) -> Result<(), CatalogError> {
        let status = CheckStatus::parse(status)
            .ok_or_else(|| CatalogError::BadRequest(format!("Invalid check status: {status:?}")))?;
        let check = self
            .services
            .values_mut()
            .flat_map(|s| s.checks.iter_mut())
            .find(|c| c.id == check_id)
            .ok_or_else(|| CatalogError::Internal(format!("Unknown check {check_id:?}")))?;
        let Some(ttl) = check.ttl else {
            return Err(CatalogError::Internal(format!(
                "CheckID {check_id:?} does not have associated TTL"
            )));
        };
        check.status = status;
        check.output = output.to_owned();
        check.expires_at = Some(now + ttl);
        check.modify_index = index;
        self.arm_ttl(now + ttl);
        Ok(())
    }

    fn arm_ttl(&mut self, deadline: OffsetDateTime) {
        self.ttl_horizon = Some(self.ttl_horizon.map_or(deadline, |h| h.min(deadline)));
    }

    /// When [`Catalog::expire_ttl_checks`] should next run: no TTL check expires earlier. It
    /// may find nothing to do then (the check was updated or removed meanwhile).
    pub fn next_ttl_deadline(&self) -> Option<OffsetDateTime> {
        self.ttl_horizon
    }

    /// Turns every TTL check whose deadline has passed critical, as Consul's agent does when a
    /// check's TTL timer fires; the check stays so until its next update re-arms it. True when
    /// a check changed.
    pub fn expire_ttl_checks(&mut self, now: OffsetDateTime, index: u64) -> bool {
        let mut changed = false;
        for check in self.services.values_mut().flat_map(|s| s.checks.iter_mut()) {
            if !check.expired_at(now) {
                continue;
            }
            check.expires_at = None;
            let output = check.expired_output();
            // Consul's local state ignores an update that changes nothing.
            if check.status != CheckStatus::Critical || check.output != output {
                check.status = CheckStatus::Critical;
                check.output = output;
                check.modify_index = index;
                changed = true;
            }
        }
        // Exact again: the earliest deadline still armed.
        self.ttl_horizon = self
            .services
            .values()
            .flat_map(|s| &s.checks)
            .filter_map(|c| c.expires_at)
            .min();
        changed
    }

    /// All instances by ID.
    pub fn services(&self) -> impl Iterator<Item = &ServiceInstance> {
        self.services.values()
    }

    /// `GET /v1/agent/services`.
    pub fn agent_services(&self) -> BTreeMap<String, AgentService> {
        self.services
            .iter()
            .map(|(id, s)| (id.clone(), agent_service(s)))
            .collect()
    }

    /// `GET /v1/catalog/service/:s` and `/v1/catalog/connect/:s`.
    pub fn catalog_services(
        &self,
        name: &str,
        filter: &ServiceFilter,
        now: OffsetDateTime,
    ) -> Vec<CatalogService> {
        self.select(name, filter, now)
            .map(|s| self.catalog_service(s))
            .collect()
    }

    /// `GET /v1/health/service/:s` and `/v1/health/connect/:s`.
    pub fn health_services(
        &self,
        name: &str,
        filter: &ServiceFilter,
        now: OffsetDateTime,
    ) -> Vec<ServiceEntry> {
        self.select(name, filter, now)
            .map(|s| ServiceEntry {
                node: self.node_view(),
                service: node_service(s),
                checks: self.checks_of(s, now),
            })
            .collect()
    }

    fn select<'a>(
        &'a self,
        name: &'a str,
        filter: &'a ServiceFilter,
        now: OffsetDateTime,
    ) -> impl Iterator<Item = &'a ServiceInstance> + 'a {
        let node_matches = filter
            .node_meta
            .iter()
            .all(|(k, v)| self.node_meta().get(k) == Some(v));
        self.services.values().filter(move |s| {
            let named = if filter.connect {
                s.connect_capable_for(name)
            } else {
                s.reg.name.eq_ignore_ascii_case(name)
            };
            named
                && node_matches
                && filter.tag.as_deref().is_none_or(|t| s.has_tag(t))
                && (!filter.passing
                    || s.checks
                        .iter()
                        .all(|c| c.status_at(now).0 == CheckStatus::Passing))
        })
    }

    fn insert(
        &mut self,
        reg: ServiceRegistration,
        index: u64,
        now: OffsetDateTime,
    ) -> Result<(), CatalogError> {
        let checks = checks_for(&reg, index, now)?;
        for deadline in checks.iter().filter_map(|c| c.expires_at) {
            self.arm_ttl(deadline);
        }
        let create_index = self.services.get(&reg.id).map_or(index, |s| s.create_index);
        self.services.insert(
            reg.id.clone(),
            ServiceInstance {
                reg,
                checks,
                create_index,
                modify_index: index,
            },
        );
        Ok(())
    }

    fn sidecar_for(
        &self,
        parent: &ServiceRegistration,
        mut sidecar: ServiceRegistration,
    ) -> ServiceRegistration {
        sidecar.kind = "connect-proxy".into();
        if sidecar.id.is_empty() {
            sidecar.id = format!("{}-sidecar-proxy", parent.id);
        }
        if sidecar.name.is_empty() {
            sidecar.name = format!("{}-sidecar-proxy", parent.name);
        }
        if sidecar.port == 0 {
            sidecar.port = (SIDECAR_MIN_PORT..=SIDECAR_MAX_PORT)
                .find(|p| {
                    !self
                        .services
                        .values()
                        .any(|s| s.reg.port == *p && s.reg.id != sidecar.id)
                })
                .unwrap_or(SIDECAR_MIN_PORT);
        }
        let proxy = sidecar.proxy.get_or_insert_with(ProxyConfig::default);
        proxy.destination_service_name = parent.name.clone();
        proxy.destination_service_id = parent.id.clone();
        if proxy.local_service_port == 0 {
            proxy.local_service_port = parent.port;
        }
        if proxy.local_service_address.is_empty() {
            proxy.local_service_address = "127.0.0.1".into();
        }
        fill_defaults(&mut sidecar);
        sidecar
    }

    fn node_meta(&self) -> Meta {
        Meta::from([("consul-network-segment".to_owned(), String::new())])
    }

    fn node_view(&self) -> Node {
        Node {
            id: self.node.id.clone(),
            node: self.node.name.clone(),
            address: self.node.address.clone(),
            datacenter: self.node.datacenter.clone(),
            tagged_addresses: Some(self.tagged_addresses()),
            meta: Some(self.node_meta()),
            create_index: self.node.index,
            modify_index: self.node.index,
        }
    }

    fn tagged_addresses(&self) -> Meta {
        Meta::from([
            ("lan".to_owned(), self.node.address.clone()),
            ("wan".to_owned(), self.node.address.clone()),
        ])
    }

    fn catalog_service(&self, s: &ServiceInstance) -> CatalogService {
        CatalogService {
            id: self.node.id.clone(),
            node: self.node.name.clone(),
            address: self.node.address.clone(),
            datacenter: self.node.datacenter.clone(),
            tagged_addresses: Some(self.tagged_addresses()),
            node_meta: Some(self.node_meta()),
            service_kind: s.reg.kind.clone(),
            service_id: s.reg.id.clone(),
            service_name: s.reg.name.clone(),
            service_tags: s.reg.tags.clone(),
            service_address: s.reg.address.clone(),
            service_weights: s.reg.weights.unwrap_or_default(),
            service_meta: Some(s.reg.meta.clone().unwrap_or_default()),
            service_port: s.reg.port,
            service_enable_tag_override: s.reg.enable_tag_override,
            service_proxy_destination: Some(String::new()),
            service_proxy: s.reg.proxy.clone().unwrap_or_default(),
            service_connect: connect_view(&s.reg),
            create_index: s.create_index,
            modify_index: s.modify_index,
        }
    }

    fn checks_of(&self, s: &ServiceInstance, now: OffsetDateTime) -> Vec<HealthCheck> {
        let serf = HealthCheck {
            node: self.node.name.clone(),
            check_id: "serfHealth".into(),
            name: "Serf Health Status".into(),
            status: "passing".into(),
            notes: String::new(),
            output: "Agent alive and reachable".into(),
            service_id: String::new(),
            service_name: String::new(),
            service_tags: Some(Vec::new()),
            definition: serde_json::Map::new(),
            create_index: self.node.index,
            modify_index: self.node.index,
        };
        let service_checks = s.checks.iter().map(|c| {
            let (status, output) = c.status_at(now);
            HealthCheck {
                node: self.node.name.clone(),
                check_id: c.id.clone(),
                name: c.name.clone(),
                status: status.as_str().into(),
                notes: c.notes.clone(),
                output: output.into_owned(),
                service_id: s.reg.id.clone(),
                service_name: s.reg.name.clone(),
                service_tags: s.reg.tags.clone(),
                definition: serde_json::Map::new(),
                create_index: c.create_index,
                modify_index: c.modify_index,
            }
        });
        std::iter::once(serf).chain(service_checks).collect()
    }
}

/// Consul's checks on a registration body, with its 400 texts.
fn validate_registration(reg: &ServiceRegistration) -> Result<(), CatalogError> {
    let bad = |m: &str| Err(CatalogError::BadRequest(m.to_owned()));
    if reg.name.is_empty() {
        return bad("Missing service name");
    }
    match reg.kind.as_str() {
        "" => {}
        "connect-proxy" => {
            let native = reg.connect.as_ref().is_some_and(|c| c.native);
            if reg
                .proxy
                .as_ref()
                .is_none_or(|p| p.destination_service_name.is_empty())
            {
                return bad(
                    "Proxy.DestinationServiceName must be non-empty for Connect proxy services",
                );
            }
            if reg.port == 0 {
                return bad("Port must be set for a Connect proxy");
            }
            if native {
                return bad("A Proxy cannot also be Connect Native, only typical services");
            }
        }
        other => return bad(&format!("Invalid service kind: {other:?}")),
    }
    Ok(())
}

/// Fills what Consul fills on registration: ID from name, weights, empty tags and meta.
pub(crate) fn fill_defaults(reg: &mut ServiceRegistration) {
    if reg.id.is_empty() {
        reg.id = reg.name.clone();
    }
    reg.tags.get_or_insert_with(Vec::new);
    reg.weights.get_or_insert_with(Weights::default);
}

fn checks_for(
    reg: &ServiceRegistration,
    index: u64,
    now: OffsetDateTime,
) -> Result<Vec<CheckState>, CatalogError> {
    let defs: Vec<&CheckDefinition> = reg
        .check
        .iter()
        .chain(reg.checks.iter().flatten())
        .collect();
    let many = defs.len() > 1;
    defs.into_iter()
        .enumerate()
        .map(|(i, def)| {
            let id = match (&def.check_id, many) {
                (id, _) if !id.is_empty() => id.clone(),
                (_, false) => format!("service:{}", reg.id),
                (_, true) => format!("service:{}:{}", reg.id, i + 1),
            };
            let ttl = if def.ttl.is_empty() {
                None
            } else {
                Some(
                    consul_connect_types::go::parse_duration(&def.ttl).map_err(|e| {
                        CatalogError::BadRequest(format!("Invalid check TTL {:?}: {e}", def.ttl))
                    })?,
                )
            };
            if ttl.is_none() && def.http.is_empty() && def.tcp.is_empty() {
                return Err(CatalogError::BadRequest(
                    "Invalid check: TTL, HTTP or TCP must be set".into(),
                ));
            }
            let status = match def.status.as_str() {
                "" => CheckStatus::Critical,
                s => CheckStatus::parse(s).ok_or_else(|| {
                    CatalogError::BadRequest(format!("Invalid check status: {s:?}"))
                })?,
            };
            Ok(CheckState {
                id,
                name: if def.name.is_empty() {
                    format!("Service '{}' check", reg.name)
                } else {
                    def.name.clone()
                },
                status,
                notes: def.notes.clone(),
                output: String::new(),
                ttl,
                expires_at: ttl.map(|t| now + t),
                create_index: index,
                modify_index: index,
            })
        })
        .collect()
}

/// Puts back the saved state of TTL checks whose TTL had not run out by `now`; their new
/// deadline (a whole TTL from `now`) stays as `insert` set it. Consul's `loadCheckState`.
fn restore_ttl_states(
    checks: &mut [CheckState],
    saved: &[super::persist::CheckSnapshot],
    now: OffsetDateTime,
) {
    for state in saved.iter().filter(|s| now < s.expires_at) {
        let Some(check) = checks
            .iter_mut()
            .find(|c| c.id == state.id && c.ttl.is_some())
        else {
            continue;
        };
        if let Some(status) = CheckStatus::parse(&state.status) {
            check.status = status;
            check.output = state.output.clone();
        }
    }
}

fn connect_view(reg: &ServiceRegistration) -> ServiceConnect {
    ServiceConnect {
        native: reg.connect.as_ref().is_some_and(|c| c.native),
        sidecar_service: None,
    }
}

fn agent_service(s: &ServiceInstance) -> AgentService {
    let native = s.reg.connect.as_ref().is_some_and(|c| c.native);
    AgentService {
        kind: s.reg.kind.clone(),
        id: s.reg.id.clone(),
        service: s.reg.name.clone(),
        tags: s.reg.tags.clone(),
        meta: Some(s.reg.meta.clone().unwrap_or_default()),
        port: s.reg.port,
        address: s.reg.address.clone(),
        weights: s.reg.weights.unwrap_or_default(),
        enable_tag_override: s.reg.enable_tag_override,
        proxy: s.reg.proxy.clone(),
        connect: native.then(|| connect_view(&s.reg)),
    }
}

fn node_service(s: &ServiceInstance) -> NodeService {
    NodeService {
        kind: s.reg.kind.clone(),
        id: s.reg.id.clone(),
        service: s.reg.name.clone(),
        tags: s.reg.tags.clone(),
        address: s.reg.address.clone(),
        meta: s.reg.meta.clone().filter(|m| !m.is_empty()),
        port: s.reg.port,
        weights: s.reg.weights.unwrap_or_default(),
        enable_tag_override: s.reg.enable_tag_override,
        proxy_destination: Some(String::new()),
        proxy: s.reg.proxy.clone().unwrap_or_default(),
        connect: connect_view(&s.reg),
        create_index: s.create_index,
        modify_index: s.modify_index,
        ..NodeService::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let settings = StoreSettings {
            datacenter: "dc1".into(),
            node_name: "node".into(),
            node_id: "00000000-0000-0000-0000-000000000000".into(),
            node_address: "127.0.0.1".into(),
            ca: Default::default(),
            acl: Default::default(),
            version: Default::default(),
        };
        Catalog::new(&settings, 1)
    }

    fn with_ttl(id: &str, ttl: &str) -> ServiceRegistration {
        serde_json::from_value(serde_json::json!({
            "Name": id, "ID": id, "Port": 1,
            "Check": {"CheckID": format!("{id}-ttl"), "TTL": ttl},
        }))
        .unwrap()
    }

    fn status(catalog: &Catalog, check: &str, now: OffsetDateTime) -> (CheckStatus, String) {
        let check = catalog
            .services()
            .flat_map(|s| &s.checks)
            .find(|c| c.id == check)
            .unwrap();
        let (status, output) = check.status_at(now);
        (status, output.into_owned())
    }

    #[test]
    fn ttl_deadlines_are_tracked_without_walking_the_catalog() {
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let s = |n: i64| t0 + time::Duration::seconds(n);
        let mut c = catalog();
        assert_eq!(c.next_ttl_deadline(), None);
        c.register(with_ttl("slow", "30s"), 2, t0).unwrap();
        c.register(with_ttl("fast", "10s"), 3, t0).unwrap();
        assert_eq!(c.next_ttl_deadline(), Some(s(10)));

        // An update re-arms later; the horizon stays a lower bound until the next scan.
        c.update_check("fast-ttl", "passing", "fine", 4, s(5))
            .unwrap();
        assert_eq!(c.next_ttl_deadline(), Some(s(10)));
        assert!(!c.expire_ttl_checks(s(10), 5), "nothing has expired yet");
        assert_eq!(c.next_ttl_deadline(), Some(s(15)));

        assert!(c.expire_ttl_checks(s(15), 6));
        assert_eq!(
            status(&c, "fast-ttl", s(15)),
            (
                CheckStatus::Critical,
                "TTL expired (last output before timeout follows): fine".into()
            )
        );
        assert_eq!(c.next_ttl_deadline(), Some(s(30)));
        // slow was never updated: already critical, it still changes (its output does).
        assert!(c.expire_ttl_checks(s(30), 7));
        assert_eq!(
            status(&c, "slow-ttl", s(30)),
            (CheckStatus::Critical, "TTL expired".into())
        );
        assert_eq!(c.next_ttl_deadline(), None);
        // Expiring again changes nothing.
        assert!(!c.expire_ttl_checks(s(60), 8));
    }
}
