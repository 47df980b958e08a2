//! ACLs in agent-sim as Consul 1.4 enforces them on the Connect endpoints, and the SDK's token
//! and typed 403s.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use agent_sim::acl_rules::DefaultPolicy;
use agent_sim::Agent;
use consul_connect::agent::{AgentClient, AgentError, QueryOptions, Token};
use consul_connect::ConnectService;
use support::agent::{Answer, Raw, TRUST_DOMAIN};

const ROOT: &str = "root-secret";

async fn acl_agent(default: DefaultPolicy) -> (Agent, Raw) {
    let agent = Agent::builder()
        .cluster_id(support::agent::CLUSTER_ID)
        .acl(default)
        .acl_initial_management_token(ROOT)
        .start()
        .await
        .unwrap();
    let raw = Raw::new(&agent);
    (agent, raw)
}

async fn as_token(raw: &Raw, method: &str, path: &str, body: &str, token: &str) -> Answer {
    raw.send_with_headers(method, path, body, &[("X-Consul-Token", token)])
        .await
}

/// Creates a policy with `rules` and a token holding it; returns the token's secret.
async fn token_with(raw: &Raw, name: &str, rules: &str) -> String {
    let policy = as_token(
        raw,
        "PUT",
        "/v1/acl/policy",
        &serde_json::json!({"Name": name, "Rules": rules}).to_string(),
        ROOT,
    )
    .await;
    assert_eq!(policy.status, 200, "{}", policy.body);
    let token = as_token(
        raw,
        "PUT",
        "/v1/acl/token",
        &serde_json::json!({"Description": name, "Policies": [{"Name": name}]}).to_string(),
        ROOT,
    )
    .await;
    assert_eq!(token.status, 200, "{}", token.body);
    token.json()["SecretID"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn leaf_needs_service_write_on_the_service() {
    let (_agent, raw) = acl_agent(DefaultPolicy::Deny).await;
    let web = token_with(&raw, "web-writer", r#"service "web" { policy = "write" }"#).await;
    let ok = as_token(&raw, "GET", "/v1/agent/connect/ca/leaf/web", "", &web).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let db = as_token(&raw, "GET", "/v1/agent/connect/ca/leaf/db", "", &web).await;
    assert_eq!((db.status, db.body.as_str()), (403, "Permission denied"));
    let anonymous = raw.get("/v1/agent/connect/ca/leaf/web").await;
    assert_eq!(
        (anonymous.status, anonymous.body.as_str()),
        (403, "Permission denied")
    );
    let unknown = as_token(
        &raw,
        "GET",
        "/v1/agent/connect/ca/leaf/web",
        "",
        "no-such-token",
    )
    .await;
    assert_eq!(
        (unknown.status, unknown.body.as_str()),
        (403, "ACL not found")
    );
    // Roots are public.
    assert_eq!(raw.get("/v1/agent/connect/ca/roots").await.status, 200);
    assert_eq!(raw.get("/v1/connect/ca/roots").await.status, 200);
}

#[tokio::test]
async fn tokens_with_the_same_rights_never_share_cached_leaves() {
    let (agent, raw) = acl_agent(DefaultPolicy::Deny).await;
    let rules = r#"service "web" { policy = "write" }"#;
    let a = token_with(&raw, "web-a", rules).await;
    let b = as_token(
        &raw,
        "PUT",
        "/v1/acl/token",
        r#"{"Description":"web-b","Policies":[{"Name":"web-a"}]}"#,
        ROOT,
    )
    .await
    .json()["SecretID"]
        .as_str()
        .unwrap()
        .to_owned();
    let leaf = "/v1/agent/connect/ca/leaf/web";
    let a1 = as_token(&raw, "GET", leaf, "", &a).await;
    let b1 = as_token(&raw, "GET", leaf, "", &b).await;
    assert_eq!(
        (a1.header("X-Cache"), b1.header("X-Cache")),
        (Some("MISS"), Some("MISS"))
    );
    assert_ne!(a1.json()["SerialNumber"], b1.json()["SerialNumber"]);
    // 1.10 revalidates leaf reads without an index (MISS, same leaf); 1.4.5 answered HIT.
    let cached = if agent.store().settings().profile().leaf_reads_revalidate {
        "MISS"
    } else {
        "HIT"
    };
    for _ in 0..3 {
        let a2 = as_token(&raw, "GET", leaf, "", &a).await;
        let b2 = as_token(&raw, "GET", leaf, "", &b).await;
        assert_eq!(
            (a2.header("X-Cache"), b2.header("X-Cache")),
            (Some(cached), Some(cached))
        );
        assert_eq!(
            a2.json()["SerialNumber"],
            a1.json()["SerialNumber"],
            "a sees only its own leaf"
        );
        assert_eq!(
            b2.json()["SerialNumber"],
            b1.json()["SerialNumber"],
            "b sees only its own leaf"
        );
    }
    assert_eq!(agent.cache().len(), 2, "one cache entry per token");
}

#[tokio::test]
async fn authorize_follows_the_acl_default_policy() {
    for (default, allowed) in [(DefaultPolicy::Deny, false), (DefaultPolicy::Allow, true)] {
        let (_agent, raw) = acl_agent(default).await;
        let db = token_with(&raw, "db-writer", r#"service "db" { policy = "write" }"#).await;
        let body = format!(
            r#"{{"Target":"db","ClientCertURI":"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/web","ClientCertSerial":"01"}}"#
        );
        let answer = as_token(&raw, "POST", "/v1/agent/connect/authorize", &body, &db).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(
            answer.json(),
            serde_json::json!({"Authorized": allowed, "Reason": "Default behavior configured by ACLs"})
        );
        // Authorize needs service:write on the target.
        let forbidden = as_token(
            &raw,
            "POST",
            "/v1/agent/connect/authorize",
            &body.replace("\"db\"", "\"cache\""),
            &db,
        )
        .await;
        if default == DefaultPolicy::Deny {
            assert_eq!(
                (forbidden.status, forbidden.body.as_str()),
                (403, "Permission denied")
            );
        }
        let check = as_token(
            &raw,
            "GET",
            "/v1/connect/intentions/check?source=web&destination=db",
            "",
            &db,
        )
        .await;
        assert_eq!(check.json()["Allowed"], allowed);
    }
}

#[tokio::test]
async fn intentions_need_intention_rights_on_the_destination() {
    let (_agent, raw) = acl_agent(DefaultPolicy::Deny).await;
    let reader = token_with(&raw, "db-reader", r#"service "db" { policy = "read" }"#).await;
    let writer = token_with(
        &raw,
        "db-intentions",
        r#"service "db" { policy = "read" intentions = "write" }"#,
    )
    .await;
    let body = r#"{"SourceName":"web","DestinationName":"db","Action":"deny"}"#;
    let denied = as_token(&raw, "POST", "/v1/connect/intentions", body, &reader).await;
    assert_eq!(
        (denied.status, denied.body.as_str()),
        (403, "Permission denied")
    );
    let created = as_token(&raw, "POST", "/v1/connect/intentions", body, &writer).await;
    assert_eq!(created.status, 200, "{}", created.body);
    let id = created.json()["ID"].as_str().unwrap().to_owned();
    // A service read policy implies intentions read.
    let read = as_token(
        &raw,
        "GET",
        &format!("/v1/connect/intentions/{id}"),
        "",
        &reader,
    )
    .await;
    assert_eq!(read.status, 200);
    let listed = as_token(&raw, "GET", "/v1/connect/intentions", "", &reader)
        .await
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    // Anonymous under default deny sees nothing and may not read the match list.
    assert_eq!(raw.get("/v1/connect/intentions").await.body, "[]");
    assert_eq!(
        raw.get("/v1/connect/intentions/match?by=destination&name=db")
            .await
            .status,
        403
    );
    let delete = as_token(
        &raw,
        "DELETE",
        &format!("/v1/connect/intentions/{id}"),
        "",
        &reader,
    )
    .await;
    assert_eq!(delete.status, 403);
}

#[tokio::test]
async fn acl_endpoints_and_operator_rights() {
    let (_agent, raw) = acl_agent(DefaultPolicy::Deny).await;
    let boot = raw.put("/v1/acl/bootstrap", "").await;
    assert_eq!(boot.status, 200, "{}", boot.body);
    let secret = boot.json()["SecretID"].as_str().unwrap().to_owned();
    let again = raw.put("/v1/acl/bootstrap", "").await;
    assert_eq!(again.status, 403);
    assert!(
        again
            .body
            .starts_with("Permission denied: ACL bootstrap no longer allowed (reset index: "),
        "{}",
        again.body
    );
    let me = as_token(&raw, "GET", "/v1/acl/token/self", "", &secret)
        .await
        .json();
    assert_eq!(me["Policies"][0]["Name"], "global-management");

    let bad_rules = as_token(
        &raw,
        "PUT",
        "/v1/acl/policy",
        r#"{"Name":"bad","Rules":"service \"web\" { policy = \"writ\" }"}"#,
        &secret,
    )
    .await;
    assert_eq!(bad_rules.status, 500);
    // Consul 1.10.9's exact text, the default version's (the ACL matrix's policy-creation
    // probes hold both versions' texts).
    assert_eq!(
        bad_rules.body,
        r#"Invalid service policy: &acl.ServiceRule{Name:"web", Policy:"writ", Intentions:"", EnterpriseRule:acl.EnterpriseRule{}}"#,
    );
    let no_name = as_token(&raw, "PUT", "/v1/acl/policy", r#"{"Rules":""}"#, &secret).await;
    assert_eq!(
        (no_name.status, no_name.body.as_str()),
        (500, "Invalid Policy: no Name is set")
    );

    let web = token_with(&raw, "web-only", r#"service "web" { policy = "write" }"#).await;
    assert_eq!(
        as_token(&raw, "GET", "/v1/acl/tokens", "", &web)
            .await
            .status,
        403
    );
    assert_eq!(
        as_token(&raw, "GET", "/v1/connect/ca/configuration", "", &web)
            .await
            .status,
        403
    );
    let operator = token_with(&raw, "operator", r#"operator = "write""#).await;
    assert_eq!(
        as_token(&raw, "GET", "/v1/connect/ca/configuration", "", &operator)
            .await
            .status,
        200
    );
    let rotate = as_token(
        &raw,
        "PUT",
        "/v1/connect/ca/configuration",
        r#"{"Provider":"consul","Config":{"ForceRotate":true}}"#,
        &operator,
    )
    .await;
    assert_eq!(rotate.status, 200, "{}", rotate.body);

    // Registration needs service:write; listings are filtered by service:read.
    let reg = |name: &str| format!(r#"{{"Name":"{name}","Port":1,"Connect":{{"Native":true}}}}"#);
    assert_eq!(
        as_token(&raw, "PUT", "/v1/agent/service/register", &reg("web"), &web)
            .await
            .status,
        200
    );
    assert_eq!(
        as_token(&raw, "PUT", "/v1/agent/service/register", &reg("db"), &web)
            .await
            .status,
        403
    );
    assert_eq!(
        as_token(&raw, "PUT", "/v1/agent/service/register", &reg("db"), ROOT)
            .await
            .status,
        200
    );
    let seen = as_token(&raw, "GET", "/v1/agent/services", "", &web)
        .await
        .json();
    assert_eq!(
        seen.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["web"]
    );
    let unknown = as_token(&raw, "PUT", "/v1/agent/service/deregister/nope", "", ROOT).await;
    assert_eq!(
        (unknown.status, unknown.body.as_str()),
        (500, "Unknown service \"nope\"")
    );
}

#[tokio::test]
async fn the_sdk_sends_its_token_and_names_the_missing_permission() {
    let (agent, raw) = acl_agent(DefaultPolicy::Deny).await;
    let web = token_with(&raw, "web-writer", r#"service "web" { policy = "write" }"#).await;
    let client = AgentClient::new(&agent.addr().to_string()).unwrap();

    let service = ConnectService::builder("web")
        .agent(client.clone())
        .token(Token::new(web.clone()))
        .build()
        .await
        .unwrap();
    service
        .ready_timeout(Duration::from_secs(10))
        .await
        .unwrap();

    let err = client
        .clone()
        .with_token(Token::new(web))
        .leaf("db", &QueryOptions::default())
        .await
        .unwrap_err();
    match &err {
        AgentError::PermissionDenied {
            path,
            message,
            needed,
        } => {
            assert_eq!(path, "/v1/agent/connect/ca/leaf/db");
            assert_eq!(message, "Permission denied");
            assert_eq!(*needed, "service:write on the service");
        }
        other => panic!("expected a permission error, got {other}"),
    }
    assert!(err.to_string().contains("service:write"), "{err}");

    // Without a token the service cannot get its leaf, and says why.
    let anonymous = ConnectService::builder("web")
        .agent(client)
        .build()
        .await
        .unwrap();
    let not_ready = anonymous
        .ready_timeout(Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        not_ready.to_string().contains("service:write"),
        "{not_ready}"
    );
}

#[tokio::test]
async fn the_intentions_authorizer_reads_the_default_from_the_agent() {
    use consul_connect::intentions::DefaultDecision;
    for (default, expected) in [
        (DefaultPolicy::Deny, DefaultDecision::AclDefaultDeny),
        (DefaultPolicy::Allow, DefaultDecision::AclDefaultAllow),
    ] {
        let (agent, _raw) = acl_agent(default).await;
        let client = AgentClient::new(&agent.addr().to_string())
            .unwrap()
            .with_token(Token::new(ROOT));
        assert_eq!(client.intention_default().await.unwrap(), expected);
    }
    let open = Agent::builder().start().await.unwrap();
    let client = AgentClient::new(&open.addr().to_string()).unwrap();
    assert_eq!(
        client.intention_default().await.unwrap(),
        DefaultDecision::AclsDisabled
    );
    let service = ConnectService::builder("db")
        .agent(client)
        .intentions_authorizer_from_agent()
        .build()
        .await
        .unwrap();
    service
        .ready_timeout(Duration::from_secs(10))
        .await
        .unwrap();
}

/// A token that may not read `/v1/agent/self` still learns the default from the
/// `X-Consul-Default-Acl-Policy` header of the 403 (Consul 1.9+); an agent that sends none
/// (1.4.5) makes the default deny, so nothing is let through by guesswork.
#[tokio::test]
async fn the_default_without_agent_read_comes_from_the_header_or_is_deny() {
    use agent_sim::profile::ConsulVersion;
    use consul_connect::intentions::DefaultDecision;
    for (version, default, expected) in [
        (
            ConsulVersion::V1_10_9,
            DefaultPolicy::Allow,
            DefaultDecision::AclDefaultAllow,
        ),
        (
            ConsulVersion::V1_10_9,
            DefaultPolicy::Deny,
            DefaultDecision::AclDefaultDeny,
        ),
        // 1.4.5 sends no header: nothing says the default, so it is deny even though the
        // agent's default is allow.
        (
            ConsulVersion::V1_4_5,
            DefaultPolicy::Allow,
            DefaultDecision::AclDefaultDeny,
        ),
    ] {
        let agent = Agent::builder()
            .cluster_id(support::agent::CLUSTER_ID)
            .consul_version(version)
            .acl(default)
            .acl_initial_management_token(ROOT)
            .start()
            .await
            .unwrap();
        let raw = Raw::new(&agent);
        let rules = r#"service "db" { policy = "write" } agent_prefix "" { policy = "deny" }"#;
        let token = token_with(&raw, "db-only", rules).await;
        let client = AgentClient::new(&agent.addr().to_string())
            .unwrap()
            .with_token(Token::new(token));
        assert_eq!(
            client.intention_default().await.unwrap(),
            expected,
            "{version} with default {default:?}"
        );
    }
}
