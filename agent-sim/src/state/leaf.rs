//! Issuing leaf certificates, and when each must be renewed.

use std::time::Duration;

use consul_connect::api::{serial_hex, LeafCert};
use consul_connect::spiffe::ServiceId;
use rand::Rng;
use time::OffsetDateTime;

use super::Inner;
use crate::ca::{CaError, EcKey};

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

impl Inner {
    /// Issues a new leaf for `id` with a fresh agent-generated key.
    pub fn issue_leaf(
        &mut self,
        id: &ServiceId,
        now: OffsetDateTime,
    ) -> Result<IssuedLeaf, CaError> {
        // Certificates hold whole seconds; keep the JSON times equal to the certificate's.
        let now = now.replace_nanosecond(0).unwrap_or(now);
        let key = EcKey::generate()?;
        let serial = self.next_index();
        let ttl = self.ca.leaf_cert_ttl();
        let leaf_pem = self.ca.provider().sign_leaf(id, &key, serial, now, ttl)?;
        let root = self.ca.active_root();
        let mut pems = vec![leaf_pem.trim().to_owned()];
        pems.extend(
            root.intermediate_certs
                .iter()
                .flatten()
                .map(|p| p.trim().to_owned()),
        );
        let valid_after = now - Duration::from_secs(60);
        let valid_before = valid_after + ttl;
        let cert = LeafCert {
            serial_number: serial_hex(&serial.to_be_bytes()),
            cert_pem: pems.join("\n") + "\n",
            private_key_pem: key.to_pem(),
            service: id.service().to_owned(),
            service_uri: id.to_string(),
            valid_after,
            valid_before,
            create_index: serial,
            modify_index: serial,
        };
        Ok(IssuedLeaf {
            signing_key_id: root.signing_key_id.clone(),
            renew_at: renewal_point(valid_after, ttl),
            cert,
        })
    }
}

/// A uniformly random point between 60% and 90% of a lifetime.
fn renewal_point(valid_after: OffsetDateTime, ttl: Duration) -> OffsetDateTime {
    let fraction = rand::rng().random_range(0.6..0.9);
    valid_after + ttl.mul_f64(fraction)
}
