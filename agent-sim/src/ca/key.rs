//! ECDSA P-256 keys: generation, PEM parsing with Consul's refusals, and signing for rcgen.

use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self as lc, EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair as _};
use consul_connect_types::api::colon_hex;
use rcgen::PublicKeyData;

use super::pem::{first_pem_block, pem_encode};
use super::CaError;

/// An ECDSA P-256 key pair: a CA key, or the key an agent makes for a leaf.
///
/// `Debug` shows only the algorithm and the key identifier, never key material.
pub struct EcKey {
    /// Signs for rcgen directly (see the `SigningKey` impl): no rcgen `KeyPair`, which would
    /// parse and check the key again (two thirds of the cost of generating one).
    pair: EcdsaKeyPair,
    /// SEC1 (RFC 5915) `ECPrivateKey` DER, with curve parameters and public key, as Go writes it.
    sec1_der: Vec<u8>,
    /// DER SubjectPublicKeyInfo, exactly as it appears in certificates for this key.
    spki_der: Vec<u8>,
}

impl EcKey {
    /// Generates a new random P-256 key.
    pub fn generate() -> Result<EcKey, CaError> {
        let pair = EcdsaKeyPair::generate(&lc::ECDSA_P256_SHA256_ASN1_SIGNING).map_err(|e| {
            CaError::KeyGeneration {
                reason: e.to_string(),
            }
        })?;
        Self::from_aws_lc(pair)
    }

    /// Parses the first PEM block of `pem`: SEC1 `EC PRIVATE KEY` or PKCS#8 `PRIVATE KEY`, P-256
    /// only.
    ///
    /// Any other input is refused with a [`CaError::PrivateKey`] naming the problem: no PEM block,
    /// another block type (including `RSA PRIVATE KEY`), another key type or curve, or a block
    /// that does not decode.
    pub fn from_pem(pem: &str) -> Result<EcKey, CaError> {
        let block = first_pem_block(pem).ok_or(PrivateKeyError::NoPemData)?;
        let pair = match block.label.as_str() {
            "EC PRIVATE KEY" => parse_sec1(&block.contents)?,
            "PRIVATE KEY" => parse_pkcs8(&block.contents)?,
            other => {
                return Err(PrivateKeyError::UnknownPemBlockType {
                    label: other.to_owned(),
                }
                .into())
            }
        };
        Self::from_aws_lc(pair)
    }

    /// The key as a SEC1 `-----BEGIN EC PRIVATE KEY-----` PEM block, as Consul emits keys.
    ///
    /// This is secret material: persist it, hand it to its owner, never log it.
    pub fn to_pem(&self) -> String {
        pem_encode("EC PRIVATE KEY", &self.sec1_der)
    }

    /// The key identifier: SHA-256 of the DER SubjectPublicKeyInfo, raw 32 bytes (Consul ≥ 1.7).
    pub fn key_id(&self) -> Vec<u8> {
        digest::digest(&digest::SHA256, &self.spki_der)
            .as_ref()
            .to_vec()
    }

    /// The public key as a DER SubjectPublicKeyInfo.
    pub fn subject_public_key_info(&self) -> &[u8] {
        &self.spki_der
    }

    fn from_aws_lc(pair: EcdsaKeyPair) -> Result<EcKey, CaError> {
        let encoding = |reason: String| CaError::KeyEncoding { reason };
        let sec1_der = pair
            .private_key()
            .as_der()
            .map_err(|e| encoding(e.to_string()))?
            .as_ref()
            .to_vec();
        let spki_der = pair
            .public_key()
            .as_der()
            .map_err(|e| encoding(e.to_string()))?
            .as_ref()
            .to_vec();
        Ok(EcKey {
            pair,
            sec1_der,
            spki_der,
        })
    }
}

impl PublicKeyData for EcKey {
    fn der_bytes(&self) -> &[u8] {
        // The uncompressed point, as rcgen expects it inside the SubjectPublicKeyInfo.
        self.pair.public_key().as_ref()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for EcKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signature = self
            .pair
            .sign(&aws_lc_rs::rand::SystemRandom::new(), msg)
            .map_err(|_| rcgen::Error::RingUnspecified)?;
        Ok(signature.as_ref().to_vec())
    }
}

impl fmt::Debug for EcKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcKey")
            .field("algorithm", &"ECDSA P-256")
            .field("key_id", &colon_hex(&self.key_id()))
            .finish_non_exhaustive()
    }
}

/// Why a CA private key PEM was refused.
///
/// The texts are those of Consul's `connect.ParseSigner` (`agent/connect/parsing.go`) where
/// Consul refuses the same input; where Consul would accept a key that this CA does not use
/// (other curves, RSA or Ed25519 in PKCS#8), the text starts with Consul's `invalid key type`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivateKeyError {
    /// No PEM block could be decoded (empty input, no `-----BEGIN`, bad base64).
    #[error("no PEM-encoded data found")]
    NoPemData,
    /// The first PEM block is neither `EC PRIVATE KEY` nor `PRIVATE KEY`.
    #[error("unknown PEM block type for signing key: {label}")]
    UnknownPemBlockType {
        /// The block's label, e.g. `RSA PRIVATE KEY` or `CERTIFICATE`.
        label: String,
    },
    /// An `EC PRIVATE KEY` block that does not hold a valid SEC1 key.
    #[error("x509: failed to parse EC private key: {reason}")]
    InvalidEcPrivateKey {
        /// What the parser rejected.
        reason: String,
    },
    /// A `PRIVATE KEY` block that does not hold a valid PKCS#8 key.
    #[error("x509: failed to parse private key: {reason}")]
    InvalidPkcs8PrivateKey {
        /// What the parser rejected.
        reason: String,
    },
    /// A valid key of a type or curve the built-in CA does not use.
    #[error("invalid key type: {key_type} (the built-in CA uses ECDSA P-256 keys only)")]
    UnsupportedKeyType {
        /// For example `RSA`, `ECDSA P-384` or `Ed25519`.
        key_type: &'static str,
    },
}

/// Curves a key may be on that this CA does not use, to name them in errors.
fn other_ec_curves() -> [(&'static str, &'static EcdsaSigningAlgorithm); 3] {
    [
        ("ECDSA P-384", &lc::ECDSA_P384_SHA384_ASN1_SIGNING),
        ("ECDSA P-521", &lc::ECDSA_P521_SHA512_ASN1_SIGNING),
        ("ECDSA secp256k1", &lc::ECDSA_P256K1_SHA256_ASN1_SIGNING),
    ]
}

fn parse_sec1(der: &[u8]) -> Result<EcdsaKeyPair, PrivateKeyError> {
    EcdsaKeyPair::from_private_key_der(&lc::ECDSA_P256_SHA256_ASN1_SIGNING, der).map_err(
        |rejected| match other_ec_curves()
            .into_iter()
            .find(|(_, alg)| EcdsaKeyPair::from_private_key_der(alg, der).is_ok())
        {
            Some((key_type, _)) => PrivateKeyError::UnsupportedKeyType { key_type },
            None => PrivateKeyError::InvalidEcPrivateKey {
                reason: rejected.to_string(),
            },
        },
    )
}

fn parse_pkcs8(der: &[u8]) -> Result<EcdsaKeyPair, PrivateKeyError> {
    EcdsaKeyPair::from_pkcs8(&lc::ECDSA_P256_SHA256_ASN1_SIGNING, der).map_err(|rejected| {
        let key_type = other_ec_curves()
            .into_iter()
            .find(|(_, alg)| EcdsaKeyPair::from_pkcs8(alg, der).is_ok())
            .map(|(name, _)| name)
            .or_else(|| lc::RsaKeyPair::from_pkcs8(der).is_ok().then_some("RSA"))
            .or_else(|| {
                lc::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .is_ok()
                    .then_some("Ed25519")
            });
        match key_type {
            Some(key_type) => PrivateKeyError::UnsupportedKeyType { key_type },
            None => PrivateKeyError::InvalidPkcs8PrivateKey {
                reason: rejected.to_string(),
            },
        }
    })
}
