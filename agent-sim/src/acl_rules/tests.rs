use super::*;

/// A compact, order-preserving rendering of everything a `Policy` keeps.
fn summary(policy: &Policy) -> String {
    let mut parts = Vec::new();
    if let Some(access) = policy.acl() {
        parts.push(format!("acl={access}"));
    }
    if let Some(access) = policy.operator() {
        parts.push(format!("operator={access}"));
    }
    let services = [
        ("service", policy.services()),
        ("service_prefix", policy.service_prefixes()),
    ];
    for (kind, rules) in services {
        for rule in rules {
            let intentions = rule
                .intentions()
                .map(|i| format!("/intentions={i}"))
                .unwrap_or_default();
            parts.push(format!(
                "{kind} {:?}={}{intentions}",
                rule.name(),
                rule.policy()
            ));
        }
    }
    let named = [
        ("node", policy.nodes()),
        ("node_prefix", policy.node_prefixes()),
        ("agent", policy.agents()),
        ("agent_prefix", policy.agent_prefixes()),
    ];
    for (kind, rules) in named {
        for rule in rules {
            parts.push(format!("{kind} {:?}={}", rule.name(), rule.policy()));
        }
    }
    parts.join("; ")
}

const SENTINEL_EMPTY: &str = r#"Sentinel:acl.Sentinel{Code:"", EnforcementLevel:""}"#;

#[test]
fn parse_accepts_consul_rules() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "one-line block",
            r#"service "web" { policy = "write" intentions = "read" }"#,
            r#"service "web"=write/intentions=read"#,
        ),
        (
            "multi-line blocks and all comment styles",
            "# leading comment\nservice \"web\" {\n  // line comment\n  policy = \"write\" /* inline */\n}\n\
             /* block\n comment */\nservice_prefix \"\" {\n  policy = \"read\"\n}\n",
            r#"service "web"=write; service_prefix ""=read"#,
        ),
        (
            "nodes and prefixes",
            r#"node "n" { policy = "read" } node_prefix "" { policy = "write" }"#,
            r#"node "n"=read; node_prefix ""=write"#,
        ),
        (
            "scalars",
            "operator = \"read\"\nacl = \"write\"\nkeyring = \"deny\"",
            "acl=write; operator=read",
        ),
        (
            "agent rules kept",
            r#"agent "a1" { policy = "write" } agent_prefix "" { policy = "read" }"#,
            r#"agent "a1"=write; agent_prefix ""=read"#,
        ),
        (
            "other kinds validated and dropped, list allowed on keys",
            r#"key_prefix "" { policy = "list" } key "k" { policy = "read" }
               session_prefix "" { policy = "write" } event "e" { policy = "deny" }
               query_prefix "" { policy = "read" }"#,
            "",
        ),
        (
            "unknown keys ignored",
            "foo = \"bar\"\nunknown \"x\" { y = [1, 2] }\nservice \"a\" { policy = \"read\" color = \"blue\" }",
            r#"service "a"=read"#,
        ),
        (
            "keys are case-insensitive",
            r#"Service "web" { Policy = "read" INTENTIONS = "write" }"#,
            r#"service "web"=read/intentions=write"#,
        ),
        (
            "unquoted name",
            "service web-1.x { policy = \"read\" }",
            r#"service "web-1.x"=read"#,
        ),
        (
            "nested block form",
            r#"service { "web" { policy = "read" } db { policy = "write" } }"#,
            r#"service "web"=read; service "db"=write"#,
        ),
        (
            "assignment form",
            r#"service = { web = { policy = "read" } }"#,
            r#"service "web"=read"#,
        ),
        (
            "commas separate items",
            r#"service "a" { policy = "read", intentions = "deny", }, operator = "write""#,
            r#"operator=write; service "a"=read/intentions=deny"#,
        ),
        (
            "later assignment wins",
            r#"service "a" { policy = "read" policy = "write" }"#,
            r#"service "a"=write"#,
        ),
        (
            "string escapes",
            r#"service "we\u0062\x2d\"q\"" { policy = "\x72ead" }"#,
            r#"service "web-\"q\""=read"#,
        ),
        (
            "repeated blocks are kept in order",
            r#"service "a" { policy = "read" } service "a" { policy = "deny" }"#,
            r#"service "a"=read; service "a"=deny"#,
        ),
        (
            "empty text",
            "",
            "",
        ),
        (
            "only whitespace and comments",
            "  \n# nothing\n// here\n",
            "",
        ),
        (
            "empty intentions means unset",
            r#"service "a" { policy = "read" intentions = "" }"#,
            r#"service "a"=read"#,
        ),
        (
            "bare field block reads as a rule named after the field (Go decoder quirk)",
            r#"service { policy = "read" }"#,
            r#"service "policy"=read"#,
        ),
        (
            "sentinel block accepted",
            r#"service "a" { policy = "write" sentinel { code = "x" enforcementlevel = "soft-mandatory" } }"#,
            r#"service "a"=write"#,
        ),
        (
            "JSON objects",
            r#"{"service": {"web": {"policy": "write"}, "db": {"policy": "read", "intentions": "write"}},
               "service_prefix": {"": {"policy": "read"}}, "operator": "read"}"#,
            r#"operator=read; service "web"=write; service "db"=read/intentions=write; service_prefix ""=read"#,
        ),
        (
            "JSON arrays of objects",
            r#"{"service": [{"web": [{"policy": "write"}]}, {"db": [{"policy": "deny"}]}],
               "node_prefix": [{"": [{"policy": "read"}]}]}"#,
            r#"service "web"=write; service "db"=deny; node_prefix ""=read"#,
        ),
        (
            "JSON with leading whitespace and escapes",
            "\n  {\"service\": {\"w\\u00e9b\\/1\": {\"policy\": \"read\"}}}",
            r#"service "wéb/1"=read"#,
        ),
        (
            "CRLF line endings",
            "service \"a\" {\r\n  policy = \"read\"\r\n}\r\n",
            r#"service "a"=read"#,
        ),
    ];
    for (name, rules, expected) in cases {
        match Policy::parse(rules) {
            Ok(policy) => assert_eq!(summary(&policy), *expected, "case {name:?}"),
            Err(err) => panic!("case {name:?}: unexpected error: {err}"),
        }
    }
}

#[test]
fn parse_rejects_with_consul_texts() {
    let service = |name: &str, policy: &str, intentions: &str| {
        format!(
            "acl.ServicePolicy{{Name:{name:?}, Policy:{policy:?}, {SENTINEL_EMPTY}, Intentions:{intentions:?}}}"
        )
    };
    let cases: Vec<(&str, &str, String, usize)> = vec![
        (
            "bad service policy",
            r#"service "web" { policy = "writ" }"#,
            format!("Invalid service policy: {}", service("web", "writ", "")),
            1,
        ),
        (
            "missing service policy",
            "\n\nservice \"web\" {}",
            format!("Invalid service policy: {}", service("web", "", "")),
            3,
        ),
        (
            "policy values are case-sensitive",
            r#"service "web" { policy = "Write" }"#,
            format!("Invalid service policy: {}", service("web", "Write", "")),
            1,
        ),
        (
            "bad intentions on a prefix rule",
            "service_prefix \"\" {\n  policy = \"read\"\n  intentions = \"list\"\n}",
            format!(
                "Invalid service_prefix intentions policy: {}",
                service("", "read", "list")
            ),
            3,
        ),
        (
            "sentinel is echoed",
            r#"service "a" { policy = "wr" sentinel { code = "x" enforcementlevel = "soft-mandatory" } }"#,
            r#"Invalid service policy: acl.ServicePolicy{Name:"a", Policy:"wr", Sentinel:acl.Sentinel{Code:"x", EnforcementLevel:"soft-mandatory"}, Intentions:""}"#.to_string(),
            1,
        ),
        (
            "two labels expand into a nested block (Go expandObject)",
            r#"service "web" "x" { policy = "read" }"#,
            format!("Invalid service policy: {}", service("web", "", "")),
            1,
        ),
        ("bad operator", r#"operator = "writ""#, r#"Invalid operator policy: "writ""#.into(), 1),
        ("list is not an acl policy", "\nacl = \"list\"", r#"Invalid acl policy: "list""#.into(), 2),
        ("bad keyring", r#"keyring = "x""#, r#"Invalid keyring policy: "x""#.into(), 1),
        ("numbers decode as text", "operator = 1", r#"Invalid operator policy: "1""#.into(), 1),
        (
            "heredoc value keeps its newline",
            "operator = <<EOF\nread\nEOF\n",
            r#"Invalid operator policy: "read\n""#.into(),
            1,
        ),
        (
            "list is not a node policy",
            r#"node "n" { policy = "list" }"#,
            format!(r#"Invalid node policy: acl.NodePolicy{{Name:"n", Policy:"list", {SENTINEL_EMPTY}}}"#),
            1,
        ),
        (
            "bad key policy",
            r#"key "k" { policy = "lis" }"#,
            format!(r#"Invalid key policy: acl.KeyPolicy{{Prefix:"k", Policy:"lis", {SENTINEL_EMPTY}}}"#),
            1,
        ),
        (
            "bad agent policy",
            r#"agent "a" { policy = "x" }"#,
            r#"Invalid agent policy: acl.AgentPolicy{Node:"a", Policy:"x"}"#.into(),
            1,
        ),
        (
            "bad session_prefix policy",
            r#"session_prefix "" { policy = "list" }"#,
            r#"Invalid session_prefix policy: acl.SessionPolicy{Node:"", Policy:"list"}"#.into(),
            1,
        ),
        (
            "bad event policy",
            r#"event "deploy" { policy = "fire" }"#,
            r#"Invalid event policy: acl.EventPolicy{Event:"deploy", Policy:"fire"}"#.into(),
            1,
        ),
        (
            "bad query_prefix policy",
            r#"query_prefix "" { policy = "list" }"#,
            r#"Invalid query_prefix policy: acl.PreparedQueryPolicy{Prefix:"", Policy:"list"}"#.into(),
            1,
        ),
        (
            "validation follows Consul's field order, not source order",
            "operator = \"bad\"\nservice \"web\" { policy = \"bad\" }\nnode \"n\" { policy = \"bad\" }",
            format!(r#"Invalid node policy: acl.NodePolicy{{Name:"n", Policy:"bad", {SENTINEL_EMPTY}}}"#),
            3,
        ),
        (
            "control characters are quoted like Go",
            "operator = \"a\\tb\\x01\\\"\"",
            r#"Invalid operator policy: "a\tb\x01\"""#.into(),
            1,
        ),
        (
            "JSON bad value",
            r#"{"service": {"web": {"policy": "writ"}}}"#,
            format!("Invalid service policy: {}", service("web", "writ", "")),
            1,
        ),
        (
            "unclosed block",
            r#"service "web" {"#,
            "Failed to parse ACL rules: At 1:16: object expected closing RBRACE got: EOF".into(),
            1,
        ),
        (
            "bare words",
            "not a valid hcl",
            "Failed to parse ACL rules: At 1:17: key 'not a valid hcl' expected start of object ('{') or assignment ('=')"
                .into(),
            1,
        ),
        (
            "labels then closing brace",
            "service \"a\" {\n  policy \"x\"\n}",
            r#"Failed to parse ACL rules: At 3:1: key 'policy "x"' expected start of object ('{') or assignment ('=')"#
                .into(),
            3,
        ),
        (
            "labelled assignment",
            r#"service "web" = { policy = "read" }"#,
            "Failed to parse ACL rules: At 1:15: nested object expected: LBRACE got: ASSIGN".into(),
            1,
        ),
        (
            "unterminated string",
            r#"operator = "read"#,
            "Failed to parse ACL rules: At 1:17: literal not terminated".into(),
            1,
        ),
        (
            "newline ends a string; the first error on line 1 is reported",
            "operator = \"re\n",
            "Failed to parse ACL rules: At 1:15: literal not terminated".into(),
            1,
        ),
        (
            "the last scanner error wins, as in hcl",
            "operator = \"re\nad\"",
            "Failed to parse ACL rules: At 2:4: literal not terminated".into(),
            2,
        ),
        (
            "missing value",
            r#"service "web" { policy = }"#,
            "Failed to parse ACL rules: At 1:26: Unknown token: {Type:RBRACE Pos:1:26 Text:} JSON:false}".into(),
            1,
        ),
        (
            "illegal character",
            "\noperator = \"read\" @",
            "Failed to parse ACL rules: At 2:19: illegal char".into(),
            2,
        ),
        (
            "unterminated comment",
            "/* unterminated",
            "Failed to parse ACL rules: At 1:16: comment not terminated".into(),
            1,
        ),
        (
            "single slash",
            "operator = \"read\" / x",
            "Failed to parse ACL rules: At 1:19: expected '/' for comment".into(),
            1,
        ),
        (
            "bad escape",
            r#"operator = "\q""#,
            "Failed to parse ACL rules: At 1:14: illegal char escape".into(),
            1,
        ),
        (
            "list where a string belongs",
            r#"operator = ["read"]"#,
            "Failed to parse ACL rules: At 1:12: root.operator: unknown type for string *ast.ListType".into(),
            1,
        ),
        (
            "block where a string belongs",
            "service \"a\" {\n  policy { x = 1 }\n}",
            "Failed to parse ACL rules: At 2:12: root.service[0].Policy: unknown type for string *ast.ObjectList"
                .into(),
            2,
        ),
        (
            "string where rules belong",
            r#"service = "web""#,
            "Failed to parse ACL rules: At 1:11: unknown slice type: *ast.LiteralType".into(),
            1,
        ),
        (
            "list where rules belong",
            r#"service = [{ policy = "read" }]"#,
            "Failed to parse ACL rules: At 1:12: root.service[0]: Name asked for 'key', impossible".into(),
            1,
        ),
        (
            "missing comma in list",
            r#"x = ["a" "b"]"#,
            "Failed to parse ACL rules: At 1:10: error parsing list, expected comma or list end, got: STRING"
                .into(),
            1,
        ),
        (
            "JSON missing value",
            r#"{"service": }"#,
            "Failed to parse ACL rules: At 1:13: expected a JSON value, found '}'".into(),
            1,
        ),
        (
            "JSON null policy",
            "{\"operator\":\n null}",
            "Failed to parse ACL rules: At 2:2: root.operator: unknown type for string *ast.LiteralType".into(),
            2,
        ),
        (
            "JSON trailing text",
            r#"{"operator": "read"} x"#,
            "Failed to parse ACL rules: At 1:22: unexpected 'x' after the JSON object".into(),
            1,
        ),
    ];
    for (name, rules, expected, line) in &cases {
        match Policy::parse(rules) {
            Ok(policy) => panic!("case {name:?}: parsed as {:?}", summary(&policy)),
            Err(err) => {
                assert_eq!(err.to_string(), *expected, "case {name:?}");
                assert_eq!(err.line(), *line, "case {name:?}: line");
            }
        }
    }
}

#[test]
fn invalid_policy_error_carries_the_rule() {
    let err = Policy::parse("\nservice \"web\" {\n  policy = \"writ\"\n}").unwrap_err();
    match err {
        RulesError::InvalidPolicy {
            rule,
            intentions,
            name,
            value,
            line,
            ..
        } => {
            assert_eq!(rule, "service");
            assert!(!intentions);
            assert_eq!(name.as_deref(), Some("web"));
            assert_eq!(value, "writ");
            assert_eq!(line, 3);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn access_order_and_predicates() {
    assert!(Access::Deny < Access::Read && Access::Read < Access::Write);
    let table = [
        (Access::Deny, false, false),
        (Access::Read, true, false),
        (Access::Write, true, true),
    ];
    for (access, read, write) in table {
        assert_eq!(access.allows_read(), read, "{access}");
        assert_eq!(access.allows_write(), write, "{access}");
        assert_eq!(Access::from_policy(access.as_str()), Some(access));
    }
}

#[derive(Debug, Clone, Copy)]
enum Check {
    ServiceRead(&'static str),
    ServiceWrite(&'static str),
    IntentionRead(&'static str),
    IntentionWrite(&'static str),
    NodeRead(&'static str),
    NodeWrite(&'static str),
    AgentRead(&'static str),
    OperatorRead,
    OperatorWrite,
    AclRead,
    AclWrite,
    IntentionDefaultAllow,
}

use Check::*;
use DefaultPolicy::{Allow, Deny};

struct Case {
    name: &'static str,
    policies: &'static [&'static str],
    default: DefaultPolicy,
    management: bool,
    checks: &'static [(Check, bool)],
}

fn run(case: &Case, check: Check) -> bool {
    let policies: Vec<Policy> = case
        .policies
        .iter()
        .map(|rules| {
            Policy::parse(rules).unwrap_or_else(|err| panic!("case {:?}: {err}", case.name))
        })
        .collect();
    let authz = Authorizer::new(&policies, case.default, case.management);
    match check {
        ServiceRead(name) => authz.service_read(name),
        ServiceWrite(name) => authz.service_write(name),
        IntentionRead(name) => authz.intention_read(name),
        IntentionWrite(name) => authz.intention_write(name),
        NodeRead(name) => authz.node_read(name),
        NodeWrite(name) => authz.node_write(name),
        AgentRead(name) => authz.agent_read(name),
        OperatorRead => authz.operator_read(),
        OperatorWrite => authz.operator_write(),
        AclRead => authz.acl_read(),
        AclWrite => authz.acl_write(),
        IntentionDefaultAllow => authz.intention_default_allow(),
    }
}

const CASES: &[Case] = &[
    Case {
        name: "exact deny beats empty prefix write",
        policies: &[r#"service "web" { policy = "deny" } service_prefix "" { policy = "write" }"#],
        default: Deny,
        management: false,
        checks: &[
            (ServiceRead("web"), false),
            (ServiceWrite("db"), true),
            (ServiceWrite("webx"), true),
        ],
    },
    Case {
        name: "exact write beats empty prefix deny",
        policies: &[r#"service "web" { policy = "write" } service_prefix "" { policy = "deny" }"#],
        default: Allow,
        management: false,
        checks: &[
            (ServiceWrite("web"), true),
            (ServiceRead("webx"), false),
            (ServiceRead(""), false),
        ],
    },
    Case {
        name: "longest prefix wins",
        policies: &[
            r#"service_prefix "we" { policy = "write" } service_prefix "web" { policy = "read" }"#,
        ],
        default: Deny,
        management: false,
        checks: &[
            (ServiceWrite("webby"), false),
            (ServiceRead("webby"), true),
            (ServiceWrite("wet"), true),
            (ServiceRead("w"), false),
        ],
    },
    Case {
        name: "prefix equal to the name is a prefix match",
        policies: &[
            r#"service_prefix "web" { policy = "deny" } service_prefix "" { policy = "write" }"#,
        ],
        default: Allow,
        management: false,
        checks: &[(ServiceRead("web"), false), (ServiceRead("we"), true)],
    },
    Case {
        name: "exact rule is not a prefix",
        policies: &[r#"service "web" { policy = "write" }"#],
        default: Deny,
        management: false,
        checks: &[
            (ServiceWrite("web"), true),
            (ServiceRead("web-sidecar-proxy"), false),
        ],
    },
    Case {
        name: "empty prefix matches every name",
        policies: &[r#"service_prefix "" { policy = "read" }"#],
        default: Deny,
        management: false,
        checks: &[
            (ServiceRead("anything"), true),
            (ServiceRead(""), true),
            (ServiceWrite("anything"), false),
        ],
    },
    Case {
        name: "multibyte prefixes",
        policies: &[
            r#"service_prefix "wé" { policy = "deny" } service_prefix "w" { policy = "write" }"#,
        ],
        default: Deny,
        management: false,
        checks: &[
            (ServiceRead("wéb"), false),
            (ServiceWrite("wxb"), true),
            (ServiceWrite("w"), true),
        ],
    },
    Case {
        name: "no matching rule: default allow grants write",
        policies: &[r#"service "web" { policy = "read" }"#],
        default: Allow,
        management: false,
        checks: &[
            (ServiceWrite("db"), true),
            (IntentionWrite("db"), true),
            (NodeWrite("n1"), true),
        ],
    },
    Case {
        name: "no matching rule: default deny grants nothing",
        policies: &[r#"service "web" { policy = "write" }"#],
        default: Deny,
        management: false,
        checks: &[
            (ServiceRead("db"), false),
            (IntentionRead("db"), false),
            (NodeRead("n1"), false),
        ],
    },
    Case {
        name: "deny rule overrides default allow",
        policies: &[r#"service "web" { policy = "deny" }"#],
        default: Allow,
        management: false,
        checks: &[(ServiceRead("web"), false), (IntentionRead("web"), false)],
    },
    Case {
        name: "write policy implies intentions read only",
        policies: &[r#"service "web" { policy = "write" }"#],
        default: Allow,
        management: false,
        checks: &[(IntentionRead("web"), true), (IntentionWrite("web"), false)],
    },
    Case {
        name: "read policy implies intentions read",
        policies: &[r#"service_prefix "" { policy = "read" }"#],
        default: Deny,
        management: false,
        checks: &[(IntentionRead("db"), true), (IntentionWrite("db"), false)],
    },
    Case {
        name: "explicit intentions write on a read policy",
        policies: &[r#"service "web" { policy = "read" intentions = "write" }"#],
        default: Deny,
        management: false,
        checks: &[(IntentionWrite("web"), true), (ServiceWrite("web"), false)],
    },
    Case {
        name: "explicit intentions deny on a write policy",
        policies: &[r#"service "web" { policy = "write" intentions = "deny" }"#],
        default: Allow,
        management: false,
        checks: &[(IntentionRead("web"), false), (ServiceWrite("web"), true)],
    },
    Case {
        name: "explicit intentions survive a deny policy",
        policies: &[r#"service "web" { policy = "deny" intentions = "write" }"#],
        default: Deny,
        management: false,
        checks: &[(IntentionWrite("web"), true), (ServiceRead("web"), false)],
    },
    Case {
        name: "intentions follow the same exact-over-prefix rule",
        policies: &[
            r#"service_prefix "" { policy = "read" intentions = "write" }
                       service "db" { policy = "write" }"#,
        ],
        default: Deny,
        management: false,
        checks: &[
            (IntentionWrite("db"), false),
            (IntentionRead("db"), true),
            (IntentionWrite("web"), true),
        ],
    },
    Case {
        name: "policies merge: deny beats write",
        policies: &[
            r#"service "web" { policy = "write" }"#,
            r#"service "web" { policy = "deny" }"#,
        ],
        default: Allow,
        management: false,
        checks: &[(ServiceRead("web"), false), (IntentionRead("web"), false)],
    },
    Case {
        name: "policies merge: write beats read, in either order",
        policies: &[
            r#"service "web" { policy = "write" } service "db" { policy = "read" }"#,
            r#"service "web" { policy = "read" } service "db" { policy = "write" }"#,
        ],
        default: Deny,
        management: false,
        checks: &[(ServiceWrite("web"), true), (ServiceWrite("db"), true)],
    },
    Case {
        name: "policies merge fields separately",
        policies: &[
            r#"service "web" { policy = "write" }"#,
            r#"service "web" { policy = "read" intentions = "deny" }"#,
        ],
        default: Allow,
        management: false,
        checks: &[(ServiceWrite("web"), true), (IntentionRead("web"), false)],
    },
    Case {
        name: "merged explicit intentions beat derived ones",
        policies: &[
            r#"service "web" { policy = "read" }"#,
            r#"service "web" { policy = "read" intentions = "write" }"#,
        ],
        default: Deny,
        management: false,
        checks: &[(IntentionWrite("web"), true)],
    },
    Case {
        name: "blocks repeated within one policy merge too",
        policies: &[
            r#"service_prefix "a" { policy = "read" } service_prefix "a" { policy = "write" }"#,
        ],
        default: Deny,
        management: false,
        checks: &[(ServiceWrite("abc"), true)],
    },
    Case {
        name: "exact rule from one policy beats prefix from another",
        policies: &[
            r#"service "web" { policy = "read" }"#,
            r#"service_prefix "" { policy = "write" }"#,
        ],
        default: Deny,
        management: false,
        checks: &[(ServiceWrite("web"), false), (ServiceWrite("db"), true)],
    },
    Case {
        name: "management overrides deny rules and default deny",
        policies: &[r#"service "web" { policy = "deny" } operator = "deny" acl = "deny""#],
        default: Deny,
        management: true,
        checks: &[
            (ServiceWrite("web"), true),
            (IntentionWrite("web"), true),
            (NodeWrite("n"), true),
            (OperatorWrite, true),
            (AclWrite, true),
        ],
    },
    Case {
        name: "operator rule",
        policies: &[r#"operator = "read""#],
        default: Allow,
        management: false,
        checks: &[(OperatorRead, true), (OperatorWrite, false)],
    },
    Case {
        name: "operator unset follows the default",
        policies: &[r#"service_prefix "" { policy = "write" }"#],
        default: Allow,
        management: false,
        checks: &[(OperatorWrite, true)],
    },
    Case {
        name: "operator unset under default deny",
        policies: &[],
        default: Deny,
        management: false,
        checks: &[(OperatorRead, false)],
    },
    Case {
        name: "operator merges deny-first",
        policies: &[
            r#"operator = "write""#,
            r#"operator = "deny""#,
            r#"operator = "read""#,
        ],
        default: Allow,
        management: false,
        checks: &[(OperatorRead, false)],
    },
    Case {
        name: "acl is never granted by default allow",
        policies: &[],
        default: Allow,
        management: false,
        checks: &[
            (AclRead, false),
            (AclWrite, false),
            (ServiceWrite("x"), true),
        ],
    },
    Case {
        name: "acl read rule",
        policies: &[r#"acl = "read""#],
        default: Deny,
        management: false,
        checks: &[(AclRead, true), (AclWrite, false)],
    },
    Case {
        name: "acl merges: write beats read",
        policies: &[r#"acl = "read""#, r#"acl = "write""#],
        default: Deny,
        management: false,
        checks: &[(AclWrite, true)],
    },
    Case {
        name: "node exact beats prefix",
        policies: &[r#"node_prefix "" { policy = "read" } node "db" { policy = "deny" }"#],
        default: Allow,
        management: false,
        checks: &[
            (NodeRead("db"), false),
            (NodeRead("web"), true),
            (NodeWrite("web"), false),
        ],
    },
    Case {
        name: "agent prefix rules",
        policies: &[r#"agent_prefix "node-" { policy = "read" }"#],
        default: Deny,
        management: false,
        checks: &[(AgentRead("node-1"), true), (AgentRead("other"), false)],
    },
    Case {
        name: "service rules do not leak into nodes",
        policies: &[r#"service_prefix "" { policy = "deny" }"#],
        default: Allow,
        management: false,
        checks: &[(NodeRead("web"), true), (ServiceRead("web"), false)],
    },
    Case {
        name: "intention default follows the default policy only",
        policies: &[r#"service_prefix "" { policy = "write" intentions = "write" }"#],
        default: Deny,
        management: true,
        checks: &[(IntentionDefaultAllow, false)],
    },
    Case {
        name: "intention default allow",
        policies: &[r#"service_prefix "" { policy = "deny" }"#],
        default: Allow,
        management: false,
        checks: &[(IntentionDefaultAllow, true)],
    },
    Case {
        name: "JSON policy evaluates like HCL",
        policies: &[
            r#"{"service": [{"web": [{"policy": "write", "intentions": "write"}]}],
                       "service_prefix": {"": {"policy": "read"}}}"#,
        ],
        default: Deny,
        management: false,
        checks: &[
            (IntentionWrite("web"), true),
            (ServiceRead("db"), true),
            (ServiceWrite("db"), false),
        ],
    },
];

#[test]
fn authorizer_table() {
    let mut count = 0;
    for case in CASES {
        for (check, expected) in case.checks {
            assert_eq!(
                run(case, *check),
                *expected,
                "case {:?}: {check:?}",
                case.name
            );
            count += 1;
        }
    }
    assert!(count >= 25, "only {count} authorization checks");
}

#[test]
fn access_getters_report_levels() {
    let policy =
        Policy::parse(r#"service "web" { policy = "read" } service_prefix "" { policy = "deny" }"#)
            .expect("valid rules");
    let authz = Authorizer::new([&policy], DefaultPolicy::Allow, false);
    assert_eq!(authz.service_access("web"), Access::Read);
    assert_eq!(authz.service_access("db"), Access::Deny);
    assert_eq!(authz.intention_access("web"), Access::Read);
    assert_eq!(authz.intention_access("db"), Access::Deny);
    assert_eq!(authz.operator_access(), Access::Write);
    assert_eq!(authz.acl_access(), Access::Deny);
    assert!(!authz.is_management());
    assert_eq!(authz.default_policy(), DefaultPolicy::Allow);
}
