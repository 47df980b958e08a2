//! The agent cache, as Consul's agent keeps it for `/v1/agent/connect/*`: one entry per
//! request, datacenter and ACL token, filled on first use (a MISS), kept fresh in the
//! background by a blocking query against the state store, answered from memory afterwards
//! (a HIT, without touching the store), and evicted after going unused for a while (72 h).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use consul_connect_types::api::{CaRootList, Intention};
use consul_connect_types::spiffe::ServiceId;

use crate::ca::CaError;
use crate::clock::Clock;
use crate::state::csr_limit::{CsrLimiter, CsrLimits};
use crate::state::leaf::IssuedLeaf;
use crate::state::{Blocking, Inner, Store, Table};

/// How long an entry may go unread before it is evicted (Consul: 72 h).
pub const DEFAULT_UNUSED_TTL: Duration = Duration::from_secs(72 * 3600);

/// A cached value with the index it was read at.
pub type Versioned<V> = Option<(u64, Arc<V>)>;

/// One cache type (roots, leaves, intention matches, ACL tokens): entries by key.
pub struct TypedCache<K, V> {
    entries: Mutex<HashMap<K, Arc<Entry<V>>>>,
}

struct Entry<V> {
    value: watch::Sender<Versioned<V>>,
    last_read: Mutex<OffsetDateTime>,
    refresher: Mutex<Option<JoinHandle<()>>>,
}

impl<V> Drop for Entry<V> {
    fn drop(&mut self) {
        if let Some(task) = self
            .refresher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl<K, V> Default for TypedCache<K, V> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<K, V> std::fmt::Debug for TypedCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.entries.lock().map_or(0, |e| e.len());
        f.debug_struct("TypedCache")
            .field("entries", &entries)
            .finish()
    }
}

/// A read of one entry.
pub struct Lookup<V> {
    /// Whether the entry existed with a value (`X-Cache: HIT`).
    pub hit: bool,
    /// The entry's value as it changes.
    pub value: watch::Receiver<Versioned<V>>,
}

impl<K: Eq + Hash + Clone, V: Send + Sync + 'static> TypedCache<K, V> {
    /// The entry for `key`, marked as read at `now`. A new entry starts its refresher with
    /// `start`, which gets the sender to publish values through.
    pub fn lookup(
        &self,
        key: &K,
        now: OffsetDateTime,
        start: impl FnOnce(watch::Sender<Versioned<V>>) -> JoinHandle<()>,
    ) -> Lookup<V> {
        let mut entries = self.lock();
        if let Some(entry) = entries.get(key) {
            *entry.last_read.lock().unwrap_or_else(|e| e.into_inner()) = now;
            let value = entry.value.subscribe();
            let hit = value.borrow().is_some();
            return Lookup { hit, value };
        }
        let (sender, value) = watch::channel(None);
        let task = start(sender.clone());
        entries.insert(
            key.clone(),
            Arc::new(Entry {
                value: sender,
                last_read: Mutex::new(now),
                refresher: Mutex::new(Some(task)),
            }),
        );
        Lookup { hit: false, value }
    }

    /// Drops entries last read before `now - unused`, stopping their refreshers.
    pub fn evict_unused(&self, now: OffsetDateTime, unused: Duration) -> usize {
        let mut entries = self.lock();
        let before = entries.len();
        entries
            .retain(|_, e| *e.last_read.lock().unwrap_or_else(|e| e.into_inner()) + unused > now);
        before - entries.len()
    }

    /// Drops one entry.
    pub fn remove(&self, key: &K) {
        self.lock().remove(key);
    }

    /// Looks at an entry's value without marking it read; `None` when there is no entry.
    pub fn peek<R>(&self, key: &K, f: impl FnOnce(Option<&(u64, Arc<V>)>) -> R) -> Option<R> {
        let entries = self.lock();
        let entry = entries.get(key)?;
        let value = entry.value.borrow();
        Some(f(value.as_ref()))
    }

    /// Drops every entry (for example when ACLs change what tokens may see).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<Entry<V>>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Waits until the value is present and, when `min_index` is given, its index is past it, or
/// until `deadline`; returns the value then (`None` only if the refresher never produced one).
pub async fn wait_for<V>(
    mut value: watch::Receiver<Versioned<V>>,
    min_index: Option<u64>,
    deadline: tokio::time::Instant,
) -> Versioned<V> {
    let min = min_index.unwrap_or(0);
    let ready = |v: &Versioned<V>| v.as_ref().is_some_and(|(i, _)| *i > min || min == 0);
    let first = async {
        let _ = value.wait_for(|v| v.is_some()).await;
    };
    // The first fill is waited for however long it takes (a MISS); then the blocking wait.
    let _ = tokio::time::timeout(Duration::from_secs(60), first).await;
    let _ = tokio::time::timeout_at(deadline, value.wait_for(ready)).await;
    let current = value.borrow().clone();
    current
}

/// Waits (briefly) until the entry has caught up with the store's `current` index, so a read
/// right after a write never answers from before it. Reads the store's change notification,
/// not the store itself.
pub async fn caught_up<V>(mut value: watch::Receiver<Versioned<V>>, current: u64) -> Versioned<V> {
    let ready = |v: &Versioned<V>| v.as_ref().is_some_and(|(i, _)| *i >= current);
    let _ = tokio::time::timeout(Duration::from_secs(5), value.wait_for(ready)).await;
    let now = value.borrow().clone();
    now
}

/// Sleeps until the clock reads `target`, waking early when the clock jumps (a test clock
/// advanced) to look again.
pub async fn sleep_until(clock: &dyn Clock, target: OffsetDateTime) {
    let mut jumps = clock.jumps();
    loop {
        jumps.borrow_and_update();
        let now = clock.now();
        if now >= target {
            return;
        }
        let left: Duration = (target - now).try_into().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(left) => {}
            _ = jumps.changed() => {}
        }
    }
}

/// Whether an entry value counts as fresh for `Cache-Control: max-age` reads.
pub fn within_max_age(fetched: tokio::time::Instant, max_age: Option<Duration>) -> bool {
    max_age.is_none_or(|max| fetched.elapsed() <= max)
}

/// Keys shared by the agent's Connect cache types: datacenter and ACL token partition every
/// entry, so one token never sees what another fetched. `Debug` hides the token.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Partition {
    /// Datacenter.
    pub datacenter: String,
    /// The ACL token's secret (empty for anonymous).
    pub token: String,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = if self.token.is_empty() {
            "anonymous"
        } else {
            "<redacted>"
        };
        f.debug_struct("Partition")
            .field("datacenter", &self.datacenter)
            .field("token", &token)
            .finish()
    }
}

/// Stops the evictor when dropped.
#[derive(Debug)]
pub struct EvictorHandle(pub(crate) JoinHandle<()>);

impl Drop for EvictorHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Settings of the agent cache.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Evict entries unread this long (Consul: 72 h).
    pub unused_ttl: Duration,
    /// After a root rotation, each cached leaf is re-issued after a random delay below this
    /// (Consul: 30 s; small by default here for local use).
    pub rotation_jitter: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            unused_ttl: DEFAULT_UNUSED_TTL,
            rotation_jitter: Duration::from_millis(500),
        }
    }
}

/// The longest a refresher's blocking query waits before asking again (Consul: 10 min).
const REFRESH_WAIT: Duration = Duration::from_secs(600);

/// The agent's Connect cache types: roots, leaves and intention matches (for authorize), and
/// the `?cached` reads of catalog, health and prepared queries.
#[derive(Debug)]
pub struct ConnectCache {
    store: Arc<Store>,
    settings: CacheSettings,
    roots: TypedCache<Partition, CaRootList>,
    leaves: TypedCache<(Partition, String), LeafFill>,
    /// The CA's limit on new leaves (`CSRMaxPerSecond`/`CSRMaxConcurrent`).
    csr: Arc<CsrLimiter>,
    matches: TypedCache<(Partition, String), Vec<Intention>>,
    listings: TypedCache<(Partition, String), Timed>,
}

/// What a leaf entry holds: the leaf, or why its first issuance was refused.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per entry, behind an `Arc`
pub enum LeafFill {
    /// The current leaf.
    Issued(IssuedLeaf),
    /// The first signing hit the CA's CSR limit: the reader gets 429 and the entry is
    /// dropped, so the next read tries again (Consul's leaf cache type returns the error of a
    /// first fetch to the caller instead of blocking).
    RateLimited,
}

/// A `?cached` answer body.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum CachedBody {
    /// `/v1/catalog/service` and `/v1/catalog/connect`.
    Catalog(Vec<consul_connect_types::api::CatalogService>),
    /// `/v1/health/service` and `/v1/health/connect`.
    Health(Vec<consul_connect_types::api::ServiceEntry>),
    /// `/v1/query/:id/execute`.
    Query(consul_connect_types::api::PreparedQueryResult),
    /// A catalog or health listing in the emulated version's shape.
    View(serde_json::Value),
}

/// A cached body and when it was fetched (for `Age` and `Cache-Control: max-age`).
#[derive(Debug)]
pub struct Timed {
    /// When fetched.
    pub fetched: tokio::time::Instant,
    /// The body.
    pub body: CachedBody,
}

impl ConnectCache {
    /// A cache reading `store`.
    pub fn new(store: Arc<Store>, settings: CacheSettings) -> Self {
        Self {
            store,
            settings,
            roots: TypedCache::default(),
            leaves: TypedCache::default(),
            csr: Arc::default(),
            matches: TypedCache::default(),
            listings: TypedCache::default(),
        }
    }

    /// A catalog or health listing read with `?cached`: a refreshing entry (Consul's
    /// `health-services` and `catalog-services` types) that follows the services table.
    pub fn listing(
        &self,
        part: &Partition,
        key: String,
        read: impl Fn(&Inner) -> CachedBody + Send + Sync + 'static,
    ) -> Lookup<Timed> {
        let store = self.store.clone();
        self.listings
            .lookup(&(part.clone(), key), self.store.clock().now(), move |tx| {
                tokio::spawn(follow(store, Table::Services, tx, move |inner| Timed {
                    fetched: tokio::time::Instant::now(),
                    body: read(inner),
                }))
            })
    }

    /// A prepared query executed with `?cached`: a simple entry (no background refresh),
    /// fetched again when older than `max_age` (`Cache-Control: max-age`).
    pub fn simple(
        &self,
        part: &Partition,
        key: String,
        max_age: Option<Duration>,
        fetch: impl FnOnce() -> (u64, CachedBody),
    ) -> Lookup<Timed> {
        let key = (part.clone(), key);
        let now = self.store.clock().now();
        let fresh = self.listings.peek(&key, |v| {
            v.is_some_and(|(_, t)| within_max_age(t.fetched, max_age))
        });
        if fresh == Some(true) {
            return self.listings.lookup(&key, now, |_| tokio::spawn(async {}));
        }
        self.listings.remove(&key);
        let (index, body) = fetch();
        let timed = Timed {
            fetched: tokio::time::Instant::now(),
            body,
        };
        let mut lookup = self.listings.lookup(&key, now, move |tx| {
            tx.send_replace(Some((index, Arc::new(timed))));
            tokio::spawn(async {})
        });
        lookup.hit = false;
        lookup
    }

    /// The settings in force.
    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// The roots entry of a partition.
    pub fn roots(&self, part: &Partition) -> Lookup<CaRootList> {
        let store = self.store.clone();
        self.roots
            .lookup(part, self.store.clock().now(), move |tx| {
                tokio::spawn(follow(store, Table::Roots, tx, |inner| {
                    inner.ca.root_list()
                }))
            })
    }

    /// The leaf entry of `id` in a partition: issued on first use, renewed at its renewal
    /// point, re-issued within the jitter window after a root rotation. Every signing passes
    /// the CA's CSR limit.
    pub fn leaf(&self, part: &Partition, id: &ServiceId) -> Lookup<LeafFill> {
        let store = self.store.clone();
        let csr = self.csr.clone();
        let id = id.clone();
        let jitter = self.settings.rotation_jitter;
        let key = (part.clone(), id.service().to_owned());
        self.leaves
            .lookup(&key, self.store.clock().now(), move |tx| {
                tokio::spawn(refresh_leaf(store, csr, id, jitter, tx))
            })
    }

    /// Drops the leaf entry of `service` if its first issuance was refused, so the next read
    /// asks for a new one.
    pub fn forget_refused_leaf(&self, part: &Partition, service: &str) {
        let key = (part.clone(), service.to_owned());
        let refused = self.leaves.peek(&key, |v| {
            v.is_some_and(|(_, fill)| matches!(**fill, LeafFill::RateLimited))
        });
        if refused == Some(true) {
            self.leaves.remove(&key);
        }
    }

    /// The intentions matching `target` as a destination, in evaluation order.
    pub fn matches(&self, part: &Partition, target: &str) -> Lookup<Vec<Intention>> {
        let store = self.store.clone();
        let target = target.to_ascii_lowercase();
        let key = (part.clone(), target.clone());
        self.matches
            .lookup(&key, self.store.clock().now(), move |tx| {
                tokio::spawn(follow(store, Table::Intentions, tx, move |inner| {
                    inner
                        .intentions
                        .set()
                        .match_destination("default", &target)
                        .into_iter()
                        .cloned()
                        .collect()
                }))
            })
    }

    /// Evicts entries unread for the configured time; returns how many.
    pub fn evict_unused(&self) -> usize {
        let now = self.store.clock().now();
        let ttl = self.settings.unused_ttl;
        self.roots.evict_unused(now, ttl)
            + self.leaves.evict_unused(now, ttl)
            + self.matches.evict_unused(now, ttl)
            + self.listings.evict_unused(now, ttl)
    }

    /// Number of entries across types.
    pub fn len(&self) -> usize {
        self.roots.len() + self.leaves.len() + self.matches.len() + self.listings.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops roots rotated out more than twice the leaf lifetime ago (Consul's leader does
    /// this hourly; here on the housekeeping tick).
    fn prune_roots(&self) {
        let now = self.store.clock().now();
        let pruned = self.store.write(|inner, _, changes| {
            let pruned = inner.ca.prune_rotated_out(now);
            if pruned {
                changes.touch(Table::Roots);
            }
            Ok::<_, crate::state::persist::PersistError>(pruned)
        });
        match pruned {
            Ok(true) => {
                tracing::info!("removed CA roots rotated out more than 2 x LeafCertTTL ago")
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "pruning rotated-out roots was not saved"),
        }
    }

    /// Housekeeping whenever the clock may have moved: evicts unused entries and prunes old
    /// roots, every minute of wall time and at once when a test clock jumps.
    pub fn start_evictor(self: &Arc<Self>) -> EvictorHandle {
        let cache = Arc::downgrade(self);
        let mut jumps = self.store.clock().jumps();
        EvictorHandle(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                    changed = jumps.changed() => if changed.is_err() { return },
                }
                let Some(cache) = cache.upgrade() else { return };
                cache.prune_roots();
                let evicted = cache.evict_unused();
                if evicted > 0 {
                    tracing::debug!(evicted, "agent cache evicted unused entries");
                }
            }
        }))
    }
}

/// Keeps an entry equal to `read` of the store: a blocking query on `table`, republished
/// whenever the index moves.
async fn follow<V: Send + Sync + 'static>(
    store: Arc<Store>,
    table: Table,
    tx: watch::Sender<Versioned<V>>,
    read: impl Fn(&Inner) -> V + Send + 'static,
) {
    let mut last = 0;
    loop {
        let blocking = (last > 0).then_some(Blocking {
            min_index: last,
            wait: REFRESH_WAIT,
        });
        let (index, value) = store
            .block(table, blocking, |inner| {
                (inner.table_index(table), read(inner))
            })
            .await;
        if index != last {
            last = index;
            tx.send_replace(Some((index, Arc::new(value))));
        }
    }
}

/// Issues the leaf, then re-issues it at its renewal point or, after a root rotation, at a
/// random point within the jitter window. A signing refused by the CSR limit ends a first
/// issuance (the reader gets 429); a refused renewal keeps the current leaf and tries again
/// in a later jitter window, as Consul's leaf cache does.
async fn refresh_leaf(
    store: Arc<Store>,
    csr: Arc<CsrLimiter>,
    id: ServiceId,
    jitter: Duration,
    tx: watch::Sender<Versioned<LeafFill>>,
) {
    let clock = store.clock().clone();
    let mut failures = 0u32;
    let mut refused = 0u32;
    let mut have_leaf = false;
    loop {
        let limits = store.read(|inner| CsrLimits::from_config(inner.ca.stored_config()));
        let admission = match csr.admit(limits, clock.now()).await {
            Ok(admission) => admission,
            Err(e) if !have_leaf => {
                tracing::info!(service = %id, error = %e, "first leaf refused by the CSR limit");
                tx.send_replace(Some((0, Arc::new(LeafFill::RateLimited))));
                return;
            }
            Err(e) => {
                refused += 1;
                tracing::info!(service = %id, error = %e, refused, "leaf renewal refused by the CSR limit; keeping the current leaf");
                let window = jitter.max(MIN_RETRY_WINDOW);
                let retry_at = clock.now() + window * refused.min(10) + random_below(window);
                sleep_until(clock.as_ref(), retry_at).await;
                continue;
            }
        };
        if let Some(start) = admission.not_before {
            // The slot is reserved on the store's clock; the wait ends when either that clock
            // or the wall clock gets there, so a stopped test clock cannot hold it forever.
            let wall = (start - clock.now()).try_into().unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = tokio::time::sleep(wall) => {}
                _ = sleep_until(clock.as_ref(), start) => {}
            }
        }
        // Taken before the order, so a rotation after it still wakes the loop below.
        let mut roots_index = store.current_index(Table::Roots);
        let issued = store
            .write(|inner, _, _| Ok::<_, CaError>(inner.leaf_order()))
            .and_then(|order| order.issue(&id, clock.now()));
        drop(admission);
        let leaf = match issued {
            Ok(leaf) => leaf,
            Err(e) => {
                failures += 1;
                tracing::warn!(service = %id, error = %e, "cannot issue leaf; retrying");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(50)))).await;
                continue;
            }
        };
        failures = 0;
        refused = 0;
        have_leaf = true;
        // Keep only what renewal needs; the entry holds the one copy of the leaf.
        let mut reissue_at = leaf.renew_at;
        let signing_key_id = leaf.signing_key_id.clone();
        tx.send_replace(Some((
            leaf.cert.modify_index,
            Arc::new(LeafFill::Issued(leaf)),
        )));
        loop {
            tokio::select! {
                _ = sleep_until(clock.as_ref(), reissue_at) => break,
                _ = store.changed(Table::Roots, roots_index, REFRESH_WAIT) => {
                    roots_index = store.current_index(Table::Roots);
                    let active = store.read(|inner| inner.ca.active_root().signing_key_id.clone());
                    if active != signing_key_id {
                        let delay = random_below(jitter);
                        reissue_at = reissue_at.min(clock.now() + delay);
                    }
                }
            }
        }
    }
}

/// The shortest window between retries of a renewal the CSR limit refused.
const MIN_RETRY_WINDOW: Duration = Duration::from_millis(100);

fn random_below(max: Duration) -> Duration {
    use rand::Rng;
    match max.as_nanos() as u64 {
        0 => Duration::ZERO,
        n => Duration::from_nanos(rand::rng().random_range(0..n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[tokio::test]
    async fn entries_are_filled_once_and_hit_afterwards() {
        let cache: TypedCache<String, u32> = TypedCache::default();
        let now = OffsetDateTime::UNIX_EPOCH;
        let first = cache.lookup(&"a".into(), now, |tx| {
            tokio::spawn(async move {
                tx.send_replace(Some((1, Arc::new(7))));
                std::future::pending::<()>().await;
            })
        });
        assert!(!first.hit);
        let got = wait_for(first.value, None, tokio::time::Instant::now()).await;
        assert_eq!(got.map(|(i, v)| (i, *v)), Some((1, 7)));
        let second = cache.lookup(&"a".into(), now, |_| panic!("no second refresher"));
        assert!(second.hit);
    }

    #[tokio::test]
    async fn unused_entries_are_evicted() {
        let cache: TypedCache<u8, u8> = TypedCache::default();
        let t0 = OffsetDateTime::UNIX_EPOCH;
        cache.lookup(&1, t0, |_| tokio::spawn(async {}));
        cache.lookup(&2, t0 + Duration::from_secs(3600), |_| {
            tokio::spawn(async {})
        });
        assert_eq!(
            cache.evict_unused(t0 + Duration::from_secs(72 * 3600), DEFAULT_UNUSED_TTL),
            1
        );
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn sleep_until_wakes_when_the_clock_is_advanced() {
        let clock = Arc::new(ManualClock::new(OffsetDateTime::UNIX_EPOCH));
        let target = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(3600);
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move { sleep_until(clock.as_ref(), target).await })
        };
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(3600));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .unwrap()
            .unwrap();
    }
}
