//! The raw baseline both benches compare Connect with: plain rustls configurations over the
//! same P-256 certificates (agent-sim's leaves and roots), without anything Connect adds.
//!
//! Server: webpki client verifier over the agent's roots, client auth required. Client:
//! webpki chain check against the same roots (no name check: a Connect leaf has only a URI
//! SAN, no DNS name). Both: the aws-lc-rs provider, TLS 1.3 and 1.2, ALPN `h2` and
//! `http/1.1`, no resumption and no SNI, as the Connect configurations, so the comparison is
//! like with like.

use std::sync::Arc;

use consul_connect::api::{CaRootList, LeafCert};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// Plain rustls configurations: the server presents `server_leaf`, the client `client_leaf`,
/// both trust `roots`.
pub fn raw_configs(
    roots: &CaRootList,
    server_leaf: &LeafCert,
    client_leaf: &LeafCert,
) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
    let mut store = RootCertStore::empty();
    for root in &roots.roots {
        for cert in CertificateDer::pem_slice_iter(root.root_cert.as_bytes()) {
            store.add(cert.expect("root PEM")).expect("usable root");
        }
    }
    let store = Arc::new(store);
    let versions = &[&rustls::version::TLS13, &rustls::version::TLS12];
    let alpn = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

    let verifier = WebPkiClientVerifier::builder_with_provider(store.clone(), provider())
        .build()
        .expect("client verifier");
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("TLS 1.2 and 1.3")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(server_leaf), key(server_leaf))
        .expect("server leaf and key");
    server.session_storage = Arc::new(NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    server.alpn_protocols = alpn.clone();

    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly {
            roots: store,
            algs: provider().signature_verification_algorithms,
        }))
        .with_client_auth_cert(chain(client_leaf), key(client_leaf))
        .expect("client leaf and key");
    client.resumption = Resumption::disabled();
    client.enable_sni = false;
    client.alpn_protocols = alpn;
    (Arc::new(client), Arc::new(server))
}

/// All certificates of a leaf's `CertPEM` (the leaf, then any intermediate).
pub fn chain(leaf: &LeafCert) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("leaf PEM")
}

fn key(leaf: &LeafCert) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(leaf.private_key_pem.as_bytes()).expect("a private key PEM")
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// webpki's server check without the DNS-name match.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
