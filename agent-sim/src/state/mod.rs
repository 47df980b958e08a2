//! The state store: every table agent-sim serves, one monotonically increasing index (like
//! Raft's), and per-table change notification for blocking queries.

pub mod acl;
pub mod ca;
pub mod catalog;
pub mod intentions;
pub mod leaf;

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
}

impl Table {
    const ALL: [Table; 5] = [
        Table::Services,
        Table::Roots,
        Table::CaConfig,
        Table::Intentions,
        Table::Acl,
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
}

/// Everything under the store's lock.
#[derive(Debug)]
pub struct Inner {
    index: u64,
    table_index: [u64; Table::ALL.len()],
    /// Node, services and checks.
    pub catalog: Catalog,
    /// Roots, configuration and the active provider.
    pub ca: CaState,
    /// Intentions.
    pub intentions: intentions::Intentions,
    /// ACL tokens and policies.
    pub acl: acl::AclState,
}

impl Inner {
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
        config: consul_connect::api::CaConfiguration,
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
    /// Fixed at bootstrap (the cluster ID never changes), so readable without the lock.
    trust_domain: consul_connect::spiffe::TrustDomain,
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
    /// A new store with a fresh CA.
    pub fn new(settings: StoreSettings, clock: Arc<dyn Clock>) -> Result<Self, crate::ca::CaError> {
        let mut index = 0;
        let mut next = || {
            index += 1;
            index
        };
        let catalog = Catalog::new(&settings, next());
        let ca = CaState::bootstrap(&settings.ca, clock.now(), &mut next)?;
        let acl = acl::AclState::new(&settings.acl, next(), clock.now());
        let mut inner = Inner {
            index: 0,
            table_index: [0; Table::ALL.len()],
            catalog,
            ca,
            intentions: intentions::Intentions::default(),
            acl,
        };
        inner.index = index;
        for table in Table::ALL {
            inner.table_index[table.slot()] = index;
        }
        Ok(Self {
            trust_domain: inner.ca.trust_domain().clone(),
            notify: Table::ALL.iter().map(|_| watch::channel(index).0).collect(),
            inner: Mutex::new(inner),
            accesses: std::sync::atomic::AtomicU64::new(0),
            clock,
            settings,
        })
    }

    /// The agent's fixed settings.
    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// The trust domain, `<cluster-id>.consul`.
    pub fn trust_domain(&self) -> &consul_connect::spiffe::TrustDomain {
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
    pub fn write<R, E>(
        &self,
        f: impl FnOnce(&mut Inner, u64, &mut Changes) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut changes = Changes::default();
        let touched = {
            let mut inner = self.lock();
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
