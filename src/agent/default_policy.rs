//! What the agent decides for a caller no intention matches, read the way each Consul version
//! offers it. Pure: the agent client fetches `/v1/agent/self`, this reads the answer.
//!
//! Sources, first that answers wins:
//! 1. `DebugConfig.DefaultIntentionPolicy` (`default_intention_policy`, Consul 1.18+), which
//!    overrides the ACL default when set;
//! 2. `DebugConfig.ACLsEnabled` and the ACL default policy: `DebugConfig.ACLDefaultPolicy`
//!    (up to 1.10) or `DebugConfig.ACLResolverSettings.ACLDefaultPolicy` (1.11+);
//! 3. the `X-Consul-Default-Acl-Policy` header, which 1.9+ sends on every answer, a 403
//!    included (a token without `agent:read` cannot read `/v1/agent/self`).
//!
//! With ACLs on and none of them readable, the default is deny, and the caller is told why.

use http::StatusCode;

use crate::intentions::{DefaultDecision, Wording};

/// How the default was found, or why it could not be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    /// Read from one of the sources.
    Read(DefaultDecision),
    /// Nothing said it: deny (fail closed), with the reason for the log.
    Unknown(String),
}

/// Reads the default from `/v1/agent/self`'s answer: its status, its body (JSON when 200) and
/// its `X-Consul-Default-Acl-Policy` header.
pub(crate) fn from_agent_self(status: StatusCode, body: &[u8], header: Option<&str>) -> Found {
    if status.is_success() {
        if let Ok(me) = serde_json::from_slice::<serde_json::Value>(body) {
            if let Some(decision) = from_debug_config(&me["DebugConfig"]) {
                return Found::Read(decision);
            }
        }
    }
    // With ACLs off every read of /v1/agent/self succeeds, so a header alone (a 403, or a
    // DebugConfig we could not read) means ACLs are on.
    match header {
        Some("allow") => Found::Read(DefaultDecision::AclDefaultAllow),
        Some("deny") => Found::Read(DefaultDecision::AclDefaultDeny),
        _ if status == StatusCode::FORBIDDEN => Found::Unknown(
            "the token may not read /v1/agent/self (it needs agent:read) and the agent sends no \
             X-Consul-Default-Acl-Policy header (Consul before 1.9)"
                .to_owned(),
        ),
        _ => Found::Unknown(format!(
            "/v1/agent/self answered {status} without a readable DebugConfig default policy \
             and without an X-Consul-Default-Acl-Policy header"
        )),
    }
}

/// How the agent words authorization reasons, from the same answer: the `Config.Version` it
/// reports, else whether it sent `X-Consul-Default-Acl-Policy` (only 1.9+ does, a 403
/// included), else 1.9+'s wording.
pub(crate) fn wording_from_agent_self(
    status: StatusCode,
    body: &[u8],
    header: Option<&str>,
) -> Wording {
    let reported = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|me| me["Config"]["Version"].as_str().map(Wording::for_version));
    match reported {
        Some(wording) => wording,
        None if header.is_none() && status == StatusCode::FORBIDDEN => Wording::Consul1_4,
        None => Wording::Consul1_9,
    }
}

fn from_debug_config(debug: &serde_json::Value) -> Option<DefaultDecision> {
    match debug["DefaultIntentionPolicy"].as_str() {
        Some("allow") => return Some(DefaultDecision::IntentionPolicyAllow),
        Some("deny") => return Some(DefaultDecision::IntentionPolicyDeny),
        _ => {}
    }
    if !debug["ACLsEnabled"].as_bool()? {
        return Some(DefaultDecision::AclsDisabled);
    }
    let policy = debug["ACLResolverSettings"]["ACLDefaultPolicy"]
        .as_str()
        .or_else(|| debug["ACLDefaultPolicy"].as_str());
    match policy? {
        "allow" => Some(DefaultDecision::AclDefaultAllow),
        "deny" => Some(DefaultDecision::AclDefaultDeny),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// The status line, the policy header and the body of a captured answer.
    fn captured(version: &str, name: &str) -> (StatusCode, Option<String>, Vec<u8>) {
        let path = format!(
            "{}/tests/data/consul-{version}/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let raw = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\r\n", "\n");
        let response = raw
            .lines()
            .skip_while(|l| l.starts_with('>'))
            .collect::<Vec<_>>()
            .join("\n");
        let (head, body) = response.split_once("\n\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let header = head
            .lines()
            .find_map(|l| l.strip_prefix("X-Consul-Default-Acl-Policy: "))
            .map(str::to_owned);
        (
            StatusCode::from_u16(status).unwrap(),
            header,
            body.as_bytes().to_vec(),
        )
    }

    fn read(status: StatusCode, body: &str, header: Option<&str>) -> Found {
        from_agent_self(status, body.as_bytes(), header)
    }

    #[test]
    fn captured_agents() {
        for (version, name, want) in [
            ("1.4.5", "51_agent_self.http", DefaultDecision::AclsDisabled),
            (
                "1.10.9",
                "51_agent_self.http",
                DefaultDecision::AclsDisabled,
            ),
            // ACLs on, default deny: read by the management token, then without agent:read.
            (
                "1.10.9",
                "acl01_agent_self_root.http",
                DefaultDecision::AclDefaultDeny,
            ),
            (
                "1.10.9",
                "acl02_agent_self_no_token.http",
                DefaultDecision::AclDefaultDeny,
            ),
        ] {
            let (status, header, body) = captured(version, name);
            assert_eq!(
                from_agent_self(status, &body, header.as_deref()),
                Found::Read(want),
                "{version} {name}"
            );
        }
    }

    #[test]
    fn each_versions_field() {
        let ok = StatusCode::OK;
        // 1.11+: the ACL settings moved under ACLResolverSettings.
        let modern = r#"{"DebugConfig":{"ACLsEnabled":true,"ACLResolverSettings":{"ACLDefaultPolicy":"allow"}}}"#;
        assert_eq!(
            read(ok, modern, None),
            Found::Read(DefaultDecision::AclDefaultAllow)
        );
        // 1.18+: default_intention_policy overrides the ACL default.
        let newest = r#"{"DebugConfig":{"DefaultIntentionPolicy":"deny","ACLsEnabled":false}}"#;
        assert_eq!(
            read(ok, newest, Some("allow")),
            Found::Read(DefaultDecision::IntentionPolicyDeny)
        );
        let unset = r#"{"DebugConfig":{"DefaultIntentionPolicy":"","ACLsEnabled":false}}"#;
        assert_eq!(
            read(ok, unset, Some("allow")),
            Found::Read(DefaultDecision::AclsDisabled)
        );
        // An unreadable DebugConfig falls back to the header.
        assert_eq!(
            read(ok, r#"{"Config":{}}"#, Some("allow")),
            Found::Read(DefaultDecision::AclDefaultAllow)
        );
    }

    #[test]
    fn nothing_readable_denies_and_says_why() {
        let Found::Unknown(why) = read(StatusCode::FORBIDDEN, "Permission denied", None) else {
            panic!("a default was invented");
        };
        assert!(why.contains("agent:read"), "{why}");
        let Found::Unknown(why) = read(StatusCode::OK, "{}", None) else {
            panic!("a default was invented");
        };
        assert!(why.contains("X-Consul-Default-Acl-Policy"), "{why}");
    }

    #[test]
    fn wording_by_version() {
        for (version, name, want) in [
            ("1.4.5", "51_agent_self.http", Wording::Consul1_4),
            ("1.10.9", "51_agent_self.http", Wording::Consul1_9),
            // A 403 with the policy header comes only from 1.9+.
            (
                "1.10.9",
                "acl02_agent_self_no_token.http",
                Wording::Consul1_9,
            ),
        ] {
            let (status, header, body) = captured(version, name);
            assert_eq!(
                wording_from_agent_self(status, &body, header.as_deref()),
                want,
                "{version} {name}"
            );
        }
        // A 403 without it: Consul before 1.9.
        let denied = b"Permission denied";
        assert_eq!(
            wording_from_agent_self(StatusCode::FORBIDDEN, denied, None),
            Wording::Consul1_4
        );
        assert_eq!(
            wording_from_agent_self(StatusCode::OK, b"{}", None),
            Wording::Consul1_9
        );
    }
}
