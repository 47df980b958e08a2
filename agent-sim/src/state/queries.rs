//! Prepared queries (`/v1/query`): stored definitions, executed against the catalog.

use std::collections::BTreeMap;

use consul_connect_types::api::PreparedQuery;

/// Why a prepared query write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// 400 with this text.
    #[error("{0}")]
    Invalid(String),
    /// 404 `Query not found`.
    #[error("Query not found")]
    NotFound,
}

/// Prepared queries by ID.
#[derive(Debug, Default)]
pub struct Queries {
    by_id: BTreeMap<String, PreparedQuery>,
}

impl Queries {
    /// Creates a query; returns its ID.
    pub fn create(&mut self, mut query: PreparedQuery, index: u64) -> Result<String, QueryError> {
        if query.service.service.is_empty() {
            return Err(QueryError::Invalid(
                "Must provide a Service name to query".into(),
            ));
        }
        if !query.name.is_empty() && self.by_id.values().any(|q| q.name == query.name) {
            return Err(QueryError::Invalid(format!(
                "A prepared query with name {:?} already exists",
                query.name
            )));
        }
        query.id = uuid::Uuid::new_v4().to_string();
        query.create_index = index;
        query.modify_index = index;
        self.by_id.insert(query.id.clone(), query.clone());
        Ok(query.id)
    }

    /// Deletes a query by ID.
    pub fn delete(&mut self, id: &str) -> Result<(), QueryError> {
        self.by_id
            .remove(id)
            .map(|_| ())
            .ok_or(QueryError::NotFound)
    }

    /// A query by ID, or else by name (as execute resolves it).
    pub fn find(&self, id_or_name: &str) -> Option<&PreparedQuery> {
        self.by_id
            .get(id_or_name)
            .or_else(|| self.by_id.values().find(|q| q.name == id_or_name))
    }

    /// Queries restored from `--data-dir`.
    pub(super) fn restore(saved: Vec<PreparedQuery>) -> Self {
        Self {
            by_id: saved.into_iter().map(|q| (q.id.clone(), q)).collect(),
        }
    }

    /// All queries.
    pub fn all(&self) -> impl Iterator<Item = &PreparedQuery> {
        self.by_id.values()
    }
}
