//! Prepared queries: their definition and what executing one answers.

use serde::{Deserialize, Serialize};

use super::ServiceEntry;

/// The service part of a prepared query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceQuery {
    /// The service to find.
    pub service: String,
    /// Only instances whose checks pass.
    pub only_passing: bool,
    /// Required tags (a `!tag` excludes).
    pub tags: Option<Vec<String>>,
    /// Connect-capable instances only (also set by `?connect=true` on execute).
    pub connect: bool,
}

/// A prepared query (`/v1/query`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PreparedQuery {
    /// UUID, assigned on create.
    #[serde(rename = "ID")]
    pub id: String,
    /// Name, usable instead of the ID.
    pub name: String,
    /// What to find.
    pub service: ServiceQuery,
    /// Raft index of creation.
    pub create_index: u64,
    /// Raft index of last change.
    pub modify_index: u64,
}

/// `GET /v1/query/<id or name>/execute` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PreparedQueryResult {
    /// The service found.
    pub service: String,
    /// The instances, as health entries.
    pub nodes: Vec<ServiceEntry>,
    /// The datacenter answering.
    pub datacenter: String,
    /// Failovers tried (always 0 here).
    pub failovers: u32,
}
