//! The state store: every table agent-sim serves, one monotonically increasing index (like
//! Raft's), and per-table change notification for blocking queries.

pub mod acl;
pub mod ca;
pub mod catalog;
pub mod config_entries;
pub mod csr_limit;
pub mod intentions;
pub mod leaf;
pub mod persist;
pub mod queries;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::Clock;
pub use ca::{CaConfigError, CaSettings, CaState};
pub use catalog::{Catalog, CheckStatus, NodeInfo, ServiceInstance};
pub use intentions::IntentionWrite;

/// The tables a blocking query can wait on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Registered services and their checks.
    Services,
    /// CA roots.
    Roots,
    /// CA configuration.
    CaConfig,
    /// Intentions.
    Intentions,
    /// ACL tokens and policies.
    Acl,
    /// Prepared queries.
    Queries,
    /// Config entries.
    ConfigEntries,
}

impl Table {
    const ALL: [Table; 7] = [
        Table::Services,
        Table::Roots,
        Table::CaConfig,
        Table::Intentions,
        Table::Acl,
        Table::Queries,
        Table::ConfigEntries,
    ];

    fn slot(self) -> usize {
        self as usize
    }
}

/// Fixed facts about the simulated agent.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// The agent's datacenter.
    pub datacenter: String,
    /// The node name.
    pub node_name: String,
    /// The node UUID.
    pub node_id: String,
    /// The address services default to.
    pub node_address: String,
    /// CA settings.
    pub ca: CaSettings,
    /// ACL settings.
    pub acl: acl::AclSettings,
    /// The Consul version emulated.
    pub version: crate::profile::ConsulVersion,
}

impl StoreSettings {
    /// What the emulated version answers differently.
    pub fn profile(&self) -> &'static crate::profile::Profile {
        self.version.profile()
    }
}

/// Everything under the store's lock.
#[derive(Debug)]
pub struct Inner {
    index: u64,
    /// With `--data-dir`: indexes up to this are reserved on disk.
    reserved_index: u64,
    table_index: [u64; Table::ALL.len()],
    /// Node, services and checks.
    pub catalog: Catalog,
    /// Roots, configuration and the active provider.
    pub ca: CaState,
    /// Intentions (in 1.9+ profiles, derived from the `service-intentions` entries).
    pub intentions: intentions::Intentions,
    /// Config entries (1.9+ profiles).
    pub config: config_entries::ConfigEntries,
    /// ACL tokens and policies.
    pub acl: acl::AclState,
    /// Prepared queries.
    pub queries: queries::Queries,
}

/// Indexes reserved on disk at each save.
const INDEX_RESERVE: u64 = 10_000;

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The CA could not be set up.
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    /// The data directory could not be used.
    #[error(transparent)]
    DataDir(#[from] persist::PersistError),
}

impl Inner {
    fn bootstrap(
        settings: &StoreSettings,
        now: time::OffsetDateTime,
    ) -> Result<Self, crate::ca::CaError> {
        let mut index = 0;
        let mut next = || {
            index += 1;
            index
        };
        let catalog = Catalog::new(settings, next());
        let ca = CaState::bootstrap(&settings.ca, &settings.profile().ca, now, &mut next)?;
        let acl = acl::AclState::new(&settings.acl, next(), now);
        let mut inner = Inner {
            index: 0,
            reserved_index: 0,
            table_index: [0; Table::ALL.len()],
            catalog,
            ca,
            intentions: intentions::Intentions::default(),
            config: Default::default(),
            acl,
            queries: queries::Queries::default(),
        };
        inner.index = index;
        inner.table_index = [index; Table::ALL.len()];
        Ok(inner)
    }

    fn restore(
        settings: &StoreSettings,
        saved: persist::Snapshot,
        now: time::OffsetDateTime,
    ) -> Result<Self, crate::ca::CaError> {
        let index = saved.index;
        let mut catalog = Catalog::new(settings, 1);
        catalog.restore(saved.services, now);
        let mut inner = Inner {
            index,
            reserved_index: index,
            table_index: [index; Table::ALL.len()],
            catalog,
            ca: CaState::restore(&saved.cluster_id, saved.ca, &settings.profile().ca)?,
            intentions: intentions::Intentions::restore(saved.intentions),
            config: config_entries::ConfigEntries::restore(saved.config_entries),
            acl: acl::AclState::restore(saved.acl, &settings.acl, index, now),
            queries: queries::Queries::restore(saved.queries),
        };
        inner.index = index;
        Ok(inner)
    }

    fn snapshot(&self) -> persist::Snapshot {
        persist::Snapshot {
            version: 1,
            index: self.reserved_index,
            cluster_id: self.ca.cluster_id().to_owned(),
            ca: self.ca.snapshot(),
            services: self.catalog.snapshot(),
            intentions: self.intentions.set().iter().cloned().collect(),
            config_entries: self.config.all().cloned().collect(),
            acl: self.acl.snapshot(),
            queries: self.queries.all().cloned().collect(),
        }
    }

    /// Allocates the next index (for a write or a certificate serial).
    pub fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    /// The current index of a table (at least 1).
    pub fn table_index(&self, table: Table) -> u64 {
        self.table_index[table.slot()].max(1)
    }

    /// Applies a CA configuration (`PUT /v1/connect/ca/configuration`); true when the root
    /// rotated.
    pub fn set_ca_config(
        &mut self,
        config: consul_connect_types::api::CaConfiguration,
        now: time::OffsetDateTime,
    ) -> Result<bool, ca::CaConfigError> {
        let index = &mut self.index;
        let mut next = || {
            *index += 1;
            *index
        };
        self.ca.set_config(config, now, &mut next)
    }

    fn touch(&mut self, table: Table, index: u64) {
        self.table_index[table.slot()] = index;
    }
}

/// The shared state store.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    /// Times the store was locked, so tests can show cache hits do not touch it.
    accesses: std::sync::atomic::AtomicU64,
    notify: Vec<watch::Sender<u64>>,
    clock: Arc<dyn Clock>,
    settings: StoreSettings,
    /// Where acknowledged writes are kept, with `--data-dir`.
    data_dir: Option<persist::DataDir>,
    /// Fixed at bootstrap (the cluster ID never changes), so readable without the lock.
    trust_domain: consul_connect_types::spiffe::TrustDomain,
}

/// How long a blocking query may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocking {
    /// Return once the resource's index is above this.
    pub min_index: u64,
    /// Give up after this long and answer with the current state.
    pub wait: Duration,
}

impl Store {
    /// A new in-memory store with a fresh CA.
    pub fn new(settings: StoreSettings, clock: Arc<dyn Clock>) -> Result<Self, OpenError> {
        Self::open(settings, clock, None)
    }

    /// A store kept in `data_dir` when given: the saved state is loaded if there is one,
    /// and every acknowledged write is saved before it returns.
    pub fn open(
        settings: StoreSettings,
        clock: Arc<dyn Clock>,
        data_dir: Option<&std::path::Path>,
    ) -> Result<Self, OpenError> {
        let (dir, saved) = match data_dir {
            Some(path) => {
                let (dir, saved) = persist::DataDir::open(path)?;
                (Some(dir), saved)
            }
            None => (None, None),
        };
        let now = clock.now();
        let inner = match saved {
            Some(saved) => Inner::restore(&settings, saved, now)?,
            None => Inner::bootstrap(&settings, now)?,
        };
        let index = inner.index;
        let store = Self {
            trust_domain: inner.ca.trust_domain().clone(),
            notify: Table::ALL.iter().map(|_| watch::channel(index).0).collect(),
            inner: Mutex::new(inner),
            accesses: std::sync::atomic::AtomicU64::new(0),
            clock,
            settings,
            data_dir: dir,
        };
        if store.data_dir.is_some() {
            let mut inner = store.lock();
            store.save(&mut inner)?;
        }
        Ok(store)
    }

    /// Saves the state (with a block of indexes reserved, so serials never repeat after a
    /// restart even if leaves were issued since the last save).
    fn save(&self, inner: &mut Inner) -> Result<(), persist::PersistError> {
        let Some(dir) = &self.data_dir else {
            return Ok(());
        };
        inner.reserved_index = inner.index + INDEX_RESERVE;
        dir.save(&inner.snapshot())
    }

    /// The agent's fixed settings.
    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// The trust domain, `<cluster-id>.consul`.
    pub fn trust_domain(&self) -> &consul_connect_types::spiffe::TrustDomain {
        &self.trust_domain
    }

    /// The clock the store reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Reads under the lock.
    pub fn read<R>(&self, f: impl FnOnce(&Inner) -> R) -> R {
        f(&self.lock())
    }

    /// Writes under the lock. `f` gets the write's index (to stamp records with) and marks the
    /// tables it changed; those tables take the index and wake their blocking queries.
    ///
    /// With `--data-dir`, the new state is saved before this returns; a failed save is an
    /// error (the write is not acknowledged).
    pub fn write<R, E: From<persist::PersistError>>(
        &self,
        f: impl FnOnce(&mut Inner, u64, &mut Changes) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut changes = Changes::default();
        let touched = {
            let mut inner = self.lock();
            // With a data dir, what to go back to if the write cannot be saved: a write is
            // either durable and visible, or neither.
            let before = self.data_dir.as_ref().map(|_| Rollback::of(&inner));
            let index = inner.next_index();
            let result = f(&mut inner, index, &mut changes);
            if changes.tables.is_empty() && inner.index == index {
                // Nothing written: give the index back so indexes stay meaningful.
                inner.index -= 1;
            }
            // `f` may have taken more indexes (certificate serials): tables take the last.
            let last = inner.index;
            for table in &changes.tables {
                inner.touch(*table, last);
            }
            let touched: Vec<_> = changes.tables.iter().map(|t| (*t, last)).collect();
            let must_save = !touched.is_empty() || inner.index >= inner.reserved_index;
            let (result, touched) = match result {
                Ok(r) if must_save && self.data_dir.is_some() => match self.save(&mut inner) {
                    Ok(()) => (Ok(r), touched),
                    Err(e) => {
                        if let Some(before) = before {
                            before.restore(&mut inner, &self.settings, self.clock.now());
                        }
                        (Err(E::from(e)), Vec::new())
                    }
                },
                other => (other, touched),
            };
            (result, touched)
        };
        for (table, index) in touched.1 {
            self.notify[table.slot()].send_replace(index);
        }
        touched.0
    }

    /// Runs a blocking query: answers at once when `blocking.min_index` is 0 or the resource's
    /// index is already past it, otherwise when `table` changes such that it is, or after the
    /// wait. `read` returns the resource's index and value.
    pub async fn block<T>(
        &self,
        table: Table,
        blocking: Option<Blocking>,
        read: impl Fn(&Inner) -> (u64, T),
    ) -> (u64, T) {
        let Some(blocking) = blocking.filter(|b| b.min_index > 0) else {
            return self.read(&read);
        };
        let deadline = tokio::time::Instant::now() + blocking.wait;
        let mut changed = self.notify[table.slot()].subscribe();
        loop {
            changed.borrow_and_update();
            let (index, value) = self.read(&read);
            if index > blocking.min_index {
                return (index, value);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out (or the store is gone): answer with what there is.
                _ => return self.read(&read),
            }
        }
    }

    /// The current index of `table`, without taking the lock.
    pub fn current_index(&self, table: Table) -> u64 {
        *self.notify[table.slot()].borrow()
    }

    /// Waits until `table` changes past `index`, the clock jumps, or `timeout` passes.
    pub async fn changed(&self, table: Table, index: u64, timeout: Duration) {
        let mut changed = self.notify[table.slot()].subscribe();
        let mut jumps = self.clock.jumps();
        jumps.borrow_and_update();
        let wait = async {
            tokio::select! {
                _ = changed.wait_for(|i| *i > index) => {}
                _ = jumps.changed() => {}
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
    }

    /// How many times the store has been locked (reads and writes).
    pub fn accesses(&self) -> u64 {
        self.accesses.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.accesses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The state before a write, to restore when the write cannot be saved.
struct Rollback {
    snapshot: persist::Snapshot,
    index: u64,
    reserved_index: u64,
    table_index: [u64; Table::ALL.len()],
}

impl Rollback {
    fn of(inner: &Inner) -> Self {
        Self {
            snapshot: inner.snapshot(),
            index: inner.index,
            reserved_index: inner.reserved_index,
            table_index: inner.table_index,
        }
    }

    /// Puts `inner` back as it was (as a restart from the last save would).
    fn restore(self, inner: &mut Inner, settings: &StoreSettings, now: time::OffsetDateTime) {
        match Inner::restore(settings, self.snapshot, now) {
            Ok(mut restored) => {
                restored.index = self.index;
                restored.reserved_index = self.reserved_index;
                restored.table_index = self.table_index;
                *inner = restored;
            }
            Err(e) => tracing::error!(error = %e, "cannot roll back an unsaved write"),
        }
    }
}

/// The tables a write changed.
#[derive(Debug, Default)]
pub struct Changes {
    tables: Vec<Table>,
}

impl Changes {
    /// Marks `table` as changed by this write.
    pub fn touch(&mut self, table: Table) {
        if !self.tables.contains(&table) {
            self.tables.push(table);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A write whose save fails is not left in effect: it answers an error and the state is
    /// as before (it used to stay visible until a restart, then vanish).
    #[test]
    fn a_write_that_cannot_be_saved_is_undone() {
        let dir = std::env::temp_dir().join(format!("agent-sim-store-{}", uuid::Uuid::new_v4()));
        let settings = StoreSettings {
            datacenter: "dc1".into(),
            node_name: "node1".into(),
            node_id: "00000000-0000-0000-0000-000000000002".into(),
            node_address: "127.0.0.1".into(),
            ca: Default::default(),
            acl: Default::default(),
            version: Default::default(),
        };
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock::new());
        let store = Store::open(settings, clock.clone(), Some(&dir)).unwrap();
        let register = |id: &str| {
            let reg: consul_connect_types::api::ServiceRegistration =
                serde_json::from_value(serde_json::json!({"ID": id, "Name": id, "Port": 1}))
                    .unwrap();
            store.write(|inner, index, changes| {
                inner.catalog.register(reg, index, clock.now()).unwrap();
                changes.touch(Table::Services);
                Ok::<_, persist::PersistError>(())
            })
        };
        let ids = |store: &Store| {
            store.read(|inner| {
                inner
                    .catalog
                    .services()
                    .map(|s| s.reg.id.clone())
                    .collect::<Vec<_>>()
            })
        };
        register("web").unwrap();
        let services_index = store.current_index(Table::Services);
        // The save cannot happen: its temp file's name is taken by a directory.
        let blocker = dir.join("state.json.tmp");
        std::fs::create_dir(&blocker).unwrap();
        assert!(register("db").is_err());
        assert_eq!(ids(&store), ["web"]);
        assert_eq!(store.current_index(Table::Services), services_index);
        std::fs::remove_dir(&blocker).unwrap();
        register("api").unwrap();
        assert_eq!(ids(&store), ["api", "web"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
