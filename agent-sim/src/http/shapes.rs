//! Per-version views of service and health bodies. The types crate writes Consul 1.4's shape;
//! 1.10 adds and drops fields (see `tests/data/consul-1.10.9/README.md`, difference 9), which
//! these views apply to the serialized body, so what the types crate writes stays 1.4's.

use std::net::IpAddr;

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::profile::ServiceShape;
use crate::state::Inner;

impl ServiceShape {
    /// `GET /v1/agent/services` (a map by ID) or `/v1/agent/service/<id>` (one service).
    pub fn agent_services(self, body: &impl Serialize, datacenter: &str, one: bool) -> Value {
        let mut v = to_value(body);
        if self == ServiceShape::Consul1_10 {
            let shape = |s: &mut Value| {
                if let Some(s) = s.as_object_mut() {
                    tag_service(s, "Address", "Port", "TaggedAddresses");
                    s.insert("Datacenter".into(), json!(datacenter));
                }
            };
            match (one, v.as_object_mut()) {
                (true, _) => shape(&mut v),
                (false, Some(map)) => map.values_mut().for_each(shape),
                (false, None) => {}
            }
        }
        v
    }

    /// `GET /v1/catalog/service/:s` and `/v1/catalog/connect/:s`.
    pub fn catalog(self, body: &impl Serialize) -> Value {
        let mut v = to_value(body);
        if self == ServiceShape::Consul1_10 {
            for item in v.as_array_mut().into_iter().flatten() {
                let Some(s) = item.as_object_mut() else {
                    continue;
                };
                tag_node(s.get_mut("TaggedAddresses"));
                s.remove("ServiceProxyDestination");
                tag_service(s, "ServiceAddress", "ServicePort", "ServiceTaggedAddresses");
                s.insert("ServiceSocketPath".into(), json!(""));
                modern_proxy(s.get_mut("ServiceProxy"));
            }
        }
        v
    }

    /// `GET /v1/health/service/:s` and `/v1/health/connect/:s`; `inner` tells check types.
    pub fn health(self, body: &impl Serialize, inner: &Inner) -> Value {
        let mut v = to_value(body);
        if self == ServiceShape::Consul1_10 {
            for entry in v.as_array_mut().into_iter().flatten() {
                if let Some(node) = entry.get_mut("Node").and_then(Value::as_object_mut) {
                    tag_node(node.get_mut("TaggedAddresses"));
                }
                if let Some(s) = entry.get_mut("Service").and_then(Value::as_object_mut) {
                    s.remove("ProxyDestination");
                    tag_service(s, "Address", "Port", "TaggedAddresses");
                    modern_proxy(s.get_mut("Proxy"));
                }
                let checks = entry.get_mut("Checks").and_then(Value::as_array_mut);
                for check in checks.into_iter().flatten() {
                    let Some(c) = check.as_object_mut() else {
                        continue;
                    };
                    let kind = check_type(inner, c);
                    c.insert("Type".into(), json!(kind));
                    c.insert("Interval".into(), json!(""));
                    c.insert("Timeout".into(), json!(""));
                    c.insert("ExposedPort".into(), json!(0));
                }
            }
        }
        v
    }
}

fn to_value(body: &impl Serialize) -> Value {
    serde_json::to_value(body).unwrap_or(Value::Null)
}

/// 1.10's agent tags a service registered with an IP address with it, LAN and WAN.
fn tag_service(s: &mut Map<String, Value>, address: &str, port: &str, into: &str) {
    let addr = s.get(address).and_then(Value::as_str).unwrap_or_default();
    let port = s.get(port).cloned().unwrap_or(json!(0));
    let family = match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => "ipv4",
        Ok(IpAddr::V6(_)) => "ipv6",
        Err(_) => return,
    };
    let tagged = json!({"Address": addr, "Port": port});
    let mut map = Map::new();
    map.insert(format!("lan_{family}"), tagged.clone());
    map.insert(format!("wan_{family}"), tagged);
    s.insert(into.into(), Value::Object(map));
}

/// The node's `lan`/`wan` addresses, also as `lan_ipv4`/`wan_ipv4`.
fn tag_node(tagged: Option<&mut Value>) {
    let Some(map) = tagged.and_then(Value::as_object_mut) else {
        return;
    };
    for which in ["lan", "wan"] {
        if let Some(addr) = map.get(which).and_then(Value::as_str) {
            let family = match addr.parse::<IpAddr>() {
                Ok(IpAddr::V6(_)) => "ipv6",
                _ => "ipv4",
            };
            let addr = json!(addr);
            map.insert(format!("{which}_{family}"), addr);
        }
    }
}

fn modern_proxy(proxy: Option<&mut Value>) {
    if let Some(p) = proxy.and_then(Value::as_object_mut) {
        p.entry("Mode").or_insert(json!(""));
        p.entry("MeshGateway").or_insert(json!({}));
        p.entry("Expose").or_insert(json!({}));
    }
}

/// `ttl` for a TTL check, `""` for the node's serf check and checks agent-sim does not run.
fn check_type(inner: &Inner, check: &Map<String, Value>) -> &'static str {
    let field = |k: &str| check.get(k).and_then(Value::as_str).unwrap_or_default();
    let (service, id) = (field("ServiceID"), field("CheckID"));
    let ttl = inner
        .catalog
        .services()
        .filter(|s| s.reg.id == service)
        .flat_map(|s| &s.checks)
        .any(|c| c.id == id && c.ttl.is_some());
    if ttl {
        "ttl"
    } else {
        ""
    }
}
