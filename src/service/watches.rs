//! The watches of a service: roots and leaf (or files) fetched, verified, and published.

use super::*;

impl Shared {
    pub(super) fn lock_fetched(&self) -> std::sync::MutexGuard<'_, Fetched> {
        // Plain data; a panic elsewhere cannot leave it half-written in a harmful way.
        self.fetched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the two watches. They hold only a weak reference, so dropping the service ends
    /// them.
    pub(super) fn spawn_watches(self: Arc<Self>, config: WatchConfig, leaf_first_read: Duration) {
        let weak = Arc::downgrade(&self);
        let agent = self.agent.clone();
        let stop = self.stop.subscribe();
        let roots_weak = weak.clone();
        tokio::spawn(run_watch_woken(
            config.clone(),
            stop.clone(),
            Some(self.leaf_refusals.subscribe()),
            move |opts: QueryOptions| {
                let agent = agent.clone();
                async move { agent.roots(&opts).await }
            },
            move |event| {
                if let Some(shared) = roots_weak.upgrade() {
                    shared.on_roots(event);
                }
            },
        ));
        let agent = self.agent.clone();
        let name = self.name.clone();
        let dc = self.datacenter.clone();
        tokio::spawn(run_watch_woken(
            config,
            stop,
            Some(self.root_moves.subscribe()),
            move |mut opts: QueryOptions| {
                let agent = agent.clone();
                let name = name.clone();
                opts.datacenter = dc.clone();
                async move {
                    if opts.index > 0 {
                        return agent.leaf(&name, &opts).await;
                    }
                    match tokio::time::timeout(leaf_first_read, agent.leaf(&name, &opts)).await {
                        Ok(result) => result,
                        Err(_) => {
                            // Consul 1.10-1.11 (hashicorp/consul#12048): a non-blocking leaf
                            // read waits for a pending blocking one, even an abandoned one.
                            // A blocking read at index 1 is answered at once instead.
                            tracing::warn!(service = %name, waited = ?leaf_first_read, "leaf read stalled (Consul 1.10-1.11 leaf cache, hashicorp/consul#12048); retrying as a blocking read");
                            let retry = QueryOptions {
                                index: 1,
                                wait: Some(leaf_first_read),
                                ..opts
                            };
                            agent.leaf(&name, &retry).await
                        }
                    }
                }
            },
            move |event| {
                if let Some(shared) = weak.upgrade() {
                    shared.on_leaf(event);
                }
            },
        ));
    }

    /// Polls the certificate files; `seen` is what they held when last read. Holds only a
    /// weak reference, so dropping the service ends it.
    pub(super) fn spawn_file_watch(self: Arc<Self>, files: CertificateFiles, seen: Contents) {
        let weak = Arc::downgrade(&self);
        let mut stop = self.stop.subscribe();
        drop(self);
        tokio::spawn(async move {
            // `None` after a failed read, so the next good read is always checked (and clears
            // the error) even if the files are back to what they were.
            let mut seen = Some(seen);
            let mut ticks = tokio::time::interval(files.interval());
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate; the files were just read
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let reader = files.clone();
                let read = match tokio::task::spawn_blocking(move || reader.read()).await {
                    Ok(read) => read,
                    Err(e) => Err(FilesError::Read {
                        path: files.cert_file().to_owned(),
                        reason: format!("the reading task failed: {e}"),
                    }),
                };
                let Some(shared) = weak.upgrade() else { return };
                match read {
                    Ok(contents) if seen.as_ref() == Some(&contents) => {}
                    Ok(contents) => {
                        shared.on_files(&files, &contents);
                        seen = Some(contents);
                    }
                    Err(e) => {
                        // Reported once per failure, not on every tick while it lasts.
                        let message = e.to_string();
                        let mut fetched = shared.lock_fetched();
                        let known = fetched
                            .errors
                            .iter()
                            .any(|f| f.source == "files" && f.message == message);
                        if !known {
                            shared.record_error(&mut fetched, "files", message);
                        }
                        seen = None;
                    }
                }
            }
        });
    }

    /// New contents of the certificate files: published if they verify and are ours,
    /// otherwise the last good material stays and the error is recorded.
    pub(super) fn on_files(&self, files: &CertificateFiles, contents: &Contents) {
        let mut fetched = self.lock_fetched();
        let Some(now) = self.clock.current_time() else {
            self.record_error(
                &mut fetched,
                "files",
                "the clock gave no current time".to_owned(),
            );
            return;
        };
        let built = contents
            .material(files, now)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                check_identity(
                    &self.name,
                    self.datacenter.as_deref(),
                    (self.agent.namespace(), self.agent.partition()),
                    m,
                )
            });
        match built {
            Ok(material) => {
                tracing::debug!(service = %self.name, serial = %material.serial(), "certificate files changed");
                fetched.clear_error("files");
                let root_ids = material.roots().ids.clone();
                self.install(&mut fetched, material, root_ids);
            }
            Err(message) => self.record_error(&mut fetched, "files", message),
        }
    }

    pub(super) fn on_roots(&self, event: WatchEvent<CaRootList>) {
        let mut fetched = self.lock_fetched();
        match event {
            WatchEvent::Update(roots) => {
                tracing::debug!(service = %self.name, roots = roots.value.roots.len(), "CA roots updated");
                fetched.clear_error("roots");
                let moved = fetched
                    .roots
                    .as_ref()
                    .is_some_and(|held| held.active_root_id != roots.value.active_root_id);
                if moved {
                    // A leaf watch backing off after errors asks again now, not after its timer.
                    self.root_moves.send_modify(|n| *n += 1);
                }
                fetched.roots = Some(roots.value);
                self.publish(&mut fetched, "roots");
            }
            WatchEvent::Error(e) => self.record_error(&mut fetched, "roots", e.to_string()),
        }
    }

    pub(super) fn on_leaf(&self, event: WatchEvent<LeafCert>) {
        let mut fetched = self.lock_fetched();
        match event {
            WatchEvent::Update(leaf) => {
                tracing::debug!(service = %self.name, serial = %leaf.value.serial_number, "leaf certificate updated");
                fetched.clear_error("leaf");
                fetched.leaf = Some(leaf.value);
                self.publish(&mut fetched, "leaf");
            }
            WatchEvent::Error(e) => self.record_error(&mut fetched, "leaf", e.to_string()),
        }
    }

    /// Builds and publishes new material when both halves are there, the leaf verifies and
    /// names this service; otherwise the last good material keeps serving. New roots are still
    /// taken when only the fetched leaf was refused and the held leaf verifies under them.
    pub(super) fn publish(&self, fetched: &mut Fetched, source: &'static str) {
        let (Some(roots), Some(leaf)) = (&fetched.roots, &fetched.leaf) else {
            return;
        };
        let Some(now) = self.clock.current_time() else {
            self.record_error(
                fetched,
                "material",
                "the clock gave no current time".to_owned(),
            );
            return;
        };
        let built = Material::new(roots, leaf, now)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                check_identity(
                    &self.name,
                    self.datacenter.as_deref(),
                    (self.agent.namespace(), self.agent.partition()),
                    m,
                )
            });
        match built {
            Ok(material) => {
                let ids = roots.roots.iter().map(|r| r.id.clone()).collect();
                fetched.clear_error("material");
                self.install(fetched, material, ids);
            }
            Err(message) => {
                // New roots are trusted at once, even when the held leaf does not chain to
                // them (the service is then not ready until a leaf that does arrives).
                let fallback = match (source, self.cell.load()) {
                    ("roots", Some(current)) => current.with_roots_keeping_leaf(roots, now).ok(),
                    _ => None,
                };
                if source == "leaf" {
                    self.leaf_refusals.send_modify(|n| *n += 1);
                }
                let mut message = message;
                if let Some((material, stale)) = fallback {
                    let ids = roots.roots.iter().map(|r| r.id.clone()).collect();
                    self.install(fetched, material, ids);
                    if stale.is_some() {
                        message.push_str(
                            "; the new roots are trusted, and the service is not ready until a leaf that chains to them arrives",
                        );
                    }
                }
                self.record_error(fetched, "material", message);
            }
        }
    }

    pub(super) fn install(&self, fetched: &mut Fetched, material: Material, root_ids: Vec<String>) {
        fetched.trusted_roots = root_ids;
        if let Some(previous) = self.cell.load() {
            // A watch re-reads without blocking after an error and reports what it got even
            // when nothing changed: republishing that would log, count and wake every
            // `material_updates` receiver for nothing.
            if same_material(&previous, &material) {
                tracing::debug!(service = %self.name, serial = %material.serial(), "Connect material unchanged");
                return;
            }
            if previous.serial() != material.serial() {
                telemetry::rotation(&self.name, "leaf");
            }
            if previous.root_certs() != material.root_certs() {
                telemetry::rotation(&self.name, "roots");
            }
        }
        telemetry::leaf_expiry(&self.name, material.not_after());
        tracing::info!(service = %self.name, serial = %material.serial(), "Connect material published");
        let ready = material.leaf_chains();
        self.cell.store(material);
        self.ready.send_replace(ready);
        self.generation.send_modify(|g| *g += 1);
    }

    pub(super) fn record_error(
        &self,
        fetched: &mut Fetched,
        source: &'static str,
        message: String,
    ) {
        telemetry::watch_error(&self.name, source);
        if self.cell.load().is_some() {
            tracing::warn!(service = %self.name, source, error = %message, "keeping the last good Connect material");
        } else {
            tracing::warn!(service = %self.name, source, error = %message, "no Connect material yet");
        }
        fetched.clear_error(source);
        fetched.errors.push(WatchFailure {
            source,
            message,
            at: SystemTime::now(),
        });
    }
}

/// Whether `a` and `b` present the same leaf chain and trust the same roots and trust domains
/// (the key follows from the leaf: `Material` only holds a key that matches its leaf).
fn same_material(a: &Material, b: &Material) -> bool {
    a.leaf_chain() == b.leaf_chain()
        && a.root_certs() == b.root_certs()
        && a.trust_domains() == b.trust_domains()
}

/// Refuses a leaf that names another service than `name` (or another datacenter than asked
/// for): a valid certificate is not enough, it must be ours.
/// The namespace and partition a service was configured for, when set.
pub(super) type Scope<'a> = (Option<&'a str>, Option<&'a str>);

/// Refuses a leaf that names another service than `name` (or another datacenter, namespace or
/// partition than asked for): a valid certificate is not enough, it must be ours.
pub(super) fn check_identity(
    name: &str,
    datacenter: Option<&str>,
    (namespace, partition): Scope<'_>,
    material: Material,
) -> Result<Material, String> {
    let id = material.service_id();
    if id.service() != name {
        return Err(format!(
            "leaf certificate is for {id}, not for service {name:?}"
        ));
    }
    let wanted = [
        ("datacenter", datacenter, id.datacenter()),
        ("namespace", namespace, id.namespace()),
        ("partition", partition, id.partition()),
    ];
    for (what, want, got) in wanted {
        if let Some(want) = want.filter(|want| *want != got) {
            return Err(format!(
                "leaf certificate is for {id}, not for {what} {want:?}"
            ));
        }
    }
    Ok(material)
}
