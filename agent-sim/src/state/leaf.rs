//! Issuing leaf certificates, and when each must be renewed.

use std::sync::Arc;
use std::time::Duration;

use consul_connect_types::api::{serial_hex, LeafCert};
use consul_connect_types::spiffe::ServiceId;
use rand::Rng;
use time::OffsetDateTime;

use super::Inner;
use crate::ca::{CaError, CaProvider, EcKey};

/// A leaf and what decides its renewal.
#[derive(Debug, Clone)]
pub struct IssuedLeaf {
    /// The leaf as the endpoint answers it.
    pub cert: LeafCert,
    /// The active root's `SigningKeyID` when issued: a rotation makes it differ.
    pub signing_key_id: String,
    /// A random point between 60% and 90% of the lifetime (Consul 1.4.1+).
    pub renew_at: OffsetDateTime,
}

/// What a new leaf needs from the store, taken under its lock: the serial, the lifetime, the
/// provider and the active root's chain. Key generation and signing (most of the cost of a
/// leaf) then run outside the lock, in [`LeafOrder::issue`].
#[derive(Debug)]
pub struct LeafOrder {
    serial: u64,
    ttl: Duration,
    provider: Arc<dyn CaProvider>,
    signing_key_id: String,
    intermediates: Vec<String>,
}

impl Inner {
    /// Reserves a serial for a new leaf and takes what signing it needs.
    pub fn leaf_order(&mut self) -> LeafOrder {
        let root = self.ca.active_root();
        let signing_key_id = root.signing_key_id.clone();
        let intermediates = root
            .intermediate_certs
            .iter()
            .flatten()
            .map(|p| p.trim().to_owned())
            .collect();
        LeafOrder {
            serial: self.next_index(),
            ttl: self.ca.leaf_cert_ttl(),
            provider: self.ca.provider().clone(),
            signing_key_id,
            intermediates,
        }
    }
}

impl LeafOrder {
    /// Issues the leaf for `id` with a fresh agent-generated key.
    ///
    /// A rotation between the order and this call leaves the leaf signed by the root it was
    /// ordered under, and `signing_key_id` says so, which is how a refresher sees it is stale.
    pub fn issue(self, id: &ServiceId, now: OffsetDateTime) -> Result<IssuedLeaf, CaError> {
        // Certificates hold whole seconds; keep the JSON times equal to the certificate's.
        let now = now.replace_nanosecond(0).unwrap_or(now);
        let key = EcKey::generate()?;
        let leaf_pem = self
            .provider
            .sign_leaf(id, &key, self.serial, now, self.ttl)?;
        let mut pems = vec![leaf_pem.trim().to_owned()];
        pems.extend(self.intermediates);
        let valid_after = now - Duration::from_secs(60);
        let valid_before = valid_after + self.ttl;
        let cert = LeafCert {
            serial_number: serial_hex(&self.serial.to_be_bytes()),
            cert_pem: pems.join("\n") + "\n",
            private_key_pem: key.to_pem(),
            service: id.service().to_owned(),
            service_uri: id.to_string(),
            valid_after,
            valid_before,
            create_index: self.serial,
            modify_index: self.serial,
        };
        Ok(IssuedLeaf {
            signing_key_id: self.signing_key_id,
            renew_at: renewal_point(valid_after, self.ttl),
            cert,
        })
    }
}

/// A uniformly random point between 60% and 90% of a lifetime.
fn renewal_point(valid_after: OffsetDateTime, ttl: Duration) -> OffsetDateTime {
    let fraction = rand::rng().random_range(0.6..0.9);
    valid_after + ttl.mul_f64(fraction)
}
