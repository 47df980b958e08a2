//! The Consul wire types an SDK user meets: what [`AgentClient`](crate::AgentClient) sends and
//! returns, and what a registration is made of.
//!
//! They are defined in the `consul-connect-types` crate, which agent-sim shares; this module
//! re-exports the ones that appear in the SDK's API. They decode the answers of every Consul
//! from 1.4.5 on.
//!
//! ```
//! use consul_connect::api::AuthorizeResponse;
//!
//! let body = r#"{"Authorized":true,"Reason":"ACLs disabled, access is allowed by default"}"#;
//! let resp: AuthorizeResponse = serde_json::from_str(body)?;
//! assert!(resp.authorized);
//! # Ok::<(), serde_json::Error>(())
//! ```

pub use consul_connect_types::api::{
    AgentSelf, AgentSelfConfig, AgentService, AuthorizeRequest, AuthorizeResponse, CaRoot,
    CaRootList, CatalogService, CheckDefinition, HealthCheck, Intention, IntentionAction,
    IntentionCheck, IntentionCreated, IntentionMatches, LeafCert, Meta, Node, NodeService,
    PreparedQueryResult, ProxyConfig, ServiceConnect, ServiceEntry, ServiceRegistration, Upstream,
    Weights,
};
