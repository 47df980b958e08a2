//! CA roots and configuration: bootstrap, `PUT /v1/connect/ca/configuration`, rotation with
//! cross-signing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use consul_connect_types::api::{CaConfiguration, CaRoot, CaRootList};
use consul_connect_types::spiffe::TrustDomain;
use serde_json::Value;
use time::OffsetDateTime;

use crate::ca::{BuiltinCa, CaError, CaProvider, EcKey, RootCert};
use crate::profile::CaProfile;

/// Default leaf lifetime (Consul's `LeafCertTTL`).
pub const DEFAULT_LEAF_CERT_TTL: Duration = Duration::from_secs(72 * 3600);
const PROVIDER: &str = "consul";
/// agent-sim extension: a `Config` key that asks for a new generated root (Consul has no
/// force-rotate API, hashicorp/consul#9654). It is acted on, never stored.
pub const FORCE_ROTATE_KEY: &str = "ForceRotate";

/// CA settings given at start.
#[derive(Clone, Default)]
pub struct CaSettings {
    /// Cluster ID (a UUID); random when unset.
    pub cluster_id: Option<String>,
    /// Leaf lifetime; 72h when unset.
    pub leaf_cert_ttl: Option<Duration>,
    /// A CA key to use instead of a generated one (PEM).
    pub private_key: Option<String>,
}

impl std::fmt::Debug for CaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSettings")
            .field("cluster_id", &self.cluster_id)
            .field("leaf_cert_ttl", &self.leaf_cert_ttl)
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Why a CA configuration was refused: Consul answers these with 500 and this text.
#[derive(Debug, thiserror::Error)]
pub enum CaConfigError {
    /// Provider other than `consul`.
    #[error("could not initialize provider: unknown CA provider {0:?}")]
    UnknownProvider(String),
    /// Bad settings.
    #[error("error configuring provider: {0}")]
    Configure(String),
    /// Key or certificate problems.
    #[error("error generating CA root certificate: {0}")]
    Generate(CaError),
}

/// `GET /v1/connect/ca/configuration`'s answer.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CaConfigView {
    provider: String,
    config: BTreeMap<String, Value>,
    /// 1.10: always `null` for the built-in provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    force_without_cross_signing: Option<bool>,
    create_index: u64,
    modify_index: u64,
}

impl std::fmt::Debug for CaConfigView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaConfigView")
            .field("provider", &self.provider)
            .field("keys", &self.config.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Roots, configuration and the active provider.
#[derive(Debug)]
pub struct CaState {
    trust_domain: TrustDomain,
    cluster_id: String,
    /// Shared so leaves are signed outside the store lock (see `Inner::leaf_order`).
    provider: Arc<dyn CaProvider>,
    roots: Vec<CaRoot>,
    config: CaConfiguration,
    /// When each inactive root was rotated out (Consul's `RotatedOutAt`, never serialised).
    rotated_out_at: std::collections::BTreeMap<String, OffsetDateTime>,
    /// What the emulated version does differently.
    profile: &'static CaProfile,
    /// In a secondary datacenter: its intermediate (PEM), signed by the primary's active root.
    intermediate: Option<String>,
}

impl CaState {
    /// Removes roots rotated out more than twice the leaf lifetime ago, as Consul's leader
    /// does (every leaf they signed has expired by then). Returns whether any was removed.
    pub fn prune_rotated_out(&mut self, now: OffsetDateTime) -> bool {
        let keep_for = self.leaf_cert_ttl() * 2;
        let expired: Vec<String> = self
            .rotated_out_at
            .iter()
            .filter(|(_, at)| now - **at > keep_for)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.rotated_out_at.remove(id);
        }
        let before = self.roots.len();
        self.roots.retain(|r| r.active || !expired.contains(&r.id));
        self.roots.len() != before
    }

    pub(super) fn bootstrap(
        settings: &CaSettings,
        profile: &'static CaProfile,
        now: OffsetDateTime,
        next_index: &mut dyn FnMut() -> u64,
    ) -> Result<Self, CaError> {
        let cluster_id = settings
            .cluster_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
            .to_ascii_lowercase();
        let trust_domain = TrustDomain::new(&format!("{cluster_id}.consul"))
            .map_err(|e| CaError::Config(format!("invalid cluster ID {cluster_id:?}: {e}")))?;
        let key = match &settings.private_key {
            Some(pem) => EcKey::from_pem(pem)?,
            None => EcKey::generate()?,
        };
        let config_index = next_index();
        let mut config: BTreeMap<String, Value> = profile
            .default_config
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        if let Some(ttl) = settings.leaf_cert_ttl {
            config.insert(
                "LeafCertTTL".into(),
                Value::from(consul_connect_types::go::format_duration_short(ttl)),
            );
        }
        if let Some(pem) = &settings.private_key {
            config.insert("PrivateKey".into(), Value::from(pem.clone()));
        }
        let root_index = next_index();
        let provider = BuiltinCa::generate(
            trust_domain.clone(),
            key,
            root_index,
            now,
            profile.cert_names,
        )?;
        let root = ca_root(provider.root(), &cluster_id, None, root_index, profile);
        Ok(Self {
            trust_domain,
            cluster_id,
            provider: Arc::new(provider),
            roots: vec![root],
            config: CaConfiguration {
                provider: PROVIDER.into(),
                config,
                create_index: config_index,
                modify_index: config_index,
            },
            rotated_out_at: std::collections::BTreeMap::new(),
            profile,
            intermediate: None,
        })
    }

    /// What `--data-dir` keeps of the CA.
    pub fn snapshot(&self) -> super::persist::CaSnapshot {
        super::persist::CaSnapshot {
            private_key_pem: self.provider.private_key_pem(),
            roots: self.roots.clone(),
            config: self.config.clone(),
            rotated_out_at: self.rotated_out_at.clone(),
        }
    }

    /// The CA as saved: same trust domain, roots and signing key, so leaves issued before a
    /// restart stay valid.
    pub fn restore(
        cluster_id: &str,
        saved: super::persist::CaSnapshot,
        profile: &'static CaProfile,
    ) -> Result<Self, CaError> {
        let trust_domain = TrustDomain::new(&format!("{cluster_id}.consul"))
            .map_err(|e| CaError::Config(format!("invalid cluster ID {cluster_id:?}: {e}")))?;
        let active = saved
            .roots
            .iter()
            .find(|r| r.active)
            .ok_or_else(|| CaError::Config("saved state has no active root".into()))?;
        let key = EcKey::from_pem(&saved.private_key_pem)?;
        let provider = BuiltinCa::from_parts(trust_domain.clone(), &active.root_cert, key)?
            .with_cert_names(profile.cert_names);
        Ok(Self {
            trust_domain,
            cluster_id: cluster_id.to_owned(),
            provider: Arc::new(provider),
            roots: saved.roots,
            config: saved.config,
            rotated_out_at: saved.rotated_out_at,
            profile,
            intermediate: None,
        })
    }

    /// Makes this a secondary datacenter's CA: the primary's `roots`, with this datacenter's
    /// intermediate (when a new one is given: its PEM, signed by the primary's active root,
    /// and key) as the active root's last `IntermediateCerts` and its key ID as the
    /// `SigningKeyID`, as Consul's secondaries answer. Returns whether the roots changed.
    pub fn set_secondary(
        &mut self,
        roots: CaRootList,
        intermediate: Option<(&str, EcKey)>,
    ) -> Result<bool, CaError> {
        if roots.trust_domain != self.trust_domain.as_str() {
            return Err(CaError::Config(format!(
                "the primary's trust domain {} is not this datacenter's {}",
                roots.trust_domain, self.trust_domain
            )));
        }
        if let Some((pem, key)) = intermediate {
            let provider = BuiltinCa::from_parts(self.trust_domain.clone(), pem, key)?
                .with_cert_names(self.profile.cert_names);
            self.intermediate = Some(provider.root().pem.clone());
            self.provider = Arc::new(provider);
        }
        let Some(intermediate) = &self.intermediate else {
            return Err(CaError::Config("no intermediate signed yet".into()));
        };
        let signing_key_id = self.provider.root().signing_key_id.clone();
        let mut list = roots.roots;
        for root in list.iter_mut().filter(|r| r.active) {
            root.signing_key_id = signing_key_id.clone();
            root.intermediate_certs
                .get_or_insert_with(Vec::new)
                .push(intermediate.clone());
        }
        let changed = list != self.roots;
        self.roots = list;
        self.rotated_out_at.clear();
        Ok(changed)
    }

    /// The cluster ID.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The trust domain, `<cluster-id>.consul`.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The provider signing new leaves.
    pub fn provider(&self) -> &Arc<dyn CaProvider> {
        &self.provider
    }

    /// The active root.
    pub fn active_root(&self) -> &CaRoot {
        // Invariant: bootstrap and rotation always leave exactly one active root.
        self.roots
            .iter()
            .find(|r| r.active)
            .unwrap_or(&self.roots[0])
    }

    /// The roots list as the roots endpoints answer it (sorted by ID).
    pub fn root_list(&self) -> CaRootList {
        let mut roots = self.roots.clone();
        roots.sort_by(|a, b| a.id.cmp(&b.id));
        CaRootList {
            active_root_id: self.active_root().id.clone(),
            trust_domain: self.trust_domain.to_string(),
            roots,
        }
    }

    /// The provider settings as stored (keys unmasked), for what agent-sim itself reads from
    /// them, such as the CSR limits.
    pub(crate) fn stored_config(&self) -> &BTreeMap<String, Value> {
        &self.config.config
    }

    /// The configuration as `GET /v1/connect/ca/configuration` shows it: 1.4 hides the key,
    /// 1.10 adds `State` and `ForceWithoutCrossSigning`.
    pub fn config_view(&self) -> CaConfigView {
        let mut config = self.config.config.clone();
        if !self.profile.private_key_shown {
            if let Some(key) = config.get_mut("PrivateKey") {
                *key = Value::from("hidden");
            }
        }
        let state_fields = self.profile.config_state_fields;
        CaConfigView {
            provider: self.config.provider.clone(),
            config,
            state: state_fields.then_some(Value::Null),
            force_without_cross_signing: state_fields.then_some(false),
            create_index: self.config.create_index,
            modify_index: self.config.modify_index,
        }
    }

    /// The lifetime of a secondary datacenter's intermediate (`IntermediateCertTTL`, a year
    /// by default).
    pub fn intermediate_cert_ttl(&self) -> Duration {
        self.config
            .config
            .get("IntermediateCertTTL")
            .and_then(Value::as_str)
            .and_then(|s| consul_connect_types::go::parse_duration(s).ok())
            .unwrap_or(Duration::from_secs(8760 * 3600))
    }

    /// The leaf lifetime in force.
    pub fn leaf_cert_ttl(&self) -> Duration {
        self.config
            .config
            .get("LeafCertTTL")
            .and_then(Value::as_str)
            .and_then(|s| consul_connect_types::go::parse_duration(s).ok())
            .unwrap_or(DEFAULT_LEAF_CERT_TTL)
    }

    /// Applies a new configuration; returns whether the root rotated.
    pub fn set_config(
        &mut self,
        mut new: CaConfiguration,
        now: OffsetDateTime,
        next_index: &mut dyn FnMut() -> u64,
    ) -> Result<bool, CaConfigError> {
        if new.provider != PROVIDER {
            return Err(CaConfigError::UnknownProvider(new.provider));
        }
        let force = matches!(new.config.remove(FORCE_ROTATE_KEY), Some(Value::Bool(true)));
        validate_config(&new.config, self.profile)?;
        if !force && new.config == self.config.config {
            return Ok(false);
        }
        let key_pem = new
            .config
            .get("PrivateKey")
            .and_then(Value::as_str)
            .unwrap_or("");
        let root_pem = new
            .config
            .get("RootCert")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !root_pem.is_empty() && key_pem.is_empty() {
            return Err(CaConfigError::Configure(
                "must provide a private key when providing a root cert".into(),
            ));
        }
        let new_key = match key_pem {
            "" if force => Some(EcKey::generate().map_err(CaConfigError::Generate)?),
            "" => None,
            pem => {
                let key = EcKey::from_pem(pem).map_err(CaConfigError::Generate)?;
                let same = key.key_id() == current_key_id(self.provider.as_ref());
                (!same || !root_pem.is_empty()).then_some(key)
            }
        };
        let rotated =
            match new_key {
                // The secondary's intermediate follows the primary's root (agent-sim does not
                // emulate a secondary's own provider changes).
                Some(_) if self.intermediate.is_some() => return Err(CaConfigError::Configure(
                    "this is a secondary datacenter: its CA follows the primary's root, rotate \
                     the primary's"
                        .into(),
                )),
                Some(key) => {
                    self.rotate(key, root_pem, now, next_index)?;
                    true
                }
                None => false,
            };
        let index = next_index();
        self.config.provider = new.provider;
        self.config.config = new.config;
        self.config.modify_index = index;
        Ok(rotated)
    }

    fn rotate(
        &mut self,
        key: EcKey,
        root_pem: &str,
        now: OffsetDateTime,
        next_index: &mut dyn FnMut() -> u64,
    ) -> Result<(), CaConfigError> {
        let serial = next_index();
        let new_provider = if root_pem.is_empty() {
            BuiltinCa::generate(
                self.trust_domain.clone(),
                key,
                serial,
                now,
                self.profile.cert_names,
            )
        } else {
            BuiltinCa::from_parts(self.trust_domain.clone(), root_pem, key)
                .map(|ca| ca.with_cert_names(self.profile.cert_names))
        }
        .map_err(CaConfigError::Generate)?;
        if new_provider.root().id == self.active_root().id {
            return Ok(());
        }
        let cross = self
            .provider
            .cross_sign(new_provider.root(), next_index(), now)
            .map_err(CaConfigError::Generate)?;
        let index = next_index();
        for root in &mut self.roots {
            if root.active {
                root.active = false;
                root.modify_index = index;
                self.rotated_out_at.insert(root.id.clone(), now);
            }
        }
        let root = ca_root(
            new_provider.root(),
            &self.cluster_id,
            Some(vec![cross]),
            index,
            self.profile,
        );
        self.roots.push(root);
        self.provider = Arc::new(new_provider);
        Ok(())
    }
}

fn current_key_id(provider: &dyn CaProvider) -> Vec<u8> {
    EcKey::from_pem(&provider.private_key_pem())
        .map(|k| k.key_id())
        .unwrap_or_default()
}

fn validate_config(
    config: &BTreeMap<String, Value>,
    profile: &CaProfile,
) -> Result<(), CaConfigError> {
    if let Some(ttl) = config.get("LeafCertTTL") {
        let text = ttl.as_str().ok_or_else(|| {
            CaConfigError::Configure(format!(
                "error decoding config: LeafCertTTL: {ttl} is not a duration"
            ))
        })?;
        let ttl = consul_connect_types::go::parse_duration(text)
            .map_err(|e| CaConfigError::Configure(format!("error decoding config: {e}")))?;
        if ttl < Duration::from_secs(3600) {
            return Err(CaConfigError::Configure(profile.leaf_ttl_too_short.into()));
        }
        if ttl > Duration::from_secs(8760 * 3600) {
            return Err(CaConfigError::Configure(profile.leaf_ttl_too_long.into()));
        }
    }
    Ok(())
}

fn ca_root(
    root: &RootCert,
    cluster_id: &str,
    intermediates: Option<Vec<String>>,
    index: u64,
    profile: &CaProfile,
) -> CaRoot {
    CaRoot {
        id: root.id.clone(),
        name: profile.root_name.into(),
        serial_number: root.serial,
        signing_key_id: root.signing_key_id.clone(),
        external_trust_domain: cluster_id.to_owned(),
        not_before: root.not_before,
        not_after: root.not_after,
        root_cert: root.pem.clone(),
        intermediate_certs: intermediates,
        active: true,
        // The built-in CA's keys are P-256.
        private_key_type: profile.root_key_fields.then(|| "ec".to_owned()),
        private_key_bits: profile.root_key_fields.then_some(256),
        create_index: index,
        modify_index: index,
    }
}
