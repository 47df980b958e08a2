//! TTL checks turn critical when their deadline passes, as the timers of Consul's agent make
//! them: the catalog changes then, so blocking health and catalog queries wake at that moment
//! rather than at the next unrelated write.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::cache::sleep_until;
use crate::state::persist::PersistError;
use crate::state::{Store, Table};

/// Longest wait between two looks at the deadlines when nothing changes.
const IDLE_WAIT: Duration = Duration::from_secs(600);

/// Stops the task when dropped.
#[derive(Debug)]
pub struct TtlHandle(JoinHandle<()>);

impl Drop for TtlHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the task that expires TTL checks on `store`'s clock.
pub fn start(store: Arc<Store>) -> TtlHandle {
    TtlHandle(tokio::spawn(async move {
        loop {
            // Read the index first: a registration or update after it wakes the wait below.
            let index = store.current_index(Table::Services);
            let deadline = store.read(|inner| inner.catalog.next_ttl_deadline());
            match deadline {
                Some(deadline) => tokio::select! {
                    () = sleep_until(store.clock().as_ref(), deadline) => expire(&store),
                    () = store.changed(Table::Services, index, IDLE_WAIT) => {}
                },
                None => store.changed(Table::Services, index, IDLE_WAIT).await,
            }
        }
    }))
}

fn expire(store: &Store) {
    let now = store.clock().now();
    let written = store.write(|inner, index, changes| {
        if inner.catalog.expire_ttl_checks(now, index) {
            changes.touch(Table::Services);
        }
        Ok::<_, PersistError>(())
    });
    if let Err(e) = written {
        tracing::error!(error = %e, "expired TTL checks were not saved");
    }
}
