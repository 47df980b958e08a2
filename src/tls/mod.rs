//! Mutual TLS between Connect services: the certificates we present, how we check the peer's,
//! and the rustls configurations that tie both to a swappable [`MaterialCell`].
//!
//! The pieces, from the core outwards:
//!
//! - [`Material`]: the CA roots (parsed once into webpki trust anchors), the trust domains and
//!   our leaf with its key. It can only be built from a leaf that verifies against the roots.
//! - [`MaterialCell`]: the current `Material`, swapped atomically when a watch delivers new
//!   roots or a new leaf, read lock-free on every handshake.
//! - [`verify_peer`], [`verify_server`], [`verify_client`]: the whole peer check as plain
//!   functions over DER (chain to a current root, key usage, one SPIFFE service URI, trust
//!   domain, expected service, authorization), with a precise [`VerifyError`] on failure.
//! - [`server_config`] and [`client_config`]: rustls configurations built once per service.
//!   Their certificate resolvers and verifiers read the cell on each handshake, so a rotation
//!   needs no new configuration. Both sides speak TLS 1.2 and 1.3, offer ALPN `h2` and
//!   `http/1.1`, and never resume sessions (rustls does not re-verify a resumed peer).
//!
//! ```
//! use std::sync::Arc;
//! use consul_connect::tls::{client_config, server_config, ExpectedServer, MaterialCell};
//!
//! // One cell per service, filled by the roots and leaf watches (see `Material::new`).
//! let cell = Arc::new(MaterialCell::new());
//! let server = server_config(cell.clone(), None);
//! let client = client_config(cell);
//! // One cheap derived configuration per dial, carrying what the server must prove.
//! let to_db = client.for_server(ExpectedServer::new("db").with_datacenter("dc1"));
//! assert_eq!(server.alpn_protocols, to_db.alpn_protocols);
//! ```

mod config;
mod material;
mod refusal;
mod verify;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub use config::{
    client_config, client_config_with_clock, server_config, server_config_with_clock,
    ConnectClientConfig, ALPN_PROTOCOLS,
};
pub use material::{verify_client, verify_peer, verify_server, Material, MaterialCell};
pub use refusal::recording_refusals;
pub(crate) use refusal::{final_records, refuse_after_handshake};
pub use verify::{
    peer_identity, ExpectedServer, HandshakeAuthorizer, PeerIdentity, PeerRole, VerifyError,
};

use crate::spiffe::SpiffeIdError;

/// Why TLS material could not be built from what the agent returned (or from PEM or DER given
/// directly, see [`Material::from_pem`]).
///
/// None of the variants carries key material.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The roots list is empty: nothing could be trusted.
    #[error("the CA roots list holds no roots")]
    NoRoots,
    /// A root certificate could not be used as a trust anchor.
    #[error("CA root {id:?}: {reason}")]
    BadRoot {
        /// The root's `ID`.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A roots PEM text (see [`Material::from_pem`]) could not be read.
    #[error("CA roots PEM: {reason}")]
    BadRootsPem {
        /// What is wrong with the PEM.
        reason: String,
    },
    /// The roots list names a trust domain that is not one.
    #[error("trust domain {trust_domain:?} is invalid: {source}")]
    BadTrustDomain {
        /// The `TrustDomain` field as received.
        trust_domain: String,
        /// Why it does not parse.
        #[source]
        source: SpiffeIdError,
    },
    /// Neither the roots list nor any root's URI SAN names a trust domain.
    #[error("no trust domain: neither the roots list nor any root certificate names one")]
    NoTrustDomain,
    /// The leaf's `CertPEM` holds no usable certificate.
    #[error("leaf certificate for service {service:?}: {reason}")]
    BadLeafPem {
        /// The service the leaf was issued for (as the agent said; from PEM or DER, as the
        /// leaf's URI SAN names it, empty if it names none).
        service: String,
        /// What is wrong with the PEM.
        reason: String,
    },
    /// The leaf's private key could not be loaded (the reason never includes the key).
    #[error("private key of the leaf for service {service:?}: {reason}")]
    BadPrivateKey {
        /// The service the leaf was issued for (as the agent said; from PEM or DER, as the
        /// leaf's URI SAN names it, empty if it names none).
        service: String,
        /// Why the key was refused.
        reason: String,
    },
    /// The private key is not the one the leaf certificate was issued for.
    #[error("leaf certificate for service {service:?} does not match its private key")]
    KeyMismatch {
        /// The service the leaf was issued for (as the agent said; from PEM or DER, as the
        /// leaf's URI SAN names it, empty if it names none).
        service: String,
    },
    /// The leaf failed verification against the roots; it must not be presented.
    #[error("leaf certificate for service {service:?} (serial {serial}) was rejected: {source}")]
    LeafRejected {
        /// The service the leaf was issued for (as the agent said; from PEM or DER, as the
        /// leaf's URI SAN names it, empty if it names none).
        service: String,
        /// The leaf's serial, colon hex.
        serial: String,
        /// The check that failed (boxed to keep the error small).
        #[source]
        source: Box<VerifyError>,
    },
}

/// The three signature checks that both of rustls's verifier traits require, made with the
/// algorithms `$algorithms(self)` returns (a `fn(&Self) -> &WebPkiSupportedAlgorithms`).
macro_rules! signature_checks_with {
    ($algorithms:expr) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, $algorithms(self))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, $algorithms(self))
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            $algorithms(self).supported_schemes()
        }
    };
}
pub(crate) use signature_checks_with;

/// The signature algorithms of [`provider`], for [`signature_checks_with`].
pub(crate) fn provider_algorithms<T>(_: &T) -> &'static rustls::crypto::WebPkiSupportedAlgorithms {
    &provider().signature_verification_algorithms
}

/// The crypto provider this crate uses for every handshake and key.
static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();

/// The one crypto provider of this crate: the one given to [`set_crypto_provider`], else
/// aws-lc-rs, built explicitly rather than taken from a process-wide default that another
/// library might have installed.
pub(crate) fn provider() -> &'static Arc<CryptoProvider> {
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Sets the crypto provider for every handshake, verification and key of this crate, for a
/// FIPS build (`rustls::crypto::default_fips_provider()` with aws-lc-rs's `fips` feature) or
/// a restricted set of cipher suites. Call it once, before the first service or configuration
/// is built; the default is aws-lc-rs.
///
/// ```
/// use std::sync::Arc;
/// let mut provider = rustls::crypto::aws_lc_rs::default_provider();
/// provider.cipher_suites = vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384];
/// consul_connect::tls::set_crypto_provider(Arc::new(provider))?;
/// # Ok::<(), consul_connect::tls::ProviderAlreadySet>(())
/// ```
///
/// # Errors
///
/// [`ProviderAlreadySet`] when a provider was set or used already; the first one stays.
pub fn set_crypto_provider(provider: Arc<CryptoProvider>) -> Result<(), ProviderAlreadySet> {
    PROVIDER.set(provider).map_err(|_| ProviderAlreadySet)
}

/// [`set_crypto_provider`] came too late: a provider was set or used already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the crypto provider is already set (set it once, before the first service is built)")]
pub struct ProviderAlreadySet;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CaRoot, CaRootList, LeafCert};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};
    use time::macros::datetime;
    use time::OffsetDateTime;

    // Real Consul 1.4.5 captures: root "Consul CA 7", the web leaf it signed (ASCII key ids),
    // and the root that replaced it in the captured rotation.
    const ROOT1: &str = include_str!("../../tests/data/consul-1.4.5/root1.pem");
    const ROOT2: &str = include_str!("../../tests/data/consul-1.4.5/root2.pem");
    const WEB_PEM: &str = include_str!("../../tests/data/consul-1.4.5/web.pem");
    const WEB_KEY: &str = include_str!("../../tests/data/consul-1.4.5/web.key");
    const WEB2_KEY: &str = include_str!("../../tests/data/consul-1.4.5/web2.key");
    const TD: &str = "678277b4-c121-fe15-9eff-637834838f87.consul";

    fn now() -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            datetime!(2026-11-26 12:00 UTC)
                .unix_timestamp()
                .unsigned_abs(),
        ))
    }

    fn root(id: &str, pem: &str) -> CaRoot {
        CaRoot {
            id: id.to_owned(),
            name: "Consul CA Root Cert".to_owned(),
            serial_number: 7,
            signing_key_id: String::new(),
            external_trust_domain: TD.trim_end_matches(".consul").to_owned(),
            not_before: OffsetDateTime::UNIX_EPOCH,
            not_after: OffsetDateTime::UNIX_EPOCH,
            root_cert: pem.to_owned(),
            intermediate_certs: None,
            active: true,
            private_key_type: None,
            private_key_bits: None,
            create_index: 1,
            modify_index: 1,
        }
    }

    fn roots(list: &[CaRoot]) -> CaRootList {
        CaRootList {
            active_root_id: list[0].id.clone(),
            trust_domain: TD.to_owned(),
            roots: list.to_vec(),
        }
    }

    fn web_leaf() -> LeafCert {
        LeafCert {
            serial_number: "08".to_owned(),
            cert_pem: WEB_PEM.to_owned(),
            private_key_pem: WEB_KEY.to_owned(),
            service: "web".to_owned(),
            service_uri: format!("spiffe://{TD}/ns/default/dc/dc1/svc/web"),
            valid_after: datetime!(2026-11-25 20:36:04 UTC),
            valid_before: datetime!(2026-11-28 20:36:04 UTC),
            create_index: 14,
            modify_index: 14,
        }
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .expect("one certificate")
            .expect("PEM")
    }

    #[test]
    fn material_from_a_real_consul_leaf() {
        let material = Material::new(&roots(&[root("r1", ROOT1)]), &web_leaf(), now())
            .expect("real 1.4.5 leaf verifies");
        assert_eq!(material.service_id().service(), "web");
        assert_eq!(material.serial(), "08");
        assert_eq!(material.not_after(), datetime!(2026-11-28 20:36:04 UTC));
        assert!(material.leaf_valid_at(now()));
        assert_eq!(material.trust_domains().len(), 1, "list and root agree");
        assert_eq!(material.leaf_chain().len(), 1);

        let debug = format!("{material:?}");
        assert!(debug.contains("svc/web"), "{debug}");
        let key_line = WEB_KEY.lines().nth(1).expect("key body");
        assert!(!debug.contains(key_line), "{debug}");

        // The roots watch: a list without root 7 no longer vouches for this leaf.
        let err = material
            .with_roots(&roots(&[root("r2", ROOT2)]), now())
            .expect_err("leaf of root 7 under root 23 only");
        assert!(
            matches!(&err, TlsError::LeafRejected { source, .. }
                if matches!(**source, VerifyError::UntrustedChain { .. })),
            "{err:?}"
        );
        material
            .with_roots(&roots(&[root("r1", ROOT1), root("r2", ROOT2)]), now())
            .expect("both roots");
    }

    #[test]
    fn material_refuses_a_mismatched_key_and_an_expired_leaf() {
        let list = roots(&[root("r1", ROOT1)]);
        let leaf = LeafCert {
            private_key_pem: WEB2_KEY.to_owned(),
            ..web_leaf()
        };
        assert!(matches!(
            Material::new(&list, &leaf, now()),
            Err(TlsError::KeyMismatch { service }) if service == "web"
        ));
        let later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            datetime!(2026-12-01 00:00 UTC)
                .unix_timestamp()
                .unsigned_abs(),
        ));
        let err = Material::new(&list, &web_leaf(), later).expect_err("expired");
        assert!(
            matches!(&err, TlsError::LeafRejected { serial, source, .. }
                if serial == "08" && matches!(**source, VerifyError::Expired { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn roots_need_a_trust_domain_and_one_certificate_each() {
        let mut list = roots(&[root("r1", ROOT1)]);
        list.trust_domain = "bad domain".to_owned();
        assert!(matches!(
            Material::new(&list, &web_leaf(), now()),
            Err(TlsError::BadTrustDomain { .. })
        ));
        // Without the list's TrustDomain, the root's URI SAN names it.
        list.trust_domain = String::new();
        let material = Material::new(&list, &web_leaf(), now()).expect("root names the TD");
        assert_eq!(material.trust_domains()[0].as_str(), TD);

        let two = roots(&[root("r1", &format!("{ROOT1}{ROOT2}"))]);
        assert!(matches!(
            Material::new(&two, &web_leaf(), now()),
            Err(TlsError::BadRoot { id, .. }) if id == "r1"
        ));
    }

    #[test]
    fn a_root_presented_as_leaf_is_a_ca() {
        let material =
            Material::new(&roots(&[root("r1", ROOT1)]), &web_leaf(), now()).expect("material");
        let err = verify_peer(&material, &der(ROOT1), &[], now(), PeerRole::Client)
            .expect_err("a CA is not a leaf");
        assert!(matches!(err, VerifyError::IsCa { .. }), "{err:?}");
    }

    #[test]
    fn server_config_never_resumes() {
        let config = server_config(Arc::new(MaterialCell::new()), None);
        assert!(!config.session_storage.can_cache());
        assert!(!config.ticketer.enabled());
        assert_eq!(config.send_tls13_tickets, 0);
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert_eq!(config.max_early_data_size, 0);
    }

    #[test]
    fn client_configs_send_no_sni_and_never_resume() {
        let client = client_config(Arc::new(MaterialCell::new()));
        let config = client.for_server(ExpectedServer::new("db"));
        assert!(!config.enable_sni);
        assert!(!config.enable_early_data);
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert_eq!(
            format!("{:?}", config.resumption),
            format!("{:?}", rustls::client::Resumption::disabled())
        );
        assert_ne!(
            format!("{:?}", config.resumption),
            format!("{:?}", rustls::client::Resumption::default()),
            "the comparison above can tell the two apart"
        );
    }
}
