//! The intentions table: Consul's server-side rules for creating, updating and deleting.

use crate::intentions::{fill_defaults, validate, IntentionSet};
use consul_connect_types::api::{Intention, Meta};
use consul_connect_types::intentions::{precedence, DEFAULT_NAMESPACE};
use time::OffsetDateTime;

/// Why an intention write was refused; Consul answers all of these with 500 and this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntentionWriteError {
    /// Create with an ID.
    #[error("ID must be empty when creating a new intention")]
    IdOnCreate,
    /// Update or delete of an unknown ID.
    #[error("Cannot modify non-existent intention: '{0}'")]
    NotFound(String),
    /// Validation failed (Consul's multierror text).
    #[error("{0}")]
    Invalid(String),
    /// Another intention has the same source and destination.
    #[error("{0}")]
    Duplicate(String),
}

/// A pending intention write.
#[derive(Debug, Clone)]
pub enum IntentionWrite {
    /// `POST /v1/connect/intentions`.
    Create(Intention),
    /// `PUT /v1/connect/intentions/:id`.
    Update(String, Intention),
    /// `DELETE /v1/connect/intentions/:id`.
    Delete(String),
}

/// Intentions held by the store.
#[derive(Debug, Default)]
pub struct Intentions {
    set: IntentionSet,
}

impl Intentions {
    /// Intentions restored from `--data-dir`.
    pub(super) fn restore(saved: Vec<Intention>) -> Self {
        let mut set = IntentionSet::new();
        for ixn in saved {
            if let Err(e) = set.insert(ixn) {
                tracing::warn!(error = %e, "saved intention not restored");
            }
        }
        Self { set }
    }

    /// Replaces every intention with `all` as another datacenter holds them (replication:
    /// IDs, times, indexes and hashes kept).
    pub fn replace_all(&mut self, all: Vec<Intention>) {
        *self = Self::restore(all);
    }

    /// The indexed set.
    pub fn set(&self) -> &IntentionSet {
        &self.set
    }

    /// Replaces a destination's intentions with those of its `service-intentions` entry (none
    /// when it was deleted).
    pub fn sync_destination(
        &mut self,
        destination: &str,
        entry: Option<&consul_connect_types::api::ServiceIntentionsEntry>,
    ) {
        self.set.remove_destination(DEFAULT_NAMESPACE, destination);
        for ixn in entry
            .map(super::config_entries::entry_intentions)
            .unwrap_or_default()
        {
            if let Err(e) = self.set.insert(ixn) {
                tracing::warn!(error = %e, "config entry intention not indexed");
            }
        }
    }

    /// Applies a write at `index`; returns the intention's ID.
    pub fn apply(
        &mut self,
        write: IntentionWrite,
        index: u64,
        now: OffsetDateTime,
    ) -> Result<String, IntentionWriteError> {
        match write {
            IntentionWrite::Create(mut ixn) => {
                if !ixn.id.is_empty() {
                    return Err(IntentionWriteError::IdOnCreate);
                }
                ixn.id = uuid::Uuid::new_v4().to_string();
                ixn.created_at = now;
                ixn.create_index = index;
                self.store(ixn, index, now)
            }
            IntentionWrite::Update(id, mut ixn) => {
                let existing = self
                    .set
                    .get(&id)
                    .ok_or_else(|| IntentionWriteError::NotFound(id.clone()))?;
                ixn.id = id;
                ixn.created_at = existing.created_at;
                ixn.create_index = existing.create_index;
                self.store(ixn, index, now)
            }
            IntentionWrite::Delete(id) => self
                .set
                .remove(&id)
                .map(|_| id.clone())
                .ok_or(IntentionWriteError::NotFound(id)),
        }
    }

    fn store(
        &mut self,
        mut ixn: Intention,
        index: u64,
        now: OffsetDateTime,
    ) -> Result<String, IntentionWriteError> {
        fill_defaults(&mut ixn);
        validate(&ixn).map_err(|e| IntentionWriteError::Invalid(e.to_string()))?;
        ixn.precedence = precedence(&ixn);
        ixn.updated_at = now;
        ixn.modify_index = index;
        ixn.meta.get_or_insert_with(Meta::new);
        let id = ixn.id.clone();
        self.set
            .insert(ixn)
            .map_err(|e| IntentionWriteError::Duplicate(e.to_string()))?;
        Ok(id)
    }
}

impl From<super::persist::PersistError> for IntentionWriteError {
    fn from(e: super::persist::PersistError) -> Self {
        IntentionWriteError::Invalid(e.to_string())
    }
}
