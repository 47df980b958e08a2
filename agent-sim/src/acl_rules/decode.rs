//! Decoding: the generic tree → raw rules (Go's `hcl.Decode` into `acl.Policy`), then validation
//! (`parseCurrent`).

use consul_connect_types::go::go_quote;

use super::{Access, NamedRule, Policy, RulesError, ServiceRule};
use crate::hcl::{Item, LitKind, Node, Pos, SyntaxError};

/// Decodes the root object the way Go's reflection decoder fills `acl.Policy`.
pub(super) fn decode(root: &[Item]) -> Result<RawPolicy, RulesError> {
    let mut raw = RawPolicy {
        acl: decode_string_in("root.acl", root, "acl")?,
        ..RawPolicy::default()
    };
    for kind in KINDS {
        decode_rules(kind, root, &mut raw.rules)?;
    }
    raw.keyring = decode_string_in("root.keyring", root, "keyring")?;
    raw.operator = decode_string_in("root.operator", root, "operator")?;
    Ok(raw)
}

/// The whole decoded document.
#[derive(Debug, Default)]
pub(super) struct RawPolicy {
    acl: Option<(String, Pos)>,
    rules: Vec<RawRule>,
    keyring: Option<(String, Pos)>,
    operator: Option<(String, Pos)>,
}

impl RawPolicy {
    /// Consul's `parseCurrent` checks, in its order. The first failure is reported.
    pub(super) fn validate(self) -> Result<Policy, RulesError> {
        let acl = validate_scalar("acl", self.acl)?;
        let mut policy = Policy {
            acl,
            ..Policy::default()
        };
        for kind in KINDS {
            for rule in self.rules.iter().filter(|rule| rule.kind == kind) {
                let access = Access::from_policy(rule.policy_str());
                let access = match (access, kind) {
                    (Some(access), _) => access,
                    // `list` is valid only for key rules, which are not kept.
                    (None, Kind::Key | Kind::KeyPrefix) if rule.policy_str() == "list" => continue,
                    (None, _) => return Err(rule.invalid(false)),
                };
                let intentions = match rule.intentions_str() {
                    "" => None,
                    word => Some(Access::from_policy(word).ok_or_else(|| rule.invalid(true))?),
                };
                let named = || NamedRule {
                    name: rule.name.clone(),
                    policy: access,
                };
                let service = || ServiceRule {
                    name: rule.name.clone(),
                    policy: access,
                    intentions,
                };
                match kind {
                    Kind::Service => policy.services.push(service()),
                    Kind::ServicePrefix => policy.service_prefixes.push(service()),
                    Kind::Node => policy.nodes.push(named()),
                    Kind::NodePrefix => policy.node_prefixes.push(named()),
                    Kind::Agent => policy.agents.push(named()),
                    Kind::AgentPrefix => policy.agent_prefixes.push(named()),
                    Kind::Query => policy.queries.push(named()),
                    Kind::QueryPrefix => policy.query_prefixes.push(named()),
                    _ => {}
                }
            }
        }
        validate_scalar("keyring", self.keyring)?;
        policy.operator = validate_scalar("operator", self.operator)?;
        Ok(policy)
    }
}

/// The rule kinds, in the field order of Go's `acl.Policy` (which is also the validation order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Agent,
    AgentPrefix,
    Key,
    KeyPrefix,
    Node,
    NodePrefix,
    Service,
    ServicePrefix,
    Session,
    SessionPrefix,
    Event,
    EventPrefix,
    Query,
    QueryPrefix,
}

const KINDS: [Kind; 14] = [
    Kind::Agent,
    Kind::AgentPrefix,
    Kind::Key,
    Kind::KeyPrefix,
    Kind::Node,
    Kind::NodePrefix,
    Kind::Service,
    Kind::ServicePrefix,
    Kind::Session,
    Kind::SessionPrefix,
    Kind::Event,
    Kind::EventPrefix,
    Kind::Query,
    Kind::QueryPrefix,
];

impl Kind {
    /// The rules-language keyword (also the word in Consul's error texts).
    fn keyword(self) -> &'static str {
        match self {
            Kind::Agent => "agent",
            Kind::AgentPrefix => "agent_prefix",
            Kind::Key => "key",
            Kind::KeyPrefix => "key_prefix",
            Kind::Node => "node",
            Kind::NodePrefix => "node_prefix",
            Kind::Service => "service",
            Kind::ServicePrefix => "service_prefix",
            Kind::Session => "session",
            Kind::SessionPrefix => "session_prefix",
            Kind::Event => "event",
            Kind::EventPrefix => "event_prefix",
            Kind::Query => "query",
            Kind::QueryPrefix => "query_prefix",
        }
    }

    /// The Go struct the rule decodes into and the name of its `hcl:",key"` field.
    fn go_struct(self) -> (&'static str, &'static str) {
        match self {
            Kind::Agent | Kind::AgentPrefix => ("acl.AgentPolicy", "Node"),
            Kind::Key | Kind::KeyPrefix => ("acl.KeyPolicy", "Prefix"),
            Kind::Node | Kind::NodePrefix => ("acl.NodePolicy", "Name"),
            Kind::Service | Kind::ServicePrefix => ("acl.ServicePolicy", "Name"),
            Kind::Session | Kind::SessionPrefix => ("acl.SessionPolicy", "Node"),
            Kind::Event | Kind::EventPrefix => ("acl.EventPolicy", "Event"),
            Kind::Query | Kind::QueryPrefix => ("acl.PreparedQueryPolicy", "Prefix"),
        }
    }

    fn has_sentinel(self) -> bool {
        matches!(
            self,
            Kind::Key
                | Kind::KeyPrefix
                | Kind::Node
                | Kind::NodePrefix
                | Kind::Service
                | Kind::ServicePrefix
        )
    }

    fn has_intentions(self) -> bool {
        matches!(self, Kind::Service | Kind::ServicePrefix)
    }
}

/// One rule as decoded, before validation. Strings are kept as written so that errors can
/// echo them.
#[derive(Debug, Clone)]
struct RawRule {
    kind: Kind,
    name: String,
    pos: Pos,
    policy: Option<(String, Pos)>,
    intentions: Option<(String, Pos)>,
    sentinel_code: String,
    sentinel_level: String,
}

impl RawRule {
    fn policy_str(&self) -> &str {
        self.policy.as_ref().map_or("", |(value, _)| value)
    }

    fn intentions_str(&self) -> &str {
        self.intentions.as_ref().map_or("", |(value, _)| value)
    }

    /// Go's `fmt.Sprintf("%#v", rule)`, which Consul puts in its error texts.
    fn go_repr(&self) -> String {
        let (go_type, key_field) = self.kind.go_struct();
        let mut out = format!(
            "{go_type}{{{key_field}:{}, Policy:{}",
            go_quote(&self.name),
            go_quote(self.policy_str())
        );
        if self.kind.has_sentinel() {
            out.push_str(&format!(
                ", Sentinel:acl.Sentinel{{Code:{}, EnforcementLevel:{}}}",
                go_quote(&self.sentinel_code),
                go_quote(&self.sentinel_level)
            ));
        }
        if self.kind.has_intentions() {
            out.push_str(&format!(", Intentions:{}", go_quote(self.intentions_str())));
        }
        out.push('}');
        out
    }

    /// Go's `%#v` of the rule in Consul 1.10, where it is a pointer to an `acl.*Rule`.
    fn go_repr_modern(&self) -> String {
        let (go_type, key_field) = self.kind.go_struct();
        let go_type = go_type.replace("Policy", "Rule");
        let mut out = format!(
            "&{go_type}{{{key_field}:{}, Policy:{}",
            go_quote(&self.name),
            go_quote(self.policy_str())
        );
        if self.kind.has_intentions() {
            out.push_str(&format!(", Intentions:{}", go_quote(self.intentions_str())));
        }
        // The kinds that had a Sentinel now embed the (empty in OSS) EnterpriseRule.
        if self.kind.has_sentinel() {
            out.push_str(", EnterpriseRule:acl.EnterpriseRule{}");
        }
        out.push('}');
        out
    }

    fn invalid(&self, intentions: bool) -> RulesError {
        let (value, line) = match if intentions {
            &self.intentions
        } else {
            &self.policy
        } {
            Some((value, pos)) => (value.clone(), pos.line),
            None => (String::new(), self.pos.line),
        };
        RulesError::InvalidPolicy {
            rule: self.kind.keyword(),
            intentions,
            name: Some(self.name.clone()),
            value,
            line,
            detail: self.go_repr(),
            modern_detail: self.go_repr_modern(),
        }
    }
}

/// `acl`, `keyring`, `operator`: empty means unset, anything else must be a valid policy.
fn validate_scalar(
    rule: &'static str,
    value: Option<(String, Pos)>,
) -> Result<Option<Access>, RulesError> {
    match value {
        None => Ok(None),
        Some((value, _)) if value.is_empty() => Ok(None),
        Some((value, pos)) => match Access::from_policy(&value) {
            Some(access) => Ok(Some(access)),
            None => Err(RulesError::InvalidPolicy {
                rule,
                intentions: false,
                name: None,
                detail: go_quote(&value),
                modern_detail: go_quote(&value),
                value,
                line: pos.line,
            }),
        },
    }
}

/// Go's `ObjectList.Filter(field)`: items whose first key equals `field` (ASCII case-insensitive),
/// with that key removed, split into those with keys left (`Children`) and those without (`Elem`).
fn filter(items: &[Item], field: &str) -> (Vec<Item>, Vec<Item>) {
    let mut children = Vec::new();
    let mut elems = Vec::new();
    for item in items {
        let Some((first, rest)) = item.keys.split_first() else {
            continue;
        };
        if !first.value.eq_ignore_ascii_case(field) {
            continue;
        }
        let stripped = Item {
            keys: rest.to_vec(),
            value: item.value.clone(),
        };
        if rest.is_empty() {
            elems.push(stripped);
        } else {
            children.push(stripped);
        }
    }
    (children, elems)
}

/// A string field of a struct: labelled blocks are an error, later assignments win.
fn decode_string_in(
    path: &str,
    body: &[Item],
    field: &str,
) -> Result<Option<(String, Pos)>, RulesError> {
    let (children, elems) = filter(body, field);
    if let Some(first) = children.first() {
        return Err(decode_error(
            first.pos(),
            format!("{path}: unknown type for string *ast.ObjectList"),
        ));
    }
    let mut out = None;
    for elem in &elems {
        out = Some((decode_string(path, &elem.value)?, elem.value.pos()));
    }
    Ok(out)
}

fn decode_string(path: &str, node: &Node) -> Result<String, RulesError> {
    match node {
        Node::Lit(lit) if lit.kind != LitKind::Null => Ok(lit.value.clone()),
        other => Err(decode_error(
            other.list_pos(),
            format!(
                "{path}: unknown type for string {}",
                other.go_type_as_list()
            ),
        )),
    }
}

/// A `[]*XxxPolicy` field: `kind "name" { … }` items first, then `kind { … }`/`kind = { … }`.
fn decode_rules(kind: Kind, root: &[Item], out: &mut Vec<RawRule>) -> Result<(), RulesError> {
    let path = format!("root.{}", kind.keyword());
    let (children, elems) = filter(root, kind.keyword());
    decode_rule_items(kind, &path, &children, out)?;
    for elem in &elems {
        match &elem.value {
            Node::Object { items, .. } => decode_rule_items(kind, &path, items, out)?,
            Node::List { elems, .. } => {
                // A list element has no key to name the rule: the first one fails.
                let (_, key_field) = kind.go_struct();
                if let Some(node) = elems.first() {
                    let message = match node {
                        Node::Object { .. } => {
                            format!("{path}[0]: {key_field} asked for 'key', impossible")
                        }
                        other => format!(
                            "{path}[0]: not an object type for struct ({})",
                            other.go_type()
                        ),
                    };
                    return Err(decode_error(node.pos(), message));
                }
            }
            Node::Lit(lit) => {
                return Err(decode_error(
                    lit.pos,
                    "unknown slice type: *ast.LiteralType".to_string(),
                ));
            }
        }
    }
    Ok(())
}

fn decode_rule_items(
    kind: Kind,
    path: &str,
    items: &[Item],
    out: &mut Vec<RawRule>,
) -> Result<(), RulesError> {
    for (i, item) in items.iter().enumerate() {
        out.push(decode_rule(
            kind,
            &format!("{path}[{i}]"),
            expand_object(item),
        )?);
    }
    Ok(())
}

/// Go's `expandObject`: an item with exactly two keys (`service "web" "x" { … }`, or flattened
/// JSON) is read as `web { x { … } }`.
fn expand_object(item: &Item) -> Item {
    match item.keys.as_slice() {
        [first, second] => Item {
            keys: vec![first.clone()],
            value: Node::Object {
                items: vec![Item {
                    keys: vec![second.clone()],
                    value: item.value.clone(),
                }],
                pos: second.pos,
            },
        },
        _ => item.clone(),
    }
}

fn decode_rule(kind: Kind, path: &str, item: Item) -> Result<RawRule, RulesError> {
    let (name, pos) = item
        .keys
        .first()
        .map_or((String::new(), item.value.pos()), |key| {
            (key.value.clone(), key.pos)
        });
    let body = match &item.value {
        Node::Object { items, .. } => items.clone(),
        // Go decodes a literal-valued item as a struct made of that item alone.
        Node::Lit(_) => vec![item.clone()],
        Node::List { pos, .. } => {
            return Err(decode_error(
                *pos,
                format!("{path}: not an object type for struct (*ast.ListType)"),
            ));
        }
    };
    let policy = decode_string_in(&format!("{path}.Policy"), &body, "Policy")?;
    let (sentinel_code, sentinel_level) = if kind.has_sentinel() {
        decode_sentinel(&format!("{path}.Sentinel"), &body)?
    } else {
        (String::new(), String::new())
    };
    let intentions = if kind.has_intentions() {
        decode_string_in(&format!("{path}.Intentions"), &body, "Intentions")?
    } else {
        None
    };
    Ok(RawRule {
        kind,
        name,
        pos,
        policy,
        intentions,
        sentinel_code,
        sentinel_level,
    })
}

/// The `sentinel { code = … enforcementlevel = … }` block (Enterprise; OSS only echoes it in
/// error texts).
fn decode_sentinel(path: &str, body: &[Item]) -> Result<(String, String), RulesError> {
    let (children, elems) = filter(body, "Sentinel");
    let mut code = String::new();
    let mut level = String::new();
    let mut bodies = Vec::new();
    if !children.is_empty() {
        bodies.push(children);
    }
    for elem in elems {
        match elem.value {
            Node::Object { items, .. } => bodies.push(items),
            other => {
                return Err(decode_error(
                    other.pos(),
                    format!(
                        "{path}: not an object type for struct ({})",
                        other.go_type()
                    ),
                ));
            }
        }
    }
    for items in &bodies {
        if let Some((value, _)) = decode_string_in(&format!("{path}.Code"), items, "Code")? {
            code = value;
        }
        if let Some((value, _)) = decode_string_in(
            &format!("{path}.EnforcementLevel"),
            items,
            "EnforcementLevel",
        )? {
            level = value;
        }
    }
    Ok((code, level))
}

impl From<SyntaxError> for RulesError {
    fn from(e: SyntaxError) -> Self {
        RulesError::Syntax {
            line: e.line,
            column: e.column,
            message: e.message,
        }
    }
}

fn decode_error(pos: Pos, message: String) -> RulesError {
    RulesError::Syntax {
        line: pos.line,
        column: pos.column,
        message,
    }
}
